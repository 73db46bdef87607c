//! Local files: whole-file inputs, and outputs created with their final mode from the start
//! (0600 for secrets, so their contents are never readable by others, not even for a moment).
//! An output either never replaces a file ([`create_new`]) or is written beside its path and
//! published only once complete ([`Output`]). Certificate files are DER or PEM
//! ([`read_certificates`]). Every failure names the file; none shows its contents.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};

use base64::Engine as _;

use super::{Failure, B64};

/// The mode of secret outputs (keys, plaintext).
pub const SECRET_MODE: u32 = 0o600;
/// The mode of other outputs (before the umask).
pub const PUBLIC_MODE: u32 = 0o644;

fn mode(secret: bool) -> u32 {
    if secret {
        SECRET_MODE
    } else {
        PUBLIC_MODE
    }
}

/// Reads a whole file.
pub fn read(path: &Path) -> Result<Vec<u8>, Failure> {
    fs::read(path).map_err(|e| Failure::file("read", path, e))
}

/// Reads a whole text file.
pub fn read_text(path: &Path) -> Result<String, Failure> {
    fs::read_to_string(path).map_err(|e| Failure::file("read", path, e))
}

/// At most the first `n` bytes of a file.
pub fn read_prefix(path: &Path, n: usize) -> Result<Vec<u8>, Failure> {
    let mut out = Vec::new();
    File::open(path)
        .and_then(|f| f.take(n as u64).read_to_end(&mut out))
        .map_err(|e| Failure::file("read", path, e))?;
    Ok(out)
}

/// The certificates (DER) in a certificate file, `what` (e.g. `EK intermediate certificates`)
/// naming it in errors: one DER certificate, or every PEM `CERTIFICATE` block (at least one;
/// text outside the blocks is ignored). Anything else is refused: a file that is neither, a DER
/// certificate whose length is not the file's, a block that does not end or is not base64.
pub fn read_certificates(path: &Path, what: &str) -> Result<Vec<Vec<u8>>, Failure> {
    certificates(&read(path)?).map_err(|e| Failure::file(&format!("use the {what}"), path, e))
}

/// The one certificate (DER or PEM, as [`read_certificates`] reads them) in a file that must hold
/// exactly one, e.g. a VCEK.
pub fn read_certificate(path: &Path, what: &str) -> Result<Vec<u8>, Failure> {
    let mut certs = read_certificates(path, what)?;
    match certs.len() {
        1 => Ok(certs.remove(0)),
        n => Err(Failure::file(
            &format!("use the {what}"),
            path,
            format!("it holds {n} certificates; give the {what} alone"),
        )),
    }
}

const PEM_BEGIN: &str = "-----BEGIN CERTIFICATE-----";
const PEM_END: &str = "-----END CERTIFICATE-----";

fn certificates(bytes: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    if bytes.first() == Some(&0x30) {
        check_der(bytes)?;
        return Ok(vec![bytes.to_vec()]);
    }
    const NEITHER: &str = "neither a DER certificate nor PEM with a CERTIFICATE block";
    let text = std::str::from_utf8(bytes).map_err(|_| NEITHER.to_owned())?;
    let mut ders = Vec::new();
    let mut body: Option<String> = None;
    for (i, line) in text.lines().map(str::trim).enumerate() {
        match (line, body.as_mut()) {
            (PEM_BEGIN, None) => body = Some(String::new()),
            (PEM_BEGIN, Some(_)) => return Err(format!("line {}: a CERTIFICATE block begins inside another", i + 1)),
            (PEM_END, None) => return Err(format!("line {}: a CERTIFICATE block ends that did not begin", i + 1)),
            (PEM_END, Some(b64)) => {
                let n = ders.len() + 1;
                let der = B64
                    .decode(b64.as_bytes())
                    .map_err(|e| format!("PEM certificate {n}: not base64: {e}"))?;
                check_der(&der).map_err(|e| format!("PEM certificate {n}: {e}"))?;
                ders.push(der);
                body = None;
            }
            (_, Some(b64)) => b64.push_str(line),
            (_, None) => {}
        }
    }
    if body.is_some() {
        return Err("the last CERTIFICATE block does not end (is the file cut short?)".into());
    }
    if ders.is_empty() {
        return Err(NEITHER.into());
    }
    Ok(ders)
}

/// Refuses bytes that are not one DER SEQUENCE, as long as they are (a certificate is one).
fn check_der(der: &[u8]) -> Result<(), String> {
    let len = match der {
        [0x30, n, ..] if *n < 0x80 => Some(2 + usize::from(*n)),
        [0x30, n, rest @ ..] if (0x81..=0x84).contains(n) => {
            let octets = usize::from(n & 0x7f);
            rest.get(..octets)
                .map(|b| 2 + octets + b.iter().fold(0usize, |len, b| (len << 8) | usize::from(*b)))
        }
        _ => None,
    };
    match len {
        Some(len) if len == der.len() => Ok(()),
        Some(len) => Err(format!("a DER certificate of {len} bytes, in {} bytes", der.len())),
        None => Err("not a DER certificate".into()),
    }
}

/// Creates `path` with `contents`, refusing to replace anything there (a file, a link, a
/// device). `secret` files are created with mode 0600.
pub fn create_new(path: &Path, contents: &[u8], secret: bool) -> Result<(), Failure> {
    let mut f = open_new(path, mode(secret)).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            Failure::local(format!("{} exists; refusing to overwrite it", path.display()))
        } else {
            Failure::file("create", path, e)
        }
    })?;
    write_all_synced(&mut f, path, contents)
}

/// Writes `contents` to `path`, replacing what is there: for outputs a command always replaces
/// (`kmsctl data … --out FILE`). A regular file, or nothing, is replaced through an [`Output`]: a
/// new file with the final mode (`secret`: 0600), renamed over the old one once complete, so a
/// replaced file never keeps a wider mode and a crash leaves the old file or the new one, never
/// half of one. A device or a pipe that is there (`/dev/null`, a FIFO, `/dev/stdout`) cannot be
/// replaced and is written as it is. A directory or a symbolic link is refused.
pub fn replace(path: &Path, contents: &[u8], secret: bool) -> Result<(), Failure> {
    match fs::metadata(path) {
        Ok(m) if !m.is_file() && !m.is_dir() => {
            let mut f = OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(|e| Failure::file("open", path, e))?;
            // Not synced: a pipe or a terminal cannot be (EINVAL), and there is no file to keep.
            f.write_all(contents)
                .and_then(|()| f.flush())
                .map_err(|e| Failure::file("write", path, e))
        }
        _ => write_output(path, contents, secret, true),
    }
}

/// Whether `path` names standard output: `-`, or the file stdout is (`/dev/stdout`,
/// `/dev/fd/1`, or the terminal or file it goes to: the same device and inode).
pub fn is_stdout(path: &Path) -> bool {
    path.as_os_str() == "-" || is_stdout_file(path)
}

#[cfg(unix)]
fn is_stdout_file(path: &Path) -> bool {
    use std::os::fd::AsFd as _;
    use std::os::unix::fs::MetadataExt as _;
    let Ok(target) = fs::metadata(path) else {
        return false;
    };
    let Ok(stdout) = std::io::stdout().as_fd().try_clone_to_owned() else {
        return false;
    };
    File::from(stdout)
        .metadata()
        .is_ok_and(|out| (out.dev(), out.ino()) == (target.dev(), target.ino()))
}

#[cfg(not(unix))]
fn is_stdout_file(_path: &Path) -> bool {
    false
}

fn write_all_synced(f: &mut File, path: &Path, contents: &[u8]) -> Result<(), Failure> {
    f.write_all(contents).map_err(|e| Failure::file("write", path, e))?;
    f.sync_all().map_err(|e| Failure::file("write", path, e))
}

/// Checks, before anything is done, that the outputs can be written: distinct, in existing
/// directories, and (unless `force`) not there yet. Writing checks again; this only avoids doing
/// the work and then failing at the end.
pub fn check_outputs(paths: &[&Path], force: bool) -> Result<(), Failure> {
    for (i, path) in paths.iter().enumerate() {
        if paths[..i].iter().any(|p| p == path) {
            return Err(Failure::usage(format!("{} is given for two outputs", path.display())));
        }
        if fs::symlink_metadata(path).is_ok() && !force {
            return Err(exists(path));
        }
        let parent = parent(path);
        if !parent.is_dir() {
            return Err(Failure::local(format!(
                "cannot write {}: {} is not a directory",
                path.display(),
                parent.display()
            )));
        }
    }
    Ok(())
}

fn exists(path: &Path) -> Failure {
    Failure::local(format!(
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

/// Writes `contents` to `path` through an [`Output`]: a new file, or with `force` replacing one.
pub fn write_output(path: &Path, contents: &[u8], secret: bool, force: bool) -> Result<(), Failure> {
    let mut out = Output::create(path, secret, force)?;
    out.file().write_all(contents).map_err(|e| out.error("write", e))?;
    out.publish()
}

/// An output file being written: a new file beside `path`, synced and then published as `path`
/// (linked, so never replacing a file; with `force` renamed over it). So a replaced secret file
/// never has another mode, a reader never sees half a file, and an output that is dropped
/// unpublished (a failed write, a message that did not verify) leaves nothing. `secret` files
/// get mode 0600, others 0644. Only regular files are replaced.
#[derive(Debug)]
pub struct Output {
    path: PathBuf,
    tmp: PathBuf,
    file: File,
    force: bool,
    published: bool,
}

impl Output {
    /// Starts the output `path`: refused if something other than a regular file is there, or
    /// (without `force`) anything.
    pub fn create(path: &Path, secret: bool, force: bool) -> Result<Self, Failure> {
        match fs::symlink_metadata(path) {
            // Renamed over, a link would be replaced by a file instead of its target written.
            Ok(m) if m.file_type().is_symlink() => {
                return Err(Failure::local(format!(
                    "{} is a symbolic link; refusing to replace it (name the file itself)",
                    path.display()
                )))
            }
            // Never renamed over a device, pipe or directory (`--force` would replace /dev/null).
            Ok(m) if !m.is_file() => {
                return Err(Failure::local(format!(
                    "{} exists and is not a regular file",
                    path.display()
                )))
            }
            Ok(_) if !force => return Err(exists(path)),
            _ => {}
        }
        let name = path
            .file_name()
            .ok_or_else(|| Failure::local(format!("{} is not a file name", path.display())))?;
        let suffix = hex::encode(kms_core::random_array::<6>().map_err(|e| Failure::local(format!("random: {e}")))?);
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".{suffix}.tmp"));
        let tmp = parent(path).join(tmp_name);
        // Named by the output's path: the temporary name means nothing to the user.
        let file = open_new(&tmp, mode(secret)).map_err(|e| Failure::file("create", path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            tmp,
            file,
            force,
            published: false,
        })
    }

    /// The file to write.
    pub fn file(&mut self) -> &mut File {
        &mut self.file
    }

    /// An error of `action` on the output, naming its path.
    pub fn error(&self, action: &str, e: impl fmt::Display) -> Failure {
        Failure::file(action, &self.path, e)
    }

    /// Syncs and publishes the file as its path.
    pub fn publish(mut self) -> Result<(), Failure> {
        self.file
            .sync_all()
            .map_err(|e| Failure::file("write", &self.path, e))?;
        if self.force {
            fs::rename(&self.tmp, &self.path).map_err(|e| Failure::file("replace", &self.path, e))?;
        } else {
            fs::hard_link(&self.tmp, &self.path).map_err(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    exists(&self.path)
                } else {
                    Failure::file("create", &self.path, e)
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

fn open_new(path: &Path, mode: u32) -> std::io::Result<File> {
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
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::cli::exit;

    #[cfg(unix)]
    fn mode_of(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt as _;
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn new_files_are_never_overwritten_and_secrets_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.json");
        create_new(&path, b"secret", true).unwrap();
        let e = create_new(&path, b"other", true).unwrap_err();
        assert_eq!(e.exit_code(), exit::LOCAL);
        assert_eq!(
            e.to_string(),
            format!("{} exists; refusing to overwrite it", path.display())
        );
        assert_eq!(fs::read(&path).unwrap(), b"secret");
        #[cfg(unix)]
        assert_eq!(mode_of(&path), 0o600);
        #[cfg(unix)]
        {
            // Not a device either, nor through a link.
            assert!(create_new(Path::new("/dev/null"), b"x", true).is_err());
            let link = dir.path().join("link");
            std::os::unix::fs::symlink(dir.path().join("target"), &link).unwrap();
            assert!(create_new(&link, b"x", true).is_err());
            assert!(!dir.path().join("target").exists());
        }
    }

    #[test]
    fn outputs_are_new_and_secrets_private() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key");
        write_output(&key, b"secret", true, false).unwrap();
        let e = write_output(&key, b"other", true, false).unwrap_err();
        assert!(
            e.to_string().contains("refusing to overwrite it (--force replaces it)"),
            "{e}"
        );
        assert_eq!(e.exit_code(), exit::LOCAL);
        assert_eq!(fs::read(&key).unwrap(), b"secret");
        #[cfg(unix)]
        assert_eq!(mode_of(&key), 0o600);

        let blob = dir.path().join("blob");
        write_output(&blob, b"blob", false, false).unwrap();
        #[cfg(unix)]
        assert_eq!(mode_of(&blob) & 0o133, 0, "at most 0644 (the umask may clear more)");
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
        assert_eq!(mode_of(&key), 0o600, "a replaced secret is not left world-readable");
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary file is left"
        );
    }

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
    fn only_regular_files_are_replaced() {
        let e = Output::create(Path::new("/dev/null"), true, true).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        assert!(!fs::symlink_metadata("/dev/null").unwrap().is_file());
        let dir = tempfile::tempdir().unwrap();
        let e = Output::create(dir.path(), true, true).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
    }

    #[test]
    fn replace_publishes_a_new_file_with_the_final_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        replace(&path, b"one", true).unwrap();
        #[cfg(unix)]
        assert_eq!(mode_of(&path), 0o600);
        // An existing file that others may read is replaced by a private one, not written into.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        }
        let before = File::open(&path).unwrap();
        replace(&path, b"two", true).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        #[cfg(unix)]
        assert_eq!(mode_of(&path), 0o600, "a replaced secret gets mode 0600");
        let mut old = String::new();
        std::io::Read::read_to_string(&mut &before, &mut old).unwrap();
        assert_eq!(old, "one", "the old file was not written into: it was replaced");
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary file is left"
        );

        assert!(replace(&dir.path().join("no/such/dir"), b"x", false).is_err());
        let e = replace(dir.path(), b"x", false).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        #[cfg(unix)]
        {
            // A device is written as it is (it cannot be replaced); a link is not followed.
            replace(Path::new("/dev/null"), b"discarded", true).unwrap();
            assert!(!fs::symlink_metadata("/dev/null").unwrap().is_file());
            let link = dir.path().join("link");
            std::os::unix::fs::symlink(&path, &link).unwrap();
            let e = replace(&link, b"x", true).unwrap_err();
            assert!(e.to_string().contains("is a symbolic link"), "{e}");
            assert_eq!(fs::read(&path).unwrap(), b"two");
        }
    }

    #[test]
    fn stdout_is_a_dash_or_the_file_stdout_is() {
        assert!(is_stdout(Path::new("-")));
        assert!(!is_stdout(Path::new("./-")));
        let dir = tempfile::tempdir().unwrap();
        assert!(!is_stdout(&dir.path().join("out")));
        assert!(!is_stdout(dir.path()));
    }

    #[test]
    fn certificates_are_der_or_pem_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, contents: &[u8]| {
            let path = dir.path().join(name);
            fs::write(&path, contents).unwrap();
            path
        };
        let der = [0x30, 0x03, 1, 2, 3];
        let long: Vec<u8> = [&[0x30, 0x81, 0x80][..], &[7; 0x80]].concat();
        assert_eq!(read_certificate(&file("c.der", &der), "VCEK").unwrap(), der);
        assert_eq!(
            read_certificates(&file("l.der", &long), "x").unwrap(),
            vec![long.clone()]
        );
        let pem = format!(
            "Bag Attributes: ignored\n{PEM_BEGIN}\nMAMBAgM=\n{PEM_END}\n\n  {PEM_BEGIN}\n{}\n{}\n  {PEM_END}  \n",
            &B64.encode(&long)[..64],
            &B64.encode(&long)[64..]
        );
        let two = file("chain.pem", pem.as_bytes());
        assert_eq!(read_certificates(&two, "chain").unwrap(), vec![der.to_vec(), long]);
        let e = read_certificate(&two, "EK certificate").unwrap_err();
        assert_eq!(e.exit_code(), exit::LOCAL);
        assert_eq!(
            e.to_string(),
            format!(
                "cannot use the EK certificate {}: it holds 2 certificates; give the EK certificate alone",
                two.display()
            )
        );

        for (name, contents, why) in [
            ("empty", &b""[..], "neither a DER certificate nor PEM"),
            ("text", b"nothing", "neither a DER certificate nor PEM"),
            ("binary", &[0xff, 0x30, 0], "neither a DER certificate nor PEM"),
            (
                "trailing.der",
                &[0x30, 0x03, 1, 2, 3, 0x0a],
                "a DER certificate of 5 bytes, in 6 bytes",
            ),
            ("cut.der", &[0x30, 0x03, 1], "a DER certificate of 5 bytes, in 3 bytes"),
            ("cut.pem", b"-----BEGIN CERTIFICATE-----\nMAMBAgM=\n", "does not end"),
            (
                "end.pem",
                b"-----END CERTIFICATE-----\n",
                "line 1: a CERTIFICATE block ends",
            ),
            (
                "nested.pem",
                b"-----BEGIN CERTIFICATE-----\n-----BEGIN CERTIFICATE-----\n",
                "line 2: a CERTIFICATE block begins inside another",
            ),
            (
                "b64.pem",
                b"-----BEGIN CERTIFICATE-----\nMA!!\n-----END CERTIFICATE-----\n",
                "not base64",
            ),
            (
                "notder.pem",
                b"-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n",
                "PEM certificate 1: not a DER certificate",
            ),
        ] {
            let path = file(name, contents);
            let e = read_certificates(&path, "VCEK/VLEK certificate").unwrap_err();
            assert_eq!(e.exit_code(), exit::LOCAL, "{name}");
            let prefix = format!("cannot use the VCEK/VLEK certificate {}: ", path.display());
            assert!(
                e.to_string().starts_with(&prefix) && e.to_string().contains(why),
                "{name}: {e}"
            );
        }
        let e = read_certificates(&dir.path().join("missing.pem"), "x").unwrap_err();
        assert!(e.to_string().starts_with("cannot read "), "{e}");
    }

    #[test]
    fn outputs_are_checked_before_work() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        check_outputs(&[&a, &b], false).unwrap();
        assert_eq!(check_outputs(&[&a, &a], false).unwrap_err().exit_code(), exit::USAGE);
        fs::write(&a, b"x").unwrap();
        assert!(check_outputs(&[&a, &b], false).is_err());
        check_outputs(&[&a, &b], true).unwrap();
        let nowhere = dir.path().join("missing/dir/out");
        assert!(check_outputs(&[&nowhere], true)
            .unwrap_err()
            .to_string()
            .contains("not a directory"));
        assert_eq!(read_prefix(&a, 10).unwrap(), b"x");
        assert!(read(&b).unwrap_err().to_string().starts_with("cannot read "));
    }
}
