//! Logging to stderr and, when configured, to rotating files; the metrics recorder; the
//! shutdown signal.

use std::sync::OnceLock;

use metrics_exporter_prometheus::PrometheusHandle;
use tracing_appender::non_blocking::WorkerGuard;
use tracing_appender::rolling::{RollingFileAppender, Rotation};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::LogConfig;

/// Installs the global subscriber for process `name`: structured lines to stderr, and to
/// `<dir>/<name>.log.<date>` through a non-blocking writer when `config.dir` is set; then
/// the [`metrics()`] recorder, so that the servers and clients built after it record.
///
/// Keep the returned guard until the process ends: dropping it flushes the file writer.
///
/// # Errors
/// When the filter does not parse, the rotation is unknown or the directory cannot be made.
pub fn init(name: &str, config: &LogConfig) -> anyhow::Result<Option<WorkerGuard>> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(filter) if !filter.is_empty() => EnvFilter::try_new(filter)?,
        _ => {
            EnvFilter::try_new(&config.level).map_err(|err| anyhow::anyhow!("log.level: {err}"))?
        }
    };
    // Colours only for a person at a terminal, not in files, pipes or journald.
    let stderr = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let (file, guard) = match &config.dir {
        Some(dir) => {
            let rotation = match config.rotation.as_str() {
                "daily" => Rotation::DAILY,
                "hourly" => Rotation::HOURLY,
                "never" => Rotation::NEVER,
                other => anyhow::bail!("log.rotation: {other:?} is not daily, hourly or never"),
            };
            std::fs::create_dir_all(dir)
                .map_err(|err| anyhow::anyhow!("log.dir {}: {err}", dir.display()))?;
            let appender = RollingFileAppender::new(rotation, dir, format!("{name}.log"));
            let (writer, guard) = tracing_appender::non_blocking(appender);
            let layer = tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(writer);
            (Some(layer), Some(guard))
        }
        None => (None, None),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(stderr)
        .with(file)
        .try_init()?;
    metrics();
    Ok(guard)
}

/// The process's Prometheus recorder, installed by the first call; `None` when a recorder
/// from elsewhere was installed first.
///
/// mprpc takes its per-method and connection handles when a server or client is built, and
/// handles taken before the recorder is installed record nothing: a process calls this (or
/// [`init`]) before building any.
pub fn metrics() -> Option<PrometheusHandle> {
    static RECORDER: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    RECORDER
        .get_or_init(|| match mprpc::metrics::install() {
            Ok(handle) => Some(handle),
            Err(err) => {
                tracing::warn!(cause = %err, "another metrics recorder is installed; no /metrics here");
                None
            }
        })
        .clone()
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
    tracing::info!("shutdown signal received");
}

/// What a service's `main` returns on failure: printed as one line with its causes
/// (`Error: server.listen 10.0.0.1:6101: Cannot assign requested address`), never a
/// backtrace, and the process exits with 1.
pub struct Failure(anyhow::Error);

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(err: E) -> Failure {
        Failure(err.into())
    }
}

impl std::fmt::Debug for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Causes in order, each once: many errors repeat their source in their own message.
        let mut line = String::new();
        for cause in self.0.chain() {
            let text = cause.to_string();
            if !line.contains(&text) {
                if !line.is_empty() {
                    line.push_str(": ");
                }
                line.push_str(&text);
            }
        }
        f.write_str(&line)
    }
}
