//! This gateway's delivery stream: chat messages for its users' devices, acknowledged only
//! once every push of an entry is written to its socket (or its connection is gone).
//!
//! A reader takes entries (first those an earlier run read and did not acknowledge, then
//! new ones), queues their pushes with a [`Token`] per batch, and hands the batch to an
//! acknowledger, which waits for the batch's tokens to be dropped and acknowledges it.
//! An earlier run's entries are read before any client can have connected to this one, so
//! they find no connection and are acknowledged at once: the clients they were for sync
//! what they missed when they reconnect.
//! Reads are never cancelled midway (an entry read and not seen would wait for the next
//! restart): the reader stops only between reads.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use im_common::bus::{ReadFrom, StreamEntry, delivery_stream};
use im_proto::client::server_message::Body;
use im_proto::client::{Edited, Recalled};
use im_proto::{Delivery, MessageKind};
use prost::Message as _;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::Shared;
use crate::registry::Token;
use crate::wire::Encoded;

/// How long one read waits for new entries.
const BLOCK: Duration = Duration::from_millis(500);
/// Pause after a failed bus call.
const RETRY: Duration = Duration::from_millis(500);
/// Pause before acknowledging again entries whose acknowledgement failed three times.
const ACK_RETRY: Duration = Duration::from_secs(2);

/// A batch read and pushed, waiting to be written everywhere.
struct Batch {
    ids: Vec<String>,
    written: oneshot::Receiver<()>,
}

/// Reads and pushes until `stop`, then acknowledges what was written.
pub(crate) async fn run(shared: Arc<Shared>, stop: CancellationToken) {
    let (batches, pending) = mpsc::channel(4);
    let acker = acknowledge(shared.clone(), pending);
    let reader = async {
        read(&shared, ReadFrom::Pending, &batches, &stop).await;
        read(&shared, ReadFrom::New, &batches, &stop).await;
        drop(batches);
    };
    futures::future::join(reader, acker).await;
}

/// Reads entries `from` until there are none (Pending) or until `stop` (New).
async fn read(
    shared: &Shared,
    from: ReadFrom,
    batches: &mpsc::Sender<Batch>,
    stop: &CancellationToken,
) {
    let stream = delivery_stream(&shared.id);
    let block = if from == ReadFrom::Pending {
        Duration::ZERO
    } else {
        BLOCK
    };
    while !stop.is_cancelled() {
        let read = shared
            .bus
            .streams
            .read(
                stream.clone(),
                shared.id.clone(),
                from,
                shared.settings.delivery_batch,
                block,
            )
            .await;
        let entries = match read {
            Ok(entries) => entries,
            Err(err) => {
                warn!(cause = %err, "delivery stream not read");
                tokio::select! {
                    () = tokio::time::sleep(RETRY) => continue,
                    () = stop.cancelled() => return,
                }
            }
        };
        if entries.is_empty() {
            if from == ReadFrom::Pending {
                return;
            }
            continue;
        }
        let batch = deliver(shared, &entries);
        if from == ReadFrom::Pending {
            // Pending entries are returned until acknowledged: finish these before
            // asking again.
            let _ = batch.written.await;
            // Not acknowledged: the next read returns them again, and they are retried.
            let _ = ack(shared, batch.ids).await;
        } else if batches.send(batch).await.is_err() {
            return;
        }
    }
}

/// Acknowledges each batch once its pushes are written, in whatever order that happens (a
/// slow reader's batch holds up no other). Beyond `max_pending_deliveries` entries waiting,
/// it takes no more batches, which stops the reader; a blocked socket gives up its
/// tokens within the write timeout at most. Entries whose acknowledgement failed (the bus
/// was down) are kept, still counted as waiting, and acknowledged again every
/// [`ACK_RETRY`] until the bus takes them: left pending, they would be read and pushed
/// again at the next restart.
async fn acknowledge(shared: Arc<Shared>, mut incoming: mpsc::Receiver<Batch>) {
    let limit = shared.settings.max_pending_deliveries;
    let mut waiting = FuturesUnordered::new();
    let mut failed: Vec<String> = Vec::new();
    let mut entries = 0;
    let mut open = true;
    loop {
        tokio::select! {
            batch = incoming.recv(), if open && entries < limit => match batch {
                Some(Batch { ids, written }) => {
                    entries += ids.len();
                    // The sender is never used: the channel closes when the last token is
                    // dropped.
                    waiting.push(async move {
                        let _ = written.await;
                        ids
                    });
                }
                None => open = false,
            },
            Some(ids) = waiting.next(), if !waiting.is_empty() => {
                match ack(&shared, ids).await {
                    Ok(done) => entries -= done,
                    Err(ids) => failed.extend(ids),
                }
            }
            () = tokio::time::sleep(ACK_RETRY), if !failed.is_empty() => {
                match ack(&shared, std::mem::take(&mut failed)).await {
                    Ok(done) => entries -= done,
                    Err(ids) => failed = ids,
                }
            }
            else => return,
        }
    }
}

/// Queues the pushes of `entries` on the connections of their users here.
fn deliver(shared: &Shared, entries: &[StreamEntry]) -> Batch {
    let (token, written) = Token::new();
    for entry in entries {
        let delivery = match Delivery::decode(entry.payload.clone()) {
            Ok(delivery) => delivery,
            Err(err) => {
                warn!(cause = %err, id = entry.id, "undecodable delivery skipped");
                continue;
            }
        };
        let Some(message) = delivery.message else {
            continue;
        };
        let body = match MessageKind::try_from(message.kind) {
            Ok(MessageKind::Recall) => Body::Recalled(Recalled {
                event: Some(message),
            }),
            Ok(MessageKind::Edit) => Body::Edited(Edited {
                event: Some(message),
            }),
            _ => Body::Message(message),
        };
        let push = Encoded::push(body);
        for &user in &delivery.user_ids {
            shared.registry.each(user, |conn| {
                let Some(session) = conn.session() else {
                    return;
                };
                // The sending device has the ack; its user's other devices get the push.
                if user == delivery.sender_id && session.device == delivery.sender_device_id {
                    return;
                }
                conn.push(
                    push.clone(),
                    Some(token.clone()),
                    shared.settings.max_queued,
                );
            });
        }
    }
    Batch {
        ids: entries.iter().map(|e| e.id.clone()).collect(),
        written,
    }
}

/// Acknowledges `ids`, trying three times; how many on success, the ids back on
/// failure.
async fn ack(shared: &Shared, ids: Vec<String>) -> Result<usize, Vec<String>> {
    let stream = delivery_stream(&shared.id);
    for attempt in 0..3 {
        match shared.bus.streams.ack(stream.clone(), ids.clone()).await {
            Ok(()) => return Ok(ids.len()),
            Err(err) if attempt == 2 => {
                warn!(cause = %err, entries = ids.len(), "delivery entries not acknowledged; trying again later");
            }
            Err(_) => tokio::time::sleep(RETRY).await,
        }
    }
    Err(ids)
}
