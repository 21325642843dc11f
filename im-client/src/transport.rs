//! The two ways to reach a gateway, behind one type: TCP (a big-endian `u32` length, then
//! protobuf) and WebSocket (one protobuf message per binary frame).

use std::sync::Arc;
use std::time::Duration;
use std::{fmt, io};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use im_proto::client::{Request, ServerMessage};
use im_proto::codec::{Codec, MAX_FRAME};
use prost::Message as _;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::codec::Framed;

use crate::Error;

/// Where a gateway listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// `tcp://host:port`, or a bare `host:port`.
    Tcp(String),
    /// `ws://host:port/path`.
    WebSocket(String),
}

impl Address {
    /// Reads `tcp://host:port`, `ws://host:port/path` or `host:port` (TCP).
    ///
    /// # Errors
    /// [`Error::Address`] for another scheme (`wss://` included: this client speaks no TLS)
    /// or a missing port.
    pub fn parse(address: &str) -> Result<Address, Error> {
        let invalid = |reason| Error::Address {
            address: address.to_owned(),
            reason,
        };
        let address = address.trim();
        if let Some(rest) = address.strip_prefix("ws://") {
            let host = rest.split('/').next().unwrap_or_default();
            if host.is_empty() {
                return Err(invalid("no host"));
            }
            return Ok(Address::WebSocket(address.to_owned()));
        }
        if address.contains("://") && !address.starts_with("tcp://") {
            return Err(invalid("the scheme must be tcp:// or ws://"));
        }
        let host_port = address.strip_prefix("tcp://").unwrap_or(address);
        match host_port.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                Ok(Address::Tcp(host_port.to_owned()))
            }
            _ => Err(invalid("expected host:port")),
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Tcp(host_port) => write!(f, "tcp://{host_port}"),
            Address::WebSocket(url) => f.write_str(url),
        }
    }
}

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

/// One open connection to a gateway.
pub(crate) enum Transport {
    Tcp(Box<Framed<TcpStream, Codec<ServerMessage>>>),
    WebSocket(Box<WebSocketStream<MaybeTlsStream<TcpStream>>>),
}

impl Transport {
    /// Connects to `address`, giving up after `timeout` (handshake included).
    pub(crate) async fn connect(
        address: &Address,
        timeout: Duration,
    ) -> Result<Transport, TransportError> {
        match tokio::time::timeout(timeout, Transport::open(address)).await {
            Ok(opened) => opened,
            Err(_) => Err(TransportError::Connect {
                address: address.to_string(),
                source: Arc::new(io::Error::new(io::ErrorKind::TimedOut, "timed out")),
            }),
        }
    }

    async fn open(address: &Address) -> Result<Transport, TransportError> {
        let failed = |source: Arc<dyn std::error::Error + Send + Sync>| TransportError::Connect {
            address: address.to_string(),
            source,
        };
        match address {
            Address::Tcp(host_port) => {
                let stream = TcpStream::connect(host_port)
                    .await
                    .map_err(|err| failed(Arc::new(err)))?;
                // Requests are small and latency matters more than packet count.
                stream
                    .set_nodelay(true)
                    .map_err(|err| failed(Arc::new(err)))?;
                let framed = Framed::new(stream, Codec::new(MAX_FRAME));
                Ok(Transport::Tcp(Box::new(framed)))
            }
            Address::WebSocket(url) => {
                let (stream, _) = tokio_tungstenite::connect_async(url.as_str())
                    .await
                    .map_err(|err| failed(Arc::new(err)))?;
                Ok(Transport::WebSocket(Box::new(stream)))
            }
        }
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse() {
        let tcp = |s: &str| Address::Tcp(s.to_owned());
        assert_eq!(
            Address::parse("127.0.0.1:6000").unwrap(),
            tcp("127.0.0.1:6000")
        );
        assert_eq!(Address::parse("tcp://h:1").unwrap(), tcp("h:1"));
        assert_eq!(
            Address::parse("ws://127.0.0.1:6080/ws").unwrap(),
            Address::WebSocket("ws://127.0.0.1:6080/ws".into())
        );
        for bad in [
            "",
            "host",
            "host:x",
            ":6000",
            "wss://h:1/ws",
            "http://h:1",
            "ws://",
        ] {
            assert!(Address::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Address::parse("h:1").unwrap().to_string(), "tcp://h:1");
    }
}
