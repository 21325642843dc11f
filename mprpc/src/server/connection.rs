//! One accepted connection: reads requests, starts calls, answers cancels and pings,
//! enforces the protocol and the connection's limits, and drains on shutdown.

use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;

use metrics::Gauge;
use tokio::io::AsyncWrite;
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinError, JoinHandle, JoinSet};
use tokio::time::{Duration, Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::call::{Incoming, Running};
use super::clock::{Clock, Tick};
use super::queued::{Queued, queue, released};
use super::{Shared, Slot};
use crate::frame::{Frame, FrameError, Kind};
use crate::hash::FastMap;
use crate::status::{Code, Status};
use crate::tls::PeerIdentity;
use crate::transport::{self, FrameReader, Outbound, Readable};

/// Frames queued for the writer before senders wait.
const WRITE_QUEUE: usize = 1024;

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

/// One connection's state, owned by its read loop.
struct Connection {
    shared: Arc<Shared>,
    peer: SocketAddr,
    tx: mpsc::Sender<Outbound>,
    queued: Arc<Queued>,
    slot: Arc<Slot>,
    /// The peer's verified certificate, handed to every call.
    identity: Option<Arc<PeerIdentity>>,
    calls: JoinSet<u64>,
    /// Calls in flight by request id, for cancel. Owned by the read loop alone, so it
    /// needs no lock.
    in_flight: FastMap<u64, AbortHandle>,
    /// Highest request id received; requests must come in increasing order.
    last_request_id: u64,
    draining: bool,
}

/// How the read loop ended.
enum Close {
    /// Cleanly: drained, evicted, or closed at the handshake timeout.
    Done,
    /// With whatever is in flight abandoned: the peer left, the socket failed, or the peer
    /// broke the protocol (and was sent a GOAWAY saying why).
    Abandoned,
}

/// Who is on the other end of an accepted connection.
pub(super) struct Peer {
    pub(super) addr: SocketAddr,
    /// The peer's verified certificate (mutual TLS).
    pub(super) identity: Option<Arc<PeerIdentity>>,
    /// When the connection was accepted: the handshake timeout counts from here.
    pub(super) opened: Instant,
}

/// Serves one connection, plaintext or TLS: generic over its halves so that each kind of
/// stream gets code of its own, plaintext exactly as fast as without TLS.
pub(super) async fn serve<R, W>(
    read: R,
    write: W,
    accepted: Peer,
    shared: Arc<Shared>,
    slot: Arc<Slot>,
    shutdown: CancellationToken,
) where
    R: Readable + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let mut clock = Clock::new(accepted.opened, &shared.config);
    let max_frame = shared.config.max_frame;
    let (mut conn, writer) = Connection::open(write, accepted, shared, slot);
    let mut reader = FrameReader::new(read, max_frame);
    debug!(peer = %conn.peer, "connection open");
    let close = conn.read_loop(&mut reader, &mut clock, &shutdown).await;
    conn.close(close, writer).await;
}

impl Connection {
    /// The state of a connection with `accepted`, its writer task started on `write`.
    fn open<W>(
        write: W,
        accepted: Peer,
        shared: Arc<Shared>,
        slot: Arc<Slot>,
    ) -> (Connection, JoinHandle<std::io::Result<()>>)
    where
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        let queued = Arc::new(Queued::new(shared.config.max_queued_bytes_per_connection));
        let released = released(queued.clone(), shared.clone());
        // Responses are queued by this connection's read loop, which runs through everything
        // it read before the writer gets a turn: batching comes without a yield.
        let max_frame = shared.config.max_frame;
        let writer = tokio::spawn(transport::write_loop(
            write,
            rx,
            max_frame,
            |_| false,
            released,
        ));
        let conn = Connection {
            shared,
            peer: accepted.addr,
            tx,
            queued,
            slot,
            identity: accepted.identity,
            calls: JoinSet::new(),
            in_flight: FastMap::default(),
            last_request_id: 0,
            draining: false,
        };
        (conn, writer)
    }

    /// Reads frames and answers them until the connection closes; says how it closed.
    async fn read_loop<R: Readable>(
        &mut self,
        reader: &mut FrameReader<R>,
        clock: &mut Clock,
        shutdown: &CancellationToken,
    ) -> Close {
        let limit = self.shared.config.max_in_flight_per_connection;
        let first = clock.first();
        let timer = tokio::time::sleep_until(first.unwrap_or_else(Instant::now));
        tokio::pin!(timer);
        let timed = first.is_some();
        // Made once: a cancellation future registers its waiter on first poll and keeps it,
        // where one made per loop turn would take the token's lock twice per frame.
        let stopping = shutdown.cancelled();
        let evict = self.slot.evict.clone();
        let evicted = evict.cancelled();
        tokio::pin!(stopping, evicted);
        loop {
            let paused = self.calls.len() >= limit || self.queued.is_full();
            let turn = tokio::select! {
                biased;
                Some(done) = self.calls.join_next(), if !self.calls.is_empty() => {
                    self.finished(done);
                    ControlFlow::Continue(())
                }
                () = &mut stopping, if !self.draining => {
                    self.go_away(Code::Ok, "server shutting down").await;
                    timer.as_mut().reset(clock.linger(Instant::now()));
                    ControlFlow::Continue(())
                }
                () = &mut evicted => {
                    debug!(peer = %self.peer, "evicted at the connection limit");
                    self.go_away(Code::Ok, "idle connection closed at the connection limit").await;
                    ControlFlow::Break(Close::Done)
                }
                () = &mut timer, if timed || clock.is_lingering() => {
                    self.on_tick(clock, timer.as_mut()).await
                }
                _ = self.queued.drained.notified(), if self.queued.is_full() => {
                    ControlFlow::Continue(())
                }
                frame = reader.next(), if !paused => self.on_frame(frame, reader, clock).await,
            };
            if let ControlFlow::Break(close) = turn {
                return close;
            }
        }
    }

    /// Forgets a call that ran on its own task, now that it ended.
    fn finished(&mut self, done: Result<u64, JoinError>) {
        if let Ok(request_id) = done {
            self.in_flight.remove(&request_id);
        }
        self.slot.calls.store(self.calls.len(), Ordering::Relaxed);
    }

    /// Acts on the connection's timer: closes a connection that never spoke, sends an idle
    /// one away, ends the linger, or sets the timer again.
    async fn on_tick(
        &mut self,
        clock: &mut Clock,
        mut timer: Pin<&mut Sleep>,
    ) -> ControlFlow<Close> {
        match clock.tick(Instant::now(), self.calls.len()) {
            Tick::Handshake => {
                debug!(peer = %self.peer, "no frame within the handshake timeout; closing");
                self.go_away(
                    Code::DeadlineExceeded,
                    "no frame within the handshake timeout",
                )
                .await;
                return ControlFlow::Break(Close::Done);
            }
            Tick::Idle => {
                debug!(peer = %self.peer, "idle; closing the connection");
                self.go_away(Code::Ok, "idle timeout").await;
                timer.as_mut().reset(clock.linger(Instant::now()));
            }
            Tick::Lingered => return ControlFlow::Break(Close::Done),
            Tick::Again(at) => timer.as_mut().reset(at),
        }
        ControlFlow::Continue(())
    }

    /// Acts on what the reader produced: a frame is handled; a frame that breaks the
    /// protocol, bytes that are not mprpc, or the end of the stream close the connection.
    async fn on_frame<R: Readable>(
        &mut self,
        frame: Option<Result<Frame, FrameError>>,
        reader: &FrameReader<R>,
        clock: &mut Clock,
    ) -> ControlFlow<Close> {
        match frame {
            Some(Ok(frame)) => {
                clock.frame();
                if let Err(reason) = self.handle(frame).await {
                    self.violation(reason).await;
                    return ControlFlow::Break(Close::Abandoned);
                }
                ControlFlow::Continue(())
            }
            Some(Err(err)) => {
                if matches!(err, FrameError::BadMagic) && reader.starts_like_tls() {
                    warn!(peer = %self.peer, "a TLS handshake on a plaintext server; closing");
                    return ControlFlow::Break(Close::Abandoned);
                }
                self.reject(err).await;
                ControlFlow::Break(Close::Abandoned)
            }
            None => ControlFlow::Break(Close::Abandoned),
        }
    }

    /// Ends the connection: calls still running are aborted, and the writer flushes what is
    /// queued and stops.
    async fn close(mut self, close: Close, writer: JoinHandle<std::io::Result<()>>) {
        let peer = self.peer;
        // Calls still running here belong to a peer that left or broke the protocol.
        if matches!(close, Close::Abandoned) && !self.calls.is_empty() {
            debug!(%peer, calls = self.calls.len(), "closing with calls in flight abandoned");
        }
        self.calls.abort_all();
        let _ = self.tx.send(Outbound::Close).await;
        drop(self);
        if let Ok(Err(err)) = writer.await {
            debug!(%peer, cause = %err, "write side closed with an error");
        }
        debug!(%peer, "connection closed");
    }

    async fn send(&self, out: Outbound) {
        // Fails only when the writer died; the read loop notices the broken socket itself.
        let _ = self.tx.send(out).await;
    }

    /// Queues a call's result, counting its bytes against this connection's and the
    /// server's queued-bytes limits until the writer has written it.
    async fn respond(&self, request_id: u64, result: Result<bytes::Bytes, Status>) {
        let out = Outbound::Response { request_id, result };
        queue(&self.tx, &self.queued, &self.shared, out).await;
    }

    /// Handles one frame; `Err` names the protocol rule it broke.
    async fn handle(&mut self, frame: Frame) -> Result<(), &'static str> {
        let header = &frame.header;
        // One clock read per frame, shared by the eviction record and the call's latency.
        let now = Instant::now();
        self.slot.touch(now);
        match header.kind {
            Kind::Request => {
                if header.request_id <= self.last_request_id {
                    return Err("request ids must be non-zero and increase on a connection");
                }
                self.last_request_id = header.request_id;
                self.start_call(frame, now).await;
            }
            Kind::Cancel => {
                // Unknown or finished ids are fine: the response may have crossed the cancel.
                if let Some(call) = self.in_flight.remove(&header.request_id) {
                    call.abort();
                }
            }
            Kind::Ping => {
                self.send(Outbound::control(Kind::Pong, header.request_id))
                    .await
            }
            Kind::Response => return Err("a client does not send RESPONSE frames"),
            Kind::Pong => return Err("a client does not send PONG frames"),
            Kind::GoAway => return Err("a client does not send GOAWAY frames"),
        }
        Ok(())
    }

    async fn start_call(&mut self, frame: Frame, received: Instant) {
        let Frame { header, body } = frame;
        let id = header.request_id;
        let deadline = (header.timeout_us > 0)
            .then(|| received.checked_add(Duration::from_micros(header.timeout_us)))
            .flatten();
        let incoming = Incoming {
            request_id: id,
            service: header.service,
            method: header.method,
            deadline,
            metadata: header.metadata,
            peer: self.peer,
            peer_identity: self.identity.clone(),
            local: false,
            body,
            received,
        };
        let mut call = match self.shared.start(incoming, self.draining) {
            Ok(call) => call,
            Err(status) => return self.respond(id, Err(status)).await,
        };
        // Most handlers finish without waiting on anything. Polling once here answers those
        // without a task spawn and the cross-thread wakeups that come with it; a handler that
        // is not ready moves to its own task, so it never blocks this connection.
        let first = std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut call).poll(cx))).await;
        if let Poll::Ready(result) = first {
            return self.respond(id, result).await;
        }
        let (tx, queued, shared) = (self.tx.clone(), self.queued.clone(), self.shared.clone());
        let gauge = InFlightGauge::new(&shared.gauges.in_flight);
        let handle = self
            .calls
            .spawn(finish(call, id, tx, queued, shared, gauge));
        self.in_flight.insert(id, handle);
        self.slot.calls.store(self.calls.len(), Ordering::Relaxed);
    }

    /// Starts a graceful close: no new calls, in-flight ones finish.
    async fn go_away(&mut self, status: Code, message: &'static str) {
        self.draining = true;
        let goaway = Outbound::Control {
            kind: Kind::GoAway,
            request_id: self.last_request_id,
            status,
            message,
        };
        self.send(goaway).await;
    }

    /// Tells the peer which protocol rule it broke before the connection closes.
    async fn violation(&mut self, reason: &'static str) {
        warn!(peer = %self.peer, %reason, "protocol error; closing the connection");
        self.go_away(Code::InvalidArgument, reason).await;
    }

    /// Tells the peer why its connection is being closed, when the frame that broke it left
    /// the stream readable enough to be worth an answer.
    async fn reject(&mut self, err: FrameError) {
        let reason = match &err {
            FrameError::Io(_) => {
                debug!(peer = %self.peer, cause = %err, "read failed");
                return;
            }
            FrameError::TooLarge { .. } => "frame exceeds the size cap",
            FrameError::BadMagic => "bad magic: not an mprpc peer",
            FrameError::UnsupportedVersion(_) => "unsupported protocol version",
            FrameError::Malformed(reason) | FrameError::Header(reason) => reason,
        };
        self.violation(reason).await;
    }
}

/// Runs a call that did not finish on its first poll and queues its result.
async fn finish(
    call: Running,
    id: u64,
    tx: mpsc::Sender<Outbound>,
    queued: Arc<Queued>,
    shared: Arc<Shared>,
    gauge: InFlightGauge,
) -> u64 {
    let result = call.await;
    drop(gauge);
    let out = Outbound::Response {
        request_id: id,
        result,
    };
    queue(&tx, &queued, &shared, out).await;
    id
}
