//! The node-trust options (`--node-policy FILE`, `--danger-unattested-kmsd`), as one clap
//! argument group both binaries flatten, and the reading of the node policy file. Their names and
//! checks are the same; their environment variable and help differ per binary
//! ([`NodeTrustFlags`]), so each binary's command line stays as documented. Neither option is a
//! default: a command that must verify kmsd refuses to run without one.

use std::fmt;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use clap::{value_parser, Arg, ArgAction, ArgMatches, Command, FromArgMatches};
use kms_node::{NodePolicy, NodeVerifier};

use super::report::warn;
use super::Failure;
use crate::NodeTrust;

/// How one binary names and explains its node-trust options.
pub trait NodeTrustFlags {
    /// The environment variable of `--node-policy`.
    const POLICY_ENV: &'static str;
    /// The help of `--node-policy`: which kmsd the binary verifies against it.
    const POLICY_HELP: &'static str;
    /// The help of `--danger-unattested-kmsd`.
    const DANGER_HELP: &'static str;
    /// The environment variable of `--danger-unattested-kmsd` (`1`, `true`, `yes` or `on`), for
    /// dev shells and test harnesses; with a node policy too it is a usage error, as the flags.
    const DANGER_ENV: &'static str;
    /// Whether the options are accepted after the subcommand too.
    const GLOBAL: bool;
}

const POLICY: &str = "node_policy";
const DANGER: &str = "danger_unattested_kmsd";

/// Which kmsd to trust (`#[command(flatten)]`): a node policy file, or knowingly any kmsd.
pub struct NodeTrustArgs<F> {
    /// The node policy file (`--node-policy`).
    pub node_policy: Option<PathBuf>,
    /// `--danger-unattested-kmsd`: trust a kmsd without hardware evidence.
    pub danger_unattested_kmsd: bool,
    flags: PhantomData<fn() -> F>,
}

impl<F> Clone for NodeTrustArgs<F> {
    fn clone(&self) -> Self {
        Self {
            node_policy: self.node_policy.clone(),
            danger_unattested_kmsd: self.danger_unattested_kmsd,
            flags: PhantomData,
        }
    }
}

impl<F> fmt::Debug for NodeTrustArgs<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeTrustArgs")
            .field("node_policy", &self.node_policy)
            .field("danger_unattested_kmsd", &self.danger_unattested_kmsd)
            .finish()
    }
}

impl<F: NodeTrustFlags> NodeTrustArgs<F> {
    /// The trust the options name; `None` if they name none. The policy file is read and checked
    /// here, as the verifier will use it: a file that cannot be read or is not a usable node
    /// policy is a local error (exit code 4) that names it. `--danger-unattested-kmsd` warns on
    /// stderr.
    pub fn trust(&self) -> Result<Option<NodeTrust>, Failure> {
        match (&self.node_policy, self.danger_unattested_kmsd) {
            (Some(path), _) => Ok(Some(NodeTrust::Policy(read_node_policy(path)?))),
            (None, true) => {
                warn("--danger-unattested-kmsd: kmsd is not verified; its answers are trusted from any kmsd, attested or not, and from whoever answers in its place (a TLS-terminating proxy)");
                Ok(Some(NodeTrust::DangerUnattested))
            }
            (None, false) => Ok(None),
        }
    }

    /// [`NodeTrustArgs::trust`], which `what` (a command) needs: without either option, a usage
    /// error (exit code 2) that says how to give one.
    pub fn required_trust(&self, what: &str) -> Result<NodeTrust, Failure> {
        self.trust()?.ok_or_else(|| {
            Failure::usage(format!(
                "{what} needs to know which kmsd to trust: --node-policy FILE (or {}), the node policy your deployment handed out; or --danger-unattested-kmsd for a kmsd without hardware evidence (dev and tests only)",
                F::POLICY_ENV
            ))
        })
    }
}

/// Reads and checks a node policy file (as [`NodeVerifier`] will use it); every failure names
/// the file.
fn read_node_policy(path: &Path) -> Result<NodePolicy, Failure> {
    let text = std::fs::read_to_string(path).map_err(|e| Failure::file("read the node policy", path, e))?;
    let unusable = |e: kms_node::PolicyError| Failure::file("use the node policy", path, e.0);
    let policy = NodePolicy::parse(&text).map_err(unusable)?;
    NodeVerifier::new(policy.clone()).map_err(unusable)?;
    Ok(policy)
}

impl<F: NodeTrustFlags> clap::Args for NodeTrustArgs<F> {
    fn augment_args(cmd: Command) -> Command {
        cmd.arg(
            Arg::new(POLICY)
                .long("node-policy")
                .env(F::POLICY_ENV)
                .global(F::GLOBAL)
                .value_name("FILE")
                .action(ArgAction::Set)
                .value_parser(value_parser!(PathBuf))
                .conflicts_with(DANGER)
                .help(F::POLICY_HELP),
        )
        .arg(
            Arg::new(DANGER)
                .long("danger-unattested-kmsd")
                .env(F::DANGER_ENV)
                // `1`, `true`, `yes`, `on` (and their opposites) in the variable.
                .value_parser(clap::builder::BoolishValueParser::new())
                .global(F::GLOBAL)
                .action(ArgAction::SetTrue)
                .help(F::DANGER_HELP),
        )
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

impl<F: NodeTrustFlags> FromArgMatches for NodeTrustArgs<F> {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        Ok(Self {
            node_policy: m.get_one::<PathBuf>(POLICY).cloned(),
            danger_unattested_kmsd: m.get_flag(DANGER),
            flags: PhantomData,
        })
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use clap::{CommandFactory as _, Parser};

    use super::*;
    use crate::cli::exit;

    struct Test;
    impl NodeTrustFlags for Test {
        const POLICY_ENV: &'static str = "KMS_CLIENT_TEST_NODE_POLICY";
        const POLICY_HELP: &'static str = "The node policy";
        const DANGER_HELP: &'static str = "Trust any kmsd";
        const DANGER_ENV: &'static str = "KMS_CLIENT_TEST_DANGER_UNATTESTED_KMSD";
        const GLOBAL: bool = false;
    }

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        trust: NodeTrustArgs<Test>,
    }

    fn parse(args: &[&str]) -> Result<NodeTrustArgs<Test>, clap::Error> {
        Cli::try_parse_from(std::iter::once("t").chain(args.iter().copied())).map(|c| c.trust)
    }

    const GOOD: &str =
        r#"{"version":1,"tpm":{"ak_names":["000bAA"]},"release_policy":{"version":1,"attestation":"required"}}"#;

    #[test]
    fn the_options_parse_and_conflict() {
        Cli::command().debug_assert();
        let t = parse(&[]).unwrap();
        assert!(t.node_policy.is_none() && !t.danger_unattested_kmsd);
        assert!(t.trust().unwrap().is_none());
        let e = t.required_trust("unseal").unwrap_err();
        assert_eq!(e.exit_code(), exit::USAGE);
        assert_eq!(
            e.to_string(),
            "unseal needs to know which kmsd to trust: --node-policy FILE (or KMS_CLIENT_TEST_NODE_POLICY), the node policy your deployment handed out; or --danger-unattested-kmsd for a kmsd without hardware evidence (dev and tests only)"
        );
        let t = parse(&["--danger-unattested-kmsd"]).unwrap();
        assert!(matches!(t.required_trust("x").unwrap(), NodeTrust::DangerUnattested));
        assert!(parse(&["--danger-unattested-kmsd", "--node-policy", "p.json"]).is_err());
    }

    #[test]
    fn policy_files_are_read_and_checked_with_their_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node-policy.json");
        let arg = path.to_str().unwrap();

        let e = parse(&["--node-policy", arg]).unwrap().trust().unwrap_err();
        assert_eq!(e.exit_code(), exit::LOCAL, "a missing file is a local problem");
        assert!(
            e.to_string()
                .starts_with(&format!("cannot read the node policy {arg}: ")),
            "{e}"
        );

        std::fs::write(
            &path,
            r#"{"version":1,"release_policy":{"version":1,"attestation":"required"}}"#,
        )
        .unwrap();
        let e = parse(&["--node-policy", arg]).unwrap().trust().unwrap_err();
        assert_eq!(e.exit_code(), exit::LOCAL, "a malformed file is a local problem");
        assert_eq!(
            e.to_string(),
            format!("cannot use the node policy {arg}: accepts no node: give `snp` or `tpm` (or both)")
        );
        std::fs::write(&path, "not json").unwrap();
        let e = parse(&["--node-policy", arg]).unwrap().trust().unwrap_err();
        assert!(e.to_string().contains("not a node policy"), "{e}");

        std::fs::write(&path, GOOD).unwrap();
        let trust = parse(&["--node-policy", arg]).unwrap().required_trust("init").unwrap();
        let NodeTrust::Policy(policy) = &trust else {
            panic!("not a policy: {trust:?}")
        };
        assert!(policy.tpm.is_some());
        assert!(trust.verifier().unwrap().requires_evidence());
    }
}
