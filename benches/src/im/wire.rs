//! The hot path of the client protocol without allocating: a reader that picks acks and
//! pushed messages out of a `ServerMessage`'s bytes by borrowing them, and the send requests
//! re-encoded into one reused `Request`.
//!
//! Everything else (setup replies, errors) is rare and goes through prost's generated
//! `ServerMessage` decoding.

use std::fmt::Write as _;

use bytes::Buf;
use im_proto::SendGroupRequest;
use im_proto::SendRequest;
use im_proto::client::Request;
use im_proto::client::request::Command;
use prost::encoding::{WireType, decode_key, decode_varint};

/// `ServerMessage` field numbers this reader understands.
const ID: u32 = 1;
const ERROR: u32 = 2;
const ACK: u32 = 15;
const MESSAGE: u32 = 50;

/// Bytes that are not a well-formed protobuf message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed(&'static str);

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "malformed frame: {}", self.0)
    }
}

impl std::error::Error for Malformed {}

impl From<prost::DecodeError> for Malformed {
    fn from(_: prost::DecodeError) -> Malformed {
        Malformed("bad key or varint")
    }
}

/// What a `ServerMessage` frame is, as far as the load cares.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// The reply to a send.
    Ack {
        /// The request's id.
        id: u64,
        /// The message's id.
        msg_id: u64,
        /// Its seq in its conversation.
        seq: u64,
    },
    /// A pushed chat message.
    Message {
        /// The message's id.
        msg_id: u64,
        /// Its conversation, as the bytes of the id (`d:1:2`, `g:7`).
        conversation: &'a [u8],
        /// Its seq in the conversation.
        seq: u64,
        /// Who sent it.
        sender_id: u64,
        /// Its text.
        body: &'a [u8],
    },
    /// A reply with its `error` set: decode the frame in full to see why.
    Failed {
        /// The request's id.
        id: u64,
    },
    /// Anything else: pongs, other replies, other pushes.
    Other {
        /// The request's id (0 for a push).
        id: u64,
    },
}

/// Reads what [`Frame`] names out of one `ServerMessage`'s protobuf bytes.
///
/// # Errors
/// When the bytes are not a well-formed protobuf message.
pub fn read(mut buf: &[u8]) -> Result<Frame<'_>, Malformed> {
    let mut id = 0;
    let mut failed = false;
    let mut body = None;
    while buf.has_remaining() {
        let (tag, wire) = decode_key(&mut buf)?;
        match (tag, wire) {
            (ID, WireType::Varint) => id = decode_varint(&mut buf)?,
            (ERROR, WireType::LengthDelimited) => {
                take(&mut buf)?;
                failed = true;
            }
            (ACK, WireType::LengthDelimited) => body = Some((ACK, take(&mut buf)?)),
            (MESSAGE, WireType::LengthDelimited) => body = Some((MESSAGE, take(&mut buf)?)),
            _ => skip(&mut buf, wire)?,
        }
    }
    Ok(match body {
        _ if failed => Frame::Failed { id },
        Some((ACK, bytes)) => {
            let ack = Fields::read(bytes)?;
            Frame::Ack {
                id,
                msg_id: ack.varints[1],
                seq: ack.varints[2],
            }
        }
        Some((_, bytes)) => {
            let message = Fields::read(bytes)?;
            Frame::Message {
                msg_id: message.varints[1],
                conversation: message.strings[2],
                seq: message.varints[3],
                sender_id: message.varints[4],
                body: message.strings[7],
            }
        }
        None => Frame::Other { id },
    })
}

/// The varint and length-delimited fields numbered 1 to 7 of a `SendAck` or a
/// `ChatMessage` (the ones both share the numbering of: ids, seq, conversation, body).
struct Fields<'a> {
    varints: [u64; 8],
    strings: [&'a [u8]; 8],
}

impl<'a> Fields<'a> {
    fn read(mut buf: &'a [u8]) -> Result<Fields<'a>, Malformed> {
        let mut fields = Fields {
            varints: [0; 8],
            strings: [&[]; 8],
        };
        while buf.has_remaining() {
            let (tag, wire) = decode_key(&mut buf)?;
            let slot = tag as usize;
            match wire {
                WireType::Varint if slot < 8 => fields.varints[slot] = decode_varint(&mut buf)?,
                WireType::LengthDelimited if slot < 8 => fields.strings[slot] = take(&mut buf)?,
                _ => skip(&mut buf, wire)?,
            }
        }
        Ok(fields)
    }
}

/// Takes one length-delimited field's bytes.
fn take<'a>(buf: &mut &'a [u8]) -> Result<&'a [u8], Malformed> {
    let len = decode_varint(buf)?;
    let len = usize::try_from(len).map_err(|_| Malformed("length overflows"))?;
    if len > buf.len() {
        return Err(Malformed("buffer underflow"));
    }
    let (field, rest) = buf.split_at(len);
    *buf = rest;
    Ok(field)
}

fn skip(buf: &mut &[u8], wire: WireType) -> Result<(), Malformed> {
    let fixed = match wire {
        WireType::Varint => {
            decode_varint(buf)?;
            return Ok(());
        }
        WireType::LengthDelimited => return take(buf).map(drop),
        WireType::SixtyFourBit => 8,
        WireType::ThirtyTwoBit => 4,
        WireType::StartGroup | WireType::EndGroup => {
            return Err(Malformed("groups are not used"));
        }
    };
    if fixed > buf.len() {
        return Err(Malformed("buffer underflow"));
    }
    buf.advance(fixed);
    Ok(())
}

/// One connection's send request, rewritten in place for every message so that sending
/// allocates nothing.
#[derive(Debug)]
pub struct Outgoing {
    request: Request,
    /// Bytes every body is padded to.
    body_bytes: usize,
}

/// Where a message goes.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    /// A 1:1 message to this user.
    User(u64),
    /// A message to this group.
    Group(u64),
}

impl Outgoing {
    /// A request to `target` with bodies of at least `body_bytes`.
    pub fn new(target: Target, body_bytes: usize) -> Outgoing {
        let command = match target {
            Target::User(to_user_id) => Command::Send(SendRequest {
                to_user_id,
                ..SendRequest::default()
            }),
            Target::Group(group_id) => Command::SendGroup(SendGroupRequest {
                group_id,
                ..SendGroupRequest::default()
            }),
        };
        Outgoing {
            request: Request {
                id: 0,
                command: Some(command),
            },
            body_bytes,
        }
    }

    /// The request for message number `n` of this connection, stamped with `stamp_ns` (the
    /// time it was due, in ns since the run's epoch), under request id `id`.
    ///
    /// The client_msg_id is `<run>-<connection>-<n>`, unique per sender across runs.
    pub fn next(
        &mut self,
        id: u64,
        run: &str,
        connection: usize,
        n: u64,
        stamp_ns: u64,
    ) -> &Request {
        self.request.id = id;
        let (client_msg_id, body) = match &mut self.request.command {
            Some(Command::Send(send)) => (&mut send.client_msg_id, &mut send.body),
            Some(Command::SendGroup(send)) => (&mut send.client_msg_id, &mut send.body),
            _ => unreachable!("Outgoing only holds sends"),
        };
        client_msg_id.clear();
        let _ = write!(client_msg_id, "{run}-{connection}-{n}");
        write_body(body, stamp_ns, self.body_bytes);
        &self.request
    }
}

/// Writes a body that starts with the stamp in decimal, then a space, padded with `.` to
/// `len` bytes.
pub fn write_body(body: &mut String, stamp_ns: u64, len: usize) {
    body.clear();
    let _ = write!(body, "{stamp_ns} ");
    while body.len() < len {
        body.push('.');
    }
}

/// The stamp [`write_body`] put at the start of a body, if there is one.
pub fn read_stamp(body: &[u8]) -> Option<u64> {
    let end = body.iter().position(|&b| b == b' ')?;
    let digits = &body[..end];
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    digits.iter().try_fold(0u64, |stamp, &b| {
        b.is_ascii_digit().then(|| stamp * 10 + u64::from(b - b'0'))
    })
}

#[cfg(test)]
mod tests {
    use im_proto::client::server_message::Body;
    use im_proto::client::{Error, ServerMessage};
    use im_proto::{ChatMessage, SendAck};
    use prost::Message as _;

    use super::*;

    #[test]
    fn reads_an_ack_as_prost_wrote_it() {
        let frame = ServerMessage {
            id: 7,
            error: None,
            body: Some(Body::Ack(SendAck {
                msg_id: 4097,
                seq: 12,
                server_time_ms: 1_764_392_400_000,
                conversation_id: "d:1:2".into(),
                duplicate: false,
            })),
        }
        .encode_to_vec();
        assert_eq!(
            read(&frame).unwrap(),
            Frame::Ack {
                id: 7,
                msg_id: 4097,
                seq: 12
            }
        );
    }

    #[test]
    fn reads_a_pushed_message_borrowing_its_bytes() {
        let frame = ServerMessage {
            id: 0,
            error: None,
            body: Some(Body::Message(ChatMessage {
                msg_id: 9,
                conversation_id: "g:3".into(),
                seq: 5,
                sender_id: 42,
                client_msg_id: "c".into(),
                body: "123 ...".into(),
                server_time_ms: 1,
                ..ChatMessage::default()
            })),
        }
        .encode_to_vec();
        assert_eq!(
            read(&frame).unwrap(),
            Frame::Message {
                msg_id: 9,
                conversation: b"g:3",
                seq: 5,
                sender_id: 42,
                body: b"123 ..."
            }
        );
    }

    #[test]
    fn an_error_reply_is_failed_and_a_pong_is_other() {
        let failed = ServerMessage {
            id: 3,
            error: Some(Error {
                code: 8,
                message: "rate limit".into(),
                retryable: true,
            }),
            body: None,
        }
        .encode_to_vec();
        assert_eq!(read(&failed).unwrap(), Frame::Failed { id: 3 });
        let pong = ServerMessage {
            id: 4,
            error: None,
            body: Some(Body::Pong(im_proto::client::Pong { server_time_ms: 5 })),
        }
        .encode_to_vec();
        assert_eq!(read(&pong).unwrap(), Frame::Other { id: 4 });
    }

    #[test]
    fn truncated_bytes_are_an_error_not_a_panic() {
        let frame = ServerMessage {
            id: 1,
            error: None,
            body: Some(Body::Ack(SendAck::default())),
        }
        .encode_to_vec();
        for len in 0..frame.len() {
            let _ = read(&frame[..len]);
        }
        assert!(read(&[0x92, 0x03, 0x20, 0x08]).is_err());
    }

    #[test]
    fn sends_reuse_one_request_and_carry_their_stamp() {
        let mut out = Outgoing::new(Target::User(2), 24);
        let request = out.next(5, "r1", 3, 8, 123_456).clone();
        assert_eq!(request.id, 5);
        let Some(Command::Send(send)) = request.command else {
            panic!("a send")
        };
        assert_eq!(send.to_user_id, 2);
        assert_eq!(send.client_msg_id, "r1-3-8");
        assert_eq!(send.body.len(), 24);
        assert_eq!(read_stamp(send.body.as_bytes()), Some(123_456));
        let request = out.next(6, "r1", 3, 9, 7).clone();
        let Some(Command::Send(send)) = request.command else {
            panic!("a send")
        };
        assert_eq!(send.client_msg_id, "r1-3-9");
        assert_eq!(read_stamp(send.body.as_bytes()), Some(7));
    }

    #[test]
    fn bodies_without_a_stamp_have_none() {
        assert_eq!(read_stamp(b"hello"), None);
        assert_eq!(read_stamp(b" x"), None);
        assert_eq!(read_stamp(b"12a x"), None);
        assert_eq!(read_stamp(b"99999999999999999999 x"), None);
    }
}
