//! Which kmsd a custodian talks to: the node identity (GetNodeIdentity) verified against the
//! node policy the custodian keeps (`--node-policy`), before a share leaves the token or an Init
//! is sent; `kmsctl node show` prints it. Only the seal status the node signed over our nonce is
//! used: an unseal key relayed by anything else never receives a share.

use std::path::Path;

use kms_node::{NodeError, NodePolicy, NodeVerifier, VerifiedNode};
use kms_proto::v1 as pb;
use serde_json::{json, Value};

use crate::cli::Global;
use crate::client::Server;
use crate::error::Error;
use crate::output::Printer;

/// The verifier the command line asks for; `None` if it asks for none.
pub(crate) fn verifier(g: &Global) -> Result<Option<NodeVerifier>, Error> {
    match (&g.node_policy, g.danger_unattested_kmsd) {
        (Some(path), _) => Ok(Some(
            NodeVerifier::new(read_policy(path)?).map_err(|e| Error::usage(format!("{}: {e}", path.display())))?,
        )),
        (None, true) => {
            eprintln!(
                "warning: --danger-unattested-kmsd: the server is not verified; whoever answers in its place (a TLS-terminating proxy) is trusted"
            );
            Ok(Some(NodeVerifier::danger_unattested()))
        }
        (None, false) => Ok(None),
    }
}

/// [`verifier`], which this command needs.
pub(crate) fn required_verifier(g: &Global, what: &str) -> Result<NodeVerifier, Error> {
    verifier(g)?.ok_or_else(|| {
        Error::usage(format!(
            "{what} needs to know which kmsd to trust: --node-policy FILE (or KMSCTL_NODE_POLICY), the node policy your deployment handed out; or --danger-unattested-kmsd for a kmsd without hardware evidence (dev and tests only)"
        ))
    })
}

fn read_policy(path: &Path) -> Result<NodePolicy, Error> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::local(format!("cannot read the node policy {}: {e}", path.display())))?;
    NodePolicy::parse(&text).map_err(|e| Error::usage(format!("{}: {e}", path.display())))
}

/// The node's identity over a fresh nonce, unverified.
async fn identity(server: &Server) -> Result<(pb::NodeIdentity, [u8; 32]), Error> {
    let nonce = kms_core::random_array::<32>().map_err(|e| Error::local(format!("random number generator: {e}")))?;
    let id = server.node_identity(&nonce).await?;
    Ok((id, nonce))
}

fn refused(e: &NodeError) -> Error {
    let what = format!("{e}; nothing was sent");
    Error::Verification {
        json: json!({ "ok": false, "reason": e.reason(), "message": what }),
        what,
    }
}

/// The node answering on `server`, verified by `verifier`, and the seal status it signed.
pub(crate) async fn verified_status(
    server: &Server,
    verifier: &NodeVerifier,
) -> Result<(VerifiedNode, pb::SealStatus), Error> {
    let (id, nonce) = identity(server).await?;
    verifier
        .verify(&id, &nonce, kms_core::now_unix_ms() / 1000)
        .map_err(|e| refused(&e))
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
    let verdict = verifier(g)?.map(|v| v.verify(&id, &nonce, kms_core::now_unix_ms() / 1000));
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
