//! End to end on loopback: two `icepeer` processes, icepeer against aioice (both roles,
//! trickle and vanilla), host and relayed through coturn. Signaling goes through files.
//!
//! Needs python3 with aioice (`pip install aioice`) and coturn's `turnserver`: missing tools
//! fail the tests with a clear message, they are never skipped.
#![allow(clippy::unwrap_used)]

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

const ICEPEER: &str = env!("CARGO_BIN_EXE_icepeer");

fn aioice_peer() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/aioice_peer.py")
}

fn scratch(name: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let d = std::env::temp_dir().join(format!(
        "icepeer-test-{}-{}-{name}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A child process killed (by its PID) when dropped.
#[derive(Debug)]
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Impl {
    Ours,
    Aioice,
}

fn require_aioice() {
    let ok = Command::new("python3")
        .args(["-c", "import aioice"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "python3 with aioice is required (pip install --break-system-packages aioice==0.13.0)"
    );
}

/// One side's command line.
fn command(imp: Impl, role: &str, extra: &[String], sin: &Path, sout: &Path) -> Command {
    let mut c = match imp {
        Impl::Ours => Command::new(ICEPEER),
        Impl::Aioice => {
            let mut c = Command::new("python3");
            c.arg(aioice_peer());
            c
        }
    };
    c.arg(role)
        .arg("--signal-in")
        .arg(sin)
        .arg("--signal-out")
        .arg(sout)
        .arg("--json")
        .args(["--timeout", "15"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// Run an offerer and an answerer; returns both JSON results and exit codes.
fn pair(offer: (Impl, Vec<String>), answer: (Impl, Vec<String>)) -> ((Value, i32), (Value, i32)) {
    let dir = scratch("pair");
    let (a_out, b_out) = (dir.join("offer.sig"), dir.join("answer.sig"));
    let a = command(offer.0, "offer", &offer.1, &b_out, &a_out)
        .spawn()
        .unwrap();
    let b = command(answer.0, "answer", &answer.1, &a_out, &b_out)
        .spawn()
        .unwrap();
    let collect = |c: Child| {
        let o = c.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&o.stdout).to_string();
        let v: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
            panic!(
                "no JSON ({e}): stdout {stdout:?} stderr {}",
                String::from_utf8_lossy(&o.stderr)
            )
        });
        (v, o.status.code().unwrap_or(-1))
    };
    let ra = collect(a);
    let rb = collect(b);
    let _ = std::fs::remove_dir_all(&dir);
    (ra, rb)
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| (*x).to_owned()).collect()
}

fn assert_connected(r: &(Value, i32), typ: &str, ctx: &str) {
    assert_eq!(r.1, 0, "{ctx}: exit status, result {}", r.0);
    assert_eq!(r.0["connected"], true, "{ctx}: {}", r.0);
    assert_eq!(r.0["datagrams_ok"], true, "{ctx}: {}", r.0);
    assert_eq!(r.0["local"]["type"], typ, "{ctx}: {}", r.0);
}

#[test]
fn icepeer_pair_on_loopback_vanilla_and_trickle() {
    for mode in [vec![], s(&["--trickle"])] {
        let mut args = s(&["--loopback"]);
        args.extend(mode.clone());
        let (a, b) = pair((Impl::Ours, args.clone()), (Impl::Ours, args));
        let ctx = format!("{mode:?}");
        assert_connected(&a, "host", &ctx);
        assert_connected(&b, "host", &ctx);
        assert_eq!(a.0["role"], "controlling");
        assert_eq!(b.0["role"], "controlled");
        assert_eq!(a.0["local"]["address"], b.0["remote"]["address"], "{ctx}");
        assert!(a.0["checks_sent"].as_u64().unwrap() >= 2, "{}", a.0);
        assert!(a.0["rtt_ms"].as_f64().unwrap() < 50.0);
    }
}

#[test]
fn icepeer_fails_cleanly_without_a_peer() {
    let dir = scratch("alone");
    let o = Command::new(ICEPEER)
        .args(["offer", "--loopback", "--json", "--timeout", "1"])
        .arg("--signal-in")
        .arg(dir.join("nobody"))
        .arg("--signal-out")
        .arg(dir.join("out"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["connected"], false);
    assert_eq!(v["failure"], "timeout");
    // Bad usage is exit status 2 (clap).
    let o = Command::new(ICEPEER).args(["sideways"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn interop_with_aioice_on_loopback_both_roles_trickle_and_vanilla() {
    require_aioice();
    for ours_offers in [true, false] {
        for mode in [vec![], s(&["--trickle"])] {
            let mut args = s(&["--loopback"]);
            args.extend(mode.clone());
            let (ours, theirs) = ((Impl::Ours, args.clone()), (Impl::Aioice, args));
            let (o, a) = if ours_offers {
                (ours, theirs)
            } else {
                (theirs, ours)
            };
            let (ra, rb) = pair(o, a);
            let ctx = format!("ours_offers={ours_offers} {mode:?}");
            assert_connected(&ra, "host", &ctx);
            assert_connected(&rb, "host", &ctx);
        }
    }
}

/// A coturn instance on 127.0.0.1 with user test:test, killed on drop.
#[derive(Debug)]
pub struct Coturn {
    _p: Proc,
    pub port: u16,
    /// TURN over TLS port and the CA file (the self-signed certificate) when started with TLS.
    pub tls: Option<(u16, PathBuf)>,
    dir: PathBuf,
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    // A port free for both UDP and TCP right now.
    loop {
        let u = UdpSocket::bind("127.0.0.1:0").unwrap();
        let p = u.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
}

/// Wait until a STUN Binding request on UDP gets an answer; false after 5 s.
fn wait_stun(addr: SocketAddr) -> bool {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let mut req = [0u8; 20];
    req[1] = 1;
    req[4..8].copy_from_slice(&0x2112_A442u32.to_be_bytes());
    req[8..20].copy_from_slice(b"icepeertest1");
    let end = Instant::now() + Duration::from_secs(5);
    let mut buf = [0u8; 512];
    while Instant::now() < end {
        let _ = s.send_to(&req, addr);
        if s.recv_from(&mut buf).is_ok() {
            return true;
        }
    }
    false
}

impl Coturn {
    pub fn start() -> Coturn {
        Coturn::start_with(false)
    }

    /// Start coturn; a few attempts, since a port found free may be taken (by another test's
    /// relay allocation) before coturn binds it.
    pub fn start_with(with_tls: bool) -> Coturn {
        for _ in 0..5 {
            if let Some(c) = Coturn::try_start(with_tls) {
                return c;
            }
        }
        panic!("coturn did not come up on loopback in 5 attempts");
    }

    fn try_start(with_tls: bool) -> Option<Coturn> {
        // Relay ports below the ephemeral range, a different block per instance, so that
        // relay allocations of parallel tests never take a listening port picked here.
        static BLOCK: AtomicU32 = AtomicU32::new(0);
        let block = BLOCK.fetch_add(1, Ordering::Relaxed) % 100;
        let min_port = 20000 + block * 100;
        let port = free_port();
        let dir = scratch("coturn");
        let mut tls_args = vec!["--no-tls".to_owned()];
        let mut tls = None;
        if with_tls {
            let ck = rcgen::generate_simple_self_signed(vec![
                "127.0.0.1".to_owned(),
                "localhost".to_owned(),
            ])
            .unwrap();
            let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
            std::fs::write(&cert, ck.cert.pem()).unwrap();
            std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
            let tport = free_port();
            tls_args = vec![
                format!("--tls-listening-port={tport}"),
                format!("--cert={}", cert.display()),
                format!("--pkey={}", key.display()),
            ];
            tls = Some((tport, cert));
        }
        let p = Command::new("turnserver")
            .args(&tls_args)
            .args([
                "-n",
                "-L",
                "127.0.0.1",
                &format!("--listening-port={port}"),
                "--no-dtls",
                "--no-cli",
                "--lt-cred-mech",
                "--user=test:test",
                "--realm=example.org",
                "--allow-loopback-peers",
                "--relay-ip=127.0.0.1",
                &format!("--min-port={min_port}"),
                &format!("--max-port={}", min_port + 99),
                "--log-file=stdout",
                "--simple-log",
                "--pidfile",
            ])
            .arg(dir.join("turnserver.pid"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("coturn's turnserver is required (apt-get install coturn)");
        let c = Coturn {
            _p: Proc(p),
            port,
            tls,
            dir,
        };
        wait_stun(SocketAddr::from(([127, 0, 0, 1], port))).then_some(c)
    }
}

#[test]
fn icepeer_pair_relay_only_through_coturn_udp_and_tcp() {
    for transport in ["udp", "tcp"] {
        let coturn = Coturn::start();
        let args = s(&[
            "--loopback",
            "--relay-only",
            "--turn",
            &format!("turn:127.0.0.1:{}?transport={transport}", coturn.port),
            "--turn-user",
            "test",
            "--turn-pass",
            "test",
        ]);
        let (a, b) = pair((Impl::Ours, args.clone()), (Impl::Ours, args));
        assert_connected(&a, "relay", transport);
        assert_connected(&b, "relay", transport);
        assert_eq!(a.0["remote"]["type"], "relay");
    }
}

#[test]
fn interop_with_aioice_relayed_through_coturn() {
    require_aioice();
    for ours_offers in [true, false] {
        for trickle in [false, true] {
            // A fresh server each time: aioice gives up its relay candidate on a 437.
            let coturn = Coturn::start();
            let mut ours = s(&[
                "--loopback",
                "--relay-only",
                "--turn",
                &format!("turn:127.0.0.1:{}", coturn.port),
                "--turn-user",
                "test",
                "--turn-pass",
                "test",
            ]);
            let mut theirs = s(&[
                "--loopback",
                "--relay-only",
                "--turn",
                &format!("127.0.0.1:{}", coturn.port),
                "--turn-user",
                "test",
                "--turn-pass",
                "test",
            ]);
            if trickle {
                ours.push("--trickle".into());
                theirs.push("--trickle".into());
            }
            let (o, a) = if ours_offers {
                ((Impl::Ours, ours), (Impl::Aioice, theirs))
            } else {
                ((Impl::Aioice, theirs), (Impl::Ours, ours))
            };
            let (ra, rb) = pair(o, a);
            let ctx = format!("ours_offers={ours_offers} trickle={trickle}");
            assert_connected(&ra, "relay", &ctx);
            assert_connected(&rb, "relay", &ctx);
        }
    }
}

#[test]
fn icepeer_full_agent_against_an_ice_lite_answerer() {
    let args = s(&["--loopback", "--trickle"]);
    let mut lite = args.clone();
    lite.push("--lite".into());
    let (a, b) = pair((Impl::Ours, args), (Impl::Ours, lite));
    assert_connected(&a, "host", "full");
    assert_connected(&b, "host", "lite");
    // RFC 8445 §2.5: the lite agent never checks; the full one does all of it.
    assert_eq!(b.0["checks_sent"], 0);
    assert_eq!(a.0["checks_received"], 0);
    assert_eq!(a.0["role"], "controlling");
}

#[test]
fn icepeer_pair_relay_only_through_coturn_over_tls() {
    let coturn = Coturn::start_with(true);
    let (tport, ca) = coturn.tls.clone().unwrap();
    // Wait for the TLS listener too.
    let end = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", tport)).is_err() {
        assert!(Instant::now() < end, "coturn's TLS port never opened");
        std::thread::sleep(Duration::from_millis(20));
    }
    let args = vec![
        "--loopback".to_owned(),
        "--relay-only".to_owned(),
        "--turn".to_owned(),
        format!("turns:127.0.0.1:{tport}"),
        "--turn-ca".to_owned(),
        ca.display().to_string(),
        "--turn-user".to_owned(),
        "test".to_owned(),
        "--turn-pass".to_owned(),
        "test".to_owned(),
    ];
    let (a, b) = pair((Impl::Ours, args.clone()), (Impl::Ours, args));
    assert_connected(&a, "relay", "tls");
    assert_connected(&b, "relay", "tls");
}

/// Our `turnd` (the workspace's TURN server) on loopback with TURN over UDP, TCP and TLS,
/// loopback peers allowed; killed by PID on drop.
#[derive(Debug)]
struct Turnd {
    _p: Proc,
    addr: SocketAddr,
    tls: SocketAddr,
    ca: PathBuf,
    dir: PathBuf,
}

impl Drop for Turnd {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The `turnd` binary, built by cargo if needed (it belongs to another package, so cargo
/// gives this test no CARGO_BIN_EXE_ path for it).
fn turnd_binary() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let st = Command::new(env!("CARGO"))
        .args(["build", "-q", "-p", "turn", "--bin", "turnd"])
        .current_dir(&root)
        .status()
        .expect("running cargo to build turnd");
    assert!(st.success(), "building turnd failed");
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test> -> target/<profile>/turnd
    let bin = exe.parent().unwrap().parent().unwrap().join("turnd");
    assert!(bin.exists(), "turnd not found at {}", bin.display());
    bin
}

impl Turnd {
    fn start() -> Turnd {
        use std::io::BufRead;
        static BLOCK: AtomicU32 = AtomicU32::new(0);
        let first = 30000 + (BLOCK.fetch_add(1, Ordering::Relaxed) % 50) * 100;
        let dir = scratch("turnd");
        let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert, ck.cert.pem()).unwrap();
        std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
        let mut child = Command::new(turnd_binary())
            .args([
                "--listen",
                "127.0.0.1:0",
                "--user",
                "test:test",
                "--realm",
                "example.org",
            ])
            .args(["--allow-peer", "127.0.0.0/8", "--rate-limit", "0"])
            .arg("--relay-ports")
            .arg(format!("{first}-{}", first + 99))
            .args(["--tls-listen", "127.0.0.1:0", "--cert"])
            .arg(&cert)
            .arg("--key")
            .arg(&key)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let p = Proc(child);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut r = std::io::BufReader::new(stdout);
            let mut line = String::new();
            let _ = r.read_line(&mut line);
            let _ = tx.send(line);
            let _ = std::io::copy(&mut r, &mut std::io::sink());
        });
        let line = rx
            .recv_timeout(Duration::from_secs(15))
            .expect("turnd printed no ready line");
        let rest = line
            .trim()
            .strip_prefix("turnd ready ")
            .unwrap_or_else(|| panic!("unexpected first line from turnd: {line:?}"))
            .to_owned();
        let (mut addr, mut tls) = (None, None);
        for tok in rest.split_whitespace() {
            if let Some(a) = tok.strip_prefix("tls=") {
                tls = Some(a.parse().unwrap());
            } else if !tok.contains('=') {
                addr.get_or_insert(tok.parse().unwrap());
            }
        }
        Turnd {
            _p: p,
            addr: addr.unwrap(),
            tls: tls.unwrap(),
            ca: cert,
            dir,
        }
    }
}

#[test]
fn icepeer_pair_relay_only_through_turnd_udp_tcp_tls() {
    let turnd = Turnd::start();
    for url in [
        format!("turn:{}?transport=udp", turnd.addr),
        format!("turn:{}?transport=tcp", turnd.addr),
        format!("turns:{}", turnd.tls),
    ] {
        let args = vec![
            "--loopback".to_owned(),
            "--relay-only".to_owned(),
            "--turn".to_owned(),
            url.clone(),
            "--turn-ca".to_owned(),
            turnd.ca.display().to_string(),
            "--turn-user".to_owned(),
            "test".to_owned(),
            "--turn-pass".to_owned(),
            "test".to_owned(),
        ];
        let (a, b) = pair((Impl::Ours, args.clone()), (Impl::Ours, args));
        assert_connected(&a, "relay", &url);
        assert_connected(&b, "relay", &url);
        assert_eq!(a.0["remote"]["type"], "relay", "{url}");
    }
}

#[test]
fn interop_with_aioice_relayed_through_turnd() {
    require_aioice();
    for ours_offers in [true, false] {
        for trickle in [false, true] {
            let turnd = Turnd::start();
            let creds = s(&["--turn-user", "test", "--turn-pass", "test"]);
            let mut ours = s(&["--loopback", "--relay-only", "--turn"]);
            ours.push(format!("turn:{}", turnd.addr));
            ours.extend(creds.clone());
            let mut theirs = s(&["--loopback", "--relay-only", "--turn"]);
            theirs.push(turnd.addr.to_string());
            theirs.extend(creds);
            if trickle {
                ours.push("--trickle".into());
                theirs.push("--trickle".into());
            }
            let (o, a) = if ours_offers {
                ((Impl::Ours, ours), (Impl::Aioice, theirs))
            } else {
                ((Impl::Aioice, theirs), (Impl::Ours, ours))
            };
            let (ra, rb) = pair(o, a);
            let ctx = format!("turnd ours_offers={ours_offers} trickle={trickle}");
            assert_connected(&ra, "relay", &ctx);
            assert_connected(&rb, "relay", &ctx);
        }
    }
}
