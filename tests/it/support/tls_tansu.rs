//! A tansu broker of the test's own (the program `scripts/services` installs) that speaks TLS
//! only, with a server certificate for `localhost` from [`TestCerts`], and optionally SASL
//! (`--authentication`). It advertises `localhost:<port>`, the name its certificate has, so
//! clients verify it as they would a managed Kafka. Memory storage; killed (by PID, through
//! its handle) when dropped.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use super::app::wait_for;
use super::certs::{TestCerts, free_port};

pub struct TlsTansu {
    _child: Child,
    dir: PathBuf,
    pub port: u16,
    pub certs: TestCerts,
}

impl TlsTansu {
    pub async fn start(authentication: bool) -> Self {
        let dir = std::env::temp_dir().join(format!("paysync-tls-kafka-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        let certs = TestCerts::make(&dir);
        let port = free_port();
        let mut command = Command::new(tansu());
        command
            .args(["broker", "--listener-url"])
            .arg(format!("tcp://127.0.0.1:{port}"))
            .arg("--advertised-listener-url")
            .arg(format!("tcp://localhost:{port}"))
            .args(["--storage-engine", "memory://tansu/", "--cert"])
            .arg(&certs.server_cert)
            .arg("--key")
            .arg(&certs.server_key)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        if authentication {
            command.arg("--authentication");
        }
        let child = command.spawn().unwrap();
        wait_for("tansu to listen", Duration::from_secs(20), || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        })
        .await;
        Self {
            _child: child,
            dir,
            port,
            certs,
        }
    }

    /// The bootstrap address, by the name the certificate has.
    pub fn brokers(&self) -> String {
        format!("localhost:{}", self.port)
    }
}

impl Drop for TlsTansu {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The tansu program: on PATH, or where `cargo install` puts it.
fn tansu() -> PathBuf {
    if let Ok(output) = std::process::Command::new("sh")
        .args(["-c", "command -v tansu"])
        .output()
        && output.status.success()
    {
        return PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    }
    let installed = PathBuf::from(std::env::var("HOME").unwrap()).join(".cargo/bin/tansu");
    assert!(
        installed.exists(),
        "tansu is not installed: `scripts/services up --kafka` installs it"
    );
    installed
}
