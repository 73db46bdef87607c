//! Quorum operations: proposing one, and listing, showing, approving and rejecting proposals.
//! What an approver signs is the SHA-256 of the operation bytes, so this module decodes those
//! bytes and computes their digest itself: it never trusts the server's summary or digest. It
//! must never print a TPM enrolment's activated secret or any other secret an operation carries.

use std::fmt::Write as _;

use kms_proto::v1 as pb;
use kms_proto::v1::admin_request::Operation as Op;
use kms_proto::v1::enroll_hardware_op::Identity;
use kms_proto::v1::quorum_operation::Operation as QOp;
use prost::Message as _;
use serde_json::{json, Value};

use crate::cli::{Global, ProposalCommand, RotateSealArg};
use crate::client::{Server, Signer};
use crate::credential::Credential;
use crate::error::Error;
use crate::output::{self, Printer};

/// SHA-256 of `bytes`.
fn sha256(bytes: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, bytes).as_ref().to_vec()
}

/// The canonical bytes of a quorum operation (prost's encoding, which the server requires).
pub(crate) fn encode(op: QOp) -> Vec<u8> {
    pb::QuorumOperation { operation: Some(op) }.encode_to_vec()
}

/// A proposal's operation, decoded here from its bytes, with the digest computed here.
struct Decoded {
    operation: Option<QOp>,
    sha256: Vec<u8>,
    /// Why the bytes are not a canonical QuorumOperation, if they are not.
    problem: Option<String>,
}

fn decode(bytes: &[u8]) -> Decoded {
    let sha256 = sha256(bytes);
    match pb::QuorumOperation::decode(bytes) {
        Ok(q) if q.encode_to_vec() != bytes => Decoded {
            operation: q.operation,
            sha256,
            problem: Some("the operation bytes are not in the canonical encoding".into()),
        },
        Ok(q) if q.operation.is_none() => Decoded {
            operation: None,
            sha256,
            problem: Some("the operation bytes hold no (known) operation".into()),
        },
        Ok(q) => Decoded {
            operation: q.operation,
            sha256,
            problem: None,
        },
        Err(e) => Decoded {
            operation: None,
            sha256,
            problem: Some(format!("the operation bytes do not decode: {e}")),
        },
    }
}

fn rotate_seal(seal: RotateSealArg) -> pb::SealKind {
    match seal {
        RotateSealArg::Shamir => pb::SealKind::Shamir,
        RotateSealArg::Pkcs11 => pb::SealKind::Pkcs11,
    }
}

/// `kmsctl root rotate`'s operation.
pub(crate) fn rotate_root(seal: RotateSealArg, threshold: Option<u32>, custodians: &[String]) -> Result<QOp, Error> {
    if seal == RotateSealArg::Pkcs11 && (threshold.is_some() || !custodians.is_empty()) {
        return Err(Error::usage(
            "--threshold and --custodian apply to the shamir seal only",
        ));
    }
    Ok(QOp::RotateRoot(pb::RotateRootOp {
        seal: rotate_seal(seal) as i32,
        threshold: threshold.unwrap_or(0),
        custodians: custodians.to_vec(),
    }))
}

/// The SEV-SNP chip id (CHIP_ID at 0x1A0..0x1E0 of the report), hex.
fn chip_id(report: &[u8]) -> Option<String> {
    report.get(0x1A0..0x1E0).map(hex::encode)
}

/// The operation as JSON (never with the TPM activated secret or a report's bytes).
fn operation_json(op: &QOp) -> Value {
    match op {
        QOp::AddAdmin(a) => {
            let n = a.admin.clone().unwrap_or_default();
            json!({
                "type": "add_admin",
                "admin_id": n.id,
                "country": n.country,
                "custodian": n.custodian,
                "signing_public_key": hex::encode(&n.signing_public_key),
                "encryption_public_key": hex::encode(&n.encryption_public_key),
            })
        }
        QOp::RemoveAdmin(r) => json!({ "type": "remove_admin", "admin_id": r.admin_id, "reason": r.reason }),
        QOp::SetQuorum(q) => json!({ "type": "set_quorum", "approval_quorum": q.approval_quorum }),
        QOp::EnrollHardware(h) => {
            let identity = match &h.identity {
                Some(Identity::Snp(s)) => {
                    let report = s.evidence.as_ref().map(|e| e.report.as_slice()).unwrap_or_default();
                    json!({ "kind": "snp", "chip_id": chip_id(report), "accept_vlek": s.accept_vlek })
                }
                Some(Identity::Tpm(t)) => json!({
                    "kind": "tpm",
                    "enrollment_id": t.enrollment_id,
                    "ek_digest": t.expected_ek_digest,
                    "ak_name": t.expected_ak_name,
                }),
                None => Value::Null,
            };
            json!({
                "type": "enroll_hardware",
                "country": h.country,
                "site": h.site,
                "operator": h.operator,
                "description": h.description,
                "identity": identity,
            })
        }
        QOp::SetReleasePolicy(s) => json!({
            "type": "set_release_policy",
            "key": s.key,
            "release_policy": serde_json::from_str::<Value>(&s.release_policy).unwrap_or_else(|_| Value::from(s.release_policy.as_str())),
        }),
        QOp::ScheduleKeyDeletion(d) => json!({
            "type": "schedule_key_deletion",
            "key": d.key,
            "pending_window_days": d.pending_window_days,
        }),
        QOp::RotateRoot(r) => json!({
            "type": "rotate_root",
            "seal": output::seal_kind(r.seal),
            "threshold": r.threshold,
            "custodians": r.custodians,
        }),
    }
}

/// The operation for people: one line per field.
fn operation_human(op: &QOp) -> String {
    let mut out = String::new();
    let doc = operation_json(op);
    let _ = writeln!(out, "operation:       {}", doc["type"].as_str().unwrap_or("?"));
    if let Value::Object(fields) = &doc {
        for (name, value) in fields.iter().filter(|(n, _)| n.as_str() != "type") {
            let shown = match value {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let _ = writeln!(out, "  {name}: {shown}");
        }
    }
    out
}

fn status_name(status: i32) -> &'static str {
    match pb::ProposalStatus::try_from(status) {
        Ok(pb::ProposalStatus::Pending) => "pending",
        Ok(pb::ProposalStatus::Executed) => "executed",
        Ok(pb::ProposalStatus::Rejected) => "rejected",
        Ok(pb::ProposalStatus::Expired) => "expired",
        Ok(pb::ProposalStatus::Failed) => "failed",
        _ => "unknown",
    }
}

fn result_json(r: Option<&pb::proposal::Result>) -> Value {
    match r {
        Some(pb::proposal::Result::Admin(a)) => json!({ "admin": output::admin_json(a) }),
        Some(pb::proposal::Result::Key(k)) => json!({ "key": output::key_json(k) }),
        Some(pb::proposal::Result::Hardware(h)) => json!({ "hardware": output::hardware_json(h) }),
        Some(pb::proposal::Result::SealStatus(s)) => json!({ "seal_status": output::seal_status_json(s) }),
        None => Value::Null,
    }
}

fn result_human(r: Option<&pb::proposal::Result>) -> String {
    match r {
        Some(pb::proposal::Result::Admin(a)) => output::admins_table(std::slice::from_ref(a)),
        Some(pb::proposal::Result::Key(k)) => output::key_human(k),
        Some(pb::proposal::Result::Hardware(h)) => output::hardware_human(h),
        Some(pb::proposal::Result::SealStatus(s)) => output::seal_status_human(s),
        None => String::new(),
    }
}

/// The proposal as JSON, with the operation decoded here and both digests.
fn proposal_json(pr: &pb::Proposal) -> Value {
    let d = decode(&pr.operation_bytes);
    json!({
        "id": pr.id,
        "status": status_name(pr.status),
        "operation_name": pr.operation,
        "summary": pr.summary,
        "operation": d.operation.as_ref().map(operation_json),
        "operation_problem": d.problem,
        "operation_sha256": hex::encode(&d.sha256),
        "server_operation_sha256": hex::encode(&pr.operation_sha256),
        "digest_matches": d.sha256 == pr.operation_sha256,
        "proposed_by": pr.proposed_by,
        "created_unix_ms": pr.created_unix_ms,
        "expires_unix_ms": pr.expires_unix_ms,
        "approvals": pr.approvals.iter().map(|a| json!({ "admin_id": a.admin_id, "approved_unix_ms": a.approved_unix_ms })).collect::<Vec<_>>(),
        "approvals_required": pr.approvals_required,
        "rejections": pr.rejections.iter().map(|r| json!({ "admin_id": r.admin_id, "reason": r.reason, "rejected_unix_ms": r.rejected_unix_ms })).collect::<Vec<_>>(),
        "outcome": (!pr.outcome.is_empty()).then_some(pr.outcome.as_str()),
        "result": result_json(pr.result.as_ref()),
    })
}

fn approvers(pr: &pb::Proposal) -> String {
    pr.approvals
        .iter()
        .map(|a| a.admin_id.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn proposal_human(pr: &pb::Proposal) -> String {
    let d = decode(&pr.operation_bytes);
    let mut out = String::new();
    let _ = writeln!(out, "proposal:        {}", pr.id);
    let _ = writeln!(out, "status:          {}", status_name(pr.status));
    let _ = writeln!(
        out,
        "approvals:       {}/{} ({})",
        pr.approvals.len(),
        pr.approvals_required,
        approvers(pr)
    );
    if !pr.rejections.is_empty() {
        let list: Vec<String> = pr
            .rejections
            .iter()
            .map(|r| format!("{}: {}", r.admin_id, r.reason))
            .collect();
        let _ = writeln!(out, "rejections:      {} ({})", pr.rejections.len(), list.join("; "));
    }
    let _ = writeln!(
        out,
        "proposed by:     {} at {}",
        pr.proposed_by,
        output::time(pr.created_unix_ms)
    );
    let _ = writeln!(out, "expires:         {}", output::time(pr.expires_unix_ms));
    match &d.operation {
        Some(op) => out.push_str(&operation_human(op)),
        None => out.push_str("operation:       (cannot be decoded)\n"),
    }
    let _ = writeln!(out, "sha-256:         {} (computed here)", hex::encode(&d.sha256));
    if !pr.summary.is_empty() {
        let _ = writeln!(out, "server summary:  {}", pr.summary);
    }
    if !pr.outcome.is_empty() {
        let _ = writeln!(out, "outcome:         {}", pr.outcome);
    }
    out.push_str(&result_human(pr.result.as_ref()));
    out
}

/// The refusal to go on when the operation bytes are not what they should be.
fn untrustworthy(pr: &pb::Proposal, d: &Decoded) -> Option<Error> {
    let mut problems = Vec::new();
    if d.sha256 != pr.operation_sha256 {
        problems.push(format!(
            "the server's digest {} is NOT the SHA-256 of the operation bytes it sent ({})",
            hex::encode(&pr.operation_sha256),
            hex::encode(&d.sha256)
        ));
    }
    problems.extend(d.problem.clone());
    if problems.is_empty() {
        return None;
    }
    let what = format!(
        "WARNING: proposal {}: {}. Do not approve it; tell the other admins.",
        pr.id,
        problems.join("; ")
    );
    Some(Error::Verification {
        json: json!({
            "ok": false,
            "error": { "kind": "operation_mismatch", "exit_code": crate::error::exit::REFUSED, "message": what, "problems": problems },
            "proposal": proposal_json(pr),
        }),
        what,
    })
}

/// Prints a proposal after a propose or an approve; a proposal that ended FAILED is an error.
fn finish(p: &Printer, pr: &pb::Proposal, verb: &str) -> Result<(), Error> {
    if pr.status == pb::ProposalStatus::Failed as i32 {
        let what = format!(
            "proposal {} reached its quorum but the operation failed: {}",
            pr.id, pr.outcome
        );
        return Err(Error::Verification {
            json: json!({
                "ok": false,
                "error": { "kind": "proposal_failed", "exit_code": crate::error::exit::REFUSED, "message": what, "outcome": pr.outcome },
                "proposal": proposal_json(pr),
            }),
            what,
        });
    }
    p.emit(proposal_json(pr), || {
        let head = match pb::ProposalStatus::try_from(pr.status) {
            Ok(pb::ProposalStatus::Pending) => format!(
                "{verb} {}: pending, {}/{} approvals; other admins run `kmsctl proposal approve {}`\n",
                pr.id,
                pr.approvals.len(),
                pr.approvals_required,
                pr.id
            ),
            Ok(pb::ProposalStatus::Executed) => format!("{verb} {}: executed\n", pr.id),
            _ => format!("{verb} {}: {}\n", pr.id, status_name(pr.status)),
        };
        head + &proposal_human(pr)
    })
}

/// Proposes `op` signed by `signer` and prints the proposal (or its result, when the quorum is
/// 1 and it ran at once).
pub(crate) async fn propose_with(
    server: &Server,
    signer: &Signer<'_>,
    p: &Printer,
    op: QOp,
    ttl: Option<u32>,
) -> Result<(), Error> {
    let request = Op::Propose(pb::ProposeOp {
        operation: encode(op),
        ttl_secs: ttl.unwrap_or(0),
    });
    let pr = server.admin_call::<pb::Proposal>(signer, request).await?;
    finish(p, &pr, "proposed")
}

/// Loads the credential, connects and proposes `op`.
pub(crate) async fn propose(g: &Global, p: &Printer, op: QOp, ttl: Option<u32>) -> Result<(), Error> {
    let key = Credential::load(g)?;
    let server = Server::connect(g).await?;
    propose_with(&server, &key.signer(), p, op, ttl).await
}

async fn describe(server: &Server, signer: &Signer<'_>, id: &str) -> Result<pb::Proposal, Error> {
    let op = Op::DescribeProposal(pb::DescribeProposalOp {
        proposal_id: id.to_owned(),
    });
    server.admin_call::<pb::Proposal>(signer, op).await
}

/// `kmsctl proposal ...`.
pub(crate) async fn run(g: &Global, p: &Printer, command: &ProposalCommand) -> Result<(), Error> {
    let key = Credential::load(g)?;
    let signer = key.signer();
    let server = Server::connect(g).await?;
    match command {
        ProposalCommand::List { all } => {
            let mut proposals = Vec::new();
            let mut page_token = String::new();
            loop {
                let op = Op::ListProposals(pb::ListProposalsOp {
                    include_closed: *all,
                    page_size: 0,
                    page_token: std::mem::take(&mut page_token),
                });
                let page = server.admin_call::<pb::ListProposalsResponse>(&signer, op).await?;
                proposals.extend(page.proposals);
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
            p.emit(
                json!({ "proposals": proposals.iter().map(proposal_json).collect::<Vec<_>>() }),
                || {
                    if proposals.is_empty() {
                        return if *all { "no proposals" } else { "no open proposals" }.into();
                    }
                    let mut out = String::new();
                    for pr in &proposals {
                        let d = decode(&pr.operation_bytes);
                        let name = d
                            .operation
                            .as_ref()
                            .and_then(|o| operation_json(o)["type"].as_str().map(str::to_owned))
                            .unwrap_or_else(|| "(undecodable)".into());
                        let _ = writeln!(
                            out,
                            "{}  {:<9} {}/{}  {:<22} by {}{}",
                            pr.id,
                            status_name(pr.status),
                            pr.approvals.len(),
                            pr.approvals_required,
                            name,
                            pr.proposed_by,
                            if d.sha256 == pr.operation_sha256 && d.problem.is_none() {
                                ""
                            } else {
                                "  WARNING: digest mismatch, see `kmsctl proposal show`"
                            }
                        );
                    }
                    out
                },
            )
        }
        ProposalCommand::Show { id } => {
            let pr = describe(&server, &signer, id).await?;
            let d = decode(&pr.operation_bytes);
            if let Some(e) = untrustworthy(&pr, &d) {
                // The decoded operation is still shown, for the investigation.
                if !p.is_json() {
                    eprint!("{}", proposal_human(&pr));
                }
                return Err(e);
            }
            p.emit(proposal_json(&pr), || proposal_human(&pr))
        }
        ProposalCommand::Approve { id } => {
            let pr = describe(&server, &signer, id).await?;
            let d = decode(&pr.operation_bytes);
            if let Some(e) = untrustworthy(&pr, &d) {
                if !p.is_json() {
                    eprint!("{}", proposal_human(&pr));
                }
                return Err(e);
            }
            if let Some(op) = &d.operation {
                // What is being signed, for the record of whoever runs this.
                eprint!(
                    "approving, as {}, proposal {} (proposed by {}):\n{}sha-256 (computed here): {}\n",
                    signer.admin_id(),
                    pr.id,
                    pr.proposed_by,
                    operation_human(op),
                    hex::encode(&d.sha256)
                );
            }
            let op = Op::Approve(pb::ApproveOp {
                proposal_id: pr.id.clone(),
                operation_sha256: d.sha256,
            });
            let after = server.admin_call::<pb::Proposal>(&signer, op).await?;
            finish(p, &after, "approved")
        }
        ProposalCommand::Reject { id, reason } => {
            let op = Op::Reject(pb::RejectOp {
                proposal_id: id.clone(),
                reason: reason.clone(),
            });
            let pr = server.admin_call::<pb::Proposal>(&signer, op).await?;
            p.emit(proposal_json(&pr), || {
                if pr.status == pb::ProposalStatus::Pending as i32 {
                    format!(
                        "rejection of {} recorded; still pending (it closes once {} approvals can no longer be reached, or when its proposer withdraws it)\n{}",
                        pr.id,
                        pr.approvals_required,
                        proposal_human(&pr)
                    )
                } else {
                    format!("rejected {}\n{}", pr.id, proposal_human(&pr))
                }
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_decode_to_what_was_encoded_and_digests_are_recomputed() {
        let bytes = encode(QOp::SetQuorum(pb::SetQuorumOp { approval_quorum: 3 }));
        let d = decode(&bytes);
        assert!(d.problem.is_none());
        assert_eq!(operation_json(d.operation.as_ref().unwrap())["approval_quorum"], 3);
        let mut pr = pb::Proposal {
            id: "p-1".into(),
            operation_bytes: bytes.clone(),
            operation_sha256: sha256(&bytes),
            ..Default::default()
        };
        assert!(untrustworthy(&pr, &decode(&pr.operation_bytes)).is_none());
        pr.operation_sha256 = sha256(b"something else");
        let e = untrustworthy(&pr, &decode(&pr.operation_bytes)).unwrap();
        assert_eq!(e.exit_code(), crate::error::exit::REFUSED);
        assert!(e.to_string().contains("NOT the SHA-256"));
        assert!(decode(b"\xff\xff").problem.is_some());
    }

    #[test]
    fn tpm_secrets_are_not_shown() {
        let op = QOp::EnrollHardware(pb::EnrollHardwareOp {
            country: "DE".into(),
            identity: Some(Identity::Tpm(pb::TpmEnrollment {
                enrollment_id: "e-1".into(),
                activated_secret: vec![0xAB; 32],
                expected_ek_digest: "ek".into(),
                expected_ak_name: "ak".into(),
            })),
            ..Default::default()
        });
        let shown = operation_json(&op).to_string() + &operation_human(&op);
        assert!(!shown.to_lowercase().contains(&"ab".repeat(32)));
        assert!(shown.contains("e-1"));
    }

    #[test]
    fn pkcs11_rotation_takes_no_custodians() {
        assert!(rotate_root(RotateSealArg::Pkcs11, Some(2), &[]).is_err());
        assert!(rotate_root(RotateSealArg::Shamir, Some(2), &["a".into()]).is_ok());
    }
}
