//! One connection to another IM system (ejabberd, an MQTT broker) during a run: the
//! [`Speak`] trait each protocol implements, and the task that sends on the connection's
//! schedule, reads acks and deliveries, and keeps what it saw for the verdict.
//!
//! Every message body is `<stamp_ns> <run>:<sender>:<n> ` padded with `.`: the time it was
//! due, the run, the sending connection and the sender's message number. In a pair
//! (connections `2p` and `2p + 1`) message `n` of a sender of parity `b` is given seq
//! `2n + b`, so that [`tally::verdict`](super::tally::verdict) checks both directions of a
//! pair as one conversation.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tokio::io::AsyncReadExt as _;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{MissedTickBehavior, interval_at};

use super::drive::Shared;
use super::tally::Seen;

/// How often a connection sends its protocol's keepalive.
pub const KEEPALIVE: Duration = Duration::from_secs(30);

/// Bytes read from a socket at a time (at least).
const READ_CHUNK: usize = 16 * 1024;

/// What a connection's reader found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event<'a> {
    /// Every send whose key is at most this one was acknowledged (XMPP's `<a h='n'/>`).
    AckedThrough(u64),
    /// The send with this key was acknowledged (MQTT's PUBACK).
    Acked(u64),
    /// A message arrived for this connection; its body.
    Delivered(&'a [u8]),
}

/// A protocol's side of one logged-in connection.
pub trait Speak: Send {
    /// Appends to `out` a message to user `to` carrying `body`; the key its ack will carry.
    fn send(&mut self, to: usize, body: &str, out: &mut Vec<u8>) -> u64;

    /// Reads the complete frames at the start of `input`, appends the answers they need to
    /// `out` and reports what they mean to `event`; the bytes read.
    ///
    /// # Errors
    /// When the input is malformed or the server ends the session.
    fn read(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        event: &mut dyn FnMut(Event<'_>),
    ) -> anyhow::Result<usize>;

    /// Appends a keepalive to `out`.
    fn keepalive(&mut self, out: &mut Vec<u8>);
}

/// A connection that logged in.
pub struct Peer {
    /// The socket.
    pub stream: TcpStream,
    /// Bytes received after the handshake and not read yet.
    pub input: Vec<u8>,
    /// Its protocol.
    pub speaker: Box<dyn Speak>,
}

/// Reads more bytes from `stream` onto `input`, during a handshake.
///
/// # Errors
/// When the read fails or the server closes the connection.
pub async fn read_more(stream: &mut TcpStream, input: &mut Vec<u8>) -> anyhow::Result<()> {
    input.reserve(READ_CHUNK);
    if stream
        .read_buf(input)
        .await
        .context("reading from the server")?
        == 0
    {
        bail!("the server closed the connection");
    }
    Ok(())
}

/// What one connection does: its number and, when it sends to its partner, the time of its
/// first message, the time between messages, and the time from which nothing is due.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Its number in the run; its partner is `index ^ 1`.
    pub index: usize,
    /// `(first, period, until)`, or `None` for a connection that only listens.
    pub sends: Option<(Instant, Duration, Instant)>,
}

/// Runs one connection until `stop` turns true (or the connection fails); what it saw.
pub async fn drive(peer: Peer, plan: Plan, shared: &Shared, stop: watch::Receiver<bool>) -> Seen {
    let Peer {
        stream,
        mut input,
        mut speaker,
    } = peer;
    let mut conn = Conn {
        index: plan.index,
        seen: Seen::default(),
        in_flight: VecDeque::new(),
        shared,
    };
    let mut out = Vec::new();
    let io = Io {
        stream: &stream,
        input: &mut input,
        out: &mut out,
        speaker: speaker.as_mut(),
    };
    if let Err(err) = conn.run(io, plan, stop).await {
        let counters = &shared.counters;
        counters.broken.fetch_add(1, Ordering::Relaxed);
        // A short critical section with no await: parking_lot's mutex is right here.
        let mut first = shared.first_error.lock();
        if first.is_none() {
            *first = Some(format!("connection {}: {err:#}", plan.index));
        }
    }
    let unanswered = conn.in_flight.len() as u64;
    shared
        .counters
        .failed
        .fetch_add(unanswered, Ordering::Relaxed);
    conn.seen
}

/// A connection's socket, buffers and protocol.
struct Io<'a> {
    stream: &'a TcpStream,
    input: &'a mut Vec<u8>,
    out: &'a mut Vec<u8>,
    speaker: &'a mut dyn Speak,
}

/// One connection's state during the load.
struct Conn<'a> {
    index: usize,
    seen: Seen,
    /// Sends awaiting their ack, oldest first: (key, message number, stamp).
    in_flight: VecDeque<(u64, u64, u64)>,
    shared: &'a Shared,
}

impl Conn<'_> {
    async fn run(
        &mut self,
        mut io: Io<'_>,
        plan: Plan,
        mut stop: watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        let shared = self.shared;
        let (mut sending, first, period, until) = match plan.sends {
            Some((first, period, until)) => (true, first, period, until),
            None => (false, Instant::now(), KEEPALIVE, Instant::now()),
        };
        // Burst: a tick missed while the runtime was busy is sent late rather than dropped,
        // and its stamp stays the time it was due, so lateness shows as latency.
        let mut ticker = interval_at(first.into(), period);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Burst);
        let jitter = Duration::from_millis((plan.index as u64 * 7919) % 10_000);
        let mut keepalive =
            interval_at((Instant::now() + KEEPALIVE / 2 + jitter).into(), KEEPALIVE);
        let mut body = String::new();
        let mut n = 0u64;
        // Bytes that came with the end of the handshake.
        self.take(&mut io)?;
        loop {
            flush(io.stream, io.out)?;
            tokio::select! {
                ready = io.stream.readable() => {
                    ready?;
                    io.input.reserve(READ_CHUNK);
                    match io.stream.try_read_buf(io.input) {
                        Ok(0) => bail!("the server closed the connection"),
                        Ok(_) => self.take(&mut io)?,
                        Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                        Err(err) => return Err(err.into()),
                    }
                }
                ready = io.stream.writable(), if !io.out.is_empty() => ready?,
                due = ticker.tick(), if sending => {
                    let due: Instant = due.into();
                    if due >= until {
                        sending = false;
                        continue;
                    }
                    let stamp = due.saturating_duration_since(shared.epoch).as_nanos() as u64;
                    write_body(&mut body, (stamp, &shared.run, self.index, n), shared.body_bytes);
                    let key = io.speaker.send(self.index ^ 1, &body, io.out);
                    self.in_flight.push_back((key, n, stamp));
                    shared.counters.sent.fetch_add(1, Ordering::Relaxed);
                    if measured(shared, stamp) {
                        shared.counters.sent_measured.fetch_add(1, Ordering::Relaxed);
                    }
                    n += 1;
                }
                _ = keepalive.tick() => io.speaker.keepalive(io.out),
                _ = stop.wait_for(|stop| *stop) => return Ok(()),
            }
        }
    }

    /// Reads what has arrived.
    fn take(&mut self, io: &mut Io<'_>) -> anyhow::Result<()> {
        let used = io
            .speaker
            .read(io.input, io.out, &mut |event| self.event(event))?;
        io.input.drain(..used);
        Ok(())
    }

    fn event(&mut self, event: Event<'_>) {
        match event {
            Event::AckedThrough(key) => {
                while let Some(&(_, n, stamp)) = self.in_flight.front().filter(|f| f.0 <= key) {
                    self.in_flight.pop_front();
                    self.acked(n, stamp);
                }
            }
            Event::Acked(key) => {
                if let Some(at) = self.in_flight.iter().position(|f| f.0 == key) {
                    let (_, n, stamp) = self.in_flight.remove(at).expect("found above");
                    self.acked(n, stamp);
                }
            }
            Event::Delivered(body) => {
                let partner = self.index ^ 1;
                match read_body(body, &self.shared.run) {
                    Some((stamp, sender, n)) if sender == partner => {
                        self.delivered(stamp, seq(sender, n))
                    }
                    _ => {}
                }
            }
        }
    }

    fn acked(&mut self, n: u64, stamp: u64) {
        let shared = self.shared;
        let counters = &shared.counters;
        self.seen.acked.insert(seq(self.index, n));
        counters.acked.fetch_add(1, Ordering::Relaxed);
        counters.owed.fetch_add(1, Ordering::Relaxed);
        if measured(shared, stamp) {
            counters.acked_measured.fetch_add(1, Ordering::Relaxed);
            let us = now_ns(shared).saturating_sub(stamp) / 1000;
            shared.ack_latency.lock().saturating_record(us.max(1));
        }
    }

    fn delivered(&mut self, stamp: u64, seq: u64) {
        if !self.seen.push(seq, false) {
            return;
        }
        let shared = self.shared;
        let counters = &shared.counters;
        let now = now_ns(shared);
        counters.pushed.fetch_add(1, Ordering::Relaxed);
        counters.last_arrival_ns.fetch_max(now, Ordering::Relaxed);
        if measured(shared, now) {
            counters.arrived_in_window.fetch_add(1, Ordering::Relaxed);
        }
        if measured(shared, stamp) {
            counters.delivered_measured.fetch_add(1, Ordering::Relaxed);
            let us = now.saturating_sub(stamp) / 1000;
            // No await while held: parking_lot's mutex is right here.
            shared.latency.lock().saturating_record(us.max(1));
        }
    }
}

/// Writes as much of `out` as the socket takes now.
fn flush(stream: &TcpStream, out: &mut Vec<u8>) -> io::Result<()> {
    while !out.is_empty() {
        match stream.try_write(out) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                out.drain(..n);
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

fn now_ns(shared: &Shared) -> u64 {
    shared.epoch.elapsed().as_nanos() as u64
}

fn measured(shared: &Shared, stamp_ns: u64) -> bool {
    (shared.measure_from_ns..shared.measure_to_ns).contains(&stamp_ns)
}

/// The seq of message `n` of connection `sender` in its pair's conversation.
fn seq(sender: usize, n: u64) -> u64 {
    2 * n + (sender & 1) as u64
}

/// Writes the body of message `n` of connection `sender` in `run`, due at `stamp_ns`,
/// padded to `len` bytes.
pub fn write_body(
    body: &mut String,
    (stamp_ns, run, sender, n): (u64, &str, usize, u64),
    len: usize,
) {
    body.clear();
    let _ = write!(body, "{stamp_ns} {run}:{sender}:{n} ");
    while body.len() < len {
        body.push('.');
    }
}

/// The stamp, sender and number [`write_body`] put in a body of `run`; `None` for any other.
pub fn read_body(body: &[u8], run: &str) -> Option<(u64, usize, u64)> {
    let body = std::str::from_utf8(body).ok()?;
    let mut words = body.split(' ');
    let stamp = words.next()?.parse().ok()?;
    let mut id = words.next()?.rsplitn(3, ':');
    let n = id.next()?.parse().ok()?;
    let sender = id.next()?.parse().ok()?;
    (id.next()? == run).then_some((stamp, sender, n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_carry_stamp_sender_and_number() {
        let mut body = String::new();
        write_body(&mut body, (123, "b1:x", 7, 42), 40);
        assert_eq!(body.len(), 40);
        assert!(body.starts_with("123 b1:x:7:42 ...."), "{body}");
        assert_eq!(read_body(body.as_bytes(), "b1:x"), Some((123, 7, 42)));
        assert_eq!(read_body(body.as_bytes(), "b2"), None);
        write_body(&mut body, (1, "r", 0, 0), 0);
        assert_eq!(body, "1 r:0:0 ");
        for bad in [&b"hello"[..], b"1 r:0", b"x r:0:0 ", b"1 r:a:0", b"\xff"] {
            assert_eq!(read_body(bad, "r"), None);
        }
    }

    #[test]
    fn seqs_of_a_pair_never_collide() {
        assert_eq!([seq(4, 0), seq(5, 0), seq(4, 1), seq(5, 1)], [0, 1, 2, 3]);
    }
}
