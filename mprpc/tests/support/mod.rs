//! A test server with a hand-written probe service, and raw-socket helpers.
#![allow(dead_code, unreachable_pub)]

pub mod pki;
pub mod relay;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once, PoisonError};
use std::thread::ThreadId;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use mprpc::frame::{Codec, Frame, Header, Kind, Text};
use mprpc::{BoxFuture, Context, Method, Server, ServerBuilder, Service, Status};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, oneshot};
use tokio::task::JoinHandle;
use tokio_util::codec::Decoder;

pub const PROBE: &str = "test.Probe";

/// A request or response carrying a number.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Num {
    #[prost(uint64, tag = "1")]
    pub value: u64,
}

/// A request or response carrying text.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Str {
    #[prost(string, tag = "1")]
    pub value: String,
}

/// Log lines written while the returned guard lives, on this thread (the runtime of a
/// `#[tokio::test]`).
pub struct Logs {
    buf: Arc<Mutex<Vec<u8>>>,
    _guard: tracing::subscriber::DefaultGuard,
}

impl Logs {
    pub fn contents(&self) -> String {
        String::from_utf8_lossy(&self.buf.lock().unwrap()).into_owned()
    }
}

#[derive(Clone)]
struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub fn capture_logs() -> Logs {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let writer = LogWriter(buf.clone());
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .with_writer(move || writer.clone())
        .finish();
    Logs {
        buf,
        _guard: tracing::subscriber::set_default(subscriber),
    }
}

/// Counts what the probe's handlers did, so tests can see server-side effects.
#[derive(Debug)]
pub struct Counters {
    pub started: AtomicU64,
    pub finished: AtomicU64,
    /// Handlers dropped before finishing: cancelled, past deadline, or aborted.
    pub dropped: AtomicU64,
    /// For each `Hold` handler in the order they started: how many handlers had finished
    /// by then. Shows what a call waited for without timing it.
    pub finished_when_held: Mutex<Vec<u64>>,
    /// Permits for `Hold` handlers to finish, handed out by [`Probe::release`].
    gate: Semaphore,
}

impl Default for Counters {
    fn default() -> Counters {
        Counters {
            started: AtomicU64::new(0),
            finished: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            finished_when_held: Mutex::new(Vec::new()),
            gate: Semaphore::new(0),
        }
    }
}

/// Methods: `Echo` (body back), `Sleep` (Num ms, returns Num), `Remaining` (deadline left in
/// µs as Num), `Fail` (Num code → that status), `Meta` (metadata "k" as Str), `Panic`
/// (panics at once), `PanicLater` (panics after Num ms), `Big` (a body of Num bytes),
/// `Spin` (blocks its thread for Num ms, then answers), `Hold` (waits until the test
/// [releases](Probe::release) it, then answers its Num).
#[derive(Clone, Default)]
pub struct Probe {
    pub counters: Arc<Counters>,
}

impl Probe {
    /// Lets `n` waiting (or future) `Hold` handlers finish.
    pub fn release(&self, n: usize) {
        self.counters.gate.add_permits(n);
    }

    /// What [`Counters::finished_when_held`] recorded so far.
    pub fn finished_when_held(&self) -> Vec<u64> {
        self.counters.finished_when_held.lock().unwrap().clone()
    }
}

struct DropGuard {
    counters: Arc<Counters>,
    done: bool,
}

impl Drop for DropGuard {
    fn drop(&mut self) {
        if !self.done {
            self.counters.dropped.fetch_add(1, Ordering::SeqCst);
        }
    }
}

fn encode(n: u64) -> Bytes {
    mprpc::service::encode_response(&Num { value: n })
}

impl Service for Probe {
    fn name(&self) -> &'static str {
        PROBE
    }

    fn call(
        &self,
        method: &str,
        ctx: Context,
        request: Bytes,
    ) -> Option<BoxFuture<mprpc::service::CallResult>> {
        let counters = self.counters.clone();
        Some(match method {
            "Echo" => Box::pin(async move { Ok(request) }),
            "Sleep" => Box::pin(async move {
                let ms: Num = mprpc::service::decode_request(request)?;
                counters.started.fetch_add(1, Ordering::SeqCst);
                let mut guard = DropGuard {
                    counters: counters.clone(),
                    done: false,
                };
                tokio::time::sleep(Duration::from_millis(ms.value)).await;
                guard.done = true;
                counters.finished.fetch_add(1, Ordering::SeqCst);
                Ok(encode(ms.value))
            }),
            "Remaining" => Box::pin(async move {
                let left = ctx.remaining().map_or(0, |d| d.as_micros() as u64);
                Ok(encode(left))
            }),
            "Fail" => Box::pin(async move {
                let code: Num = mprpc::service::decode_request(request)?;
                Err(Status::new(
                    mprpc::Code::from_u32(code.value as u32),
                    "asked to fail",
                ))
            }),
            "Meta" => Box::pin(async move {
                let value = ctx.metadata("k").unwrap_or("").to_owned();
                Ok(mprpc::service::encode_response(&Str { value }))
            }),
            "Panic" => Box::pin(async move {
                counters.started.fetch_add(1, Ordering::SeqCst);
                panic!("probe asked to panic")
            }),
            "PanicLater" => Box::pin(async move {
                let ms: Num = mprpc::service::decode_request(request)?;
                counters.started.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(ms.value)).await;
                panic!("probe asked to panic later")
            }),
            "Big" => Box::pin(async move {
                let n: Num = mprpc::service::decode_request(request)?;
                counters.started.fetch_add(1, Ordering::SeqCst);
                counters.finished.fetch_add(1, Ordering::SeqCst);
                Ok(Bytes::from(vec![7u8; n.value as usize]))
            }),
            "Hold" => Box::pin(async move {
                let tag: Num = mprpc::service::decode_request(request)?;
                {
                    let mut held = counters.finished_when_held.lock().unwrap();
                    held.push(counters.finished.load(Ordering::SeqCst));
                    counters.started.fetch_add(1, Ordering::SeqCst);
                }
                let mut guard = DropGuard {
                    counters: counters.clone(),
                    done: false,
                };
                counters
                    .gate
                    .acquire()
                    .await
                    .expect("the gate is never closed")
                    .forget();
                guard.done = true;
                counters.finished.fetch_add(1, Ordering::SeqCst);
                Ok(encode(tag.value))
            }),
            "Spin" => Box::pin(async move {
                let ms: Num = mprpc::service::decode_request(request)?;
                counters.started.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(ms.value));
                counters.finished.fetch_add(1, Ordering::SeqCst);
                Ok(encode(ms.value))
            }),
            _ => return None,
        })
    }

    fn methods(&self) -> &'static [&'static str] {
        &[
            "Echo",
            "Sleep",
            "Remaining",
            "Fail",
            "Meta",
            "Panic",
            "PanicLater",
            "Big",
            "Spin",
            "Hold",
        ]
    }
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub server: Server,
    pub probe: Probe,
    shutdown: Option<oneshot::Sender<()>>,
    pub task: JoinHandle<std::io::Result<()>>,
}

impl TestServer {
    /// Starts the graceful shutdown; `serve` returns once drained.
    pub fn shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Calls `Sleep(ms)` through `client` from a task of its own.
    pub fn spawn_sleep(
        &self,
        client: &mprpc::Client,
        ms: u64,
    ) -> JoinHandle<Result<Num, mprpc::Error>> {
        spawn_call(client, "Sleep", ms)
    }

    /// Calls `Hold(tag)` through `client` from a task of its own; it answers `tag` once
    /// [`Probe::release`] lets it.
    pub fn spawn_hold(
        &self,
        client: &mprpc::Client,
        tag: u64,
    ) -> JoinHandle<Result<Num, mprpc::Error>> {
        spawn_call(client, "Hold", tag)
    }

    /// Waits (up to 10 s) until exactly `n` handlers that count themselves (all but `Echo`,
    /// `Remaining`, `Fail` and `Meta`) have started.
    pub async fn started(&self, n: u64) {
        let counters = self.probe.counters.clone();
        let started = eventually(Duration::from_secs(10), || {
            counters.started.load(Ordering::SeqCst) == n
        });
        assert!(
            started.await,
            "{n} handlers started (now {})",
            self.probe.counters.started.load(Ordering::SeqCst)
        );
    }

    pub fn client(&self) -> mprpc::Client {
        mprpc::Client::builder()
            .timeout(Some(Duration::from_secs(10)))
            .connect_lazy(self.addr.to_string())
    }
}

fn spawn_call(
    client: &mprpc::Client,
    method: &'static str,
    value: u64,
) -> JoinHandle<Result<Num, mprpc::Error>> {
    let client = client.clone();
    tokio::spawn(async move {
        client
            .unary(
                &Method::new(PROBE, method),
                &Num { value },
                &mprpc::CallOptions::new(),
            )
            .await
    })
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn start_server() -> TestServer {
    start_server_with(|b| b).await
}

pub async fn start_server_with(
    configure: impl FnOnce(ServerBuilder) -> ServerBuilder,
) -> TestServer {
    count_panics();
    let probe = Probe::default();
    let server: Server = configure(Server::builder().add_service(probe.clone())).build();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = oneshot::channel::<()>();
    let serving = server.clone();
    let task = tokio::spawn(async move {
        server
            .serve(listener, async move {
                let _ = rx.await;
            })
            .await
    });
    TestServer {
        addr,
        server: serving,
        probe,
        shutdown: Some(tx),
        task,
    }
}

/// Polls `cond` every few milliseconds until it holds or `within` passes.
pub async fn eventually(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub fn request(id: u64, method: &'static str, body: &[u8]) -> BytesMut {
    request_to(id, PROBE, method, body)
}

pub fn request_to(id: u64, service: &'static str, method: &'static str, body: &[u8]) -> BytesMut {
    request_with(id, service, method, 0, body)
}

/// A request frame with a `timeout_us` budget.
pub fn request_with(
    id: u64,
    service: &'static str,
    method: &'static str,
    timeout_us: u64,
    body: &[u8],
) -> BytesMut {
    let header = Header {
        kind: Kind::Request,
        request_id: id,
        service: Text::from_static(service),
        method: Text::from_static(method),
        timeout_us,
        ..Header::default()
    };
    let mut buf = BytesMut::new();
    mprpc::frame::encode_raw(&mut buf, &header, body, mprpc::frame::DEFAULT_MAX_FRAME)
        .expect("fits");
    buf
}

pub fn control(kind: Kind, id: u64) -> BytesMut {
    let header = Header {
        kind,
        request_id: id,
        ..Header::default()
    };
    let mut buf = BytesMut::new();
    mprpc::frame::encode_raw(&mut buf, &header, &[], mprpc::frame::DEFAULT_MAX_FRAME)
        .expect("fits");
    buf
}

/// A frame around a hand-made header, for headers the encoder cannot produce.
pub fn raw_frame(header: &[u8], body: &[u8]) -> Vec<u8> {
    let len = 6 + header.len() + body.len();
    let mut frame = (len as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&[b'M', b'P', 1, 0]);
    frame.extend_from_slice(&(header.len() as u16).to_be_bytes());
    frame.extend_from_slice(header);
    frame.extend_from_slice(body);
    frame
}

pub fn num(n: u64) -> Vec<u8> {
    use prost::Message;
    Num { value: n }.encode_to_vec()
}

/// A raw connection that speaks frames by hand.
pub struct Raw {
    pub stream: TcpStream,
    buf: BytesMut,
    codec: Codec,
}

pub enum Next {
    Frame(Frame),
    Closed,
}

impl Raw {
    pub async fn connect(addr: SocketAddr) -> Raw {
        let stream = TcpStream::connect(addr).await.expect("connect");
        Raw {
            stream,
            buf: BytesMut::new(),
            codec: Codec::default(),
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// The next frame, or `Closed` at end of stream or reset; panics after 5 s of silence.
    pub async fn next(&mut self) -> Next {
        tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                if let Some(frame) = self
                    .codec
                    .decode(&mut self.buf)
                    .expect("server sends valid frames")
                {
                    return Next::Frame(frame);
                }
                match self.stream.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return Next::Closed,
                    Ok(_) => {}
                }
            }
        })
        .await
        .expect("server answered or closed within 5 s")
    }

    pub async fn frame(&mut self) -> Frame {
        match self.next().await {
            Next::Frame(frame) => frame,
            Next::Closed => panic!("connection closed where a frame was expected"),
        }
    }

    /// Reads until the server closes, returning what it sent first.
    pub async fn until_closed(&mut self) -> Vec<Frame> {
        let mut frames = Vec::new();
        while let Next::Frame(frame) = self.next().await {
            frames.push(frame);
        }
        frames
    }
}

/// Panics so far per thread, counted by the hook [`count_panics`] installs.
static PANICS: Mutex<Option<HashMap<ThreadId, usize>>> = Mutex::new(None);

/// Installs (once per test binary) a panic hook that counts panics per thread before
/// printing them as usual. A `#[tokio::test]` runs the server's tasks on the test's own
/// thread, so a connection task that panics shows in [`panics_on_this_thread`] even though
/// the server survives it and the peer sees only a closed socket.
pub fn count_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let print = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let mut panics = PANICS.lock().unwrap_or_else(PoisonError::into_inner);
            *panics
                .get_or_insert_with(HashMap::new)
                .entry(std::thread::current().id())
                .or_default() += 1;
            drop(panics);
            print(info);
        }));
    });
}

/// Panics on this thread since the hook was installed (each test runs on a thread of its
/// own).
pub fn panics_on_this_thread() -> usize {
    let panics = PANICS.lock().unwrap_or_else(PoisonError::into_inner);
    panics
        .as_ref()
        .and_then(|p| p.get(&std::thread::current().id()).copied())
        .unwrap_or(0)
}

/// Nothing of this test panicked, and a normal call through the client succeeds: the
/// server still serves.
pub async fn assert_still_serving(server: &TestServer) {
    assert_eq!(panics_on_this_thread(), 0, "a task of this test panicked");
    let reply: Num = server
        .client()
        .unary(
            &Method::new(PROBE, "Sleep"),
            &Num { value: 0 },
            &mprpc::CallOptions::default(),
        )
        .await
        .expect("server still serves other connections");
    assert_eq!(reply.value, 0);
}
