//! Data-plane helpers (KeyService): generate a data key, encrypt, decrypt, re-encrypt. Unsigned:
//! the server knows the caller by the TLS client certificate. `--out FILE` replaces FILE with a
//! complete new file (plaintext: mode 0600); `--out -` writes the raw bytes to stdout. Plaintext
//! is held in zeroizing buffers; it must never be printed unless the command's purpose is to show
//! it (decrypt, or generate --with-plaintext), and never logged.

use std::io::Write as _;
use std::path::Path;

use base64::Engine as _;
use kms_proto::v1 as pb;
use serde_json::json;
use zeroize::Zeroizing;

use crate::args::{pairs_to_map, Pair};
use crate::cli::{BlobInput, DataCommand, Global, PlaintextInput};
use crate::client::Server;
use crate::error::Error;
use crate::files;
use crate::output::{self, Printer, B64};

/// `kmsctl data ...`.
pub(crate) async fn run(g: &Global, p: &Printer, command: &DataCommand) -> Result<(), Error> {
    match command {
        DataCommand::Generate {
            key,
            context,
            with_plaintext,
            out,
        } => generate(g, p, key, context, *with_plaintext, out.as_deref()).await,
        DataCommand::Encrypt {
            key,
            context,
            input,
            out,
        } => encrypt(g, p, key, context, input, out.as_deref()).await,
        DataCommand::Decrypt {
            input,
            context,
            expect_key,
            out,
        } => decrypt(g, p, input, context, expect_key.as_deref(), out.as_deref()).await,
        DataCommand::ReEncrypt {
            input,
            context,
            to,
            to_context,
            out,
        } => re_encrypt(g, p, input, context, to.as_deref(), to_context, out.as_deref()).await,
    }
}

/// Without the plaintext, like `encrypt`: the blob alone (base64) or raw to `out`, so
/// `generate KEY > blob.b64` gives what `decrypt --in blob.b64` reads.
async fn generate(
    g: &Global,
    p: &Printer,
    key: &str,
    context: &[Pair],
    with_plaintext: bool,
    out: Option<&Path>,
) -> Result<(), Error> {
    check_out(p, out)?;
    let encryption_context = pairs_to_map(context, "--context")?;
    let server = Server::connect(g).await?;
    if !with_plaintext {
        let r = server
            .data_call::<_, pb::GenerateDataKeyWithoutPlaintextResponse>(
                "generate_data_key_without_plaintext",
                "/kms.v1.KeyService/GenerateDataKeyWithoutPlaintext",
                &pb::GenerateDataKeyWithoutPlaintextRequest {
                    key: key.to_owned(),
                    encryption_context,
                },
            )
            .await?;
        return emit_blob(
            p,
            &r.ciphertext_blob,
            out,
            json!({ "key_id": r.key_id, "key_version": r.key_version }),
        );
    }
    let mut r = server
        .data_call::<_, pb::GenerateDataKeyResponse>(
            "generate_data_key",
            "/kms.v1.KeyService/GenerateDataKey",
            &pb::GenerateDataKeyRequest {
                key: key.to_owned(),
                encryption_context,
                // kmsctl holds no attested TEE key to open a sealed release: only keys that
                // allow unattested release answer with plaintext here.
                attestation_token: String::new(),
                client_nonce: Vec::new(),
            },
        )
        .await?;
    let plaintext = Zeroizing::new(std::mem::take(&mut r.plaintext));
    let plaintext_b64 = Zeroizing::new(B64.encode(plaintext.as_slice()));
    let blob = B64.encode(&r.ciphertext_blob);
    p.emit(
        json!({
            "ciphertext_blob": blob,
            "key_id": r.key_id,
            "key_version": r.key_version,
            "plaintext": plaintext_b64.as_str(),
        }),
        || {
            format!(
                "ciphertext blob: {blob}\nkey:             {} version {}\nplaintext key:   {}",
                r.key_id,
                r.key_version,
                plaintext_b64.as_str()
            )
        },
    )
}

fn plaintext_input(input: &PlaintextInput) -> Result<Zeroizing<Vec<u8>>, Error> {
    match (&input.text, &input.input) {
        (Some(t), _) => Ok(Zeroizing::new(t.as_bytes().to_vec())),
        (None, Some(path)) => Ok(Zeroizing::new(files::read(path)?)),
        // clap's argument group requires one of the two.
        (None, None) => Err(Error::usage("give --text or --in")),
    }
}

/// A blob from --blob (base64) or --in (raw, as --out writes it, or base64 text).
fn blob_input(input: &BlobInput) -> Result<Vec<u8>, Error> {
    match (&input.blob, &input.input) {
        (Some(b), _) => decode_b64(b).map_err(|e| Error::usage(format!("--blob is not base64: {e}"))),
        (None, Some(path)) => {
            let bytes = files::read(path)?;
            if bytes.starts_with(kms_core::blob::MAGIC) {
                return Ok(bytes);
            }
            let text =
                std::str::from_utf8(&bytes).map_err(|_| Error::file("use", path, "neither a raw blob nor base64"))?;
            decode_b64(text).map_err(|_| Error::file("use", path, "neither a raw blob nor base64"))
        }
        (None, None) => Err(Error::usage("give --blob or --in")),
    }
}

fn decode_b64(text: &str) -> Result<Vec<u8>, base64::DecodeError> {
    let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    B64.decode(compact)
}

/// Refuses `--out` to stdout with `--output json` before anything is done: stdout carries the
/// JSON document then.
fn check_out(p: &Printer, out: Option<&Path>) -> Result<(), Error> {
    match out {
        Some(path) if p.is_json() && files::is_stdout(path) => Err(Error::usage(format!(
            "--out {} writes raw bytes to stdout, where --output json writes its document: give --out FILE, or no --out to have them in the document (base64)",
            path.display()
        ))),
        _ => Ok(()),
    }
}

/// Writes raw `bytes` to `path` and says so (`what` is what they are): a file is replaced
/// (`secret`: with mode 0600) and the result printed; to stdout (`-`, `/dev/stdout`) only the
/// bytes go, and the line saying so goes to stderr.
fn write_out(
    p: &Printer,
    path: &Path,
    bytes: &[u8],
    secret: bool,
    what: &str,
    mut doc: serde_json::Value,
) -> Result<(), Error> {
    if files::is_stdout(path) {
        output::stdout(bytes)?;
        let _ = writeln!(std::io::stderr().lock(), "wrote {what} to stdout");
        return Ok(());
    }
    files::write(path, bytes, secret)?;
    doc["out"] = json!(path);
    doc["bytes"] = json!(bytes.len());
    p.emit(doc, || {
        let mode = if secret { " (mode 0600)" } else { "" };
        format!("wrote {what} to {}{mode}", path.display())
    })
}

/// Prints a new blob as base64, or writes it raw to `out`.
fn emit_blob(p: &Printer, blob: &[u8], out: Option<&Path>, mut doc: serde_json::Value) -> Result<(), Error> {
    match out {
        Some(path) => write_out(p, path, blob, false, &format!("the {}-byte blob", blob.len()), doc),
        None => {
            let b64 = B64.encode(blob);
            doc["ciphertext_blob"] = json!(b64);
            p.emit(doc, || b64)
        }
    }
}

async fn encrypt(
    g: &Global,
    p: &Printer,
    key: &str,
    context: &[Pair],
    input: &PlaintextInput,
    out: Option<&Path>,
) -> Result<(), Error> {
    check_out(p, out)?;
    let encryption_context = pairs_to_map(context, "--context")?;
    let plaintext = plaintext_input(input)?;
    let server = Server::connect(g).await?;
    // Sealed to the node verified now: a TLS-terminating relay sees only HPKE ciphertext.
    let r = server.encrypt_sealed(key, &encryption_context, &plaintext).await?;
    emit_blob(
        p,
        &r.ciphertext_blob,
        out,
        json!({ "key_id": r.key_id, "key_version": r.key_version }),
    )
}

/// Whether bytes can go to a terminal as text: valid UTF-8 without control characters (which
/// could rewrite the terminal) other than line breaks and tabs.
fn printable_text(bytes: &[u8]) -> Option<&str> {
    let s = std::str::from_utf8(bytes).ok()?;
    (!s.chars().any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))).then_some(s)
}

async fn decrypt(
    g: &Global,
    p: &Printer,
    input: &BlobInput,
    context: &[Pair],
    expect_key: Option<&str>,
    out: Option<&Path>,
) -> Result<(), Error> {
    check_out(p, out)?;
    let encryption_context = pairs_to_map(context, "--context")?;
    let ciphertext_blob = blob_input(input)?;
    let server = Server::connect(g).await?;
    let mut r = server
        .data_call::<_, pb::DecryptResponse>(
            "decrypt",
            "/kms.v1.KeyService/Decrypt",
            &pb::DecryptRequest {
                ciphertext_blob,
                encryption_context,
                key: expect_key.unwrap_or_default().to_owned(),
                attestation_token: String::new(),
                client_nonce: Vec::new(),
            },
        )
        .await?;
    let plaintext = Zeroizing::new(std::mem::take(&mut r.plaintext));
    let mut doc = json!({ "key_id": r.key_id, "key_version": r.key_version });
    if let Some(path) = out {
        let what = format!("{} bytes of plaintext", plaintext.len());
        return write_out(p, path, &plaintext, true, &what, doc);
    }
    let b64 = Zeroizing::new(B64.encode(plaintext.as_slice()));
    doc["plaintext_base64"] = json!(b64.as_str());
    if let Ok(text) = std::str::from_utf8(&plaintext) {
        doc["plaintext_utf8"] = json!(text);
    }
    p.emit(doc, || match printable_text(&plaintext) {
        Some(text) => text.to_owned(),
        None => b64.as_str().to_owned(),
    })
}

async fn re_encrypt(
    g: &Global,
    p: &Printer,
    input: &BlobInput,
    context: &[Pair],
    to: Option<&str>,
    to_context: &[Pair],
    out: Option<&Path>,
) -> Result<(), Error> {
    check_out(p, out)?;
    let source_encryption_context = pairs_to_map(context, "--context")?;
    let destination_encryption_context = pairs_to_map(to_context, "--to-context")?;
    let ciphertext_blob = blob_input(input)?;
    let server = Server::connect(g).await?;
    let r = server
        .data_call::<_, pb::ReEncryptResponse>(
            "re_encrypt",
            "/kms.v1.KeyService/ReEncrypt",
            &pb::ReEncryptRequest {
                ciphertext_blob,
                source_encryption_context,
                destination_key: to.unwrap_or_default().to_owned(),
                destination_encryption_context,
            },
        )
        .await?;
    emit_blob(
        p,
        &r.ciphertext_blob,
        out,
        json!({
            "source_key_id": r.source_key_id,
            "source_key_version": r.source_key_version,
            "key_id": r.key_id,
            "key_version": r.key_version,
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_harmless_text_is_printed_as_text() {
        assert_eq!(printable_text(b"hello\nworld\t!"), Some("hello\nworld\t!"));
        assert_eq!(printable_text("grüße".as_bytes()), Some("grüße"));
        assert_eq!(printable_text(b"\x1b[2Jgone"), None);
        assert_eq!(printable_text(&[0xff, 0xfe]), None);
    }

    #[test]
    fn blobs_come_as_base64_or_raw() {
        let raw = [b"KMSB".as_slice(), &[1, 2, 3]].concat();
        let b64 = B64.encode(&raw);
        let from_flag = blob_input(&BlobInput {
            blob: Some(format!(" {b64}\n")),
            input: None,
        })
        .unwrap();
        assert_eq!(from_flag, raw);
        let bad = blob_input(&BlobInput {
            blob: Some("not base64!".into()),
            input: None,
        })
        .unwrap_err();
        assert_eq!(bad.exit_code(), crate::error::exit::USAGE);
    }
}
