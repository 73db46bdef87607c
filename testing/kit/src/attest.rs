//! Attested release in tests: a synthetic SEV-SNP lab (a test chain the server trusts through
//! `danger.snp_test_roots`, signing reports as a guest would get them) and a workload that runs
//! the protocol over gRPC and opens what the server seals to it.

use kms_core::hpke_seal::{self, PrivateKey, Sealed, X25519};
use kms_core::keyfile::AdminKeyFile;
use kms_core::secret::SecretBytes;
use kms_proto::v1 as pb;
use kms_proto::v1::admin_request::Operation as Op;
use kms_proto::v1::admin_service_client::AdminServiceClient;
use kms_proto::v1::attestation_service_client::AttestationServiceClient;
use kms_proto::v1::key_service_client::KeyServiceClient;
use kms_server::config::SnpTestRoot;
use tonic::transport::Channel;

pub use attestation::snp::danger::test_chain::{KeySet, TestChain, TestChainOptions, TestReport};
pub use attestation::snp::{Product, Signer, Tcb};

use crate::{signed, Pki, Reachable};

/// A synthetic SNP platform: a test chain (ARK → ASK → VCEK, or ASVK → VLEK) whose root files
/// the server is configured with.
pub struct SnpLab {
    pub chain: TestChain,
    dir: tempfile::TempDir,
}

impl SnpLab {
    /// A Milan VCEK platform with the default chip id.
    pub fn new() -> Self {
        Self::with(TestChainOptions::new(Product::Milan, Signer::Vcek))
    }

    pub fn with(options: TestChainOptions) -> Self {
        Self {
            chain: TestChain::new(options).unwrap(),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// `danger.snp_test_roots` entries for this lab's root.
    pub fn roots(&self) -> Vec<SnpTestRoot> {
        let o = self.chain.options();
        let tag = format!("{}-{:?}-{:?}", o.product.as_str(), o.signer, o.keys).to_lowercase();
        let ark = self.dir.path().join(format!("{tag}-ark.der"));
        let ask = self.dir.path().join(format!("{tag}-ask.der"));
        std::fs::write(&ark, self.chain.ark_der()).unwrap();
        std::fs::write(&ask, self.chain.ask_der()).unwrap();
        vec![SnpTestRoot {
            product: o.product.as_str().to_lowercase(),
            signer: match o.signer {
                Signer::Vcek => "vcek".into(),
                Signer::Vlek => "vlek".into(),
            },
            ark,
            ask,
        }]
    }

    /// The chip id (hex) of default reports.
    pub fn chip_id_hex(&self) -> String {
        hex::encode(self.chain.options().chip_id)
    }

    /// A default report, to modify.
    pub fn report(&self) -> TestReport {
        self.chain.report()
    }

    /// `report` signed, with the VCEK/VLEK, as the verifier takes it.
    pub fn snp_evidence(&self, report: &TestReport) -> attestation::snp::SnpEvidence {
        attestation::snp::SnpEvidence {
            report: self.chain.sign(report).unwrap(),
            vek: Some(self.chain.vek_der().to_vec()),
            chain: None,
        }
    }

    /// `report` signed, with the VCEK/VLEK, as wire evidence.
    pub fn evidence(&self, report: &TestReport) -> pb::SnpEvidence {
        pb::SnpEvidence {
            report: self.chain.sign(report).unwrap(),
            vek_certificate: self.chain.vek_der().to_vec(),
            cert_chain: Vec::new(),
        }
    }

    /// `report` with REPORT_DATA bound to (nonce, hpke key), signed.
    pub fn bound(&self, mut report: TestReport, nonce: &[u8], hpke_public_key: &[u8]) -> pb::SnpEvidence {
        report.report_data = attestation::binding::snp_report_data(nonce, hpke_public_key);
        self.evidence(&report)
    }
}

impl Default for SnpLab {
    fn default() -> Self {
        Self::new()
    }
}

/// Enrols a machine with an SNP report (any REPORT_DATA) as `admin`.
pub async fn enroll_snp(
    admin: &mut AdminServiceClient<Channel>,
    by: &AdminKeyFile,
    evidence: pb::SnpEvidence,
    country: &str,
    accept_vlek: bool,
) -> Result<pb::Hardware, tonic::Status> {
    admin
        .enroll_hardware(signed(
            by,
            Op::EnrollHardware(pb::EnrollHardwareOp {
                country: country.into(),
                site: "FRA-2".into(),
                operator: "Example Cloud GmbH".into(),
                description: "test machine".into(),
                identity: Some(pb::enroll_hardware_op::Identity::Snp(pb::SnpEnrollment {
                    evidence: Some(evidence),
                    accept_vlek,
                })),
            }),
        ))
        .await
        .map(tonic::Response::into_inner)
}

/// Revokes a machine as `admin`.
pub async fn revoke(
    admin: &mut AdminServiceClient<Channel>,
    by: &AdminKeyFile,
    hardware_id: &str,
) -> Result<pb::Hardware, tonic::Status> {
    admin
        .revoke_hardware(signed(
            by,
            Op::RevokeHardware(pb::RevokeHardwareOp {
                hardware_id: hardware_id.into(),
                reason: "decommissioned".into(),
            }),
        ))
        .await
        .map(tonic::Response::into_inner)
}

/// Sets a key's release policy as `admin`.
pub async fn set_policy(
    admin: &mut AdminServiceClient<Channel>,
    by: &AdminKeyFile,
    key: &str,
    policy: &str,
) -> Result<pb::KeyMetadata, tonic::Status> {
    admin
        .set_release_policy(signed(
            by,
            Op::SetReleasePolicy(pb::SetReleasePolicyOp {
                key: key.into(),
                release_policy: policy.into(),
            }),
        ))
        .await
        .map(tonic::Response::into_inner)
}

/// A workload: its mTLS identity's clients and an HPKE key pair.
pub struct Workload {
    pub attestation: AttestationServiceClient<Channel>,
    pub data: KeyServiceClient<Channel>,
    pub key: PrivateKey<X25519>,
}

impl Workload {
    pub async fn new(server: &impl Reachable, pki: &Pki, principal: &str) -> Self {
        let channel = server.channel(pki.client(principal)).await.unwrap();
        Self {
            attestation: AttestationServiceClient::new(channel.clone()),
            data: KeyServiceClient::new(channel),
            key: PrivateKey::generate(),
        }
    }

    pub fn public_key(&self) -> Vec<u8> {
        self.key.public_key()
    }

    pub async fn challenge(&mut self) -> Vec<u8> {
        self.attestation
            .get_challenge(pb::GetChallengeRequest {})
            .await
            .unwrap()
            .into_inner()
            .nonce
    }

    /// Attest with SNP evidence made by `make(nonce, hpke_public_key)`.
    pub async fn attest_snp(
        &mut self,
        make: impl FnOnce(&[u8], &[u8]) -> pb::SnpEvidence,
    ) -> Result<pb::AttestResponse, tonic::Status> {
        let nonce = self.challenge().await;
        let pk = self.public_key();
        let evidence = make(&nonce, &pk);
        self.attest(nonce, pb::attest_request::Evidence::Snp(evidence)).await
    }

    /// Attest with a quote by `ak` from the software TPM `swtpm` over PCRs 0, 1, 7, bound to a
    /// fresh challenge and this workload's key.
    pub async fn attest_tpm(
        &mut self,
        swtpm: &crate::swtpm::Swtpm,
        ak: &attestation::attester::tpm::AkKey,
    ) -> Result<pb::AttestResponse, tonic::Status> {
        let nonce = self.challenge().await;
        let qd = attestation::binding::tpm_qualifying_data(&nonce, &self.public_key());
        let ev = attestation::attester::tpm::Tpm::open(&swtpm.tcti())
            .unwrap()
            .quote(ak, &qd, &[0, 1, 7])
            .unwrap();
        self.attest(nonce, tpm_evidence(ev)).await
    }

    pub async fn attest(
        &mut self,
        nonce: Vec<u8>,
        evidence: pb::attest_request::Evidence,
    ) -> Result<pb::AttestResponse, tonic::Status> {
        self.attestation
            .attest(pb::AttestRequest {
                nonce,
                hpke_public_key: self.public_key(),
                evidence: Some(evidence),
            })
            .await
            .map(tonic::Response::into_inner)
    }

    /// GenerateDataKey with a token; opens the sealed key. Checks no plaintext came in the clear.
    pub async fn generate(
        &mut self,
        key: &str,
        token: &pb::AttestResponse,
        context: &[(&str, &str)],
    ) -> Result<(pb::GenerateDataKeyResponse, SecretBytes), tonic::Status> {
        let nonce = kms_core::random_array::<16>().unwrap();
        let r = self
            .data
            .generate_data_key(pb::GenerateDataKeyRequest {
                key: key.into(),
                encryption_context: ctx(context),
                attestation_token: token.token.clone(),
                client_nonce: nonce.to_vec(),
            })
            .await?
            .into_inner();
        assert!(
            r.plaintext.is_empty(),
            "an attested release sent plaintext in the clear"
        );
        let sealed = r.sealed_plaintext.clone().expect("sealed_plaintext");
        let plain = self.open(
            &sealed,
            &hpke_seal::release_info(
                "generate_data_key",
                &r.key_id,
                r.key_version,
                &token.token_id,
                &requested(key, context),
                &nonce,
            ),
            &r.ciphertext_blob,
        );
        Ok((r, plain))
    }

    /// Decrypt with a token; opens the sealed plaintext.
    pub async fn decrypt(
        &mut self,
        blob: &[u8],
        token: &pb::AttestResponse,
        context: &[(&str, &str)],
    ) -> Result<SecretBytes, tonic::Status> {
        let nonce = kms_core::random_array::<16>().unwrap();
        let r = self
            .data
            .decrypt(pb::DecryptRequest {
                ciphertext_blob: blob.to_vec(),
                encryption_context: ctx(context),
                key: String::new(),
                attestation_token: token.token.clone(),
                client_nonce: nonce.to_vec(),
            })
            .await?
            .into_inner();
        assert!(
            r.plaintext.is_empty(),
            "an attested release sent plaintext in the clear"
        );
        let sealed = r.sealed_plaintext.clone().expect("sealed_plaintext");
        Ok(self.open(
            &sealed,
            &hpke_seal::release_info(
                "decrypt",
                &r.key_id,
                r.key_version,
                &token.token_id,
                &requested("", context),
                &nonce,
            ),
            blob,
        ))
    }

    /// Opens a sealed release as the workload does, with the HPKE `info`
    /// ([`hpke_seal::release_info`]) of the request it answers.
    pub fn open(&self, sealed: &pb::SealedKey, info: &[u8], blob: &[u8]) -> SecretBytes {
        self.key
            .open(
                &Sealed {
                    encapsulated_key: sealed.encapsulated_key.clone(),
                    ciphertext: sealed.ciphertext.clone(),
                },
                info,
                blob,
            )
            .expect("the sealed key opens with the workload's key")
    }
}

/// An encryption context from pairs.
pub fn ctx(pairs: &[(&str, &str)]) -> std::collections::BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

/// The audit entries (operation, outcome, reason, detail) in order, read from the database.
pub async fn audit_entries(db: &crate::Db) -> Vec<(String, String, String, String)> {
    use sqlx::Row;
    let mut conn = db.connect().await;
    sqlx::query("SELECT operation, outcome, reason, detail FROM audit_log ORDER BY seq")
        .fetch_all(&mut conn)
        .await
        .unwrap()
        .iter()
        .map(|r| {
            (
                r.try_get("operation").unwrap(),
                r.try_get("outcome").unwrap(),
                r.try_get("reason").unwrap(),
                r.try_get("detail").unwrap(),
            )
        })
        .collect()
}

/// Asserts that the audit log holds a refusal of `operation` with `reason`.
pub async fn assert_audited(db: &crate::Db, operation: &str, reason: &str) {
    // Refusals are queued (group commit): give the writer a moment.
    for _ in 0..100 {
        let entries = audit_entries(db).await;
        if entries
            .iter()
            .any(|(o, out, r, _)| o == operation && out == "refused" && r == reason)
        {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("no audited refusal of {operation} with reason {reason}");
}

/// Asserts a refusal's code and reason, for calls whose response was already unwrapped.
#[track_caller]
pub fn assert_status<T: std::fmt::Debug>(r: Result<T, tonic::Status>, code: tonic::Code, why: &str) {
    match r {
        Ok(v) => panic!("expected {code:?}/{why}, got success: {v:?}"),
        Err(s) => {
            assert_eq!(
                (s.code(), crate::reason(&s).as_str()),
                (code, why),
                "message: {}",
                s.message()
            );
        }
    }
}

/// TPM evidence (as the attester makes it) on the wire.
pub fn tpm_evidence(ev: attestation::tpm::TpmEvidence) -> pb::attest_request::Evidence {
    pb::attest_request::Evidence::Tpm(kms_node::tpm_to_wire(&ev))
}

/// The release-request digest (`hpke_seal::release_request`) of a request naming `key` (as
/// sent; empty for a Decrypt that names none) with `context`.
pub fn requested(key: &str, context: &[(&str, &str)]) -> [u8; 32] {
    let context = kms_core::context::EncryptionContext::new(
        context
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    )
    .expect("a valid encryption context");
    hpke_seal::release_request(key, &context)
}
