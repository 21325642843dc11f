//! Two people chat with im-cli in tmux through a real `mpim`: each types into their own
//! window, and the test reads the screens. Where tmux is missing it fails under
//! `TEST_STRICT` (as `scripts/test.sh` runs it) and is otherwise skipped with a note.

mod support;

use std::cell::Cell;
use std::process::Command;
use std::time::{Duration, Instant};

use support::mpim::Mpim;

/// How long anything may take to show on a screen.
const DEADLINE: Duration = Duration::from_secs(30);

/// Gives back `found`, something the test needs from outside. When it is None, `missing`
/// says what is missing and how to provide it: with `TEST_STRICT` set to anything but
/// empty (`scripts/test.sh` sets it) the test fails with that message; otherwise it notes
/// "skipped: `missing`" and gets None, to return and pass. The rule of
/// `im_common::bus::testing::prerequisite`, which this crate does not depend on.
fn prerequisite<T>(found: Option<T>, missing: &str) -> Option<T> {
    if found.is_none() {
        let strict = std::env::var_os("TEST_STRICT").is_some_and(|value| !value.is_empty());
        assert!(
            !strict,
            "{missing} (TEST_STRICT is set: nothing is skipped)"
        );
        eprintln!("skipped: {missing}");
    }
    found
}

/// A tmux server of this test's own (its own socket, no user configuration).
struct Tmux {
    socket: std::path::PathBuf,
    /// Whether the session exists (made with the first window).
    started: Cell<bool>,
}

impl Tmux {
    /// `None` when tmux is not installed.
    fn start() -> Option<Tmux> {
        let installed = Command::new("tmux")
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success());
        installed.then(|| Tmux {
            socket: std::env::temp_dir().join(format!("im-cli-test-{}.tmux", std::process::id())),
            started: Cell::new(false),
        })
    }

    fn run(&self, args: &[&str]) -> String {
        let output = Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .args(["-f", "/dev/null"])
            .args(args)
            .output()
            .expect("tmux runs");
        assert!(
            output.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Opens a window named `name` running `command`.
    fn window(&self, name: &str, command: &str) {
        let target = format!("chat:{name}");
        if !self.started.replace(true) {
            self.run(&[
                "new-session",
                "-d",
                "-s",
                "chat",
                "-n",
                name,
                "-x",
                "160",
                "-y",
                "50",
                command,
            ]);
        } else {
            self.run(&["new-window", "-d", "-t", "chat", "-n", name, command]);
        }
        // Keep a window whose program ended, so that its last words can be read.
        self.run(&["set-option", "-w", "-t", &target, "remain-on-exit", "on"]);
    }

    /// Types `line` and Enter into `window`.
    fn type_line(&self, window: &str, line: &str) {
        let target = format!("chat:{window}");
        self.run(&["send-keys", "-t", &target, "-l", line]);
        self.run(&["send-keys", "-t", &target, "Enter"]);
    }

    /// The screen of `window` (and its scrollback).
    fn screen(&self, window: &str) -> String {
        self.run(&[
            "capture-pane",
            "-p",
            "-J",
            "-S",
            "-500",
            "-t",
            &format!("chat:{window}"),
        ])
    }

    /// Waits until `window` shows `text`; returns the line that does.
    fn wait_for(&self, window: &str, text: &str) -> String {
        let start = Instant::now();
        loop {
            let screen = self.screen(window);
            if let Some(line) = screen.lines().find(|l| l.contains(text)) {
                return line.to_owned();
            }
            assert!(
                start.elapsed() < DEADLINE,
                "{window}'s screen never showed {text:?}:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .arg("kill-server")
            .output();
        let _ = std::fs::remove_file(&self.socket);
    }
}

#[test]
fn two_people_chat_in_tmux() {
    let missing =
        "tmux is not installed: install it (`apt-get install tmux`; scripts/test.sh does)";
    let Some(tmux) = prerequisite(Tmux::start(), missing) else {
        return;
    };
    let mpim = Mpim::start();
    let cli = env!("CARGO_BIN_EXE_im-cli");
    for name in ["alice", "bob"] {
        tmux.window(
            name,
            &format!("{cli} --server {} --device {name}-term", mpim.address),
        );
        tmux.wait_for(name, "-- connected");
    }

    for (name, password) in [("alice", "secret-alice"), ("bob", "secret-bob")] {
        tmux.type_line(name, &format!("/register {name} {password}"));
        tmux.wait_for(name, &format!("-- registered {name}"));
        tmux.type_line(name, &format!("/login {name} {password}"));
        tmux.wait_for(name, &format!("-- logged in as {name}"));
    }

    // The request shows on bob's screen by itself, and the answer on alice's.
    tmux.type_line("alice", "/add bob");
    tmux.wait_for("alice", "-- friend request #");
    let request = tmux.wait_for("bob", "-- friend request from alice");
    let id = request
        .split("(/accept ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .unwrap()
        .to_owned();
    tmux.type_line("bob", "/requests");
    tmux.wait_for("bob", &format!("#{id} from alice"));
    tmux.type_line("bob", &format!("/accept {id}"));
    tmux.wait_for("bob", "-- you and alice are friends now");
    tmux.wait_for("alice", "-- bob accepted your friend request");

    tmux.type_line("alice", "/chat bob");
    tmux.wait_for("alice", "-- talking to bob");
    tmux.type_line("alice", "hello bob");
    tmux.wait_for("alice", "you → bob: hello bob (seq 1");
    tmux.wait_for("bob", "alice → you: hello bob");

    tmux.type_line("bob", "/chat alice");
    tmux.type_line("bob", "hi alice, how are you?");
    tmux.wait_for("bob", "you → alice: hi alice, how are you? (seq 2");
    tmux.wait_for("alice", "bob → you: hi alice, how are you?");

    tmux.type_line("alice", "/group create devs bob");
    tmux.wait_for("alice", "-- talking in #devs");
    tmux.type_line("alice", "standup at ten");
    tmux.wait_for("bob", "alice → #devs: standup at ten");

    // Mistakes are one line each, and the program goes on.
    tmux.type_line("bob", "/accept nothing");
    tmux.wait_for("bob", "error: not a number: nothing");
    tmux.type_line("bob", "/unread");
    tmux.wait_for("bob", "#devs: 1 unread");
    tmux.type_line("bob", "/history");
    tmux.wait_for("bob", "-- history with alice");
}
