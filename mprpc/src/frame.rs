//! Frames: the fixed prefix, the [`Header`], and the [`Codec`] that cuts a byte stream into
//! frames.
//!
//! The header is encoded by hand rather than through a prost-generated type so that decoding
//! a request allocates nothing: names and metadata are slices of the received buffer. A unit
//! test checks the encoding against `proto/mprpc.proto` compiled by prost.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::encoding::{decode_varint, encode_varint, encoded_len_varint};
use tokio_util::codec::Decoder;

use crate::status::Code;

/// The two bytes after the length of every frame: `"MP"`.
pub const MAGIC: [u8; 2] = *b"MP";
/// The protocol version this crate speaks.
pub const VERSION: u8 = 1;
/// Bytes before the header: length (4), magic (2), version (1), flags (1), header length (2).
pub const PREFIX_LEN: usize = 10;
/// The default cap on a frame's length field: 16 MiB.
pub const DEFAULT_MAX_FRAME: usize = 16 * 1024 * 1024;

/// Why a byte stream is not a valid mprpc frame sequence. The connection cannot continue.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The length field exceeds the receiver's cap; nothing of it was buffered.
    #[error("frame of {len} bytes exceeds the cap of {max} bytes")]
    TooLarge {
        /// The claimed length.
        len: usize,
        /// The cap in force.
        max: usize,
    },
    /// The peer does not speak mprpc.
    #[error("bad magic: not an mprpc peer")]
    BadMagic,
    /// The peer speaks a protocol version this crate does not.
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u8),
    /// The frame's layout is inconsistent.
    #[error("malformed frame: {0}")]
    Malformed(&'static str),
    /// The header does not decode.
    #[error("malformed frame header: {0}")]
    Header(&'static str),
    /// Reading or writing the socket failed.
    #[error("connection i/o failed")]
    Io(#[from] std::io::Error),
}

/// What a frame is for; see `FrameKind` in `proto/mprpc.proto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(u8)]
pub enum Kind {
    /// A call.
    #[default]
    Request = 1,
    /// The answer to a call.
    Response = 2,
    /// The caller gave up on a call.
    Cancel = 3,
    /// A liveness probe.
    Ping = 4,
    /// The answer to a ping.
    Pong = 5,
    /// The sender accepts no new calls on this connection.
    GoAway = 6,
}

impl Kind {
    fn from_wire(value: u64) -> Option<Kind> {
        Some(match value {
            1 => Kind::Request,
            2 => Kind::Response,
            3 => Kind::Cancel,
            4 => Kind::Ping,
            5 => Kind::Pong,
            6 => Kind::GoAway,
            _ => return None,
        })
    }
}

/// UTF-8 text backed by [`Bytes`]: a slice of a received frame or a `&'static str`, so
/// neither decoding nor encoding a header copies names.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Text(Bytes);

impl Text {
    /// Text from a string literal, without copying.
    pub const fn from_static(s: &'static str) -> Text {
        Text(Bytes::from_static(s.as_bytes()))
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        // Every constructor checks or guarantees UTF-8, so this never falls back.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// Whether the text is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn from_wire(bytes: Bytes) -> Result<Text, DecodeError> {
        match std::str::from_utf8(&bytes) {
            Ok(_) => Ok(Text(bytes)),
            Err(_) => Err(DecodeError("header string is not UTF-8")),
        }
    }
}

impl From<String> for Text {
    fn from(s: String) -> Text {
        Text(Bytes::from(s))
    }
}

impl From<&str> for Text {
    fn from(s: &str) -> Text {
        Text(Bytes::copy_from_slice(s.as_bytes()))
    }
}

impl std::fmt::Debug for Text {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl std::fmt::Display for Text {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The decoded `RpcHeader` of a frame.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Header {
    /// What the frame is.
    pub kind: Kind,
    /// The call this frame belongs to.
    pub request_id: u64,
    /// Fully qualified service name (requests).
    pub service: Text,
    /// Method name (requests).
    pub method: Text,
    /// The caller's remaining budget in microseconds; 0 means none (requests).
    pub timeout_us: u64,
    /// The outcome (responses, goaway).
    pub status: Code,
    /// Why, when `status` is not OK (responses, goaway).
    pub message: Text,
    /// Request metadata such as a trace id.
    pub metadata: Vec<(Text, Text)>,
}

/// Why a header does not decode; becomes [`FrameError::Header`].
#[derive(Debug)]
struct DecodeError(&'static str);

impl From<DecodeError> for FrameError {
    fn from(err: DecodeError) -> FrameError {
        FrameError::Header(err.0)
    }
}

fn varint(buf: &mut Bytes) -> Result<u64, DecodeError> {
    decode_varint(buf).map_err(|_| DecodeError("invalid varint"))
}

const VARINT: u64 = 0;
const FIXED64: u64 = 1;
const LEN: u64 = 2;
const FIXED32: u64 = 5;

fn key(tag: u64, wire_type: u64) -> u64 {
    (tag << 3) | wire_type
}

fn varint_field_len(tag: u64, value: u64) -> usize {
    if value == 0 {
        0
    } else {
        encoded_len_varint(key(tag, VARINT)) + encoded_len_varint(value)
    }
}

fn text_field_len(tag: u64, len: usize) -> usize {
    encoded_len_varint(key(tag, LEN)) + encoded_len_varint(len as u64) + len
}

fn put_varint_field(buf: &mut impl BufMut, tag: u64, value: u64) {
    if value != 0 {
        encode_varint(key(tag, VARINT), buf);
        encode_varint(value, buf);
    }
}

fn put_text_field(buf: &mut impl BufMut, tag: u64, text: &[u8]) {
    if !text.is_empty() {
        encode_varint(key(tag, LEN), buf);
        encode_varint(text.len() as u64, buf);
        buf.put_slice(text);
    }
}

fn entry_len(k: &Text, v: &Text) -> usize {
    let mut len = 0;
    if !k.is_empty() {
        len += text_field_len(1, k.0.len());
    }
    if !v.is_empty() {
        len += text_field_len(2, v.0.len());
    }
    len
}

impl Header {
    /// Size of the protobuf encoding of this header.
    pub fn encoded_len(&self) -> usize {
        let opt_text = |tag, t: &Text| {
            if t.is_empty() {
                0
            } else {
                text_field_len(tag, t.0.len())
            }
        };
        let metadata: usize = self
            .metadata
            .iter()
            .map(|(k, v)| text_field_len(8, entry_len(k, v)))
            .sum();
        varint_field_len(1, self.kind as u64)
            + varint_field_len(2, self.request_id)
            + opt_text(3, &self.service)
            + opt_text(4, &self.method)
            + varint_field_len(5, self.timeout_us)
            + varint_field_len(6, self.status as u64)
            + opt_text(7, &self.message)
            + metadata
    }

    fn encode_raw(&self, buf: &mut impl BufMut) {
        put_varint_field(buf, 1, self.kind as u64);
        put_varint_field(buf, 2, self.request_id);
        self.encode_after_id(buf);
    }

    /// The fields after `kind` and `request_id`, in field order.
    fn encode_after_id(&self, buf: &mut impl BufMut) {
        put_text_field(buf, 3, &self.service.0);
        put_text_field(buf, 4, &self.method.0);
        put_varint_field(buf, 5, self.timeout_us);
        put_varint_field(buf, 6, self.status as u64);
        put_text_field(buf, 7, &self.message.0);
        for (k, v) in &self.metadata {
            encode_varint(key(8, LEN), buf);
            encode_varint(entry_len(k, v) as u64, buf);
            put_text_field(buf, 1, &k.0);
            put_text_field(buf, 2, &v.0);
        }
    }

    /// Decodes a header from its protobuf encoding. Unknown fields are skipped.
    ///
    /// # Errors
    /// [`FrameError::Header`] when the bytes are not a valid `RpcHeader`.
    pub fn decode(mut buf: Bytes) -> Result<Header, FrameError> {
        let mut header = Header::default();
        let mut kind = 0;
        while buf.has_remaining() {
            let key = varint(&mut buf)?;
            match (key >> 3, key & 7) {
                (1, VARINT) => kind = varint(&mut buf)?,
                (2, VARINT) => header.request_id = varint(&mut buf)?,
                (3, LEN) => header.service = read_text(&mut buf)?,
                (4, LEN) => header.method = read_text(&mut buf)?,
                (5, VARINT) => header.timeout_us = varint(&mut buf)?,
                (6, VARINT) => header.status = Code::from_u32(varint(&mut buf)?.min(255) as u32),
                (7, LEN) => header.message = read_text(&mut buf)?,
                (8, LEN) => {
                    let entry = read_len_delimited(&mut buf)?;
                    header.metadata.push(decode_entry(entry)?);
                }
                (_, wire_type) => skip_field(wire_type, &mut buf)?,
            }
        }
        header.kind = Kind::from_wire(kind).ok_or(DecodeError("unknown or missing frame kind"))?;
        Ok(header)
    }
}

fn read_len_delimited(buf: &mut Bytes) -> Result<Bytes, DecodeError> {
    let len = varint(buf)?;
    if len > buf.remaining() as u64 {
        return Err(DecodeError("field length past the end of the header"));
    }
    Ok(buf.split_to(len as usize))
}

fn read_text(buf: &mut Bytes) -> Result<Text, DecodeError> {
    Text::from_wire(read_len_delimited(buf)?)
}

fn decode_entry(mut buf: Bytes) -> Result<(Text, Text), DecodeError> {
    let (mut k, mut v) = (Text::default(), Text::default());
    while buf.has_remaining() {
        let key = varint(&mut buf)?;
        match (key >> 3, key & 7) {
            (1, LEN) => k = read_text(&mut buf)?,
            (2, LEN) => v = read_text(&mut buf)?,
            (_, wire_type) => skip_field(wire_type, &mut buf)?,
        }
    }
    Ok((k, v))
}

fn skip_field(wire_type: u64, buf: &mut Bytes) -> Result<(), DecodeError> {
    let skip = match wire_type {
        VARINT => {
            varint(buf)?;
            0
        }
        FIXED64 => 8,
        LEN => {
            read_len_delimited(buf)?;
            0
        }
        FIXED32 => 4,
        _ => return Err(DecodeError("unsupported wire type in header")),
    };
    if buf.remaining() < skip {
        return Err(DecodeError("field past the end of the header"));
    }
    buf.advance(skip);
    Ok(())
}

/// One frame: its header and its (still encoded) body.
#[derive(Debug, Clone, Default)]
pub struct Frame {
    /// The header.
    pub header: Header,
    /// The request or response message, protobuf-encoded.
    pub body: Bytes,
}

/// Appends one frame to `dst`: prefix, header, then the body written by `body`.
///
/// # Errors
/// [`FrameError::TooLarge`] (and `dst` unchanged) when the frame would exceed `max_frame`,
/// [`FrameError::Malformed`] when the header exceeds 64 KiB.
pub fn encode_with(
    dst: &mut BytesMut,
    header: &Header,
    body_len: usize,
    max_frame: usize,
    body: impl FnOnce(&mut BytesMut),
) -> Result<(), FrameError> {
    let header_len = header.encoded_len();
    let header_len16 = u16::try_from(header_len)
        .map_err(|_| FrameError::Malformed("header longer than 64 KiB"))?;
    let len = PREFIX_LEN - 4 + header_len + body_len;
    if len > max_frame {
        return Err(FrameError::TooLarge {
            len,
            max: max_frame,
        });
    }
    dst.reserve(4 + len);
    dst.put_u32(len as u32);
    dst.put_slice(&MAGIC);
    dst.put_u8(VERSION);
    dst.put_u8(0);
    dst.put_u16(header_len16);
    header.encode_raw(dst);
    let body_start = dst.len();
    body(dst);
    debug_assert_eq!(
        dst.len() - body_start,
        body_len,
        "body length promised to encode_with"
    );
    Ok(())
}

/// A request frame encoded before its request id is known: the body and every header
/// field after the id are written first, with room in front; [`Deferred::finish`] writes
/// the prefix, `kind` and the id there. The client assigns ids when it queues a frame (so
/// they reach the wire in increasing order), under a lock that then covers a few bytes of
/// writing rather than the encoding of the frame.
#[derive(Debug)]
pub(crate) struct Deferred {
    kind: Kind,
    /// Encoded length of the header fields after the id.
    rest_len: usize,
    buf: BytesMut,
    /// Bytes left in front of the encoded fields for the prefix, `kind` and the id.
    room: usize,
}

/// Most bytes `kind` and `request_id` take: two keys, a one-byte kind, a 10-byte varint.
const KIND_AND_ID_MAX: usize = 2 + 1 + 10;

impl Deferred {
    /// Encodes `body` and the fields of `header` after its request id.
    ///
    /// # Errors
    /// As [`encode_with`], judged with the longest request id.
    pub(crate) fn new(
        header: &Header,
        body: &impl prost::Message,
        max_frame: usize,
    ) -> Result<Deferred, FrameError> {
        let rest_len = header.encoded_len()
            - varint_field_len(1, header.kind as u64)
            - varint_field_len(2, header.request_id);
        let longest = rest_len + KIND_AND_ID_MAX;
        if longest > usize::from(u16::MAX) {
            return Err(FrameError::Malformed("header longer than 64 KiB"));
        }
        let body_len = body.encoded_len();
        let len = PREFIX_LEN - 4 + longest + body_len;
        if len > max_frame {
            return Err(FrameError::TooLarge {
                len,
                max: max_frame,
            });
        }
        let room = PREFIX_LEN + KIND_AND_ID_MAX;
        let mut buf = BytesMut::with_capacity(room + rest_len + body_len);
        buf.resize(room, 0);
        header.encode_after_id(&mut buf);
        body.encode_raw(&mut buf);
        Ok(Deferred {
            kind: header.kind,
            rest_len,
            buf,
            room,
        })
    }

    /// Writes the prefix, `kind` and `request_id` in front and returns the frame.
    pub(crate) fn finish(mut self, request_id: u64) -> Bytes {
        let front_len = varint_field_len(1, self.kind as u64) + varint_field_len(2, request_id);
        let header_len = front_len + self.rest_len;
        let start = self.room - PREFIX_LEN - front_len;
        let len = self.buf.len() - start - 4;
        let mut front = &mut self.buf[start..self.room];
        front.put_u32(len as u32);
        front.put_slice(&MAGIC);
        front.put_u8(VERSION);
        front.put_u8(0);
        front.put_u16(header_len as u16);
        put_varint_field(&mut front, 1, self.kind as u64);
        put_varint_field(&mut front, 2, request_id);
        self.buf.advance(start);
        self.buf.freeze()
    }
}

/// Appends a frame whose body is a protobuf message.
///
/// # Errors
/// As [`encode_with`].
pub fn encode_message<M: prost::Message>(
    dst: &mut BytesMut,
    header: &Header,
    body: &M,
    max_frame: usize,
) -> Result<(), FrameError> {
    encode_with(dst, header, body.encoded_len(), max_frame, |dst| {
        body.encode_raw(dst)
    })
}

/// Appends a frame whose body is already encoded.
///
/// # Errors
/// As [`encode_with`].
pub fn encode_raw(
    dst: &mut BytesMut,
    header: &Header,
    body: &[u8],
    max_frame: usize,
) -> Result<(), FrameError> {
    encode_with(dst, header, body.len(), max_frame, |dst| {
        dst.put_slice(body)
    })
}

/// Cuts a byte stream into [`Frame`]s, rejecting a non-mprpc peer or an oversized frame
/// from the first bytes, before anything of the claimed size is buffered.
#[derive(Debug, Clone)]
pub struct Codec {
    max_frame: usize,
}

impl Codec {
    /// A codec that accepts frames whose length field is at most `max_frame`.
    pub fn new(max_frame: usize) -> Codec {
        Codec { max_frame }
    }
}

impl Default for Codec {
    fn default() -> Codec {
        Codec::new(DEFAULT_MAX_FRAME)
    }
}

impl Decoder for Codec {
    type Item = Frame;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        if src.len() >= 6 && src[4..6] != MAGIC {
            return Err(FrameError::BadMagic);
        }
        if src.len() >= 7 && src[6] != VERSION {
            return Err(FrameError::UnsupportedVersion(src[6]));
        }
        if src.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([src[0], src[1], src[2], src[3]]) as usize;
        if len > self.max_frame {
            return Err(FrameError::TooLarge {
                len,
                max: self.max_frame,
            });
        }
        if len < PREFIX_LEN - 4 {
            return Err(FrameError::Malformed(
                "length shorter than the fixed prefix",
            ));
        }
        if src.len() < 4 + len {
            // No reserve of `len` here: the buffer grows only with bytes actually received.
            return Ok(None);
        }
        let mut frame = src.split_to(4 + len).freeze();
        frame.advance(7);
        if frame.get_u8() != 0 {
            return Err(FrameError::Malformed("reserved flags are not zero"));
        }
        let header_len = frame.get_u16() as usize;
        if header_len > frame.len() {
            return Err(FrameError::Malformed(
                "header length past the end of the frame",
            ));
        }
        let header = Header::decode(frame.split_to(header_len))?;
        Ok(Some(Frame {
            header,
            body: frame,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(unreachable_pub, dead_code, missing_docs)]
    mod wire {
        include!(concat!(env!("OUT_DIR"), "/mprpc.rs"));
    }

    fn request() -> Header {
        Header {
            kind: Kind::Request,
            request_id: 300,
            service: Text::from_static("example.Echo"),
            method: Text::from_static("Echo"),
            timeout_us: 1_500_000,
            status: Code::Ok,
            message: Text::default(),
            metadata: vec![(Text::from("trace-id"), Text::from("abc"))],
        }
    }

    fn decode_all(codec: &mut Codec, bytes: &[u8]) -> Result<Vec<Frame>, FrameError> {
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(frame) = codec.decode(&mut buf)? {
            out.push(frame);
        }
        Ok(out)
    }

    #[test]
    fn header_matches_the_proto_definition() {
        use prost::Message;
        let header = request();
        let mut mine = BytesMut::new();
        header.encode_raw(&mut mine);
        let theirs = wire::RpcHeader::decode(mine.clone().freeze()).expect("prost decodes");
        assert_eq!(theirs.kind, wire::FrameKind::Request as i32);
        assert_eq!(theirs.request_id, 300);
        assert_eq!(theirs.service, "example.Echo");
        assert_eq!(theirs.method, "Echo");
        assert_eq!(theirs.timeout_us, 1_500_000);
        assert_eq!(
            theirs.metadata.get("trace-id").map(String::as_str),
            Some("abc")
        );
        assert_eq!(theirs.encoded_len(), header.encoded_len());

        let response = wire::RpcHeader {
            kind: wire::FrameKind::Response as i32,
            request_id: 7,
            status: wire::StatusCode::NotFound as i32,
            message: "no such user".into(),
            ..Default::default()
        };
        let decoded = Header::decode(response.encode_to_vec().into()).expect("decodes");
        assert_eq!(decoded.kind, Kind::Response);
        assert_eq!(decoded.status, Code::NotFound);
        assert_eq!(decoded.message.as_str(), "no such user");
    }

    #[test]
    fn the_documented_example_bytes_are_exact() {
        let header = Header {
            kind: Kind::Request,
            request_id: 1,
            service: Text::from_static("example.Echo"),
            method: Text::from_static("Echo"),
            timeout_us: 1_000_000,
            ..Header::default()
        };
        let mut request = BytesMut::new();
        encode_raw(
            &mut request,
            &header,
            &[0x0A, 0x02, b'h', b'i'],
            DEFAULT_MAX_FRAME,
        )
        .unwrap();
        let mut expected = vec![
            0, 0, 0, 0x26, 0x4D, 0x50, 1, 0, 0, 0x1C, 0x08, 1, 0x10, 1, 0x1A, 0x0C,
        ];
        expected.extend_from_slice(b"example.Echo");
        expected.extend_from_slice(&[0x22, 0x04]);
        expected.extend_from_slice(b"Echo");
        expected.extend_from_slice(&[0x28, 0xC0, 0x84, 0x3D, 0x0A, 0x02, b'h', b'i']);
        assert_eq!(&request[..], &expected[..]);

        let header = Header {
            kind: Kind::Response,
            request_id: 1,
            ..Header::default()
        };
        let mut response = BytesMut::new();
        encode_raw(
            &mut response,
            &header,
            &[0x0A, 0x02, b'h', b'i'],
            DEFAULT_MAX_FRAME,
        )
        .unwrap();
        let expected = [
            0, 0, 0, 0x0E, 0x4D, 0x50, 1, 0, 0, 4, 0x08, 2, 0x10, 1, 0x0A, 0x02, b'h', b'i',
        ];
        assert_eq!(&response[..], &expected[..]);
    }

    #[test]
    fn a_deferred_header_yields_the_same_frame() {
        #[derive(Clone, PartialEq, prost::Message)]
        struct Payload {
            #[prost(bytes = "vec", tag = "1")]
            data: Vec<u8>,
        }
        let body = Payload {
            data: b"hello".to_vec(),
        };
        let mut header = request();
        for id in [1, 300, 1 << 40, u64::MAX] {
            header.request_id = id;
            let mut direct = BytesMut::new();
            encode_message(&mut direct, &header, &body, DEFAULT_MAX_FRAME).unwrap();
            let deferred = Deferred::new(&header, &body, DEFAULT_MAX_FRAME).unwrap();
            assert_eq!(&deferred.finish(id)[..], &direct[..], "id {id}");
        }
        let too_big = Deferred::new(&header, &body, 20);
        assert!(matches!(too_big, Err(FrameError::TooLarge { .. })));
    }

    #[test]
    fn the_documented_goaway_bytes_are_exact() {
        let header = Header {
            kind: Kind::GoAway,
            request_id: 5,
            status: Code::InvalidArgument,
            message: Text::from_static("bad magic: not an mprpc peer"),
            ..Header::default()
        };
        let mut goaway = BytesMut::new();
        encode_raw(&mut goaway, &header, &[], DEFAULT_MAX_FRAME).unwrap();
        let mut expected = vec![
            0, 0, 0, 0x2A, 0x4D, 0x50, 1, 0, 0, 0x24, 0x08, 6, 0x10, 5, 0x30, 3, 0x3A, 0x1C,
        ];
        expected.extend_from_slice(b"bad magic: not an mprpc peer");
        assert_eq!(&goaway[..], &expected[..]);
    }

    #[test]
    fn frames_round_trip_and_split_anywhere() {
        let mut stream = BytesMut::new();
        encode_raw(&mut stream, &request(), b"hello", DEFAULT_MAX_FRAME).unwrap();
        encode_raw(&mut stream, &request(), b"", DEFAULT_MAX_FRAME).unwrap();
        let mut codec = Codec::default();
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        for byte in stream.iter() {
            buf.put_u8(*byte);
            while let Some(frame) = codec.decode(&mut buf).unwrap() {
                frames.push(frame);
            }
        }
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0].header, request());
        assert_eq!(&frames[0].body[..], b"hello");
        assert!(frames[1].body.is_empty());
    }

    #[test]
    fn oversized_length_is_rejected_from_the_prefix_alone() {
        let mut codec = Codec::new(1024);
        let prefix = [0, 0, 4, 1, b'M', b'P'];
        match decode_all(&mut codec, &prefix) {
            Err(FrameError::TooLarge {
                len: 1025,
                max: 1024,
            }) => {}
            other => panic!("expected TooLarge, got {other:?}"),
        }
        let mut dst = BytesMut::new();
        let too_big = encode_raw(&mut dst, &request(), &[0; 2048], 1024);
        assert!(matches!(too_big, Err(FrameError::TooLarge { .. })));
        assert!(dst.is_empty());
    }

    #[test]
    fn non_mprpc_peers_are_rejected_at_once() {
        let mut codec = Codec::default();
        assert!(matches!(
            decode_all(&mut codec, b"GET / HTTP/1.1\r\n"),
            Err(FrameError::BadMagic)
        ));
        let wrong_version = [0, 0, 0, 10, b'M', b'P', 9];
        assert!(matches!(
            decode_all(&mut codec, &wrong_version),
            Err(FrameError::UnsupportedVersion(9))
        ));
    }

    #[test]
    fn inconsistent_lengths_are_malformed() {
        let mut codec = Codec::default();
        let short = [0, 0, 0, 2, b'M', b'P'];
        assert!(matches!(
            decode_all(&mut codec, &short),
            Err(FrameError::Malformed(_))
        ));
        let header_past_end = [0, 0, 0, 6, b'M', b'P', 1, 0, 0, 9];
        assert!(matches!(
            decode_all(&mut codec, &header_past_end),
            Err(FrameError::Malformed(_))
        ));
        let no_kind = [0, 0, 0, 8, b'M', b'P', 1, 0, 0, 2, 0x10, 0x01];
        assert!(matches!(
            decode_all(&mut codec, &no_kind),
            Err(FrameError::Header(_))
        ));
    }
}
