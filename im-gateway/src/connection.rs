//! One task per connection, the same for both transports: read a request, dispatch it
//! (several at once, polled in this task), write replies and queued pushes, enforce the
//! timeouts and the rate limit, and close.
//!
//! An idle connection holds no read buffer (it waits for readability, see `tcp`), no
//! write buffer, one timer and an empty queue, which keeps it to a few KiB.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt as _;
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use im_proto::client::server_message::Body;
use im_proto::client::{Code, GoAway, Request};
use tokio::time::Instant;

use crate::Shared;
use crate::dispatch::Reply;
use crate::limit::Bucket;
use crate::registry::{Conn, Flow, Queued};
use crate::stats;
use crate::wire::{self, Encoded, Form};

/// What a transport read.
#[derive(Debug)]
pub(crate) enum Read {
    /// One request, in `Form`.
    Request(Form, Bytes),
    /// A transport-level frame (WebSocket ping or pong): the client is alive.
    Control,
    /// A request over the size limit; the connection cannot go on.
    TooLong(String),
    /// The client closed the connection.
    Closed,
    /// The connection failed or the client broke the transport's framing.
    Failed(String),
}

/// A client connection's transport.
pub(crate) trait Transport: Send {
    /// For metrics: `tcp` or `ws`.
    const NAME: &'static str;
    /// The form pushes take by default.
    fn form(&self) -> Form;
    /// The next request. Cancel-safe: dropping the future loses nothing.
    fn read(&mut self) -> impl Future<Output = Read> + Send;
    /// Writes `frames`, each in its form.
    fn write(&mut self, frames: &[(Form, Bytes)]) -> impl Future<Output = io::Result<()>> + Send;
    /// Ends the connection after what was written.
    fn close(&mut self) -> impl Future<Output = ()> + Send;
}

/// Why a connection ended (for the log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Done,
    Dead,
    Failed,
}

/// How long a write may block before the client is given up on.
pub(crate) const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves one connection until it ends, then unregisters it.
pub(crate) async fn serve<T: Transport>(
    shared: Arc<Shared>,
    mut io: T,
    client: Option<std::net::IpAddr>,
) {
    let conn = Conn::from_client(shared.next_conn_id(), client);
    stats::connections(T::NAME, 1.0);
    let end = drive(&shared, &conn, &mut io).await;
    if end != End::Dead {
        let _ = tokio::time::timeout(Duration::from_secs(1), io.close()).await;
    }
    drop(io);
    release(&shared, &conn).await;
    stats::connections(T::NAME, -1.0);
}

/// Takes a closed connection out of the registry and unbinds its route (unless another
/// connection of its device is still here).
pub(crate) async fn release(shared: &Shared, conn: &Conn) {
    if let Some(session) = conn.session() {
        shared.expiry.forget(conn.id, session.expires);
        if shared.registry.remove(session.user, conn.id) {
            shared.registry.forget_friends(session.user);
        }
        shared
            .lanes
            .unbind(session.user, session.device.clone())
            .await;
    }
}

/// What the loop does after an event.
enum Step {
    Continue,
    /// A frame arrived from an authenticated client, or it just authenticated: the idle
    /// timeout starts again.
    Alive,
    /// Read nothing more; finish what is in flight within the grace period, then close.
    Drain,
    End(End),
}

/// A connection's state besides its requests in flight.
struct Driver<'a, T> {
    shared: &'a Shared,
    conn: &'a Arc<Conn>,
    io: &'a mut T,
    bucket: Bucket,
    /// Requests refused by the rate limit in a row.
    refused: u32,
    authenticated: bool,
    draining: bool,
}

/// The connection's loop; returns how it ended.
async fn drive<T: Transport>(shared: &Shared, conn: &Arc<Conn>, io: &mut T) -> End {
    let settings = &shared.settings;
    let mut driver = Driver {
        shared,
        conn,
        io,
        bucket: Bucket::new(settings.rate_per_sec, settings.rate_burst),
        refused: 0,
        authenticated: false,
        draining: false,
    };
    let mut in_flight = FuturesUnordered::new();
    let timer = tokio::time::sleep(settings.auth_timeout());
    tokio::pin!(timer);
    loop {
        if driver.draining && in_flight.is_empty() {
            return match flush(driver.io, conn, &mut Vec::new()).await {
                Ok(_) => End::Done,
                Err(end) => end,
            };
        }
        let step = tokio::select! {
            biased;
            () = conn.woken() => driver.on_wake().await,
            Some((form, reply)) = in_flight.next(), if !in_flight.is_empty() => {
                driver.on_reply(form, reply).await
            }
            () = shared.stop.cancelled(), if !driver.draining => driver.go_away().await,
            read = driver.io.read(), if !driver.draining && in_flight.len() < settings.max_in_flight => {
                match driver.on_read(read).await {
                    Ok(Some((form, request))) => {
                        in_flight.push(shared.handle(conn, request).map(move |reply| (form, reply)));
                        driver.alive()
                    }
                    Ok(None) => driver.alive(),
                    Err(end) => Step::End(end),
                }
            }
            () = &mut timer => driver.on_timer().await,
        };
        match step {
            Step::Continue => {}
            Step::Alive => timer
                .as_mut()
                .reset(Instant::now() + settings.idle_timeout()),
            Step::Drain => {
                driver.draining = true;
                timer.as_mut().reset(Instant::now() + settings.grace());
            }
            Step::End(end) => return end,
        }
    }
}

impl<T: Transport> Driver<'_, T> {
    /// Restarts the idle timeout if the client is authenticated (before, the
    /// authentication timeout runs from the connect, whatever the client sends).
    fn alive(&self) -> Step {
        if self.authenticated {
            Step::Alive
        } else {
            Step::Continue
        }
    }

    /// Pushes were queued, or the queue's flow changed.
    async fn on_wake(&mut self) -> Step {
        match flush(self.io, self.conn, &mut Vec::new()).await {
            Ok(Flow::Open) => Step::Continue,
            // Kicked: the replies in flight (a Logout's) get the grace period.
            Ok(Flow::Drain) => Step::Drain,
            Ok(Flow::Dead) => Step::End(End::Dead),
            Err(end) => Step::End(end),
        }
    }

    async fn on_reply(&mut self, form: Form, reply: Reply) -> Step {
        let Reply { message, close } = reply;
        let bytes = Encoded::new(message).bytes(form);
        if let Err(end) = write(self.io, self.conn, &[(form, bytes)]).await {
            return Step::End(end);
        }
        if close {
            return Step::Drain;
        }
        if !self.authenticated && self.conn.session().is_some() {
            // From now on the idle timeout, counted from the login.
            self.authenticated = true;
            return Step::Alive;
        }
        Step::Continue
    }

    /// The gateway is shutting down.
    async fn go_away(&mut self) -> Step {
        let settings = &self.shared.settings;
        let go_away = Encoded::push(Body::GoAway(GoAway {
            reason: "the gateway is shutting down; reconnect and resume".to_owned(),
            close_after_ms: settings.shutdown_grace_ms,
        }));
        let form = self.conn.push_form(self.io.form());
        match write(self.io, self.conn, &[(form, go_away.bytes(form))]).await {
            Ok(()) => Step::Drain,
            Err(end) => Step::End(end),
        }
    }

    /// A request to dispatch, or None when the frame was answered here (or was not a
    /// request).
    async fn on_read(&mut self, read: Read) -> Result<Option<(Form, Request)>, End> {
        let (form, bytes) = match read {
            Read::Request(form, bytes) => (form, bytes),
            Read::Control => return Ok(None),
            Read::TooLong(why) => {
                let error = wire::error(Code::ResourceExhausted, why, false);
                let _ = self.fail(0, error).await;
                return Err(End::Done);
            }
            Read::Closed => return Err(End::Done),
            Read::Failed(why) => {
                tracing::debug!(conn = self.conn.id, why, "connection failed");
                return Err(End::Failed);
            }
        };
        stats::frames_in(1);
        if form != Form::Frame {
            self.conn.set_json(form == Form::Json);
        }
        // Every frame takes a token, a well-formed request or not: undecodable frames cost
        // the gateway as much to answer.
        let decoded = wire::decode(form, &bytes);
        if !self.bucket.take() {
            let id = decoded.as_ref().map_or(0, |request| request.id);
            return self.refuse(id).await;
        }
        self.refused = 0;
        match decoded {
            Ok(request) => Ok(Some((form, request))),
            Err(err) => {
                let error = wire::error(Code::InvalidArgument, err.to_string(), false);
                self.fail(0, error).await?;
                Ok(None)
            }
        }
    }

    /// A frame over the rate limit: an error reply, and the close after too many in a row.
    async fn refuse(&mut self, id: u64) -> Result<Option<(Form, Request)>, End> {
        stats::rate_limited();
        self.refused += 1;
        let error = wire::error(
            Code::ResourceExhausted,
            format!(
                "rate limit: at most {} requests per second; slow down",
                self.shared.settings.rate_per_sec
            ),
            true,
        );
        self.fail(id, error).await?;
        if self.refused > self.shared.settings.max_rate_limited {
            return Err(End::Done);
        }
        Ok(None)
    }

    /// The authentication or idle timeout, or the end of the grace period.
    async fn on_timer(&mut self) -> Step {
        if self.draining {
            return Step::End(End::Done);
        }
        let (code, why) = if self.authenticated {
            (
                Code::DeadlineExceeded,
                "idle: no frame within the idle timeout",
            )
        } else {
            (
                Code::Unauthenticated,
                "log in first: authentication timed out",
            )
        };
        let _ = self.fail(0, wire::error(code, why, false)).await;
        Step::End(End::Done)
    }

    /// Writes an error reply to request `id` (0: not tied to a request), in the form the
    /// connection speaks.
    async fn fail(&mut self, id: u64, error: im_proto::client::Error) -> Result<(), End> {
        let form = self.conn.push_form(self.io.form());
        let bytes = Encoded::new(wire::failure(id, error)).bytes(form);
        write(self.io, self.conn, &[(form, bytes)]).await
    }
}

/// Writes what is queued for `conn` until its queue is empty; returns its flow.
async fn flush<T: Transport>(
    io: &mut T,
    conn: &Conn,
    queued: &mut Vec<Queued>,
) -> Result<Flow, End> {
    let form = conn.push_form(io.form());
    loop {
        let flow = conn.take(queued);
        if flow == Flow::Dead {
            return Ok(Flow::Dead);
        }
        if queued.is_empty() {
            return Ok(flow);
        }
        let frames: Vec<(Form, Bytes)> = queued
            .iter()
            .map(|q| (form, q.encoded.bytes(form)))
            .collect();
        write(io, conn, &frames).await?;
        let now = im_common::ids::now_ms();
        for q in queued.iter() {
            if let Some(Body::Message(message)) = &q.encoded.message().body {
                let ms = u64::try_from(now - message.server_time_ms).unwrap_or(0);
                stats::pushed(Duration::from_millis(ms));
            }
        }
        // Dropping them drops their delivery tokens: these frames are written.
        queued.clear();
        if queued.capacity() > 64 {
            *queued = Vec::new();
        }
    }
}

/// Writes `frames`, giving up when the connection is condemned meanwhile or the write
/// blocks too long. A wake-up for more pushes is taken here, so the caller looks at the
/// queue again afterwards (the main loop does, through [`flush`] after any write).
async fn write<T: Transport>(io: &mut T, conn: &Conn, frames: &[(Form, Bytes)]) -> Result<(), End> {
    let n = frames.len() as u64;
    let written = io.write(frames);
    tokio::pin!(written);
    let deadline = tokio::time::sleep(WRITE_TIMEOUT);
    tokio::pin!(deadline);
    let mut woken = false;
    let result = loop {
        tokio::select! {
            result = &mut written => break result.map_err(|_| End::Failed),
            () = conn.woken() => {
                if conn.flow() == Flow::Dead {
                    break Err(End::Dead);
                }
                woken = true;
            }
            () = &mut deadline => break Err(End::Failed),
        }
    };
    if woken {
        // Hand the wake-up back to the main loop.
        conn.rewake();
    }
    if result.is_ok() {
        stats::frames_out(n);
    }
    result
}
