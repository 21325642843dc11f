//! Following `/<root>/services/<service>`: a children watch on the service node and a data
//! watch on each instance node, one task per service shared by all its subscribers.

use std::collections::{BTreeMap, HashSet};
use std::convert::Infallible;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, warn};
use zookeeper_client as zk;

use super::session::{Backoff, Core, Follow, Session, Task, closed, session_error};
use super::{ZooKeeper, check_name};
use crate::discovery::{Discover, DiscoveryError, Instance, Instances};
use crate::service::BoxFuture;

/// Whether a subscription has published its first list yet.
#[derive(Debug, Clone)]
enum Load {
    /// Not yet; the last error, if an attempt failed.
    Pending(Option<String>),
    Done,
}

/// A subscribed service: the receivers handed out and the task feeding them.
pub(super) struct Subscription {
    instances: watch::Receiver<Instances>,
    load: watch::Receiver<Load>,
    _task: Task,
}

impl ZooKeeper {
    fn subscription(
        &self,
        service: &str,
    ) -> Result<(watch::Receiver<Instances>, watch::Receiver<Load>), DiscoveryError> {
        check_name(service)?;
        let mut subscriptions = self.inner.subscriptions.lock();
        let sub = subscriptions.entry(service.to_owned()).or_insert_with(|| {
            let (instances, instances_rx) = watch::channel(Instances::from(Vec::new()));
            let (load, load_rx) = watch::channel(Load::Pending(None));
            let follower = Follower {
                core: self.core().clone(),
                service: service.to_owned(),
                path: self.core().path(&["services", service]),
                tx: instances,
                load,
                known: BTreeMap::new(),
            };
            Subscription {
                instances: instances_rx,
                load: load_rx,
                _task: Task::spawn(follower.core.clone().follow_sessions(follower)),
            }
        });
        Ok((sub.instances.clone(), sub.load.clone()))
    }
}

impl Discover for ZooKeeper {
    fn subscribe(
        &self,
        service: &str,
    ) -> BoxFuture<Result<watch::Receiver<Instances>, DiscoveryError>> {
        let zk = self.clone();
        let service = service.to_owned();
        Box::pin(async move {
            // Inside the future: the follower task needs the runtime the caller awaits on.
            let (instances, mut load) = zk.subscription(&service)?;
            let timeout = zk.core().timeout;
            let loaded = tokio::time::timeout(timeout, load.wait_for(|l| matches!(l, Load::Done)))
                .await
                .is_ok_and(|loaded| loaded.is_ok());
            if loaded {
                return Ok(instances);
            }
            if zk.core().closed.is_cancelled() {
                return Err(closed());
            }
            let cause = match &*load.borrow() {
                Load::Pending(Some(err)) => format!(" ({err})"),
                _ => String::new(),
            };
            Err(DiscoveryError::backend(format!(
                "no instance list for {service} within {timeout:?}{cause}"
            )))
        })
    }
}

/// The task behind one subscription.
struct Follower {
    core: Core,
    service: String,
    path: String,
    tx: watch::Sender<Instances>,
    load: watch::Sender<Load>,
    /// The last list read, by instance id; kept across sessions so that subscribers keep
    /// it while ZooKeeper is away.
    known: BTreeMap<String, Instance>,
}

/// Data watches on instance nodes, each waiting in its own task of the set.
type DataWatches = JoinSet<(String, zk::WatchedEvent)>;

impl Follow for Follower {
    fn stopped(&mut self, err: &zk::Error) {
        if matches!(*self.load.borrow(), Load::Pending(_)) {
            self.load.send_replace(Load::Pending(Some(err.to_string())));
        }
        debug!(service = %self.service, cause = %err, "instance list following restarts");
    }

    /// Follows the service within one session; returns why it had to stop.
    async fn follow(
        &mut self,
        session: &Session,
        backoff: &mut Backoff,
    ) -> Result<Infallible, zk::Error> {
        let client = &session.client;
        let mut data_watches = DataWatches::new();
        // Children with a pending data watch in this session; it fires when they change or go.
        let mut watched = HashSet::new();
        loop {
            let (children, _, children_watch) =
                match client.get_and_watch_children(&self.path).await {
                    Ok(found) => found,
                    Err(zk::Error::NoNode) => {
                        client
                            .mkdir(&self.path, &self.core.access.persistent())
                            .await?;
                        continue;
                    }
                    Err(err) => return Err(err),
                };
            let present: HashSet<&String> = children.iter().collect();
            self.known.retain(|id, _| present.contains(id));
            for child in &children {
                if !watched.contains(child) {
                    self.read(client, child, &mut data_watches, &mut watched)
                        .await?;
                }
            }
            self.publish();
            backoff.reset();

            let mut children_changed = std::pin::pin!(children_watch.changed());
            loop {
                tokio::select! {
                    event = &mut children_changed => {
                        if event.event_type == zk::EventType::Session {
                            return Err(session_error(&event));
                        }
                        break;
                    }
                    Some(joined) = data_watches.join_next() => {
                        // A watch task only ends early if the client drops its side.
                        let (child, event) = joined
                            .map_err(|err| zk::Error::UnexpectedError(format!("data watch: {err}")))?;
                        if event.event_type == zk::EventType::Session {
                            return Err(session_error(&event));
                        }
                        watched.remove(&child);
                        // Re-read rather than trust the event: the node may have been
                        // deleted and created again (a re-registration) in between.
                        self.read(client, &child, &mut data_watches, &mut watched).await?;
                        self.publish();
                    }
                    () = self.core.closed.cancelled() => return Err(zk::Error::ClientClosed),
                }
            }
        }
    }
}

impl Follower {
    /// Reads one instance node and watches it.
    async fn read(
        &mut self,
        client: &zk::Client,
        child: &str,
        data_watches: &mut DataWatches,
        watched: &mut HashSet<String>,
    ) -> Result<(), zk::Error> {
        let path = format!("{}/{child}", self.path);
        let (data, _, watcher) = match client.get_and_watch_data(&path).await {
            Ok(found) => found,
            // Gone since the listing; the children watch reports it.
            Err(zk::Error::NoNode) => {
                self.known.remove(child);
                return Ok(());
            }
            Err(err) => return Err(err),
        };
        watched.insert(child.to_owned());
        let name = child.to_owned();
        data_watches.spawn(async move { (name, watcher.changed().await) });
        match serde_json::from_slice::<Instance>(&data) {
            Ok(instance) => {
                self.known.insert(
                    child.to_owned(),
                    Instance {
                        id: child.to_owned(),
                        ..instance
                    },
                );
            }
            Err(err) => {
                warn!(service = %self.service, instance = child, cause = %err, "skipping instance whose data does not parse");
                self.known.remove(child);
            }
        }
        Ok(())
    }

    fn publish(&self) {
        let instances: Instances = self.known.values().cloned().collect();
        self.tx.send_if_modified(|current| {
            let changed = *current != instances;
            if changed {
                debug!(service = %self.service, count = instances.len(), "instance list changed");
                *current = instances;
            }
            changed
        });
        if matches!(*self.load.borrow(), Load::Pending(_)) {
            self.load.send_replace(Load::Done);
        }
    }
}
