//! The SDK over TLS, terminated in front of a real `mpim` as nginx terminates it in a
//! deployment: `tls://` and `wss://` with a private CA log in and carry a message; a client
//! that does not trust the CA, or that was given a host the certificate does not name, is
//! refused at connect with an error that says so.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use im_client::{Client, Error, Event, Options};
use support::mpim::Mpim;
use support::tls::{TestCa, TlsProxy};
use support::{alice_befriends_bob, next_event};

fn options(address: String, ca: &TestCa) -> Options {
    Options::new(address)
        .ca_file(&ca.pem_file)
        .reconnect(Duration::from_millis(50), Duration::from_millis(500))
}

/// The `host:port` of mpim's WebSocket URL, for the proxy to forward to.
fn ws_backend(url: &str) -> SocketAddr {
    let authority = url.trim_start_matches("ws://").split('/').next().unwrap();
    authority.parse().unwrap()
}

/// The connect error for `options`, which must come without a hang.
async fn refused(options: Options) -> String {
    let connect = tokio::time::timeout(support::DEADLINE, Client::connect(options));
    match connect.await.expect("refused within the deadline") {
        Ok(_) => panic!("the connection was accepted"),
        Err(err @ Error::Transport(_)) => err.to_string(),
        Err(other) => panic!("not a transport error: {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_wss_through_a_terminating_proxy_and_untrusted_servers_refused() {
    let mpim = Mpim::start();
    let ca = TestCa::new();
    let config = ca.server_config(&["localhost", "127.0.0.1"]);
    let tcp = TlsProxy::start(config.clone(), mpim.address.parse().unwrap()).await;
    let ws = TlsProxy::start(config, ws_backend(&mpim.ws)).await;

    // The TCP framing over TLS to an IP address, WebSocket over TLS to a DNS name.
    let tls_url = format!("tls://{}", tcp.addr);
    let wss_url = format!("wss://localhost:{}/ws", ws.addr.port());
    let (alice, _alice_events) = Client::connect(options(tls_url.clone(), &ca))
        .await
        .unwrap();
    let (bob, mut bob_events) = Client::connect(options(wss_url.clone(), &ca))
        .await
        .unwrap();
    let bob_id = alice_befriends_bob(&alice, &bob).await;
    let ack = alice.send(bob_id, "over tls").await.unwrap();
    loop {
        if let Event::Message(m) = next_event(&mut bob_events).await {
            assert_eq!((m.seq, m.body.as_str()), (ack.seq, "over tls"));
            break;
        }
    }

    // Only the compiled-in public roots: the private CA is unknown.
    let err = refused(Options::new(tls_url)).await;
    assert!(
        err.contains("certificate") && err.contains("UnknownIssuer"),
        "{err}"
    );
    // Trusted CA, but the certificate is for another host.
    let other = TlsProxy::start(ca.server_config(&["im.example"]), ws_backend(&mpim.ws)).await;
    let wrong_host = format!("wss://localhost:{}/ws", other.addr.port());
    let err = refused(options(wrong_host, &ca)).await;
    assert!(err.contains("not valid for name"), "{err}");
}
