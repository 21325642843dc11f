//! A user's conversations: one query lists them, then two per [`MAX_LIST`] read their
//! last messages and unread counts.

use std::collections::HashMap;

use sqlx::{AssertSqlSafe, Row};

use super::{COLUMNS, MAX_LIST, message_of, padded};
use crate::error::StoreError;
use crate::ids::ConversationId;
use crate::proto::{ChatMessage, Conversation, ConversationKind, MessageKind};
use crate::store::Sql;
use crate::store::values::{i64_of, u64_of};

/// One conversation of a user's listing, before its last message and unread count are read.
struct Listed {
    conv: String,
    id: ConversationId,
    read_seq: u64,
    last_seq: u64,
    /// The other member's cursor, for a direct conversation.
    peer_read_seq: u64,
}

impl Listed {
    fn into_conversation(
        self,
        user: u64,
        last_message: Option<ChatMessage>,
        unread: u64,
    ) -> Conversation {
        let (kind, peer_id, group_id, peer_read_seq) = match self.id {
            ConversationId::Direct(..) => (
                ConversationKind::Direct,
                self.id.peer_of(user).unwrap_or(0),
                0,
                self.peer_read_seq,
            ),
            ConversationId::Group(group) => (ConversationKind::Group, 0, group, 0),
        };
        Conversation {
            conversation_id: self.conv,
            kind: kind as i32,
            peer_id,
            group_id,
            last_message,
            last_seq: self.last_seq,
            read_seq: self.read_seq,
            unread,
            peer_read_seq,
        }
    }
}

impl Sql {
    /// `user`'s conversations, most recently active first, at most `limit`, with the cursors.
    async fn listed(&self, user: u64, limit: u32) -> Result<Vec<Listed>, StoreError> {
        // The peer's cursor comes in the same query: a direct conversation has exactly two
        // member rows (a group's are left out of the join, whatever their number).
        let rows = sqlx::query(
            "SELECT m.conv_id, m.read_seq, c.last_seq, COALESCE(p.read_seq, 0) AS peer_read_seq \
             FROM conv_members m \
             JOIN conversations c ON c.conv_id = m.conv_id \
             LEFT JOIN conv_members p ON p.conv_id = m.conv_id AND p.user_id <> m.user_id \
                 AND m.conv_id LIKE 'd:%' \
             WHERE m.user_id = ? ORDER BY c.updated_at DESC, m.conv_id LIMIT ?",
        )
        .bind(i64_of(user))
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| {
                let conv: String = row.try_get("conv_id")?;
                let id = ConversationId::parse(&conv)
                    .map_err(|_| StoreError::Corrupt(format!("conversation id {conv:?}")))?;
                Ok(Listed {
                    conv,
                    id,
                    read_seq: u64_of(row, "read_seq")?,
                    last_seq: u64_of(row, "last_seq")?,
                    peer_read_seq: u64_of(row, "peer_read_seq")?,
                })
            })
            .collect()
    }

    /// The message at each conversation's last seq, by conversation, in one query (`listed`:
    /// 1 to [`MAX_LIST`]). A conversation without messages has none.
    async fn last_messages(
        &self,
        listed: &[Listed],
    ) -> Result<HashMap<String, ChatMessage>, StoreError> {
        let condition =
            vec!["(conv_id = ? AND seq = ?)"; listed.len().next_power_of_two()].join(" OR ");
        let select = format!("SELECT {COLUMNS} FROM messages WHERE {condition}");
        let mut query = sqlx::query(AssertSqlSafe(select));
        for listed in padded(listed) {
            query = query
                .bind(listed.conv.clone())
                .bind(i64_of(listed.last_seq));
        }
        let rows = query.fetch_all(self.pool()).await?;
        rows.iter()
            .map(|row| message_of(row).map(|m| (m.conversation_id.clone(), m)))
            .collect()
    }

    /// In each conversation, the text messages after `user`'s listed cursor that others sent,
    /// by conversation, in one query (`listed`: 1 to [`MAX_LIST`]). A conversation with none
    /// has no entry.
    async fn unread_counts(
        &self,
        user: u64,
        listed: &[Listed],
    ) -> Result<HashMap<String, u64>, StoreError> {
        let condition =
            vec!["(conv_id = ? AND seq > ?)"; listed.len().next_power_of_two()].join(" OR ");
        let select = format!(
            "SELECT conv_id, COUNT(*) AS unread FROM messages \
             WHERE sender_id <> ? AND kind = ? AND ({condition}) GROUP BY conv_id"
        );
        let mut query = sqlx::query(AssertSqlSafe(select))
            .bind(i64_of(user))
            .bind(MessageKind::Text as i64);
        for listed in padded(listed) {
            query = query
                .bind(listed.conv.clone())
                .bind(i64_of(listed.read_seq));
        }
        let rows = query.fetch_all(self.pool()).await?;
        rows.iter()
            .map(|row| Ok((row.try_get("conv_id")?, u64_of(row, "unread")?)))
            .collect()
    }
    /// [`MessageStore::conversations`](super::MessageStore::conversations).
    pub(super) async fn list_conversations(
        &self,
        user: u64,
        limit: u32,
    ) -> Result<Vec<Conversation>, StoreError> {
        // One query lists them, then two per [`MAX_LIST`] of them read their last messages
        // and unread counts: never a query per conversation.
        let listed = self.listed(user, limit).await?;
        let mut last_messages = HashMap::with_capacity(listed.len());
        let mut unread = HashMap::with_capacity(listed.len());
        for chunk in listed.chunks(MAX_LIST) {
            last_messages.extend(self.last_messages(chunk).await?);
            unread.extend(self.unread_counts(user, chunk).await?);
        }
        Ok(listed
            .into_iter()
            .map(|listed| {
                let last_message = last_messages.remove(&listed.conv);
                let unread = unread.get(&listed.conv).copied().unwrap_or(0);
                listed.into_conversation(user, last_message, unread)
            })
            .collect())
    }
}
