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
    let ended = support::eventually(Duration::from_secs(10), || server.server.connections() == 0);
    assert!(
        ended.await,
        "every garbage connection ended on the server too"
    );
    assert_still_serving(&server).await;
}

#[tokio::test]
async fn truncated_frame_then_close() {
    let server = start_server().await;
    let mut raw = Raw::connect(server.addr).await;
    let frame = request(1, "Echo", b"hello");
    raw.send(&frame[..frame.len() - 3]).await;
    raw.stream.shutdown().await.expect("half-close");
    let frames = raw.until_closed().await;
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_goaway(&frames, "inside a frame");
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
async fn request_ids_must_increase_and_the_goaway_names_the_highest() {
    let server = start_server().await;
    // A reused id, even of a call still in flight, breaks the rule: no second answer can
    // be confused with the first.
    let mut raw = Raw::connect(server.addr).await;
    raw.send(&request(5, "Sleep", &num(60_000))).await;
    raw.send(&request(5, "Echo", b"dup")).await;
    let frames = raw.until_closed().await;
    assert_goaway(&frames, "increase");
    let goaway = frames
        .iter()
        .find(|f| f.header.kind == Kind::GoAway)
        .unwrap();
    assert_eq!(goaway.header.request_id, 5, "the highest id received");

    // A smaller id after a larger one, after the first call was answered.
    let mut raw = Raw::connect(server.addr).await;
    raw.send(&request(9, "Echo", b"a")).await;
    assert_eq!(raw.frame().await.header.status, Code::Ok);
    raw.send(&request(3, "Echo", b"b")).await;
    assert_goaway(&raw.until_closed().await, "increase");

    // Id 0 is reserved: a GOAWAY with id 0 means "no request received".
    let mut raw = Raw::connect(server.addr).await;
    raw.send(&request(0, "Echo", b"zero")).await;
    let frames = raw.until_closed().await;
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_goaway(&frames, "non-zero");
    assert_eq!(frames[0].header.request_id, 0);

    // Gaps are fine.
    let mut raw = Raw::connect(server.addr).await;
    for id in [1, 2, 10, 1_000_000] {
        raw.send(&request(id, "Echo", b"x")).await;
        let reply = raw.frame().await;
        assert_eq!(
            (reply.header.request_id, reply.header.status),
            (id, Code::Ok)
        );
    }
    assert_still_serving(&server).await;
}

#[tokio::test]
async fn malformed_header_closes_the_connection() {
    let server = start_server().await;
    let mut raw = Raw::connect(server.addr).await;
    // Valid prefix, header of one byte that is not a complete protobuf field.
    raw.send(&[0, 0, 0, 7, b'M', b'P', 1, 0, 0, 1, 0x08]).await;
    assert_goaway(&raw.until_closed().await, "varint");
    // Non-zero reserved flags.
    let mut raw = Raw::connect(server.addr).await;
    let mut frame = request(1, "Echo", b"x");
    frame[7] = 1;
    raw.send(&frame).await;
    assert_goaway(&raw.until_closed().await, "flags");
    assert_still_serving(&server).await;
}

#[tokio::test]
async fn the_size_cap_bounds_the_length_field_inclusively() {
    let cap = 1024;
    let server = start_server_with(|b| b.max_frame(cap)).await;
    let header_part = request(1, "Echo", &[]).len() - 4;
    // A frame whose length field is exactly the cap is served.
    let exact = request(1, "Echo", &vec![b'x'; cap - header_part]);
    assert_eq!(exact.len(), 4 + cap);
    let mut raw = Raw::connect(server.addr).await;
    raw.send(&exact).await;
    let reply = raw.frame().await;
    assert_eq!(
        (reply.header.request_id, reply.header.status),
        (1, Code::Ok)
    );
    // One byte more is a protocol error.
    raw.send(&request(2, "Echo", &vec![b'x'; cap - header_part + 1]))
        .await;
    assert_goaway(&raw.until_closed().await, "size cap");
}

#[tokio::test]
async fn inconsistent_lengths_and_kinds_close_the_connection() {
    let server = start_server().await;
    let cases: [(Vec<u8>, &str); 6] = [
        // Length below the fixed prefix (6 bytes after the length field).
        (
            vec![0, 0, 0, 5, b'M', b'P', 1, 0, 0],
            "shorter than the fixed prefix",
        ),
        // Header length past the end of the frame.
        (
            vec![0, 0, 0, 8, b'M', b'P', 1, 0, 0, 9, 0x08, 0x01],
            "past the end",
        ),
        // Kind 0 (unset) and kind 7 (unknown).
        (support::raw_frame(&[0x10, 0x01], &[]), "frame kind"),
        (
            support::raw_frame(&[0x08, 0x07, 0x10, 0x01], &[]),
            "frame kind",
        ),
        // A service name that is not UTF-8.
        (
            support::raw_frame(&[0x08, 0x01, 0x10, 0x01, 0x1A, 0x02, 0xC3, 0x28], &[]),
            "UTF-8",
        ),
        // A metadata value that is not UTF-8.
        (
            support::raw_frame(
                &[0x08, 0x01, 0x10, 0x01, 0x42, 0x04, 0x12, 0x02, 0xFF, 0xFE],
                &[],
            ),
            "UTF-8",
        ),
    ];
    for (bytes, reason) in cases {
        let mut raw = Raw::connect(server.addr).await;
        raw.send(&bytes).await;
        assert_goaway(&raw.until_closed().await, reason);
    }
    assert_still_serving(&server).await;
}

#[tokio::test]
async fn frames_only_a_server_sends_close_the_connection() {
    let server = start_server().await;
    for (kind, name) in [
        (Kind::Response, "RESPONSE"),
        (Kind::Pong, "PONG"),
        (Kind::GoAway, "GOAWAY"),
    ] {
        let mut raw = Raw::connect(server.addr).await;
        raw.send(&control(kind, 1)).await;
        assert_goaway(&raw.until_closed().await, name);
    }
    assert_still_serving(&server).await;
}

#[tokio::test]
async fn ping_is_answered_and_cancel_of_an_unknown_id_is_ignored() {
    let server = start_server().await;
    let mut raw = Raw::connect(server.addr).await;
    raw.send(&control(Kind::Cancel, 99)).await;
    raw.send(&control(Kind::Ping, 42)).await;
    let pong = raw.frame().await;
    assert_eq!((pong.header.kind, pong.header.request_id), (Kind::Pong, 42));
    // Pings may reuse ids and id 0: they are not requests.
    raw.send(&control(Kind::Ping, 0)).await;
    assert_eq!(raw.frame().await.header.kind, Kind::Pong);
    // A cancel of a finished call is ignored too.
    raw.send(&request(1, "Echo", b"done")).await;
    assert_eq!(raw.frame().await.header.status, Code::Ok);
    raw.send(&control(Kind::Cancel, 1)).await;
    raw.send(&request(2, "Echo", b"next")).await;
    let reply = raw.frame().await;
    assert_eq!(
        (reply.header.request_id, reply.header.status),
        (2, Code::Ok)
    );
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

/// Opens silent connections one after another, each once the last was sent its GOAWAY,
/// and checks that each is told to go away for being idle. Two of them take more than two
/// idle periods by the server's own clock: a connection that never sends a frame is found
/// idle at its first check, a period after it opened.
fn silent_witnesses(addr: std::net::SocketAddr, n: usize) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        for _ in 0..n {
            let goaway = Raw::connect(addr).await.frame().await;
            assert_eq!(
                (goaway.header.kind, goaway.header.status),
                (Kind::GoAway, Code::Ok)
            );
        }
    })
}

#[tokio::test]
async fn silent_connections_are_closed_after_the_idle_timeout() {
    // Pings below go out every tenth of a period: a pause of most of a period on a loaded
    // machine is still tolerated.
    let period = Duration::from_millis(500);
    let server = start_server_with(|b| b.idle_timeout(Some(period))).await;

    // Pings count as activity: while two silent peers in turn are found idle, more than two
    // periods, a connection that pings stays. Without its pings it would be sent GOAWAY
    // within two periods of its first frame.
    let mut pinging = Raw::connect(server.addr).await;
    let mut id = 0;
    let mut ping = async |raw: &mut Raw| {
        id += 1;
        raw.send(&control(Kind::Ping, id)).await;
        let pong = raw.frame().await;
        assert_eq!((pong.header.kind, pong.header.request_id), (Kind::Pong, id));
    };
    ping(&mut pinging).await;
    let witnesses = silent_witnesses(server.addr, 2);
    while !witnesses.is_finished() {
        ping(&mut pinging).await;
        tokio::time::sleep(period / 10).await;
    }
    witnesses.await.expect("silent peers sent GOAWAY");
    ping(&mut pinging).await;

    // A call in flight for more than two periods keeps its connection.
    pinging.send(&request(100, "Hold", &num(100))).await;
    server.started(1).await;
    silent_witnesses(server.addr, 2)
        .await
        .expect("silent peers sent GOAWAY");
    server.probe.release(1);
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
