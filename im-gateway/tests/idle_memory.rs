//! The memory an idle connection costs. Alone in its test binary, so in a process of its
//! own: resident memory is the whole process's, and other tests running beside it would
//! move it either way.

mod support;

use bytes::BytesMut;
use im_common::bus::Bus;
use im_proto::client::request::Command;
use im_proto::client::server_message::Body;
use im_proto::client::{Login, Request, ServerMessage};
use prost::Message as _;
use support::*;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// Connections this test holds open, logged in and idle.
const IDLE: usize = 2000;

/// Resident memory of this process, in KiB.
fn rss_kib() -> i64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// The gateway's side of an idle, authenticated TCP connection stays within 8 KiB (this
/// measures the test's clients too, whose sockets are small next to it). One user logs in
/// on every connection with a token, which skips a password hash per connection and costs
/// the gateway the same per connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_small() {
    let cluster = Cluster::start(Bus::in_process(), false).await;
    let gateway = cluster.gateway("gw-idle-memory", settings()).await;
    let mut first = Client::tcp(gateway.tcp).await;
    let token = first.register_login(&name("idle"), "d").await.token;
    let warm = connect(&gateway, &token, 100).await;
    let before = rss_kib();
    // Each login is answered once its session, route and expiry are in place.
    let idle = connect(&gateway, &token, IDLE).await;
    let after = rss_kib();
    // Holding IDLE more connections cannot shrink the process: a drop, or no growth at
    // all, means the figure measures something else.
    let grown = after - before;
    assert!(
        grown > 0,
        "resident memory went {before} KiB → {after} KiB over {IDLE} new connections"
    );
    let per_connection = grown * 1024 / IDLE as i64;
    eprintln!("{per_connection} bytes per idle connection ({before} KiB → {after} KiB)");
    assert!(
        per_connection <= 8 * 1024,
        "{per_connection} bytes per idle connection"
    );
    drop((warm, idle));
    gateway.stopped().await;
    cluster.close().await;
}

async fn connect(gateway: &Running, token: &str, n: usize) -> Vec<TcpStream> {
    let mut streams = Vec::with_capacity(n);
    for _ in 0..n {
        let mut stream = TcpStream::connect(gateway.tcp).await.unwrap();
        let reply = call(
            &mut stream,
            Command::Login(Login {
                token: token.to_owned(),
                ..Login::default()
            }),
        )
        .await;
        assert!(matches!(reply.body, Some(Body::Session(_))), "{reply:?}");
        streams.push(stream);
    }
    streams
}

async fn call(stream: &mut TcpStream, command: Command) -> ServerMessage {
    let request = Request {
        id: 1,
        command: Some(command),
    };
    stream
        .write_all(&im_proto::codec::frame(&request))
        .await
        .unwrap();
    let mut buf = BytesMut::new();
    loop {
        if let Some(frame) = im_proto::codec::read_frame(&mut buf, usize::MAX).unwrap() {
            return ServerMessage::decode(frame).unwrap();
        }
        assert!(stream.read_buf(&mut buf).await.unwrap() > 0, "closed");
    }
}
