//! A live server fed malformed and hostile input: it answers what can be answered, closes
//! what cannot, never panics, and keeps serving everyone else.

mod support;

use std::time::Duration;

use mprpc::Code;
use mprpc::frame::Kind;
use support::{
    Raw, assert_still_serving, control, num, request, request_to, start_server, start_server_with,
};
use tokio::io::AsyncWriteExt;

fn assert_goaway(frames: &[mprpc::frame::Frame], reason: &str) {
    let goaway = frames
        .iter()
        .find(|f| f.header.kind == Kind::GoAway)
        .expect("a GOAWAY before close");
    assert_eq!(goaway.header.status, Code::InvalidArgument);
    assert!(
        goaway.header.message.as_str().contains(reason),
        "{:?}",
        goaway.header.message
    );
}

#[tokio::test]
async fn length_over_the_cap_closes_at_once() {
    let server = start_server_with(|b| b.max_frame(1024)).await;
    let mut raw = Raw::connect(server.addr).await;
    // Only the prefix: the server must not wait for (or buffer) the 4 GiB it claims.
    raw.send(&[0xFF, 0xFF, 0xFF, 0xFF, b'M', b'P', 1, 0]).await;
    let frames = raw.until_closed().await;
    assert_goaway(&frames, "size cap");

    // Just over a small cap, with a real header: same.
    let mut raw = Raw::connect(server.addr).await;
    raw.send(&request(1, "Echo", &[0u8; 2000])).await;
    assert_goaway(&raw.until_closed().await, "size cap");
    assert_still_serving(&server).await;
}

#[tokio::test]
async fn wrong_magic_is_rejected() {
    let server = start_server().await;
    let mut raw = Raw::connect(server.addr).await;
    raw.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_goaway(&raw.until_closed().await, "magic");

    let mut raw = Raw::connect(server.addr).await;
    let mut frame = request(1, "Echo", b"x");
    frame[6] = 2;
    raw.send(&frame).await;
    assert_goaway(&raw.until_closed().await, "version");
    assert_still_serving(&server).await;
}

#[tokio::test]
async fn random_garbage_closes_the_connection() {
    let server = start_server().await;
    // A fixed-seed xorshift so a failure reproduces.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    for round in 0..50 {
        let mut garbage = vec![0u8; 64 + round * 13];
        for byte in garbage.iter_mut() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            *byte = state as u8;
        }
        let mut raw = Raw::connect(server.addr).await;
        raw.send(&garbage).await;
        // Either side may close first; what matters is that it ends and nothing panics.
        raw.stream.shutdown().await.expect("half-close");
        raw.until_closed().await;
    }
    assert_still_serving(&server).await;
}

#[tokio::test]
async fn truncated_frame_then_close() {
    let server = start_server().await;
    let mut raw = Raw::connect(server.addr).await;
    let frame = request(1, "Echo", b"hello");
    raw.send(&frame[..frame.len() - 3]).await;
    raw.stream.shutdown().await.expect("half-close");
    assert!(
        raw.until_closed()
            .await
            .iter()
            .all(|f| f.header.kind == Kind::GoAway)
    );
    assert_still_serving(&server).await;
}

#[tokio::test]
async fn frame_trickled_one_byte_at_a_time_is_served() {
    let server = start_server().await;
    let mut raw = Raw::connect(server.addr).await;
    raw.stream.set_nodelay(true).expect("nodelay");
    for byte in request(7, "Echo", b"slowly").iter() {
        raw.send(&[*byte]).await;
    }
    let reply = raw.frame().await;
    assert_eq!(reply.header.kind, Kind::Response);
    assert_eq!(reply.header.request_id, 7);
    assert_eq!(reply.header.status, Code::Ok);
    assert_eq!(&reply.body[..], b"slowly");
}

#[tokio::test]
async fn unknown_service_and_method_are_unimplemented() {
    let server = start_server().await;
    let mut raw = Raw::connect(server.addr).await;
    raw.send(&request_to(1, "no.Such", "Echo", b"")).await;
    let reply = raw.frame().await;
    assert_eq!(
        (reply.header.request_id, reply.header.status),
        (1, Code::Unimplemented)
    );
    assert!(reply.header.message.as_str().contains("no.Such"));

    raw.send(&request(2, "Nope", b"")).await;
    let reply = raw.frame().await;
    assert_eq!(
        (reply.header.request_id, reply.header.status),
        (2, Code::Unimplemented)
    );
    assert!(reply.header.message.as_str().contains("Nope"));

    // The connection stays usable after both.
    raw.send(&request(3, "Echo", b"ok")).await;
    let reply = raw.frame().await;
    assert_eq!(
        (reply.header.request_id, reply.header.status),
        (3, Code::Ok)
    );
}

#[tokio::test]
async fn undecodable_body_is_invalid_argument() {
    let server = start_server().await;
    let mut raw = Raw::connect(server.addr).await;
    // A length-delimited field whose length runs past the end of the body.
    raw.send(&request(1, "Sleep", &[0x0A, 0x7F, 0x01])).await;
    let reply = raw.frame().await;
    assert_eq!(
        (reply.header.request_id, reply.header.status),
        (1, Code::InvalidArgument)
    );
    assert!(
        reply.header.message.as_str().contains("Num"),
        "{:?}",
        reply.header.message
    );
    assert!(reply.body.is_empty());
}

#[tokio::test]
async fn request_id_reused_while_in_flight() {
    let server = start_server().await;
    let mut raw = Raw::connect(server.addr).await;
    raw.send(&request(5, "Sleep", &num(200))).await;
    raw.send(&request(5, "Echo", b"dup")).await;
    let first = raw.frame().await;
    assert_eq!(
        (first.header.request_id, first.header.status),
        (5, Code::InvalidArgument)
    );
    assert!(first.header.message.as_str().contains("already in flight"));
    let second = raw.frame().await;
    assert_eq!(
        (second.header.request_id, second.header.status),
        (5, Code::Ok)
    );
    assert_eq!(
        server
            .probe
            .counters
            .finished
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );
}

#[tokio::test]
async fn malformed_header_closes_the_connection() {
    let server = start_server().await;
    let mut raw = Raw::connect(server.addr).await;
    // Valid prefix, header of one byte that is not a complete protobuf field.
    raw.send(&[0, 0, 0, 7, b'M', b'P', 1, 0, 0, 1, 0x08]).await;
    assert_goaway(&raw.until_closed().await, "malformed");
    // Non-zero reserved flags.
    let mut raw = Raw::connect(server.addr).await;
    let mut frame = request(1, "Echo", b"x");
    frame[7] = 1;
    raw.send(&frame).await;
    assert_goaway(&raw.until_closed().await, "malformed");
    assert_still_serving(&server).await;
}

#[tokio::test]
async fn ping_is_answered_and_stray_frames_are_ignored() {
    let server = start_server().await;
    let mut raw = Raw::connect(server.addr).await;
    raw.send(&control(Kind::Pong, 1)).await;
    raw.send(&control(Kind::Response, 2)).await;
    raw.send(&control(Kind::Cancel, 99)).await;
    raw.send(&control(Kind::Ping, 42)).await;
    let pong = raw.frame().await;
    assert_eq!((pong.header.kind, pong.header.request_id), (Kind::Pong, 42));
}

#[tokio::test]
async fn peer_vanishing_mid_call_aborts_the_work() {
    let server = start_server().await;
    let mut raw = Raw::connect(server.addr).await;
    raw.send(&request(1, "Sleep", &num(60_000))).await;
    let counters = server.probe.counters.clone();
    assert!(
        support::eventually(Duration::from_secs(5), || counters
            .started
            .load(std::sync::atomic::Ordering::SeqCst)
            == 1)
        .await
    );
    drop(raw);
    assert!(
        support::eventually(Duration::from_secs(5), || counters
            .dropped
            .load(std::sync::atomic::Ordering::SeqCst)
            == 1)
        .await,
        "the handler of a vanished peer is dropped"
    );
    assert_still_serving(&server).await;
}

#[tokio::test]
async fn silent_connections_are_closed_after_the_idle_timeout() {
    let period = Duration::from_millis(200);
    let server = start_server_with(|b| b.idle_timeout(Some(period))).await;

    // A peer that never sends a frame is sent GOAWAY and closed.
    let mut silent = Raw::connect(server.addr).await;
    let frames = silent.until_closed().await;
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0].header.kind, Kind::GoAway);
    assert_eq!(frames[0].header.status, Code::Ok);

    // Pings count as activity: several periods pass and the connection stays.
    let mut pinging = Raw::connect(server.addr).await;
    let until = tokio::time::Instant::now() + 4 * period;
    let mut id = 0;
    while tokio::time::Instant::now() < until {
        id += 1;
        pinging.send(&control(Kind::Ping, id)).await;
        let pong = pinging.frame().await;
        assert_eq!((pong.header.kind, pong.header.request_id), (Kind::Pong, id));
        tokio::time::sleep(period / 4).await;
    }

    // A call in flight longer than two periods keeps its connection.
    pinging.send(&request(100, "Sleep", &num(500))).await;
    let reply = pinging.frame().await;
    assert_eq!(
        (
            reply.header.kind,
            reply.header.request_id,
            reply.header.status
        ),
        (Kind::Response, 100, Code::Ok)
    );

    // Silence afterwards closes it like any other.
    let frames = pinging.until_closed().await;
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0].header.kind, Kind::GoAway);
    assert_eq!(frames[0].header.request_id, 100, "the last call it started");
    assert_still_serving(&server).await;
}
