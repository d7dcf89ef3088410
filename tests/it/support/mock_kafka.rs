//! librdkafka's mock cluster in its own process (`paysync-mock-kafka`), with faults on demand.

use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

pub struct MockKafka {
    pub bootstrap: String,
    stdin: ChildStdin,
    replies: Lines<BufReader<ChildStdout>>,
    _child: Child,
}

impl MockKafka {
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// A mock cluster started with these arguments (`--partitions 16`, …).
    pub async fn start_with(args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_paysync-mock-kafka"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let mut replies = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = replies.next_line().await.unwrap().unwrap();
        let bootstrap = first.strip_prefix("bootstrap=").unwrap().to_owned();
        Self {
            bootstrap,
            stdin,
            replies,
            _child: child,
        }
    }

    async fn command(&mut self, command: &str) {
        self.stdin
            .write_all(format!("{command}\n").as_bytes())
            .await
            .unwrap();
        let reply = self.replies.next_line().await.unwrap().unwrap();
        assert_eq!(reply, "ok", "{command}");
    }

    pub async fn all_down(&mut self) {
        self.command("all-down").await;
    }

    pub async fn all_up(&mut self) {
        self.command("all-up").await;
    }

    /// Produces one raw message (no key) to `topic`.
    pub async fn produce(&self, topic: &str, payload: &str) {
        use rdkafka::producer::{FutureProducer, FutureRecord};
        let producer: FutureProducer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .create()
            .unwrap();
        let record = FutureRecord::<str, str>::to(topic).payload(payload);
        producer
            .send(record, std::time::Duration::from_secs(5))
            .await
            .unwrap();
    }

    /// Messages in `topic` (sum of high watermarks; the mock never deletes any).
    pub async fn messages_in(&self, topic: &str) -> i64 {
        use rdkafka::consumer::{BaseConsumer, Consumer as _};
        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .create()
            .unwrap();
        let topic = topic.to_owned();
        tokio::task::spawn_blocking(move || {
            (0..4)
                .map(|p| {
                    consumer
                        .fetch_watermarks(&topic, p, std::time::Duration::from_secs(5))
                        .unwrap()
                        .1
                })
                .sum()
        })
        .await
        .unwrap()
    }
}
