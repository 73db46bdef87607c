//! `kmsctl verify`: offline verification of attestation evidence (SEV-SNP reports, TPM quotes)
//! with the `attestation` crate, the same verifier code `kmsd` runs. Prints the claims as JSON;
//! a refusal names the failed check and exits 1. It must never accept evidence the library
//! refused, nor reach the network.

use attestation::snp::{MinimumTcb, SnpEvidence, SnpTrust, SnpVerifier};
use attestation::tpm::ek::EkCaBundle;
use attestation::tpm::{AkName, PcrValues, TpmEvidence, TpmTrust, TpmVerifier};
use attestation::{Refusal, Verifier as _};
use serde_json::{json, Value};

use crate::cli::{VerifySnpArgs, VerifyTpmArgs};
use crate::error::Error;
use crate::files;
use crate::output;

/// Where REPORT_DATA sits in an SNP report (bytes 0x50..0x90).
const SNP_REPORT_DATA: std::ops::Range<usize> = 0x50..0x90;

/// A refusal as the error `kmsctl` exits with (exit code 1).
fn refused(r: &Refusal) -> Error {
    Error::Verification {
        what: format!("refused: {r}"),
        json: json!({ "ok": false, "check": r.check.as_str(), "detail": r.detail }),
    }
}

fn note(text: &str) {
    eprintln!("note: {text}");
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn print_json(value: &Value) -> Result<(), Error> {
    let text = serde_json::to_string_pretty(value).map_err(|e| Error::local(e.to_string()))?;
    Ok(output::stdout(format!("{text}\n").as_bytes())?)
}

/// `kmsctl verify snp`.
pub(crate) fn snp(args: &VerifySnpArgs) -> Result<(), Error> {
    let report = files::read(&args.report)?;
    let vek = args
        .vek
        .as_deref()
        .map(|path| files::read_certificate(path, "VCEK/VLEK certificate"))
        .transpose()?;
    let chain = args.chain.as_deref().map(files::read).transpose()?;

    let expected = match &args.report_data {
        Some(hex) => hex.0.clone(),
        None => {
            note("no --report-data: the report's own REPORT_DATA is taken as expected; binding not checked");
            report.get(SNP_REPORT_DATA).map(<[u8]>::to_vec).unwrap_or_default()
        }
    };
    // An inspection tool: every genuine report, narrowed by the flags (the server's own trust
    // is its [attestation.snp] configuration).
    let base = SnpTrust::insecure_any_platform();
    let trust = SnpTrust {
        minimum_tcb: args.min_tcb.map_or(base.minimum_tcb.clone(), MinimumTcb::all),
        allow_smt: !args.no_smt,
        accept_vlek: args.accept_vlek,
        ..base
    };
    let verifier = SnpVerifier::new(trust).map_err(|e| Error::local(e.to_string()))?;
    let evidence = SnpEvidence { report, vek, chain };
    let claims = verifier
        .verify(&evidence, &expected, args.at.unwrap_or_else(now_unix))
        .map_err(|r| refused(&r))?;
    let value = serde_json::to_value(&claims).map_err(|e| Error::local(e.to_string()))?;
    print_json(&value)
}

/// The extraData of a TPMS_ATTEST (magic, type, qualifiedSigner, extraData), unauthenticated:
/// only used as the expected binding when none is given; the verifier checks the signature first.
fn quote_extra_data(quote: &[u8]) -> Option<Vec<u8>> {
    let tpm2b = |at: usize| -> Option<(&[u8], usize)> {
        let size = usize::from(u16::from_be_bytes(quote.get(at..at + 2)?.try_into().ok()?));
        Some((quote.get(at + 2..at + 2 + size)?, at + 2 + size))
    };
    let (_, next) = tpm2b(6)?;
    let (extra, _) = tpm2b(next)?;
    Some(extra.to_vec())
}

/// `kmsctl verify tpm`.
pub(crate) fn tpm(args: &VerifyTpmArgs) -> Result<(), Error> {
    let ak_public = files::read(&args.ak_public)?;
    let quote = files::read(&args.quote)?;
    let signature = files::read(&args.signature)?;
    let pcr_file = files::read(&args.pcrs)?;
    let ek_cert = args
        .ek_cert
        .as_deref()
        .map(|p| files::read_certificate(p, "EK certificate"))
        .transpose()?;
    let ek_ca = args.ek_ca.as_deref().map(files::read).transpose()?;
    let ek_intermediates = match args.ek_intermediate.as_deref() {
        Some(p) => files::read_certificates(p, "EK intermediate certificates")?,
        None => Vec::new(),
    };
    let now = args.at.unwrap_or_else(now_unix);

    let trust = match &args.ak_name {
        Some(hex) => TpmTrust::enrolled_ak(
            hex.parse::<AkName>()
                .map_err(|r| Error::usage(format!("--ak-name: {r}")))?,
        ),
        None => {
            note(
                "no --ak-name: any restricted signing AK is accepted; check the claims' ak_name against the enrolment",
            );
            TpmTrust::ak_checked_by_caller()
        }
    };
    let expected = match &args.qualifying_data {
        Some(hex) => hex.0.clone(),
        None => {
            note("no --qualifying-data: the quote's own extraData is taken as expected; binding not checked");
            quote_extra_data(&quote).unwrap_or_default()
        }
    };
    let pcrs = PcrValues::from_tpm2_tools(&pcr_file).map_err(|r| refused(&r))?;
    let evidence = TpmEvidence {
        ak_public,
        quote,
        signature,
        pcrs,
    };
    let claims = TpmVerifier::new(trust)
        .verify(&evidence, &expected, now)
        .map_err(|r| refused(&r))?;
    let mut value = serde_json::to_value(&claims).map_err(|e| Error::local(e.to_string()))?;

    if let (Some(cert), Some(ca)) = (ek_cert, ek_ca) {
        let bundle = EkCaBundle::from_pem(&ca).map_err(|r| refused(&r))?;
        let intermediates: Vec<&[u8]> = ek_intermediates.iter().map(Vec::as_slice).collect();
        let ek = bundle.verify(&cert, &intermediates, now).map_err(|r| refused(&r))?;
        note("the EK certificate is valid, but nothing here binds the AK to that EK (credential activation does)");
        if let Value::Object(map) = &mut value {
            map.insert(
                "ek".into(),
                json!({
                    "digest": ek.digest,
                    "key_type": ek.public.key_type(),
                    "tpm_manufacturer": ek.tpm_manufacturer,
                    "tpm_model": ek.tpm_model,
                    "tpm_version": ek.tpm_version,
                    "chain": ek.chain,
                }),
            );
        }
    }
    print_json(&value)
}
