//! One task per connection, the same for both transports: read a request, dispatch it
//! (several at once, polled in this task), write replies and queued pushes, enforce the
//! timeouts and the rate limit, and close.
//!
//! An idle connection holds no read buffer (it waits for readability, see [`Tcp`]), no
//! write buffer, one timer and an empty queue, which keeps it to a few KiB.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::FutureExt as _;
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use im_proto::client::server_message::Body;
use im_proto::client::{Code, GoAway, ServerMessage};
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;
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
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves one connection until it ends, then unregisters it.
pub(crate) async fn serve<T: Transport>(shared: Arc<Shared>, mut io: T) {
    let conn = Conn::new(shared.next_conn_id());
    stats::connections(T::NAME, 1.0);
    let end = drive(&shared, &conn, &mut io).await;
    if end != End::Dead {
        let _ = tokio::time::timeout(Duration::from_secs(1), io.close()).await;
    }
    drop(io);
    if let Some(session) = conn.session() {
        if shared.registry.remove(session.user, conn.id) {
            shared.registry.forget_friends(session.user);
        }
        shared
            .lanes
            .unbind(session.user, session.device.clone())
            .await;
    }
    stats::connections(T::NAME, -1.0);
}

/// The connection's loop; returns how it ended.
async fn drive<T: Transport>(shared: &Shared, conn: &Arc<Conn>, io: &mut T) -> End {
    let settings = &shared.settings;
    let mut bucket = Bucket::new(settings.rate_per_sec, settings.rate_burst);
    let mut refused: u32 = 0;
    let mut in_flight = FuturesUnordered::new();
    let mut draining = false;
    let mut authenticated = false;
    let timer = tokio::time::sleep(settings.auth_timeout());
    tokio::pin!(timer);
    loop {
        if draining && in_flight.is_empty() {
            return match flush(io, conn, &mut Vec::new()).await {
                Ok(_) => End::Done,
                Err(end) => end,
            };
        }
        tokio::select! {
            biased;
            () = conn.woken() => match flush(io, conn, &mut Vec::new()).await {
                Ok(Flow::Open) => {}
                Ok(Flow::Drain) => {
                    // Kicked: the replies in flight (a Logout's) get the grace period.
                    draining = true;
                    timer.as_mut().reset(Instant::now() + settings.grace());
                }
                Ok(Flow::Dead) => return End::Dead,
                Err(end) => return end,
            },
            Some((form, reply)) = in_flight.next(), if !in_flight.is_empty() => {
                let Reply { message, close } = reply;
                if let Err(end) = write(io, conn, &[(form, Encoded::new(message).bytes(form))]).await {
                    return end;
                }
                if !authenticated && conn.session().is_some() {
                    // From now on the idle timeout, counted from the login.
                    authenticated = true;
                    timer.as_mut().reset(Instant::now() + settings.idle_timeout());
                }
                if close {
                    draining = true;
                    timer.as_mut().reset(Instant::now() + settings.grace());
                }
            }
            () = shared.stop.cancelled(), if !draining => {
                draining = true;
                timer.as_mut().reset(Instant::now() + settings.grace());
                let go_away = Encoded::push(Body::GoAway(GoAway {
                    reason: "the gateway is shutting down; reconnect and resume".to_owned(),
                    close_after_ms: settings.shutdown_grace_ms,
                }));
                let form = conn.push_form(io.form());
                if let Err(end) = write(io, conn, &[(form, go_away.bytes(form))]).await {
                    return end;
                }
            }
            read = io.read(), if !draining && in_flight.len() < settings.max_in_flight => {
                let (form, bytes) = match read {
                    Read::Request(form, bytes) => (form, bytes),
                    Read::Control => {
                        if authenticated {
                            timer.as_mut().reset(Instant::now() + settings.idle_timeout());
                        }
                        continue;
                    }
                    Read::TooLong(why) => {
                        let error = wire::error(Code::ResourceExhausted, why, false);
                        let form = conn.push_form(io.form());
                        let _ = reply(io, conn, form, wire::failure(0, error)).await;
                        return End::Done;
                    }
                    Read::Closed => return End::Done,
                    Read::Failed(why) => {
                        tracing::debug!(conn = conn.id, why, "connection failed");
                        return End::Failed;
                    }
                };
                stats::frames_in(1);
                if authenticated {
                    timer.as_mut().reset(Instant::now() + settings.idle_timeout());
                }
                if form != Form::Frame {
                    conn.set_json(form == Form::Json);
                }
                let request = match wire::decode(form, &bytes) {
                    Ok(request) => request,
                    Err(err) => {
                        let error = wire::error(Code::InvalidArgument, err.to_string(), false);
                        if let Err(end) = reply(io, conn, form, wire::failure(0, error)).await {
                            return end;
                        }
                        continue;
                    }
                };
                if !bucket.take() {
                    stats::rate_limited();
                    refused += 1;
                    let error = wire::error(
                        Code::ResourceExhausted,
                        format!(
                            "rate limit: at most {} requests per second; slow down",
                            settings.rate_per_sec
                        ),
                        true,
                    );
                    if let Err(end) = reply(io, conn, form, wire::failure(request.id, error)).await {
                        return end;
                    }
                    if refused > settings.max_rate_limited {
                        return End::Done;
                    }
                    continue;
                }
                refused = 0;
                in_flight.push(shared.handle(conn, request).map(move |reply| (form, reply)));
            }
            () = &mut timer => {
                if draining {
                    return End::Done;
                }
                let (code, why) = if conn.session().is_some() {
                    (Code::DeadlineExceeded, "idle: no frame within the idle timeout")
                } else {
                    (Code::Unauthenticated, "log in first: authentication timed out")
                };
                let form = conn.push_form(io.form());
                let _ = reply(io, conn, form, wire::failure(0, wire::error(code, why, false))).await;
                return End::Done;
            }
        }
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

async fn reply<T: Transport>(
    io: &mut T,
    conn: &Conn,
    form: Form,
    message: ServerMessage,
) -> Result<(), End> {
    write(io, conn, &[(form, Encoded::new(message).bytes(form))]).await
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

/// A client on TCP: length-prefixed protobuf frames.
pub(crate) struct Tcp {
    stream: TcpStream,
    /// Bytes of a frame not complete yet; empty (no allocation) while the socket is dry.
    buf: BytesMut,
    max: usize,
}

/// Bytes taken off the socket per read while the connection waits without a buffer.
const CHUNK: usize = 4096;

impl Tcp {
    pub(crate) fn new(stream: TcpStream, max: usize) -> Tcp {
        Tcp {
            stream,
            buf: BytesMut::new(),
            max,
        }
    }

    /// Moves what the socket has into the buffer, through a stack chunk so that nothing
    /// is allocated for a connection that has nothing to say; Ok(0) at the end of the
    /// stream.
    fn fill(&mut self) -> io::Result<usize> {
        let mut chunk = [0u8; CHUNK];
        let mut total = 0;
        loop {
            match self.stream.try_read(&mut chunk) {
                Ok(0) => return Ok(total),
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    total += n;
                    if n < CHUNK || self.buf.len() > self.max + im_proto::codec::PREFIX {
                        return Ok(total);
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock && total > 0 => {
                    return Ok(total);
                }
                Err(err) => return Err(err),
            }
        }
    }
}

impl Transport for Tcp {
    const NAME: &'static str = "tcp";

    fn form(&self) -> Form {
        Form::Frame
    }

    async fn read(&mut self) -> Read {
        loop {
            match im_proto::codec::read_frame(&mut self.buf, self.max) {
                Ok(Some(frame)) => {
                    if self.buf.is_empty() {
                        // Let the allocation go with the frame.
                        self.buf = BytesMut::new();
                    }
                    return Read::Request(Form::Frame, frame);
                }
                Ok(None) => {}
                Err(err) => return Read::TooLong(err.to_string()),
            }
            if let Err(err) = self.stream.readable().await {
                return Read::Failed(err.to_string());
            }
            match self.fill() {
                Ok(0) if self.buf.is_empty() => return Read::Closed,
                Ok(0) => return Read::Failed("connection closed inside a frame".to_owned()),
                Ok(_) => {}
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                Err(err) => return Read::Failed(err.to_string()),
            }
        }
    }

    async fn write(&mut self, frames: &[(Form, Bytes)]) -> io::Result<()> {
        if let [(_, frame)] = frames {
            return self.stream.write_all(frame).await;
        }
        let len = frames.iter().map(|(_, f)| f.len()).sum();
        let mut buf = BytesMut::with_capacity(len);
        for (_, frame) in frames {
            buf.extend_from_slice(frame);
        }
        self.stream.write_all(&buf).await
    }

    async fn close(&mut self) {
        // Send what was written, then read what the client still sends for a moment:
        // closing with unread bytes would reset the connection and could lose the last
        // frame (an error saying why it closes) on its way.
        let _ = self.stream.shutdown().await;
        let mut chunk = [0u8; 1024];
        let drain = async {
            let mut left = 256 * 1024usize;
            while left > 0 {
                if self.stream.readable().await.is_err() {
                    return;
                }
                match self.stream.try_read(&mut chunk) {
                    Ok(0) => return,
                    Ok(n) => left = left.saturating_sub(n),
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => return,
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_millis(200), drain).await;
    }
}
