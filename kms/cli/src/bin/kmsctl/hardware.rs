//! The hardware registry (signed admin calls): enrol, list, describe and revoke machines. This
//! module reads the enrolment input (an SNP report and its VCEK/VLEK, or the TPM request file the
//! workload agent writes) and shapes the requests; the server verifies the evidence and applies
//! every rule, the jurisdiction rule included. It must never print or log the activated
//! credential secret of a TPM request.

use std::path::Path;

use kms_proto::v1 as pb;
use kms_proto::v1::admin_request::Operation as Op;
use kms_proto::v1::enroll_hardware_op::Identity;
use kms_proto::v1::quorum_operation::Operation as QOp;
use serde_json::{json, Map, Value};
use zeroize::Zeroizing;

use crate::cli::{EnrollArgs, Global, HardwareCommand};
use crate::client::Server;
use crate::credential::Credential;
use crate::error::Error;
use crate::files;
use crate::output::{self, Printer};
use crate::proposal;

/// The size of an SEV-SNP attestation report (AMD SEV-SNP ABI, ATTESTATION_REPORT).
const SNP_REPORT_LEN: usize = 1184;

/// `kmsctl hardware ...`.
pub(crate) async fn run(g: &Global, p: &Printer, command: &HardwareCommand) -> Result<(), Error> {
    match command {
        HardwareCommand::Enroll(args) => enroll(g, p, args).await,
        HardwareCommand::List {
            page_size,
            page_token,
            all,
        } => {
            list(
                g,
                p,
                page_size.unwrap_or(0),
                page_token.clone().unwrap_or_default(),
                *all,
            )
            .await
        }
        HardwareCommand::Describe { hardware_id } => {
            let op = Op::DescribeHardware(pb::DescribeHardwareOp {
                hardware_id: hardware_id.clone(),
            });
            let h = signed_call(g, op).await?;
            p.emit(output::hardware_json(&h), || output::hardware_human(&h))
        }
        HardwareCommand::Revoke { hardware_id, reason } => {
            let op = Op::RevokeHardware(pb::RevokeHardwareOp {
                hardware_id: hardware_id.clone(),
                reason: reason.clone(),
            });
            let h = signed_call(g, op).await?;
            p.emit(output::hardware_json(&h), || {
                format!(
                    "revoked {}: releases under its tokens are refused from now on, and its evidence obtains no new token\n{}",
                    h.id,
                    output::hardware_human(&h)
                )
            })
        }
    }
}

/// Loads the admin key, connects, and makes one signed call.
async fn signed_call(g: &Global, op: Op) -> Result<pb::Hardware, Error> {
    let admin_key = Credential::load(g)?;
    let signer = admin_key.signer();
    let server = Server::connect(g).await?;
    server.admin_call(&signer, op).await
}

/// What a TPM machine's enrolment request file holds: the JSON the workload agent writes after
/// TPM2_ActivateCredential, `{"enrollment_id", "activated_secret" (hex), "ak_name" (hex),
/// "ek_digest" (hex)}`. The AK name and EK digest are what the machine showed: they are shown so
/// the admin can compare them with the machine, signed into the request so the server refuses an
/// attempt for any other EK or AK (`tpm_identity_mismatch`), and compared again with what the
/// server enrolled.
struct TpmRequest {
    enrollment_id: String,
    activated_secret: Zeroizing<Vec<u8>>,
    ak_name: String,
    ek_digest: String,
}

/// An optional string field, removed from `map`.
fn take_string(map: &mut Map<String, Value>, name: &str) -> Result<Option<String>, String> {
    match map.remove(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(format!("\"{name}\" must be a string")),
    }
}

/// An optional hex field, in lower case.
fn take_hex(map: &mut Map<String, Value>, name: &str) -> Result<Option<String>, String> {
    let Some(s) = take_string(map, name)? else {
        return Ok(None);
    };
    let s = s.trim().to_ascii_lowercase();
    if s.is_empty() || hex::decode(&s).is_err() {
        return Err(format!("\"{name}\" is not hex"));
    }
    Ok(Some(s))
}

fn parse_tpm_request(text: &str) -> Result<TpmRequest, String> {
    let mut map = match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(m)) => m,
        Ok(_) => return Err("not a JSON object".into()),
        Err(e) => return Err(format!("not JSON: {e}")),
    };
    // Moved out of the map, not copied, so the one copy can be zeroized.
    let secret_hex =
        Zeroizing::new(take_string(&mut map, "activated_secret")?.ok_or("\"activated_secret\" is missing")?);
    // The decoder's error would quote a character of the secret: say only what is wrong.
    let activated_secret = Zeroizing::new(
        hex::decode(secret_hex.trim()).map_err(|_| "\"activated_secret\" is not hex (an even number of hex digits)")?,
    );
    if activated_secret.is_empty() {
        return Err("\"activated_secret\" is empty".into());
    }
    let enrollment_id = take_string(&mut map, "enrollment_id")?
        .filter(|s| !s.trim().is_empty())
        .ok_or("\"enrollment_id\" is missing")?;
    Ok(TpmRequest {
        enrollment_id: enrollment_id.trim().to_owned(),
        activated_secret,
        ak_name: take_hex(&mut map, "ak_name")?
            .ok_or("\"ak_name\" is missing (the server checks the machine's AK against it)")?,
        ek_digest: take_hex(&mut map, "ek_digest")?
            .ok_or("\"ek_digest\" is missing (the server checks the machine's EK against it)")?,
    })
}

fn tpm_request(path: &Path) -> Result<TpmRequest, Error> {
    let text = Zeroizing::new(files::read_text(path)?);
    parse_tpm_request(&text).map_err(|e| Error::file("use the TPM enrolment request", path, e))
}

/// The SNP identity: the raw report and the VCEK/VLEK that signed it.
fn snp_identity(report_path: &Path, args: &EnrollArgs) -> Result<Identity, Error> {
    let report = files::read(report_path)?;
    if report.len() != SNP_REPORT_LEN {
        return Err(Error::file(
            "use",
            report_path,
            format!(
                "{} bytes: not a raw SEV-SNP attestation report ({SNP_REPORT_LEN} bytes, as `snpguest report` writes it)",
                report.len()
            ),
        ));
    }
    let vek_certificate = args
        .vek
        .as_deref()
        .map(|path| files::read_certificate(path, "VCEK/VLEK certificate"))
        .transpose()?
        .unwrap_or_default();
    Ok(Identity::Snp(pb::SnpEnrollment {
        evidence: Some(pb::SnpEvidence {
            report,
            vek_certificate,
            cert_chain: Vec::new(),
        }),
        accept_vlek: args.accept_vlek,
    }))
}

/// Where the enrolled identity differs from what the request file said.
fn tpm_mismatches(request: &TpmRequest, h: &pb::Hardware) -> Vec<String> {
    let mut out = Vec::new();
    let pairs = [
        ("EK digest", &request.ek_digest, &h.tpm_ek_digest),
        ("AK name", &request.ak_name, &h.tpm_ak_name),
    ];
    for (what, file, server) in pairs {
        if !file.eq_ignore_ascii_case(server) {
            out.push(format!(
                "the server enrolled {what} {server}, the request file says {file}"
            ));
        }
    }
    out
}

/// `kmsctl hardware enroll`.
async fn enroll(g: &Global, p: &Printer, args: &EnrollArgs) -> Result<(), Error> {
    // Inputs are read and checked before the key file is read or the server contacted.
    let (identity, tpm) = match (&args.identity.snp_report, &args.identity.tpm_request) {
        (Some(report), _) => (snp_identity(report, args)?, None),
        (None, Some(path)) => {
            let request = tpm_request(path)?;
            let identity = Identity::Tpm(pb::TpmEnrollment {
                enrollment_id: request.enrollment_id.clone(),
                activated_secret: request.activated_secret.to_vec(),
                expected_ek_digest: request.ek_digest.clone(),
                expected_ak_name: request.ak_name.clone(),
            });
            (identity, Some(request))
        }
        // clap's argument group requires one of the two.
        (None, None) => return Err(Error::usage("give --snp-report or --tpm-request")),
    };
    if let Some(r) = &tpm {
        eprintln!(
            "TPM enrolment {}:\n  EK digest: {}\n  AK name:   {}\n  compare them with what the machine showed (the agent prints both)",
            r.enrollment_id,
            r.ek_digest, r.ak_name,
        );
    }
    let enroll = pb::EnrollHardwareOp {
        country: args.country.as_str().to_owned(),
        site: args.site.clone(),
        operator: args.operator.clone(),
        description: args.description.clone(),
        identity: Some(identity),
    };
    if args.propose.propose {
        // The approvers see the EK digest and AK name in `kmsctl proposal show`; the enrolled
        // identity is then checked by the server against the same expected values.
        return proposal::propose(g, p, QOp::EnrollHardware(enroll), args.propose.ttl).await;
    }
    let op = Op::EnrollHardware(enroll);
    let h = signed_call(g, op).await?;
    if let Some(request) = &tpm {
        let mismatches = tpm_mismatches(request, &h);
        if !mismatches.is_empty() {
            let what = format!(
                "enrolled {}, but {}: the request file does not describe the machine whose TPM answered. Check the machine; if it is not the one you meant, run `kmsctl hardware revoke {} --reason \"wrong machine\"`",
                h.id,
                mismatches.join("; "),
                h.id
            );
            return Err(Error::Verification {
                json: json!({
                    "ok": false,
                    "error": { "kind": "identity_mismatch", "exit_code": crate::error::exit::REFUSED, "message": what, "mismatches": mismatches },
                    "hardware": output::hardware_json(&h),
                }),
                what,
            });
        }
    }
    p.emit(output::hardware_json(&h), || {
        let mut out = format!("enrolled {} ({})\n", h.id, output::hardware_kind(h.kind));
        out.push_str(&output::hardware_human(&h));
        if tpm.is_some() {
            out.push_str("the enrolled EK digest and AK name match the request file\n");
        }
        out
    })
}

/// `kmsctl hardware list`.
async fn list(g: &Global, p: &Printer, page_size: u32, mut page_token: String, all: bool) -> Result<(), Error> {
    let admin_key = Credential::load(g)?;
    let signer = admin_key.signer();
    let server = Server::connect(g).await?;
    let mut machines = Vec::new();
    let next = loop {
        let op = Op::ListHardware(pb::ListHardwareOp {
            page_size,
            page_token: std::mem::take(&mut page_token),
        });
        let page = server.admin_call::<pb::ListHardwareResponse>(&signer, op).await?;
        machines.extend(page.hardware);
        if !all || page.next_page_token.is_empty() {
            break page.next_page_token;
        }
        page_token = page.next_page_token;
    };
    let doc = json!({
        "hardware": machines.iter().map(output::hardware_json).collect::<Vec<_>>(),
        "next_page_token": (!next.is_empty()).then_some(next.as_str()),
    });
    p.emit(doc, || {
        let mut out = output::hardware_table(&machines);
        if !next.is_empty() {
            out.push_str(&format!(
                "more machines: `kmsctl hardware list --page-token {next}` (or --all)\n"
            ));
        }
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tpm_requests_parse_and_name_what_is_wrong() {
        let r = parse_tpm_request(
            r#"{"enrollment_id":"tpme-01","activated_secret":"00ff10","ak_name":"000B AA","ek_digest":"CDCD","extra":1}"#,
        );
        assert!(r.is_err(), "a name with a space is not hex");
        let r = parse_tpm_request(
            r#"{"enrollment_id":"tpme-01","activated_secret":"00ff10","ak_name":"000BAA","ek_digest":"CDCD","extra":1}"#,
        )
        .unwrap();
        assert_eq!(r.enrollment_id, "tpme-01");
        assert_eq!(r.activated_secret.as_slice(), &[0x00, 0xff, 0x10]);
        assert_eq!(r.ak_name, "000baa");
        assert_eq!(r.ek_digest, "cdcd");

        for (text, why) in [
            ("[]", "not a JSON object"),
            ("{", "not JSON"),
            (r#"{"enrollment_id":"e"}"#, "\"activated_secret\" is missing"),
            (
                r#"{"enrollment_id":"e","activated_secret":"01","ak_name":"00"}"#,
                "\"ek_digest\" is missing",
            ),
            (
                r#"{"enrollment_id":"e","activated_secret":"01","ek_digest":"00"}"#,
                "\"ak_name\" is missing",
            ),
            (r#"{"enrollment_id":"e","activated_secret":"zz9"}"#, "not hex (an even"),
            (r#"{"enrollment_id":"e","activated_secret":""}"#, "is empty"),
            (r#"{"enrollment_id":"e","activated_secret":7}"#, "must be a string"),
            (r#"{"activated_secret":"01"}"#, "\"enrollment_id\" is missing"),
            (
                r#"{"enrollment_id":" ","activated_secret":"01"}"#,
                "\"enrollment_id\" is missing",
            ),
        ] {
            let e = parse_tpm_request(text).err().unwrap_or_default();
            assert!(e.contains(why), "{text}: {e}");
            assert!(!e.contains("zz9"), "the secret is never echoed: {e}");
        }
    }

    #[test]
    fn enrolled_identities_are_compared_with_the_request() {
        let request =
            parse_tpm_request(r#"{"enrollment_id":"e","activated_secret":"01","ak_name":"000BAA","ek_digest":"cdcd"}"#)
                .unwrap();
        let mut h = pb::Hardware {
            tpm_ek_digest: "cdcd".into(),
            tpm_ak_name: "000baa".into(),
            ..Default::default()
        };
        assert!(tpm_mismatches(&request, &h).is_empty());
        h.tpm_ek_digest = "abab".into();
        let m = tpm_mismatches(&request, &h);
        assert_eq!(
            m,
            vec!["the server enrolled EK digest abab, the request file says cdcd".to_owned()]
        );
    }

    #[test]
    fn snp_reports_must_have_the_report_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("report.bin");
        std::fs::write(&path, [0u8; 100]).unwrap();
        let args = EnrollArgs {
            country: kms_core::jurisdiction::Country::parse("DE").unwrap(),
            site: "s".into(),
            operator: "o".into(),
            description: String::new(),
            identity: crate::cli::EnrollIdentity {
                snp_report: Some(path.clone()),
                tpm_request: None,
            },
            propose: crate::cli::ProposeArgs::default(),
            vek: None,
            accept_vlek: false,
        };
        let e = snp_identity(&path, &args).unwrap_err();
        assert_eq!(e.exit_code(), crate::error::exit::LOCAL);
        assert!(
            e.to_string()
                .contains("100 bytes: not a raw SEV-SNP attestation report"),
            "{e}"
        );
        std::fs::write(&path, [0u8; SNP_REPORT_LEN]).unwrap();
        let Identity::Snp(s) = snp_identity(&path, &args).unwrap() else {
            panic!("not snp")
        };
        assert_eq!(s.evidence.unwrap().report.len(), SNP_REPORT_LEN);
    }
}
