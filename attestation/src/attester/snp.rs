//! The workload side of SEV-SNP attestation: asks the AMD Secure Processor, through the Linux
//! SEV-SNP guest device (`/dev/sev-guest`, via the `sev` crate's guest firmware API), for an
//! attestation report over caller-chosen `REPORT_DATA`, and packages it as [`SnpEvidence`].
//!
//! The extended report is requested first: when the host supplies a certificate table, the
//! VCEK/VLEK (matching the report's signing key) and the ASK+ARK chain are taken from it by GUID.
//! When the extended request fails or carries no table, the plain report is returned without
//! certificates (the verifier uses its pinned chain and may already know the VCEK).
//!
//! The report is passed on as the exact 1184 bytes the firmware returned: it is never parsed
//! into a structure and re-encoded.
//!
//! This module must never verify evidence (that is the verifier's job), never hold or derive
//! secrets (no `get_derived_key`), never use OpenSSL, and never panic when the device is missing,
//! inaccessible or misbehaves: every failure is an [`SnpAttesterError`].

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::snp::{SnpEvidence, REPORT_LEN};

/// The SEV-SNP guest device of the Linux `sev-guest` driver.
pub const SEV_GUEST_DEVICE: &str = "/dev/sev-guest";

/// The highest VMPL a report may be requested for.
const MAX_VMPL: u32 = 3;

/// Offset of KEY_INFO in the report; bits 4:2 are SIGNING_KEY (0 = VCEK, 1 = VLEK).
const KEY_INFO_OFFSET: usize = 0x48;

/// Why no SNP evidence could be produced.
#[derive(Debug, thiserror::Error)]
pub enum SnpAttesterError {
    /// The guest device does not exist: this is not an SNP guest (or the driver is not loaded).
    #[error("no SEV-SNP guest device at {}: not running in an SNP guest", path.display())]
    NoDevice {
        /// The device path.
        path: PathBuf,
    },
    /// The guest device exists but this process may not open it.
    #[error(
        "permission denied opening the SEV-SNP guest device {}: the process needs access to it (root, or the device's group)",
        path.display()
    )]
    PermissionDenied {
        /// The device path.
        path: PathBuf,
    },
    /// Any other failure to open the device.
    #[error("cannot open the SEV-SNP guest device {}: {source}", path.display())]
    Open {
        /// The device path.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The path exists but is not a character device, so it cannot be the SNP guest device.
    #[error("{} is not a character device, so it is not an SEV-SNP guest device", path.display())]
    NotADevice {
        /// The path.
        path: PathBuf,
    },
    /// The path is a character device other than `/dev/sev-guest`; the `sev` crate only issues
    /// guest requests on `/dev/sev-guest`.
    #[error("{} is not {SEV_GUEST_DEVICE}: reports can only be requested through {SEV_GUEST_DEVICE}", path.display())]
    UnsupportedPath {
        /// The path.
        path: PathBuf,
    },
    /// The requested VMPL is out of range.
    #[error("VMPL {0} is out of range (0..={MAX_VMPL})")]
    InvalidVmpl(u32),
    /// The driver, the hypervisor or the Secure Processor refused the request.
    #[error("the SEV-SNP report request failed: {0}")]
    Firmware(String),
    /// The firmware answered with a report of the wrong size.
    #[error("the SEV-SNP firmware returned a {0}-byte report, expected {REPORT_LEN}")]
    BadReportLength(usize),
}

enum Handle {
    #[cfg(target_os = "linux")]
    Device(Mutex<sev::firmware::guest::Firmware>),
    /// Opened, but no request can be made on it: `report` returns this error.
    Unusable(fn(PathBuf) -> SnpAttesterError),
}

/// A handle on the SEV-SNP guest device.
pub struct SnpAttester {
    path: PathBuf,
    handle: Handle,
}

impl std::fmt::Debug for SnpAttester {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnpAttester")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn open_error(path: &Path, e: std::io::Error) -> SnpAttesterError {
    let path = path.to_path_buf();
    match e.kind() {
        std::io::ErrorKind::NotFound => SnpAttesterError::NoDevice { path },
        std::io::ErrorKind::PermissionDenied => SnpAttesterError::PermissionDenied { path },
        _ => SnpAttesterError::Open { path, source: e },
    }
}

#[cfg(unix)]
fn is_char_device(file: &File) -> bool {
    use std::os::unix::fs::FileTypeExt;
    file.metadata().map(|m| m.file_type().is_char_device()).unwrap_or(false)
}

#[cfg(not(unix))]
fn is_char_device(_: &File) -> bool {
    false
}

impl SnpAttester {
    /// Opens `/dev/sev-guest`.
    pub fn open() -> Result<Self, SnpAttesterError> {
        Self::open_path(SEV_GUEST_DEVICE)
    }

    /// Opens the guest device at `path` (for tests: only `/dev/sev-guest` can actually serve
    /// reports; any other path opens but `report` fails with a clear error).
    pub fn open_path(path: impl AsRef<Path>) -> Result<Self, SnpAttesterError> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|e| open_error(path, e))?;
        let handle = if !is_char_device(&file) {
            Handle::Unusable(|path| SnpAttesterError::NotADevice { path })
        } else if path != Path::new(SEV_GUEST_DEVICE) {
            Handle::Unusable(|path| SnpAttesterError::UnsupportedPath { path })
        } else {
            Self::open_device(path)?
        };
        Ok(Self {
            path: path.to_path_buf(),
            handle,
        })
    }

    #[cfg(target_os = "linux")]
    fn open_device(path: &Path) -> Result<Handle, SnpAttesterError> {
        let fw = sev::firmware::guest::Firmware::open().map_err(|e| open_error(path, e))?;
        Ok(Handle::Device(Mutex::new(fw)))
    }

    #[cfg(not(target_os = "linux"))]
    fn open_device(_: &Path) -> Result<Handle, SnpAttesterError> {
        Ok(Handle::Unusable(|path| SnpAttesterError::NoDevice { path }))
    }

    /// The path this attester was opened on.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Requests a report over `report_data` at `vmpl` (the firmware's default, 1, when `None`),
    /// with the VCEK/VLEK and ASK+ARK from the host's certificate table when it supplies them.
    pub fn report(&self, report_data: [u8; 64], vmpl: Option<u32>) -> Result<SnpEvidence, SnpAttesterError> {
        if let Some(v) = vmpl.filter(|v| *v > MAX_VMPL) {
            return Err(SnpAttesterError::InvalidVmpl(v));
        }
        match &self.handle {
            Handle::Unusable(error) => Err(error(self.path.clone())),
            #[cfg(target_os = "linux")]
            Handle::Device(fw) => {
                let mut fw = fw.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                let (report, certs) = match fw.get_ext_report(None, Some(report_data), vmpl) {
                    Ok(answer) => answer,
                    Err(ext) => match fw.get_report(None, Some(report_data), vmpl) {
                        Ok(report) => (report, None),
                        Err(plain) => {
                            return Err(SnpAttesterError::Firmware(format!("{plain} (extended report: {ext})")))
                        }
                    },
                };
                evidence(report, certs.unwrap_or_default())
            }
        }
    }
}

#[cfg(target_os = "linux")]
fn evidence(report: Vec<u8>, certs: Vec<sev::firmware::host::CertTableEntry>) -> Result<SnpEvidence, SnpAttesterError> {
    use sev::firmware::host::CertType;

    if report.len() != REPORT_LEN {
        return Err(SnpAttesterError::BadReportLength(report.len()));
    }
    let key_info = u32::from_le_bytes([
        report[KEY_INFO_OFFSET],
        report[KEY_INFO_OFFSET + 1],
        report[KEY_INFO_OFFSET + 2],
        report[KEY_INFO_OFFSET + 3],
    ]);
    let wanted = if (key_info >> 2) & 7 == 1 {
        CertType::VLEK
    } else {
        CertType::VCEK
    };
    let find = |t: &CertType| certs.iter().find(|c| &c.cert_type == t).map(|c| c.data.as_slice());

    let vek = find(&wanted).and_then(to_der);
    let chain = match (find(&CertType::ASK), find(&CertType::ARK)) {
        (Some(ask), Some(ark)) => match (to_der(ask), to_der(ark)) {
            (Some(ask), Some(ark)) => {
                let mut pem = pem_encode(&ask);
                pem.push_str(&pem_encode(&ark));
                Some(pem.into_bytes())
            }
            _ => None,
        },
        _ => None,
    };
    Ok(SnpEvidence { report, vek, chain })
}

/// A certificate from the host's table as DER: hosts store DER or PEM. Entries that are neither
/// are dropped (the verifier then works from its pinned chain).
fn to_der(data: &[u8]) -> Option<Vec<u8>> {
    // DER certificates start with a SEQUENCE; the table may pad entries with zeros.
    if data.first() == Some(&0x30) {
        return der_len(data).map(|len| data[..len].to_vec());
    }
    x509_parser::pem::Pem::iter_from_buffer(data)
        .next()
        .and_then(Result::ok)
        .filter(|p| p.label == "CERTIFICATE")
        .map(|p| p.contents)
}

/// The length of the outer DER SEQUENCE of `data` (header included), if it fits.
fn der_len(data: &[u8]) -> Option<usize> {
    let first = *data.get(1)?;
    let (header, body) = if first < 0x80 {
        (2, first as usize)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 {
            return None;
        }
        let bytes = data.get(2..2 + n)?;
        (2 + n, bytes.iter().fold(0usize, |acc, b| (acc << 8) | *b as usize))
    };
    let len = header.checked_add(body)?;
    (len <= data.len()).then_some(len)
}

fn pem_encode(der: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::with_capacity(der.len().div_ceil(3) * 4);
    for chunk in der.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | (*b as u32) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                b64.push('=');
            }
        }
    }
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_round_trips() {
        for len in 0..10usize {
            let der: Vec<u8> = (0..len * 37).map(|i| i as u8).collect();
            let pem = pem_encode(&der);
            let parsed = x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()).next();
            if der.is_empty() {
                continue;
            }
            assert_eq!(parsed.unwrap().unwrap().contents, der);
        }
    }

    #[test]
    fn der_length_strips_padding() {
        let mut data = vec![0x30, 0x82, 0x00, 0x03, 1, 2, 3];
        data.extend([0u8; 10]);
        assert_eq!(to_der(&data).unwrap(), vec![0x30, 0x82, 0x00, 0x03, 1, 2, 3]);
        assert_eq!(to_der(&[0x30, 0x05, 1]), None);
    }
}
