//! `kmsctl verify`: offline verification of attestation evidence (SEV-SNP reports, TPM quotes)
//! with the `attestation` crate, the same verifier code `kmsd` runs. Prints the claims as JSON;
//! a refusal names the failed check and exits 1. It must never accept evidence the library
//! refused, nor reach the network.

use attestation::snp::{MinimumTcb, SnpEvidence, SnpTrust, SnpVerifier, Tcb};
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
        .map(|path| files::one_certificate(path, "VCEK/VLEK"))
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
        .map(|p| files::read(p).map(|b| (p, b)))
        .transpose()?;
    let ek_ca = args.ek_ca.as_deref().map(files::read).transpose()?;
    let ek_intermediates = match args.ek_intermediate.as_deref() {
        Some(p) => files::certificates(p, files::read(p)?)?,
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

    if let (Some((path, cert)), Some(ca)) = (ek_cert, ek_ca) {
        let cert = files::certificates(path, cert)?
            .into_iter()
            .next()
            .ok_or_else(|| Error::local(format!("{}: no certificate", path.display())))?;
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

/// Bytes given in hex on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Hex(pub(crate) Vec<u8>);

/// Hex bytes (an optional `0x` prefix is allowed).
pub(crate) fn parse_hex(s: &str) -> Result<Hex, String> {
    let s = s.trim();
    hex::decode(s.strip_prefix("0x").unwrap_or(s))
        .map(Hex)
        .map_err(|e| format!("not hex: {e}"))
}

/// `bl=N,tee=N,snp=N,ucode=N[,fmc=N]`.
pub(crate) fn parse_tcb(s: &str) -> Result<Tcb, String> {
    let (mut bl, mut tee, mut snp, mut ucode, mut fmc) = (None, None, None, None, None);
    for part in s.split(',') {
        let (name, value) = part
            .split_once('=')
            .ok_or_else(|| format!("{part:?} is not NAME=N (expected bl=N,tee=N,snp=N,ucode=N[,fmc=N])"))?;
        let value: u8 = value
            .trim()
            .parse()
            .map_err(|e| format!("{name}: {value:?} is not 0..=255: {e}"))?;
        let slot = match name.trim() {
            "bl" => &mut bl,
            "tee" => &mut tee,
            "snp" => &mut snp,
            "ucode" => &mut ucode,
            "fmc" => &mut fmc,
            other => return Err(format!("unknown TCB component {other:?} (bl, tee, snp, ucode, fmc)")),
        };
        if slot.replace(value).is_some() {
            return Err(format!("{name} given twice"));
        }
    }
    let need = |v: Option<u8>, name: &str| v.ok_or_else(|| format!("{name}=N is missing"));
    Ok(Tcb {
        fmc,
        bootloader: need(bl, "bl")?,
        tee: need(tee, "tee")?,
        snp: need(snp, "snp")?,
        microcode: need(ucode, "ucode")?,
    })
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's days_from_civil).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Unix seconds, or RFC 3339 (`2025-06-01T00:00:00Z`, fractions and `+HH:MM` offsets allowed).
pub(crate) fn parse_time(s: &str) -> Result<i64, String> {
    let s = s.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse().map_err(|e| format!("{s:?}: {e}"));
    }
    let bad = || format!("{s:?} is neither Unix seconds nor RFC 3339 (e.g. 2025-06-01T00:00:00Z)");
    let b = s.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return Err(bad());
    }
    let num = |r: std::ops::Range<usize>| -> Result<i64, String> {
        let part = s.get(r).ok_or_else(bad)?;
        if part.bytes().all(|c| c.is_ascii_digit()) {
            part.parse().map_err(|_| bad())
        } else {
            Err(bad())
        }
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let month_days = [31, if leap { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    if !(1..=12).contains(&month)
        || day < 1
        || day > month_days[usize::try_from(month - 1).map_err(|_| bad())?]
        || hour > 23
        || minute > 59
        || second > 60
    {
        return Err(bad());
    }
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        rest = &frac[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && rest.as_bytes()[3] == b':' => {
            let sign = match rest.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return Err(bad()),
            };
            let h: i64 = rest[1..3].parse().map_err(|_| bad())?;
            let m: i64 = rest[4..6].parse().map_err(|_| bad())?;
            if h > 23 || m > 59 {
                return Err(bad());
            }
            sign * (h * 3600 + m * 60)
        }
        _ => return Err(bad()),
    };
    Ok(days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second - offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse() {
        assert_eq!(parse_time("2025-06-01T00:00:00Z"), Ok(1_748_736_000));
        assert_eq!(parse_time("1748736000"), Ok(1_748_736_000));
        assert_eq!(parse_time("2025-06-01T02:00:00.5+02:00"), Ok(1_748_736_000));
        assert_eq!(parse_time("2026-01-01T00:00:00Z"), Ok(1_767_225_600));
        assert_eq!(parse_time("1970-01-01T00:00:00Z"), Ok(0));
        for bad in [
            "",
            "2025-06-01",
            "2025-02-30T00:00:00Z",
            "2025-06-01T00:00:00",
            "x025-06-01T00:00:00Z",
        ] {
            assert!(parse_time(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tcbs_parse() {
        let t = parse_tcb("bl=3,tee=0,snp=8,ucode=115").expect("tcb");
        assert_eq!((t.bootloader, t.tee, t.snp, t.microcode, t.fmc), (3, 0, 8, 115, None));
        assert_eq!(parse_tcb("bl=1,tee=2,snp=3,ucode=4,fmc=5").expect("tcb").fmc, Some(5));
        for bad in [
            "bl=3,tee=0,snp=8",
            "bl=3,tee=0,snp=8,ucode=256",
            "bl=1,bl=2,tee=0,snp=8,ucode=1",
            "x=1",
        ] {
            assert!(parse_tcb(bad).is_err(), "{bad}");
        }
    }
}
