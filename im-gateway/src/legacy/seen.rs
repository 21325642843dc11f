//! What a legacy connection has shown its user, so that PULL returns each message once and
//! the read cursors (which PULL starts from) advance only over what was shown.
//!
//! Per conversation the connection knows a cursor: every message up to it was shown here
//! (or is the user's own, or is not shown at all, like recalls). A push that follows its
//! cursor moves it, and the conversation is marked read up to there. A conversation whose
//! cursor is unknown or has a gap (it had unread messages at login, a push went missing, a
//! message came from the user's other legacy connection) is *behind*: its pushes are shown
//! but not marked read, and PULL returns its unread messages, except the ones shown here
//! already.

use std::collections::{HashMap, HashSet};

use im_proto::{ChatMessage, Conversation};

/// Most pushed message ids remembered for PULL; past it PULL may show a pushed message
/// again (never loses one).
const MAX_SHOWN: usize = 10_000;

/// What to do with a pushed message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Show it and mark its conversation read up to it.
    ShowAndMark,
    /// Show it; its conversation is behind and is not marked read.
    Show,
    /// A PULL here returned it already.
    Old,
}

/// A connection's knowledge of its user's conversations.
#[derive(Debug, Default)]
pub(crate) struct Seen {
    cursor: HashMap<String, u64>,
    behind: HashSet<String>,
    shown: HashSet<u64>,
}

impl Seen {
    /// At login: conversations without unread messages are known up to their last seq;
    /// the others are behind.
    pub(crate) fn start(&mut self, conversations: &[Conversation]) {
        for c in conversations {
            if c.unread == 0 {
                self.cursor.insert(c.conversation_id.clone(), c.last_seq);
            } else {
                self.behind.insert(c.conversation_id.clone());
            }
        }
    }

    /// The user sent message `seq` of `conversation` from this connection.
    pub(crate) fn sent(&mut self, conversation: &str, seq: u64) {
        self.follow(conversation, seq);
    }

    /// A message (or recall, or edit) pushed to this connection.
    pub(crate) fn pushed(&mut self, message: &ChatMessage) -> Verdict {
        let id = message.conversation_id.as_str();
        if !self.behind.contains(id) {
            match self.cursor.get(id).copied() {
                Some(cursor) if message.seq <= cursor => return Verdict::Old,
                _ if self.follow(id, message.seq) => return Verdict::ShowAndMark,
                _ => {
                    self.cursor.remove(id);
                    self.behind.insert(id.to_owned());
                }
            }
        }
        // A message pushed twice (a resend pushes again) is shown once.
        if self.shown.contains(&message.msg_id) {
            return Verdict::Old;
        }
        if self.shown.len() < MAX_SHOWN {
            self.shown.insert(message.msg_id);
        }
        Verdict::Show
    }

    /// Moves the cursor of `conversation` to `seq` if `seq` follows it (a conversation
    /// never seen before starts at 0); whether it did.
    fn follow(&mut self, conversation: &str, seq: u64) -> bool {
        if self.behind.contains(conversation) {
            return false;
        }
        let cursor = self.cursor.get(conversation).copied().unwrap_or(0);
        if seq == cursor + 1 {
            self.cursor.insert(conversation.to_owned(), seq);
            true
        } else {
            false
        }
    }

    /// Whether a push showed message `msg_id` here.
    pub(crate) fn shown(&self, msg_id: u64) -> bool {
        self.shown.contains(&msg_id)
    }

    /// Whether PULL should look at `conversation` whatever its unread count says.
    pub(crate) fn is_behind(&self, conversation: &str) -> bool {
        self.behind.contains(conversation)
    }

    /// PULL covered `conversation` up to `seq`: up to date if `complete`.
    pub(crate) fn pulled(&mut self, conversation: &str, seq: u64, complete: bool) {
        if !complete {
            self.behind.insert(conversation.to_owned());
            return;
        }
        self.behind.remove(conversation);
        let cursor = self.cursor.entry(conversation.to_owned()).or_default();
        *cursor = (*cursor).max(seq);
        if self.behind.is_empty() {
            self.shown.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(conversation: &str, seq: u64, msg_id: u64) -> ChatMessage {
        ChatMessage {
            conversation_id: conversation.to_owned(),
            seq,
            msg_id,
            ..ChatMessage::default()
        }
    }

    #[test]
    fn pushes_in_order_are_marked_and_gaps_fall_behind() {
        let mut seen = Seen::default();
        assert_eq!(seen.pushed(&chat("a", 1, 10)), Verdict::ShowAndMark);
        seen.sent("a", 2);
        assert_eq!(seen.pushed(&chat("a", 3, 11)), Verdict::ShowAndMark);
        assert_eq!(seen.pushed(&chat("a", 3, 11)), Verdict::Old);
        // Seq 4 never came here.
        assert_eq!(seen.pushed(&chat("a", 5, 12)), Verdict::Show);
        assert!(seen.is_behind("a") && seen.shown(12));
        assert_eq!(seen.pushed(&chat("a", 5, 12)), Verdict::Old);
        assert_eq!(seen.pushed(&chat("a", 6, 13)), Verdict::Show);
        seen.pulled("a", 6, true);
        assert!(!seen.is_behind("a") && !seen.shown(12));
        assert_eq!(seen.pushed(&chat("a", 7, 14)), Verdict::ShowAndMark);
    }

    #[test]
    fn unread_at_login_is_behind() {
        let mut seen = Seen::default();
        let conversation = |id: &str, last_seq, unread| Conversation {
            conversation_id: id.to_owned(),
            last_seq,
            unread,
            ..Conversation::default()
        };
        seen.start(&[conversation("a", 4, 0), conversation("b", 9, 2)]);
        assert_eq!(seen.pushed(&chat("a", 5, 1)), Verdict::ShowAndMark);
        assert_eq!(seen.pushed(&chat("b", 10, 2)), Verdict::Show);
        // A conversation joined meanwhile, with history: unknown until a PULL.
        assert_eq!(seen.pushed(&chat("c", 30, 3)), Verdict::Show);
        seen.pulled("b", 10, false);
        assert!(seen.is_behind("b"));
    }
}
