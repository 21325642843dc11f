//! A loopback TCP relay that a test can cut (every relayed connection closed, new ones closed
//! on arrival) or freeze (every byte held and nothing closed: a peer that vanished without a
//! word, as after a host loss or a network partition).
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Open,
    Frozen,
    Cut,
}

pub struct Relay {
    addr: SocketAddr,
    mode: watch::Sender<Mode>,
    task: JoinHandle<()>,
    counts: Arc<Counts>,
}

#[derive(Default)]
struct Counts {
    accepted: AtomicUsize,
    closed_by_target: AtomicUsize,
}

impl Relay {
    /// Relays 127.0.0.1:<a free port> to `target` ("host:port").
    pub async fn start(target: impl Into<String>) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let addr = listener.local_addr().expect("relay addr");
        let (mode, _) = watch::channel(Mode::Open);
        let target = target.into();
        let modes = mode.clone();
        let counts = Arc::new(Counts::default());
        let counted = counts.clone();
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                if *modes.borrow() == Mode::Cut {
                    continue;
                }
                counted.accepted.fetch_add(1, Ordering::SeqCst);
                let target = target.clone();
                let modes = modes.clone();
                let counted = counted.clone();
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(&target).await else {
                        return;
                    };
                    let (in_read, in_write) = inbound.into_split();
                    let (out_read, out_write) = outbound.into_split();
                    tokio::spawn(pump(in_read, out_write, modes.subscribe()));
                    if pump(out_read, in_write, modes.subscribe()).await {
                        counted.closed_by_target.fetch_add(1, Ordering::SeqCst);
                    }
                });
            }
        });
        Relay {
            addr,
            mode,
            task,
            counts,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address clients connect to instead of the target's.
    pub fn hosts(&self) -> String {
        self.addr.to_string()
    }

    /// Connections relayed so far.
    pub fn accepted(&self) -> usize {
        self.counts.accepted.load(Ordering::SeqCst)
    }

    /// Relayed connections that the target closed.
    pub fn closed_by_target(&self) -> usize {
        self.counts.closed_by_target.load(Ordering::SeqCst)
    }

    /// Closes every relayed connection and closes new ones on arrival.
    pub fn cut(&self) {
        self.mode.send_replace(Mode::Cut);
    }

    /// Holds every byte in both directions, closing nothing.
    pub fn freeze(&self) {
        self.mode.send_replace(Mode::Frozen);
    }

    /// Relays again (held bytes go through; cut connections stay closed).
    pub fn restore(&self) {
        self.mode.send_replace(Mode::Open);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.cut();
        self.task.abort();
    }
}

/// Waits while frozen; `true` once open, `false` once cut.
async fn open(mode: &mut watch::Receiver<Mode>) -> bool {
    let now = mode.wait_for(|m| *m != Mode::Frozen).await.map(|m| *m);
    matches!(now, Ok(Mode::Open))
}

/// Copies `from` to `to` as the mode allows; `true` when `from` reached its end.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
) -> bool {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if !open(&mut mode).await {
            return false;
        }
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => return true,
                Ok(n) => n,
            },
            _ = mode.changed() => continue,
        };
        // Bytes read just before a freeze are held until the relay opens again.
        if !open(&mut mode).await || to.write_all(&buf[..n]).await.is_err() {
            return false;
        }
    }
}
