//! Which committer (and pusher) task owns a conversation: the one piece of state both
//! sides of a message's path agree on, so that one conversation's messages are stored and
//! pushed in seq order by one task each.

/// Which of `shards` committer (and pusher) tasks owns conversation `conv`: FNV-1a of the
/// id, stable, cheap, and spreads sequential ids.
pub fn conversation_shard(conv: &str, shards: usize) -> usize {
    let hash = conv.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    (hash % shards.max(1) as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_and_within_range() {
        assert_eq!(
            conversation_shard("d:1:2", 4),
            conversation_shard("d:1:2", 4)
        );
        assert!((0..100).all(|g| conversation_shard(&format!("g:{g}"), 3) < 3));
        assert_eq!(conversation_shard("g:7", 0), 0);
    }
}
