//! Health service and Prometheus metrics.

mod support;

use std::time::Duration;

use mprpc::health::{CheckRequest, HealthClient, Serving};
use mprpc::{CallOptions, Method};
use support::{Num, PROBE, eventually, start_server_with};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn health_reports_serving_then_not_serving_while_draining() {
    let mut server = start_server_with(|b| b.grace_period(Duration::from_secs(5))).await;
    let health = HealthClient::new(server.client());
    let check = |service: &str| CheckRequest {
        service: service.into(),
    };
    assert_eq!(
        health.check(&check("")).await.expect("check").status,
        Serving::Serving as i32
    );
    assert_eq!(
        health.check(&check(PROBE)).await.expect("check").status,
        Serving::Serving as i32
    );
    assert_eq!(
        health.check(&check("no.Such")).await.expect("check").status,
        Serving::ServiceUnknown as i32
    );

    // A call in flight keeps the connection open while the server drains.
    let mut raw = support::Raw::connect(server.addr).await;
    raw.send(&support::request(1, "Sleep", &support::num(300)))
        .await;
    let counters = server.probe.counters.clone();
    let started = || counters.started.load(std::sync::atomic::Ordering::SeqCst) == 1;
    assert!(eventually(Duration::from_secs(5), started).await);
    server.shutdown();
    let goaway = raw.frame().await;
    assert_eq!(goaway.header.kind, mprpc::frame::Kind::GoAway);
    // Health is still answered on a draining connection, and says so.
    let body = prost::Message::encode_to_vec(&check(""));
    raw.send(&support::request_to(
        2,
        "mprpc.health.Health",
        "Check",
        &body,
    ))
    .await;
    let reply = raw.frame().await;
    assert_eq!(
        (reply.header.request_id, reply.header.status),
        (2, mprpc::Code::Ok)
    );
    let status: mprpc::health::CheckResponse = prost::Message::decode(reply.body).expect("decodes");
    assert_eq!(status.status, Serving::NotServing as i32);
    let done = raw.frame().await;
    assert_eq!(
        (done.header.request_id, done.header.status),
        (1, mprpc::Code::Ok)
    );
}

#[tokio::test]
async fn metrics_count_calls_by_method_and_code_and_serve_over_http() {
    let handle = mprpc::metrics::install().expect("first recorder in this test binary");
    let server = start_server_with(|b| b).await;
    let client = server.client();
    for _ in 0..3 {
        let _: Num = client
            .unary(
                &Method::new(PROBE, "Sleep"),
                &Num { value: 0 },
                &CallOptions::new(),
            )
            .await
            .expect("call");
    }
    let fail = Num {
        value: mprpc::Code::NotFound as u64,
    };
    let _ = client
        .unary::<_, Num>(&Method::new(PROBE, "Fail"), &fail, &CallOptions::new())
        .await;

    let text = handle.render();
    let line = |needle: &str| {
        text.lines()
            .find(|l| l.starts_with(needle) && l.contains("test.Probe"))
            .map(str::to_owned)
    };
    let sleep_ok = text
        .lines()
        .find(|l| {
            l.starts_with("mprpc_server_requests_total")
                && l.contains(r#"method="Sleep""#)
                && l.contains(r#"code="OK""#)
        })
        .expect("Sleep/OK counter");
    assert!(sleep_ok.ends_with(" 3"), "{sleep_ok}");
    let fail_nf = text
        .lines()
        .find(|l| {
            l.starts_with("mprpc_server_requests_total")
                && l.contains(r#"method="Fail""#)
                && l.contains(r#"code="NOT_FOUND""#)
        })
        .expect("Fail/NOT_FOUND counter");
    assert!(fail_nf.ends_with(" 1"), "{fail_nf}");
    assert!(
        line("mprpc_server_request_duration_seconds_bucket").is_some(),
        "latency histogram"
    );
    assert!(text.contains("mprpc_client_connections"), "pool gauge");

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let http = tokio::spawn(mprpc::metrics::serve(listener, handle, async move {
        let _ = stopped.await;
    }));
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("write");
    let mut body = String::new();
    stream.read_to_string(&mut body).await.expect("read");
    assert!(body.starts_with("HTTP/1.1 200 OK"), "{body}");
    assert!(body.contains("mprpc_server_requests_total"));
    let _ = stop.send(());
    http.await.expect("join").expect("served");
}
