#![allow(clippy::unwrap_used)]
//! turnd's per-source limits on real loopback sockets: one rate limiter shared by every UDP
//! worker of every listener and by TCP, the per-source TCP connection cap, the rate limiter at
//! TCP accept, and the accept loop backing off (instead of spinning) when out of descriptors.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};
use stun::rfc5780::{BindingRequest, BindingResponse};
use stun::wire;
use turn::config::{FileConfig, Flags};
use turn::server::{RunningServer, Stats};

const A1: [u8; 4] = [127, 0, 0, 1];
const A2: [u8; 4] = [127, 0, 0, 2];

fn spawn(flags: Flags) -> RunningServer {
    let (cfg, _) = turn::config::merge(&flags, FileConfig::default()).unwrap();
    turn::server::spawn(cfg).unwrap()
}

fn binding(n: u64) -> Vec<u8> {
    let mut id = [0x5a; 12];
    id[4..].copy_from_slice(&n.to_be_bytes());
    BindingRequest::default().encode(&id).unwrap()
}

/// (received, answered, rate_limited)
fn counts(s: &Stats) -> (u64, u64, u64) {
    (
        s.received.load(Ordering::SeqCst),
        s.answered.load(Ordering::SeqCst),
        s.rate_limited.load(Ordering::SeqCst),
    )
}

fn settle(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Success responses already queued on `s` (the server counted them after sending, so they
/// are all there once the counters say so).
fn drain(s: &UdpSocket) -> u64 {
    s.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 2048];
    let mut n = 0;
    while let Ok(len) = s.recv(&mut buf) {
        assert!(BindingResponse::parse(&buf[..len]).unwrap().success);
        n += 1;
    }
    n
}

/// Answers allowed for a limiter of `burst` refilled at `rate`/s over `elapsed`: the burst,
/// one token of slack, and what the clock refilled (on a quick run, burst + 2).
fn most(burst: u64, rate: u64, elapsed: Duration) -> u64 {
    let refill = (elapsed.as_secs_f64() * rate as f64).ceil() as u64;
    (burst + 2).max(burst + refill + 1)
}

fn tcp_from(ip: [u8; 4], to: SocketAddr) -> TcpStream {
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.bind(&SocketAddr::from((ip, 0)).into()).unwrap();
    s.connect(&to.into()).unwrap();
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// Read one STUN frame; `None` if the server closed (EOF or reset) first.
fn read_frame(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut v = vec![0u8; 4];
    match s.read_exact(&mut v) {
        Ok(()) => {}
        Err(e) if closed_error(&e) => return None,
        Err(e) => panic!("no frame and not closed: {e}"),
    }
    let len = wire::frame_len(&v).unwrap();
    v.resize(len, 0);
    s.read_exact(&mut v[4..]).unwrap();
    Some(v)
}

fn closed_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::UnexpectedEof
            | ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::BrokenPipe
    )
}

/// Ask one Binding over `s`: true if answered, false if the server closed the connection.
fn ask_tcp(s: &mut TcpStream, n: u64) -> bool {
    match s.write_all(&binding(n)) {
        Ok(()) => {}
        Err(e) if closed_error(&e) => return false,
        Err(e) => panic!("write: {e}"),
    }
    match read_frame(s) {
        Some(f) => {
            assert!(BindingResponse::parse(&f).unwrap().success);
            true
        }
        None => false,
    }
}

/// B: all four RFC 5780 listeners with two workers each (eight UDP sockets, and so eight
/// limiters before the limiter was shared): a source flooding them from one socket and from
/// sixteen source ports gets the burst and the refill, once.
#[test]
fn one_rate_limit_for_every_listener_worker_and_source_port() {
    let server = spawn(Flags {
        listen: Some("127.0.0.1:0".parse().unwrap()),
        alt_ip: Some(IpAddr::from(A2)),
        workers: Some(2),
        rate_limit: Some(5),
        rate_burst: Some(10),
        no_tcp: true,
        ..Default::default()
    });
    let listeners: Vec<SocketAddr> = server.addresses().iter().map(|(_, a)| *a).collect();
    assert_eq!(listeners.len(), 4);
    let single = UdpSocket::bind(SocketAddr::from((A1, 0))).unwrap();
    let many: Vec<UdpSocket> = (0..16)
        .map(|_| UdpSocket::bind(SocketAddr::from((A1, 0))).unwrap())
        .collect();

    let start = Instant::now();
    let mut sent = 0u64;
    for round in 0..10 {
        for &to in &listeners {
            single.send_to(&binding(sent), to).unwrap();
            sent += 1;
        }
        for (k, s) in many.iter().enumerate() {
            if round < 4 {
                s.send_to(&binding(sent), listeners[(k + round) % 4])
                    .unwrap();
                sent += 1;
            }
        }
    }
    let stats = server.stats();
    settle("every datagram answered or limited", || {
        let (received, answered, limited) = counts(stats);
        received == sent && answered + limited == sent
    });
    let elapsed = start.elapsed();
    let answers = drain(&single) + many.iter().map(drain).sum::<u64>();
    let most = most(10, 5, elapsed);
    assert!(
        (10..=most).contains(&answers),
        "{answers} answers to {sent} requests over 4 listeners x 2 workers and 17 source \
         ports with --rate-limit 5 --rate-burst 10: wanted 10..={most} (took {elapsed:?})"
    );
    assert_eq!(counts(stats).1, answers);
    server.shutdown();
}

/// B: TCP takes its tokens from the same limiter as UDP (it had a limiter of its own).
#[test]
fn tcp_and_udp_share_the_rate_limit() {
    let server = spawn(Flags {
        listen: Some("127.0.0.1:0".parse().unwrap()),
        workers: Some(1),
        rate_limit: Some(5),
        rate_burst: Some(10),
        ..Default::default()
    });
    let addr = server.primary();
    let stats = server.stats();
    let start = Instant::now();

    // TCP first: twelve frames in one write; the connection is closed at the first refused.
    let mut tcp = tcp_from(A1, addr);
    let frames: Vec<u8> = (0..12).flat_map(binding).collect();
    tcp.write_all(&frames).unwrap();
    let mut tcp_answers = 0u64;
    while let Some(f) = read_frame(&mut tcp) {
        assert!(BindingResponse::parse(&f).unwrap().success);
        tcp_answers += 1;
    }
    let before = counts(stats);

    // Then UDP from the same address.
    let udp = UdpSocket::bind(SocketAddr::from((A1, 0))).unwrap();
    const SENT: u64 = 20;
    for i in 0..SENT {
        udp.send_to(&binding(100 + i), addr).unwrap();
    }
    settle("every datagram answered or limited", || {
        let (received, answered, limited) = counts(stats);
        received - before.0 == SENT && (answered - before.1) + (limited - before.2) == SENT
    });
    let elapsed = start.elapsed();
    let udp_answers = drain(&udp);
    let most = most(10, 5, elapsed);
    let total = tcp_answers + udp_answers;
    assert!(
        (9..=most).contains(&total),
        "{tcp_answers} TCP + {udp_answers} UDP answers from one source with --rate-burst 10: \
         wanted 9..={most} in total (took {elapsed:?})"
    );
    server.shutdown();
}

/// C1: one source gets at most `max_tcp_per_source` (16) connections, the rest are closed at
/// once; another source is still served, and a freed place can be taken again.
#[test]
fn tcp_connections_are_capped_per_source() {
    let server = spawn(Flags {
        listen: Some("127.0.0.1:0".parse().unwrap()),
        no_udp: true,
        rate_limit: Some(0),
        ..Default::default()
    });
    let addr = server.primary();
    let mut conns: Vec<TcpStream> = (0..20).map(|_| tcp_from(A1, addr)).collect();
    assert_eq!(conns.len(), 20);
    let start = Instant::now();
    let mut answered = vec![];
    for (i, c) in conns.iter_mut().enumerate() {
        if ask_tcp(c, i as u64) {
            answered.push(i);
        }
    }
    let elapsed = start.elapsed();
    assert_eq!(
        answered.len(),
        16,
        "connections served from one source (answered: {answered:?})"
    );
    assert!(
        elapsed < Duration::from_secs(2),
        "the refused connections were not closed promptly: {elapsed:?}"
    );
    assert_eq!(server.stats().tcp_refused.load(Ordering::SeqCst), 4);

    // Another source is not affected.
    let mut other = tcp_from(A2, addr);
    assert!(ask_tcp(&mut other, 100), "second source refused");

    // The sixteen are still served; closing one frees a place.
    let mut kept: Vec<TcpStream> = conns
        .into_iter()
        .enumerate()
        .filter(|(i, _)| answered.contains(i))
        .map(|(_, c)| c)
        .collect();
    assert!(ask_tcp(&mut kept[0], 200));
    drop(kept.pop());
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let mut again = tcp_from(A1, addr);
        if ask_tcp(&mut again, 300) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the freed place was never given back"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    server.shutdown();
}

/// C2: the shared rate limiter is checked when a connection is accepted: a source over its
/// rate has its connections closed at once, before it sends anything.
#[test]
fn tcp_accept_is_rate_limited() {
    let server = spawn(Flags {
        listen: Some("127.0.0.1:0".parse().unwrap()),
        no_udp: true,
        rate_limit: Some(1),
        rate_burst: Some(3),
        ..Default::default()
    });
    let addr = server.primary();
    let start = Instant::now();
    let conns: Vec<TcpStream> = (0..6).map(|_| tcp_from(A1, addr)).collect();
    for c in &conns {
        c.set_nonblocking(true).unwrap();
    }
    let open = |c: &TcpStream| {
        let mut b = [0u8; 1];
        matches!((&*c).read(&mut b), Err(e) if e.kind() == ErrorKind::WouldBlock)
    };
    // (refusals counted, connections seen closed): a refusal is counted before the reset.
    let stats = server.stats();
    let snapshot = || {
        let refused = stats.rate_limited.load(Ordering::SeqCst);
        (refused, conns.iter().filter(|c| !open(c)).count() as u64)
    };
    settle("the connections over the burst refused and closed", || {
        let (refused, closed) = snapshot();
        refused >= 2 && closed == refused
    });
    // Let the server finish with the last of them, then take a settled count.
    std::thread::sleep(Duration::from_millis(100));
    settle("a settled count", || {
        let (refused, closed) = snapshot();
        closed == refused
    });
    let elapsed = start.elapsed();
    let still_open = 6 - snapshot().1;
    let most = 3 + (elapsed.as_secs_f64().ceil() as u64);
    assert!(
        (3..=most).contains(&still_open),
        "{still_open} of 6 connections kept with --rate-limit 1 --rate-burst 3 (wanted 3..={most})"
    );
    server.shutdown();
}

/// A `turnd` child; killed on drop.
struct TurndChild(Child);

impl Drop for TurndChild {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime is field 14, stime field 15.
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

fn clock_ticks_per_second() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

/// C3: out of file descriptors, `accept` fails with EMFILE while the pending connection keeps
/// the listener readable: the loop must pause, not spin at 100% CPU, log the failure once in a
/// while, not once per attempt, and serve again once descriptors are free.
#[test]
fn accept_errors_back_off_instead_of_spinning() {
    // turnd itself needs about 15 descriptors: 32 leaves room for a handful of connections.
    let mut child = Command::new("sh")
        .args([
            "-c",
            "ulimit -n 32 && exec \"$0\" \"$@\"",
            env!("CARGO_BIN_EXE_turnd"),
            "--listen",
            "127.0.0.1:0",
            "--no-udp",
            "--rate-limit",
            "0",
            "--max-tcp-per-source",
            "0",
        ])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let child = TurndChild(child);
    let pid = child.0.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let log = Arc::new(Mutex::new(Vec::<String>::new()));
    {
        let log = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                log.lock().unwrap().push(line);
            }
        });
    }
    let ready = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    let addr: SocketAddr = ready
        .trim()
        .strip_prefix("turnd ready ")
        .unwrap_or_else(|| panic!("no ready line: {ready:?}; log: {:?}", log.lock().unwrap()))
        .parse()
        .unwrap();

    // More connections than turnd has descriptors for; they all complete in the kernel.
    let flood = Instant::now();
    let mut conns: Vec<TcpStream> = (0..40).map(|_| tcp_from(A1, addr)).collect();
    let failures = || {
        log.lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains("TCP accept failed"))
            .count()
    };
    // Give the server time to take what it can and hit the limit.
    std::thread::sleep(Duration::from_millis(300));
    let window = Duration::from_secs(1);
    let (t0, c0) = (Instant::now(), cpu_ticks(pid));
    std::thread::sleep(window);
    let (t1, c1) = (Instant::now(), cpu_ticks(pid));
    let cpu = Duration::from_secs_f64((c1 - c0) as f64 / clock_ticks_per_second() as f64);
    let wall = t1 - t0;
    assert!(
        cpu < wall / 10,
        "turnd used {cpu:?} of CPU in {wall:?} while out of descriptors: spinning on accept"
    );
    let logged = failures() as u64;
    // One line a second at most (the first at once).
    let most = flood.elapsed().as_secs_f64().ceil() as u64 + 1;
    assert!(
        (1..=most).contains(&logged),
        "{logged} accept-failure log lines in {:?} (wanted 1..={most})",
        flood.elapsed()
    );

    // Free the descriptors: the backlog drains and a new connection is served.
    conns.clear();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut c = tcp_from(A1, addr);
        if ask_tcp(&mut c, 1) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not serving after descriptors were freed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(child);
}
