//! Interceptors on both sides, context propagation from hop to hop, and the in-process
//! transport, which must behave exactly like TCP.

mod support;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use mprpc::health::{CheckRequest, HealthClient, Serving};
use mprpc::interceptor::Outgoing;
use mprpc::service::CallResult;
use mprpc::{
    BoxFuture, CallOptions, Client, Code, Context, Error, Method, Server, Service, Status,
};
use support::{Num, PROBE, Probe};

/// Who the caller is, as the authenticating interceptor established it.
#[derive(Debug, Clone, PartialEq)]
struct Caller(u64);

/// Answers `Whoami` with the caller an interceptor attached.
#[derive(Clone)]
struct Front;

impl Service for Front {
    fn name(&self) -> &'static str {
        "test.Front"
    }

    fn call(&self, method: &str, ctx: Context, _request: Bytes) -> Option<BoxFuture<CallResult>> {
        match method {
            "Whoami" => Some(Box::pin(async move {
                let caller = ctx
                    .get::<Caller>()
                    .ok_or_else(|| Status::internal("no caller attached"))?;
                Ok(mprpc::service::encode_response(&Num { value: caller.0 }))
            })),
            _ => None,
        }
    }
}

/// Reads `user-id` metadata into a [`Caller`]; refuses calls without one.
fn authenticate(ctx: &mut Context) -> Result<(), Status> {
    let user = ctx
        .metadata("user-id")
        .and_then(|id| id.parse().ok())
        .ok_or_else(|| Status::unauthenticated("no user-id"))?;
    ctx.insert(Caller(user));
    Ok(())
}

fn front_server() -> Server {
    Server::builder()
        .add_service(Front)
        .intercept(authenticate)
        .build()
}

async fn whoami(client: &Client, options: &CallOptions) -> Result<Num, Error> {
    client
        .unary(
            &Method::new("test.Front", "Whoami"),
            &Num::default(),
            options,
        )
        .await
}

#[tokio::test]
async fn a_server_interceptor_refuses_or_attaches_what_handlers_read() {
    let server = front_server();
    let client = Client::in_process(&server);
    let err = whoami(&client, &CallOptions::new())
        .await
        .expect_err("no credentials");
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    let me = whoami(&client, &CallOptions::new().metadata("user-id", "42"))
        .await
        .expect("authenticated");
    assert_eq!(me.value, 42);

    // The built-in health service answers probers that carry no credentials.
    let health = HealthClient::new(client.clone());
    let status = health
        .check(&CheckRequest::default())
        .await
        .expect("health is not intercepted");
    assert_eq!(status.status, Serving::Serving as i32);
}

#[tokio::test]
async fn interceptors_compose_in_the_order_added() {
    let order = Arc::new(Mutex::new(Vec::new()));
    let (first, second) = (order.clone(), order.clone());
    let server = Server::builder()
        .add_service(Front)
        .intercept(move |ctx: &mut Context| {
            first.lock().unwrap().push("first");
            ctx.insert(Caller(1));
            Ok(())
        })
        .intercept(move |ctx: &mut Context| {
            second.lock().unwrap().push("second");
            // Sees what the first attached, and may replace it.
            let Caller(n) = ctx.get::<Caller>().cloned().expect("set by the first");
            ctx.insert(Caller(n + 1));
            Ok(())
        })
        .build();
    let me = whoami(&Client::in_process(&server), &CallOptions::new())
        .await
        .expect("call");
    assert_eq!(me.value, 2);
    assert_eq!(*order.lock().unwrap(), ["first", "second"]);
}

#[tokio::test]
async fn a_client_interceptor_adds_metadata_to_every_call() {
    let server = support::start_server().await;
    let client = Client::builder()
        .intercept(|call: &mut Outgoing<'_>| {
            if call.method().name == "Fail" {
                return Err(Status::permission_denied("not from this client"));
            }
            call.set_metadata("k", "from the interceptor");
            Ok(())
        })
        .connect_lazy(server.addr.to_string());
    for options in [CallOptions::new(), CallOptions::new().metadata("k", "mine")] {
        let reply: support::Str = client
            .unary(&Method::new(PROBE, "Meta"), &Num::default(), &options)
            .await
            .expect("call");
        assert_eq!(reply.value, "from the interceptor");
    }
    let err = client
        .unary::<_, Num>(
            &Method::new(PROBE, "Fail"),
            &Num { value: 3 },
            &CallOptions::new(),
        )
        .await
        .expect_err("refused locally");
    assert_eq!(err.code(), Code::PermissionDenied);
}

#[tokio::test]
async fn in_process_calls_behave_as_calls_over_tcp() {
    let probe = Probe::default();
    let server = Server::builder().add_service(probe.clone()).build();
    let client = Client::builder()
        .timeout(Some(Duration::from_secs(5)))
        .in_process(&server);
    let reply: Num = client
        .unary(
            &Method::new(PROBE, "Sleep"),
            &Num { value: 1 },
            &CallOptions::new(),
        )
        .await
        .expect("call");
    assert_eq!(reply.value, 1);
    // Statuses, unknown methods and bodies that do not decode are reported as over TCP.
    let err = client
        .unary::<_, Num>(
            &Method::new(PROBE, "Fail"),
            &Num { value: 5 },
            &CallOptions::new(),
        )
        .await
        .expect_err("status");
    assert_eq!(err.code(), Code::NotFound);
    let err = client
        .unary::<_, Num>(
            &Method::new(PROBE, "Nope"),
            &Num::default(),
            &CallOptions::new(),
        )
        .await
        .expect_err("unknown method");
    assert_eq!(err.code(), Code::Unimplemented);
    let err = client
        .unary::<_, Num>(
            &Method::new(PROBE, "Panic"),
            &Num::default(),
            &CallOptions::new(),
        )
        .await
        .expect_err("panic");
    assert_eq!(err.code(), Code::Internal);
    // The deadline stops the handler. It is long enough for the handler to start on a
    // loaded machine: the work must be stopped, not merely never begun.
    let counters = probe.counters.clone();
    let before = counters.started.load(Ordering::SeqCst);
    let err = client
        .unary::<_, Num>(
            &Method::new(PROBE, "Sleep"),
            &Num { value: 60_000 },
            &CallOptions::new().timeout(Duration::from_secs(1)),
        )
        .await
        .expect_err("deadline");
    assert_eq!(err.code(), Code::DeadlineExceeded);
    assert_eq!(counters.started.load(Ordering::SeqCst), before + 1);
    assert!(
        support::eventually(Duration::from_secs(5), || counters
            .dropped
            .load(Ordering::SeqCst)
            == 1)
        .await,
        "the handler was dropped at the deadline"
    );
    // The server-wide in-flight limit applies too.
    let limited = Server::builder()
        .add_service(probe.clone())
        .max_in_flight(1)
        .build();
    let client = Client::in_process(&limited);
    let before = counters.started.load(Ordering::SeqCst);
    let slow = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .unary::<_, Num>(
                    &Method::new(PROBE, "Hold"),
                    &Num { value: 300 },
                    &CallOptions::new(),
                )
                .await
        })
    };
    assert!(
        support::eventually(Duration::from_secs(10), || counters
            .started
            .load(Ordering::SeqCst)
            > before)
        .await
    );
    let err = client
        .unary::<_, Num>(
            &Method::new(PROBE, "Echo"),
            &Num::default(),
            &CallOptions::new(),
        )
        .await
        .expect_err("shed");
    assert_eq!(err.code(), Code::ResourceExhausted);
    probe.release(1);
    let done = slow.await.expect("join").expect("the slow call finishes");
    assert_eq!(done.value, 300);
}
