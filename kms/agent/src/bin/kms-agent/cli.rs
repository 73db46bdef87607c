//! The command line, as clap derive definitions: every command, option and its help text, and
//! the parsers of its small argument languages (`K=V`, PCR lists). It only describes; it must
//! never connect, read files or touch a TPM.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use kms_agent::{AkScheme, EkKind};
use kms_client::cli::parse::{parse_pair, Pair};
use kms_client::cli::{
    ConnectionArgs, ConnectionFlags, NodeTrustArgs, NodeTrustFlags, OutputFormat, PlaintextWithTlsFiles,
};

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  the server refused (the error names its reason code), or its answer was refused (e.g. a
     data key sent in plaintext)
  2  usage error (bad arguments)
  3  cannot reach the server (connection, TLS handshake, timeout)
  4  a local problem: a file missing, unreadable, malformed or in the way (an envelope message
     that does not verify: no plaintext file is written); the TPM or the SEV-SNP device
     missing or failing

With --output json, stdout carries one JSON document, also on failure
({\"ok\": false, \"error\": {...}}); messages for humans go to stderr.
Secrets are written only to files created with mode 0600, and printed only with an
--insecure-print-* flag.";

/// The default TPM: the kernel's resource manager.
pub(crate) const DEFAULT_TCTI: &str = "device:/dev/tpmrm0";

/// kms-agent: prove where this workload runs, and receive data keys that only it can open.
///
/// Each key-releasing command attests first: it asks kmsd for a challenge, binds it and a fresh
/// HPKE key into hardware evidence (a TPM quote with the AK enrolled for this machine, or an
/// SEV-SNP report), exchanges the evidence for a short-lived token, and then asks for the key,
/// which kmsd returns sealed to the HPKE key. Connection options go before the command.
#[derive(Parser, Debug)]
#[command(name = "kms-agent", version, after_long_help = EXIT_CODES)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) connection: Connection,

    /// Output format: short lines for humans, or one JSON document on stdout.
    #[arg(long, value_enum, default_value_t = OutputFormat::Human, global = true, help_heading = "Output")]
    pub(crate) output: OutputFormat,

    #[command(subcommand)]
    pub(crate) command: Command,
}

/// How kms-agent names its connection and node-trust options.
#[derive(Debug)]
pub(crate) struct AgentFlags;

impl ConnectionFlags for AgentFlags {
    const URL: &'static str = "endpoint";
    const URL_NOUN: &'static str = "endpoint";
    const URL_ENV: &'static str = "KMS_AGENT_ENDPOINT";
    const CA_ENV: &'static str = "KMS_AGENT_CA";
    const CERT_ENV: &'static str = "KMS_AGENT_CERT";
    const KEY_ENV: &'static str = "KMS_AGENT_KEY";
    const SERVER_NAME_ENV: &'static str = "KMS_AGENT_TLS_SERVER_NAME";
    const CERT_HELP: &'static str = "PEM client certificate for mutual TLS: the server identifies the workload by it, and a token is valid only with the certificate it was issued to";
    const GLOBAL: bool = false;
    const PLAINTEXT_WITH_TLS_FILES: PlaintextWithTlsFiles = PlaintextWithTlsFiles::Refuse;
}

impl NodeTrustFlags for AgentFlags {
    const POLICY_ENV: &'static str = "KMS_AGENT_NODE_POLICY";
    const POLICY_HELP: &'static str = "The node policy (JSON) a kmsd must meet for its answers to be used: the hardware it may run on and conditions on its evidence (docs/attested-release.md, \"Node identity\")";
    const DANGER_HELP: &'static str = "Trust a kmsd that presents no hardware evidence (dev mode): answers must still be signed by the node key it presents, but anyone who answers in its place is trusted. Insecure";
    const DANGER_ENV: &'static str = "KMS_AGENT_DANGER_UNATTESTED_KMSD";
    const GLOBAL: bool = false;
}

/// How to reach kmsd.
#[derive(Args, Debug)]
#[command(next_help_heading = "Connection (before the command)")]
pub(crate) struct Connection {
    /// The endpoint and the TLS files.
    #[command(flatten)]
    pub(crate) channel: ConnectionArgs<AgentFlags>,

    /// Which kmsd to trust: --node-policy FILE or --danger-unattested-kmsd (one is needed).
    #[command(flatten)]
    pub(crate) trust: NodeTrustArgs<AgentFlags>,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Command {
    /// This machine's TPM: enrolment.
    #[command(subcommand)]
    Tpm(TpmCommand),
    /// Attest, then generate a data key: writes its ciphertext blob (store it with the data) and
    /// the 32-byte key (mode 0600).
    GenerateDataKey(GenerateArgs),
    /// Attest, then decrypt a ciphertext blob (--blob) or an envelope message (--in): writes the
    /// plaintext (mode 0600). A message's plaintext file appears only once all of it verified.
    Decrypt(DecryptArgs),
    /// Attest, then encrypt a file into an envelope message (the AWS Encryption SDK message
    /// format, key-committing suite): a data key from kmsd encrypts it, and travels with it
    /// wrapped under KEY.
    Encrypt(EncryptArgs),
    /// Attest only: shows the token's id, expiry and the claims release policies will see (not
    /// the token, not the HPKE key).
    Attest(AttestArgs),
}

#[derive(Subcommand, Debug)]
pub(crate) enum TpmCommand {
    /// Enrol this machine's TPM: creates an attestation key (AK) under the EK, answers the
    /// server's credential challenge, and writes the AK file (keep it: only its quotes are
    /// accepted for this machine) and the enrolment request an admin submits with EnrollHardware.
    Enroll(EnrollArgs),
}

#[derive(Args, Debug)]
pub(crate) struct EnrollArgs {
    /// The TPM: device:/dev/tpmrm0, or swtpm:host=127.0.0.1,port=N.
    #[arg(long, env = "KMS_AGENT_TCTI", default_value = DEFAULT_TCTI, value_name = "TCTI")]
    pub(crate) tcti: String,
    /// Where to write the AK (public and TPM-wrapped private part, JSON; mode 0600).
    #[arg(long, value_name = "FILE")]
    pub(crate) ak_out: PathBuf,
    /// Where to write the enrolment request for the admin (JSON; mode 0600).
    #[arg(long, value_name = "FILE")]
    pub(crate) request_out: PathBuf,
    /// The AK's key type and signature scheme.
    #[arg(long, value_enum, default_value_t = AkSchemeArg::Rsassa)]
    pub(crate) ak_scheme: AkSchemeArg,
    /// The EK whose certificate is sent and which answers the credential challenge.
    #[arg(long, value_enum, default_value_t = EkArg::Rsa2048)]
    pub(crate) ek: EkArg,
    /// An intermediate CA certificate (DER or PEM) between the EK certificate and the server's
    /// TPM-manufacturer CA bundle. Repeatable.
    #[arg(long = "ek-intermediate", value_name = "FILE")]
    pub(crate) ek_intermediates: Vec<PathBuf>,
    /// Replace existing output files.
    #[arg(long)]
    pub(crate) force: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum AkSchemeArg {
    /// RSA 2048, RSASSA-PKCS1-v1_5 with SHA-256.
    Rsassa,
    /// RSA 2048, RSASSA-PSS with SHA-256.
    Rsapss,
    /// ECC P-256, ECDSA with SHA-256.
    Ecdsa,
}

impl From<AkSchemeArg> for AkScheme {
    fn from(a: AkSchemeArg) -> Self {
        match a {
            AkSchemeArg::Rsassa => AkScheme::RsaSsa,
            AkSchemeArg::Rsapss => AkScheme::RsaPss,
            AkSchemeArg::Ecdsa => AkScheme::EcdsaP256,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum EkArg {
    /// RSA 2048 (certificate at NV 0x01c00002).
    Rsa2048,
    /// ECC NIST P-256 (certificate at NV 0x01c0000a).
    EccP256,
}

impl From<EkArg> for EkKind {
    fn from(a: EkArg) -> Self {
        match a {
            EkArg::Rsa2048 => EkKind::Rsa2048,
            EkArg::EccP256 => EkKind::EccP256,
        }
    }
}

/// Where the evidence comes from: exactly one of --tpm and --snp.
#[derive(Args, Debug)]
#[command(next_help_heading = "Evidence (one of --tpm, --snp)")]
pub(crate) struct EvidenceArgs {
    /// Attest with this machine's TPM: a quote of --pcrs with the AK enrolled for it (--ak).
    #[arg(
        long,
        required_unless_present_any = ["snp", "insecure_plaintext_release"],
        conflicts_with_all = ["snp", "insecure_plaintext_release"]
    )]
    pub(crate) tpm: bool,
    /// The TPM: device:/dev/tpmrm0, or swtpm:host=127.0.0.1,port=N.
    #[arg(long, env = "KMS_AGENT_TCTI", default_value = DEFAULT_TCTI, value_name = "TCTI")]
    pub(crate) tcti: String,
    /// The AK file written by `kms-agent tpm enroll`.
    #[arg(long, value_name = "FILE", required_if_eq("tpm", "true"), conflicts_with = "snp")]
    pub(crate) ak: Option<PathBuf>,
    /// The SHA-256 PCRs to quote: indices and ranges, e.g. 0,1,7 or 0-7.
    #[arg(long, value_name = "LIST", value_parser = parse_pcrs, default_value = "0-7", conflicts_with = "snp")]
    pub(crate) pcrs: Pcrs,
    /// Attest with an SEV-SNP attestation report from the AMD Secure Processor.
    #[arg(long)]
    pub(crate) snp: bool,
    /// The SEV-SNP guest device.
    #[arg(long, value_name = "PATH", default_value = attestation::attester::snp::SEV_GUEST_DEVICE, conflicts_with = "tpm")]
    pub(crate) device: PathBuf,
    /// The VMPL to request the report at (0 to 3; default: the firmware's).
    #[arg(long, value_name = "N", conflicts_with = "tpm")]
    pub(crate) vmpl: Option<u32>,
    /// encrypt and decrypt --in only: do not attest; kmsd sends data keys in plaintext, which
    /// only keys whose release policy says "attestation": "none" do (dev mode, tests). Anything
    /// that reads the connection sees the data keys.
    #[arg(long, conflicts_with = "snp")]
    pub(crate) insecure_plaintext_release: bool,
}

#[derive(Args, Debug)]
pub(crate) struct GenerateArgs {
    /// The key: its id (k-…) or its name.
    #[arg(long, value_name = "KEY")]
    pub(crate) key: String,
    /// An encryption-context pair, bound to the blob; Decrypt needs exactly the same pairs.
    /// Repeatable.
    #[arg(long = "context", value_name = "K=V", value_parser = parse_pair)]
    pub(crate) context: Vec<Pair>,
    /// Where to write the ciphertext blob.
    #[arg(long, value_name = "FILE")]
    pub(crate) blob_out: PathBuf,
    /// Where to write the 32-byte data key (mode 0600).
    #[arg(long, value_name = "FILE", required_unless_present = "insecure_print_key")]
    pub(crate) key_out: Option<PathBuf>,
    /// Also print the data key (base64) on stdout, where terminals, logs and scrollback keep it.
    #[arg(long)]
    pub(crate) insecure_print_key: bool,
    /// Replace existing output files.
    #[arg(long)]
    pub(crate) force: bool,
    #[command(flatten)]
    pub(crate) evidence: EvidenceArgs,
}

#[derive(Args, Debug)]
pub(crate) struct DecryptArgs {
    /// The ciphertext blob.
    #[arg(
        long,
        value_name = "FILE",
        required_unless_present = "input",
        conflicts_with = "input"
    )]
    pub(crate) blob: Option<PathBuf>,
    /// An envelope message (written by `kms-agent encrypt` or any AWS Encryption SDK with a
    /// kmsd keyring) instead of a blob.
    #[arg(long = "in", id = "input", value_name = "FILE")]
    pub(crate) input: Option<PathBuf>,
    /// An encryption-context pair, exactly as given when the blob was made. Repeatable.
    #[arg(long = "context", value_name = "K=V", value_parser = parse_pair)]
    pub(crate) context: Vec<Pair>,
    /// The key (id or name) the blob must be under; the server refuses any other.
    #[arg(long, value_name = "KEY")]
    pub(crate) key: Option<String>,
    /// Where to write the plaintext (mode 0600).
    #[arg(long, value_name = "FILE", required_unless_present = "insecure_print_plaintext")]
    pub(crate) out: Option<PathBuf>,
    /// Also print the plaintext (base64) on stdout, where terminals, logs and scrollback keep it.
    #[arg(long)]
    pub(crate) insecure_print_plaintext: bool,
    /// Replace an existing output file.
    #[arg(long)]
    pub(crate) force: bool,
    #[command(flatten)]
    pub(crate) evidence: EvidenceArgs,
}

#[derive(Args, Debug)]
pub(crate) struct EncryptArgs {
    /// The key (id or name) the data key is wrapped under.
    #[arg(long, value_name = "KEY")]
    pub(crate) key: String,
    /// An encryption-context pair: authenticated in the message and bound to its wrapped key
    /// (kmsd's release policy and audit see it). Repeatable.
    #[arg(long = "context", value_name = "K=V", value_parser = parse_pair)]
    pub(crate) context: Vec<Pair>,
    /// The plaintext file.
    #[arg(long = "in", value_name = "FILE")]
    pub(crate) input: PathBuf,
    /// Where to write the message.
    #[arg(long, value_name = "FILE")]
    pub(crate) out: PathBuf,
    /// The algorithm suite: 0x0578 (key commitment and an ECDSA P-384 signature, the default)
    /// or 0x0478 (key commitment, no signature: anyone who can decrypt could also forge).
    #[arg(long, value_name = "ID", default_value = "0x0578", value_parser = parse_suite)]
    pub(crate) suite: kms_envelope::Suite,
    /// The frame length in bytes (1 to 16 MiB).
    #[arg(long, value_name = "BYTES", default_value_t = kms_envelope::DEFAULT_FRAME_LENGTH)]
    pub(crate) frame_length: u32,
    /// Replace an existing output file.
    #[arg(long)]
    pub(crate) force: bool,
    #[command(flatten)]
    pub(crate) evidence: EvidenceArgs,
}

/// Parses a suite id (for clap); only the committing suites are written.
pub(crate) fn parse_suite(s: &str) -> Result<kms_envelope::Suite, String> {
    match kms_envelope::Suite::parse(s) {
        Some(suite) if suite.is_committing() => Ok(suite),
        Some(suite) => Err(format!("{suite} does not commit to its key; use 0x0478 or 0x0578")),
        None => Err(format!("{s:?} is not an algorithm suite (0x0478 or 0x0578)")),
    }
}

#[derive(Args, Debug)]
pub(crate) struct AttestArgs {
    #[command(flatten)]
    pub(crate) evidence: EvidenceArgs,
}

/// A PCR selection, ascending, without repeats.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Pcrs(pub(crate) Vec<u8>);

/// Parses `0,1,7`, `0-7`, `0-3,7` (for clap).
pub(crate) fn parse_pcrs(s: &str) -> Result<Pcrs, String> {
    let index = |t: &str| -> Result<u8, String> {
        t.trim()
            .parse::<u8>()
            .ok()
            .filter(|i| *i <= 23)
            .ok_or_else(|| format!("{t:?} is not a PCR index (0 to 23)"))
    };
    let mut out = Vec::new();
    for part in s.split(',') {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (index(a)?, index(b)?);
                if a > b {
                    return Err(format!("{part:?}: the range is backwards"));
                }
                out.extend(a..=b);
            }
            None => out.push(index(part)?),
        }
    }
    out.sort_unstable();
    out.dedup();
    Ok(Pcrs(out))
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("kms-agent").chain(args.iter().copied()))
    }

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn pcr_lists_and_ranges() {
        assert_eq!(parse_pcrs("0,1,7").unwrap().0, vec![0, 1, 7]);
        assert_eq!(parse_pcrs("0-3,7,2").unwrap().0, vec![0, 1, 2, 3, 7]);
        assert_eq!(parse_pcrs("23").unwrap().0, vec![23]);
        for bad in ["", "24", "a", "3-1", "0,,1", "-1"] {
            assert!(parse_pcrs(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn connection_options_go_before_the_command_and_key_means_two_things() {
        let cli = parse(&[
            "--endpoint",
            "https://kms:7300",
            "--ca",
            "ca.pem",
            "--cert",
            "c.pem",
            "--key",
            "c.key",
            "generate-data-key",
            "--key",
            "payments",
            "--context",
            "t=1",
            "--blob-out",
            "b",
            "--key-out",
            "k",
            "--tpm",
            "--ak",
            "ak.json",
            "--pcrs",
            "0,7",
            "--output",
            "json",
        ])
        .unwrap();
        assert_eq!(cli.connection.channel.client_key, Some(PathBuf::from("c.key")));
        assert_eq!(cli.connection.channel.url, "https://kms:7300");
        assert_eq!(cli.output, OutputFormat::Json);
        let Command::GenerateDataKey(g) = cli.command else {
            panic!("not generate-data-key")
        };
        assert_eq!(g.key, "payments");
        assert!(g.evidence.tpm && !g.evidence.snp);
        assert_eq!(g.evidence.pcrs.0, vec![0, 7]);
        assert_eq!(g.evidence.tcti, DEFAULT_TCTI);
    }

    #[test]
    fn evidence_is_tpm_or_snp() {
        let base = ["decrypt", "--blob", "b", "--out", "o"];
        let with = |extra: &[&str]| parse(&[&base[..], extra].concat());
        assert!(with(&[]).is_err(), "one of --tpm/--snp is required");
        assert!(with(&["--tpm"]).is_err(), "--tpm needs --ak");
        assert!(with(&["--tpm", "--snp", "--ak", "a"]).is_err());
        assert!(with(&["--snp", "--ak", "a"]).is_err());
        assert!(with(&["--tpm", "--ak", "a", "--vmpl", "0"]).is_err());
        let snp = with(&["--snp", "--vmpl", "1"]).unwrap();
        let Command::Decrypt(d) = snp.command else { panic!() };
        assert!(d.evidence.snp);
        assert_eq!(d.evidence.device, PathBuf::from("/dev/sev-guest"));
        assert!(with(&["--tpm", "--ak", "a", "--pcrs", "24"]).is_err());
    }

    #[test]
    fn secrets_need_a_file_or_an_insecure_flag() {
        let gdk = ["generate-data-key", "--key", "k", "--blob-out", "b", "--snp"];
        assert!(parse(&gdk).is_err());
        assert!(parse(&[&gdk[..], &["--insecure-print-key"]].concat()).is_ok());
        assert!(parse(&["decrypt", "--blob", "b", "--snp"]).is_err());
        assert!(parse(&["decrypt", "--blob", "b", "--snp", "--insecure-print-plaintext"]).is_ok());
    }

    #[test]
    fn enroll_defaults() {
        let cli = parse(&["tpm", "enroll", "--ak-out", "ak", "--request-out", "req"]).unwrap();
        let Command::Tpm(TpmCommand::Enroll(e)) = cli.command else {
            panic!()
        };
        assert_eq!(e.ak_scheme, AkSchemeArg::Rsassa);
        assert_eq!(e.ek, EkArg::Rsa2048);
        assert!(!e.force);
        assert!(parse(&["tpm", "enroll", "--ak-out", "ak"]).is_err());
        let cli = parse(&[
            "tpm",
            "enroll",
            "--ak-out",
            "a",
            "--request-out",
            "r",
            "--ak-scheme",
            "ecdsa",
        ])
        .unwrap();
        let Command::Tpm(TpmCommand::Enroll(e)) = cli.command else {
            panic!()
        };
        assert_eq!(AkScheme::from(e.ak_scheme), AkScheme::EcdsaP256);
    }
}
