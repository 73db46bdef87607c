//! `kmsctl` behaviour pinned by case files (trycmd-style), against a real `kmsd` and real SoftHSM2
//! tokens, on SQLite and PostgreSQL. One scenario is set up: three HSM admins (alice, bob, carol)
//! each with their own token, `init --seal shamir --threshold 2 --quorum 2`, a restart (sealed) and
//! an unseal by alice and bob. Then every case in `tests/cases/*.case` runs in file-name order,
//! and its exit code, stdout and stderr are compared with snapbox (`[..]` and `...` wildcards,
//! `[NAME]` redactions). `tests/cases/README.md` describes the format.
//!
//! To rewrite the expected outputs after a deliberate change (then read the diff):
//!
//! ```text
//! SNAPSHOTS=overwrite cargo test -p kmsctl --test cli_cases sqlite
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kms_testkit::*;
use snapbox::{Assert, Data, Redactions};
use softhsm_fixture::TestToken;

const KMSCTL: &str = env!("CARGO_BIN_EXE_kmsctl");

/// The variable the admins' PINs are passed in (`KMSCTL_HSM_PIN=env:KMSCTL_CASE_PIN`).
const PIN_VAR: &str = "KMSCTL_CASE_PIN";

fn cases_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cases")
}

/// One case file: header lines, then `--- stdout` and `--- stderr` sections.
struct Case {
    path: PathBuf,
    /// The header as written (comments and `key: value` lines), kept on overwrite.
    header: Vec<String>,
    args: String,
    who: String,
    status: i32,
    env: Vec<(String, String)>,
    save: Vec<(String, String)>,
    offline: bool,
    stdout: String,
    stderr: String,
}

impl Case {
    fn read(path: &Path) -> Self {
        let text = std::fs::read_to_string(path).unwrap();
        let (header, rest) = text
            .split_once("--- stdout\n")
            .unwrap_or_else(|| panic!("{}: no `--- stdout` line", path.display()));
        let (stdout, stderr) = rest
            .split_once("--- stderr\n")
            .unwrap_or_else(|| panic!("{}: no `--- stderr` line", path.display()));
        let mut case = Self {
            path: path.to_owned(),
            header: header.lines().map(str::to_owned).collect(),
            args: String::new(),
            who: "nobody".into(),
            status: 0,
            env: Vec::new(),
            save: Vec::new(),
            offline: false,
            stdout: stdout.to_owned(),
            stderr: stderr.to_owned(),
        };
        for line in header.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let (key, value) = line
                .split_once(':')
                .unwrap_or_else(|| panic!("{}: bad header line {line:?}", path.display()));
            let value = value.trim().to_owned();
            match key {
                "args" => case.args = value,
                "as" => case.who = value,
                "status" => case.status = value.parse().unwrap(),
                "phase" => case.offline = value == "offline",
                "env" => {
                    let (k, v) = value.split_once('=').unwrap();
                    case.env.push((k.to_owned(), v.to_owned()));
                }
                "save" => {
                    let (name, pointer) = value.split_once(' ').unwrap();
                    case.save.push((name.to_owned(), pointer.trim().to_owned()));
                }
                _ => panic!("{}: unknown header {key:?}", path.display()),
            }
        }
        case
    }

    fn name(&self) -> String {
        self.path.file_name().unwrap().to_string_lossy().into_owned()
    }

    /// Writes the case back with new results (SNAPSHOTS=overwrite).
    fn write(&self, status: i32, stdout: &str, stderr: &str) {
        let mut text = String::new();
        for line in &self.header {
            if line.starts_with("status:") {
                text.push_str(&format!("status: {status}\n"));
            } else {
                text.push_str(line);
                text.push('\n');
            }
        }
        text.push_str("--- stdout\n");
        text.push_str(stdout);
        text.push_str("--- stderr\n");
        text.push_str(stderr);
        std::fs::write(&self.path, text).unwrap();
    }
}

/// Splits `args` on whitespace; 'single quotes' group words (double quotes are kept, for JSON).
fn split_args(args: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in args.chars() {
        match c {
            '\'' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any {
                    out.push(std::mem::take(&mut word));
                    any = false;
                }
            }
            c => {
                word.push(c);
                any = true;
            }
        }
    }
    assert!(!quoted, "unbalanced quote in {args:?}");
    if any {
        out.push(word);
    }
    out
}

/// One HSM admin: their own token and the public file `admin keygen --hsm` wrote.
struct HsmAdmin {
    id: &'static str,
    token: TestToken,
    public: PathBuf,
}

/// The scenario the cases run in.
struct Lab {
    dir: tempfile::TempDir,
    admins: Vec<HsmAdmin>,
    server: Vec<(String, String)>,
    /// Placeholder -> value: substituted into args and redacted from outputs.
    vars: BTreeMap<String, String>,
}

impl Lab {
    fn admin(&self, id: &str) -> &HsmAdmin {
        self.admins
            .iter()
            .find(|a| a.id == id)
            .unwrap_or_else(|| panic!("no admin {id:?}"))
    }

    fn point_at(&mut self, server: &TestServer, pki: &Pki) {
        let (cert, key) = pki.client_files("spiffe://test/kmsctl", "kmsctl");
        self.server = vec![
            ("KMSCTL_SERVER".into(), format!("https://{}", server.addr)),
            ("KMSCTL_TLS_SERVER_NAME".into(), "localhost".into()),
            ("KMSCTL_CA".into(), pki.ca_path().display().to_string()),
            ("KMSCTL_CERT".into(), cert.display().to_string()),
            ("KMSCTL_CLIENT_KEY".into(), key.display().to_string()),
            // The test kmsd has no hardware evidence to verify its answers' signer by.
            ("KMSCTL_DANGER_UNATTESTED_KMSD".into(), "1".into()),
        ];
        self.vars.insert("ADDR".into(), server.addr.to_string());
    }

    fn substitute(&self, s: &str) -> String {
        let mut s = s.to_owned();
        for (name, value) in &self.vars {
            s = s.replace(&format!("[{name}]"), value);
        }
        s
    }

    /// Runs kmsctl as `who` (an admin id, or `nobody`: no admin credential).
    async fn run(&self, who: &str, args: &[String], env: &[(String, String)]) -> Out {
        let mut cmd = kmsctl_command(KMSCTL);
        cmd.args(args).current_dir(self.dir.path());
        cmd.envs(self.server.iter().map(|(k, v)| (k, v)));
        if who != "nobody" {
            let a = self.admin(who);
            let (conf_var, conf) = a.token.env();
            cmd.env(conf_var, conf)
                .env("KMSCTL_HSM_MODULE", softhsm_fixture::module_path())
                .env("KMSCTL_HSM_TOKEN", format!("label:{}", a.token.label))
                .env("KMSCTL_HSM_PIN", format!("env:{PIN_VAR}"))
                .env(PIN_VAR, &a.token.user_pin)
                .env("KMSCTL_ADMIN_PUB", &a.public);
        }
        for (k, v) in env {
            cmd.env(k, self.substitute(v));
        }
        let out = cmd.output().await.expect("run kmsctl");
        Out::from(out)
    }

    async fn must(&self, who: &str, args: &[&str]) -> Out {
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        let out = self.run(who, &args, &[]).await;
        assert_eq!(
            out.code, 0,
            "kmsctl {args:?} as {who}\nstdout: {}\nstderr: {}",
            out.stdout, out.stderr
        );
        out
    }

    /// The redactions for outputs: every known value, and patterns for what changes per run.
    fn redactions(&self) -> Redactions {
        let mut r = Redactions::new();
        for (name, value) in &self.vars {
            let placeholder: &'static str = Box::leak(format!("[{name}]").into_boxed_str());
            r.insert(placeholder, value.clone()).unwrap();
        }
        for a in &self.admins {
            // Never expected in any output; redacted so a leak shows as a placeholder, not a PIN.
            let pin: &'static str = Box::leak(format!("[{}_PIN]", a.id.to_uppercase()).into_boxed_str());
            r.insert(pin, a.token.user_pin.clone()).unwrap();
            let token: &'static str = Box::leak(format!("[{}_TOKEN]", a.id.to_uppercase()).into_boxed_str());
            r.insert(token, a.token.label.clone()).unwrap();
        }
        r.insert(
            "[TIME]",
            regex::Regex::new(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})").unwrap(),
        )
        .unwrap();
        r.insert("[HASH]", regex::Regex::new(r"\b[0-9a-f]{64}\b").unwrap())
            .unwrap();
        // Uncompressed P-256 points: admin keys, and the unseal key of each server start.
        r.insert("[PUBKEY]", regex::Regex::new(r"\b04[0-9a-f]{128}\b").unwrap())
            .unwrap();
        r.insert(
            "[FINGERPRINT]",
            regex::Regex::new(r"sha256:(?<redacted>[0-9a-f]{16})\b").unwrap(),
        )
        .unwrap();
        r.insert(
            "[STATE_VERSION]",
            regex::Regex::new(r#"(state_version": |state version:   )(?<redacted>\d+)"#).unwrap(),
        )
        .unwrap();
        r.insert(
            "[UNIX_MS]",
            regex::Regex::new(r#"_unix_ms": (?<redacted>\d+)"#).unwrap(),
        )
        .unwrap();
        r
    }
}

/// Every admin's token, made before anything loads the SoftHSM2 module.
fn admins(dir: &Path) -> Vec<HsmAdmin> {
    ["alice", "bob", "carol"]
        .into_iter()
        .map(|id| HsmAdmin {
            id,
            token: softhsm_fixture::init_token(&softhsm_fixture::unique_label(&format!("cc-{id}"))),
            public: dir.join(format!("{id}.pub.json")),
        })
        .collect()
}

/// Runs one case; `Err` with a report if it does not match (or the file was rewritten).
async fn run_case(lab: &mut Lab, assert: &Assert, case: &Case) -> Result<(), String> {
    let args: Vec<String> = split_args(&case.args).iter().map(|a| lab.substitute(a)).collect();
    let out = lab.run(&case.who, &args, &case.env).await;
    for (name, pointer) in &case.save {
        let doc: serde_json::Value = serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("{}: save needs JSON on stdout ({e}): {}", case.name(), out.stdout));
        let value = doc
            .pointer(pointer)
            .and_then(|v| v.as_str())
            .unwrap_or_else(|| panic!("{}: no string at {pointer} in {doc}", case.name()));
        lab.vars.insert(name.clone(), value.to_owned());
    }
    let assert = assert.clone().redact_with(lab.redactions());
    let overwrite = assert.selected_action() == snapbox::assert::Action::Overwrite;
    let mut report = String::new();
    let mut sections = Vec::new();
    for (what, actual, expected) in [
        ("stdout", &out.stdout, &case.stdout),
        ("stderr", &out.stderr, &case.stderr),
    ] {
        let (actual, expected) = assert.normalize(Data::text(actual.clone()), Data::text(expected.clone()));
        let actual = actual.render().unwrap();
        let expected = expected.render().unwrap();
        if actual != expected {
            report.push_str(&format!("--- {what}: expected\n{expected}--- {what}: actual\n{actual}"));
        }
        sections.push(actual);
    }
    if out.code != case.status {
        report.push_str(&format!("exit code: expected {}, got {}\n", case.status, out.code));
    }
    if report.is_empty() {
        return Ok(());
    }
    if overwrite {
        case.write(out.code, &sections[0], &sections[1]);
        eprintln!("rewrote {}", case.name());
        return Ok(());
    }
    Err(format!("{} (kmsctl {})\n{report}", case.name(), case.args))
}

/// One scenario at a time: `softhsm2-util --init-token` racing another test's token creation or
/// kmsctl runs on the shared SoftHSM2 configuration fails now and then ("Could not get info about
/// the token in slot 0").
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn cases(backend: Backend) {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let admins = admins(dir.path());
    let Some(db) = Db::new(backend).await else {
        return;
    };
    let mut lab = Lab {
        dir,
        admins,
        server: Vec::new(),
        vars: BTreeMap::new(),
    };
    lab.vars.insert("TMP".into(), lab.dir.path().display().to_string());
    lab.vars.insert("DB".into(), db.url.clone());

    // Keys generated inside each token; a software admin to add, and one from outside the EU.
    for (id, country) in [("alice", "DE"), ("bob", "FR"), ("carol", "NL")] {
        let public = lab.admin(id).public.display().to_string();
        lab.must(
            id,
            &[
                "admin",
                "keygen",
                "--hsm",
                "--id",
                id,
                "--country",
                country,
                "--out",
                &public,
            ],
        )
        .await;
    }
    for (id, country) in [("dave", "AT"), ("uma", "US")] {
        let out = format!("{id}.key");
        lab.must(
            "nobody",
            &["admin", "keygen", "--id", id, "--country", country, "--out", &out],
        )
        .await;
    }

    let pki = Pki::new();
    let pubs: Vec<String> = ["alice", "bob", "carol"]
        .iter()
        .map(|id| lab.admin(id).public.display().to_string())
        .collect();
    // The server pins the three admins' fingerprints: only they can initialize it.
    let pinned = || Options {
        init_admins: Some(fingerprints_of(&pubs)),
        ..Options::default()
    };
    let server = TestServer::start(&db, &pki, pinned()).await;
    lab.point_at(&server, &pki);
    lab.must(
        "alice",
        &[
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
    .await;
    let keys = lab.must("alice", &["audit", "checkpoint-keys"]).await;
    std::fs::write(lab.dir.path().join("checkpoint-keys.json"), keys.stdout).unwrap();

    // Restarted on the same database: sealed; two custodians unseal with their tokens.
    server.stop().await;
    let server = TestServer::start(&db, &pki, pinned()).await;
    lab.point_at(&server, &pki);
    lab.must("alice", &["--danger-unattested-kmsd", "unseal"]).await;
    lab.must("bob", &["--danger-unattested-kmsd", "unseal"]).await;
    let status = lab.must("alice", &["--output", "json", "status"]).await;
    let status: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    let kcv = status["key_check_value"].as_str().unwrap().to_owned();
    lab.vars.insert("KCV".into(), kcv);
    let deployment = status["deployment_id"].as_str().unwrap().to_owned();
    lab.vars.insert("DEPLOYMENT".into(), deployment);

    let mut files: Vec<PathBuf> = std::fs::read_dir(cases_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "case"))
        .collect();
    files.sort();
    let all: Vec<Case> = files.iter().map(|p| Case::read(p)).collect();
    assert!(!all.is_empty(), "no cases in {}", cases_dir().display());
    let assert = Assert::new().action_env("SNAPSHOTS");
    let mut failures = Vec::new();
    for case in all.iter().filter(|c| !c.offline) {
        if let Err(e) = run_case(&mut lab, &assert, case).await {
            failures.push(e);
        }
    }
    // Stopping unsealed signs a checkpoint of the audit head, which the offline cases verify.
    server.stop().await;
    for case in all.iter().filter(|c| c.offline) {
        if let Err(e) = run_case(&mut lab, &assert, case).await {
            failures.push(e);
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ (SNAPSHOTS=overwrite rewrites them):\n\n{}",
        failures.len(),
        all.len(),
        failures.join("\n")
    );
}
both_backends!(cli_cases, super::cases);
