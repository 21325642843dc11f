//! One accepted connection: reads requests, starts calls, answers cancels and pings,
//! enforces the protocol and the connection's limits, and drains on shutdown.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;

use metrics::Gauge;
use tokio::io::AsyncWrite;
use tokio::sync::{Notify, mpsc};
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::call::{Incoming, Running};
use super::{Shared, Slot};
use crate::frame::{Frame, FrameError, Kind};
use crate::hash::FastMap;
use crate::status::{Code, Status};
use crate::tls::PeerIdentity;
use crate::transport::{self, FrameReader, Outbound, Readable};

/// Frames queued for the writer before senders wait.
const WRITE_QUEUE: usize = 1024;

/// How long a connection stays open after a graceful `GOAWAY` once its calls are done, so
/// that requests already on the wire are answered `UNAVAILABLE` instead of lost.
pub(super) const LINGER: Duration = Duration::from_secs(1);

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

/// Response bytes a connection has queued and not yet written; past its cap the connection
/// stops reading until the writer catches up.
struct Queued {
    bytes: AtomicUsize,
    cap: usize,
    drained: Notify,
}

impl Queued {
    fn is_full(&self) -> bool {
        self.bytes.load(Ordering::Relaxed) > self.cap
    }
}

/// The connection's one timer: the handshake timeout until a first frame, then an idle
/// check once per idle period (rather than a timer re-armed per frame), and after a
/// graceful `GOAWAY` the linger.
#[derive(Debug)]
struct Clock {
    opened: Instant,
    handshake: Option<Duration>,
    idle: Option<Duration>,
    /// A complete frame arrived since the connection opened.
    greeted: bool,
    /// A frame arrived since the last idle check.
    active: bool,
    lingering: bool,
}

/// What the timer going off means.
#[derive(Debug, PartialEq, Eq)]
enum Tick {
    /// No frame within the handshake timeout: close at once.
    Handshake,
    /// No frame and no call for an idle period: go away gracefully.
    Idle,
    /// The linger after a goaway is over: close.
    Lingered,
    /// Look again at this instant.
    Again(Instant),
}

impl Clock {
    fn first(&self) -> Option<Instant> {
        let first = match (self.handshake, self.idle) {
            (Some(h), Some(i)) => h.min(i),
            (h, i) => h.or(i)?,
        };
        self.opened.checked_add(first)
    }

    fn frame(&mut self) {
        self.greeted = true;
        self.active = true;
    }

    fn linger(&mut self, now: Instant) -> Instant {
        self.lingering = true;
        now + LINGER
    }

    fn tick(&mut self, now: Instant, calls: usize) -> Tick {
        if self.lingering {
            return if calls == 0 {
                Tick::Lingered
            } else {
                Tick::Again(now + LINGER)
            };
        }
        let handshake_end = self.handshake.and_then(|h| self.opened.checked_add(h));
        if !self.greeted && handshake_end.is_some_and(|end| now >= end) {
            return Tick::Handshake;
        }
        if self.idle.is_some() && !self.active && calls == 0 {
            return Tick::Idle;
        }
        self.active = false;
        let next_idle = self.idle.and_then(|i| now.checked_add(i));
        let next = match (next_idle, handshake_end.filter(|_| !self.greeted)) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b).unwrap_or(now + Duration::from_secs(3600)),
        };
        Tick::Again(next)
    }
}

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
    let Peer {
        addr: peer,
        identity,
        opened,
    } = accepted;
    let config = &shared.config;
    let max_frame = config.max_frame;
    let limit = config.max_in_flight_per_connection;
    let (tx, rx) = mpsc::channel(WRITE_QUEUE);
    let queued = Arc::new(Queued {
        bytes: AtomicUsize::new(0),
        cap: config.max_queued_bytes_per_connection,
        drained: Notify::new(),
    });
    let released = {
        let (queued, shared) = (queued.clone(), shared.clone());
        move |bytes: usize| {
            if bytes == 0 {
                return;
            }
            let before = uncount(&queued, &shared, bytes);
            if before > queued.cap && before - bytes <= queued.cap {
                queued.drained.notify_one();
            }
        }
    };
    // Responses are queued by this connection's read loop, which runs through everything
    // it read before the writer gets a turn: batching comes without a yield.
    let writer = tokio::spawn(transport::write_loop(
        write,
        rx,
        max_frame,
        |_| false,
        released,
    ));
    let mut reader = FrameReader::new(read, max_frame);
    let mut conn = Connection {
        shared: shared.clone(),
        peer,
        tx,
        queued,
        slot,
        identity,
        calls: JoinSet::new(),
        in_flight: FastMap::default(),
        last_request_id: 0,
        draining: false,
    };
    debug!(%peer, "connection open");
    let mut clock = Clock {
        opened,
        handshake: config.handshake_timeout,
        idle: config.idle_timeout,
        greeted: false,
        active: false,
        lingering: false,
    };
    let first = clock.first();
    let timer = tokio::time::sleep_until(first.unwrap_or_else(Instant::now));
    tokio::pin!(timer);
    let timed = first.is_some();
    // Made once: a cancellation future registers its waiter on first poll and keeps it,
    // where one made per loop turn would take the token's lock twice per frame.
    let stopping = shutdown.cancelled();
    let evict = conn.slot.evict.clone();
    let evicted = evict.cancelled();
    tokio::pin!(stopping, evicted);
    let close = loop {
        let paused = conn.calls.len() >= limit || conn.queued.is_full();
        tokio::select! {
            biased;
            Some(done) = conn.calls.join_next(), if !conn.calls.is_empty() => {
                if let Ok(request_id) = done {
                    conn.in_flight.remove(&request_id);
                }
                conn.slot.calls.store(conn.calls.len(), Ordering::Relaxed);
            }
            () = &mut stopping, if !conn.draining => {
                conn.go_away(Code::Ok, "server shutting down").await;
                timer.as_mut().reset(clock.linger(Instant::now()));
            }
            () = &mut evicted => {
                debug!(%peer, "evicted at the connection limit");
                conn.go_away(Code::Ok, "idle connection closed at the connection limit").await;
                break Close::Done;
            }
            () = &mut timer, if timed || clock.lingering => match clock.tick(Instant::now(), conn.calls.len()) {
                Tick::Handshake => {
                    debug!(%peer, "no frame within the handshake timeout; closing");
                    conn.go_away(Code::DeadlineExceeded, "no frame within the handshake timeout").await;
                    break Close::Done;
                }
                Tick::Idle => {
                    debug!(%peer, "idle; closing the connection");
                    conn.go_away(Code::Ok, "idle timeout").await;
                    timer.as_mut().reset(clock.linger(Instant::now()));
                }
                Tick::Lingered => break Close::Done,
                Tick::Again(at) => timer.as_mut().reset(at),
            },
            _ = conn.queued.drained.notified(), if conn.queued.is_full() => {}
            frame = reader.next(), if !paused => match frame {
                Some(Ok(frame)) => {
                    clock.frame();
                    if let Err(reason) = conn.handle(frame).await {
                        conn.violation(reason).await;
                        break Close::Abandoned;
                    }
                }
                Some(Err(err)) => {
                    if matches!(err, FrameError::BadMagic) && reader.starts_like_tls() {
                        warn!(%peer, "a TLS handshake on a plaintext server; closing");
                        break Close::Abandoned;
                    }
                    conn.reject(err).await;
                    break Close::Abandoned;
                }
                None => break Close::Abandoned,
            },
        }
    };
    // Calls still running here belong to a peer that left or broke the protocol.
    if matches!(close, Close::Abandoned) && !conn.calls.is_empty() {
        debug!(%peer, calls = conn.calls.len(), "closing with calls in flight abandoned");
    }
    conn.calls.abort_all();
    let _ = conn.tx.send(Outbound::Close).await;
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

/// The server-wide count of queued bytes moves in steps of this many bytes, when a
/// connection's own count crosses a multiple of it: small responses then touch only their
/// connection's counter, and the server-wide one is off by less than a step per connection.
const GRAIN: usize = 4 * 1024;

/// Counts `bytes` more queued on `queued` and, by whole steps, on the server.
fn count(queued: &Queued, shared: &Shared, bytes: usize) {
    let before = queued.bytes.fetch_add(bytes, Ordering::Relaxed);
    let grains = (before + bytes) / GRAIN - before / GRAIN;
    if grains > 0 {
        shared.queued.fetch_add(grains * GRAIN, Ordering::Relaxed);
    }
}

async fn queue(tx: &mpsc::Sender<Outbound>, queued: &Queued, shared: &Shared, out: Outbound) {
    let weight = out.weight();
    count(queued, shared, weight);
    if let Err(mpsc::error::SendError(out)) = tx.send(out).await {
        // The writer is gone and will never release these; drop them as it would have.
        drop(out);
        uncount(queued, shared, weight);
    }
}

/// Counts `bytes` fewer queued, the reverse of [`count`]; returns the connection's count
/// before.
fn uncount(queued: &Queued, shared: &Shared, bytes: usize) -> usize {
    let before = queued.bytes.fetch_sub(bytes, Ordering::Relaxed);
    let grains = before / GRAIN - (before - bytes) / GRAIN;
    if grains > 0 {
        shared.queued.fetch_sub(grains * GRAIN, Ordering::Relaxed);
    }
    before
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

#[cfg(test)]
mod tests {
    use super::*;

    fn clock(handshake: Option<Duration>, idle: Option<Duration>) -> Clock {
        Clock {
            opened: Instant::now(),
            handshake,
            idle,
            greeted: false,
            active: false,
            lingering: false,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_meets_the_handshake_timeout_first() {
        let secs = Duration::from_secs;
        let mut c = clock(Some(secs(10)), Some(secs(300)));
        let first = c.first().expect("timed");
        assert_eq!(first - c.opened, secs(10));
        assert_eq!(c.tick(first, 0), Tick::Handshake);
    }

    #[tokio::test(start_paused = true)]
    async fn a_greeted_connection_goes_idle_only_after_a_silent_period() {
        let secs = Duration::from_secs;
        let mut c = clock(Some(secs(10)), Some(secs(300)));
        c.frame();
        let at = c.opened + secs(10);
        let Tick::Again(next) = c.tick(at, 0) else {
            panic!("a frame came within the period")
        };
        assert_eq!(next, at + secs(300));
        assert_eq!(
            c.tick(next, 1),
            Tick::Again(next + secs(300)),
            "a call in flight"
        );
        assert_eq!(c.tick(next + secs(300), 0), Tick::Idle);
        let end = c.linger(next);
        assert_eq!(c.tick(end, 1), Tick::Again(end + LINGER));
        assert_eq!(c.tick(end + LINGER, 0), Tick::Lingered);
    }

    #[tokio::test(start_paused = true)]
    async fn periods_too_long_for_the_clock_never_fire() {
        let mut c = clock(Some(Duration::MAX), Some(Duration::MAX));
        assert_eq!(c.first(), None);
        c.frame();
        assert!(matches!(c.tick(Instant::now(), 0), Tick::Again(_)));
        assert_eq!(clock(None, None).first(), None);
    }
}
