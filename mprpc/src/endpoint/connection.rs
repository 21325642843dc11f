//! One client connection: many calls in flight at once, matched to their responses by
//! request id.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use metrics::Gauge;
use parking_lot::Mutex;
use tokio::io::AsyncWrite;
use tokio::sync::{mpsc, oneshot};
use tokio::task::{AbortHandle, JoinHandle};
use tokio::time::Duration;
use tracing::debug;

use crate::error::Error;
use crate::frame::{Deferred, Frame, FrameError, Header, Kind, Text};
use crate::hash::FastMap;
use crate::method::Method;
use crate::transport::{self, FrameReader, Outbound, Readable};

const WRITE_QUEUE: usize = 1024;

const OPEN: u8 = 0;
/// The server sent GOAWAY: calls in flight finish, new calls go elsewhere.
const DRAINING: u8 = 1;
const CLOSED: u8 = 2;

type Waiter = oneshot::Sender<Result<Frame, Error>>;

/// Calls waiting for a response, and the next request id.
#[derive(Default)]
struct Pending {
    waiters: FastMap<u64, Waiter>,
    last_id: u64,
}

/// State shared by the handle and the reader task.
struct Shared {
    /// A parking_lot mutex: held for one map operation (and, when a call is sent, to queue
    /// its frame, so ids reach the wire in increasing order as the protocol requires),
    /// never across an await, and contended only between callers and the reader.
    pending: Mutex<Pending>,
    state: AtomicU8,
    /// Highest request id the server said it accepted before going away.
    goaway_last_id: AtomicU64,
    /// Frames received so far; the keepalive task watches it move.
    received: AtomicU64,
    /// The address dialled, for errors.
    addr: Box<str>,
    /// Why the server refused the connection before answering anything (TLS); calls still
    /// waiting then fail with [`Error::Tls`], which says they never ran.
    refused: std::sync::OnceLock<String>,
}

/// A multiplexed connection to one server. Dropping it stops its tasks.
pub(crate) struct Connection {
    tx: mpsc::Sender<Outbound>,
    shared: Arc<Shared>,
    max_frame: usize,
    reader: JoinHandle<()>,
    writer: JoinHandle<std::io::Result<()>>,
    keepalive: Option<JoinHandle<()>>,
    /// `mprpc_client_connections` for this endpoint; counts this connection while it lives.
    gauge: Gauge,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.reader.abort();
        self.writer.abort();
        if let Some(keepalive) = &self.keepalive {
            keepalive.abort();
        }
        self.gauge.decrement(1.0);
    }
}

impl Connection {
    /// A connection over the two halves of a stream, plaintext or TLS: generic so that each
    /// kind gets code of its own, plaintext exactly as fast as without TLS.
    pub(crate) fn new<R, W>(
        read: R,
        write: W,
        addr: &str,
        max_frame: usize,
        keepalive: Option<Duration>,
        gauge: Gauge,
    ) -> Connection
    where
        R: Readable + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        gauge.increment(1.0);
        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
            state: AtomicU8::new(OPEN),
            goaway_last_id: AtomicU64::new(u64::MAX),
            received: AtomicU64::new(0),
            addr: addr.into(),
            refused: std::sync::OnceLock::new(),
        });
        let reader = tokio::spawn(read_loop(
            FrameReader::new(read, max_frame),
            shared.clone(),
            tx.downgrade(),
        ));
        let keepalive = keepalive.map(|period| {
            tokio::spawn(probe(
                period,
                shared.clone(),
                tx.downgrade(),
                reader.abort_handle(),
            ))
        });
        let calls = shared.clone();
        let busy = move |taken: usize| calls.pending.lock().waiters.len() > taken;
        let writer = tokio::spawn(transport::write_loop(write, rx, max_frame, busy, |_| {}));
        Connection {
            tx,
            shared,
            max_frame,
            reader,
            writer,
            keepalive,
            gauge,
        }
    }

    /// Whether new calls may use this connection.
    pub(crate) fn is_open(&self) -> bool {
        self.shared.state.load(Ordering::Acquire) == OPEN && !self.tx.is_closed()
    }

    /// Sends one request and waits for its response frame.
    ///
    /// Dropping the returned future before it completes sends CANCEL to the server.
    pub(crate) async fn call(
        &self,
        method: &Method,
        timeout_us: u64,
        metadata: Vec<(Text, Text)>,
        body: &impl prost::Message,
    ) -> Result<Frame, Error> {
        let permit = self
            .tx
            .reserve()
            .await
            .map_err(|_| Error::Unavailable("connection closed before the request was sent"))?;
        let header = Header {
            kind: Kind::Request,
            service: Text::from_static(method.service),
            method: Text::from_static(method.name),
            timeout_us,
            metadata,
            ..Header::default()
        };
        // Encoded outside the lock, with room in front for the header; the id is written
        // there when the frame is queued. (After the wait for queue room, so that the
        // encoded frame is not part of the waiting future.)
        let frame = Deferred::new(&header, body, self.max_frame).map_err(Error::TooLarge)?;
        let (id, response) = self.enqueue(permit, |id| Outbound::Encoded(frame.finish(id)))?;
        let guard = CancelOnDrop { conn: self, id };
        let result = response.await;
        guard.disarm();
        result.unwrap_or(Err(Error::ConnectionLost))
    }

    /// Sends a ping and waits for the pong.
    pub(crate) async fn ping(&self) -> Result<(), Error> {
        let permit = self
            .tx
            .reserve()
            .await
            .map_err(|_| Error::Unavailable("connection closed"))?;
        // Pings share the id space so that a pong finds its waiter; they are not requests,
        // so their ids need not increase on the wire.
        let (id, response) = self.enqueue(permit, |id| Outbound::control(Kind::Ping, id))?;
        let guard = CancelOnDrop { conn: self, id };
        let result = response
            .await
            .unwrap_or(Err(Error::ConnectionLost))
            .map(drop);
        guard.disarm();
        result
    }

    /// Gives the next id a waiter and queues the frame `frame(id)` builds, under the pending
    /// lock, so that frames reach the wire in id order.
    ///
    /// # Errors
    /// [`Error::Unavailable`] when the reader is gone and would never answer the waiter.
    fn enqueue(
        &self,
        permit: mpsc::Permit<'_, Outbound>,
        frame: impl FnOnce(u64) -> Outbound,
    ) -> Result<(u64, oneshot::Receiver<Result<Frame, Error>>), Error> {
        let (waiter, response) = oneshot::channel();
        let mut pending = self.shared.pending.lock();
        if self.shared.state.load(Ordering::Acquire) == CLOSED {
            return Err(Error::Unavailable(
                "connection closed before the request was sent",
            ));
        }
        pending.last_id += 1;
        let id = pending.last_id;
        pending.waiters.insert(id, waiter);
        permit.send(frame(id));
        Ok((id, response))
    }
}

/// Removes a call from the pending map when its future is dropped early, and tells the
/// server to stop working on it.
struct CancelOnDrop<'a> {
    conn: &'a Connection,
    id: u64,
}

impl CancelOnDrop<'_> {
    fn disarm(self) {
        self.conn.shared.pending.lock().waiters.remove(&self.id);
        std::mem::forget(self);
    }
}

impl Drop for CancelOnDrop<'_> {
    fn drop(&mut self) {
        if self
            .conn
            .shared
            .pending
            .lock()
            .waiters
            .remove(&self.id)
            .is_some()
        {
            // Best effort: when the queue is full the server finds out from the deadline.
            let _ = self
                .conn
                .tx
                .try_send(Outbound::control(Kind::Cancel, self.id));
        }
    }
}

async fn read_loop<R: Readable>(
    mut reader: FrameReader<R>,
    shared: Arc<Shared>,
    tx: mpsc::WeakSender<Outbound>,
) {
    // Runs however the loop ends, including when the keepalive probe aborts it.
    let _closed = FailPending(shared.clone());
    let cause = loop {
        let frame = match reader.next().await {
            Some(Ok(frame)) => frame,
            Some(Err(err)) => {
                let first = shared.received.load(Ordering::Relaxed) == 0;
                if let Some(reason) = refusal(&err, &reader).filter(|_| first) {
                    let _ = shared.refused.set(reason);
                }
                break Some(err.to_string());
            }
            None => break None,
        };
        shared.received.fetch_add(1, Ordering::Relaxed);
        match frame.header.kind {
            Kind::Response | Kind::Pong => {
                let waiter = shared
                    .pending
                    .lock()
                    .waiters
                    .remove(&frame.header.request_id);
                // No waiter: the call was cancelled or timed out while its answer travelled.
                if let Some(waiter) = waiter {
                    let _ = waiter.send(Ok(frame));
                }
            }
            Kind::GoAway => {
                debug!(last = frame.header.request_id, status = %frame.header.status, "server going away");
                shared
                    .goaway_last_id
                    .store(frame.header.request_id, Ordering::Release);
                shared.state.store(DRAINING, Ordering::Release);
            }
            Kind::Request | Kind::Cancel | Kind::Ping => {
                break Some(format!(
                    "a server does not send {:?} frames",
                    frame.header.kind
                ));
            }
        }
        if shared.state.load(Ordering::Acquire) == DRAINING
            && shared.pending.lock().waiters.is_empty()
        {
            // Nothing left to wait for: closing now spares the server its linger.
            if let Some(tx) = tx.upgrade() {
                let _ = tx.try_send(Outbound::Close);
            }
            break None;
        }
    };
    if let Some(cause) = cause {
        debug!(%cause, "connection failed");
    }
}

/// Why a connection that failed before its first frame was refused by the server, when it
/// was: a TLS alert (a TLS 1.3 server checks the client's certificate after the client has
/// sent its first requests, and reads none of them when it refuses), or a TLS record where
/// a frame was expected (a plaintext client of a TLS server).
///
/// Counted as a failed client handshake, which in substance it is.
fn refusal<R: Readable>(err: &FrameError, reader: &FrameReader<R>) -> Option<String> {
    let (reason, label) = match err {
        FrameError::Io(err) => (
            crate::tls::refusal_reason(err)?,
            crate::tls::failure_reason(err),
        ),
        FrameError::BadMagic if reader.starts_like_tls() => (
            "the server speaks TLS and this client does not (see ClientBuilder::tls)".into(),
            "not_tls",
        ),
        _ => return None,
    };
    crate::tls::count_failure(crate::tls::Side::Client, label);
    Some(reason)
}

/// Marks the connection closed and fails the calls still waiting on it.
struct FailPending(Arc<Shared>);

impl Drop for FailPending {
    fn drop(&mut self) {
        let shared = &self.0;
        shared.state.store(CLOSED, Ordering::Release);
        let last = shared.goaway_last_id.load(Ordering::Acquire);
        let pending = std::mem::take(&mut shared.pending.lock().waiters);
        let refused = shared.refused.get();
        for (id, waiter) in pending {
            // After GOAWAY the server starts nothing past `last`, so those calls never ran.
            let err = if let Some(reason) = refused {
                Error::Tls {
                    addr: shared.addr.to_string(),
                    reason: reason.clone(),
                }
            } else if id > last {
                Error::Unavailable("server went away before starting the call")
            } else {
                Error::ConnectionLost
            };
            let _ = waiter.send(Err(err));
        }
    }
}

/// Request id of keepalive pings; calls count from 1, so its pong matches no call.
const PROBE_ID: u64 = 0;

/// Keepalive: every `period`, a connection that has calls waiting and received nothing
/// since the last look is sent a ping; if still nothing has arrived a period later, the
/// peer is taken for gone and the reader is stopped, which fails the waiting calls.
///
/// It looks at a counter the reader bumps per frame, so the read path pays one relaxed
/// atomic add per frame and no timer.
async fn probe(
    period: Duration,
    shared: Arc<Shared>,
    tx: mpsc::WeakSender<Outbound>,
    reader: AbortHandle,
) {
    let mut seen = shared.received.load(Ordering::Relaxed);
    let mut pinged = false;
    loop {
        // A sleep rather than an interval: tokio caps a sleep at its far future, where an
        // interval's `now + period` overflows for a period such as `Duration::MAX`.
        tokio::time::sleep(period).await;
        if shared.state.load(Ordering::Acquire) == CLOSED {
            return;
        }
        let received = shared.received.load(Ordering::Relaxed);
        if received != seen {
            seen = received;
            pinged = false;
            continue;
        }
        if pinged {
            debug!(?period, "keepalive ping unanswered; closing the connection");
            reader.abort();
            return;
        }
        if shared.pending.lock().waiters.is_empty() {
            continue;
        }
        let Some(tx) = tx.upgrade() else { return };
        // A full queue means the peer stopped reading too: the next look decides as if
        // the ping had gone out.
        if let Err(mpsc::error::TrySendError::Closed(_)) =
            tx.try_send(Outbound::control(Kind::Ping, PROBE_ID))
        {
            return;
        }
        pinged = true;
    }
}
