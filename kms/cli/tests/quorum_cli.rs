//! Proposals with the real `kmsctl` binary against a real `kmsd` (mTLS, SQLite), signed with key
//! files: a 2-of-3 quorum refusing direct quorum operations, proposing with `--propose`, rejecting,
//! approving a quorum change, and with M = 1 proposals that execute at once (or fail, exiting 1).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use kms_core::keyfile::AdminKeyFile;
use kms_testkit::*;

const KMSCTL: &str = env!("CARGO_BIN_EXE_kmsctl");

/// kmsctl against the ceremony's server, as any of its admins (by key file).
struct Kmsctl {
    server: Vec<String>,
    keys: Vec<PathBuf>,
    _dir: tempfile::TempDir,
}

impl Kmsctl {
    fn new(c: &Ceremony) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let keys = c
            .custodians
            .iter()
            .map(|k: &AdminKeyFile| {
                let path = dir.path().join(format!("{}.key", k.admin_id));
                kms_server::seal::write_secret_file(&path, k.encode().expose_secret()).unwrap();
                path
            })
            .collect();
        let (cert, key) = c.pki.client_files("spiffe://test/kmsctl", "kmsctl");
        let server = vec![
            "--server".into(),
            format!("https://{}", c.server.addr),
            "--tls-server-name".into(),
            "localhost".into(),
            "--ca".into(),
            c.pki.ca_path().display().to_string(),
            "--cert".into(),
            cert.display().to_string(),
            "--key".into(),
            key.display().to_string(),
        ];
        Self {
            server,
            keys,
            _dir: dir,
        }
    }

    /// Runs kmsctl as custodian `who` (0 alice, 1 bob, 2 carol).
    async fn run(&self, who: usize, args: &[&str]) -> Out {
        let mut cmd = kmsctl_command(KMSCTL);
        // The test kmsd has no hardware evidence: its answers are checked under its own key.
        cmd.env("KMSCTL_DANGER_UNATTESTED_KMSD", "1")
            .args(&self.server)
            .arg("--admin-key")
            .arg(&self.keys[who])
            .args(args);
        let out = cmd.output().await.expect("run kmsctl");
        Out::from(out)
    }
}

const ALICE: usize = 0;
const BOB: usize = 1;
const CAROL: usize = 2;

#[tokio::test]
async fn proposals_reject_approve_and_execute_at_once_with_a_quorum_of_one() {
    let opts = Options {
        approval_quorum: 2,
        ..Options::default()
    };
    let c = Ceremony::new(Backend::Sqlite, opts).await.unwrap();
    c.create_key("orders", &["spiffe://eu.example/app"], UNATTESTED).await;
    let k = Kmsctl::new(&c);
    // Only a disabled key can be scheduled for deletion; disabling is not a quorum operation.
    k.run(ALICE, &["key", "disable", "orders"]).await.expect(0);

    // Direct: refused, with the hint to propose.
    let direct = k
        .run(ALICE, &["key", "schedule-deletion", "orders", "--days", "7"])
        .await
        .expect(1);
    assert!(direct.stderr.contains("quorum_required"), "{}", direct.stderr);
    assert!(direct.stderr.contains("--propose"), "{}", direct.stderr);

    // Proposed, then rejected by bob: carol can no longer approve it.
    let proposed = k
        .run(
            ALICE,
            &[
                "--output",
                "json",
                "key",
                "schedule-deletion",
                "orders",
                "--days",
                "7",
                "--propose",
                "--ttl",
                "600",
            ],
        )
        .await
        .expect(0)
        .json();
    assert_eq!(proposed["status"], "pending", "{proposed}");
    assert_eq!(proposed["operation"]["type"], "schedule_key_deletion");
    assert_eq!(proposed["operation"]["pending_window_days"], 7);
    let id = proposed["id"].as_str().unwrap().to_owned();
    let human = k.run(BOB, &["proposal", "show", &id]).await.expect(0);
    assert!(
        human.stdout.contains("schedule_key_deletion") && human.stdout.contains("key: orders"),
        "{}",
        human.stdout
    );
    // One rejection cannot veto (N = 3, M = 2): it closes once M approvals can no longer be
    // reached, here at the second.
    let one = k
        .run(
            BOB,
            &["--output", "json", "proposal", "reject", &id, "--reason", "not now"],
        )
        .await
        .expect(0)
        .json();
    assert_eq!(one["status"], "pending", "{one}");
    let rejected = k
        .run(
            CAROL,
            &[
                "--output",
                "json",
                "proposal",
                "reject",
                &id,
                "--reason",
                "agreed, not now",
            ],
        )
        .await
        .expect(0)
        .json();
    assert_eq!(rejected["status"], "rejected", "{rejected}");
    let late = k.run(BOB, &["proposal", "approve", &id]).await.expect(1);
    assert!(late.stderr.contains("proposal_closed"), "{}", late.stderr);
    let key = k
        .run(ALICE, &["--output", "json", "key", "describe", "orders"])
        .await
        .expect(0)
        .json();
    assert_eq!(key["state"], "disabled", "the rejected deletion never ran: {key}");

    // The quorum itself: proposed by alice, approved by carol, executed.
    let set = k
        .run(ALICE, &["--output", "json", "quorum", "set", "1"])
        .await
        .expect(0)
        .json();
    assert_eq!(set["status"], "pending", "{set}");
    let set_id = set["id"].as_str().unwrap().to_owned();
    let done = k.run(CAROL, &["proposal", "approve", &set_id]).await.expect(0);
    assert!(
        done.stdout.contains(&format!("approved {set_id}: executed")),
        "{}",
        done.stdout
    );
    assert!(
        done.stderr.contains("approval_quorum: 1"),
        "what is approved is shown: {}",
        done.stderr
    );

    let status = k.run(BOB, &["--output", "json", "status"]).await.expect(0).json();
    assert_eq!(status["approval_quorum"], 1, "{status}");

    // With M = 1 a proposal executes at once and prints its result.
    let removed = k
        .run(
            ALICE,
            &[
                "--output",
                "json",
                "admins",
                "remove",
                "carol",
                "--reason",
                "left the team",
            ],
        )
        .await
        .expect(0)
        .json();
    assert_eq!(removed["status"], "executed", "{removed}");
    let policy = r#"{"version":1,"attestation":"none"}"#;
    let updated = k
        .run(
            BOB,
            &[
                "--output",
                "json",
                "key",
                "set-release-policy",
                "orders",
                "--policy",
                policy,
                "--propose",
            ],
        )
        .await
        .expect(0)
        .json();
    assert_eq!(updated["status"], "executed", "{updated}");
    assert_eq!(updated["result"]["key"]["release_policy_version"], 2, "{updated}");
    // An operation that cannot run: refused or failed, never exit 0.
    let bad = k
        .run(
            ALICE,
            &[
                "--output",
                "json",
                "key",
                "set-release-policy",
                "nosuch",
                "--policy",
                policy,
                "--propose",
            ],
        )
        .await;
    assert_eq!(bad.code, 1, "stdout: {}\nstderr: {}", bad.stdout, bad.stderr);
    assert_eq!(bad.json()["ok"], false);

    let all = k
        .run(BOB, &["--output", "json", "proposal", "list", "--all"])
        .await
        .expect(0)
        .json();
    assert!(all["proposals"].as_array().unwrap().len() >= 4, "{all}");
    assert!(
        all["proposals"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["digest_matches"] == true),
        "{all}"
    );
    let open = k.run(BOB, &["proposal", "list"]).await.expect(0);
    assert_eq!(open.stdout, "no open proposals\n");
}
