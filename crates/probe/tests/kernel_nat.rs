//! natprobe against the Linux kernel as the NAT: real network namespaces, nftables rules in a
//! router namespace, `turnd` (in-process) in a server namespace, `natprobe` run in a client
//! namespace. Each test builds its own three namespaces:
//!
//! ```text
//!  C (client)               R (router: nftables, ip_forward)              S (server: turnd)
//!  c0 192.168.77.2/24 ---- rin 192.168.77.1/24   rout 203.0.113.254/24 ---- s0 203.0.113.1/24
//!  default via .1                                                             203.0.113.2/24
//! ```
//!
//! The firewall case routes 198.51.100.0/24 instead of the RFC 1918 network, without NAT.
//!
//! One case also runs coturn's `turnserver` in S, beside turnd (same addresses, other ports),
//! and checks that natprobe reaches the same verdict against both.
//!
//! Needs root, `ip` (iproute2), `nft` (nftables) and `sysctl` (procps); the coturn case also
//! needs coturn (`turnserver`, or the binary named by `TURNSERVER`). Without them the tests
//! print a note and pass, except under CI (`CI` set), where they fail: nothing is skipped
//! silently there.

#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::sched::{CloneFlags, setns};
use serde_json::Value;
use turn::binding::ResponderConfig;
use turn::server::{RunningServer, ServerConfig};

const A1: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
const A2: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
const P1: u16 = 3478;
const P2: u16 = 3479;
const ROUTER_PUBLIC: &str = "203.0.113.254";
const SERVER: &str = "203.0.113.1:3478";
// coturn, beside turnd in S: the same two addresses, the next two ports.
const COTURN_P1: u16 = 3480;
const COTURN_P2: u16 = 3481;
const COTURN_SERVER: &str = "203.0.113.1:3480";
// IPv6: a ULA inside (fd00::/8 plays RFC 1918's part), documentation space outside.
const A1_V6: &str = "2001:db8:ff::1";
const A2_V6: &str = "2001:db8:ff::2";
const ROUTER_PUBLIC_V6: &str = "2001:db8:ff::254";
const SERVER_V6: &str = "[2001:db8:ff::1]:3478";

/// Every namespace this process creates starts with this, then `<pid>-<n>-`.
const NS_TAG: &str = "nsc-";

// ---------------------------------------------------------------------------------------------
// Commands

fn describe(args: &[&str]) -> String {
    args.join(" ")
}

/// Run a command to completion, feeding `stdin`; panic with its stderr if it fails.
fn run_with_input(args: &[&str], stdin: Option<&str>) -> String {
    let mut cmd = Command::new(args[0]);
    cmd.args(&args[1..])
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start `{}`: {e}", describe(args)));
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(input.as_bytes())
            .unwrap_or_else(|e| panic!("cannot feed `{}`: {e}", describe(args)));
    }
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("`{}` did not finish: {e}", describe(args)));
    assert!(
        out.status.success(),
        "`{}` failed ({}):\n{}{}",
        describe(args),
        out.status,
        String::from_utf8_lossy(&out.stderr),
        stdin
            .map(|s| format!("\ninput was:\n{s}"))
            .unwrap_or_default(),
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn run(args: &[&str]) -> String {
    run_with_input(args, None)
}

/// `ip netns exec NS <words>`; its stdout.
fn exec(ns: &str, words: &str) -> String {
    let mut args = vec!["ip", "netns", "exec", ns];
    args.extend(words.split_whitespace());
    run(&args)
}

/// `ip -n NS <words>`.
fn ip(ns: &str, words: &str) {
    let mut args = vec!["ip", "-n", ns];
    args.extend(words.split_whitespace());
    run(&args);
}

/// Like [`run`], but an error message instead of a panic (for the prerequisite check).
fn try_run(args: &[&str]) -> Result<String, String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run `{}`: {e}", describe(args)))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`{}` failed ({}): {}",
            describe(args),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// Prerequisites

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

fn next_prefix() -> String {
    format!(
        "{NS_TAG}{}-{}-",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

/// Namespaces left by an earlier run of these tests that was killed (its pid is gone).
fn remove_stale_namespaces() {
    let Ok(list) = try_run(&["ip", "netns", "list"]) else {
        return;
    };
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(pid) = name
            .strip_prefix(NS_TAG)
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = try_run(&["ip", "netns", "del", name]);
        }
    }
}

/// Checked once per process, before any test builds namespaces (which also serialises the
/// first `ip netns add`, the one that sets up /run/netns).
fn prerequisites() -> &'static Result<(), String> {
    static CHECK: OnceLock<Result<(), String>> = OnceLock::new();
    CHECK.get_or_init(|| {
        match effective_uid() {
            Some(0) => {}
            Some(uid) => return Err(format!("not root (euid {uid})")),
            None => return Err("cannot read the effective uid from /proc/self/status".into()),
        }
        try_run(&["ip", "-V"]).map_err(|e| format!("iproute2 is missing: {e}"))?;
        try_run(&["nft", "--version"]).map_err(|e| format!("nftables is missing: {e}"))?;
        try_run(&["sysctl", "--version"]).map_err(|e| format!("procps is missing: {e}"))?;
        remove_stale_namespaces();
        let ns = format!("{}check", next_prefix());
        try_run(&["ip", "netns", "add", &ns])
            .map_err(|e| format!("`ip netns` is not usable: {e}"))?;
        let nft = try_run(&["ip", "netns", "exec", &ns, "nft", "list", "ruleset"]);
        let del = try_run(&["ip", "netns", "del", &ns]);
        nft.map_err(|e| format!("nft does not work in a namespace: {e}"))?;
        del.map_err(|e| format!("cannot delete namespace {ns}: {e}"))?;
        Ok(())
    })
}

/// `true` when the tests can run; otherwise a note (or, under CI, a failure).
fn can_run(test: &str) -> bool {
    match prerequisites() {
        Ok(()) => true,
        Err(why) if in_ci() => panic!(
            "{test}: the kernel NAT tests cannot run here, and CI must not skip them: {why}. \
             They need root, iproute2, nftables and procps (apt-get install iproute2 nftables \
             procps)"
        ),
        Err(why) => {
            eprintln!("note: {test} skipped: {why} (needs root, iproute2, nftables, procps)");
            false
        }
    }
}

/// coturn's `turnserver`: `$TURNSERVER` if set, else `turnserver` from `PATH`; checked by
/// running `turnserver --version -n` (`-n`: never read a configuration file).
fn coturn_binary() -> Result<PathBuf, String> {
    let bin = match std::env::var_os("TURNSERVER").filter(|v| !v.is_empty()) {
        Some(path) => PathBuf::from(path),
        None => std::env::var_os("PATH")
            .iter()
            .flat_map(std::env::split_paths)
            .map(|dir| dir.join("turnserver"))
            .find(|p| p.is_file())
            .ok_or("no turnserver in PATH (and TURNSERVER not set)")?,
    };
    let path = bin.to_string_lossy().into_owned();
    let version =
        try_run(&[&path, "--version", "-n"]).map_err(|e| format!("{path} does not run: {e}"))?;
    eprintln!("coturn: {path} {}", version.trim());
    Ok(bin)
}

/// `Some(turnserver)` when the coturn case can run; otherwise a note (or, under CI, a
/// failure), like [`can_run`].
fn coturn_or_skip(test: &str) -> Option<PathBuf> {
    if !can_run(test) {
        return None;
    }
    match coturn_binary() {
        Ok(bin) => Some(bin),
        Err(why) if in_ci() => panic!(
            "{test}: coturn is needed, and CI must not skip this test: {why} (apt-get install \
             coturn, or set TURNSERVER=/path/to/turnserver)"
        ),
        Err(why) => {
            eprintln!("note: {test} skipped: {why} (needs coturn: apt-get install coturn)");
            None
        }
    }
}

/// Whether `setpriv --pdeathsig` (util-linux) is available, to tie a helper process's life to
/// the test's thread: then even a test process killed outright takes coturn with it.
fn have_setpriv() -> bool {
    static HAVE: OnceLock<bool> = OnceLock::new();
    *HAVE.get_or_init(|| try_run(&["setpriv", "--pdeathsig", "KILL", "--", "true"]).is_ok())
}

// ---------------------------------------------------------------------------------------------
// The lab

/// How the client side is addressed.
#[derive(Debug, Clone, Copy)]
enum Inside {
    /// 192.168.77.0/24: only reachable through NAT.
    Private,
    /// 198.51.100.0/24: routed, the server knows the way back.
    Public,
}

impl Inside {
    fn net(self) -> &'static str {
        match self {
            Inside::Private => "192.168.77",
            Inside::Public => "198.51.100",
        }
    }
}

/// Three namespaces, deleted on drop (also when a test panics). The server, if any, is stopped
/// first.
#[derive(Debug)]
struct Lab {
    c: String,
    r: String,
    s: String,
    created: Vec<String>,
    servers: Vec<RunningServer>,
    coturn: Option<Coturn>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Stop the servers (coturn's process, turnd's threads, and so their sockets) before
        // their namespace goes.
        self.coturn = None;
        self.servers.clear();
        for ns in self.created.drain(..).rev() {
            if let Err(e) = try_run(&["ip", "netns", "del", &ns]) {
                eprintln!("warning: could not delete namespace {ns}: {e}");
            }
        }
    }
}

/// Result of one natprobe run.
#[derive(Debug)]
struct Probe {
    status: ExitStatus,
    json: Value,
    stdout: String,
    stderr: String,
}

impl Probe {
    /// Everything, for assertion messages.
    fn context(&self) -> String {
        format!(
            "natprobe exited with {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status, self.stdout, self.stderr
        )
    }

    fn str(&self, key: &str) -> &str {
        self.json[key]
            .as_str()
            .unwrap_or_else(|| panic!("{key} is not a string\n{}", self.context()))
    }

    /// The test named `name` in the `tests` array.
    fn test(&self, name: &str) -> &Value {
        self.json["tests"]
            .as_array()
            .and_then(|t| t.iter().find(|t| t["name"] == name))
            .unwrap_or_else(|| panic!("no test named {name}\n{}", self.context()))
    }

    /// One line for the log: what the tests here are about.
    fn summary(&self) -> String {
        let j = &self.json;
        format!(
            "exit {:?}: nat={} mapping={} filtering={} legacy={} hairpinning={} \
             port_preservation={} binding_lifetime_s={} mapped={} udp_blocked={}",
            self.status.code(),
            j["nat"],
            j["mapping"],
            j["filtering"],
            j["legacy"],
            j["hairpinning"],
            j["port_preservation"],
            j["binding_lifetime_s"],
            j["mapped"],
            j["udp_blocked"]
        )
    }
}

/// A coturn `turnserver` this test started: on drop, killed by its PID (through the `Child`
/// handle: std never signals a process it has already reaped) and reaped, its scratch directory
/// removed.
#[derive(Debug)]
struct Coturn {
    child: Child,
    dir: PathBuf,
}

impl Coturn {
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("coturn.log")).unwrap_or_default()
    }
}

impl Drop for Coturn {
    fn drop(&mut self) {
        if let Err(e) = self.child.kill() {
            eprintln!(
                "warning: could not kill coturn (pid {}): {e}",
                self.child.id()
            );
        }
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One STUN Binding request to `to` from a fresh socket of the calling thread's namespace;
/// whether a Binding success response with the same transaction ID came back in `wait`.
fn binding_answered(to: SocketAddr, wait: Duration) -> bool {
    let Ok(sock) = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)) else {
        return false;
    };
    let _ = sock.set_read_timeout(Some(wait));
    let id: [u8; 12] = *b"natscope-rdy";
    let mut req = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42];
    req.extend_from_slice(&id);
    if sock.send_to(&req, to).is_err() {
        return false;
    }
    let mut buf = [0u8; 1500];
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        match sock.recv_from(&mut buf) {
            Ok((n, from)) if from == to && n >= 20 => {
                if buf[..2] == [0x01, 0x01] && buf[4..8] == req[4..8] && buf[8..20] == id {
                    return true;
                }
            }
            Ok(_) => {}
            Err(_) => return false,
        }
    }
    false
}

impl Lab {
    /// Namespaces, veths, addresses and routes; forwarding on in R; no nftables rules yet.
    fn new(inside: Inside) -> Lab {
        let prefix = next_prefix();
        let mut lab = Lab {
            c: format!("{prefix}c"),
            r: format!("{prefix}r"),
            s: format!("{prefix}s"),
            created: vec![],
            servers: vec![],
            coturn: None,
        };
        for ns in [lab.c.clone(), lab.r.clone(), lab.s.clone()] {
            run(&["ip", "netns", "add", &ns]);
            lab.created.push(ns);
        }
        let (c, r, s) = (lab.c.as_str(), lab.r.as_str(), lab.s.as_str());
        let net = inside.net();
        // The veths are created inside the namespaces: names never meet in the root namespace.
        ip(c, &format!("link add c0 type veth peer name rin netns {r}"));
        ip(
            r,
            &format!("link add rout type veth peer name s0 netns {s}"),
        );
        ip(c, &format!("addr add {net}.2/24 dev c0"));
        ip(r, &format!("addr add {net}.1/24 dev rin"));
        ip(r, &format!("addr add {ROUTER_PUBLIC}/24 dev rout"));
        ip(s, &format!("addr add {A1}/24 dev s0"));
        ip(s, &format!("addr add {A2}/24 dev s0"));
        for (ns, dev) in [(c, "lo"), (c, "c0"), (r, "lo"), (r, "rin"), (r, "rout")] {
            ip(ns, &format!("link set {dev} up"));
        }
        ip(s, "link set lo up");
        ip(s, "link set s0 up");
        ip(c, &format!("route add default via {net}.1"));
        // IPv6 beside IPv4 (nodad: usable at once, no duplicate address detection wait).
        ip(c, "-6 addr add fd77::2/64 dev c0 nodad");
        ip(r, "-6 addr add fd77::1/64 dev rin nodad");
        ip(
            r,
            &format!("-6 addr add {ROUTER_PUBLIC_V6}/64 dev rout nodad"),
        );
        ip(s, &format!("-6 addr add {A1_V6}/64 dev s0 nodad"));
        ip(s, &format!("-6 addr add {A2_V6}/64 dev s0 nodad"));
        ip(c, "-6 route add default via fd77::1");
        lab.sysctl_r("net.ipv6.conf.all.forwarding", "1");
        if let Inside::Public = inside {
            ip(s, &format!("route add {net}.0/24 via {ROUTER_PUBLIC}"));
        }
        lab.sysctl_r("net.ipv4.ip_forward", "1");
        lab
    }

    fn sysctl_r(&self, key: &str, value: &str) {
        exec(&self.r, &format!("sysctl -w {key}={value}"));
    }

    fn sysctl_get(&self, ns: &str, key: &str) -> String {
        exec(ns, &format!("sysctl -n {key}")).trim().to_owned()
    }

    /// Load an nftables ruleset into R.
    fn nft(&self, ruleset: &str) {
        run_with_input(
            &["ip", "netns", "exec", &self.r, "nft", "-f", "-"],
            Some(ruleset),
        );
    }

    fn nft_list(&self) -> String {
        exec(&self.r, "nft list ruleset")
    }

    /// turnd on A1:P1 / A2:P2 in S, from a thread that entered S (its threads inherit S).
    fn serve(&mut self) {
        self.serve_on(IpAddr::V4(A1), IpAddr::V4(A2));
    }

    /// The same on the IPv6 addresses.
    fn serve_v6(&mut self) {
        self.serve_on(A1_V6.parse().unwrap(), A2_V6.parse().unwrap());
    }

    fn serve_on(&mut self, a1: IpAddr, a2: IpAddr) {
        let path = format!("/run/netns/{}", self.s);
        let spawned = std::thread::spawn(move || -> Result<RunningServer, String> {
            let ns = std::fs::File::open(&path).map_err(|e| format!("open {path}: {e}"))?;
            setns(&ns, CloneFlags::CLONE_NEWNET).map_err(|e| format!("setns {path}: {e}"))?;
            let responder = ResponderConfig::new(SocketAddr::new(a1, P1), Some((a2, P2)));
            let mut cfg = ServerConfig::new(responder);
            cfg.rate_limit = 0;
            cfg.tcp = false;
            cfg.workers = 1;
            turn::server::spawn(cfg).map_err(|e| format!("turnd: {e}"))
        })
        .join()
        .unwrap();
        self.servers
            .push(spawned.unwrap_or_else(|e| panic!("cannot start turnd in S: {e}")));
    }

    /// coturn's `turnserver` in S on A1 and A2, ports [`COTURN_P1`] and [`COTURN_P2`] (RFC 5780:
    /// two addresses, a main and an alternative port): UDP only, no authentication, no CLI, no
    /// configuration file (`-n`), its files in a scratch directory. Returns once it answers a
    /// Binding request on all four address/port pairs, sent from inside S (so nothing enters
    /// R's conntrack table before natprobe runs).
    fn serve_coturn(&mut self, bin: &Path) {
        let dir = std::env::temp_dir().join(format!("{}coturn", self.s));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        let log = std::fs::File::create(dir.join("coturn.log")).unwrap();
        let log2 = log.try_clone().unwrap();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.s]);
        if have_setpriv() {
            // The kernel kills coturn if this thread goes without the guard having run.
            cmd.args(["setpriv", "--pdeathsig", "KILL", "--"]);
        }
        // ip netns exec and setpriv both exec: the child's PID is turnserver's own.
        cmd.arg(bin)
            .args(["-n", "-L", &A1.to_string(), "-L", &A2.to_string()])
            .arg(format!("--listening-port={COTURN_P1}"))
            .arg(format!("--alt-listening-port={COTURN_P2}"))
            .args(["--no-tcp", "--no-tls", "--no-dtls", "--no-cli", "--no-auth"])
            .args([
                "--no-tcp-relay",
                "-m",
                "1",
                "--log-file=stdout",
                "--simple-log",
            ])
            .arg("--pidfile")
            .arg(dir.join("turnserver.pid"))
            .arg("--userdb")
            .arg(dir.join("turndb"))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        let child = match cmd.spawn() {
            Ok(child) => child,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                panic!("cannot start coturn in S: {e}");
            }
        };
        // From here on the guard kills it, whatever happens.
        self.coturn = Some(Coturn { child, dir });

        let path = format!("/run/netns/{}", self.s);
        let targets: Vec<SocketAddr> = [A1, A2]
            .into_iter()
            .flat_map(|a| [COTURN_P1, COTURN_P2].map(|p| SocketAddr::new(IpAddr::V4(a), p)))
            .collect();
        let started = Instant::now();
        let mut pending = targets.clone();
        while !pending.is_empty() {
            let coturn = self.coturn.as_mut().unwrap();
            if let Some(status) = coturn.child.try_wait().unwrap() {
                panic!(
                    "coturn exited during start-up ({status}):\n{}",
                    coturn.log()
                );
            }
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "coturn does not answer on {pending:?} after 15 s:\n{}",
                coturn.log()
            );
            let (p, to_probe) = (path.clone(), pending.clone());
            pending = std::thread::spawn(move || -> Result<Vec<SocketAddr>, String> {
                let ns = std::fs::File::open(&p).map_err(|e| format!("open {p}: {e}"))?;
                setns(&ns, CloneFlags::CLONE_NEWNET).map_err(|e| format!("setns {p}: {e}"))?;
                Ok(to_probe
                    .into_iter()
                    .filter(|&to| !binding_answered(to, Duration::from_millis(200)))
                    .collect())
            })
            .join()
            .unwrap()
            .unwrap_or_else(|e| panic!("cannot probe coturn from S: {e}"));
        }
        eprintln!(
            "[{}] coturn ready on {targets:?} after {:?}",
            self.s,
            started.elapsed()
        );
    }

    /// `natprobe --fast --json [extra] 203.0.113.1:3478` in C, killed after `limit`.
    fn natprobe(&self, extra: &[&str], limit: Duration) -> Probe {
        self.natprobe_to(SERVER, extra, limit)
    }

    /// `natprobe --fast --json [extra] <server>` in C, killed after `limit`.
    fn natprobe_to(&self, server: &str, extra: &[&str], limit: Duration) -> Probe {
        let bin = env!("CARGO_BIN_EXE_natprobe");
        let mut args = vec!["netns", "exec", self.c.as_str(), bin, "--fast", "--json"];
        args.extend_from_slice(extra);
        args.push(server);
        let mut child = Command::new("ip")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start natprobe: {e}"));
        let drain = |mut r: Box<dyn Read + Send>| {
            std::thread::spawn(move || {
                let mut s = String::new();
                let _ = r.read_to_string(&mut s);
                s
            })
        };
        let out = drain(Box::new(child.stdout.take().unwrap()));
        let err = drain(Box::new(child.stderr.take().unwrap()));
        let started = Instant::now();
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            if started.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "natprobe ran longer than {limit:?}; stderr:\n{}",
                    err.join().unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let stdout = out.join().unwrap();
        let stderr = err.join().unwrap();
        let json = serde_json::from_str(&stdout).unwrap_or_else(|e| {
            panic!("natprobe printed no JSON ({e}); exit {status}\n{stdout}\n{stderr}")
        });
        let p = Probe {
            status,
            json,
            stdout,
            stderr,
        };
        eprintln!("[{}] {}", self.c, p.summary());
        p
    }

    /// The ordinary run: classification must succeed (exit 0).
    fn classify(&self) -> Probe {
        let p = self.natprobe(&[], Duration::from_secs(60));
        assert_eq!(p.status.code(), Some(0), "{}", p.context());
        p
    }
}

/// Source NAT of everything leaving by `rout` to R's public address (Linux masquerade).
fn masquerade(flags: &str) -> String {
    format!(
        "table ip natscope {{
           chain natscope_postrouting {{
             type nat hook postrouting priority srcnat;
             oifname \"rout\" masquerade {flags}
           }}
         }}\n"
    )
}

/// Assertions shared by every case where natprobe classified something against our server.
fn assert_server_suitable(p: &Probe) {
    assert_server_suitable_at(p, SERVER);
}

/// The same, against the server at `server`.
fn assert_server_suitable_at(p: &Probe, server: &str) {
    let ctx = p.context();
    assert_eq!(p.json["server"], server, "{ctx}");
    assert_eq!(p.json["udp_blocked"], false, "{ctx}");
    assert_eq!(p.json["rfc5780"], true, "{ctx}");
    assert_eq!(p.json["server_check"]["status"], "suitable", "{ctx}");
    assert_eq!(p.json["certainty"]["mapping"], "firm", "{ctx}");
    assert_eq!(p.json["certainty"]["filtering"], "firm", "{ctx}");
    assert_eq!(p.json["alg_detected"], false, "{ctx}");
}

fn ip_of(addr: &str) -> IpAddr {
    addr.parse::<SocketAddr>().unwrap().ip()
}

fn port_of(v: &Value) -> u16 {
    v.as_str().unwrap().parse::<SocketAddr>().unwrap().port()
}

// ---------------------------------------------------------------------------------------------
// Cases

/// Plain masquerade: Linux keeps the source port and reuses the mapping for every destination
/// (endpoint-independent mapping), but conntrack lets in only the exact remote address and port
/// a flow was opened to (address-and-port-dependent filtering).
///
/// THE regression test for running the filtering tests on the mapping socket: that socket has
/// talked to A2:P2 (mapping test III), so conntrack would let A2:P2's answer to filtering test
/// II in, and natprobe would report endpoint-independent filtering.
#[test]
fn masquerade_is_port_restricted_cone() {
    if !can_run("masquerade_is_port_restricted_cone") {
        return;
    }
    let mut lab = Lab::new(Inside::Private);
    lab.nft(&masquerade(""));
    lab.serve();
    let p = lab.classify();
    let ctx = p.context();
    assert_server_suitable(&p);
    assert_eq!(p.json["nat"], true, "{ctx}");
    assert_eq!(
        ip_of(p.str("local")),
        "192.168.77.2".parse::<IpAddr>().unwrap()
    );
    assert_eq!(
        ip_of(p.str("mapped")),
        ROUTER_PUBLIC.parse::<IpAddr>().unwrap()
    );
    assert_eq!(p.json["mapping"], "endpoint-independent", "{ctx}");
    assert_eq!(p.json["filtering"], "address-and-port-dependent", "{ctx}");
    assert_eq!(p.json["legacy"], "port-restricted-cone", "{ctx}");
    assert_eq!(p.json["port_preservation"], true, "{ctx}");
    assert_eq!(p.json["hairpinning"], false, "{ctx}");
    assert_eq!(p.json["binding_lifetime_s"], Value::Null, "{ctx}");

    // Why this catches the bug: the mapping socket *would* have received an answer from A2:P2
    // (the server check proves it), while the fresh filtering socket did not.
    let mapping_local = &p.test("mapping-I 203.0.113.1:3478")["local"];
    let check = p.test("server-check");
    assert_eq!(check["outcome"], "response", "{ctx}");
    assert_eq!(check["from"], "203.0.113.2:3479", "{ctx}");
    for name in ["filtering-II", "filtering-III"] {
        let t = p.test(name);
        assert_ne!(
            &t["local"], mapping_local,
            "{name} ran on the mapping socket\n{ctx}"
        );
        assert_eq!(t["outcome"], "timeout", "{name}\n{ctx}");
    }
}

/// coturn 4.6's `turnserver`, in S beside turnd (same addresses A1 and A2, ports 3480/3481
/// instead of 3478/3479), behind the same plain masquerade: natprobe's verdict against coturn
/// is the one against turnd (both checked against the known answer, and against each other).
///
/// Both servers run at once on their own ports, and natprobe runs against turnd first, then
/// against coturn: the conntrack entries of the first run are for ports 3478/3479 and cannot
/// let a packet from 3480/3481 in, so the second run's filtering tests see a clean NAT.
#[test]
fn coturn_behind_masquerade_agrees_with_turnd() {
    let name = "coturn_behind_masquerade_agrees_with_turnd";
    let Some(coturn) = coturn_or_skip(name) else {
        return;
    };
    let mut lab = Lab::new(Inside::Private);
    lab.nft(&masquerade(""));
    lab.serve();
    lab.serve_coturn(&coturn);

    let ours = lab.classify();
    let theirs = lab.natprobe_to(COTURN_SERVER, &[], Duration::from_secs(60));
    let ctx = format!(
        "--- against coturn ---\n{}\n--- against turnd ---\n{}",
        theirs.context(),
        ours.context()
    );
    assert_eq!(theirs.status.code(), Some(0), "{ctx}");

    // The known answer, as in masquerade_is_port_restricted_cone, for both servers.
    assert_server_suitable(&ours);
    assert_server_suitable_at(&theirs, COTURN_SERVER);
    for (p, alt) in [
        (&ours, format!("{A2}:{P2}")),
        (&theirs, format!("{A2}:{COTURN_P2}")),
    ] {
        assert_eq!(p.json["nat"], true, "{ctx}");
        assert_eq!(p.json["mapping"], "endpoint-independent", "{ctx}");
        assert_eq!(p.json["filtering"], "address-and-port-dependent", "{ctx}");
        assert_eq!(p.json["legacy"], "port-restricted-cone", "{ctx}");
        assert_eq!(p.json["rfc5780"], true, "{ctx}");
        assert_eq!(p.json["server_check"]["status"], "suitable", "{ctx}");
        assert_eq!(
            ip_of(p.str("mapped")),
            ROUTER_PUBLIC.parse::<IpAddr>().unwrap(),
            "{ctx}"
        );
        let check = p.test("server-check");
        assert_eq!(check["outcome"], "response", "{ctx}");
        assert_eq!(check["from"], alt.as_str(), "{ctx}");
        for t in ["filtering-II", "filtering-III"] {
            assert_eq!(p.test(t)["outcome"], "timeout", "{t}\n{ctx}");
        }
    }

    // And the two verdicts agree, field by field (the mapped port is the client's, and
    // differs from run to run; its address does not).
    for key in [
        "nat",
        "mapping",
        "filtering",
        "legacy",
        "rfc5780",
        "udp_blocked",
        "port_preservation",
        "hairpinning",
        "binding_lifetime_s",
        "alg_detected",
    ] {
        assert_eq!(ours.json[key], theirs.json[key], "{key} differs\n{ctx}");
    }
    for (outer, inner) in [
        ("certainty", "mapping"),
        ("certainty", "filtering"),
        ("server_check", "status"),
    ] {
        assert_eq!(
            ours.json[outer][inner], theirs.json[outer][inner],
            "{outer}.{inner} differs\n{ctx}"
        );
    }
    assert_eq!(
        ip_of(ours.str("mapped")),
        ip_of(theirs.str("mapped")),
        "{ctx}"
    );
    assert_eq!(
        ip_of(ours.str("local")),
        ip_of(theirs.str("local")),
        "{ctx}"
    );
    eprintln!("[{}] turnd:  {}", lab.c, ours.summary());
    eprintln!("[{}] coturn: {}", lab.c, theirs.summary());
}

/// `masquerade random,fully-random`: every new conntrack entry (that is, every new destination
/// address or port) gets a random external port, so mappings II and III differ from I and from
/// each other: address-and-port-dependent mapping. (The chance that two random ports collide
/// is about 1 in 64 000 per comparison.)
#[test]
fn fully_random_masquerade_is_symmetric() {
    if !can_run("fully_random_masquerade_is_symmetric") {
        return;
    }
    let mut lab = Lab::new(Inside::Private);
    lab.nft(&masquerade("random,fully-random"));
    assert!(
        lab.nft_list().contains("fully-random"),
        "{}",
        lab.nft_list()
    );
    lab.serve();
    let p = lab.classify();
    let ctx = p.context();
    assert_server_suitable(&p);
    assert_eq!(p.json["nat"], true, "{ctx}");
    assert_eq!(
        ip_of(p.str("mapped")),
        ROUTER_PUBLIC.parse::<IpAddr>().unwrap()
    );
    assert_eq!(p.json["mapping"], "address-and-port-dependent", "{ctx}");
    assert_eq!(p.json["filtering"], "address-and-port-dependent", "{ctx}");
    assert_eq!(p.json["legacy"], "symmetric", "{ctx}");
    assert_eq!(p.json["port_preservation"], false, "{ctx}");
    let ports: Vec<u16> = ["mapping-I 203.0.113.1:3478", "mapping-II", "mapping-III"]
        .iter()
        .map(|n| port_of(&p.test(n)["mapped"]))
        .collect();
    assert!(
        ports[0] != ports[1] && ports[1] != ports[2] && ports[0] != ports[2],
        "{ports:?}\n{ctx}"
    );
}

/// No NAT, a stateful firewall in R: outbound opens a conntrack flow, inbound needs one.
/// Then, as a control that the filtering tests can see an open path at all in this lab, the
/// same routed path without the firewall: open Internet.
#[test]
fn stateful_firewall_without_nat_is_symmetric_udp_firewall() {
    if !can_run("stateful_firewall_without_nat_is_symmetric_udp_firewall") {
        return;
    }
    let mut lab = Lab::new(Inside::Public);
    lab.nft(
        "table inet natscope {
           chain natscope_forward {
             type filter hook forward priority filter; policy drop;
             ct state established,related accept
             iifname \"rin\" oifname \"rout\" accept
           }
         }\n",
    );
    lab.serve();
    let p = lab.classify();
    let ctx = p.context();
    assert_server_suitable(&p);
    assert_eq!(p.json["nat"], false, "{ctx}");
    assert_eq!(p.json["mapped"], p.json["local"], "{ctx}");
    assert_eq!(
        ip_of(p.str("local")),
        "198.51.100.2".parse::<IpAddr>().unwrap()
    );
    assert_eq!(p.json["mapping"], "endpoint-independent", "{ctx}");
    assert_eq!(p.json["filtering"], "address-and-port-dependent", "{ctx}");
    assert_eq!(p.json["legacy"], "symmetric-udp-firewall", "{ctx}");
    assert_eq!(p.json["hairpinning"], Value::Null, "{ctx}");
    assert_eq!(p.json["port_preservation"], Value::Null, "{ctx}");

    exec(&lab.r, "nft flush ruleset");
    let open = lab.classify();
    let ctx = open.context();
    assert_server_suitable(&open);
    assert_eq!(open.json["nat"], false, "{ctx}");
    assert_eq!(open.json["filtering"], "endpoint-independent", "{ctx}");
    assert_eq!(open.json["legacy"], "open-internet", "{ctx}");
}

/// R drops every forwarded UDP packet: nothing answers test I. natprobe still prints its JSON,
/// and exits 3.
#[test]
fn udp_blocked_exits_3() {
    if !can_run("udp_blocked_exits_3") {
        return;
    }
    let mut lab = Lab::new(Inside::Private);
    lab.nft(&format!(
        "{}table inet natscope_filter {{
           chain natscope_forward {{
             type filter hook forward priority filter;
             meta l4proto udp counter drop
           }}
         }}\n",
        masquerade("")
    ));
    lab.serve();
    let started = Instant::now();
    let p = lab.natprobe(&[], Duration::from_secs(60));
    let took = started.elapsed();
    let ctx = p.context();
    assert_eq!(p.status.code(), Some(3), "{ctx}");
    assert_eq!(p.json["udp_blocked"], true, "{ctx}");
    assert_eq!(p.json["legacy"], "udp-blocked", "{ctx}");
    assert_eq!(p.json["nat"], Value::Null, "{ctx}");
    assert_eq!(p.json["mapped"], Value::Null, "{ctx}");
    assert!(took < Duration::from_secs(10), "took {took:?}\n{ctx}");
    // The drop rule is what stopped it, not a broken lab.
    let rules = lab.nft_list();
    let dropped = rules
        .split_whitespace()
        .skip_while(|w| *w != "packets")
        .nth(1)
        .and_then(|n| n.parse::<u64>().ok());
    assert!(dropped.is_some_and(|n| n > 0), "{rules}");
}

/// Conntrack's UDP timeout, set per namespace in R, is the binding lifetime natprobe measures.
///
/// `nf_conntrack_udp_timeout` (3 s here) is the timeout of a UDP flow that has not become a
/// "stream"; a flow whose only exchange is one request and its answer, within 2 s, stays on it
/// (`nf_conntrack_udp_timeout_stream` applies only to flows still active after 2 s). The entry
/// is refreshed by the server's answer, and natprobe starts its wait when it receives that
/// answer, so after a wait of 3.0 s the entry has just expired, after 2.5 s it is alive: the
/// search (1, 2 alive; 4, 3 expired; 2.5 alive) reports 2.5, the longest wait seen alive, with
/// the 0.5 s resolution. Scheduling delays only make a check later (so more likely expired),
/// which could give 2.0 on a very slow machine; [2, 4.5] allows for that and for one
/// resolution step of slack above the true 3 s.
#[test]
fn binding_lifetime_follows_conntrack_udp_timeout() {
    if !can_run("binding_lifetime_follows_conntrack_udp_timeout") {
        return;
    }
    let mut lab = Lab::new(Inside::Private);
    lab.nft(&masquerade(""));
    lab.sysctl_r("net.netfilter.nf_conntrack_udp_timeout", "3");
    // Per namespace: S, a fresh namespace, still has the default.
    assert_eq!(
        lab.sysctl_get(&lab.r, "net.netfilter.nf_conntrack_udp_timeout"),
        "3"
    );
    assert_ne!(
        lab.sysctl_get(&lab.s, "net.netfilter.nf_conntrack_udp_timeout"),
        "3"
    );
    lab.serve();
    let p = lab.natprobe(
        &[
            "--lifetime",
            "--lifetime-max",
            "8",
            "--lifetime-resolution",
            "0.5",
        ],
        Duration::from_secs(120),
    );
    let ctx = p.context();
    assert_eq!(p.status.code(), Some(0), "{ctx}");
    assert_server_suitable(&p);
    assert_eq!(p.json["legacy"], "port-restricted-cone", "{ctx}");
    let lifetime = p.json["binding_lifetime_s"]
        .as_f64()
        .unwrap_or_else(|| panic!("no lifetime\n{ctx}"));
    assert!(
        (2.0..=4.5).contains(&lifetime),
        "lifetime {lifetime}\n{ctx}"
    );
}

/// Hairpinning by nftables: a packet from inside to R's public address is sent back inside
/// (DNAT to the client host, same port) with its source rewritten to R's public address
/// (SNAT), as a peer on the outside would see it.
///
/// This is a lab shortcut, not a general hairpinning NAT: the DNAT sends every such port to
/// 192.168.77.2 whether or not a mapping exists, which works here because there is one inside
/// host and masquerade keeps the source port (so the mapped port is the local port). It shows
/// that natprobe sees hairpinning when the packets do come back.
#[test]
fn hairpinning_is_detected() {
    if !can_run("hairpinning_is_detected") {
        return;
    }
    let mut lab = Lab::new(Inside::Private);
    lab.nft(
        "table ip natscope {
           chain natscope_prerouting {
             type nat hook prerouting priority dstnat;
             iifname \"rin\" ip daddr 203.0.113.254 udp dport 1024-65535 dnat to 192.168.77.2
           }
           chain natscope_postrouting {
             type nat hook postrouting priority srcnat;
             oifname \"rout\" masquerade
             oifname \"rin\" ip saddr 192.168.77.0/24 ct status dnat snat to 203.0.113.254
           }
         }\n",
    );
    lab.serve();
    let p = lab.classify();
    let ctx = p.context();
    assert_server_suitable(&p);
    assert_eq!(p.json["nat"], true, "{ctx}");
    // The DNAT shortcut above relies on it.
    assert_eq!(p.json["port_preservation"], true, "{ctx}");
    assert_eq!(p.json["mapping"], "endpoint-independent", "{ctx}");
    assert_eq!(p.json["filtering"], "address-and-port-dependent", "{ctx}");
    assert_eq!(p.json["legacy"], "port-restricted-cone", "{ctx}");
    assert_eq!(p.json["hairpinning"], true, "{ctx}");
    let h = p.test("hairpinning");
    assert_eq!(h["outcome"], "delivered", "{ctx}");
    assert_eq!(h["destination"], p.json["mapped"], "{ctx}");
    assert_eq!(
        ip_of(h["from"].as_str().unwrap()),
        ROUTER_PUBLIC.parse::<IpAddr>().unwrap(),
        "the hairpinned packet must come from the external address\n{ctx}"
    );
}

/// NAT66 with Linux masquerade: the IPv6 code paths (XOR with the transaction ID, -6, address
/// formatting) end to end. Same conntrack, so the same verdict as IPv4 masquerade.
#[test]
fn ipv6_nat66_masquerade_is_port_restricted_cone() {
    if !can_run("ipv6_nat66_masquerade_is_port_restricted_cone") {
        return;
    }
    let mut lab = Lab::new(Inside::Private);
    lab.nft(
        "table ip6 natscope6 {
           chain natscope6_postrouting {
             type nat hook postrouting priority srcnat; policy accept;
             oifname \"rout\" masquerade
           }
         }",
    );
    lab.serve_v6();
    let p = lab.natprobe_to(SERVER_V6, &["-6"], Duration::from_secs(60));
    assert_eq!(p.status.code(), Some(0), "{}", p.context());
    assert_eq!(p.json["nat"], true, "{}", p.context());
    assert_eq!(p.str("server"), SERVER_V6);
    let local: SocketAddr = p.str("local").parse().unwrap();
    assert_eq!(local.ip().to_string(), "fd77::2");
    let mapped: SocketAddr = p.str("mapped").parse().unwrap();
    assert_eq!(mapped.ip().to_string(), ROUTER_PUBLIC_V6);
    assert_eq!(p.str("mapping"), "endpoint-independent", "{}", p.context());
    assert_eq!(
        p.str("filtering"),
        "address-and-port-dependent",
        "{}",
        p.context()
    );
    assert_eq!(p.str("legacy"), "port-restricted-cone");
    assert_eq!(p.json["rfc5780"], true);
    assert_eq!(p.test("filtering-II")["outcome"], "timeout");
    assert_eq!(
        p.test("server-check")["from"],
        format!("[{A2_V6}]:{P2}").as_str()
    );
}
