//! Messages, conversations and read cursors.
//!
//! Writes go through [`MessageStore::commit`], which stores a batch of messages (sends,
//! recalls, edits) in **one** transaction: the caller batches concurrent sends so that they
//! share one commit and one fsync. Inside the transaction, per conversation:
//! - a resend (same sender and `client_msg_id`) is found and answered with the original;
//! - `conversations.last_seq` is raised by the number of new messages, which locks the
//!   conversation's row until commit: seqs are allocated where the messages are stored, so
//!   they are gapless and never reused, whatever happens to caches or processes, and two
//!   writers of one conversation (on two instances) take turns;
//! - the rows are inserted with multi-row `INSERT`s of at most 2 MiB of text each.
//!
//! Conversations are locked in id order, so two batches never wait on each other in a cycle.
//!
//! # Layout
//! - this module: the types, the [`MessageStore`] trait and its reads;
//! - `commit`: storing a batch (and [`Sql::commit_in_parts`], which isolates a message the
//!   database refuses);
//! - `listing`: a user's conversations in a constant number of queries.

use sqlx::any::AnyRow;
use sqlx::{AssertSqlSafe, Row};

use super::Sql;
use super::values::{i64_of, u64_of};
use crate::error::StoreError;
use crate::ids::ConversationId;
use crate::proto::{ChatMessage, Conversation, GroupRole, MessageKind};

/// One message to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    /// Where it goes.
    pub conversation: ConversationId,
    /// Who sent it.
    pub sender: u64,
    /// The sender's id for it: a second message with the same one is a resend.
    pub client_msg_id: String,
    /// Text, recall or edit.
    pub kind: MessageKind,
    /// The text (the new text, for an edit; empty for a recall).
    pub body: String,
    /// The message a recall or edit is about.
    pub ref_msg_id: u64,
}

/// What became of one [`NewMessage`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Stored now, as this message.
    Stored(ChatMessage),
    /// A resend: this is the message stored the first time.
    Duplicate(ChatMessage),
}

impl Outcome {
    /// The stored message either way.
    pub fn message(&self) -> &ChatMessage {
        match self {
            Outcome::Stored(message) | Outcome::Duplicate(message) => message,
        }
    }
}

/// What a user may do in a group, read with the group's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupAccess {
    /// The user's role.
    pub role: GroupRole,
    /// Muted until (ms; 0 or past: not muted).
    pub muted_until_ms: i64,
    /// Whether only owner and admins may post.
    pub mute_all: bool,
}

/// Messages and conversations.
pub trait MessageStore: Send + Sync {
    /// Stores `batch` in one transaction, giving message ids from `next_id`; one outcome per
    /// message, in order. Nothing is stored when it fails.
    fn commit(
        &self,
        batch: &[NewMessage],
        next_id: &(dyn Fn() -> u64 + Sync),
    ) -> impl Future<Output = Result<Vec<Outcome>, StoreError>> + Send;

    /// Up to `limit` messages after `after_seq`, in seq order, whether more follow, and the
    /// conversation's last seq. Always read from the primary.
    fn sync(
        &self,
        conversation: ConversationId,
        after_seq: u64,
        limit: u32,
    ) -> impl Future<Output = Result<(Vec<ChatMessage>, bool, u64), StoreError>> + Send;

    /// The conversations of `user`, most recently active first, at most `limit`.
    fn conversations(
        &self,
        user: u64,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<Conversation>, StoreError>> + Send;

    /// Moves `user`'s read cursor in `conversation` up to `seq` (never down, never past the
    /// last seq); returns the cursor after the call.
    fn mark_read(
        &self,
        conversation: ConversationId,
        user: u64,
        seq: u64,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// A message by id.
    fn message(
        &self,
        msg_id: u64,
    ) -> impl Future<Output = Result<Option<ChatMessage>, StoreError>> + Send;

    /// The message `sender` stored with `client_msg_id`, if any.
    fn by_client_id(
        &self,
        sender: u64,
        client_msg_id: &str,
    ) -> impl Future<Output = Result<Option<ChatMessage>, StoreError>> + Send;

    /// `user`'s place in group `group`: `None` when not a member or the group is gone.
    fn group_access(
        &self,
        group: u64,
        user: u64,
    ) -> impl Future<Output = Result<Option<GroupAccess>, StoreError>> + Send;

    /// Whether user `id` exists.
    fn user_exists(&self, id: u64) -> impl Future<Output = Result<bool, StoreError>> + Send;
}

pub(super) const COLUMNS: &str = "conv_id, seq, msg_id, sender_id, client_msg_id, kind, body, ref_msg_id, created_at, recalled, edited";

pub(super) fn message_of(row: &AnyRow) -> Result<ChatMessage, StoreError> {
    let body: Vec<u8> = row.try_get("body")?;
    let kind: i64 = row.try_get("kind")?;
    Ok(ChatMessage {
        msg_id: u64_of(row, "msg_id")?,
        conversation_id: row.try_get("conv_id")?,
        seq: u64_of(row, "seq")?,
        sender_id: u64_of(row, "sender_id")?,
        client_msg_id: row.try_get("client_msg_id")?,
        kind: i32::try_from(kind).unwrap_or_default(),
        body: String::from_utf8(body)
            .map_err(|_| StoreError::Corrupt("body is not UTF-8".into()))?,
        ref_msg_id: u64_of(row, "ref_msg_id")?,
        server_time_ms: row.try_get("created_at")?,
        recalled: row.try_get::<i64, _>("recalled")? != 0,
        edited: row.try_get::<i64, _>("edited")? != 0,
    })
}

/// Statement shapes are kept few, so that each connection's prepared-statement cache holds
/// them all and no statement is prepared again per batch: lists are padded to a power of two
/// by repeating their last item (harmless in `IN`, `OR` and `CASE`), inserts are cut into
/// power-of-two chunks, and nothing is longer than this.
pub(super) const MAX_LIST: usize = 256;

/// `items` (at most [`MAX_LIST`]) padded to a power of two with copies of the last one.
pub(super) fn padded<T>(items: &[T]) -> impl Iterator<Item = &T> {
    let len = items.len();
    (0..len.next_power_of_two()).map(move |k| &items[k.min(len - 1)])
}

mod commit;
mod listing;

pub use commit::Part;

impl MessageStore for Sql {
    async fn commit(
        &self,
        batch: &[NewMessage],
        next_id: &(dyn Fn() -> u64 + Sync),
    ) -> Result<Vec<Outcome>, StoreError> {
        self.commit_retrying(batch, next_id).await
    }

    async fn sync(
        &self,
        conversation: ConversationId,
        after_seq: u64,
        limit: u32,
    ) -> Result<(Vec<ChatMessage>, bool, u64), StoreError> {
        let conv = conversation.to_string();
        let select = format!(
            "SELECT {COLUMNS} FROM messages WHERE conv_id = ? AND seq > ? ORDER BY seq LIMIT ?"
        );
        let rows = sqlx::query(AssertSqlSafe(select))
            .bind(conv.clone())
            .bind(i64_of(after_seq))
            .bind(i64::from(limit) + 1)
            .fetch_all(self.pool())
            .await?;
        let mut messages = rows.iter().map(message_of).collect::<Result<Vec<_>, _>>()?;
        let has_more = messages.len() > limit as usize;
        messages.truncate(limit as usize);
        let last: Option<i64> =
            sqlx::query_scalar("SELECT last_seq FROM conversations WHERE conv_id = ?")
                .bind(conv)
                .fetch_optional(self.pool())
                .await?;
        Ok((
            messages,
            has_more,
            u64::try_from(last.unwrap_or(0)).unwrap_or(0),
        ))
    }

    async fn conversations(&self, user: u64, limit: u32) -> Result<Vec<Conversation>, StoreError> {
        self.list_conversations(user, limit).await
    }

    async fn mark_read(
        &self,
        conversation: ConversationId,
        user: u64,
        seq: u64,
    ) -> Result<u64, StoreError> {
        let conv = conversation.to_string();
        let last: Option<i64> =
            sqlx::query_scalar("SELECT last_seq FROM conversations WHERE conv_id = ?")
                .bind(conv.clone())
                .fetch_optional(self.pool())
                .await?;
        let target = seq.min(u64::try_from(last.unwrap_or(0)).unwrap_or(0));
        sqlx::query("UPDATE conv_members SET read_seq = ? WHERE conv_id = ? AND user_id = ? AND read_seq < ?")
            .bind(i64_of(target))
            .bind(conv.clone())
            .bind(i64_of(user))
            .bind(i64_of(target))
            .execute(self.pool())
            .await?;
        let now: Option<i64> = sqlx::query_scalar(
            "SELECT read_seq FROM conv_members WHERE conv_id = ? AND user_id = ?",
        )
        .bind(conv)
        .bind(i64_of(user))
        .fetch_optional(self.pool())
        .await?;
        Ok(u64::try_from(now.unwrap_or(0)).unwrap_or(0))
    }

    async fn message(&self, msg_id: u64) -> Result<Option<ChatMessage>, StoreError> {
        let select = format!("SELECT {COLUMNS} FROM messages WHERE msg_id = ?");
        let row = sqlx::query(AssertSqlSafe(select))
            .bind(i64_of(msg_id))
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(message_of).transpose()
    }

    async fn by_client_id(
        &self,
        sender: u64,
        client_msg_id: &str,
    ) -> Result<Option<ChatMessage>, StoreError> {
        let select =
            format!("SELECT {COLUMNS} FROM messages WHERE sender_id = ? AND client_msg_id = ?");
        let row = sqlx::query(AssertSqlSafe(select))
            .bind(i64_of(sender))
            .bind(client_msg_id.to_owned())
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(message_of).transpose()
    }

    async fn group_access(&self, group: u64, user: u64) -> Result<Option<GroupAccess>, StoreError> {
        let row = sqlx::query(
            "SELECT m.role, m.muted_until, g.mute_all FROM group_members m \
             JOIN chat_groups g ON g.group_id = m.group_id \
             WHERE m.group_id = ? AND m.user_id = ? AND g.dismissed_at IS NULL",
        )
        .bind(i64_of(group))
        .bind(i64_of(user))
        .fetch_optional(self.pool())
        .await?;
        row.map(|row| {
            let role: i64 = row.try_get("role")?;
            Ok(GroupAccess {
                role: GroupRole::try_from(i32::try_from(role).unwrap_or_default())
                    .unwrap_or(GroupRole::Member),
                muted_until_ms: row.try_get("muted_until")?,
                mute_all: row.try_get::<i64, _>("mute_all")? != 0,
            })
        })
        .transpose()
    }

    async fn user_exists(&self, id: u64) -> Result<bool, StoreError> {
        let found = sqlx::query("SELECT 1 FROM users WHERE user_id = ?")
            .bind(i64_of(id))
            .fetch_optional(self.pool())
            .await?;
        Ok(found.is_some())
    }
}
