//! The response bytes a connection has queued and not yet written, counted per connection
//! (past its cap the connection stops reading) and server-wide (past the server's cap new
//! calls are shed).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{Notify, mpsc};

use super::Shared;
use crate::transport::Outbound;

/// Response bytes a connection has queued and not yet written; past its cap the connection
/// stops reading until the writer catches up.
pub(super) struct Queued {
    bytes: AtomicUsize,
    cap: usize,
    /// Woken when the writer brings the connection back under its cap.
    pub(super) drained: Notify,
}

impl Queued {
    pub(super) fn new(cap: usize) -> Queued {
        Queued {
            bytes: AtomicUsize::new(0),
            cap,
            drained: Notify::new(),
        }
    }

    pub(super) fn is_full(&self) -> bool {
        self.bytes.load(Ordering::Relaxed) > self.cap
    }
}

/// What the writer calls with the bytes it wrote: counts them no longer queued, and wakes
/// the read loop when that brings the connection back under its cap.
pub(super) fn released(
    queued: Arc<Queued>,
    shared: Arc<Shared>,
) -> impl Fn(usize) + Send + 'static {
    move |bytes: usize| {
        if bytes == 0 {
            return;
        }
        let before = uncount(&queued, &shared, bytes);
        if before > queued.cap && before - bytes <= queued.cap {
            queued.drained.notify_one();
        }
    }
}

/// The server-wide count of queued bytes moves in steps of this many bytes, when a
/// connection's own count crosses a multiple of it: small responses then touch only their
/// connection's counter, and the server-wide one is off by less than a step per connection.
const GRAIN: usize = 4 * 1024;

/// Counts `bytes` more queued on `queued` and, by whole steps, on the server.
fn count(queued: &Queued, shared: &Shared, bytes: usize) {
    let before = queued.bytes.fetch_add(bytes, Ordering::Relaxed);
    let grains = (before + bytes) / GRAIN - before / GRAIN;
    if grains > 0 {
        shared.queued.fetch_add(grains * GRAIN, Ordering::Relaxed);
    }
}

/// Queues `out` for the writer, counting its bytes as queued until the writer has written
/// them.
pub(super) async fn queue(
    tx: &mpsc::Sender<Outbound>,
    queued: &Queued,
    shared: &Shared,
    out: Outbound,
) {
    let weight = out.weight();
    count(queued, shared, weight);
    if let Err(mpsc::error::SendError(out)) = tx.send(out).await {
        // The writer is gone and will never release these; drop them as it would have.
        drop(out);
        uncount(queued, shared, weight);
    }
}

/// Counts `bytes` fewer queued, the reverse of [`count`]; returns the connection's count
/// before.
fn uncount(queued: &Queued, shared: &Shared, bytes: usize) -> usize {
    let before = queued.bytes.fetch_sub(bytes, Ordering::Relaxed);
    let grains = before / GRAIN - (before - bytes) / GRAIN;
    if grains > 0 {
        shared.queued.fetch_sub(grains * GRAIN, Ordering::Relaxed);
    }
    before
}
