//! The delivery stream's acknowledgements: entries whose acknowledgement failed are
//! acknowledged again once the bus answers, not left pending until the next restart.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use im_common::bus::{Bus, BusResult, ReadFrom, StreamEntry, Streams};
use im_proto::SendRequest;
use im_proto::client::request::Command;
use support::*;

/// The streams of another bus, with acknowledgements that fail while `failures` lasts.
struct FlakyAcks {
    inner: Arc<dyn Streams>,
    failures: AtomicU32,
}

impl Streams for FlakyAcks {
    fn push(&self, stream: String, payload: Bytes) -> BoxFuture<'_, BusResult<String>> {
        self.inner.push(stream, payload)
    }

    fn read(
        &self,
        stream: String,
        consumer: String,
        from: ReadFrom,
        max: usize,
        block: Duration,
    ) -> BoxFuture<'_, BusResult<Vec<StreamEntry>>> {
        self.inner.read(stream, consumer, from, max, block)
    }

    fn ack(&self, stream: String, ids: Vec<String>) -> BoxFuture<'_, BusResult<()>> {
        let failing = self
            .failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if failing {
            return Box::pin(async {
                Err(im_common::error::StoreError::Precondition(
                    "acknowledgements are down".into(),
                ))
            });
        }
        self.inner.ack(stream, ids)
    }

    fn remove(&self, stream: String) -> BoxFuture<'_, BusResult<bool>> {
        self.inner.remove(stream)
    }
}

#[tokio::test]
async fn entries_whose_acknowledgement_failed_are_acknowledged_later() {
    let bus = Bus::in_process();
    let flaky = Arc::new(FlakyAcks {
        inner: bus.streams.clone(),
        failures: AtomicU32::new(0),
    });
    let bus = Bus {
        streams: flaky.clone(),
        ..bus
    };
    let cluster = Cluster::start(bus.clone(), false).await;
    let gateway = cluster.gateway(&name("gw-ack-"), settings()).await;
    let mut ada = Client::tcp(gateway.tcp).await;
    ada.register_login(&name("ada"), "phone").await;
    let mut bob = Client::tcp(gateway.tcp).await;
    bob.register_login(&name("bob"), "phone").await;

    // Every attempt of the next acknowledgement fails: the entry is pushed and written,
    // and its acknowledgement waits for the bus.
    flaky.failures.store(3, Ordering::SeqCst);
    ada.ok(Command::Send(SendRequest {
        to_user_id: bob.user_id(),
        client_msg_id: "m1".into(),
        body: "hello".into(),
    }))
    .await;
    bob.push_where(|b| matches!(b, im_proto::client::server_message::Body::Message(_)))
        .await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let failures = flaky.failures.load(Ordering::SeqCst);
        let left = unacknowledged(&bus, &gateway.id).await;
        if failures == 0 && left == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{left} entries stay unacknowledged ({failures} failures to come)"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    gateway.stopped().await;
    cluster.close().await;
}
