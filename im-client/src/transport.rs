//! The two ways to reach a gateway, behind one type: TCP (a big-endian `u32` length, then
//! protobuf) and WebSocket (one protobuf message per binary frame), each with or without
//! TLS underneath.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use im_proto::client::{Request, ServerMessage};
use im_proto::codec::{Codec, MAX_FRAME};
use prost::Message as _;
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_util::codec::Framed;

use crate::Error;
use crate::address::Address;
use crate::options::Options;
use crate::tls::{Connector, Stream};

/// Why the transport failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The connection could not be made.
    #[error("cannot connect to {address}: {source}")]
    Connect {
        /// Where.
        address: String,
        /// Why.
        #[source]
        source: Arc<dyn std::error::Error + Send + Sync>,
    },
    /// Reading or writing failed.
    #[error("connection failed: {0}")]
    Io(#[source] Arc<dyn std::error::Error + Send + Sync>),
    /// The gateway sent something that is not a `ServerMessage`.
    #[error("the gateway sent an invalid message: {0}")]
    Invalid(String),
}

impl TransportError {
    fn io(err: impl std::error::Error + Send + Sync + 'static) -> TransportError {
        TransportError::Io(Arc::new(err))
    }
}

/// How to reach the gateway: its address and, for TLS, the connector (set up once, so
/// that a bad CA file fails the first connect rather than every reconnect).
#[derive(Debug, Clone)]
pub(crate) struct Dialer {
    address: Address,
    tls: Option<Connector>,
}

impl Dialer {
    /// Reads `options.address` and, for a TLS address, `options.ca_file`.
    pub(crate) fn new(options: &Options) -> Result<Dialer, Error> {
        let address = Address::parse(&options.address)?;
        let tls = if address.is_tls() {
            Some(Connector::new(address.host(), options.ca_file.as_deref())?)
        } else {
            None
        };
        Ok(Dialer { address, tls })
    }

    /// Connects, giving up after `timeout` (the TLS and WebSocket handshakes included).
    pub(crate) async fn connect(&self, timeout: Duration) -> Result<Transport, TransportError> {
        let failed = |source: Arc<dyn std::error::Error + Send + Sync>| TransportError::Connect {
            address: self.address.to_string(),
            source,
        };
        match tokio::time::timeout(timeout, self.open()).await {
            Ok(opened) => opened.map_err(|err| failed(Arc::from(err))),
            Err(_) => Err(failed(Arc::new(io::Error::new(
                io::ErrorKind::TimedOut,
                "timed out",
            )))),
        }
    }

    async fn open(&self) -> Result<Transport, Box<dyn std::error::Error + Send + Sync>> {
        let tcp = TcpStream::connect(self.address.host_port()).await?;
        // Requests are small and latency matters more than packet count.
        tcp.set_nodelay(true)?;
        let stream = match &self.tls {
            Some(tls) => tls.connect(tcp).await?,
            None => Stream::Plain(tcp),
        };
        match &self.address {
            Address::Tcp { .. } => {
                let framed = Framed::new(stream, Codec::new(MAX_FRAME));
                Ok(Transport::Tcp(Box::new(framed)))
            }
            Address::WebSocket { url, .. } => {
                let (ws, _) = tokio_tungstenite::client_async(url.as_str(), stream).await?;
                Ok(Transport::WebSocket(Box::new(ws)))
            }
        }
    }
}

/// One open connection to a gateway.
pub(crate) enum Transport {
    Tcp(Box<Framed<Stream, Codec<ServerMessage>>>),
    WebSocket(Box<WebSocketStream<Stream>>),
}

impl Transport {
    /// Writes one request.
    pub(crate) async fn send(&mut self, request: &Request) -> Result<(), TransportError> {
        match self {
            Transport::Tcp(framed) => framed.send(request).await.map_err(TransportError::io),
            Transport::WebSocket(ws) => {
                let bytes = Bytes::from(request.encode_to_vec());
                ws.send(WsMessage::Binary(bytes))
                    .await
                    .map_err(TransportError::io)
            }
        }
    }

    /// The next message from the gateway; `None` once the gateway closed the connection.
    /// Cancel-safe: nothing is lost when another branch of a `select!` wins.
    pub(crate) async fn recv(&mut self) -> Result<Option<ServerMessage>, TransportError> {
        match self {
            Transport::Tcp(framed) => match framed.next().await {
                None => Ok(None),
                Some(Ok(message)) => Ok(Some(message)),
                Some(Err(err)) => Err(TransportError::Invalid(err.to_string())),
            },
            Transport::WebSocket(ws) => loop {
                let frame = match ws.next().await {
                    None => return Ok(None),
                    Some(frame) => frame.map_err(TransportError::io)?,
                };
                match frame {
                    WsMessage::Binary(bytes) => {
                        return ServerMessage::decode(bytes)
                            .map(Some)
                            .map_err(|err| TransportError::Invalid(err.to_string()));
                    }
                    WsMessage::Close(_) => return Ok(None),
                    // Pings are answered by tungstenite; text frames are only ever sent in
                    // answer to text requests, which this client does not make.
                    _ => continue,
                }
            },
        }
    }

    /// Closes the connection politely (errors are of no interest by then).
    pub(crate) async fn close(&mut self) {
        match self {
            Transport::Tcp(framed) => {
                let _ = SinkExt::<&Request>::close(framed.as_mut()).await;
            }
            Transport::WebSocket(ws) => {
                let _ = SinkExt::close(ws.as_mut()).await;
            }
        }
    }
}
