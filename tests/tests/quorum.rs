//! Quorum (M-of-N) approvals end to end against a real kmsd on SQLite and PostgreSQL: too few
//! approvals stay pending, double approval, wrong digest, forged approval, expiry, rejection,
//! non-EU admins refused by any quorum, a proposal whose operation fails when the quorum is
//! reached, changing M, removing admins, and exactly-once execution with two replicas racing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use kms_proto::v1 as pb;
use kms_proto::v1::admin_request::Operation as Op;
use kms_proto::v1::quorum_operation::Operation as QOp;
use kms_testkit::*;
use tonic::Code;

fn add(k: &kms_core::keyfile::AdminKeyFile) -> QOp {
    QOp::AddAdmin(pb::AddAdminOp {
        admin: Some(new_admin(k, false)),
    })
}

async fn admins(c: &Ceremony) -> Vec<String> {
    c.admin
        .clone()
        .list_admins(signed(
            &c.custodians[0],
            Op::ListAdmins(pb::ListAdminsOp { include_removed: false }),
        ))
        .await
        .unwrap()
        .into_inner()
        .admins
        .into_iter()
        .map(|a| a.id)
        .collect()
}

async fn two_of_three(backend: Backend) {
    let opts = Options {
        approval_quorum: 2,
        ..Options::default()
    };
    let Some(mut c) = Ceremony::new(backend, opts).await else {
        return;
    };
    let [alice, bob, carol] = [&c.custodians[0], &c.custodians[1], &c.custodians[2]];
    let dave = admin("dave", "DE");

    // The direct RPC refuses: the operation needs two approvals.
    assert_refused(
        c.admin
            .add_admin(signed(
                alice,
                Op::AddAdmin(pb::AddAdminOp {
                    admin: Some(new_admin(&dave, false)),
                }),
            ))
            .await,
        Code::FailedPrecondition,
        "quorum_required",
    );

    // Proposed: pending with the proposer's approval; nothing happened yet.
    let p = c.admin.propose(propose(alice, add(&dave))).await.unwrap().into_inner();
    assert_eq!(p.status, pb::ProposalStatus::Pending as i32);
    assert_eq!((p.approvals.len(), p.approvals_required), (1, 2));
    assert!(p.summary.contains("dave"), "{}", p.summary);
    assert!(!admins(&c).await.contains(&"dave".to_owned()));
    let listed = c
        .admin
        .list_proposals(signed(bob, Op::ListProposals(pb::ListProposalsOp::default())))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        listed.proposals.iter().map(|x| x.id.as_str()).collect::<Vec<_>>(),
        [p.id.as_str()]
    );

    // The proposer cannot approve again.
    assert_refused(
        c.admin.approve(approve(alice, &p)).await,
        Code::FailedPrecondition,
        "already_approved",
    );
    // An approval must carry the digest of this proposal's operation.
    let mut other = p.clone();
    other.operation_bytes = op_bytes(add(&admin("eve", "FR")));
    assert_refused(
        c.admin.approve(approve(bob, &other)).await,
        Code::InvalidArgument,
        "digest_mismatch",
    );
    // Approving as someone else: bob's id, mallory's key.
    let mallory = admin("bob", "FR");
    assert_refused(
        c.admin.approve(approve(&mallory, &p)).await,
        Code::PermissionDenied,
        "bad_signature",
    );
    assert!(!admins(&c).await.contains(&"dave".to_owned()));

    // Bob's approval reaches M: executed once, with its result.
    let done = c.admin.approve(approve(bob, &p)).await.unwrap().into_inner();
    assert_eq!(done.status, pb::ProposalStatus::Executed as i32);
    assert!(matches!(done.result, Some(pb::proposal::Result::Admin(ref a)) if a.id == "dave"));
    assert!(admins(&c).await.contains(&"dave".to_owned()));
    assert_refused(
        c.admin.approve(approve(carol, &p)).await,
        Code::FailedPrecondition,
        "proposal_closed",
    );
    let audit = attest::audit_entries(&c.db).await;
    let (_, _, _, detail) = audit
        .iter()
        .rev()
        .find(|(op, outcome, _, _)| op == "admin.add_admin" && outcome == "allowed")
        .expect("execution audited");
    assert!(detail.contains(&p.id) && detail.contains("\"bob\""), "{detail}");

    // No quorum can add an admin outside the allowed jurisdictions: refused when proposed.
    assert_refused(
        c.admin.propose(propose(alice, add(&admin("sam", "US")))).await,
        Code::PermissionDenied,
        "country_not_allowed",
    );

    // One rejection cannot veto: with N = 4 admins and M = 2, a proposal closes as rejected only
    // once more than N - M = 2 admins rejected it (M approvals can no longer be reached).
    let reject = |by: &kms_core::keyfile::AdminKeyFile, id: &str| {
        signed(
            by,
            Op::Reject(pb::RejectOp {
                proposal_id: id.to_owned(),
                reason: "not agreed".into(),
            }),
        )
    };
    let r = c
        .admin
        .propose(propose(alice, add(&admin("erin", "NL"))))
        .await
        .unwrap()
        .into_inner();
    let after_one = c.admin.reject(reject(carol, &r.id)).await.unwrap().into_inner();
    assert_eq!(after_one.status, pb::ProposalStatus::Pending as i32);
    assert_eq!(after_one.rejections.len(), 1);
    assert_refused(
        c.admin.reject(reject(carol, &r.id)).await,
        Code::FailedPrecondition,
        "already_rejected",
    );
    // A rejection cannot be turned into an approval (nor count on both sides).
    assert_refused(
        c.admin.approve(approve(carol, &r)).await,
        Code::FailedPrecondition,
        "already_rejected",
    );
    let after_two = c.admin.reject(reject(&dave, &r.id)).await.unwrap().into_inner();
    assert_eq!(after_two.status, pb::ProposalStatus::Pending as i32);
    let rejected = c.admin.reject(reject(bob, &r.id)).await.unwrap().into_inner();
    assert_eq!(
        rejected.status,
        pb::ProposalStatus::Rejected as i32,
        "{}",
        rejected.outcome
    );
    assert_refused(
        c.admin.approve(approve(bob, &r)).await,
        Code::FailedPrecondition,
        "proposal_closed",
    );
    // The proposer withdraws at once.
    let w = c
        .admin
        .propose(propose(alice, add(&admin("zed", "NL"))))
        .await
        .unwrap()
        .into_inner();
    let withdrawn = c.admin.reject(reject(alice, &w.id)).await.unwrap().into_inner();
    assert_eq!(withdrawn.status, pb::ProposalStatus::Rejected as i32);
    assert!(withdrawn.outcome.contains("withdrawn"), "{}", withdrawn.outcome);

    // Two proposals for the same admin: the second fails when its quorum is reached.
    let f1 = c
        .admin
        .propose(propose(alice, add(&admin("fay", "IT"))))
        .await
        .unwrap()
        .into_inner();
    let f2 = c
        .admin
        .propose(propose(carol, add(&admin("fay", "IT"))))
        .await
        .unwrap()
        .into_inner();
    c.admin.approve(approve(bob, &f1)).await.unwrap();
    let failed = c.admin.approve(approve(bob, &f2)).await.unwrap().into_inner();
    assert_eq!(failed.status, pb::ProposalStatus::Failed as i32);
    assert!(failed.outcome.contains("admin_exists"), "{}", failed.outcome);

    // Quorum-only operations on keys and the quorum itself.
    let key = c
        .admin
        .create_key(signed(
            alice,
            Op::CreateKey(pb::CreateKeyOp {
                name: "payroll".into(),
                grants: grants_all(&["spiffe://eu.example/app"]),
                release_policy: UNATTESTED.into(),
                ..Default::default()
            }),
        ))
        .await
        .unwrap()
        .into_inner();
    let schedule = || {
        QOp::ScheduleKeyDeletion(pb::ScheduleKeyDeletionOp {
            key: key.id.clone(),
            pending_window_days: 7,
        })
    };
    // Checked when proposed: an enabled key cannot be scheduled for deletion.
    assert_refused(
        c.admin.propose(propose(bob, schedule())).await,
        Code::FailedPrecondition,
        "invalid_state_transition",
    );
    // Disabling is fail-safe: one admin.
    c.admin
        .disable_key(signed(carol, Op::DisableKey(pb::DisableKeyOp { key: key.id.clone() })))
        .await
        .unwrap();
    let del = c.admin.propose(propose(bob, schedule())).await.unwrap().into_inner();
    assert_eq!(del.status, pb::ProposalStatus::Pending as i32);
    let deleted = c.admin.approve(approve(alice, &del)).await.unwrap().into_inner();
    assert!(
        matches!(deleted.result, Some(pb::proposal::Result::Key(ref k)) if k.state == pb::KeyState::PendingDeletion as i32)
    );

    // Removing admins may not make the quorum unreachable: with M = 2 and 4 admins (alice, bob,
    // carol custodians; dave, fay), removing dave works.
    let rm = c
        .admin
        .propose(propose(
            alice,
            QOp::RemoveAdmin(pb::RemoveAdminOp {
                admin_id: "dave".into(),
                reason: "left".into(),
            }),
        ))
        .await
        .unwrap()
        .into_inner();
    c.admin.approve(approve(carol, &rm)).await.unwrap();
    assert!(!admins(&c).await.contains(&"dave".to_owned()));
    // A removed admin cannot sign anything.
    assert_refused(
        c.admin
            .list_admins(signed(&dave, Op::ListAdmins(pb::ListAdminsOp::default())))
            .await,
        Code::PermissionDenied,
        "admin_removed",
    );
    // M cannot exceed the admins; a valid change needs the quorum too.
    assert_refused(
        c.admin
            .propose(propose(alice, QOp::SetQuorum(pb::SetQuorumOp { approval_quorum: 9 })))
            .await,
        Code::InvalidArgument,
        "bad_quorum",
    );
    let q = c
        .admin
        .propose(propose(alice, QOp::SetQuorum(pb::SetQuorumOp { approval_quorum: 3 })))
        .await
        .unwrap()
        .into_inner();
    let q = c.admin.approve(approve(bob, &q)).await.unwrap().into_inner();
    assert!(matches!(q.result, Some(pb::proposal::Result::SealStatus(ref s)) if s.approval_quorum == 3));
    // Now three approvals are needed.
    let p3 = c
        .admin
        .propose(propose(alice, add(&admin("gus", "AT"))))
        .await
        .unwrap()
        .into_inner();
    let after_two = c.admin.approve(approve(bob, &p3)).await.unwrap().into_inner();
    assert_eq!(after_two.status, pb::ProposalStatus::Pending as i32);
    let after_three = c.admin.approve(approve(carol, &p3)).await.unwrap().into_inner();
    assert_eq!(after_three.status, pb::ProposalStatus::Executed as i32);
}
both_backends!(two_of_three_quorum, super::two_of_three);

/// The operator copies an approval row (after dropping the table's primary key): every copy
/// verifies as a genuine row, but an admin's approval counts once, so one more admin's approval
/// does not reach 3 of 3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copied_approval_row_counts_once() {
    let opts = Options {
        approval_quorum: 3,
        ..Options::default()
    };
    let Some(c) = Ceremony::new(Backend::Postgres, opts).await else {
        return;
    };
    let [alice, bob] = [&c.custodians[0], &c.custodians[1]];
    let dave = admin("dave", "DE");
    let p = c
        .admin
        .clone()
        .propose(propose(alice, add(&dave)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((p.approvals.len(), p.approvals_required), (1, 3));

    let mut conn = c.db.connect().await;
    for sql in [
        "ALTER TABLE approvals DROP CONSTRAINT approvals_pkey".to_owned(),
        format!(
            "INSERT INTO approvals SELECT * FROM approvals WHERE proposal_id = '{}' AND admin_id = 'alice'",
            p.id
        ),
    ] {
        sqlx::query(&sql).execute(&mut conn).await.unwrap();
    }
    let copies: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM approvals WHERE admin_id = 'alice'")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(copies, 2);

    let after = c.admin.clone().approve(approve(bob, &p)).await.unwrap().into_inner();
    assert_eq!(after.status, pb::ProposalStatus::Pending as i32, "{after:?}");
    assert!(!admins(&c).await.contains(&"dave".to_owned()));
    c.server.stop().await;
}

async fn expiry(backend: Backend) {
    let opts = Options {
        approval_quorum: 2,
        proposal_ttl: Duration::from_secs(1),
        ..Options::default()
    };
    let Some(mut c) = Ceremony::new(backend, opts).await else {
        return;
    };
    let p = c
        .admin
        .propose(propose(&c.custodians[0], add(&admin("dave", "DE"))))
        .await
        .unwrap()
        .into_inner();
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_refused(
        c.admin.approve(approve(&c.custodians[1], &p)).await,
        Code::FailedPrecondition,
        "proposal_expired",
    );
    let shown = c
        .admin
        .describe_proposal(signed(
            &c.custodians[2],
            Op::DescribeProposal(pb::DescribeProposalOp {
                proposal_id: p.id.clone(),
            }),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(shown.status, pb::ProposalStatus::Expired as i32);
}
both_backends!(proposal_expiry, super::expiry);

/// Two replicas on one PostgreSQL: the two approvals that each reach M race; the operation runs
/// exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_with_two_replicas() {
    let opts = Options {
        approval_quorum: 2,
        ..Options::default()
    };
    let Some(mut c) = Ceremony::new(Backend::Postgres, opts.clone()).await else {
        return;
    };
    let second = c.replica(opts).await;
    let mut admin2 = second.admin(&c.pki).await;
    // A replica serves nothing until it is unsealed (it cannot verify the rows before).
    submit_share(&mut admin2, &c.custodians[0]).await.unwrap();
    assert!(!submit_share(&mut admin2, &c.custodians[1]).await.unwrap().sealed);
    for round in 0..5 {
        let p = c
            .admin
            .propose(propose(&c.custodians[0], add(&admin(&format!("racer{round}"), "DE"))))
            .await
            .unwrap()
            .into_inner();
        let (mut a1, mut a2) = (c.admin.clone(), admin2.clone());
        let (r1, r2) = tokio::join!(
            a1.approve(approve(&c.custodians[1], &p)),
            a2.approve(approve(&c.custodians[2], &p)),
        );
        let executed = [&r1, &r2]
            .iter()
            .filter(|r| matches!(r, Ok(x) if x.get_ref().status == pb::ProposalStatus::Executed as i32 && x.get_ref().result.is_some()))
            .count();
        assert_eq!(executed, 1, "round {round}: {r1:?} / {r2:?}");
        for r in [&r1, &r2] {
            if let Err(s) = r {
                assert_eq!(reason(s), "proposal_closed", "{s:?}");
            }
        }
    }
    let n = admins(&c).await.iter().filter(|a| a.starts_with("racer")).count();
    assert_eq!(n, 5);
    let _ = admin2
        .list_admins(signed(&c.custodians[0], Op::ListAdmins(pb::ListAdminsOp::default())))
        .await
        .unwrap();
}
