//! The subcommands that inspect and repair: `paysync customers` and `paysync dead-letters`.

use clap::Subcommand;

use super::DatabaseArgs;

#[derive(Debug, Subcommand)]
pub enum CustomerCommand {
    /// List live customers, oldest first, as JSON lines (as `GET /v1/customers` shows them).
    List {
        #[command(flatten)]
        database: DatabaseArgs,
        /// Only customers in this sync state: pending, synced, failed or orphaned.
        #[arg(long, value_parser = ["pending", "synced", "failed", "orphaned"])]
        sync_state: Option<String>,
        /// Only customers of this account (SyncPolicy name); every account by default.
        #[arg(long)]
        account: Option<String>,
        /// Most entries to print.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(i64).range(1..))]
        limit: i64,
    },
}

#[derive(Debug, Subcommand)]
pub enum DeadLetterCommand {
    /// List dead letters (open ones unless --all), newest first, as JSON lines.
    List {
        #[command(flatten)]
        database: DatabaseArgs,
        /// Include dead letters that were already replayed.
        #[arg(long)]
        all: bool,
        /// Most entries to print.
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    /// Queue the change of a dead letter for another attempt (after fixing its cause).
    Replay {
        #[command(flatten)]
        database: DatabaseArgs,
        /// Ids of the dead letters to replay.
        #[arg(required_unless_present = "all_open")]
        ids: Vec<uuid::Uuid>,
        /// Replay every open dead letter.
        #[arg(long = "all", conflicts_with = "ids")]
        all_open: bool,
    },
}
