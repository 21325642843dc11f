//! PULL: the messages the user has not seen, in order, deleting nothing.
//!
//! The read cursors of the message service are what "seen" means: PULL lists the user's
//! conversations, syncs each that has unread messages (or that this connection knows to
//! be behind) from its read cursor, returns the other users' messages (not recalled, not
//! shown here already) merged across conversations by server time, and marks each
//! conversation read up to what it covered. History stays whole for every other client.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use im_proto::client::Error;
use im_proto::client::request::Command as Request;
use im_proto::client::server_message::Body;
use im_proto::{ChatMessage, Conversation, Empty, MessageKind, SyncRequest};

use super::Legacy;
use super::command::Outcome;
use super::format;

/// Messages one PULL returns, about (it finishes the page it is on); the rest waits for
/// the next PULL, and a `+OK more: …` line before `+OK pull_done` says so.
const MAX_PULL: usize = 1000;
/// Bytes of message text one PULL returns, about (the same way).
const MAX_PULL_BYTES: usize = 1 << 20;
/// Messages asked for per Sync.
const PAGE: u32 = 100;

/// What is left of one PULL's allowance.
#[derive(Debug, Clone, Copy)]
struct Budget {
    messages: usize,
    bytes: usize,
}

impl Budget {
    fn spent(self) -> bool {
        self.messages == 0 || self.bytes == 0
    }

    fn take(&mut self, message: &ChatMessage) {
        self.messages = self.messages.saturating_sub(1);
        self.bytes = self.bytes.saturating_sub(message.body.len());
    }
}

/// One conversation's share of a PULL.
struct Share {
    conversation_id: String,
    /// What to show, in seq order.
    messages: Vec<ChatMessage>,
    /// The last seq looked at.
    covered: u64,
    /// Whether everything after the read cursor was looked at.
    complete: bool,
    read_seq: u64,
}

impl Legacy<'_> {
    pub(super) async fn pull(&mut self) -> Result<Outcome, Error> {
        let Body::Conversations(list) = self.call(Request::ListConversations(Empty {})).await?
        else {
            return Err(super::command::unexpected());
        };
        let me = self.conn.session().map_or(0, |s| s.user);
        let mut shares = Vec::new();
        let mut budget = Budget {
            messages: MAX_PULL,
            bytes: MAX_PULL_BYTES,
        };
        let mut more = false;
        for conversation in list.conversations {
            if conversation.unread == 0 && !self.seen.is_behind(&conversation.conversation_id) {
                continue;
            }
            if budget.spent() {
                more = true;
                continue;
            }
            let share = self.fetch(conversation, me, &mut budget).await?;
            more |= !share.complete;
            shares.push(share);
        }
        let mut outcome = Outcome::default();
        for share in &shares {
            self.seen
                .pulled(&share.conversation_id, share.covered, share.complete);
            if share.covered > share.read_seq {
                outcome
                    .marks
                    .push((share.conversation_id.clone(), share.covered));
            }
        }
        let messages = merge(shares.into_iter().map(|s| s.messages).collect());
        for message in &messages {
            outcome.text.push_str(&format::message(message));
        }
        let mut lines = messages.len() as u64 + 1;
        if more {
            outcome.text.push_str(format::PULL_MORE);
            lines += 1;
        }
        outcome.text.push_str(format::PULL_DONE);
        outcome.lines = lines;
        Ok(outcome)
    }

    /// The messages of `conversation` after its read cursor that PULL shows, page by page
    /// until `budget` is spent.
    async fn fetch(
        &mut self,
        conversation: Conversation,
        me: u64,
        budget: &mut Budget,
    ) -> Result<Share, Error> {
        let mut share = Share {
            conversation_id: conversation.conversation_id,
            messages: Vec::new(),
            covered: conversation.read_seq,
            complete: false,
            read_seq: conversation.read_seq,
        };
        loop {
            let request = Request::Sync(SyncRequest {
                conversation_id: share.conversation_id.clone(),
                after_seq: share.covered,
                limit: PAGE,
            });
            let Body::Synced(page) = self.call(request).await? else {
                return Err(super::command::unexpected());
            };
            let last = share.covered;
            for message in page.messages {
                share.covered = share.covered.max(message.seq);
                if self.shows(&message, me) {
                    budget.take(&message);
                    share.messages.push(message);
                }
            }
            if !page.has_more || share.covered == last {
                share.complete = true;
                return Ok(share);
            }
            if budget.spent() {
                return Ok(share);
            }
        }
    }

    /// Whether PULL shows `message`: another user's text, not recalled, not pushed here.
    fn shows(&self, message: &ChatMessage, me: u64) -> bool {
        let text = matches!(
            MessageKind::try_from(message.kind),
            Ok(MessageKind::Text | MessageKind::Unspecified)
        );
        text && message.sender_id != me && !message.recalled && !self.seen.shown(message.msg_id)
    }
}

/// Merges per-conversation lists (each in seq order) into one by server time (then
/// message id, which grows with time at a finer grain), keeping each conversation's
/// order.
fn merge(lists: Vec<Vec<ChatMessage>>) -> Vec<ChatMessage> {
    let total = lists.iter().map(Vec::len).sum();
    let mut iters: Vec<_> = lists.into_iter().map(Vec::into_iter).collect();
    let mut heads = BinaryHeap::new();
    let mut pending: Vec<Option<ChatMessage>> = Vec::with_capacity(iters.len());
    for (i, iter) in iters.iter_mut().enumerate() {
        let head = iter.next();
        if let Some(m) = &head {
            heads.push(Reverse((m.server_time_ms, m.msg_id, i)));
        }
        pending.push(head);
    }
    let mut out = Vec::with_capacity(total);
    while let Some(Reverse((_, _, i))) = heads.pop() {
        if let Some(message) = pending[i].take() {
            out.push(message);
        }
        pending[i] = iters[i].next();
        if let Some(m) = &pending[i] {
            heads.push(Reverse((m.server_time_ms, m.msg_id, i)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(time: i64, seq: u64) -> ChatMessage {
        ChatMessage {
            server_time_ms: time,
            seq,
            msg_id: seq,
            ..ChatMessage::default()
        }
    }

    #[test]
    fn merged_by_time_each_conversation_in_order() {
        let a = vec![chat(1, 1), chat(5, 2), chat(4, 3)];
        let b = vec![chat(2, 7), chat(6, 8)];
        let merged: Vec<(i64, u64)> = merge(vec![a, b, Vec::new()])
            .iter()
            .map(|m| (m.server_time_ms, m.seq))
            .collect();
        assert_eq!(merged, [(1, 1), (2, 7), (5, 2), (4, 3), (6, 8)]);
        // The same millisecond: the older message id first.
        let merged: Vec<u64> = merge(vec![vec![chat(1, 5)], vec![chat(1, 3)]])
            .iter()
            .map(|m| m.msg_id)
            .collect();
        assert_eq!(merged, [3, 5]);
    }
}
