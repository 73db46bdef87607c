//! `kmsctl verify` on the real captures in attestation/test_data: verified evidence prints its
//! claims (exit 0), refused evidence names the failed check (exit 1), a missing file exits 4.

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::Value;

/// 2025-06-01T00:00:00Z: inside every SNP fixture certificate's validity (the VLEK's ends 2025-12-10).
const SNP_AT: &str = "2025-06-01T00:00:00Z";
/// A time at which the captured EK and CA certificates are valid (as in tpm_vectors.rs).
const TPM_AT: &str = "1796010000";

fn data(path: &str) -> String {
    let full = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../attestation/test_data")
        .join(path);
    full.to_str().expect("UTF-8 path").to_owned()
}

fn kmsctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kmsctl"))
        .args(args)
        .env_remove("KMSCTL_CA")
        .output()
        .expect("run kmsctl")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

fn assert_exit(out: &Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        stderr(out)
    );
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

const VCEK_CASES: [(&str, &str); 3] = [
    ("snp/milan-vcek-report-v2.bin", "snp/milan-vcek-report-v2.vcek.der"),
    (
        "snp/milan-vcek-report-virtee.bin",
        "snp/milan-vcek-report-virtee.vcek.der",
    ),
    ("snp/azure-milan-report-v2.bin", "snp/azure-milan-report-v2.vcek.der"),
];

#[test]
fn real_snp_reports_verify_with_their_vcek() {
    for (report, vcek) in VCEK_CASES {
        let (report, vcek) = (data(report), data(vcek));
        let out = kmsctl(&["verify", "snp", "--report", &report, "--vek", &vcek, "--at", SNP_AT]);
        assert_exit(&out, 0);
        let claims = json(&out);
        let bytes = std::fs::read(&report).expect("report");
        assert_eq!(claims["measurement"], hex(&bytes[0x90..0xC0]), "{report}");
        assert_eq!(claims["signer"], "vcek", "{report}: {claims}");
        assert!(stderr(&out).contains("binding not checked"), "{}", stderr(&out));

        // With the expected REPORT_DATA given, the pinned Milan chain, and a TCB floor it meets.
        let report_data = hex(&bytes[0x50..0x90]);
        let out = kmsctl(&[
            "verify",
            "snp",
            "--report",
            &report,
            "--vek",
            &vcek,
            "--ca",
            &data("amd/ask_ark_milan.pem"),
            "--report-data",
            &report_data,
            "--min-tcb",
            "bl=3,tee=0,snp=8,ucode=115",
            "--at",
            "1748736000",
        ]);
        assert_exit(&out, 0);
        assert!(!stderr(&out).contains("binding not checked"));
    }
}

#[test]
fn another_chips_vcek_is_refused() {
    let out = kmsctl(&[
        "verify",
        "snp",
        "--report",
        &data("snp/milan-vcek-report-v2.bin"),
        "--vek",
        &data("snp/milan-vcek-report-virtee.vcek.der"),
        "--at",
        SNP_AT,
    ]);
    assert_exit(&out, 1);
    assert!(
        stderr(&out).contains("refused: evidence_signature: "),
        "{}",
        stderr(&out)
    );
}

#[test]
fn vlek_report_needs_accept_vlek() {
    let report = data("snp/milan-vlek-report-v3.bin");
    let vlek = data("snp/milan-vlek-report-v3.vlek.der");
    let out = kmsctl(&[
        "verify",
        "snp",
        "--report",
        &report,
        "--vek",
        &vlek,
        "--accept-vlek",
        "--at",
        SNP_AT,
    ]);
    assert_exit(&out, 0);
    let claims = json(&out);
    assert_eq!(claims["signer"], "vlek", "{claims}");
    assert_eq!(claims["vlek_csp_id"], "CN=cc-us-east-2.amazonaws.com");

    let out = kmsctl(&[
        "verify", "snp", "--report", &report, "--vek", &vlek, "--at", SNP_AT, "--output", "json",
    ]);
    assert_exit(&out, 1);
    assert!(stderr(&out).contains("refused: signing_key: "), "{}", stderr(&out));
    let doc = json(&out);
    assert_eq!(doc["ok"], false);
    assert_eq!(doc["check"], "signing_key");
    assert!(doc["detail"].as_str().is_some_and(|d| d.contains("VLEK")), "{doc}");
}

#[test]
fn wrong_report_data_is_a_binding_mismatch() {
    let zeros = "00".repeat(64);
    let out = kmsctl(&[
        "verify",
        "snp",
        "--report",
        &data("snp/milan-vcek-report-v2.bin"),
        "--vek",
        &data("snp/milan-vcek-report-v2.vcek.der"),
        "--report-data",
        &zeros,
        "--at",
        SNP_AT,
    ]);
    assert_exit(&out, 1);
    assert!(stderr(&out).contains("refused: binding_mismatch: "), "{}", stderr(&out));
}

#[test]
fn other_snp_refusals() {
    let report = data("snp/azure-milan-report-v2.bin");
    let vcek = data("snp/azure-milan-report-v2.vcek.der");
    // A pinned chain, but not the report's product's.
    let out = kmsctl(&[
        "verify",
        "snp",
        "--report",
        &report,
        "--vek",
        &vcek,
        "--ca",
        &data("amd/ask_ark_genoa.pem"),
        "--at",
        SNP_AT,
    ]);
    assert_exit(&out, 1);
    assert!(
        stderr(&out).contains("refused: certificate_chain: "),
        "{}",
        stderr(&out)
    );
    // A TCB floor above the report's.
    let out = kmsctl(&[
        "verify",
        "snp",
        "--report",
        &report,
        "--vek",
        &vcek,
        "--min-tcb",
        "bl=3,tee=0,snp=9,ucode=115",
        "--at",
        SNP_AT,
    ]);
    assert_exit(&out, 1);
    assert!(stderr(&out).contains("refused: tcb: "), "{}", stderr(&out));
    // The global KMSCTL_CA (the server's CA) is not taken as the AMD chain.
    let out = Command::new(env!("CARGO_BIN_EXE_kmsctl"))
        .args(["verify", "snp", "--report", &report, "--vek", &vcek, "--at", SNP_AT])
        .env("KMSCTL_CA", data("amd/ask_ark_genoa.pem"))
        .output()
        .expect("run kmsctl");
    assert_exit(&out, 0);
    // Bad usage.
    assert_exit(&kmsctl(&["verify", "snp", "--report", &report, "--min-tcb", "bl=3"]), 2);
    assert_exit(&kmsctl(&["verify", "snp", "--report", &report, "--at", "yesterday"]), 2);
}

fn tpm_args(case: &str, pcrs: &str) -> Vec<String> {
    let f = |name: &str| data(&format!("tpm/{case}/{name}"));
    [
        "--ak-public",
        "ak.pub",
        "--quote",
        "quote.msg",
        "--signature",
        "quote.sig",
    ]
    .chunks(2)
    .flat_map(|pair| [pair[0].to_owned(), f(pair[1])])
    .chain(["--pcrs".to_owned(), pcrs.to_owned()])
    .collect()
}

fn verify_tpm(case: &str, pcrs: &str, extra: &[&str]) -> Output {
    let mut args: Vec<String> = vec!["verify".into(), "tpm".into()];
    args.extend(tpm_args(case, pcrs));
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    kmsctl(&refs)
}

#[test]
fn captured_tpm_quotes_verify() {
    for (case, scheme) in [
        ("quote-rsassa", "rsassa-sha256"),
        ("quote-rsapss", "rsapss-sha256"),
        ("quote-ecdsa", "ecdsa-p256-sha256"),
    ] {
        let pcrs = data(&format!("tpm/{case}/pcrs.out"));
        let qualification = std::fs::read_to_string(data(&format!("tpm/{case}/qualification.hex"))).expect("hex");
        let ak_name = hex(&std::fs::read(data(&format!("tpm/{case}/ak.name"))).expect("ak.name"));

        // Binding and AK given, EK certificate validated.
        let out = verify_tpm(
            case,
            &pcrs,
            &[
                "--qualifying-data",
                qualification.trim(),
                "--ak-name",
                &ak_name,
                "--ek-cert",
                &data("tpm/ek/ek-rsa2048.crt"),
                "--ek-ca",
                &data("tpm/ek/root.pem"),
                "--ek-intermediate",
                &data("tpm/ek/issuer.pem"),
                "--at",
                TPM_AT,
            ],
        );
        assert_exit(&out, 0);
        let claims = json(&out);
        assert_eq!(claims["signature_scheme"], scheme, "{case}: {claims}");
        assert_eq!(claims["ak_name"], ak_name.as_str());
        assert_eq!(claims["extra_data"], qualification.trim());
        assert!(claims["pcrs"]["16"].is_string(), "{claims}");
        assert!(claims["ek"]["digest"].is_string(), "{claims}");
        assert!(claims["ek"]["tpm_manufacturer"].is_string(), "{claims}");

        // Nothing but the evidence: the quote's own extraData, any AK.
        let out = verify_tpm(case, &pcrs, &[]);
        assert_exit(&out, 0);
        assert!(stderr(&out).contains("binding not checked"), "{}", stderr(&out));

        // Another binding, another AK.
        let out = verify_tpm(case, &pcrs, &["--qualifying-data", &"00".repeat(32)]);
        assert_exit(&out, 1);
        assert!(stderr(&out).contains("refused: binding_mismatch: "), "{}", stderr(&out));
        let other_ak = hex(&std::fs::read(data("tpm/quote-rsassa/ak.name")).expect("ak.name"));
        if case != "quote-rsassa" {
            let out = verify_tpm(case, &pcrs, &["--ak-name", &other_ak]);
            assert_exit(&out, 1);
            assert!(
                stderr(&out).contains("refused: hardware_identity: "),
                "{}",
                stderr(&out)
            );
        }
    }
}

#[test]
fn tampered_pcr_file_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut pcrs = std::fs::read(data("tpm/quote-ecdsa/pcrs.out")).expect("pcrs.out");
    // PCR 16, the only non-zero value (extended once by capture.sh).
    let pcr16 = [0x44, 0xf1, 0x20, 0x27, 0xab, 0x81, 0xdf, 0xb6];
    let at = pcrs
        .windows(pcr16.len())
        .position(|w| w == pcr16)
        .expect("PCR 16 in pcrs.out");
    pcrs[at + 31] ^= 1;
    let tampered = dir.path().join("pcrs.out");
    std::fs::write(&tampered, &pcrs).expect("write");
    let out = verify_tpm("quote-ecdsa", tampered.to_str().expect("UTF-8"), &["--output", "json"]);
    assert_exit(&out, 1);
    assert!(stderr(&out).contains("refused: pcrs: "), "{}", stderr(&out));
    assert_eq!(json(&out)["check"], "pcrs");
}

#[test]
fn ek_certificate_outside_its_validity_is_refused() {
    let pcrs = data("tpm/quote-ecdsa/pcrs.out");
    let out = verify_tpm(
        "quote-ecdsa",
        &pcrs,
        &[
            "--ek-cert",
            &data("tpm/ek/ek-secp384r1.crt"),
            "--ek-ca",
            &data("tpm/ek/root.pem"),
            "--ek-intermediate",
            &data("tpm/ek/issuer.pem"),
            "--at",
            "2025-06-01T00:00:00Z",
        ],
    );
    assert_exit(&out, 1);
    assert!(
        stderr(&out).contains("refused: certificate_validity: "),
        "{}",
        stderr(&out)
    );
}

#[test]
fn missing_files_exit_4() {
    let missing = data("snp/no-such-report.bin");
    let out = kmsctl(&["verify", "snp", "--report", &missing]);
    assert_exit(&out, 4);
    assert!(stderr(&out).contains("no-such-report.bin"), "{}", stderr(&out));
    let out = verify_tpm("quote-ecdsa", &data("tpm/quote-ecdsa/no-such-pcrs.out"), &[]);
    assert_exit(&out, 4);
}
