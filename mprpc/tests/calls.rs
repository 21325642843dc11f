//! Calls through the client: multiplexing, deadlines, cancellation, statuses, reconnects.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use mprpc::{CallOptions, Client, Code, Error, Method};
use support::{Num, PROBE, eventually, start_server};

async fn sleep_call(client: &Client, ms: u64, options: &CallOptions) -> Result<Num, Error> {
    client
        .unary(&Method::new(PROBE, "Sleep"), &Num { value: ms }, options)
        .await
}

#[tokio::test]
async fn a_slow_call_does_not_block_others_on_the_same_connection() {
    let server = start_server().await;
    let client = Client::builder()
        .pool_size(1)
        .connect_lazy(server.addr.to_string());
    let slow = server.spawn_hold(&client, 1_000);
    server.started(1).await;
    // 200 quick calls complete while the slow one is held on the one connection.
    let mut quick = tokio::task::JoinSet::new();
    for _ in 0..200 {
        let client = client.clone();
        quick.spawn(async move { sleep_call(&client, 0, &CallOptions::new()).await });
    }
    while let Some(result) = quick.join_next().await {
        result.expect("join").expect("quick call");
    }
    assert!(!slow.is_finished(), "the slow call is still in flight");
    assert_eq!(server.server.connections(), 1);
    server.probe.release(1);
    assert_eq!(slow.await.expect("join").expect("slow call").value, 1_000);
}

#[tokio::test]
async fn the_deadline_travels_to_the_server() {
    let server = start_server().await;
    // Longer than the client's default (10 s), so the server cannot have seen that one.
    let timeout = Duration::from_secs(20);
    let client = server.client();
    let options = CallOptions::new().timeout(timeout);
    let sent = tokio::time::Instant::now();
    let left: Num = client
        .unary(&Method::new(PROBE, "Remaining"), &Num::default(), &options)
        .await
        .expect("call");
    // The budget the server saw is what was left of the caller's once the request arrived:
    // at most the whole of it, and at least what remained when the answer came back
    // (less a microsecond of rounding each way).
    let at_answer = timeout.saturating_sub(sent.elapsed()).as_micros() as u64;
    assert!(
        left.value <= timeout.as_micros() as u64 && left.value + 2 >= at_answer,
        "server saw {} us left; {at_answer} us were left when the answer came",
        left.value
    );

    // No deadline at all: the server sees none.
    let untimed = Client::builder()
        .timeout(None)
        .connect_lazy(server.addr.to_string());
    let left: Num = untimed
        .unary(
            &Method::new(PROBE, "Remaining"),
            &Num::default(),
            &CallOptions::new(),
        )
        .await
        .expect("call");
    assert_eq!(left.value, 0);
}

#[tokio::test]
async fn an_expired_deadline_fails_the_call_and_stops_the_work() {
    let server = start_server().await;
    let client = server.client();
    // Long enough for the handler to start on a loaded machine: the work must be stopped,
    // not merely never begun.
    let options = CallOptions::new().timeout(Duration::from_secs(1));
    let err = sleep_call(&client, 60_000, &options)
        .await
        .expect_err("times out");
    assert!(matches!(err, Error::DeadlineExceeded), "{err:?}");
    assert_eq!(err.code(), Code::DeadlineExceeded);
    assert!(!err.is_retry_safe());
    let counters = server.probe.counters.clone();
    assert!(
        eventually(Duration::from_secs(5), || counters
            .dropped
            .load(Ordering::SeqCst)
            == 1)
        .await,
        "the server dropped the handler"
    );
    assert_eq!(counters.started.load(Ordering::SeqCst), 1);
    assert_eq!(counters.finished.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn the_server_enforces_the_deadline_it_was_sent() {
    let server = start_server().await;
    let mut raw = support::Raw::connect(server.addr).await;
    let header = mprpc::Header {
        kind: mprpc::frame::Kind::Request,
        request_id: 1,
        service: mprpc::Text::from_static(PROBE),
        method: mprpc::Text::from_static("Sleep"),
        // Long enough for the handler to start on a loaded machine.
        timeout_us: 1_000_000,
        ..Default::default()
    };
    let mut frame = bytes::BytesMut::new();
    mprpc::frame::encode_raw(&mut frame, &header, &support::num(60_000), 1 << 20).expect("fits");
    raw.send(&frame).await;
    let reply = raw.frame().await;
    assert_eq!(
        (reply.header.request_id, reply.header.status),
        (1, Code::DeadlineExceeded)
    );
    // The handler is dropped before its answer is queued.
    let counters = &server.probe.counters;
    assert_eq!(
        (
            counters.started.load(Ordering::SeqCst),
            counters.dropped.load(Ordering::SeqCst),
            counters.finished.load(Ordering::SeqCst)
        ),
        (1, 1, 0)
    );
}

#[tokio::test]
async fn dropping_the_call_cancels_it_on_the_server() {
    let server = start_server().await;
    let client = server.client();
    let call = server.spawn_sleep(&client, 60_000);
    server.started(1).await;
    call.abort();
    assert!(
        eventually(Duration::from_secs(5), || server
            .probe
            .counters
            .dropped
            .load(Ordering::SeqCst)
            == 1)
        .await,
        "CANCEL reached the server"
    );
    assert!(eventually(Duration::from_secs(5), || client.in_flight() == 0).await);
    // The connection is still good.
    assert_eq!(
        sleep_call(&client, 0, &CallOptions::new())
            .await
            .expect("call")
            .value,
        0
    );
}

#[tokio::test]
async fn statuses_reach_the_caller_intact() {
    let server = start_server().await;
    let client = server.client();
    for code in [
        Code::NotFound,
        Code::PermissionDenied,
        Code::Unavailable,
        Code::Internal,
    ] {
        let err = client
            .unary::<_, Num>(
                &Method::new(PROBE, "Fail"),
                &Num { value: code as u64 },
                &CallOptions::new(),
            )
            .await
            .expect_err("fails");
        let Error::Status(status) = &err else {
            panic!("expected a status, got {err:?}")
        };
        assert_eq!(status.code(), code);
        assert_eq!(status.message(), "asked to fail");
        assert_eq!(err.is_retry_safe(), code == Code::Unavailable);
    }
    let err = client
        .unary::<_, Num>(
            &Method::new("no.Such", "Thing"),
            &Num::default(),
            &CallOptions::new(),
        )
        .await
        .expect_err("unknown service");
    assert_eq!(err.code(), Code::Unimplemented);
}

#[tokio::test]
async fn metadata_reaches_the_handler() {
    let server = start_server().await;
    let client = server.client();
    let options = CallOptions::new().metadata("k", "trace-123");
    // `Meta` answers with the metadata value it received.
    let mut raw = support::Raw::connect(server.addr).await;
    let header = mprpc::Header {
        kind: mprpc::frame::Kind::Request,
        request_id: 9,
        service: mprpc::Text::from_static(PROBE),
        method: mprpc::Text::from_static("Meta"),
        metadata: vec![("k".into(), "trace-123".into())],
        ..Default::default()
    };
    let mut frame = bytes::BytesMut::new();
    mprpc::frame::encode_raw(&mut frame, &header, &[], 1 << 20).expect("fits");
    raw.send(&frame).await;
    let reply: support::Str = prost::Message::decode(raw.frame().await.body).expect("a Str");
    assert_eq!(reply.value, "trace-123");
    // Through the client the same metadata arrives.
    let reply: support::Str = client
        .unary(&Method::new(PROBE, "Meta"), &Num::default(), &options)
        .await
        .expect("call");
    assert_eq!(reply.value, "trace-123");
    // A body that is not the expected message is a decode error, not a wrong value.
    let err = client
        .unary::<_, Num>(&Method::new(PROBE, "Meta"), &Num::default(), &options)
        .await
        .expect_err("not a Num");
    assert!(matches!(err, Error::Decode(_)), "{err:?}");
}

#[tokio::test]
async fn connect_failures_are_retry_safe_and_the_client_recovers() {
    // Reserve a port, then free it so nothing listens there.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let client = Client::builder()
        .backoff(Duration::from_millis(10), Duration::from_millis(50))
        .timeout(Some(Duration::from_secs(5)))
        .connect_lazy(addr.to_string());
    let err = client.ping().await.expect_err("nothing listens");
    assert!(
        matches!(err, Error::Connect { .. } | Error::Unavailable(_)),
        "{err:?}"
    );
    assert!(err.is_retry_safe());

    // A server appears on that port; after the backoff the same client reaches it.
    let listener = tokio::net::TcpListener::bind(addr).await.expect("rebind");
    let server = mprpc::Server::builder()
        .add_service(support::Probe::default())
        .build();
    let task = tokio::spawn(async move { server.serve(listener, std::future::pending()).await });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while client.ping().await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the client did not reconnect"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    task.abort();
}

#[tokio::test]
async fn requests_over_the_frame_cap_fail_locally() {
    // The server shares the cap: had the client sent the frame, the server would have
    // closed the connection and the client would have had to dial again.
    let server = support::start_server_with(|b| b.max_frame(1024)).await;
    let relay = support::relay::Relay::start(server.addr.to_string()).await;
    let client = Client::builder()
        .pool_size(1)
        .max_frame(1024)
        .connect_lazy(relay.hosts());
    let small = sleep_call(&client, 1, &CallOptions::new())
        .await
        .expect("a request under the cap");
    assert_eq!(small.value, 1);
    #[derive(Clone, PartialEq, prost::Message)]
    struct Blob {
        #[prost(bytes = "vec", tag = "1")]
        data: Vec<u8>,
    }
    let err = client
        .unary::<_, Blob>(
            &Method::new(PROBE, "Echo"),
            &Blob {
                data: vec![0; 4096],
            },
            &CallOptions::new(),
        )
        .await
        .expect_err("too large");
    assert!(matches!(err, Error::TooLarge(_)), "{err:?}");
    // Nothing was sent, so the connection is still fine.
    client.ping().await.expect("the same connection answers");
    assert_eq!(relay.accepted(), 1, "no second connection was needed");
    assert_eq!(relay.closed_by_target(), 0);
}

#[tokio::test]
async fn total_in_flight_limit_sheds_with_resource_exhausted() {
    let server = support::start_server_with(|b| b.max_in_flight(1)).await;
    let client = server.client();
    let slow = server.spawn_hold(&client, 1);
    server.started(1).await;
    let err = sleep_call(&client, 0, &CallOptions::new())
        .await
        .expect_err("shed");
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(err.is_retry_safe());
    assert_eq!(
        server.probe.counters.started.load(Ordering::SeqCst),
        1,
        "the shed call did not run"
    );
    server.probe.release(1);
    slow.await.expect("join").expect("the first call completes");
    sleep_call(&client, 0, &CallOptions::new())
        .await
        .expect("capacity is back");
}

#[tokio::test]
async fn per_connection_limit_queues_calls_instead_of_shedding_them() {
    use support::{Raw, num, request};
    let server = support::start_server_with(|b| b.max_in_flight_per_connection(2)).await;
    // All three requests in one write: the third is at the server before any call ends.
    let mut raw = Raw::connect(server.addr).await;
    let mut burst = request(1, "Hold", &num(1));
    burst.extend_from_slice(&request(2, "Hold", &num(2)));
    burst.extend_from_slice(&request(3, "Hold", &num(3)));
    raw.send(&burst).await;
    server.started(2).await;

    // The third request waits unread until one of the first two finishes.
    server.probe.release(1);
    server.started(3).await;
    assert_eq!(
        server.probe.finished_when_held(),
        [0, 0, 1],
        "the third call started only after a slot was freed"
    );
    server.probe.release(2);
    let mut answered: Vec<(u64, Code)> = Vec::new();
    for _ in 0..3 {
        let reply = raw.frame().await;
        answered.push((reply.header.request_id, reply.header.status));
    }
    answered.sort_by_key(|(id, _)| *id);
    assert_eq!(
        answered,
        [(1, Code::Ok), (2, Code::Ok), (3, Code::Ok)],
        "queued, not shed"
    );
}

#[tokio::test]
async fn at_the_connection_limit_an_idle_connection_makes_room() {
    use mprpc::frame::Kind;
    use support::{Raw, control};
    // Both connections were just active: a newcomer is told at once that there is no room.
    // A connection becomes evictable after a second of silence, so an attempt that took
    // nearly that long proves nothing and is made again on a fresh server.
    let mut attempts = 0;
    let (server, mut busy, mut quiet) = loop {
        attempts += 1;
        let server = support::start_server_with(|b| b.max_connections(2)).await;
        let began = tokio::time::Instant::now();
        let mut busy = Raw::connect(server.addr).await;
        let mut quiet = Raw::connect(server.addr).await;
        for raw in [&mut busy, &mut quiet] {
            raw.send(&control(Kind::Ping, 1)).await;
            assert_eq!(raw.frame().await.header.kind, Kind::Pong);
        }
        let frames = Raw::connect(server.addr).await.until_closed().await;
        let refused = frames.len() == 1
            && (frames[0].header.kind, frames[0].header.status)
                == (Kind::GoAway, Code::ResourceExhausted);
        if refused {
            break (server, busy, quiet);
        }
        assert!(
            began.elapsed() >= Duration::from_millis(900),
            "a newcomer got in while both connections were active: {frames:?}"
        );
        assert!(attempts < 5, "every attempt took a second or more");
    };

    // Once `quiet` has been silent for a while (and `busy` has not), a newcomer takes
    // the place of `quiet`, which is told to go away.
    let started = tokio::time::Instant::now();
    let mut id = 1;
    let newcomer = loop {
        id += 1;
        busy.send(&control(Kind::Ping, id)).await;
        assert_eq!(busy.frame().await.header.kind, Kind::Pong);
        let mut raw = Raw::connect(server.addr).await;
        raw.send(&control(Kind::Ping, 7)).await;
        match raw.next().await {
            support::Next::Frame(f) if f.header.kind == Kind::Pong => break raw,
            _ => {}
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "no room was made"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let evicted = quiet.until_closed().await;
    assert_eq!(evicted.len(), 1, "{evicted:?}");
    assert_eq!(
        (evicted[0].header.kind, evicted[0].header.status),
        (Kind::GoAway, Code::Ok)
    );
    busy.send(&control(Kind::Ping, 100)).await;
    assert_eq!(busy.frame().await.header.kind, Kind::Pong, "busy kept");
    drop(newcomer);
}

#[tokio::test]
async fn a_connection_that_sends_no_frame_is_closed_after_the_handshake_timeout() {
    use mprpc::frame::Kind;
    use support::{Raw, control};
    let server = support::start_server_with(|b| {
        b.handshake_timeout(Some(Duration::from_secs(1)))
            .idle_timeout(None)
    })
    .await;
    // The connection that speaks opens first, so its handshake timeout is over by the
    // time the silent one's is.
    let mut greeted = Raw::connect(server.addr).await;
    greeted.send(&control(Kind::Ping, 1)).await;
    assert_eq!(greeted.frame().await.header.kind, Kind::Pong);
    let mut silent = Raw::connect(server.addr).await;

    let frames = silent.until_closed().await;
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(
        (frames[0].header.kind, frames[0].header.status),
        (Kind::GoAway, Code::DeadlineExceeded)
    );
    // Past its own handshake timeout, the connection that spoke is still served.
    greeted.send(&control(Kind::Ping, 2)).await;
    let pong = greeted.frame().await;
    assert_eq!((pong.header.kind, pong.header.request_id), (Kind::Pong, 2));
}

#[tokio::test]
async fn a_panicking_handler_fails_only_its_own_call() {
    let server = start_server().await;
    let client = Client::builder()
        .pool_size(1)
        .connect_lazy(server.addr.to_string());
    let slow = server.spawn_hold(&client, 300);
    server.started(1).await;
    for method in ["Panic", "PanicLater"] {
        let err = client
            .unary::<_, Num>(
                &Method::new(PROBE, method),
                &Num { value: 10 },
                &CallOptions::new(),
            )
            .await
            .expect_err("a panic fails the call");
        assert_eq!(err.code(), Code::Internal, "{method}: {err:?}");
        assert!(!err.is_retry_safe());
    }
    // The connection, and the call that was in flight on it, are untouched.
    assert!(!slow.is_finished(), "the held call is still in flight");
    server.probe.release(1);
    assert_eq!(slow.await.expect("join").expect("slow call").value, 300);
    sleep_call(&client, 0, &CallOptions::new())
        .await
        .expect("still served on the same connection");
    assert_eq!(server.server.connections(), 1);
}

#[tokio::test]
async fn a_response_over_the_frame_cap_is_not_retried() {
    let server = support::start_server_with(|b| b.max_frame(1024)).await;
    let client = Client::builder()
        .max_attempts(3)
        .connect_lazy(server.addr.to_string());
    let err = client
        .unary::<_, Num>(
            &Method::new(PROBE, "Big"),
            &Num { value: 4096 },
            &CallOptions::new(),
        )
        .await
        .expect_err("too large to send back");
    assert_eq!(err.code(), Code::Internal, "{err:?}");
    assert!(!err.is_retry_safe());
    assert_eq!(
        server.probe.counters.started.load(Ordering::SeqCst),
        1,
        "the handler ran once"
    );
}

#[tokio::test]
async fn a_spent_budget_is_refused_before_the_handler_runs() {
    // An interceptor that takes 20 ms spends a 5 ms budget before the handler would start.
    let server = support::start_server_with(|b| {
        b.intercept(|_: &mut mprpc::Context| {
            std::thread::sleep(Duration::from_millis(20));
            Ok(())
        })
    })
    .await;
    let mut raw = support::Raw::connect(server.addr).await;
    raw.send(&support::request_with(
        1,
        PROBE,
        "Sleep",
        5_000,
        &support::num(0),
    ))
    .await;
    let reply = raw.frame().await;
    assert_eq!(reply.header.status, Code::DeadlineExceeded);
    assert_eq!(server.probe.counters.started.load(Ordering::SeqCst), 0);

    // A handler that finishes after the deadline is answered DEADLINE_EXCEEDED, never OK.
    // The budget leaves a loaded machine time to start it; it then spins past the budget.
    let server = start_server().await;
    let mut raw = support::Raw::connect(server.addr).await;
    raw.send(&support::request_with(
        1,
        PROBE,
        "Spin",
        200_000,
        &support::num(400),
    ))
    .await;
    let reply = raw.frame().await;
    assert_eq!(reply.header.status, Code::DeadlineExceeded);
    assert_eq!(
        server.probe.counters.finished.load(Ordering::SeqCst),
        1,
        "the handler ran to the end"
    );
    // A 1 µs budget never gets an OK either, whether or not the handler got to start.
    raw.send(&support::request_with(
        2,
        PROBE,
        "Sleep",
        1,
        &support::num(63),
    ))
    .await;
    let reply = raw.frame().await;
    assert_eq!(
        (reply.header.request_id, reply.header.status),
        (2, Code::DeadlineExceeded)
    );
}

#[tokio::test]
async fn keepalive_gives_up_on_a_server_gone_silent() {
    let server = start_server().await;
    let relay = support::relay::Relay::start(server.addr.to_string()).await;
    // A pong has a whole period to come back: long enough for a loaded machine.
    let period = Duration::from_millis(500);
    let client = Client::builder()
        .pool_size(1)
        .keepalive(Some(period))
        .timeout(Some(Duration::from_secs(30)))
        .connect_lazy(relay.hosts());

    // A call silent for several periods on a healthy connection: the pings are answered.
    let silent_for = 4 * period.as_millis() as u64;
    sleep_call(&client, silent_for, &CallOptions::new())
        .await
        .expect("slow but alive");

    // The server goes silent with a call in flight, closing nothing: the call fails long
    // before its deadline, as not retry-safe since it may have run.
    let stuck = server.spawn_sleep(&client, 60_000);
    server.started(2).await;
    relay.freeze();
    let err = stuck
        .await
        .expect("join")
        .expect_err("the connection is given up");
    assert!(matches!(err, Error::ConnectionLost), "{err:?}");
    assert!(!err.is_retry_safe());

    // Once the network is back, the next call gets a new connection.
    relay.restore();
    sleep_call(&client, 0, &CallOptions::new())
        .await
        .expect("served on a new connection");
    assert_eq!(relay.accepted(), 2);
}

#[tokio::test]
async fn the_next_call_after_an_idle_close_reconnects() {
    let server =
        support::start_server_with(|b| b.idle_timeout(Some(Duration::from_millis(500)))).await;
    let relay = support::relay::Relay::start(server.addr.to_string()).await;
    let client = Client::builder().pool_size(1).connect_lazy(relay.hosts());
    sleep_call(&client, 0, &CallOptions::new())
        .await
        .expect("first call");
    let closed = eventually(Duration::from_secs(5), || relay.closed_by_target() == 1);
    assert!(closed.await, "the server closed the idle connection");

    // Not idempotent and not failed: the client read the GOAWAY and dials anew.
    sleep_call(&client, 0, &CallOptions::new())
        .await
        .expect("second call, on a new connection");
    assert_eq!(relay.accepted(), 2);
}

#[tokio::test]
async fn a_timeout_too_long_for_the_clock_means_no_deadline() {
    let server = start_server().await;
    let remaining = |client: Client, options: CallOptions| async move {
        let left: Num = client
            .unary(&Method::new(PROBE, "Remaining"), &Num::default(), &options)
            .await
            .expect("call");
        left.value
    };
    let per_call = CallOptions::new().timeout(Duration::MAX);
    assert_eq!(remaining(server.client(), per_call).await, 0);
    let by_default = Client::builder()
        .timeout(Some(Duration::MAX))
        .connect_lazy(server.addr.to_string());
    assert_eq!(remaining(by_default, CallOptions::new()).await, 0);
}
