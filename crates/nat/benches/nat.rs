//! `process` per packet: a 100-byte UDP datagram out and its answer in, through a NAT with a
//! live mapping (the fabric's hot path).
#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::net::Ipv4Addr;
use std::time::Instant;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use nat::{Nat, NatConfig, Side};

/// A 100-byte IPv4/UDP packet (20 + 8 + 72) with valid checksums.
fn udp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Vec<u8> {
    let mut p = vec![0u8; 100];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&100u16.to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    let c = sum_csum(&p[..20]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p[20..22].copy_from_slice(&sport.to_be_bytes());
    p[22..24].copy_from_slice(&dport.to_be_bytes());
    p[24..26].copy_from_slice(&80u16.to_be_bytes());
    for (i, b) in p[28..].iter_mut().enumerate() {
        *b = i as u8;
    }
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&src);
    pseudo.extend_from_slice(&dst);
    pseudo.extend_from_slice(&[0, 17, 0, 80]);
    pseudo.extend_from_slice(&p[20..]);
    let c = sum_csum(&pseudo);
    p[26..28].copy_from_slice(&c.to_be_bytes());
    p
}

fn sum_csum(d: &[u8]) -> u16 {
    let mut s: u32 = d
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

fn bench(c: &mut Criterion) {
    let ext = Ipv4Addr::new(203, 0, 113, 1);
    let mut nat = Nat::new(
        NatConfig::preset("port-restricted-cone", vec![ext]).unwrap(),
        1,
    )
    .unwrap();
    let now = Instant::now();
    let out = udp([192, 168, 1, 2], 5000, [198, 51, 100, 1], 3478);
    let back = udp([198, 51, 100, 1], 3478, [203, 0, 113, 1], 5000);
    let mut first = out.clone();
    nat.process(now, Side::Inside, &mut first).unwrap();
    let mut g = c.benchmark_group("nat");
    g.throughput(Throughput::Elements(1));
    let mut buf = out.clone();
    g.bench_function("process udp 100B outbound", |b| {
        b.iter(|| {
            buf.copy_from_slice(&out);
            black_box(nat.process(now, Side::Inside, black_box(&mut buf)).unwrap());
        })
    });
    let mut buf = back.clone();
    g.bench_function("process udp 100B inbound", |b| {
        b.iter(|| {
            buf.copy_from_slice(&back);
            black_box(
                nat.process(now, Side::Outside, black_box(&mut buf))
                    .unwrap(),
            );
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
