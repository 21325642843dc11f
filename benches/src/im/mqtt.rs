//! MQTT 3.1.1 for `im-bench --target mqtt`: the few packets a client needs (CONNECT,
//! SUBSCRIBE, PUBLISH, PUBACK, PINGREQ out; CONNACK, SUBACK, PUBLISH, PUBACK, PINGRESP in),
//! and one user's connection: subscribed at QoS 1 to its own topic `bench/<prefix>/<n>`,
//! publishing at QoS 1 to its partner's.
//!
//! A send's ack is the broker's PUBACK; a delivery is a PUBLISH on the user's topic, which
//! is answered with a PUBACK.

use std::fmt;

use anyhow::{Context as _, bail};
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;

use super::peer::{self, Event, Peer, Speak};

/// Largest packet accepted, in bytes after the fixed header.
pub const MAX_PACKET: usize = 1 << 20;

/// Keep-alive announced in CONNECT; the connection pings at half of it.
pub const KEEP_ALIVE_SECS: u16 = 60;

const CONNECT: u8 = 1;
const CONNACK: u8 = 2;
const PUBLISH: u8 = 3;
const PUBACK: u8 = 4;
const SUBSCRIBE: u8 = 8;
const SUBACK: u8 = 9;
const PINGREQ: u8 = 12;
const PINGRESP: u8 = 13;

/// Bytes that are not a well-formed MQTT 3.1.1 packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed(&'static str);

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed MQTT packet: {}", self.0)
    }
}

impl std::error::Error for Malformed {}

/// A packet from the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet<'a> {
    /// The answer to CONNECT.
    ConnAck {
        /// Whether the broker kept a session for this client id.
        session_present: bool,
        /// 0: accepted; anything else: refused.
        code: u8,
    },
    /// An application message.
    Publish {
        /// Whether it may have been sent before.
        dup: bool,
        /// Its QoS, 0 to 2.
        qos: u8,
        /// Its topic.
        topic: &'a str,
        /// Its packet id (QoS 1 and 2 only).
        id: Option<u16>,
        /// Its payload.
        payload: &'a [u8],
    },
    /// The acknowledgement of a QoS 1 PUBLISH.
    PubAck {
        /// The PUBLISH's packet id.
        id: u16,
    },
    /// The answer to SUBSCRIBE: a granted QoS (or 0x80, refused) per filter.
    SubAck {
        /// The SUBSCRIBE's packet id.
        id: u16,
        /// One return code per topic filter.
        codes: &'a [u8],
    },
    /// The answer to PINGREQ.
    PingResp,
    /// Any other packet type, which this client never asks for.
    Other {
        /// Its type (the fixed header's upper four bits).
        kind: u8,
    },
}

/// The first packet of `input` and the bytes it took; `None` when it is not all there yet.
///
/// # Errors
/// When the bytes are not a well-formed packet, or it is larger than [`MAX_PACKET`].
pub fn decode(input: &[u8]) -> Result<Option<(Packet<'_>, usize)>, Malformed> {
    let Some(&first) = input.first() else {
        return Ok(None);
    };
    let (kind, flags) = (first >> 4, first & 0x0f);
    if kind == 0 || kind == 15 {
        return Err(Malformed("reserved packet type"));
    }
    let mut len = 0usize;
    let mut header = 1;
    loop {
        let Some(&byte) = input.get(header) else {
            return Ok(None);
        };
        len |= usize::from(byte & 0x7f) << (7 * (header - 1));
        header += 1;
        if byte & 0x80 == 0 {
            break;
        }
        if header == 5 {
            return Err(Malformed("remaining length longer than four bytes"));
        }
    }
    if len > MAX_PACKET {
        return Err(Malformed("packet too large"));
    }
    let Some(body) = input.get(header..header + len) else {
        return Ok(None);
    };
    let packet = match kind {
        PUBLISH => publish(flags, body)?,
        _ if flags != 0 && kind != 6 => return Err(Malformed("reserved flags set")),
        CONNACK => match *body {
            [ack, code] if ack <= 1 => Packet::ConnAck {
                session_present: ack == 1,
                code,
            },
            _ => return Err(Malformed("bad CONNACK")),
        },
        PUBACK => Packet::PubAck {
            id: fixed_id(body, "bad PUBACK")?,
        },
        SUBACK => match body {
            [high, low, codes @ ..] if !codes.is_empty() => Packet::SubAck {
                id: u16::from_be_bytes([*high, *low]),
                codes,
            },
            _ => return Err(Malformed("bad SUBACK")),
        },
        PINGRESP if body.is_empty() => Packet::PingResp,
        PINGRESP => return Err(Malformed("bad PINGRESP")),
        _ => Packet::Other { kind },
    };
    Ok(Some((packet, header + len)))
}

fn fixed_id(body: &[u8], why: &'static str) -> Result<u16, Malformed> {
    match *body {
        [high, low] => Ok(u16::from_be_bytes([high, low])),
        _ => Err(Malformed(why)),
    }
}

fn publish(flags: u8, body: &[u8]) -> Result<Packet<'_>, Malformed> {
    let (dup, qos) = (flags & 0x08 != 0, (flags >> 1) & 0x03);
    if qos == 3 {
        return Err(Malformed("QoS 3"));
    }
    if qos == 0 && dup {
        return Err(Malformed("DUP set on a QoS 0 PUBLISH"));
    }
    let [high, low, rest @ ..] = body else {
        return Err(Malformed("PUBLISH without a topic"));
    };
    let topic_len = usize::from(u16::from_be_bytes([*high, *low]));
    let topic = rest
        .get(..topic_len)
        .ok_or(Malformed("topic longer than the packet"))?;
    let topic = std::str::from_utf8(topic).map_err(|_| Malformed("topic not UTF-8"))?;
    let mut payload = &rest[topic_len..];
    let id = if qos > 0 {
        let [high, low, tail @ ..] = payload else {
            return Err(Malformed("PUBLISH without its packet id"));
        };
        let id = u16::from_be_bytes([*high, *low]);
        if id == 0 {
            return Err(Malformed("packet id 0"));
        }
        payload = tail;
        Some(id)
    } else {
        None
    };
    Ok(Packet::Publish {
        dup,
        qos,
        topic,
        id,
        payload,
    })
}

/// Appends a fixed header: `first` byte, then `len` as a remaining length.
fn fixed_header(out: &mut Vec<u8>, first: u8, mut len: usize) {
    out.push(first);
    loop {
        let byte = (len & 0x7f) as u8;
        len >>= 7;
        if len == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn put_str(out: &mut Vec<u8>, text: &str) {
    out.extend_from_slice(&(text.len() as u16).to_be_bytes());
    out.extend_from_slice(text.as_bytes());
}

/// Appends a CONNECT with a clean session, no will and no credentials.
pub fn connect(out: &mut Vec<u8>, client_id: &str, keep_alive_secs: u16) {
    fixed_header(out, CONNECT << 4, 10 + 2 + client_id.len());
    put_str(out, "MQTT");
    out.push(4); // protocol level 3.1.1
    out.push(0x02); // clean session
    out.extend_from_slice(&keep_alive_secs.to_be_bytes());
    put_str(out, client_id);
}

/// Appends a SUBSCRIBE of one topic filter.
pub fn subscribe(out: &mut Vec<u8>, id: u16, filter: &str, qos: u8) {
    fixed_header(out, SUBSCRIBE << 4 | 0x02, 2 + 2 + filter.len() + 1);
    out.extend_from_slice(&id.to_be_bytes());
    put_str(out, filter);
    out.push(qos);
}

/// Appends a PUBLISH: QoS 1 with packet id `id`, or QoS 0 without one.
pub fn publish_to(out: &mut Vec<u8>, topic: &str, id: Option<u16>, payload: &[u8]) {
    let qos = u8::from(id.is_some());
    let id_len = if id.is_some() { 2 } else { 0 };
    fixed_header(
        out,
        PUBLISH << 4 | qos << 1,
        2 + topic.len() + id_len + payload.len(),
    );
    put_str(out, topic);
    if let Some(id) = id {
        out.extend_from_slice(&id.to_be_bytes());
    }
    out.extend_from_slice(payload);
}

/// Appends a PUBACK.
pub fn puback(out: &mut Vec<u8>, id: u16) {
    out.extend_from_slice(&[PUBACK << 4, 2]);
    out.extend_from_slice(&id.to_be_bytes());
}

/// Appends a PINGREQ.
pub fn pingreq(out: &mut Vec<u8>) {
    out.extend_from_slice(&[PINGREQ << 4, 0]);
}

/// User `index`'s topic in a run whose accounts start with `prefix`.
fn topic(prefix: &str, index: usize) -> String {
    format!("bench/{prefix}/{index}")
}

/// Connects user `index` (client id `<prefix>-<index>`) over `stream` and subscribes it at
/// QoS 1 to its topic.
///
/// # Errors
/// When the broker refuses either, or the connection fails.
pub async fn open(mut stream: TcpStream, prefix: &str, index: usize) -> anyhow::Result<Peer> {
    let mut out = Vec::new();
    connect(&mut out, &format!("{prefix}-{index}"), KEEP_ALIVE_SECS);
    subscribe(&mut out, 1, &topic(prefix, index), 1);
    stream.write_all(&out).await.context("sending CONNECT")?;
    let mut input = Vec::new();
    let mut connected = false;
    loop {
        let Some((packet, used)) = decode(&input)? else {
            peer::read_more(&mut stream, &mut input).await?;
            continue;
        };
        match packet {
            Packet::ConnAck { code: 0, .. } => connected = true,
            Packet::ConnAck { code, .. } => bail!("the broker refused CONNECT: code {code}"),
            Packet::SubAck { id: 1, codes } if connected && codes[0] <= 2 => {
                input.drain(..used);
                break;
            }
            Packet::SubAck { codes, .. } => bail!("the broker refused SUBSCRIBE: {codes:?}"),
            other => bail!("unexpected {other:?} while connecting"),
        }
        input.drain(..used);
    }
    let session = Session {
        prefix: prefix.to_string(),
        next_id: 0,
    };
    Ok(Peer {
        stream,
        input,
        speaker: Box::new(session),
    })
}

/// One subscribed connection during the load.
struct Session {
    prefix: String,
    next_id: u16,
}

impl Speak for Session {
    fn send(&mut self, to: usize, body: &str, out: &mut Vec<u8>) -> u64 {
        self.next_id = self.next_id.checked_add(1).unwrap_or(1);
        publish_to(
            out,
            &topic(&self.prefix, to),
            Some(self.next_id),
            body.as_bytes(),
        );
        u64::from(self.next_id)
    }

    fn read(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        event: &mut dyn FnMut(Event<'_>),
    ) -> anyhow::Result<usize> {
        let mut used = 0;
        while let Some((packet, len)) = decode(&input[used..])? {
            used += len;
            match packet {
                Packet::PubAck { id } => event(Event::Acked(u64::from(id))),
                Packet::Publish {
                    qos, id, payload, ..
                } => {
                    match (qos, id) {
                        (0, _) => {}
                        (1, Some(id)) => puback(out, id),
                        _ => bail!("a QoS {qos} PUBLISH on a QoS 1 subscription"),
                    }
                    event(Event::Delivered(payload));
                }
                Packet::PingResp => {}
                other => bail!("unexpected {other:?}"),
            }
        }
        Ok(used)
    }

    fn keepalive(&mut self, out: &mut Vec<u8>) {
        pingreq(out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_and_subscribe_are_byte_exact() {
        let mut out = Vec::new();
        connect(&mut out, "b-1", 60);
        assert_eq!(
            out,
            b"\x10\x0f\x00\x04MQTT\x04\x02\x00\x3c\x00\x03b-1".to_vec()
        );
        out.clear();
        subscribe(&mut out, 1, "t/1", 1);
        assert_eq!(out, b"\x82\x08\x00\x01\x00\x03t/1\x01".to_vec());
    }

    #[test]
    fn publishes_round_trip_with_long_lengths() {
        let payload = vec![b'x'; 300];
        let mut out = Vec::new();
        publish_to(&mut out, "bench/p/7", Some(513), &payload);
        assert_eq!(&out[..3], &[0x32, 0xb9, 0x02]); // 2 + 9 + 2 + 300 = 313
        let (packet, used) = decode(&out).unwrap().unwrap();
        assert_eq!(used, out.len());
        assert_eq!(
            packet,
            Packet::Publish {
                dup: false,
                qos: 1,
                topic: "bench/p/7",
                id: Some(513),
                payload: &payload,
            }
        );
        out.clear();
        publish_to(&mut out, "t", None, b"hi");
        let (packet, _) = decode(&out).unwrap().unwrap();
        assert!(matches!(
            packet,
            Packet::Publish {
                qos: 0,
                id: None,
                payload: b"hi",
                ..
            }
        ));
    }

    #[test]
    fn broker_answers_decode() {
        let cases: &[(&[u8], Packet<'_>)] = &[
            (
                b"\x20\x02\x00\x00",
                Packet::ConnAck {
                    session_present: false,
                    code: 0,
                },
            ),
            (b"\x40\x02\x01\x02", Packet::PubAck { id: 258 }),
            (
                b"\x90\x03\x00\x01\x01",
                Packet::SubAck { id: 1, codes: &[1] },
            ),
            (b"\xd0\x00", Packet::PingResp),
            (b"\x62\x02\x00\x01", Packet::Other { kind: 6 }),
        ];
        for (bytes, expected) in cases {
            let (packet, used) = decode(bytes).unwrap().unwrap();
            assert_eq!((&packet, used), (expected, bytes.len()));
            for end in 0..bytes.len() {
                assert_eq!(decode(&bytes[..end]), Ok(None), "{bytes:?} cut at {end}");
            }
        }
        let mut out = Vec::new();
        puback(&mut out, 258);
        assert_eq!(out, b"\x40\x02\x01\x02".to_vec());
        out.clear();
        pingreq(&mut out);
        assert_eq!(out, b"\xc0\x00".to_vec());
    }

    #[test]
    fn bad_packets_are_errors() {
        let bad: &[&[u8]] = &[
            b"\x00\x00",                  // reserved type 0
            b"\xf0\x00",                  // reserved type 15
            b"\x30\xff\xff\xff\xff\x01",  // remaining length of five bytes
            b"\x30\xff\xff\xff\x7f",      // larger than MAX_PACKET
            b"\x36\x05\x00\x01t\x00\x01", // QoS 3
            b"\x38\x03\x00\x01t",         // DUP on QoS 0
            b"\x32\x05\x00\x09tt\x00",    // topic longer than the packet
            b"\x32\x03\x00\x01t",         // QoS 1 without packet id
            b"\x32\x05\x00\x01t\x00\x00", // packet id 0
            b"\x30\x03\x00\x01\xff",      // topic not UTF-8
            b"\x30\x01\x00",              // no topic length
            b"\x20\x03\x00\x00\x00",      // CONNACK of three bytes
            b"\x20\x02\x07\x00",          // CONNACK flags
            b"\x41\x02\x00\x01",          // PUBACK with flags
            b"\x40\x01\x00",              // PUBACK of one byte
            b"\x90\x02\x00\x01",          // SUBACK without codes
            b"\xd0\x01\x00",              // PINGRESP with a body
        ];
        for bytes in bad {
            assert!(decode(bytes).is_err(), "{bytes:?} decoded");
        }
    }

    #[test]
    fn a_session_acks_deliveries_and_reports_events() {
        let mut session = Session {
            prefix: "p".into(),
            next_id: u16::MAX,
        };
        let mut out = Vec::new();
        assert_eq!(session.send(3, "body", &mut out), 1);
        let (sent, _) = decode(&out).unwrap().unwrap();
        assert!(matches!(
            sent,
            Packet::Publish {
                topic: "bench/p/3",
                id: Some(1),
                ..
            }
        ));
        let mut input = Vec::new();
        publish_to(&mut input, "bench/p/2", Some(9), b"hello");
        input.extend_from_slice(b"\x40\x02\x00\x01\xd0\x00\x40"); // PUBACK, PINGRESP, a part
        let mut out = Vec::new();
        let mut events = Vec::new();
        let used = session
            .read(&input, &mut out, &mut |event| {
                events.push(match event {
                    Event::Delivered(body) => String::from_utf8_lossy(body).into_owned(),
                    Event::Acked(key) => format!("acked {key}"),
                    Event::AckedThrough(key) => format!("through {key}"),
                })
            })
            .unwrap();
        assert_eq!(used, input.len() - 1);
        assert_eq!(events, ["hello", "acked 1"]);
        assert_eq!(out, b"\x40\x02\x00\x09".to_vec());
        let err = session.read(b"\x20\x02\x00\x00", &mut out, &mut |_| {});
        assert!(err.is_err());
    }
}
