//! Encode/decode benchmarks for the STUN codec: ours (zero-copy) against stun-rs.
#![allow(clippy::unwrap_used, missing_docs)]
use std::hint::black_box;
use std::net::SocketAddr;

use criterion::{Criterion, criterion_group, criterion_main};
use stun::rfc5780::{BindingRequest, BindingResponse};
use stun::wire::{BINDING, Class, Message, MessageWriter, attr, message_type};

fn response(buf: &mut [u8]) -> usize {
    let id = [3u8; 12];
    let a: SocketAddr = "203.0.113.7:40000".parse().unwrap();
    let mut w = MessageWriter::new(buf, message_type(BINDING, Class::Success), &id).unwrap();
    w.address(attr::XOR_MAPPED_ADDRESS, a).unwrap();
    w.address(attr::MAPPED_ADDRESS, a).unwrap();
    w.address(attr::RESPONSE_ORIGIN, a).unwrap();
    w.address(attr::OTHER_ADDRESS, a).unwrap();
    w.fingerprint().unwrap();
    w.finish()
}

fn bench(c: &mut Criterion) {
    let mut buf = [0u8; 256];
    let n = response(&mut buf);
    let resp = buf[..n].to_vec();
    let req = BindingRequest {
        change_ip: true,
        change_port: true,
        fingerprint: true,
        ..Default::default()
    }
    .encode(&[1; 12])
    .unwrap();

    c.bench_function("encode binding response (ours)", |b| {
        let mut out = [0u8; 256];
        b.iter(|| black_box(response(&mut out)))
    });
    c.bench_function("parse binding request (ours)", |b| {
        b.iter(|| {
            let m = Message::parse(black_box(&req)).unwrap();
            black_box(m.get(attr::CHANGE_REQUEST).is_some());
            black_box(m.check_fingerprint().unwrap())
        })
    });
    c.bench_function("parse binding response (ours, typed)", |b| {
        b.iter(|| black_box(BindingResponse::parse(black_box(&resp)).unwrap()))
    });
    let decoder = stun::stun_rs::MessageDecoderBuilder::default().build();
    c.bench_function("decode binding response (stun-rs)", |b| {
        b.iter(|| black_box(decoder.decode(black_box(&resp)).unwrap()))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
