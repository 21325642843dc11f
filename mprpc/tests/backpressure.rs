//! Bounded memory for responses a peer does not read: per connection the server stops
//! reading, across the server it sheds new calls, and nothing queued is lost.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::BytesMut;
use mprpc::frame::{Codec, Frame};
use mprpc::{CallOptions, Code, Method};
use support::{Num, PROBE, num, request, start_server_with};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;
use tokio_util::codec::Decoder;

/// A connection with a small receive buffer, so that unread responses back up quickly.
async fn stingy_connection(addr: std::net::SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    socket.connect(addr).await.expect("connect")
}

/// Sends requests 1..=`calls` for responses of `body` bytes each, reading none.
async fn ask_for_big_responses(stream: &mut TcpStream, calls: u64, body: usize) {
    for id in 1..=calls {
        stream
            .write_all(&request(id, "Big", &num(body as u64)))
            .await
            .expect("write");
    }
}

/// Reads `n` response frames and checks each is OK with a body of `len` bytes.
async fn read_responses(stream: &mut TcpStream, n: usize, len: usize) {
    let mut codec = Codec::default();
    let mut buf = BytesMut::new();
    let mut seen = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen < n {
        while let Some(Frame { header, body }) = codec.decode(&mut buf).expect("valid frames") {
            assert_eq!(header.status, Code::Ok, "{header:?}");
            assert_eq!(body.len(), len);
            seen += 1;
        }
        if seen == n {
            break;
        }
        let read = tokio::time::timeout_at(deadline, stream.read_buf(&mut buf))
            .await
            .expect("responses keep coming")
            .expect("read");
        assert!(read > 0, "closed after {seen} of {n} responses");
    }
}

/// Waits until `value()` stops changing for a while; returns the value it settled at.
async fn settled(value: impl Fn() -> u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = value();
    let mut stable_since = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = value();
        if now != last {
            (last, stable_since) = (now, Instant::now());
        } else if stable_since.elapsed() >= Duration::from_millis(500) {
            return now;
        }
        assert!(Instant::now() < deadline, "never settled");
    }
}

#[tokio::test]
async fn a_peer_that_does_not_read_stops_being_read() {
    const CALLS: u64 = 2_000;
    const BODY: usize = 32 * 1024;
    let server = start_server_with(|b| b.max_queued_bytes(64 * 1024, usize::MAX)).await;
    let mut stream = stingy_connection(server.addr).await;
    // 64 MB of responses asked for, none read.
    ask_for_big_responses(&mut stream, CALLS, BODY).await;
    let counters = server.probe.counters.clone();
    let started = settled(|| counters.started.load(Ordering::SeqCst)).await;
    assert!(
        started < CALLS / 2,
        "the server kept starting calls whose responses nobody read: {started} of {CALLS}"
    );
    // Another connection is served meanwhile.
    support::assert_still_serving(&server).await;
    // Once the peer reads, every response arrives: backpressure loses nothing.
    read_responses(&mut stream, CALLS as usize, BODY).await;
    // Every `Big` call, plus the one call of the other connection.
    assert_eq!(counters.finished.load(Ordering::SeqCst), CALLS + 1);
}

#[tokio::test]
async fn past_the_server_wide_bound_new_calls_are_shed_and_nothing_queued_is_lost() {
    const CALLS: u64 = 400;
    const BODY: usize = 64 * 1024;
    let server = start_server_with(|b| b.max_queued_bytes(usize::MAX, 1024 * 1024)).await;
    let mut stream = stingy_connection(server.addr).await;
    ask_for_big_responses(&mut stream, CALLS, BODY).await;
    // Once more than 1 MiB waits unwritten, another client's calls are refused without
    // running, retry-safe.
    let client = server.client();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut served_before = 0;
    let shed = loop {
        let result = client
            .unary::<_, Num>(
                &Method::new(PROBE, "Sleep"),
                &Num { value: 0 },
                &CallOptions::new(),
            )
            .await;
        match result {
            Err(err) if err.code() == Code::ResourceExhausted => break err,
            Ok(_) => served_before += 1,
            Err(err) => panic!("unexpected {err:?}"),
        }
        assert!(Instant::now() < deadline, "calls were never shed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(shed.is_retry_safe());

    // The reader drains everything it asked for (refused calls answered too), and then
    // the server takes calls again.
    let mut codec = Codec::default();
    let mut buf = BytesMut::new();
    let (mut ok, mut refused) = (0, 0);
    while ok + refused < CALLS {
        while let Some(frame) = codec.decode(&mut buf).expect("valid frames") {
            match frame.header.status {
                Code::Ok => ok += 1,
                Code::ResourceExhausted => refused += 1,
                other => panic!("unexpected {other:?}"),
            }
        }
        if ok + refused < CALLS {
            let read = tokio::time::timeout(Duration::from_secs(10), stream.read_buf(&mut buf))
                .await
                .expect("responses keep coming")
                .expect("read");
            assert!(read > 0);
        }
    }
    assert_eq!(
        ok + served_before,
        server.probe.counters.finished.load(Ordering::SeqCst),
        "every call that ran was answered"
    );
    assert!(refused > 0, "the reader's own late calls were shed too");
    let deadline = Instant::now() + Duration::from_secs(10);
    while client
        .unary::<_, Num>(
            &Method::new(PROBE, "Sleep"),
            &Num { value: 0 },
            &CallOptions::new(),
        )
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "the server never took calls again"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
