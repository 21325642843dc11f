//! Real processes registered in the real ZooKeeper that `scripts/services.sh up` starts
//! (127.0.0.1:2181): instances dying or stopping under a stream of calls cost callers
//! nothing.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use examples::proto::{EchoClient, EchoRequest};
use mprpc::CallOptions;
use mprpc::balance::P2c;
use mprpc::zookeeper::{ZkConfig, ZooKeeper};

const ZK: &str = "127.0.0.1:2181";

/// An echo-server process; killed (SIGKILL) when dropped.
struct EchoProcess {
    child: Child,
    addr: String,
}

impl EchoProcess {
    fn start(root: &str) -> EchoProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_echo-server"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--registry",
                &format!("zk://{ZK}{root}"),
            ])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn echo-server");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the listening line");
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .expect("listening line")
            .to_owned();
        EchoProcess { child, addr }
    }

    fn kill_9(&mut self) {
        self.child.kill().expect("SIGKILL");
        let _ = self.child.wait();
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill -TERM");
        assert!(sent.success());
        self.child.wait().expect("wait")
    }
}

impl Drop for EchoProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn unique_root(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("/mprpc-cluster-{test}-{}-{nanos}", std::process::id())
}

async fn zookeeper(root: &str) -> ZooKeeper {
    ZooKeeper::connect(
        ZK,
        ZkConfig::default()
            .root(root)
            .session_timeout(Duration::from_secs(4)),
    )
    .await
    .expect("ZooKeeper at 127.0.0.1:2181 (run scripts/services.sh up)")
}

/// Waits until `client` lists `n` instances. Generous: a killed instance leaves the list
/// only when ZooKeeper expires its session, 10 s after the kill at the earliest.
async fn wait_for_instances(client: &mprpc::Client, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    while client.instances().len() != n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "expected {n} instances, have {:?}",
            client.instances()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn assert_not_listed(client: &mprpc::Client, addr: &str) {
    let listed: Vec<String> = client.instances().into_iter().map(|i| i.addr).collect();
    assert!(!listed.iter().any(|a| a == addr), "{addr} in {listed:?}");
}

/// Three echo-server processes under a fresh root and a p2c client that sees all three.
async fn cluster(test: &str) -> (Vec<EchoProcess>, ZooKeeper, mprpc::Client) {
    let root = unique_root(test);
    let servers: Vec<EchoProcess> = (0..3).map(|_| EchoProcess::start(&root)).collect();
    let zk = zookeeper(&root).await;
    let client = mprpc::Client::builder()
        .balance(P2c)
        .discover(&zk, EchoClient::NAME)
        .await
        .expect("discover");
    wait_for_instances(&client, 3).await;
    (servers, zk, client)
}

struct Stream {
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    workers: tokio::task::JoinSet<()>,
}

/// `total` echo calls from `concurrency` tasks, counting outcomes as they go.
fn stream(client: &EchoClient, total: u64, concurrency: usize, options: CallOptions) -> Stream {
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let next = Arc::new(AtomicU64::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (client, options) = (client.clone(), options.clone());
        let (ok, failed, next) = (ok.clone(), failed.clone(), next.clone());
        workers.spawn(async move {
            let request = EchoRequest {
                payload: vec![b'x'; 64].into(),
            };
            while next.fetch_add(1, Ordering::Relaxed) < total {
                match client.echo_with(&request, &options).await {
                    Ok(reply) if reply.payload == request.payload => {
                        ok.fetch_add(1, Ordering::Relaxed)
                    }
                    Ok(_) => failed.fetch_add(1, Ordering::Relaxed),
                    Err(err) => {
                        eprintln!("call failed: {err}");
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        });
    }
    Stream {
        ok,
        failed,
        workers,
    }
}

impl Stream {
    async fn wait_for(&self, calls: u64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while self.ok.load(Ordering::Relaxed) + self.failed.load(Ordering::Relaxed) < calls {
            assert!(tokio::time::Instant::now() < deadline, "the stream stalled");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    async fn finish(mut self) -> (u64, u64) {
        while let Some(done) = self.workers.join_next().await {
            done.expect("worker");
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_register_and_all_take_calls() {
    let (servers, _zk, client) = cluster("three").await;
    let mut listed: Vec<String> = client.instances().into_iter().map(|i| i.addr).collect();
    let mut started: Vec<String> = servers.iter().map(|s| s.addr.clone()).collect();
    listed.sort();
    started.sort();
    assert_eq!(listed, started);
    let echo = EchoClient::new(client.clone());
    let (ok, failed) = stream(&echo, 3000, 32, CallOptions::new()).finish().await;
    assert_eq!((ok, failed), (3000, 0));
    let spread: Vec<u64> = client.endpoints().iter().map(|e| e.attempts()).collect();
    assert_eq!(spread.len(), 3, "{spread:?}");
    assert!(
        spread.iter().all(|&n| n >= 300),
        "calls spread over all three: {spread:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_stream_of_idempotent_calls_fails_none() {
    let (mut servers, _zk, client) = cluster("kill").await;
    let echo = EchoClient::new(client.clone());
    let calls = stream(&echo, 20_000, 32, CallOptions::new().idempotent(true));
    calls.wait_for(3_000).await;
    servers[0].kill_9();
    let (ok, failed) = calls.finish().await;
    assert_eq!((ok, failed), (20_000, 0));
    // The dead instance's ephemeral node goes with its session.
    wait_for_instances(&client, 2).await;
    assert_not_listed(&client, &servers[0].addr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_stop_during_a_stream_of_non_idempotent_calls_fails_none() {
    let (mut servers, _zk, client) = cluster("stop").await;
    let echo = EchoClient::new(client.clone());
    let calls = stream(&echo, 20_000, 32, CallOptions::new());
    calls.wait_for(3_000).await;
    let status = servers[0].terminate();
    assert!(
        status.success(),
        "echo-server exits cleanly on SIGTERM: {status:?}"
    );
    let (ok, failed) = calls.finish().await;
    assert_eq!((ok, failed), (20_000, 0));
    // It deregistered before draining, so the list shrinks without waiting for a session.
    wait_for_instances(&client, 2).await;
    assert_not_listed(&client, &servers[0].addr);
}
