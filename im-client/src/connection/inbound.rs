//! What comes from the gateway: replies matched to their requests (the ones the task
//! asked itself included: login baseline, resume, syncs) and pushes, put through the order.

use im_proto::client::request::Command;
use im_proto::client::server_message::Body;
use im_proto::client::{Code, ServerMessage, Session};
use im_proto::{ChatMessage, Empty, MessageKind, SendAck, SyncRequest};
use tokio::sync::oneshot;

use super::{Driver, End, Pending, lost};
use crate::Reply;
use crate::error::Error;
use crate::event::Event;
use crate::order::{Step, SyncFrom};
use crate::transport::Transport;

/// Entries per sync page the client asks for.
const SYNC_PAGE: u32 = 200;
/// Pushes kept while the conversations are read after a login; more are left to syncs.
const MAX_EARLY: usize = 4096;

impl Driver {
    pub(super) async fn on_message(
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

    /// Hands a reply to what its request was for.
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
            Pending::Login(tx) => self.on_login(transport, tx, reply).await?,
            Pending::Baseline(tx, session) => {
                self.on_baseline(transport, tx, session, reply).await?
            }
            Pending::Logout(tx) => self.on_logout(tx, reply),
            Pending::Resume => self.on_resumed(transport, reply).await?,
            Pending::Sync(id) => self.on_synced(transport, &id, reply).await?,
            Pending::Ping => {}
        }
        Ok(())
    }

    /// A login's reply: a session is followed by reading the conversations' last seqs
    /// (the baseline) before the caller is answered; a refusal goes to the caller.
    async fn on_login(
        &mut self,
        transport: &mut Transport,
        tx: oneshot::Sender<Reply>,
        reply: Reply,
    ) -> Result<(), End> {
        match reply {
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
        }
        Ok(())
    }

    /// The baseline after a login: each conversation is followed from its last seq, the
    /// caller gets its session, and the pushes that came meanwhile go through the order.
    async fn on_baseline(
        &mut self,
        transport: &mut Transport,
        tx: oneshot::Sender<Reply>,
        session: Session,
        reply: Reply,
    ) -> Result<(), End> {
        if let Ok(Body::Conversations(list)) = &reply {
            for c in &list.conversations {
                self.order.baseline(&c.conversation_id, c.last_seq);
            }
        }
        let _ = tx.send(Ok(Body::Session(session)));
        for entry in self.early.take().unwrap_or_default() {
            self.feed(transport, entry).await?;
        }
        Ok(())
    }

    /// A logout's reply: once it succeeded the session is over.
    fn on_logout(&mut self, tx: oneshot::Sender<Reply>, reply: Reply) {
        if reply.is_ok() {
            let err = Error::Server {
                code: Code::Unauthenticated,
                message: "logged out".into(),
                retryable: false,
            };
            self.end_session(&err);
        }
        let _ = tx.send(reply);
    }

    /// A page of a conversation's sync goes through the order, which may ask for the next.
    async fn on_synced(
        &mut self,
        transport: &mut Transport,
        id: &str,
        reply: Reply,
    ) -> Result<(), End> {
        match reply {
            Ok(Body::Synced(page)) => {
                let step = self
                    .order
                    .synced(id, page.messages, page.has_more, page.last_seq);
                self.step(transport, step).await
            }
            _ => {
                self.order.sync_failed(id);
                Ok(())
            }
        }
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
        if let Some(mut session) = resumed.session {
            // A resumed session may leave the token out: the one resumed with stays good.
            if session.token.is_empty() {
                let old = self.session.as_ref().map(|s| s.token.clone());
                session.token = old.unwrap_or_default();
            }
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
            Body::FriendRequested(r) => self.emit(Event::FriendRequested(r)).await,
            Body::FriendResponded(r) => self.emit(Event::FriendResponded(r)).await,
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
            (MessageKind::Text, format!("d:{low}:{high}"))
        }
        Command::SendGroup(r) => {
            (entry.client_msg_id, entry.body) = (r.client_msg_id.clone(), r.body.clone());
            (MessageKind::Text, format!("g:{}", r.group_id))
        }
        Command::Recall(r) => {
            (entry.client_msg_id, entry.ref_msg_id) = (r.client_msg_id.clone(), r.msg_id);
            (MessageKind::Recall, String::new())
        }
        Command::Edit(r) => {
            entry.client_msg_id = r.client_msg_id.clone();
            (entry.ref_msg_id, entry.body) = (r.msg_id, r.body.clone());
            (MessageKind::Edit, String::new())
        }
        _ => return None,
    };
    entry.set_kind(kind);
    if entry.conversation_id.is_empty() {
        entry.conversation_id = conversation;
    }
    (!entry.conversation_id.is_empty()).then_some(entry)
}
