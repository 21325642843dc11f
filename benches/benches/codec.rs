//! Encoding and decoding one request frame, as the client and the server do per call.
//!
//! `encode` is `frame::encode_message` of an `EchoRequest` into a reused buffer. `decode`
//! copies the encoded frame into a reused read buffer (what a socket read does), cuts it
//! with `Codec` and decodes the body; names and payload stay slices of that buffer, so in
//! steady state neither side allocates.

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use examples::proto::EchoRequest;
use mprpc::frame::{self, Codec, DEFAULT_MAX_FRAME, Header, Kind, Text};
use prost::Message;
use tokio_util::codec::Decoder;

const BODY_SIZES: [usize; 2] = [64, 4096];

fn request_header() -> Header {
    Header {
        kind: Kind::Request,
        request_id: 123_456,
        service: Text::from_static("example.Echo"),
        method: Text::from_static("Echo"),
        timeout_us: 30_000_000,
        ..Header::default()
    }
}

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode");
    let header = request_header();
    for size in BODY_SIZES {
        let request = EchoRequest {
            payload: vec![0x5a; size].into(),
        };
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &request, |b, request| {
            let mut buf = BytesMut::with_capacity(2 * size + 64);
            b.iter(|| {
                buf.clear();
                frame::encode_message(&mut buf, black_box(&header), request, DEFAULT_MAX_FRAME)
                    .expect("fits the frame cap");
                black_box(&buf);
            });
        });
    }
    group.finish();
}

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode");
    for size in BODY_SIZES {
        let request = EchoRequest {
            payload: vec![0x5a; size].into(),
        };
        let mut encoded = BytesMut::new();
        frame::encode_message(&mut encoded, &request_header(), &request, DEFAULT_MAX_FRAME)
            .expect("fits the frame cap");
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &encoded, |b, encoded| {
            let mut codec = Codec::default();
            let mut buf = BytesMut::with_capacity(2 * encoded.len());
            b.iter(|| {
                // The previous frame is dropped by now, so this reuses the buffer's memory.
                buf.extend_from_slice(black_box(encoded));
                let frame = codec.decode(&mut buf).expect("valid").expect("complete");
                let request = EchoRequest::decode(frame.body).expect("valid body");
                black_box((frame.header, request));
            });
        });
    }
    group.finish();
}

criterion_group!(benches, encode, decode);
criterion_main!(benches);
