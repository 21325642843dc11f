//! Lines off a TCP stream, bounded: a line longer than the limit is reported once and the
//! rest of it discarded as it arrives, so a client can never make the gateway buffer more
//! than the limit (plus one read chunk). Like the TCP transport, an idle connection holds
//! no buffer.

use std::io;

use bytes::BytesMut;
use tokio::net::TcpStream;

/// What the reader found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Line {
    /// One line, without its `\n` (or `\r\n`).
    Text(String),
    /// A line over the limit; its rest is being discarded.
    TooLong,
    /// A line that is not UTF-8.
    NotUtf8,
    /// The client closed the connection.
    Closed,
    /// The connection failed.
    Failed(String),
}

/// Bytes taken off the socket per read.
const CHUNK: usize = 4096;

/// A connection's read side: a buffer of at most `max + 2` bytes (a line, `\r\n`).
#[derive(Debug)]
pub(crate) struct Lines {
    buf: BytesMut,
    max: usize,
    /// Inside a line that was too long: drop bytes up to its end.
    discarding: bool,
    /// The client closed its side; what it sent last, without a newline, was taken as a
    /// line.
    ended: bool,
}

impl Lines {
    pub(crate) fn new(max: usize) -> Lines {
        Lines {
            buf: BytesMut::new(),
            max,
            discarding: false,
            ended: false,
        }
    }

    /// The longest line read.
    pub(crate) fn max(&self) -> usize {
        self.max
    }

    /// The next line. Cancel-safe: dropping the future loses nothing.
    pub(crate) async fn read(&mut self, stream: &TcpStream) -> Line {
        loop {
            if let Some(line) = self.next_buffered() {
                if self.buf.is_empty() {
                    // Let the allocation go with the line.
                    self.buf = BytesMut::new();
                }
                return line;
            }
            if let Err(err) = stream.readable().await {
                return Line::Failed(err.to_string());
            }
            match self.fill(stream) {
                Ok(0) if self.ended || self.discarding || self.buf.is_empty() => {
                    return Line::Closed;
                }
                // The last line, cut by the end of the stream rather than a newline: it is
                // a line all the same (`printf 'PULL' | nc -N`), answered before the close.
                Ok(0) => {
                    self.ended = true;
                    self.buf.extend_from_slice(b"\n");
                }
                Ok(_) => {}
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                Err(err) => return Line::Failed(err.to_string()),
            }
        }
    }

    /// A complete line in the buffer, or the news that the buffer holds too much.
    fn next_buffered(&mut self) -> Option<Line> {
        loop {
            let Some(end) = self.buf.iter().position(|&b| b == b'\n') else {
                if self.discarding {
                    self.buf.clear();
                } else if self.buf.len() > self.max + 1 {
                    // Room for a full line and its `\r`; beyond, it cannot be one.
                    self.buf.clear();
                    self.discarding = true;
                    return Some(Line::TooLong);
                }
                return None;
            };
            let line = self.buf.split_to(end + 1);
            if std::mem::take(&mut self.discarding) {
                // The end of a line already reported.
                continue;
            }
            let text = line[..end].strip_suffix(b"\r").unwrap_or(&line[..end]);
            if text.len() > self.max {
                return Some(Line::TooLong);
            }
            return Some(match std::str::from_utf8(text) {
                Ok(text) => Line::Text(text.to_owned()),
                Err(_) => Line::NotUtf8,
            });
        }
    }

    /// Moves what the socket has into the buffer (through a stack chunk, so that nothing
    /// is allocated for a connection that has nothing to say); Ok(0) at the end of the
    /// stream.
    fn fill(&mut self, stream: &TcpStream) -> io::Result<usize> {
        let mut chunk = [0u8; CHUNK];
        let mut total = 0;
        loop {
            match stream.try_read(&mut chunk) {
                Ok(0) => return Ok(total),
                Ok(n) => {
                    self.take(&chunk[..n]);
                    total += n;
                    if n < CHUNK || self.buf.len() > self.max + 1 {
                        return Ok(total);
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock && total > 0 => {
                    return Ok(total);
                }
                Err(err) => return Err(err),
            }
        }
    }

    /// Appends `bytes`, or while discarding only what follows the end of the long line.
    fn take(&mut self, bytes: &[u8]) {
        if self.discarding && self.buf.is_empty() {
            if let Some(end) = bytes.iter().position(|&b| b == b'\n') {
                self.discarding = false;
                self.buf.extend_from_slice(&bytes[end + 1..]);
            }
            return;
        }
        self.buf.extend_from_slice(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(max: usize, input: &[&[u8]]) -> Vec<Line> {
        let mut lines = Lines::new(max);
        let mut out = Vec::new();
        for bytes in input {
            lines.take(bytes);
            while let Some(line) = lines.next_buffered() {
                out.push(line);
            }
        }
        out
    }

    fn text(s: &str) -> Line {
        Line::Text(s.to_owned())
    }

    #[test]
    fn lines_end_at_newlines_with_or_without_cr() {
        let got = lines(100, &[b"PULL\r\nSEND 1 a", b" b\n\n"]);
        assert_eq!(got, [text("PULL"), text("SEND 1 a b"), text("")]);
    }

    #[test]
    fn a_long_line_is_reported_once_and_its_rest_dropped() {
        let long = vec![b'x'; 50];
        let got = lines(10, &[&long, &long, b"xx\nPULL\n"]);
        assert_eq!(got, [Line::TooLong, text("PULL")]);
        let got = lines(4, &[b"abcdef\nPULL\n"]);
        assert_eq!(got, [Line::TooLong, text("PULL")]);
        assert_eq!(lines(4, &[b"abcd\r\n"]), [text("abcd")]);
    }

    #[tokio::test]
    async fn the_last_line_needs_no_newline() {
        use tokio::io::AsyncWriteExt as _;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        client.write_all(b"PING\nLOGIN a b").await.unwrap();
        client.shutdown().await.unwrap();
        let mut lines = Lines::new(100);
        assert_eq!(lines.read(&server).await, text("PING"));
        assert_eq!(lines.read(&server).await, text("LOGIN a b"));
        assert_eq!(lines.read(&server).await, Line::Closed);
        assert_eq!(lines.read(&server).await, Line::Closed);
    }

    #[test]
    fn invalid_utf8_is_its_own_answer() {
        assert_eq!(
            lines(10, &[b"\xff\xfe\nPING\n"]),
            [Line::NotUtf8, text("PING")]
        );
    }
}
