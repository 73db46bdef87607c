//! Local files: the admin key file, admins' public files, inputs and outputs. Every failure names
//! the file and maps to exit code 4. It must never print or log the contents of a secret file,
//! and never overwrite a key file.

use std::fs;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use kms_core::keyfile::{AdminKeyFile, AdminPublic};
use zeroize::Zeroizing;

/// Creating and writing outputs (0600 for secrets), whole-file reads and certificate files (DER
/// or PEM): kms-client's, shared with kms-agent. `write` replaces an output with a complete new
/// file (a device or pipe is written as it is); `is_stdout` tells `-` and `/dev/stdout`.
pub(crate) use kms_client::cli::files::{
    create_new, is_stdout, read, read_certificate, read_certificates, read_text, replace as write,
};

use crate::error::Error;

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

/// Reads a whole file, or standard input when `path` is `-`.
pub(crate) fn read_or_stdin(path: &Path) -> Result<Vec<u8>, Error> {
    if path.as_os_str() != "-" {
        return Ok(read(path)?);
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
        let e = Error::from(create_new(&path, b"other", true).unwrap_err());
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
