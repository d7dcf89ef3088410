//! The REST contract, fuzzed: schemathesis (installed by `scripts/tools`) generates requests
//! from the served OpenAPI document, valid and invalid, single and chained (create → read →
//! update → delete), and runs every check it has against the real server: no 5xx, every
//! status and body documented, schema-valid input accepted, schema-invalid input refused.
//! `tests/contract/schemathesis.toml` lists the few state-dependent answers it must allow.

use std::path::PathBuf;
use std::time::Duration;

use sqlx::PgPool;
use tokio::process::Command;

use crate::support::app::{TOKEN, TestApp, settings, with_webhooks};
use crate::support::private_stripe::services_dir;

/// Examples per operation and phase: enough to find shape mismatches, bounded for CI
/// (about 15 s here).
const MAX_EXAMPLES: &str = "100";
/// Far above a normal run, so a hang fails instead of stalling CI.
const RUN_DEADLINE: Duration = Duration::from_secs(600);

fn schemathesis() -> PathBuf {
    let path = std::env::var_os("PAYSYNC_SCHEMATHESIS")
        .map(PathBuf::from)
        .unwrap_or_else(|| services_dir().join("schemathesis-venv/bin/st"));
    assert!(
        path.exists(),
        "schemathesis is not installed at {}: run scripts/tools (scripts/test does)",
        path.display()
    );
    path
}

#[sqlx::test]
async fn the_api_honours_its_openapi_document_under_fuzzing(pool: PgPool) {
    let app = TestApp::spawn_settings(pool, with_webhooks(settings())).await;
    let config = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/contract/schemathesis.toml"
    );
    let run = Command::new(schemathesis())
        .args(["--config-file", config, "run"])
        .arg(app.url("/openapi.json"))
        // No `--checks all`: every check is on by default, and a command-line option
        // outranks the config file's per-operation settings (schemathesis.toml).
        .args(["--max-examples", MAX_EXAMPLES])
        // One worker: hypothesis 6.170's lambda-description cache is not thread-safe (a
        // second worker thread now and then fails the run with an internal AST error).
        .args(["--workers", "1"])
        .args(["--header", &format!("Authorization: Bearer {TOKEN}")])
        .args(["--warnings", "off"])
        .env("NO_COLOR", "1")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(RUN_DEADLINE, run)
        .await
        .expect("schemathesis did not finish")
        .expect("starting schemathesis");
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "schemathesis found contract failures:\n{report}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(report.contains("passed"), "{report}");
    app.stop().await;
}
