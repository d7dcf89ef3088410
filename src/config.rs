//! Command line and environment. Every setting has a flag and an environment variable; the
//! names are a contract with operators (the Helm chart sets the variables).

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, CommandFactory, Parser, Subcommand};
use secrecy::SecretString;

use crate::telemetry::LogFormat;

#[derive(Debug, Parser)]
#[command(
    name = "paysync",
    version,
    about = "Two-way sync of customers between PostgreSQL and Stripe"
)]
pub struct Cli {
    /// Log format: text, json, or auto (text on a terminal, JSON otherwise).
    #[arg(long, env = "PAYSYNC_LOG_FORMAT", value_enum, default_value_t = LogFormat::Auto, global = true)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Parses the command line and environment, exiting with a usage error (code 2) when the
    /// settings are incomplete.
    pub fn parse_and_check() -> Self {
        let cli = Self::parse();
        if let Err(message) = cli.check() {
            Self::command()
                .error(clap::error::ErrorKind::MissingRequiredArgument, message)
                .exit();
        }
        cli
    }

    /// Cross-field rules clap cannot express with a message that names the variables.
    fn check(&self) -> Result<(), String> {
        if let Command::Serve(serve) = &self.command
            && serve.api_tokens.is_empty()
            && !serve.insecure_no_auth
        {
            return Err(
                "no API token configured: set PAYSYNC_API_TOKENS (or --api-tokens) to a \
                        comma-separated list of bearer tokens, or pass --insecure-no-auth for a \
                        local experiment"
                    .to_owned(),
            );
        }
        Ok(())
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP API and the sync machinery until SIGTERM or Ctrl-C.
    Serve(ServeArgs),
    /// Apply pending database migrations, then exit.
    Migrate(DatabaseArgs),
    /// Print the OpenAPI document of the HTTP API (JSON) to stdout.
    Openapi,
}

#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// PostgreSQL URL, e.g. postgres://user:password@127.0.0.1:5432/paysync.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, value_parser = parse_secret)]
    pub database_url: SecretString,

    /// Most connections paysync keeps open to PostgreSQL.
    #[arg(long, env = "PAYSYNC_DATABASE_MAX_CONNECTIONS", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub database_max_connections: u32,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,

    /// Address the HTTP server binds to.
    #[arg(long, env = "PAYSYNC_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Bearer tokens accepted by the /v1 API, comma-separated (several, so a token can be
    /// rotated without downtime).
    #[arg(
        long,
        env = "PAYSYNC_API_TOKENS",
        value_delimiter = ',',
        hide_env_values = true,
        value_parser = parse_token
    )]
    pub api_tokens: Vec<SecretString>,

    /// Serve the /v1 API without authentication (local experiments only; logs a warning).
    #[arg(long, env = "PAYSYNC_INSECURE_NO_AUTH", conflicts_with = "api_tokens")]
    pub insecure_no_auth: bool,

    /// Do not apply database migrations at start-up (run `paysync migrate` separately).
    #[arg(long, env = "PAYSYNC_NO_MIGRATE")]
    pub no_migrate: bool,

    /// How long shutdown waits for in-flight requests before exiting anyway.
    #[arg(long, env = "PAYSYNC_SHUTDOWN_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,
}

fn parse_secret(raw: &str) -> Result<SecretString, String> {
    if raw.trim().is_empty() {
        return Err("must not be empty".to_owned());
    }
    Ok(SecretString::from(raw))
}

fn parse_token(raw: &str) -> Result<SecretString, String> {
    let token = raw.trim();
    if token.is_empty() {
        return Err("the token list contains an empty token".to_owned());
    }
    if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("tokens must not contain whitespace".to_owned());
    }
    Ok(SecretString::from(token))
}

/// Durations as `<number><unit>` with unit `ms`, `s`, `m` or `h` (e.g. `500ms`, `30s`).
pub fn parse_duration(raw: &str) -> Result<Duration, String> {
    let raw = raw.trim();
    let split = raw
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{raw:?} needs a unit: ms, s, m or h"))?;
    let (number, unit) = raw.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{raw:?} does not start with a whole number"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(number)),
        "s" => Ok(Duration::from_secs(number)),
        "m" => Ok(Duration::from_secs(number * 60)),
        "h" => Ok(Duration::from_secs(number * 3600)),
        _ => Err(format!(
            "{raw:?} has unknown unit {unit:?}; use ms, s, m or h"
        )),
    }
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    fn serve(args: &[&str]) -> Result<ServeArgs, String> {
        let argv = [
            "paysync",
            "serve",
            "--database-url",
            "postgres://localhost/db",
        ]
        .iter()
        .chain(args);
        let cli = Cli::try_parse_from(argv).map_err(|e| e.to_string())?;
        cli.check()?;
        match cli.command {
            Command::Serve(serve) => Ok(serve),
            other => panic!("parsed {other:?}"),
        }
    }

    #[test]
    fn tokens_are_comma_separated_and_trimmed() {
        let args = serve(&["--api-tokens", "alpha, beta"]).unwrap();
        let tokens: Vec<_> = args
            .api_tokens
            .iter()
            .map(|t| t.expose_secret().to_owned())
            .collect();
        assert_eq!(tokens, ["alpha", "beta"]);
        assert_eq!(args.listen.to_string(), "127.0.0.1:8080");
    }

    #[test]
    fn tokens_are_required_unless_auth_is_disabled() {
        let err = serve(&[]).unwrap_err();
        assert!(err.contains("PAYSYNC_API_TOKENS"), "{err}");
        assert!(
            serve(&["--insecure-no-auth"])
                .unwrap()
                .api_tokens
                .is_empty()
        );
        assert!(serve(&["--api-tokens", "a,,b"]).is_err());
        assert!(serve(&["--api-tokens", "a", "--insecure-no-auth"]).is_err());
    }

    #[test]
    fn secrets_do_not_show_in_debug_output() {
        let args = serve(&["--api-tokens", "hunter2-token"]).unwrap();
        let debug = format!("{args:?}");
        assert!(!debug.contains("hunter2-token"), "{debug}");
        assert!(!debug.contains("postgres://localhost/db"), "{debug}");
    }

    #[test]
    fn durations_need_a_unit() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("30").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("3d").is_err());
    }
}
