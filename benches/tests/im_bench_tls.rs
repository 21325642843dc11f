//! The im-bench binary over TLS, as it runs through nginx in front of a cluster: `tls://`
//! and `wss://` through a TLS-terminating proxy in front of the stand-in gateway, trusting
//! the proxy's private CA with `--ca`; without it the run stops at the first connection
//! with an error that names the certificate.

mod support;

use std::process::Output;

use support::tls::{TestCa, TlsProxy};
use support::{Faults, Gateway};

async fn im_bench(args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_im-bench"))
        .args(args)
        .output()
        .await
        .unwrap()
}

/// The exit status and the last stdout line.
fn result(output: &Output) -> (bool, String) {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last = stdout.lines().last().unwrap_or_default().to_string();
    let stderr = String::from_utf8_lossy(&output.stderr);
    (output.status.success(), format!("{last}\n{stderr}"))
}

#[tokio::test]
async fn pairs_over_tls_and_wss_lose_and_repeat_nothing() {
    let (tcp, ws) = Gateway::start(Faults::default()).await;
    let ca = TestCa::new();
    let config = ca.server_config(&["localhost", "127.0.0.1"]);
    let tls_proxy = TlsProxy::start(config.clone(), tcp).await;
    let wss_proxy = TlsProxy::start(config, ws).await;
    let ca_file = ca.pem_file.to_str().unwrap();
    let gateway = format!("tls://{}", tls_proxy.addr);
    let ws_url = format!("wss://localhost:{}/ws", wss_proxy.addr.port());
    let pairs = ["pairs", "--users", "4", "--rate", "100", "--seconds", "1"];
    let quick = ["--warmup-seconds", "0", "--ca", ca_file];

    for transport in [["--gateway", &gateway], ["--ws-url", &ws_url]] {
        let output = im_bench(&[&transport[..], &quick, &pairs].concat()).await;
        let (passed, last) = result(&output);
        assert!(passed, "{transport:?}: {last}");
        assert!(
            last.starts_with(
                "RESULT connections=4 sent=100 acked=100 delivered=100 lost=0 dup=0 p50_ms="
            ),
            "{transport:?}: {last}"
        );
    }

    let output = im_bench(&[&["--gateway", &gateway], &pairs[..]].concat()).await;
    let (passed, text) = result(&output);
    assert!(!passed, "{text}");
    assert!(text.contains("UnknownIssuer"), "{text}");
}
