//! A registry that lives inside one process.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::watch;

use super::{Discover, DiscoveryError, Instance, Instances, Register, Registration, Withdraw};
use crate::service::BoxFuture;

/// Registrations and subscriptions within one process: the all-in-one binary and tests.
/// Cheap to clone; clones share the registry.
#[derive(Debug, Clone, Default)]
pub struct InProcess {
    /// One channel per service. A parking_lot mutex: held for a map lookup and a
    /// `send_modify`, never across an await.
    services: Arc<parking_lot::Mutex<HashMap<String, watch::Sender<Instances>>>>,
}

impl InProcess {
    /// An empty registry.
    pub fn new() -> InProcess {
        InProcess::default()
    }

    fn update(&self, service: &str, change: impl FnOnce(&mut Vec<Instance>)) {
        let mut services = self.services.lock();
        let tx = services
            .entry(service.to_owned())
            .or_insert_with(|| watch::channel(Instances::from(Vec::new())).0);
        tx.send_modify(|instances| {
            let mut list = instances.to_vec();
            change(&mut list);
            *instances = list.into();
        });
    }

    /// Removes an instance by id; what a crashed instance's registry entry would do.
    pub fn remove(&self, service: &str, id: &str) {
        self.update(service, |list| list.retain(|i| i.id != id));
    }
}

impl Discover for InProcess {
    fn subscribe(
        &self,
        service: &str,
    ) -> BoxFuture<Result<watch::Receiver<Instances>, DiscoveryError>> {
        let mut services = self.services.lock();
        let rx = services
            .entry(service.to_owned())
            .or_insert_with(|| watch::channel(Instances::from(Vec::new())).0)
            .subscribe();
        Box::pin(std::future::ready(Ok(rx)))
    }
}

struct Entry {
    registry: InProcess,
    service: String,
    id: String,
}

impl Withdraw for Entry {
    fn withdraw(self: Box<Self>) -> BoxFuture<()> {
        self.registry.remove(&self.service, &self.id);
        Box::pin(std::future::ready(()))
    }
}

impl Register for InProcess {
    fn register(
        &self,
        service: &str,
        instance: Instance,
    ) -> BoxFuture<Result<Registration, DiscoveryError>> {
        let id = instance.id.clone();
        self.update(service, |list| {
            list.retain(|i| i.id != instance.id);
            list.push(instance);
        });
        let entry = Entry {
            registry: self.clone(),
            service: service.to_owned(),
            id,
        };
        Box::pin(std::future::ready(Ok(Registration::new(entry))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn subscribers_see_registrations_come_and_go() {
        let registry = InProcess::new();
        let mut rx = registry.subscribe("s").await.unwrap();
        assert!(rx.borrow().is_empty());
        let a = registry
            .register("s", Instance::new("127.0.0.1:1"))
            .await
            .unwrap();
        let _b = registry
            .register("s", Instance::new("127.0.0.1:2"))
            .await
            .unwrap();
        rx.changed().await.unwrap();
        assert_eq!(rx.borrow_and_update().len(), 2);
        a.deregister().await;
        let addrs: Vec<String> = rx.borrow().iter().map(|i| i.addr.clone()).collect();
        assert_eq!(addrs, ["127.0.0.1:2"]);
    }
}
