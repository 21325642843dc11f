//! Mutual TLS: who may connect, what the handler learns of the caller, which instance a
//! client accepts, what a peer speaking the other protocol gets, and rotation without a
//! failed call. Certificates are made by a test CA at test time.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mprpc::discovery::Static;
use mprpc::tls::{ClientTls, PeerIdentity};
use mprpc::{CallOptions, Client, ClientBuilder, Context, Error, Method, ServerBuilder};
use support::pki::Ca;
use support::{Num, PROBE, TestServer};
use tokio::io::AsyncReadExt;
use tokio::time::Instant;

const GATEWAY: &str = "spiffe://mpim/gateway";

/// What the server's interceptor saw of one call: in process or not, and the caller's
/// verified certificate.
type Call = (bool, Option<PeerIdentity>);

/// Every call the server's interceptor saw.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<Call>>>);

impl Seen {
    fn record(&self) -> impl Fn(&mut Context) -> Result<(), mprpc::Status> + use<> {
        let seen = self.clone();
        move |ctx: &mut Context| {
            let call = (ctx.is_local(), ctx.peer_identity().cloned());
            seen.0.lock().unwrap().push(call);
            Ok(())
        }
    }

    fn calls(&self) -> Vec<Call> {
        self.0.lock().unwrap().clone()
    }
}

/// A probe server behind `tls`, recording what its interceptor sees.
async fn server(tls: mprpc::tls::ServerTls) -> (TestServer, Seen) {
    server_with(tls, |b| b).await
}

async fn server_with(
    tls: mprpc::tls::ServerTls,
    configure: impl FnOnce(ServerBuilder) -> ServerBuilder,
) -> (TestServer, Seen) {
    let seen = Seen::default();
    let record = seen.record();
    let server = support::start_server_with(|b| configure(b.tls(tls).intercept(record))).await;
    (server, seen)
}

fn builder() -> ClientBuilder {
    Client::builder().timeout(Some(Duration::from_secs(10)))
}

async fn echo(client: &Client, value: u64) -> Result<Num, Error> {
    client
        .unary(
            &Method::new(PROBE, "Echo"),
            &Num { value },
            &CallOptions::new(),
        )
        .await
}

#[tokio::test]
async fn mutual_tls_carries_calls_and_the_interceptor_sees_the_client_names() {
    let ca = Ca::new("cluster");
    let (server, seen) = server(ca.server(&[PROBE])).await;
    let tls = ClientTls::new(ca.pem().as_bytes())
        .unwrap()
        .identity(ca.issue(&["gw-1.mpim"], &[GATEWAY]))
        .unwrap()
        .server_name(PROBE);
    let client = builder().tls(tls).connect_lazy(server.addr.to_string());

    for value in 1..=3 {
        assert_eq!(echo(&client, value).await.expect("echoed").value, value);
    }
    let expected = PeerIdentity::new(vec!["gw-1.mpim".into()], vec![GATEWAY.into()]);
    let calls = seen.calls();
    assert_eq!(calls.len(), 3);
    for (local, identity) in calls {
        assert!(!local, "a socket call is never local");
        assert_eq!(identity.as_ref(), Some(&expected));
    }
}

#[tokio::test]
async fn in_process_calls_are_local_and_have_no_peer_identity() {
    let ca = Ca::new("cluster");
    let (server, seen) = server(ca.server(&[PROBE])).await;
    let client = Client::in_process(&server.server);
    assert_eq!(echo(&client, 7).await.expect("echoed").value, 7);
    assert_eq!(seen.calls(), vec![(true, None)]);
}

/// Asserts that `result` is the TLS refusal of a call, with `expected` in its reason.
fn assert_refused<T: std::fmt::Debug>(result: Result<T, Error>, expected: &str) {
    match result {
        Err(err @ Error::Tls { .. }) => {
            assert!(err.is_retry_safe());
            let text = err.to_string();
            assert!(text.contains(expected), "{text}");
        }
        other => panic!("expected a TLS error with `{expected}`, got {other:?}"),
    }
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused_and_no_handler_runs() {
    let ca = Ca::new("cluster");
    let (server, seen) = server(ca.server(&[PROBE])).await;
    let tls = ClientTls::new(ca.pem().as_bytes())
        .unwrap()
        .server_name(PROBE);
    let client = builder().tls(tls).connect_lazy(server.addr.to_string());

    assert_refused(echo(&client, 1).await, "CertificateRequired");
    assert!(seen.calls().is_empty(), "no call reached the server");
}

#[tokio::test]
async fn a_client_certificate_of_another_ca_is_refused() {
    let ca = Ca::new("cluster");
    let stranger = Ca::new("stranger");
    let (server, seen) = server(ca.server(&[PROBE])).await;
    // The client trusts the cluster's CA but holds a certificate of its own making.
    let tls = ClientTls::new(ca.pem().as_bytes())
        .unwrap()
        .identity(stranger.issue(&[], &[GATEWAY]))
        .unwrap()
        .server_name(PROBE);
    let client = builder().tls(tls).connect_lazy(server.addr.to_string());

    assert_refused(echo(&client, 1).await, "the server refused the connection");
    assert!(seen.calls().is_empty(), "no call reached the server");
}

#[tokio::test]
async fn a_server_without_the_looked_up_service_name_gets_no_call() {
    let ca = Ca::new("cluster");
    // A genuine cluster certificate, but for another service.
    let (impostor, seen) = server(ca.server(&["mpim.OtherService"])).await;
    let discovery = Static::new([impostor.addr.to_string()]);
    let client = builder()
        .tls(ca.client(GATEWAY))
        .discover(&discovery, PROBE)
        .await
        .unwrap();

    assert_refused(echo(&client, 1).await, "not valid for name");
    assert!(seen.calls().is_empty(), "no call reached the impostor");
}

#[tokio::test]
async fn with_an_impostor_in_discovery_every_call_lands_on_the_genuine_instance() {
    let ca = Ca::new("cluster");
    let (genuine, genuine_seen) = server(ca.server(&[PROBE])).await;
    let (impostor, impostor_seen) = server(ca.server(&["mpim.OtherService"])).await;
    let discovery = Static::new([impostor.addr.to_string(), genuine.addr.to_string()]);
    let client = builder()
        .tls(ca.client(GATEWAY))
        .discover(&discovery, PROBE)
        .await
        .unwrap();

    for value in 0..50 {
        let reply = echo(&client, value)
            .await
            .expect("answered by the genuine one");
        assert_eq!(reply.value, value);
    }
    assert_eq!(genuine_seen.calls().len(), 50);
    assert!(
        impostor_seen.calls().is_empty(),
        "no call reached the impostor"
    );
    let impostor_endpoint = client
        .endpoints()
        .into_iter()
        .find(|e| e.addr() == impostor.addr.to_string())
        .expect("listed");
    assert!(!impostor_endpoint.is_available(), "the impostor is ejected");
}

#[tokio::test]
async fn the_default_name_is_the_service_looked_up_in_any_letter_case() {
    let ca = Ca::new("cluster");
    // DNS names compare without regard to ASCII case.
    let (server, seen) = server(ca.server(&["TEST.probe"])).await;
    let discovery = Static::new([server.addr.to_string()]);
    let client = builder()
        .tls(ca.client(GATEWAY))
        .discover(&discovery, PROBE)
        .await
        .unwrap();
    assert_eq!(echo(&client, 5).await.expect("echoed").value, 5);
    assert_eq!(seen.calls().len(), 1);
}

#[tokio::test]
async fn a_plaintext_client_of_a_tls_server_gets_a_clear_error_at_once() {
    let ca = Ca::new("cluster");
    let (server, seen) = server(ca.server(&[PROBE])).await;
    let client = builder().connect_lazy(server.addr.to_string());

    let began = Instant::now();
    assert_refused(echo(&client, 1).await, "the server speaks TLS");
    assert!(
        began.elapsed() < Duration::from_secs(5),
        "{:?}",
        began.elapsed()
    );
    assert!(seen.calls().is_empty());
}

#[tokio::test]
async fn a_tls_client_of_a_plaintext_server_gets_a_clear_error_at_once() {
    let ca = Ca::new("cluster");
    let server = support::start_server().await;
    let client = builder()
        .tls(ca.client(GATEWAY).server_name(PROBE))
        .connect_lazy(server.addr.to_string());

    let began = Instant::now();
    assert_refused(echo(&client, 1).await, "does it serve plaintext?");
    assert!(
        began.elapsed() < Duration::from_secs(5),
        "{:?}",
        began.elapsed()
    );
    support::assert_still_serving(&server).await;
}

#[tokio::test]
async fn a_peer_that_never_handshakes_is_dropped_at_the_timeout_and_blocks_no_one() {
    let ca = Ca::new("cluster");
    let timeout = Duration::from_millis(500);
    let (server, _) = server_with(ca.server(&[PROBE]), |b| {
        b.handshake_timeout(Some(timeout)).max_connections(2)
    })
    .await;
    let opened = Instant::now();
    let mut silent = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    // Half a ClientHello record header, then nothing.
    tokio::io::AsyncWriteExt::write_all(&mut silent, &[0x16, 0x03])
        .await
        .unwrap();

    let client = builder()
        .tls(ca.client(GATEWAY).server_name(PROBE))
        .pool_size(1)
        .connect_lazy(server.addr.to_string());
    assert_eq!(echo(&client, 1).await.expect("served meanwhile").value, 1);

    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), silent.read_to_end(&mut rest));
    let _ = closed.await.expect("the silent peer was closed");
    let after = opened.elapsed();
    assert!(after >= timeout, "closed after {after:?}");
    assert!(
        support::eventually(Duration::from_secs(5), || server.server.connections() == 1).await,
        "only the client's connection is left"
    );
    assert_eq!(echo(&client, 2).await.expect("still served").value, 2);
}

#[tokio::test]
async fn rotating_the_server_certificate_fails_no_call_and_new_connections_get_the_new_one() {
    let ca = Ca::new("cluster");
    let tls = ca.server(&[PROBE]);
    let (server, _) = server(tls.clone()).await;
    let client = builder()
        .pool_size(1)
        .tls(ca.client(GATEWAY).server_name(PROBE))
        .connect_lazy(server.addr.to_string());
    echo(&client, 0).await.expect("connected");

    // Calls without pause on the open connection while the certificate changes.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let caller = {
        let (client, stop, ok, failed) = (client.clone(), stop.clone(), ok.clone(), failed.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match echo(&client, 9).await {
                    Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        })
    };
    let calls_before = ok.load(Ordering::Relaxed);
    assert!(
        support::eventually(Duration::from_secs(5), || ok.load(Ordering::Relaxed)
            > calls_before + 10)
        .await
    );

    // The new certificate also carries `v2.test.Probe`: a client requiring that name is
    // refused before the rotation and served after it.
    let v2 = || {
        builder()
            .tls(ca.client(GATEWAY).server_name("v2.test.Probe"))
            .connect_lazy(server.addr.to_string())
    };
    assert_refused(echo(&v2(), 1).await, "not valid for name");
    tls.reload(ca.issue(&[PROBE, "v2.test.Probe"], &[]), None)
        .expect("reloaded");
    assert_eq!(echo(&v2(), 2).await.expect("new certificate").value, 2);

    let after = ok.load(Ordering::Relaxed);
    assert!(
        support::eventually(Duration::from_secs(5), || ok.load(Ordering::Relaxed)
            > after + 10)
        .await
    );
    stop.store(true, Ordering::Relaxed);
    caller.await.unwrap();
    assert_eq!(failed.load(Ordering::Relaxed), 0, "no call failed");
}

#[tokio::test]
async fn rotating_the_client_ca_refuses_old_clients_on_new_connections_only() {
    let old = Ca::new("old");
    let new = Ca::new("new");
    // The server's own certificate comes from the old CA throughout; only the CA its
    // clients must chain to changes.
    let tls = old.server(&[PROBE]);
    let (server, seen) = server(tls.clone()).await;
    let old_client = builder()
        .pool_size(1)
        .tls(old.client(GATEWAY).server_name(PROBE))
        .connect_lazy(server.addr.to_string());
    echo(&old_client, 1)
        .await
        .expect("connected before the rotation");

    tls.reload(old.issue(&[PROBE], &[]), Some(new.pem().as_bytes()))
        .expect("reloaded");
    echo(&old_client, 2)
        .await
        .expect("its open connection is untouched");

    let fresh_old = builder()
        .tls(old.client(GATEWAY).server_name(PROBE))
        .connect_lazy(server.addr.to_string());
    assert_refused(
        echo(&fresh_old, 3).await,
        "the server refused the connection",
    );

    let new_tls = ClientTls::new(old.pem().as_bytes())
        .unwrap()
        .identity(new.issue(&[], &["spiffe://mpim/new"]))
        .unwrap()
        .server_name(PROBE);
    let new_client = builder().tls(new_tls).connect_lazy(server.addr.to_string());
    echo(&new_client, 4).await.expect("a client of the new CA");
    let last = seen.calls().pop().expect("calls").1.expect("an identity");
    assert_eq!(last.uris(), ["spiffe://mpim/new"]);
}

#[tokio::test]
async fn a_client_reload_presents_the_new_certificate_on_new_connections() {
    let ca = Ca::new("cluster");
    let (server, seen) = server(ca.server(&[PROBE])).await;
    let tls = ca.client("spiffe://mpim/v1").server_name(PROBE);
    let first = builder()
        .pool_size(1)
        .tls(tls.clone())
        .connect_lazy(server.addr.to_string());
    echo(&first, 1).await.expect("v1");

    tls.reload(Some(ca.issue(&[], &["spiffe://mpim/v2"])), None)
        .expect("reloaded");
    echo(&first, 2).await.expect("the open connection keeps v1");
    let second = builder().tls(tls).connect_lazy(server.addr.to_string());
    echo(&second, 3).await.expect("v2");

    let uris: Vec<Vec<String>> = seen
        .calls()
        .into_iter()
        .map(|(_, identity)| identity.expect("an identity").uris().to_vec())
        .collect();
    let uri = |s: &str| vec![s.to_owned()];
    assert_eq!(
        uris,
        [
            uri("spiffe://mpim/v1"),
            uri("spiffe://mpim/v1"),
            uri("spiffe://mpim/v2")
        ]
    );
}
