#![allow(clippy::unwrap_used)]
//! Interoperability: coturn's RFC 5780 clients (`turnutils_natdiscovery`,
//! `turnutils_stunclient`) against the real `turnd` binary on loopback
//! (`--listen 127.0.0.1:0 --alt-ip 127.0.0.2`).
//!
//! coturn must be installed (`apt-get install coturn`; CI does). Without it these tests fail,
//! with a message saying so, unless `NATSCOPE_SKIP_COTURN=1` is set, in which case they print a
//! note and pass (for developers without coturn).
//!
//! `turnutils_stunclient` has no TCP option (coturn 4.6.1: `-p`, `-L`, `-f` only), so TCP is
//! checked against the same binary with a minimal client of our own.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use stun::rfc5780::{BindingRequest, BindingResponse};

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const TOOL_TIMEOUT: Duration = Duration::from_secs(30);
const READY_TIMEOUT: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------------------------
// Finding coturn.

/// The path of a coturn tool, `None` when it is missing and NATSCOPE_SKIP_COTURN=1 says to skip.
/// Missing without that variable is a test failure.
fn coturn_tool(name: &str) -> Option<PathBuf> {
    let dirs = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    let found = dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file());
    if found.is_some() {
        return found;
    }
    if std::env::var("NATSCOPE_SKIP_COTURN").is_ok_and(|v| v == "1") {
        // Straight to stderr, past the test harness's capture, so the skip is visible.
        let _ = writeln!(
            std::io::stderr(),
            "NOTE: {name} not found; skipping a coturn interop test because \
             NATSCOPE_SKIP_COTURN=1"
        );
        return None;
    }
    panic!(
        "{name} not found in PATH: install coturn to run the interop tests \
         (Debian/Ubuntu: `sudo apt-get install coturn`; CI installs it), \
         or set NATSCOPE_SKIP_COTURN=1 to skip them"
    );
}

// ---------------------------------------------------------------------------------------------
// The turnd child.

/// A running `turnd`; killed on drop, whatever the test outcome.
#[derive(Debug)]
struct Turnd {
    child: Child,
    /// The addresses from the ready line: A1:P1 A1:P2 A2:P1 A2:P2.
    addrs: Vec<SocketAddr>,
}

impl Drop for Turnd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Turnd {
    fn a1p1(&self) -> SocketAddr {
        self.addrs[0]
    }
    fn a1p2(&self) -> SocketAddr {
        self.addrs[1]
    }
    fn a2p1(&self) -> SocketAddr {
        self.addrs[2]
    }
    fn a2p2(&self) -> SocketAddr {
        self.addrs[3]
    }
}

/// Start `turnd --listen 127.0.0.1:0 --alt-ip 127.0.0.2` and read its ready line. Retried a
/// few times: another test may grab the probed port pair between the probe and the bind.
fn start_turnd() -> Turnd {
    let mut last_error = String::new();
    for _ in 0..5 {
        match try_start_turnd() {
            Ok(t) => return t,
            Err(e) => last_error = e,
        }
    }
    panic!("turnd did not start: {last_error}");
}

fn try_start_turnd() -> Result<Turnd, String> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_turnd"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--alt-ip",
            "127.0.0.2",
            "--workers",
            "1",
        ])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run turnd: {e}"))?;
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    // Own the child from here so every return path kills it.
    let mut guard = Turnd {
        child,
        addrs: vec![],
    };
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(READY_TIMEOUT).unwrap_or_default();
    let Some(rest) = line.trim().strip_prefix("turnd ready ") else {
        let _ = guard.child.kill();
        let mut err = String::new();
        let _ = BufReader::new(stderr).read_to_string(&mut err);
        return Err(format!("no ready line (got {line:?}); stderr: {err}"));
    };
    guard.addrs = rest
        .split_whitespace()
        .map(|a| a.parse().map_err(|e| format!("bad address {a:?}: {e}")))
        .collect::<Result<_, _>>()?;
    // Keep draining stderr so turnd never blocks on a full pipe.
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut BufReader::new(stderr), &mut std::io::sink());
    });
    let t = &guard;
    assert_eq!(t.addrs.len(), 4, "ready line: {line:?}");
    let (p1, p2) = (t.a1p1().port(), t.a1p2().port());
    assert_ne!(p1, p2);
    assert_eq!(t.a1p1(), SocketAddr::from(([127, 0, 0, 1], p1)));
    assert_eq!(t.a1p2(), SocketAddr::from(([127, 0, 0, 1], p2)));
    assert_eq!(t.a2p1(), SocketAddr::from(([127, 0, 0, 2], p1)));
    assert_eq!(t.a2p2(), SocketAddr::from(([127, 0, 0, 2], p2)));
    Ok(guard)
}

// ---------------------------------------------------------------------------------------------
// Running a coturn tool and reading its report.

/// Run a tool to completion (killed after `TOOL_TIMEOUT`), returning stdout and stderr.
fn run_tool(tool: &Path, args: &[String]) -> String {
    let mut child = Command::new(tool)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", tool.display()));
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        let mut e = String::new();
        let _ = err.read_to_string(&mut e);
        (s, e)
    });
    let deadline = Instant::now() + TOOL_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let (s, e) = reader.join().unwrap();
            panic!(
                "{} {args:?} did not finish within {TOOL_TIMEOUT:?} (turnd did not answer?)\n\
                 stdout:\n{s}\nstderr:\n{e}",
                tool.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (stdout, stderr) = reader.join().unwrap();
    let report = format!("{stdout}{stderr}");
    assert!(
        status.success(),
        "{} {args:?} failed ({status}):\n{report}",
        tool.display()
    );
    report
}

/// One "RFC 5780 response N" block of coturn's output.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Block {
    origin: Option<SocketAddr>,
    other: Option<SocketAddr>,
    reflexive: Option<SocketAddr>,
    local: Option<SocketAddr>,
    no_alg: bool,
}

/// The address at the end of a line such as `0: : IPv4. Response origin: : 127.0.0.1:3478`.
fn trailing_addr(line: &str) -> Option<SocketAddr> {
    line.split_whitespace().last()?.parse().ok()
}

/// Parse every "RFC 5780 response N" block, keyed by N.
fn blocks(report: &str) -> BTreeMap<u32, Block> {
    let mut all = BTreeMap::new();
    let mut current: Option<(u32, Block)> = None;
    for line in report.lines() {
        if let Some(n) = line.trim().strip_prefix("RFC 5780 response ") {
            if let Some((k, b)) = current.take() {
                all.insert(k, b);
            }
            current = Some((n.trim().parse().unwrap(), Block::default()));
            continue;
        }
        let Some((_, b)) = current.as_mut() else {
            continue;
        };
        if line.contains("No ALG: Mapped == XOR-Mapped") {
            b.no_alg = true;
        } else if line.contains("Response origin:") {
            b.origin = b.origin.or(trailing_addr(line));
        } else if line.contains("Other addr:") {
            b.other = trailing_addr(line);
        } else if line.contains("reflexive addr") {
            b.reflexive = trailing_addr(line);
        } else if line.contains("Local addr:") {
            b.local = trailing_addr(line);
        }
    }
    if let Some((k, b)) = current {
        all.insert(k, b);
    }
    all
}

fn assert_no_failures(report: &str) {
    for bad in [
        "STUN receive timeout",
        "ALG detected",
        "The response is an error",
        "not a well formed",
        "not a STUN message",
        "Cannot read the response",
        "Wrong type of response",
        "Not received mapped address",
    ] {
        assert!(!report.contains(bad), "coturn reported {bad:?}:\n{report}");
    }
}

fn port_args(t: &Turnd) -> Vec<String> {
    vec!["-p".into(), t.a1p1().port().to_string()]
}

// ---------------------------------------------------------------------------------------------
// The tests.

fn natdiscovery_mapping_and_filtering(padding: bool) {
    let Some(tool) = coturn_tool("turnutils_natdiscovery") else {
        return;
    };
    let t = start_turnd();
    let mut args = vec!["-m".into(), "-f".into()];
    if padding {
        args.push("-P".into());
    }
    args.extend(port_args(&t));
    args.extend(["-L".into(), "127.0.0.1".into(), "127.0.0.1".into()]);
    let report = run_tool(&tool, &args);
    assert_no_failures(&report);

    // Mapping: test I finds no NAT, test II (to A2:P1) sees the same mapping.
    assert!(
        report.contains("No NAT! (Endpoint Independent Mapping)"),
        "{report}"
    );
    assert!(
        report.contains("NAT with Endpoint Independent Mapping!"),
        "{report}"
    );
    // Filtering: the CHANGE-REQUEST (IP and port) answer from A2:P2 got through.
    assert!(
        report.contains("NAT with Endpoint Independent Filtering!"),
        "{report}"
    );
    assert!(!report.contains("Dependent"), "{report}");

    let b = blocks(&report);
    assert_eq!(b.len(), 4, "four RFC 5780 responses expected:\n{report}");
    let want = [
        // (response, origin, other address)
        (1, t.a1p1(), t.a2p2()), // mapping test I: plain request to A1:P1
        (2, t.a2p1(), t.a1p2()), // mapping test II: plain request to A2:P1
        (3, t.a1p1(), t.a2p2()), // filtering test I
        (4, t.a2p2(), t.a2p2()), // filtering test II: CHANGE-REQUEST ip+port at A1:P1
    ];
    for (n, origin, other) in want {
        let blk = &b[&n];
        assert_eq!(
            blk.origin,
            Some(origin),
            "response {n} RESPONSE-ORIGIN:\n{report}"
        );
        assert_eq!(
            blk.other,
            Some(other),
            "response {n} OTHER-ADDRESS:\n{report}"
        );
        assert!(
            blk.no_alg,
            "response {n}: MAPPED-ADDRESS must equal XOR-MAPPED:\n{report}"
        );
        let reflexive = blk.reflexive.unwrap();
        assert_eq!(reflexive.ip(), LOCALHOST, "response {n}:\n{report}");
        assert_eq!(
            blk.local,
            Some(reflexive),
            "response {n}: no NAT on loopback"
        );
    }
    // Each discovery runs on one local socket: the mapping is the same across its tests.
    assert_eq!(b[&1].reflexive, b[&2].reflexive, "{report}");
    assert_eq!(b[&3].reflexive, b[&4].reflexive, "{report}");
}

#[test]
fn natdiscovery_mapping_and_filtering_behaviour() {
    natdiscovery_mapping_and_filtering(false);
}

#[test]
fn natdiscovery_with_1500_byte_padding() {
    natdiscovery_mapping_and_filtering(true);
}

#[test]
fn natdiscovery_hairpinning() {
    let Some(tool) = coturn_tool("turnutils_natdiscovery") else {
        return;
    };
    let t = start_turnd();
    let mut args = vec!["-H".to_string()];
    args.extend(port_args(&t));
    args.extend(["-L".into(), "127.0.0.1".into(), "127.0.0.1".into()]);
    let report = run_tool(&tool, &args);
    assert_no_failures(&report);
    let b = blocks(&report);
    let first = &b[&1];
    assert_eq!(first.origin, Some(t.a1p1()), "{report}");
    assert_eq!(first.other, Some(t.a2p2()), "{report}");
    assert_eq!(first.reflexive.map(|a| a.ip()), Some(LOCALHOST), "{report}");
    // The second socket sent a Binding request to the first one's reflexive address and it
    // arrived: loopback "hairpins".
    assert!(
        report.contains("Received a request (maybe a successful hairpinning)"),
        "{report}"
    );
}

#[test]
fn natdiscovery_collision_from_two_local_addresses() {
    let Some(tool) = coturn_tool("turnutils_natdiscovery") else {
        return;
    };
    let t = start_turnd();
    let mut args = vec!["-c".to_string()];
    args.extend(port_args(&t));
    args.extend([
        "-L".into(),
        "127.0.0.1".into(),
        "-A".into(),
        "127.0.0.3".into(),
        "127.0.0.1".into(),
    ]);
    let report = run_tool(&tool, &args);
    assert_no_failures(&report);
    let b = blocks(&report);
    assert_eq!(b.len(), 2, "{report}");
    let (r1, r2) = (b[&1].reflexive.unwrap(), b[&2].reflexive.unwrap());
    assert_eq!(r1.ip(), LOCALHOST, "{report}");
    assert_eq!(r2.ip(), IpAddr::from([127, 0, 0, 3]), "{report}");
    assert_eq!(
        r1.port(),
        r2.port(),
        "same local port from both addresses:\n{report}"
    );
    for blk in b.values() {
        assert_eq!(blk.origin, Some(t.a1p1()), "{report}");
        assert_eq!(blk.other, Some(t.a2p2()), "{report}");
    }
}

#[test]
fn stunclient_rfc5780_sequence() {
    let Some(tool) = coturn_tool("turnutils_stunclient") else {
        return;
    };
    let t = start_turnd();
    let mut args = port_args(&t);
    args.push("127.0.0.1".into());
    let report = run_tool(&tool, &args);
    assert_no_failures(&report);
    let b = blocks(&report);
    assert_eq!(b.len(), 3, "three RFC 5780 responses expected:\n{report}");
    // 1: a plain request to A1:P1.
    assert_eq!(b[&1].origin, Some(t.a1p1()), "{report}");
    assert_eq!(b[&1].other, Some(t.a2p2()), "{report}");
    let first = b[&1].reflexive.unwrap();
    assert_eq!(first.ip(), LOCALHOST, "{report}");
    // 2: CHANGE-REQUEST (IP and port) plus RESPONSE-PORT = first port + 1, read on a socket
    // bound to that port: the answer came from A2:P2 and went to the requested port.
    assert_eq!(b[&2].origin, Some(t.a2p2()), "{report}");
    assert_eq!(b[&2].other, Some(t.a2p2()), "{report}");
    assert_eq!(
        b[&2].reflexive,
        Some(first),
        "request 2 left from the first socket"
    );
    // 3: CHANGE-REQUEST plus 1500 bytes of PADDING from the second socket.
    assert_eq!(b[&3].origin, Some(t.a2p2()), "{report}");
    assert_eq!(
        b[&3].reflexive,
        Some(SocketAddr::new(first.ip(), first.port() + 1)),
        "{report}"
    );
}

#[test]
fn stunclient_forced_rfc5780_with_local_address() {
    let Some(tool) = coturn_tool("turnutils_stunclient") else {
        return;
    };
    let t = start_turnd();
    let mut args = vec!["-f".to_string()];
    args.extend(port_args(&t));
    args.extend(["-L".into(), "127.0.0.1".into(), "127.0.0.1".into()]);
    let report = run_tool(&tool, &args);
    assert_no_failures(&report);
    let b = blocks(&report);
    assert_eq!(b.len(), 3, "{report}");
    assert_eq!(
        b.values().map(|x| x.origin).collect::<Vec<_>>(),
        [Some(t.a1p1()), Some(t.a2p2()), Some(t.a2p2())],
        "{report}"
    );
}

#[test]
fn turnd_binary_answers_over_tcp_on_every_listener() {
    // No coturn client speaks STUN over TCP; this needs only the turnd binary.
    let t = start_turnd();
    for (i, &server) in t.addrs.iter().enumerate() {
        let mut s = TcpStream::connect(server).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let me = s.local_addr().unwrap();
        let id = [i as u8 + 1; 12];
        s.write_all(&BindingRequest::default().encode(&id).unwrap())
            .unwrap();
        let mut head = [0u8; 20];
        s.read_exact(&mut head).unwrap();
        let len = stun::wire::frame_len(&head).unwrap();
        let mut frame = head.to_vec();
        frame.resize(len, 0);
        s.read_exact(&mut frame[20..]).unwrap();
        let resp = BindingResponse::parse(&frame).unwrap();
        assert!(resp.success);
        assert_eq!(resp.xor_mapped, Some(me));
        assert_eq!(resp.response_origin, Some(server));
        // OTHER-ADDRESS differs in both IP and port from the receiving listener.
        let other = resp.other_address.unwrap();
        assert_ne!(other.ip(), server.ip());
        assert_ne!(other.port(), server.port());
        assert!(t.addrs.contains(&other));
        // Over TCP, CHANGE-REQUEST is refused (RFC 5780 §6.1: UDP only).
        let change = BindingRequest {
            change_ip: true,
            ..Default::default()
        }
        .encode(&id)
        .unwrap();
        s.write_all(&change).unwrap();
        let mut head = [0u8; 20];
        s.read_exact(&mut head).unwrap();
        let mut frame = head.to_vec();
        frame.resize(stun::wire::frame_len(&head).unwrap(), 0);
        s.read_exact(&mut frame[20..]).unwrap();
        let resp = BindingResponse::parse(&frame).unwrap();
        assert_eq!(resp.error.map(|e| e.0), Some(400));
    }
}
