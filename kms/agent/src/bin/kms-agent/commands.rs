//! The commands: check the arguments and outputs, build the evidence source, connect, call the
//! library, write the outputs, print a summary. Secrets go only to files created 0600, or to
//! stdout when an --insecure-print-* flag asks for it; never to stderr or a log.

use std::fmt::Write as _;

use base64::Engine as _;
use kms_agent::{
    decode_ak, encode_ak, Client, ClientConfig, EvidenceSource, KmsdKeyring, SnpReporter, TpmEnrollOptions, TpmQuoter,
};
use kms_client::channel::is_loopback;
use kms_client::cli::parse::pairs_to_map;
use kms_client::cli::report::{time, warn};
use kms_client::cli::{Printer, B64};
use kms_envelope::{EncryptionContext, Envelope};
use serde_json::{json, Value};
use std::io::Write as _;
use zeroize::Zeroizing;

use crate::cli::{
    AttestArgs, Cli, Command, Connection, DecryptArgs, EncryptArgs, EnrollArgs, EvidenceArgs, GenerateArgs, TpmCommand,
};
use crate::error::Error;
use crate::files;

pub(crate) async fn run(cli: &Cli, p: &Printer) -> Result<(), Error> {
    match &cli.command {
        Command::Tpm(TpmCommand::Enroll(a)) => enroll(&cli.connection, p, a).await,
        Command::GenerateDataKey(a) => generate(&cli.connection, p, a).await,
        Command::Decrypt(a) => decrypt(&cli.connection, p, a).await,
        Command::Encrypt(a) => encrypt(&cli.connection, p, a).await,
        Command::Attest(a) => attest(&cli.connection, p, a).await,
    }
}

async fn connect(c: &Connection) -> Result<Client, Error> {
    let url = &c.channel.url;
    let config = ClientConfig::from(c.channel.channel_config()?).with_node_trust(c.trust.required_trust("kms-agent")?);
    if !url.starts_with("https://") && !is_loopback(url) {
        warn(&format!(
            "{url} is plaintext: the server cannot identify this workload, and anyone on the path sees the token (keys stay HPKE-sealed)"
        ));
    }
    Ok(Client::connect(&config).await?)
}

/// The evidence source the arguments name, opened (AK file read, SNP device opened) before any
/// network call.
fn evidence_source(a: &EvidenceArgs) -> Result<Box<dyn EvidenceSource>, Error> {
    if a.insecure_plaintext_release {
        Err(Error::usage(
            "--insecure-plaintext-release is for encrypt and decrypt --in; this command attests (--tpm or --snp)",
        ))
    } else if a.tpm {
        let path =
            a.ak.as_deref()
                .ok_or_else(|| Error::usage("--tpm needs --ak FILE (written by `kms-agent tpm enroll`)"))?;
        let ak = decode_ak(&files::read_text(path)?).map_err(|e| Error::file("use the AK file", path, e))?;
        Ok(Box::new(TpmQuoter::new(a.tcti.clone(), ak, &a.pcrs.0)?))
    } else if a.snp {
        Ok(Box::new(SnpReporter::open(&a.device, a.vmpl)?))
    } else {
        Err(Error::usage("choose the evidence: --tpm or --snp"))
    }
}

fn session_json(s: &kms_agent::Session) -> Value {
    json!({
        "token_id": s.token_id(),
        "hardware_id": s.hardware_id(),
        "expires_unix_ms": s.expires_unix_ms(),
    })
}

fn session_human(out: &mut String, s: &kms_agent::Session) {
    let _ = writeln!(out, "hardware:        {}", s.hardware_id());
    let _ = writeln!(
        out,
        "token:           {} (expires {})",
        s.token_id(),
        time(s.expires_unix_ms())
    );
}

async fn attest(c: &Connection, p: &Printer, a: &AttestArgs) -> Result<(), Error> {
    let mut source = evidence_source(&a.evidence)?;
    let client = connect(c).await?;
    let session = client.attest(&mut *source).await?;
    let mut doc = session_json(&session);
    doc["claims"] = session.claims().clone();
    p.emit(&doc, || {
        let mut out = String::new();
        session_human(&mut out, &session);
        let claims = serde_json::to_string_pretty(session.claims()).unwrap_or_default();
        let _ = writeln!(out, "claims:\n{claims}");
        out
    })
}

async fn generate(c: &Connection, p: &Printer, a: &GenerateArgs) -> Result<(), Error> {
    let context = pairs_to_map(&a.context, "--context")?;
    let mut outputs = vec![a.blob_out.as_path()];
    outputs.extend(a.key_out.as_deref());
    files::check_outputs(&outputs, a.force)?;
    let mut source = evidence_source(&a.evidence)?;
    let client = connect(c).await?;
    let session = client.attest(&mut *source).await?;
    let generated = session.generate_data_key(&a.key, &context).await?;
    // The blob first: a key without its blob is harmless, data encrypted under a key whose blob
    // was lost is not.
    files::write_output(&a.blob_out, &generated.ciphertext_blob, false, a.force)?;
    if let Some(path) = &a.key_out {
        files::write_output(path, generated.data_key.expose_secret(), true, a.force)?;
    }
    let mut doc = session_json(&session);
    doc["key_id"] = json!(generated.key_id);
    doc["key_version"] = json!(generated.key_version);
    doc["blob_file"] = json!(a.blob_out);
    doc["key_file"] = json!(a.key_out);
    let printed = if a.insecure_print_key {
        warn("printing the data key on stdout (--insecure-print-key)");
        let b64 = Zeroizing::new(B64.encode(generated.data_key.expose_secret()));
        doc["data_key_base64"] = json!(b64.as_str());
        Some(b64)
    } else {
        None
    };
    let result = p.emit(&doc, || {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "key:             {} version {}",
            generated.key_id, generated.key_version
        );
        let _ = writeln!(out, "blob written to: {}", a.blob_out.display());
        if let Some(path) = &a.key_out {
            let _ = writeln!(out, "key written to:  {} (mode 0600)", path.display());
        }
        if let Some(b64) = &printed {
            let _ = writeln!(out, "data key:        {}", b64.as_str());
        }
        session_human(&mut out, &session);
        out
    });
    // The JSON document held the printed key: wipe its copy.
    if let Some(Value::String(s)) = doc.get_mut("data_key_base64") {
        zeroize::Zeroize::zeroize(s);
    }
    result
}

async fn decrypt(c: &Connection, p: &Printer, a: &DecryptArgs) -> Result<(), Error> {
    let context = pairs_to_map(&a.context, "--context")?;
    if let Some(out) = &a.out {
        files::check_outputs(&[out], a.force)?;
    }
    let blob_path = match (&a.blob, &a.input) {
        (_, Some(input)) => return decrypt_message(c, p, a, input, context.into()).await,
        (Some(blob), None) => blob,
        (None, None) => return Err(Error::usage("give --blob FILE or --in FILE")),
    };
    let blob = files::read(blob_path)?;
    let mut source = evidence_source(&a.evidence)?;
    let client = connect(c).await?;
    let session = client.attest(&mut *source).await?;
    let plaintext = session.decrypt(&blob, &context, a.key.as_deref()).await?;
    if let Some(path) = &a.out {
        files::write_output(path, plaintext.expose_secret(), true, a.force)?;
    }
    let mut doc = session_json(&session);
    doc["bytes"] = json!(plaintext.len());
    doc["out_file"] = json!(a.out);
    let printed = if a.insecure_print_plaintext {
        warn("printing the plaintext on stdout (--insecure-print-plaintext)");
        let b64 = Zeroizing::new(B64.encode(plaintext.expose_secret()));
        doc["plaintext_base64"] = json!(b64.as_str());
        Some(b64)
    } else {
        None
    };
    let result = p.emit(&doc, || {
        let mut out = String::new();
        if let Some(path) = &a.out {
            let _ = writeln!(
                out,
                "wrote {} bytes of plaintext to {} (mode 0600)",
                plaintext.len(),
                path.display()
            );
        }
        if let Some(b64) = &printed {
            let _ = writeln!(out, "plaintext:       {}", b64.as_str());
        }
        session_human(&mut out, &session);
        out
    });
    if let Some(Value::String(s)) = doc.get_mut("plaintext_base64") {
        zeroize::Zeroize::zeroize(s);
    }
    result
}

/// The kmsd keyring the evidence arguments ask for: attested with their source (opened
/// before any network call), or with --insecure-plaintext-release not.
fn keyring_source(a: &EvidenceArgs) -> Result<Option<Box<dyn EvidenceSource>>, Error> {
    if a.insecure_plaintext_release {
        warn("--insecure-plaintext-release: data keys cross the connection unsealed (only keys with \"attestation\": \"none\" release them)");
        Ok(None)
    } else {
        evidence_source(a).map(Some)
    }
}

fn keyring(client: Client, key: &str, source: Option<Box<dyn EvidenceSource>>) -> KmsdKeyring {
    match source {
        Some(source) => KmsdKeyring::attested(client, key, source),
        None => KmsdKeyring::insecure_plaintext_release(client, key),
    }
}

fn message_json(header: &kms_envelope::Header) -> Value {
    let keys: Vec<Value> = header
        .encrypted_data_keys()
        .iter()
        .map(|k| json!({"provider": k.provider_id, "info": String::from_utf8_lossy(&k.provider_info)}))
        .collect();
    json!({
        "suite": format!("0x{:04X}", header.suite().id()),
        "message_id": hex::encode(header.message_id()),
        "frame_length": header.frame_length(),
        "wrapped_keys": keys,
    })
}

async fn encrypt(c: &Connection, p: &Printer, a: &EncryptArgs) -> Result<(), Error> {
    let context: EncryptionContext = pairs_to_map(&a.context, "--context")?.into();
    files::check_outputs(&[&a.out], a.force)?;
    let mut input = std::fs::File::open(&a.input).map_err(|e| Error::file("read", &a.input, e))?;
    let meta = input.metadata().map_err(|e| Error::file("read", &a.input, e))?;
    // A length only for regular files (a pipe's is 0): it lets the cache count bytes.
    let declared = meta.is_file().then_some(meta.len());
    let source = keyring_source(&a.evidence)?;
    let client = connect(c).await?;
    let envelope = Envelope::new(keyring(client, &a.key, source))
        .with_suite(a.suite)
        .and_then(|e| e.with_frame_length(a.frame_length))
        .map_err(Error::usage)?;
    let mut out = files::Output::create(&a.out, false, a.force)?;
    let file = out.file().try_clone().map_err(|e| out.error("write", e))?;
    let mut writer = envelope
        .encrypting_writer(std::io::BufWriter::with_capacity(1 << 20, file), &context, declared)
        .await?;
    let len = std::io::copy(&mut input, &mut writer)
        .map_err(|e| Error::local(format!("cannot encrypt {}: {e}", a.input.display())))?;
    writer.finish()?.flush().map_err(|e| out.error("write", e))?;
    out.publish()?;
    let size = std::fs::metadata(&a.out).map(|m| m.len()).unwrap_or(0);
    let header = kms_envelope::parse_header(
        &files::read_prefix(&a.out, envelope.limits().max_header_len)?,
        envelope.limits(),
    )?
    .0;
    let mut doc = message_json(&header);
    doc["in_bytes"] = json!(len);
    doc["out_bytes"] = json!(size);
    doc["out_file"] = json!(a.out);
    p.emit(&doc, || {
        let mut text = String::new();
        let _ = writeln!(text, "encrypted {len} bytes into {} ({size} bytes)", a.out.display());
        let _ = writeln!(text, "suite:           {}", header.suite());
        for k in header.encrypted_data_keys() {
            let _ = writeln!(
                text,
                "wrapped key:     {} {}",
                k.provider_id,
                String::from_utf8_lossy(&k.provider_info)
            );
        }
        text
    })
}

async fn decrypt_message(
    c: &Connection,
    p: &Printer,
    a: &DecryptArgs,
    input: &std::path::Path,
    context: EncryptionContext,
) -> Result<(), Error> {
    let Some(out_path) = &a.out else {
        return Err(Error::usage(
            "decrypt --in writes the plaintext to --out FILE (it is not printed)",
        ));
    };
    let key = a.key.as_deref().ok_or_else(|| {
        Error::usage("decrypt --in needs --key KEY: the key (id or name) the message's data key must be under")
    })?;
    let file = std::fs::File::open(input).map_err(|e| Error::file("read", input, e))?;
    let source = keyring_source(&a.evidence)?;
    let client = connect(c).await?;
    // Streaming a signed message releases frames before its signature is checked; here they go
    // only to a file that is published once the whole message verified.
    let envelope = Envelope::new(keyring(client, key, source)).danger_stream_unverified_signed_frames();
    let mut reader = envelope
        .decrypting_reader(std::io::BufReader::with_capacity(1 << 20, file), &context)
        .await?;
    let mut out = files::Output::create(out_path, true, a.force)?;
    let mut plain =
        std::io::BufWriter::with_capacity(1 << 20, out.file().try_clone().map_err(|e| out.error("write", e))?);
    let bytes = std::io::copy(&mut reader, &mut plain).map_err(|e| {
        if e.get_ref().is_some_and(|inner| inner.is::<kms_envelope::Error>()) {
            match e.into_inner().map(|inner| inner.downcast::<kms_envelope::Error>()) {
                Some(Ok(envelope)) => Error::from(*envelope),
                _ => Error::local(format!("cannot decrypt {}", input.display())),
            }
        } else {
            Error::local(format!("cannot decrypt {}: {e}", input.display()))
        }
    })?;
    plain.flush().map_err(|e| out.error("write", e))?;
    drop(plain);
    out.publish()?;
    let mut doc = message_json(reader.header());
    doc["bytes"] = json!(bytes);
    doc["out_file"] = json!(out_path);
    doc["context"] = json!(reader.header().context().pairs());
    p.emit(&doc, || {
        format!(
            "wrote {bytes} bytes of plaintext to {} (mode 0600)\nsuite:           {}\n",
            out_path.display(),
            reader.header().suite()
        )
    })
}

async fn enroll(c: &Connection, p: &Printer, a: &EnrollArgs) -> Result<(), Error> {
    files::check_outputs(&[&a.ak_out, &a.request_out], a.force)?;
    let mut options = TpmEnrollOptions::new(a.tcti.clone());
    options.ak_scheme = a.ak_scheme.into();
    options.ek_kind = a.ek.into();
    for path in &a.ek_intermediates {
        options
            .ek_intermediates
            .extend(files::read_certificates(path, "EK intermediate certificates")?);
    }
    let client = connect(c).await?;
    let pending = client.enroll_tpm(&options).await?;
    // The AK first: a request whose AK was lost enrols a machine that can never attest.
    files::write_output(&a.ak_out, encode_ak(&pending.ak)?.as_bytes(), true, a.force)?;
    files::write_output(&a.request_out, pending.request.to_json().as_bytes(), true, a.force)?;
    let r = &pending.request;
    let doc = json!({
        "enrollment_id": r.enrollment_id,
        "ak_name": r.ak_name,
        "ek_digest": r.ek_digest,
        "expires_unix_ms": pending.expires_unix_ms,
        "ak_file": a.ak_out,
        "request_file": a.request_out,
    });
    p.emit(&doc, || {
        let mut out = String::new();
        let _ = writeln!(out, "enrollment id:   {}", r.enrollment_id);
        let _ = writeln!(out, "EK digest:       {}", r.ek_digest);
        let _ = writeln!(out, "AK name:         {}", r.ak_name);
        let _ = writeln!(
            out,
            "AK written to:   {} (keep it: only this AK's quotes are accepted for this machine)",
            a.ak_out.display()
        );
        let _ = writeln!(out, "request written: {}", a.request_out.display());
        let _ = writeln!(
            out,
            "next: an admin submits the request with EnrollHardware (country, site, operator) before {}",
            time(pending.expires_unix_ms)
        );
        out
    })
}
