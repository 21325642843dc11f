//! Per-conversation order: every entry of a conversation (message, recall, edit) has a seq
//! 1, 2, 3, … with no holes. [`Order`] shows entries in that order, drops what it already
//! showed, and holds entries behind a gap until a sync fills it.
//!
//! It is pure bookkeeping: the caller feeds it pushes, acks turned into entries and sync
//! replies, delivers what it returns, and sends the syncs it asks for.

use std::collections::{BTreeMap, HashMap};

use im_proto::ChatMessage;
use im_proto::client::Cursor;

/// Entries held behind a gap per conversation; more are dropped (the sync brings them).
const MAX_HELD: usize = 1024;

/// A sync to send: the conversation's entries after `after_seq`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncFrom {
    /// The conversation.
    pub conversation_id: String,
    /// The last seq held.
    pub after_seq: u64,
}

/// What to do after feeding [`Order`]: show `deliver` (in this order), then send `sync`.
#[derive(Debug, Default, PartialEq)]
pub struct Step {
    /// Entries to show now, in seq order.
    pub deliver: Vec<ChatMessage>,
    /// A sync to send, when a gap was found or a sync has more pages.
    pub sync: Option<SyncFrom>,
}

#[derive(Debug, Default)]
struct Conversation {
    /// The last seq shown.
    last: u64,
    /// Entries beyond a gap, by seq.
    held: BTreeMap<u64, ChatMessage>,
    /// A sync of this conversation is in flight.
    syncing: bool,
}

impl Conversation {
    /// Takes `entry` if it is next (and then whatever it unblocks) or holds it.
    fn take(&mut self, entry: ChatMessage, deliver: &mut Vec<ChatMessage>) {
        if entry.seq <= self.last {
            return;
        }
        if entry.seq == self.last + 1 {
            self.last = entry.seq;
            deliver.push(entry);
            self.drain(deliver);
        } else if self.held.len() < MAX_HELD {
            self.held.insert(entry.seq, entry);
        }
    }

    /// Moves held entries that became next to `deliver`.
    fn drain(&mut self, deliver: &mut Vec<ChatMessage>) {
        while let Some(entry) = self.held.first_entry() {
            if *entry.key() <= self.last {
                entry.remove();
            } else if *entry.key() == self.last + 1 {
                self.last += 1;
                deliver.push(entry.remove());
            } else {
                break;
            }
        }
    }

    fn has_gap(&self) -> bool {
        self.held
            .keys()
            .next()
            .is_some_and(|&first| first > self.last + 1)
    }
}

/// The order of every conversation the client follows.
#[derive(Debug, Default)]
pub struct Order {
    conversations: HashMap<String, Conversation>,
}

impl Order {
    /// Nothing known yet.
    pub fn new() -> Order {
        Order::default()
    }

    /// The last seq shown of `conversation_id`, if it is known.
    pub fn last_seq(&self, conversation_id: &str) -> Option<u64> {
        self.conversations.get(conversation_id).map(|c| c.last)
    }

    /// Starts following `conversation_id` from `last_seq` (what came before is history, not
    /// news); a conversation already followed is left as it is.
    pub fn baseline(&mut self, conversation_id: &str, last_seq: u64) {
        if !self.conversations.contains_key(conversation_id) {
            let conversation = Conversation {
                last: last_seq,
                ..Conversation::default()
            };
            self.conversations
                .insert(conversation_id.to_owned(), conversation);
        }
    }

    /// Feeds one entry (a push, or an own send turned into an entry by its ack). A
    /// conversation never seen before starts at seq 0.
    pub fn accept(&mut self, entry: ChatMessage) -> Step {
        if entry.seq == 0 {
            return Step::default();
        }
        let id = entry.conversation_id.clone();
        let conversation = self.conversations.entry(id.clone()).or_default();
        let mut step = Step::default();
        conversation.take(entry, &mut step.deliver);
        if conversation.has_gap() && !conversation.syncing {
            conversation.syncing = true;
            step.sync = Some(SyncFrom {
                conversation_id: id,
                after_seq: conversation.last,
            });
        }
        step
    }

    /// Starts a sync of `conversation_id` from its last seq (after a resume), unless one is
    /// in flight.
    pub fn start_sync(&mut self, conversation_id: &str) -> Option<SyncFrom> {
        let conversation = self
            .conversations
            .entry(conversation_id.to_owned())
            .or_default();
        if conversation.syncing {
            return None;
        }
        conversation.syncing = true;
        Some(SyncFrom {
            conversation_id: conversation_id.to_owned(),
            after_seq: conversation.last,
        })
    }

    /// Feeds one page of a sync reply: `messages` after the asked seq, `has_more` when more
    /// pages follow, `last_seq` the conversation's last seq when the page was read.
    pub fn synced(
        &mut self,
        conversation_id: &str,
        mut messages: Vec<ChatMessage>,
        has_more: bool,
        last_seq: u64,
    ) -> Step {
        let Some(conversation) = self.conversations.get_mut(conversation_id) else {
            return Step::default();
        };
        messages.sort_by_key(|m| m.seq);
        let mut step = Step::default();
        for entry in messages {
            conversation.take(entry, &mut step.deliver);
        }
        let first_held = conversation.held.keys().next().copied();
        let again = match first_held {
            _ if has_more => true,
            // A hole the database says does not exist (it cannot happen while seqs have no
            // holes): skip to what is held rather than wait forever.
            Some(first) if conversation.has_gap() && first <= last_seq => {
                conversation.last = first - 1;
                conversation.drain(&mut step.deliver);
                false
            }
            // Held entries newer than the page: read on.
            Some(_) => conversation.has_gap(),
            None => false,
        };
        conversation.syncing = again;
        if again {
            step.sync = Some(SyncFrom {
                conversation_id: conversation_id.to_owned(),
                after_seq: conversation.last,
            });
        }
        step
    }

    /// A sync failed or its connection went away: the next push or resume starts another.
    pub fn sync_failed(&mut self, conversation_id: &str) {
        if let Some(conversation) = self.conversations.get_mut(conversation_id) {
            conversation.syncing = false;
        }
    }

    /// Forgets every sync in flight (the connection they were sent on is gone).
    pub fn reset_syncs(&mut self) {
        for conversation in self.conversations.values_mut() {
            conversation.syncing = false;
        }
    }

    /// The last seq of every conversation, for a resume.
    pub fn cursors(&self) -> Vec<Cursor> {
        let mut cursors: Vec<Cursor> = self
            .conversations
            .iter()
            .map(|(id, c)| Cursor {
                conversation_id: id.clone(),
                last_seq: c.last,
            })
            .collect();
        cursors.sort_by(|a, b| a.conversation_id.cmp(&b.conversation_id));
        cursors
    }

    /// Forgets everything (a logout).
    pub fn clear(&mut self) {
        self.conversations.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(conversation: &str, seq: u64) -> ChatMessage {
        ChatMessage {
            msg_id: 1000 + seq,
            conversation_id: conversation.into(),
            seq,
            body: format!("m{seq}"),
            ..ChatMessage::default()
        }
    }

    fn seqs(step: &Step) -> Vec<u64> {
        step.deliver.iter().map(|m| m.seq).collect()
    }

    fn sync(after_seq: u64) -> Option<SyncFrom> {
        Some(SyncFrom {
            conversation_id: "c".into(),
            after_seq,
        })
    }

    #[test]
    fn in_order_entries_pass_and_duplicates_are_dropped() {
        let mut order = Order::new();
        assert_eq!(seqs(&order.accept(entry("c", 1))), [1]);
        assert_eq!(seqs(&order.accept(entry("c", 2))), [2]);
        let again = order.accept(entry("c", 2));
        assert_eq!(again, Step::default());
        assert_eq!(order.accept(entry("c", 1)), Step::default());
        assert_eq!(order.last_seq("c"), Some(2));
    }

    #[test]
    fn a_gap_holds_later_entries_and_asks_for_one_sync() {
        let mut order = Order::new();
        order.accept(entry("c", 1));
        let step = order.accept(entry("c", 4));
        assert!(step.deliver.is_empty());
        assert_eq!(step.sync, sync(1));
        // A second push behind the same gap asks for nothing more.
        assert_eq!(order.accept(entry("c", 5)), Step::default());
        let step = order.synced("c", vec![entry("c", 3), entry("c", 2)], false, 5);
        assert_eq!(seqs(&step), [2, 3, 4, 5]);
        assert_eq!(step.sync, None);
        assert_eq!(order.last_seq("c"), Some(5));
    }

    #[test]
    fn a_sync_with_more_pages_asks_for_the_next() {
        let mut order = Order::new();
        order.baseline("c", 10);
        assert_eq!(order.start_sync("c"), sync(10));
        assert_eq!(order.start_sync("c"), None, "one sync at a time");
        let step = order.synced("c", vec![entry("c", 11), entry("c", 12)], true, 20);
        assert_eq!((seqs(&step), step.sync), (vec![11, 12], sync(12)));
        let step = order.synced("c", vec![entry("c", 13)], false, 13);
        assert_eq!((seqs(&step), step.sync), (vec![13], None));
        assert_eq!(order.start_sync("c"), sync(13));
    }

    #[test]
    fn an_early_ack_waits_for_the_entries_before_it() {
        // The ack of an own send (seq 3) comes before the push of seq 2.
        let mut order = Order::new();
        order.accept(entry("c", 1));
        let step = order.accept(entry("c", 3));
        assert_eq!((seqs(&step), step.sync), (vec![], sync(1)));
        let step = order.accept(entry("c", 2));
        assert_eq!(seqs(&step), [2, 3]);
        // The sync then brings only duplicates, and asks for nothing more.
        let step = order.synced("c", vec![entry("c", 2), entry("c", 3)], false, 3);
        assert_eq!(step, Step::default());
    }

    #[test]
    fn a_hole_the_database_does_not_have_is_skipped() {
        let mut order = Order::new();
        order.accept(entry("c", 1));
        order.accept(entry("c", 3));
        let step = order.synced("c", vec![], false, 3);
        assert_eq!((seqs(&step), step.sync), (vec![3], None));
    }

    #[test]
    fn held_entries_newer_than_the_page_read_on() {
        let mut order = Order::new();
        order.accept(entry("c", 1));
        order.accept(entry("c", 5));
        let step = order.synced("c", vec![entry("c", 2)], false, 2);
        assert_eq!((seqs(&step), step.sync), (vec![2], sync(2)));
    }

    #[test]
    fn baselines_cursors_and_conversations_apart() {
        let mut order = Order::new();
        order.baseline("a", 7);
        order.accept(entry("a", 7));
        assert_eq!(seqs(&order.accept(entry("a", 8))), [8]);
        order.baseline("a", 2);
        assert_eq!(
            order.last_seq("a"),
            Some(8),
            "a baseline never moves a cursor"
        );
        assert_eq!(seqs(&order.accept(entry("b", 1))), [1]);
        assert_eq!(order.accept(entry("b", 0)), Step::default());
        let cursors: Vec<_> = order
            .cursors()
            .into_iter()
            .map(|c| (c.conversation_id, c.last_seq))
            .collect();
        assert_eq!(cursors, [("a".to_owned(), 8), ("b".to_owned(), 1)]);
        order.clear();
        assert!(order.cursors().is_empty());
    }

    /// One page of the conversation `all` after `from`, as the database would answer.
    fn page(order: &mut Order, all: &[ChatMessage], from: SyncFrom, limit: usize) -> Step {
        let after: Vec<_> = all
            .iter()
            .filter(|m| m.seq > from.after_seq)
            .cloned()
            .collect();
        let has_more = after.len() > limit;
        let messages = after.into_iter().take(limit).collect();
        order.synced(&from.conversation_id, messages, has_more, all.len() as u64)
    }

    #[test]
    fn any_mix_of_lost_repeated_and_reordered_pushes_shows_each_entry_once_in_order() {
        use rand::rngs::StdRng;
        use rand::seq::SliceRandom as _;
        use rand::{Rng as _, SeedableRng as _};

        let mut rng = StdRng::seed_from_u64(8);
        for _ in 0..500 {
            let all: Vec<_> = (1..=rng.random_range(1..60))
                .map(|s| entry("c", s))
                .collect();
            let mut pushes: Vec<_> = all
                .iter()
                .flat_map(|m| std::iter::repeat_n(m.clone(), rng.random_range(0..=2)))
                .collect();
            pushes.shuffle(&mut rng);
            let (mut order, mut shown, mut syncs) = (Order::new(), Vec::new(), Vec::new());
            for push in pushes {
                let step = order.accept(push);
                shown.extend(step.deliver);
                syncs.extend(step.sync);
                // Replies come back at any point between pushes.
                if rng.random_bool(0.3) && !syncs.is_empty() {
                    let step = page(&mut order, &all, syncs.remove(0), 4);
                    shown.extend(step.deliver);
                    syncs.extend(step.sync);
                }
            }
            // Then everything is answered, and a resume syncs the tail no push brought.
            syncs.extend(order.start_sync("c"));
            while let Some(from) = syncs.pop() {
                let step = page(&mut order, &all, from, 4);
                shown.extend(step.deliver);
                syncs.extend(step.sync);
            }
            let seqs: Vec<u64> = shown.iter().map(|m| m.seq).collect();
            let want: Vec<u64> = (1..=all.len() as u64).collect();
            assert_eq!(seqs, want);
        }
    }

    #[test]
    fn a_failed_sync_is_asked_for_again_by_the_next_push() {
        let mut order = Order::new();
        order.accept(entry("c", 1));
        assert_eq!(order.accept(entry("c", 3)).sync, sync(1));
        order.sync_failed("c");
        assert_eq!(order.accept(entry("c", 4)).sync, sync(1));
        order.reset_syncs();
        assert_eq!(order.start_sync("c"), sync(1));
    }
}
