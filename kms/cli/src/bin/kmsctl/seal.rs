//! The seal: showing its status, submitting a custodian's root-key share, sealing. The share is
//! opened with the custodian's key and re-sealed to the server's ephemeral unseal key in memory
//! only. It must never print, log or write a share, and never send one over plaintext to another
//! machine unless the operator said `--danger-plaintext-unseal`.

use kms_core::hpke_seal::{self, Sealed, X25519};
use kms_proto::v1 as pb;
use kms_proto::v1::admin_request::Operation as Op;
use serde_json::json;

use crate::cli::{Global, UnsealArgs};
use crate::client::{plaintext_to_remote, sealed_hint, Server, Signer};
use crate::error::Error;
use crate::files;
use crate::output::{self, Printer};

/// `kmsctl status`.
pub(crate) async fn status(g: &Global, p: &Printer) -> Result<(), Error> {
    let server = Server::connect(g).await?;
    let s = server.seal_status().await?;
    p.emit(output::seal_status_json(&s), || {
        let mut out = output::seal_status_human(&s);
        if s.initialized && s.sealed && s.seal == pb::SealKind::Shamir as i32 {
            out.push_str(&format!("next: {}\n", sealed_hint(&s)));
        }
        out
    })
}

/// `kmsctl unseal`.
pub(crate) async fn unseal(g: &Global, p: &Printer, args: &UnsealArgs) -> Result<(), Error> {
    let key = files::admin_key(g.admin_key.as_deref())?;
    let expected_kcv = args
        .expect_kcv
        .as_deref()
        .map(|h| hex::decode(h.trim()))
        .transpose()
        .map_err(|e| Error::usage(format!("--expect-kcv is not hex: {e}")))?;
    if plaintext_to_remote(&g.server) && !args.danger_plaintext_unseal {
        return Err(Error::usage(format!(
            "refusing to send a root-key share over plaintext HTTP to {}: anyone on the path could swap the server's unseal key for theirs. Use an https:// URL (or --danger-plaintext-unseal)",
            g.server
        )));
    }
    let server = Server::connect(g).await?;

    let status = server.seal_status().await?;
    if !status.initialized {
        return Err(Error::server_state("not_initialized", "the server is not initialized"));
    }
    if !status.sealed {
        return p.emit(
            json!({ "unsealed": true, "status": output::seal_status_json(&status) }),
            || "the server is already unsealed; nothing sent".into(),
        );
    }
    if status.seal != pb::SealKind::Shamir as i32 {
        return Err(Error::server_state(
            "not_shamir",
            format!("the {} seal takes no shares", output::seal_kind(status.seal)),
        ));
    }
    if let Some(expected) = expected_kcv {
        if status.key_check_value != expected {
            let what = format!(
                "the server's key check value is {}, not the expected {}: its root key is not the one made at init; your share was not sent",
                hex::encode(&status.key_check_value),
                hex::encode(&expected)
            );
            return Err(Error::Verification {
                json: json!({ "ok": false, "reason": "key_check_value_mismatch", "message": what }),
                what,
            });
        }
    }

    let signer = Signer::new(&key);
    let id = signer.admin_id().to_owned();
    let share = server
        .admin_call(
            &signer,
            Op::GetEncryptedShare(pb::GetEncryptedShareOp {}),
            |mut c, r| async move { c.get_encrypted_share(r).await },
        )
        .await?;
    let sealed = {
        let plain = key
            .encryption_key()
            .open(
                &Sealed {
                    encapsulated_key: share.encapsulated_key,
                    ciphertext: share.ciphertext,
                },
                &hpke_seal::share_info(&id),
                b"",
            )
            .map_err(|e| {
                Error::local(format!(
                    "cannot open your share with the encryption key in --admin-key ({e}); is it the key file given at init?"
                ))
            })?;
        // `plain` is zeroized when this block ends; only the re-sealed form leaves it.
        hpke_seal::seal::<X25519>(
            &status.unseal_public_key,
            &hpke_seal::unseal_info(&id),
            b"",
            plain.expose_secret(),
        )
        .map_err(|e| Error::server_state("bad_unseal_key", format!("the server's unseal public key: {e}")))?
    };
    let after = server
        .admin_call(
            &signer,
            Op::Unseal(pb::UnsealOp {
                encapsulated_key: sealed.encapsulated_key,
                ciphertext: sealed.ciphertext,
            }),
            |mut c, r| async move { c.unseal(r).await },
        )
        .await?;
    let progress = if after.sealed { after.progress } else { after.threshold };
    p.emit(
        json!({
            "unsealed": !after.sealed,
            "submitted_by": id,
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
    let key = files::admin_key(g.admin_key.as_deref())?;
    let server = Server::connect(g).await?;
    let signer = Signer::new(&key);
    let s = server
        .admin_call(
            &signer,
            Op::Seal(pb::SealOp {}),
            |mut c, r| async move { c.seal(r).await },
        )
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
    use kms_core::hpke_seal::{PrivateKey, P256};

    use super::*;

    #[test]
    fn shares_round_trip_through_the_infos_the_server_uses() {
        let custodian = PrivateKey::<P256>::generate();
        let server_unseal = PrivateKey::<X25519>::generate();
        let to_custodian =
            hpke_seal::seal::<P256>(&custodian.public_key(), b"kms-share-v1\0alice", b"", b"share").unwrap();
        let opened = custodian
            .open(&to_custodian, &hpke_seal::share_info("alice"), b"")
            .unwrap();
        let to_server = hpke_seal::seal::<X25519>(
            &server_unseal.public_key(),
            &hpke_seal::unseal_info("alice"),
            b"",
            opened.expose_secret(),
        )
        .unwrap();
        let got = server_unseal.open(&to_server, b"kms-unseal-v1\0alice", b"").unwrap();
        assert_eq!(got.expose_secret(), b"share");
        assert!(server_unseal.open(&to_server, b"kms-unseal-v1\0bob", b"").is_err());
    }
}
