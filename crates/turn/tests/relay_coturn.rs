#![allow(clippy::unwrap_used)]
//! Interoperability of turnd's TURN relay with coturn's test client: `turnutils_uclient`
//! allocates through the real `turnd` binary over UDP, TCP and TLS, with channels (its default)
//! and with Send indications (`-s`), and relays to `turnutils_peer`, an echo peer on loopback.
//! The bytes sent must all come back (`tot_send_msgs == tot_recv_msgs`, lost 0), as in coturn's
//! own tests; turnd's metrics must show them relayed both ways.
//!
//! Loopback peers are denied by turnd's default policy, so these runs add
//! `--allow-peer 127.0.0.0/8`. uclient runs with `-c` (no RTCP allocation): its RTCP mode asks
//! for EVEN-PORT with the reservation bit, which turnd answers with 508 (reservations are not
//! implemented; the brief allows that answer).
//!
//! coturn must be installed (`apt-get install coturn`). Without it these tests fail, unless
//! `NATSCOPE_SKIP_COTURN=1` is set, in which case they say so and pass.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const TOOL_TIMEOUT: Duration = Duration::from_secs(60);

fn coturn_tool(name: &str) -> Option<PathBuf> {
    let dirs = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    let found = dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file());
    if found.is_some() {
        return found;
    }
    if std::env::var("NATSCOPE_SKIP_COTURN").is_ok_and(|v| v == "1") {
        let _ = writeln!(
            std::io::stderr(),
            "NOTE: {name} not found; skipping because NATSCOPE_SKIP_COTURN=1"
        );
        return None;
    }
    panic!(
        "{name} not found in PATH: install coturn (`apt-get install coturn`) or set \
         NATSCOPE_SKIP_COTURN=1 to skip"
    );
}

/// A child process killed on drop.
#[derive(Debug)]
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[derive(Debug)]
struct Turnd {
    _proc: Proc,
    listen: SocketAddr,
    tls: Option<SocketAddr>,
    metrics: SocketAddr,
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A self-signed certificate for 127.0.0.1 in a temporary directory.
fn cert_files(tag: &str) -> (PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("turnd-relay-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let c =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, c.cert.pem()).unwrap();
    std::fs::write(&key, c.key_pair.serialize_pem()).unwrap();
    (cert, key)
}

/// Start turnd with TURN on loopback; `ports` is its relay range (distinct per test).
fn start_turnd(ports: &str, tls: bool, extra: &[&str]) -> Turnd {
    let mut args: Vec<String> = [
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "1",
        "--user",
        "test:test",
        "--realm",
        "example.org",
        "--allow-peer",
        "127.0.0.0/8",
        "--relay-ports",
        ports,
        "--metrics",
        "127.0.0.1:0",
        "--rate-limit",
        "0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    if tls {
        let (cert, key) = cert_files(ports);
        args.extend([
            "--tls-listen".into(),
            "127.0.0.1:0".into(),
            "--cert".into(),
            cert.display().to_string(),
            "--key".into(),
            key.display().to_string(),
        ]);
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_turnd"))
        .args(&args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let proc = Proc(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let mut r = BufReader::new(stdout);
        let _ = r.read_line(&mut line);
        let _ = tx.send(line);
        let _ = std::io::copy(&mut r, &mut std::io::sink());
    });
    let line = rx.recv_timeout(Duration::from_secs(15)).unwrap();
    let rest = line
        .trim()
        .strip_prefix("turnd ready ")
        .unwrap_or_else(|| panic!("no ready line: {line:?}"));
    let (mut listen, mut tls_addr, mut metrics) = (None, None, None);
    for tok in rest.split_whitespace() {
        if let Some(a) = tok.strip_prefix("tls=") {
            tls_addr = Some(a.parse().unwrap());
        } else if let Some(a) = tok.strip_prefix("metrics=") {
            metrics = Some(a.parse().unwrap());
        } else {
            listen.get_or_insert(tok.parse().unwrap());
        }
    }
    Turnd {
        _proc: proc,
        listen: listen.unwrap(),
        tls: tls_addr,
        metrics: metrics.unwrap(),
    }
}

/// Wait (up to 3 s: workers publish their counters every 100 ms) until `name` satisfies `ok`.
fn eventually(t: &Turnd, name: &str, ok: impl Fn(u64) -> bool) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let v = metric(t, name);
        if ok(v) || Instant::now() > deadline {
            return v;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// GET /metrics; the value of one metric line.
fn metric(t: &Turnd, name: &str) -> u64 {
    let mut s = TcpStream::connect(t.metrics).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    assert!(body.starts_with("HTTP/1.1 200 OK"), "{body}");
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in metrics:\n{body}"))
}

fn start_peer(tool: &PathBuf) -> (Proc, u16) {
    let port = free_udp_port();
    let child = Command::new(tool)
        .args(["-L", "127.0.0.1", "-p", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    (Proc(child), port)
}

/// uclient's closing totals.
#[derive(Debug, Default, PartialEq, Eq)]
struct Totals {
    send_msgs: u64,
    recv_msgs: u64,
    send_bytes: u64,
    recv_bytes: u64,
    lost: Option<u64>,
}

fn number_after(line: &str, key: &str) -> Option<u64> {
    let rest = &line[line.find(key)? + key.len()..];
    let digits: String = rest
        .trim_start_matches([' ', '~', '='])
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

fn parse_report(report: &str) -> Totals {
    let mut t = Totals::default();
    for line in report.lines() {
        // The final summary lines have no "msz=" (per-interval lines do).
        if line.contains("start_mclient: tot_send_msgs") {
            t.send_msgs = number_after(line, "tot_send_msgs").unwrap();
            t.recv_msgs = number_after(line, "tot_recv_msgs").unwrap();
        }
        if line.contains("start_mclient: tot_send_bytes") {
            t.send_bytes = number_after(line, "tot_send_bytes").unwrap();
            t.recv_bytes = number_after(line, "tot_recv_bytes").unwrap();
        }
        if line.contains("Total lost packets") {
            t.lost = number_after(line, "Total lost packets");
        }
    }
    t
}

fn run_uclient(tool: &PathBuf, args: &[String]) -> String {
    let mut child = Command::new(tool)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + TOOL_TIMEOUT;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("uclient {args:?} timed out:\n{}", reader.join().unwrap());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let report = reader.join().unwrap();
    assert!(
        status.success(),
        "uclient {args:?} failed ({status}):\n{report}"
    );
    report
}

/// One uclient run: `sessions` clients sending `messages` of `len` bytes each.
fn relay_run(ports: &str, transport: &str, send_indications: bool) {
    let (Some(uclient), Some(peer_tool)) = (
        coturn_tool("turnutils_uclient"),
        coturn_tool("turnutils_peer"),
    ) else {
        return;
    };
    let tls = transport == "tls";
    let t = start_turnd(ports, tls, &[]);
    let (_peer, peer_port) = start_peer(&peer_tool);
    let (sessions, messages, len) = (4u64, 40u64, 120u64);
    let server = if tls { t.tls.unwrap() } else { t.listen };
    let mut args: Vec<String> = vec!["-c".into()];
    match transport {
        "tcp" => args.push("-t".into()),
        "tls" => args.extend(["-t".into(), "-S".into()]),
        _ => {}
    }
    if send_indications {
        args.push("-s".into());
    }
    args.extend(
        [
            "-z",
            "5",
            "-n",
            &messages.to_string(),
            "-m",
            &sessions.to_string(),
            "-l",
            &len.to_string(),
            "-e",
            "127.0.0.1",
            "-r",
            &peer_port.to_string(),
            "-u",
            "test",
            "-w",
            "test",
            "-p",
            &server.port().to_string(),
            "127.0.0.1",
        ]
        .map(String::from),
    );
    let report = run_uclient(&uclient, &args);
    let totals = parse_report(&report);
    let want = sessions * messages;
    assert_eq!(
        totals,
        Totals {
            send_msgs: want,
            recv_msgs: want,
            send_bytes: want * len,
            recv_bytes: want * len,
            lost: Some(0),
        },
        "{transport} send={send_indications}:\n{report}"
    );
    // turnd relayed every message both ways (the echo comes back through the relay).
    let at_least = |n| move |v| v >= n;
    let to_peer = eventually(
        &t,
        "turnd_relayed_packets_total{direction=\"to_peer\"}",
        at_least(want),
    );
    assert!(to_peer >= want, "{to_peer}");
    let to_client = eventually(
        &t,
        "turnd_relayed_packets_total{direction=\"to_client\"}",
        at_least(want),
    );
    assert!(to_client >= want, "{to_client}");
    assert!(eventually(&t, "turnd_allocations_created_total", at_least(sessions)) >= sessions);
    if send_indications {
        assert_eq!(
            metric(&t, "turnd_channels_bound_total"),
            0,
            "-s uses no channels"
        );
    } else {
        assert!(eventually(&t, "turnd_channels_bound_total", at_least(sessions)) >= sessions);
    }
}

#[test]
fn uclient_udp_channels() {
    relay_run("21000-21099", "udp", false);
}

#[test]
fn uclient_udp_send_indications() {
    relay_run("21100-21199", "udp", true);
}

#[test]
fn uclient_tcp_channels() {
    relay_run("21200-21299", "tcp", false);
}

#[test]
fn uclient_tcp_send_indications() {
    relay_run("21300-21399", "tcp", true);
}

#[test]
fn uclient_tls_channels() {
    relay_run("21400-21499", "tls", false);
}

#[test]
fn uclient_tls_send_indications() {
    relay_run("21500-21599", "tls", true);
}

#[test]
fn uclient_with_wrong_password_is_refused_and_counted() {
    let (Some(uclient), Some(peer_tool)) = (
        coturn_tool("turnutils_uclient"),
        coturn_tool("turnutils_peer"),
    ) else {
        return;
    };
    let t = start_turnd("21600-21699", false, &[]);
    let (_peer, peer_port) = start_peer(&peer_tool);
    let out = Command::new(&uclient)
        .args([
            "-c",
            "-n",
            "5",
            "-m",
            "1",
            "-e",
            "127.0.0.1",
            "-r",
            &peer_port.to_string(),
            "-u",
            "test",
            "-w",
            "wrong",
            "-p",
            &t.listen.port().to_string(),
            "127.0.0.1",
        ])
        .output()
        .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "uclient must fail:\n{report}");
    assert!(report.contains("Cannot complete Allocation"), "{report}");
    assert!(eventually(&t, "turnd_auth_failures_total", |v| v >= 1) >= 1);
    assert_eq!(metric(&t, "turnd_allocations_active"), 0);
}
