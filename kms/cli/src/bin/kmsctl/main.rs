//! `kmsctl`: the admin CLI of the key management service. This file only parses the command
//! line, runs the chosen command on a small runtime and turns the outcome into an exit code; the
//! work happens in the modules. It must never print secrets, and never exit with a code other
//! than those documented in `kmsctl --help` (see `error::exit`).

mod admin;
mod args;
mod audit;
mod cli;
mod client;
mod credential;
mod data;
mod error;
mod files;
mod hardware;
mod keys;
mod node;
mod output;
mod proposal;
mod seal;
mod token;
mod verify;

use std::process::ExitCode;

use clap::parser::ValueSource;
use clap::{CommandFactory as _, FromArgMatches as _};

use crate::cli::{
    AdminCommand, AdminsCommand, AuditCommand, Cli, Command, NodeCommand, QuorumCommand, RootCommand, VerifyCommand,
};
use crate::error::Error;
use crate::output::Printer;

fn main() -> ExitCode {
    // clap exits by itself: 0 for --help/--version, 2 for usage errors.
    let matches = Cli::command().get_matches();
    let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // `verify snp --ca` shares its name with the global --ca (the server's CA): only a chain
    // given on its command line counts, never KMSCTL_CA.
    if let Command::Verify(VerifyCommand::Snp(args)) = &mut cli.command {
        let source = matches
            .subcommand_matches("verify")
            .and_then(|m| m.subcommand_matches("snp"))
            .and_then(|m| m.value_source("ca"));
        if source != Some(ValueSource::CommandLine) {
            args.chain = None;
        }
    }
    let printer = Printer::new("kmsctl", cli.global.output);
    kms_client::cli::run(&printer, run(&cli, &printer))
}

async fn run(cli: &Cli, p: &Printer) -> Result<(), Error> {
    let g = &cli.global;
    match &cli.command {
        Command::Admin(AdminCommand::Keygen {
            hsm: true,
            id,
            country,
            out,
        }) => admin::keygen_hsm(g, p, id, country, out),
        Command::Admin(AdminCommand::Keygen { id, country, out, .. }) => {
            admin::keygen(p, id.clone(), country.clone(), out)
        }
        Command::Admin(AdminCommand::Fingerprint { public_files }) => admin::fingerprint(p, public_files),
        Command::Status => seal::status(g, p).await,
        Command::Init(args) => admin::init(g, p, args).await,
        Command::Unseal(args) => seal::unseal(g, p, args).await,
        Command::Seal => seal::seal(g, p).await,
        Command::Admins(AdminsCommand::Add {
            public_file,
            non_custodian,
            propose,
        }) => admin::add(g, p, public_file, *non_custodian, *propose).await,
        Command::Admins(AdminsCommand::Remove { admin_id, reason, ttl }) => {
            admin::remove(g, p, admin_id, reason, *ttl).await
        }
        Command::Proposal(command) => proposal::run(g, p, command).await,
        Command::Quorum(QuorumCommand::Set { approval_quorum, ttl }) => {
            let op = kms_proto::v1::quorum_operation::Operation::SetQuorum(kms_proto::v1::SetQuorumOp {
                approval_quorum: *approval_quorum,
            });
            proposal::propose(g, p, op, *ttl).await
        }
        Command::Root(RootCommand::Rotate {
            seal,
            threshold,
            custodians,
            ttl,
        }) => {
            let custodians: Vec<String> = custodians.iter().map(ToString::to_string).collect();
            proposal::propose(g, p, proposal::rotate_root(*seal, *threshold, &custodians)?, *ttl).await
        }
        Command::Admins(AdminsCommand::List) => admin::list(g, p).await,
        Command::Key(command) => keys::run(g, p, command).await,
        Command::Hardware(command) => hardware::run(g, p, command).await,
        Command::Token(command) => token::run(g, p, command).await,
        Command::Data(command) => data::run(g, p, command).await,
        Command::Audit(AuditCommand::Verify {
            database,
            batch,
            checkpoint_key,
            state,
            checkpoint_interval,
        }) => {
            audit::verify(
                p,
                database,
                *batch,
                checkpoint_key,
                state.as_deref(),
                *checkpoint_interval,
            )
            .await
        }
        Command::Audit(AuditCommand::CheckpointKeys) => audit::checkpoint_keys(g, p).await,
        Command::Audit(AuditCommand::Tail { database, count }) => audit::tail(p, database, *count).await,
        Command::Node(NodeCommand::Show) => node::show(g, p).await,
        Command::Verify(VerifyCommand::Snp(args)) => verify::snp(args),
        Command::Verify(VerifyCommand::Tpm(args)) => verify::tpm(args),
        Command::Completions { shell } => {
            let mut out = Vec::new();
            clap_complete::generate(*shell, &mut Cli::command(), "kmsctl", &mut out);
            Ok(output::stdout(&out)?)
        }
    }
}
