//! Rate limits (`[limits]`) against a running kmsd: a flood from one principal, and a flood of
//! admin requests that fail authentication from one address, are refused with
//! RESOURCE_EXHAUSTED / `rate_limited` before they do work, and are counted in one
//! `limits.refused` audit record per caller per interval instead of one audit row per call.
//! Other callers keep their own budget.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kms_proto::v1 as pb;
use kms_proto::v1::admin_request::Operation as Op;
use kms_server::config::LimitsConfig;
use kms_testkit::*;
use sqlx::Row as _;
use tonic::Code;

const APP: &str = "spiffe://eu.example/app";
const OTHER: &str = "spiffe://eu.example/other";
const INTRUDER: &str = "spiffe://eu.example/intruder";

/// Burst 10 then 1 call per second per principal; burst 3 then 1 per second per address for
/// calls whose caller is not established; refusals reported every second.
fn limits() -> LimitsConfig {
    LimitsConfig {
        principal_per_second: 1,
        principal_burst: 10,
        unauthenticated_per_second: 1,
        unauthenticated_burst: 3,
        report_interval_secs: 1,
    }
}

/// `(caller, operation, outcome, reason, detail)` of every audit row.
async fn audit_rows(db: &Db) -> Vec<(String, String, String, String, serde_json::Value)> {
    let mut conn = db.connect().await;
    sqlx::query("SELECT caller, operation, outcome, reason, detail FROM audit_log ORDER BY seq")
        .fetch_all(&mut conn)
        .await
        .unwrap()
        .iter()
        .map(|r| {
            let detail: String = r.try_get("detail").unwrap();
            (
                r.try_get("caller").unwrap(),
                r.try_get("operation").unwrap(),
                r.try_get("outcome").unwrap(),
                r.try_get("reason").unwrap(),
                serde_json::from_str(&detail).unwrap_or(serde_json::Value::Null),
            )
        })
        .collect()
}

/// The refusals `limits.refused` records have reported for `caller` so far.
fn reported(rows: &[(String, String, String, String, serde_json::Value)], caller: &str) -> u64 {
    rows.iter()
        .filter(|(c, op, outcome, reason, _)| {
            c == caller && op == "limits.refused" && outcome == "refused" && reason == "rate_limited"
        })
        .map(|(.., d)| d["refused"].as_u64().expect("a refused count"))
        .sum()
}

/// Waits until the reports for `caller` add up to `n` (they come once a second).
async fn await_reported(db: &Db, caller: &str, n: u64) -> Vec<(String, String, String, String, serde_json::Value)> {
    for _ in 0..100 {
        let rows = audit_rows(db).await;
        if reported(&rows, caller) >= n {
            assert_eq!(reported(&rows, caller), n, "{caller}: more refusals reported than made");
            return rows;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the refusals of {caller} were not reported within 10 s");
}

#[track_caller]
fn assert_rate_limited(s: &tonic::Status, setting: &str) {
    assert_eq!(
        (s.code(), reason(s).as_str()),
        (Code::ResourceExhausted, "rate_limited"),
        "{}",
        s.message()
    );
    assert!(
        s.message().contains(setting),
        "the refusal names {setting}: {}",
        s.message()
    );
}

#[tokio::test]
async fn a_principal_flood_is_refused_and_counted_not_audited_call_by_call() {
    let opts = Options {
        limits: limits(),
        ..Options::default()
    };
    let c = Ceremony::new(Backend::Sqlite, opts).await.expect("sqlite");
    c.create_key("orders", &[APP, OTHER], UNATTESTED).await;
    let mut data = c.server.data(&c.pki, APP).await;
    let request = || pb::GenerateDataKeyWithoutPlaintextRequest {
        key: "orders".into(),
        encryption_context: BTreeMap::new(),
    };

    let started = Instant::now();
    let (mut ok, mut limited) = (0u64, 0u64);
    for _ in 0..60 {
        match data.generate_data_key_without_plaintext(request()).await {
            Ok(_) => ok += 1,
            Err(s) => {
                assert_rate_limited(&s, "limits.principal_per_second");
                limited += 1;
            }
        }
    }
    let elapsed = started.elapsed().as_secs();
    // The burst, plus one call per second that passed (and one for a partly refilled token).
    assert!(ok >= 10, "the burst is served: {ok} served");
    assert!(
        ok <= 10 + elapsed + 1,
        "{ok} served in {elapsed} s over a burst of 10 at 1/s"
    );
    assert_eq!(ok + limited, 60);

    // Another principal has its own budget.
    let mut other = c.server.data(&c.pki, OTHER).await;
    other.generate_data_key_without_plaintext(request()).await.unwrap();

    // The served calls are audited one by one; the refused ones only in the report.
    let rows = await_reported(&c.db, APP, limited).await;
    let served = rows
        .iter()
        .filter(|(caller, op, outcome, ..)| {
            caller == APP && op == "generate_data_key_without_plaintext" && outcome == "allowed"
        })
        .count() as u64;
    assert_eq!(served, ok, "one audit row per served call");
    assert!(
        !rows.iter().any(|(caller, op, outcome, ..)| caller == APP
            && op == "generate_data_key_without_plaintext"
            && outcome == "refused"),
        "no audit row per refused call"
    );
    let reports = rows
        .iter()
        .filter(|(caller, op, ..)| caller == APP && op == "limits.refused")
        .count() as u64;
    assert!(
        reports <= elapsed + 2,
        "one report per interval, not per call: {reports} reports"
    );
}

#[tokio::test]
async fn unauthenticated_admin_requests_are_audited_up_to_the_address_limit_then_counted() {
    let opts = Options {
        limits: limits(),
        ..Options::default()
    };
    let c = Ceremony::new(Backend::Sqlite, opts).await.expect("sqlite");
    // A client certificate the CA issued, but no admin key: every request fails authentication.
    let mut intruder =
        pb::admin_service_client::AdminServiceClient::new(c.server.channel(c.pki.client(INTRUDER)).await.unwrap());
    let mut forged = signed(&c.custodians[0], Op::ListAdmins(pb::ListAdminsOp::default()));
    forged.signature = vec![0; forged.signature.len()];

    let started = Instant::now();
    let (mut unauthenticated, mut limited) = (0u64, 0u64);
    for _ in 0..8 {
        let s = intruder.list_admins(forged.clone()).await.unwrap_err();
        if s.code() == Code::ResourceExhausted {
            assert_rate_limited(&s, "limits.unauthenticated_per_second");
            limited += 1;
        } else {
            assert_eq!(s.code(), Code::PermissionDenied, "{}", s.message());
            unauthenticated += 1;
        }
    }
    let elapsed = started.elapsed().as_secs();
    assert!(unauthenticated >= 3, "the burst is audited: {unauthenticated}");
    assert!(unauthenticated <= 3 + elapsed + 1, "{unauthenticated} in {elapsed} s");
    assert!(limited >= 1, "the rest is refused by the address limit");

    let rows = await_reported(&c.db, "peer:127.0.0.1", limited).await;
    let audited = rows
        .iter()
        .filter(|(_, op, outcome, reason, _)| {
            op == "admin.list_admins" && outcome == "refused" && reason == "bad_signature"
        })
        .count() as u64;
    assert_eq!(
        audited, unauthenticated,
        "one audit row per audited failure, none per limited one"
    );

    // A genuine admin from the same address still gets through: its principal has its own budget
    // and authenticated calls do not spend the address's.
    let mut admin = c.server.admin(&c.pki).await;
    admin
        .list_admins(signed(&c.custodians[0], Op::ListAdmins(pb::ListAdminsOp::default())))
        .await
        .unwrap();
}

#[tokio::test]
async fn the_unsigned_admin_reads_spend_the_callers_budget() {
    let opts = Options {
        limits: limits(),
        ..Options::default()
    };
    let c = Ceremony::new(Backend::Sqlite, opts).await.expect("sqlite");
    let mut reader =
        pb::admin_service_client::AdminServiceClient::new(c.server.channel(c.pki.client(INTRUDER)).await.unwrap());
    // Seal status and the checkpoint keys need no signature; a flood of either is refused by
    // the caller's budget, which the two share.
    let (mut ok, mut limited) = (0u64, 0u64);
    let started = Instant::now();
    for i in 0..40 {
        let answer = if i % 2 == 0 {
            reader.get_seal_status(pb::GetSealStatusRequest {}).await.map(drop)
        } else {
            reader
                .get_audit_checkpoint_keys(pb::GetAuditCheckpointKeysRequest::default())
                .await
                .map(drop)
        };
        match answer {
            Ok(()) => ok += 1,
            Err(s) => {
                assert_rate_limited(&s, "limits.principal_per_second");
                limited += 1;
            }
        }
    }
    let elapsed = started.elapsed().as_secs();
    assert!(ok >= 10, "the burst is served: {ok}");
    assert!(
        ok <= 10 + elapsed + 1,
        "{ok} served in {elapsed} s over a burst of 10 at 1/s"
    );
    assert!(limited >= 20, "{limited} refused");
    // Both kinds were refused, so neither is exempt.
    let refused = reader
        .get_audit_checkpoint_keys(pb::GetAuditCheckpointKeysRequest::default())
        .await
        .unwrap_err();
    assert_rate_limited(&refused, "limits.principal_per_second");
    await_reported(&c.db, INTRUDER, limited + 1).await;
}
