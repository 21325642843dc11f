//! The TCP transport: length-prefixed protobuf frames, read without holding a buffer while
//! the connection is idle.

use std::io;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;

use crate::connection::{Read, Transport};
use crate::wire::Form;

/// A client on TCP: length-prefixed protobuf frames.
pub(crate) struct Tcp {
    stream: TcpStream,
    /// Bytes of a frame not complete yet; empty (no allocation) while the socket is dry.
    buf: BytesMut,
    max: usize,
}

/// Bytes taken off the socket per read while the connection waits without a buffer.
const CHUNK: usize = 4096;

impl Tcp {
    pub(crate) fn new(stream: TcpStream, max: usize) -> Tcp {
        Tcp {
            stream,
            buf: BytesMut::new(),
            max,
        }
    }

    /// Moves what the socket has into the buffer, through a stack chunk so that nothing
    /// is allocated for a connection that has nothing to say; Ok(0) at the end of the
    /// stream.
    fn fill(&mut self) -> io::Result<usize> {
        let mut chunk = [0u8; CHUNK];
        let mut total = 0;
        loop {
            match self.stream.try_read(&mut chunk) {
                Ok(0) => return Ok(total),
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    total += n;
                    if n < CHUNK || self.buf.len() > self.max + im_proto::codec::PREFIX {
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
}

impl Transport for Tcp {
    const NAME: &'static str = "tcp";

    fn form(&self) -> Form {
        Form::Frame
    }

    async fn read(&mut self) -> Read {
        loop {
            match im_proto::codec::read_frame(&mut self.buf, self.max) {
                Ok(Some(frame)) => {
                    if self.buf.is_empty() {
                        // Let the allocation go with the frame.
                        self.buf = BytesMut::new();
                    }
                    return Read::Request(Form::Frame, frame);
                }
                Ok(None) => {}
                Err(err) => return Read::TooLong(err.to_string()),
            }
            if let Err(err) = self.stream.readable().await {
                return Read::Failed(err.to_string());
            }
            match self.fill() {
                Ok(0) if self.buf.is_empty() => return Read::Closed,
                Ok(0) => return Read::Failed("connection closed inside a frame".to_owned()),
                Ok(_) => {}
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                Err(err) => return Read::Failed(err.to_string()),
            }
        }
    }

    async fn write(&mut self, frames: &[(Form, Bytes)]) -> io::Result<()> {
        if let [(_, frame)] = frames {
            return self.stream.write_all(frame).await;
        }
        let len = frames.iter().map(|(_, f)| f.len()).sum();
        let mut buf = BytesMut::with_capacity(len);
        for (_, frame) in frames {
            buf.extend_from_slice(frame);
        }
        self.stream.write_all(&buf).await
    }

    async fn close(&mut self) {
        close(&mut self.stream).await;
    }
}

/// Ends a client connection: sends what was written, then reads what the client still
/// sends for a moment, since closing with unread bytes would reset the connection and could
/// lose the last frame or line (an error saying why it closes) on its way.
pub(crate) async fn close(stream: &mut TcpStream) {
    let _ = stream.shutdown().await;
    let mut chunk = [0u8; 1024];
    let drain = async {
        let mut left = 256 * 1024usize;
        while left > 0 {
            if stream.readable().await.is_err() {
                return;
            }
            match stream.try_read(&mut chunk) {
                Ok(0) => return,
                Ok(n) => left = left.saturating_sub(n),
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_millis(200), drain).await;
}
