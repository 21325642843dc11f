//! The `soak` run: friend pairs chatting through the client SDK (`im-client`) at a steady
//! rate while the cluster is hurt, to show that nothing acknowledged is lost or shown twice
//! and how long service takes to come back.
//!
//! Unlike `pairs`, which speaks the protocol directly on connections that must not drop,
//! these clients behave like real ones through a fault: they reconnect (with a short
//! backoff: `--reconnect-max-ms`), resume, sync what they missed and resend what has no ack
//! (the same `client_msg_id`, so a resend never stores twice). "Shown twice" is counted on
//! what the SDK hands the application. Each send's start, end and outcome can be written to
//! a CSV file (`--record`) from which `scripts/drills.sh` reads the time to recover.
//!
//! Beside the sends, ten times a second one of the users looks its friend up by name (a
//! read that goes to the database replica when there is one): `reads` and `reads_failed`
//! say whether lookups kept working through the fault.

use std::collections::HashMap;
use std::fmt;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use hdrhistogram::Histogram;
use im_client::{Client, Event, Events, Options};
use parking_lot::Mutex;
use tokio::task::JoinSet;

/// What a soak run does.
#[derive(Debug, Clone)]
pub struct SoakRun {
    /// The gateway, as the SDK takes it (`host:port`, `ws://…`).
    pub address: String,
    /// Start of every user name.
    pub prefix: String,
    /// Every user's password.
    pub password: String,
    /// Friend pairs; each user sends to its friend.
    pub pairs: usize,
    /// Messages per second, all users together.
    pub rate: u64,
    /// Seconds of sending.
    pub seconds: u64,
    /// The longest pause between a client's reconnect attempts.
    pub reconnect_max: Duration,
    /// How long a send may wait for its ack, outages included.
    pub send_timeout: Duration,
    /// Most time to wait after sending for every acknowledged message to arrive.
    pub drain: Duration,
    /// Where to write `start_ms,end_ms,ok` for every send.
    pub record: Option<PathBuf>,
    /// A CA certificate (PEM) to trust besides the public ones, for `tls://` and `wss://`.
    pub ca: Option<PathBuf>,
}

/// Friend lookups by name per second, all users together.
const READS_PER_SEC: u32 = 10;

/// One user: its client, its friend's id and name, and the ids of the messages it received.
struct User {
    client: Client,
    id: u64,
    peer: u64,
    peer_name: String,
    received: Arc<Mutex<HashMap<u64, u32>>>,
}

/// One send's outcome.
struct Sent {
    start_ms: u64,
    end_ms: u64,
    /// The acknowledged message id.
    acked: Option<u64>,
    /// The sender's index.
    from: usize,
}

/// What a soak run saw.
#[derive(Debug, Default)]
pub struct SoakReport {
    users: usize,
    sent: u64,
    acked: u64,
    failed: u64,
    delivered: u64,
    lost: u64,
    dup: u64,
    latency: Option<Histogram<u64>>,
    reads: u64,
    reads_failed: u64,
}

impl SoakReport {
    /// Whether nothing acknowledged was lost and nothing was shown twice.
    pub fn passed(&self) -> bool {
        self.lost == 0 && self.dup == 0
    }
}

impl fmt::Display for SoakReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let q = |q: f64| self.latency.as_ref().map_or(0, |h| h.value_at_quantile(q));
        write!(
            f,
            "RESULT mode=soak connections={} sent={} acked={} failed={} delivered={} lost={} \
             dup={} p50_ms={} p99_ms={} max_ms={} reads={} reads_failed={}",
            self.users,
            self.sent,
            self.acked,
            self.failed,
            self.delivered,
            self.lost,
            self.dup,
            q(0.5),
            q(0.99),
            q(1.0),
            self.reads,
            self.reads_failed,
        )
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Runs `run`; the report says whether anything acknowledged was lost or doubled.
///
/// # Errors
/// When the users cannot be set up (the gateway is not there, registration fails).
pub async fn soak(run: &SoakRun) -> anyhow::Result<SoakReport> {
    let users = setup(run).await?;
    eprintln!("soak: {} users in {} pairs ready", users.len(), run.pairs);
    let users = Arc::new(users);
    let stop_reading = tokio_util::sync::CancellationToken::new();
    let reader = tokio::spawn(read_all(users.clone(), stop_reading.clone()));
    let sent = send_all(run, &users).await;
    stop_reading.cancel();
    let (reads, reads_failed) = reader.await.unwrap_or_default();
    let acked: Vec<(usize, u64)> = sent
        .iter()
        .filter_map(|s| s.acked.map(|id| (s.from, id)))
        .collect();
    // Wait until every acknowledged message reached its recipient (or the drain ends).
    let not_received = || -> Vec<(usize, u64)> {
        acked
            .iter()
            .filter(|(from, id)| !users[from ^ 1].received.lock().contains_key(id))
            .copied()
            .collect()
    };
    let deadline = Instant::now() + run.drain;
    let missing = loop {
        let missing = not_received();
        if missing.is_empty() || Instant::now() > deadline {
            break missing;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for (from, id) in missing.iter().take(10) {
        eprintln!(
            "soak: lost: message {id} from user {} to user {}",
            users[*from].id,
            users[from ^ 1].id
        );
    }
    if let Some(path) = &run.record {
        write_record(path, &sent)?;
    }
    let mut latency = Histogram::<u64>::new(3).context("histogram")?;
    for s in sent.iter().filter(|s| s.acked.is_some()) {
        latency.saturating_record(s.end_ms.saturating_sub(s.start_ms));
    }
    let (delivered, dup) = users.iter().fold((0, 0), |(d, x), user| {
        let received = user.received.lock();
        let dup: u64 = received.values().map(|&n| u64::from(n - 1)).sum();
        (d + received.len() as u64, x + dup)
    });
    Ok(SoakReport {
        users: users.len(),
        sent: sent.len() as u64,
        acked: acked.len() as u64,
        failed: (sent.len() - acked.len()) as u64,
        delivered,
        lost: missing.len() as u64,
        dup,
        latency: Some(latency),
        reads,
        reads_failed,
    })
}

/// Looks friends up by name, [`READS_PER_SEC`] times a second, until `stop`; the lookups
/// made and those that failed or did not find the friend.
async fn read_all(users: Arc<Vec<User>>, stop: tokio_util::sync::CancellationToken) -> (u64, u64) {
    let mut tick = tokio::time::interval(Duration::from_secs(1) / READS_PER_SEC);
    let (mut reads, mut failed) = (0u64, 0u64);
    for n in 0usize.. {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => break,
        }
        let user = &users[n % users.len()];
        reads += 1;
        match user.client.search_user(&user.peer_name).await {
            Ok(found) if found.profiles.iter().any(|p| p.user_id == user.peer) => {}
            outcome => {
                failed += 1;
                eprintln!("soak: looking up {} failed: {outcome:?}", user.peer_name);
            }
        }
    }
    (reads, failed)
}

/// Registers and logs in every user, and makes each pair friends.
async fn setup(run: &SoakRun) -> anyhow::Result<Vec<User>> {
    let limit = Arc::new(tokio::sync::Semaphore::new(16));
    let mut tasks = JoinSet::new();
    for i in 0..run.pairs * 2 {
        let (run, limit) = (run.clone(), limit.clone());
        tasks.spawn(async move {
            let _permit = limit.acquire_owned().await?;
            let name = format!("{}-{i}", run.prefix);
            let mut options = Options::new(run.address.clone());
            options.device_id = format!("soak-{i}");
            options.send_timeout = run.send_timeout;
            options.reconnect_min = Duration::from_millis(100);
            options.reconnect_max = run.reconnect_max;
            options.ca_file = run.ca.clone();
            let (client, events) = Client::connect(options).await?;
            client.register(&name, &run.password).await?;
            let session = client.login(&name, &run.password).await?;
            anyhow::Ok((i, client, events, session.user_id))
        });
    }
    let mut made = Vec::new();
    while let Some(done) = tasks.join_next().await {
        made.push(done??);
    }
    made.sort_by_key(|(i, ..)| *i);
    let mut users = Vec::with_capacity(made.len());
    let ids: Vec<u64> = made.iter().map(|(_, _, _, id)| *id).collect();
    for (i, client, events, id) in made {
        let received = Arc::new(Mutex::new(HashMap::new()));
        tokio::spawn(receive(events, id, received.clone()));
        users.push(User {
            client,
            id,
            peer: ids[i ^ 1],
            peer_name: format!("{}-{}", run.prefix, i ^ 1),
            received,
        });
    }
    for pair in users.chunks(2) {
        let request = pair[0].client.add_friend(pair[1].id, "soak").await?;
        pair[1]
            .client
            .respond_friend(request.request_id, true)
            .await?;
    }
    Ok(users)
}

/// Counts every message from others that the SDK hands over, by message id.
async fn receive(mut events: Events, me: u64, received: Arc<Mutex<HashMap<u64, u32>>>) {
    while let Some(event) = events.recv().await {
        if let Event::Message(message) = event {
            if message.sender_id != me {
                *received.lock().entry(message.msg_id).or_insert(0) += 1;
            }
        }
    }
}

/// Sends at `run.rate` for `run.seconds`, each send in its own task so that an outage
/// holds up the sends it hits but not the schedule; waits for every send to end.
async fn send_all(run: &SoakRun, users: &Arc<Vec<User>>) -> Vec<Sent> {
    let results = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = JoinSet::new();
    let total = run.rate * run.seconds;
    let gap = Duration::from_secs(1) / u32::try_from(run.rate.max(1)).unwrap_or(u32::MAX);
    let mut tick = tokio::time::interval(gap);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut last_report = Instant::now();
    for n in 0..total {
        tick.tick().await;
        let from = (n as usize) % users.len();
        let (users, record) = (users.clone(), results.clone());
        tasks.spawn(async move {
            let user = &users[from];
            let start_ms = now_ms();
            let outcome = user.client.send(user.peer, &format!("soak {n}")).await;
            record.lock().push(Sent {
                start_ms,
                end_ms: now_ms(),
                acked: outcome.ok().map(|ack| ack.msg_id),
                from,
            });
        });
        if last_report.elapsed() >= Duration::from_secs(1) {
            last_report = Instant::now();
            let done = results.lock();
            let ok = done.iter().filter(|s| s.acked.is_some()).count();
            eprintln!(
                "soak: sent {n} of {total}, acked {ok}, failed {}",
                done.len() - ok
            );
        }
    }
    while tasks.join_next().await.is_some() {}
    std::mem::take(&mut *results.lock())
}

fn write_record(path: &PathBuf, sent: &[Sent]) -> anyhow::Result<()> {
    let mut file = std::io::BufWriter::new(
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
    );
    writeln!(file, "start_ms,end_ms,ok")?;
    for s in sent {
        writeln!(
            file,
            "{},{},{}",
            s.start_ms,
            s.end_ms,
            u8::from(s.acked.is_some())
        )?;
    }
    file.flush()?;
    Ok(())
}
