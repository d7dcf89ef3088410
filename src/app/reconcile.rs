//! `paysync reconcile --once`: a run of each policy (or one) against the same database and
//! Stripe accounts as `serve`, printing the plan as it goes; on a terminal a progress bar,
//! elsewhere a log line every ten seconds.

use std::collections::BTreeMap;
use std::io::IsTerminal as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::PolicySource;
use super::cli::connect;
use super::handlers::handlers;
use super::settings::{cluster, policy_source, stripe_calls};
use super::wiring::load_policies;
use crate::config::{PlanFormat, ReconcileArgs, ServeArgs};
use crate::controller;
use crate::metrics;
use crate::policy::PolicyRegistry;
use crate::reconcile::diff::{Action, ActionKind};
use crate::reconcile::plan::{json_line, summary, text_line};
use crate::reconcile::{
    PlanSink, Progress, ReconcileMetrics, Reconciler, RunOptions, RunReport, Trigger,
};
use crate::store::locks::LockPool;
use crate::sync::dead_letters::{DeadLetterMetrics, DeadLetters};

/// Prints each action as the run finds it, and counts them for the summary.
struct Printer {
    format: PlanFormat,
    bar: Option<ProgressBar>,
    by_action: std::sync::Mutex<BTreeMap<ActionKind, u64>>,
}

impl PlanSink for Printer {
    fn action(&self, policy: &str, action: &Action) {
        let line = match self.format {
            PlanFormat::Text => text_line(policy, action),
            PlanFormat::Json => json_line(policy, action),
        };
        match &self.bar {
            Some(bar) => bar.suspend(|| println!("{line}")),
            None => println!("{line}"),
        }
        if let Ok(mut counts) = self.by_action.lock() {
            *counts.entry(action.kind).or_default() += 1;
        }
    }
}

/// `paysync reconcile --once [--policy NAME] [--dry-run] [--output text|json]`.
pub async fn reconcile(args: ReconcileArgs) -> anyhow::Result<()> {
    let pool = connect(&args.serve.database).await?;
    let (reconciler, policies) = reconciler(&args.serve, &pool).await?;
    let names: Vec<String> = match &args.policy {
        Some(name) => vec![name.clone()],
        None => policies.all().iter().map(|p| p.name.clone()).collect(),
    };
    let mut failed = Vec::new();
    for name in names {
        if !run_one(&reconciler, &name, &args).await? {
            failed.push(name);
        }
    }
    pool.close().await;
    if !failed.is_empty() {
        anyhow::bail!("reconcile failed for {}", failed.join(", "));
    }
    Ok(())
}

/// A reconciler as `serve` would build it (the same policies, handlers and calls).
async fn reconciler(
    serve: &ServeArgs,
    pool: &PgPool,
) -> anyhow::Result<(Reconciler, Arc<PolicyRegistry>)> {
    let mut registry = metrics::registry();
    let calls = stripe_calls(serve);
    let tolerance = serve.stripe.stripe_webhook_tolerance;
    // Nothing but the run writes: waiting changes are the server's to send.
    let source = match cluster(serve).await? {
        Some(cluster) => PolicySource::Fixed(controller::load(&cluster).await?),
        None => policy_source(serve),
    };
    let policies = load_policies(&source, calls, tolerance, None, &mut registry).await?;
    let locks = LockPool::new(pool.clone());
    let dead_letters = DeadLetters::new(
        pool.clone(),
        Arc::new(DeadLetterMetrics::register(&mut registry)),
    );
    let handlers = handlers(
        calls,
        (pool, &locks),
        &policies,
        (&dead_letters, &serve.database.mirror_schema),
        &mut registry,
    );
    let reconciler = Reconciler::new(
        pool.clone(),
        locks,
        policies.clone(),
        handlers,
        Arc::new(ReconcileMetrics::register(&mut registry)),
    );
    Ok((reconciler, policies))
}

/// One policy's run; whether it succeeded.
async fn run_one(
    reconciler: &Reconciler,
    name: &str,
    args: &ReconcileArgs,
) -> anyhow::Result<bool> {
    let bar = std::io::stderr().is_terminal().then(spinner);
    let printer = Arc::new(Printer {
        format: args.output,
        bar: bar.clone(),
        by_action: Default::default(),
    });
    let progress = Arc::new(Progress::default());
    let done = CancellationToken::new();
    let reporter = tokio::spawn(report_progress(
        name.to_owned(),
        progress.clone(),
        bar.clone(),
        done.clone(),
    ));
    let options = RunOptions {
        trigger: Trigger::Manual,
        dry_run: args.dry_run,
        plan: Some(printer.clone() as Arc<dyn PlanSink>),
    };
    let result = reconciler.run_with(name, options, progress).await;
    done.cancel();
    let _ = reporter.await;
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let report = result?;
    let by_action = printer
        .by_action
        .lock()
        .map(|c| c.clone())
        .unwrap_or_default();
    print_summary(&report, &by_action, args.output)?;
    Ok(report.outcome == "succeeded")
}

fn spinner() -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar
}

fn print_summary(
    report: &RunReport,
    by_action: &BTreeMap<ActionKind, u64>,
    format: PlanFormat,
) -> anyhow::Result<()> {
    match format {
        PlanFormat::Text => println!("{}", summary(report, by_action)),
        PlanFormat::Json => {
            let mut value = serde_json::to_value(report)?;
            if let Some(object) = value.as_object_mut() {
                object.insert("type".into(), "summary".into());
            }
            println!("{value}");
        }
    }
    Ok(())
}

/// Customers scanned, rate and pages: on the progress bar, or logged every ten seconds.
async fn report_progress(
    policy: String,
    progress: Arc<Progress>,
    bar: Option<ProgressBar>,
    done: CancellationToken,
) {
    let started = Instant::now();
    let every = if bar.is_some() {
        Duration::from_millis(200)
    } else {
        Duration::from_secs(10)
    };
    loop {
        tokio::select! {
            () = done.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        let scanned = progress.scanned();
        let rate = scanned as f64 / started.elapsed().as_secs_f64().max(0.001);
        match &bar {
            Some(bar) => bar.set_message(format!(
                "{policy}: {scanned} customers scanned ({rate:.0}/s), {} pages",
                progress.pages()
            )),
            None => info!(
                policy,
                scanned,
                pages = progress.pages(),
                rate = format!("{rate:.0}/s"),
                "reconcile progress"
            ),
        }
    }
}
