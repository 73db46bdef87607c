//! kmsd's Prometheus endpoint (`[metrics]`), on a real `kmsd` process over mTLS, on SQLite and
//! PostgreSQL: scraped over HTTP and parsed by the official Prometheus text-format parser
//! (Python `prometheus_client`, pinned in scripts/peer-requirements.txt, venv by
//! scripts/peer-venv). The counts match the calls made (successes and refusals by reason and
//! code), the latency histograms are complete, the seal gauges follow Init and Seal, the pool
//! gauges show the backend, checkpoints are seen, an attestation refusal is counted by its check,
//! and no label carries a key name or a principal. Without `[metrics]` the process listens on the
//! gRPC port alone.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kms_proto::v1 as pb;
use kms_proto::v1::admin_request::Operation as Op;
use kms_testkit::attest::Workload;
use kms_testkit::*;

const APP: &str = "spiffe://eu.example/metrics-app";
const STRANGER: &str = "spiffe://eu.example/metrics-stranger";
const KEY: &str = "metrics-key";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The peers' venv python (built on first use; needs PyPI).
fn python() -> PathBuf {
    peer_python().unwrap_or_else(|e| panic!("the Prometheus parser is required: {e}"))
}

/// One sample as the parser read it.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: serde_json::Value,
}

/// A scrape, parsed: family name → (type, samples).
#[derive(Debug)]
struct Scrape {
    families: BTreeMap<String, (String, Vec<Sample>)>,
}

impl Scrape {
    /// The value of the sample `name` with exactly `labels` (`None` if there is none).
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        self.families
            .values()
            .flat_map(|(_, s)| s)
            .find(|s| s.name == name && s.labels == want)
            .map(|s| {
                s.value
                    .as_f64()
                    .unwrap_or_else(|| panic!("{name} {labels:?}: {:?}", s.value))
            })
    }

    fn must(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(name, labels).unwrap_or_else(|| {
            panic!(
                "no sample {name} {labels:?} in the scrape:\n{:#?}",
                self.families.keys()
            )
        })
    }

    fn kind(&self, family: &str) -> &str {
        &self
            .families
            .get(family)
            .unwrap_or_else(|| panic!("no family {family}"))
            .0
    }

    fn samples(&self) -> impl Iterator<Item = &Sample> {
        self.families.values().flat_map(|(_, s)| s)
    }
}

/// Scrapes and parses with prometheus_client.
async fn scrape(python: &std::path::Path, port: u16) -> Scrape {
    let (status, body) = http_get(port, "/metrics").await;
    assert!(status.contains(" 200 "), "{status}");
    let mut child = Command::new(python)
        .arg(root().join("tests/tests/peer/prom_parse.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Dropped after writing: the parser reads to the end of its input.
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), body.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus_client refused the exposition: {}\n{body}",
        String::from_utf8_lossy(&out.stderr)
    );
    let parsed: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let mut families = BTreeMap::new();
    for f in parsed {
        let samples = f["samples"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| Sample {
                name: s["name"].as_str().unwrap().to_owned(),
                labels: serde_json::from_value(s["labels"].clone()).unwrap(),
                value: s["value"].clone(),
            })
            .collect();
        families.insert(
            f["name"].as_str().unwrap().to_owned(),
            (f["type"].as_str().unwrap().to_owned(), samples),
        );
    }
    Scrape { families }
}

/// The TCP ports `pid` listens on (its sockets in state LISTEN, from /proc).
fn listening_ports(pid: u32) -> BTreeSet<u16> {
    let mut inodes = BTreeSet::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
        if let Ok(target) = std::fs::read_link(fd.unwrap().path()) {
            let t = target.to_string_lossy().into_owned();
            if let Some(n) = t.strip_prefix("socket:[").and_then(|r| r.strip_suffix(']')) {
                inodes.insert(n.to_owned());
            }
        }
    }
    let mut ports = BTreeSet::new();
    for table in ["tcp", "tcp6"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            // local_address st ... inode: 0A is LISTEN.
            if cols.len() > 9 && cols[3] == "0A" && inodes.contains(cols[9]) {
                let port = cols[1].rsplit(':').next().unwrap();
                ports.insert(u16::from_str_radix(port, 16).unwrap());
            }
        }
    }
    ports
}

const OK: &[(&str, &str)] = &[
    ("service", "kms.v1.KeyService"),
    ("method", "GenerateDataKey"),
    ("code", "OK"),
    ("reason", "ok"),
];

fn gdk(code: &'static str, reason: &'static str) -> [(&'static str, &'static str); 4] {
    [
        ("service", "kms.v1.KeyService"),
        ("method", "GenerateDataKey"),
        ("code", code),
        ("reason", reason),
    ]
}

async fn generate(
    data: &mut pb::key_service_client::KeyServiceClient<tonic::transport::Channel>,
    key: &str,
) -> Result<(), tonic::Status> {
    data.generate_data_key(pb::GenerateDataKeyRequest {
        key: key.into(),
        encryption_context: [("app".to_owned(), "metrics".to_owned())].into(),
        ..Default::default()
    })
    .await
    .map(|_| ())
}

fn custodians() -> [kms_core::keyfile::AdminKeyFile; 3] {
    [admin("alice", "DE"), admin("bob", "FR"), admin("carol", "NL")]
}

/// The configuration: Init pinned to `custodians`, checkpoints every second, metrics on `port`.
fn config(custodians: &[kms_core::keyfile::AdminKeyFile], port: u16, more: &str) -> String {
    let pinned: Vec<String> = fingerprints(custodians).iter().map(|f| format!("\"{f}\"")).collect();
    format!(
        "[admin]\ninit_admins = [{}]\n[audit]\ncheckpoint_interval_secs = 1\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n{more}",
        pinned.join(", ")
    )
}

type Admin = pb::admin_service_client::AdminServiceClient<tonic::transport::Channel>;

/// Init: shamir, 2 of the 3 custodians, approval quorum 1.
async fn init_shamir(admin_c: &mut Admin, custodians: &[kms_core::keyfile::AdminKeyFile]) {
    let status = init(
        admin_c,
        &custodians[0],
        pb::InitOp {
            seal: pb::SealKind::Shamir as i32,
            threshold: 2,
            admins: custodians.iter().map(|c| new_admin(c, true)).collect(),
            approval_quorum: 1,
        },
    )
    .await
    .unwrap();
    assert!(!status.sealed);
}

async fn create_key(admin_c: &mut Admin, by: &kms_core::keyfile::AdminKeyFile, name: &str) {
    admin_c
        .create_key(signed(
            by,
            Op::CreateKey(pb::CreateKeyOp {
                name: name.into(),
                grants: grants_all(&[APP]),
                release_policy: UNATTESTED.into(),
                ..Default::default()
            }),
        ))
        .await
        .unwrap();
}

async fn counts_match_the_calls(backend: Backend) {
    let python = python();
    let Some(db) = Db::new(backend).await else { return };
    let pki = Pki::new();
    let custodians = custodians();
    let port = free_port();
    let kmsd = KmsdProcess::start(&db, &pki, &config(&custodians, port, "")).await;
    let pid = kmsd.pid().unwrap();
    assert_eq!(
        listening_ports(pid),
        BTreeSet::from([kmsd.addr.port(), port]),
        "kmsd listens on the gRPC port and the metrics port"
    );
    // Anything but GET /metrics is refused.
    assert!(http_get(port, "/").await.0.contains(" 404 "));

    let before = scrape(&python, port).await;
    assert_eq!(before.must("kms_seal_state", &[("state", "uninitialized")]), 1.0);
    assert_eq!(before.must("kms_seal_state", &[("state", "unsealed")]), 0.0);
    for kind in ["shamir", "dev", "pkcs11"] {
        assert_eq!(before.must("kms_seal_kind", &[("kind", kind)]), 0.0, "{kind}");
    }
    assert_eq!(before.must("kms_grpc_requests_total", OK), 0.0);

    let mut admin_c = kmsd.admin(&pki).await;
    init_shamir(&mut admin_c, &custodians).await;
    create_key(&mut admin_c, &custodians[0], KEY).await;

    // 3 released, 2 for a key that does not exist, 1 by a principal without a grant.
    let mut data = kmsd.data(&pki, APP).await;
    for _ in 0..3 {
        generate(&mut data, KEY).await.unwrap();
    }
    for _ in 0..2 {
        assert_eq!(
            reason(&generate(&mut data, "no-such-key").await.unwrap_err()),
            "key_not_found"
        );
    }
    let mut stranger = kmsd.data(&pki, STRANGER).await;
    assert_eq!(
        reason(&generate(&mut stranger, KEY).await.unwrap_err()),
        "not_permitted"
    );
    // Evidence that does not parse: refused by the verifier's malformed-evidence check.
    let mut workload = Workload::new(&kmsd, &pki, APP).await;
    let refused = workload
        .attest_snp(|_, _| pb::SnpEvidence {
            report: vec![0; 64],
            vek_certificate: Vec::new(),
            cert_chain: Vec::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&refused), "evidence_malformed");

    // Refusals and reads are queued for the audit writer, which commits them with its next
    // batch after the call has answered: scrape once the writer has written them.
    let start = Instant::now();
    let s = loop {
        let s = scrape(&python, port).await;
        if s.value("kms_audit_records_written_total", &[])
            .is_some_and(|n| n >= 4.0)
        {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the audit writer did not write the four refusals within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(s.kind("kms_grpc_requests"), "counter");
    assert_eq!(s.kind("kms_grpc_request_duration_seconds"), "histogram");
    assert_eq!(s.kind("kms_seal_state"), "gauge");
    assert_eq!(s.must("kms_grpc_requests_total", OK), 3.0);
    assert_eq!(
        s.must("kms_grpc_requests_total", &gdk("NOT_FOUND", "key_not_found")),
        2.0
    );
    assert_eq!(
        s.must("kms_grpc_requests_total", &gdk("PERMISSION_DENIED", "not_permitted")),
        1.0
    );
    let attest = |code, reason| {
        [
            ("service", "kms.v1.AttestationService"),
            ("method", "Attest"),
            ("code", code),
            ("reason", reason),
        ]
    };
    assert_eq!(
        s.must(
            "kms_grpc_requests_total",
            &attest("INVALID_ARGUMENT", "evidence_malformed")
        ),
        1.0
    );
    assert_eq!(
        s.must(
            "kms_grpc_requests_total",
            &[
                ("service", "kms.v1.AttestationService"),
                ("method", "GetChallenge"),
                ("code", "OK"),
                ("reason", "ok")
            ]
        ),
        1.0
    );
    assert_eq!(
        s.must(
            "kms_attestation_refusals_total",
            &[("tee", "snp"), ("check", "malformed_evidence")]
        ),
        1.0
    );
    // Each histogram series is complete: buckets rise to +Inf, which equals the count.
    for (labels, n) in [
        (OK.to_vec(), 3.0),
        (gdk("NOT_FOUND", "key_not_found").to_vec(), 2.0),
        (gdk("PERMISSION_DENIED", "not_permitted").to_vec(), 1.0),
    ] {
        assert_eq!(
            s.must("kms_grpc_request_duration_seconds_count", &labels),
            n,
            "{labels:?}"
        );
        let mut inf = labels.clone();
        inf.push(("le", "+Inf"));
        assert_eq!(
            s.must("kms_grpc_request_duration_seconds_bucket", &inf),
            n,
            "{labels:?}"
        );
        let buckets: Vec<f64> = s
            .samples()
            .filter(|x| {
                x.name == "kms_grpc_request_duration_seconds_bucket"
                    && labels
                        .iter()
                        .all(|(k, v)| x.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|x| x.value.as_f64().unwrap())
            .collect();
        assert!(buckets.len() > 5, "{labels:?}: {buckets:?}");
        assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{labels:?}: {buckets:?}");
        assert!(s.must("kms_grpc_request_duration_seconds_sum", &labels) > 0.0);
    }
    // The seal, after Init.
    assert_eq!(s.must("kms_seal_state", &[("state", "unsealed")]), 1.0);
    assert_eq!(s.must("kms_seal_state", &[("state", "uninitialized")]), 0.0);
    assert_eq!(s.must("kms_seal_kind", &[("kind", "shamir")]), 1.0);
    assert_eq!(s.must("kms_root_generation", &[]), 1.0);
    assert_eq!(s.must("kms_integrity_alarm", &[]), 0.0);
    assert_eq!(s.must("kms_root_rotation_in_progress", &[]), 0.0);
    // The pool of this backend.
    let b = match backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
    };
    assert_eq!(s.must("kms_db_pool_max_connections", &[("backend", b)]), 16.0);
    let open = s.must("kms_db_pool_connections", &[("backend", b), ("state", "idle")])
        + s.must("kms_db_pool_connections", &[("backend", b), ("state", "in_use")]);
    assert!((1.0..=16.0).contains(&open), "{open}");
    // The audit writer wrote every refusal and read (the releases and Init commit their own).
    assert!(s.must("kms_audit_commit_duration_seconds_count", &[("outcome", "ok")]) >= 1.0);
    assert_eq!(s.kind("kms_audit_queue_depth"), "gauge");
    s.must("kms_audit_queue_depth", &[]);
    // No label value names a key or a principal.
    for x in s.samples() {
        for v in x.labels.values() {
            assert!(
                !v.contains(KEY) && !v.contains("spiffe") && !v.contains("no-such-key"),
                "{x:?}"
            );
        }
    }

    // Checkpoints every second: the chain is covered and the newest checkpoint is young.
    let start = Instant::now();
    loop {
        let s = scrape(&python, port).await;
        let age = s.value("kms_audit_checkpoint_age_seconds", &[]);
        if age.is_some_and(|a| a < 30.0) && s.must("kms_audit_uncheckpointed_records", &[]) == 0.0 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "no checkpoint seen: {age:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // Sealed: the gauge follows, and a release is refused `sealed`.
    admin_c
        .seal(signed(&custodians[0], Op::Seal(pb::SealOp {})))
        .await
        .unwrap();
    assert_eq!(reason(&generate(&mut data, KEY).await.unwrap_err()), "sealed");
    let s = scrape(&python, port).await;
    assert_eq!(s.must("kms_seal_state", &[("state", "sealed")]), 1.0);
    assert_eq!(s.must("kms_seal_state", &[("state", "unsealed")]), 0.0);
    assert_eq!(s.must("kms_seal_kind", &[("kind", "shamir")]), 1.0);
    assert_eq!(s.must("kms_grpc_requests_total", &gdk("UNAVAILABLE", "sealed")), 1.0);
    assert_eq!(s.must("kms_grpc_requests_total", OK), 3.0);
}

both_backends!(counts_match_the_calls_made, super::counts_match_the_calls);

/// A root rotation (shamir to shamir, one secret per batch, slowly): the gauges show it under way
/// with secrets left, the counters the rows the worker moved, and then its end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_progress() {
    let python = python();
    let db = Db::new(Backend::Sqlite).await.unwrap();
    let pki = Pki::new();
    let custodians = custodians();
    let port = free_port();
    // Slow enough that a scrape (a Python process each) sees the six key versions still left
    // on a loaded machine: over a second with at least six to go.
    let more = "[seal]\nrotation_batch_size = 1\nrotation_batch_pause_ms = 400\n";
    let kmsd = KmsdProcess::start(&db, &pki, &config(&custodians, port, more)).await;
    let mut admin_c = kmsd.admin(&pki).await;
    init_shamir(&mut admin_c, &custodians).await;
    for i in 0..6 {
        create_key(&mut admin_c, &custodians[0], &format!("rotated-{i}")).await;
    }
    let s = scrape(&python, port).await;
    assert_eq!(s.must("kms_root_rotation_in_progress", &[]), 0.0);
    assert_eq!(s.must("kms_root_rotation_remaining", &[]), 0.0);
    assert_eq!(s.value("kms_root_rotations_completed_total", &[]), None);

    admin_c
        .propose(propose(
            &custodians[0],
            pb::quorum_operation::Operation::RotateRoot(pb::RotateRootOp {
                seal: pb::SealKind::Shamir as i32,
                threshold: 2,
                custodians: vec!["alice".into(), "bob".into(), "carol".into()],
            }),
        ))
        .await
        .unwrap();
    // Under way: the next generation is held, and at least the six key versions are left.
    let start = Instant::now();
    let mut seen_under_way = false;
    loop {
        let s = scrape(&python, port).await;
        if s.value("kms_root_rotations_completed_total", &[]) == Some(1.0) {
            assert!(seen_under_way, "the rotation was never seen under way");
            // The counter moves at completion; the gauges at the next sample of the seal
            // (every second).
            let mut s = s;
            for _ in 0..30 {
                if s.must("kms_root_rotation_in_progress", &[]) == 0.0 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                s = scrape(&python, port).await;
            }
            assert_eq!(s.must("kms_root_rotation_in_progress", &[]), 0.0);
            assert_eq!(s.must("kms_root_rotation_remaining", &[]), 0.0);
            assert_eq!(s.must("kms_root_generation", &[]), 2.0);
            assert_eq!(s.must("kms_seal_state", &[("state", "unsealed")]), 1.0);
            assert!(s.must("kms_root_rotation_rows_total", &[("step", "rewrap")]) >= 6.0);
            assert!(s.must("kms_root_rotation_rows_total", &[("step", "reauthenticate")]) >= 1.0);
            break;
        }
        if s.must("kms_root_rotation_in_progress", &[]) == 1.0 {
            assert_eq!(s.must("kms_root_generation", &[]), 1.0);
            if s.must("kms_root_rotation_remaining", &[]) >= 6.0 {
                seen_under_way = true;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the rotation did not complete"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Without `[metrics]` kmsd listens on its gRPC port and nowhere else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_metrics_listener_unless_configured() {
    let db = Db::new(Backend::Sqlite).await.unwrap();
    let pki = Pki::new();
    let kmsd = KmsdProcess::start(&db, &pki, "").await;
    assert_eq!(listening_ports(kmsd.pid().unwrap()), BTreeSet::from([kmsd.addr.port()]));
}
