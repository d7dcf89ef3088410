//! The settings file a second terminal shares with `scripts/run`: `PAYSYNC_ENV_FILE` names a
//! file of `NAME=value` lines (dotenv syntax) that `scripts/run` writes with the settings it
//! serves with, so `cargo run -- reconcile --once` next to it reaches the same database and
//! Stripe. A variable already in the environment wins over the file; a missing file is no
//! error (nothing has been written yet).

use std::path::Path;

/// Names the settings file.
pub const ENV_FILE_VARIABLE: &str = "PAYSYNC_ENV_FILE";

/// Adds the file's settings to the process environment. It must run before any other thread
/// starts: it changes the environment, which other threads may be reading.
pub fn load() -> Result<(), String> {
    let Some(path) = std::env::var_os(ENV_FILE_VARIABLE) else {
        return Ok(());
    };
    let path = Path::new(&path);
    if !path.exists() {
        return Ok(());
    }
    dotenvy::from_path(path).map_err(|e| format!("{ENV_FILE_VARIABLE}={}: {e}", path.display()))
}
