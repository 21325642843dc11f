//! The server's TLS handshake on an accepted connection, bounded like everything else a
//! connection does before its first frame.

use std::sync::Arc;

use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::rustls::ServerConfig;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::connection::Peer;
use super::{Shared, Slot};
use crate::tls::{self, PeerIdentity, ServerStream, Side};

/// Runs the handshake, within the handshake timeout (the idle timeout when there is none)
/// counted from when the connection was accepted; gives up at once when the server shuts
/// down or a newcomer at the connection limit takes this connection's place.
///
/// `None` when the connection is to be closed: the failure was logged and counted.
pub(super) async fn accept(
    config: Arc<ServerConfig>,
    stream: TcpStream,
    peer: &Peer,
    shared: &Shared,
    slot: &Slot,
    shutdown: &CancellationToken,
) -> Option<(ServerStream, Option<Arc<PeerIdentity>>)> {
    let limit = shared
        .config
        .handshake_timeout
        .or(shared.config.idle_timeout);
    let deadline = limit.and_then(|limit| peer.opened.checked_add(limit));
    let handshake = tls::accept(config, stream);
    let timed = async {
        match deadline {
            Some(deadline) => tokio::time::timeout_at(deadline, handshake)
                .await
                .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into())),
            None => handshake.await,
        }
    };
    let addr = peer.addr;
    let result = tokio::select! {
        result = timed => result,
        () = slot.evict.cancelled() => {
            debug!(peer = %addr, "evicted at the connection limit during the TLS handshake");
            return None;
        }
        () = shutdown.cancelled() => return None,
    };
    match result {
        Ok(accepted) => Some(accepted),
        Err(err) => {
            let reason = tls::failure_reason(&err);
            tls::count_failure(Side::Server, reason);
            let took = Instant::now().saturating_duration_since(peer.opened);
            match reason {
                // A peer that holds a wrong certificate or speaks plaintext: an operator
                // wants to know.
                "certificate" | "not_tls" => {
                    warn!(peer = %addr, reason, cause = %err, "TLS handshake failed")
                }
                _ => debug!(peer = %addr, reason, cause = %err, ?took, "TLS handshake failed"),
            }
            None
        }
    }
}
