//! One accepted connection: reads requests, spawns a task per call, answers cancels and pings,
//! and drains on shutdown.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;

use metrics::Gauge;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::Shared;
use crate::frame::{Frame, FrameError, Kind};
use crate::service::Context;
use crate::status::{Code, Status};
use crate::transport::{self, FrameReader, Outbound};

/// Counts a spawned call in `mprpc_server_in_flight` until it ends, however it ends.
struct InFlightGauge(Gauge);

impl InFlightGauge {
    fn new(gauge: &Gauge) -> InFlightGauge {
        gauge.increment(1.0);
        InFlightGauge(gauge.clone())
    }
}

impl Drop for InFlightGauge {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

fn code_of(result: &Result<bytes::Bytes, Status>) -> Code {
    match result {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

const HEALTH: &str = crate::health::HealthServer::<crate::health::Health>::NAME;

/// Frames queued for the writer before senders wait.
const WRITE_QUEUE: usize = 1024;

struct Connection {
    shared: Arc<Shared>,
    peer: SocketAddr,
    tx: mpsc::Sender<Outbound>,
    calls: JoinSet<u64>,
    /// Calls in flight by request id, for cancel and duplicate detection. Owned by the read
    /// loop alone, so it needs no lock.
    in_flight: HashMap<u64, AbortHandle>,
    last_request_id: u64,
    draining: bool,
}

pub(super) async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    // Frames are batched by the writer already; Nagle would only add latency.
    let _ = stream.set_nodelay(true);
    let (read, write) = stream.into_split();
    let max_frame = shared.config.max_frame;
    let limit = shared.config.max_in_flight_per_connection;
    let (tx, rx) = mpsc::channel(WRITE_QUEUE);
    // Responses are queued by this connection's read loop, which runs through everything
    // it read before the writer gets a turn: batching comes without a yield.
    let writer = tokio::spawn(transport::write_loop(write, rx, max_frame, |_| false));
    let mut reader = FrameReader::new(read, max_frame);
    let mut conn = Connection {
        shared,
        peer,
        tx,
        calls: JoinSet::new(),
        in_flight: HashMap::new(),
        last_request_id: 0,
        draining: false,
    };
    debug!(%peer, "connection open");
    // Idleness is checked once per period rather than by re-arming a timer per frame: a
    // period with no frame and no call in flight closes the connection.
    let period = conn.shared.config.idle_timeout;
    let idle = tokio::time::sleep(period.unwrap_or(Duration::MAX));
    tokio::pin!(idle);
    let mut active = false;
    loop {
        tokio::select! {
            biased;
            Some(done) = conn.calls.join_next(), if !conn.calls.is_empty() => {
                if let Ok(request_id) = done {
                    conn.in_flight.remove(&request_id);
                }
            }
            _ = shutdown.cancelled(), if !conn.draining => conn.go_away().await,
            () = &mut idle, if period.is_some() && !conn.draining => match period {
                Some(period) if active || !conn.calls.is_empty() => {
                    active = false;
                    idle.as_mut().reset(Instant::now() + period);
                }
                _ => {
                    debug!(%peer, "idle; closing the connection");
                    conn.go_away().await;
                }
            },
            frame = reader.next(), if conn.calls.len() < limit => match frame {
                Some(Ok(frame)) => {
                    active = true;
                    conn.handle(frame).await
                }
                Some(Err(err)) => {
                    conn.reject(err).await;
                    break;
                }
                None => break,
            },
        }
        if conn.draining && conn.calls.is_empty() {
            break;
        }
    }
    // Calls still running here belong to a peer that left or broke the protocol.
    conn.calls.abort_all();
    drop(conn);
    if let Ok(Err(err)) = writer.await {
        debug!(%peer, cause = %err, "write side closed with an error");
    }
    debug!(%peer, "connection closed");
}

impl Connection {
    async fn send(&self, out: Outbound) {
        // Fails only when the writer died; the read loop notices the broken socket itself.
        let _ = self.tx.send(out).await;
    }

    async fn respond(&self, request_id: u64, status: Status) {
        self.send(Outbound::Response {
            request_id,
            result: Err(status),
        })
        .await;
    }

    async fn handle(&mut self, frame: Frame) {
        let header = &frame.header;
        match header.kind {
            Kind::Request => self.start_call(frame).await,
            Kind::Cancel => {
                if let Some(call) = self.in_flight.remove(&header.request_id) {
                    call.abort();
                }
            }
            Kind::Ping => {
                self.send(Outbound::control(Kind::Pong, header.request_id))
                    .await
            }
            Kind::Pong | Kind::Response | Kind::GoAway => {
                debug!(peer = %self.peer, kind = ?header.kind, "ignoring frame a client does not send");
            }
        }
    }

    async fn start_call(&mut self, frame: Frame) {
        let Frame { header, body } = frame;
        let id = header.request_id;
        let started = Instant::now();
        let shared = self.shared.clone();
        let Some(route) = shared.routes.get(header.service.as_str()) else {
            let status = Status::unimplemented(format!("unknown service {}", header.service));
            shared.unrouted.record(status.code(), started.elapsed());
            return self.respond(id, status).await;
        };
        let metrics = route.metrics(header.method.as_str());
        // Health checks are still answered while draining, so probers learn NOT_SERVING.
        let refuse = if self.draining && header.service.as_str() != HEALTH {
            Some(Status::unavailable("server is shutting down"))
        } else if self.in_flight.contains_key(&id) {
            Some(Status::invalid_argument(format!(
                "request id {id} is already in flight"
            )))
        } else {
            None
        };
        if let Some(status) = refuse {
            metrics.record(status.code(), started.elapsed());
            return self.respond(id, status).await;
        }
        let deadline =
            (header.timeout_us > 0).then(|| started + Duration::from_micros(header.timeout_us));
        let ctx = Context {
            request_id: id,
            deadline,
            peer: self.peer,
            metadata: header.metadata,
        };
        let Some(mut call) = route.service.call(header.method.as_str(), ctx, body) else {
            let status = Status::unimplemented(format!(
                "unknown method {} on service {}",
                header.method, header.service
            ));
            metrics.record(status.code(), started.elapsed());
            return self.respond(id, status).await;
        };
        let Ok(permit) = shared.in_flight.clone().try_acquire_owned() else {
            let status = Status::resource_exhausted("server overloaded");
            metrics.record(status.code(), started.elapsed());
            return self.respond(id, status).await;
        };
        self.last_request_id = self.last_request_id.max(id);
        // Most handlers finish without waiting on anything. Polling once here answers those
        // without a task spawn and the cross-thread wakeups that come with it; a handler that
        // is not ready moves to its own task, so it never blocks this connection.
        let first = std::future::poll_fn(|cx| Poll::Ready(call.as_mut().poll(cx))).await;
        if let Poll::Ready(result) = first {
            drop(permit);
            metrics.record(code_of(&result), started.elapsed());
            return self
                .send(Outbound::Response {
                    request_id: id,
                    result,
                })
                .await;
        }
        let tx = self.tx.clone();
        let (service, method) = (header.service, header.method);
        let gauge = InFlightGauge::new(&shared.gauges.in_flight);
        let handle = self.calls.spawn(async move {
            let result = match deadline {
                Some(deadline) => match tokio::time::timeout_at(deadline, call).await {
                    Ok(result) => result,
                    Err(_) => Err(Status::deadline_exceeded("deadline passed on the server")),
                },
                None => call.await,
            };
            drop((permit, gauge));
            if let Some(route) = shared.routes.get(service.as_str()) {
                route
                    .metrics(method.as_str())
                    .record(code_of(&result), started.elapsed());
            }
            let _ = tx
                .send(Outbound::Response {
                    request_id: id,
                    result,
                })
                .await;
            id
        });
        self.in_flight.insert(id, handle);
    }

    /// Starts a graceful close: no new calls, in-flight ones finish.
    async fn go_away(&mut self) {
        self.draining = true;
        let last = self.last_request_id;
        self.send(Outbound::control(Kind::GoAway, last)).await;
    }

    /// Tells the peer why its connection is being closed, when the frame that broke it left
    /// the stream readable enough to be worth an answer.
    async fn reject(&mut self, err: FrameError) {
        let message = match &err {
            FrameError::Io(_) => {
                debug!(peer = %self.peer, cause = %err, "read failed");
                return;
            }
            FrameError::TooLarge { .. } => "frame exceeds the size cap",
            FrameError::BadMagic => "bad magic: not an mprpc peer",
            FrameError::UnsupportedVersion(_) => "unsupported protocol version",
            FrameError::Malformed(_) | FrameError::Header(_) => "malformed frame",
        };
        warn!(peer = %self.peer, cause = %err, "protocol error; closing the connection");
        let goaway = Outbound::Control {
            kind: Kind::GoAway,
            request_id: self.last_request_id,
            status: Code::InvalidArgument,
            message,
        };
        self.send(goaway).await;
    }
}
