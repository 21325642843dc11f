//! `im-cli`: a line-based MPIM client for a terminal. Type `/help` once it runs.
//!
//! ```text
//! im-cli [--server ADDR] [--ca FILE] [--device NAME]
//!   --server ADDR   host:port or tcp://host:port (TCP), ws://host:port/ws (WebSocket),
//!                   tls://host:port or wss://host:port/ws (the same over TLS);
//!                   default 127.0.0.1:6000
//!   --ca FILE       trust the CA certificates in this PEM file too (a private CA)
//!   --device NAME   names this device at login (default: one is made up)
//! ```

mod app;
mod command;
mod input;
mod view;

use std::process::ExitCode;

use im_client::{Client, Options};
use tokio::io::BufReader;

use crate::app::{App, Flow};
use crate::input::{Line, LineReader};
use crate::view::say;

/// The longest input line read; longer ones are refused whole.
const MAX_LINE: usize = 64 * 1024;

const USAGE: &str = "usage: im-cli [--server ADDR] [--ca FILE] [--device NAME]
  --server ADDR   host:port or tcp://host:port (TCP), ws://host:port/ws (WebSocket),
                  tls://host:port or wss://host:port/ws (over TLS); default 127.0.0.1:6000
  --ca FILE       trust the CA certificates in this PEM file too (a private CA)
  --device NAME   names this device at login";

/// Reads the command line; `Err` carries the text to print and the exit status.
fn options(args: impl IntoIterator<Item = String>) -> Result<Options, (String, u8)> {
    let mut options = Options::new("127.0.0.1:6000");
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let mut value = |flag: &str| {
            args.next()
                .ok_or_else(|| (format!("{flag} needs a value\n{USAGE}"), 2))
        };
        match arg.as_str() {
            "--server" | "-s" => options.address = value("--server")?,
            "--device" | "-d" => options.device_id = value("--device")?,
            "--ca" => options.ca_file = Some(value("--ca")?.into()),
            "--help" | "-h" => return Err((USAGE.to_owned(), 0)),
            other => return Err((format!("unknown argument {other}\n{USAGE}"), 2)),
        }
    }
    Ok(options)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let options = match options(std::env::args().skip(1)) {
        Ok(options) => options,
        Err((text, code)) => {
            eprintln!("{text}");
            return ExitCode::from(code);
        }
    };
    let address = options.address.clone();
    let (client, mut events) = match Client::connect(options).await {
        Ok(connected) => connected,
        Err(err) => {
            eprintln!("im-cli: {err}");
            return ExitCode::FAILURE;
        }
    };
    say(&format!("-- im-cli on {address}"));
    let mut app = App::new(client);
    let mut lines = LineReader::new(BufReader::new(tokio::io::stdin()), MAX_LINE);
    loop {
        tokio::select! {
            line = lines.next_line() => {
                view::typed();
                match line {
                    Ok(None) => break,
                    Ok(Some(Line::Text(line))) => match command::parse(&line) {
                        Ok(input) => if let Flow::Quit = app.input(input).await { break },
                        Err(usage) => say(&format!("error: {usage}")),
                    },
                    Ok(Some(Line::TooLong)) => {
                        say(&format!("error: line longer than {MAX_LINE} bytes, not sent"));
                    }
                    Err(err) => {
                        say(&format!("error: cannot read input: {err}"));
                        break;
                    }
                }
            }
            event = events.recv() => match event {
                Some(event) => app.show(event).await,
                None => break,
            },
        }
        view::prompt(&app.prompt());
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn flags() {
        let parsed = options(args("--server ws://h:6080/ws --device laptop")).unwrap();
        assert_eq!(
            (parsed.address.as_str(), parsed.device_id.as_str()),
            ("ws://h:6080/ws", "laptop")
        );
        let parsed = options(args("--server wss://h/ws --ca ca.pem")).unwrap();
        assert_eq!(
            parsed.ca_file.as_deref(),
            Some(std::path::Path::new("ca.pem"))
        );
        assert_eq!(options(args("")).unwrap().address, "127.0.0.1:6000");
        assert_eq!(options(args("--server")).unwrap_err().1, 2);
        assert_eq!(options(args("--bogus")).unwrap_err().1, 2);
        assert_eq!(options(args("--help")).unwrap_err().1, 0);
    }
}
