//! The in-process transport: a call handed straight to a [`Server`] in this process, through
//! the same start of a call as a TCP connection uses (routing, interceptors, deadline,
//! limits, panics, metrics), with no socket and no frame.

use std::net::{Ipv4Addr, SocketAddr};

use tokio::time::Instant;

use crate::error::Error;
use crate::frame::Text;
use crate::method::Method;
use crate::server::{Incoming, Server};

/// The peer address handlers see for in-process calls.
pub(crate) const PEER: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);

/// One attempt: encode, start on the server, await, decode. Dropping the future drops the
/// handler, as a CANCEL would.
pub(crate) async fn call<Req, Resp>(
    server: &Server,
    method: &Method,
    request: &Req,
    metadata: Vec<(Text, Text)>,
    deadline: Option<Instant>,
) -> Result<Resp, Error>
where
    Req: prost::Message,
    Resp: prost::Message + Default,
{
    let incoming = Incoming {
        request_id: 0,
        service: Text::from_static(method.service),
        method: Text::from_static(method.name),
        deadline,
        metadata,
        peer: PEER,
        peer_identity: None,
        local: true,
        body: crate::service::encode_response(request),
        received: Instant::now(),
    };
    let body = server.start_local(incoming)?.await?;
    Resp::decode(body).map_err(Error::Decode)
}
