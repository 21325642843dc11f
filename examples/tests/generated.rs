//! The generated server traits, routers and clients, end to end over loopback.

use std::time::Duration;

use examples::proto::{
    BinaryOp, CalculatorClient, CalculatorServer, EchoClient, EchoRequest, EchoServer,
};
use examples::{CalculatorService, EchoService};
use mprpc::{CallOptions, Code, Error};

async fn start() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = mprpc::Server::builder()
        .add_service(EchoServer::new(EchoService))
        .add_service(CalculatorServer::new(CalculatorService))
        .build();
    tokio::spawn(async move { server.serve(listener, std::future::pending()).await });
    addr
}

#[tokio::test]
async fn two_services_share_one_server_and_one_client_connection() {
    let addr = start().await;
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
}

#[tokio::test]
async fn handler_errors_arrive_as_typed_statuses() {
    let addr = start().await;
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
    let addr = start().await;
    let echo = EchoClient::new(mprpc::Client::connect_lazy(addr.to_string()));
    let options = CallOptions::new()
        .timeout(Duration::from_secs(1))
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
    assert_eq!(EchoClient::NAME, "example.Echo");
    assert_eq!(<EchoServer<EchoService>>::NAME, "example.Echo");
}
