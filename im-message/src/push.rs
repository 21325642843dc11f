//! Fan-out: after a message is stored, one delivery-stream entry per gateway that holds a
//! device of one of its recipients.
//!
//! Pushes are a fast path. The queue into each pusher task is bounded; when it is full, or
//! Redis fails, the push is dropped and counted, and the recipients find the message at
//! their next sync. A push never fails or delays a send. Pushes are spread over the tasks by
//! conversation, so one conversation's pushes leave in seq order.

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use im_common::bus::{Bus, delivery_stream, fanout, keys, read_ids_through};
use im_common::ids::ConversationId;
use im_common::proto::{ChatMessage, Delivery};
use im_common::store::Sql;
use im_common::store::groups::GroupStore;
use prost::Message as _;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::shard::conversation_shard;

/// How long a group's member list stays cached (writes to the group invalidate it sooner).
const MEMBERS_TTL: Duration = Duration::from_secs(60);

/// A stored message to deliver.
#[derive(Debug, Clone)]
pub(crate) struct Push {
    pub(crate) message: ChatMessage,
    /// The device it was sent from: it has the ack, so it gets no push.
    pub(crate) sender_device: String,
}

/// The queues into the pusher tasks.
#[derive(Clone)]
pub(crate) struct Pusher {
    queues: Vec<mpsc::Sender<Push>>,
}

/// The pusher tasks; aborted when dropped.
pub(crate) struct PushTasks(Vec<JoinHandle<()>>);

impl Drop for PushTasks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

impl Pusher {
    /// Starts `tasks` pushers with `queue` pushes of room each.
    pub(crate) fn start(sql: Sql, bus: Bus, tasks: usize, queue: usize) -> (Pusher, PushTasks) {
        let mut queues = Vec::new();
        let mut handles = Vec::new();
        for _ in 0..tasks.max(1) {
            let (tx, rx) = mpsc::channel(queue.max(1));
            queues.push(tx);
            handles.push(tokio::spawn(run(sql.clone(), bus.clone(), rx)));
        }
        (Pusher { queues }, PushTasks(handles))
    }

    /// Queues `push`, or drops it when its queue is full.
    pub(crate) fn push(&self, push: Push) {
        let shard = conversation_shard(&push.message.conversation_id, self.queues.len());
        if self.queues[shard].try_send(push).is_err() {
            metrics::counter!("mpim_push_dropped_total").increment(1);
            debug!("push queue full; recipients will sync");
        }
    }
}

/// Pushes taken from a queue at once: one routes query and one round of stream appends for
/// all of them.
const BATCH: usize = 128;

async fn run(sql: Sql, bus: Bus, mut queue: mpsc::Receiver<Push>) {
    let mut batch = Vec::with_capacity(BATCH);
    while queue.recv_many(&mut batch, BATCH).await > 0 {
        if let Err(err) = deliver(&sql, &bus, &batch).await {
            metrics::counter!("mpim_push_failures_total").increment(batch.len() as u64);
            warn!(cause = %err, pushes = batch.len(), "push failed; recipients will sync");
        }
        batch.clear();
    }
}

/// One stream entry per (message, gateway holding a recipient), appended in the order of
/// `pushes`.
async fn deliver(sql: &Sql, bus: &Bus, pushes: &[Push]) -> anyhow::Result<()> {
    let mut recipients_of = Vec::with_capacity(pushes.len());
    let mut everyone = BTreeSet::new();
    for push in pushes {
        let recipients = recipients(sql, bus, &push.message).await?;
        everyone.extend(recipients.iter().copied());
        recipients_of.push(recipients);
    }
    let gateways_of =
        fanout::gateways_by_user(bus.routes.query(everyone.into_iter().collect()).await?);
    let mut appends = Vec::new();
    for (push, recipients) in pushes.iter().zip(recipients_of) {
        for (gateway, user_ids) in fanout::by_gateway(recipients, &gateways_of) {
            let delivery = Delivery {
                user_ids,
                message: Some(push.message.clone()),
                sender_id: push.message.sender_id,
                sender_device_id: push.sender_device.clone(),
            };
            let payload = Bytes::from(delivery.encode_to_vec());
            appends.push(bus.streams.push(delivery_stream(gateway), payload));
        }
    }
    // The appends go out together: on Redis they are queued on one multiplexed connection
    // in this order, so each stream still gets one conversation's messages in seq order (and
    // a client that saw them out of order would find a gap and sync: seqs are the truth).
    let mut failed = None;
    for appended in futures::future::join_all(appends).await {
        match appended {
            Ok(_) => metrics::counter!("mpim_push_entries_total").increment(1),
            Err(err) => failed = Some(err),
        }
    }
    match failed {
        Some(err) => Err(err.into()),
        None => Ok(()),
    }
}

/// Everyone who should see the message: both users of a direct conversation, every member of
/// a group (the sender included, for their other devices).
async fn recipients(sql: &Sql, bus: &Bus, message: &ChatMessage) -> anyhow::Result<Vec<u64>> {
    match ConversationId::parse(&message.conversation_id)? {
        ConversationId::Direct(a, b) => Ok(vec![a, b]),
        ConversationId::Group(group) => Ok(group_members(sql, bus, group).await?),
    }
}

/// A group's member ids, from the cache when it has them. A read that began before a
/// membership change never fills the cache after the change's invalidation: a kicked
/// member gets no push of a message sent after the kick was acknowledged.
pub(crate) async fn group_members(
    sql: &Sql,
    bus: &Bus,
    group: u64,
) -> Result<Vec<u64>, im_common::StoreError> {
    read_ids_through(
        bus.cache.as_ref(),
        keys::members(group),
        MEMBERS_TTL,
        || sql.member_ids(group),
    )
    .await
}
