//! Sends waiting for their ack. Each keeps its request (with its `client_msg_id`) so that
//! it can go out again after a reconnect: the gateway answers a repeated `client_msg_id`
//! with the first ack, so a resend never stores a message twice.

use std::collections::BTreeMap;

use im_proto::client::request::Command;
use rand::Rng as _;
use tokio::sync::oneshot;

use crate::Reply;
use crate::error::Error;

/// A fresh `client_msg_id`: 128 random bits in hex.
pub(crate) fn client_msg_id() -> String {
    format!("{:032x}", rand::rng().random::<u128>())
}

/// Whether `command` is one the gateway dedupes by `client_msg_id` (and so one that waits
/// in the outbox); fills in a missing `client_msg_id`.
pub(crate) fn prepare(command: &mut Command) -> bool {
    let id = match command {
        Command::Send(r) => &mut r.client_msg_id,
        Command::SendGroup(r) => &mut r.client_msg_id,
        Command::Recall(r) => &mut r.client_msg_id,
        Command::Edit(r) => &mut r.client_msg_id,
        _ => return false,
    };
    if id.is_empty() {
        *id = client_msg_id();
    }
    true
}

/// One send waiting for its ack.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) command: Command,
    pub(crate) reply: oneshot::Sender<Reply>,
}

/// The sends waiting for their ack, oldest first.
#[derive(Debug)]
pub(crate) struct Outbox {
    entries: BTreeMap<u64, Entry>,
    next_key: u64,
    max: usize,
}

impl Outbox {
    pub(crate) fn new(max: usize) -> Outbox {
        Outbox {
            entries: BTreeMap::new(),
            next_key: 0,
            max,
        }
    }

    /// Queues a send; gives it back when the outbox is full.
    pub(crate) fn push(&mut self, entry: Entry) -> Result<u64, Entry> {
        if self.entries.len() >= self.max {
            return Err(entry);
        }
        self.next_key += 1;
        self.entries.insert(self.next_key, entry);
        Ok(self.next_key)
    }

    pub(crate) fn get(&self, key: u64) -> Option<&Entry> {
        self.entries.get(&key)
    }

    pub(crate) fn take(&mut self, key: u64) -> Option<Entry> {
        self.entries.remove(&key)
    }

    /// Every waiting send, oldest first (for the resend after a reconnect).
    pub(crate) fn keys(&self) -> Vec<u64> {
        self.entries.keys().copied().collect()
    }

    /// Fails every waiting send with `error` (the session ended).
    pub(crate) fn fail_all(&mut self, error: &Error) {
        for (_, entry) in std::mem::take(&mut self.entries) {
            let _ = entry.reply.send(Err(error.clone()));
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use im_proto::SendRequest;
    use im_proto::client::Ping;

    fn send() -> (Entry, oneshot::Receiver<Reply>) {
        let (reply, rx) = oneshot::channel();
        let command = Command::Send(SendRequest::default());
        (Entry { command, reply }, rx)
    }

    #[test]
    fn sends_get_an_id_and_others_are_not_queued() {
        let mut command = Command::Send(SendRequest::default());
        assert!(prepare(&mut command));
        let Command::Send(request) = &command else {
            unreachable!()
        };
        assert_eq!(request.client_msg_id.len(), 32);
        assert!(!prepare(&mut Command::Ping(Ping {})));
        assert_ne!(client_msg_id(), client_msg_id());
    }

    #[test]
    fn the_outbox_is_bounded_and_fails_everything_at_once() {
        let mut outbox = Outbox::new(2);
        let (a, mut a_rx) = send();
        let (b, _b_rx) = send();
        let (c, _c_rx) = send();
        let first = outbox.push(a).unwrap();
        let second = outbox.push(b).unwrap();
        assert!(outbox.push(c).is_err());
        assert_eq!(outbox.keys(), [first, second]);
        assert!(outbox.take(second).is_some());
        assert!(outbox.get(first).is_some());
        outbox.fail_all(&Error::Closed);
        assert_eq!(outbox.len(), 0);
        assert!(matches!(a_rx.try_recv(), Ok(Err(Error::Closed))));
    }
}
