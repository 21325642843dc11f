//! TCP framing of the client protocol: a big-endian `u32` length, then that many bytes of
//! protobuf. The length is checked against a cap before anything is allocated for it.

use std::io;
use std::marker::PhantomData;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message;
use tokio_util::codec::{Decoder, Encoder};

/// The default cap on one frame's protobuf bytes (256 KiB).
pub const MAX_FRAME: usize = 256 * 1024;

/// Bytes of the length prefix.
pub const PREFIX: usize = 4;

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The length prefix announced more than the cap.
    #[error("frame of {len} bytes is over the limit of {max}")]
    TooLong {
        /// The announced length.
        len: usize,
        /// The cap.
        max: usize,
    },
    /// The bytes were not the expected protobuf message.
    #[error("frame is not a valid message: {0}")]
    Decode(#[source] prost::DecodeError),
    /// The connection failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Appends `message` as one frame.
pub fn write_frame<M: Message>(message: &M, dst: &mut BytesMut) {
    let len = message.encoded_len();
    dst.reserve(PREFIX + len);
    dst.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
    message
        .encode(dst)
        .expect("reserved room for the whole message");
}

/// `message` as one frame of its own.
pub fn frame<M: Message>(message: &M) -> Bytes {
    let mut buf = BytesMut::with_capacity(PREFIX + message.encoded_len());
    write_frame(message, &mut buf);
    buf.freeze()
}

/// Takes the next whole frame's protobuf bytes off `src`, if all of it has arrived.
///
/// # Errors
/// [`FrameError::TooLong`] when the prefix announces more than `max`.
pub fn read_frame(src: &mut BytesMut, max: usize) -> Result<Option<Bytes>, FrameError> {
    if src.len() < PREFIX {
        return Ok(None);
    }
    let len = u32::from_be_bytes([src[0], src[1], src[2], src[3]]) as usize;
    if len > max {
        return Err(FrameError::TooLong { len, max });
    }
    if src.len() < PREFIX + len {
        src.reserve(PREFIX + len - src.len());
        return Ok(None);
    }
    src.advance(PREFIX);
    Ok(Some(src.split_to(len).freeze()))
}

/// A `tokio_util` codec that reads `In` frames and writes any message (or pre-encoded
/// frames as [`Bytes`]).
#[derive(Debug)]
pub struct Codec<In> {
    max: usize,
    _in: PhantomData<fn() -> In>,
}

impl<In> Codec<In> {
    /// A codec refusing frames over `max` bytes.
    pub fn new(max: usize) -> Codec<In> {
        Codec {
            max,
            _in: PhantomData,
        }
    }
}

impl<In> Default for Codec<In> {
    fn default() -> Codec<In> {
        Codec::new(MAX_FRAME)
    }
}

impl<In: Message + Default> Decoder for Codec<In> {
    type Item = In;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<In>, FrameError> {
        match read_frame(src, self.max)? {
            Some(body) => In::decode(body).map(Some).map_err(FrameError::Decode),
            None => Ok(None),
        }
    }
}

impl<In, M: Message> Encoder<&M> for Codec<In> {
    type Error = FrameError;

    fn encode(&mut self, message: &M, dst: &mut BytesMut) -> Result<(), FrameError> {
        write_frame(message, dst);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{Ping, Request, request::Command};

    #[test]
    fn a_frame_round_trips_and_waits_for_its_last_byte() {
        let ping = Request {
            id: 1,
            command: Some(Command::Ping(Ping {})),
        };
        let bytes = frame(&ping);
        assert_eq!(&bytes[..], &[0, 0, 0, 4, 0x08, 0x01, 0x6a, 0x00]);
        let mut codec = Codec::<Request>::default();
        let mut partial = BytesMut::from(&bytes[..bytes.len() - 1]);
        assert!(codec.decode(&mut partial).unwrap().is_none());
        partial.extend_from_slice(&bytes[bytes.len() - 1..]);
        assert_eq!(codec.decode(&mut partial).unwrap(), Some(ping));
        assert!(partial.is_empty());
    }

    #[test]
    fn an_oversized_length_is_refused_before_allocating() {
        let mut src = BytesMut::from(&[0xff, 0xff, 0xff, 0xff][..]);
        let err = Codec::<Request>::new(1024).decode(&mut src).unwrap_err();
        assert_eq!(
            err.to_string(),
            "frame of 4294967295 bytes is over the limit of 1024"
        );
        assert!(src.capacity() < 1024);
    }

    #[test]
    fn garbage_is_a_decode_error() {
        let mut src = BytesMut::from(&[0, 0, 0, 3, 0xff, 0xff, 0xff][..]);
        let err = Codec::<Request>::default().decode(&mut src).unwrap_err();
        assert!(matches!(err, FrameError::Decode(_)), "{err}");
    }
}
