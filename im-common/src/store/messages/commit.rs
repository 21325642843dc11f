//! Storing a batch: resends found, seqs allocated in conversation order, rows inserted in
//! statements of bounded size, recalls and edits applied; retried on conflicts, and cut
//! in parts around a message the database refuses.

use std::collections::{BTreeMap, HashMap};

use sqlx::{AssertSqlSafe, Row};

use super::{COLUMNS, MAX_LIST, NewMessage, Outcome, message_of, padded};
use crate::error::StoreError;
use crate::ids::{ConversationId, now_ms};
use crate::proto::{ChatMessage, MessageKind};
use crate::store::values::{i64_of, marks, row_marks, u64_of};
use crate::store::{Dialect, Sql};

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

/// What one commit attempt does with each message of its batch.
struct Plan<'a> {
    /// Per message: its outcome, once known.
    outcomes: Vec<Option<Outcome>>,
    /// The first message of each (sender, client_msg_id) in the batch.
    first_in_batch: HashMap<(u64, &'a str), usize>,
    /// The messages to store, by conversation (in id order: the order rows are locked in).
    fresh: BTreeMap<String, Vec<usize>>,
}

impl<'a> Plan<'a> {
    /// Sorts `batch`: resends of earlier batches (found in `existing`) are answered with the
    /// stored message; the first of each client_msg_id is to be stored; a repeat inside the
    /// batch waits for its first ([`Plan::finish`]).
    fn of(batch: &'a [NewMessage], existing: &HashMap<(u64, String), ChatMessage>) -> Plan<'a> {
        let mut plan = Plan {
            outcomes: vec![None; batch.len()],
            first_in_batch: HashMap::new(),
            fresh: BTreeMap::new(),
        };
        for (i, message) in batch.iter().enumerate() {
            let key = (message.sender, message.client_msg_id.as_str());
            if let Some(original) = existing.get(&(key.0, key.1.to_owned())) {
                plan.outcomes[i] = Some(Outcome::Duplicate(original.clone()));
            } else if let std::collections::hash_map::Entry::Vacant(slot) =
                plan.first_in_batch.entry(key)
            {
                slot.insert(i);
                plan.fresh
                    .entry(message.conversation.to_string())
                    .or_default()
                    .push(i);
            }
        }
        plan
    }

    /// How many new messages each conversation gets.
    fn counts(&self, batch: &[NewMessage]) -> Vec<(&str, ConversationId, u64)> {
        self.fresh
            .iter()
            .map(|(conv, indexes)| {
                let conversation = batch[indexes[0]].conversation;
                (conv.as_str(), conversation, indexes.len() as u64)
            })
            .collect()
    }

    /// The rows to insert: each new message with its id and its seq, the last `count` of
    /// its conversation's `last_seqs`; notes each as stored.
    fn number(
        &mut self,
        batch: &[NewMessage],
        last_seqs: &HashMap<String, u64>,
        next_id: &(dyn Fn() -> u64 + Sync),
        now: i64,
    ) -> Result<Vec<ChatMessage>, StoreError> {
        let mut rows = Vec::new();
        for (conv, indexes) in &self.fresh {
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
                self.outcomes[i] = Some(Outcome::Stored(stored.clone()));
                rows.push(stored);
            }
        }
        Ok(rows)
    }

    /// Every outcome, in batch order: repeats inside the batch get their first's message.
    fn finish(mut self, batch: &[NewMessage]) -> Result<Vec<Outcome>, StoreError> {
        for (i, message) in batch.iter().enumerate() {
            if self.outcomes[i].is_none() {
                let first = self.first_in_batch[&(message.sender, message.client_msg_id.as_str())];
                let original = self.outcomes[first].as_ref().map(|o| o.message().clone());
                self.outcomes[i] = original.map(Outcome::Duplicate);
            }
        }
        self.outcomes
            .into_iter()
            .map(|o| o.ok_or_else(|| StoreError::Corrupt("message without outcome".into())))
            .collect()
    }
}

impl Sql {
    /// One attempt at storing `batch`: resends found, seqs allocated, rows inserted,
    /// recalls and edits applied, all in one transaction.
    async fn commit_once(
        &self,
        batch: &[NewMessage],
        next_id: &(dyn Fn() -> u64 + Sync),
        look_for_resends: bool,
    ) -> Result<Vec<Outcome>, StoreError> {
        let mut tx = self.begin_write().await?;
        // The database is searched for resends only once the unique key on (sender,
        // client_msg_id) has refused a first attempt: resends are rare, and the search
        // would cost every batch.
        let existing = if look_for_resends {
            find_existing(&mut tx, batch).await?
        } else {
            HashMap::new()
        };
        let mut plan = Plan::of(batch, &existing);
        let now = now_ms();
        let last_seqs = self.allocate(&mut tx, &plan.counts(batch), now).await?;
        let rows = plan.number(batch, &last_seqs, next_id, now)?;
        insert_rows(&mut tx, &rows, self.dialect(), self.max_statement()).await?;
        apply_recalls_and_edits(&mut tx, batch, &mut plan.outcomes).await?;
        tx.commit().await?;
        plan.finish(batch)
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

/// Room in a statement for everything but a message's text (the SQL, the other columns).
const STATEMENT_OVERHEAD: usize = 64 << 10;

/// [`StoreError::TooLarge`] when `bytes` of text cannot go in one statement of at most
/// `max_statement` bytes: sent, the server would drop the connection instead of answering.
fn fits(bytes: usize, max_statement: usize) -> Result<(), StoreError> {
    if bytes.saturating_add(STATEMENT_OVERHEAD) > max_statement {
        return Err(StoreError::TooLarge(format!(
            "a message of {bytes} bytes; the database takes statements of {max_statement}"
        )));
    }
    Ok(())
}

/// Inserts `rows`: on MySQL/MariaDB in power-of-two chunks (few statement shapes for the
/// server's cache); on SQLite in one statement per [`MAX_LIST`] rows, since preparing a
/// statement there is an in-process parse while every statement is a round trip to the
/// connection's own thread. Either way no statement carries more than
/// [`MAX_STATEMENT_BYTES`] of text, unless one message alone does; a message too large for
/// any statement the server takes (`max_statement`) is not sent.
async fn insert_rows(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    rows: &[ChatMessage],
    dialect: Dialect,
    max_statement: usize,
) -> Result<(), StoreError> {
    for row in rows {
        fits(row.body.len(), max_statement)?;
    }
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
    /// As [`MessageStore::commit`](super::MessageStore::commit), except that a batch the database refuses for what it
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
            match self.commit_retrying(&batch[range.clone()], next_id).await {
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

impl Sql {
    /// [`MessageStore::commit`](super::MessageStore::commit): attempts until one commits, or fails in a way a new
    /// attempt would not mend.
    pub(super) async fn commit_retrying(
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
}
