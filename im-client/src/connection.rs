//! The task behind a [`Client`](crate::Client): it owns the connection, matches replies to
//! requests by id, keeps the outbox and the per-conversation order, and reconnects.
//!
//! One task owns all of that state, so nothing here takes a lock: the client's handles talk
//! to it over a bounded channel and get their replies on oneshots.

use std::collections::HashMap;

use im_proto::client::request::Command;
use im_proto::client::server_message::Body;
use im_proto::client::{Code, Ping, Request, Resume, ServerMessage, Session};
use im_proto::{ChatMessage, Empty, SendAck, SyncRequest};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{self, MissedTickBehavior};

use crate::error::Error;
use crate::event::Event;
use crate::options::{Backoff, Options};
use crate::order::{Order, Step, SyncFrom};
use crate::outbox::{self, Entry, Outbox};
use crate::transport::{Address, Transport};
use crate::{Reply, State};

/// Entries per sync page the client asks for.
const SYNC_PAGE: u32 = 200;
/// Pushes kept while the conversations are read after a login; more are left to syncs.
const MAX_EARLY: usize = 4096;

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
    address: Address,
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
}

impl Driver {
    pub(crate) fn new(
        options: Options,
        address: Address,
        calls: mpsc::Receiver<Call>,
        events: mpsc::Sender<Event>,
        state: watch::Sender<State>,
    ) -> Driver {
        Driver {
            outbox: Outbox::new(options.max_outbox),
            options,
            address,
            calls,
            events,
            state,
            order: Order::new(),
            session: None,
            pending: HashMap::new(),
            next_id: 0,
            early: None,
            resuming: false,
        }
    }

    /// Serves `first`, then reconnects after every loss until the client is dropped.
    pub(crate) async fn run(mut self, first: Transport) {
        let mut backoff = Backoff::new(&self.options);
        let mut transport = first;
        self.emit(Event::Connected).await;
        loop {
            self.state.send_modify(|s| s.connected = true);
            let end = self.serve(&mut transport).await;
            self.lost();
            transport.close().await;
            let reason = match end {
                End::Closed => return,
                End::Lost(reason) => reason,
            };
            tracing::debug!(%reason, "connection lost");
            self.emit(Event::Disconnected { reason }).await;
            match self.reconnect(&mut backoff).await {
                Some(next) => transport = next,
                None => return,
            }
            if self.session.is_none() {
                self.emit(Event::Reconnected { resumed: false }).await;
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
            match Transport::connect(&self.address).await {
                Ok(transport) => {
                    backoff.reset();
                    return Some(transport);
                }
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
        if let Some(session) = &self.session {
            let resume = Command::Resume(Resume {
                token: session.token.clone(),
                device_kind: self.options.device_kind.into(),
                cursors: self.order.cursors(),
            });
            self.resuming = true;
            if let Err(err) = self.request(transport, resume, Pending::Resume).await {
                return End::Lost(err.to_string());
            }
        }
        let mut keepalive = time::interval(self.options.keepalive);
        keepalive.set_missed_tick_behavior(MissedTickBehavior::Delay);
        keepalive.reset();
        loop {
            let result = tokio::select! {
                message = transport.recv() => match message {
                    Ok(Some(message)) => self.on_message(transport, message).await,
                    Ok(None) => Err(End::Lost("the gateway closed the connection".into())),
                    Err(err) => Err(End::Lost(err.to_string())),
                },
                call = self.calls.recv(), if !self.resuming => match call {
                    Some(call) => self.on_call(transport, call).await,
                    None => Err(End::Closed),
                },
                _ = keepalive.tick() => {
                    let ping = Command::Ping(Ping {});
                    self.request(transport, ping, Pending::Ping).await.map_err(lost)
                }
            };
            if let Err(end) = result {
                return end;
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
        self.pending.insert(id, pending);
        let request = Request {
            id,
            command: Some(command),
        };
        transport.send(&request).await.map_err(Error::from)
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

    async fn on_message(
        &mut self,
        transport: &mut Transport,
        message: ServerMessage,
    ) -> Result<(), End> {
        let reply = match (message.error, message.body) {
            (Some(error), _) => Err(Error::from_wire(error)),
            (None, Some(body)) => Ok(body),
            (None, None) => Err(Error::UnexpectedReply("neither an error nor a body")),
        };
        if message.id == 0 {
            return match reply {
                Ok(body) => self.on_push(transport, body).await,
                Err(_) => Ok(()),
            };
        }
        match self.pending.remove(&message.id) {
            Some(pending) => self.on_reply(transport, pending, reply).await,
            None => Ok(()),
        }
    }

    async fn on_reply(
        &mut self,
        transport: &mut Transport,
        pending: Pending,
        reply: Reply,
    ) -> Result<(), End> {
        match pending {
            Pending::Call(tx) => {
                let _ = tx.send(reply);
            }
            Pending::Outbox(key) => self.on_ack(transport, key, reply).await?,
            Pending::Login(tx) => match reply {
                Ok(Body::Session(session)) => {
                    self.order.clear();
                    self.early = Some(Vec::new());
                    let pending = Pending::Baseline(tx, session.clone());
                    let list = Command::ListConversations(Empty {});
                    self.set_session(Some(session));
                    self.request(transport, list, pending).await.map_err(lost)?;
                }
                other => {
                    let _ = tx.send(other);
                }
            },
            Pending::Baseline(tx, session) => {
                if let Ok(Body::Conversations(list)) = &reply {
                    for c in &list.conversations {
                        self.order.baseline(&c.conversation_id, c.last_seq);
                    }
                }
                let _ = tx.send(Ok(Body::Session(session)));
                for entry in self.early.take().unwrap_or_default() {
                    self.feed(transport, entry).await?;
                }
            }
            Pending::Logout(tx) => {
                if reply.is_ok() {
                    self.end_session(&Error::Closed);
                }
                let _ = tx.send(reply);
            }
            Pending::Resume => self.on_resumed(transport, reply).await?,
            Pending::Sync(id) => match reply {
                Ok(Body::Synced(page)) => {
                    let step = self
                        .order
                        .synced(&id, page.messages, page.has_more, page.last_seq);
                    self.step(transport, step).await?;
                }
                _ => self.order.sync_failed(&id),
            },
            Pending::Ping => {}
        }
        Ok(())
    }

    /// A send's reply: the ack is the entry's seq, so it goes into the order like a push.
    async fn on_ack(
        &mut self,
        transport: &mut Transport,
        key: u64,
        reply: Reply,
    ) -> Result<(), End> {
        let Some(entry) = self.outbox.take(key) else {
            return Ok(());
        };
        let own = match (&reply, &self.session) {
            (Ok(Body::Ack(ack)), Some(session)) => own_entry(&entry.command, ack, session.user_id),
            _ => None,
        };
        let _ = entry.reply.send(reply);
        match own {
            Some(own) => self.feed(transport, own).await,
            None => Ok(()),
        }
    }

    async fn on_resumed(&mut self, transport: &mut Transport, reply: Reply) -> Result<(), End> {
        self.resuming = false;
        let resumed = match reply {
            Ok(Body::Resumed(resumed)) => resumed,
            Err(err) if err.code() == Some(Code::Unauthenticated) => {
                self.end_session(&err);
                self.emit(Event::Kicked {
                    reason: err.to_string(),
                })
                .await;
                return Ok(());
            }
            Err(err) => return Err(End::Lost(format!("resume failed: {err}"))),
            Ok(_) => return Err(End::Lost("resume got an unexpected reply".into())),
        };
        if let Some(session) = resumed.session {
            self.set_session(Some(session));
        }
        for behind in resumed.behind {
            if let Some(from) = self.order.start_sync(&behind.conversation_id) {
                self.sync(transport, from).await?;
            }
        }
        for key in self.outbox.keys() {
            let Some(entry) = self.outbox.get(key) else {
                continue;
            };
            let command = entry.command.clone();
            self.request(transport, command, Pending::Outbox(key))
                .await
                .map_err(lost)?;
        }
        self.emit(Event::Reconnected { resumed: true }).await;
        Ok(())
    }

    async fn on_push(&mut self, transport: &mut Transport, body: Body) -> Result<(), End> {
        match body {
            Body::Message(entry) => self.feed(transport, entry).await?,
            Body::Recalled(r) => self.feed(transport, r.event.unwrap_or_default()).await?,
            Body::Edited(e) => self.feed(transport, e.event.unwrap_or_default()).await?,
            Body::ReadReceipt(r) => self.emit(Event::ReadReceipt(r)).await,
            Body::Typing(t) => self.emit(Event::Typing(t)).await,
            Body::Presence(p) => self.emit(Event::Presence(p)).await,
            Body::Kicked(k) => {
                let err = Error::Server {
                    code: Code::Unauthenticated,
                    message: format!("session ended: {}", k.reason),
                    retryable: false,
                };
                self.end_session(&err);
                self.emit(Event::Kicked { reason: k.reason }).await;
            }
            Body::GoAway(g) => {
                return Err(End::Lost(format!(
                    "the gateway is going away: {}",
                    g.reason
                )));
            }
            _ => tracing::debug!("ignored an unexpected push"),
        }
        Ok(())
    }

    /// Puts one conversation entry through the order.
    async fn feed(&mut self, transport: &mut Transport, entry: ChatMessage) -> Result<(), End> {
        if let Some(early) = &mut self.early {
            if early.len() < MAX_EARLY {
                early.push(entry);
            }
            return Ok(());
        }
        let step = self.order.accept(entry);
        self.step(transport, step).await
    }

    async fn step(&mut self, transport: &mut Transport, step: Step) -> Result<(), End> {
        for entry in step.deliver {
            self.emit(Event::entry(entry)).await;
        }
        match step.sync {
            Some(from) => self.sync(transport, from).await,
            None => Ok(()),
        }
    }

    async fn sync(&mut self, transport: &mut Transport, from: SyncFrom) -> Result<(), End> {
        let command = Command::Sync(SyncRequest {
            conversation_id: from.conversation_id.clone(),
            after_seq: from.after_seq,
            limit: SYNC_PAGE,
        });
        self.request(transport, command, Pending::Sync(from.conversation_id))
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

/// The conversation entry an acknowledged send of `me` became.
fn own_entry(command: &Command, ack: &SendAck, me: u64) -> Option<ChatMessage> {
    let mut entry = ChatMessage {
        msg_id: ack.msg_id,
        conversation_id: ack.conversation_id.clone(),
        seq: ack.seq,
        sender_id: me,
        server_time_ms: ack.server_time_ms,
        ..ChatMessage::default()
    };
    let (kind, conversation) = match command {
        Command::Send(r) => {
            (entry.client_msg_id, entry.body) = (r.client_msg_id.clone(), r.body.clone());
            let (low, high) = (me.min(r.to_user_id), me.max(r.to_user_id));
            (im_proto::MessageKind::Text, format!("d:{low}:{high}"))
        }
        Command::SendGroup(r) => {
            (entry.client_msg_id, entry.body) = (r.client_msg_id.clone(), r.body.clone());
            (im_proto::MessageKind::Text, format!("g:{}", r.group_id))
        }
        Command::Recall(r) => {
            (entry.client_msg_id, entry.ref_msg_id) = (r.client_msg_id.clone(), r.msg_id);
            (im_proto::MessageKind::Recall, String::new())
        }
        Command::Edit(r) => {
            entry.client_msg_id = r.client_msg_id.clone();
            (entry.ref_msg_id, entry.body) = (r.msg_id, r.body.clone());
            (im_proto::MessageKind::Edit, String::new())
        }
        _ => return None,
    };
    entry.set_kind(kind);
    if entry.conversation_id.is_empty() {
        entry.conversation_id = conversation;
    }
    (!entry.conversation_id.is_empty()).then_some(entry)
}
