//! `kms-agent`: the workload side of attested key release, and the machine side of TPM
//! enrolment. This file only parses the command line, runs the chosen command on a small runtime
//! and turns the outcome into an exit code; the work happens in the library (`kms_agent`) and the
//! modules. It must never print a secret unless an --insecure-print-* flag asks for it, and never
//! exit with a code other than those documented in `kms-agent --help` (see `error::exit`).

mod cli;
mod commands;
mod error;
mod files;
mod output;

use std::process::ExitCode;

use clap::Parser as _;

use crate::cli::Cli;
use crate::error::Error;
use crate::output::Printer;

fn main() -> ExitCode {
    // clap exits by itself: 0 for --help/--version, 2 for usage errors.
    let cli = Cli::parse();
    let printer = Printer::new(cli.output);
    let outcome = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::local(format!("cannot start the async runtime: {e}")))
        .and_then(|rt| rt.block_on(commands::run(&cli, &printer)));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            printer.error(&e);
            ExitCode::from(e.exit_code())
        }
    }
}
