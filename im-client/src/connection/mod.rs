//! The task behind a [`Client`](crate::Client): it owns the connection, matches replies to
//! requests by id, keeps the outbox and the per-conversation order, and reconnects.
//!
//! One task owns all of that state, so nothing here takes a lock: the client's handles talk
//! to it over a bounded channel and get their replies on oneshots.
//!
//! [`Driver::run`] serves a connection, then reconnects (`connect_on_demand` while logged
//! out, `reconnect` with backoff while logged in). `serve` is one connection: `open` it
//! (resume, the call that dialled it), then one `turn` after another (a message from the
//! gateway, a call, the keepalive, or the gateway's silence), each followed by `watch`,
//! which moves the silence deadline. What the gateway sends is handled in `inbound`.

use std::collections::HashMap;
use std::pin::Pin;
use std::time::{Duration, Instant};

use im_proto::ChatMessage;
use im_proto::client::request::Command;
use im_proto::client::server_message::Body;
use im_proto::client::{Ping, Request, Resume, Session};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{self, Interval, MissedTickBehavior, Sleep};

use crate::error::Error;
use crate::event::Event;
use crate::options::{Backoff, Options};
use crate::order::Order;
use crate::outbox::{self, Entry, Outbox};
use crate::transport::{Dialer, Transport};
use crate::{Reply, State};

mod inbound;

/// How long closing a lost connection may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// A connection up this long resets the reconnect backoff.
const STABLE: Duration = Duration::from_secs(10);
/// Requests in flight at which abandoned ones are pruned.
const PRUNE_AT: usize = 1024;

/// A command from a client handle.
#[derive(Debug)]
pub(crate) struct Call {
    pub(crate) command: Command,
    pub(crate) reply: oneshot::Sender<Reply>,
}

/// What a request in flight on this connection is for.
#[derive(Debug)]
enum Pending {
    Call(oneshot::Sender<Reply>),
    Outbox(u64),
    Login(oneshot::Sender<Reply>),
    /// The conversations read after a login, to follow each from its last seq.
    Baseline(oneshot::Sender<Reply>, Session),
    Logout(oneshot::Sender<Reply>),
    Resume,
    Sync(String),
    Ping,
}

impl Pending {
    /// Whether nobody waits for the reply any more.
    fn abandoned(&self) -> bool {
        match self {
            Pending::Call(tx) | Pending::Login(tx) | Pending::Logout(tx) => tx.is_closed(),
            Pending::Baseline(tx, _) => tx.is_closed(),
            Pending::Outbox(_) | Pending::Resume | Pending::Sync(_) | Pending::Ping => false,
        }
    }
}

/// Why a connection ended.
#[derive(Debug)]
enum End {
    /// Lost (closed, failed, or the gateway is going away): reconnect.
    Lost(String),
    /// Every client handle is gone.
    Closed,
}

pub(crate) struct Driver {
    options: Options,
    dialer: Dialer,
    calls: mpsc::Receiver<Call>,
    events: mpsc::Sender<Event>,
    state: watch::Sender<State>,
    outbox: Outbox,
    order: Order,
    session: Option<Session>,
    pending: HashMap<u64, Pending>,
    next_id: u64,
    /// Pushes that came while a login's baseline was read; `None` when none is.
    early: Option<Vec<ChatMessage>>,
    /// A resume is in flight: calls wait, so that none reaches the gateway before it.
    resuming: bool,
    /// The session just ended (logout or kick) and the gateway closes the connection
    /// next: that loss is expected, and not reported.
    ending: bool,
    /// A call that opened a new connection (while logged out), made first on it.
    opener: Option<Call>,
}

impl Driver {
    pub(crate) fn new(
        options: Options,
        dialer: Dialer,
        calls: mpsc::Receiver<Call>,
        events: mpsc::Sender<Event>,
        state: watch::Sender<State>,
    ) -> Driver {
        Driver {
            outbox: Outbox::new(options.max_outbox),
            options,
            dialer,
            calls,
            events,
            state,
            order: Order::new(),
            session: None,
            pending: HashMap::new(),
            next_id: 0,
            early: None,
            resuming: false,
            ending: false,
            opener: None,
        }
    }

    /// Serves `first`, then reconnects after every loss until the client is dropped.
    pub(crate) async fn run(mut self, first: Transport) {
        let mut backoff = Backoff::new(&self.options);
        let mut transport = first;
        self.emit(Event::Connected).await;
        loop {
            self.state.send_modify(|s| s.connected = true);
            let started = Instant::now();
            let end = self.serve(&mut transport).await;
            self.lost();
            // A peer that stopped reading must not hold the task in a flush.
            let _ = time::timeout(CLOSE_TIMEOUT, transport.close()).await;
            // Only a connection that stayed up earns the shortest pause: a gateway that
            // accepts and drops at once is not hammered.
            if started.elapsed() >= STABLE {
                backoff.reset();
            }
            let reason = match end {
                End::Closed => return,
                End::Lost(reason) => reason,
            };
            tracing::debug!(%reason, "connection lost");
            let expected = std::mem::take(&mut self.ending);
            if self.session.is_none() {
                // Nothing to resume: the gateway closes connections that do not log in
                // within a few seconds, so one is opened again only when a call needs it.
                match self.connect_on_demand().await {
                    Some(next) => transport = next,
                    None => return,
                }
                continue;
            }
            if !expected {
                self.emit(Event::Disconnected { reason }).await;
            }
            match self.reconnect(&mut backoff).await {
                Some(next) => transport = next,
                None => return,
            }
        }
    }

    /// Waits for a call while logged out, then connects for it; a call that finds the
    /// gateway unreachable fails with [`Error::Disconnected`].
    async fn connect_on_demand(&mut self) -> Option<Transport> {
        loop {
            let call = self.calls.recv().await?;
            match self.dialer.connect(self.options.request_timeout).await {
                Ok(transport) => {
                    self.opener = Some(call);
                    return Some(transport);
                }
                Err(err) => {
                    tracing::debug!(cause = %err, "connect failed");
                    let _ = call.reply.send(Err(Error::Disconnected));
                }
            }
        }
    }

    /// Waits and connects again until it works; calls meanwhile get
    /// [`Error::Disconnected`], except sends, which wait in the outbox.
    async fn reconnect(&mut self, backoff: &mut Backoff) -> Option<Transport> {
        loop {
            let pause = time::sleep(backoff.next_pause());
            tokio::pin!(pause);
            loop {
                tokio::select! {
                    () = &mut pause => break,
                    call = self.calls.recv() => self.offline_call(call?),
                }
            }
            match self.dialer.connect(self.options.request_timeout).await {
                Ok(transport) => return Some(transport),
                Err(err) => tracing::debug!(cause = %err, "reconnect failed"),
            }
        }
    }

    fn offline_call(&mut self, mut call: Call) {
        if outbox::prepare(&mut call.command) && self.session.is_some() {
            let entry = Entry {
                command: call.command,
                reply: call.reply,
            };
            if let Err(entry) = self.outbox.push(entry) {
                let _ = entry.reply.send(Err(Error::OutboxFull));
            }
        } else {
            let _ = call.reply.send(Err(Error::Disconnected));
        }
    }

    /// Serves one connection until it ends.
    async fn serve(&mut self, transport: &mut Transport) -> End {
        if let Err(end) = self.open(transport).await {
            return end;
        }
        let mut keepalive = time::interval(self.options.keepalive);
        keepalive.set_missed_tick_behavior(MissedTickBehavior::Delay);
        keepalive.reset();
        // The gateway answers every request. When one waits and nothing at all is heard for
        // `request_timeout`, the connection is dead even if no error says so (a gateway
        // that froze, a route that dropped the connection without a reset): reconnect.
        // The keepalive ping makes sure something waits now and then.
        let mut waiting_since: Option<Instant> = None;
        let silence = time::sleep(self.options.request_timeout);
        tokio::pin!(silence);
        loop {
            let waiting = waiting_since.is_some();
            match self
                .turn(transport, &mut keepalive, silence.as_mut(), waiting)
                .await
            {
                Ok(heard) => self.watch(&mut waiting_since, heard, silence.as_mut()),
                Err(end) => return end,
            }
        }
    }

    /// Starts a connection: resumes the session, when there is one, and makes the call
    /// that opened the connection, when one did.
    async fn open(&mut self, transport: &mut Transport) -> Result<(), End> {
        if let Some(session) = &self.session {
            let resume = Command::Resume(Resume {
                token: session.token.clone(),
                device_kind: self.options.device_kind.into(),
                cursors: self.order.cursors(),
            });
            self.resuming = true;
            self.request(transport, resume, Pending::Resume)
                .await
                .map_err(lost)?;
        }
        if let Some(call) = self.opener.take() {
            self.on_call(transport, call).await?;
        }
        Ok(())
    }

    /// Waits for the next thing to happen on the connection (a message, a call, the
    /// keepalive, the gateway's silence) and handles it; says whether the gateway was heard.
    async fn turn(
        &mut self,
        transport: &mut Transport,
        keepalive: &mut Interval,
        silence: Pin<&mut Sleep>,
        waiting: bool,
    ) -> Result<bool, End> {
        tokio::select! {
            message = transport.recv() => match message {
                Ok(Some(message)) => self.on_message(transport, message).await.map(|()| true),
                Ok(None) => Err(End::Lost("the gateway closed the connection".into())),
                Err(err) => Err(End::Lost(err.to_string())),
            },
            call = self.calls.recv(), if !self.resuming => match call {
                Some(call) => self.on_call(transport, call).await.map(|()| false),
                None => Err(End::Closed),
            },
            _ = keepalive.tick() => {
                let ping = Command::Ping(Ping {});
                self.request(transport, ping, Pending::Ping).await.map_err(lost)?;
                Ok(false)
            }
            () = silence, if waiting => Err(End::Lost(format!(
                "the gateway did not answer for {:?}",
                self.options.request_timeout
            ))),
        }
    }

    /// Moves the silence deadline after a turn: `request_timeout` after the first request
    /// that waits, and again after every message heard while requests wait; none while
    /// nothing waits.
    fn watch(&self, waiting_since: &mut Option<Instant>, heard: bool, silence: Pin<&mut Sleep>) {
        let since = match *waiting_since {
            _ if self.pending.is_empty() => None,
            Some(since) if !heard => Some(since),
            _ => Some(Instant::now()),
        };
        if since != *waiting_since {
            *waiting_since = since;
            if let Some(since) = since {
                silence.reset((since + self.options.request_timeout).into());
            }
        }
    }

    /// Sends `command` with a fresh request id, remembering what it is for.
    async fn request(
        &mut self,
        transport: &mut Transport,
        command: Command,
        pending: Pending,
    ) -> Result<(), Error> {
        self.next_id += 1;
        let id = self.next_id;
        if self.pending.len() >= PRUNE_AT {
            // Callers that timed out left their entries behind on a gateway that does not
            // answer; drop those so the map stays bounded.
            self.pending.retain(|_, p| !p.abandoned());
        }
        self.pending.insert(id, pending);
        let request = Request {
            id,
            command: Some(command),
        };
        let timeout = self.options.request_timeout;
        match time::timeout(timeout, transport.send(&request)).await {
            Ok(sent) => sent.map_err(Error::from),
            // A gateway that stops reading is as good as gone.
            Err(_) => Err(Error::Timeout(timeout)),
        }
    }

    async fn on_call(&mut self, transport: &mut Transport, mut call: Call) -> Result<(), End> {
        if outbox::prepare(&mut call.command) {
            let command = call.command.clone();
            let entry = Entry {
                command: call.command,
                reply: call.reply,
            };
            let key = match self.outbox.push(entry) {
                Ok(key) => key,
                Err(entry) => {
                    let _ = entry.reply.send(Err(Error::OutboxFull));
                    return Ok(());
                }
            };
            return self
                .request(transport, command, Pending::Outbox(key))
                .await
                .map_err(lost);
        }
        let pending = match call.command {
            Command::Login(_) => Pending::Login(call.reply),
            Command::Logout(_) => Pending::Logout(call.reply),
            _ => Pending::Call(call.reply),
        };
        self.request(transport, call.command, pending)
            .await
            .map_err(lost)
    }

    /// Settles what the lost connection leaves behind: calls fail, sends stay queued.
    fn lost(&mut self) {
        self.state.send_modify(|s| s.connected = false);
        for (_, pending) in self.pending.drain() {
            match pending {
                Pending::Call(tx) | Pending::Login(tx) | Pending::Logout(tx) => {
                    let _ = tx.send(Err(Error::Disconnected));
                }
                Pending::Baseline(tx, session) => {
                    // Logged in all the same: follow what comes, as after a resume.
                    let _ = tx.send(Ok(Body::Session(session)));
                }
                Pending::Outbox(_) | Pending::Resume | Pending::Sync(_) | Pending::Ping => {}
            }
        }
        self.early = None;
        self.resuming = false;
        self.order.reset_syncs();
    }

    fn end_session(&mut self, why: &Error) {
        self.ending = true;
        self.set_session(None);
        self.order.clear();
        self.early = None;
        self.outbox.fail_all(why);
    }

    fn set_session(&mut self, session: Option<Session>) {
        self.state.send_modify(|s| s.session = session.clone());
        self.session = session;
    }

    /// Hands an event to the reader, waiting while its buffer is full (which stops reading
    /// from the gateway: memory stays bounded and the gateway's own limit takes over).
    async fn emit(&self, event: Event) {
        let _ = self.events.send(event).await;
    }
}

fn lost(err: Error) -> End {
    End::Lost(err.to_string())
}
