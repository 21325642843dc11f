//! The legacy line protocol (docs/legacy-protocol.md): the original system's text commands,
//! one per line, so that its terminal client works against this gateway.
//!
//! Each line becomes a client-protocol [`Request`](im_proto::client::Request) answered by
//! the one dispatcher, so identity, limits and idempotent sends are the same as for every
//! other client; replies are one `+OK …` or `-ERR …` line, pushes are `MSG …` lines.
//! Commands are answered one at a time, in order (the protocol has no request ids), and
//! pushes are written between them, never inside a reply.
//!
//! - `line`: bounded line reading; `parse`: line → command; `format`: replies and pushes;
//! - `command`: each command, through the dispatcher; `pull`: PULL;
//! - `seen`: what a connection showed, so that PULL returns each message once.

mod command;
mod format;
mod line;
mod parse;
mod pull;
mod seen;

use std::sync::Arc;
use std::time::Duration;

use im_proto::MarkReadRequest;
use im_proto::client::request::Command as Request;
use im_proto::client::server_message::Body;
use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::limit::Bucket;
use crate::registry::{Conn, Flow, Queued};
use crate::stats;
use crate::{LegacyConfig, Shared};
use line::{Line, Lines};
use seen::{Seen, Verdict};

/// The `transport` label of the connection metrics.
const NAME: &str = "legacy";

/// Accepts legacy clients until the gateway stops, within the gateway's connection limit.
pub(crate) async fn accept(shared: Arc<Shared>, listener: TcpListener, config: LegacyConfig) {
    loop {
        let (stream, peer) = tokio::select! {
            () = shared.stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    warn!(cause = %err, "legacy accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let permit = tokio::select! {
            () = shared.stop.cancelled() => return,
            permit = shared.connections.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
        };
        let _ = stream.set_nodelay(true);
        let shared_conn = shared.clone();
        let client = shared.client_addr(peer.ip(), None);
        let config = config.clone();
        shared.tasks.spawn(async move {
            serve(shared_conn, stream, &config, client).await;
            drop(permit);
        });
    }
}

/// Serves one connection until it ends, then unregisters it.
async fn serve(
    shared: Arc<Shared>,
    stream: TcpStream,
    config: &LegacyConfig,
    client: Option<std::net::IpAddr>,
) {
    let conn = Conn::from_client(shared.next_conn_id(), client);
    stats::connections(NAME, 1.0);
    let login_timeout = config.login_timeout();
    let mut legacy = Legacy {
        bucket: Bucket::new(shared.settings.rate_per_sec, shared.settings.rate_burst),
        shared: &shared,
        conn: &conn,
        stream,
        lines: Lines::new(config.max_line.max(1)),
        seen: Seen::default(),
        refused: 0,
        next_id: 1,
        login_timeout,
        login_by: Some(Instant::now() + login_timeout),
    };
    if legacy.write(format::WELCOME.as_bytes(), 1).await.is_ok() {
        legacy.drive().await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), legacy.close()).await;
    drop(legacy);
    crate::connection::release(&shared, &conn).await;
    stats::connections(NAME, -1.0);
}

/// A legacy connection.
struct Legacy<'a> {
    shared: &'a Shared,
    conn: &'a Arc<Conn>,
    stream: TcpStream,
    lines: Lines,
    seen: Seen,
    bucket: Bucket,
    /// Lines refused by the rate limit in a row.
    refused: u32,
    /// The id of the next request made for this connection.
    next_id: u64,
    /// How long the connection may stay without a login.
    login_timeout: Duration,
    /// When the connection is closed unless it logs in: none while it is logged in.
    login_by: Option<Instant>,
}

/// What the loop does after an event.
enum Step {
    Continue,
    /// A line arrived: the idle timeout starts again.
    Alive,
    End,
}

/// A write failed or timed out: the connection is over.
struct Gone;

impl Legacy<'_> {
    async fn drive(&mut self) {
        let idle = self.shared.settings.idle_timeout();
        let timer = tokio::time::sleep(idle);
        tokio::pin!(timer);
        let far = Instant::now() + Duration::from_secs(86_400 * 365);
        let login = tokio::time::sleep_until(self.login_by.unwrap_or(far));
        tokio::pin!(login);
        loop {
            let step = tokio::select! {
                biased;
                () = self.conn.woken() => self.on_wake().await,
                () = self.shared.stop.cancelled() => {
                    self.go_away().await;
                    Step::End
                }
                line = self.lines.read(&self.stream) => self.on_line(line).await,
                () = &mut timer => {
                    let why = format!("idle: no line within {} ms", idle.as_millis());
                    let _ = self.write(format::err(&why).as_bytes(), 1).await;
                    Step::End
                }
                () = &mut login, if self.login_by.is_some() => {
                    let why = format!(
                        "{}: no login within {} ms",
                        format::NOT_LOGIN,
                        self.login_timeout.as_millis()
                    );
                    let _ = self.write(format::err(&why).as_bytes(), 1).await;
                    Step::End
                }
            };
            let by = self.login_by.unwrap_or(far);
            if login.deadline() != by {
                login.as_mut().reset(by);
            }
            match step {
                Step::Continue => {}
                Step::Alive => timer.as_mut().reset(Instant::now() + idle),
                Step::End => return,
            }
        }
    }

    async fn on_line(&mut self, line: Line) -> Step {
        let reply = match line {
            Line::Closed => return Step::End,
            Line::Failed(why) => {
                debug!(conn = self.conn.id, why, "legacy connection failed");
                return Step::End;
            }
            line => {
                stats::frames_in(1);
                // Empty lines too: they keep a connection alive, so they are not free.
                if !self.bucket.take() {
                    return self.refuse().await;
                }
                self.refused = 0;
                if matches!(&line, Line::Text(text) if text.trim().is_empty()) {
                    return Step::Alive;
                }
                self.answer(line).await
            }
        };
        if self
            .write(reply.text.as_bytes(), reply.lines)
            .await
            .is_err()
        {
            return Step::End;
        }
        self.mark(reply.marks).await;
        Step::Alive
    }

    /// The reply to a line the rate limit let through.
    async fn answer(&mut self, line: Line) -> command::Outcome {
        match line {
            Line::Text(text) => match parse::parse(&text) {
                Ok(command) => self.run(command).await,
                Err(why) => command::Outcome::err(&why),
            },
            Line::TooLong => command::Outcome::err(&format!(
                "line too long (max {} bytes); the rest of it is ignored",
                self.lines.max()
            )),
            Line::NotUtf8 => command::Outcome::err("invalid UTF-8: lines are UTF-8 text"),
            Line::Closed | Line::Failed(_) => command::Outcome::default(),
        }
    }

    async fn refuse(&mut self) -> Step {
        stats::rate_limited();
        self.refused += 1;
        let why = format!(
            "rate limit: at most {} lines per second; slow down",
            self.shared.settings.rate_per_sec
        );
        if self.write(format::err(&why).as_bytes(), 1).await.is_err()
            || self.refused > self.shared.settings.max_rate_limited
        {
            return Step::End;
        }
        Step::Continue
    }

    /// Pushes were queued, or the queue's flow changed.
    async fn on_wake(&mut self) -> Step {
        match self.flush().await {
            Ok(Flow::Open) => Step::Continue,
            Ok(Flow::Drain | Flow::Dead) | Err(Gone) => Step::End,
        }
    }

    /// The gateway is shutting down: what is queued, a last line, and close.
    async fn go_away(&mut self) {
        let grace = self.shared.settings.grace();
        let _ = tokio::time::timeout(grace, self.flush()).await;
        let line = format::err("shutting down; reconnect later");
        let _ = self.write(line.as_bytes(), 1).await;
    }

    /// Writes what is queued for this connection until its queue is empty, then marks
    /// what it showed as read; returns the queue's flow.
    async fn flush(&mut self) -> Result<Flow, Gone> {
        let mut queued: Vec<Queued> = Vec::new();
        loop {
            let flow = self.conn.take(&mut queued);
            if flow == Flow::Dead {
                return Ok(Flow::Dead);
            }
            if queued.is_empty() {
                return Ok(flow);
            }
            let mut text = String::new();
            let mut lines = 0;
            let mut marks: Vec<(String, u64)> = Vec::new();
            for q in &queued {
                if let Some(line) = self.show(q.encoded.message().body.as_ref(), &mut marks) {
                    text.push_str(&line);
                    lines += 1;
                }
            }
            if !text.is_empty() {
                self.write(text.as_bytes(), lines).await?;
            }
            // Dropping them drops their delivery tokens: these lines are written.
            queued.clear();
            self.mark(marks).await;
        }
    }

    /// The line a push shows, if any; notes how far its conversation may be marked read.
    fn show(&mut self, body: Option<&Body>, marks: &mut Vec<(String, u64)>) -> Option<String> {
        let (message, visible) = match body? {
            Body::Message(message) => (message, true),
            Body::Recalled(r) => (r.event.as_ref()?, false),
            Body::Edited(e) => (e.event.as_ref()?, false),
            Body::Kicked(kicked) => {
                return Some(format::err(&format!("session ended: {}", kicked.reason)));
            }
            _ => return None,
        };
        let verdict = self.seen.pushed(message);
        if verdict == Verdict::ShowAndMark {
            match marks
                .iter_mut()
                .find(|(c, _)| *c == message.conversation_id)
            {
                Some((_, seq)) => *seq = (*seq).max(message.seq),
                None => marks.push((message.conversation_id.clone(), message.seq)),
            }
        }
        if !visible || verdict == Verdict::Old {
            return None;
        }
        let now = im_common::ids::now_ms();
        let ms = u64::try_from(now - message.server_time_ms).unwrap_or(0);
        stats::pushed(Duration::from_millis(ms));
        Some(format::message(message))
    }

    /// Marks each conversation read up to its seq (best effort: a failure leaves those
    /// messages for PULL).
    async fn mark(&mut self, marks: Vec<(String, u64)>) {
        for (conversation_id, seq) in marks {
            let request = Request::MarkRead(MarkReadRequest {
                conversation_id,
                seq,
            });
            if let Err(err) = self.call(request).await {
                debug!(conn = self.conn.id, why = err.message, "not marked read");
            }
        }
    }

    /// Writes `bytes` (`lines` lines, for the metrics), giving up after the write timeout.
    async fn write(&mut self, bytes: &[u8], lines: u64) -> Result<(), Gone> {
        match tokio::time::timeout(
            crate::connection::WRITE_TIMEOUT,
            self.stream.write_all(bytes),
        )
        .await
        {
            Ok(Ok(())) => {
                stats::frames_out(lines);
                Ok(())
            }
            _ => Err(Gone),
        }
    }

    /// Ends the connection as the TCP transport does (what was written goes out first).
    async fn close(&mut self) {
        crate::tcp::close(&mut self.stream).await;
    }
}
