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

    /// Parses a conversation id, which must be written exactly as [`Display`] writes it:
    /// `d:<low>:<high>` (two user ids, the lower first) or `g:<group>`, each id in decimal,
    /// 1 or more, without sign, leading zeros or white space. One conversation has one
    /// spelling, so clients can compare ids as strings and use them as keys.
    ///
    /// [`Display`]: std::fmt::Display
    ///
    /// # Errors
    /// `INVALID_ARGUMENT`: for an id that names a conversation in another spelling
    /// (`d:6:5`, `d:05:6`, `g:+7`, ` g:7`), one that gives its canonical form; for anything
    /// else, one that gives the rule.
    pub fn parse(text: &str) -> Result<ConversationId, Status> {
        if let Some(parsed) = ConversationId::parse_exactly(text) {
            return Ok(parsed);
        }
        Err(match ConversationId::parse_loosely(text) {
            Some(meant) => Status::invalid_argument(format!(
                "conversation_id is not in canonical form: write it {meant} (ids in decimal \
                 without sign, leading zeros or spaces; the lower user id first)"
            )),
            None => Status::invalid_argument(
                "conversation_id must be d:<lower user id>:<higher user id> or g:<group id>, \
                 ids in decimal from 1, without sign, leading zeros or spaces",
            ),
        })
    }

    /// The conversation `text` names in its one canonical spelling (what `Display`
    /// writes); None for anything else. Allocates nothing: messages are parsed on every push.
    fn parse_exactly(text: &str) -> Option<ConversationId> {
        let id = |part: &str| {
            let canonical = part.bytes().all(|b| b.is_ascii_digit()) && !part.starts_with('0');
            canonical.then(|| part.parse::<u64>().ok()).flatten()
        };
        match text.split_once(':')? {
            ("g", group) => Some(ConversationId::Group(id(group)?)),
            ("d", pair) => {
                let (a, b) = pair.split_once(':')?;
                let (a, b) = (id(a)?, id(b)?);
                (a < b).then_some(ConversationId::Direct(a, b))
            }
            _ => None,
        }
    }

    /// The conversation `text` names if signs, leading zeros, spaces around the parts and
    /// the order of a direct conversation's users are forgiven: what the error of a
    /// non-canonical id proposes. None when it names none (ids of 0 included).
    fn parse_loosely(text: &str) -> Option<ConversationId> {
        let id = |part: &str| part.trim().parse::<u64>().ok().filter(|&id| id > 0);
        let parsed = match text.trim().split_once(':') {
            Some((kind, group)) if kind.trim() == "g" => ConversationId::Group(id(group)?),
            Some((kind, pair)) if kind.trim() == "d" => {
                let (a, b) = pair.split_once(':')?;
                let (a, b) = (id(a)?, id(b)?);
                if a == b {
                    return None;
                }
                ConversationId::direct(a, b)
            }
            _ => return None,
        };
        Some(parsed)
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
        assert_eq!(
            ConversationId::parse("d:18446744073709551614:18446744073709551615").unwrap(),
            ConversationId::Direct(u64::MAX - 1, u64::MAX)
        );
        assert_eq!(direct.peer_of(3), Some(9));
        assert_eq!(direct.peer_of(4), None);
    }

    /// The message of the error `text` gets.
    fn refusal(text: &str) -> String {
        match ConversationId::parse(text) {
            Ok(id) => panic!("{text:?} accepted as {id:?}"),
            Err(status) => {
                assert_eq!(status.code(), mprpc::Code::InvalidArgument, "{text:?}");
                status.message().to_owned()
            }
        }
    }

    #[test]
    fn another_spelling_of_a_conversation_is_refused_with_its_canonical_form() {
        let cases = [
            ("d:6:5", "d:5:6"),
            ("d:05:6", "d:5:6"),
            ("d:5:06", "d:5:6"),
            ("d:005:6", "d:5:6"),
            ("d:+5:6", "d:5:6"),
            ("d:5:+6", "d:5:6"),
            ("d: 5:6", "d:5:6"),
            ("d:5:6 ", "d:5:6"),
            (" d:5:6", "d:5:6"),
            ("d :5:6", "d:5:6"),
            ("d:5\t:6", "d:5:6"),
            ("d:5:6\n", "d:5:6"),
            ("d:+06:5", "d:5:6"),
            ("g:07", "g:7"),
            ("g:+7", "g:7"),
            ("g: 7", "g:7"),
            ("g:7 ", "g:7"),
            ("\tg:7", "g:7"),
        ];
        for (text, canonical) in cases {
            let message = refusal(text);
            assert!(
                message.starts_with(&format!(
                    "conversation_id is not in canonical form: write it {canonical} "
                )),
                "{text:?}: {message}"
            );
        }
    }

    #[test]
    fn an_id_that_names_no_conversation_is_refused_with_the_rule() {
        let rule = "conversation_id must be d:<lower user id>:<higher user id> or g:<group id>, \
                    ids in decimal from 1, without sign, leading zeros or spaces";
        for text in [
            "",
            " ",
            "d",
            "g",
            "d:",
            "g:",
            "d:1",
            "d:1:",
            "d::1",
            "d:1:2:3",
            "g:1:2",
            "g:x",
            "x:1",
            "D:1:2",
            "G:7",
            "d:3:3",
            "d:03:3",
            "d:0:5",
            "g:0",
            "g:00",
            "g:-7",
            "d:-1:2",
            "g:1e3",
            "g:0x10",
            "g:7.0",
            "g:18446744073709551616",
            "g:\u{0667}",
            "d:1 2:3",
        ] {
            assert_eq!(refusal(text), rule, "{text:?}");
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
