//! Subscriptions on Redis: one pub/sub connection per bus, run by one task that fans
//! messages out to the receivers of each channel.
//!
//! The task owns the connection and the table of channels, so subscribing, unsubscribing
//! and delivering never race: requests come in through a queue and are handled in order. A
//! channel is unsubscribed when its last receiver is dropped, and the task ends (closing the
//! connection) when no receiver is left; the next subscribe starts a new one. A lost
//! connection is reopened with backoff and its channels subscribed again; what was published
//! in between is missed, as pub/sub events are ephemeral.
//!
//! On a Redis Cluster the connection goes to one node: a `PUBLISH` on any node is forwarded
//! to every other over the cluster bus, so one node hears every channel. A process picks its
//! node at random and keeps it for as long as it answers: the forwarding is asynchronous, so
//! a new subscription on another node could still hear what was published before it. When
//! connecting to a node fails, the next attempt tries the next node given; the channels are
//! subscribed again there. (Sharded pub/sub, `SSUBSCRIBE`, would spread the load over the
//! nodes, at the price of one connection per node and following slot moves; one node's share
//! of the traffic is small next to the streams'.)

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use parking_lot::Mutex;
use redis::aio::{PubSub, PubSubSink};
use redis::{Client, Msg, RedisError, RedisResult};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::warn;

use super::{CONNECT_TIMEOUT, closed};

/// Messages queued per receiver before further ones are dropped for it.
const SUBSCRIBER_QUEUE: usize = 1024;
/// Subscribe requests queued for the task.
const REQUEST_QUEUE: usize = 64;
/// First and longest wait before reconnecting.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// A request to subscribe to one channel.
struct Request {
    channel: String,
    reply: oneshot::Sender<RedisResult<mpsc::Receiver<Bytes>>>,
}

/// The bus's side of the subscriber task: starts it when needed, aborts it when dropped.
pub(super) struct Handle {
    /// The servers to subscribe on, in the order to try them (never empty).
    nodes: Vec<Client>,
    /// The index (modulo the count) of the node to subscribe on, shared with the task,
    /// which moves it on when that node fails.
    node: Arc<AtomicUsize>,
    /// The running task and its queue. A parking_lot mutex: held only to look at or replace
    /// them, never across an `.await`.
    task: Mutex<Option<(mpsc::Sender<Request>, JoinHandle<()>)>>,
}

impl Handle {
    pub(super) fn new(nodes: Vec<Client>) -> Handle {
        Handle {
            nodes,
            // Processes start on different nodes of a cluster, spreading the load.
            node: Arc::new(AtomicUsize::new(rand::random::<u16>().into())),
            task: Mutex::new(None),
        }
    }

    /// A receiver of what is published on `channel` from now on.
    pub(super) async fn subscribe(&self, channel: String) -> RedisResult<mpsc::Receiver<Bytes>> {
        // A task whose last receiver just went ends without answering what it had queued:
        // once more, with a new task.
        for _ in 0..2 {
            let (reply, replied) = oneshot::channel();
            let request = Request {
                channel: channel.clone(),
                reply,
            };
            if self.requests().send(request).await.is_err() {
                continue;
            }
            if let Ok(result) = replied.await {
                return result;
            }
        }
        Err(closed())
    }

    /// The running task's queue, starting a task if none runs.
    fn requests(&self) -> mpsc::Sender<Request> {
        let mut task = self.task.lock();
        if let Some((requests, _)) = task.as_ref()
            && !requests.is_closed()
        {
            return requests.clone();
        }
        let (requests, queue) = mpsc::channel(REQUEST_QUEUE);
        let subscriber = Subscriber {
            nodes: self.nodes.clone(),
            node: Arc::clone(&self.node),
            requests: queue,
            channels: HashMap::new(),
            gone: FuturesUnordered::new(),
        };
        // The task this replaces (if any) has ended: its queue is closed.
        *task = Some((requests.clone(), tokio::spawn(subscriber.run())));
        requests
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        if let Some((_, task)) = self.task.get_mut().take() {
            task.abort();
        }
    }
}

/// How serving a connection ended.
enum End {
    /// No receiver is left (or the bus is gone): the task ends.
    Done,
    /// The connection failed: reconnect.
    Lost(RedisError),
}

struct Subscriber {
    nodes: Vec<Client>,
    /// The index (modulo the count) of the node to connect to.
    node: Arc<AtomicUsize>,
    requests: mpsc::Receiver<Request>,
    /// Channel → its receivers' senders; never an empty list.
    channels: HashMap<String, Vec<mpsc::Sender<Bytes>>>,
    /// One future per receiver, ready with its channel when the receiver is dropped.
    gone: FuturesUnordered<BoxFuture<'static, String>>,
}

impl Subscriber {
    async fn run(mut self) {
        let mut backoff = MIN_BACKOFF;
        loop {
            let err = match self.connect().await {
                Ok(pubsub) => match self.serve(pubsub).await {
                    End::Done => return,
                    End::Lost(err) => {
                        backoff = MIN_BACKOFF;
                        err
                    }
                },
                Err(err) => {
                    // That node may be down: the next time, another.
                    self.node.fetch_add(1, Ordering::Relaxed);
                    err
                }
            };
            warn!(cause = %err, "redis pub/sub connection failed; reconnecting");
            if !self.wait(backoff, &err).await {
                return;
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// A new connection, subscribed to every channel that has receivers.
    async fn connect(&mut self) -> RedisResult<PubSub> {
        let client = self
            .nodes
            .get(self.node.load(Ordering::Relaxed) % self.nodes.len().max(1))
            .ok_or_else(closed)?;
        let mut pubsub = tokio::time::timeout(CONNECT_TIMEOUT, client.get_async_pubsub())
            .await
            .map_err(|_| RedisError::from((redis::ErrorKind::Io, "pub/sub connect timed out")))??;
        for channel in self.channels.keys() {
            pubsub.subscribe(channel).await?;
        }
        Ok(pubsub)
    }

    async fn serve(&mut self, pubsub: PubSub) -> End {
        let (mut sink, mut messages) = pubsub.split();
        loop {
            let unsubscribe = tokio::select! {
                request = self.requests.recv() => {
                    let Some(request) = request else { return End::Done };
                    if let Err(err) = self.add(&mut sink, request).await {
                        return End::Lost(err);
                    }
                    None
                }
                message = messages.next() => match message {
                    Some(message) => self.deliver(&message),
                    None => return End::Lost(closed()),
                },
                Some(channel) = self.gone.next() => self.prune(channel),
            };
            if let Some(channel) = unsubscribe {
                if self.channels.is_empty() {
                    // Closing the connection unsubscribes.
                    return End::Done;
                }
                if let Err(err) = sink.unsubscribe(&channel).await {
                    return End::Lost(err);
                }
            }
        }
    }

    /// Waits `backoff` before reconnecting, answering requests with `err` meanwhile. False
    /// when the task should end instead: no receiver is left.
    async fn wait(&mut self, backoff: Duration, err: &RedisError) -> bool {
        let sleep = tokio::time::sleep(backoff);
        tokio::pin!(sleep);
        loop {
            while let Ok(request) = self.requests.try_recv() {
                let _ = request.reply.send(Err(err.clone()));
            }
            if self.channels.is_empty() {
                return false;
            }
            tokio::select! {
                () = &mut sleep => return true,
                request = self.requests.recv() => match request {
                    Some(request) => { let _ = request.reply.send(Err(err.clone())); }
                    None => return false,
                },
                Some(channel) = self.gone.next() => { self.prune(channel); }
            }
        }
    }

    /// Subscribes the connection to the request's channel if it is new, and answers it.
    async fn add(&mut self, sink: &mut PubSubSink, request: Request) -> RedisResult<()> {
        if !self.channels.contains_key(&request.channel)
            && let Err(err) = sink.subscribe(&request.channel).await
        {
            let _ = request.reply.send(Err(err.clone()));
            return Err(err);
        }
        let (tx, rx) = mpsc::channel(SUBSCRIBER_QUEUE);
        let watch = tx.clone();
        let channel = request.channel.clone();
        self.gone.push(
            async move {
                watch.closed().await;
                channel
            }
            .boxed(),
        );
        self.channels.entry(request.channel).or_default().push(tx);
        // A subscriber that stopped waiting dropped its receiver: its watch fires.
        let _ = request.reply.send(Ok(rx));
        Ok(())
    }

    /// Hands `message` to its channel's receivers; returns the channel when none is left.
    fn deliver(&mut self, message: &Msg) -> Option<String> {
        let channel = message.get_channel_name();
        let receivers = self.channels.get_mut(channel)?;
        let payload = Bytes::copy_from_slice(message.get_payload_bytes());
        // A full receiver misses this event (events are ephemeral); a gone one is removed.
        receivers
            .retain(|tx| !matches!(tx.try_send(payload.clone()), Err(TrySendError::Closed(_))));
        self.forget_if_empty(channel)
    }

    /// Drops the gone receivers of `channel`; returns it when none is left.
    fn prune(&mut self, channel: String) -> Option<String> {
        self.channels
            .get_mut(&channel)?
            .retain(|tx| !tx.is_closed());
        self.forget_if_empty(&channel)
    }

    fn forget_if_empty(&mut self, channel: &str) -> Option<String> {
        if self.channels.get(channel).is_some_and(Vec::is_empty) {
            self.channels.remove(channel);
            return Some(channel.to_owned());
        }
        None
    }
}
