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
//!
//! Handles are created once (per method when the server is built) so that recording costs a
//! few atomic operations per call, never a label lookup. Install the recorder with
//! [`install`] **before** building servers and clients: handles created earlier record
//! nothing.

use std::future::Future;
use std::time::Duration;

use ::metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
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

/// Serves `GET /metrics` (Prometheus text) on `listener` until `shutdown` completes. Any
/// other path gets 404; the endpoint speaks just enough HTTP/1.1 for scrapers and curl.
///
/// # Errors
/// Only when accepting fails in a way retrying cannot fix.
pub async fn serve(
    listener: TcpListener,
    handle: PrometheusHandle,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    tokio::pin!(shutdown);
    let mut scrapes = tokio::task::JoinSet::new();
    loop {
        let (mut stream, _) = tokio::select! {
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
            let mut request = [0u8; 1024];
            let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut request)).await;
            let Ok(Ok(n)) = read else { return };
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
        });
    }
    Ok(())
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
