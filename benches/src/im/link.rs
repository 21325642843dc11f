//! One connection to a gateway, over TCP (length-prefixed frames) or WebSocket (binary
//! frames), either over TLS, driven by the one task that owns it: queue requests, then
//! [`Link::io`] writes what is queued and waits for bytes to read; [`Link::next_frame`]
//! hands out what arrived.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::{Buf, Bytes, BytesMut};
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt as _, StreamExt as _};
use im_client::tls::{Connector, Stream};
use im_proto::client::{Request, ServerMessage};
use im_proto::codec::{self, MAX_FRAME};
use prost::Message as _;
use tokio::io::{AsyncRead, AsyncWrite, Interest};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// Bytes read at a time; a connection's buffer grows past this only for a larger frame.
const READ_CHUNK: usize = 2048;

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// The gateway's TCP address (for WebSocket: the address to connect the socket to).
    pub addr: SocketAddr,
    /// `Some(url)` to speak WebSocket.
    pub ws_url: Option<String>,
    /// `Some` to speak TLS (under WebSocket too).
    pub tls: Option<Connector>,
}

impl Endpoint {
    /// Opens a connection, from `source` when given (so that one host can open more
    /// connections to one port than one source address has ephemeral ports).
    ///
    /// # Errors
    /// When the connection, the TLS handshake or the WebSocket handshake fails.
    pub async fn connect(&self, source: Option<IpAddr>) -> anyhow::Result<Link> {
        let socket = if self.addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if let Some(ip) = source {
            socket
                .bind(SocketAddr::new(ip, 0))
                .with_context(|| format!("binding to {ip}"))?;
        }
        let stream = socket
            .connect(self.addr)
            .await
            .with_context(|| format!("connecting to {}", self.addr))?;
        stream.set_nodelay(true)?;
        let stream = match &self.tls {
            Some(tls) => tls
                .connect(stream)
                .await
                .with_context(|| format!("TLS handshake with {}", tls.server_name()))?,
            None => Stream::Plain(stream),
        };
        match &self.ws_url {
            None => Ok(Link::Tcp(TcpLink {
                stream,
                read: BytesMut::new(),
                write: BytesMut::new(),
            })),
            Some(url) => {
                let (ws, _) = tokio_tungstenite::client_async(url.as_str(), stream)
                    .await
                    .with_context(|| format!("WebSocket handshake with {url}"))?;
                let (sink, stream) = ws.split();
                Ok(Link::Ws(WsLink {
                    sink,
                    stream,
                    queued: VecDeque::new(),
                    unflushed: false,
                    arrived: VecDeque::new(),
                }))
            }
        }
    }
}

/// An open connection.
#[derive(Debug)]
pub enum Link {
    /// Length-prefixed protobuf over TCP.
    Tcp(TcpLink),
    /// Protobuf in binary WebSocket frames.
    Ws(WsLink),
}

/// The TCP side: one buffer each way.
#[derive(Debug)]
pub struct TcpLink {
    stream: Stream,
    read: BytesMut,
    write: BytesMut,
}

/// The WebSocket side: frames waiting to be written, and frames read but not yet handed out.
#[derive(Debug)]
pub struct WsLink {
    sink: SplitSink<WebSocketStream<Stream>, WsMessage>,
    stream: SplitStream<WebSocketStream<Stream>>,
    queued: VecDeque<WsMessage>,
    /// Frames were fed to the sink since its last complete flush.
    unflushed: bool,
    arrived: VecDeque<Bytes>,
}

impl Link {
    /// Queues `request`; [`Link::io`] writes it.
    pub fn queue(&mut self, request: &Request) {
        match self {
            Link::Tcp(tcp) => codec::write_frame(request, &mut tcp.write),
            Link::Ws(ws) => {
                ws.queued
                    .push_back(WsMessage::Binary(request.encode_to_vec().into()));
                ws.unflushed = true;
            }
        }
    }

    /// Writes what is queued and waits until something was read (or the connection failed).
    ///
    /// Cancel-safe: nothing queued is lost or written twice when the future is dropped.
    ///
    /// # Errors
    /// When the connection closed or failed.
    pub async fn io(&mut self) -> io::Result<()> {
        match self {
            Link::Tcp(tcp) => tcp.io().await,
            Link::Ws(ws) => ws.io().await,
        }
    }

    /// The next whole frame that arrived, if any.
    ///
    /// # Errors
    /// When the peer announced a frame over the size cap.
    pub fn next_frame(&mut self) -> anyhow::Result<Option<Bytes>> {
        match self {
            Link::Tcp(tcp) => Ok(codec::read_frame(&mut tcp.read, MAX_FRAME)?),
            Link::Ws(ws) => Ok(ws.arrived.pop_front()),
        }
    }

    /// Sends `request` and waits for its reply, passing over anything else that arrives.
    ///
    /// # Errors
    /// When the connection fails, or no reply comes within `timeout`.
    pub async fn call(
        &mut self,
        request: &Request,
        timeout: Duration,
    ) -> anyhow::Result<ServerMessage> {
        self.queue(request);
        let reply = tokio::time::timeout(timeout, async {
            loop {
                self.io().await?;
                while let Some(frame) = self.next_frame()? {
                    let message = ServerMessage::decode(frame)?;
                    if message.id == request.id {
                        return anyhow::Ok(message);
                    }
                }
            }
        })
        .await;
        match reply {
            Ok(reply) => reply,
            Err(_) => bail!("no reply to request {} within {timeout:?}", request.id),
        }
    }
}

impl TcpLink {
    async fn io(&mut self) -> io::Result<()> {
        match &mut self.stream {
            Stream::Plain(tcp) => plain_io(tcp, &mut self.read, &mut self.write).await,
            Stream::Tls(tls) => {
                let mut tls = Pin::new(tls.as_mut());
                poll_fn(|cx| poll_io(tls.as_mut(), cx, &mut self.read, &mut self.write)).await
            }
        }
    }
}

/// Plain TCP: readiness, then non-blocking reads and writes straight from the buffers.
async fn plain_io(
    tcp: &mut TcpStream,
    read: &mut BytesMut,
    write: &mut BytesMut,
) -> io::Result<()> {
    loop {
        let interest = if write.is_empty() {
            Interest::READABLE
        } else {
            Interest::READABLE | Interest::WRITABLE
        };
        let ready = tcp.ready(interest).await?;
        if ready.is_writable() && !write.is_empty() {
            match tcp.try_write(write) {
                Ok(n) => write.advance(n),
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                Err(err) => return Err(err),
            }
        }
        if ready.is_readable() {
            read.reserve(READ_CHUNK);
            match tcp.try_read_buf(read) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(_) => return Ok(()),
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                Err(err) => return Err(err),
            }
        }
    }
}

/// A stream that buffers of its own (TLS): what is queued is written into it and flushed
/// (it may hold a record back until then); ready once something was read. Writing alone
/// never completes it, as with plain TCP.
fn poll_io<S: AsyncRead + AsyncWrite>(
    mut stream: Pin<&mut S>,
    cx: &mut Context<'_>,
    read: &mut BytesMut,
    write: &mut BytesMut,
) -> Poll<io::Result<()>> {
    while !write.is_empty() {
        match stream.as_mut().poll_write(cx, write) {
            Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
            Poll::Ready(Ok(n)) => write.advance(n),
            Poll::Ready(Err(err)) => return Poll::Ready(Err(err)),
            Poll::Pending => break,
        }
    }
    if let Poll::Ready(Err(err)) = stream.as_mut().poll_flush(cx) {
        return Poll::Ready(Err(err));
    }
    read.reserve(READ_CHUNK);
    match ready!(tokio_util::io::poll_read_buf(stream, cx, read)) {
        Ok(0) => Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into())),
        Ok(_) => Poll::Ready(Ok(())),
        Err(err) => Poll::Ready(Err(err)),
    }
}

impl WsLink {
    async fn io(&mut self) -> io::Result<()> {
        loop {
            tokio::select! {
                written = flush(&mut self.sink, &mut self.queued), if self.unflushed => {
                    written?;
                    self.unflushed = false;
                }
                read = self.stream.next() => {
                    match read {
                        Some(Ok(WsMessage::Binary(bytes))) => {
                            self.arrived.push_back(bytes);
                            return Ok(());
                        }
                        Some(Ok(WsMessage::Close(_))) | None => {
                            return Err(io::ErrorKind::UnexpectedEof.into());
                        }
                        // Pings are answered by the library; text is not asked for.
                        Some(Ok(_)) => {}
                        Some(Err(err)) => return Err(io::Error::other(err)),
                    }
                }
            }
        }
    }
}

/// Feeds the queued frames to the sink, each taken off the queue only once the sink has it,
/// then flushes.
async fn flush(
    sink: &mut SplitSink<WebSocketStream<Stream>, WsMessage>,
    queued: &mut VecDeque<WsMessage>,
) -> io::Result<()> {
    while let Some(message) = queued.front() {
        sink.feed(message.clone()).await.map_err(io::Error::other)?;
        queued.pop_front();
    }
    sink.flush().await.map_err(io::Error::other)
}
