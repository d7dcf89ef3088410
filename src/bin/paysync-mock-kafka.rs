//! A Kafka-protocol cluster for tests and local experiments: librdkafka's mock cluster, owned
//! by this process, reachable over TCP on 127.0.0.1 by clients in other processes.
//!
//! Prints `bootstrap=<servers>` once ready, then reads commands on stdin, one per line,
//! answering `ok` or `error: …`:
//!   `down <broker>` / `up <broker>`   take one broker (1-based) down or up
//!   `all-down` / `all-up`             every broker
//!   `quit`                            exit (also on end of input)

use std::io::{BufRead, Write};

use anyhow::{Context, bail};
use clap::Parser;
use rdkafka::mocking::MockCluster;

#[derive(Debug, Parser)]
#[command(about = "librdkafka's mock Kafka cluster, with faults driven over stdin")]
struct Args {
    /// Brokers in the cluster.
    #[arg(long, default_value_t = 3)]
    brokers: i32,
    /// Topics to create up front (the mock does not support the admin API).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "paysync.outbound,paysync.inbound"
    )]
    topics: Vec<String>,
    /// Partitions per topic.
    #[arg(long, default_value_t = 4)]
    partitions: i32,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let cluster = MockCluster::new(args.brokers).context("starting the mock cluster")?;
    for topic in &args.topics {
        cluster
            .create_topic(topic, args.partitions, 1)
            .with_context(|| format!("creating topic {topic}"))?;
    }
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "bootstrap={}", cluster.bootstrap_servers())?;
    stdout.flush()?;
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let reply = match run_command(&cluster, args.brokers, line.trim()) {
            Ok(true) => "ok".to_owned(),
            Ok(false) => break,
            Err(e) => format!("error: {e:#}"),
        };
        writeln!(stdout, "{reply}")?;
        stdout.flush()?;
    }
    Ok(())
}

/// Applies one command; `Ok(false)` means quit.
fn run_command<C: rdkafka::ClientContext>(
    cluster: &MockCluster<'_, C>,
    brokers: i32,
    command: &str,
) -> anyhow::Result<bool> {
    let mut words = command.split_whitespace();
    match (words.next(), words.next()) {
        (Some("down"), Some(id)) => cluster.broker_down(id.parse()?)?,
        (Some("up"), Some(id)) => cluster.broker_up(id.parse()?)?,
        (Some("all-down"), None) => (1..=brokers).try_for_each(|id| cluster.broker_down(id))?,
        (Some("all-up"), None) => (1..=brokers).try_for_each(|id| cluster.broker_up(id))?,
        (Some("quit"), None) | (None, None) => return Ok(false),
        _ => bail!("unknown command {command:?}"),
    }
    Ok(true)
}
