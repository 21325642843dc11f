//! `msg-bench`: MessageService.Send through mprpc into a real database, closed loop or at a
//! fixed rate.
//!
//! ```text
//! cargo run --release -p benches --bin msg-bench -- \
//!     --db mysql://root@127.0.0.1:3306/mpim_bench --seconds 10 --concurrency 256
//! cargo run --release -p benches --bin msg-bench -- --db sqlite:///tmp/mpim-bench.db --rate 5000
//! ```
//!
//! It (re)creates the database, makes `2 × --conversations` users in friend pairs and their
//! conversations, serves the message service on 127.0.0.1 (the in-process bus: pushes go to
//! streams no gateway reads), and sends over TCP with mprpc. Closed loop: `--concurrency`
//! callers, each sending its next message when the last one is acked. `--rate R`: sends
//! start at fixed intervals whatever the acks do, and latency counts from the intended start,
//! so a stall shows in the tail instead of slowing the load. The first `--warmup` seconds (2)
//! run the same load unmeasured, until connections are open and statements prepared. Ends
//! with one line:
//! `RESULT sent=<n> acked=<n> failed=<n> acked_per_s=<x> p50_ms=<x> p99_ms=<x>`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use hdrhistogram::Histogram;
use im_common::bus::Bus;
use im_common::config::DatabaseConfig;
use im_common::identity::{self, ServiceIdentity, User};
use im_common::proto::{MessageServiceClient, SendRequest};
use im_common::store::Sql;
use im_message::{Messages, Settings};
use mprpc::CallOptions;
use mprpc::discovery::Static;
use parking_lot::Mutex;
use sqlx::{AnyConnection, Connection, Executor};

#[derive(Parser)]
#[command(about = "MessageService.Send load into a real database")]
struct Args {
    /// `mysql://user@host:port/dbname` or `sqlite://path`; the database is recreated.
    #[arg(long, default_value = "sqlite://mpim-bench/bench.db")]
    db: String,
    /// How long to send.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Callers in flight (closed loop), or the most sends in flight (with --rate).
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Sends per second at fixed intervals instead of a closed loop.
    #[arg(long)]
    rate: Option<u64>,
    /// Conversations (friend pairs) the sends are spread over.
    #[arg(long, default_value_t = 1000)]
    conversations: u64,
    /// Body size in bytes.
    #[arg(long, default_value_t = 100)]
    body_bytes: usize,
    /// Committer tasks (default: the service's own default for the engine).
    #[arg(long)]
    committers: Option<usize>,
    /// Seconds of the same load before the measured ones (not counted).
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// Database connections.
    #[arg(long, default_value_t = 32)]
    pool: u32,
}

#[derive(Default)]
struct Counts {
    sent: AtomicU64,
    acked: AtomicU64,
    failed: AtomicU64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    recreate(&args.db).await?;
    let sql = Sql::connect(&DatabaseConfig {
        url: args.db.clone(),
        max_connections: args.pool,
        ..DatabaseConfig::default()
    })
    .await?;
    let users = seed(&sql, args.conversations).await?;
    eprintln!(
        "seeded {} users in {} friend pairs",
        2 * users.len(),
        users.len()
    );

    let mut settings = Settings::default();
    if let Some(committers) = args.committers {
        settings.committers = committers;
    }
    let server = im_message::server(Messages::new(sql.clone(), Bus::in_process(), settings));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    let serving = server.clone();
    tokio::spawn(async move { serving.serve(listener, std::future::pending()).await });
    let client = mprpc::Client::builder()
        .intercept(ServiceIdentity::new("msg-bench"))
        .timeout(Some(Duration::from_secs(30)))
        .discover(&Static::new([addr]), "mpim.MessageService")
        .await?;
    let client = MessageServiceClient::new(client);

    let body = "m".repeat(args.body_bytes);
    // The same load, unmeasured, until connections are open and statements prepared.
    let warmup = Phase::new(client, users, Arc::from(body), 0)?;
    warmup.run(&args, Duration::from_secs(args.warmup)).await;
    let phase = warmup.after()?;
    let started = Instant::now();
    phase.run(&args, Duration::from_secs(args.seconds)).await;
    let Phase {
        counts, histogram, ..
    } = phase;
    let elapsed = started.elapsed().as_secs_f64();
    let histogram = histogram.lock();
    let acked = counts.acked.load(Ordering::Relaxed);
    println!(
        "RESULT sent={} acked={} failed={} acked_per_s={:.0} p50_ms={:.2} p99_ms={:.2}",
        counts.sent.load(Ordering::Relaxed),
        acked,
        counts.failed.load(Ordering::Relaxed),
        acked as f64 / elapsed,
        histogram.value_at_quantile(0.50) as f64 / 1000.0,
        histogram.value_at_quantile(0.99) as f64 / 1000.0,
    );
    Ok(())
}

/// One measured (or warm-up) stretch of load: what it sends and what it counted.
struct Phase {
    client: MessageServiceClient,
    users: Arc<Vec<(u64, u64)>>,
    body: Arc<str>,
    /// The number of this phase's first message (client_msg_ids never repeat across phases).
    first: u64,
    next: Arc<AtomicU64>,
    counts: Arc<Counts>,
    histogram: Arc<Mutex<Histogram<u64>>>,
}

impl Phase {
    fn new(
        client: MessageServiceClient,
        users: Arc<Vec<(u64, u64)>>,
        body: Arc<str>,
        first: u64,
    ) -> anyhow::Result<Phase> {
        Ok(Phase {
            client,
            users,
            body,
            first,
            next: Arc::new(AtomicU64::new(first)),
            counts: Arc::new(Counts::default()),
            histogram: Arc::new(Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 3)?)),
        })
    }

    /// A fresh phase that goes on numbering after this one.
    fn after(&self) -> anyhow::Result<Phase> {
        let first = self.next.load(Ordering::Relaxed);
        Phase::new(
            self.client.clone(),
            self.users.clone(),
            self.body.clone(),
            first,
        )
    }

    async fn run(&self, args: &Args, seconds: Duration) {
        match args.rate {
            None => self.closed_loop(args.concurrency, seconds).await,
            Some(rate) => self.open_loop(args.concurrency, rate, seconds).await,
        }
    }

    /// One send of the `n`th message's pair, alternating direction; true when acked.
    async fn send_one(&self, n: u64) -> bool {
        let (a, b) = self.users[(n % self.users.len() as u64) as usize];
        let (from, to) = if (n / self.users.len() as u64) % 2 == 0 {
            (a, b)
        } else {
            (b, a)
        };
        let request = SendRequest {
            to_user_id: to,
            client_msg_id: format!("b{n}"),
            body: self.body.to_string(),
        };
        let options = identity::for_user(CallOptions::new(), &User::new(from));
        self.counts.sent.fetch_add(1, Ordering::Relaxed);
        match self.client.send_with(&request, &options).await {
            Ok(_) => {
                self.counts.acked.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(err) => {
                if self.counts.failed.fetch_add(1, Ordering::Relaxed) < 5 {
                    eprintln!("send failed: {err}");
                }
                false
            }
        }
    }

    fn share(&self) -> Phase {
        Phase {
            client: self.client.clone(),
            users: self.users.clone(),
            body: self.body.clone(),
            first: self.first,
            next: self.next.clone(),
            counts: self.counts.clone(),
            histogram: self.histogram.clone(),
        }
    }

    async fn closed_loop(&self, concurrency: usize, seconds: Duration) {
        let deadline = Instant::now() + seconds;
        let mut workers = Vec::new();
        for _ in 0..concurrency {
            let phase = self.share();
            workers.push(tokio::spawn(async move {
                let mut local =
                    Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
                while Instant::now() < deadline {
                    let n = phase.next.fetch_add(1, Ordering::Relaxed);
                    let start = Instant::now();
                    if phase.send_one(n).await {
                        let _ = local.record(start.elapsed().as_micros() as u64);
                    }
                }
                let _ = phase.histogram.lock().add(&local);
            }));
        }
        for worker in workers {
            let _ = worker.await;
        }
    }

    async fn open_loop(&self, concurrency: usize, rate: u64, seconds: Duration) {
        let interval = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
        let total = rate * seconds.as_secs();
        let start = tokio::time::Instant::now();
        let slots = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
        let mut tasks = tokio::task::JoinSet::new();
        for k in 0..total {
            let intended = start + interval.mul_f64(k as f64);
            tokio::time::sleep_until(intended).await;
            // Waiting for a free slot counts in the latency: it is measured from `intended`.
            let permit = slots.clone().acquire_owned().await.expect("never closed");
            let phase = self.share();
            let n = self.next.fetch_add(1, Ordering::Relaxed);
            tasks.spawn(async move {
                if phase.send_one(n).await {
                    let micros = intended.elapsed().as_micros() as u64;
                    let _ = phase.histogram.lock().record(micros.max(1));
                }
                drop(permit);
            });
            while tasks.try_join_next().is_some() {}
        }
        while tasks.join_next().await.is_some() {}
    }
}

/// Drops and creates the database the URL names (MySQL), or removes the SQLite file.
async fn recreate(url: &str) -> anyhow::Result<()> {
    sqlx::any::install_default_drivers();
    if let Some(path) = url.strip_prefix("sqlite://") {
        let path = path.split('?').next().unwrap_or(path);
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{path}{suffix}"));
        }
        return Ok(());
    }
    let (server, name) = url
        .rsplit_once('/')
        .context("--db must end in /<database>")?;
    anyhow::ensure!(
        !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
        "database name must be letters, digits and _"
    );
    let mut conn = AnyConnection::connect(server).await?;
    conn.execute(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS `{name}`"
    )))
    .await?;
    conn.execute(sqlx::AssertSqlSafe(format!(
        "CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
    )))
    .await?;
    conn.close().await?;
    Ok(())
}

/// `pairs` friend pairs of new users; returns the pairs.
async fn seed(sql: &Sql, pairs: u64) -> anyhow::Result<Arc<Vec<(u64, u64)>>> {
    let users = pairs * 2;
    for chunk in (1..=users).collect::<Vec<_>>().chunks(500) {
        let rows = vec!["(?, ?, '', ?, '', '', 0)"; chunk.len()].join(", ");
        let insert = format!(
            "INSERT INTO users (user_id, name, password_hash, nickname, avatar, bio, created_at) VALUES {rows}"
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(insert));
        for id in chunk {
            let id = *id as i64;
            query = query
                .bind(id)
                .bind(format!("bench{id}"))
                .bind(format!("bench{id}"));
        }
        query.execute(sql.pool()).await?;
    }
    let list: Vec<(u64, u64)> = (0..pairs).map(|p| (2 * p + 1, 2 * p + 2)).collect();
    for chunk in list.chunks(250) {
        let rows = vec!["(?, ?, 0)"; chunk.len() * 2].join(", ");
        let insert = format!("INSERT INTO friends (user_id, friend_id, created_at) VALUES {rows}");
        let mut query = sqlx::query(sqlx::AssertSqlSafe(insert));
        for (a, b) in chunk {
            query = query
                .bind(*a as i64)
                .bind(*b as i64)
                .bind(*b as i64)
                .bind(*a as i64);
        }
        query.execute(sql.pool()).await?;
    }
    // The conversations and their members exist before the first send, as in a system
    // that has been running.
    for chunk in list.chunks(250) {
        let rows = vec!["(?, 0, 0)"; chunk.len()].join(", ");
        let insert =
            format!("INSERT INTO conversations (conv_id, last_seq, updated_at) VALUES {rows}");
        let mut query = sqlx::query(sqlx::AssertSqlSafe(insert));
        for (a, b) in chunk {
            query = query.bind(format!("d:{a}:{b}"));
        }
        query.execute(sql.pool()).await?;
        let rows = vec!["(?, ?, 0)"; chunk.len() * 2].join(", ");
        let insert = format!("INSERT INTO conv_members (conv_id, user_id, read_seq) VALUES {rows}");
        let mut query = sqlx::query(sqlx::AssertSqlSafe(insert));
        for (a, b) in chunk {
            let conv = format!("d:{a}:{b}");
            query = query
                .bind(conv.clone())
                .bind(*a as i64)
                .bind(conv)
                .bind(*b as i64);
        }
        query.execute(sql.pool()).await?;
    }
    Ok(Arc::new(list))
}
