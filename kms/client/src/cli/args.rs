//! The connection options, as one clap argument group both binaries flatten. The options and
//! their checks are the same; their names, environment variables and a few words differ per
//! binary ([`ConnectionFlags`]), so each binary's command line stays as documented. It only
//! describes and checks; it must never connect or read a file.

use std::fmt;
use std::marker::PhantomData;
use std::path::PathBuf;

use clap::{value_parser, Arg, ArgAction, ArgMatches, Command, FromArgMatches};

use super::report::warn;
use super::Failure;
use crate::{ChannelConfig, TlsFiles};

/// What TLS files given with a plaintext `http://` URL mean.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlaintextWithTlsFiles {
    /// Unused, with a warning.
    Warn,
    /// A usage error.
    Refuse,
}

/// How one binary names its connection options.
pub trait ConnectionFlags {
    /// The URL option's long name and id (`server`, `endpoint`).
    const URL: &'static str;
    /// What the URL is called in messages (`server`, `endpoint`).
    const URL_NOUN: &'static str;
    /// The environment variables of the URL, the CA, the client certificate, its key and the
    /// server name.
    const URL_ENV: &'static str;
    /// See [`ConnectionFlags::URL_ENV`].
    const CA_ENV: &'static str;
    /// See [`ConnectionFlags::URL_ENV`].
    const CERT_ENV: &'static str;
    /// See [`ConnectionFlags::URL_ENV`].
    const KEY_ENV: &'static str;
    /// See [`ConnectionFlags::URL_ENV`].
    const SERVER_NAME_ENV: &'static str;
    /// The help of `--cert`: what the server does with the client certificate.
    const CERT_HELP: &'static str;
    /// Whether the options are accepted after the subcommand too.
    const GLOBAL: bool;
    /// What TLS files with a plaintext URL mean.
    const PLAINTEXT_WITH_TLS_FILES: PlaintextWithTlsFiles;
}

/// The default URL: a dev-mode kmsd on this machine.
const DEFAULT_URL: &str = "http://127.0.0.1:7300";

/// How to reach kmsd (`#[command(flatten)]`).
pub struct ConnectionArgs<F> {
    /// The kmsd gRPC endpoint.
    pub url: String,
    /// The CA that issued the server's certificate.
    pub ca: Option<PathBuf>,
    /// The client certificate (mutual TLS).
    pub cert: Option<PathBuf>,
    /// Its private key.
    pub client_key: Option<PathBuf>,
    /// The name to verify the server's certificate against.
    pub tls_server_name: Option<String>,
    flags: PhantomData<fn() -> F>,
}

impl<F> fmt::Debug for ConnectionArgs<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionArgs")
            .field("url", &self.url)
            .field("ca", &self.ca)
            .field("cert", &self.cert)
            .field("client_key", &self.client_key)
            .field("tls_server_name", &self.tls_server_name)
            .finish()
    }
}

impl<F: ConnectionFlags> ConnectionArgs<F> {
    /// The channel the options name. An `https://` URL needs `--ca`; TLS files with a plaintext
    /// URL are handled as [`ConnectionFlags::PLAINTEXT_WITH_TLS_FILES`] says. The URL itself is
    /// checked when the channel is built.
    pub fn channel_config(&self) -> Result<ChannelConfig, Failure> {
        let mut config = ChannelConfig::new(self.url.clone());
        if self.url.starts_with("https://") {
            let ca = self.ca.clone().ok_or_else(|| {
                Failure::usage(format!(
                    "an https:// {} needs --ca FILE (or {}): the CA that issued its certificate",
                    F::URL_NOUN,
                    F::CA_ENV
                ))
            })?;
            let mut tls = TlsFiles::ca(ca).with_server_name(self.tls_server_name.clone());
            if let (Some(cert), Some(key)) = (&self.cert, &self.client_key) {
                tls = tls.with_identity(cert, key);
            }
            config = config.with_tls(tls);
        } else if self.url.starts_with("http://") && (self.ca.is_some() || self.cert.is_some()) {
            match F::PLAINTEXT_WITH_TLS_FILES {
                PlaintextWithTlsFiles::Warn => warn(&format!(
                    "--ca, --cert and --key are not used with the plaintext {} URL {}",
                    F::URL_NOUN,
                    config.target()
                )),
                PlaintextWithTlsFiles::Refuse => {
                    return Err(Failure::usage(format!(
                        "--ca, --cert and --key need an https:// {}, not {}",
                        F::URL_NOUN,
                        self.url
                    )))
                }
            }
        }
        Ok(config)
    }
}

fn file_arg(id: &'static str, global: bool) -> Arg {
    Arg::new(id)
        .long(id)
        .value_name("FILE")
        .global(global)
        .action(ArgAction::Set)
        .value_parser(value_parser!(PathBuf))
}

impl<F: ConnectionFlags> clap::Args for ConnectionArgs<F> {
    fn augment_args(cmd: Command) -> Command {
        cmd.arg(
            Arg::new(F::URL)
                .long(F::URL)
                .env(F::URL_ENV)
                .default_value(DEFAULT_URL)
                .global(F::GLOBAL)
                .value_name("URL")
                .action(ArgAction::Set)
                .value_parser(value_parser!(String))
                .help("The kmsd gRPC endpoint. https:// URLs use TLS (then --ca is needed)"),
        )
        .arg(
            file_arg("ca", F::GLOBAL)
                .env(F::CA_ENV)
                .help("PEM file of the CA that issued the server's certificate (https only)"),
        )
        .arg(
            file_arg("cert", F::GLOBAL)
                .env(F::CERT_ENV)
                .requires("client_key")
                .help(F::CERT_HELP),
        )
        .arg(
            file_arg("client_key", F::GLOBAL)
                .long("key")
                .env(F::KEY_ENV)
                .requires("cert")
                .help("PEM private key of the client certificate"),
        )
        .arg(
            Arg::new("tls_server_name")
                .long("tls-server-name")
                .env(F::SERVER_NAME_ENV)
                .global(F::GLOBAL)
                .value_name("NAME")
                .action(ArgAction::Set)
                .value_parser(value_parser!(String))
                .help("The name to verify the server's certificate against, when it differs from the URL's host"),
        )
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

impl<F: ConnectionFlags> FromArgMatches for ConnectionArgs<F> {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        Ok(Self {
            url: m
                .get_one::<String>(F::URL)
                .cloned()
                .unwrap_or_else(|| DEFAULT_URL.to_owned()),
            ca: m.get_one::<PathBuf>("ca").cloned(),
            cert: m.get_one::<PathBuf>("cert").cloned(),
            client_key: m.get_one::<PathBuf>("client_key").cloned(),
            tls_server_name: m.get_one::<String>("tls_server_name").cloned(),
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

    struct Test;
    impl ConnectionFlags for Test {
        const URL: &'static str = "server";
        const URL_NOUN: &'static str = "server";
        const URL_ENV: &'static str = "KMS_CLIENT_TEST_SERVER";
        const CA_ENV: &'static str = "KMS_CLIENT_TEST_CA";
        const CERT_ENV: &'static str = "KMS_CLIENT_TEST_CERT";
        const KEY_ENV: &'static str = "KMS_CLIENT_TEST_KEY";
        const SERVER_NAME_ENV: &'static str = "KMS_CLIENT_TEST_SERVER_NAME";
        const CERT_HELP: &'static str = "PEM client certificate";
        const GLOBAL: bool = false;
        const PLAINTEXT_WITH_TLS_FILES: PlaintextWithTlsFiles = PlaintextWithTlsFiles::Refuse;
    }

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        connection: ConnectionArgs<Test>,
    }

    fn parse(args: &[&str]) -> Result<ConnectionArgs<Test>, clap::Error> {
        Cli::try_parse_from(std::iter::once("t").chain(args.iter().copied())).map(|c| c.connection)
    }

    #[test]
    fn the_options_parse_and_check() {
        Cli::command().debug_assert();
        let c = parse(&[]).unwrap();
        assert_eq!(c.url, DEFAULT_URL);
        assert!(c.channel_config().unwrap().tls.is_none());

        let c = parse(&[
            "--server",
            "https://kms:7300",
            "--ca",
            "ca.pem",
            "--cert",
            "c.pem",
            "--key",
            "c.key",
        ])
        .unwrap();
        let tls = c.channel_config().unwrap().tls.unwrap();
        assert_eq!(tls.ca, PathBuf::from("ca.pem"));
        assert_eq!(tls.client_key, Some(PathBuf::from("c.key")));
        assert!(parse(&["--cert", "c.pem"]).is_err(), "--cert needs --key");
        assert!(parse(&["--key", "c.key"]).is_err(), "--key needs --cert");

        let e = parse(&["--server", "https://kms"])
            .unwrap()
            .channel_config()
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "an https:// server needs --ca FILE (or KMS_CLIENT_TEST_CA): the CA that issued its certificate"
        );
        let e = parse(&["--ca", "ca.pem"]).unwrap().channel_config().unwrap_err();
        assert_eq!(e.exit_code(), crate::cli::exit::USAGE);
        assert!(e.to_string().contains("need an https:// server"), "{e}");
    }
}
