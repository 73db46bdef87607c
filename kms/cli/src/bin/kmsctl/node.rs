//! Which kmsd a custodian talks to: the node identity (GetNodeIdentity) verified against the
//! node policy the custodian keeps (`--node-policy`), before a share leaves the token or an Init
//! is sent; `kmsctl node show` prints it. Only the seal status the node signed over our nonce is
//! used: an unseal key relayed by anything else never receives a share.

use kms_client::nodes::VerifiedNodes;
use kms_client::NodeTrust;
use kms_node::{NodeError, NodeVerifier, VerifiedNode};
use kms_proto::v1 as pb;
use serde_json::{json, Value};

use crate::cli::Global;
use crate::client::Server;
use crate::error::Error;
use crate::output::Printer;

/// The verifier the command line asks for (`--node-policy`, `--danger-unattested-kmsd`, read
/// by kms-client); `None` if it asks for none.
pub(crate) fn verifier(g: &Global) -> Result<Option<NodeVerifier>, Error> {
    g.node_trust.trust()?.as_ref().map(verifier_of).transpose()
}

/// The nodes to verify under the trust the command line names, which this command needs (a
/// usage error before anything is sent if it names none).
pub(crate) fn required_nodes(g: &Global, what: &str) -> Result<VerifiedNodes, Error> {
    verifier_of(&g.node_trust.required_trust(what)?).map(VerifiedNodes::new)
}

fn verifier_of(trust: &NodeTrust) -> Result<NodeVerifier, Error> {
    // The policy was checked as it was read, so this fails only if the verifier changed its mind.
    trust
        .verifier()
        .map_err(|e| Error::local(format!("the node policy cannot be used: {e}")))
}

/// The node's identity over a fresh nonce, unverified.
async fn identity(server: &Server) -> Result<(pb::NodeIdentity, [u8; 32]), Error> {
    let nonce = kms_core::random_array::<32>().map_err(|e| Error::local(format!("random number generator: {e}")))?;
    let id = server.node_identity(&nonce).await?;
    Ok((id, nonce))
}

/// The node answering on `server`, verified now under `nodes`' trust, and the seal status it
/// signed.
pub(crate) async fn verified_status(
    server: &Server,
    nodes: &VerifiedNodes,
) -> Result<(VerifiedNode, pb::SealStatus), Error> {
    verified_status_or(server, nodes, "nothing was sent").await
}

/// [`verified_status`], whose refusal ends with `consequence` (what the command did not do).
pub(crate) async fn verified_status_or(
    server: &Server,
    nodes: &VerifiedNodes,
    consequence: &str,
) -> Result<(VerifiedNode, pb::SealStatus), Error> {
    let (id, nonce) = identity(server).await?;
    nodes
        .verify(&id, &nonce)
        .map_err(|e| Error::check_failed(e.reason(), format!("{e}; {consequence}"), json!({})))
}

/// The verified node whose key is `public_key` (it signed an answer): one `nodes` verified
/// earlier in this run, or the node answering on `server`, verified now, asked again (a few
/// times: behind a load balancer another replica may answer) until it is that node.
pub(crate) async fn signer(
    server: &Server,
    nodes: &VerifiedNodes,
    public_key: &[u8],
    unverified: impl Fn(&NodeError) -> Error,
) -> Result<VerifiedNode, Error> {
    let unverified = &unverified;
    nodes
        .signer(
            public_key,
            move || async move {
                let (id, nonce) = identity(server).await?;
                nodes
                    .verify(&id, &nonce)
                    .map(|(node, _)| node)
                    .map_err(|e| unverified(&e))
            },
            |e| unverified(&e),
        )
        .await
}

fn evidence_json(id: &pb::NodeIdentity) -> Value {
    match &id.evidence {
        None => json!({ "kind": "none", "reason": id.no_evidence_reason }),
        Some(pb::node_identity::Evidence::Snp(_)) => json!({ "kind": "snp" }),
        Some(pb::node_identity::Evidence::Tpm(t)) => {
            let ak_name = t
                .quote
                .as_ref()
                .and_then(|q| attestation::tpm::AkPublic::from_tpm2b_public(&q.ak_public).ok())
                .map(|a| a.name().to_hex());
            json!({ "kind": "tpm", "ak_name": ak_name, "ek_certificate": !t.ek_certificate.is_empty() })
        }
    }
}

/// `kmsctl node show`: the identity of the node that answers, and whether it meets the node
/// policy (when one is given).
pub(crate) async fn show(g: &Global, p: &Printer) -> Result<(), Error> {
    let server = Server::connect(g).await?;
    let (id, nonce) = identity(&server).await?;
    // Under --danger-unattested-kmsd any node passes: that is no verification to report.
    let verdict = verifier(g)?
        .filter(NodeVerifier::requires_evidence)
        .map(|v| v.verify(&id, &nonce, kms_core::now_unix_ms() / 1000));
    let evidence = evidence_json(&id);
    let claims = match &verdict {
        Some(Ok((n, _))) => n
            .claims
            .as_ref()
            .map(|c| serde_json::from_str::<Value>(&c.to_json()).unwrap_or_default()),
        _ => None,
    };
    let doc = json!({
        "node_id": id.node_id,
        "node_public_key": hex::encode(&id.node_public_key),
        "unseal_public_key": hex::encode(&id.unseal_public_key),
        "tls_spki_sha256": hex::encode(&id.tls_spki_sha256),
        "hpke_public_key": hex::encode(&id.node_hpke_public_key),
        "evidence": evidence,
        "verified": verdict.as_ref().map(|v| v.is_ok()),
        "refusal": verdict.as_ref().and_then(|v| v.as_ref().err()).map(|e| json!({ "reason": e.reason(), "message": e.to_string() })),
        "claims": claims,
    });
    let text = {
        let mut s = format!("node:            {}\n", id.node_id);
        s.push_str(&format!(
            "evidence:        {}\n",
            match &id.evidence {
                None => format!("none ({})", id.no_evidence_reason),
                Some(pb::node_identity::Evidence::Snp(_)) => "SEV-SNP report".into(),
                Some(pb::node_identity::Evidence::Tpm(_)) => format!(
                    "TPM quote by AK {}",
                    doc["evidence"]["ak_name"].as_str().unwrap_or("(unreadable)")
                ),
            }
        ));
        s.push_str(&format!(
            "TLS key:         sha256:{}\n",
            hex::encode(&id.tls_spki_sha256)
        ));
        s.push_str(&format!("HPKE key:        {}\n", hex::encode(&id.node_hpke_public_key)));
        match &verdict {
            None => s.push_str("verified:        no (give --node-policy FILE to check it)\n"),
            Some(Ok(_)) => s.push_str("verified:        yes, under the node policy\n"),
            Some(Err(e)) => s.push_str(&format!("verified:        REFUSED: {e}\n")),
        }
        s
    };
    match verdict {
        Some(Err(e)) => Err(Error::Verification {
            json: doc,
            what: format!("{text}{}", e.reason()),
        }),
        _ => p.emit(doc, || text),
    }
}
