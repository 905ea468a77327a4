//! The packet fabric with real namespaces, TUN devices, kernel sockets and nftables.
//!
//! Needs root, iproute2 and nftables (and tshark for the pcap test). Without them the tests
//! print a note and pass, except under CI (`CI=true`), where they fail loudly.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sim::fabric::{self, Fabric, FabricError, FabricOptions};
use sim::topology::{
    Host, Impairment, Ipv4Prefix, NatBox, NatKind, Network, Side, Topology, Translator, Verdict,
};

// ---------------------------------------------------------------------------------------------
// Prerequisites

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// `true` when the fabric can run here; otherwise a note (or, under CI, a failure).
fn can_run(test: &str) -> bool {
    match fabric::check_environment() {
        Ok(()) => true,
        Err(e) if in_ci() => {
            panic!("{test}: the fabric tests cannot run here and CI must not skip them: {e}")
        }
        Err(e) => {
            eprintln!("note: {test} skipped: {e}");
            false
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Topology builders

fn prefix(a: [u8; 4], len: u8) -> Ipv4Prefix {
    Ipv4Prefix {
        addr: a.into(),
        len,
    }
}

fn net(name: &str, prefixes: Vec<Ipv4Prefix>) -> Network {
    Network {
        name: name.into(),
        prefixes,
    }
}

fn host(name: &str, network: usize, addr: [u8; 4], link: Impairment) -> Host {
    Host {
        name: name.into(),
        network,
        addresses: vec![addr.into()],
        link,
    }
}

const A: [u8; 4] = [192, 168, 50, 10];
const B: [u8; 4] = [192, 168, 50, 20];

/// Two hosts on one network; `a` has `imp` on its link.
fn two_hosts(imp: Impairment) -> Topology {
    Topology {
        name: "two".into(),
        networks: vec![net("lan", vec![prefix([192, 168, 50, 0], 24)])],
        hosts: vec![host("a", 0, A, imp), host("b", 0, B, Impairment::default())],
        nats: vec![],
    }
}

fn opts(seed: u64, pcap: Option<PathBuf>) -> FabricOptions {
    FabricOptions {
        prefix: fabric::run_prefix(),
        pcap_dir: pcap,
        seed,
    }
}

fn scratch_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("fabric-test-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

// ---------------------------------------------------------------------------------------------
// Running code inside a namespace: a thread that enters it (setns affects only that thread).

fn enter(ns: &str) {
    let f = std::fs::File::open(format!("/run/netns/{ns}")).unwrap();
    nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
}

fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let ns = ns.to_owned();
    std::thread::spawn(move || {
        enter(&ns);
        f()
    })
    .join()
    .unwrap()
}

/// A UDP server in `ns` on `addr`: answers every datagram with the sender's address as text.
struct UdpEcho {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl UdpEcho {
    fn start(ns: &str, addr: SocketAddrV4) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = Arc::clone(&stop);
        let ns = ns.to_owned();
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            enter(&ns);
            let sock = UdpSocket::bind(addr).unwrap();
            sock.set_read_timeout(Some(Duration::from_millis(50)))
                .unwrap();
            tx.send(()).unwrap();
            let mut buf = [0u8; 2048];
            while !s2.load(Ordering::SeqCst) {
                if let Ok((_, from)) = sock.recv_from(&mut buf) {
                    let _ = sock.send_to(from.to_string().as_bytes(), from);
                }
            }
        });
        rx.recv().unwrap();
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// From `ns`, send a datagram to `to` and return what the echo server saw as our address.
fn udp_ask(ns: &str, to: SocketAddrV4) -> Option<SocketAddr> {
    in_ns(ns, move || {
        let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut buf = [0u8; 2048];
        for _ in 0..10 {
            sock.send_to(b"who am i", to).unwrap();
            if let Ok((n, _)) = sock.recv_from(&mut buf) {
                return std::str::from_utf8(&buf[..n]).ok()?.parse().ok();
            }
        }
        None
    })
}

/// TCP: a listener in `server_ns` echoes one line; the client in `client_ns` connects.
fn tcp_roundtrip(client_ns: &str, server_ns: &str, server: SocketAddrV4) -> String {
    let ns = server_ns.to_owned();
    let (tx, rx) = std::sync::mpsc::channel();
    let srv = std::thread::spawn(move || {
        enter(&ns);
        let l = TcpListener::bind(server).unwrap();
        tx.send(()).unwrap();
        let (mut c, from) = l.accept().unwrap();
        let mut buf = [0u8; 64];
        let n = c.read(&mut buf).unwrap();
        c.write_all(format!("{} from {from}", String::from_utf8_lossy(&buf[..n])).as_bytes())
            .unwrap();
    });
    rx.recv().unwrap();
    let reply = in_ns(client_ns, move || {
        let mut c = TcpStream::connect_timeout(&server.into(), Duration::from_secs(5)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.write_all(b"hello").unwrap();
        let mut s = String::new();
        c.read_to_string(&mut s).unwrap();
        s
    });
    srv.join().unwrap();
    reply
}

/// ICMP echo from `ns` to `dst` with a raw socket (no `ping` binary needed); the RTT.
fn ping(ns: &str, dst: Ipv4Addr) -> Option<Duration> {
    use socket2::{Domain, Protocol, Socket, Type};
    in_ns(ns, move || {
        // A raw ICMP socket used through std's datagram API (recv/send_to are plain syscalls).
        let s: UdpSocket = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4))
            .unwrap()
            .into();
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut req = [8u8, 0, 0, 0, 0x12, 0x34, 0, 1, b'n', b's'];
        let ck = checksum(&req);
        req[2..4].copy_from_slice(&ck.to_be_bytes());
        for _ in 0..5 {
            let t0 = Instant::now();
            s.send_to(&req, SocketAddrV4::new(dst, 0)).unwrap();
            let mut buf = [0u8; 1500];
            while let Ok(n) = s.recv(&mut buf) {
                let p = &buf[..n];
                let ihl = usize::from(p[0] & 0x0f) * 4;
                if p.get(ihl) == Some(&0) && p.get(ihl + 4..ihl + 6) == Some(&[0x12, 0x34][..]) {
                    return Some(t0.elapsed());
                }
            }
        }
        None
    })
}

// ---------------------------------------------------------------------------------------------
// Checksums and a pcap reader

fn checksum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        sum += u32::from(w);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The packets of a classic little-endian pcap file.
fn read_pcap(path: &Path) -> Vec<Vec<u8>> {
    let data = std::fs::read(path).unwrap();
    assert!(data.len() >= 24, "{}: no header", path.display());
    assert_eq!(&data[..4], &[0xd4, 0xc3, 0xb2, 0xa1]);
    let mut out = Vec::new();
    let mut at = 24;
    while at + 16 <= data.len() {
        let caplen = u32::from_le_bytes(data[at + 8..at + 12].try_into().unwrap()) as usize;
        at += 16;
        out.push(data[at..at + caplen].to_vec());
        at += caplen;
    }
    assert_eq!(at, data.len(), "{}: trailing bytes", path.display());
    out
}

fn assert_ipv4_checksums(pkts: &[Vec<u8>]) {
    for p in pkts {
        assert_eq!(p[0] >> 4, 4, "not IPv4: {p:02x?}");
        let ihl = usize::from(p[0] & 0x0f) * 4;
        assert_eq!(checksum(&p[..ihl]), 0, "bad IPv4 header checksum: {p:02x?}");
    }
}

// ---------------------------------------------------------------------------------------------
// A test-only model NAT: endpoint-independent mapping, port rewriting, UDP and TCP.

#[derive(Debug)]
struct EimNat {
    external: Ipv4Addr,
    next_port: u16,
    out: HashMap<(Ipv4Addr, u16, u8), u16>,
    back: HashMap<(u16, u8), (Ipv4Addr, u16)>,
}

impl EimNat {
    fn new(external: Ipv4Addr) -> Self {
        Self {
            external,
            next_port: 40_000,
            out: HashMap::new(),
            back: HashMap::new(),
        }
    }
}

/// Recompute the IPv4 header checksum and the UDP/TCP checksum of `p`.
fn fix_checksums(p: &mut [u8], ihl: usize, proto: u8) {
    p[10] = 0;
    p[11] = 0;
    let c = checksum(&p[..ihl]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    let total = usize::from(u16::from_be_bytes([p[2], p[3]]));
    let off = if proto == 17 { 6 } else { 16 };
    if proto == 17 && p[ihl + 6] == 0 && p[ihl + 7] == 0 {
        return; // UDP without checksum stays without.
    }
    p[ihl + off] = 0;
    p[ihl + off + 1] = 0;
    let mut pseudo = Vec::with_capacity(12 + total - ihl);
    pseudo.extend_from_slice(&p[12..20]);
    pseudo.extend_from_slice(&[0, proto]);
    pseudo.extend_from_slice(&((total - ihl) as u16).to_be_bytes());
    pseudo.extend_from_slice(&p[ihl..total]);
    let mut c = checksum(&pseudo);
    if proto == 17 && c == 0 {
        c = 0xffff;
    }
    p[ihl + off..ihl + off + 2].copy_from_slice(&c.to_be_bytes());
}

impl Translator for EimNat {
    fn process(&mut self, _now: Instant, from: Side, p: &mut [u8]) -> Verdict {
        if p.len() < 20 {
            return Verdict::Drop("short");
        }
        let ihl = usize::from(p[0] & 0x0f) * 4;
        let proto = p[9];
        let l4_min = if proto == 17 { 8 } else { 20 };
        if (proto != 17 && proto != 6) || p.len() < ihl + l4_min {
            return Verdict::Drop("unsupported");
        }
        let src = Ipv4Addr::new(p[12], p[13], p[14], p[15]);
        let dst = Ipv4Addr::new(p[16], p[17], p[18], p[19]);
        let sport = u16::from_be_bytes([p[ihl], p[ihl + 1]]);
        let dport = u16::from_be_bytes([p[ihl + 2], p[ihl + 3]]);
        match from {
            Side::Inside => {
                let port = *self.out.entry((src, sport, proto)).or_insert_with(|| {
                    self.next_port += 1;
                    self.next_port
                });
                self.back.insert((port, proto), (src, sport));
                p[12..16].copy_from_slice(&self.external.octets());
                p[ihl..ihl + 2].copy_from_slice(&port.to_be_bytes());
                fix_checksums(p, ihl, proto);
                Verdict::Forward(Side::Outside)
            }
            Side::Outside => {
                if dst != self.external {
                    return Verdict::Drop("not-ours");
                }
                let Some(&(ip, port)) = self.back.get(&(dport, proto)) else {
                    return Verdict::Drop("no-mapping");
                };
                p[16..20].copy_from_slice(&ip.octets());
                p[ihl + 2..ihl + 4].copy_from_slice(&port.to_be_bytes());
                fix_checksums(p, ihl, proto);
                Verdict::Forward(Side::Inside)
            }
        }
    }
}

/// `h` (192.168.1.10) behind the model NAT `home` (external 100.64.0.2) behind the kernel NAT
/// `cgn` (external 203.0.113.1); public `s` at 198.51.100.10.
fn nested(random_fully: bool) -> Topology {
    Topology {
        name: "nested".into(),
        networks: vec![
            net(
                "internet",
                vec![prefix([203, 0, 113, 0], 24), prefix([198, 51, 100, 0], 24)],
            ),
            net("cgn", vec![prefix([100, 64, 0, 0], 24)]),
            net("home", vec![prefix([192, 168, 1, 0], 24)]),
        ],
        hosts: vec![
            host("h", 2, [192, 168, 1, 10], Impairment::default()),
            host("s", 0, [198, 51, 100, 10], Impairment::default()),
        ],
        nats: vec![
            NatBox {
                name: "home".into(),
                inside: 2,
                outside: 1,
                inside_addr: [192, 168, 1, 1].into(),
                external: vec![[100, 64, 0, 2].into()],
                kind: NatKind::Model(Box::new(EimNat::new([100, 64, 0, 2].into()))),
                inside_link: Impairment::default(),
                outside_link: Impairment::default(),
            },
            NatBox {
                name: "cgn".into(),
                inside: 1,
                outside: 0,
                inside_addr: [100, 64, 0, 1].into(),
                external: vec![[203, 0, 113, 1].into()],
                kind: NatKind::Kernel { random_fully },
                inside_link: Impairment::default(),
                outside_link: Impairment::default(),
            },
        ],
    }
}

fn ns_exists(name: &str) -> bool {
    Path::new(&format!("/run/netns/{name}")).exists()
}

fn namespaces_with(prefix: &str) -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.starts_with(&format!("{prefix}-")))
                .collect()
        })
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// Tests

#[test]
fn two_hosts_udp_tcp_ping_and_valid_checksums() {
    if !can_run("two_hosts_udp_tcp_ping_and_valid_checksums") {
        return;
    }
    let dir = scratch_dir("two");
    let mut f = Fabric::up(two_hosts(Impairment::default()), opts(1, Some(dir.clone()))).unwrap();
    let (na, nb) = (
        f.netns("a").unwrap().to_owned(),
        f.netns("b").unwrap().to_owned(),
    );
    let prefix = f.prefix().to_owned();
    assert!(na.starts_with(&prefix) && ns_exists(&na) && ns_exists(&nb));

    let sa = SocketAddrV4::new(A.into(), 7000);
    let sb = SocketAddrV4::new(B.into(), 7000);
    let _ea = UdpEcho::start(&na, sa);
    let _eb = UdpEcho::start(&nb, sb);
    let seen = udp_ask(&na, sb).expect("UDP a -> b");
    assert_eq!(seen.ip(), std::net::IpAddr::from(A));
    let seen = udp_ask(&nb, sa).expect("UDP b -> a");
    assert_eq!(seen.ip(), std::net::IpAddr::from(B));

    let r = tcp_roundtrip(&na, &nb, SocketAddrV4::new(B.into(), 7100));
    assert!(r.starts_with("hello from 192.168.50.10:"), "{r}");
    let r = tcp_roundtrip(&nb, &na, SocketAddrV4::new(A.into(), 7100));
    assert!(r.starts_with("hello from 192.168.50.20:"), "{r}");
    assert!(ping(&na, B.into()).is_some(), "ping a -> b");
    assert!(ping(&nb, A.into()).is_some(), "ping b -> a");

    // Programs in a host: `command` (and `ip netns exec` on the same name) see the TUN device.
    let out = f
        .command("a", "ip")
        .unwrap()
        .args(["-4", "-o", "addr", "show", "dev", "tun0"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("192.168.50.10/24"), "{text}");
    let out = Command::new("ip")
        .args(["netns", "exec", &nb, "ip", "-o", "route"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("default dev tun0"),
        "{out:?}"
    );
    assert!(matches!(
        f.command("nobody", "true"),
        Err(FabricError::UnknownHost(_))
    ));

    // A spawned process that is still running when the fabric goes down is killed.
    let mut sleeper = f.command("b", "sleep").unwrap();
    sleeper.arg("300");
    let mut child = f.spawn("b", sleeper).unwrap();
    let pid = child.id();

    let stats = f.stats();
    let la = stats.link("a").unwrap();
    assert!(la.up.delivered.packets >= 8, "{la:?}");
    assert!(stats.network("lan").unwrap().routed.packets >= 16);
    let stats = f.down().unwrap();
    assert!(stats.link("b").unwrap().down.delivered.packets >= 4);
    let status = child.wait().unwrap();
    assert!(!status.success(), "sleep {pid} should have been killed");
    assert!(!ns_exists(&na) && !ns_exists(&nb));
    assert!(namespaces_with(&prefix).is_empty());

    let pa = read_pcap(&dir.join("a.pcap"));
    let pb = read_pcap(&dir.join("b.pcap"));
    assert!(pa.len() >= 8 && pb.len() >= 8, "{} {}", pa.len(), pb.len());
    assert_ipv4_checksums(&pa);
    assert_ipv4_checksums(&pb);
    let _ = std::fs::remove_dir_all(&dir);
}

fn nested_case(random_fully: bool) {
    let dir = scratch_dir(&format!("nested{random_fully}"));
    let f = Fabric::up(nested(random_fully), opts(2, Some(dir.clone()))).unwrap();
    let (nh, ns) = (
        f.netns("h").unwrap().to_owned(),
        f.netns("s").unwrap().to_owned(),
    );
    let router = f.netns("cgn").unwrap().to_owned();
    assert!(f.netns("home").is_none(), "model boxes have no namespace");
    let out = Command::new("ip")
        .args(["netns", "exec", &router, "nft", "list", "ruleset"])
        .output()
        .unwrap();
    let rules = String::from_utf8_lossy(&out.stdout);
    assert!(rules.contains("masquerade"), "{rules}");
    assert_eq!(rules.contains("fully-random"), random_fully, "{rules}");

    let server = SocketAddrV4::new([198, 51, 100, 10].into(), 3478);
    let _echo = UdpEcho::start(&ns, server);
    let seen =
        udp_ask(&nh, server).unwrap_or_else(|| panic!("UDP through two NATs: {:#?}", f.stats()));
    assert_eq!(
        seen.ip(),
        std::net::IpAddr::from([203, 0, 113, 1]),
        "doubly translated source"
    );
    // A second socket gets a second mapping through both boxes.
    let seen2 = udp_ask(&nh, server).expect("second flow");
    assert_eq!(seen2.ip(), seen.ip());
    assert_ne!(seen2.port(), seen.port());
    // TCP too, through both translations.
    let r = tcp_roundtrip(&nh, &ns, SocketAddrV4::new([198, 51, 100, 10].into(), 8080));
    assert!(r.starts_with("hello from 203.0.113.1:"), "{r}");

    let stats = f.down().unwrap();
    let home = stats.nat("home").unwrap();
    assert_eq!(home.kind, "model");
    assert!(
        home.outbound.packets >= 2 && home.inbound.packets >= 2,
        "{home:?}"
    );
    let cgn = stats.nat("cgn").unwrap();
    assert!(
        cgn.outbound.packets >= 2 && cgn.inbound.packets >= 2,
        "{cgn:?}"
    );
    // What the fabric wrote on the public link carries the kernel box's address and valid
    // checksums; the link between the boxes carries the model box's address.
    let public = read_pcap(&dir.join("cgn-outside.pcap"));
    assert_ipv4_checksums(&public);
    assert!(public.iter().any(|p| p[12..16] == [203, 0, 113, 1]));
    let middle = read_pcap(&dir.join("home-outside.pcap"));
    assert_ipv4_checksums(&middle);
    assert!(middle.iter().any(|p| p[12..16] == [100, 64, 0, 2]));
    assert!(!ns_exists(&router));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A burst of one flow (a connected socket, so consecutive IP IDs) through a model NAT and a
/// kernel NAT: the fabric merges runs of it into UDP GSO frames towards the kernel box and the
/// receiver, and every datagram arrives once, in order, unchanged; what the kernel box sends
/// on after splitting the frames (its checksums computed from the partial sums the fabric
/// wrote) carries valid IPv4 and UDP checksums and consecutive IDs.
#[test]
fn udp_bursts_are_merged_and_arrive_unchanged() {
    if !can_run("udp_bursts_are_merged_and_arrive_unchanged") {
        return;
    }
    // 120 datagrams of up to 1000 bytes fit the receiver's socket buffer at the default
    // rmem_max. A delay on both hosts' links makes the loop release the burst from its timer
    // queue in rounds, so runs are merged however fast the loop keeps up with the sender.
    const N: usize = 120;
    let dir = scratch_dir("gso");
    let mut topo = nested(false);
    for h in &mut topo.hosts {
        h.link.delay = Duration::from_millis(5);
    }
    let f = Fabric::up(topo, opts(3, Some(dir.clone()))).unwrap();
    let (nh, ns) = (
        f.netns("h").unwrap().to_owned(),
        f.netns("s").unwrap().to_owned(),
    );
    let server = SocketAddrV4::new([198, 51, 100, 10].into(), 7400);
    let (tx, rx) = std::sync::mpsc::channel();
    let recv = std::thread::spawn(move || {
        enter(&ns);
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
        sock.set_recv_buffer_size(8 << 20).unwrap();
        sock.bind(&server.into()).unwrap();
        let sock: UdpSocket = sock.into();
        sock.set_read_timeout(Some(Duration::from_millis(1500)))
            .unwrap();
        tx.send(()).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            got.push((buf[..n].to_vec(), from));
        }
        got
    });
    rx.recv().unwrap();
    // Sizes: mostly 1000 bytes, a few shorter ones (which end a merged run), each payload
    // different.
    let sent: Vec<Vec<u8>> = (0..N)
        .map(|i| {
            let len = if i % 40 == 39 { 333 } else { 1000 };
            (0..len).map(|j| (i * 7 + j) as u8).collect()
        })
        .collect();
    let to_send = sent.clone();
    in_ns(&nh, move || {
        let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
        sock.connect(server).unwrap();
        for p in &to_send {
            sock.send(p).unwrap();
        }
    });
    let got = recv.join().unwrap();
    let stats = f.down().unwrap();
    assert_eq!(got.len(), N, "{stats:#?}");
    for (i, (p, from)) in got.iter().enumerate() {
        assert_eq!(p, &sent[i], "datagram {i} differs or is out of order");
        assert_eq!(from.ip(), std::net::IpAddr::from([203, 0, 113, 1]));
    }
    let merged = |link: &str| stats.link(link).unwrap().down.merged.packets;
    assert!(merged("cgn-inside") > 0, "{stats:#?}");
    assert!(merged("s") > 0, "{stats:#?}");
    // The kernel box split the frames it got: its output has valid checksums throughout.
    let public: Vec<Vec<u8>> = read_pcap(&dir.join("cgn-outside.pcap"))
        .into_iter()
        .filter(|p| p[9] == 17 && p[22..24] == 7400u16.to_be_bytes())
        .collect();
    assert_eq!(public.len(), N);
    assert_ipv4_checksums(&public);
    for (i, p) in public.iter().enumerate() {
        let mut pseudo = p[12..20].to_vec();
        pseudo.extend_from_slice(&[0, 17]);
        pseudo.extend_from_slice(&((p.len() - 20) as u16).to_be_bytes());
        pseudo.extend_from_slice(&p[20..]);
        assert_eq!(checksum(&pseudo), 0, "bad UDP checksum in datagram {i}");
        assert_eq!(&p[28..], &sent[i][..]);
        if i > 0 {
            let id = |q: &[u8]| u16::from_be_bytes([q[4], q[5]]);
            assert_eq!(id(p), id(&public[i - 1]).wrapping_add(1), "IP IDs of {i}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn model_nat_behind_kernel_masquerade() {
    if can_run("model_nat_behind_kernel_masquerade") {
        nested_case(false);
    }
}

#[test]
fn model_nat_behind_kernel_masquerade_random_fully() {
    if can_run("model_nat_behind_kernel_masquerade_random_fully") {
        nested_case(true);
    }
}

/// Median of `n` UDP round trips from `a` to an echo server on `b`.
fn median_rtt(na: &str, nb: &str, n: usize) -> Duration {
    let server = SocketAddrV4::new(B.into(), 7200);
    let _echo = UdpEcho::start(nb, server);
    let mut rtts = in_ns(na, move || {
        let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut buf = [0u8; 512];
        let mut v = Vec::new();
        for _ in 0..n {
            let t0 = Instant::now();
            sock.send_to(b"t", server).unwrap();
            sock.recv_from(&mut buf).unwrap();
            v.push(t0.elapsed());
        }
        v
    });
    rtts.sort();
    rtts[rtts.len() / 2]
}

#[test]
fn delay_50ms_each_way_gives_100ms_rtt() {
    if !can_run("delay_50ms_each_way_gives_100ms_rtt") {
        return;
    }
    let imp = Impairment {
        delay: Duration::from_millis(50),
        ..Impairment::default()
    };
    let f = Fabric::up(two_hosts(imp), opts(3, None)).unwrap();
    let rtt = median_rtt(f.netns("a").unwrap(), f.netns("b").unwrap(), 9);
    // Never faster than the two delays; slower only by scheduling (tolerate a loaded machine).
    assert!(rtt >= Duration::from_millis(100), "{rtt:?}");
    assert!(rtt < Duration::from_millis(180), "{rtt:?}");
    f.down().unwrap();

    // Without impairment the fast path adds nothing measurable.
    let f = Fabric::up(two_hosts(Impairment::default()), opts(3, None)).unwrap();
    let rtt = median_rtt(f.netns("a").unwrap(), f.netns("b").unwrap(), 9);
    assert!(rtt < Duration::from_millis(20), "{rtt:?}");
    f.down().unwrap();
}

/// Send `n` datagrams from `a` to `b` (paced), return how many arrived and the final stats.
fn blast(
    imp: Impairment,
    seed: u64,
    n: usize,
    size: usize,
    gap: Duration,
) -> (usize, Vec<Instant>, fabric::FabricStats) {
    let f = Fabric::up(two_hosts(imp), opts(seed, None)).unwrap();
    let nb = f.netns("b").unwrap().to_owned();
    let (tx, rx) = std::sync::mpsc::channel();
    let recv = std::thread::spawn(move || {
        enter(&nb);
        let sock = UdpSocket::bind(SocketAddrV4::new(B.into(), 7300)).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(1500)))
            .unwrap();
        tx.send(()).unwrap();
        let mut buf = [0u8; 2048];
        let mut arrivals = Vec::new();
        while sock.recv_from(&mut buf).is_ok() {
            arrivals.push(Instant::now());
        }
        arrivals
    });
    rx.recv().unwrap();
    in_ns(f.netns("a").unwrap(), move || {
        let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
        let payload = vec![0x5au8; size];
        let start = Instant::now();
        for i in 0..n {
            let due = start + gap * i as u32;
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            sock.send_to(&payload, SocketAddrV4::new(B.into(), 7300))
                .unwrap();
        }
    });
    let arrivals = recv.join().unwrap();
    let stats = f.down().unwrap();
    (arrivals.len(), arrivals, stats)
}

#[test]
fn loss_one_drops_everything() {
    if !can_run("loss_one_drops_everything") {
        return;
    }
    let imp = Impairment {
        loss: 1.0,
        ..Impairment::default()
    };
    let (got, _, stats) = blast(imp, 4, 50, 100, Duration::from_micros(200));
    assert_eq!(got, 0);
    let up = &stats.link("a").unwrap().up;
    assert_eq!(up.drops.get("loss").copied(), Some(up.entered.packets));
    assert!(up.entered.packets >= 50, "{up:?}");
}

#[test]
fn loss_half_is_reproducible_with_a_seed() {
    if !can_run("loss_half_is_reproducible_with_a_seed") {
        return;
    }
    let imp = Impairment {
        loss: 0.5,
        ..Impairment::default()
    };
    let gap = Duration::from_micros(300);
    let (got1, _, s1) = blast(imp, 99, 400, 100, gap);
    let (got2, _, s2) = blast(imp, 99, 400, 100, gap);
    let drops = |s: &fabric::FabricStats| {
        s.link("a")
            .unwrap()
            .up
            .drops
            .get("loss")
            .copied()
            .unwrap_or(0)
    };
    assert_eq!(drops(&s1), drops(&s2), "same seed, same losses");
    assert_eq!(got1, got2);
    assert_eq!(got1 as u64 + drops(&s1), 400);
    assert!((120..280).contains(&got1), "{got1}");
}

#[test]
fn rate_limit_bounds_throughput() {
    if !can_run("rate_limit_bounds_throughput") {
        return;
    }
    // 2 Mbit/s; offered 1000-byte datagrams every 2 ms (about 4.2 Mbit/s of IP packets).
    let imp = Impairment {
        rate_bps: Some(2_000_000),
        ..Impairment::default()
    };
    let (got, arrivals, stats) = blast(imp, 5, 400, 1000, Duration::from_millis(2));
    assert!(got >= 100, "{got}");
    let span = *arrivals.last().unwrap() - arrivals[0];
    let bits = (got as f64 - 1.0) * 1028.0 * 8.0;
    let bps = bits / span.as_secs_f64();
    assert!(
        (1_400_000.0..2_600_000.0).contains(&bps),
        "{bps} bit/s over {span:?}, {got} packets"
    );
    // The queue is bounded: with twice the offered rate, some packets are refused.
    let up = &stats.link("a").unwrap().up;
    assert!(
        up.drops.get("queue-full").copied().unwrap_or(0) > 0,
        "{up:?}"
    );
}

#[test]
fn pcap_files_open_in_tshark() {
    if !can_run("pcap_files_open_in_tshark") {
        return;
    }
    if Command::new("tshark")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_err()
    {
        assert!(
            !in_ci(),
            "tshark is missing (apt-get install -y tshark); CI must have it"
        );
        eprintln!("note: pcap_files_open_in_tshark skipped: tshark is missing");
        return;
    }
    let dir = scratch_dir("pcap");
    let f = Fabric::up(nested(false), opts(6, Some(dir.clone()))).unwrap();
    let server = SocketAddrV4::new([198, 51, 100, 10].into(), 3478);
    let _echo = UdpEcho::start(f.netns("s").unwrap(), server);
    assert!(udp_ask(f.netns("h").unwrap(), server).is_some());
    drop(_echo);
    f.down().unwrap();
    let fields = |file: &str| {
        let out = Command::new("tshark")
            .args(["-r"])
            .arg(dir.join(file))
            .args([
                "-Y",
                "udp.port == 3478",
                "-T",
                "fields",
                "-e",
                "ip.src",
                "-e",
                "ip.dst",
                "-e",
                "ip.checksum.status",
            ])
            .args(["-o", "ip.check_checksum:TRUE"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "tshark -r {file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let h = fields("h.pcap");
    assert!(h.contains("192.168.1.10\t198.51.100.10"), "{h}");
    assert!(h.contains("198.51.100.10\t192.168.1.10"), "{h}");
    let s = fields("s.pcap");
    assert!(s.contains("203.0.113.1\t198.51.100.10"), "{s}");
    assert!(
        !s.contains("192.168.1.10") && !s.contains("100.64.0.2"),
        "{s}"
    );
    let mid = fields("home-outside.pcap");
    assert!(mid.contains("100.64.0.2\t198.51.100.10"), "{mid}");
    for text in [&h, &s, &mid] {
        for line in text.lines() {
            // ip.checksum.status: 1 is "good" (0 bad, 2 unverified).
            assert!(line.ends_with("\t1"), "checksum status: {line}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Child side of the SIGKILL test: bring a fabric up, start a sleeper, report, wait forever.
fn hold_fabric_child() -> ! {
    let mut f = Fabric::up(nested(false), opts(7, None)).unwrap();
    let mut cmd = f.command("s", "sleep").unwrap();
    cmd.arg("600");
    #[allow(clippy::zombie_processes)] // The process is killed by SIGKILL with it.
    let child = f.spawn("s", cmd).unwrap();
    println!("READY {} {}", f.prefix(), child.id());
    std::io::stdout().flush().unwrap();
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

#[test]
fn sigkilled_run_is_removed_by_clean() {
    if std::env::var("FABRIC_TEST_CHILD").as_deref() == Ok("hold") {
        hold_fabric_child();
    }
    if !can_run("sigkilled_run_is_removed_by_clean") {
        return;
    }
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "sigkilled_run_is_removed_by_clean",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("FABRIC_TEST_CHILD", "hold")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut text = String::new();
    let mut buf = [0u8; 256];
    while !text.contains('\n') || !text.contains("READY") {
        let n = out.read(&mut buf).unwrap();
        assert!(n > 0, "child exited early: {text}");
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    let line = text
        .lines()
        .find_map(|l| l.split_once("READY "))
        .unwrap()
        .1
        .to_owned();
    let mut words = line.split_whitespace();
    let prefix = words.next().unwrap().to_owned();
    let sleeper: u32 = words.next().unwrap().parse().unwrap();
    assert!(
        prefix.starts_with(&format!("nsim{}x", child.id())),
        "{prefix}"
    );

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    child.wait().unwrap();
    let left = namespaces_with(&prefix);
    assert_eq!(
        left.len(),
        3,
        "h, s and the kernel box remain after SIGKILL: {left:?}"
    );
    assert!(
        Path::new(&format!("/proc/{sleeper}")).exists(),
        "the sleeper outlives its parent"
    );

    let report = fabric::clean(true).unwrap();
    for ns in &left {
        assert!(report.removed.contains(ns), "{report:?}");
    }
    assert!(report.killed.contains(&sleeper), "{report:?}");
    assert!(namespaces_with(&prefix).is_empty());
    let listed = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&listed.stdout).contains(&prefix));
    // The sleeper was re-parented to init, which reaps it; give it a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    while Path::new(&format!("/proc/{sleeper}")).exists() {
        let zombie = std::fs::read_to_string(format!("/proc/{sleeper}/stat"))
            .is_ok_and(|s| s.contains(") Z "));
        if zombie || Instant::now() > deadline {
            assert!(zombie, "process {sleeper} from the killed run still runs");
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // No TUN device of the run is left anywhere we can see (they lived in the namespaces).
    let links = Command::new("ip")
        .args(["-o", "link", "show", "type", "tun"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&links.stdout).contains("tun0"),
        "{links:?}"
    );
}

#[test]
fn not_root_gives_a_clear_error() {
    if std::env::var("FABRIC_TEST_CHILD").as_deref() == Ok("unprivileged") {
        let e = Fabric::up(two_hosts(Impairment::default()), opts(8, None)).unwrap_err();
        println!("ERROR {e}");
        assert!(matches!(e, FabricError::NotRoot(_)), "{e:?}");
        assert!(matches!(
            fabric::check_environment(),
            Err(FabricError::NotRoot(_))
        ));
        return;
    }
    if !can_run("not_root_gives_a_clear_error") {
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ])
        .arg(&exe)
        .args([
            "--exact",
            "not_root_gives_a_clear_error",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("FABRIC_TEST_CHILD", "unprivileged")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("ERROR the simulator needs root"),
        "{stdout}"
    );
    assert!(stdout.contains("sudo"), "{stdout}");
}
