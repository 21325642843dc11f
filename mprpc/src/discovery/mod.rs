//! Service discovery: where a client learns which instances serve a service, and where a
//! server announces itself.
//!
//! A [`Discover`] hands out a [`watch::Receiver`] per service that always holds the latest
//! known instance list; the client's balancer diffs each new list against its endpoints
//! (inserting and removing connection pools). Snapshots rather than a stream of deltas: a
//! subscriber that misses an update still converges on the next one, and a backend that
//! goes away (ZooKeeper down) simply stops updating, leaving callers on the last list.
//!
//! Implementations: [`Static`] (a fixed list), [`InProcess`] (a registry inside one process,
//! for tests and the all-in-one binary) and `ZooKeeper` (ephemeral nodes under
//! `/mprpc/services/<service>/<instance-id>`).
//!
//! A server registers an [`Instance`]: a unique id ([`Instance::new`] makes one) and the
//! address callers dial, which for a listener bound to a wildcard is not the bound address
//! but [`advertise_addr`]'s answer (or one the operator names).

mod host;
mod in_process;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

use crate::service::BoxFuture;

pub use host::advertise_addr;
pub use in_process::InProcess;

/// One instance of a service, as registered. Serialised as the JSON data of its ZooKeeper
/// node: `{"addr":"10.0.0.5:6101","weight":100,"zone":"a","version":"0.1.0","started_at":…}`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Instance {
    /// Unique among the service's instances; the node name in ZooKeeper.
    #[serde(skip)]
    pub id: String,
    /// `host:port` callers dial: an address they can reach, never a wildcard such as
    /// `0.0.0.0` (see [`advertise_addr`]).
    pub addr: String,
    /// Relative share of traffic for weighted balancing (default 100).
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Locality label, free-form.
    #[serde(default)]
    pub zone: String,
    /// The server's version, free-form.
    #[serde(default)]
    pub version: String,
    /// Unix time in milliseconds when the instance started.
    #[serde(default)]
    pub started_at: u64,
}

fn default_weight() -> u32 {
    100
}

impl Instance {
    /// An instance at `addr` with weight 100 and a new id, unique to this process and this
    /// call: `<hostname>-<pid>-<8 hex digits>`, the digits random per process and counting
    /// up per id. Two servers therefore never share an id by accident, wherever they run.
    ///
    /// A restarted process gets a new id, so its predecessor's entry stays listed until
    /// the registry drops it (for ZooKeeper, when the old session expires; callers eject it
    /// sooner). Set an id with [`Instance::id`] for an identity that survives restarts.
    pub fn new(addr: impl Into<String>) -> Instance {
        let addr = addr.into();
        let started_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Instance {
            id: host::instance_id(),
            addr,
            weight: default_weight(),
            zone: String::new(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            started_at,
        }
    }

    /// Sets the weight.
    pub fn weight(mut self, weight: u32) -> Instance {
        self.weight = weight;
        self
    }

    /// Sets the id. It must be unique among the service's instances and a usable
    /// ZooKeeper node name (not empty, `.` or `..`, without `/`).
    pub fn id(mut self, id: impl Into<String>) -> Instance {
        self.id = id.into();
        self
    }
}

/// The instances of one service at one moment.
pub type Instances = Arc<[Instance]>;

/// Why discovery or registration failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DiscoveryError {
    /// The discovery backend failed or cannot be reached.
    #[error("discovery backend failed: {context}")]
    Backend {
        /// What was being done, and why it ended.
        context: String,
        /// The backend's own error, when it gave one.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// A registry URL or an instance record is malformed.
    #[error("invalid discovery data: {0}")]
    Invalid(String),
}

impl DiscoveryError {
    /// A backend failure described by `context` alone.
    pub fn backend(context: impl Into<String>) -> DiscoveryError {
        DiscoveryError::Backend {
            context: context.into(),
            source: None,
        }
    }

    /// A backend failure while doing `context`, caused by `source`.
    pub fn backend_caused(
        context: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> DiscoveryError {
        DiscoveryError::Backend {
            context: context.into(),
            source: Some(Box::new(source)),
        }
    }
}

/// A source of instance lists.
pub trait Discover: Send + Sync + 'static {
    /// Subscribes to `service`. The receiver holds the latest known list (possibly empty)
    /// and changes whenever the list does; it keeps the last list while the backend is
    /// unreachable.
    ///
    /// # Errors
    /// [`DiscoveryError`] when the first list cannot be read.
    fn subscribe(
        &self,
        service: &str,
    ) -> BoxFuture<Result<watch::Receiver<Instances>, DiscoveryError>>;
}

/// Where servers announce their instances.
pub trait Register: Send + Sync + 'static {
    /// Announces `instance` of `service` until the returned [`Registration`] is
    /// deregistered or dropped.
    ///
    /// # Errors
    /// [`DiscoveryError`] when the backend refuses or cannot be reached.
    fn register(
        &self,
        service: &str,
        instance: Instance,
    ) -> BoxFuture<Result<Registration, DiscoveryError>>;
}

/// What a backend does to withdraw one registration.
pub trait Withdraw: Send + 'static {
    /// Removes the registration and waits until the backend confirms.
    fn withdraw(self: Box<Self>) -> BoxFuture<()>;
}

/// A live registration. [`Registration::deregister`] removes it and waits for the backend;
/// dropping it removes it in the background (or, for ZooKeeper, when the session ends).
pub struct Registration {
    withdraw: Option<Box<dyn Withdraw>>,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("live", &self.withdraw.is_some())
            .finish()
    }
}

impl Registration {
    /// Wraps a backend's withdrawal.
    pub fn new(withdraw: impl Withdraw) -> Registration {
        Registration {
            withdraw: Some(Box::new(withdraw)),
        }
    }

    /// Removes the registration; returns once the backend has it gone.
    pub async fn deregister(mut self) {
        if let Some(withdraw) = self.withdraw.take() {
            withdraw.withdraw().await;
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(withdraw) = self.withdraw.take() {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(withdraw.withdraw());
            }
        }
    }
}

/// A fixed list of instances, the same for every service.
#[derive(Debug, Clone)]
pub struct Static {
    instances: Instances,
}

impl Static {
    /// A list of `host:port` addresses, each with weight 100 and an id derived from the
    /// address (`10.0.0.5:7000` → `10.0.0.5_7000`), so that clients in every process given
    /// the same list place the same [`ConsistentHash`](crate::balance::ConsistentHash) ring.
    pub fn new<S: Into<String>>(addrs: impl IntoIterator<Item = S>) -> Static {
        Static::from_instances(addrs.into_iter().map(|addr| {
            let addr = addr.into();
            let id = addr.replace([':', '/', '[', ']'], "_");
            Instance::new(addr).id(id)
        }))
    }

    /// A list of instances.
    pub fn from_instances(instances: impl IntoIterator<Item = Instance>) -> Static {
        Static {
            instances: instances.into_iter().collect(),
        }
    }
}

impl Discover for Static {
    fn subscribe(
        &self,
        _service: &str,
    ) -> BoxFuture<Result<watch::Receiver<Instances>, DiscoveryError>> {
        // The sender is dropped at once: the receiver keeps the value and never changes.
        let (_, rx) = watch::channel(self.instances.clone());
        Box::pin(std::future::ready(Ok(rx)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backend_error_keeps_its_cause() {
        let cause = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let err = DiscoveryError::backend_caused("connect to ZooKeeper at zk1:2181", cause);
        assert_eq!(
            err.to_string(),
            "discovery backend failed: connect to ZooKeeper at zk1:2181"
        );
        let source = std::error::Error::source(&err).expect("the cause is kept");
        assert_eq!(source.to_string(), "refused");
        assert!(std::error::Error::source(&DiscoveryError::backend("closed")).is_none());
    }

    #[test]
    fn instances_at_one_address_get_different_ids() {
        // Two hosts both listening on 0.0.0.0:7000, say, must not share a node name.
        let (a, b) = (Instance::new("0.0.0.0:7000"), Instance::new("0.0.0.0:7000"));
        assert_ne!(a.id, b.id);
        assert_eq!(Instance::new("x:1").id("fixed").id, "fixed");
    }

    #[tokio::test]
    async fn a_static_list_names_instances_by_address() {
        let list = Static::new(["10.0.0.5:7000", "10.0.0.6:7000"]);
        let ids: Vec<String> = list
            .subscribe("s")
            .await
            .unwrap()
            .borrow()
            .iter()
            .map(|i| i.id.clone())
            .collect();
        assert_eq!(ids, ["10.0.0.5_7000", "10.0.0.6_7000"]);
    }
}
