//! The greeter end to end: callers without a known token are refused before any handler
//! runs, and the nested hop inherits the caller's deadline and trace id, over TCP and in
//! process.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use examples::greeter::{self, Authenticate, LoggedEcho};
use examples::proto::{EchoRequest, EchoResponse, EchoServer, GreetRequest, GreeterClient};
use mprpc::{CallOptions, Client, Code, Context, Server, Status};
use tokio::time::Instant;

const TOKEN: &str = "s3cret";

/// What the nested hop saw of one call.
#[derive(Debug, Clone)]
struct Seen {
    trace_id: Option<String>,
    deadline: Option<Instant>,
}

/// The nested hop: [`LoggedEcho`] that also records what each call carried.
#[derive(Clone, Default)]
struct Recorder {
    // A std mutex: held only to push or copy, never across an await.
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Recorder {
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl examples::proto::Echo for Recorder {
    async fn echo(&self, ctx: Context, request: EchoRequest) -> Result<EchoResponse, Status> {
        self.seen.lock().unwrap().push(Seen {
            trace_id: ctx.trace_id().map(str::to_owned),
            deadline: ctx.deadline(),
        });
        examples::proto::Echo::echo(&LoggedEcho, ctx, request).await
    }
}

/// A greeter server that admits ada (bearing [`TOKEN`]), and its recorded nested hop.
fn greeter_server() -> (Server, Recorder) {
    let recorder = Recorder::default();
    let backend = Server::builder()
        .add_service(EchoServer::new(recorder.clone()))
        .build();
    let server = greeter::server(Authenticate::new().user("ada", TOKEN), &backend);
    (server, recorder)
}

/// Serves `server` on a free loopback port.
async fn serve(server: Server) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { server.serve(listener, std::future::pending()).await });
    addr.to_string()
}

fn greet(name: &str) -> GreetRequest {
    GreetRequest { name: name.into() }
}

#[tokio::test]
async fn callers_without_a_known_token_are_refused_before_the_handler() {
    let (server, recorder) = greeter_server();
    let addr = serve(server).await;
    let anonymous = Client::connect_lazy(addr.clone());
    let impostor = Client::builder()
        .intercept(greeter::bearer("guess"))
        .connect_lazy(addr);
    for client in [anonymous, impostor] {
        let err = GreeterClient::new(client)
            .greet(&greet("Grace"))
            .await
            .expect_err("refused");
        // The handler answers a call without a caller INTERNAL, so this came from the
        // interceptor.
        assert_eq!(err.code(), Code::Unauthenticated, "{err}");
    }
    assert!(recorder.seen().is_empty(), "the nested hop was called");
}

#[tokio::test]
async fn the_greeting_names_the_caller_and_the_nested_hop_inherits_deadline_and_trace_id() {
    let (server, recorder) = greeter_server();
    let client = Client::builder()
        .intercept(greeter::bearer(TOKEN))
        .intercept(greeter::trace_id("t-tcp"))
        .connect_lazy(serve(server).await);
    let sent = Instant::now();
    let deadline = sent + Duration::from_secs(5);
    let reply = GreeterClient::new(client)
        .greet_with(&greet("Grace"), &CallOptions::new().deadline(deadline))
        .await
        .expect("greet");
    let transit = sent.elapsed();
    assert_eq!(reply.message, "Hello Grace, from ada");
    let seen = recorder.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].trace_id.as_deref(), Some("t-tcp"));
    // The deadline crosses the wire as time remaining, so the server's copy can be later
    // than the caller's by the time the request took to arrive, and no more; the nested
    // client's own default (30 s) would be far later.
    let nested = seen[0].deadline.expect("the nested hop has a deadline");
    assert!(
        nested <= deadline + transit,
        "nested deadline {:?} after the caller's",
        nested - deadline
    );
}

#[tokio::test]
async fn in_process_the_nested_hop_gets_the_exact_deadline_and_both_hops_log_the_trace_id() {
    let logs = Arc::new(Mutex::new(Vec::new()));
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || Log(writer.clone()))
        .with_ansi(false)
        .finish();
    // This test's runtime has one thread, and in-process calls spawn nothing: every log
    // line of the call reaches this subscriber.
    let _logging = tracing::subscriber::set_default(subscriber);
    // Another test's thread may have met these callsites first, with no subscriber, and
    // cached that nobody wants them: ask again now that this one is in place.
    tracing::callsite::rebuild_interest_cache();

    let (server, recorder) = greeter_server();
    let client = Client::builder()
        .intercept(greeter::bearer(TOKEN))
        .intercept(greeter::trace_id("t-default"))
        .in_process(&server);
    let deadline = Instant::now() + Duration::from_secs(5);
    // A trace id in the call's options wins over the interceptor's default.
    let options = CallOptions::new().deadline(deadline).trace_id("t-local");
    let reply = GreeterClient::new(client)
        .greet_with(&greet("Grace"), &options)
        .await
        .expect("greet");
    assert_eq!(reply.message, "Hello Grace, from ada");
    let seen = recorder.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].trace_id.as_deref(), Some("t-local"));
    assert_eq!(seen[0].deadline, Some(deadline));

    let logs = String::from_utf8(logs.lock().unwrap().clone()).expect("UTF-8 logs");
    let hop = logs
        .lines()
        .find(|line| line.contains("echoing"))
        .unwrap_or_else(|| panic!("no log line from the nested hop in:\n{logs}"));
    let outer = hop
        .find("rpc{service=example.Greeter")
        .expect("the greeter's span");
    let inner = hop
        .find("rpc{service=example.Echo")
        .expect("the echo hop's span");
    assert!(
        outer < inner,
        "the echo span is not inside the greeter's: {hop}"
    );
    assert_eq!(hop.matches(r#"trace_id="t-local""#).count(), 2, "{hop}");
}

/// Log output appended to a shared buffer.
struct Log(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Log {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
