//! Graceful shutdown: stop accepting, GOAWAY, finish in-flight calls, bounded by the grace
//! period.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use mprpc::frame::Kind;
use mprpc::{Code, Error};
use support::{Raw, num, request, start_server_with};

#[tokio::test]
async fn in_flight_calls_finish_and_late_ones_are_refused_retry_safe() {
    let mut server = start_server_with(|b| b.grace_period(Duration::from_secs(10))).await;
    let mut raw = Raw::connect(server.addr).await;
    raw.send(&request(1, "Hold", &num(1))).await;
    server.started(1).await;

    server.shutdown();
    let goaway = raw.frame().await;
    assert_eq!(
        (goaway.header.kind, goaway.header.status),
        (Kind::GoAway, Code::Ok)
    );
    assert_eq!(
        goaway.header.request_id, 1,
        "the highest request id the server started"
    );

    raw.send(&request(2, "Echo", b"late")).await;
    let late = raw.frame().await;
    assert_eq!(
        (late.header.request_id, late.header.status),
        (2, Code::Unavailable)
    );

    server.probe.release(1);
    let done = raw.frame().await;
    assert_eq!((done.header.request_id, done.header.status), (1, Code::Ok));
    assert!(raw.until_closed().await.is_empty(), "closed once drained");
    let served = tokio::time::timeout(Duration::from_secs(5), &mut server.task).await;
    served
        .expect("serve returned")
        .expect("join")
        .expect("no error");
    assert!(
        tokio::net::TcpStream::connect(server.addr).await.is_err(),
        "listener closed"
    );
}

#[tokio::test]
async fn the_client_moves_off_a_draining_connection() {
    let mut server = start_server_with(|b| b.grace_period(Duration::from_secs(10))).await;
    let client = server.client();
    let slow = server.spawn_sleep(&client, 300);
    server.started(1).await;
    server.shutdown();
    assert_eq!(
        slow.await
            .expect("join")
            .expect("in-flight call finishes")
            .value,
        300
    );
    // The old connection is draining and the listener is gone: a new call is not sent.
    let err = client.ping().await.expect_err("no server");
    assert!(err.is_retry_safe(), "{err:?}");
}

#[tokio::test]
async fn the_grace_period_bounds_the_drain() {
    let mut server = start_server_with(|b| b.grace_period(Duration::from_millis(200))).await;
    let client = server.client();
    let stuck = server.spawn_sleep(&client, 60_000);
    server.started(1).await;
    server.shutdown();
    let served = tokio::time::timeout(Duration::from_secs(5), &mut server.task).await;
    served
        .expect("serve returned after the grace period")
        .expect("join")
        .expect("no error");
    let err = stuck.await.expect("join").expect_err("aborted");
    assert!(matches!(err, Error::ConnectionLost), "{err:?}");
    assert!(!err.is_retry_safe(), "the call had started");
    let counters = server.probe.counters.clone();
    let dropped = support::eventually(Duration::from_secs(5), || {
        counters.dropped.load(Ordering::SeqCst) == 1
    });
    assert!(dropped.await, "the handler was dropped");
    assert_eq!(counters.finished.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_request_crossing_the_goaway_is_answered_unavailable() {
    // Nothing in flight: the server still lingers after its GOAWAY to answer requests
    // that were already on their way, instead of closing under them.
    let mut server = start_server_with(|b| b.grace_period(Duration::from_secs(10))).await;
    let mut raw = Raw::connect(server.addr).await;
    raw.send(&request(1, "Echo", b"first")).await;
    assert_eq!(raw.frame().await.header.status, Code::Ok);
    server.shutdown();
    let goaway = raw.frame().await;
    assert_eq!(
        (goaway.header.kind, goaway.header.request_id),
        (Kind::GoAway, 1)
    );
    raw.send(&request(2, "Echo", b"crossed")).await;
    let late = raw.frame().await;
    assert_eq!(
        (late.header.request_id, late.header.status),
        (2, Code::Unavailable)
    );
    assert!(
        raw.until_closed().await.is_empty(),
        "closed after the linger"
    );
    let served = tokio::time::timeout(Duration::from_secs(5), &mut server.task).await;
    served
        .expect("serve returned")
        .expect("join")
        .expect("no error");
}
