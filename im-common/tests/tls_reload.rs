//! Certificate rotation through the files, as an operator does it: a process's `[tls]` files
//! are replaced while calls run, the process picks them up at its next look, and no call on
//! an open connection fails.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use im_common::certs;
use im_common::config::TlsConfig;
use im_common::identity::Role;
use im_common::tls::Tls;
use tokio::time::Instant;

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "mpim-reload-{name}-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    certs::ensure_ca(&dir).unwrap();
    for role in [Role::Gateway, Role::Presence] {
        certs::issue(&dir, role, 1).unwrap();
    }
    dir
}

fn config(dir: &Path, role: Role, ca: &Path) -> TlsConfig {
    let (cert, key) = certs::files(dir, role);
    TlsConfig {
        cert: Some(cert),
        key: Some(key),
        ca: Some(ca.to_owned()),
        reload_interval_ms: 100,
        insecure: false,
    }
}

/// A client of the server at `addr` that expects the presence service's certificate.
async fn client(tls: &Tls, addr: &str) -> mprpc::Client {
    mprpc::Client::builder()
        .tls(tls.client().server_name(Role::Presence.certificate_name()))
        .connect_timeout(Duration::from_secs(2))
        .connect_lazy(addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_ca_file_is_picked_up_without_dropping_a_call() {
    let old = temp_dir("old");
    let new = temp_dir("new");
    // The server's trust file, which the rotation rewrites.
    let trust = old.join("trusted-clients.pem");
    std::fs::copy(old.join("ca.pem"), &trust).unwrap();
    let server_tls = Tls::load(&config(&old, Role::Presence, &trust))
        .unwrap()
        .expect("configured");
    let server = mprpc::Server::builder().tls(server_tls.server()).build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let serving = tokio::spawn(async move { server.serve(listener, std::future::pending()).await });

    // A client of the old CA calls without pause on one open connection.
    let steady_tls = Tls::load(&config(&old, Role::Gateway, &old.join("ca.pem")))
        .unwrap()
        .unwrap();
    let steady = client(&steady_tls, &addr).await;
    steady.ping().await.expect("the old CA's client is served");
    let (stop, calls, failures) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let load = tokio::spawn({
        let (stop, calls, failures) = (stop.clone(), calls.clone(), failures.clone());
        async move {
            while !stop.load(Ordering::Relaxed) {
                match steady.ping().await {
                    Ok(()) => calls.fetch_add(1, Ordering::Relaxed),
                    Err(_) => failures.fetch_add(1, Ordering::Relaxed),
                };
            }
        }
    });

    // A client whose certificate the new CA issued is refused until the server trusts it.
    let renewed_tls = Tls::load(&config(&new, Role::Gateway, &old.join("ca.pem")))
        .unwrap()
        .unwrap();
    let renewed = client(&renewed_tls, &addr).await;
    assert!(renewed.ping().await.is_err(), "not trusted yet");

    // The rotation's first step: both CAs in the server's trust file.
    let both = [
        std::fs::read(old.join("ca.pem")).unwrap(),
        std::fs::read(new.join("ca.pem")).unwrap(),
    ]
    .concat();
    let aside = trust.with_extension("tmp");
    std::fs::write(&aside, both).unwrap();
    std::fs::rename(&aside, &trust).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let fresh = client(&renewed_tls, &addr).await;
        if fresh.ping().await.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "the new CA was not picked up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    assert!(calls.load(Ordering::Relaxed) > 0);
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "a call failed during the rotation"
    );
    serving.abort();
    for dir in [old, new] {
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[tokio::test]
async fn files_that_do_not_load_name_the_key() {
    let dir = temp_dir("bad");
    let mut bad = config(&dir, Role::Gateway, &dir.join("ca.pem"));
    bad.key = Some(dir.join("missing.key"));
    let err = Tls::load(&bad).unwrap_err();
    assert!(format!("{err:#}").contains("tls.cert"), "{err:#}");
    let mut partial = config(&dir, Role::Gateway, &dir.join("ca.pem"));
    partial.ca = None;
    let err = Tls::load(&partial).unwrap_err();
    assert!(err.to_string().contains("go together"), "{err:#}");
    let _ = std::fs::remove_dir_all(dir);
}
