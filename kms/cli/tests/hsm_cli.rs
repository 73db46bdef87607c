//! HSM-backed admins with the real `kmsctl` binary against a real `kmsd` (mTLS, SQLite) and real
//! SoftHSM2 tokens: keys generated inside each admin's own token, init signed by a token, the
//! restarted (sealed) server unsealed by two custodians whose tokens re-wrap their shares, then a
//! 2-of-3 approval quorum: a direct quorum operation refused with a hint, a proposal, a double
//! approval refused, the second admin's approval executing it, and a non-custodian's unseal refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use kms_testkit::*;
use serde_json::Value;
use softhsm_fixture::TestToken;

const KMSCTL: &str = env!("CARGO_BIN_EXE_kmsctl");

/// How an admin gives the PIN to kmsctl.
enum PinBy {
    File,
    Env,
}

/// One admin: their own token, how the PIN is given, their public file.
struct HsmAdmin {
    id: &'static str,
    token: TestToken,
    pin: PinBy,
    pin_file: PathBuf,
    public: PathBuf,
}

impl HsmAdmin {
    fn pin_var(&self) -> String {
        format!("TEST_PIN_{}", self.id.to_uppercase())
    }

    /// The HSM options of this admin.
    fn hsm_args(&self) -> Vec<String> {
        let pin = match self.pin {
            PinBy::File => format!("file:{}", self.pin_file.display()),
            PinBy::Env => format!("env:{}", self.pin_var()),
        };
        vec![
            "--hsm-module".into(),
            softhsm_fixture::module_path().display().to_string(),
            "--hsm-token".into(),
            format!("label:{}", self.token.label),
            "--hsm-pin".into(),
            pin,
        ]
    }
}

struct Lab {
    dir: tempfile::TempDir,
    server_args: Vec<String>,
}

impl Lab {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn point_at(&mut self, server: &TestServer, pki: &Pki) {
        let (cert, key) = pki.client_files("spiffe://test/kmsctl", "kmsctl");
        self.server_args = vec![
            "--server".into(),
            format!("https://{}", server.addr),
            "--tls-server-name".into(),
            "localhost".into(),
            "--ca".into(),
            pki.ca_path().display().to_string(),
            "--cert".into(),
            cert.display().to_string(),
            "--key".into(),
            key.display().to_string(),
        ];
    }

    /// Runs kmsctl as `admin` (keys in their token, named by their public file).
    async fn run_as(&self, admin: &HsmAdmin, args: &[&str]) -> Out {
        let mut all = self.server_args.clone();
        all.extend(admin.hsm_args());
        all.extend(["--admin-pub".into(), admin.public.display().to_string()]);
        all.extend(args.iter().map(|a| (*a).to_owned()));
        run(admin, &all).await
    }
}

async fn run(admin: &HsmAdmin, args: &[String]) -> Out {
    let mut cmd = kmsctl_command(KMSCTL);
    // The test kmsd has no hardware evidence: its answers are checked under its own key.
    cmd.env("KMSCTL_DANGER_UNATTESTED_KMSD", "1").args(args);
    let (conf_var, conf) = admin.token.env();
    cmd.env(conf_var, conf).env(admin.pin_var(), &admin.token.user_pin);
    let out = cmd.output().await.expect("run kmsctl");
    Out::from(out)
}

/// Every admin's token, made before any process loads the SoftHSM2 module.
fn admins(dir: &Path) -> Vec<HsmAdmin> {
    [
        ("alice", PinBy::File),
        ("bob", PinBy::Env),
        ("carol", PinBy::File),
        ("dave", PinBy::Env),
    ]
    .into_iter()
    .map(|(id, pin)| {
        let token = softhsm_fixture::init_token(&softhsm_fixture::unique_label(&format!("kc-{id}")));
        let pin_file = token.pin_file(dir);
        HsmAdmin {
            id,
            token,
            pin,
            pin_file,
            public: dir.join(format!("{id}.pub.json")),
        }
    })
    .collect()
}

#[tokio::test]
async fn hsm_admins_init_unseal_and_approve_proposals() {
    let dir = tempfile::tempdir().unwrap();
    let admins = admins(dir.path());
    let (alice, bob, carol, dave) = (&admins[0], &admins[1], &admins[2], &admins[3]);
    let mut lab = Lab {
        dir,
        server_args: Vec::new(),
    };

    // Keys generated inside each token; only the public file is written.
    for (a, country) in admins.iter().zip(["DE", "FR", "NL", "AT"]) {
        let mut args = a.hsm_args();
        let public = a.public.display().to_string();
        args.extend(
            [
                "--output",
                "json",
                "admin",
                "keygen",
                "--hsm",
                "--id",
                a.id,
                "--country",
                country,
                "--out",
                &public,
            ]
            .map(str::to_owned),
        );
        let out = run(a, &args).await.expect(0);
        let doc = out.json();
        assert_eq!(doc["admin_id"], a.id);
        assert_eq!(doc["signing_key_label"], format!("{}-sign", a.id));
        let file: Value = serde_json::from_str(&std::fs::read_to_string(&a.public).unwrap()).unwrap();
        assert_eq!(file["signing_public_key"], doc["signing_public_key"]);
        assert!(!out.stdout.contains(&a.token.user_pin) && !out.stderr.contains(&a.token.user_pin));
    }
    // A second keygen into the same token refuses to overwrite (label taken), and never the file.
    let mut again = alice.hsm_args();
    let other = lab.path("alice2.pub.json").display().to_string();
    again.extend(
        [
            "admin",
            "keygen",
            "--hsm",
            "--id",
            "alice",
            "--country",
            "DE",
            "--out",
            &other,
        ]
        .map(str::to_owned),
    );
    run(alice, &again).await.expect(4);

    let db = Db::new(Backend::Sqlite).await.unwrap();
    let pki = Pki::new();
    // The server pins the three admins' fingerprints: only they can initialize it.
    let pinned = || Options {
        init_admins: Some(fingerprints_of(&[&alice.public, &bob.public, &carol.public])),
        ..Options::default()
    };
    let server = TestServer::start(&db, &pki, pinned()).await;
    lab.point_at(&server, &pki);

    // A wrong PIN file (another token's PIN) is refused locally.
    let wrong = HsmAdmin {
        id: "alice",
        token: TestToken {
            label: alice.token.label.clone(),
            user_pin: "0000000000000000".into(),
            so_pin: String::new(),
        },
        pin: PinBy::Env,
        pin_file: PathBuf::new(),
        public: alice.public.clone(),
    };
    lab.run_as(&wrong, &["admins", "list"]).await.expect(4);
    // A PIN where its source belongs is refused without being repeated.
    let mut literal = alice.hsm_args();
    literal[5] = alice.token.user_pin.clone();
    literal.extend(["admins".to_owned(), "list".to_owned()]);
    let out = run(alice, &literal).await.expect(2);
    assert!(!out.stderr.contains(&alice.token.user_pin), "{}", out.stderr);

    // init, signed with alice's token.
    let pubs: Vec<String> = [alice, bob, carol]
        .iter()
        .map(|a| a.public.display().to_string())
        .collect();
    let out = lab
        .run_as(
            alice,
            &[
                "--output",
                "json",
                "--danger-unattested-kmsd",
                "init",
                "--seal",
                "shamir",
                "--threshold",
                "2",
                "--quorum",
                "2",
                "--admin",
                &pubs[0],
                "--admin",
                &pubs[1],
                "--admin",
                &pubs[2],
            ],
        )
        .await
        .expect(0);
    assert_eq!(out.json()["status"]["sealed"], false, "{}", out.stdout);

    // Restarted on the same database: sealed. Two custodians unseal with their tokens.
    server.stop().await;
    let server = TestServer::start(&db, &pki, pinned()).await;
    lab.point_at(&server, &pki);
    let status = lab
        .run_as(alice, &["--output", "json", "status"])
        .await
        .expect(0)
        .json();
    assert_eq!(status["sealed"], true);
    let first = lab
        .run_as(alice, &["--danger-unattested-kmsd", "unseal"])
        .await
        .expect(0);
    assert!(first.stdout.contains("1/2 shares: still sealed"), "{}", first.stdout);
    let again = lab
        .run_as(alice, &["--danger-unattested-kmsd", "unseal"])
        .await
        .expect(1);
    assert!(again.stderr.contains("share_already_submitted"), "{}", again.stderr);
    let second = lab
        .run_as(bob, &["--output", "json", "--danger-unattested-kmsd", "unseal"])
        .await
        .expect(0)
        .json();
    assert_eq!(second["unsealed"], true, "{second}");
    assert_eq!(second["submitted_by"], "bob");

    // With M = 2 a direct quorum operation is refused, and the hint says --propose.
    let dave_pub = dave.public.display().to_string();
    let direct = lab
        .run_as(alice, &["admins", "add", &dave_pub, "--non-custodian"])
        .await
        .expect(1);
    assert!(direct.stderr.contains("quorum_required"), "{}", direct.stderr);
    assert!(direct.stderr.contains("--propose"), "{}", direct.stderr);

    // Proposed by alice: pending with her approval.
    let proposed = lab
        .run_as(
            alice,
            &[
                "--output",
                "json",
                "admins",
                "add",
                &dave_pub,
                "--non-custodian",
                "--propose",
            ],
        )
        .await
        .expect(0)
        .json();
    assert_eq!(proposed["status"], "pending", "{proposed}");
    assert_eq!(proposed["approvals_required"], 2);
    assert_eq!(proposed["operation"]["type"], "add_admin");
    assert_eq!(proposed["operation"]["admin_id"], "dave");
    assert_eq!(proposed["digest_matches"], true);
    let id = proposed["id"].as_str().unwrap().to_owned();

    let listed = lab.run_as(bob, &["proposal", "list"]).await.expect(0);
    assert!(
        listed.stdout.contains(&id) && listed.stdout.contains("add_admin"),
        "{}",
        listed.stdout
    );

    // The same admin cannot approve twice.
    let twice = lab.run_as(alice, &["proposal", "approve", &id]).await.expect(1);
    assert!(twice.stderr.contains("already_approved"), "{}", twice.stderr);

    // bob checks the operation decoded locally, then approves: it executes.
    let shown = lab.run_as(bob, &["proposal", "show", &id]).await.expect(0);
    assert!(shown.stdout.contains("admin_id: dave"), "{}", shown.stdout);
    assert!(shown.stdout.contains("(computed here)"), "{}", shown.stdout);
    let approved = lab
        .run_as(bob, &["--output", "json", "proposal", "approve", &id])
        .await
        .expect(0)
        .json();
    assert_eq!(approved["status"], "executed", "{approved}");
    assert_eq!(approved["result"]["admin"]["id"], "dave");
    let list = lab
        .run_as(carol, &["--output", "json", "admins", "list"])
        .await
        .expect(0)
        .json();
    let ids: Vec<&str> = list["admins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&"dave"), "{list}");
    // Closed proposals are listed only with --all.
    let open = lab
        .run_as(carol, &["--output", "json", "proposal", "list"])
        .await
        .expect(0)
        .json();
    assert_eq!(open["proposals"].as_array().unwrap().len(), 0, "{open}");
    let all = lab
        .run_as(carol, &["--output", "json", "proposal", "list", "--all"])
        .await
        .expect(0)
        .json();
    assert_eq!(all["proposals"][0]["status"], "executed", "{all}");

    // dave (no share, and not a custodian the server's configuration pins) cannot unseal a
    // sealed server: refused before his share is looked for.
    lab.run_as(carol, &["seal"]).await.expect(0);
    let refused = lab
        .run_as(dave, &["--danger-unattested-kmsd", "unseal"])
        .await
        .expect(1);
    assert!(refused.stderr.contains("custodian_not_pinned"), "{}", refused.stderr);
    server.stop().await;
}
