//! Logging: `tracing` with an `EnvFilter` (`RUST_LOG`), JSON lines in production.

use std::io::IsTerminal;

use clap::ValueEnum;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// What `RUST_LOG` defaults to: paysync's own events, and only warnings from chatty crates.
const DEFAULT_FILTER: &str = "info,sqlx=warn,tower_http=warn";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable on a terminal, JSON otherwise (e.g. in a pod).
    Auto,
    Text,
    Json,
}

/// Installs the global subscriber. Logs go to stdout (a server's output), or to stderr for a
/// command whose stdout is data (a plan, JSON lines) another program may read.
pub fn init(format: LogFormat, to_stderr: bool) -> anyhow::Result<()> {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let terminal = if to_stderr {
        std::io::stderr().is_terminal()
    } else {
        std::io::stdout().is_terminal()
    };
    let writer = if to_stderr {
        BoxMakeWriter::new(std::io::stderr)
    } else {
        BoxMakeWriter::new(std::io::stdout)
    };
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !terminal,
    };
    let registry = tracing_subscriber::registry().with(filter);
    if json {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(writer)
                    .json()
                    .flatten_event(true)
                    .with_current_span(false),
            )
            .try_init()?;
    } else {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(writer)
                    .with_ansi(terminal),
            )
            .try_init()?;
    }
    Ok(())
}

/// An error and its causes on one line (`what: why: root cause`), for logs and stored errors.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
