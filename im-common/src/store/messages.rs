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
//! - the rows are inserted with one multi-row `INSERT`.
//!
//! Conversations are locked in id order, so two batches never wait on each other in a cycle.

use std::collections::{BTreeMap, HashMap};

use sqlx::any::AnyRow;
use sqlx::{AssertSqlSafe, Row};

use super::values::{i64_of, marks, row_marks, u64_of};
use super::{Dialect, Sql};
use crate::error::StoreError;
use crate::ids::{ConversationId, now_ms};
use crate::proto::{ChatMessage, Conversation, ConversationKind, GroupRole, MessageKind};

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

const COLUMNS: &str = "conv_id, seq, msg_id, sender_id, client_msg_id, kind, body, ref_msg_id, created_at, recalled, edited";

fn message_of(row: &AnyRow) -> Result<ChatMessage, StoreError> {
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
const MAX_LIST: usize = 256;

/// `items` (at most [`MAX_LIST`]) padded to a power of two with copies of the last one.
fn padded<T>(items: &[T]) -> impl Iterator<Item = &T> {
    let len = items.len();
    (0..len.next_power_of_two()).map(move |k| &items[k.min(len - 1)])
}

/// `rows` cut into runs of at most `max` bytes of text each (a longer message is a run of
/// its own).
fn by_size(rows: &[ChatMessage], max: usize) -> Vec<&[ChatMessage]> {
    let mut runs = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, row) in rows.iter().enumerate() {
        if i > start && bytes + row.body.len() > max {
            runs.push(&rows[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += row.body.len();
    }
    if start < rows.len() {
        runs.push(&rows[start..]);
    }
    runs
}

/// `items` cut into chunks whose sizes are powers of two, largest first.
fn pow2_chunks<T>(items: &[T]) -> Vec<&[T]> {
    let mut chunks = Vec::new();
    let mut rest = items;
    while !rest.is_empty() {
        let size = (1usize << rest.len().ilog2()).min(MAX_LIST);
        let (chunk, tail) = rest.split_at(size);
        chunks.push(chunk);
        rest = tail;
    }
    chunks
}

impl Sql {
    async fn commit_once(
        &self,
        batch: &[NewMessage],
        next_id: &(dyn Fn() -> u64 + Sync),
        look_for_resends: bool,
    ) -> Result<Vec<Outcome>, StoreError> {
        let mut tx = self.begin_write().await?;
        let mut outcomes: Vec<Option<Outcome>> = vec![None; batch.len()];

        // Resends: of earlier batches (in the database), or of a message earlier in this one.
        // The database is searched only once the unique key on (sender, client_msg_id) has
        // refused a first attempt: resends are rare, and the search would cost every batch.
        let existing = if look_for_resends {
            find_existing(&mut tx, batch).await?
        } else {
            HashMap::new()
        };
        let mut first_in_batch: HashMap<(u64, &str), usize> = HashMap::new();
        let mut fresh: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, message) in batch.iter().enumerate() {
            let key = (message.sender, message.client_msg_id.as_str());
            if let Some(original) = existing.get(&(key.0, key.1.to_owned())) {
                outcomes[i] = Some(Outcome::Duplicate(original.clone()));
            } else if let std::collections::hash_map::Entry::Vacant(slot) =
                first_in_batch.entry(key)
            {
                slot.insert(i);
                fresh
                    .entry(message.conversation.to_string())
                    .or_default()
                    .push(i);
            }
            // A repeat within the batch is answered below, once the first is stored.
        }

        let now = now_ms();
        let counts: Vec<(&str, ConversationId, u64)> = fresh
            .iter()
            .map(|(conv, indexes)| {
                (
                    conv.as_str(),
                    batch[indexes[0]].conversation,
                    indexes.len() as u64,
                )
            })
            .collect();
        let last_seqs = self.allocate(&mut tx, &counts, now).await?;
        let mut rows: Vec<ChatMessage> = Vec::new();
        for (conv, indexes) in &fresh {
            let count = indexes.len() as u64;
            let last = last_seqs
                .get(conv.as_str())
                .copied()
                .ok_or_else(|| StoreError::Corrupt(format!("no last_seq for {conv}")))?;
            for (offset, &i) in indexes.iter().enumerate() {
                let message = &batch[i];
                let stored = ChatMessage {
                    msg_id: next_id(),
                    conversation_id: conv.clone(),
                    seq: last - count + 1 + offset as u64,
                    sender_id: message.sender,
                    client_msg_id: message.client_msg_id.clone(),
                    kind: message.kind as i32,
                    body: message.body.clone(),
                    ref_msg_id: message.ref_msg_id,
                    server_time_ms: now,
                    recalled: false,
                    edited: false,
                };
                outcomes[i] = Some(Outcome::Stored(stored.clone()));
                rows.push(stored);
            }
        }
        insert_rows(&mut tx, &rows, self.dialect()).await?;
        apply_recalls_and_edits(&mut tx, batch, &mut outcomes).await?;
        tx.commit().await?;

        // Repeats inside the batch get the first one's message.
        for (i, message) in batch.iter().enumerate() {
            if outcomes[i].is_none() {
                let first = first_in_batch[&(message.sender, message.client_msg_id.as_str())];
                let original = outcomes[first].as_ref().map(|o| o.message().clone());
                outcomes[i] = original.map(Outcome::Duplicate);
            }
        }
        outcomes
            .into_iter()
            .map(|o| o.ok_or_else(|| StoreError::Corrupt("message without outcome".into())))
            .collect()
    }

    /// Raises each conversation's last seq by its count, creating the conversations that
    /// have no row yet (and a new direct conversation's two members); returns the new last
    /// seqs. One `UPDATE` (a primary-key `IN` list, each row raised by its own count), one
    /// `SELECT`, and `INSERT`s only for new conversations.
    async fn allocate(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        counts: &[(&str, ConversationId, u64)],
        now: i64,
    ) -> Result<HashMap<String, u64>, StoreError> {
        // One statement per chunk, the conversations in id order: every commit locks the
        // rows it raises in the same order, so two commits (of two instances) can wait on
        // each other but never in a cycle. `counts` comes sorted by id.
        debug_assert!(counts.windows(2).all(|w| w[0].0 < w[1].0));
        for chunk in counts.chunks(MAX_LIST) {
            let size = chunk.len().next_power_of_two();
            let update = format!(
                "UPDATE conversations SET last_seq = last_seq + CASE conv_id {} END, updated_at = ? WHERE conv_id IN ({})",
                vec!["WHEN ? THEN ?"; size].join(" "),
                marks(size)
            );
            let mut query = sqlx::query(AssertSqlSafe(update));
            for (conv, _, count) in padded(chunk) {
                query = query.bind(conv.to_string()).bind(i64_of(*count));
            }
            query = query.bind(now);
            for (conv, _, _) in padded(chunk) {
                query = query.bind(conv.to_string());
            }
            query.execute(&mut **tx).await?;
        }
        let mut last = HashMap::with_capacity(counts.len());
        for chunk in counts.chunks(MAX_LIST) {
            let list = marks(chunk.len().next_power_of_two());
            let select =
                format!("SELECT conv_id, last_seq FROM conversations WHERE conv_id IN ({list})");
            let mut query = sqlx::query(AssertSqlSafe(select));
            for (conv, _, _) in padded(chunk) {
                query = query.bind(conv.to_string());
            }
            for row in query.fetch_all(&mut **tx).await? {
                last.insert(
                    row.try_get::<String, _>("conv_id")?,
                    u64_of(&row, "last_seq")?,
                );
            }
        }
        let new: Vec<&(&str, ConversationId, u64)> = counts
            .iter()
            .filter(|(conv, _, _)| !last.contains_key(*conv))
            .collect();
        if !new.is_empty() {
            self.create_conversations(tx, &new, now).await?;
            last.extend(
                new.iter()
                    .map(|(conv, _, count)| (conv.to_string(), *count)),
            );
        }
        Ok(last)
    }

    async fn create_conversations(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        new: &[&(&str, ConversationId, u64)],
        now: i64,
    ) -> Result<(), StoreError> {
        for chunk in pow2_chunks(new) {
            let insert = format!(
                "INSERT INTO conversations (conv_id, last_seq, updated_at) VALUES {}",
                row_marks(chunk.len(), 3)
            );
            let mut query = sqlx::query(AssertSqlSafe(insert));
            for (conv, _, count) in chunk {
                query = query.bind(conv.to_string()).bind(i64_of(*count)).bind(now);
            }
            query.execute(&mut **tx).await?;
        }
        let members: Vec<(&str, u64)> = new
            .iter()
            .filter_map(|(conv, id, _)| match id {
                ConversationId::Direct(a, b) => Some([(*conv, *a), (*conv, *b)]),
                ConversationId::Group(_) => None,
            })
            .flatten()
            .collect();
        for chunk in members.chunks(MAX_LIST) {
            let insert = format!(
                "{} INTO conv_members (conv_id, user_id, read_seq) VALUES {}",
                self.dialect().insert_ignore(),
                row_marks(chunk.len().next_power_of_two(), 3)
            );
            let mut query = sqlx::query(AssertSqlSafe(insert));
            for (conv, user) in padded(chunk) {
                query = query.bind(conv.to_string()).bind(i64_of(*user)).bind(0_i64);
            }
            query.execute(&mut **tx).await?;
        }
        Ok(())
    }
}

async fn find_existing(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    batch: &[NewMessage],
) -> Result<HashMap<(u64, String), ChatMessage>, StoreError> {
    let mut found = HashMap::new();
    for chunk in batch.chunks(MAX_LIST) {
        let condition =
            vec!["(sender_id = ? AND client_msg_id = ?)"; chunk.len().next_power_of_two()]
                .join(" OR ");
        let select = format!("SELECT {COLUMNS} FROM messages WHERE {condition}");
        let mut query = sqlx::query(AssertSqlSafe(select));
        for message in padded(chunk) {
            query = query
                .bind(i64_of(message.sender))
                .bind(message.client_msg_id.clone());
        }
        for row in query.fetch_all(&mut **tx).await? {
            let message = message_of(&row)?;
            found.insert((message.sender_id, message.client_msg_id.clone()), message);
        }
    }
    Ok(found)
}

/// Most bytes of message text in one `INSERT`: well under MySQL/MariaDB's default
/// `max_allowed_packet` (16 MiB; 4 MiB on older servers), whatever the batch holds.
const MAX_STATEMENT_BYTES: usize = 2 << 20;

/// Inserts `rows`: on MySQL/MariaDB in power-of-two chunks (few statement shapes for the
/// server's cache); on SQLite in one statement per [`MAX_LIST`] rows, since preparing a
/// statement there is an in-process parse while every statement is a round trip to the
/// connection's own thread. Either way no statement carries more than
/// [`MAX_STATEMENT_BYTES`] of text, unless one message alone does.
async fn insert_rows(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    rows: &[ChatMessage],
    dialect: Dialect,
) -> Result<(), StoreError> {
    let mut chunks = Vec::new();
    for run in by_size(rows, MAX_STATEMENT_BYTES) {
        match dialect {
            Dialect::Sqlite => chunks.extend(run.chunks(MAX_LIST)),
            Dialect::MySql => chunks.extend(pow2_chunks(run)),
        }
    }
    for chunk in chunks {
        let insert = format!(
            "INSERT INTO messages (conv_id, seq, msg_id, sender_id, client_msg_id, kind, body, ref_msg_id, created_at) VALUES {}",
            row_marks(chunk.len(), 9)
        );
        let mut query = sqlx::query(AssertSqlSafe(insert));
        for row in chunk {
            query = query
                .bind(row.conversation_id.clone())
                .bind(i64_of(row.seq))
                .bind(i64_of(row.msg_id))
                .bind(i64_of(row.sender_id))
                .bind(row.client_msg_id.clone())
                .bind(i64::from(row.kind))
                .bind(row.body.clone().into_bytes())
                .bind(i64_of(row.ref_msg_id))
                .bind(row.server_time_ms);
        }
        query.execute(&mut **tx).await?;
    }
    Ok(())
}

/// A stored recall empties its original and every edit of it; a stored edit replaces the
/// original's text, unless the original was recalled (by an earlier batch, or earlier in
/// this one): then the edit keeps no text either, in its row or in what is pushed. So no
/// text of a recalled message survives in storage, whatever order recall and edit commit in.
async fn apply_recalls_and_edits(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    batch: &[NewMessage],
    outcomes: &mut [Option<Outcome>],
) -> Result<(), StoreError> {
    for (message, outcome) in batch.iter().zip(outcomes.iter_mut()) {
        let Some(Outcome::Stored(stored)) = outcome else {
            continue;
        };
        match message.kind {
            MessageKind::Recall => recall_in(tx, message.ref_msg_id).await?,
            MessageKind::Edit => {
                let updated = sqlx::query(
                    "UPDATE messages SET edited = 1, body = ? WHERE msg_id = ? AND recalled = 0",
                )
                .bind(message.body.clone().into_bytes())
                .bind(i64_of(message.ref_msg_id))
                .execute(&mut **tx)
                .await?;
                // MySQL counts changed rows only: an edit repeating the current text changes
                // none, so ask whether the original is recalled rather than trust the count.
                if updated.rows_affected() == 0 && recalled(tx, message.ref_msg_id).await? {
                    sqlx::query("UPDATE messages SET body = ? WHERE msg_id = ?")
                        .bind(Vec::<u8>::new())
                        .bind(i64_of(stored.msg_id))
                        .execute(&mut **tx)
                        .await?;
                    stored.body.clear();
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Marks `msg_id` recalled and empties its text and the text of every edit of it. Edits
/// come after their original in the same conversation: the scan is a primary-key range.
async fn recall_in(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    msg_id: u64,
) -> Result<(), StoreError> {
    let original = sqlx::query("SELECT conv_id, seq FROM messages WHERE msg_id = ?")
        .bind(i64_of(msg_id))
        .fetch_optional(&mut **tx)
        .await?;
    let Some(original) = original else {
        return Ok(());
    };
    let conv: String = original.try_get("conv_id")?;
    let seq: i64 = original.try_get("seq")?;
    sqlx::query("UPDATE messages SET recalled = 1, body = ? WHERE msg_id = ?")
        .bind(Vec::<u8>::new())
        .bind(i64_of(msg_id))
        .execute(&mut **tx)
        .await?;
    sqlx::query(
        "UPDATE messages SET body = ? WHERE conv_id = ? AND seq > ? AND ref_msg_id = ? AND kind = ?",
    )
    .bind(Vec::<u8>::new())
    .bind(conv)
    .bind(seq)
    .bind(i64_of(msg_id))
    .bind(MessageKind::Edit as i64)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn recalled(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    msg_id: u64,
) -> Result<bool, StoreError> {
    let recalled: Option<i64> =
        sqlx::query_scalar("SELECT recalled FROM messages WHERE msg_id = ?")
            .bind(i64_of(msg_id))
            .fetch_optional(&mut **tx)
            .await?;
    Ok(recalled.unwrap_or(0) != 0)
}

/// Whether a failed commit may simply run again: a deadlock, a lock wait that timed out, or
/// a unique key that a concurrent commit took first (its resend is then found).
fn retryable(err: &StoreError) -> bool {
    if err.is_unique_violation() {
        return true;
    }
    match err {
        StoreError::Database(sqlx::Error::Database(db)) => {
            let code = db.code().unwrap_or_default();
            // MySQL: 1213 deadlock, 1205 lock wait timeout (SQLSTATE 40001 / HY000).
            code == "40001"
                || db.message().contains("Deadlock")
                || db.message().contains("Lock wait timeout")
                || db.message().contains("database is locked")
        }
        _ => false,
    }
}

/// One part of a batch given to [`Sql::commit_in_parts`]: where it is in the batch, and
/// what became of it.
pub type Part = (std::ops::Range<usize>, Result<Vec<Outcome>, StoreError>);

impl Sql {
    /// As [`MessageStore::commit`], except that a batch the database refuses for what it
    /// holds ([`StoreError::is_refused`]: not for being unreachable) is cut in halves, down
    /// to the message at fault, so that one bad message fails alone and the others are
    /// stored. Returns the parts in batch order; a batch that commits whole is one part.
    /// A database that cannot be reached fails the batch at once, as one part.
    pub async fn commit_in_parts(
        &self,
        batch: &[NewMessage],
        next_id: &(dyn Fn() -> u64 + Sync),
    ) -> Vec<Part> {
        let mut parts = Vec::new();
        let mut todo = Vec::with_capacity(8);
        todo.push(0..batch.len());
        while let Some(range) = todo.pop() {
            match self.commit(&batch[range.clone()], next_id).await {
                Err(err) if range.len() > 1 && err.is_refused() => {
                    tracing::debug!(cause = %err, messages = range.len(), "batch refused; committing its halves");
                    let middle = range.start + range.len() / 2;
                    todo.push(middle..range.end);
                    todo.push(range.start..middle);
                }
                result => parts.push((range, result)),
            }
        }
        parts
    }
}

impl MessageStore for Sql {
    async fn commit(
        &self,
        batch: &[NewMessage],
        next_id: &(dyn Fn() -> u64 + Sync),
    ) -> Result<Vec<Outcome>, StoreError> {
        let mut attempt = 0;
        let mut look_for_resends = false;
        loop {
            match self.commit_once(batch, next_id, look_for_resends).await {
                Err(err) if attempt < 5 && retryable(&err) => {
                    attempt += 1;
                    self.conflicts
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    metrics::counter!("mpim_store_commit_conflicts_total").increment(1);
                    look_for_resends |= err.is_unique_violation();
                    tracing::debug!(cause = %err, attempt, "commit conflicted; retrying");
                }
                result => return result,
            }
        }
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
}
