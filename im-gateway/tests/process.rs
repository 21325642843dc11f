//! `im-gateway` as its own process: it serves TCP, WebSocket and `/metrics`, says GoAway and
//! exits cleanly on SIGTERM, and refuses a bad configuration naming the key.

mod support;

use im_common::serve::testing::{ConfigFile, ServiceProcess, http_get, refused};
use im_proto::client::Ping;
use im_proto::client::request::Command;
use im_proto::client::server_message::Body;
use support::Client;

const BINARY: &str = env!("CARGO_BIN_EXE_im-gateway");

/// A port nothing listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn serves_both_transports_and_stops_on_sigterm() {
    let (tcp, ws) = (free_port(), free_port());
    let config = ConfigFile::new(
        "im-gateway.toml",
        &format!(
            "[server]\nlisten = \"127.0.0.1:{tcp}\"\nmetrics_listen = \"127.0.0.1:0\"\n\
             [ws]\nlisten = \"127.0.0.1:{ws}\"\n\
             [gateway]\nid = \"gw-process-{tcp}\"\nshutdown_grace_ms = 500\n"
        ),
    );
    let process = ServiceProcess::start(BINARY, &config.path);
    let mut binary = Client::tcp(([127, 0, 0, 1], tcp).into()).await;
    assert!(matches!(
        binary.ok(Command::Ping(Ping {})).await,
        Body::Pong(_)
    ));
    let mut json = Client::ws(([127, 0, 0, 1], ws).into(), true).await;
    assert!(matches!(
        json.ok(Command::Ping(Ping {})).await,
        Body::Pong(_)
    ));
    let metrics = http_get(&process.metrics, "/metrics").await;
    assert!(metrics.contains("mpim_gateway_connections"), "{metrics}");
    assert!(
        metrics.contains("mpim_gateway_frames_in_total"),
        "{metrics}"
    );

    assert!(process.terminate(), "exit status 0 after SIGTERM");
    for client in [&mut binary, &mut json] {
        let seen = client.closed().await;
        assert!(
            seen.iter().any(|m| matches!(m.body, Some(Body::GoAway(_)))),
            "{seen:?}"
        );
    }
}

#[test]
fn a_bad_config_is_refused_naming_the_key() {
    let stderr = refused(BINARY, "[gateway]\nmax_queued = 0\n");
    assert!(stderr.contains("gateway.max_queued"), "{stderr}");
    let stderr = refused(BINARY, "[gateway]\nmax_queud = 5\n");
    assert!(stderr.contains("max_queud"), "{stderr}");
}
