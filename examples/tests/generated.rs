//! The generated server traits, routers and clients, end to end over loopback.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use examples::proto::{
    BinaryOp, CalculatorClient, CalculatorServer, EchoClient, EchoRequest, EchoServer,
};
use examples::{CalculatorService, EchoService};
use mprpc::{CallOptions, Code, Context, Error, Server, ServerBuilder};

async fn start() -> (std::net::SocketAddr, Server) {
    start_with(|b| b).await
}

async fn start_with(
    configure: impl FnOnce(ServerBuilder) -> ServerBuilder,
) -> (std::net::SocketAddr, Server) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let builder = Server::builder()
        .add_service(EchoServer::new(EchoService))
        .add_service(CalculatorServer::new(CalculatorService));
    let server = configure(builder).build();
    let serving = server.clone();
    tokio::spawn(async move { server.serve(listener, std::future::pending()).await });
    (addr, serving)
}

#[tokio::test]
async fn two_services_share_one_server_and_one_client_connection() {
    let (addr, server) = start().await;
    let client = mprpc::Client::builder()
        .pool_size(1)
        .connect_lazy(addr.to_string());
    let echo = EchoClient::new(client.clone());
    let calc = CalculatorClient::new(client);
    let reply = echo
        .echo(&EchoRequest {
            payload: vec![7; 4096].into(),
        })
        .await
        .expect("echo");
    assert_eq!(reply.payload.len(), 4096);
    assert_eq!(
        calc.add(&BinaryOp { a: 40, b: 2 })
            .await
            .expect("add")
            .value,
        42
    );
    assert_eq!(
        calc.divide(&BinaryOp { a: -7, b: 2 })
            .await
            .expect("divide")
            .value,
        -3
    );
    assert_eq!(server.connections(), 1);
}

#[tokio::test]
async fn handler_errors_arrive_as_typed_statuses() {
    let (addr, _server) = start().await;
    let calc = CalculatorClient::new(mprpc::Client::connect_lazy(addr.to_string()));
    let err = calc
        .divide(&BinaryOp { a: 1, b: 0 })
        .await
        .expect_err("division by zero");
    let Error::Status(status) = &err else {
        panic!("expected a status, got {err:?}")
    };
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(status.message(), "division by zero");
    let err = calc
        .add(&BinaryOp { a: i64::MAX, b: 1 })
        .await
        .expect_err("overflow");
    assert_eq!(err.code(), Code::OutOfRange);
    let err = calc
        .divide(&BinaryOp { a: i64::MIN, b: -1 })
        .await
        .expect_err("overflow");
    assert_eq!(err.code(), Code::OutOfRange);
}

#[tokio::test]
async fn per_call_options_reach_the_generated_client() {
    // What the server saw of each call: its `trace-id` metadata and its remaining budget.
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let (addr, _server) = start_with(|b| {
        b.intercept(move |ctx: &mut Context| {
            let trace = ctx.metadata("trace-id").map(str::to_owned);
            record.lock().unwrap().push((trace, ctx.remaining()));
            Ok(())
        })
    })
    .await;
    let echo = EchoClient::new(mprpc::Client::connect_lazy(addr.to_string()));
    // Shorter than the client's default timeout (30 s), so the server can tell them apart.
    let timeout = Duration::from_secs(20);
    let options = CallOptions::new()
        .timeout(timeout)
        .metadata("trace-id", "t1");
    let reply = echo
        .echo_with(
            &EchoRequest {
                payload: "x".into(),
            },
            &options,
        )
        .await
        .expect("echo");
    assert_eq!(reply.payload, "x");
    let seen = seen.lock().unwrap().clone();
    let [(trace, left)] = &seen[..] else {
        panic!("one call seen: {seen:?}")
    };
    assert_eq!(trace.as_deref(), Some("t1"));
    assert!(
        left.is_some_and(|left| left > Duration::ZERO && left <= timeout),
        "the server saw {left:?} left of a {timeout:?} budget"
    );
    assert_eq!(EchoClient::NAME, "example.Echo");
    assert_eq!(<EchoServer<EchoService>>::NAME, "example.Echo");
}
