//! ZooKeeper: service registry, watched configuration and leader election.
//!
//! One [`ZooKeeper`] handle is one ZooKeeper session (replaced by a new session when the old
//! one expires). It implements [`Discover`](crate::discovery::Discover) and
//! [`Register`](crate::discovery::Register), and adds typed configuration
//! ([`ZooKeeper::watch_config`], [`ZooKeeper::set_config`]) and leader election
//! ([`ZooKeeper::elect`]).
//!
//! ```no_run
//! # async fn demo() -> Result<(), mprpc::discovery::DiscoveryError> {
//! use mprpc::discovery::{Discover, Instance, Register};
//! use mprpc::zookeeper::{ZkConfig, ZooKeeper};
//!
//! let zk = ZooKeeper::connect("127.0.0.1:2181", ZkConfig::default()).await?;
//! // A server announces itself until `deregister` (or until its session ends):
//! let registration = zk.register("example.Echo", Instance::new("10.0.0.5:7000")).await?;
//! // A client follows the instance list; no ZooKeeper round trip per call:
//! let instances = zk.subscribe("example.Echo").await?;
//! println!("{} instances", instances.borrow().len());
//! registration.deregister().await;
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! Nodes, under a root that defaults to `/mprpc`:
//!
//! ```text
//! /mprpc/services/<package.Service>/<instance-id>   ephemeral, JSON {addr, weight, zone, version, started_at}
//! /mprpc/config/<name>                              persistent, JSON of the config value
//! /mprpc/election/<name>/n-<token>-<sequence>       ephemeral sequential, data = candidate id
//! ```
//!
//! Code:
//! - this file: the [`ZooKeeper`] handle, [`ZkConfig`] and [`ZkUrl`];
//! - `acl`: closing the tree under the root to sessions without the cluster credential;
//! - `session`: the supervisor that opens a new session after an expiry, and what the
//!   background tasks share (waiting for a session, retries, task ownership);
//! - `discover`: one task per subscribed service following children and data watches;
//! - `register`: ephemeral instance nodes and the task that recreates them in a new session;
//! - `config`: [`ConfigWatch`] and [`ZooKeeper::set_config`];
//! - `election`: [`Election`], lowest sequence number leads, each candidate watches only its
//!   predecessor.
//!
//! # Failures
//!
//! - *Disconnected* (shorter than the session timeout): the client library reconnects and
//!   re-arms watches; subscribers keep their last list, registrations stay.
//! - *Session expired* (ZooKeeper did not hear from us for a session timeout, or ZooKeeper
//!   was down for longer than 1.4 session timeouts, after which the client gives the session
//!   up): a new session is opened with backoff; registrations are recreated (replacing a node
//!   the old session may have left), subscriptions and config watches re-read and re-arm their
//!   watches, election candidates join again. A leader stops being leader as soon as it is
//!   disconnected, since its session may expire without it knowing.
//!
//! `docs/zookeeper.md` in the repository covers the same for operators, with how to inspect
//! the nodes with `zkCli.sh`.

mod acl;
mod config;
mod discover;
mod election;
mod register;
mod session;

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::info;
use zookeeper_client as zk;

use crate::discovery::DiscoveryError;

pub use config::ConfigWatch;
pub use election::Election;

use discover::Subscription;
use session::{Core, Link, Session, Supervisor, Task};

/// ZooKeeper settings.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ZkConfig {
    /// Path under which every node lives (default `/mprpc`).
    pub root: String,
    /// Session timeout asked of ZooKeeper (default 10 s); the server clamps it to its
    /// `minSessionTimeout`..`maxSessionTimeout` (by default 2 to 20 ticks).
    pub session_timeout: Duration,
    /// How long calls that report a result (connect, register, subscribe's first list,
    /// config writes, election entry) wait for ZooKeeper (default 10 s).
    pub connect_timeout: Duration,
    /// The cluster credential, `user:password` of ZooKeeper's `digest` scheme (default none).
    /// With one, every session authenticates with it, the nodes this handle creates can be
    /// changed only by sessions holding the same credential (anyone may read them), and
    /// [`ZooKeeper::connect`] closes the tree under the root to others (see
    /// [`ZkConfig::credential`]).
    pub credential: Option<String>,
}

impl Default for ZkConfig {
    fn default() -> ZkConfig {
        ZkConfig {
            root: "/mprpc".to_owned(),
            session_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            credential: None,
        }
    }
}

impl ZkConfig {
    /// Sets the root path. Default `/mprpc`.
    pub fn root(mut self, root: impl Into<String>) -> ZkConfig {
        self.root = root.into();
        self
    }

    /// Sets the session timeout. Default 10 s.
    pub fn session_timeout(mut self, timeout: Duration) -> ZkConfig {
        self.session_timeout = timeout;
        self
    }

    /// Sets the connect timeout. Default 10 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> ZkConfig {
        self.connect_timeout = timeout;
        self
    }

    /// Authenticates every session with `user:password` (ZooKeeper's `digest` scheme) and
    /// protects the registry with it. Default none: the nodes are open to anyone, which suits
    /// only a ZooKeeper that nothing untrusted reaches.
    ///
    /// With a credential, nodes created through this handle carry two ACL entries: everything
    /// for the sessions that authenticated with the same credential, read for anyone. At
    /// connect, nodes under the root that others may change (left by an earlier deployment
    /// without a credential) are closed: persistent ones get the same ACL, ephemeral ones (a
    /// registration nobody with the credential made) are deleted. A node under the root
    /// that others control and this credential cannot fix fails the connect.
    pub fn credential(mut self, user: &str, password: &str) -> ZkConfig {
        self.credential = Some(format!("{user}:{password}"));
        self
    }
}

/// A registry address: `zk://host1:2181,host2:2181/optional-root`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZkUrl {
    /// `host:port` pairs separated by commas, as ZooKeeper clients take them.
    pub hosts: String,
    /// The root path, when the URL has one.
    pub root: Option<String>,
}

impl FromStr for ZkUrl {
    type Err = DiscoveryError;

    fn from_str(url: &str) -> Result<ZkUrl, DiscoveryError> {
        let invalid = |why: &str| DiscoveryError::Invalid(format!("ZooKeeper URL {url:?}: {why}"));
        let rest = url
            .strip_prefix("zk://")
            .ok_or_else(|| invalid("expected zk://host:port[,host:port…][/root]"))?;
        let (hosts, root) = match rest.find('/') {
            Some(slash) => (&rest[..slash], Some(&rest[slash..])),
            None => (rest, None),
        };
        if hosts.is_empty() {
            return Err(invalid("no host"));
        }
        for host in hosts.split(',') {
            let port = host.rsplit_once(':').map(|(_, port)| port);
            if host.is_empty() || port.is_some_and(|p| p.parse::<u16>().is_err()) {
                return Err(invalid(&format!("bad host {host:?}")));
            }
        }
        let root = match root.map(|r| r.trim_end_matches('/')) {
            None | Some("") => None,
            Some(root) => Some(check_root(root)?.to_owned()),
        };
        Ok(ZkUrl {
            hosts: hosts.to_owned(),
            root,
        })
    }
}

/// A handle on one ZooKeeper session: discovery, registration, configuration, election.
///
/// Cheap to clone; clones share the session. The session and every background task end when
/// the last clone (and the last [`Registration`](crate::discovery::Registration),
/// [`ConfigWatch`] or [`Election`] made from it) is dropped, or at [`ZooKeeper::close`].
#[derive(Clone)]
pub struct ZooKeeper {
    inner: Arc<Inner>,
}

struct Inner {
    core: Core,
    _supervisor: Task,
    /// One per subscribed service. A parking_lot mutex: held for a map lookup or insert,
    /// never across an await.
    subscriptions: parking_lot::Mutex<HashMap<String, Subscription>>,
    /// Which registration owns each instance path.
    claims: register::Claims,
    /// Clean-ups started from `Drop` impls (e.g. deleting a dropped candidate's node).
    /// Same mutex reasoning as above.
    cleanups: parking_lot::Mutex<JoinSet<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.core.closed.cancel();
    }
}

impl std::fmt::Debug for ZooKeeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZooKeeper")
            .field("root", &self.root())
            .field("session", &self.session_id())
            .field("connected", &self.is_connected())
            .finish()
    }
}

impl ZooKeeper {
    /// Opens a session with the ensemble at `hosts` (`host:port,host:port`).
    ///
    /// # Errors
    /// [`DiscoveryError::Invalid`] for a bad root; [`DiscoveryError::Backend`] when no
    /// session could be opened within `config.connect_timeout`.
    pub async fn connect(hosts: &str, config: ZkConfig) -> Result<ZooKeeper, DiscoveryError> {
        let root = check_root(config.root.trim_end_matches('/'))?;
        if let Some(credential) = &config.credential
            && !credential
                .split_once(':')
                .is_some_and(|(u, p)| !u.is_empty() && !p.is_empty())
        {
            return Err(DiscoveryError::Invalid(
                "ZooKeeper credential: expected user:password, both non-empty".into(),
            ));
        }
        let dial = session::Dial {
            hosts: hosts.to_owned(),
            session_timeout: config.session_timeout,
            connect_timeout: config.connect_timeout,
            credential: config.credential.clone(),
        };
        let client = session::connect(&dial).await.map_err(|err| {
            DiscoveryError::backend_caused(format!("connect to ZooKeeper at {hosts}"), err)
        })?;
        if dial.credential.is_some() {
            acl::close_tree(&client, root).await?;
        }
        info!(hosts, session = %client.session_id(), timeout = ?client.session_timeout(), "ZooKeeper session opened");
        // Published before the supervisor runs, so that the handle reports its session at once.
        let first = Session {
            client: client.clone(),
            generation: 1,
        };
        let (link, rx) = watch::channel(Link {
            session: Some(first),
            connected: true,
        });
        let closed = CancellationToken::new();
        let access = dial.access();
        let supervisor = Supervisor {
            dial,
            link,
            closed: closed.clone(),
        };
        let core = Core {
            root: root.into(),
            link: rx,
            closed,
            timeout: config.connect_timeout,
            access,
        };
        let zk = ZooKeeper {
            inner: Arc::new(Inner {
                core,
                _supervisor: Task::spawn(supervisor.run(client)),
                subscriptions: parking_lot::Mutex::default(),
                claims: register::Claims::default(),
                cleanups: parking_lot::Mutex::default(),
            }),
        };
        Ok(zk)
    }

    /// Connects to a `zk://host:port[,host:port…][/root]` URL; a root in the URL replaces
    /// `config.root`.
    ///
    /// # Errors
    /// [`DiscoveryError::Invalid`] for a malformed URL, else as [`ZooKeeper::connect`].
    pub async fn connect_url(url: &str, mut config: ZkConfig) -> Result<ZooKeeper, DiscoveryError> {
        let url: ZkUrl = url.parse()?;
        if let Some(root) = url.root {
            config.root = root;
        }
        ZooKeeper::connect(&url.hosts, config).await
    }

    /// The root path every node lives under.
    pub fn root(&self) -> &str {
        &self.inner.core.root
    }

    /// Whether the session is connected right now.
    pub fn is_connected(&self) -> bool {
        self.inner.core.link.borrow().connected
    }

    /// The current session's id, `None` while a new session is being opened.
    pub fn session_id(&self) -> Option<i64> {
        self.session().map(|s| s.id())
    }

    /// The current session's client, for operations this module does not wrap (inspecting
    /// nodes, ACLs…). `None` while a new session is being opened. Nodes created through it
    /// are not recreated after an expiry, and holding it keeps the session open.
    pub fn client(&self) -> Option<zk::Client> {
        self.session().map(|s| s.client)
    }

    fn session(&self) -> Option<Session> {
        self.inner.core.link.borrow().session.clone()
    }

    /// Ends the session now instead of when the last clone is dropped: ZooKeeper deletes its
    /// ephemeral nodes at once (registrations vanish, a leader steps down) and every
    /// subscription, config watch and election stops following. Returns once ZooKeeper has
    /// confirmed, or after the connect timeout.
    pub async fn close(&self) {
        let core = &self.inner.core;
        let states = core
            .link
            .borrow()
            .session
            .as_ref()
            .map(|s| s.client.state_watcher());
        core.closed.cancel();
        let Some(mut states) = states else { return };
        let confirmed = async {
            while !states.peek_state().is_terminated() {
                states.changed().await;
            }
        };
        // Past the timeout ZooKeeper expires the session by itself.
        let _ = tokio::time::timeout(core.timeout, confirmed).await;
    }

    fn core(&self) -> &Core {
        &self.inner.core
    }

    /// Runs a clean-up owned by this handle (aborted if the handle goes away first, which
    /// ends the session and so does the clean-up's work anyway).
    fn spawn_cleanup(&self, future: impl std::future::Future<Output = ()> + Send + 'static) {
        // Outside a runtime (dropped after it shut down) there is nothing to run it on; the
        // session, and with it the work, ends with the process.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let mut cleanups = self.inner.cleanups.lock();
        while cleanups.try_join_next().is_some() {}
        cleanups.spawn_on(future, &runtime);
    }
}

fn check_root(root: &str) -> Result<&str, DiscoveryError> {
    let bad = !root.starts_with('/')
        || root.len() < 2
        || root
            .split('/')
            .skip(1)
            .any(|part| check_name(part).is_err());
    if bad {
        return Err(DiscoveryError::Invalid(format!(
            "ZooKeeper root {root:?}: expected an absolute path such as /mprpc"
        )));
    }
    Ok(root)
}

/// One path segment: a service, instance id, config or election name.
fn check_name(name: &str) -> Result<&str, DiscoveryError> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(DiscoveryError::Invalid(format!(
            "{name:?} is not a usable ZooKeeper node name"
        )));
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_with_hosts_and_root() {
        let url: ZkUrl = "zk://a:2181,b:2182/apps/mprpc/".parse().unwrap();
        assert_eq!(url.hosts, "a:2181,b:2182");
        assert_eq!(url.root.as_deref(), Some("/apps/mprpc"));
        let url: ZkUrl = "zk://127.0.0.1:2181".parse().unwrap();
        assert_eq!(
            url,
            ZkUrl {
                hosts: "127.0.0.1:2181".into(),
                root: None
            }
        );
        let url: ZkUrl = "zk://localhost/".parse().unwrap();
        assert_eq!(url.root, None);
    }

    #[test]
    fn bad_urls_are_invalid() {
        for url in [
            "http://a:1",
            "zk://",
            "zk:///root",
            "zk://a:x",
            "zk://a:1,,b:2",
            "zk://a:1/x//y",
        ] {
            assert!(
                matches!(url.parse::<ZkUrl>(), Err(DiscoveryError::Invalid(_))),
                "{url}"
            );
        }
    }

    #[test]
    fn names_and_roots() {
        assert!(check_root("/mprpc").is_ok());
        assert!(check_root("/a/b").is_ok());
        for root in ["", "/", "mprpc", "/a//b", "/a/../b"] {
            assert!(check_root(root).is_err(), "{root}");
        }
        assert!(check_name("example.Echo").is_ok());
        for name in ["", ".", "..", "a/b"] {
            assert!(check_name(name).is_err(), "{name}");
        }
    }
}
