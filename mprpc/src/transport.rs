//! What both ends of a connection share: one writer task per connection that drains its
//! queue into one buffer and writes it with one syscall, so that many small frames under
//! load cost one `write` between them; and a reader that drains everything the socket has
//! before parsing.
//!
//! Neither holds more than a small buffer (4 KiB) while its connection is quiet: the reader
//! lets a grown buffer go when the socket runs dry and waits for readability before it
//! allocates again, and the writer does the same when its queue runs dry. A busy connection
//! reuses its buffers instead of allocating per batch.

use std::future::Future;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::codec::Decoder;

use crate::frame::{self, Codec, Frame, FrameError, Header, Kind, Text};
use crate::status::{Code, Status};

/// Writes stop being batched past this many buffered bytes.
const BATCH_BYTES: usize = 64 * 1024;
/// Frames taken from the queue per wake-up.
const BATCH_FRAMES: usize = 64;
/// Write buffer a connection keeps between batches: enough for the batches of a connection
/// busy with small calls, so that they reuse it rather than allocate per batch.
const KEEP_BYTES: usize = 4 * 1024;

/// A frame waiting for the writer.
#[derive(Debug)]
pub(crate) enum Outbound {
    /// A frame encoded by its sender (client requests).
    Encoded(Bytes),
    /// The outcome of a call (server).
    Response {
        request_id: u64,
        result: Result<Bytes, Status>,
    },
    /// A frame with no body: cancel, ping, pong, goaway.
    Control {
        kind: Kind,
        request_id: u64,
        status: Code,
        message: &'static str,
    },
    /// Write what is queued before this, then close the write side.
    Close,
}

impl Outbound {
    pub(crate) fn control(kind: Kind, request_id: u64) -> Outbound {
        Outbound::Control {
            kind,
            request_id,
            status: Code::Ok,
            message: "",
        }
    }

    /// Bytes of payload this frame holds while queued: what the server's queued-bytes
    /// limits count.
    pub(crate) fn weight(&self) -> usize {
        match self {
            Outbound::Response {
                result: Ok(body), ..
            } => body.len(),
            Outbound::Response {
                result: Err(status),
                ..
            } => status.message().len(),
            Outbound::Encoded(frame) => frame.len(),
            Outbound::Control { .. } | Outbound::Close => 0,
        }
    }

    fn encode(self, dst: &mut BytesMut, max_frame: usize) {
        let (request_id, result) = match self {
            Outbound::Encoded(frame) => return dst.extend_from_slice(&frame),
            Outbound::Control {
                kind,
                request_id,
                status,
                message,
            } => {
                let header = Header {
                    kind,
                    request_id,
                    status,
                    message: Text::from_static(message),
                    ..Header::default()
                };
                // A bodiless header with a static message always fits.
                let _ = frame::encode_raw(dst, &header, &[], max_frame);
                return;
            }
            Outbound::Response { request_id, result } => (request_id, result),
            Outbound::Close => return,
        };
        let mut header = Header {
            kind: Kind::Response,
            request_id,
            ..Header::default()
        };
        let result: Result<(), Status> = match result {
            Ok(body) => match frame::encode_raw(dst, &header, &body, max_frame) {
                Ok(()) => return,
                // The handler ran: a code that invites a retry could run it again.
                Err(_) => Err(Status::internal("response exceeds the frame size cap")),
            },
            Err(status) => Err(status),
        };
        if let Err(status) = result {
            header.status = status.code();
            header.message = Text::from(status.message());
            if frame::encode_raw(dst, &header, &[], max_frame).is_err() {
                header.message = Text::from_static("status message too long");
                let _ = frame::encode_raw(dst, &header, &[], max_frame);
            }
        }
    }
}

/// Writes everything queued on `rx` until every sender is gone or [`Outbound::Close`]
/// arrives, then shuts the socket's write side down.
///
/// `busy()` tells whether more frames than the `n` just taken are on their way (calls in
/// flight that have not queued theirs yet); only then is waiting for them worth a yield.
/// `released(bytes)` is told, after each write, the [`Outbound::weight`] that left.
pub(crate) async fn write_loop<W: AsyncWrite + Unpin>(
    mut io: W,
    mut rx: mpsc::Receiver<Outbound>,
    max_frame: usize,
    busy: impl Fn(usize) -> bool,
    released: impl Fn(usize),
) -> std::io::Result<()> {
    let mut buf = BytesMut::new();
    // Taken from the queue in bulk (one permit release per batch, not per frame); at most
    // BATCH_FRAMES at a time, so the list stays small enough to keep.
    let mut batch = Vec::new();
    let mut closing = false;
    let take = |out: Outbound, buf: &mut BytesMut, weight: &mut usize| {
        let close = matches!(out, Outbound::Close);
        *weight += out.weight();
        out.encode(buf, max_frame);
        close
    };
    while !closing {
        let taken = rx.recv_many(&mut batch, BATCH_FRAMES).await;
        if taken == 0 {
            break;
        }
        let mut weight = 0;
        for out in batch.drain(..) {
            closing |= take(out, &mut buf, &mut weight);
        }
        // Callers woke this task with their first frame, and on the same worker it runs
        // before they do; stepping aside once lets every ready caller queue its frame, so
        // a burst leaves in one write instead of one write per call. A lone call skips it:
        // the yield costs a trip through the scheduler that a single frame cannot repay.
        if !closing && busy(taken) {
            tokio::task::yield_now().await;
        }
        // Whatever queued meanwhile rides along in the same write.
        while !closing && buf.len() < BATCH_BYTES {
            let Ok(out) = rx.try_recv() else { break };
            closing = take(out, &mut buf, &mut weight);
        }
        io.write_all(&buf).await?;
        // A no-op on a TCP socket; a TLS stream may keep records it could not write yet.
        io.flush().await?;
        released(weight);
        buf.clear();
        if buf.capacity() > KEEP_BYTES && (rx.is_empty() || buf.capacity() > 4 * BATCH_BYTES) {
            // A connection going quiet keeps at most a small buffer, and one huge frame does
            // not pin its buffer for the life of the connection.
            buf = BytesMut::new();
        }
    }
    io.shutdown().await
}

/// A read half that can wait until it has data without holding a buffer meanwhile.
pub(crate) trait Readable: AsyncRead + Unpin {
    /// Completes when a read would not block (or would fail).
    fn ready(&mut self) -> impl Future<Output = std::io::Result<()>> + Send;

    /// Reads what is there without waiting; `WouldBlock` when nothing is.
    fn try_read_buf(&mut self, buf: &mut BytesMut) -> std::io::Result<usize>;
}

impl Readable for tokio::net::tcp::OwnedReadHalf {
    fn ready(&mut self) -> impl Future<Output = std::io::Result<()>> + Send {
        self.readable()
    }

    fn try_read_buf(&mut self, buf: &mut BytesMut) -> std::io::Result<usize> {
        tokio::net::tcp::OwnedReadHalf::try_read_buf(self, buf)
    }
}

/// The read half of a TLS stream. It cannot wait for readability without reading (the
/// bytes on the socket are records, not frames), so `ready` returns at once and a quiet TLS
/// connection keeps the reader's small buffer while it waits.
impl<T: AsyncRead + Send> Readable for tokio::io::ReadHalf<T> {
    fn ready(&mut self) -> impl Future<Output = std::io::Result<()>> + Send {
        std::future::ready(Ok(()))
    }

    fn try_read_buf(&mut self, buf: &mut BytesMut) -> std::io::Result<usize> {
        // One poll with a waker that does nothing: what is decrypted or on the socket is
        // taken; otherwise nothing is lost, and the next real poll registers its own waker.
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let read = std::pin::pin!(self.read_buf(buf));
        match read.poll(&mut cx) {
            std::task::Poll::Ready(result) => result,
            std::task::Poll::Pending => Err(std::io::ErrorKind::WouldBlock.into()),
        }
    }
}

/// Reads frames from one connection, draining everything the socket has before parsing.
pub(crate) struct FrameReader<R> {
    io: R,
    buf: BytesMut,
    codec: Codec,
    /// Room asked of the socket per read: grows while reads fill it, so a busy connection
    /// drains many frames per syscall, and shrinks back when they do not, so that a quiet
    /// one allocates little.
    read_size: usize,
}

/// Smallest and largest room a read asks the socket for.
const READ_MIN: usize = 4 * 1024;
const READ_MAX: usize = 64 * 1024;

impl<R: Readable> FrameReader<R> {
    pub(crate) fn new(io: R, max_frame: usize) -> Self {
        FrameReader {
            io,
            buf: BytesMut::new(),
            codec: Codec::new(max_frame),
            read_size: READ_MIN,
        }
    }

    /// Whether what was read looks like the start of a TLS record (a handshake or an
    /// alert) rather than a frame: the peer speaks TLS and this end does not.
    pub(crate) fn starts_like_tls(&self) -> bool {
        matches!(&self.buf[..], [0x15 | 0x16, 0x03, ..])
    }

    /// The next frame; `None` at a clean end of stream.
    ///
    /// Cancel-safe: dropping the future loses no bytes.
    pub(crate) async fn next(&mut self) -> Option<Result<Frame, FrameError>> {
        loop {
            match self.codec.decode(&mut self.buf) {
                Ok(Some(frame)) => return Some(Ok(frame)),
                Ok(None) => {}
                Err(err) => return Some(Err(err)),
            }
            if self.buf.is_empty() {
                // Under load more data is usually waiting: read it into the room left in
                // the buffer. Only when the socket is dry may the buffer be let go (frames
                // already handed out keep their share), to wait without holding much.
                if self.buf.capacity() >= READ_MIN {
                    match self.io.try_read_buf(&mut self.buf) {
                        Ok(0) => return None,
                        Ok(_) => continue,
                        Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(err) => return Some(Err(err.into())),
                    }
                }
                // A quiet connection keeps its small buffer (it would allocate one per
                // request otherwise); a large one is let go while the socket is dry.
                if self.read_size > READ_MIN || self.buf.capacity() > READ_MIN {
                    self.buf = BytesMut::new();
                }
                if let Err(err) = self.io.ready().await {
                    return Some(Err(err.into()));
                }
            }
            if self.buf.capacity() - self.buf.len() < self.read_size / 4 {
                self.buf.reserve(self.read_size);
            }
            let room = self.buf.capacity() - self.buf.len();
            match self.io.read_buf(&mut self.buf).await {
                Ok(0) if self.buf.is_empty() => return None,
                Ok(0) => {
                    return Some(Err(FrameError::Malformed(
                        "connection closed inside a frame",
                    )));
                }
                Ok(n) if n == room => self.read_size = (self.read_size * 2).min(READ_MAX),
                Ok(n) if n < room / 4 => self.read_size = (self.read_size / 2).max(READ_MIN),
                Ok(_) => {}
                Err(err) => return Some(Err(err.into())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use super::*;
    use crate::frame::DEFAULT_MAX_FRAME;

    /// Records the size of every write it is asked to do.
    #[derive(Default)]
    struct Writes {
        sizes: Vec<usize>,
        bytes: BytesMut,
    }

    impl AsyncWrite for Writes {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            self.sizes.push(buf.len());
            self.bytes.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// Hands out `data` as fast as asked, counting the reads.
    struct Reads {
        data: Bytes,
        reads: usize,
    }

    impl Readable for Reads {
        async fn ready(&mut self) -> std::io::Result<()> {
            Ok(())
        }

        fn try_read_buf(&mut self, _: &mut BytesMut) -> std::io::Result<usize> {
            Err(std::io::ErrorKind::WouldBlock.into())
        }
    }

    impl AsyncRead for Reads {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            self.reads += 1;
            let n = self.data.len().min(buf.remaining());
            let chunk = self.data.split_to(n);
            buf.put_slice(&chunk);
            Poll::Ready(Ok(()))
        }
    }

    fn response(request_id: u64) -> Outbound {
        Outbound::Response {
            request_id,
            result: Ok(Bytes::from_static(&[7; 64])),
        }
    }

    /// Writes `n` queued responses and returns the writer.
    async fn write_queued(n: u64) -> Writes {
        let (tx, rx) = mpsc::channel(n as usize);
        for id in 1..=n {
            tx.try_send(response(id)).expect("room");
        }
        drop(tx);
        let mut writes = Writes::default();
        write_loop(&mut writes, rx, DEFAULT_MAX_FRAME, |_| false, |_| {})
            .await
            .expect("written");
        writes
    }

    fn decode_all(mut bytes: BytesMut) -> Vec<u64> {
        let mut codec = Codec::new(DEFAULT_MAX_FRAME);
        let mut ids = Vec::new();
        while let Some(frame) = codec.decode(&mut bytes).expect("valid frames") {
            assert_eq!(frame.body.len(), 64);
            ids.push(frame.header.request_id);
        }
        assert!(bytes.is_empty(), "no partial frame left");
        ids
    }

    #[tokio::test]
    async fn a_burst_of_frames_leaves_in_one_write() {
        let writes = write_queued(200).await;
        assert_eq!(writes.sizes.len(), 1, "{:?}", writes.sizes);
        assert_eq!(decode_all(writes.bytes), (1..=200).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn batches_are_cut_by_size_not_by_frame_count() {
        // About 100 KiB of frames: the first write takes 64 KiB and more, the second the rest.
        let writes = write_queued(1_200).await;
        assert_eq!(writes.sizes.len(), 2, "{:?}", writes.sizes);
        assert!(writes.sizes[0] >= BATCH_BYTES, "{:?}", writes.sizes);
        assert_eq!(decode_all(writes.bytes), (1..=1_200).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_few_reads_drain_many_frames() {
        let written = write_queued(200).await.bytes.freeze();
        let mut reader = FrameReader::new(
            Reads {
                data: written,
                reads: 0,
            },
            DEFAULT_MAX_FRAME,
        );
        for id in 1..=200 {
            let frame = reader.next().await.expect("a frame").expect("valid");
            assert_eq!(frame.header.request_id, id);
        }
        // The read size starts small and doubles while reads fill it: 18 KiB of frames
        // take reads of 4, 8 and 16 KiB, not one per frame.
        assert!(reader.io.reads <= 4, "{} reads", reader.io.reads);
        assert!(reader.next().await.is_none(), "clean end of stream");
    }
}
