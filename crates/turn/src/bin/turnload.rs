//! `turnload`: creates many TURN allocations against a server on loopback, for
//! `scripts/bench_turn.sh` (allocation rate, and the server's memory with N allocations).
//!
//! Each allocation needs its own 5-tuple, so each gets its own UDP socket. Allocations are made
//! in waves of `--window` sockets: an unauthenticated Allocate (the server answers 401 with its
//! realm and a nonce bound to that address), then the authenticated one; unanswered requests
//! are re-sent after 250 ms, at most 8 times. The rate counts both legs. With `--hold S` the
//! allocations stay up S seconds (the script reads the server's RSS meanwhile); then they are
//! deleted with Refresh(LIFETIME 0) unless `--keep`.
//!
//! It only ever sends to a loopback target.

use std::net::{SocketAddr, UdpSocket};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use stun::credentials::{Challenge, Key, LongTerm, error_code};
use stun::wire::{Class, Message, MessageWriter, TransactionId, attr, message_type};
use turn::proto;

/// Create TURN allocations in bulk against a server on loopback.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// The TURN server (loopback only).
    #[arg(long, default_value = "127.0.0.1:3478")]
    server: SocketAddr,
    /// Credentials, name:password.
    #[arg(long, default_value = "test:test")]
    user: String,
    /// Allocations to create.
    #[arg(long, default_value_t = 1000)]
    allocations: usize,
    /// Sockets handled per wave.
    #[arg(long, default_value_t = 256)]
    window: usize,
    /// Keep the allocations this many seconds before deleting them.
    #[arg(long, default_value_t = 0)]
    hold: u64,
    /// Do not delete the allocations at the end.
    #[arg(long)]
    keep: bool,
    /// Relay load: after allocating, bind a channel (or, with --send, a permission) to this
    /// echo peer on every allocation and keep --in-flight messages in flight per allocation
    /// for --seconds, counting the echoes.
    #[arg(long)]
    peer: Option<SocketAddr>,
    /// Relay with Send/Data indications instead of channels.
    #[arg(long)]
    send: bool,
    /// Relay load duration.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Messages in flight per allocation.
    #[arg(long, default_value_t = 4)]
    in_flight: usize,
    /// Payload bytes per message.
    #[arg(long, default_value_t = 100)]
    length: usize,
}

/// Closed-loop relay load: returns (echoes received, seconds).
fn relay_load(
    socks: &[&UdpSocket],
    server: SocketAddr,
    peer: SocketAddr,
    args: &Args,
) -> (u64, f64) {
    let payload = vec![0xabu8; args.length.min(1200)];
    let message = if args.send {
        let mut buf = vec![0u8; 1500];
        let id = [0x77u8; 12];
        let n = MessageWriter::new(&mut buf, message_type(proto::SEND, Class::Indication), &id)
            .and_then(|mut w| {
                w.address(attr::XOR_PEER_ADDRESS, peer)?;
                w.attribute(attr::DATA, &payload)?;
                Ok(w.finish())
            })
            .unwrap_or(0);
        buf.truncate(n);
        buf
    } else {
        let mut buf = vec![0u8; payload.len() + 8];
        let n = proto::ChannelData::write(&mut buf, 0x4000, &payload, false).unwrap_or(0);
        buf.truncate(n);
        buf
    };
    let mut in_flight = vec![0usize; socks.len()];
    let mut last_rx = vec![Instant::now(); socks.len()];
    let mut buf = [0u8; 2048];
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs_f64(args.seconds);
    let mut echoed = 0u64;
    while Instant::now() < end {
        let now = Instant::now();
        let mut progress = false;
        for (i, s) in socks.iter().enumerate() {
            // Top up (and recover from losses: nothing back for 200 ms means nothing in flight).
            if now.duration_since(last_rx[i]) > Duration::from_millis(200) {
                in_flight[i] = 0;
                last_rx[i] = now;
            }
            while in_flight[i] < args.in_flight {
                if s.send_to(&message, server).is_err() {
                    break;
                }
                in_flight[i] += 1;
            }
            while let Ok((n, _)) = s.recv_from(&mut buf) {
                if n > payload.len() {
                    echoed += 1;
                    in_flight[i] = in_flight[i].saturating_sub(1);
                    last_rx[i] = now;
                    progress = true;
                }
            }
        }
        if !progress {
            std::thread::sleep(Duration::from_micros(100));
        }
    }
    (echoed, t0.elapsed().as_secs_f64())
}

struct Slot {
    sock: UdpSocket,
    id: TransactionId,
    creds: Option<LongTerm>,
    done: bool,
}

/// Method-specific attributes.
#[derive(Debug, Clone, Copy)]
enum Extra {
    None,
    Lifetime(u32),
    /// CHANNEL-NUMBER 0x4000 and XOR-PEER-ADDRESS.
    Channel(SocketAddr),
    /// XOR-PEER-ADDRESS.
    Peer(SocketAddr),
}

fn request(
    id: &TransactionId,
    method: u16,
    creds: Option<&LongTerm>,
    key: Option<&Key>,
    extra: Extra,
) -> Vec<u8> {
    let mut buf = vec![0u8; 512];
    let Ok(mut w) = MessageWriter::new(&mut buf, message_type(method, Class::Request), id) else {
        return vec![];
    };
    let mut ok = true;
    if method == proto::ALLOCATE {
        ok &= w
            .attribute(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
            .is_ok();
    }
    match extra {
        Extra::None => {}
        Extra::Lifetime(l) => ok &= w.u32_attribute(attr::LIFETIME, l).is_ok(),
        Extra::Channel(peer) => {
            ok &= w.attribute(attr::CHANNEL_NUMBER, &[0x40, 0, 0, 0]).is_ok();
            ok &= w.address(attr::XOR_PEER_ADDRESS, peer).is_ok();
        }
        Extra::Peer(peer) => ok &= w.address(attr::XOR_PEER_ADDRESS, peer).is_ok(),
    }
    if let (Some(c), Some(k)) = (creds, key) {
        ok &= w.attribute(attr::USERNAME, c.username.as_bytes()).is_ok();
        ok &= w.attribute(attr::REALM, c.realm.as_bytes()).is_ok();
        ok &= w.attribute(attr::NONCE, c.nonce.as_bytes()).is_ok();
        ok &= stun::credentials::sign(&mut w, k, stun::credentials::Integrity::Sha1).is_ok();
    }
    let n = w.finish();
    if !ok {
        return vec![];
    }
    buf.truncate(n);
    buf
}

fn new_id(n: &mut u64) -> TransactionId {
    *n += 1;
    let mut id = [0x5au8; 12];
    id[..8].copy_from_slice(&n.to_be_bytes());
    id
}

/// Run one wave: every slot does method `method` (with the nonce dance); returns how many
/// succeeded.
fn wave(
    slots: &mut [Slot],
    server: SocketAddr,
    user: &str,
    pass: &str,
    method: u16,
    extra: Extra,
    counter: &mut u64,
) -> usize {
    let mut key: Option<Key> = None;
    let mut buf = [0u8; 1500];
    for s in slots.iter_mut() {
        s.done = false;
    }
    for attempt in 0..8 {
        for s in slots.iter_mut().filter(|s| !s.done) {
            s.id = new_id(counter);
            if key.is_none() {
                key = s.creds.as_ref().and_then(|c| c.key().ok());
            }
            let req = request(&s.id, method, s.creds.as_ref(), key.as_ref(), extra);
            let _ = s.sock.send_to(&req, server);
        }
        let deadline = Instant::now() + Duration::from_millis(250 * (attempt + 1));
        loop {
            let mut progress = false;
            for s in slots.iter_mut().filter(|s| !s.done) {
                while let Ok((n, _)) = s.sock.recv_from(&mut buf) {
                    let Some(m) = buf.get(..n).and_then(|b| Message::parse(b).ok()) else {
                        continue;
                    };
                    if m.transaction_id() != s.id {
                        continue;
                    }
                    progress = true;
                    match error_code(&m) {
                        None => s.done = true,
                        Some((401 | 438, _)) => {
                            if let Some(c) = Challenge::from_message(&m) {
                                s.creds = c.credentials(user, pass).ok();
                                if key.is_none() {
                                    key = s.creds.as_ref().and_then(|c| c.key().ok());
                                }
                                s.id = new_id(counter);
                                let req =
                                    request(&s.id, method, s.creds.as_ref(), key.as_ref(), extra);
                                let _ = s.sock.send_to(&req, server);
                            }
                        }
                        Some((code, reason)) => {
                            eprintln!("turnload: error {code} {reason}");
                            s.done = true;
                        }
                    }
                }
            }
            if slots.iter().all(|s| s.done) || Instant::now() > deadline {
                break;
            }
            if !progress {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        if slots.iter().all(|s| s.done) {
            break;
        }
    }
    slots.iter().filter(|s| s.done).count()
}

fn main() -> ExitCode {
    let args = Args::parse();
    if !args.server.ip().is_loopback() {
        eprintln!("turnload: only loopback targets are allowed");
        return ExitCode::from(2);
    }
    let Some((user, pass)) = args.user.split_once(':') else {
        eprintln!("turnload: --user must be name:password");
        return ExitCode::from(2);
    };
    {
        use nix::sys::resource::{Resource, getrlimit, setrlimit};
        if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
    let mut slots = Vec::with_capacity(args.allocations);
    for _ in 0..args.allocations {
        let sock = match UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.set_nonblocking(true).map(|()| s))
        {
            Ok(s) => s,
            Err(e) => {
                eprintln!("turnload: cannot open socket {}: {e}", slots.len());
                return ExitCode::from(1);
            }
        };
        slots.push(Slot {
            sock,
            id: [0; 12],
            creds: None,
            done: false,
        });
    }
    let mut counter = 0u64;
    let t0 = Instant::now();
    let mut ok = 0;
    for chunk in slots.chunks_mut(args.window.max(1)) {
        ok += wave(
            chunk,
            args.server,
            user,
            pass,
            proto::ALLOCATE,
            Extra::None,
            &mut counter,
        );
    }
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "turnload allocated={ok} requested={} seconds={secs:.3} rate={:.0}",
        args.allocations,
        ok as f64 / secs.max(1e-9)
    );
    if let Some(peer) = args.peer {
        if !peer.ip().is_loopback() {
            eprintln!("turnload: only loopback peers are allowed");
            return ExitCode::from(2);
        }
        let (method, extra) = if args.send {
            (proto::CREATE_PERMISSION, Extra::Peer(peer))
        } else {
            (proto::CHANNEL_BIND, Extra::Channel(peer))
        };
        let mut bound = 0;
        for chunk in slots.chunks_mut(args.window.max(1)) {
            bound += wave(chunk, args.server, user, pass, method, extra, &mut counter);
        }
        if bound < slots.len() {
            eprintln!(
                "turnload: only {bound} of {} bindings succeeded",
                slots.len()
            );
        }
        let socks: Vec<&UdpSocket> = slots.iter().map(|s| &s.sock).collect();
        let (echoed, secs) = relay_load(&socks, args.server, peer, &args);
        println!(
            "turnload relay mode={} echoed={echoed} seconds={secs:.3} rate={:.0}",
            if args.send { "send" } else { "channel" },
            echoed as f64 / secs.max(1e-9)
        );
    }
    if args.hold > 0 {
        println!("turnload holding {} s", args.hold);
        std::thread::sleep(Duration::from_secs(args.hold));
    }
    if !args.keep {
        let mut freed = 0;
        for chunk in slots.chunks_mut(args.window.max(1)) {
            freed += wave(
                chunk,
                args.server,
                user,
                pass,
                proto::REFRESH,
                Extra::Lifetime(0),
                &mut counter,
            );
        }
        println!("turnload freed={freed}");
    }
    if ok == args.allocations {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
