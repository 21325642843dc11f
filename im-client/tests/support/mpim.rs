//! A real `mpim` process on a fresh data directory and a port of its own.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long mpim may take to say it is ready.
const READY: Duration = Duration::from_secs(60);

/// A scratch directory, removed at the end.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let name = format!("{label}-{}-{nanos}", std::process::id());
        let dir = std::env::temp_dir().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub struct Mpim {
    child: Child,
    /// Where clients connect over TCP, as `host:port`.
    pub address: String,
    /// Where clients connect over WebSocket, as `ws://host:port/ws`.
    pub ws: String,
    data: TempDir,
}

impl Mpim {
    /// Starts mpim on a fresh data directory and a free port.
    pub fn start() -> Mpim {
        let data = TempDir::new("mpim-test");
        let (child, (address, ws)) = spawn(&data.0, "127.0.0.1:0", "127.0.0.1:0");
        Mpim {
            child,
            address,
            ws,
            data,
        }
    }

    /// Kills mpim (SIGKILL: no GoAway, no goodbye) and starts it again on the same data
    /// and address.
    pub fn restart(&mut self) {
        self.kill();
        let ws = self.ws.trim_start_matches("ws://").trim_end_matches("/ws");
        let (child, addresses) = spawn(&self.data.0, &self.address, ws);
        assert_eq!(addresses, (self.address.clone(), self.ws.clone()));
        self.child = child;
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Mpim {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs mpim and waits for the log line naming its addresses (TCP, WebSocket URL).
fn spawn(data: &Path, listen: &str, ws_listen: &str) -> (Child, (String, String)) {
    let mut child = Command::new(binary())
        .arg("--data")
        .arg(data)
        .args(["--listen", listen, "--ws-listen", ws_listen])
        // Metrics would take the TCP port + 1000, which a restart cannot count on.
        .env("MPIM_SERVER__METRICS_LISTEN", "off")
        .env("MPIM_AUTH__ARGON2_MEMORY_KIB", "1024")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mpim starts");
    // The log is read on a thread of its own, and drained after the address is found so
    // that mpim never blocks on a full pipe.
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if !line.contains("mpim ready") {
                continue;
            }
            if let Some(addresses) = listening_on(&line) {
                let _ = tx.send(addresses);
            }
        }
    });
    match rx.recv_timeout(READY) {
        Ok(addresses) => (child, addresses),
        Err(_) => {
            let _ = child.kill();
            panic!("mpim did not log where it listens within {READY:?}");
        }
    }
}

/// The addresses in mpim's ready line: `websocket=ws://ADDR/ws … --server ADDR`.
fn listening_on(line: &str) -> Option<(String, String)> {
    let after = |marker: &str| {
        let rest = &line[line.find(marker)? + marker.len()..];
        let end = rest
            .find(|c: char| c == '`' || c.is_whitespace())
            .unwrap_or(rest.len());
        // The log quotes string fields.
        Some(rest[..end].trim_matches('"').to_owned())
    };
    Some((after("--server ")?, after("websocket=")?))
}

/// The `mpim` binary of this build (`MPIM_BIN` overrides), built when missing.
fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("MPIM_BIN") {
        return path.into();
    }
    // target/<profile>/deps/<test>-<hash> → target/<profile>/mpim
    let exe = std::env::current_exe().unwrap();
    let profile = exe.parent().and_then(Path::parent).unwrap();
    let binary = profile.join(format!("mpim{}", std::env::consts::EXE_SUFFIX));
    if !binary.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", "mpim"])
            .status()
            .expect("cargo runs");
        assert!(status.success(), "cargo build -p mpim failed");
    }
    binary
}
