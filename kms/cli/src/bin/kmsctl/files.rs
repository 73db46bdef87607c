//! Local files: the admin key file, admins' public files, inputs and outputs. Every failure names
//! the file and maps to exit code 4. It must never print or log the contents of a secret file,
//! and never overwrite a key file.

use std::fs::{self, File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use kms_core::keyfile::{AdminKeyFile, AdminPublic};
use zeroize::Zeroizing;

use crate::error::Error;
use crate::output::B64;

/// Loads the admin key file named by --admin-key.
pub(crate) fn admin_key(path: Option<&Path>) -> Result<AdminKeyFile, Error> {
    let path =
        path.ok_or_else(|| Error::usage("this command is signed: pass --admin-key FILE (or KMSCTL_ADMIN_KEY), or an HSM credential (--hsm-module, --hsm-token, --hsm-pin, --admin-pub)"))?;
    warn_if_readable_by_others(path);
    let text = Zeroizing::new(fs::read_to_string(path).map_err(|e| Error::file("read the admin key file", path, e))?);
    AdminKeyFile::decode(&text).map_err(|e| Error::file("use the admin key file", path, e))
}

/// Loads an admin's public file (as `kmsctl admin keygen` writes it) and checks its keys.
pub(crate) fn admin_public(path: &Path) -> Result<AdminPublic, Error> {
    let text = fs::read_to_string(path).map_err(|e| Error::file("read", path, e))?;
    let public: AdminPublic =
        serde_json::from_str(&text).map_err(|e| Error::file("parse the admin public file", path, e))?;
    kms_core::ids::AdminId::parse(&public.admin_id).map_err(|e| Error::file("use", path, e))?;
    kms_core::jurisdiction::Country::parse(&public.country).map_err(|e| Error::file("use", path, e))?;
    public.signing_key().map_err(|e| Error::file("use", path, e))?;
    public.encryption_key().map_err(|e| Error::file("use", path, e))?;
    Ok(public)
}

/// Reads a whole file.
pub(crate) fn read(path: &Path) -> Result<Vec<u8>, Error> {
    fs::read(path).map_err(|e| Error::file("read", path, e))
}

/// Reads a whole text file.
pub(crate) fn read_text(path: &Path) -> Result<String, Error> {
    fs::read_to_string(path).map_err(|e| Error::file("read", path, e))
}

/// The DER certificates in `bytes`: every PEM `CERTIFICATE` block, or `bytes` itself if it is
/// not PEM.
pub(crate) fn certificates(path: &Path, bytes: Vec<u8>) -> Result<Vec<Vec<u8>>, Error> {
    let Ok(text) = std::str::from_utf8(&bytes) else {
        return Ok(vec![bytes]);
    };
    if !text.contains("-----BEGIN") {
        return Ok(vec![bytes]);
    }
    let mut ders = Vec::new();
    let mut body: Option<String> = None;
    for line in text.lines().map(str::trim) {
        if line == "-----BEGIN CERTIFICATE-----" {
            body = Some(String::new());
        } else if line == "-----END CERTIFICATE-----" {
            let b64 = body.take().unwrap_or_default();
            let der = B64
                .decode(b64.as_bytes())
                .map_err(|e| Error::file("decode the PEM certificate in", path, e))?;
            ders.push(der);
        } else if let Some(b) = body.as_mut() {
            b.push_str(line);
        }
    }
    if ders.is_empty() {
        return Err(Error::local(format!("{}: no PEM CERTIFICATE block", path.display())));
    }
    Ok(ders)
}

/// The single certificate (DER or PEM) in a file, e.g. a VCEK/VLEK.
pub(crate) fn one_certificate(path: &Path, what: &str) -> Result<Vec<u8>, Error> {
    let mut certs = certificates(path, read(path)?)?;
    match (certs.pop(), certs.is_empty()) {
        (Some(cert), true) => Ok(cert),
        _ => Err(Error::local(format!(
            "{}: holds {} certificates, expected the {what} alone",
            path.display(),
            certs.len() + 1
        ))),
    }
}

/// Reads a whole file, or standard input when `path` is `-`.
pub(crate) fn read_or_stdin(path: &Path) -> Result<Vec<u8>, Error> {
    if path.as_os_str() != "-" {
        return read(path);
    }
    let mut buf = Vec::new();
    std::io::stdin()
        .read_to_end(&mut buf)
        .map_err(|e| Error::local(format!("cannot read standard input: {e}")))?;
    Ok(buf)
}

/// `FILE.pub.json` next to a key file `FILE`.
pub(crate) fn public_path(key_file: &Path) -> PathBuf {
    let mut s = key_file.as_os_str().to_owned();
    s.push(".pub.json");
    PathBuf::from(s)
}

/// Creates `path` with `contents`, refusing to replace an existing file. `secret` files are
/// created with mode 0600 from the start, so the contents are never readable by others.
pub(crate) fn create_new(path: &Path, contents: &[u8], secret: bool) -> Result<(), Error> {
    let mut opts = OpenOptions::new();
    opts.write(true).create_new(true);
    set_mode(&mut opts, if secret { 0o600 } else { 0o644 });
    let mut f = opts.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            Error::local(format!("{} exists; refusing to overwrite it", path.display()))
        } else {
            Error::file("create", path, e)
        }
    })?;
    write_all_synced(&mut f, path, contents)
}

/// Writes `contents` to `path`, replacing it. `secret` (plaintext) outputs get mode 0600.
pub(crate) fn write(path: &Path, contents: &[u8], secret: bool) -> Result<(), Error> {
    let mut opts = OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    set_mode(&mut opts, if secret { 0o600 } else { 0o644 });
    let mut f = opts.open(path).map_err(|e| Error::file("create", path, e))?;
    write_all_synced(&mut f, path, contents)
}

fn write_all_synced(f: &mut File, path: &Path, contents: &[u8]) -> Result<(), Error> {
    f.write_all(contents).map_err(|e| Error::file("write", path, e))?;
    f.sync_all().map_err(|e| Error::file("write", path, e))
}

#[cfg(unix)]
fn set_mode(opts: &mut OpenOptions, mode: u32) {
    use std::os::unix::fs::OpenOptionsExt as _;
    opts.mode(mode);
}

#[cfg(not(unix))]
fn set_mode(_opts: &mut OpenOptions, _mode: u32) {}

/// Like ssh, warn about a private key that others can read; a warning rather than a refusal, so
/// key files on filesystems without Unix modes stay usable.
#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    if let Ok(meta) = fs::metadata(path) {
        if meta.permissions().mode() & 0o077 != 0 {
            eprintln!(
                "warning: {} is accessible by other users (mode {:o}); `chmod 600` it",
                path.display(),
                meta.permissions().mode() & 0o777
            );
        }
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_path: &Path) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_files_are_never_overwritten_and_secrets_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.json");
        create_new(&path, b"secret", true).unwrap();
        let e = create_new(&path, b"other", true).unwrap_err();
        assert_eq!(e.exit_code(), crate::error::exit::LOCAL);
        assert!(e.to_string().contains("refusing to overwrite"), "{e}");
        assert_eq!(fs::read(&path).unwrap(), b"secret");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        assert!(admin_key(Some(&path)).is_err());
        assert_eq!(
            admin_key(None).err().map(|e| e.exit_code()),
            Some(crate::error::exit::USAGE)
        );
    }

    #[test]
    fn public_path_appends() {
        assert_eq!(
            public_path(Path::new("dir/alice.json")),
            PathBuf::from("dir/alice.json.pub.json")
        );
    }
}
