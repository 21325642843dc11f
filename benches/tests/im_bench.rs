//! im-bench against the stand-in gateway of `support`, which can be told to push a message
//! twice or not at all, so that the bench's verdict is seen to catch both.

mod support;

use std::time::Duration;

use benches::im::idle;
use benches::im::modes::{self, GroupRun};
use support::{Faults, Gateway, load};

#[tokio::test]
async fn pairs_against_a_faithful_gateway_lose_and_repeat_nothing() {
    let (tcp, _) = Gateway::start(Faults::default()).await;
    let report = modes::pairs(&load(tcp, None), 6, 300, 1).await.unwrap();
    eprintln!("{report}");
    assert!(report.sent >= 250, "{report}");
    assert_eq!(report.acked, report.sent, "{report}");
    assert_eq!(report.delivered, report.acked, "{report}");
    assert_eq!(
        report.verdict.lost + report.verdict.dup + report.verdict.out_of_order,
        0
    );
    assert!(report.p99_ms > 0.0 && report.msgs_per_s > 200.0, "{report}");
    assert!(report.passed());
}

#[tokio::test]
async fn a_pushed_twice_message_is_a_dup_and_a_missing_one_is_lost() {
    let (tcp, _) = Gateway::start(Faults {
        dup_every: Some(7),
        ..Faults::default()
    })
    .await;
    let report = modes::pairs(&load(tcp, None), 4, 200, 1).await.unwrap();
    assert!(
        report.verdict.dup > 0 && report.verdict.lost == 0,
        "{report}"
    );
    assert!(!report.passed());

    let (tcp, _) = Gateway::start(Faults {
        drop_every: Some(11),
        ..Faults::default()
    })
    .await;
    let mut load = load(tcp, None);
    load.drain = Duration::from_millis(500);
    let report = modes::pairs(&load, 4, 200, 1).await.unwrap();
    assert!(
        report.verdict.lost > 0 && report.verdict.dup == 0,
        "{report}"
    );
    assert!(report.to_string().contains("drained=false"), "{report}");
    assert!(!report.passed());
}

#[tokio::test]
async fn a_group_over_websocket_delivers_every_message_to_every_other_member() {
    let (tcp, ws) = Gateway::start(Faults::default()).await;
    let run = GroupRun {
        members: 7,
        messages: 40,
        rate: None,
        senders: 2,
        window: 4,
    };
    let report = modes::group(&load(tcp, Some(ws)), run).await.unwrap();
    eprintln!("{report}");
    assert_eq!(report.sent, 40, "{report}");
    assert_eq!(report.acked, 40, "{report}");
    assert_eq!(report.delivered, 40 * 6, "{report}");
    assert!(report.passed(), "{report}");
}

#[tokio::test]
async fn sends_over_the_rate_limit_go_again_and_arrive() {
    let (tcp, _) = Gateway::start(Faults {
        refuse_every: Some(5),
        ..Faults::default()
    })
    .await;
    let run = GroupRun {
        members: 3,
        messages: 50,
        rate: None,
        senders: 1,
        window: 8,
    };
    let report = modes::group(&load(tcp, None), run).await.unwrap();
    assert_eq!((report.acked, report.delivered), (50, 100), "{report}");
    assert!(report.to_string().contains("failed=0 retried="), "{report}");
    assert!(!report.to_string().contains("retried=0"), "{report}");
    assert!(report.passed(), "{report}");
}

#[tokio::test]
async fn idle_connections_log_in_with_a_token_after_the_first_and_stay_open() {
    let (tcp, _) = Gateway::start(Faults::default()).await;
    let setup = load(tcp, None).setup;
    let held = idle::hold(&setup, 10, 4).await;
    assert_eq!((held.opened, held.failed), (10, 0));
    assert_eq!(held.release().await, 10);
}

/// Runs the im-bench binary; its exit status and last stdout line.
async fn im_bench(args: &[&str]) -> (bool, String) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_im-bench"))
        .args(args)
        .stderr(std::process::Stdio::inherit())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    let last = stdout.lines().last().unwrap_or_default().to_string();
    (output.status.success(), last)
}

#[tokio::test]
async fn the_binary_ends_with_the_result_line_and_fails_on_a_dup() {
    let (tcp, _) = Gateway::start(Faults::default()).await;
    let gateway = tcp.to_string();
    let args = [
        "--gateway",
        &gateway,
        "--warmup-seconds",
        "0",
        "pairs",
        "--users",
        "4",
    ];
    let (passed, last) =
        im_bench(&[&args[..], &["--rate", "100", "--seconds", "1"]].concat()).await;
    assert!(passed, "{last}");
    assert!(
        last.starts_with(
            "RESULT connections=4 sent=100 acked=100 delivered=100 lost=0 dup=0 p50_ms="
        ),
        "{last}"
    );

    let (tcp, _) = Gateway::start(Faults {
        dup_every: Some(3),
        ..Faults::default()
    })
    .await;
    let gateway = tcp.to_string();
    let args = [
        "--gateway",
        &gateway,
        "group",
        "--members",
        "3",
        "--messages",
        "10",
    ];
    let (passed, last) = im_bench(&args).await;
    assert!(!passed, "{last}");
    assert!(last.contains(" lost=0 dup="), "{last}");
}

#[tokio::test]
async fn idle_spreads_over_worker_processes_and_reports_memory_per_connection() {
    let (tcp, _) = Gateway::start(Faults::default()).await;
    let gateway = tcp.to_string();
    let pid = std::process::id().to_string();
    let (passed, last) = im_bench(&[
        "--gateway",
        &gateway,
        "idle",
        "--connections",
        "30",
        "--processes",
        "2",
        "--devices-per-user",
        "4",
        "--hold-seconds",
        "1",
        "--gateway-pid",
        &pid,
    ])
    .await;
    assert!(passed, "{last}");
    assert!(last.starts_with("RESULT connections=30 sent=0"), "{last}");
    assert!(
        last.contains("opened=30 failed=0 rss_before_kib="),
        "{last}"
    );
    assert!(last.contains("bytes_per_conn="), "{last}");
}
