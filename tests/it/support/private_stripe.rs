//! A localstripe of a test's own (another emulated Stripe account, empty), for tests that
//! scan a whole account: the shared localstripe holds every other test's customers.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use super::app::wait_for;

/// Where `scripts/services` installs its tools (`PAYSYNC_SERVICES_DIR`, else the cache).
pub fn services_dir() -> PathBuf {
    std::env::var_os("PAYSYNC_SERVICES_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            let cache = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| {
                    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache"))
                })?;
            Some(cache.join("paysync"))
        })
        .expect("neither PAYSYNC_SERVICES_DIR nor HOME is set")
}

/// A running localstripe on a free loopback port, stopped (by its PID) when dropped.
pub struct PrivateStripe {
    _child: Child,
    pub base: String,
}

impl PrivateStripe {
    pub async fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let python = services_dir().join("localstripe-venv/bin/python");
        assert!(
            python.exists(),
            "localstripe is not installed at {}: run scripts/services up",
            python.display()
        );
        let launcher = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/localstripe-launcher.py"
        );
        let child = Command::new(python)
            .args([launcher, "--port", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}");
        let probe = format!("{base}/v1/customers?limit=1");
        wait_for(
            "a private localstripe to answer",
            Duration::from_secs(30),
            || {
                let probe = probe.clone();
                async move {
                    let answered = reqwest::Client::new()
                        .get(&probe)
                        .bearer_auth("sk_test_paysync")
                        .send()
                        .await;
                    match answered {
                        Ok(response) if response.status().is_success() => Ok(()),
                        Ok(response) => Err(response.status().to_string()),
                        Err(e) => Err(e.to_string()),
                    }
                }
            },
        )
        .await;
        Self {
            _child: child,
            base,
        }
    }
}
