//! Fuzz the sans-IO TURN core (`turn::relay::Server`) with sequences of client packets, peer
//! datagrams and clock jumps, starting from a state the fuzzer could not reach by itself: one
//! authenticated UDP allocation with a permission and a channel (0x4000) to a peer, and one
//! TCP allocation, set up by the harness with real credentials.
//!
//! Input: records of `[op, a, b, len_hi, len_lo, bytes...]`:
//! - op % 4 == 0: client packet `bytes` from 5-tuple `a % 4` (0: the UDP allocation, 1: the TCP
//!   allocation, 2-3: strangers);
//! - op % 4 == 1: peer datagram `bytes` to relay `a % 2` from peer `b % 3`;
//! - op % 4 == 2: the clock advances `a * 4` seconds, then `handle_timeout`;
//! - op % 4 == 3: the UDP client's own authenticated request of method `a % 16` with `bytes`
//!   as raw attributes (so authenticated paths see hostile attributes too).
//!
//! Invariants: no panic; a `Client { len }` fits `out` and re-parses as STUN or ChannelData;
//! a `Peer { data }` range lies inside the packet; relay ports acquired are released exactly
//! once (the pool asserts it); the quota count equals the core's allocation count.

#![no_main]

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use stun::credentials::{Challenge, LongTerm};
use stun::wire::{Class, Message, MessageWriter, attr, message_type};
use turn::proto;
use turn::relay::{
    AuthConfig, Authenticator, Family, FiveTuple, Output, PeerPolicy, PortPool, Quota,
    RelayConfig, RelayPorts, Server, Shared, Transport,
};

struct Pool {
    pool: PortPool,
    live: HashSet<SocketAddr>,
}

impl RelayPorts for Pool {
    fn supports(&self, f: Family) -> bool {
        f == Family::V4
    }
    fn acquire(&mut self, _: Family, even: bool) -> Option<SocketAddr> {
        let a = SocketAddr::from(([203, 0, 113, 1], self.pool.take(even)?));
        assert!(self.live.insert(a));
        Some(a)
    }
    fn release(&mut self, a: SocketAddr) {
        assert!(self.live.remove(&a), "released twice or never acquired");
        self.pool.put(a.port());
    }
}

fn five(i: u8) -> FiveTuple {
    FiveTuple {
        client: SocketAddr::from(([198, 51, 100, 7], 4000 + u16::from(i))),
        server: SocketAddr::from(([203, 0, 113, 1], 3478)),
        transport: if i == 1 { Transport::Tcp } else { Transport::Udp },
    }
}

fn request(id: u8, method: u16, creds: Option<&LongTerm>, extra: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; 4096];
    let mut w = MessageWriter::new(&mut buf, message_type(method, Class::Request), &[id; 12]).unwrap();
    if method == proto::ALLOCATE {
        w.attribute(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]).unwrap();
    }
    if method == proto::CHANNEL_BIND {
        w.attribute(attr::CHANNEL_NUMBER, &[0x40, 0, 0, 0]).unwrap();
        w.address(attr::XOR_PEER_ADDRESS, peer(0)).unwrap();
    }
    let mut n = w.finish();
    // Raw extra attributes, padded to 4 and length-patched, before the integrity.
    let extra = &extra[..extra.len().min(1024) / 4 * 4];
    buf[n..n + extra.len()].copy_from_slice(extra);
    n += extra.len();
    let body = u16::try_from(n - 20).unwrap();
    buf[2..4].copy_from_slice(&body.to_be_bytes());
    buf.truncate(n);
    let Some(c) = creds else { return buf };
    // Re-wrap: copy into a writer so the credentials follow the raw attributes.
    let attrs: Vec<(u16, Vec<u8>)> = match Message::parse(&buf) {
        Ok(m) => m.attributes().map(|a| (a.attr_type, a.value.to_vec())).collect(),
        Err(_) => return buf,
    };
    let mut out = vec![0u8; 4096];
    let mut w = MessageWriter::new(&mut out, message_type(method, Class::Request), &[id; 12]).unwrap();
    for (t, v) in &attrs {
        if w.attribute(*t, v).is_err() {
            return buf;
        }
    }
    if c.authenticate(&mut w).is_err() {
        return buf;
    }
    let n = w.finish();
    out.truncate(n);
    out
}

fn peer(i: u8) -> SocketAddr {
    SocketAddr::from(([198, 51, 100, 20 + i], 7000))
}

fn t0() -> Instant {
    static T0: OnceLock<Instant> = OnceLock::new();
    *T0.get_or_init(Instant::now)
}

fuzz_target!(|input: &[u8]| {
    let t0 = t0();
    let auth = Authenticator::new(AuthConfig {
        realm: "r".into(),
        users: vec![("alice".into(), "pw".into())],
        rest_secret: Some(b"s".to_vec()),
        nonce_key: [1; 32],
        nonce_lifetime: Duration::from_secs(600),
        epoch: t0,
        unix_at_epoch: 1_700_000_000,
    })
    .unwrap();
    let mut policy = PeerPolicy::new();
    policy.relay_ips = vec!["203.0.113.1".parse().unwrap()];
    policy.relay_ports = Some(50000..=50003);
    let shared = Arc::new(Shared {
        config: RelayConfig {
            max_permissions: 4,
            max_channels: 4,
            bandwidth: Some(100_000),
            ..RelayConfig::default()
        },
        auth,
        policy,
        quota: Quota::new(3, 3),
    });
    let mut core = Server::new(shared.clone(), 1);
    let mut ports = Pool {
        pool: PortPool::new(50000..=50003, 7),
        live: HashSet::new(),
    };
    let mut out = vec![0u8; 70_000];
    let mut now = t0;
    // Authenticated set-up: allocations for tuples 0 (UDP) and 1 (TCP), a channel for 0.
    let mut creds = vec![];
    for i in 0..2u8 {
        let first = request(i, proto::ALLOCATE, None, &[]);
        let Output::Client { len } = core.handle_client(now, &mut ports, five(i), &first, &mut out) else {
            panic!("no challenge");
        };
        let ch = Challenge::from_message(&Message::parse(&out[..len]).unwrap()).unwrap();
        let c = ch.credentials("alice", "pw").unwrap();
        let req = request(i + 10, proto::ALLOCATE, Some(&c), &[]);
        core.handle_client(now, &mut ports, five(i), &req, &mut out);
        creds.push(c);
    }
    let bind = request(20, proto::CHANNEL_BIND, Some(&creds[0]), &[]);
    core.handle_client(now, &mut ports, five(0), &bind, &mut out);
    let relays: Vec<SocketAddr> = (0..2).flat_map(|i| core.relay_addresses(&five(i))).collect();
    assert_eq!(core.allocations(), 2);

    let mut rest = input;
    let mut seq = 30u8;
    while let [op, a, b, hi, lo, tail @ ..] = rest {
        let len = (usize::from(*hi) << 8 | usize::from(*lo)).min(tail.len());
        let (bytes, next) = tail.split_at(len);
        rest = next;
        match op % 4 {
            0 => {
                let f = five(a % 4);
                match core.handle_client(now, &mut ports, f, bytes, &mut out) {
                    Output::Client { len } => {
                        assert!(len <= out.len());
                        assert!(Message::parse(&out[..len]).is_ok());
                    }
                    Output::Peer { data, .. } => assert!(data.end <= bytes.len()),
                    Output::None | Output::Binding => {}
                }
            }
            1 => {
                let Some(&relay) = relays.get(usize::from(a % 2)) else { continue };
                if let Some(to) = core.handle_peer(now, relay, peer(b % 3), bytes, &mut out) {
                    assert!(to.len <= out.len());
                    let framed = &out[..to.len];
                    assert!(Message::parse(framed).is_ok() || matches!(framed.first(), Some(0x40..=0x7F)));
                }
            }
            2 => {
                now += Duration::from_secs(u64::from(*a) * 4);
                core.handle_timeout(now, &mut ports);
            }
            _ => {
                seq = seq.wrapping_add(1);
                let req = request(seq, u16::from(a % 16), Some(&creds[0]), bytes);
                if let Output::Client { len } = core.handle_client(now, &mut ports, five(0), &req, &mut out) {
                    assert!(Message::parse(&out[..len]).is_ok());
                }
            }
        }
        assert_eq!(shared.quota.live(), core.allocations());
        assert_eq!(ports.live.len(), core.allocations());
    }
    core.close_all(&mut ports);
    assert!(ports.live.is_empty());
    assert_eq!(shared.quota.live(), 0);
});
