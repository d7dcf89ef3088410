//! A Kafka that speaks TLS only, for the test's own use: a tansu broker (the program
//! `scripts/services` installs) listening in plaintext on 127.0.0.1, behind stunnel (from
//! `scripts/tools`) terminating TLS with a server certificate for `localhost` from
//! [`TestCerts`]. tansu advertises the stunnel port as `localhost:<port>`, the name the
//! certificate has, so clients reach every broker through TLS and verify it as they would a
//! managed Kafka. (tansu 0.6's own TLS options cannot be given together on its command
//! line.) With `authentication`, tansu requires SASL (SCRAM), exchanged inside the TLS session.
//! Memory storage; both processes are killed (by PID, through their handles) when dropped.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use super::app::wait_for;
use super::certs::{TestCerts, free_port};

pub struct TlsTansu {
    _broker: Child,
    _stunnel: Child,
    dir: PathBuf,
    pub port: u16,
    pub certs: TestCerts,
}

impl TlsTansu {
    pub async fn start(authentication: bool) -> Self {
        let dir = std::env::temp_dir().join(format!("paysync-tls-kafka-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        let certs = TestCerts::make(&dir);
        let (plain, port) = (free_port(), free_port());
        let mut broker = Command::new(tansu());
        broker
            .args(["broker", "--listener-url"])
            .arg(format!("tcp://127.0.0.1:{plain}"))
            .arg("--advertised-listener-url")
            .arg(format!("tcp://localhost:{port}"))
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("tansu.log")).unwrap())
            .kill_on_drop(true);
        if authentication {
            broker.arg("--authentication");
        }
        let broker = broker.spawn().unwrap();
        let config = dir.join("stunnel.conf");
        std::fs::write(
            &config,
            format!(
                "foreground = yes\npid =\n[kafka]\naccept = 127.0.0.1:{port}\nconnect = 127.0.0.1:{plain}\ncert = {}\nkey = {}\n",
                certs.server_cert.display(),
                certs.server_key.display()
            ),
        )
        .unwrap();
        let stunnel = Command::new(tool("PAYSYNC_STUNNEL"))
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("stunnel.log")).unwrap())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        for listening in [plain, port] {
            wait_for(
                "tansu and stunnel to listen",
                Duration::from_secs(20),
                || async move {
                    tokio::net::TcpStream::connect(("127.0.0.1", listening))
                        .await
                        .map(drop)
                        .map_err(|e| e.to_string())
                },
            )
            .await;
        }
        Self {
            _broker: broker,
            _stunnel: stunnel,
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
        if std::thread::panicking() {
            // What the broker and stunnel said, for the failure's report.
            for log in ["tansu.log", "stunnel.log"] {
                let text = std::fs::read_to_string(self.dir.join(log)).unwrap_or_default();
                eprintln!("--- {log} ---\n{text}");
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A program `scripts/tools` installed, by the variable it exports.
fn tool(variable: &str) -> PathBuf {
    match std::env::var_os(variable).map(PathBuf::from) {
        Some(path) if path.exists() => path,
        _ => panic!("{variable} is not set: run `eval \"$(scripts/tools)\"` (scripts/test does)"),
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
