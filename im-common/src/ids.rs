//! Identifiers: conversation ids, message ids and clock readings.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use mprpc::Status;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A conversation: between two users, or a group's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ConversationId {
    /// The 1:1 conversation of two users, lower id first.
    Direct(u64, u64),
    /// A group's conversation.
    Group(u64),
}

impl ConversationId {
    /// The 1:1 conversation between `a` and `b`, whichever order they come in.
    pub fn direct(a: u64, b: u64) -> ConversationId {
        ConversationId::Direct(a.min(b), a.max(b))
    }

    /// Parses `d:<low>:<high>` or `g:<group>`.
    ///
    /// # Errors
    /// `INVALID_ARGUMENT` naming the malformed id.
    pub fn parse(text: &str) -> Result<ConversationId, Status> {
        let invalid =
            || Status::invalid_argument("conversation_id must be d:<user>:<user> or g:<group>");
        let parsed = match text.split_once(':') {
            Some(("g", group)) => ConversationId::Group(group.parse().map_err(|_| invalid())?),
            Some(("d", pair)) => {
                let (a, b) = pair.split_once(':').ok_or_else(invalid)?;
                let (a, b): (u64, u64) = (
                    a.parse().map_err(|_| invalid())?,
                    b.parse().map_err(|_| invalid())?,
                );
                if a >= b {
                    return Err(invalid());
                }
                ConversationId::Direct(a, b)
            }
            _ => return Err(invalid()),
        };
        Ok(parsed)
    }

    /// Whether `user` is one of the two users of a direct conversation.
    pub fn has_direct_member(self, user: u64) -> bool {
        matches!(self, ConversationId::Direct(a, b) if a == user || b == user)
    }

    /// The other user of a direct conversation, seen from `user`.
    pub fn peer_of(self, user: u64) -> Option<u64> {
        match self {
            ConversationId::Direct(a, b) if a == user => Some(b),
            ConversationId::Direct(a, b) if b == user => Some(a),
            _ => None,
        }
    }
}

impl std::fmt::Display for ConversationId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConversationId::Direct(a, b) => write!(f, "d:{a}:{b}"),
            ConversationId::Group(g) => write!(f, "g:{g}"),
        }
    }
}

/// Message ids: 41 bits of milliseconds since 2024-01-01, 10 bits of node, 12 bits of
/// sequence; unique across processes whose nodes differ, increasing within one process.
///
/// Nodes are drawn at random when not configured, so two instances collide with probability
/// 1/1024; the database's unique index on `msg_id` turns such a collision into a retried
/// commit, never into two messages with one id.
#[derive(Debug)]
pub struct MsgIds {
    node: u64,
    /// The last id handed out; the next is at least one more.
    last: AtomicU64,
}

const EPOCH_MS: i64 = 1_704_067_200_000;

impl MsgIds {
    /// A generator for `node` (only the low 10 bits count).
    pub fn new(node: u16) -> MsgIds {
        MsgIds {
            node: u64::from(node) & 0x3ff,
            last: AtomicU64::new(0),
        }
    }

    /// A generator with a random node.
    pub fn random() -> MsgIds {
        MsgIds::new(rand::random::<u16>())
    }

    /// The next id.
    pub fn next(&self) -> u64 {
        let millis = u64::try_from(now_ms() - EPOCH_MS).unwrap_or(0);
        let floor = (millis << 22) | (self.node << 12);
        let mut last = self.last.load(Ordering::Relaxed);
        loop {
            let next = if floor > last {
                floor
            } else if last & 0xfff < 0xfff {
                // Same millisecond (or the clock stepped back): the next sequence value.
                last + 1
            } else {
                // 4096 ids in one millisecond: borrow the next one.
                (((last >> 22) + 1) << 22) | (self.node << 12)
            };
            match self
                .last
                .compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return next,
                Err(actual) => last = actual,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversation_ids_round_trip() {
        let direct = ConversationId::direct(9, 3);
        assert_eq!(direct.to_string(), "d:3:9");
        assert_eq!(ConversationId::parse("d:3:9").unwrap(), direct);
        assert_eq!(
            ConversationId::parse("g:42").unwrap(),
            ConversationId::Group(42)
        );
        assert_eq!(direct.peer_of(3), Some(9));
        assert_eq!(direct.peer_of(4), None);
        for bad in ["", "d:9:3", "d:3:3", "g:", "g:x", "x:1", "d:1", "d:1:2:3"] {
            assert!(ConversationId::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn message_ids_increase_and_keep_their_node() {
        let ids = MsgIds::new(5);
        let mut last = 0;
        for _ in 0..20_000 {
            let id = ids.next();
            assert!(id > last, "{id} after {last}");
            assert_eq!((id >> 12) & 0x3ff, 5);
            last = id;
        }
    }
}
