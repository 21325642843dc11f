//! The session behind a [`ZooKeeper`](super::ZooKeeper) handle: one live client at a time,
//! replaced by a new one after the old session expires.
//!
//! A ZooKeeper session survives disconnections shorter than its timeout (the client library
//! reconnects and re-arms watches by itself) but not an expiry: then every ephemeral node and
//! watch of that session is gone and only a new session helps. The supervisor here opens that
//! new session and publishes it; the tasks of this module wait for it and redo their work.

use std::convert::Infallible;
use std::future::Future;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use zookeeper_client as zk;

pub(super) use crate::backoff::Backoff;
use crate::discovery::DiscoveryError;

/// Who may do what with the nodes this handle creates: with no credential anyone may do
/// anything (a registry on a trusted network); with one, only sessions that authenticated with
/// the same credential may change them, and anyone may read them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Access {
    Open,
    Secured,
}

/// `auth` expands to the digest identity the creating session authenticated with.
static SECURED: LazyLock<[zk::Acl; 2]> = LazyLock::new(|| {
    [
        zk::Acl::new(zk::Permission::ALL, zk::AuthId::new("auth", "")),
        zk::Acl::new(zk::Permission::READ, zk::AuthId::anyone()),
    ]
});

impl Access {
    pub(super) fn acls(self) -> zk::Acls<'static> {
        match self {
            Access::Open => zk::Acls::anyone_all(),
            Access::Secured => zk::Acls::new(&SECURED[..]),
        }
    }

    /// Persistent parents (services, config, election directories).
    pub(super) fn persistent(self) -> zk::CreateOptions<'static> {
        zk::CreateMode::Persistent.with_acls(self.acls())
    }

    /// Instance nodes: gone with the session that created them.
    pub(super) fn ephemeral(self) -> zk::CreateOptions<'static> {
        zk::CreateMode::Ephemeral.with_acls(self.acls())
    }

    /// Election candidates: ordered by the sequence ZooKeeper appends.
    pub(super) fn ephemeral_sequential(self) -> zk::CreateOptions<'static> {
        zk::CreateMode::EphemeralSequential.with_acls(self.acls())
    }
}

/// A live session: its client and a number that grows with every new session, so that a
/// task can tell "my session ended" from "I have not looked yet".
#[derive(Clone, Debug)]
pub(super) struct Session {
    pub(super) client: zk::Client,
    pub(super) generation: u64,
}

impl Session {
    /// The id ZooKeeper stores as `ephemeralOwner` of the nodes this session creates.
    pub(super) fn id(&self) -> i64 {
        self.client.session_id().0
    }
}

/// What the supervisor publishes.
#[derive(Clone, Debug, Default)]
pub(super) struct Link {
    /// `None` between an expiry and the next session, and after close.
    pub(super) session: Option<Session>,
    /// Whether the session has a connection right now.
    pub(super) connected: bool,
}

impl Link {
    fn generation(&self) -> Option<u64> {
        self.session.as_ref().map(|s| s.generation)
    }
}

/// What every background task needs. It holds no task handles, so a task holding it does
/// not keep itself (or the handle that owns it) alive.
#[derive(Clone, Debug)]
pub(super) struct Core {
    pub(super) root: Arc<str>,
    pub(super) link: watch::Receiver<Link>,
    pub(super) closed: CancellationToken,
    /// Bound on the calls that report a result (connect, register, first reads).
    pub(super) timeout: Duration,
    /// The ACLs of the nodes this handle creates.
    pub(super) access: Access,
}

impl Core {
    /// `root/a/b/...`.
    pub(super) fn path(&self, parts: &[&str]) -> String {
        let mut path = String::from(&*self.root);
        for part in parts {
            path.push('/');
            path.push_str(part);
        }
        path
    }

    /// The current session, waiting through a gap after an expiry; `None` once closed.
    pub(super) async fn session(&self) -> Option<Session> {
        let mut link = self.link.clone();
        tokio::select! {
            found = link.wait_for(|l| l.session.is_some()) => {
                found.ok().and_then(|l| l.session.clone())
            }
            () = self.closed.cancelled() => None,
        }
    }

    /// Returns once session `generation` is over (expired, replaced or closed).
    pub(super) async fn ended(&self, generation: u64) {
        let mut link = self.link.clone();
        tokio::select! {
            _ = link.wait_for(|l| l.generation() != Some(generation)) => {}
            () = self.closed.cancelled() => {}
        }
    }

    /// Whether session `generation` is the current one and connected.
    pub(super) fn is_connected(&self, generation: u64) -> bool {
        let link = self.link.borrow();
        link.connected && link.generation() == Some(generation)
    }

    /// Returns once session `generation` has lost its connection or is over.
    pub(super) async fn disconnected(&self, generation: u64) {
        let mut link = self.link.clone();
        tokio::select! {
            _ = link.wait_for(|l| !l.connected || l.generation() != Some(generation)) => {}
            () = self.closed.cancelled() => {}
        }
    }

    /// Returns once session `generation` is connected again or is over.
    pub(super) async fn reconnected(&self, generation: u64) {
        let mut link = self.link.clone();
        tokio::select! {
            _ = link.wait_for(|l| l.connected || l.generation() != Some(generation)) => {}
            () = self.closed.cancelled() => {}
        }
    }

    /// Runs `op` against the current session until it succeeds, fails for a reason other
    /// than the session, or `self.timeout` passes. Returns the result and the generation of
    /// the session it ran in.
    pub(super) async fn run<T, F, Fut>(
        &self,
        what: &str,
        mut op: F,
    ) -> Result<(T, u64), DiscoveryError>
    where
        F: FnMut(zk::Client) -> Fut,
        Fut: Future<Output = Result<T, zk::Error>>,
    {
        let mut last: Option<zk::Error> = None;
        let attempts = async {
            loop {
                let Some(session) = self.session().await else {
                    return Err(closed());
                };
                match op(session.client.clone()).await {
                    Ok(value) => return Ok((value, session.generation)),
                    Err(err) if ends_session(&err) => {
                        last = Some(err);
                        self.ended(session.generation).await;
                    }
                    // Requests wait for the reconnection; only the ones in flight fail.
                    Err(err) if is_transient(&err) => {
                        last = Some(err);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(err) => return Err(backend(what, &err)),
                }
            }
        };
        match tokio::time::timeout(self.timeout, attempts).await {
            Ok(result) => result,
            Err(_) => Err(match last {
                Some(err) => DiscoveryError::backend_caused(
                    format!("{what}: no answer within {:?}", self.timeout),
                    err,
                ),
                None => DiscoveryError::backend(format!(
                    "{what}: no ZooKeeper session within {:?}",
                    self.timeout
                )),
            }),
        }
    }

    /// Runs `work` in every session until the handle closes. Each time it stops, waits
    /// before starting over: for a new session when the error ended this one, else for
    /// the backoff.
    pub(super) async fn follow_sessions(self, mut work: impl Follow) {
        let mut backoff = backoff();
        loop {
            let Some(session) = self.session().await else {
                return;
            };
            let Err(err) = work.follow(&session, &mut backoff).await;
            work.stopped(&err);
            if !self.pause(&err, session.generation, &mut backoff).await {
                return;
            }
        }
    }

    /// Waits before a retry: until the session is over when `err` ended it, else for the
    /// backoff. Returns `false` once the handle is closed.
    pub(super) async fn pause(
        &self,
        err: &zk::Error,
        generation: u64,
        backoff: &mut Backoff,
    ) -> bool {
        if ends_session(err) {
            self.ended(generation).await;
        } else {
            tokio::select! {
                () = backoff.wait() => {}
                () = self.closed.cancelled() => {}
            }
        }
        !self.closed.is_cancelled()
    }
}

/// Work that follows ZooKeeper state within one session and starts over in the next;
/// run by [`Core::follow_sessions`].
pub(super) trait Follow: Send {
    /// Follows within `session` until something stops it; returns why. `backoff` paces
    /// retries inside the session and is reset by the work once it is back on its feet.
    fn follow(
        &mut self,
        session: &Session,
        backoff: &mut Backoff,
    ) -> impl Future<Output = Result<Infallible, zk::Error>> + Send;

    /// Called each time [`Follow::follow`] stops, before the wait for the next attempt.
    fn stopped(&mut self, err: &zk::Error);
}

/// Whether `err` means the session is unusable and only a new one helps.
pub(super) fn ends_session(err: &zk::Error) -> bool {
    matches!(
        err,
        zk::Error::SessionExpired
            | zk::Error::SessionMoved
            | zk::Error::ClientClosed
            | zk::Error::AuthFailed
            | zk::Error::NoHosts
    )
}

/// Whether `err` comes from the connection rather than from ZooKeeper's answer: requests in
/// flight when a connection breaks fail with the transport's error, and are worth sending
/// again once the session has reconnected.
pub(super) fn is_transient(err: &zk::Error) -> bool {
    matches!(
        err,
        zk::Error::ConnectionLoss
            | zk::Error::Timeout
            | zk::Error::Throttled
            | zk::Error::UnexpectedError(_)
            | zk::Error::Custom(_)
    )
}

/// The error a watcher's session event stands for.
pub(super) fn session_error(event: &zk::WatchedEvent) -> zk::Error {
    match event.session_state {
        zk::SessionState::AuthFailed => zk::Error::AuthFailed,
        zk::SessionState::Closed => zk::Error::ClientClosed,
        _ => zk::Error::SessionExpired,
    }
}

pub(super) fn backend(what: &str, err: &zk::Error) -> DiscoveryError {
    DiscoveryError::backend_caused(what, err.clone())
}

pub(super) fn closed() -> DiscoveryError {
    DiscoveryError::backend("ZooKeeper handle closed")
}

/// Retry delays: 100 ms doubling up to 2 s. Short, because what waits behind them is a
/// stale instance list or a missing registration.
pub(super) fn backoff() -> Backoff {
    Backoff::new(Duration::from_millis(100), Duration::from_secs(2))
}

/// A spawned task that is aborted when its owner drops it.
#[derive(Debug)]
pub(super) struct Task(JoinHandle<()>);

impl Task {
    pub(super) fn spawn(future: impl Future<Output = ()> + Send + 'static) -> Task {
        Task(tokio::spawn(future))
    }

    /// Aborts the task and waits until it has stopped, so that no request it would still
    /// send can land after the caller's next one.
    pub(super) async fn stop(mut self) {
        self.0.abort();
        // The task's own outcome (cancelled or finished) does not matter here.
        let _ = (&mut self.0).await;
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Where and how sessions are opened: the first one and each after an expiry.
#[derive(Clone)]
pub(super) struct Dial {
    pub(super) hosts: String,
    pub(super) session_timeout: Duration,
    pub(super) connect_timeout: Duration,
    /// `user:password` for the digest scheme, added to every session.
    pub(super) credential: Option<String>,
}

impl Dial {
    /// The ACLs of the nodes these sessions create.
    pub(super) fn access(&self) -> Access {
        match self.credential {
            Some(_) => Access::Secured,
            None => Access::Open,
        }
    }
}

/// Opens a session, trying the hosts with backoff until `dial.connect_timeout`.
pub(super) async fn connect(dial: &Dial) -> Result<zk::Client, zk::Error> {
    let attempts = async {
        let mut backoff = backoff();
        loop {
            // Fail-eagerly returns after one pass over the hosts instead of waiting a whole
            // session timeout, so that this loop decides how long to keep trying.
            let mut connector = zk::Client::connector()
                .with_session_timeout(dial.session_timeout)
                .with_fail_eagerly();
            if let Some(credential) = &dial.credential {
                connector = connector.with_auth("digest", credential.as_bytes());
            }
            match connector.connect(&dial.hosts).await {
                Ok(client) => return Ok(client),
                Err(err) if err == zk::Error::NoHosts || is_transient(&err) => {
                    debug!(hosts = %dial.hosts, cause = %err, "ZooKeeper not reachable yet");
                    backoff.wait().await;
                }
                Err(err) => return Err(err),
            }
        }
    };
    tokio::time::timeout(dial.connect_timeout, attempts)
        .await
        .unwrap_or(Err(zk::Error::Timeout))
}

/// Publishes the current session and replaces it after an expiry, until closed.
pub(super) struct Supervisor {
    pub(super) dial: Dial,
    pub(super) link: watch::Sender<Link>,
    pub(super) closed: CancellationToken,
}

impl Supervisor {
    pub(super) async fn run(self, mut client: zk::Client) {
        let mut generation = 1;
        loop {
            self.follow(Session { client, generation }).await;
            // Dropping the published client is what lets the session close.
            self.link.send_replace(Link::default());
            if self.closed.is_cancelled() {
                return;
            }
            client = match self.reconnect().await {
                Some(client) => client,
                None => return,
            };
            generation += 1;
            info!(session = %client.session_id(), generation, "new ZooKeeper session");
        }
    }

    /// Mirrors the session's state into the link until the session is over.
    async fn follow(&self, session: Session) {
        let mut states = session.client.state_watcher();
        let mut state = states.state();
        loop {
            let connected = match state {
                zk::SessionState::SyncConnected | zk::SessionState::ConnectedReadOnly => true,
                zk::SessionState::Disconnected => false,
                zk::SessionState::Expired
                | zk::SessionState::Closed
                | zk::SessionState::AuthFailed => {
                    warn!(session = %session.client.session_id(), %state, "ZooKeeper session ended");
                    return;
                }
            };
            if !connected {
                info!(session = %session.client.session_id(), "ZooKeeper disconnected; reconnecting");
            }
            self.link.send_if_modified(|link| {
                let same =
                    link.generation() == Some(session.generation) && link.connected == connected;
                if !same {
                    *link = Link {
                        session: Some(session.clone()),
                        connected,
                    };
                }
                !same
            });
            state = tokio::select! {
                state = states.changed() => state,
                () = self.closed.cancelled() => return,
            };
        }
    }

    async fn reconnect(&self) -> Option<zk::Client> {
        let mut backoff = backoff();
        loop {
            let attempt = connect(&self.dial);
            let result = tokio::select! {
                result = attempt => result,
                () = self.closed.cancelled() => return None,
            };
            match result {
                Ok(client) => return Some(client),
                Err(err) => {
                    warn!(hosts = %self.dial.hosts, cause = %err, "cannot open a ZooKeeper session")
                }
            }
            tokio::select! {
                () = backoff.wait() => {}
                () = self.closed.cancelled() => return None,
            }
        }
    }
}
