//! Local files: inputs (AK file, blobs, intermediates) and outputs (keys, plaintext, blobs, the
//! AK and the enrolment request), through `kms_client::cli::files`: outputs never replace a file
//! unless asked to (`--force`), and secret outputs are created with mode 0600 from the start.
//! Here only what the agent alone reads: certificates. It must never print or log a secret
//! file's contents.

use std::path::Path;

pub(crate) use kms_client::cli::files::{check_outputs, read, read_prefix, read_text, write_output, Output};

use crate::error::Error;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_read_as_der_or_pem() {
        let dir = tempfile::tempdir().unwrap();
        let der = dir.path().join("c.der");
        std::fs::write(&der, [0x30, 0x03, 1, 2, 3]).unwrap();
        assert_eq!(read_certificate(&der).unwrap(), vec![0x30, 0x03, 1, 2, 3]);
        let pem = dir.path().join("c.pem");
        std::fs::write(
            &pem,
            "junk\n-----BEGIN CERTIFICATE-----\nMAMBAgM=\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        assert_eq!(read_certificate(&pem).unwrap(), vec![0x30, 0x03, 1, 2, 3]);
        std::fs::write(&pem, "nothing").unwrap();
        assert!(read_certificate(&pem).is_err());
    }
}
