//! The HTTP listener: WebSocket clients on `/ws` (binary frames carry protobuf, text frames
//! protobuf JSON), the web client on `/` (`web`) and a readiness check on `/healthz`.
//! [`router`] is the one place routes are added.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use futures::{SinkExt as _, StreamExt as _};

use crate::Shared;
use crate::connection::{self, Read, Transport};
use crate::wire::Form;

/// Bytes a WebSocket connection's read buffer holds, and reads at most per system call.
/// The buffer lives as long as the connection, idle or not: 512 B rather than 4 KiB cut an
/// idle connection from 17.2 to 13.5 KB (BENCHMARKS.md), while a request (100–300 B) still
/// takes one read; a rare larger frame takes one read per 512 B.
const READ_BUFFER: usize = 512;

/// The gateway's HTTP routes.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/ws", get(upgrade))
        .route("/healthz", get(health))
        .merge(crate::web::router())
        .with_state(shared)
}

/// Whether this gateway takes new clients: `200 ok` while it does, `503` once it is shutting
/// down or full, so that a balancer's health check sends new clients elsewhere (and a
/// gateway that froze does not answer at all). The services and Redis behind are not
/// checked: every gateway shares them, and taking every gateway out of the balancer for
/// them would only add an outage to theirs.
async fn health(State(shared): State<Arc<Shared>>) -> (StatusCode, &'static str) {
    if shared.stop.is_cancelled() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
    } else if shared.connections.available_permits() == 0 {
        (StatusCode::SERVICE_UNAVAILABLE, "full\n")
    } else {
        (StatusCode::OK, "ok\n")
    }
}

async fn upgrade(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    let Ok(permit) = shared.connections.clone().try_acquire_owned() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "too many connections").into_response();
    };
    if shared.stop.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response();
    }
    // Counted among the gateway's connections until it ends, so that shutdown waits for it.
    let tracked = shared.tasks.token();
    let max = shared.settings.max_frame;
    let forwarded = headers
        .get("x-real-ip")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse().ok());
    let client = shared.client_addr(peer.ip(), forwarded);
    // Small buffers: the library's defaults (128 KiB each way, the read one allocated up
    // front) would make every idle WebSocket client cost more than a hundred KiB. The
    // read buffer grows for a large message; each message is written as it is sent.
    upgrade
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| async move {
            connection::serve(shared, Ws { socket }, client).await;
            drop((permit, tracked));
        })
}

/// A client on WebSocket.
pub(crate) struct Ws {
    socket: WebSocket,
}

impl Transport for Ws {
    const NAME: &'static str = "ws";

    fn form(&self) -> Form {
        Form::Binary
    }

    async fn read(&mut self) -> Read {
        match self.socket.next().await {
            None | Some(Ok(Message::Close(_))) => Read::Closed,
            Some(Ok(Message::Binary(bytes))) => Read::Request(Form::Binary, bytes),
            Some(Ok(message @ Message::Text(_))) => Read::Request(Form::Json, message.into_data()),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => Read::Control,
            Some(Err(err)) => {
                let why = err.to_string();
                if why.contains("too long") || why.contains("Space limit") {
                    Read::TooLong(why)
                } else {
                    Read::Failed(why)
                }
            }
        }
    }

    async fn write(&mut self, frames: &[(Form, Bytes)]) -> io::Result<()> {
        for (form, bytes) in frames {
            let message = match form {
                Form::Json => Message::Text(
                    Utf8Bytes::try_from(bytes.clone())
                        .map_err(|err| io::Error::new(io::ErrorKind::InvalidData, err))?,
                ),
                Form::Binary | Form::Frame => Message::Binary(bytes.clone()),
            };
            self.socket.feed(message).await.map_err(io::Error::other)?;
        }
        self.socket.flush().await.map_err(io::Error::other)
    }

    async fn close(&mut self) {
        let _ = self.socket.close().await;
    }
}
