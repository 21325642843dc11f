//! What each connection saw, and the sums that say whether anything acknowledged was lost,
//! shown twice or shown out of order.

use std::fmt;

/// A set of seqs, as bits from a base that moves down when a lower seq arrives.
#[derive(Debug, Default, Clone)]
pub struct SeqSet {
    /// The seq of bit 0 of `words[0]`; a multiple of 64.
    base: u64,
    words: Vec<u64>,
    len: u64,
}

impl SeqSet {
    /// Adds `seq`; false when it was already there.
    pub fn insert(&mut self, seq: u64) -> bool {
        let word_base = seq & !63;
        if self.words.is_empty() {
            self.base = word_base;
        } else if word_base < self.base {
            let grow = ((self.base - word_base) / 64) as usize;
            self.words.splice(0..0, std::iter::repeat_n(0, grow));
            self.base = word_base;
        }
        let index = ((word_base - self.base) / 64) as usize;
        if index >= self.words.len() {
            self.words.resize(index + 1, 0);
        }
        let bit = 1u64 << (seq & 63);
        let fresh = self.words[index] & bit == 0;
        self.words[index] |= bit;
        self.len += u64::from(fresh);
        fresh
    }

    /// Whether `seq` is in the set.
    pub fn contains(&self, seq: u64) -> bool {
        if seq < self.base {
            return false;
        }
        let index = ((seq - self.base) / 64) as usize;
        self.words
            .get(index)
            .is_some_and(|word| word & (1 << (seq & 63)) != 0)
    }

    /// How many seqs are in the set.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The seqs in the set, lowest first.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.words.iter().enumerate().flat_map(move |(i, &word)| {
            let base = self.base + 64 * i as u64;
            (0..64)
                .filter(move |bit| word & (1 << bit) != 0)
                .map(move |bit| base + bit)
        })
    }

    /// Adds every seq of `other`.
    pub fn extend(&mut self, other: &SeqSet) {
        for seq in other.iter() {
            self.insert(seq);
        }
    }
}

/// What one connection saw of one conversation.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    /// Seqs pushed to this connection (each once, however often it came).
    pub pushed: SeqSet,
    /// Seqs of this connection's own messages that were acknowledged.
    pub acked: SeqSet,
    /// The highest seq pushed so far.
    pub last_pushed: u64,
    /// Pushes of a seq this connection already had.
    pub dup: u64,
    /// Pushes of a seq lower than one pushed before.
    pub out_of_order: u64,
    /// Pushes of this connection's own messages (the sending device should get only the ack).
    pub echo: u64,
}

impl Seen {
    /// Counts one push; true when it is the first of its seq.
    pub fn push(&mut self, seq: u64, own: bool) -> bool {
        if own {
            self.echo += 1;
            return false;
        }
        if !self.pushed.insert(seq) {
            self.dup += 1;
            return false;
        }
        if seq < self.last_pushed {
            self.out_of_order += 1;
        }
        self.last_pushed = self.last_pushed.max(seq);
        true
    }
}

/// The verdict over every connection of a run.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// Acknowledged messages (times recipients) that a recipient never got.
    pub lost: u64,
    /// Pushes of a message a connection already had.
    pub dup: u64,
    /// Pushes that came after a higher seq of the same conversation.
    pub out_of_order: u64,
    /// Pushes of a connection's own message back to it.
    pub echo: u64,
}

/// Checks every conversation: each seq some member had acknowledged must have been pushed to
/// every other member of `members[conversation]` (indexes into `seen`).
///
/// `seen[c]` is connection `c`'s view of its one conversation.
pub fn verdict(seen: &[Seen], members: &[Vec<usize>]) -> Verdict {
    let mut verdict = Verdict::default();
    for connection in seen {
        verdict.dup += connection.dup;
        verdict.out_of_order += connection.out_of_order;
        verdict.echo += connection.echo;
    }
    for group in members {
        let mut acked = SeqSet::default();
        for &member in group {
            acked.extend(&seen[member].acked);
        }
        for &member in group {
            let view = &seen[member];
            verdict.lost += acked
                .iter()
                .filter(|&seq| !view.acked.contains(seq) && !view.pushed.contains(seq))
                .count() as u64;
        }
    }
    verdict
}

/// The figures of a run, printed as its last line.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Report {
    /// Connections that were open and logged in when the load started.
    pub connections: u64,
    /// Messages sent in the measured window.
    pub sent: u64,
    /// Of those, acknowledged.
    pub acked: u64,
    /// Pushes of those that reached a recipient (each recipient counted once).
    pub delivered: u64,
    /// The verdict over the whole run, warm-up included.
    pub verdict: Verdict,
    /// Median send→receive latency, ms.
    pub p50_ms: f64,
    /// 99th percentile send→receive latency, ms.
    pub p99_ms: f64,
    /// Deliveries per second of the window.
    pub msgs_per_s: f64,
    /// Fields that follow the standard ones (`name=value`).
    pub extra: Vec<(&'static str, String)>,
}

impl Report {
    /// Whether the run met its promise: nothing lost, nothing shown twice.
    pub fn passed(&self) -> bool {
        self.verdict.lost == 0 && self.verdict.dup == 0
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "RESULT connections={} sent={} acked={} delivered={} lost={} dup={} p50_ms={:.2} \
             p99_ms={:.2} msgs_per_s={:.0} order={} echo={}",
            self.connections,
            self.sent,
            self.acked,
            self.delivered,
            self.verdict.lost,
            self.verdict.dup,
            self.p50_ms,
            self.p99_ms,
            self.msgs_per_s,
            self.verdict.out_of_order,
            self.verdict.echo,
        )?;
        for (name, value) in &self.extra {
            write!(f, " {name}={value}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_sets_grow_both_ways_and_count_once() {
        let mut set = SeqSet::default();
        assert!(set.insert(130));
        assert!(set.insert(1));
        assert!(set.insert(700));
        assert!(!set.insert(130));
        assert_eq!(set.len(), 3);
        assert!(set.contains(1) && set.contains(130) && set.contains(700));
        assert!(!set.contains(0) && !set.contains(2) && !set.contains(10_000));
        assert_eq!(set.iter().collect::<Vec<_>>(), vec![1, 130, 700]);
    }

    #[test]
    fn pushes_count_dups_disorder_and_echoes() {
        let mut seen = Seen::default();
        assert!(seen.push(1, false));
        assert!(seen.push(3, false));
        assert!(seen.push(2, false));
        assert!(!seen.push(3, false));
        assert!(!seen.push(4, true));
        assert_eq!((seen.dup, seen.out_of_order, seen.echo), (1, 1, 1));
        assert_eq!(seen.pushed.len(), 3);
    }

    #[test]
    fn a_message_acked_by_one_member_is_owed_to_every_other() {
        // One 1:1 pair (0, 1) and a group of three (2, 3, 4).
        let mut seen = vec![Seen::default(); 5];
        seen[0].acked.insert(1);
        seen[1].acked.insert(2);
        seen[1].push(1, false);
        // Connection 0 never got seq 2: lost.
        seen[2].acked.insert(1);
        seen[2].acked.insert(2);
        seen[3].push(1, false);
        seen[3].push(2, false);
        seen[3].push(2, false);
        seen[4].push(2, false);
        seen[4].push(1, false);
        // Connection 4 has both, out of order; 3 has a duplicate.
        let verdict = verdict(&seen, &[vec![0, 1], vec![2, 3, 4]]);
        assert_eq!(
            verdict,
            Verdict {
                lost: 1,
                dup: 1,
                out_of_order: 1,
                echo: 0
            }
        );
    }

    #[test]
    fn pushes_of_unacked_messages_are_not_owed() {
        let mut seen = vec![Seen::default(); 2];
        seen[1].push(5, false);
        assert_eq!(verdict(&seen, &[vec![0, 1]]), Verdict::default());
    }

    #[test]
    fn the_result_line_has_the_fixed_fields_first() {
        let report = Report {
            connections: 4,
            sent: 10,
            acked: 9,
            delivered: 9,
            verdict: Verdict {
                lost: 0,
                dup: 2,
                out_of_order: 1,
                echo: 0,
            },
            p50_ms: 1.234,
            p99_ms: 20.0,
            msgs_per_s: 99.6,
            extra: vec![("errors", "1".into())],
        };
        assert_eq!(
            report.to_string(),
            "RESULT connections=4 sent=10 acked=9 delivered=9 lost=0 dup=2 p50_ms=1.23 \
             p99_ms=20.00 msgs_per_s=100 order=1 echo=0 errors=1"
        );
        assert!(!report.passed());
    }
}
