//! A node verified from its identity answer: SEV-SNP reports from a synthetic chain and quotes
//! from a real software TPM, each bound to the node statement, against node policies; then the
//! answers it signs. One refusal per case.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use attestation::attester::tpm::{AkScheme, Tpm};
use attestation::snp::danger::test_chain::{TestChain, TestChainOptions, TestReport, VALID_AT};
use attestation::snp::{Product, Signer};
use kms_core::policy::ReleasePolicy;
use kms_node::{message, NodeError, NodeKey, NodePolicy, NodeStatement, NodeVerifier, TpmNodeTrust};
use kms_proto::v1 as pb;

const NONCE: &[u8] = &[9; 32];

struct Node {
    key: NodeKey,
    statement: NodeStatement,
}

impl Node {
    fn new() -> Self {
        let key = NodeKey::generate().unwrap();
        let statement = NodeStatement {
            node_public_key: key.public_key(),
            unseal_public_key: vec![4; 65],
            tls_spki_sha256: [7; 32],
            hpke_public_key: [8; 32],
        };
        Self { key, statement }
    }

    /// The identity answer for `nonce` with `evidence`, its status naming `unseal`.
    fn identity(&self, nonce: &[u8], evidence: Option<pb::node_identity::Evidence>, unseal: &[u8]) -> pb::NodeIdentity {
        let status = pb::SealStatus {
            initialized: true,
            unseal_public_key: unseal.to_vec(),
            deployment_id: "dep-1".into(),
            ..Default::default()
        };
        kms_node::identity(&self.key, &self.statement, evidence, "", nonce, &status)
    }
}

fn release_policy(json: &str) -> ReleasePolicy {
    ReleasePolicy::parse(json).unwrap()
}

fn snp_report(chain: &TestChain, statement: &NodeStatement) -> TestReport {
    let mut r = chain.report();
    r.policy &= !TestReport::POLICY_SMT;
    r.platform_info = 1 << 5;
    r.report_data = statement.snp_report_data();
    r
}

fn snp_evidence(chain: &TestChain, report: &TestReport) -> pb::node_identity::Evidence {
    let e = chain.evidence(report).unwrap();
    pb::node_identity::Evidence::Snp(pb::SnpEvidence {
        report: e.report,
        vek_certificate: e.vek.unwrap_or_default(),
        cert_chain: e.chain.unwrap_or_default(),
    })
}

fn reason(r: Result<impl std::fmt::Debug, NodeError>) -> &'static str {
    match r {
        Ok(v) => panic!("accepted: {v:?}"),
        Err(e) => e.reason(),
    }
}

#[test]
fn snp_nodes_against_a_measurement_policy() {
    let chain = TestChain::new(TestChainOptions::new(Product::Milan, Signer::Vcek)).unwrap();
    let measurement = hex::encode([0x33u8; 48]);
    let policy = |m: &str| {
        NodeVerifier::new(
            NodePolicy::new(
                Some(chain.strict_trust(chain.options().tcb)),
                None,
                release_policy(&format!(
                    r#"{{"version":1,"attestation":"required","allOf":[{{"claim":"tee","equals":"snp"}},{{"claim":"snp.measurement","equals":"{m}"}}]}}"#
                )),
            )
            .unwrap(),
        )
        .unwrap()
    };
    let verifier = policy(&measurement);
    let node = Node::new();
    let unseal = node.statement.unseal_public_key.clone();
    let good = snp_evidence(&chain, &snp_report(&chain, &node.statement));
    let (verified, status) = verifier
        .verify(&node.identity(NONCE, Some(good.clone()), &unseal), NONCE, VALID_AT)
        .unwrap();
    assert_eq!(verified.public_key, node.key.public_key());
    assert_eq!(verified.id, node.key.id());
    assert_eq!(status.deployment_id, "dep-1");
    let claims = verified.claims.as_ref().unwrap();
    assert_eq!(
        claims.get("snp.measurement").unwrap().as_str(),
        Some(measurement.as_str())
    );

    // The same policy pinned to the deployment the node serves, and to another: genuine kmsd
    // on allowed hardware that serves someone else's deployment is refused.
    let pinned = |deployment: &str| {
        NodeVerifier::new(
            NodePolicy::new(
                Some(chain.strict_trust(chain.options().tcb)),
                None,
                release_policy(&format!(
                    r#"{{"version":1,"attestation":"required","allOf":[{{"claim":"snp.measurement","equals":"{measurement}"}}]}}"#
                )),
            )
            .unwrap()
            .pinned_to(deployment)
            .unwrap(),
        )
        .unwrap()
    };
    let identity = node.identity(NONCE, Some(good.clone()), &unseal);
    pinned("dep-1").verify(&identity, NONCE, VALID_AT).unwrap();
    let refused = pinned("dep-2").verify(&identity, NONCE, VALID_AT).unwrap_err();
    assert_eq!(refused.reason(), "node_wrong_deployment");
    assert!(refused.to_string().contains("\"dep-1\""), "{refused}");

    // Another measurement than the policy's.
    assert_eq!(
        reason(policy(&"00".repeat(48)).verify(&node.identity(NONCE, Some(good.clone()), &unseal), NONCE, VALID_AT)),
        "node_policy_refused"
    );
    // Evidence bound to another node's statement (a relay of the genuine evidence by an
    // impostor with its own key), or no evidence at all.
    let impostor = Node::new();
    assert_eq!(
        reason(verifier.verify(&impostor.identity(NONCE, Some(good.clone()), &unseal), NONCE, VALID_AT)),
        "node_evidence_refused"
    );
    assert_eq!(
        reason(verifier.verify(&node.identity(NONCE, None, &unseal), NONCE, VALID_AT)),
        "node_unattested"
    );
    // An answer to another nonce (replayed), or signed by another key.
    assert_eq!(
        reason(verifier.verify(
            &node.identity(b"another nonce, replayed", Some(good.clone()), &unseal),
            NONCE,
            VALID_AT
        )),
        "node_signature"
    );
    let mut forged = node.identity(NONCE, Some(good.clone()), &unseal);
    forged.signature = impostor.key.sign(b"whatever").to_vec();
    assert_eq!(reason(verifier.verify(&forged, NONCE, VALID_AT)), "node_signature");
    // The status names another unseal key than the statement (an impostor's, relayed as the
    // status while the genuine statement is shown).
    assert_eq!(
        reason(verifier.verify(&node.identity(NONCE, Some(good.clone()), &[4; 64]), NONCE, VALID_AT)),
        "node_statement_mismatch"
    );
    // A relay that shows the genuine identity with its own HPKE key, to read what callers seal
    // to the node: the evidence (and the signed status) bind the genuine key.
    let mut relayed = node.identity(NONCE, Some(good.clone()), &unseal);
    relayed.node_hpke_public_key = vec![9; 32];
    assert_eq!(reason(verifier.verify(&relayed, NONCE, VALID_AT)), "node_signature");
    relayed.node_hpke_public_key = vec![8; 31];
    assert_eq!(reason(verifier.verify(&relayed, NONCE, VALID_AT)), "node_malformed");
    // A kmsd from before the HPKE key (a v1 statement) says nothing of it.
    relayed.node_hpke_public_key.clear();
    let older = verifier.verify(&relayed, NONCE, VALID_AT).unwrap_err();
    assert!(older.to_string().contains("older than this client"), "{older}");
    assert_eq!(verified.statement.hpke_public_key, [8; 32]);
    // A host with SMT, against the strict default trust.
    let mut smt = snp_report(&chain, &node.statement);
    smt.policy |= TestReport::POLICY_SMT;
    assert_eq!(
        reason(verifier.verify(
            &node.identity(NONCE, Some(snp_evidence(&chain, &smt)), &unseal),
            NONCE,
            VALID_AT
        )),
        "node_evidence_refused"
    );
    // Without evidence, only the danger verifier accepts it, and then without claims.
    let (v, _) = NodeVerifier::danger_unattested()
        .verify(&node.identity(NONCE, None, &unseal), NONCE, VALID_AT)
        .unwrap();
    assert!(v.claims.is_none());
    assert!(!NodeVerifier::danger_unattested().requires_evidence());
    // Answers the node signs later verify under the verified key only.
    let msg = message::release(b"info", b"blob", b"enc", b"ct");
    verified.check("the release", &msg, &node.key.sign(&msg)).unwrap();
    assert_eq!(
        verified
            .check("the release", &msg, &impostor.key.sign(&msg))
            .unwrap_err()
            .reason(),
        "node_signature"
    );
}

#[test]
fn tpm_nodes_by_pinned_ak_and_pcrs() {
    let swtpm = swtpm_fixture::Swtpm::start();
    let node = Node::new();
    let unseal = node.statement.unseal_public_key.clone();
    let (ak, ev) = {
        let mut tpm = Tpm::open(&swtpm.tcti()).unwrap();
        let ak = tpm.create_ak(AkScheme::EcdsaP256).unwrap();
        let ev = tpm.quote(&ak, &node.statement.tpm_qualifying_data(), &[0, 7]).unwrap();
        (ak, ev)
    };
    let ak_name = attestation::tpm::AkPublic::from_tpm2b_public(&ak.public)
        .unwrap()
        .name()
        .to_hex();
    let pcr7 = hex::encode(ev.pcrs.get(7).unwrap());
    let wire = pb::node_identity::Evidence::Tpm(pb::NodeTpmEvidence {
        quote: Some(kms_node::tpm_to_wire(&ev)),
        ek_certificate: Vec::new(),
    });
    let verifier = |names: &[&str], pcr: &str| {
        NodeVerifier::new(
            NodePolicy::new(
                None,
                Some(TpmNodeTrust {
                    ak_names: names.iter().map(|n| (*n).to_owned()).collect(),
                }),
                release_policy(&format!(
                    r#"{{"version":1,"attestation":"required","allOf":[{{"claim":"tpm.pcr.7","equals":"{pcr}"}}]}}"#
                )),
            )
            .unwrap(),
        )
        .unwrap()
    };
    let identity = node.identity(NONCE, Some(wire.clone()), &unseal);
    let (v, _) = verifier(&[&ak_name.to_uppercase()], &pcr7)
        .verify(&identity, NONCE, 0)
        .unwrap();
    assert_eq!(
        v.claims.unwrap().get("tpm.ak_name").unwrap().as_str(),
        Some(ak_name.as_str())
    );
    // Another AK than the pinned one, or another PCR 7 (another boot chain).
    assert_eq!(
        reason(verifier(&["000b00"], &pcr7).verify(&identity, NONCE, 0)),
        "node_not_allowed"
    );
    assert_eq!(
        reason(verifier(&[&ak_name], &"11".repeat(32)).verify(&identity, NONCE, 0)),
        "node_policy_refused"
    );
    // The genuine quote relayed with an impostor's statement.
    let impostor = Node::new();
    assert_eq!(
        reason(verifier(&[&ak_name], &pcr7).verify(&impostor.identity(NONCE, Some(wire), &unseal), NONCE, 0)),
        "node_evidence_refused"
    );
}
