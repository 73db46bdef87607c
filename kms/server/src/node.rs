//! This process's node identity (`kms_node`): the node key made at start, the statement that
//! names it with the unseal key, the TLS server key and the HPKE key `Encrypt` plaintexts are
//! sealed to, and the hardware evidence that binds the statement where the host has any (SEV-SNP through `/dev/sev-guest`, or the host's TPM with an
//! AK kept in a file). Every Attest answer and every sealed release is signed with the node key;
//! `GetNodeIdentity` answers with the statement, the evidence and the seal status signed over the
//! caller's nonce (docs/attested-release.md, "Node identity").
//!
//! Must never let the node key or the HPKE key leave the process, nor sign anything but
//! `kms_node::message`'s encodings.

use std::path::PathBuf;
use std::sync::Arc;

use attestation::snp::SnpEvidence;
use attestation::tpm::TpmEvidence;
use kms_core::context::EncryptionContext;
use kms_core::hpke_seal::{NodeInputKey, Sealed};
use kms_core::secret::SecretBytes;
use kms_node::{message, NodeKey, NodeStatement};

/// Where the node's evidence comes from (`[node]` in the configuration).
#[derive(Clone, Default)]
pub enum NodeEvidence {
    /// The host's TPM if `[node.tpm]` is configured, else SEV-SNP if `/dev/sev-guest` exists,
    /// else none (and the identity says so).
    #[default]
    Auto,
    /// None: clients must accept the node knowingly (`--danger-unattested-kmsd`).
    None,
    /// SEV-SNP through `/dev/sev-guest`; the process does not start without it.
    Snp,
    /// The host's TPM; the process does not start without it.
    Tpm(TpmNode),
    /// Tests only, never read from a file: evidence made by a function of the statement (a
    /// synthetic SNP chain).
    DangerTest(Arc<MakeEvidence>),
}

/// Makes evidence for a statement ([`NodeEvidence::DangerTest`]).
pub type MakeEvidence = dyn Fn(&NodeStatement) -> Result<Evidence, String> + Send + Sync;

/// The hardware evidence that binds the node statement.
#[derive(Clone, Debug)]
pub enum Evidence {
    /// An SEV-SNP report whose report data is the statement's digest.
    Snp(SnpEvidence),
    /// A quote by the host TPM's AK over the statement, with the TPM's EK certificate (empty when
    /// the TPM holds none).
    Tpm {
        /// The quote.
        quote: TpmEvidence,
        /// The EK certificate (DER).
        ek_certificate: Vec<u8>,
    },
}

impl std::fmt::Debug for NodeEvidence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Auto => f.write_str("Auto"),
            Self::None => f.write_str("None"),
            Self::Snp => f.write_str("Snp"),
            Self::Tpm(t) => f.debug_tuple("Tpm").field(t).finish(),
            Self::DangerTest(_) => f.write_str("DangerTest"),
        }
    }
}

/// The host TPM that attests this node (`[node.tpm]`).
#[derive(Clone, Debug)]
pub struct TpmNode {
    /// TCTI, e.g. `device:/dev/tpmrm0`.
    pub tcti: String,
    /// Where the node's AK is kept (created under the EK on first start, mode 0600). Custodians
    /// pin its name.
    pub ak_file: PathBuf,
    /// The SHA-256 PCRs to quote.
    pub pcrs: Vec<u8>,
}

/// The node identity of this process.
pub struct Node {
    key: NodeKey,
    /// What callers seal `Encrypt` plaintexts to.
    input_key: NodeInputKey,
    statement: NodeStatement,
    evidence: Option<Evidence>,
    no_evidence_reason: String,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.key.id())
            .finish_non_exhaustive()
    }
}

impl Node {
    /// Makes the node key and HPKE key, the statement of them with `unseal_public_key` and
    /// `tls_spki_sha256`, and the evidence `source` gives for it.
    pub async fn start(
        source: NodeEvidence,
        unseal_public_key: Vec<u8>,
        tls_spki_sha256: [u8; 32],
    ) -> Result<Self, String> {
        let key = NodeKey::generate().map_err(|e| e.to_string())?;
        let input_key = NodeInputKey::generate();
        let mut hpke_public_key = [0u8; 32];
        hpke_public_key.copy_from_slice(&input_key.public_key());
        let statement = NodeStatement {
            node_public_key: key.public_key(),
            unseal_public_key,
            tls_spki_sha256,
            hpke_public_key,
        };
        let s = statement.clone();
        let (evidence, no_evidence_reason) = tokio::task::spawn_blocking(move || evidence_for(source, &s))
            .await
            .map_err(|e| format!("the evidence task failed: {e}"))??;
        match &evidence {
            Some(Evidence::Snp(_)) => {
                tracing::info!(node = %key.id(), "node identity bound by an SEV-SNP report");
            }
            Some(Evidence::Tpm { .. }) => {
                tracing::info!(node = %key.id(), "node identity bound by a TPM quote");
            }
            None => tracing::warn!(
                node = %key.id(),
                reason = %no_evidence_reason,
                "node identity without hardware evidence: custodians and workloads cannot verify this kmsd (only --danger-unattested-kmsd accepts it)"
            ),
        }
        Ok(Self {
            key,
            input_key,
            statement,
            evidence,
            no_evidence_reason,
        })
    }

    /// The node public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.key.public_key()
    }

    /// `node-…`.
    pub fn id(&self) -> String {
        self.key.id()
    }

    /// The node key (it signs only `kms_node::message`'s encodings: `wire::attestation` builds
    /// the identity answer with it).
    pub(crate) fn key(&self) -> &NodeKey {
        &self.key
    }

    /// The statement the evidence binds.
    pub fn statement(&self) -> &NodeStatement {
        &self.statement
    }

    /// The evidence, or `None` (see [`Self::no_evidence_reason`]).
    pub fn evidence(&self) -> Option<&Evidence> {
        self.evidence.as_ref()
    }

    /// Why there is no evidence (empty when there is).
    pub fn no_evidence_reason(&self) -> &str {
        &self.no_evidence_reason
    }

    /// Opens an `Encrypt` plaintext sealed to `recipient` (the HPKE public key the caller names)
    /// for a request naming `key` with `context`.
    pub fn open_encrypt_input(
        &self,
        recipient: &[u8],
        sealed: &Sealed,
        key: &str,
        context: &EncryptionContext,
    ) -> Result<SecretBytes, InputRefused> {
        if recipient != self.statement.hpke_public_key {
            return Err(InputRefused::OtherNode);
        }
        self.input_key
            .open_encrypt_input(sealed, key, context)
            .map_err(|_| InputRefused::DoesNotOpen)
    }

    /// Signs a sealed release (`info` and `blob` as sealed).
    pub fn sign_release(&self, info: &[u8], blob: &[u8], encapsulated_key: &[u8], ciphertext: &[u8]) -> Vec<u8> {
        self.key
            .sign(&message::release(info, blob, encapsulated_key, ciphertext))
            .to_vec()
    }

    /// Signs the published audit checkpoint keys, given as their
    /// [`message::checkpoint_keys`] encoding (which the gRPC layer builds from the wire list, so
    /// the signature covers exactly the bytes the auditor re-encodes).
    pub fn sign_checkpoint_keys(&self, encoded: &[u8]) -> Vec<u8> {
        debug_assert!(encoded.starts_with(b"kms-checkpoint-keys-v1\0"));
        self.key.sign(encoded).to_vec()
    }

    /// Signs the token keys answered to a request with `nonce`.
    pub fn sign_token_keys(&self, nonce: &[u8], jwks_json: &str) -> Vec<u8> {
        self.key.sign(&message::token_keys(nonce, jwks_json)).to_vec()
    }

    /// Signs an answer, given as its [`message::admin_answer`] or [`message::data_answer`]
    /// encoding (built in the gRPC layer from the answer's bytes).
    pub fn sign_answer(&self, encoded: &[u8]) -> Vec<u8> {
        debug_assert!(encoded.starts_with(b"kms-admin-answer-v1\0") || encoded.starts_with(b"kms-data-answer-v1\0"));
        self.key.sign(encoded).to_vec()
    }

    /// Signs an Attest answer to a request with `nonce` and `hpke_public_key`.
    pub fn sign_attest(&self, answer: &message::AttestAnswer<'_>) -> Vec<u8> {
        self.key.sign(&answer.encode()).to_vec()
    }
}

/// Why a sealed `Encrypt` plaintext is refused ([`Node::open_encrypt_input`]).
#[derive(Debug, PartialEq, Eq)]
pub enum InputRefused {
    /// Sealed to another node's HPKE key (another replica, or this one before a restart).
    OtherNode,
    /// Sealed to this node, and it does not open for this request (another key or context, or
    /// altered).
    DoesNotOpen,
}

/// The evidence for `statement` from `source`, or why there is none. Blocking (device I/O).
fn evidence_for(source: NodeEvidence, statement: &NodeStatement) -> Result<(Option<Evidence>, String), String> {
    use attestation::attester::snp::{SnpAttester, SEV_GUEST_DEVICE};
    let snp = |statement: &NodeStatement| -> Result<Evidence, String> {
        SnpAttester::open()
            .and_then(|a| a.report(statement.snp_report_data(), None))
            .map(Evidence::Snp)
            .map_err(|e| format!("SEV-SNP: {e}"))
    };
    match source {
        NodeEvidence::None => Ok((None, "node.evidence = \"none\" in the configuration".into())),
        NodeEvidence::Snp => snp(statement).map(|e| (Some(e), String::new())),
        NodeEvidence::Tpm(t) => tpm_evidence(&t, statement).map(|e| (Some(e), String::new())),
        NodeEvidence::DangerTest(make) => make(statement).map(|e| (Some(e), String::new())),
        NodeEvidence::Auto => {
            if std::path::Path::new(SEV_GUEST_DEVICE).exists() {
                snp(statement).map(|e| (Some(e), String::new()))
            } else {
                Ok((
                    None,
                    format!("this host has no {SEV_GUEST_DEVICE} and no [node.tpm] is configured"),
                ))
            }
        }
    }
}

/// A quote by the node's AK (loaded from its file, or created under the EK and saved there)
/// over the statement, with the TPM's EK certificate.
fn tpm_evidence(t: &TpmNode, statement: &NodeStatement) -> Result<Evidence, String> {
    use attestation::attester::tpm::{AkKey, AkScheme, EkKind, Tpm};
    let mut tpm = Tpm::open(&t.tcti).map_err(|e| format!("node TPM: {e}"))?;
    let ak = match std::fs::read_to_string(&t.ak_file) {
        Ok(text) => AkKey::from_file(&text).map_err(|e| format!("{}: {e}", t.ak_file.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let ak = tpm
                .create_ak(AkScheme::EcdsaP256)
                .map_err(|e| format!("node TPM: creating the AK: {e}"))?;
            write_private(&t.ak_file, &ak.to_file().map_err(|e| e.to_string())?)?;
            ak
        }
        Err(e) => return Err(format!("{}: {e}", t.ak_file.display())),
    };
    let name = ak.parsed_public().map_err(|e| e.to_string())?.name().to_string();
    tracing::info!(ak_name = %name, ak_file = %t.ak_file.display(), "node TPM AK: custodians and workloads pin this name (tpm.ak_names in their node policy)");
    let ev = tpm
        .quote(&ak, &statement.tpm_qualifying_data(), &t.pcrs)
        .map_err(|e| format!("node TPM: quote: {e}"))?;
    let ek_certificate = tpm
        .ek_certificate(EkKind::Rsa2048)
        .or_else(|_| tpm.ek_certificate(EkKind::EccP384))
        .unwrap_or_default();
    Ok(Evidence::Tpm {
        quote: ev,
        ek_certificate,
    })
}

/// Writes `text` to a new file readable by this user only.
fn write_private(path: &std::path::Path, text: &str) -> Result<(), String> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    f.write_all(text.as_bytes())
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// SHA-256 of the SubjectPublicKeyInfo of the first certificate of a PEM chain.
pub fn tls_spki_sha256(cert_pem: &[u8]) -> Result<[u8; 32], String> {
    let block = x509_parser::pem::Pem::iter_from_buffer(cert_pem)
        .next()
        .ok_or("no certificate in the TLS certificate file")?
        .map_err(|e| format!("the TLS certificate file: {e}"))?;
    let (_, cert) =
        x509_parser::parse_x509_certificate(&block.contents).map_err(|e| format!("the TLS certificate: {e}"))?;
    Ok(kms_node::spki_sha256(cert.public_key().raw))
}
