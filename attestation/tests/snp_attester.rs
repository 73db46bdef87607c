//! The SEV-SNP attester off SNP hardware: every failure is a clear error, never a panic.
#![cfg(feature = "attester")]

use std::path::Path;

use attestation::attester::snp::{SnpAttester, SnpAttesterError, SEV_GUEST_DEVICE};

#[test]
fn nonexistent_path_is_no_device_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sev-guest");
    let err = SnpAttester::open_path(&path).unwrap_err();
    match &err {
        SnpAttesterError::NoDevice { path: p } => assert_eq!(p, &path),
        other => panic!("expected NoDevice, got {other:?}"),
    }
    let message = err.to_string();
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(message.contains("not running in an SNP guest"), "{message}");
}

#[test]
fn regular_file_fails_clearly_on_report() {
    let file = tempfile::NamedTempFile::new().unwrap();
    let attester = SnpAttester::open_path(file.path()).expect("a readable regular file opens");
    let err = attester.report([7u8; 64], None).unwrap_err();
    match &err {
        SnpAttesterError::NotADevice { path } => assert_eq!(path, file.path()),
        other => panic!("expected NotADevice, got {other:?}"),
    }
    assert!(err.to_string().contains("not a character device"), "{err}");
}

#[test]
fn out_of_range_vmpl_is_refused() {
    let file = tempfile::NamedTempFile::new().unwrap();
    let attester = SnpAttester::open_path(file.path()).unwrap();
    assert!(matches!(
        attester.report([0u8; 64], Some(4)),
        Err(SnpAttesterError::InvalidVmpl(4))
    ));
}

#[test]
fn open_without_sev_guest_is_no_device() {
    if Path::new(SEV_GUEST_DEVICE).exists() {
        eprintln!("{SEV_GUEST_DEVICE} exists: this is an SNP guest, skipping");
        return;
    }
    let err = SnpAttester::open().unwrap_err();
    assert!(matches!(&err, SnpAttesterError::NoDevice { path } if path == Path::new(SEV_GUEST_DEVICE)));
    assert_eq!(
        err.to_string(),
        "no SEV-SNP guest device at /dev/sev-guest: not running in an SNP guest"
    );
}
