//! Lines typed at the terminal, read with a cap on their length. A line over the cap is
//! skipped whole (and reported), bytes that are not UTF-8 are replaced: no input ends the
//! program but the end of input.

use std::io;

use tokio::io::{AsyncBufRead, AsyncBufReadExt};

/// One line read.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Line {
    /// The line, without its line break.
    Text(String),
    /// A line longer than the cap, skipped.
    TooLong,
}

/// Reads lines; a partial line survives a cancelled [`LineReader::next_line`], so it can be
/// one branch of a `select!`.
pub(crate) struct LineReader<R> {
    reader: R,
    max: usize,
    buf: Vec<u8>,
    too_long: bool,
}

impl<R: AsyncBufRead + Unpin> LineReader<R> {
    pub(crate) fn new(reader: R, max: usize) -> LineReader<R> {
        LineReader {
            reader,
            max,
            buf: Vec::new(),
            too_long: false,
        }
    }

    /// The next line; `None` at the end of input.
    pub(crate) async fn next_line(&mut self) -> io::Result<Option<Line>> {
        loop {
            // The only await: whatever it read is taken in below, before the next one.
            let available = self.reader.fill_buf().await?;
            if available.is_empty() {
                let partial = !self.buf.is_empty() || self.too_long;
                return Ok(partial.then(|| self.take()));
            }
            let (chunk, used, ended) = match available.iter().position(|&b| b == b'\n') {
                Some(at) => (&available[..at], at + 1, true),
                None => (available, available.len(), false),
            };
            if self.too_long || self.buf.len() + chunk.len() > self.max {
                self.too_long = true;
                self.buf.clear();
            } else {
                self.buf.extend_from_slice(chunk);
            }
            self.reader.consume(used);
            if ended {
                return Ok(Some(self.take()));
            }
        }
    }

    fn take(&mut self) -> Line {
        let line = if std::mem::take(&mut self.too_long) {
            Line::TooLong
        } else {
            let text = String::from_utf8_lossy(&self.buf);
            Line::Text(text.trim_end_matches('\r').to_owned())
        };
        self.buf.clear();
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn all(input: &[u8], max: usize) -> Vec<Line> {
        let mut reader = LineReader::new(input, max);
        let mut lines = Vec::new();
        while let Some(line) = reader.next_line().await.unwrap() {
            lines.push(line);
        }
        lines
    }

    fn text(s: &str) -> Line {
        Line::Text(s.into())
    }

    #[tokio::test]
    async fn lines_long_lines_and_bad_bytes() {
        assert_eq!(all(b"", 8).await, []);
        assert_eq!(all(b"a\r\n\nb", 8).await, [text("a"), text(""), text("b")]);
        let long = [&[b'x'; 20][..], b"\nok\n"].concat();
        assert_eq!(all(&long, 8).await, [Line::TooLong, text("ok")]);
        assert_eq!(all(&[b'x'; 9], 8).await, [Line::TooLong]);
        assert_eq!(all(b"\xff\xfeok\n", 8).await, [text("\u{fffd}\u{fffd}ok")]);
    }
}
