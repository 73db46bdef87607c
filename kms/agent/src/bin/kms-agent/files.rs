//! Local files: inputs (AK file, blobs, intermediates) and outputs (keys, plaintext, blobs, the
//! AK and the enrolment request). Outputs never replace a file unless asked to (`--force`), and
//! secret outputs are created with mode 0600 from the start, so their contents are never readable
//! by others, not even for a moment. It must never print or log a secret file's contents.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use crate::error::Error;

/// Reads a whole file.
pub(crate) fn read(path: &Path) -> Result<Vec<u8>, Error> {
    fs::read(path).map_err(|e| Error::file("read", path, e))
}

/// Reads a whole text file.
/// At most the first `n` bytes of a file.
pub(crate) fn read_prefix(path: &Path, n: usize) -> Result<Vec<u8>, Error> {
    use std::io::Read as _;
    let mut out = Vec::new();
    File::open(path)
        .and_then(|f| f.take(n as u64).read_to_end(&mut out))
        .map_err(|e| Error::file("read", path, e))?;
    Ok(out)
}

pub(crate) fn read_text(path: &Path) -> Result<String, Error> {
    fs::read_to_string(path).map_err(|e| Error::file("read", path, e))
}

/// A certificate file as DER: PEM (the first CERTIFICATE block) or DER as it is.
pub(crate) fn read_certificate(path: &Path) -> Result<Vec<u8>, Error> {
    let bytes = read(path)?;
    if bytes.first() == Some(&0x30) {
        return Ok(bytes);
    }
    let text = std::str::from_utf8(&bytes).map_err(|_| Error::file("use", path, "neither DER nor PEM"))?;
    let body: String = text
        .lines()
        .skip_while(|l| l.trim() != "-----BEGIN CERTIFICATE-----")
        .skip(1)
        .take_while(|l| l.trim() != "-----END CERTIFICATE-----")
        .collect();
    if body.is_empty() {
        return Err(Error::file("use", path, "no PEM CERTIFICATE block and not DER"));
    }
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(body.trim())
        .map_err(|e| Error::file("use", path, format!("bad PEM: {e}")))
}

/// Checks, before anything is done, that the outputs can be written: distinct, in existing
/// directories, and (unless `force`) not there yet. Writing checks again; this only avoids
/// attesting and then failing at the end.
pub(crate) fn check_outputs(paths: &[&Path], force: bool) -> Result<(), Error> {
    for (i, path) in paths.iter().enumerate() {
        if paths[..i].iter().any(|p| p == path) {
            return Err(Error::usage(format!("{} is given for two outputs", path.display())));
        }
        if fs::symlink_metadata(path).is_ok() && !force {
            return Err(exists(path));
        }
        let parent = parent(path);
        if !parent.is_dir() {
            return Err(Error::local(format!(
                "cannot write {}: {} is not a directory",
                path.display(),
                parent.display()
            )));
        }
    }
    Ok(())
}

fn exists(path: &Path) -> Error {
    Error::local(format!(
        "{} exists; refusing to overwrite it (--force replaces it)",
        path.display()
    ))
}

fn parent(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Writes `contents` to `path`: a new file (never replacing one), or with `force` replacing it;
/// see [`Output`].
pub(crate) fn write_output(path: &Path, contents: &[u8], secret: bool, force: bool) -> Result<(), Error> {
    let mut out = Output::create(path, secret, force)?;
    out.file().write_all(contents).map_err(|e| out.error("write", e))?;
    out.publish()
}

/// An output file being written: a new file beside `path`, synced and then published as
/// `path` (linked, so never replacing a file; with `force` renamed over it). So a replaced
/// secret file never has another mode, a reader never sees half a file, and an output that is
/// dropped unpublished (a failed write, a message that did not verify) leaves nothing. `secret`
/// files get mode 0600, others 0644.
pub(crate) struct Output {
    path: PathBuf,
    tmp: PathBuf,
    file: File,
    force: bool,
    published: bool,
}

impl Output {
    pub(crate) fn create(path: &Path, secret: bool, force: bool) -> Result<Self, Error> {
        let mode = if secret { 0o600 } else { 0o644 };
        match fs::symlink_metadata(path) {
            // Never renamed over a device, pipe or directory (`--force` would replace /dev/null).
            Ok(m) if !m.is_file() => {
                return Err(Error::local(format!(
                    "{} exists and is not a regular file",
                    path.display()
                )))
            }
            Ok(_) if !force => return Err(exists(path)),
            _ => {}
        }
        let name = path
            .file_name()
            .ok_or_else(|| Error::local(format!("{} is not a file name", path.display())))?;
        let suffix = hex::encode(kms_core::random_array::<6>().map_err(|e| Error::local(format!("random: {e}")))?);
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".{suffix}.tmp"));
        let tmp = parent(path).join(tmp_name);
        let file = create_new(&tmp, mode).map_err(|e| Error::file("create", &tmp, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            tmp,
            file,
            force,
            published: false,
        })
    }

    /// The file to write.
    pub(crate) fn file(&mut self) -> &mut File {
        &mut self.file
    }

    /// A write error, naming the output.
    pub(crate) fn error(&self, action: &str, e: impl fmt::Display) -> Error {
        Error::file(action, &self.path, e)
    }

    /// Syncs and publishes the file as its path.
    pub(crate) fn publish(mut self) -> Result<(), Error> {
        self.file.sync_all().map_err(|e| Error::file("write", &self.path, e))?;
        if self.force {
            fs::rename(&self.tmp, &self.path).map_err(|e| Error::file("replace", &self.path, e))?;
        } else {
            fs::hard_link(&self.tmp, &self.path).map_err(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    exists(&self.path)
                } else {
                    Error::file("create", &self.path, e)
                }
            })?;
            let _ = fs::remove_file(&self.tmp);
        }
        self.published = true;
        Ok(())
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        if !self.published {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

fn create_new(path: &Path, mode: u32) -> std::io::Result<File> {
    let mut opts = OpenOptions::new();
    opts.write(true).create_new(true);
    set_mode(&mut opts, mode);
    opts.open(path)
}

#[cfg(unix)]
fn set_mode(opts: &mut OpenOptions, mode: u32) {
    use std::os::unix::fs::OpenOptionsExt as _;
    opts.mode(mode);
}

#[cfg(not(unix))]
fn set_mode(_opts: &mut OpenOptions, _mode: u32) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt as _;
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn outputs_are_new_and_secrets_private() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key");
        write_output(&key, b"secret", true, false).unwrap();
        let e = write_output(&key, b"other", true, false).unwrap_err();
        assert!(e.to_string().contains("refusing to overwrite"), "{e}");
        assert_eq!(e.exit_code(), crate::error::exit::LOCAL);
        assert_eq!(fs::read(&key).unwrap(), b"secret");
        #[cfg(unix)]
        assert_eq!(mode(&key), 0o600);

        let blob = dir.path().join("blob");
        write_output(&blob, b"blob", false, false).unwrap();
        #[cfg(unix)]
        assert_eq!(mode(&blob) & 0o133, 0, "at most 0644 (the umask may clear more)");
    }

    #[test]
    fn force_replaces_with_a_private_file() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key");
        fs::write(&key, b"old").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            fs::set_permissions(&key, fs::Permissions::from_mode(0o666)).unwrap();
        }
        write_output(&key, b"new", true, true).unwrap();
        assert_eq!(fs::read(&key).unwrap(), b"new");
        #[cfg(unix)]
        assert_eq!(mode(&key), 0o600, "a replaced secret is not left world-readable");
        let leftovers: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file is left behind");
    }

    #[test]
    fn outputs_are_checked_before_work() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        check_outputs(&[&a, &b], false).unwrap();
        assert_eq!(
            check_outputs(&[&a, &a], false).unwrap_err().exit_code(),
            crate::error::exit::USAGE
        );
        fs::write(&a, b"x").unwrap();
        assert!(check_outputs(&[&a, &b], false).is_err());
        check_outputs(&[&a, &b], true).unwrap();
        let nowhere = dir.path().join("missing/dir/out");
        assert!(check_outputs(&[&nowhere], true)
            .unwrap_err()
            .to_string()
            .contains("not a directory"));
    }

    #[test]
    fn certificates_read_as_der_or_pem() {
        let dir = tempfile::tempdir().unwrap();
        let der = dir.path().join("c.der");
        fs::write(&der, [0x30, 0x03, 1, 2, 3]).unwrap();
        assert_eq!(read_certificate(&der).unwrap(), vec![0x30, 0x03, 1, 2, 3]);
        let pem = dir.path().join("c.pem");
        fs::write(
            &pem,
            "junk\n-----BEGIN CERTIFICATE-----\nMAMBAgM=\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        assert_eq!(read_certificate(&pem).unwrap(), vec![0x30, 0x03, 1, 2, 3]);
        fs::write(&pem, "nothing").unwrap();
        assert!(read_certificate(&pem).is_err());
    }
}

#[cfg(test)]
mod streamed_tests {
    use super::*;

    #[test]
    fn a_failed_write_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("plain");
        let mut o = Output::create(&out, true, false).unwrap();
        o.file().write_all(b"half").unwrap();
        drop(o);
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            0,
            "no output, no temporary file"
        );
    }

    #[cfg(unix)]
    #[test]
    fn devices_are_never_replaced() {
        let e = Output::create(Path::new("/dev/null"), false, true).err().unwrap();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        assert!(!fs::symlink_metadata("/dev/null").unwrap().is_file());
    }
}
