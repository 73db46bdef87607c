//! `kms-agent`: the workload side of attested key release, and the machine side of TPM
//! enrolment. This file only parses the command line, runs the chosen command on a small runtime
//! and turns the outcome into an exit code; the work happens in the library (`kms_agent`) and the
//! modules. It must never print a secret unless an --insecure-print-* flag asks for it, and never
//! exit with a code other than those documented in `kms-agent --help` (see `kms_client::cli::exit`).

mod cli;
mod commands;
mod error;
mod files;

use std::process::ExitCode;

use clap::Parser as _;
use kms_client::cli::Printer;

use crate::cli::Cli;

fn main() -> ExitCode {
    // clap exits by itself: 0 for --help/--version, 2 for usage errors.
    let cli = Cli::parse();
    let printer = Printer::new("kms-agent", cli.output);
    kms_client::cli::run(&printer, commands::run(&cli, &printer))
}
