//! Prometheus metrics: what the server and client record, and a tiny HTTP endpoint that
//! serves them as Prometheus text.
//!
//! | metric | kind | labels |
//! |---|---|---|
//! | `mprpc_server_requests_total` | counter | `service`, `method`, `code` |
//! | `mprpc_server_request_duration_seconds` | histogram | `service`, `method` |
//! | `mprpc_server_in_flight` | gauge | |
//! | `mprpc_server_connections` | gauge | |
//! | `mprpc_client_connections` | gauge | `addr` |
//! | `mprpc_client_retries_total` | counter | |
//! | `mprpc_client_ejections_total` | counter | |
//! | `mprpc_server_tls_handshake_failures_total` | counter | `reason` |
//! | `mprpc_client_tls_handshake_failures_total` | counter | `reason` |
//!
//! A failed TLS handshake's `reason` is `certificate` (the peer's certificate was refused,
//! or it refused ours), `not_tls` (the peer does not speak TLS), `timeout`, `closed` (the
//! peer went away mid-handshake), `protocol` (any other TLS error) or `io`.
//!
//! The HTTP endpoint ([`serve`], [`serve_with`]) answers at most [`Limits::max_connections`]
//! scrapes at once, each within [`Limits::timeout`].
//!
//! Handles are created once (per method when the server is built) so that recording costs a
//! few atomic operations per call, never a label lookup. Install the recorder with
//! [`install`] **before** building servers and clients: handles created earlier record
//! nothing.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ::metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::debug;

use crate::status::Code;

/// Latency buckets in seconds: 50 µs to 10 s.
const BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 10.0,
];

/// Installs the process-wide Prometheus recorder and returns the handle that renders it.
///
/// # Errors
/// [`BuildError`] when a recorder is already installed.
pub fn install() -> Result<PrometheusHandle, BuildError> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)?
        .install_recorder()
}

/// Bounds on the clients of the metrics endpoint ([`serve_with`]).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Limits {
    /// Scrapes served at once (default 64). Further connections are not accepted until one
    /// ends: they wait in the listener's backlog, as with the RPC server's
    /// `max_connections`, rather than being refused.
    pub max_connections: usize,
    /// Longest one exchange may take, from accepting the connection to having written the
    /// response (default 10 s, Prometheus' default scrape timeout). A client that sends
    /// nothing, or stops reading, is closed then.
    pub timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: 64,
            timeout: Duration::from_secs(10),
        }
    }
}

impl Limits {
    /// Scrapes served at once. Default 64.
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n.max(1);
        self
    }

    /// Longest one exchange may take, reading and writing. Default 10 s.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

/// Serves `GET /metrics` (Prometheus text) on `listener` until `shutdown` completes, within
/// the default [`Limits`]. Any other path gets 404; the endpoint speaks just enough
/// HTTP/1.1 for scrapers and curl.
///
/// # Errors
/// Only when accepting fails in a way retrying cannot fix.
pub async fn serve(
    listener: TcpListener,
    handle: PrometheusHandle,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    serve_with(listener, handle, Limits::default(), shutdown).await
}

/// [`serve`] within the given [`Limits`].
///
/// # Errors
/// Only when accepting fails in a way retrying cannot fix.
pub async fn serve_with(
    listener: TcpListener,
    handle: PrometheusHandle,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    tokio::pin!(shutdown);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let timeout = limits.timeout;
    let mut scrapes = tokio::task::JoinSet::new();
    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            permit = slots.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
        };
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    debug!(cause = %err, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        while scrapes.try_join_next().is_some() {}
        let handle = handle.clone();
        scrapes.spawn(async move {
            // One deadline over the whole exchange, writing included: a peer that never
            // reads would otherwise hold its slot for as long as it keeps the socket open.
            let answered = tokio::time::timeout(timeout, answer(stream, &handle)).await;
            if answered.is_err() {
                debug!(%peer, ?timeout, "metrics scrape timed out; closing");
            }
            drop(permit);
        });
    }
    Ok(())
}

/// Reads one request and writes the response.
async fn answer(mut stream: TcpStream, handle: &PrometheusHandle) {
    let mut request = [0u8; 1024];
    let Ok(n) = stream.read(&mut request).await else {
        return;
    };
    let response = if request[..n].starts_with(b"GET /metrics") {
        let body = handle.render();
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
    } else {
        "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_owned()
    };
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// One method's server-side handles.
#[derive(Debug)]
pub(crate) struct MethodMetrics {
    by_code: Vec<Counter>,
    latency: Histogram,
}

impl MethodMetrics {
    pub(crate) fn new(service: &'static str, method: &'static str) -> MethodMetrics {
        let by_code = (0..=16u32)
            .map(|c| {
                let code = Code::from_u32(c).as_str();
                counter!("mprpc_server_requests_total", "service" => service, "method" => method, "code" => code)
            })
            .collect();
        let latency = histogram!("mprpc_server_request_duration_seconds", "service" => service, "method" => method);
        MethodMetrics { by_code, latency }
    }

    pub(crate) fn record(&self, code: Code, elapsed: Duration) {
        self.by_code[code as usize].increment(1);
        self.latency.record(elapsed.as_secs_f64());
    }
}

/// Server-wide gauges.
#[derive(Debug, Clone)]
pub(crate) struct ServerGauges {
    pub(crate) in_flight: Gauge,
    pub(crate) connections: Gauge,
}

impl ServerGauges {
    pub(crate) fn new() -> ServerGauges {
        ServerGauges {
            in_flight: gauge!("mprpc_server_in_flight"),
            connections: gauge!("mprpc_server_connections"),
        }
    }
}

pub(crate) fn client_connections(addr: &str) -> Gauge {
    gauge!("mprpc_client_connections", "addr" => addr.to_owned())
}

pub(crate) fn client_retries() -> Counter {
    counter!("mprpc_client_retries_total")
}

pub(crate) fn client_ejections() -> Counter {
    counter!("mprpc_client_ejections_total")
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn scrape(addr: std::net::SocketAddr) -> String {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .expect("write");
        let mut response = String::new();
        stream.read_to_string(&mut response).await.expect("read");
        response
    }

    #[tokio::test]
    async fn a_silent_client_holds_its_slot_only_until_the_timeout() {
        let handle = PrometheusBuilder::new().build_recorder().handle();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        // One slot: the second scrape can only be answered once the silent client is cut.
        // The timeout also bounds that scrape, so it is long enough for a loaded machine.
        let timeout = Duration::from_secs(1);
        let limits = Limits::default().max_connections(1).timeout(timeout);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_with(listener, handle, limits, async move {
            let _ = stopped.await;
        }));

        let began = tokio::time::Instant::now();
        let mut silent = TcpStream::connect(addr).await.expect("connect");
        let answered = tokio::time::timeout(Duration::from_secs(10), scrape(addr)).await;
        let response = answered.expect("the other scrape is answered");
        assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
        // The silent client, accepted first, held the one slot for its whole timeout.
        assert!(
            began.elapsed() >= timeout,
            "answered after {:?}",
            began.elapsed()
        );
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(10), silent.read_to_end(&mut rest));
        let read = closed.await.expect("the silent connection was closed");
        assert!(read.map_or(true, |n| n == 0), "nothing was sent to it");

        let _ = stop.send(());
        server.await.expect("join").expect("served");
    }

    #[tokio::test]
    async fn a_client_that_never_reads_is_cut_off_at_the_timeout() {
        // A body larger than the socket buffers on both sides, so that writing it blocks
        // while the client does not read.
        let recorder = PrometheusBuilder::new().build_recorder();
        ::metrics::with_local_recorder(&recorder, || {
            for i in 0..12 {
                let pad = "x".repeat(1 << 20);
                counter!("padding", "pad" => pad, "i" => i.to_string()).increment(1);
            }
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        // The timeout bounds each exchange: long enough for the full scrape below (render
        // and write some 12 MiB) on a loaded machine.
        let limits = Limits::default()
            .max_connections(1)
            .timeout(Duration::from_secs(3));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_with(
            listener,
            recorder.handle(),
            limits,
            async move {
                let _ = stopped.await;
            },
        ));

        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .set_recv_buffer_size(4096)
            .expect("small receive buffer");
        let mut stalled = socket.connect(addr).await.expect("connect");
        stalled
            .write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .expect("write");
        // The one slot frees up only when the stalled exchange is given up.
        let answered = tokio::time::timeout(Duration::from_secs(20), scrape(addr)).await;
        let response = answered.expect("the next scrape is answered");
        let (head, body) = response.split_once("\r\n\r\n").expect("a head and a body");
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .and_then(|n| n.parse::<usize>().ok());
        assert_eq!(length, Some(body.len()), "the next scrape is whole");
        let full = response.len();
        let mut cut = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(20), stalled.read_to_end(&mut cut));
        let _ = read.await.expect("the stalled connection was closed");
        assert!(cut.len() < full, "cut short: {} of {full} bytes", cut.len());

        let _ = stop.send(());
        server.await.expect("join").expect("served");
    }

    #[test]
    fn limits_default_to_64_scrapes_of_10_seconds() {
        let limits = Limits::default();
        assert_eq!(
            (limits.max_connections, limits.timeout),
            (64, Duration::from_secs(10))
        );
        assert_eq!(Limits::default().max_connections(0).max_connections, 1);
    }
}
