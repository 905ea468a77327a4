//! Fabric benchmark (run by scripts/bench_fabric.sh; needs root):
//! 1. UDP datagrams per second through one NAT hop, sender and receiver in namespaces:
//!    - the fabric with a model NAT box (a minimal port-rewriting translator: the cost of the
//!      fabric, not of the `nat` crate's model),
//!    - the fabric with a kernel NAT box (TUN in, nftables masquerade, TUN out),
//!    - the reference: a kernel-only hop, three namespaces joined by veth pairs with
//!      nftables masquerade in the middle one (no fabric at all).
//!
//!    The same sender (sendmmsg) and the same receiver (recvmmsg x64) load every path. Per
//!    path: the saturated figure (sender offers all it can; offered, received, loss and where
//!    it was lost: the receiving socket's buffer or the sender's device), the CPU time per
//!    received datagram (sender + receiver + `sim-fabric` + ksoftirqd threads, from
//!    /proc/<task>/stat), the same CPU figure with the sender paced at 20 000/s (the hop's own
//!    cost, no wasted work), and a zero-loss figure (highest paced rate with <= 0.1 % loss,
//!    RFC 2544 style, by bisection, a rate passing when one of two trials is clean). The
//!    machine may be shared: CPU per datagram is the figure least disturbed by other load.
//! 2. `Fabric::up` and `Fabric::down` times for 2, 20 and 200 hosts on one network.
//!
//! Arguments: `--quick` (CI: short runs, no zero-loss search, 2 and 20 hosts),
//! `--duration SECS`, `--no-zero-loss`.
#![allow(clippy::unwrap_used)]

use std::io::{IoSlice, IoSliceMut};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrIn, recvmmsg, sendmmsg};
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

/// The calling thread's id (first field of /proc/thread-self/stat).
fn my_tid() -> u32 {
    let s = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
    s.split_whitespace().next().unwrap().parse().unwrap()
}

/// utime + stime of a task, in clock ticks (USER_HZ). Softirq work done in a task's context
/// (veth forwarding, TUN write delivery) is charged to that task (tick accounting here).
fn task_ticks(path: &str) -> u64 {
    let Ok(s) = std::fs::read_to_string(path) else {
        return 0;
    };
    let Some(rest) = s.rsplit_once(')').map(|(_, r)| r) else {
        return 0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let t = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
    t(11) + t(12)
}

/// /proc stat paths of the threads that do a path's work outside our sender and receiver:
/// this process's `sim-fabric` thread (if any) and the ksoftirqd threads (deferred softirq).
fn helper_tasks() -> Vec<String> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let p = e.path();
        if std::fs::read_to_string(p.join("comm")).is_ok_and(|c| c.trim() == "sim-fabric") {
            v.push(p.join("stat").display().to_string());
        }
    }
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let p = e.path();
        if std::fs::read_to_string(p.join("comm")).is_ok_and(|c| c.starts_with("ksoftirqd/")) {
            v.push(p.join("stat").display().to_string());
        }
    }
    v
}

/// A named counter in /proc/<task>/net/snmp (e.g. `Udp` `RcvbufErrors`), read through a
/// task that lives in the namespace of interest.
fn snmp(tid: u32, proto: &str, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/self/task/{tid}/net/snmp")).unwrap_or_default();
    let rows: Vec<&str> = s
        .lines()
        .filter(|l| l.starts_with(&format!("{proto}:")))
        .collect();
    if rows.len() < 2 {
        return 0;
    }
    let names = rows[0].split_whitespace();
    let values = rows[1].split_whitespace();
    names
        .zip(values)
        .find(|(n, _)| *n == field)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// Sum of the transmit drops of every interface in a task's namespace (/proc/.../net/dev).
fn tx_drops(tid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/self/task/{tid}/net/dev")).unwrap_or_default();
    s.lines()
        .skip(2)
        .filter_map(|l| {
            let (_, rest) = l.split_once(':')?;
            rest.split_whitespace().nth(11)?.parse::<u64>().ok()
        })
        .sum()
}

/// One measurement: what the sender offered and the receiver got during the counted window.
#[derive(Debug, Clone, Copy, Default)]
struct Figure {
    /// Datagrams the sender handed to the kernel, per second.
    offered: f64,
    /// Datagrams the receiver read, per second.
    received: f64,
    /// Of the lost datagrams per second: dropped at the receiving socket (buffer full).
    rcvbuf_drops: f64,
    /// ... dropped by the sender's device (the TUN queue full; veth never drops here).
    dev_drops: f64,
    /// CPU time (all threads doing the path's work: sender, receiver, `sim-fabric`,
    /// ksoftirqd) per received datagram, in microseconds.
    cpu_us: f64,
}

impl Figure {
    fn loss(&self) -> f64 {
        if self.offered <= 0.0 {
            return 0.0;
        }
        (1.0 - self.received / self.offered).max(0.0)
    }
}

/// Send `payload`-byte datagrams from `snd_ns` to RECEIVER:9000 for `secs` (after a 0.3 s
/// warm-up that is not counted), as fast as possible (`rate` None: sendmmsg x64 in a loop)
/// or paced at `rate` datagrams per second; the receiver reads with recvmmsg x64.
fn measure(snd_ns: &str, rcv_ns: &str, payload: usize, secs: f64, rate: Option<f64>) -> Figure {
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let got = Arc::new(AtomicU64::new(0));
    let (tx, rx) = std::sync::mpsc::channel();
    let rcv = {
        let (ns, stop, got) = (rcv_ns.to_owned(), stop.clone(), got.clone());
        std::thread::Builder::new()
            .name("bench-rcv".into())
            .spawn(move || {
                enter(&ns);
                let s = UdpSocket::bind("0.0.0.0:9000").unwrap();
                s.set_read_timeout(Some(Duration::from_millis(100)))
                    .unwrap();
                tx.send(my_tid()).unwrap();
                const BATCH: usize = 64;
                let mut bufs = vec![[0u8; 2048]; BATCH];
                let mut headers = MultiHeaders::<SockaddrIn>::preallocate(BATCH, None);
                while !stop.load(Ordering::Relaxed) {
                    let mut iovs: Vec<[IoSliceMut<'_>; 1]> =
                        bufs.iter_mut().map(|b| [IoSliceMut::new(b)]).collect();
                    if let Ok(r) = recvmmsg(
                        s.as_raw_fd(),
                        &mut headers,
                        iovs.iter_mut(),
                        MsgFlags::MSG_WAITFORONE,
                        None,
                    ) {
                        got.fetch_add(r.count() as u64, Ordering::Relaxed);
                    }
                }
            })
            .unwrap()
    };
    let rcv_tid = rx.recv().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let snd = {
        let (ns, stop, sent) = (snd_ns.to_owned(), stop.clone(), sent.clone());
        std::thread::Builder::new()
            .name("bench-snd".into())
            .spawn(move || {
                enter(&ns);
                let s = UdpSocket::bind("0.0.0.0:0").unwrap();
                s.connect(SocketAddrV4::new(RECEIVER.into(), 9000)).unwrap();
                tx.send(my_tid()).unwrap();
                let data = vec![0x42u8; payload];
                // Paced: small bursts so that no queue on the path sees more than the offered
                // rate allows.
                let batch: usize = if rate.is_some() { 8 } else { 64 };
                let slices: Vec<[IoSlice<'_>; 1]> =
                    (0..batch).map(|_| [IoSlice::new(&data)]).collect();
                let addrs: Vec<Option<SockaddrIn>> = vec![None; batch];
                let mut headers = MultiHeaders::<SockaddrIn>::preallocate(batch, None);
                let t0 = Instant::now();
                let mut total = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    if let Some(r) = rate {
                        let due = t0 + Duration::from_secs_f64(total as f64 / r);
                        let now = Instant::now();
                        if due > now {
                            std::thread::sleep(due - now);
                            continue;
                        }
                    }
                    // ENOBUFS and the like: the path is saturated; keep offering load.
                    if let Ok(n) = sendmmsg(
                        s.as_raw_fd(),
                        &mut headers,
                        &slices,
                        &addrs,
                        [],
                        MsgFlags::empty(),
                    )
                    .map(|r| r.count())
                    {
                        total += n as u64;
                        sent.fetch_add(n as u64, Ordering::Relaxed);
                    }
                }
            })
            .unwrap()
    };
    let snd_tid = rx.recv().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let mut tasks = helper_tasks();
    tasks.push(format!("/proc/self/task/{snd_tid}/stat"));
    tasks.push(format!("/proc/self/task/{rcv_tid}/stat"));
    let snap = || {
        (
            sent.load(Ordering::SeqCst),
            got.load(Ordering::SeqCst),
            snmp(rcv_tid, "Udp", "RcvbufErrors"),
            tx_drops(snd_tid),
            tasks.iter().map(|t| task_ticks(t)).sum::<u64>(),
        )
    };
    let a = snap();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(secs));
    let b = snap();
    let elapsed = t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::SeqCst);
    snd.join().unwrap();
    rcv.join().unwrap();
    let per_s = |x: u64, y: u64| y.saturating_sub(x) as f64 / elapsed;
    // USER_HZ, the unit of /proc/<pid>/stat times, is 100 on Linux.
    let ticks_per_s = 100.0;
    let got_n = b.1.saturating_sub(a.1).max(1) as f64;
    Figure {
        offered: per_s(a.0, b.0),
        received: per_s(a.1, b.1),
        rcvbuf_drops: per_s(a.2, b.2),
        dev_drops: per_s(a.3, b.3),
        cpu_us: b.4.saturating_sub(a.4) as f64 / ticks_per_s * 1e6 / got_n,
    }
}

/// Highest paced rate with at most 0.1 % loss (RFC 2544 style throughput), by bisection
/// between 0 and a bit above the saturated receive rate. A rate passes when one of two trials
/// is clean (RFC 2544 repeats trials): on a shared 2-core VM a single scheduling stall of the
/// receiver for a few milliseconds overflows its socket buffer on any path, and one such stall
/// in one trial would otherwise decide the figure.
fn zero_loss(snd_ns: &str, rcv_ns: &str, payload: usize, secs: f64, saturated: f64) -> f64 {
    let clean = |r: f64| {
        (0..2).find_map(|_| {
            let f = measure(snd_ns, rcv_ns, payload, secs, Some(r));
            (f.loss() <= 0.001 && f.offered >= 0.97 * r).then_some(f.received)
        })
    };
    let top = saturated * 1.15;
    if let Some(got) = clean(top) {
        return got;
    }
    let (mut lo, mut hi, mut best) = (0.0f64, top, 0.0f64);
    for _ in 0..5 {
        let r = (lo + hi) / 2.0;
        match clean(r) {
            Some(got) => {
                best = best.max(got);
                lo = r;
            }
            None => hi = r,
        }
    }
    best
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

/// One path through a NAT hop, set up for the duration of a measurement.
enum Path {
    Fabric(Fabric),
    Veth(VethHop),
}

impl Path {
    fn up(which: usize) -> Self {
        match which {
            0 => Path::Fabric(
                Fabric::up(
                    one_hop(NatKind::Model(Box::new(OneFlowNat {
                        inside: None,
                        external: [203, 0, 113, 1].into(),
                        port: 40_000,
                    }))),
                    FabricOptions::new(),
                )
                .unwrap(),
            ),
            1 => Path::Fabric(
                Fabric::up(
                    one_hop(NatKind::Kernel {
                        random_fully: false,
                    }),
                    FabricOptions::new(),
                )
                .unwrap(),
            ),
            _ => Path::Veth(VethHop::up(&fabric::run_prefix())),
        }
    }

    fn ends(&self) -> (String, String) {
        match self {
            Path::Fabric(f) => (
                f.netns("snd").unwrap().to_owned(),
                f.netns("rcv").unwrap().to_owned(),
            ),
            Path::Veth(h) => (h.names[0].clone(), h.names[2].clone()),
        }
    }

    fn down(self) {
        if let Path::Fabric(f) = self {
            f.down().unwrap();
        }
    }
}

const PATHS: [&str; 3] = ["fabric model", "fabric kernel", "veth kernel"];

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let secs = args
        .iter()
        .position(|a| a == "--duration")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(if quick { 0.5 } else { 3.0 });
    let zl = !quick && !args.iter().any(|a| a == "--no-zero-loss");
    if let Err(e) = fabric::check_environment() {
        eprintln!("bench_fabric: {e}");
        std::process::exit(2);
    }
    println!("== UDP datagrams per second through one NAT hop ({secs} s per figure)");
    println!("   saturated: the sender offers all it can (sendmmsg x64 in a loop);");
    println!("   the receiver reads with recvmmsg x64; rx = datagrams received per second;");
    println!("   loss = 1 - rx/offered; rcvbuf = dropped at the receiving socket per second;");
    println!("   dev = dropped by the sender's device (TUN queue full) per second;");
    println!("   cpu = CPU us per received datagram (sender + receiver + sim-fabric + ksoftirqd);");
    println!("   cpu@20k = the same, the sender paced at 20000/s (no loss: the hop's own cost);");
    if zl {
        println!("   zero-loss: highest paced rate with <= 0.1 % loss (RFC 2544 style, bisection)");
    }
    println!(
        "{:>7}  {:<13}  {:>9}  {:>9}  {:>6}  {:>8}  {:>8}  {:>6}  {:>7}  {:>9}",
        "payload", "path", "offered", "rx", "loss", "rcvbuf", "dev", "cpu", "cpu@20k", "zero-loss"
    );
    let zl_secs = (secs / 2.0).max(0.5);
    for payload in [100usize, 1200] {
        let mut figs = Vec::new();
        for (i, name) in PATHS.iter().enumerate() {
            let path = Path::up(i);
            let (snd, rcv) = path.ends();
            let f = measure(&snd, &rcv, payload, secs, None);
            let paced = measure(&snd, &rcv, payload, secs, Some(20_000.0));
            let z = if zl {
                zero_loss(&snd, &rcv, payload, zl_secs, f.received)
            } else {
                f64::NAN
            };
            path.down();
            println!(
                "{payload:>7}  {name:<13}  {:>9.0}  {:>9.0}  {:>5.1}%  {:>8.0}  {:>8.0}  {:>6.2}  {:>7.2}  {:>9.0}",
                f.offered,
                f.received,
                f.loss() * 100.0,
                f.rcvbuf_drops,
                f.dev_drops,
                f.cpu_us,
                paced.cpu_us,
                z
            );
            figs.push((f, z, paced));
        }
        let (m, k, v) = (figs[0], figs[1], figs[2]);
        println!(
            "{payload:>7}  fabric/veth: saturated rx model {:.2}x kbox {:.2}x; zero-loss model {:.2}x kbox {:.2}x; cpu@20k veth/model {:.2}x",
            m.0.received / v.0.received,
            k.0.received / v.0.received,
            m.1 / v.1,
            k.1 / v.1,
            v.2.cpu_us / m.2.cpu_us,
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
