//! Group commit: concurrent sends share one transaction.
//!
//! Sends are spread over `shards` committer tasks by conversation, so one conversation's
//! sends are serialised (by the task that owns it) while busy conversations on other shards
//! commit in parallel. Each task takes whatever has queued up while its previous transaction
//! ran (up to `max_batch`) and stores it with one [`MessageStore::commit`]: the more load, the
//! bigger the batches and the fewer fsyncs per message. A send is answered only after its
//! transaction committed; then its push is handed to the [`Pusher`].

use std::sync::Arc;

use futures::future::AbortHandle;
use im_common::ids::MsgIds;
use im_common::store::Dialect;
use im_common::store::Sql;
use im_common::store::messages::{NewMessage, Outcome};
use mprpc::Status;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::warn;

use crate::push::{Push, Pusher};
use crate::shard::conversation_shard;

/// Sends queued per shard before callers wait for room.
const QUEUE: usize = 4096;

struct Job {
    message: NewMessage,
    device: String,
    /// Taken when answered.
    reply: Option<oneshot::Sender<Result<Outcome, Status>>>,
}

/// The committer tasks and the queues into them.
pub(crate) struct Committer {
    shards: Vec<mpsc::Sender<Job>>,
    tasks: Vec<Task>,
}

/// Where a committer runs.
enum Task {
    /// A task on the shared runtime (MySQL/MariaDB: its statements are network round trips
    /// that the runtime's I/O driver serves anyway).
    Tokio(JoinHandle<()>),
    /// A thread of its own, with a runtime of its own, ending when its queue closes.
    ///
    /// On SQLite every statement is a round trip to the connection's worker thread, and a
    /// commit is several statements. From the shared runtime, each reply waits until a
    /// worker busy with thousands of connections comes back to the task (the wake-up from
    /// another thread queues behind them); on its own thread the committer takes it at once.
    /// Measured at 10,000 msgs/s: see BENCHMARKS.md.
    Thread(AbortHandle),
}

/// Runs `job` on a thread named `mpim-committer` with a current-thread runtime, or on the
/// shared runtime if that thread cannot be had.
fn on_own_thread(job: impl Future<Output = ()> + Send + 'static) -> AbortHandle {
    let (job, handle) = futures::future::abortable(job);
    // The thread takes the job from here; if it is never started, the job is still here.
    let slot = Arc::new(Mutex::new(Some(job)));
    let theirs = slot.clone();
    let started = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .and_then(|runtime| {
            std::thread::Builder::new()
                .name("mpim-committer".into())
                .spawn(move || {
                    let job = theirs.lock().take();
                    if let Some(job) = job {
                        let _ = runtime.block_on(job);
                    }
                })
        });
    if let Err(err) = started {
        warn!(cause = %err, "no committer thread; committing on the shared runtime");
        if let Some(job) = slot.lock().take() {
            tokio::spawn(job);
        }
    }
    handle
}

impl Committer {
    /// Starts `shards` committer tasks on `sql`.
    pub(crate) fn start(
        sql: Sql,
        ids: Arc<MsgIds>,
        pusher: Pusher,
        shards: usize,
        max_batch: usize,
    ) -> Committer {
        let mut queues = Vec::with_capacity(shards);
        let mut tasks = Vec::with_capacity(shards);
        for _ in 0..shards.max(1) {
            let (tx, rx) = mpsc::channel(QUEUE);
            queues.push(tx);
            let job = run(
                sql.clone(),
                ids.clone(),
                pusher.clone(),
                rx,
                max_batch.max(1),
            );
            if sql.dialect() == Dialect::Sqlite {
                tasks.push(Task::Thread(on_own_thread(job)));
            } else {
                tasks.push(Task::Tokio(tokio::spawn(job)));
            }
        }
        Committer {
            shards: queues,
            tasks,
        }
    }

    /// Stores `message` (sent from `device`) and returns its outcome once committed.
    ///
    /// # Errors
    /// `UNAVAILABLE` when the database failed (nothing was stored) or the service is
    /// stopping.
    pub(crate) async fn submit(
        &self,
        message: NewMessage,
        device: String,
    ) -> Result<Outcome, Status> {
        let shard = conversation_shard(&message.conversation.to_string(), self.shards.len());
        let (reply, outcome) = oneshot::channel();
        self.shards[shard]
            .send(Job {
                message,
                device,
                reply: Some(reply),
            })
            .await
            .map_err(|_| Status::unavailable("message service is stopping"))?;
        outcome
            .await
            .map_err(|_| Status::unavailable("message service is stopping"))?
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        for task in &self.tasks {
            match task {
                Task::Tokio(handle) => handle.abort(),
                Task::Thread(handle) => handle.abort(),
            }
        }
    }
}

async fn run(
    sql: Sql,
    ids: Arc<MsgIds>,
    pusher: Pusher,
    mut queue: mpsc::Receiver<Job>,
    max_batch: usize,
) {
    let mut jobs = Vec::with_capacity(max_batch);
    while queue.recv_many(&mut jobs, max_batch).await > 0 {
        // A caller that gave up (deadline, disconnect) is still committed: its resend will
        // find the message and get the same ack.
        let batch: Vec<NewMessage> = jobs.iter().map(|job| job.message.clone()).collect();
        metrics::histogram!("mpim_message_commit_batch_size").record(batch.len() as f64);
        let next_id = || ids.next();
        // A message the database refuses fails alone; the rest of its batch is stored.
        for (range, result) in sql.commit_in_parts(&batch, &next_id).await {
            let jobs = &mut jobs[range];
            match result {
                Ok(outcomes) => answer(jobs, outcomes, &pusher),
                Err(err) => {
                    warn!(cause = %err, messages = jobs.len(), "commit failed; nothing stored");
                    metrics::counter!("mpim_message_commit_failures_total").increment(1);
                    let status = if err.is_refused() && jobs.len() == 1 {
                        // Refused alone: sending it again would be refused again.
                        Status::internal("this message cannot be stored")
                    } else {
                        Status::from(err)
                    };
                    for job in jobs {
                        if let Some(reply) = job.reply.take() {
                            let _ = reply.send(Err(status.clone()));
                        }
                    }
                }
            }
        }
        jobs.clear();
    }
}

/// Answers the jobs of a committed part and hands their messages to the pusher: what was
/// stored now, and what a resend found stored by an earlier commit. The first commit's
/// push may never have been made (the service stopped between commit and push), and
/// nothing records that it was: so a resend pushes again, and clients drop a message they
/// hold already by its msg_id. A repeat inside this part is not pushed twice.
fn answer(jobs: &mut [Job], outcomes: Vec<Outcome>, pusher: &Pusher) {
    // Only a part with a resend in it needs to know what it stored itself.
    let resent = outcomes.iter().any(|o| matches!(o, Outcome::Duplicate(_)));
    let stored_now: std::collections::HashSet<u64> = outcomes
        .iter()
        .filter(|_| resent)
        .filter_map(|o| match o {
            Outcome::Stored(message) => Some(message.msg_id),
            Outcome::Duplicate(_) => None,
        })
        .collect();
    for (job, outcome) in jobs.iter_mut().zip(outcomes) {
        let push = match &outcome {
            Outcome::Stored(message) => {
                metrics::counter!("mpim_messages_stored_total").increment(1);
                Some(message)
            }
            Outcome::Duplicate(message) => {
                metrics::counter!("mpim_message_resends_total").increment(1);
                (!stored_now.contains(&message.msg_id)).then_some(message)
            }
        };
        if let Some(message) = push {
            pusher.push(Push {
                message: message.clone(),
                sender_device: job.device.clone(),
            });
        }
        if let Some(reply) = job.reply.take() {
            let _ = reply.send(Ok(outcome));
        }
    }
}
