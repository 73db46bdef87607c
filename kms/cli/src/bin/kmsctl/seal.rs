//! The seal: showing its status, submitting a custodian's root-key share, sealing. The share is
//! re-sealed to the server's ephemeral unseal key by the custodian's credential: inside the token
//! for an HSM, in memory only for a key file. It must never print, log or write a share, and never send one over plaintext to another
//! machine unless the operator said `--danger-plaintext-unseal`.

use kms_core::share_wrap::ShareEnvelope;
use kms_proto::v1 as pb;
use kms_proto::v1::admin_request::Operation as Op;
use serde_json::json;

use crate::cli::{Global, UnsealArgs};
use crate::client::{plaintext_to_remote, sealed_hint, Server};
use crate::credential::Credential;
use crate::error::Error;
use crate::output::{self, Printer};

/// `kmsctl status`.
///
/// With a node policy (`--node-policy`) the status is the one the answering node signed over a
/// fresh nonce, verified under it (and says which node signed it); otherwise (also with
/// `--danger-unattested-kmsd`, under which any signer passes) it is the unsigned
/// `GetSealStatus`, which anything on the path could have written.
pub(crate) async fn status(g: &Global, p: &Printer) -> Result<(), Error> {
    let server = Server::connect(g).await?;
    // Asked only for a policy: the danger flag's trust (and warning) would add nothing here.
    let verifier = match g.node_trust.node_policy {
        Some(_) => crate::node::verifier(g)?,
        None => None,
    };
    let (s, signed_by) = match verifier {
        Some(v) => {
            let server = server.trusting(kms_client::nodes::VerifiedNodes::new(v));
            let nodes = server.nodes("status").await?;
            let (node, s) = crate::node::verified_status(&server, nodes).await?;
            (s, Some(node.id))
        }
        None => (server.seal_status().await?, None),
    };
    let mut json = output::seal_status_json(&s);
    if let Some(id) = &signed_by {
        json["signed_by"] = serde_json::Value::String(id.clone());
    }
    p.emit(json, || {
        let mut out = output::seal_status_human(&s);
        if let Some(id) = &signed_by {
            out.push_str(&format!("signed by:       {id} (verified under the node trust)\n"));
        }
        if s.initialized && s.sealed && s.seal == pb::SealKind::Shamir as i32 {
            out.push_str(&format!("next: {}\n", sealed_hint(&s)));
        }
        out
    })
}

/// `kmsctl unseal`.
pub(crate) async fn unseal(g: &Global, p: &Printer, args: &UnsealArgs) -> Result<(), Error> {
    let key = Credential::load(g)?;
    let expected_kcv = args
        .expect_kcv
        .as_deref()
        .map(|h| hex::decode(h.trim()))
        .transpose()
        .map_err(|e| Error::usage(format!("--expect-kcv is not hex: {e}")))?;
    if plaintext_to_remote(&g.connection.url) && !args.danger_plaintext_unseal {
        return Err(Error::usage(format!(
            "refusing to send a root-key share over plaintext HTTP to {}: anyone on the path could swap the server's unseal key for theirs. Use an https:// URL (or --danger-plaintext-unseal)",
            g.connection.url
        )));
    }
    let nodes = crate::node::required_nodes(g, "unseal")?;
    let server = Server::connect(g).await?.trusting(nodes);
    let nodes = server.nodes("unseal").await?;

    // Only the status the verified node signed over our nonce counts: its unseal key is the one
    // the node's evidence binds, so the share is re-wrapped for that process alone.
    let (node, status) = crate::node::verified_status(&server, nodes).await?;
    if !status.initialized {
        return Err(Error::server_state("not_initialized", "the server is not initialized"));
    }
    // Compared whatever the state: an unsealed replica whose root key is not the one made at
    // init is as wrong as a sealed one (a custodian checking a replica must hear about it).
    if let Some(expected) = &expected_kcv {
        if status.key_check_value != *expected {
            return Err(Error::check_failed(
                "key_check_value_mismatch",
                format!(
                    "the server's key check value is {}, not the expected {}: its root key is not the one made at init. Nothing was sent; do not unseal it, find out what happened to its database",
                    hex::encode(&status.key_check_value),
                    hex::encode(expected)
                ),
                json!({
                    "expected": hex::encode(expected),
                    "key_check_value": hex::encode(&status.key_check_value),
                }),
            ));
        }
    }
    if !status.sealed {
        let checked = if expected_kcv.is_some() {
            " (its key check value is the expected one)"
        } else {
            ""
        };
        return p.emit(
            json!({ "unsealed": true, "status": output::seal_status_json(&status) }),
            || format!("the server is already unsealed{checked}; nothing sent"),
        );
    }
    if status.seal != pb::SealKind::Shamir as i32 {
        return Err(Error::server_state(
            "not_shamir",
            format!("the {} seal takes no shares", output::seal_kind(status.seal)),
        ));
    }

    let signer = key.signer();
    let id = signer.admin_id().to_owned();
    let share = server
        .admin_call::<pb::EncryptedShare>(&signer, Op::GetEncryptedShare(pb::GetEncryptedShareOp {}))
        .await?;
    let envelope = ShareEnvelope::decode(&share.envelope).map_err(|e| {
        Error::server_state(
            "bad_share",
            format!("the server sent an unreadable share envelope: {e}"),
        )
    })?;
    let rewrapped = key.rewrap_share(&envelope, &status.unseal_public_key)?;
    let after = server
        .admin_call::<pb::SealStatus>(
            &signer,
            Op::Unseal(pb::UnsealOp {
                envelope: rewrapped.encode(),
            }),
        )
        .await?;
    let progress = if after.sealed { after.progress } else { after.threshold };
    p.emit(
        json!({
            "unsealed": !after.sealed,
            "submitted_by": id,
            "node": node.id,
            "status": output::seal_status_json(&after),
        }),
        || {
            if after.sealed {
                format!(
                    "{progress}/{} shares: still sealed; {}",
                    after.threshold,
                    sealed_hint(&after)
                )
            } else {
                format!("{progress}/{} shares: unsealed", after.threshold)
            }
        },
    )
}

/// `kmsctl seal`.
pub(crate) async fn seal(g: &Global, p: &Printer) -> Result<(), Error> {
    let key = Credential::load(g)?;
    let server = Server::connect(g).await?;
    let signer = key.signer();
    let s = server
        .admin_call::<pb::SealStatus>(&signer, Op::Seal(pb::SealOp {}))
        .await?;
    p.emit(output::seal_status_json(&s), || {
        format!(
            "sealed: the server dropped its root key; to unseal, {}",
            sealed_hint(&s)
        )
    })
}

#[cfg(test)]
mod tests {
    use kms_core::ids::AdminId;
    use kms_core::jurisdiction::Country;
    use kms_core::keyfile::AdminKeyFile;
    use kms_core::share_wrap::{self, UnsealKey};

    use super::*;

    #[test]
    fn a_key_file_rewraps_its_share_to_the_server() {
        let key = AdminKeyFile::generate(AdminId::parse("alice").unwrap(), Country::parse("DE").unwrap()).unwrap();
        let to_custodian = share_wrap::seal(&key.public().encryption_key().unwrap(), &[7u8; 32]).unwrap();
        let server = UnsealKey::generate().unwrap();
        let credential = Credential::KeyFile(Box::new(key));
        let to_server = credential.rewrap_share(&to_custodian, &server.public_key()).unwrap();
        assert_eq!(server.open(&to_server).unwrap().expose_secret(), &[7u8; 32]);
        let other = UnsealKey::generate().unwrap();
        assert!(credential.rewrap_share(&to_server, &other.public_key()).is_err());
    }
}
