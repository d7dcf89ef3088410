//! The subcommands that inspect and repair: `paysync customers`, `paysync dead-letters` and
//! `paysync reconcile`.

use clap::{Args, Subcommand};

use super::{DatabaseArgs, ServeArgs};

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

/// `paysync reconcile --once`.
#[derive(Debug, Args)]
pub struct ReconcileArgs {
    /// Run once and exit (`serve` reconciles on its own schedule).
    #[arg(long, required = true)]
    pub once: bool,

    /// Only this policy (Stripe account); every policy by default.
    #[arg(long)]
    pub policy: Option<String>,

    /// Change nothing anywhere: print the plan of what a run would do.
    #[arg(long)]
    pub dry_run: bool,

    /// `text` (a plan like `terraform plan`) or `json` (one object per line, for tools).
    #[arg(long, value_enum, default_value_t = PlanFormat::Text)]
    pub output: PlanFormat,

    #[command(flatten)]
    pub serve: ServeArgs,
}

/// How `paysync reconcile` prints its plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PlanFormat {
    Text,
    Json,
}

/// `PAYSYNC_KUBERNETES`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KubernetesMode {
    Auto,
    True,
    False,
}
