//! Who is connected here: user id → that user's connections on this gateway, each with its
//! bounded outgoing queue; and whose friends they are, for presence pushes.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use parking_lot::Mutex;
use tokio::sync::{Notify, oneshot};

use crate::wire::{Encoded, Form};

/// The authenticated side of a connection.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    pub(crate) user: u64,
    pub(crate) device: String,
    pub(crate) session: String,
    /// What kind of device logged in (its route says so).
    pub(crate) kind: im_proto::DeviceKind,
    /// When its token expires: the connection ends then (see `expiry`).
    pub(crate) expires: tokio::time::Instant,
}

impl Session {
    pub(crate) fn identity(&self) -> im_common::identity::User {
        im_common::identity::User {
            id: self.user,
            device: self.device.clone(),
            session: self.session.clone(),
        }
    }
}

/// Counts down the writes of one delivery batch: the batch is finished once every clone
/// is dropped, after its frame was written or its connection went away (then the
/// receiver of the sender sees the channel closed).
#[derive(Debug, Clone)]
pub(crate) struct Token(#[allow(dead_code)] Arc<oneshot::Sender<()>>);

impl Token {
    /// A token and what completes when the last of its clones is dropped.
    pub(crate) fn new() -> (Token, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        (Token(Arc::new(tx)), rx)
    }
}

/// A frame waiting for a connection's socket.
#[derive(Debug)]
pub(crate) struct Queued {
    pub(crate) encoded: Arc<Encoded>,
    /// Held for its drop, once the frame is written (or can no longer be).
    #[allow(dead_code)]
    pub(crate) token: Option<Token>,
}

/// What a connection's queue says besides its frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flow {
    Open,
    /// Write what is queued, then close (the session ended).
    Drain,
    /// Close now: the client stayed behind and its queue overflowed.
    Dead,
}

#[derive(Debug)]
struct Outbox {
    queue: VecDeque<Queued>,
    flow: Flow,
}

/// One client connection as the rest of the gateway sees it. Small on purpose: an idle
/// connection costs this, its task and its socket.
#[derive(Debug)]
pub(crate) struct Conn {
    pub(crate) id: u64,
    /// Set at login, taken back only when the login fails after it (its route bind).
    /// parking_lot: a short critical section, never held across an await.
    session: Mutex<Option<Arc<Session>>>,
    /// Whether pushes go as JSON (a WebSocket client that speaks text).
    json: AtomicBool,
    /// A short critical section per push or drain; parking_lot because it is never held
    /// across an await.
    outbox: Mutex<Outbox>,
    wake: Notify,
    /// When this connection last passed on a Typing (ms since the epoch).
    pub(crate) last_typing_ms: AtomicI64,
    /// The client's address, when known (see `Settings::trusted_proxies`).
    pub(crate) client: Option<std::net::IpAddr>,
}

impl Conn {
    /// A connection whose client's address is unknown.
    #[cfg(test)]
    pub(crate) fn new(id: u64) -> Arc<Conn> {
        Conn::from_client(id, None)
    }

    /// A connection whose client is at `client`.
    pub(crate) fn from_client(id: u64, client: Option<std::net::IpAddr>) -> Arc<Conn> {
        Arc::new(Conn {
            id,
            session: Mutex::new(None),
            json: AtomicBool::new(false),
            outbox: Mutex::new(Outbox {
                queue: VecDeque::new(),
                flow: Flow::Open,
            }),
            wake: Notify::new(),
            last_typing_ms: AtomicI64::new(0),
            client,
        })
    }

    pub(crate) fn session(&self) -> Option<Arc<Session>> {
        self.session.lock().clone()
    }

    /// Marks the connection authenticated; false when it was already.
    pub(crate) fn authenticate(&self, session: Arc<Session>) -> bool {
        let mut slot = self.session.lock();
        if slot.is_some() {
            return false;
        }
        *slot = Some(session);
        true
    }

    /// Takes back a login that failed after [`Conn::authenticate`].
    pub(crate) fn unauthenticate(&self) {
        *self.session.lock() = None;
    }

    pub(crate) fn set_json(&self, json: bool) {
        self.json.store(json, Ordering::Relaxed);
    }

    /// The form pushes take on a connection whose transport speaks `form`.
    pub(crate) fn push_form(&self, form: Form) -> Form {
        if form != Form::Frame && self.json.load(Ordering::Relaxed) {
            Form::Json
        } else {
            form
        }
    }

    /// Queues a push. When the queue is full the connection is condemned instead: its
    /// queue is dropped (the client syncs after reconnecting) and it closes. False when
    /// the push was not queued.
    pub(crate) fn push(&self, encoded: Arc<Encoded>, token: Option<Token>, max: usize) -> bool {
        let mut outbox = self.outbox.lock();
        if outbox.flow == Flow::Dead {
            return false;
        }
        if outbox.queue.len() >= max {
            outbox.flow = Flow::Dead;
            let dropped = std::mem::take(&mut outbox.queue);
            drop(outbox);
            drop(dropped);
            crate::stats::slow_reader_dropped();
            self.wake.notify_one();
            return false;
        }
        outbox.queue.push_back(Queued { encoded, token });
        drop(outbox);
        self.wake.notify_one();
        true
    }

    /// Queues a last frame (beyond the queue's limit) and closes after writing it.
    pub(crate) fn close_after(&self, encoded: Arc<Encoded>) {
        let mut outbox = self.outbox.lock();
        if outbox.flow == Flow::Dead {
            return;
        }
        outbox.queue.push_back(Queued {
            encoded,
            token: None,
        });
        outbox.flow = Flow::Drain;
        drop(outbox);
        self.wake.notify_one();
    }

    /// Moves the queued frames to `into`; says whether to go on.
    pub(crate) fn take(&self, into: &mut Vec<Queued>) -> Flow {
        let mut outbox = self.outbox.lock();
        into.extend(outbox.queue.drain(..));
        if outbox.queue.capacity() > 64 {
            // A burst grew it; an idle connection should not keep that.
            outbox.queue = VecDeque::new();
        }
        outbox.flow
    }

    pub(crate) fn flow(&self) -> Flow {
        self.outbox.lock().flow
    }

    /// Wakes the connection's task again (after a write took a wake-up meant for it).
    pub(crate) fn rewake(&self) {
        self.wake.notify_one();
    }

    /// Completes when something was queued (or the flow changed) since the last call.
    pub(crate) async fn woken(&self) {
        self.wake.notified().await;
    }
}

/// Friend lists of the users connected here, and the reverse: who here has a given user
/// as a friend (for presence pushes).
#[derive(Debug, Default)]
struct Friends {
    of: HashMap<u64, Box<[u64]>>,
    watchers: HashMap<u64, Vec<u64>>,
}

/// Shards of the registry; the session re-check visits one per tick.
pub(crate) const SHARDS: usize = 64;

/// One shard of the registry: user → connections.
type Shard = Mutex<HashMap<u64, Vec<Arc<Conn>>>>;

/// The connections of this gateway by user.
#[derive(Debug)]
pub(crate) struct Registry {
    /// Sharded so that logins and pushes on different users rarely contend; each lock is
    /// held for a map operation only, never across an await.
    shards: Box<[Shard]>,
    friends: Mutex<Friends>,
}

impl Default for Registry {
    fn default() -> Registry {
        Registry {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            friends: Mutex::default(),
        }
    }
}

impl Registry {
    fn shard(&self, user: u64) -> &Shard {
        &self.shards[(user % SHARDS as u64) as usize]
    }

    /// Adds an authenticated connection; true when it is the user's first here.
    pub(crate) fn add(&self, user: u64, conn: Arc<Conn>) -> bool {
        let mut shard = self.shard(user).lock();
        let conns = shard.entry(user).or_default();
        conns.push(conn);
        conns.len() == 1
    }

    /// Removes a connection; true when it was the user's last here.
    pub(crate) fn remove(&self, user: u64, conn: u64) -> bool {
        let mut shard = self.shard(user).lock();
        let Some(conns) = shard.get_mut(&user) else {
            return false;
        };
        conns.retain(|c| c.id != conn);
        if conns.is_empty() {
            shard.remove(&user);
            return true;
        }
        false
    }

    /// Every (user, device, kind) with a connection here, each once: the routes this
    /// gateway should hold.
    pub(crate) fn devices(&self) -> Vec<(u64, String, im_proto::DeviceKind)> {
        let mut devices = std::collections::HashSet::new();
        for shard in &self.shards {
            let shard = shard.lock();
            for conns in shard.values() {
                for session in conns.iter().filter_map(|c| c.session()) {
                    devices.insert((session.user, session.device.clone(), session.kind));
                }
            }
        }
        devices.into_iter().collect()
    }

    /// The (user, session id) of every connection in shard `index` (< [`SHARDS`]), each
    /// pair once.
    pub(crate) fn sessions_in(&self, index: usize) -> Vec<(u64, String)> {
        let mut sessions = std::collections::HashSet::new();
        if let Some(shard) = self.shards.get(index) {
            for conns in shard.lock().values() {
                for session in conns.iter().filter_map(|c| c.session()) {
                    sessions.insert((session.user, session.session.clone()));
                }
            }
        }
        sessions.into_iter().collect()
    }

    /// The user's connections here.
    pub(crate) fn conns(&self, user: u64) -> Vec<Arc<Conn>> {
        self.shard(user)
            .lock()
            .get(&user)
            .cloned()
            .unwrap_or_default()
    }

    /// Calls `f` with each of the user's connections here, under the shard's lock (so `f`
    /// must be short and must not touch the registry): a push to a big group allocates
    /// nothing per member this way.
    pub(crate) fn each(&self, user: u64, mut f: impl FnMut(&Arc<Conn>)) {
        if let Some(conns) = self.shard(user).lock().get(&user) {
            conns.iter().for_each(&mut f);
        }
    }

    /// Whether one of the user's connections here is on `device`.
    pub(crate) fn has_device(&self, user: u64, device: &str) -> bool {
        self.shard(user).lock().get(&user).is_some_and(|conns| {
            conns
                .iter()
                .any(|c| c.session().is_some_and(|s| s.device == device))
        })
    }

    /// Records `user`'s friends (when the user's first connection logs in).
    pub(crate) fn set_friends(&self, user: u64, friends: Vec<u64>) {
        let mut index = self.friends.lock();
        if index.of.contains_key(&user) {
            return;
        }
        for &friend in &friends {
            index.watchers.entry(friend).or_default().push(user);
        }
        index.of.insert(user, friends.into_boxed_slice());
    }

    /// Forgets `user`'s friends (when the user's last connection here is gone).
    pub(crate) fn forget_friends(&self, user: u64) {
        let mut index = self.friends.lock();
        let Some(friends) = index.of.remove(&user) else {
            return;
        };
        for friend in friends.iter() {
            if let Some(watchers) = index.watchers.get_mut(friend) {
                watchers.retain(|&w| w != user);
                if watchers.is_empty() {
                    index.watchers.remove(friend);
                }
            }
        }
    }

    /// Records a new friendship of `a` and `b`, for whichever of them is connected here.
    pub(crate) fn befriend(&self, a: u64, b: u64) {
        let mut index = self.friends.lock();
        for (user, friend) in [(a, b), (b, a)] {
            let Some(friends) = index.of.get_mut(&user) else {
                continue;
            };
            if friends.contains(&friend) {
                continue;
            }
            let mut grown = std::mem::take(friends).into_vec();
            grown.push(friend);
            *friends = grown.into_boxed_slice();
            index.watchers.entry(friend).or_default().push(user);
        }
    }

    /// Forgets the friendship of `a` and `b`.
    pub(crate) fn unfriend(&self, a: u64, b: u64) {
        let mut index = self.friends.lock();
        for (user, friend) in [(a, b), (b, a)] {
            let Some(friends) = index.of.get_mut(&user) else {
                continue;
            };
            if !friends.contains(&friend) {
                continue;
            }
            *friends = friends.iter().copied().filter(|&f| f != friend).collect();
            if let Some(watchers) = index.watchers.get_mut(&friend) {
                watchers.retain(|&w| w != user);
                if watchers.is_empty() {
                    index.watchers.remove(&friend);
                }
            }
        }
    }

    /// The users here who have `user` as a friend.
    pub(crate) fn watchers(&self, user: u64) -> Vec<u64> {
        self.friends
            .lock()
            .watchers
            .get(&user)
            .cloned()
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use im_proto::client::{Pong, server_message::Body};

    fn pong() -> Arc<Encoded> {
        Encoded::push(Body::Pong(Pong { server_time_ms: 1 }))
    }

    #[test]
    fn a_full_queue_condemns_the_connection_and_finishes_its_tokens() {
        let conn = Conn::new(1);
        let (token, mut done) = Token::new();
        assert!(conn.push(pong(), Some(token.clone()), 2));
        assert!(conn.push(pong(), Some(token), 2));
        assert!(done.try_recv().is_err(), "still queued");
        assert!(!conn.push(pong(), None, 2));
        assert_eq!(conn.flow(), Flow::Dead);
        assert!(matches!(
            done.try_recv(),
            Err(oneshot::error::TryRecvError::Closed)
        ));
        let mut taken = Vec::new();
        assert_eq!(conn.take(&mut taken), Flow::Dead);
        assert!(taken.is_empty());
    }

    #[test]
    fn friends_index_follows_logins() {
        let registry = Registry::default();
        registry.set_friends(1, vec![2, 3]);
        registry.set_friends(4, vec![2]);
        assert_eq!(registry.watchers(2), vec![1, 4]);
        registry.forget_friends(1);
        assert_eq!(registry.watchers(2), vec![4]);
        assert!(registry.watchers(3).is_empty());
        registry.befriend(4, 5);
        assert_eq!(registry.watchers(5), vec![4]);
        registry.unfriend(5, 4);
        assert!(registry.watchers(5).is_empty());
        assert_eq!(registry.watchers(2), vec![4]);
    }

    #[test]
    fn first_and_last_connection_of_a_user() {
        let registry = Registry::default();
        assert!(registry.add(7, Conn::new(1)));
        assert!(!registry.add(7, Conn::new(2)));
        assert!(!registry.remove(7, 1));
        assert!(registry.remove(7, 2));
        assert!(registry.conns(7).is_empty());
    }
}
