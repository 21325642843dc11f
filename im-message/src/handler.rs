//! [`Messages`]: the `MessageService` handler.

use std::sync::Arc;

use im_common::bus::Bus;
use im_common::identity::{self, User};
use im_common::ids::{ConversationId, MsgIds, now_ms};
use im_common::proto::{
    ChatMessage, ConversationRef, Conversations, EditRequest, Empty, GroupRole, MarkReadReply,
    MarkReadRequest, MessageKind, RecallRequest, SendAck, SendGroupRequest, SendRequest, SyncReply,
    SyncRequest,
};
use im_common::store::Sql;
use im_common::store::messages::{MessageStore, NewMessage, Outcome};
use im_common::validate;
use mprpc::{Context, Status};

use crate::Settings;
use crate::access::Access;
use crate::commit::Committer;
use crate::push::{PushTasks, Pusher};

/// Conversations listed at most.
const MAX_CONVERSATIONS: u32 = 500;

/// The message service: sends through group commit, sync, read cursors, recall and edit.
///
/// Cloning is cheap; the committer and pusher tasks stop when the last clone is dropped.
#[derive(Clone)]
pub struct Messages {
    inner: Arc<Inner>,
}

struct Inner {
    sql: Sql,
    access: Access,
    settings: Settings,
    committer: Committer,
    _pushers: PushTasks,
}

impl Messages {
    /// A handler on `sql` and `bus`; starts its committer and pusher tasks (call inside a
    /// tokio runtime).
    pub fn new(sql: Sql, bus: Bus, settings: Settings) -> Messages {
        let (pusher, pushers) = Pusher::start(
            sql.clone(),
            bus.clone(),
            settings.pushers,
            settings.push_queue,
        );
        let shards = match settings.committers {
            0 => match sql.dialect() {
                // One writer at a time is all SQLite has.
                im_common::store::Dialect::Sqlite => 1,
                im_common::store::Dialect::MySql => 4,
            },
            n => n,
        };
        let ids = Arc::new(match settings.node {
            Some(node) => MsgIds::new(node),
            None => MsgIds::random(),
        });
        let committer = Committer::start(sql.clone(), ids, pusher, shards, settings.max_batch);
        let access = Access {
            sql: sql.clone(),
            bus,
            friends_only: settings.friends_only,
        };
        Messages {
            inner: Arc::new(Inner {
                sql,
                access,
                settings,
                committer,
                _pushers: pushers,
            }),
        }
    }

    fn check_body(&self, body: &str) -> Result<(), Status> {
        validate::non_empty_text("body", body, self.inner.settings.max_body_bytes)
    }

    /// Stores `message`, or returns the original ack of a resend.
    ///
    /// # Errors
    /// `ALREADY_EXISTS` when the sender used this client_msg_id for another message (to
    /// another conversation, or another kind or target): the key names one send, never
    /// another message.
    async fn store(&self, message: NewMessage, user: &User) -> Result<SendAck, Status> {
        let key = Key::of(&message);
        let outcome = self
            .inner
            .committer
            .submit(message, user.device.clone())
            .await?;
        if let Outcome::Duplicate(stored) = &outcome {
            key.check(stored)?;
        }
        Ok(ack(&outcome))
    }

    /// The ack of an earlier send with this client_msg_id, if there was one.
    ///
    /// # Errors
    /// `ALREADY_EXISTS` when that earlier message does not match `key`.
    async fn earlier(
        &self,
        user: &User,
        client_msg_id: &str,
        key: Key,
    ) -> Result<Option<SendAck>, Status> {
        let Some(stored) = self.inner.sql.by_client_id(user.id, client_msg_id).await? else {
            return Ok(None);
        };
        key.check(&stored)?;
        Ok(Some(ack(&Outcome::Duplicate(stored))))
    }

    /// Stores a text message to `conversation` if `allowed`; refused, the send is still
    /// answered with its ack when it was stored before (its first ack was lost, and the
    /// permission changed since).
    async fn send_text(
        &self,
        user: &User,
        conversation: ConversationId,
        client_msg_id: String,
        body: String,
        allowed: Result<(), Status>,
    ) -> Result<SendAck, Status> {
        let message = NewMessage {
            conversation,
            sender: user.id,
            client_msg_id,
            kind: MessageKind::Text,
            body,
            ref_msg_id: 0,
        };
        match allowed {
            Ok(()) => self.store(message, user).await,
            Err(status) => {
                let key = Key::of(&message);
                self.refused(user, &message.client_msg_id, key, status)
                    .await
            }
        }
    }

    /// A permission failure, unless the message was stored before (then its ack).
    async fn refused(
        &self,
        user: &User,
        client_msg_id: &str,
        key: Key,
        status: Status,
    ) -> Result<SendAck, Status> {
        match self.earlier(user, client_msg_id, key).await? {
            Some(ack) => Ok(ack),
            None => Err(status),
        }
    }

    /// The message a recall or edit is about, which `user` can see.
    async fn target(
        &self,
        user: &User,
        msg_id: u64,
    ) -> Result<(ChatMessage, ConversationId), Status> {
        let message = self
            .inner
            .sql
            .message(msg_id)
            .await?
            .ok_or_else(|| Status::not_found("no such message"))?;
        let conversation = ConversationId::parse(&message.conversation_id)?;
        self.inner.access.check_read(conversation, user.id).await?;
        if message.kind != MessageKind::Text as i32 {
            return Err(Status::failed_precondition(
                "only text messages can be recalled or edited",
            ));
        }
        Ok((message, conversation))
    }

    fn within_window(&self, message: &ChatMessage) -> bool {
        now_ms() - message.server_time_ms <= self.inner.settings.recall_window_ms
    }
}

/// What a resend must share with the message stored under its client_msg_id.
#[derive(Debug, Clone, Copy)]
struct Key {
    /// Unknown for a recall or edit until its target is read: the target names it.
    conversation: Option<ConversationId>,
    kind: MessageKind,
    ref_msg_id: u64,
}

impl Key {
    fn of(message: &NewMessage) -> Key {
        Key {
            conversation: Some(message.conversation),
            kind: message.kind,
            ref_msg_id: message.ref_msg_id,
        }
    }

    /// A recall or edit of `msg_id`.
    fn about(kind: MessageKind, msg_id: u64) -> Key {
        Key {
            conversation: None,
            kind,
            ref_msg_id: msg_id,
        }
    }

    fn check(&self, stored: &ChatMessage) -> Result<(), Status> {
        let same_conversation = self
            .conversation
            .is_none_or(|c| stored.conversation_id == c.to_string());
        if same_conversation
            && stored.kind == self.kind as i32
            && stored.ref_msg_id == self.ref_msg_id
        {
            return Ok(());
        }
        Err(Status::already_exists(
            "client_msg_id was used for another message; use a new one",
        ))
    }
}

fn ack(outcome: &Outcome) -> SendAck {
    let message = outcome.message();
    SendAck {
        msg_id: message.msg_id,
        seq: message.seq,
        server_time_ms: message.server_time_ms,
        conversation_id: message.conversation_id.clone(),
        duplicate: matches!(outcome, Outcome::Duplicate(_)),
    }
}

impl im_common::proto::MessageService for Messages {
    async fn send(&self, ctx: Context, request: SendRequest) -> Result<SendAck, Status> {
        let user = identity::user(&ctx)?;
        let to = validate::user_id("to_user_id", request.to_user_id)?;
        validate::client_id("client_msg_id", &request.client_msg_id)?;
        self.check_body(&request.body)?;
        if to == user.id {
            return Err(Status::invalid_argument("to_user_id is the sender"));
        }
        let allowed = self.inner.access.check_direct(user.id, to).await;
        let conversation = ConversationId::direct(user.id, to);
        self.send_text(
            &user,
            conversation,
            request.client_msg_id,
            request.body,
            allowed,
        )
        .await
    }

    async fn send_group(&self, ctx: Context, request: SendGroupRequest) -> Result<SendAck, Status> {
        let user = identity::user(&ctx)?;
        let group = validate::user_id("group_id", request.group_id)?;
        validate::client_id("client_msg_id", &request.client_msg_id)?;
        self.check_body(&request.body)?;
        let allowed = self.inner.access.check_group_post(group, user.id).await;
        let conversation = ConversationId::Group(group);
        self.send_text(
            &user,
            conversation,
            request.client_msg_id,
            request.body,
            allowed,
        )
        .await
    }

    async fn sync(&self, ctx: Context, request: SyncRequest) -> Result<SyncReply, Status> {
        let user = identity::user(&ctx)?;
        let conversation = ConversationId::parse(&request.conversation_id)?;
        let limit = validate::limit(request.limit, 100, 500)?;
        self.inner.access.check_read(conversation, user.id).await?;
        let (messages, has_more, last_seq) = self
            .inner
            .sql
            .sync(conversation, request.after_seq, limit)
            .await?;
        Ok(SyncReply {
            messages,
            has_more,
            last_seq,
        })
    }

    async fn list_conversations(&self, ctx: Context, _: Empty) -> Result<Conversations, Status> {
        let user = identity::user(&ctx)?;
        let conversations = self
            .inner
            .sql
            .conversations(user.id, MAX_CONVERSATIONS)
            .await?;
        Ok(Conversations { conversations })
    }

    async fn mark_read(
        &self,
        ctx: Context,
        request: MarkReadRequest,
    ) -> Result<MarkReadReply, Status> {
        let user = identity::user(&ctx)?;
        let conversation = ConversationId::parse(&request.conversation_id)?;
        self.inner.access.check_read(conversation, user.id).await?;
        let read_seq = self
            .inner
            .sql
            .mark_read(conversation, user.id, request.seq)
            .await?;
        Ok(MarkReadReply { read_seq })
    }

    async fn recall(&self, ctx: Context, request: RecallRequest) -> Result<SendAck, Status> {
        let user = identity::user(&ctx)?;
        let client_msg_id = match request.client_msg_id.as_str() {
            "" => format!("recall-{}", request.msg_id),
            given => given.to_owned(),
        };
        validate::client_id("client_msg_id", &client_msg_id)?;
        let key = Key::about(MessageKind::Recall, request.msg_id);
        if let Some(ack) = self.earlier(&user, &client_msg_id, key).await? {
            return Ok(ack);
        }
        let (message, conversation) = self.target(&user, request.msg_id).await?;
        if message.recalled {
            return Err(Status::failed_precondition(
                "the message is already recalled",
            ));
        }
        let own_in_time = message.sender_id == user.id && self.within_window(&message);
        if !own_in_time {
            let manager = match conversation {
                ConversationId::Group(group) => {
                    let access = self.inner.access.group_member(group, user.id).await?;
                    matches!(access.role, GroupRole::Owner | GroupRole::Admin)
                }
                ConversationId::Direct(..) => false,
            };
            if !manager && message.sender_id == user.id {
                return Err(Status::failed_precondition(format!(
                    "messages can be recalled only within {} s of sending",
                    self.inner.settings.recall_window_ms / 1000
                )));
            }
            if !manager {
                return Err(Status::permission_denied(
                    "only the sender or a group's owner or admins may recall",
                ));
            }
        }
        let recall = NewMessage {
            conversation,
            sender: user.id,
            client_msg_id,
            kind: MessageKind::Recall,
            body: String::new(),
            ref_msg_id: message.msg_id,
        };
        self.store(recall, &user).await
    }

    async fn edit(&self, ctx: Context, request: EditRequest) -> Result<SendAck, Status> {
        let user = identity::user(&ctx)?;
        validate::client_id("client_msg_id", &request.client_msg_id)?;
        self.check_body(&request.body)?;
        let key = Key::about(MessageKind::Edit, request.msg_id);
        if let Some(ack) = self.earlier(&user, &request.client_msg_id, key).await? {
            return Ok(ack);
        }
        let (message, conversation) = self.target(&user, request.msg_id).await?;
        if message.sender_id != user.id {
            return Err(Status::permission_denied(
                "only the sender may edit a message",
            ));
        }
        if message.recalled {
            return Err(Status::failed_precondition("the message was recalled"));
        }
        if !self.within_window(&message) {
            return Err(Status::failed_precondition(format!(
                "messages can be edited only within {} s of sending",
                self.inner.settings.recall_window_ms / 1000
            )));
        }
        if let ConversationId::Group(group) = conversation {
            self.inner.access.check_group_post(group, user.id).await?;
        }
        let edit = NewMessage {
            conversation,
            sender: user.id,
            client_msg_id: request.client_msg_id,
            kind: MessageKind::Edit,
            body: request.body,
            ref_msg_id: message.msg_id,
        };
        self.store(edit, &user).await
    }

    async fn check_typing(&self, ctx: Context, request: ConversationRef) -> Result<Empty, Status> {
        let user = identity::user(&ctx)?;
        let conversation = ConversationId::parse(&request.conversation_id)?;
        self.inner
            .access
            .check_typing(conversation, user.id)
            .await?;
        Ok(Empty {})
    }
}
