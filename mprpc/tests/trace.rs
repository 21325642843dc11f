//! Context propagation: a nested call carries the caller's deadline and trace id, and a
//! handler's logs carry the call's span. Alone in its binary: the log capture is a
//! thread-local subscriber, which tests running beside it could race.

mod support;

use std::time::Duration;

use bytes::Bytes;
use mprpc::service::CallResult;
use mprpc::{BoxFuture, CallOptions, Client, Context, Method, Server, Service, Status};
use support::{Num, PROBE};

/// Answers `Relay` by calling `test.Probe/Remaining` on `next` with the options derived
/// from its own context: the remaining budget the next hop saw.
struct Relay {
    next: Client,
}

impl Service for Relay {
    fn name(&self) -> &'static str {
        "test.Relay"
    }

    fn call(&self, method: &str, ctx: Context, _request: Bytes) -> Option<BoxFuture<CallResult>> {
        if method != "Relay" {
            return None;
        }
        let next = self.next.clone();
        Some(Box::pin(async move {
            let options = CallOptions::from(&ctx);
            let left: Num = next
                .unary(&Method::new(PROBE, "Remaining"), &Num::default(), &options)
                .await
                .map_err(|e| Status::internal(e.to_string()))?;
            tracing::info!("relayed");
            Ok(mprpc::service::encode_response(&left))
        }))
    }
}

#[tokio::test]
async fn a_nested_call_carries_the_deadline_and_trace_id_to_the_next_hop() {
    let logs = support::capture_logs();
    let back = support::start_server().await;
    let front = Server::builder()
        .add_service(Relay {
            next: back.client(),
        })
        .build();
    let client = Client::in_process(&front);
    // Longer than the default timeout of the relay's own client (10 s): the caller's
    // deadline passes on whole, not capped by the next client's default.
    let timeout = Duration::from_secs(20);
    let options = CallOptions::new().timeout(timeout).trace_id("trace-abc");
    let sent = tokio::time::Instant::now();
    let left: Num = client
        .unary(
            &Method::new("test.Relay", "Relay"),
            &Num::default(),
            &options,
        )
        .await
        .expect("relayed");
    // What was left of the caller's budget at the next hop: at most all of it, at least
    // what remained when the answer came back (less a microsecond of rounding each way).
    let at_answer = timeout.saturating_sub(sent.elapsed()).as_micros() as u64;
    assert!(
        left.value <= timeout.as_micros() as u64 && left.value + 2 >= at_answer,
        "the next hop saw {} us; {at_answer} us of the caller's budget were left at the answer",
        left.value
    );
    let logs = logs.contents();
    let relayed = logs
        .lines()
        .find(|line| line.contains("relayed"))
        .unwrap_or_else(|| panic!("no log line from the handler in {logs}"));
    assert!(relayed.contains("service=test.Relay"), "{relayed}");
    assert!(relayed.contains("method=Relay"), "{relayed}");
    assert!(relayed.contains("trace_id=\"trace-abc\""), "{relayed}");
    assert!(relayed.contains("peer="), "{relayed}");
}
