//! A scripted terminal for the legacy line protocol's tests.

use std::collections::VecDeque;
use std::net::SocketAddr;

use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use super::WAIT;

/// The password of every user here: the one `support::Client::login` uses.
pub const PASSWORD: &str = "secret-password";

/// A scripted terminal: writes lines, reads lines with a deadline.
pub struct Term {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    /// `MSG` lines that arrived while waiting for a reply.
    pushes: VecDeque<String>,
    pub uid: u64,
    pub name: String,
}

impl Term {
    /// A new connection, its welcome line read.
    pub async fn connect(addr: SocketAddr) -> Term {
        let mut term = Term::connect_raw(addr).await;
        assert_eq!(term.line().await.as_deref(), Some(WELCOME));
        term
    }

    /// A new connection, nothing read.
    pub async fn connect_raw(addr: SocketAddr) -> Term {
        let (read, writer) = TcpStream::connect(addr).await.unwrap().into_split();
        Term {
            reader: BufReader::new(read),
            writer,
            pushes: VecDeque::new(),
            uid: 0,
            name: String::new(),
        }
    }

    /// Registers `name` on a new connection, which REGISTER logs in.
    pub async fn user(addr: SocketAddr, name: &str) -> Term {
        let mut term = Term::connect(addr).await;
        let uid = term.ok(&format!("REGISTER {name} {PASSWORD}")).await;
        term.uid = uid_of(&uid);
        term.name = name.to_owned();
        term
    }

    /// LOGIN as `name`; the uid.
    pub async fn login(&mut self, name: &str) -> u64 {
        let uid = uid_of(&self.ok(&format!("LOGIN {name} {PASSWORD}")).await);
        self.uid = uid;
        self.name = name.to_owned();
        uid
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).await.unwrap();
    }

    /// Closes the writing side, as `nc -N` does at the end of its input.
    pub async fn finish(&mut self) {
        self.writer.shutdown().await.unwrap();
    }

    pub async fn send(&mut self, line: &str) {
        self.send_raw(format!("{line}\n").as_bytes()).await;
    }

    /// The next line from the gateway (without its newline); None when it closed.
    pub async fn line(&mut self) -> Option<String> {
        let mut line = String::new();
        let read = tokio::time::timeout(WAIT, self.reader.read_line(&mut line))
            .await
            .expect("a line from the gateway in time")
            .unwrap();
        (read > 0).then(|| line.trim_end_matches('\n').to_owned())
    }

    /// The reply to `line` (`MSG` lines before it are kept for [`Term::push`]).
    pub async fn cmd(&mut self, line: &str) -> String {
        self.send(line).await;
        self.reply().await
    }

    pub async fn reply(&mut self) -> String {
        loop {
            let line = self.line().await.expect("the connection stays open");
            if line.starts_with("MSG ") {
                self.pushes.push_back(line);
            } else {
                return line;
            }
        }
    }

    /// The detail of a `+OK` reply to `line`.
    pub async fn ok(&mut self, line: &str) -> String {
        let reply = self.cmd(line).await;
        assert!(reply.starts_with("+OK"), "{line}: {reply}");
        reply.trim_start_matches("+OK").trim_start().to_owned()
    }

    /// The `-ERR` reason of the reply to `line`.
    pub async fn err(&mut self, line: &str) -> String {
        let reply = self.cmd(line).await;
        assert!(reply.starts_with("-ERR "), "{line}: {reply}");
        reply["-ERR ".len()..].to_owned()
    }

    /// The next `MSG` line.
    pub async fn push(&mut self) -> String {
        if let Some(push) = self.pushes.pop_front() {
            return push;
        }
        let line = self.line().await.expect("a push, not a close");
        assert!(line.starts_with("MSG "), "{line}");
        line
    }

    /// PULL: its `MSG` lines, and whether it said more are left.
    pub async fn pull(&mut self) -> (Vec<String>, bool) {
        self.send("PULL").await;
        let mut messages = Vec::new();
        let mut more = false;
        loop {
            let line = self.line().await.expect("PULL's reply");
            match line.as_str() {
                "+OK pull_done" => return (messages, more),
                "+OK more: PULL again for the rest" if !more => more = true,
                _ => {
                    assert!(line.starts_with("MSG "), "{line}");
                    assert!(!more, "a MSG line after the more line: {line}");
                    messages.push(line);
                }
            }
        }
    }

    /// Whether the gateway closes the connection within [`WAIT`]; the lines meanwhile.
    pub async fn closed(&mut self) -> Vec<String> {
        let mut seen = Vec::new();
        while let Some(line) = self.line().await {
            seen.push(line);
        }
        seen
    }
}

/// The `+OK welcome` line every connection starts with, as the original gateway wrote it.
pub const WELCOME: &str = "+OK welcome. Commands: REGISTER/LOGIN/SEND/PULL";

/// The uid of a `uid=<uid>` detail.
pub fn uid_of(detail: &str) -> u64 {
    detail
        .strip_prefix("uid=")
        .and_then(|uid| uid.parse().ok())
        .unwrap_or_else(|| panic!("not uid=<uid>: {detail}"))
}

/// The `key=` field of a `MSG` line (`text` is the rest of the line).
pub fn field<'a>(line: &'a str, key: &str) -> &'a str {
    let start = line.find(&format!(" {key}=")).expect(key) + key.len() + 2;
    if key == "text" {
        return &line[start..];
    }
    line[start..].split(' ').next().unwrap()
}
