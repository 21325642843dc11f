//! Decodes arbitrary bytes as an `RpcHeader`. Properties: no panic; a decoded header
//! round-trips through its own encoding.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use mprpc::frame::{Codec, Header, encode_raw};
use tokio_util::codec::Decoder;

fuzz_target!(|data: &[u8]| {
    let Ok(header) = Header::decode(Bytes::copy_from_slice(data)) else { return };
    let mut frame = BytesMut::new();
    if encode_raw(&mut frame, &header, &[], usize::MAX).is_err() {
        return; // a header over 64 KiB cannot be framed; the encoder says so
    }
    let decoded = Codec::new(usize::MAX).decode(&mut frame).expect("decodes").expect("complete");
    assert_eq!(decoded.header, header);
});
