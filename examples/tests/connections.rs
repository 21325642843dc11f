//! An echo-server process under many connections: 10 000 held idle do not lock out a new
//! client, and memory goes back down after waves of connections close.
//!
//! The server runs as its own process so that its resident memory and open descriptors can
//! be read from `/proc` without the test's own sockets in them.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::BytesMut;
use examples::proto::{EchoClient, EchoRequest};
use mprpc::frame::{self, Header, Kind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// An echo-server process; killed when dropped.
struct Server {
    child: Child,
    addr: String,
}

impl Server {
    fn start() -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_echo-server"))
            .args(["--listen", "127.0.0.1:0"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn echo-server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("the listening line");
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .expect("listening line")
            .to_owned();
        Server { child, addr }
    }

    /// Open file descriptors: the listener, the runtime's own, and one per connection.
    fn descriptors(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .map(|dir| dir.count())
            .unwrap_or(0)
    }

    /// Resident memory in KiB.
    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("/proc status");
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }

    /// Waits until the server holds `n` descriptors (connections accepted or closed).
    async fn wait_for_descriptors(&self, done: impl Fn(usize) -> bool, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !done(self.descriptors()) {
            assert!(
                Instant::now() < deadline,
                "{what}: server holds {} descriptors",
                self.descriptors()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn client(&self) -> EchoClient {
        EchoClient::new(mprpc::Client::connect_lazy(self.addr.clone()))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn echo(client: &EchoClient) {
    let reply = client
        .echo(&EchoRequest {
            payload: "hi".into(),
        })
        .await
        .expect("echo");
    assert_eq!(reply.payload, "hi");
}

async fn open(addr: &str, n: usize) -> Vec<TcpStream> {
    let mut streams = Vec::with_capacity(n);
    for _ in 0..n {
        streams.push(TcpStream::connect(addr).await.expect("connect"));
    }
    streams
}

/// The soft limit on open files of this process, from `/proc/self/limits`.
fn open_files_limit() -> u64 {
    let limits = std::fs::read_to_string("/proc/self/limits").expect("/proc/self/limits");
    limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .and_then(|line| line.split_whitespace().nth(3))
        .and_then(|soft| soft.parse().ok())
        .unwrap_or(u64::MAX)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_idle_connections_do_not_lock_out_a_new_client() {
    let limit = open_files_limit();
    assert!(
        limit >= 12_500,
        "this test holds 10 000 connections (plus the other test's 2 000) but may open only \
         {limit} files: run it through scripts/test.sh, or raise `ulimit -n`"
    );
    let server = Server::start();
    let base = server.descriptors();
    let first = Instant::now();
    let idle = open(&server.addr, 10_000).await;
    server
        .wait_for_descriptors(|n| n >= base + 10_000, "accepting 10 000 connections")
        .await;
    // Connections become candidates for eviction after a second of silence.
    tokio::time::sleep_until(first + Duration::from_millis(1100)).await;

    let started = Instant::now();
    echo(&server.client()).await;
    let served_in = started.elapsed();
    println!("a new client was served in {served_in:?} with 10 000 idle connections held");
    // The design target is 100 ms; the bound here leaves room for a loaded CI machine.
    assert!(served_in < Duration::from_secs(2), "{served_in:?}");
    assert!(
        server.descriptors() <= base + 10_001,
        "the limit still holds: an idle connection made room"
    );
    drop(idle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_goes_back_down_after_waves_of_connections() {
    const WAVE: usize = 2_000;
    let server = Server::start();
    let client = server.client();
    echo(&client).await;
    let base = server.descriptors();
    let ping = {
        let header = Header {
            kind: Kind::Ping,
            request_id: 1,
            ..Header::default()
        };
        let mut buf = BytesMut::new();
        frame::encode_raw(&mut buf, &header, &[], frame::DEFAULT_MAX_FRAME).expect("fits");
        buf.freeze()
    };
    // "Within a few MB of where it started."
    const BACK_WITHIN_KIB: u64 = 6 * 1024;
    let (mut peaks, mut after) = (Vec::new(), Vec::new());
    let start_kib = server.rss_kib();
    for _ in 0..10 {
        let mut wave = open(&server.addr, WAVE).await;
        // Every connection speaks once, so the server reads and writes on each.
        for stream in &mut wave {
            stream.write_all(&ping).await.expect("ping");
        }
        let mut pong = [0u8; 64];
        for stream in &mut wave {
            let n = stream.read(&mut pong).await.expect("pong");
            assert!(n > 0, "the server answered the ping");
        }
        server
            .wait_for_descriptors(|n| n >= base + WAVE, "a wave accepted")
            .await;
        peaks.push(server.rss_kib());
        drop(wave);
        server
            .wait_for_descriptors(|n| n <= base, "a wave closed")
            .await;
        // The server gives freed memory back shortly after a wave closes.
        let deadline = Instant::now() + Duration::from_secs(10);
        while server.rss_kib() > start_kib + BACK_WITHIN_KIB && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        after.push(server.rss_kib());
    }
    println!(
        "resident KiB at start {start_kib}; with a wave open {peaks:?}; after it closed {after:?}"
    );
    for rss in &after {
        assert!(
            *rss <= start_kib + BACK_WITHIN_KIB,
            "memory did not go back down after a wave: {start_kib} KiB at start, {after:?}"
        );
    }
    echo(&client).await;
}
