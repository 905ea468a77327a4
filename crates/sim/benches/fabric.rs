//! Fabric benchmark (run by scripts/bench_fabric.sh; needs root):
//! 1. UDP packets per second through one NAT hop, sender and receiver in namespaces:
//!    - the fabric with a model NAT box (a minimal port-rewriting translator: the cost of the
//!      fabric, not of the `nat` crate's model),
//!    - the fabric with a kernel NAT box (TUN in, nftables masquerade, TUN out),
//!    - the reference: a kernel-only hop, three namespaces joined by veth pairs with
//!      nftables masquerade in the middle one (no fabric at all).
//!
//!    The same sender (sendmmsg, 64 datagrams per call, as fast as it can) and the same
//!    receiver (one recv per datagram) load every path; received datagrams per second count.
//! 2. `Fabric::up` and `Fabric::down` times for 2, 20 and 200 hosts on one network.
//!
//! Arguments: `--quick` (CI: short runs, 2 and 20 hosts), `--duration SECS`.
#![allow(clippy::unwrap_used)]

use std::io::IoSlice;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrIn, sendmmsg};
use sim::fabric::{self, Fabric, FabricOptions};
use sim::topology::{
    Host, Impairment, Ipv4Prefix, NatBox, NatKind, Network, Side, Topology, Translator, Verdict,
};

/// Rewrites the source (outbound) or destination (inbound) address and port with incremental
/// checksum updates (RFC 1624); one mapping, no table lookups worth measuring.
#[derive(Debug)]
struct OneFlowNat {
    inside: Option<(Ipv4Addr, u16)>,
    external: Ipv4Addr,
    port: u16,
}

fn csum_replace(ck: u16, old: &[u8], new: &[u8]) -> u16 {
    let mut sum = u32::from(!ck);
    for c in old.chunks(2) {
        sum += u32::from(!u16::from_be_bytes([c[0], c[1]]));
    }
    for c in new.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn rewrite(p: &mut [u8], addr_at: usize, port_at: usize, ip: Ipv4Addr, port: u16) {
    let ihl = usize::from(p[0] & 0x0f) * 4;
    let old_ip: [u8; 4] = p[addr_at..addr_at + 4].try_into().unwrap();
    let old_port: [u8; 2] = p[ihl + port_at..ihl + port_at + 2].try_into().unwrap();
    let (new_ip, new_port) = (ip.octets(), port.to_be_bytes());
    let ipck = u16::from_be_bytes([p[10], p[11]]);
    p[10..12].copy_from_slice(&csum_replace(ipck, &old_ip, &new_ip).to_be_bytes());
    let uck = u16::from_be_bytes([p[ihl + 6], p[ihl + 7]]);
    if uck != 0 {
        let mut old = [0u8; 6];
        old[..4].copy_from_slice(&old_ip);
        old[4..].copy_from_slice(&old_port);
        let mut new = [0u8; 6];
        new[..4].copy_from_slice(&new_ip);
        new[4..].copy_from_slice(&new_port);
        p[ihl + 6..ihl + 8].copy_from_slice(&csum_replace(uck, &old, &new).to_be_bytes());
    }
    p[addr_at..addr_at + 4].copy_from_slice(&new_ip);
    p[ihl + port_at..ihl + port_at + 2].copy_from_slice(&new_port);
}

impl Translator for OneFlowNat {
    fn process(&mut self, _now: Instant, from: Side, p: &mut [u8]) -> Verdict {
        if p.len() < 28 || p[9] != 17 || usize::from(p[0] & 0x0f) * 4 + 8 > p.len() {
            return Verdict::Drop("unsupported");
        }
        let ihl = usize::from(p[0] & 0x0f) * 4;
        match from {
            Side::Inside => {
                let src = Ipv4Addr::new(p[12], p[13], p[14], p[15]);
                let sport = u16::from_be_bytes([p[ihl], p[ihl + 1]]);
                self.inside = Some((src, sport));
                rewrite(p, 12, 0, self.external, self.port);
                Verdict::Forward(Side::Outside)
            }
            Side::Outside => match self.inside {
                Some((ip, port)) => {
                    rewrite(p, 16, 2, ip, port);
                    Verdict::Forward(Side::Inside)
                }
                None => Verdict::Drop("no-mapping"),
            },
        }
    }
}

const SENDER: [u8; 4] = [192, 168, 1, 10];
const RECEIVER: [u8; 4] = [203, 0, 113, 10];

fn one_hop(kind: NatKind) -> Topology {
    let net = |name: &str, a: [u8; 4]| Network {
        name: name.into(),
        prefixes: vec![Ipv4Prefix {
            addr: a.into(),
            len: 24,
        }],
    };
    Topology {
        name: "bench".into(),
        networks: vec![
            net("internet", [203, 0, 113, 0]),
            net("lan", [192, 168, 1, 0]),
        ],
        hosts: vec![
            Host {
                name: "snd".into(),
                network: 1,
                addresses: vec![SENDER.into()],
                link: Impairment::default(),
            },
            Host {
                name: "rcv".into(),
                network: 0,
                addresses: vec![RECEIVER.into()],
                link: Impairment::default(),
            },
        ],
        nats: vec![NatBox {
            name: "nat".into(),
            inside: 1,
            outside: 0,
            inside_addr: [192, 168, 1, 1].into(),
            external: vec![[203, 0, 113, 1].into()],
            kind,
            inside_link: Impairment::default(),
            outside_link: Impairment::default(),
        }],
    }
}

fn enter(ns: &str) {
    let f = std::fs::File::open(format!("/run/netns/{ns}")).unwrap();
    nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
}

/// Datagrams per second received in `rcv_ns` while `snd_ns` sends `payload`-byte datagrams
/// to RECEIVER:9000 for `secs` (after a 0.3 s warm-up that is not counted).
fn measure(snd_ns: &str, rcv_ns: &str, payload: usize, secs: f64) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let counting = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let (tx, rx) = std::sync::mpsc::channel();
    let rcv = {
        let (ns, stop, counting, count) = (
            rcv_ns.to_owned(),
            stop.clone(),
            counting.clone(),
            count.clone(),
        );
        std::thread::spawn(move || {
            enter(&ns);
            let s = UdpSocket::bind("0.0.0.0:9000").unwrap();
            s.set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            tx.send(()).unwrap();
            let mut buf = [0u8; 2048];
            let mut local = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if s.recv(&mut buf).is_ok() && counting.load(Ordering::Relaxed) {
                    local += 1;
                }
            }
            count.store(local, Ordering::SeqCst);
        })
    };
    rx.recv().unwrap();
    let snd = {
        let (ns, stop) = (snd_ns.to_owned(), stop.clone());
        std::thread::spawn(move || {
            enter(&ns);
            let s = UdpSocket::bind("0.0.0.0:0").unwrap();
            s.connect(SocketAddrV4::new(RECEIVER.into(), 9000)).unwrap();
            let data = vec![0x42u8; payload];
            const BATCH: usize = 64;
            let slices: Vec<[IoSlice<'_>; 1]> = (0..BATCH).map(|_| [IoSlice::new(&data)]).collect();
            let addrs: Vec<Option<SockaddrIn>> = vec![None; BATCH];
            let mut headers = MultiHeaders::<SockaddrIn>::preallocate(BATCH, None);
            while !stop.load(Ordering::Relaxed) {
                // ENOBUFS and the like: the path is saturated; keep offering load.
                let _ = sendmmsg(
                    s.as_raw_fd(),
                    &mut headers,
                    &slices,
                    &addrs,
                    [],
                    MsgFlags::empty(),
                )
                .map(|r| r.count());
            }
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    counting.store(true, Ordering::SeqCst);
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(secs));
    counting.store(false, Ordering::SeqCst);
    let elapsed = t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::SeqCst);
    snd.join().unwrap();
    rcv.join().unwrap();
    count.load(Ordering::SeqCst) as f64 / elapsed
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The kernel-only reference hop: `<p>-ks` (sender) -veth- `<p>-kr` (nftables masquerade)
/// -veth- `<p>-kd` (receiver). Namespace names follow the fabric's pattern, so `sim clean`
/// removes them if this program dies.
struct VethHop {
    names: [String; 3],
}

impl VethHop {
    fn up(prefix: &str) -> Self {
        let names = [
            format!("{prefix}-ks"),
            format!("{prefix}-kr"),
            format!("{prefix}-kd"),
        ];
        let [s, r, d] = &names;
        for n in &names {
            ip(&["netns", "add", n]);
        }
        ip(&[
            "-n", s, "link", "add", "vs", "type", "veth", "peer", "name", "ri", "netns", r,
        ]);
        ip(&[
            "-n", d, "link", "add", "vd", "type", "veth", "peer", "name", "ro", "netns", r,
        ]);
        ip(&["-n", s, "addr", "add", "192.168.1.10/24", "dev", "vs"]);
        ip(&["-n", r, "addr", "add", "192.168.1.1/24", "dev", "ri"]);
        ip(&["-n", r, "addr", "add", "203.0.113.1/24", "dev", "ro"]);
        ip(&["-n", d, "addr", "add", "203.0.113.10/24", "dev", "vd"]);
        for (n, dev) in [
            (s, "vs"),
            (r, "ri"),
            (r, "ro"),
            (d, "vd"),
            (s, "lo"),
            (r, "lo"),
            (d, "lo"),
        ] {
            ip(&["-n", n, "link", "set", dev, "up"]);
        }
        ip(&["-n", s, "route", "add", "default", "via", "192.168.1.1"]);
        ip(&["-n", d, "route", "add", "default", "via", "203.0.113.1"]);
        ip(&["netns", "exec", r, "sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        let mut nft = Command::new("ip")
            .args(["netns", "exec", r, "nft", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        nft.stdin
            .take()
            .unwrap()
            .write_all(b"table ip nat { chain post { type nat hook postrouting priority srcnat; oifname \"ro\" masquerade; }; }\n")
            .unwrap();
        assert!(nft.wait().unwrap().success());
        Self { names }
    }
}

impl Drop for VethHop {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

fn setup_teardown(n: usize) -> (Duration, Duration) {
    let hosts = (0..n)
        .map(|i| Host {
            name: format!("h{i}"),
            network: 0,
            addresses: vec![Ipv4Addr::new(10, 77, (i / 250) as u8, (i % 250 + 1) as u8)],
            link: Impairment::default(),
        })
        .collect();
    let topo = Topology {
        name: "scale".into(),
        networks: vec![Network {
            name: "lan".into(),
            prefixes: vec![Ipv4Prefix {
                addr: [10, 77, 0, 0].into(),
                len: 16,
            }],
        }],
        hosts,
        nats: vec![],
    };
    let t0 = Instant::now();
    let f = Fabric::up(
        topo,
        FabricOptions {
            prefix: fabric::run_prefix(),
            pcap_dir: None,
            seed: 0,
        },
    )
    .unwrap();
    let up = t0.elapsed();
    let t1 = Instant::now();
    f.down().unwrap();
    (up, t1.elapsed())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let secs = args
        .iter()
        .position(|a| a == "--duration")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(if quick { 0.5 } else { 3.0 });
    if let Err(e) = fabric::check_environment() {
        eprintln!("bench_fabric: {e}");
        std::process::exit(2);
    }
    println!(
        "== packets per second through one NAT hop (UDP; sender: sendmmsg x64; {secs} s per figure)"
    );
    println!(
        "{:>8}  {:>14}  {:>14}  {:>14}  {:>8}  {:>8}",
        "payload", "fabric model", "fabric kernel", "veth kernel", "model/k", "kbox/k"
    );
    for payload in [100usize, 1200] {
        let model = {
            let f = Fabric::up(
                one_hop(NatKind::Model(Box::new(OneFlowNat {
                    inside: None,
                    external: [203, 0, 113, 1].into(),
                    port: 40_000,
                }))),
                FabricOptions::new(),
            )
            .unwrap();
            let pps = measure(
                f.netns("snd").unwrap(),
                f.netns("rcv").unwrap(),
                payload,
                secs,
            );
            f.down().unwrap();
            pps
        };
        let kbox = {
            let f = Fabric::up(
                one_hop(NatKind::Kernel {
                    random_fully: false,
                }),
                FabricOptions::new(),
            )
            .unwrap();
            let pps = measure(
                f.netns("snd").unwrap(),
                f.netns("rcv").unwrap(),
                payload,
                secs,
            );
            f.down().unwrap();
            pps
        };
        let veth = {
            let hop = VethHop::up(&fabric::run_prefix());
            measure(&hop.names[0], &hop.names[2], payload, secs)
        };
        println!(
            "{payload:>8}  {model:>14.0}  {kbox:>14.0}  {veth:>14.0}  {:>7.2}x  {:>7.2}x",
            model / veth,
            kbox / veth
        );
    }
    println!("== Fabric::up / Fabric::down, N hosts on one network");
    let sizes: &[usize] = if quick { &[2, 20] } else { &[2, 20, 200] };
    for &n in sizes {
        let (up, down) = setup_teardown(n);
        println!(
            "{n:>5} hosts  up {:>8.1} ms  down {:>8.1} ms",
            up.as_secs_f64() * 1e3,
            down.as_secs_f64() * 1e3
        );
    }
}
