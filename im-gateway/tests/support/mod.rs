//! Fixtures for the gateway's tests: the four services in process on a fresh SQLite file,
//! a gateway on 127.0.0.1:0 (with the legacy line protocol when asked), and small raw
//! clients over TCP frames and WebSocket, and a line terminal ([`term`]).

#![allow(dead_code, unreachable_pub)]

pub mod term;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use futures::{SinkExt as _, StreamExt as _};
use im_common::bus::Bus;
use im_common::store::Sql;
use im_common::store::testing::TestDb;
use im_gateway::{Gateway, Services, Settings};
use im_proto::client::request::Command;
use im_proto::client::server_message::Body;
use im_proto::client::{Login, Request, ServerMessage, Session};
use im_proto::{RegisterRequest, RespondFriendRequestRequest, SendFriendRequestRequest};
use prost::Message as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite;

/// How long a test waits for anything.
pub const WAIT: Duration = Duration::from_secs(10);

/// The four services on one database and bus.
pub struct Cluster {
    pub sql: Sql,
    pub bus: Bus,
    pub services: Services,
    db: TestDb,
    _servers: Vec<mprpc::Server>,
}

impl Cluster {
    /// The services on a fresh SQLite file and `bus`; 1:1 messages need friendship when
    /// `friends_only`.
    pub async fn start(bus: Bus, friends_only: bool) -> Cluster {
        Cluster::start_with(bus, friends_only, TokenTtl::default(), Faults::default()).await
    }

    /// Like [`Cluster::start`], with tokens that live `ttl` and the calls `faults` fails.
    pub async fn start_with(
        bus: Bus,
        friends_only: bool,
        ttl: TokenTtl,
        faults: Faults,
    ) -> Cluster {
        let db = TestDb::sqlite();
        let sql = Sql::connect(&db.config()).await.expect("sqlite");
        let auth = im_user::AuthSettings {
            dev: true,
            argon2_memory_kib: 64,
            argon2_iterations: 1,
            token_ttl_secs: ttl.0,
            ..im_user::AuthSettings::default()
        };
        let users = faults.server(
            im_common::proto::UserServiceServer::new(
                im_user::Users::new(sql.clone(), bus.clone(), auth).unwrap(),
            ),
            &im_user::POLICY,
        );
        let presence = faults.server(
            im_common::proto::PresenceServiceServer::new(
                im_presence::Presence::new(bus.clone(), im_presence::PresenceSettings::default())
                    .unwrap(),
            ),
            &im_presence::POLICY,
        );
        let message_settings = im_message::Settings {
            friends_only,
            ..im_message::Settings::default()
        };
        let messages = im_message::server(im_message::Messages::new(
            sql.clone(),
            bus.clone(),
            message_settings,
        ));
        let groups = im_group::server(im_group::Groups::new(
            sql.clone(),
            bus.clone(),
            im_group::Settings::default(),
        ));
        let services = Services::in_process(
            im_gateway::services::NAME,
            &users,
            &presence,
            &messages,
            &groups,
        );
        Cluster {
            sql,
            bus,
            services,
            db,
            _servers: vec![users, presence, messages, groups],
        }
    }

    /// A gateway named `id` on these services.
    pub async fn gateway(&self, id: &str, settings: Settings) -> Running {
        Running::start(Gateway::new(
            id,
            self.services.clone(),
            self.bus.clone(),
            settings,
        ))
        .await
    }

    /// A gateway named `id` on these services that also serves the legacy line protocol,
    /// with lines of at most `max_line` bytes.
    pub async fn gateway_with_legacy(
        &self,
        id: &str,
        settings: Settings,
        max_line: usize,
    ) -> Running {
        let config = im_gateway::LegacyConfig {
            max_line,
            ..im_gateway::LegacyConfig::default()
        };
        self.gateway_with_legacy_config(id, settings, config).await
    }

    /// As [`Cluster::gateway_with_legacy`], with all of the legacy listener's settings.
    pub async fn gateway_with_legacy_config(
        &self,
        id: &str,
        settings: Settings,
        config: im_gateway::LegacyConfig,
    ) -> Running {
        let legacy = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = legacy.local_addr().unwrap();
        let gateway = Gateway::new(id, self.services.clone(), self.bus.clone(), settings)
            .legacy(legacy, config);
        let mut running = Running::start(gateway).await;
        running.legacy = Some(addr);
        running
    }

    pub async fn close(self) {
        self.sql.close().await;
        let _ = self.db.drop().await;
    }
}

/// How long tokens live, in seconds (im-user's `auth.token_ttl_secs`).
#[derive(Debug, Clone, Copy)]
pub struct TokenTtl(pub u64);

impl Default for TokenTtl {
    fn default() -> TokenTtl {
        TokenTtl(7 * 24 * 3600)
    }
}

/// Service methods that fail with `UNAVAILABLE` while their switch is on, as if the
/// service could not be reached (shared: flip them while the cluster runs).
#[derive(Debug, Clone)]
pub struct Faults {
    /// `UserService.CheckSessions`.
    pub check_sessions: Arc<AtomicBool>,
    /// `PresenceService.BindRoute`.
    pub bind_route: Arc<AtomicBool>,
    /// How many calls were failed so far.
    pub failed: Arc<std::sync::atomic::AtomicUsize>,
    /// `PresenceService.BindRoute` for this user (0: none) waits until
    /// [`Faults::release_binds`].
    pub hold_binds_of: Arc<std::sync::atomic::AtomicU64>,
    /// Binds held now.
    pub holding: Arc<std::sync::atomic::AtomicUsize>,
    /// What held binds wait for.
    released: Arc<tokio::sync::Semaphore>,
}

impl Default for Faults {
    fn default() -> Faults {
        Faults {
            check_sessions: Arc::default(),
            bind_route: Arc::default(),
            failed: Arc::default(),
            hold_binds_of: Arc::default(),
            holding: Arc::default(),
            released: Arc::new(tokio::sync::Semaphore::new(0)),
        }
    }
}

impl Faults {
    /// A server like the services' own (identity checked), that fails what is switched on.
    fn server(
        &self,
        service: impl mprpc::Service,
        policy: &'static im_common::identity::Policy,
    ) -> mprpc::Server {
        mprpc::Server::builder()
            .intercept(im_common::identity::Authorize::new(policy))
            .intercept(self.clone())
            .add_service(Holding {
                inner: service,
                faults: self.clone(),
            })
            .build()
    }

    /// Lets held binds go on.
    pub fn release_binds(&self) {
        self.hold_binds_of.store(0, Ordering::SeqCst);
        self.released
            .add_permits(tokio::sync::Semaphore::MAX_PERMITS / 2);
    }
}

/// A service whose BindRoute calls for one user wait for [`Faults::release_binds`].
struct Holding<S> {
    inner: S,
    faults: Faults,
}

impl<S: mprpc::Service> mprpc::Service for Holding<S> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn methods(&self) -> &'static [&'static str] {
        self.inner.methods()
    }

    fn call(
        &self,
        method: &str,
        ctx: mprpc::Context,
        request: bytes::Bytes,
    ) -> Option<mprpc::BoxFuture<Result<bytes::Bytes, mprpc::Status>>> {
        let held = self.faults.hold_binds_of.load(Ordering::SeqCst);
        let hold = method == "BindRoute"
            && held != 0
            && im_proto::Route::decode(request.clone()).is_ok_and(|r| r.user_id == held);
        let call = self.inner.call(method, ctx, request)?;
        if !hold {
            return Some(call);
        }
        let (released, holding) = (self.faults.released.clone(), self.faults.holding.clone());
        holding.fetch_add(1, Ordering::SeqCst);
        Some(Box::pin(async move {
            let _ = released.acquire().await;
            holding.fetch_sub(1, Ordering::SeqCst);
            call.await
        }))
    }
}

impl mprpc::Interceptor for Faults {
    fn intercept(&self, ctx: &mut mprpc::Context) -> Result<(), mprpc::Status> {
        let failing = match ctx.method() {
            "CheckSessions" => &self.check_sessions,
            "BindRoute" => &self.bind_route,
            _ => return Ok(()),
        };
        if failing.load(Ordering::SeqCst) {
            self.failed.fetch_add(1, Ordering::SeqCst);
            return Err(mprpc::Status::unavailable("switched off by the test"));
        }
        Ok(())
    }
}

/// A gateway serving on ports of the system's choosing.
pub struct Running {
    pub id: String,
    pub tcp: SocketAddr,
    pub ws: SocketAddr,
    /// The legacy line protocol's address, when it is served.
    pub legacy: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Running {
    pub async fn start(gateway: Gateway) -> Running {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ws = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (tcp_addr, ws_addr) = (tcp.local_addr().unwrap(), ws.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let id = gateway.id().to_owned();
        let task = tokio::spawn(gateway.serve(tcp, Some(ws), async move {
            let _ = stopped.await;
        }));
        Running {
            id,
            tcp: tcp_addr,
            ws: ws_addr,
            legacy: None,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Signals shutdown (GoAway goes out); [`Running::stopped`] waits for the end.
    pub fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    pub async fn stopped(mut self) {
        self.shutdown();
        let task = self.task.take().unwrap();
        tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("the gateway stops")
            .unwrap()
            .unwrap();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// The entries of `gateway`'s delivery stream it read and has not acknowledged.
pub async fn unacknowledged(bus: &Bus, gateway: &str) -> usize {
    bus.streams
        .read(
            im_common::bus::delivery_stream(gateway),
            gateway.to_owned(),
            im_common::bus::ReadFrom::Pending,
            10_000,
            Duration::ZERO,
        )
        .await
        .unwrap()
        .len()
}

/// Settings for tests: the defaults.
pub fn settings() -> Settings {
    Settings::default()
}

/// A raw client: TCP frames, or WebSocket binary or text frames.
pub struct Client {
    io: Io,
    next_id: u64,
    pushes: VecDeque<ServerMessage>,
    pub session: Option<Session>,
}

enum Io {
    Tcp(TcpStream, BytesMut),
    Ws(
        Box<tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>>,
        bool,
    ),
}

impl Client {
    pub async fn tcp(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).await.unwrap();
        Client::new(Io::Tcp(stream, BytesMut::new()))
    }

    /// Over WebSocket; JSON text frames when `json`, else protobuf binary frames.
    pub async fn ws(addr: SocketAddr, json: bool) -> Client {
        let (socket, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
            .await
            .unwrap();
        Client::new(Io::Ws(Box::new(socket), json))
    }

    fn new(io: Io) -> Client {
        Client {
            io,
            next_id: 1,
            pushes: VecDeque::new(),
            session: None,
        }
    }

    /// Sends raw bytes (a TCP client only).
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        match &mut self.io {
            Io::Tcp(stream, _) => stream.write_all(bytes).await.unwrap(),
            Io::Ws(socket, _) => socket
                .send(tungstenite::Message::Binary(bytes.to_vec().into()))
                .await
                .unwrap(),
        }
    }

    /// Sends a text frame (a WebSocket client only).
    pub async fn send_text(&mut self, text: &str) {
        assert!(
            self.try_send_text(text).await,
            "the text frame was not sent"
        );
    }

    /// Sends a text frame (a WebSocket client only); false when the connection is gone.
    pub async fn try_send_text(&mut self, text: &str) -> bool {
        let Io::Ws(socket, _) = &mut self.io else {
            panic!("not a WebSocket client")
        };
        socket
            .send(tungstenite::Message::Text(text.into()))
            .await
            .is_ok()
    }

    pub async fn send(&mut self, request: &Request) {
        match &mut self.io {
            Io::Tcp(stream, _) => stream
                .write_all(&im_proto::codec::frame(request))
                .await
                .unwrap(),
            Io::Ws(socket, true) => socket
                .send(tungstenite::Message::Text(
                    serde_json::to_string(request).unwrap().into(),
                ))
                .await
                .unwrap(),
            Io::Ws(socket, false) => socket
                .send(tungstenite::Message::Binary(request.encode_to_vec().into()))
                .await
                .unwrap(),
        }
    }

    /// Sends `request`; false when the connection is gone (the gateway may have closed it).
    pub async fn try_send(&mut self, request: &Request) -> bool {
        match &mut self.io {
            Io::Tcp(stream, _) => stream
                .write_all(&im_proto::codec::frame(request))
                .await
                .is_ok(),
            Io::Ws(socket, _) => socket
                .send(tungstenite::Message::Binary(request.encode_to_vec().into()))
                .await
                .is_ok(),
        }
    }

    /// The next message from the gateway; None when the connection closed.
    pub async fn next(&mut self) -> Option<ServerMessage> {
        tokio::time::timeout(WAIT, self.read())
            .await
            .expect("a message from the gateway in time")
    }

    async fn read(&mut self) -> Option<ServerMessage> {
        match &mut self.io {
            Io::Tcp(stream, buf) => loop {
                if let Some(frame) = im_proto::codec::read_frame(buf, usize::MAX).unwrap() {
                    return Some(ServerMessage::decode(frame).unwrap());
                }
                match stream.read_buf(buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            },
            Io::Ws(socket, json) => loop {
                match socket.next().await {
                    Some(Ok(tungstenite::Message::Binary(bytes))) => {
                        assert!(!*json, "a JSON client got a binary frame");
                        return Some(ServerMessage::decode(bytes).unwrap());
                    }
                    Some(Ok(tungstenite::Message::Text(text))) => {
                        return Some(serde_json::from_str(&text).unwrap());
                    }
                    Some(Ok(tungstenite::Message::Close(_))) | None | Some(Err(_)) => {
                        return None;
                    }
                    Some(Ok(_)) => {}
                }
            },
        }
    }

    /// Sends `command` and returns its reply (pushes meanwhile are kept for
    /// [`Client::push`]).
    pub async fn call(&mut self, command: Command) -> ServerMessage {
        let id = self.next_id;
        self.next_id += 1;
        self.send(&Request {
            id,
            command: Some(command),
        })
        .await;
        loop {
            let message = self.next().await.expect("the connection stays open");
            if message.id == id {
                return message;
            }
            assert_eq!(message.id, 0, "a reply to another request: {message:?}");
            self.pushes.push_back(message);
        }
    }

    /// Like [`Client::call`], expecting success; returns the body.
    pub async fn ok(&mut self, command: Command) -> Body {
        let reply = self.call(command).await;
        assert!(reply.error.is_none(), "{reply:?}");
        reply.body.expect("a body")
    }

    /// Pushes received while waiting for replies, not yet taken.
    pub fn pending_pushes(&self) -> &VecDeque<ServerMessage> {
        &self.pushes
    }

    /// The next push.
    pub async fn push(&mut self) -> ServerMessage {
        if let Some(push) = self.pushes.pop_front() {
            return push;
        }
        let push = self.next().await.expect("a push, not a close");
        assert_eq!(push.id, 0, "{push:?}");
        push
    }

    /// The next push whose body matches `wanted`, skipping others.
    pub async fn push_where(&mut self, wanted: impl Fn(&Body) -> bool) -> Body {
        loop {
            let push = self.push().await;
            if let Some(body) = push.body {
                if wanted(&body) {
                    return body;
                }
            }
        }
    }

    /// Whether the gateway closes the connection within [`WAIT`] (messages meanwhile are
    /// returned).
    pub async fn closed(&mut self) -> Vec<ServerMessage> {
        let mut seen = Vec::new();
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.read()).await {
                Ok(Some(message)) => seen.push(message),
                Ok(None) => return seen,
                Err(_) => panic!("the connection stayed open; saw {seen:?}"),
            }
        }
    }

    /// Registers `name` and logs in on `device`.
    pub async fn register_login(&mut self, name: &str, device: &str) -> Session {
        self.ok(Command::Register(RegisterRequest {
            name: name.to_owned(),
            password: "secret-password".to_owned(),
            nickname: String::new(),
        }))
        .await;
        self.login(name, device).await
    }

    pub async fn login(&mut self, name: &str, device: &str) -> Session {
        let Body::Session(session) = self
            .ok(Command::Login(Login {
                name: name.to_owned(),
                password: "secret-password".to_owned(),
                device_id: device.to_owned(),
                ..Login::default()
            }))
            .await
        else {
            panic!("a session")
        };
        self.session = Some(session.clone());
        session
    }

    pub fn user_id(&self) -> u64 {
        self.session.as_ref().expect("logged in").user_id
    }
}

/// Makes the users of `a` and `b` friends.
pub async fn befriend(a: &mut Client, b: &mut Client) {
    let Body::FriendRequest(request) = a
        .ok(Command::AddFriend(SendFriendRequestRequest {
            to_user_id: b.user_id(),
            message: String::new(),
        }))
        .await
    else {
        panic!("a friend request")
    };
    b.ok(Command::RespondFriend(RespondFriendRequestRequest {
        request_id: request.request_id,
        accept: true,
    }))
    .await;
}

/// A name no other test uses.
pub fn name(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}{}", NEXT.fetch_add(1, Ordering::Relaxed))
}
