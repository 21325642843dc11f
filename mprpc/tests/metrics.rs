//! Prometheus metrics. Alone in its binary: the recorder is process-wide, so calls made by
//! tests running beside it would land in the counters it reads.

mod support;

use mprpc::{CallOptions, Client, Code, Method};
use support::{Num, PROBE, start_server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The value of the one sample of `name` whose labels include every one of `labels`.
fn sample(text: &str, name: &str, labels: &[&str]) -> f64 {
    let found: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| labels.iter().all(|label| l.contains(label)))
        .collect();
    let [line] = found[..] else {
        panic!("expected one {name} sample with {labels:?}, found {found:?} in\n{text}")
    };
    let value = line.rsplit_once(' ').map(|(_, v)| v).unwrap_or_default();
    value
        .parse()
        .unwrap_or_else(|_| panic!("not a number: {line}"))
}

#[tokio::test]
async fn metrics_count_calls_by_method_and_code_and_serve_over_http() {
    // Installed before the server is built: it takes its counters from the recorder then.
    let handle = mprpc::metrics::install().expect("first recorder in this test binary");
    let server = start_server().await;
    let client = Client::builder()
        .pool_size(1)
        .connect_lazy(server.addr.to_string());
    for _ in 0..3 {
        let reply: Num = client
            .unary(
                &Method::new(PROBE, "Sleep"),
                &Num { value: 0 },
                &CallOptions::new(),
            )
            .await
            .expect("call");
        assert_eq!(reply.value, 0);
    }
    let fail = Num {
        value: Code::NotFound as u64,
    };
    let err = client
        .unary::<_, Num>(&Method::new(PROBE, "Fail"), &fail, &CallOptions::new())
        .await
        .expect_err("asked to fail");
    assert_eq!(err.code(), Code::NotFound);

    // A call is counted before its answer is sent, so all four are in by now.
    let text = handle.render();
    let probe = r#"service="test.Probe""#;
    let requests = "mprpc_server_requests_total";
    let sleep_ok = [probe, r#"method="Sleep""#, r#"code="OK""#];
    assert_eq!(sample(&text, requests, &sleep_ok), 3.0);
    let fail_not_found = [probe, r#"method="Fail""#, r#"code="NOT_FOUND""#];
    assert_eq!(sample(&text, requests, &fail_not_found), 1.0);
    let fail_ok = [probe, r#"method="Fail""#, r#"code="OK""#];
    assert_eq!(sample(&text, requests, &fail_ok), 0.0);
    let latency = "mprpc_server_request_duration_seconds_count";
    assert_eq!(
        sample(&text, latency, &[probe, r#"method="Sleep""#]),
        3.0,
        "latency histogram"
    );
    let addr = format!(r#"addr="{}""#, server.addr);
    assert_eq!(
        sample(&text, "mprpc_client_connections", &[&addr]),
        1.0,
        "pool gauge"
    );

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let metrics_addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let http = tokio::spawn(mprpc::metrics::serve(
        listener,
        handle.clone(),
        async move {
            let _ = stopped.await;
        },
    ));
    let mut stream = tokio::net::TcpStream::connect(metrics_addr)
        .await
        .expect("connect");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    let (head, body) = response.split_once("\r\n\r\n").expect("a head and a body");
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert_eq!(sample(body, requests, &sleep_ok), 3.0);
    let _ = stop.send(());
    http.await.expect("join").expect("served");

    tls_handshake_failures_are_counted_by_reason(&handle).await;
}

/// A client without a certificate refused by a mutual TLS server: counted on both sides
/// as a certificate failure.
async fn tls_handshake_failures_are_counted_by_reason(
    handle: &metrics_exporter_prometheus::PrometheusHandle,
) {
    let ca = support::pki::Ca::new("cluster");
    let server = support::start_server_with(|b| b.tls(ca.server(&[PROBE]))).await;
    let tls = mprpc::tls::ClientTls::new(ca.pem().as_bytes())
        .expect("client")
        .server_name(PROBE);
    let client = Client::builder()
        .max_attempts(1)
        .tls(tls)
        .connect_lazy(server.addr.to_string());
    let err = client
        .unary::<_, Num>(
            &Method::new(PROBE, "Echo"),
            &Num { value: 1 },
            &CallOptions::new(),
        )
        .await
        .expect_err("refused");
    assert!(matches!(err, mprpc::Error::Tls { .. }), "{err:?}");
    let certificate = [r#"reason="certificate""#];
    let name = "mprpc_server_tls_handshake_failures_total";
    let counted = support::eventually(std::time::Duration::from_secs(5), || {
        let text = handle.render();
        text.contains(name) && sample(&text, name, &certificate) == 1.0
    });
    assert!(counted.await, "{}", handle.render());
    let text = handle.render();
    let client_failures = "mprpc_client_tls_handshake_failures_total";
    assert_eq!(sample(&text, client_failures, &certificate), 1.0);
}
