//! A PostgreSQL instance of the test's own that accepts only TLS (`hostssl` alone in its
//! pg_hba.conf), with a server certificate for `localhost` signed by a CA the test made, and a
//! second CA that signed nothing, for the failures. Started with the machine's `initdb` and
//! `pg_ctl` (as the `postgres` user when the tests run as root: PostgreSQL refuses root),
//! on 127.0.0.1 and a free port; stopped through its data directory's PID file.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::certs::{TestCerts, free_port};

pub struct TlsPostgres {
    dir: PathBuf,
    bin: PathBuf,
    pub port: u16,
    /// The CA that signed the server's certificate.
    pub ca: PathBuf,
    /// A CA that signed nothing the server has.
    pub other_ca: PathBuf,
}

impl TlsPostgres {
    pub fn start() -> Self {
        let dir = std::env::temp_dir().join(format!("paysync-tls-pg-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        let certs = TestCerts::make(&dir);
        let server = Self {
            bin: bin_dir(),
            ca: certs.ca,
            other_ca: certs.other_ca,
            dir,
            port: free_port(),
        };
        server.init();
        server
    }

    /// A URL to the instance's `postgres` database on `host` with `query` (e.g.
    /// `sslmode=require`).
    pub fn url(&self, host: &str, query: &str) -> String {
        format!("postgres://postgres@{host}:{}/postgres?{query}", self.port)
    }

    fn init(&self) {
        let data = self.dir.join("data");
        as_postgres_owner(&self.dir);
        self.pg(
            &self.bin.join("initdb"),
            &["-D", path(&data), "-U", "postgres", "--auth=trust", "-N"],
        );
        let config = format!(
            "port = {}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\nfsync = off\n",
            self.port,
            self.dir.display(),
            self.dir.join("server.crt").display(),
            self.dir.join("server.key").display(),
        );
        append(&data.join("postgresql.conf"), &config);
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\n",
        )
        .unwrap();
        as_postgres_owner(&self.dir);
        let log = self.dir.join("server.log");
        self.pg(
            &self.bin.join("pg_ctl"),
            &[
                "-D",
                path(&data),
                "-l",
                path(&log),
                "-w",
                "-t",
                "30",
                "start",
            ],
        );
    }

    fn pg(&self, program: &Path, args: &[&str]) {
        let output = if is_root() {
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(program)
                .args(args)
                .output()
        } else {
            Command::new(program).args(args).output()
        }
        .unwrap();
        assert!(
            output.status.success(),
            "{} {args:?}: {}{}",
            program.display(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

impl Drop for TlsPostgres {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        let pg_ctl = self.bin.join("pg_ctl");
        let args = ["-D", path(&data), "-m", "immediate", "-w", "stop"];
        let _ = if is_root() {
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(&pg_ctl)
                .args(args)
                .output()
        } else {
            Command::new(&pg_ctl).args(args).output()
        };
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The server programs' folder (`pg_config --bindir`, else Debian's newest).
fn bin_dir() -> PathBuf {
    if let Ok(output) = Command::new("pg_config").arg("--bindir").output()
        && output.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
        if dir.join("initdb").exists() {
            return dir;
        }
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL's server programs (scripts/services installs them)")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|bin| bin.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop().expect("initdb under /usr/lib/postgresql")
}

fn is_root() -> bool {
    let output = Command::new("id").arg("-u").output().unwrap();
    String::from_utf8_lossy(&output.stdout).trim() == "0"
}

/// When the tests run as root, the server runs as `postgres` and must own its files.
fn as_postgres_owner(dir: &Path) {
    if is_root() {
        let status = Command::new("chown")
            .args(["-R", "postgres:postgres", path(dir)])
            .status();
        assert!(status.unwrap().success());
    }
}

fn append(file: &Path, text: &str) {
    use std::io::Write as _;
    let mut file = std::fs::OpenOptions::new().append(true).open(file).unwrap();
    file.write_all(text.as_bytes()).unwrap();
}
