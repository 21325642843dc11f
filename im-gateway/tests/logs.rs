//! Logs at info level and above never hold a session id or a token: every log line of a
//! gateway and the services behind it is captured while sessions begin and end in every
//! way, and searched for them.

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};

use im_common::bus::Bus;
use im_common::ids::now_ms;
use im_common::store::users::UserStore;
use im_gateway::Settings;
use im_proto::client::request::Command;
use im_proto::client::server_message::Body;
use im_proto::client::{Login, Logout, Resume};
use support::term::{PASSWORD, Term};
use support::*;
use tracing_subscriber::fmt::MakeWriter;

/// Every line logged in this process.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Captured {
    type Writer = Captured;

    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_session_id_or_token_is_logged_at_info() {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .with_writer(captured.clone())
        .finish();
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let faults = Faults::default();
    let cluster = Cluster::start_with(Bus::in_process(), false, TokenTtl(3), faults.clone()).await;
    let settings = Settings {
        session_check_ms: 200,
        ..settings()
    };
    let gateway = cluster.gateway_with_legacy("gw-logs", settings, 1024).await;
    let mut secrets = Vec::new();
    let name = name("ada");

    // A password login, a token login and a resume; then a logout.
    let mut phone = Client::tcp(gateway.tcp).await;
    let session = phone.register_login(&name, "phone").await;
    secrets.extend([session.token.clone(), session.session_id.clone()]);
    let mut again = Client::ws(gateway.ws, false).await;
    again
        .ok(Command::Login(Login {
            token: session.token.clone(),
            ..Login::default()
        }))
        .await;
    let mut resumed = Client::tcp(gateway.tcp).await;
    resumed
        .ok(Command::Resume(Resume {
            token: session.token.clone(),
            ..Resume::default()
        }))
        .await;
    phone.ok(Command::Logout(Logout {})).await;
    phone.closed().await;
    again.closed().await;
    resumed.closed().await;

    // A revocation found by the re-check, on the legacy listener.
    let mut term = Term::connect(gateway.legacy.unwrap()).await;
    let uid = term.login(&name).await;
    cluster.sql.revoke_sessions(uid, now_ms()).await.unwrap();
    assert!(term.line().await.unwrap().contains("session revoked"));

    // An expiry (3 to 4 s after this login), and a login whose route bind fails.
    let mut expiring = Client::tcp(gateway.tcp).await;
    let short = expiring.login(&name, "tablet").await;
    secrets.extend([short.token.clone(), short.session_id.clone()]);
    expiring.closed().await;
    faults
        .bind_route
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let mut refused = Client::tcp(gateway.tcp).await;
    let reply = refused
        .call(Command::Login(Login {
            name: name.clone(),
            password: PASSWORD.to_owned(),
            device_id: "watch".to_owned(),
            ..Login::default()
        }))
        .await;
    assert!(reply.error.is_some());
    assert!(!matches!(reply.body, Some(Body::Session(_))));

    // The subscriber writes as it logs: all of it is there once the gateway stopped.
    gateway.stopped().await;
    let logs = captured.text();
    assert!(logs.contains("logged in"), "the capture works: {logs}");
    assert!(logs.contains("route not bound"), "{logs}");
    for secret in &secrets {
        assert!(!logs.contains(secret.as_str()), "{secret} logged:\n{logs}");
    }
    cluster.close().await;
}
