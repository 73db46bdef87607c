//! The dev seal: the root key in a file of the data directory, only with `kmsd --dev`.

use super::*;

impl Seal {
    /// Writes the dev root key file (dev seal only), before the seal record is committed. A file
    /// left from an earlier, now empty, database is moved aside, not overwritten.
    pub fn write_dev_root(&self, root: &RootKeyMaterial) -> Result<(), ApiError> {
        let dir = self
            .dev_dir
            .as_ref()
            .ok_or_else(|| ApiError::new(Reason::DevSealRefused, "the dev seal exists only in dev mode"))?;
        let path = dir.join(DEV_ROOT_FILE);
        if path.exists() {
            let aside = dir.join(format!("{DEV_ROOT_FILE}.replaced-{}", kms_core::now_unix_ms()));
            std::fs::rename(&path, &aside).map_err(|e| {
                ApiError::new(
                    Reason::DevRootWrite,
                    format!("cannot move the old dev root key aside: {e}"),
                )
            })?;
        }
        write_secret_file(
            &path,
            zeroize::Zeroizing::new(hex::encode(root.expose_secret())).as_bytes(),
        )
        .map_err(|e| ApiError::new(Reason::DevRootWrite, format!("cannot write the dev root key: {e}")))
    }

    /// Removes the dev root key file written for an init that did not commit.
    pub fn discard_dev_root(&self) {
        if let Some(dir) = &self.dev_dir {
            let _ = std::fs::remove_file(dir.join(DEV_ROOT_FILE));
        }
    }
}

pub(super) const DEV_ROOT_FILE: &str = "dev-root-key";

pub(super) fn read_dev_root(dir: &std::path::Path) -> Result<RootKeyMaterial, LoadError> {
    let path = dir.join(DEV_ROOT_FILE);
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(&path)
            .map_err(|e| LoadError::Refused(format!("cannot read {}: {e}", path.display())))?,
    );
    let mut bytes = zeroize::Zeroizing::new(
        hex::decode(text.trim()).map_err(|_| LoadError::Refused(format!("{} is corrupt", path.display())))?,
    );
    RootKeyMaterial::from_slice(&mut bytes).ok_or_else(|| LoadError::Refused(format!("{} is corrupt", path.display())))
}

/// Writes a file readable only by its owner, refusing to follow or replace an existing one.
pub fn write_secret_file(path: &std::path::Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(contents)?;
    f.sync_all()
}
