//! What the mpim process tests share: the binary run as a person runs it.

#![allow(dead_code)] // each test file uses its own part

pub(crate) mod browser;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

pub(crate) const BINARY: &str = env!("CARGO_BIN_EXE_mpim");

/// A running `mpim` and the addresses it logged.
pub(crate) struct Mpim {
    child: Child,
    /// The client TCP address.
    pub(crate) tcp: String,
    /// The HTTP/WebSocket address (`host:port`).
    pub(crate) http: String,
    /// The legacy line protocol's address, or `off`.
    pub(crate) legacy: String,
}

impl Mpim {
    /// Starts mpim on `data`, with the client listeners on `tcp` and `http` (`:0` for any).
    pub(crate) fn start(data: &Path, tcp: &str, http: &str) -> Mpim {
        Mpim::start_with(data, tcp, http, &[])
    }

    /// As [`Mpim::start`], with more command-line arguments.
    pub(crate) fn start_with(data: &Path, tcp: &str, http: &str, args: &[&str]) -> Mpim {
        let mut child = Command::new(BINARY)
            .args([
                "--data",
                data.to_str().unwrap(),
                "--listen",
                tcp,
                "--ws-listen",
                http,
            ])
            .args(args)
            .env("MPIM_SERVER__METRICS_LISTEN", "off")
            .env("MPIM_AUTH__ARGON2_MEMORY_KIB", "1024")
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .expect("mpim starts");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let ready = loop {
            let line = lines.next().expect("mpim logs before exiting").unwrap();
            eprintln!("{line}");
            if line.contains("mpim ready") {
                assert!(line.contains("im-cli -- --server"), "{line}");
                break line;
            }
        };
        let field = |key: &str| {
            let value = ready.split(key).nth(1).unwrap().split_whitespace().next();
            value.unwrap().to_owned()
        };
        let (tcp, legacy) = (field(" tcp="), field(" legacy="));
        let http = field("websocket=ws://").trim_end_matches("/ws").to_owned();
        std::thread::spawn(move || lines.map_while(Result::ok).for_each(|l| eprintln!("{l}")));
        Mpim {
            child,
            tcp,
            http,
            legacy,
        }
    }

    /// Kills the process at once (SIGKILL), as a crash would.
    pub(crate) fn kill(mut self) {
        self.child.kill().expect("kill mpim");
        self.child.wait().expect("mpim reaped");
    }

    /// Stops it with SIGTERM; whether it exited with success.
    pub(crate) fn terminate(mut self) -> bool {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(sent.success());
        self.child.wait().unwrap().success()
    }
}

impl Drop for Mpim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
