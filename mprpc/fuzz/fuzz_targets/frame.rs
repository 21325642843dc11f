//! Feeds arbitrary bytes to the frame decoder in arbitrary chunks, as a socket would.
//! Properties: no panic; every decoded frame re-encodes to a frame that decodes equal.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use mprpc::frame::{Codec, encode_raw};
use tokio_util::codec::Decoder;

const MAX_FRAME: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, stream)) = data.split_first() else { return };
    let chunk = usize::from(chunk).max(1);
    let mut codec = Codec::new(MAX_FRAME);
    let mut buf = BytesMut::new();
    for piece in stream.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => {
                    let mut again = BytesMut::new();
                    encode_raw(&mut again, &frame.header, &frame.body, MAX_FRAME)
                        .expect("a decoded frame fits its own cap");
                    let decoded = codec.decode(&mut again).expect("re-encoded frame decodes");
                    let decoded = decoded.expect("re-encoded frame is complete");
                    assert_eq!(decoded.header, frame.header);
                    assert_eq!(decoded.body, frame.body);
                }
                Ok(None) => break,
                // The connection would be closed here; nothing more to read.
                Err(_) => return,
            }
        }
    }
});
