//! The command line, as clap derive definitions: every command, option and its help text. It
//! only describes; it must never connect, read files or sign anything.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use kms_core::ids::AdminId;
use kms_core::jurisdiction::Country;

use kms_client::cli::parse::{parse_pair, Pair};
use kms_client::cli::{
    ConnectionArgs, ConnectionFlags, NodeTrustArgs, NodeTrustFlags, OutputFormat, PlaintextWithTlsFiles,
};

use crate::args::{parse_admin_id, parse_country, parse_grant, GrantArg};
use crate::args::{parse_hex, parse_tcb, parse_time, Hex};

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  the server refused the request, or a verification failed (audit chain, key check value,
     `kmsctl verify` evidence refused)
  2  usage error (bad arguments)
  3  cannot reach the server (connection, TLS handshake, timeout) or the audit database
  4  a local file or key is missing, unreadable, malformed, or would be overwritten

Refusals print the gRPC status code, the server's stable reason code (the `kms-reason`
metadata, e.g. `sealed`, `replayed_request`) and, where obvious, what to do about it.
With --output json, stdout carries one JSON document, also on failure
({\"ok\": false, \"error\": {...}}); messages for humans go to stderr.";

/// kmsctl: administer the key management service.
///
/// Admin commands are signed (ECDSA P-256) with the admin's credential: production admins keep
/// their keys in an HSM (--hsm-module, --hsm-token, --hsm-pin, --admin-pub); a key file
/// (--admin-key) is the software path for development and tests. The server checks the signature,
/// the timestamp and a fresh nonce on every request. Data-plane
/// commands (`kmsctl data`) are not signed: the server identifies the caller by the TLS client
/// certificate (--cert/--key).
#[derive(Parser, Debug)]
#[command(name = "kmsctl", version, after_long_help = EXIT_CODES)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) global: Global,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Options every command accepts.
#[derive(Args, Debug)]
#[command(next_help_heading = "Global options")]
pub(crate) struct Global {
    /// The server and the TLS files.
    #[command(flatten)]
    pub(crate) connection: ConnectionArgs<KmsctlFlags>,

    /// The deployment you administer (dep-…, as `kmsctl status` shows it after init): signed
    /// requests name it, and kmsctl refuses to sign for a server that reports another one.
    /// Without it, the deployment the server reports is signed for.
    #[arg(long, env = "KMSCTL_DEPLOYMENT", global = true, value_name = "ID")]
    pub(crate) deployment: Option<String>,

    /// Which kmsd to trust: --node-policy FILE or --danger-unattested-kmsd (every signed admin
    /// command needs one: it verifies the node that signs the answer).
    #[command(flatten)]
    pub(crate) node_trust: NodeTrustArgs<KmsctlFlags>,

    /// The admin key file (JSON, as `kmsctl admin keygen` writes it) that signs admin requests.
    /// The software path, for development and tests: production admins use an HSM (--hsm-module).
    #[arg(long, env = "KMSCTL_ADMIN_KEY", global = true, value_name = "FILE")]
    pub(crate) admin_key: Option<PathBuf>,

    /// The PKCS#11 module of the HSM holding your admin keys (instead of --admin-key).
    #[arg(
        long,
        env = "KMSCTL_HSM_MODULE",
        global = true,
        value_name = "PATH",
        help_heading = "HSM credential"
    )]
    pub(crate) hsm_module: Option<PathBuf>,

    /// The token in --hsm-module: label:NAME, slot:N or serial:S.
    #[arg(
        long,
        env = "KMSCTL_HSM_TOKEN",
        global = true,
        value_name = "SELECTOR",
        help_heading = "HSM credential"
    )]
    pub(crate) hsm_token: Option<String>,

    /// Where the token's user PIN comes from: env:VAR, file:PATH (mode 0600) or prompt (on the
    /// terminal). A PIN is never given on the command line.
    #[arg(
        long,
        env = "KMSCTL_HSM_PIN",
        global = true,
        value_name = "SOURCE",
        default_value = "prompt",
        help_heading = "HSM credential"
    )]
    pub(crate) hsm_pin: String,

    /// The label prefix of your keys in the token: the signing key is LABEL-sign, the share key
    /// LABEL-share. Default: your admin id.
    #[arg(
        long,
        env = "KMSCTL_HSM_KEY",
        global = true,
        value_name = "LABEL",
        help_heading = "HSM credential"
    )]
    pub(crate) hsm_key: Option<String>,

    /// Your public file (FILE.pub.json, as `kmsctl admin keygen --hsm` wrote it): it names the
    /// admin (id, country) whose keys are in the token, and kmsctl checks that the token's signing
    /// key is the one it lists.
    #[arg(
        long,
        env = "KMSCTL_ADMIN_PUB",
        global = true,
        value_name = "FILE",
        help_heading = "HSM credential"
    )]
    pub(crate) admin_pub: Option<PathBuf>,

    /// Output format: short lines for humans, or one JSON document on stdout.
    #[arg(long, value_enum, default_value_t = OutputFormat::Human, global = true)]
    pub(crate) output: OutputFormat,
}

/// How kmsctl names its connection and node-trust options.
#[derive(Debug)]
pub(crate) struct KmsctlFlags;

impl ConnectionFlags for KmsctlFlags {
    const URL: &'static str = "server";
    const URL_NOUN: &'static str = "server";
    const URL_ENV: &'static str = "KMSCTL_SERVER";
    const CA_ENV: &'static str = "KMSCTL_CA";
    const CERT_ENV: &'static str = "KMSCTL_CERT";
    const KEY_ENV: &'static str = "KMSCTL_CLIENT_KEY";
    const SERVER_NAME_ENV: &'static str = "KMSCTL_TLS_SERVER_NAME";
    const CERT_HELP: &'static str =
        "PEM client certificate for mutual TLS; the data plane derives the caller's principal from it";
    const GLOBAL: bool = true;
    const PLAINTEXT_WITH_TLS_FILES: PlaintextWithTlsFiles = PlaintextWithTlsFiles::Warn;
}

impl NodeTrustFlags for KmsctlFlags {
    const POLICY_ENV: &'static str = "KMSCTL_NODE_POLICY";
    const POLICY_HELP: &'static str = "The node policy (JSON) the kmsd you administer must meet: the hardware it may run on and conditions on its evidence. Every signed admin command needs it: `unseal` and `init` verify the answering node against it before anything leaves this machine, and every answer must be signed by a node verified against it (docs/attested-release.md, \"Node identity\")";
    const DANGER_HELP: &'static str = "Trust a kmsd that presents no hardware evidence (dev mode, tests): its answers must be signed by the node key it presents, but anyone who answers in its place is trusted";
    const DANGER_ENV: &'static str = "KMSCTL_DANGER_UNATTESTED_KMSD";
    const GLOBAL: bool = true;
}

#[derive(Subcommand, Debug)]
pub(crate) enum Command {
    /// Your own admin key: generate a key file.
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Show whether the server is initialized and sealed (unsigned).
    Status,
    /// Initialize an empty server: its first admins, the seal and the quorum.
    Init(InitArgs),
    /// Submit your root-key share (as a custodian) to a sealed server.
    Unseal(UnsealArgs),
    /// Seal the server: it drops the root key and every cached key-encryption key.
    Seal,
    /// Add and list admins.
    #[command(subcommand)]
    Admins(AdminsCommand),
    /// Create and manage keys.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Enrol, list, describe and revoke the machines whose evidence may obtain tokens.
    #[command(subcommand)]
    Hardware(HardwareCommand),
    /// Attestation tokens: the server's verification keys, offline verification.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Data-plane calls (unsigned; the caller is the TLS client certificate).
    #[command(subcommand)]
    Data(DataCommand),
    /// Proposals of quorum operations: list, show, approve, reject.
    #[command(subcommand)]
    Proposal(ProposalCommand),
    /// The approval quorum (always proposed).
    #[command(subcommand)]
    Quorum(QuorumCommand),
    /// The root key (always proposed).
    #[command(subcommand)]
    Root(RootCommand),
    /// Check the audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// The answering kmsd's node identity.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Verify attestation evidence offline, with the server's verifier code (no server needed).
    ///
    /// Prints the verified claims as JSON on stdout and exits 0; on refusal prints
    /// `refused: <check>: <detail>` on stderr and exits 1.
    #[command(subcommand)]
    Verify(VerifyCommand),
    /// Print a shell completion script.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum NodeCommand {
    /// Show the node identity of the kmsd that answers (its key, evidence, TLS key) and, with
    /// --node-policy, whether it meets the policy (exit 1 if not).
    Show,
}

#[derive(Subcommand, Debug)]
pub(crate) enum VerifyCommand {
    /// Verify an AMD SEV-SNP attestation report and its VCEK/VLEK against AMD's pinned roots.
    Snp(VerifySnpArgs),
    /// Verify a TPM 2.0 quote (as tpm2_quote writes it), optionally with the EK certificate.
    Tpm(VerifyTpmArgs),
}

#[derive(Args, Debug)]
pub(crate) struct VerifySnpArgs {
    /// The raw attestation report (1184 bytes).
    #[arg(long, value_name = "FILE")]
    pub(crate) report: PathBuf,
    /// The VCEK or VLEK certificate (DER or PEM).
    #[arg(long, value_name = "FILE")]
    pub(crate) vek: Option<PathBuf>,
    /// The ASK/ARK (or ASVK/ARK) PEM chain; it must be one of AMD's pinned chains. (Here --ca is
    /// taken from the command line only; KMSCTL_CA is ignored.)
    #[arg(long = "ca", id = "ca", value_name = "FILE")]
    pub(crate) chain: Option<PathBuf>,
    /// The expected REPORT_DATA (64 bytes, hex). Without it the report's own REPORT_DATA is
    /// taken, so the binding is not checked.
    #[arg(long, value_name = "HEX", value_parser = parse_hex)]
    pub(crate) report_data: Option<Hex>,
    /// The minimum reported TCB (for the report's product): bl=N,tee=N,snp=N,ucode=N[,fmc=N].
    #[arg(long, value_name = "TCB", value_parser = parse_tcb)]
    pub(crate) min_tcb: Option<attestation::snp::Tcb>,
    /// Accept reports signed by a VLEK (a cloud provider's key, not a chip's).
    #[arg(long)]
    pub(crate) accept_vlek: bool,
    /// Refuse guests whose policy allows SMT or that run with SMT enabled.
    #[arg(long)]
    pub(crate) no_smt: bool,
    /// The time at which certificates must be valid: RFC 3339 (2025-06-01T00:00:00Z) or Unix
    /// seconds. Default: now.
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub(crate) at: Option<i64>,
}

#[derive(Args, Debug)]
pub(crate) struct VerifyTpmArgs {
    /// The AK's public area, TPM2B_PUBLIC (`tpm2_createak -u`).
    #[arg(long, value_name = "FILE")]
    pub(crate) ak_public: PathBuf,
    /// The quote, TPMS_ATTEST (`tpm2_quote -m`).
    #[arg(long, value_name = "FILE")]
    pub(crate) quote: PathBuf,
    /// The quote's signature, TPMT_SIGNATURE (`tpm2_quote -s`).
    #[arg(long, value_name = "FILE")]
    pub(crate) signature: PathBuf,
    /// The PCR values (`tpm2_quote -o`).
    #[arg(long, value_name = "FILE")]
    pub(crate) pcrs: PathBuf,
    /// The expected qualifying data (extraData, hex). Without it the quote's own extraData is
    /// taken, so the binding is not checked.
    #[arg(long, value_name = "HEX", value_parser = parse_hex)]
    pub(crate) qualifying_data: Option<Hex>,
    /// The enrolled AK's name (hex); a quote signed by another AK is refused.
    #[arg(long, value_name = "HEX")]
    pub(crate) ak_name: Option<String>,
    /// The EK certificate (DER or PEM); validated against --ek-ca.
    #[arg(long, value_name = "FILE", requires = "ek_ca")]
    pub(crate) ek_cert: Option<PathBuf>,
    /// The trusted TPM-manufacturer CA certificates (PEM bundle).
    #[arg(long, value_name = "FILE", requires = "ek_cert")]
    pub(crate) ek_ca: Option<PathBuf>,
    /// Untrusted intermediate CA certificates (PEM) between the EK certificate and --ek-ca.
    #[arg(long, value_name = "FILE", requires = "ek_cert")]
    pub(crate) ek_intermediate: Option<PathBuf>,
    /// The time at which the EK certificates must be valid: RFC 3339 or Unix seconds. Default: now.
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub(crate) at: Option<i64>,
}

#[derive(Subcommand, Debug)]
pub(crate) enum AdminCommand {
    /// Generate an admin key file (secret, mode 0600) and its public half (FILE.pub.json), or
    /// with --hsm your keys inside a token.
    ///
    /// The public half is what `kmsctl init --admin` and `kmsctl admins add` take. The key file
    /// itself never leaves your machine; production admins keep their keys in an HSM instead:
    /// `--hsm` generates the signing key (LABEL-sign) and the share key (LABEL-share) inside the
    /// token given by --hsm-module/--hsm-token/--hsm-pin (non-extractable; LABEL is --hsm-key, by
    /// default the admin id) and writes only the public file, to --out. Later commands use the
    /// token with --admin-pub set to that file.
    Keygen {
        /// Generate the keys inside the HSM; --out is then the public file (e.g. me.pub.json).
        #[arg(long)]
        hsm: bool,
        /// Your admin id: 1 to 64 characters of A-Z a-z 0-9 . _ @ -.
        #[arg(long, value_parser = parse_admin_id)]
        id: AdminId,
        /// Your country, ISO 3166-1 alpha-2 (e.g. DE); the server accepts only allowed jurisdictions.
        #[arg(long, value_parser = parse_country)]
        country: Country,
        /// Where to write the key file (with --hsm: the public file); it must not exist.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Print an admin's fingerprint (sha256:…) from their public file: what the server's
    /// admin.init_admins pins, so that only these admins can initialize it.
    Fingerprint {
        /// The admin's public file (FILE.pub.json); repeatable.
        #[arg(value_name = "PUBFILE", required = true, num_args = 1..)]
        public_files: Vec<PathBuf>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum SealArg {
    /// The root key is split M-of-N among the custodians.
    Shamir,
    /// The root key sits in a file on the server (only with `kmsd --dev`).
    Dev,
}

#[derive(Args, Debug)]
pub(crate) struct InitArgs {
    /// The seal that holds the root key.
    #[arg(long, value_enum)]
    pub(crate) seal: SealArg,
    /// How many custodians' shares unseal the server (M of N; shamir seal only).
    #[arg(long, value_name = "M", required_if_eq("seal", "shamir"))]
    pub(crate) threshold: Option<u32>,
    /// The first admins' public files (FILE.pub.json from `kmsctl admin keygen`). Your own
    /// (--admin-key) must be among them.
    #[arg(long = "admin", value_name = "PUBFILE", required = true, num_args = 1..)]
    pub(crate) admins: Vec<PathBuf>,
    /// Admins (by id) who get no root-key share. Every other admin is a custodian.
    #[arg(long, value_name = "ADMIN_ID", num_args = 1.., value_parser = parse_admin_id)]
    pub(crate) non_custodian: Vec<AdminId>,
    /// M of the approval quorum: how many distinct admins must approve a quorum operation
    /// (enrolling hardware, release policies, deletions, admins, the quorum, root rotation).
    #[arg(long, value_name = "M")]
    pub(crate) quorum: u32,
}

#[derive(Args, Debug)]
pub(crate) struct UnsealArgs {
    /// The root key check value recorded at init (hex): if the server's differs, the share is not
    /// sent and kmsctl exits 1 (key_check_value_mismatch), also when the server is already
    /// unsealed.
    #[arg(long, value_name = "HEX")]
    pub(crate) expect_kcv: Option<String>,
    /// Send the share over plaintext HTTP to a host other than loopback. Anyone on the path can
    /// then swap the server's unseal key for their own and read your share.
    #[arg(long)]
    pub(crate) danger_plaintext_unseal: bool,
}

#[derive(Subcommand, Debug)]
pub(crate) enum AdminsCommand {
    /// Add an admin from their public file.
    Add {
        /// The admin's public file (FILE.pub.json from `kmsctl admin keygen`).
        #[arg(value_name = "PUBFILE")]
        public_file: PathBuf,
        /// The admin holds no root-key share (required): custodians change only when the root
        /// key is re-shared, with `kmsctl root rotate --custodian ...`.
        #[arg(long)]
        non_custodian: bool,
        #[command(flatten)]
        propose: ProposeArgs,
    },
    /// Remove an admin (a quorum operation: always proposed; with a quorum of 1 it runs at once).
    Remove {
        /// The admin's id.
        #[arg(value_name = "ADMIN_ID", value_parser = parse_admin_id)]
        admin_id: AdminId,
        /// Why, for the audit log.
        #[arg(long, value_name = "TEXT")]
        reason: String,
        /// How long the proposal stays open, in seconds (default and maximum: the server's).
        #[arg(long, value_name = "SECS")]
        ttl: Option<u32>,
    },
    /// List the admins.
    List,
}

#[derive(Subcommand, Debug)]
pub(crate) enum KeyCommand {
    /// Create a key.
    Create(CreateKeyArgs),
    /// Show a key's metadata, grants and release policy.
    Describe {
        /// The key: its id (k-...) or name.
        key: String,
    },
    /// List keys.
    List {
        /// Keys per page (1 to 1000; the server's default is 100).
        #[arg(long, value_name = "N")]
        page_size: Option<u32>,
        /// Continue a listing from a previous page's next-page token.
        #[arg(long, value_name = "TOKEN", conflicts_with = "all")]
        page_token: Option<String>,
        /// Follow next-page tokens until every key is listed.
        #[arg(long)]
        all: bool,
    },
    /// Add a new version to a key; new blobs use it, old blobs still decrypt.
    Rotate {
        /// The key: its id or name.
        key: String,
    },
    /// Enable a disabled key.
    Enable {
        /// The key: its id or name.
        key: String,
    },
    /// Disable a key: every data-plane call with it is refused until it is enabled again.
    Disable {
        /// The key: its id or name.
        key: String,
    },
    /// Schedule the irreversible destruction of a key's material.
    ScheduleDeletion {
        /// The key: its id or name.
        key: String,
        /// Days until the material is destroyed (7 to 30).
        #[arg(long, value_name = "N")]
        days: u32,
        #[command(flatten)]
        propose: ProposeArgs,
    },
    /// Cancel a scheduled deletion; the key becomes disabled.
    CancelDeletion {
        /// The key: its id or name.
        key: String,
    },
    /// Replace a key's release policy; it gets the next policy version.
    ///
    /// The new policy applies from the next release, on every replica. docs/release-policy.md
    /// describes the language; the server refuses an invalid document and names the bad part.
    SetReleasePolicy(SetReleasePolicyArgs),
}

#[derive(Args, Debug)]
pub(crate) struct SetReleasePolicyArgs {
    /// The key: its id or name.
    pub(crate) key: String,
    #[command(flatten)]
    pub(crate) policy: PolicyInput,
    #[command(flatten)]
    pub(crate) propose: ProposeArgs,
}

/// For commands that are quorum operations: propose instead of running at once.
#[derive(Args, Debug, Clone, Copy, Default)]
pub(crate) struct ProposeArgs {
    /// Propose the operation for the approval quorum instead of running it (needed when the
    /// quorum is above 1; other admins then run `kmsctl proposal approve ID`).
    #[arg(long)]
    pub(crate) propose: bool,
    /// How long the proposal stays open, in seconds (default and maximum: the server's).
    #[arg(long, value_name = "SECS", requires = "propose")]
    pub(crate) ttl: Option<u32>,
}

#[derive(Subcommand, Debug)]
pub(crate) enum ProposalCommand {
    /// List open proposals (--all: also executed, rejected, expired and failed ones).
    List {
        /// Also closed proposals.
        #[arg(long)]
        all: bool,
    },
    /// Show a proposal, with its operation decoded here from the exact bytes approvals sign.
    ///
    /// The SHA-256 of the operation is recomputed locally; a difference from the server's digest
    /// is reported (and the command exits 1).
    Show {
        /// The proposal id.
        id: String,
    },
    /// Approve a proposal: shows the operation decoded here and signs the SHA-256 computed here
    /// from its bytes (never the server's digest). Exits 1 if the operation then fails.
    Approve {
        /// The proposal id.
        id: String,
    },
    /// Reject a proposal.
    Reject {
        /// The proposal id.
        id: String,
        /// Why (kept in the proposal and the audit log).
        #[arg(long, value_name = "TEXT")]
        reason: String,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum QuorumCommand {
    /// Propose a new M: how many distinct admins must approve a quorum operation.
    Set {
        /// The new M.
        #[arg(value_name = "M")]
        approval_quorum: u32,
        /// How long the proposal stays open, in seconds (default and maximum: the server's).
        #[arg(long, value_name = "SECS")]
        ttl: Option<u32>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum RotateSealArg {
    /// Split M-of-N among custodians.
    Shamir,
    /// A non-extractable key in the server's HSM.
    Pkcs11,
}

#[derive(Subcommand, Debug)]
pub(crate) enum RootCommand {
    /// Propose a new root key generation (and possibly a seal migration); every key-encryption
    /// key is re-wrapped under it in the background.
    Rotate {
        /// The seal of the new generation.
        #[arg(long, value_enum)]
        seal: RotateSealArg,
        /// shamir: how many shares unseal the new generation.
        #[arg(long, value_name = "T", required_if_eq("seal", "shamir"))]
        threshold: Option<u32>,
        /// shamir: an admin who receives a share of the new generation (repeatable; default: the
        /// current custodians).
        #[arg(long = "custodian", value_name = "ADMIN_ID", value_parser = parse_admin_id)]
        custodians: Vec<AdminId>,
        /// How long the proposal stays open, in seconds (default and maximum: the server's).
        #[arg(long, value_name = "SECS")]
        ttl: Option<u32>,
    },
}

/// Where a release policy document comes from.
#[derive(Args, Debug)]
#[group(required = true, multiple = false)]
pub(crate) struct PolicyInput {
    /// The release policy document (JSON).
    #[arg(long, value_name = "JSON")]
    pub(crate) policy: Option<String>,
    /// A file holding the release policy document; `-` reads standard input.
    #[arg(long, value_name = "FILE")]
    pub(crate) file: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub(crate) enum HardwareCommand {
    /// Enrol a machine: SEV-SNP by a report, TPM by its credential-activation answer.
    ///
    /// An SEV-SNP host is enrolled by its chip id, from an attestation report of one of its guests
    /// verified against AMD's roots. A TPM machine is enrolled by the answer to the server's
    /// credential challenge (the request file the workload agent writes). The server verifies the
    /// evidence and refuses machines outside its allowed jurisdictions.
    Enroll(EnrollArgs),
    /// List the enrolled machines (active and revoked).
    List {
        /// Machines per page (1 to 1000; the server's default is 100).
        #[arg(long, value_name = "N")]
        page_size: Option<u32>,
        /// Continue a listing from a previous page's next-page token.
        #[arg(long, value_name = "TOKEN", conflicts_with = "all")]
        page_token: Option<String>,
        /// Follow next-page tokens until every machine is listed.
        #[arg(long)]
        all: bool,
    },
    /// Show a machine's registry entry.
    Describe {
        /// The machine: hw- followed by 32 hex digits.
        #[arg(value_name = "HW_ID")]
        hardware_id: String,
    },
    /// Revoke a machine at once: its tokens stop working.
    ///
    /// Releases under tokens already issued for the machine are refused from now on, and its
    /// evidence obtains no new token. Irreversible; to trust the machine again, enrol it anew.
    Revoke {
        /// The machine: hw- followed by 32 hex digits.
        #[arg(value_name = "HW_ID")]
        hardware_id: String,
        /// Why, for the audit log (1 to 1024 characters).
        #[arg(long, value_name = "TEXT")]
        reason: String,
    },
}

#[derive(Args, Debug)]
pub(crate) struct EnrollArgs {
    /// ISO 3166-1 alpha-2 country where the machine runs (e.g. DE); the server accepts only its
    /// allowed jurisdictions.
    #[arg(long, value_parser = parse_country)]
    pub(crate) country: Country,
    /// The site (data centre), 1 to 128 characters.
    #[arg(long, value_name = "SITE")]
    pub(crate) site: String,
    /// The legal entity operating the machine, 1 to 256 characters.
    #[arg(long, value_name = "NAME")]
    pub(crate) operator: String,
    /// Free text, at most 1024 characters.
    #[arg(long, value_name = "TEXT", default_value = "")]
    pub(crate) description: String,
    #[command(flatten)]
    pub(crate) identity: EnrollIdentity,
    #[command(flatten)]
    pub(crate) propose: ProposeArgs,
    /// The VCEK or VLEK certificate (DER or PEM) that signed --snp-report.
    #[arg(long, value_name = "FILE", conflicts_with = "tpm_request")]
    pub(crate) vek: Option<PathBuf>,
    /// Accept VLEK-signed reports from this machine (a cloud provider's key, not a chip's); the
    /// server must allow VLEKs too.
    #[arg(long, conflicts_with = "tpm_request")]
    pub(crate) accept_vlek: bool,
}

/// How the machine proves its identity.
#[derive(Args, Debug)]
#[group(required = true, multiple = false)]
pub(crate) struct EnrollIdentity {
    /// SEV-SNP: a raw attestation report (1184 bytes) from a guest on the machine; its chip id is
    /// enrolled. Any REPORT_DATA.
    #[arg(long, value_name = "FILE")]
    pub(crate) snp_report: Option<PathBuf>,
    /// TPM: the enrolment request file the workload agent writes after answering the server's
    /// credential challenge (JSON: enrollment_id, activated_secret, ak_name, ek_digest).
    #[arg(long, value_name = "FILE")]
    pub(crate) tpm_request: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub(crate) enum TokenCommand {
    /// Print the keys that verify attestation tokens, as a JSON Web Key Set (unsigned call).
    ///
    /// The output is the JWKS itself, for `kmsctl token verify --jwks FILE`.
    Keys,
    /// Verify an attestation token (a JWT from Attest) and print its claims as JSON.
    ///
    /// Exits 0 with the claims on stdout, or 1 with the reason on stderr when the token is
    /// refused (bad signature, expired, unknown key, malformed).
    Verify(TokenVerifyArgs),
}

#[derive(Args, Debug)]
pub(crate) struct TokenVerifyArgs {
    /// A file holding the token; `-` reads standard input.
    #[arg(long, value_name = "FILE")]
    pub(crate) token: PathBuf,
    /// The JWKS (as `kmsctl token keys` prints it), for a check without the server. Without
    /// it the keys are fetched from --server.
    #[arg(long, value_name = "FILE")]
    pub(crate) jwks: Option<PathBuf>,
    /// The time at which the token must be valid: Unix seconds or RFC 3339. Default: now.
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub(crate) at: Option<i64>,
}

#[derive(Args, Debug)]
pub(crate) struct CreateKeyArgs {
    /// Unique name: 1 to 128 characters of A-Z a-z 0-9 / _ . -
    pub(crate) name: String,
    /// Free text, at most 1024 characters.
    #[arg(long, value_name = "TEXT", default_value = "")]
    pub(crate) description: String,
    /// A tag (repeatable).
    #[arg(long = "tag", value_name = "K=V", value_parser = parse_pair)]
    pub(crate) tags: Vec<Pair>,
    /// Allow a principal data-plane operations (repeatable). OP is one of generate-data-key,
    /// generate-data-key-without-plaintext, encrypt, decrypt, re-encrypt, all. Principals are as
    /// the server derives them from client certificates: spiffe://..., dns:NAME, cn:NAME, or *.
    #[arg(long = "grant", value_name = "PRINCIPAL=OP[,OP...]", value_parser = parse_grant)]
    pub(crate) grants: Vec<GrantArg>,
    /// The release policy (JSON). Without one the server requires attestation.
    #[arg(long, value_name = "JSON", conflicts_with = "release_policy_file")]
    pub(crate) release_policy: Option<String>,
    /// The release policy, from a file.
    #[arg(long, value_name = "FILE")]
    pub(crate) release_policy_file: Option<PathBuf>,
}

/// Where a blob comes from.
#[derive(Args, Debug)]
#[group(required = true, multiple = false)]
pub(crate) struct BlobInput {
    /// The ciphertext blob, base64.
    #[arg(long, value_name = "B64")]
    pub(crate) blob: Option<String>,
    /// A file holding the blob, raw (as --out writes it) or base64.
    #[arg(long = "in", value_name = "FILE")]
    pub(crate) input: Option<PathBuf>,
}

/// What to encrypt.
#[derive(Args, Debug)]
#[group(required = true, multiple = false)]
pub(crate) struct PlaintextInput {
    /// The text to encrypt (UTF-8).
    #[arg(long, value_name = "STRING")]
    pub(crate) text: Option<String>,
    /// A file to encrypt (at most 4096 bytes).
    #[arg(long = "in", value_name = "FILE")]
    pub(crate) input: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub(crate) enum DataCommand {
    /// Generate a data key; prints only its ciphertext blob (base64, as `decrypt --in` reads it)
    /// or writes it raw with --out.
    Generate {
        /// The key: its id or name.
        key: String,
        /// Encryption context pair (repeatable); the same pairs are needed to decrypt.
        #[arg(long = "context", value_name = "K=V", value_parser = parse_pair)]
        context: Vec<Pair>,
        /// Also return the data key in plaintext (base64): prints the blob, the key and the
        /// plaintext on labelled lines. Only keys whose release policy allows release without
        /// attestation answer this.
        #[arg(long, conflicts_with = "out")]
        with_plaintext: bool,
        /// Write the raw blob to FILE instead of printing it; `-` writes it to stdout.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Encrypt up to 4096 bytes; prints the blob (base64) or writes it raw with --out.
    Encrypt {
        /// The key: its id or name.
        key: String,
        /// Encryption context pair (repeatable).
        #[arg(long = "context", value_name = "K=V", value_parser = parse_pair)]
        context: Vec<Pair>,
        #[command(flatten)]
        input: PlaintextInput,
        /// Write the raw blob to FILE instead of printing it; `-` writes it to stdout.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Decrypt a blob; prints the plaintext (as text if it is printable UTF-8, else base64), or
    /// writes it raw with --out.
    Decrypt {
        #[command(flatten)]
        input: BlobInput,
        /// Encryption context pair (repeatable), exactly as given at encryption.
        #[arg(long = "context", value_name = "K=V", value_parser = parse_pair)]
        context: Vec<Pair>,
        /// Refuse the blob unless it is under this key (id or name).
        #[arg(long, value_name = "KEY")]
        expect_key: Option<String>,
        /// Write the raw plaintext to FILE (mode 0600) instead of printing it; `-` writes it to
        /// stdout.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Re-encrypt a blob inside the server, under another key or the newest version of its own.
    ReEncrypt {
        #[command(flatten)]
        input: BlobInput,
        /// The blob's encryption context pair (repeatable).
        #[arg(long = "context", value_name = "K=V", value_parser = parse_pair)]
        context: Vec<Pair>,
        /// The destination key (id or name); default: the blob's own key.
        #[arg(long, value_name = "KEY")]
        to: Option<String>,
        /// Encryption context pair for the new blob (repeatable).
        #[arg(long = "to-context", value_name = "K=V", value_parser = parse_pair)]
        to_context: Vec<Pair>,
        /// Write the raw new blob to FILE instead of printing it; `-` writes it to stdout.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum AuditCommand {
    /// Verify the audit hash chain offline, straight from the database, and name the first
    /// broken entry.
    Verify {
        /// The server's database: postgres://... or sqlite://PATH.
        #[arg(long, env = "KMSCTL_AUDIT_DATABASE", value_name = "URL")]
        database: String,
        /// Rows read per query.
        #[arg(long, default_value_t = 10_000, value_name = "N",
              value_parser = clap::value_parser!(i64).range(1..=1_000_000))]
        batch: i64,
        /// A pinned audit checkpoint key (the JSON `kmsctl audit checkpoint-keys` writes);
        /// repeatable. Without one, the keys in the database are used, with a warning: an
        /// attacker who can write the database can add their own.
        #[arg(long, value_name = "FILE")]
        checkpoint_key: Vec<PathBuf>,
        /// The auditor's state file: the last checkpoint a verification ended at. If it exists,
        /// the database's checkpoints must still hold it and extend it (a database rolled back
        /// behind it fails); after a verification that passes, it is replaced by the newest
        /// verified checkpoint. Keep it where the database's operator cannot write.
        #[arg(long, value_name = "FILE")]
        state: Option<PathBuf>,
        /// The server's audit.checkpoint_interval_secs: a newest checkpoint older than this is
        /// warned about (the server stopped signing, or newer checkpoints were removed).
        #[arg(long, default_value_t = 60, value_name = "SECS")]
        checkpoint_interval: u64,
    },
    /// Fetch the server's audit checkpoint public keys (JSON on stdout), to pin for `verify`:
    /// written only if the kmsd verified against --node-policy (or --danger-unattested-kmsd)
    /// signed them.
    CheckpointKeys,
    /// Print the last entries of the audit log, straight from the database.
    Tail {
        /// The server's database: postgres://... or sqlite://PATH.
        #[arg(long, env = "KMSCTL_AUDIT_DATABASE", value_name = "URL")]
        database: String,
        /// How many entries.
        #[arg(long, short = 'n', default_value_t = 20, value_name = "N",
              value_parser = clap::value_parser!(i64).range(1..=1_000_000))]
        count: i64,
    },
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn definitions_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn init_takes_several_admins() {
        let cli = Cli::try_parse_from([
            "kmsctl",
            "init",
            "--seal",
            "shamir",
            "--threshold",
            "2",
            "--admin",
            "a.pub.json",
            "b.pub.json",
            "--admin",
            "c.pub.json",
            "--non-custodian",
            "c",
            "--quorum",
            "2",
        ])
        .unwrap();
        let Command::Init(init) = cli.command else {
            panic!("not init")
        };
        assert_eq!(init.admins.len(), 3);
        assert_eq!(init.non_custodian[0].as_str(), "c");
        assert!(
            Cli::try_parse_from(["kmsctl", "init", "--seal", "shamir", "--admin", "a", "--quorum", "1"]).is_err(),
            "shamir needs --threshold"
        );
        assert!(Cli::try_parse_from(["kmsctl", "init", "--seal", "dev", "--admin", "a", "--quorum", "1"]).is_ok());
        assert_eq!(init.quorum, 2);
    }

    #[test]
    fn quorum_operations_can_be_proposed() {
        let cli = Cli::try_parse_from(["kmsctl", "admins", "add", "d.pub.json", "--propose", "--ttl", "60"]).unwrap();
        let Command::Admins(AdminsCommand::Add { propose, .. }) = cli.command else {
            panic!("not admins add")
        };
        assert!(propose.propose && propose.ttl == Some(60));
        assert!(Cli::try_parse_from(["kmsctl", "admins", "add", "d.pub.json", "--ttl", "60"]).is_err());
        assert!(Cli::try_parse_from(["kmsctl", "key", "schedule-deletion", "k", "--days", "7", "--propose"]).is_ok());
        assert!(Cli::try_parse_from([
            "kmsctl",
            "key",
            "set-release-policy",
            "k",
            "--policy",
            "{}",
            "--propose"
        ])
        .is_ok());
        assert!(
            Cli::try_parse_from(["kmsctl", "admins", "remove", "bob"]).is_err(),
            "--reason is required"
        );
        assert!(Cli::try_parse_from(["kmsctl", "quorum", "set", "2"]).is_ok());
        assert!(Cli::try_parse_from(["kmsctl", "root", "rotate", "--seal", "shamir"]).is_err());
        let cli = Cli::try_parse_from([
            "kmsctl",
            "root",
            "rotate",
            "--seal",
            "shamir",
            "--threshold",
            "2",
            "--custodian",
            "a",
            "--custodian",
            "b",
        ])
        .unwrap();
        let Command::Root(RootCommand::Rotate { custodians, .. }) = cli.command else {
            panic!("not root rotate")
        };
        assert_eq!(custodians.len(), 2);
        assert!(Cli::try_parse_from(["kmsctl", "proposal", "reject", "p-1"]).is_err());
    }

    #[test]
    fn pins_come_from_a_source_never_argv() {
        let cli = Cli::try_parse_from(["kmsctl", "status", "--hsm-module", "m.so", "--hsm-token", "label:t"]).unwrap();
        assert_eq!(cli.global.hsm_pin, "prompt");
        assert!(Cli::try_parse_from([
            "kmsctl",
            "admin",
            "keygen",
            "--hsm",
            "--id",
            "a",
            "--country",
            "DE",
            "--out",
            "a.pub.json"
        ])
        .is_ok());
    }

    #[test]
    fn inputs_are_exclusive() {
        assert!(Cli::try_parse_from(["kmsctl", "data", "decrypt"]).is_err());
        assert!(Cli::try_parse_from(["kmsctl", "data", "decrypt", "--blob", "x", "--in", "f"]).is_err());
        assert!(Cli::try_parse_from(["kmsctl", "data", "encrypt", "k", "--text", "hi"]).is_ok());
        assert!(Cli::try_parse_from([
            "kmsctl",
            "key",
            "create",
            "n",
            "--release-policy",
            "{}",
            "--release-policy-file",
            "f"
        ])
        .is_err());
        assert!(Cli::try_parse_from(["kmsctl", "data", "generate", "k", "--context", "novalue"]).is_err());
        assert!(Cli::try_parse_from(["kmsctl", "data", "generate", "k", "--out", "b.blob"]).is_ok());
        assert!(
            Cli::try_parse_from(["kmsctl", "data", "generate", "k", "--with-plaintext", "--out", "b"]).is_err(),
            "--out writes the blob alone"
        );
    }

    #[test]
    fn enrolment_takes_one_identity() {
        let base = [
            "kmsctl",
            "hardware",
            "enroll",
            "--country",
            "DE",
            "--site",
            "FRA-2",
            "--operator",
            "Ex",
        ];
        let parse = |extra: &[&str]| Cli::try_parse_from(base.iter().chain(extra));
        let cli = parse(&["--snp-report", "r.bin", "--vek", "v.der", "--accept-vlek"]).unwrap();
        let Command::Hardware(HardwareCommand::Enroll(e)) = cli.command else {
            panic!("not enroll")
        };
        assert!(e.accept_vlek && e.vek.is_some() && e.identity.tpm_request.is_none());
        assert!(parse(&["--tpm-request", "req.json"]).is_ok());
        assert!(parse(&[]).is_err(), "an identity is required");
        assert!(parse(&["--snp-report", "r.bin", "--tpm-request", "req.json"]).is_err());
        assert!(parse(&["--tpm-request", "req.json", "--vek", "v.der"]).is_err());
        assert!(parse(&["--tpm-request", "req.json", "--accept-vlek"]).is_err());
        let lower = Cli::try_parse_from([
            "kmsctl",
            "hardware",
            "enroll",
            "--country",
            "de",
            "--site",
            "s",
            "--operator",
            "o",
            "--tpm-request",
            "r",
        ]);
        assert!(lower.is_err(), "countries are ISO 3166-1 alpha-2 in capitals");
        assert!(
            Cli::try_parse_from(["kmsctl", "hardware", "revoke", "hw-1"]).is_err(),
            "--reason is required"
        );
        assert!(Cli::try_parse_from(["kmsctl", "hardware", "list", "--all", "--page-token", "t"]).is_err());
    }

    #[test]
    fn release_policies_and_tokens_take_one_source() {
        let set =
            |extra: &[&str]| Cli::try_parse_from(["kmsctl", "key", "set-release-policy", "orders"].iter().chain(extra));
        assert!(set(&["--policy", "{}"]).is_ok());
        assert!(set(&["--file", "-"]).is_ok());
        assert!(set(&[]).is_err());
        assert!(set(&["--policy", "{}", "--file", "p.json"]).is_err());
        let cli = Cli::try_parse_from([
            "kmsctl",
            "token",
            "verify",
            "--token",
            "-",
            "--at",
            "2026-01-01T00:00:00Z",
        ])
        .unwrap();
        let Command::Token(TokenCommand::Verify(v)) = cli.command else {
            panic!("not token verify")
        };
        assert_eq!(v.at, Some(1_767_225_600));
        assert!(Cli::try_parse_from(["kmsctl", "token", "verify"]).is_err());
    }

    #[test]
    fn global_options_go_anywhere() {
        let cli = Cli::try_parse_from([
            "kmsctl",
            "key",
            "list",
            "--output",
            "json",
            "--server",
            "https://kms.example:7300",
            "--cert",
            "c.pem",
            "--key",
            "c.key",
        ])
        .unwrap();
        assert_eq!(cli.global.output, OutputFormat::Json);
        assert_eq!(cli.global.connection.url, "https://kms.example:7300");
        assert!(cli.global.connection.client_key.is_some());
        assert!(Cli::try_parse_from(["kmsctl", "status", "--cert", "c.pem"]).is_err());
    }
}
