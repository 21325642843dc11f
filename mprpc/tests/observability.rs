//! The health service. Metrics are tested in `metrics.rs`, alone in their binary.

mod support;

use std::time::Duration;

use mprpc::health::{CheckRequest, HealthClient, Serving};
use support::{PROBE, start_server_with};

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
    raw.send(&support::request(1, "Hold", &support::num(1)))
        .await;
    server.started(1).await;
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
    server.probe.release(1);
    let done = raw.frame().await;
    assert_eq!(
        (done.header.request_id, done.header.status),
        (1, mprpc::Code::Ok)
    );
}
