//! `swtpm-lab`: a manufactured software TPM for demos, the same fixture the end-to-end tests
//! use (`kms_testkit::swtpm`): EK certificates from a fresh local CA, the SHA-256 PCR bank, swtpm
//! serving on free loopback ports. Prints shell assignments, then keeps the TPM running until
//! standard input closes or it gets SIGTERM/SIGINT, and removes everything.
//!
//! ```sh
//! coproc LAB { swtpm-lab; }; eval "$(head -n 3 <&"${LAB[0]}")"   # TCTI, TPM2TOOLS_TCTI, EK_CA_BUNDLE
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};

use kms_testkit::swtpm::Swtpm;
use tokio::signal::unix::{signal, SignalKind};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let tpm = Swtpm::start();
    let mut out = std::io::stdout().lock();
    writeln!(out, "TCTI='{}'", tpm.tcti()).unwrap();
    writeln!(out, "TPM2TOOLS_TCTI='{}'", tpm.tpm2_tools_tcti()).unwrap();
    writeln!(out, "EK_CA_BUNDLE='{}'", tpm.ca_bundle_path().display()).unwrap();
    out.flush().unwrap();
    drop(out);
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 256];
        let mut stdin = std::io::stdin();
        while matches!(stdin.read(&mut buf), Ok(n) if n > 0) {}
        let _ = closed_tx.send(());
    });
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
        _ = closed_rx => {}
    }
    drop(tpm);
}
