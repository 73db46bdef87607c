//! The database is hostile (docs/threat-model.md, adversary 1): a real `kmsd` process (shamir
//! seal, mTLS) on SQLite and PostgreSQL, and an attacker who runs SQL against its database and
//! holds no admin key, no TPM and no HSM. Every row `kmsd` acts on is authenticated, and every
//! tracked row's version is in the state log, so:
//!
//! - the tamper matrix, over every authenticated table: a forged row inserted, a row given
//!   another row's authenticator, each column of a row changed, a row deleted — each is refused
//!   (`row_integrity`, or `row_rollback` for the deletion), written to the audit log, and the
//!   rows that verify keep being served;
//! - the attacks of issue 10, each played against the running server: an inserted admin, a
//!   replaced admin key, widened grants, a deletion time moved into the past, a TPM AK name
//!   replaced by one that was never credential-activated, a proposal's stored operation changed
//!   after approval, and older genuine rows put back (a revoked machine active again, a removed
//!   admin restored, an earlier policy, an earlier quorum) — refused, audited, nothing released.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use attestation::attester::tpm::{AkKey, AkScheme, EkKind, Tpm};
use kms_core::keyfile::AdminKeyFile;
use kms_proto::v1 as pb;
use kms_proto::v1::admin_request::Operation as Op;
use kms_proto::v1::admin_service_client::AdminServiceClient;
use kms_testkit::attest::*;
use kms_testkit::swtpm::*;
use kms_testkit::*;
use sqlx::Row as _;
use tonic::transport::Channel;
use tonic::Code;

const APP: &str = "spiffe://eu.example/app";
const MALLORY: &str = "spiffe://eu.example/mallory";

/// The authenticated tables and their primary keys.
const TABLES: &[(&str, &[&str])] = &[
    ("seal_config", &["id"]),
    ("root_generations", &["generation"]),
    ("root_shares", &["generation", "admin_id"]),
    ("admins", &["id"]),
    ("keys", &["id"]),
    ("key_versions", &["key_id", "version"]),
    ("release_policies", &["key_id", "version"]),
    ("hardware", &["id"]),
    ("tpm_enrollments", &["id"]),
    ("proposals", &["id"]),
    ("approvals", &["proposal_id", "admin_id"]),
    ("rejections", &["proposal_id", "admin_id"]),
    ("token_keys", &["version"]),
    ("checkpoint_keys", &["kid"]),
    ("admin_requests", &["nonce"]),
    ("replicas", &["id"]),
    ("tpm_clocks", &["ak_name"]),
];

const AUTH: [&str; 3] = ["row_version", "row_generation", "row_mac"];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Int,
    Text,
    Bytes,
}

/// A kmsd process under attack, with a machine of each kind enrolled and keys in use.
struct Lab {
    backend: Backend,
    db: Db,
    pki: Pki,
    kmsd: KmsdProcess,
    admin: AdminServiceClient<Channel>,
    custodians: Vec<AdminKeyFile>,
    snp: SnpLab,
    swtpm: Swtpm,
    metrics_port: u16,
    /// The configuration beside the database and TLS (for a replica's).
    extra: String,
    _dir: tempfile::TempDir,
}

impl Lab {
    async fn start(backend: Backend) -> Option<Self> {
        let db = Db::new(backend).await?;
        let pki = Pki::new();
        let snp = SnpLab::new();
        let swtpm = Swtpm::start();
        let dir = tempfile::tempdir().unwrap();
        let custodians = vec![admin("alice", "DE"), admin("bob", "FR"), admin("carol", "NL")];
        let roots = snp
            .roots()
            .iter()
            .map(|r| {
                format!(
                    "[[danger.snp_test_roots]]\nproduct = \"{}\"\nsigner = \"{}\"\nark = \"{}\"\nask = \"{}\"\n",
                    r.product,
                    r.signer,
                    r.ark.display(),
                    r.ask.display()
                )
            })
            .collect::<String>();
        let pinned = fingerprints(&custodians)
            .iter()
            .map(|f| format!("\"{f}\""))
            .collect::<Vec<_>>()
            .join(", ");
        // Every row checked each second; key metadata read from the database at every call;
        // admin requests' nonces kept for the longest window (none is purged while a test runs,
        // so a snapshot of the tables restored later holds only rows kmsd still has).
        let metrics_port = free_port();
        let extra = format!(
            "[admin]\ninit_admins = [{pinned}]\nrequest_window_secs = 3600\n[integrity]\nscan_interval_secs = 1\n[keys]\ncache_ttl_ms = 0\n\
             [audit]\ncheckpoint_interval_secs = 1\n[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n\
             [attestation]\ntpm_ek_ca_bundle = \"{}\"\n{}{roots}",
            swtpm.ca_bundle_path().display(),
            snp_any_platform_toml()
        );
        let kmsd = KmsdProcess::start(&db, &pki, &extra).await;
        let mut admin_c = kmsd.admin(&pki).await;
        let status = init(
            &mut admin_c,
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
        Some(Self {
            backend,
            db,
            pki,
            kmsd,
            admin: admin_c,
            custodians,
            snp,
            swtpm,
            metrics_port,
            extra,
            _dir: dir,
        })
    }

    /// Another replica on the database, configured as this one (its metrics on another port),
    /// unsealed by alice and bob.
    async fn replica(&self) -> (KmsdProcess, AdminServiceClient<Channel>) {
        let metrics = format!("listen = \"127.0.0.1:{}\"", self.metrics_port);
        let extra = self
            .extra
            .replace(&metrics, &format!("listen = \"127.0.0.1:{}\"", free_port()));
        let kmsd = KmsdProcess::start(&self.db, &self.pki, &extra).await;
        let mut admin_c = kmsd.admin(&self.pki).await;
        submit_share(&mut admin_c, &self.custodians[0]).await.unwrap();
        let s = submit_share(&mut admin_c, &self.custodians[1]).await.unwrap();
        assert!(!s.sealed, "{s:?}");
        (kmsd, admin_c)
    }

    /// kmsd's counter `name` (no labels), from its metrics endpoint.
    async fn counter(&self, name: &str) -> f64 {
        let (status, body) = http_get(self.metrics_port, "/metrics").await;
        assert!(status.contains(" 200 "), "{status}");
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }

    fn alice(&self) -> &AdminKeyFile {
        &self.custodians[0]
    }

    async fn drop_foreign_keys(&self) {
        drop_foreign_keys(&self.db).await;
    }

    async fn sql(&self, sql: &str) {
        run_as_operator(&self.db, &[sql.to_owned()]).await;
    }

    async fn sql_all(&self, statements: &[String]) {
        run_as_operator(&self.db, statements).await;
    }

    async fn create_key(&self, name: &str, principals: &[&str], policy: &str) -> pb::KeyMetadata {
        self.admin
            .clone()
            .create_key(signed(
                self.alice(),
                Op::CreateKey(pb::CreateKeyOp {
                    name: name.into(),
                    grants: grants_all(principals),
                    release_policy: policy.into(),
                    ..Default::default()
                }),
            ))
            .await
            .unwrap()
            .into_inner()
    }

    async fn encrypt(&self, principal: &str, key: &str) -> Result<Vec<u8>, tonic::Status> {
        self.kmsd
            .data(&self.pki, principal)
            .await
            .encrypt(pb::EncryptRequest {
                key: key.into(),
                plaintext: b"payroll 2026".to_vec(),
                encryption_context: Default::default(),
                sealed_plaintext: None,
            })
            .await
            .map(|r| r.into_inner().ciphertext_blob)
    }

    async fn decrypt(&self, principal: &str, blob: &[u8]) -> Result<Vec<u8>, tonic::Status> {
        self.kmsd
            .data(&self.pki, principal)
            .await
            .decrypt(pb::DecryptRequest {
                ciphertext_blob: blob.to_vec(),
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner().plaintext)
    }

    async fn audit_seq(&self) -> i64 {
        let mut conn = self.db.connect().await;
        sqlx::query("SELECT seq FROM audit_head WHERE id = 1")
            .fetch_one(&mut conn)
            .await
            .unwrap()
            .get("seq")
    }

    /// The integrity violations audited after `after`: (table, row, reason).
    async fn violations(&self, after: i64) -> BTreeSet<(String, String, String)> {
        let mut conn = self.db.connect().await;
        sqlx::query("SELECT reason, detail FROM audit_log WHERE operation = 'integrity.violation' AND seq > $1")
            .bind(after)
            .fetch_all(&mut conn)
            .await
            .unwrap()
            .iter()
            .map(|r| {
                let d: serde_json::Value = serde_json::from_str(&r.get::<String, _>("detail")).unwrap();
                (
                    d["table"].as_str().unwrap().to_owned(),
                    d["row"].as_str().unwrap().to_owned(),
                    r.get::<String, _>("reason"),
                )
            })
            .collect()
    }

    /// Waits until every `(table, row, reason)` of `expected` is audited after `after`.
    async fn expect_violations(&self, after: i64, expected: &BTreeSet<(String, String, String)>) {
        let mut found = BTreeSet::new();
        for _ in 0..150 {
            found = self.violations(after).await;
            if expected.is_subset(&found) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let missing: Vec<_> = expected.difference(&found).collect();
        panic!("not audited: {missing:?}\naudited: {found:?}");
    }

    /// Every column of `table`, in schema order, with its kind.
    async fn columns(&self, table: &str) -> Vec<(String, Kind)> {
        let mut conn = self.db.connect().await;
        let rows = match self.backend {
            Backend::Sqlite => sqlx::query(&format!(
                "SELECT name, type FROM pragma_table_info('{table}') ORDER BY cid"
            ))
            .fetch_all(&mut conn)
            .await
            .unwrap(),
            Backend::Postgres => sqlx::query(
                "SELECT column_name::text AS name, data_type::text AS type FROM information_schema.columns \
                 WHERE table_name = $1 AND table_schema = current_schema() ORDER BY ordinal_position",
            )
            .bind(table)
            .fetch_all(&mut conn)
            .await
            .unwrap(),
        };
        rows.iter()
            .map(|r| {
                let t: String = r.get("type");
                let kind = match t.to_ascii_lowercase().as_str() {
                    "integer" | "bigint" => Kind::Int,
                    "text" => Kind::Text,
                    "blob" | "bytea" => Kind::Bytes,
                    other => panic!("{table}: column type {other}"),
                };
                (r.get("name"), kind)
            })
            .collect()
    }

    /// The primary keys (as text, in key-column order) of `table`'s rows.
    async fn keys(&self, table: &str, pk: &[&str]) -> Vec<Vec<String>> {
        let mut conn = self.db.connect().await;
        let cols: Vec<String> = pk.iter().map(|c| format!("CAST({c} AS TEXT) AS {c}")).collect();
        sqlx::query(&format!(
            "SELECT {} FROM {table} ORDER BY {}",
            cols.join(", "),
            pk.join(", ")
        ))
        .fetch_all(&mut conn)
        .await
        .unwrap()
        .iter()
        .map(|r| pk.iter().map(|c| r.get::<String, _>(*c)).collect())
        .collect()
    }

    fn bytes_append(&self, col: &str) -> String {
        match self.backend {
            Backend::Sqlite => format!("CAST(COALESCE({col}, x'') || x'00' AS BLOB)"),
            Backend::Postgres => format!("COALESCE({col}, '\\x'::bytea) || '\\x00'::bytea"),
        }
    }

    /// `col` changed to another value of its kind.
    fn changed(&self, col: &str, kind: Kind) -> String {
        match kind {
            Kind::Int => format!("COALESCE({col}, 0) + 1"),
            Kind::Text => format!("COALESCE({col}, '') || 'x'"),
            Kind::Bytes => self.bytes_append(col),
        }
    }
}

fn where_key(pk: &[&str], key: &[String]) -> String {
    pk.iter()
        .zip(key)
        .map(|(c, v)| format!("CAST({c} AS TEXT) = '{}'", v.replace('\'', "''")))
        .collect::<Vec<_>>()
        .join(" AND ")
}

fn row_key(key: &[String]) -> String {
    serde_json::to_string(key).unwrap()
}

fn violation(table: &str, key: &[String], reason: &str) -> (String, String, String) {
    (table.to_owned(), row_key(key), reason.to_owned())
}

/// Fills every authenticated table with at least one row (two where the table can hold more):
/// keys, an SNP and a TPM machine (a TPM attestation writes its clock), a pending proposal
/// withdrawn by its proposer (a rejection) with the quorum at 2 for it, and back to 1.
async fn populate(lab: &mut Lab) -> (pb::KeyMetadata, Vec<u8>) {
    let kept = lab.create_key("kept", &[APP], UNATTESTED).await;
    lab.create_key("second", &[APP], UNATTESTED).await;
    let blob = lab.encrypt(APP, "kept").await.unwrap();
    let mut admin_c = lab.admin.clone();
    enroll_snp(
        &mut admin_c,
        lab.alice(),
        lab.snp.evidence(&lab.snp.report()),
        "DE",
        false,
    )
    .await
    .unwrap();
    let mut w = Workload::new(&lab.kmsd, &lab.pki, APP).await;
    let (ak, _) = enroll_tpm(lab, &mut w).await;
    w.attest_tpm(&lab.swtpm, &ak).await.unwrap();
    // A second, unused credential-activation attempt.
    let ek = Tpm::open(&lab.swtpm.tcti())
        .unwrap()
        .ek_certificate(EkKind::Rsa2048)
        .unwrap();
    w.attestation
        .begin_tpm_enrollment(pb::BeginTpmEnrollmentRequest {
            ek_certificate: ek,
            ek_intermediates: Vec::new(),
            ak_public: ak.public.clone(),
        })
        .await
        .unwrap();
    // Proposals, approvals and a rejection: M raised to 2, a proposal withdrawn by its proposer,
    // another approved (M back to 1).
    lab.admin.propose(signed_quorum(lab.alice(), 2)).await.unwrap();
    let withdrawn = lab
        .admin
        .propose(signed_quorum(lab.alice(), 3))
        .await
        .unwrap()
        .into_inner();
    lab.admin
        .reject(signed(
            lab.alice(),
            Op::Reject(pb::RejectOp {
                proposal_id: withdrawn.id,
                reason: "not now".into(),
            }),
        ))
        .await
        .unwrap();
    let p = lab
        .admin
        .propose(signed_quorum(lab.alice(), 1))
        .await
        .unwrap()
        .into_inner();
    lab.admin.approve(approve(&lab.custodians[1], &p)).await.unwrap();
    // A checkpoint key, token keys: made by the server on first use.
    lab.admin
        .get_audit_checkpoint_keys(pb::GetAuditCheckpointKeysRequest::default())
        .await
        .unwrap();
    (kept, blob)
}

fn signed_quorum(by: &AdminKeyFile, m: u32) -> pb::SignedRequest {
    signed(
        by,
        Op::Propose(pb::ProposeOp {
            operation: op_bytes(pb::quorum_operation::Operation::SetQuorum(pb::SetQuorumOp {
                approval_quorum: m,
            })),
            ttl_secs: 0,
        }),
    )
}

/// Enrols the lab's software TPM by credential activation; returns its AK and the entry.
async fn enroll_tpm(lab: &mut Lab, w: &mut Workload) -> (AkKey, pb::Hardware) {
    let (ek_cert, ak) = {
        let mut tpm = Tpm::open(&lab.swtpm.tcti()).unwrap();
        (
            tpm.ek_certificate(EkKind::Rsa2048).unwrap(),
            tpm.create_ak(AkScheme::RsaSsa).unwrap(),
        )
    };
    let challenge = w
        .attestation
        .begin_tpm_enrollment(pb::BeginTpmEnrollmentRequest {
            ek_certificate: ek_cert,
            ek_intermediates: Vec::new(),
            ak_public: ak.public.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let secret = Tpm::open(&lab.swtpm.tcti())
        .unwrap()
        .activate_credential(&ak, EkKind::Rsa2048, &challenge.id_object, &challenge.encrypted_secret)
        .unwrap();
    let hw = lab
        .admin
        .enroll_hardware(signed(
            lab.alice(),
            Op::EnrollHardware(pb::EnrollHardwareOp {
                country: "AT".into(),
                site: "VIE-1".into(),
                operator: "Example Rechenzentrum GmbH".into(),
                description: "swtpm".into(),
                identity: Some(pb::enroll_hardware_op::Identity::Tpm(pb::TpmEnrollment {
                    enrollment_id: challenge.enrollment_id,
                    activated_secret: secret.to_vec(),
                    expected_ek_digest: challenge.ek_digest,
                    expected_ak_name: challenge.ak_name,
                })),
            }),
        ))
        .await
        .unwrap()
        .into_inner();
    (ak, hw)
}

/// The integrity alarm in the status, once raised (empty if not within 10 s).
async fn wait_alarm(lab: &Lab) -> String {
    for _ in 0..100 {
        let alarm = status(lab).await.integrity_alarm;
        if !alarm.is_empty() {
            return alarm;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    String::new()
}

/// The server still serves what verifies: the untouched key decrypts its blob.
async fn still_serving(lab: &Lab, blob: &[u8]) {
    assert_eq!(lab.decrypt(APP, blob).await.unwrap(), b"payroll 2026");
}

/// The end of one round of the matrix: exactly the `expected` violations were audited since
/// `after`, the untouched key still serves, and the database is put back as kmsd wrote it.
async fn end_round(
    lab: &Lab,
    after: i64,
    expected: &BTreeSet<(String, String, String)>,
    blob: &[u8],
    restore: &[String],
) {
    lab.expect_violations(after, expected).await;
    still_serving(lab, blob).await;
    lab.sql_all(restore).await;
    // The server reports a row once a minute while it stays altered; a scan that sees it
    // verify again ends that, so the next round's change of the same row is reported anew.
    tokio::time::sleep(Duration::from_millis(1500)).await;
}

async fn matrix(backend: Backend) {
    let Some(mut lab) = Lab::start(backend).await else {
        return;
    };
    let (kept, blob) = populate(&mut lab).await;
    // "kept" is the row served throughout; every other row may be attacked.
    let spared = |table: &str, key: &[String]| {
        matches!(table, "keys" | "key_versions" | "release_policies") && key[0] == kept.id
    };
    let mut keys = std::collections::BTreeMap::new();
    for (table, pk) in TABLES {
        // The replica's heartbeat (every second) and the first checkpoint key come on their own.
        let mut k = Vec::new();
        for _ in 0..50 {
            k = lab.keys(table, pk).await;
            if !k.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(!k.is_empty(), "{table} has no row to attack");
        keys.insert(*table, k);
    }
    lab.drop_foreign_keys().await;
    let snap = |t: &str| format!("snap_{t}");
    for (table, _) in TABLES {
        lab.sql(&format!("CREATE TABLE {} AS SELECT * FROM {table}", snap(table)))
            .await;
    }
    let restore: Vec<String> = TABLES
        .iter()
        .flat_map(|(t, _)| {
            [
                format!("DELETE FROM {t}"),
                format!("INSERT INTO {t} SELECT * FROM {}", snap(t)),
            ]
        })
        .collect();

    // 1. A forged row in every table: a copy of a genuine row under a new primary key.
    let after = lab.audit_seq().await;
    let mut expected = BTreeSet::new();
    for (table, pk) in TABLES {
        let key = keys[table].iter().find(|k| !spared(table, k)).unwrap().clone();
        let cols = lab.columns(table).await;
        let last_pk = pk.last().unwrap();
        let kind = cols.iter().find(|(c, _)| c == last_pk).unwrap().1;
        let forged_value = match kind {
            Kind::Int => "999".to_owned(),
            _ => format!("{}-forged", key.last().unwrap()),
        };
        // Unique columns besides the key get another value too (the database would refuse a
        // duplicate before kmsd ever saw it).
        let unique = |c: &str| match (*table, c) {
            ("keys", "name") | ("token_keys", "kid") => Some(format!("{c} || '-forged'")),
            ("hardware", "status") => Some("'revoked'".to_owned()),
            _ => None,
        };
        let select: Vec<String> = cols
            .iter()
            .map(|(c, _)| {
                if c == last_pk {
                    match kind {
                        Kind::Int => "999".to_owned(),
                        _ => format!("'{forged_value}'"),
                    }
                } else {
                    unique(c).unwrap_or_else(|| c.clone())
                }
            })
            .collect();
        if *table == "seal_config" {
            // One row only (id = 1, checked): a forged seal record is the altered one, below.
            continue;
        }
        lab.sql(&format!(
            "INSERT INTO {table} SELECT {} FROM {table} WHERE {}",
            select.join(", "),
            where_key(pk, &key)
        ))
        .await;
        let mut forged_key = key.clone();
        *forged_key.last_mut().unwrap() = forged_value;
        expected.insert(violation(table, &forged_key, "row_integrity"));
    }
    end_round(&lab, after, &expected, &blob, &restore).await;

    // 2. A row given another row's authenticator (version, generation and tag).
    let after = lab.audit_seq().await;
    let mut expected = BTreeSet::new();
    for (table, pk) in TABLES {
        let victim = keys[table].iter().find(|k| !spared(table, k)).unwrap().clone();
        // The donor: another row of the table, or the seal record for single-row tables.
        let (donor_table, donor_pk, donor) = match keys[table].iter().find(|k| **k != victim) {
            Some(d) => (*table, *pk, d.clone()),
            None => ("keys", &["id"][..], vec![kept.id.clone()]),
        };
        for col in AUTH {
            lab.sql(&format!(
                "UPDATE {table} SET {col} = (SELECT {col} FROM {donor_table} WHERE {}) WHERE {}",
                where_key(donor_pk, &donor),
                where_key(pk, &victim)
            ))
            .await;
        }
        expected.insert(violation(table, &victim, "row_integrity"));
    }
    end_round(&lab, after, &expected, &blob, &restore).await;

    // 3. Each column of a row changed, column by column (the primary key included: the row is
    //    then another row with a stolen authenticator).
    let mut by_table = Vec::new();
    for (table, pk) in TABLES {
        let cols: Vec<(String, Kind)> = lab
            .columns(table)
            .await
            .into_iter()
            .filter(|(c, _)| !AUTH.contains(&c.as_str()))
            .collect();
        let victim = keys[table].iter().find(|k| !spared(table, k)).unwrap().clone();
        by_table.push((*table, *pk, cols, victim));
    }
    let rounds = by_table.iter().map(|(_, _, c, _)| c.len()).max().unwrap();
    for round in 0..rounds {
        let after = lab.audit_seq().await;
        let mut expected = BTreeSet::new();
        for (table, pk, cols, victim) in &by_table {
            let Some((col, kind)) = cols.get(round) else { continue };
            if *table == "seal_config" && col == "id" {
                // CHECK (id = 1): the database refuses another id.
                continue;
            }
            lab.sql(&format!(
                "UPDATE {table} SET {col} = {} WHERE {}",
                lab.changed(col, *kind),
                where_key(pk, victim)
            ))
            .await;
            let mut key = victim.clone();
            if let Some(i) = pk.iter().position(|p| p == col) {
                // The key column changed: the row now goes by its new key.
                key[i] = match kind {
                    Kind::Int => (key[i].parse::<i64>().unwrap() + 1).to_string(),
                    _ => format!("{}x", key[i]),
                };
            }
            expected.insert(violation(table, &key, "row_integrity"));
        }
        end_round(&lab, after, &expected, &blob, &restore).await;
    }

    // 4. A row deleted: gone, though the state log says kmsd wrote it.
    let after = lab.audit_seq().await;
    let mut expected = BTreeSet::new();
    for (table, pk) in TABLES {
        if matches!(*table, "replicas" | "tpm_clocks" | "seal_config") {
            // Untracked rows (a replica forgets itself; a clock is rewritten at will); the seal
            // record's deletion is noticed when the seal opens.
            continue;
        }
        let victim = keys[table].iter().find(|k| !spared(table, k)).unwrap().clone();
        lab.sql(&format!("DELETE FROM {table} WHERE {}", where_key(pk, &victim)))
            .await;
        expected.insert(violation(table, &victim, "row_rollback"));
    }
    end_round(&lab, after, &expected, &blob, &restore).await;

    // Restored genuine rows verify again; the data plane never stopped.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = lab.audit_seq().await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        lab.violations(after).await.is_empty(),
        "the restored database still fails"
    );
    still_serving(&lab, &blob).await;
}
both_backends!(tamper_matrix, super::matrix);

async fn attacks(backend: Backend) {
    let Some(mut lab) = Lab::start(backend).await else {
        return;
    };
    lab.drop_foreign_keys().await;
    lab.create_key("kept", &[APP], UNATTESTED).await;
    let blob = lab.encrypt(APP, "kept").await.unwrap();
    lab.create_key("payroll", &[APP], UNATTESTED).await;
    let secret = lab.encrypt(APP, "payroll").await.unwrap();
    let alice = lab.alice().admin_id.to_string();

    // (1) An admin inserted: a copy of alice's row with the attacker's keys. Requests signed
    //     with those keys are refused; nothing is done.
    let mallory = admin("mallory", "DE");
    let m = new_admin(&mallory, true);
    lab.sql(&format!(
        "INSERT INTO admins SELECT 'mallory', country, {}, {}, custodian, created_unix_ms, removed_unix_ms, removed_by, \
         row_version, row_generation, row_mac FROM admins WHERE id = '{alice}'",
        hex_literal(lab.backend, &m.signing_public_key),
        hex_literal(lab.backend, &m.encryption_public_key),
    ))
    .await;
    register_deployment([&mallory], &deployment_of(lab.alice()));
    let refused = lab
        .admin
        .list_keys(signed(&mallory, Op::ListKeys(pb::ListKeysOp::default())))
        .await;
    assert_refused(refused, Code::FailedPrecondition, "row_integrity");
    assert_refused(
        lab.admin.propose(signed_quorum(&mallory, 1)).await,
        Code::FailedPrecondition,
        "row_integrity",
    );
    assert_audited(&lab.db, "admin.list_keys", "row_integrity").await;
    lab.sql("DELETE FROM admins WHERE id = 'mallory'").await;

    // (2) alice's signing key replaced by the attacker's: the attacker cannot sign as alice,
    //     and alice's own requests are refused until an operator restores the row.
    let as_alice = admin("alice", "DE");
    register_deployment([&as_alice], &deployment_of(lab.alice()));
    lab.sql(&format!(
        "CREATE TABLE alice_row AS SELECT * FROM admins WHERE id = '{alice}'"
    ))
    .await;
    lab.sql(&format!(
        "UPDATE admins SET signing_public_key = {} WHERE id = '{alice}'",
        hex_literal(lab.backend, &new_admin(&as_alice, true).signing_public_key)
    ))
    .await;
    assert_refused(
        lab.admin
            .list_keys(signed(&as_alice, Op::ListKeys(pb::ListKeysOp::default())))
            .await,
        Code::FailedPrecondition,
        "row_integrity",
    );
    lab.sql(&format!("DELETE FROM admins WHERE id = '{alice}'")).await;
    lab.sql("INSERT INTO admins SELECT * FROM alice_row").await;
    // (The harness's registry now names the attacker's key for alice: the genuine one again.)
    register_deployment([lab.alice()], &deployment_of(lab.alice()));
    lab.admin
        .list_keys(signed(lab.alice(), Op::ListKeys(pb::ListKeysOp::default())))
        .await
        .unwrap();

    // (3) A key's grants widened to the attacker's principal, its state and its deletion time
    //     changed: nothing is released to anyone from that row; the other key serves on.
    lab.sql("CREATE TABLE payroll_row AS SELECT * FROM keys WHERE name = 'payroll'")
        .await;
    let grants_column: String = {
        let mut conn = lab.db.connect().await;
        sqlx::query("SELECT grants FROM keys WHERE name = 'payroll'")
            .fetch_one(&mut conn)
            .await
            .unwrap()
            .get("grants")
    };
    assert!(grants_column.contains(APP), "{grants_column}");
    let with_mallory = grants_column.replacen(APP, MALLORY, 1);
    lab.sql(&format!(
        "UPDATE keys SET grants = '{}' WHERE name = 'payroll'",
        with_mallory.replace('\'', "''")
    ))
    .await;
    assert_refused(
        lab.kmsd
            .data(&lab.pki, MALLORY)
            .await
            .decrypt(pb::DecryptRequest {
                ciphertext_blob: secret.clone(),
                ..Default::default()
            })
            .await,
        Code::FailedPrecondition,
        "row_integrity",
    );
    assert_audited(&lab.db, "decrypt", "row_integrity").await;
    still_serving(&lab, &blob).await;
    for tamper in [
        "UPDATE keys SET state = 'pending_deletion', deletion_unix_ms = 1 WHERE name = 'payroll'",
        "UPDATE keys SET latest_version = 7 WHERE name = 'payroll'",
        "UPDATE keys SET release_policy = '{\"version\":1,\"attestation\":\"none\",\"x\":1}' WHERE name = 'payroll'",
        "UPDATE keys SET release_policy_version = 9 WHERE name = 'payroll'",
    ] {
        lab.sql("DELETE FROM keys WHERE name = 'payroll'").await;
        lab.sql("INSERT INTO keys SELECT * FROM payroll_row").await;
        lab.sql(tamper).await;
        assert_status(
            lab.decrypt(APP, &secret).await,
            Code::FailedPrecondition,
            "row_integrity",
        );
        still_serving(&lab, &blob).await;
    }
    lab.sql("DELETE FROM keys WHERE name = 'payroll'").await;
    lab.sql("INSERT INTO keys SELECT * FROM payroll_row").await;
    assert_eq!(lab.decrypt(APP, &secret).await.unwrap(), b"payroll 2026");
    // A disabled key re-enabled in its row: still disabled to kmsd.
    lab.admin
        .disable_key(signed(
            lab.alice(),
            Op::DisableKey(pb::DisableKeyOp { key: "payroll".into() }),
        ))
        .await
        .unwrap();
    assert_status(
        lab.decrypt(APP, &secret).await,
        Code::FailedPrecondition,
        "key_disabled",
    );
    lab.sql("UPDATE keys SET state = 'enabled' WHERE name = 'payroll'")
        .await;
    assert_status(
        lab.decrypt(APP, &secret).await,
        Code::FailedPrecondition,
        "row_integrity",
    );
    lab.sql("UPDATE keys SET state = 'disabled' WHERE name = 'payroll'")
        .await;
    lab.admin
        .enable_key(signed(
            lab.alice(),
            Op::EnableKey(pb::EnableKeyOp { key: "payroll".into() }),
        ))
        .await
        .unwrap();
    assert_eq!(lab.decrypt(APP, &secret).await.unwrap(), b"payroll 2026");

    // (4) The enrolled TPM machine's AK name replaced by a key of the same TPM that was never
    //     credential-activated: its quotes get no token (and so no data key).
    let mut w = Workload::new(&lab.kmsd, &lab.pki, APP).await;
    let (ak, hw) = enroll_tpm(&mut lab, &mut w).await;
    w.attest_tpm(&lab.swtpm, &ak).await.unwrap();
    lab.sql(&format!(
        "CREATE TABLE hw_genuine AS SELECT * FROM hardware WHERE id = '{}'",
        hw.id
    ))
    .await;
    let rogue = Tpm::open(&lab.swtpm.tcti())
        .unwrap()
        .create_ak(AkScheme::RsaSsa)
        .unwrap();
    let rogue_name = rogue.parsed_public().unwrap().name().to_hex();
    lab.sql(&format!(
        "UPDATE hardware SET tpm_ak_name = '{rogue_name}' WHERE id = '{}'",
        hw.id
    ))
    .await;
    assert_status(
        w.attest_tpm(&lab.swtpm, &rogue).await,
        Code::FailedPrecondition,
        "row_integrity",
    );
    assert_audited(&lab.db, "attestation.attest", "row_integrity").await;
    lab.sql(&format!("DELETE FROM hardware WHERE id = '{}'", hw.id)).await;
    lab.sql("INSERT INTO hardware SELECT * FROM hw_genuine").await;
    w.attest_tpm(&lab.swtpm, &ak).await.unwrap();

    // A proposal whose stored operation is changed after it was approved does not run.
    lab.admin.propose(signed_quorum(lab.alice(), 2)).await.unwrap();
    let p = lab
        .admin
        .propose(propose(
            lab.alice(),
            pb::quorum_operation::Operation::AddAdmin(pb::AddAdminOp {
                admin: Some(new_admin(&admin("dora", "IE"), false)),
            }),
        ))
        .await
        .unwrap()
        .into_inner();
    let swapped = op_bytes(pb::quorum_operation::Operation::AddAdmin(pb::AddAdminOp {
        admin: Some(new_admin(&mallory, false)),
    }));
    lab.sql(&format!(
        "UPDATE proposals SET payload = {}, digest = {} WHERE id = '{}'",
        hex_literal(lab.backend, &swapped),
        hex_literal(
            lab.backend,
            ring::digest::digest(&ring::digest::SHA256, &swapped).as_ref()
        ),
        p.id
    ))
    .await;
    assert_refused(
        lab.admin.approve(approve(&lab.custodians[1], &p)).await,
        Code::FailedPrecondition,
        "row_integrity",
    );
    let admins = lab
        .admin
        .list_admins(signed(
            lab.alice(),
            Op::ListAdmins(pb::ListAdminsOp { include_removed: true }),
        ))
        .await
        .unwrap()
        .into_inner()
        .admins;
    assert!(admins.iter().all(|a| a.id != "mallory" && a.id != "dora"), "{admins:?}");

    // Older genuine rows put back: the earlier quorum (M = 1, so one admin could act alone).
    lab.sql("CREATE TABLE seal_before AS SELECT * FROM seal_config").await;
    let p = lab
        .admin
        .propose(propose(
            lab.alice(),
            pb::quorum_operation::Operation::SetQuorum(pb::SetQuorumOp { approval_quorum: 3 }),
        ))
        .await
        .unwrap()
        .into_inner();
    lab.admin.approve(approve(&lab.custodians[1], &p)).await.unwrap();
    lab.sql("CREATE TABLE seal_after AS SELECT * FROM seal_config").await;
    lab.sql("DELETE FROM seal_config").await;
    lab.sql("INSERT INTO seal_config SELECT * FROM seal_before").await;
    assert_refused(
        lab.admin.propose(signed_quorum(lab.alice(), 1)).await,
        Code::FailedPrecondition,
        "row_rollback",
    );
    assert_audited(&lab.db, "admin.propose", "row_rollback").await;
    lab.sql("DELETE FROM seal_config").await;
    lab.sql("INSERT INTO seal_config SELECT * FROM seal_after").await;

    // A revoked machine made active again.
    lab.sql(&format!(
        "CREATE TABLE hw_active AS SELECT * FROM hardware WHERE id = '{}'",
        hw.id
    ))
    .await;
    let mut admin_c = lab.admin.clone();
    revoke(&mut admin_c, lab.alice(), &hw.id).await.unwrap();
    lab.sql(&format!("DELETE FROM hardware WHERE id = '{}'", hw.id)).await;
    lab.sql("INSERT INTO hardware SELECT * FROM hw_active").await;
    // (Its AK is the genuine one again in this copy: only the version betrays it.)
    assert_status(
        w.attest_tpm(&lab.swtpm, &ak).await,
        Code::FailedPrecondition,
        "row_rollback",
    );
    assert_audited(&lab.db, "attestation.attest", "row_rollback").await;

    // An earlier release policy put back: the key row of before the change.
    lab.sql("DROP TABLE payroll_row").await;
    lab.sql("CREATE TABLE payroll_row AS SELECT * FROM keys WHERE name = 'kept'")
        .await;
    let p = lab
        .admin
        .propose(propose(
            lab.alice(),
            pb::quorum_operation::Operation::SetReleasePolicy(pb::SetReleasePolicyOp {
                key: "kept".into(),
                release_policy: r#"{"version":1,"attestation":"required"}"#.into(),
            }),
        ))
        .await
        .unwrap()
        .into_inner();
    // M is 3 now: two more approvals.
    lab.admin.approve(approve(&lab.custodians[1], &p)).await.unwrap();
    lab.admin.approve(approve(&lab.custodians[2], &p)).await.unwrap();
    assert_status(
        lab.decrypt(APP, &blob).await,
        Code::FailedPrecondition,
        "attestation_required",
    );
    lab.sql("DELETE FROM keys WHERE name = 'kept'").await;
    lab.sql("INSERT INTO keys SELECT * FROM payroll_row").await;
    assert_status(lab.decrypt(APP, &blob).await, Code::FailedPrecondition, "row_rollback");

    // A removed admin restored.
    lab.sql("CREATE TABLE carol_row AS SELECT * FROM admins WHERE id = 'carol'")
        .await;
    let p = lab
        .admin
        .propose(propose(
            lab.alice(),
            pb::quorum_operation::Operation::SetQuorum(pb::SetQuorumOp { approval_quorum: 2 }),
        ))
        .await
        .unwrap()
        .into_inner();
    lab.admin.approve(approve(&lab.custodians[1], &p)).await.unwrap();
    lab.admin.approve(approve(&lab.custodians[2], &p)).await.unwrap();
    let p = lab
        .admin
        .propose(propose(
            lab.alice(),
            pb::quorum_operation::Operation::RemoveAdmin(pb::RemoveAdminOp {
                admin_id: "carol".into(),
                reason: "left".into(),
            }),
        ))
        .await
        .unwrap()
        .into_inner();
    // carol is a custodian of a 2-of-3 split: removing her leaves 2, enough.
    lab.admin.approve(approve(&lab.custodians[1], &p)).await.unwrap();
    lab.sql("DELETE FROM admins WHERE id = 'carol'").await;
    lab.sql("INSERT INTO admins SELECT * FROM carol_row").await;
    assert_refused(
        lab.admin
            .list_keys(signed(&lab.custodians[2], Op::ListKeys(pb::ListKeysOp::default())))
            .await,
        Code::FailedPrecondition,
        "row_rollback",
    );
    assert_eq!(lab.decrypt(APP, &secret).await.unwrap(), b"payroll 2026");

    // The state row changed: no write goes through (none could be recorded), while the rows
    // already verified keep being served.
    lab.sql("UPDATE integrity_state SET version = version + 5").await;
    let refused = lab
        .admin
        .clone()
        .create_key(signed(
            lab.alice(),
            Op::CreateKey(pb::CreateKeyOp {
                name: "late".into(),
                grants: grants_all(&[APP]),
                release_policy: UNATTESTED.into(),
                ..Default::default()
            }),
        ))
        .await;
    assert_refused(refused, Code::FailedPrecondition, "row_integrity");
    assert_eq!(lab.decrypt(APP, &secret).await.unwrap(), b"payroll 2026");
}
both_backends!(issue_attacks, super::attacks);

/// A binary literal of `b` in the backend's SQL.
fn hex_literal(backend: Backend, b: &[u8]) -> String {
    match backend {
        Backend::Sqlite => format!("x'{}'", hex::encode(b)),
        Backend::Postgres => format!("'\\x{}'::bytea", hex::encode(b)),
    }
}

async fn checkpoints(lab: &Lab) -> Vec<(i64, String)> {
    stored_checkpoints(&lab.db)
        .await
        .into_iter()
        .map(|(c, _)| (c.seq, c.kid))
        .collect()
}

async fn wait_checkpoint_past(lab: &Lab, seq: i64) -> i64 {
    for _ in 0..100 {
        if let Some((s, _)) = checkpoints(lab).await.last() {
            if *s > seq {
                return *s;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no checkpoint past {seq}");
}

fn kmsctl(args: &[&str]) -> Out {
    std::process::Command::new(kmsctl_binary())
        .args(args)
        .env_remove("KMSCTL_SERVER")
        .output()
        .unwrap()
        .into()
}

async fn status(lab: &Lab) -> pb::SealStatus {
    lab.admin
        .clone()
        .get_seal_status(pb::GetSealStatusRequest {})
        .await
        .unwrap()
        .into_inner()
}

/// Issue 10's attack (5): audit entries deleted after a checkpoint, the checkpoints that cover
/// them too, and the head rewritten to match. The running server does not sign over the
/// forged head: it raises the integrity alarm (audited) and serves nothing more; an auditor who
/// kept the last checkpoint they verified refuses the database too.
async fn audit_cut(backend: Backend) {
    let Some(lab) = Lab::start(backend).await else { return };
    lab.create_key("kept", &[APP], UNATTESTED).await;
    let blob = lab.encrypt(APP, "kept").await.unwrap();
    let first = wait_checkpoint_past(&lab, 0).await;
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("checkpoint-keys.json");
    let state = dir.path().join("auditor.state");
    let (cert, key) = lab.pki.client_files("spiffe://test/auditor", "auditor");
    let server = format!("https://{}", lab.kmsd.addr);
    let pinned = kmsctl(&[
        "--server",
        &server,
        "--tls-server-name",
        "localhost",
        "--ca",
        lab.pki.ca_path().to_str().unwrap(),
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
        "--danger-unattested-kmsd",
        "audit",
        "checkpoint-keys",
    ])
    .expect(0);
    std::fs::write(&keys, pinned.stdout).unwrap();
    let verify = |with_state: bool| {
        let mut args = vec![
            "audit",
            "verify",
            "--database",
            lab.db.url.as_str(),
            "--checkpoint-key",
            keys.to_str().unwrap(),
        ];
        if with_state {
            args.extend(["--state", state.to_str().unwrap()]);
        }
        kmsctl(&args)
    };
    // More entries and checkpoints; the auditor verifies and keeps where it got to.
    for _ in 0..3 {
        lab.encrypt(APP, "kept").await.unwrap();
    }
    let second = wait_checkpoint_past(&lab, first).await;
    let ok = verify(true).expect(0);
    assert!(ok.stdout.contains("now names checkpoint"), "{}", ok.stdout);

    // The cut: everything after the first checkpoint, and the checkpoints after it.
    let (head_hash,): (Vec<u8>,) = {
        let mut conn = lab.db.connect().await;
        let r = sqlx::query("SELECT hash FROM audit_log WHERE seq = $1")
            .bind(first)
            .fetch_one(&mut conn)
            .await
            .unwrap();
        (r.get("hash"),)
    };
    lab.sql_all(&[
        format!("DELETE FROM audit_log WHERE seq > {first}"),
        format!("DELETE FROM audit_checkpoints WHERE seq > {first}"),
        format!(
            "UPDATE audit_head SET seq = {first}, hash = {} WHERE id = 1",
            hex_literal(lab.backend, &head_hash)
        ),
    ])
    .await;
    assert!(second > first);
    // The next checkpoint is refused: the alarm is up, shown in the status, and nothing is
    // served any more.
    // Caught by the checkpointer, whichever of its checks looks first: a checkpoint it knows
    // gone, entries it wrote gone, the chain not recomputing.
    let alarm = wait_alarm(&lab).await;
    assert!(alarm.starts_with("state_rollback: audit_"), "{alarm:?}");
    assert_status(
        lab.decrypt(APP, &blob).await,
        Code::FailedPrecondition,
        "state_rollback",
    );
    assert!(
        checkpoints(&lab).await.iter().all(|(s, _)| *s <= first),
        "a checkpoint was signed over the cut"
    );
    let mut conn = lab.db.connect().await;
    let audited: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM audit_log WHERE operation = 'integrity.violation' AND reason = 'state_rollback'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert!(audited >= 1);
    // The auditor: the chain alone verifies (it was cut cleanly), but it no longer holds the
    // checkpoint the auditor verified last.
    let cut = verify(true).expect(1);
    assert!(cut.stderr.contains("no longer stored"), "{}", cut.stderr);
}
both_backends!(audit_log_cut, super::audit_cut);

/// The whole database put back to an earlier, genuine state (every table, the state log and the
/// audit log with it) while kmsd runs: a machine revoked since is active again in that copy.
/// The server that saw the later state refuses it at once.
async fn whole_rollback(backend: Backend) {
    let Some(mut lab) = Lab::start(backend).await else {
        return;
    };
    lab.drop_foreign_keys().await;
    lab.create_key("kept", &[APP], UNATTESTED).await;
    let blob = lab.encrypt(APP, "kept").await.unwrap();
    let mut w = Workload::new(&lab.kmsd, &lab.pki, APP).await;
    let (ak, hw) = enroll_tpm(&mut lab, &mut w).await;
    w.attest_tpm(&lab.swtpm, &ak).await.unwrap();
    let restore = snapshot_database(&lab.db, "a").await;
    let mut admin_c = lab.admin.clone();
    revoke(&mut admin_c, lab.alice(), &hw.id).await.unwrap();
    assert_status(
        w.attest_tpm(&lab.swtpm, &ak).await,
        Code::PermissionDenied,
        "hardware_revoked",
    );
    let before = status(&lab).await.state_version;
    lab.sql_all(&restore).await;
    let alarm = wait_alarm(&lab).await;
    // Caught by whichever looks first: the state log (behind the state this server saw), the
    // audit checkpointer (entries this server wrote are gone or replaced by older ones), or, on
    // PostgreSQL, a read in the middle of the restore (TRUNCATE is not MVCC-safe: a concurrent
    // snapshot sees the state row gone).
    assert!(alarm.starts_with("state_rollback: "), "{alarm:?}");
    assert!(
        alarm.contains("rolled back")
            || alarm.contains("the state row is gone")
            || alarm.contains("entries were removed")
            || alarm.contains("not the one that was written"),
        "{alarm:?}"
    );
    assert_status(
        w.attest_tpm(&lab.swtpm, &ak).await,
        Code::FailedPrecondition,
        "state_rollback",
    );
    assert_status(
        lab.decrypt(APP, &blob).await,
        Code::FailedPrecondition,
        "state_rollback",
    );
    assert!(before > 0);
}
both_backends!(whole_database_rolled_back, super::whole_rollback);

/// A request signed for one deployment (staging) is refused by another (production), though the
/// same admin's key is valid in both; so is a request that names no deployment.
async fn replay(backend: Backend) {
    let Some(prod) = Lab::start(backend).await else { return };
    let Some(staging) = Lab::start(backend).await else {
        return;
    };
    let alice_prod = deployment_of(prod.alice());
    let alice_staging = deployment_of(staging.alice());
    assert_ne!(alice_prod, alice_staging);
    // Staging's alice signs a key creation for staging; a proxy replays it to production (where
    // production's alice, another key, is no admin "alice" of staging): production refuses it
    // before even looking the admin up.
    let op = || {
        Op::CreateKey(pb::CreateKeyOp {
            name: "replayed".into(),
            grants: grants_all(&[APP]),
            release_policy: UNATTESTED.into(),
            ..Default::default()
        })
    };
    let for_staging = signed_for(staging.alice(), &alice_staging, op(), kms_core::now_unix_ms());
    staging.admin.clone().create_key(for_staging.clone()).await.unwrap();
    assert_refused(
        prod.admin.clone().create_key(for_staging).await,
        Code::PermissionDenied,
        "wrong_deployment",
    );
    // The same admin key in both deployments: a request for staging does not run in production.
    let for_other = signed_for(prod.alice(), &alice_staging, op(), kms_core::now_unix_ms());
    assert_refused(
        prod.admin.clone().create_key(for_other).await,
        Code::PermissionDenied,
        "wrong_deployment",
    );
    let unnamed = signed_for(prod.alice(), "", op(), kms_core::now_unix_ms());
    assert_refused(
        prod.admin.clone().create_key(unnamed).await,
        Code::PermissionDenied,
        "wrong_deployment",
    );
    assert_audited(&prod.db, "admin.create_key", "wrong_deployment").await;
    prod.admin
        .clone()
        .create_key(signed_for(prod.alice(), &alice_prod, op(), kms_core::now_unix_ms()))
        .await
        .unwrap();
}
both_backends!(cross_deployment_replay, super::replay);

/// Rows the operator writes in the way of what kmsd does next. Forged key rows ending pages of a
/// listing, one of them with an id kmsd would refuse from a caller, are left out (and audited),
/// and the listing goes on past them: it does not end there with the keys after them unlisted. A checkpoint copied under a seq far
/// ahead of the chain stands where every later checkpoint must go: kmsd says so
/// (`checkpoint_blocked`, audited) rather than taking it for another replica's, which would stop
/// checkpoints and the HSM anchor silently, and checkpoints again once it is removed.
async fn in_the_way(backend: Backend) {
    let Some(lab) = Lab::start(backend).await else { return };
    for i in 0..5 {
        lab.create_key(&format!("listed-{i}"), &[APP], UNATTESTED).await;
    }
    let ids: Vec<String> = lab
        .keys("keys", &["id"])
        .await
        .into_iter()
        .map(|k| k[0].clone())
        .collect();
    assert_eq!(ids.len(), 5);
    // An id between the first two (the first with its last digit moved), in the id format.
    let (stem, last) = ids[0].split_at(ids[0].len() - 1);
    let digit = u8::from_str_radix(last, 16).unwrap();
    let forged = format!("{stem}{:x}", if digit < 15 { digit + 1 } else { digit - 1 });
    assert!(forged < ids[1] && !ids.contains(&forged));
    let columns: Vec<String> = lab.columns("keys").await.into_iter().map(|(c, _)| c).collect();
    // And one whose id kmsd would refuse from a caller (33 hex digits), right after the second:
    // pages of two end at each forged row, and the page token after the malformed one must
    // still be one the server takes.
    let malformed = format!("{}0", ids[1]);
    assert!(kms_core::ids::KeyId::parse(&malformed).is_err() && malformed < ids[2]);
    let before = lab.audit_seq().await;
    for (n, (id, copied)) in [(&forged, &ids[0]), (&malformed, &ids[1])].into_iter().enumerate() {
        let select: Vec<String> = columns
            .iter()
            .map(|c| match c.as_str() {
                "id" => format!("'{id}'"),
                "name" => format!("'forged-{n}'"),
                c => c.to_owned(),
            })
            .collect();
        lab.sql(&format!(
            "INSERT INTO keys ({}) SELECT {} FROM keys WHERE id = '{copied}'",
            columns.join(", "),
            select.join(", "),
        ))
        .await;
    }
    let mut listed = Vec::new();
    let mut token = String::new();
    loop {
        let page = lab
            .admin
            .clone()
            .list_keys(signed(
                lab.alice(),
                Op::ListKeys(pb::ListKeysOp {
                    page_size: 2,
                    page_token: token.clone(),
                }),
            ))
            .await
            .unwrap()
            .into_inner();
        listed.extend(page.keys.into_iter().map(|k| k.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(listed, ids, "every genuine key listed, the forged ones left out");
    lab.expect_violations(
        before,
        &BTreeSet::from([
            violation("keys", std::slice::from_ref(&forged), "row_integrity"),
            violation("keys", std::slice::from_ref(&malformed), "row_integrity"),
        ]),
    )
    .await;

    // The checkpoint in the way.
    let newest = wait_checkpoint_past(&lab, 0).await;
    let ahead = newest + 1_000_000;
    let rest = "hash, time_unix_ms, kid, signature, prev_seq, prev_id, state_version, state_seq, state_hash";
    let before = lab.audit_seq().await;
    lab.sql(&format!(
        "INSERT INTO audit_checkpoints (seq, {rest}) SELECT {ahead}, {rest} FROM audit_checkpoints WHERE seq = {newest}"
    ))
    .await;
    let blob = lab.encrypt(APP, "listed-0").await.unwrap();
    lab.expect_violations(
        before,
        &BTreeSet::from([violation("audit_checkpoints", &[ahead.to_string()], "row_integrity")]),
    )
    .await;
    // Rounds go by (one a second) and store nothing behind the forged row; kmsd keeps serving.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stored: Vec<i64> = checkpoints(&lab).await.into_iter().map(|(s, _)| s).collect();
    let last_genuine = stored.iter().copied().filter(|s| *s < ahead).max().unwrap();
    assert!(
        last_genuine < lab.audit_seq().await,
        "the head advanced past every stored checkpoint"
    );
    assert_eq!(lab.decrypt(APP, &blob).await.unwrap(), b"payroll 2026");
    assert!(
        status(&lab).await.integrity_alarm.is_empty(),
        "a forged row is no rollback"
    );
    // Each round that stored nothing is counted (and logged as `checkpoint_blocked`).
    let failed = lab.counter("kms_audit_checkpoint_failures_total").await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        lab.counter("kms_audit_checkpoint_failures_total").await >= failed + 1.0,
        "the blocked rounds are counted as failures"
    );
    // Removed, checkpoints go on from the last genuine one.
    lab.sql(&format!("DELETE FROM audit_checkpoints WHERE seq = {ahead}"))
        .await;
    let next = wait_checkpoint_past(&lab, last_genuine).await;
    let (c, _) = stored_checkpoints(&lab.db)
        .await
        .into_iter()
        .find(|(c, _)| c.seq == next)
        .unwrap();
    assert_eq!(c.prev_seq, last_genuine);
}
both_backends!(rows_in_the_way, super::in_the_way);

/// The operator redefines what `=` on text means for kmsd's connections (an operator in a schema
/// searched before `pg_catalog`, set as the database's `search_path`) so that a lookup of one
/// identity returns another's genuine, current row. Nothing in the row betrays it: only
/// comparing the row with what was asked for does. Each substitution is refused
/// (`row_substituted`) and audited; without the check, an AK that was never credential-activated
/// attests as the enrolled machine, a revoked machine's token releases keys through another
/// machine's entry, and a key that needs attestation is served through another key's row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_returned_for_another_identity_is_refused() {
    let Some(mut lab) = Lab::start(Backend::Postgres).await else {
        return;
    };
    lab.create_key("payroll", &[APP], r#"{"version":1,"attestation":"required"}"#)
        .await;
    lab.create_key("open", &[APP], UNATTESTED).await;
    let mut w = Workload::new(&lab.kmsd, &lab.pki, APP).await;
    let (ak, tpm_hw) = enroll_tpm(&mut lab, &mut w).await;
    let token = w.attest_tpm(&lab.swtpm, &ak).await.unwrap();
    w.generate("payroll", &token, &[]).await.unwrap();
    let mut admin_c = lab.admin.clone();
    let snp_hw = enroll_snp(
        &mut admin_c,
        lab.alice(),
        lab.snp.evidence(&lab.snp.report()),
        "DE",
        false,
    )
    .await
    .unwrap();
    // A second AK in the same TPM, never credential-activated: not enrolled.
    let stranger = Tpm::open(&lab.swtpm.tcti())
        .unwrap()
        .create_ak(AkScheme::RsaSsa)
        .unwrap();
    let stranger_name = stranger.parsed_public().unwrap().name().to_hex();
    assert_status(
        w.attest_tpm(&lab.swtpm, &stranger).await,
        Code::PermissionDenied,
        "hardware_not_enrolled",
    );
    assert_status(
        plain_data_key(&lab, "payroll").await,
        Code::FailedPrecondition,
        "attestation_required",
    );

    // The rigged `=`: `column = 'asked'` holds for the row whose column is `answer`.
    lab.sql_all(&[
        "CREATE TABLE public.rigged (asked TEXT PRIMARY KEY, answer TEXT NOT NULL)".to_owned(),
        "CREATE FUNCTION public.rigged_eq(l TEXT, r TEXT) RETURNS BOOLEAN LANGUAGE plpgsql STABLE AS $$ \
         DECLARE a TEXT; BEGIN \
         SELECT answer INTO a FROM public.rigged WHERE asked OPERATOR(pg_catalog.=) r; \
         IF FOUND THEN RETURN l OPERATOR(pg_catalog.=) a; END IF; \
         RETURN l OPERATOR(pg_catalog.=) r; END $$"
            .to_owned(),
        "CREATE OPERATOR public.= (LEFTARG = TEXT, RIGHTARG = TEXT, FUNCTION = public.rigged_eq)".to_owned(),
        "DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET search_path = public, pg_catalog', current_database()); END $$"
            .to_owned(),
        format!(
            "INSERT INTO public.rigged VALUES ('{stranger_name}', '{}'), ('payroll', 'open')",
            tpm_hw.tpm_ak_name
        ),
        // kmsd's pooled connections reconnect, with the new search_path.
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
            .to_owned(),
    ])
    .await;
    {
        // The rigging works: the database answers a lookup of the stranger with the enrolled AK.
        let mut conn = lab.db.connect().await;
        let ids: Vec<String> = sqlx::query_scalar("SELECT id FROM hardware WHERE tpm_ak_name = $1")
            .bind(&stranger_name)
            .fetch_all(&mut conn)
            .await
            .unwrap();
        assert_eq!(ids, std::slice::from_ref(&tpm_hw.id));
    }
    // Until kmsd has replaced the connections cut (each may fail one call).
    let mut reconnected = false;
    for _ in 0..100 {
        if w.attestation.get_challenge(pb::GetChallengeRequest {}).await.is_ok() {
            reconnected = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(reconnected, "kmsd did not reconnect to the database");
    let after = lab.audit_seq().await;

    // (1) By identity: the never-activated AK would attest as the enrolled machine.
    assert_status(
        w.attest_tpm(&lab.swtpm, &stranger).await,
        Code::FailedPrecondition,
        "row_substituted",
    );
    // (2) By name: "payroll" (attestation required) served through "open"'s row.
    assert_status(
        plain_data_key(&lab, "payroll").await,
        Code::FailedPrecondition,
        "row_substituted",
    );
    // (3) By id: the TPM machine revoked, its token's entry answered with the SNP machine's.
    lab.sql("DELETE FROM public.rigged").await;
    revoke(&mut admin_c, lab.alice(), &tpm_hw.id).await.unwrap();
    assert_status(
        w.generate("payroll", &token, &[]).await.map(|(r, _)| r),
        Code::PermissionDenied,
        "hardware_revoked",
    );
    lab.sql(&format!(
        "INSERT INTO public.rigged VALUES ('{}', '{}')",
        tpm_hw.id, snp_hw.id
    ))
    .await;
    assert_status(
        w.generate("payroll", &token, &[]).await.map(|(r, _)| r),
        Code::FailedPrecondition,
        "row_substituted",
    );
    lab.expect_violations(
        after,
        &[
            violation("hardware", std::slice::from_ref(&tpm_hw.id), "row_substituted"),
            violation("hardware", std::slice::from_ref(&snp_hw.id), "row_substituted"),
            violation("keys", &[lab_key_id(&lab, "open").await], "row_substituted"),
        ]
        .into_iter()
        .collect(),
    )
    .await;
    assert_audited(&lab.db, "attestation.attest", "row_substituted").await;
    assert_audited(&lab.db, "generate_data_key", "row_substituted").await;

    // Rows looked up as asked are served on: the untouched key encrypts.
    lab.sql("DELETE FROM public.rigged").await;
    lab.encrypt(APP, "open").await.unwrap();
}

/// The id of key `name`, read as stored (with `pg_catalog`'s `=`).
async fn lab_key_id(lab: &Lab, name: &str) -> String {
    let mut conn = lab.db.connect().await;
    sqlx::query_scalar("SELECT id FROM keys WHERE name OPERATOR(pg_catalog.=) $1")
        .bind(name)
        .fetch_one(&mut conn)
        .await
        .unwrap()
}

/// GenerateDataKey without a token, as `APP`: the data key in the clear (an unattested release).
async fn plain_data_key(lab: &Lab, key: &str) -> Result<pb::GenerateDataKeyResponse, tonic::Status> {
    lab.kmsd
        .data(&lab.pki, APP)
        .await
        .generate_data_key(pb::GenerateDataKeyRequest {
            key: key.into(),
            ..Default::default()
        })
        .await
        .map(tonic::Response::into_inner)
}

/// The database's operator inserts a challenge row of its own for the workload's principal (a
/// nonce it chose, unused, expiring far ahead), and hands another principal's genuine challenge
/// to it. Neither is usable: whether a nonce was issued, to whom and until when is read from the nonce
/// (its authenticator), not from the row. (Before, a made-up row was a fresh challenge, so
/// evidence over a nonce the attacker chose in advance attested.)
async fn made_up_challenges(backend: Backend) {
    let Some(mut lab) = Lab::start(backend).await else {
        return;
    };
    let mut w = Workload::new(&lab.kmsd, &lab.pki, APP).await;
    let (ak, _) = enroll_tpm(&mut lab, &mut w).await;
    let quote = |w: &Workload, nonce: &[u8]| {
        let qd = attestation::binding::tpm_qualifying_data(nonce, &w.public_key());
        tpm_evidence(
            Tpm::open(&lab.swtpm.tcti())
                .unwrap()
                .quote(&ak, &qd, &[0, 1, 7])
                .unwrap(),
        )
    };
    let chosen = [0x41u8; 32];
    lab.sql(&format!(
        "INSERT INTO attestation_nonces (nonce, principal, expires_unix_ms) VALUES ({}, '{APP}', 9000000000000)",
        hex_literal(lab.backend, &chosen)
    ))
    .await;
    let evidence = quote(&w, &chosen);
    assert_status(
        w.attest(chosen.to_vec(), evidence).await,
        Code::FailedPrecondition,
        "nonce_unknown",
    );
    assert_audited(&lab.db, "attestation.attest", "nonce_unknown").await;

    // A genuine challenge, issued to another principal: moved to this one in the database.
    let mut other = Workload::new(&lab.kmsd, &lab.pki, MALLORY).await;
    let theirs = other.challenge().await;
    lab.sql(&format!(
        "UPDATE attestation_nonces SET principal = '{APP}' WHERE nonce = {}",
        hex_literal(lab.backend, &theirs)
    ))
    .await;
    let evidence = quote(&w, &theirs);
    assert_status(
        w.attest(theirs.to_vec(), evidence).await,
        Code::FailedPrecondition,
        "nonce_unknown",
    );
    // A genuine challenge of this principal is one.
    w.attest_tpm(&lab.swtpm, &ak).await.unwrap();
}
both_backends!(made_up_challenge_rows, super::made_up_challenges);

/// The operator seals every replica and tries to unseal it alone. A replica follows the
/// database's root generation, so a seal record naming a generation it never held (a copy of
/// the current one) seals it within a second. A sealed replica cannot verify admin rows (their
/// key is under the root), so the operator's next step would be an admin of its own, or its key
/// in a custodian's row, with a share row for that generation: a root of its own, unsealed by
/// no custodian. The replica takes shares only from the custodians its configuration pins
/// (`admin.init_admins` here), by the fingerprint of the stored row: both are refused before
/// anything is fetched or combined, and audited; a pinned custodian gets past the pin.
async fn unseal_alone(backend: Backend) {
    let Some(lab) = Lab::start(backend).await else {
        return;
    };
    lab.drop_foreign_keys().await;
    let deployment = deployment_of(lab.alice());
    lab.sql_all(&[
        "CREATE TABLE forged_generation AS SELECT * FROM root_generations WHERE generation = 1".to_owned(),
        "UPDATE forged_generation SET generation = 99".to_owned(),
        "INSERT INTO root_generations SELECT * FROM forged_generation".to_owned(),
        "UPDATE seal_config SET root_generation = 99".to_owned(),
    ])
    .await;
    // (Until it follows, the unsealed replica refuses the changed seal record: row_integrity.)
    let mut last = None;
    for _ in 0..100 {
        let s = lab.admin.clone().get_seal_status(pb::GetSealStatusRequest {}).await;
        if let Ok(s) = &s {
            if s.get_ref().sealed && s.get_ref().root_generation == 99 {
                last = None;
                break;
            }
        }
        last = Some(s);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(last.is_none(), "the replica did not follow the seal record: {last:?}");

    // An admin of the operator's own, a custodian with a share of generation 99.
    let mallory = admin("mallory", "DE");
    let m = new_admin(&mallory, true);
    let alice = lab.alice().admin_id.to_string();
    lab.sql_all(&[
        format!(
            "INSERT INTO admins SELECT 'mallory', country, {}, {}, custodian, created_unix_ms, removed_unix_ms, \
             removed_by, row_version, row_generation, row_mac FROM admins WHERE id = '{alice}'",
            hex_literal(lab.backend, &m.signing_public_key),
            hex_literal(lab.backend, &m.encryption_public_key),
        ),
        format!("CREATE TABLE forged_share AS SELECT * FROM root_shares WHERE generation = 1 AND admin_id = '{alice}'"),
        "UPDATE forged_share SET generation = 99, admin_id = 'mallory'".to_owned(),
        "INSERT INTO root_shares SELECT * FROM forged_share".to_owned(),
    ])
    .await;
    // The operator's keys in custodian bob's row, with a share of generation 99 for "bob".
    let as_bob = admin("bob", "FR");
    let b = new_admin(&as_bob, true);
    lab.sql_all(&[
        format!(
            "UPDATE admins SET signing_public_key = {}, encryption_public_key = {} WHERE id = 'bob'",
            hex_literal(lab.backend, &b.signing_public_key),
            hex_literal(lab.backend, &b.encryption_public_key),
        ),
        "UPDATE forged_share SET admin_id = 'bob'".to_owned(),
        "INSERT INTO root_shares SELECT * FROM forged_share".to_owned(),
    ])
    .await;
    let fetch = |k: &AdminKeyFile| {
        signed_for(
            k,
            &deployment,
            Op::GetEncryptedShare(pb::GetEncryptedShareOp {}),
            kms_core::now_unix_ms(),
        )
    };
    let mut admin_c = lab.admin.clone();
    for k in [&mallory, &as_bob] {
        assert_refused(
            admin_c.get_encrypted_share(fetch(k)).await,
            Code::PermissionDenied,
            "custodian_not_pinned",
        );
        let unseal = signed_for(
            k,
            &deployment,
            Op::Unseal(pb::UnsealOp { envelope: vec![0; 64] }),
            kms_core::now_unix_ms(),
        );
        assert_refused(
            admin_c.unseal(unseal).await,
            Code::PermissionDenied,
            "custodian_not_pinned",
        );
    }
    assert_audited(&lab.db, "admin.get_encrypted_share", "custodian_not_pinned").await;
    assert_audited(&lab.db, "admin.unseal", "custodian_not_pinned").await;
    // A pinned custodian passes the pin (and has no share of the operator's generation).
    assert_refused(
        admin_c.get_encrypted_share(fetch(lab.alice())).await,
        Code::PermissionDenied,
        "not_a_custodian",
    );
    let s = status(&lab).await;
    assert!(s.sealed, "{s:?}");
}
both_backends!(
    a_sealed_replica_takes_shares_only_from_pinned_custodians,
    super::unseal_alone
);

/// The operator deletes an admin request's nonce (from `admin_requests`, where an unsealed
/// replica records it, and from `admin_nonces`) and replays the request (captured on the way,
/// inside its freshness window) to undo a later one: alice's re-enable of a key, replayed after
/// bob disabled it again. The replica that took the nonce remembers it until the request is
/// stale; a replica that never saw the request knows the nonce from the state log and finds its
/// row gone (`row_rollback`). The replay is refused on both, and the key stays disabled.
async fn nonce_deleted(backend: Backend) {
    let Some(lab) = Lab::start(backend).await else {
        return;
    };
    lab.create_key("switched", &[APP], UNATTESTED).await;
    let mut admin_c = lab.admin.clone();
    let key = || "switched".to_owned();
    admin_c
        .disable_key(signed(lab.alice(), Op::DisableKey(pb::DisableKeyOp { key: key() })))
        .await
        .unwrap();
    let enable = signed(lab.alice(), Op::EnableKey(pb::EnableKeyOp { key: key() }));
    admin_c.enable_key(enable.clone()).await.unwrap();
    admin_c
        .disable_key(signed(
            &lab.custodians[1],
            Op::DisableKey(pb::DisableKeyOp { key: key() }),
        ))
        .await
        .unwrap();
    // The enable's nonce is among the rows an unsealed replica recorded (hex, tracked).
    let taken = lab.keys("admin_requests", &["nonce"]).await;
    let request = <pb::AdminRequest as prost::Message>::decode(enable.payload.as_slice()).unwrap();
    assert!(taken.contains(&vec![hex::encode(&request.nonce)]), "{taken:?}");
    lab.sql("DELETE FROM admin_nonces").await;
    lab.sql("DELETE FROM admin_requests").await;
    assert_refused(
        admin_c.enable_key(enable.clone()).await,
        Code::PermissionDenied,
        "replayed_request",
    );
    let (_other, mut other_c) = lab.replica().await;
    assert_refused(
        other_c.enable_key(enable).await,
        Code::FailedPrecondition,
        "row_rollback",
    );
    let described = admin_c
        .describe_key(signed(lab.alice(), Op::DescribeKey(pb::DescribeKeyOp { key: key() })))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(described.state, pb::KeyState::Disabled as i32);
    assert!(lab.encrypt(APP, "switched").await.is_err());
}
both_backends!(a_deleted_nonce_does_not_let_a_request_run_twice, super::nonce_deleted);
