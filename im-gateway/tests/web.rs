//! The web client's files as the gateway serves them: the right types, a policy that keeps
//! scripts and connections to the gateway, and nothing else under `/`.

mod support;

use std::net::SocketAddr;

use im_common::bus::Bus;
use im_gateway::Settings;
use support::*;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// A plain HTTP/1.1 GET: the status line and the headers (lower-cased), and the body.
async fn get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    (head.to_lowercase(), body.to_owned())
}

#[tokio::test]
async fn the_page_its_script_and_style() {
    let cluster = Cluster::start(Bus::in_process(), true).await;
    let gateway = cluster.gateway("web", Settings::default()).await;

    let (head, body) = get(gateway.ws, "/").await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        head.contains("content-type: text/html; charset=utf-8"),
        "{head}"
    );
    assert!(head.contains("content-security-policy: default-src 'none'; script-src 'self'"));
    assert!(head.contains("x-content-type-options: nosniff"));
    assert!(body.contains(r#"<script src="app.js" defer></script>"#));
    // Nothing from elsewhere: every reference is relative to the gateway.
    assert!(
        !body.contains("http://") && !body.contains("https://"),
        "{body}"
    );

    let (head, script) = get(gateway.ws, "/app.js").await;
    assert!(head.contains("content-type: text/javascript"), "{head}");
    assert!(script.contains("new WebSocket"));
    // User-supplied text goes into text nodes: the script never writes HTML.
    assert!(!script.contains("innerHTML") && !script.contains("insertAdjacentHTML"));
    let (head, _) = get(gateway.ws, "/app.css").await;
    assert!(head.contains("content-type: text/css"), "{head}");

    for path in [
        "/nothing",
        "/../Cargo.toml",
        "/app.js/x",
        "/%2e%2e/etc/passwd",
    ] {
        let (head, _) = get(gateway.ws, path).await;
        assert!(head.starts_with("http/1.1 404"), "{path}: {head}");
    }
    cluster.close().await;
}

#[tokio::test]
async fn health_says_whether_the_gateway_takes_clients() {
    let cluster = Cluster::start(Bus::in_process(), true).await;
    let settings = Settings {
        max_connections: 1,
        ..Settings::default()
    };
    let gateway = cluster.gateway("health", settings).await;
    let (head, body) = get(gateway.ws, "/healthz").await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(body, "ok\n");

    // Full: its one connection is taken.
    let mut client = Client::tcp(gateway.tcp).await;
    client.register_login(&name("health"), "d1").await;
    let (head, body) = get(gateway.ws, "/healthz").await;
    assert!(head.starts_with("http/1.1 503"), "{head}");
    assert_eq!(body, "full\n");
    drop(client);
    let deadline = tokio::time::Instant::now() + WAIT;
    while !get(gateway.ws, "/healthz")
        .await
        .0
        .starts_with("http/1.1 200")
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the closed connection is let go"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}
