//! Attestation tokens: the server's verification keys (GetTokenKeys, taken only as a node
//! verified under the node policy signed them over our nonce) and offline verification of a
//! token with `kms_core::token`, the code the server verifies tokens with. It
//! must never print the token itself (whoever holds it and the workload's HPKE key can obtain
//! releases), and never report a refused token as valid.

use kms_core::token::TokenVerifier;
use serde_json::{json, Value};
use zeroize::Zeroizing;

use crate::cli::{Global, TokenCommand, TokenVerifyArgs};
use crate::client::Server;
use crate::error::Error;
use crate::files;
use crate::output::{self, Printer};

/// `kmsctl token ...`.
pub(crate) async fn run(g: &Global, p: &Printer, command: &TokenCommand) -> Result<(), Error> {
    match command {
        TokenCommand::Keys => keys(g, p).await,
        TokenCommand::Verify(args) => verify(g, p, args).await,
    }
}

/// A one-line summary of each key in a JWKS, for stderr.
fn jwks_summary(jwks: &Value) -> Vec<String> {
    let field = |k: &Value, name: &str| k.get(name).and_then(Value::as_str).unwrap_or("?").to_owned();
    jwks.get("keys")
        .and_then(Value::as_array)
        .map(|keys| {
            keys.iter()
                .map(|k| {
                    format!(
                        "kid {} ({} {}, {})",
                        field(k, "kid"),
                        field(k, "kty"),
                        field(k, "crv"),
                        field(k, "alg")
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn parse_jwks(text: &str, from: &str) -> Result<Value, Error> {
    let jwks: Value = serde_json::from_str(text).map_err(|e| Error::local(format!("{from} is not JSON: {e}")))?;
    if !jwks.get("keys").is_some_and(Value::is_array) {
        return Err(Error::local(format!(
            "{from} is not a JSON Web Key Set (no \"keys\" array)"
        )));
    }
    Ok(jwks)
}

/// `kmsctl token keys`: the JWKS itself on stdout (in both formats), so it can be saved for
/// `token verify --jwks`.
async fn keys(g: &Global, p: &Printer) -> Result<(), Error> {
    let text = signed_jwks(g, "token keys").await?;
    let jwks = parse_jwks(&text, "the server's JWKS")?;
    if !p.is_json() {
        let summary = jwks_summary(&jwks);
        if summary.is_empty() {
            eprintln!(
                "no token keys: the server holds none yet (it makes its signing key when it first issues a token)"
            );
        } else {
            eprintln!(
                "{} token key{}: {}",
                summary.len(),
                if summary.len() == 1 { "" } else { "s" },
                summary.join("; ")
            );
        }
    }
    let pretty = serde_json::to_string_pretty(&jwks).map_err(|e| Error::local(e.to_string()))?;
    p.emit(jwks, || pretty)
}

/// The JWKS the answering node serves, only as a node verified under the node trust signed it
/// over a fresh nonce: a proxy's own keys would make its own tokens verify. `what` names the
/// command in the usage error without a node trust.
async fn signed_jwks(g: &Global, what: &str) -> Result<String, Error> {
    let nodes = crate::node::required_nodes(g, what)?;
    let server = Server::connect(g).await?.trusting(nodes);
    let nodes = server.nodes(what).await?;
    let nonce = kms_core::random_array::<32>().map_err(|e| Error::local(format!("random number generator: {e}")))?;
    let answer = server.token_keys(&nonce).await?;
    let refused =
        |e: &kms_node::NodeError| Error::check_failed(e.reason(), format!("{e}; the keys are not used"), json!({}));
    crate::node::signer(&server, nodes, &answer.node_public_key, refused)
        .await?
        .check(
            "the token keys",
            &kms_node::message::token_keys(&nonce, &answer.jwks_json),
            &answer.node_signature,
        )
        .map_err(|e| refused(&e))?;
    Ok(answer.jwks_json)
}

fn now_unix() -> i64 {
    kms_core::now_unix_ms().div_euclid(1000)
}

/// `kmsctl token verify`: the claims as JSON on stdout (in both formats, like `kmsctl verify`),
/// or the refusal, exit 1.
async fn verify(g: &Global, p: &Printer, args: &TokenVerifyArgs) -> Result<(), Error> {
    let bytes = Zeroizing::new(files::read_or_stdin(&args.token)?);
    let token = std::str::from_utf8(&bytes)
        .map_err(|_| Error::file("use", &args.token, "not a token (not UTF-8 text)"))?
        .trim();
    if token.is_empty() {
        return Err(Error::file("use", &args.token, "empty: no token"));
    }
    let verifier = match &args.jwks {
        Some(path) => {
            let text = files::read_text(path)?;
            TokenVerifier::from_jwks_json(&text).map_err(|e| Error::file("use the JWKS", path, e))?
        }
        None => {
            let text = signed_jwks(g, "token verify without --jwks").await?;
            note(&format!(
                "no --jwks: verifying with the keys {} serves now",
                g.connection.url.trim_end_matches('/')
            ));
            let jwks = parse_jwks(&text, "the server's JWKS")?;
            if jwks_summary(&jwks).is_empty() {
                let detail = "the server holds no token key: it has issued no token, so not this one";
                return Err(Error::Verification {
                    what: format!("refused: token_unknown_key: {detail}"),
                    json: json!({ "ok": false, "check": "token_unknown_key", "detail": detail }),
                });
            }
            TokenVerifier::from_jwks_json(&text).map_err(|e| Error::local(format!("the server's JWKS: {e}")))?
        }
    };
    let at = args.at.unwrap_or_else(now_unix);
    let claims = verifier.verify(token, at).map_err(|e| Error::Verification {
        what: format!("refused: {}: {e}", e.reason()),
        json: json!({ "ok": false, "check": e.reason(), "detail": e.to_string() }),
    })?;
    note(&format!(
        "signature, issuer, audience and times valid at {}; token {} for {} expires {}. Not checked here: that the caller presenting it is its principal, and the machine's current registry status (a revoked machine's tokens are refused by the server)",
        output::time(at.saturating_mul(1000)),
        claims.jti,
        claims.sub,
        output::time(claims.exp.saturating_mul(1000)),
    ));
    let doc = serde_json::to_value(&claims).map_err(|e| Error::local(e.to_string()))?;
    let pretty = serde_json::to_string_pretty(&doc).map_err(|e| Error::local(e.to_string()))?;
    p.emit(doc, || pretty)
}

fn note(text: &str) {
    eprintln!("note: {text}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwks_are_checked_and_summarized() {
        let jwks = parse_jwks(
            r#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"AAAA","kid":"k1","alg":"EdDSA","use":"sig"}]}"#,
            "t",
        )
        .unwrap();
        assert_eq!(jwks_summary(&jwks), vec!["kid k1 (OKP Ed25519, EdDSA)".to_owned()]);
        assert!(parse_jwks("{}", "t").is_err());
        assert!(parse_jwks("nope", "t").is_err());
    }
}
