//! Running a scenario: bring the fabric up, start services, run probes and commands inside
//! hosts, compare with expectations, tear down on every path.

use std::io::{BufRead, BufReader, Read};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

use crate::fabric::{Fabric, FabricOptions};
use crate::matrix::model::{Expected, Mode, PathKind, Peers, SideResult, Turn};
use crate::matrix::session::{self, AgentCtx, SessionSpec, WorkDir};
use crate::matrix::spec::{TURN_PASS, TURN_USER};
use crate::scenario::{Expectation, IceExpect, NatImpl, Scenario, Service};
use crate::topology::{self, Side, Topology, Translator, Verdict};

/// STUN port turnd listens on in scenarios (P1); the alternate port is P1 + 1.
pub const STUN_PORT: u16 = 3478;

/// Set by the signal handler: stop what runs and tear down.
pub type StopFlag = Arc<AtomicBool>;

/// Why a run could not complete (as opposed to an expectation that did not hold).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The fabric could not be built or torn down.
    #[error(transparent)]
    Fabric(#[from] crate::fabric::FabricError),
    /// A program could not be started or did not become ready.
    #[error("{0}")]
    Service(String),
    /// Interrupted by a signal.
    #[error("interrupted")]
    Interrupted,
    /// Reports could not be written.
    #[error("cannot write reports: {0}")]
    Io(#[from] std::io::Error),
}

/// The model NAT as the fabric sees it.
#[derive(Debug)]
struct ModelNat(nat::Nat);

impl Translator for ModelNat {
    fn process(&mut self, now: Instant, from: Side, packet: &mut [u8]) -> Verdict {
        let side = match from {
            Side::Inside => nat::Side::Inside,
            Side::Outside => nat::Side::Outside,
        };
        match self.0.process(now, side, packet) {
            Ok(nat::Side::Inside) => Verdict::Forward(Side::Inside),
            Ok(nat::Side::Outside) => Verdict::Forward(Side::Outside),
            Err(reason) => Verdict::Drop(reason.as_str()),
        }
    }
    fn poll_timeout(&self) -> Option<Instant> {
        self.0.poll_timeout()
    }
    fn handle_timeout(&mut self, now: Instant) {
        self.0.handle_timeout(now);
    }
}

/// Build the fabric's topology: model NAT boxes become translators seeded from the scenario.
pub fn topology(s: &Scenario) -> Result<Topology, String> {
    let networks = s
        .networks
        .iter()
        .map(|n| topology::Network {
            name: n.name.clone(),
            prefixes: n.prefixes.clone(),
        })
        .collect();
    let hosts = s
        .hosts
        .iter()
        .map(|h| topology::Host {
            name: h.name.clone(),
            network: h.network,
            addresses: h.addresses.clone(),
            link: h.link,
        })
        .collect();
    let mut nats = Vec::new();
    for (i, n) in s.nats.iter().enumerate() {
        let kind = match &n.imp {
            NatImpl::Model(c) => {
                let seed = s
                    .seed
                    .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                    .wrapping_add(i as u64);
                let model =
                    nat::Nat::new(c.clone(), seed).map_err(|e| format!("NAT {}: {e}", n.name))?;
                topology::NatKind::Model(Box::new(ModelNat(model)))
            }
            NatImpl::Kernel { random_fully } => topology::NatKind::Kernel {
                random_fully: *random_fully,
            },
        };
        nats.push(topology::NatBox {
            name: n.name.clone(),
            inside: n.inside,
            outside: n.outside,
            inside_addr: n.inside_addr,
            external: n.external.clone(),
            kind,
            inside_link: n.inside_link,
            outside_link: n.outside_link,
        });
    }
    Ok(Topology {
        name: s.name.clone(),
        networks,
        hosts,
        nats,
    })
}

/// One property a probe checked.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// Property name (as in natprobe's JSON).
    pub property: &'static str,
    /// What the configuration implies.
    pub expected: Value,
    /// What natprobe reported.
    pub detected: Value,
    /// Whether they agree.
    pub ok: bool,
}

/// One natprobe run inside a host.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeResult {
    /// Host the probe ran on.
    pub host: String,
    /// Host running turnd.
    pub server: String,
    /// NAT boxes on the way, innermost first.
    pub chain: Vec<String>,
    /// The configured NATs' presets or kinds, innermost first (for reading the table).
    pub configured: Vec<String>,
    /// What was expected (derived from the configuration, overridden by the file).
    pub expected: Expectation,
    /// Each checked property.
    pub checks: Vec<Check>,
    /// natprobe's exit status.
    pub exit_code: Option<i32>,
    /// Every check held.
    pub ok: bool,
    /// Wall time of the probe.
    pub elapsed_ms: u64,
    /// natprobe's full JSON report (schema in the README), or null when it printed none.
    pub report: Value,
    /// natprobe's standard error, when it printed any.
    pub stderr: String,
}

/// One command run inside a host.
#[derive(Debug, Clone, Serialize)]
pub struct CommandResult {
    /// Host.
    pub host: String,
    /// Program and arguments.
    pub command: Vec<String>,
    /// Exit status (None: killed by a signal or the timeout).
    pub exit_code: Option<i32>,
    /// Expected exit status.
    pub expect_exit: i32,
    /// Required text in stdout.
    pub expect_stdout: Option<String>,
    /// Last part of stdout (up to 4 KiB).
    pub stdout: String,
    /// Last part of stderr (up to 4 KiB).
    pub stderr: String,
    /// Timed out.
    pub timed_out: bool,
    /// Expectation held.
    pub ok: bool,
    /// Wall time.
    pub elapsed_ms: u64,
}

/// One `[[ice]]` session.
#[derive(Debug, Clone, Serialize)]
pub struct IceResult {
    /// Host of the controlling agent (it offered).
    pub offer: String,
    /// Host of the controlled agent (it answered).
    pub answer: String,
    /// Host running turnd.
    pub server: String,
    /// Trickle or vanilla.
    pub mode: Mode,
    /// TURN setting.
    pub turn: Turn,
    /// Agents, `offer/answer`.
    pub peers: Peers,
    /// NAT boxes between the offer host and the server, innermost first.
    pub offer_chain: Vec<String>,
    /// NAT boxes between the answer host and the server, innermost first.
    pub answer_chain: Vec<String>,
    /// Both sides connected and datagrams went both ways.
    pub connected: bool,
    /// The worse of the two sides' selected pair kinds, when connected.
    pub path: Option<PathKind>,
    /// The offer side's selected pair as `local-remote` candidate types.
    pub pair: Option<String>,
    /// The later side's time to connected, milliseconds.
    pub time_to_connected_ms: Option<f64>,
    /// Connectivity checks of both sides together (None if an agent does not say).
    pub checks_sent: Option<u64>,
    /// What the file says the session must come to (checked instead of `expected` when
    /// given).
    pub expect: Option<IceExpect>,
    /// What the RFC 4787 oracle expects (None when not derived: see `not_derived`).
    pub expected: Option<Expected>,
    /// Why there is no derived expectation (the peers share a NAT box).
    pub not_derived: Option<String>,
    /// What was checked: `connected`, `path`, and `session` when it could not run.
    pub checks: Vec<Check>,
    /// Every check held.
    pub ok: bool,
    /// The offer side's own account.
    pub offer_side: SideResult,
    /// The answer side's own account.
    pub answer_side: SideResult,
    /// The session could not run: why.
    pub error: Option<String>,
    /// Wall time of the session.
    pub elapsed_ms: u64,
}

/// Everything a scenario run produced: the `result.json` contract (see reports/README.md).
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioResult {
    /// Version of this JSON layout.
    pub schema_version: u32,
    /// Scenario name.
    pub scenario: String,
    /// Scenario file.
    pub source: String,
    /// Description from the file.
    pub description: Option<String>,
    /// Seed used.
    pub seed: u64,
    /// Every expectation held.
    pub ok: bool,
    /// Probes.
    pub probes: Vec<ProbeResult>,
    /// Commands.
    pub runs: Vec<CommandResult>,
    /// ICE sessions.
    pub ice: Vec<IceResult>,
    /// Time to build the fabric.
    pub setup_ms: u64,
    /// Time to tear it down.
    pub teardown_ms: u64,
    /// Whole run.
    pub elapsed_ms: u64,
    /// Per-link and per-NAT counters from the fabric.
    pub fabric: Value,
    /// pcap files written, relative to the report folder.
    pub pcap: Vec<String>,
}

/// Options for one run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Report root (`reports/`); the run writes `<root>/<scenario>/`.
    pub reports: PathBuf,
    /// Write pcap files.
    pub pcap: bool,
}

/// A scenario brought up with its services running: what `run` and `shell` share.
#[derive(Debug)]
pub struct Live {
    /// The fabric.
    pub fabric: Fabric,
    services: Vec<(String, Child)>,
    /// Setup time.
    pub setup: Duration,
}

/// Path of this executable, which is also `natprobe` and `turnd` (multi-call).
pub fn self_exe() -> Result<PathBuf, RunError> {
    std::env::current_exe()
        .map_err(|e| RunError::Service(format!("cannot find own executable: {e}")))
}

/// A command that runs `tool` (natprobe or turnd, provided by this executable) inside `host`.
pub fn tool_command(fabric: &Fabric, host: &str, tool: &str) -> Result<Command, RunError> {
    let mut cmd = fabric.command(host, self_exe()?)?;
    cmd.arg("tool").arg(tool);
    Ok(cmd)
}

/// Bring the scenario up and start its services.
pub fn bring_up(s: &Scenario, opts: &RunOptions, stop: &StopFlag) -> Result<Live, RunError> {
    let topo = topology(s).map_err(RunError::Service)?;
    let report_dir = opts.reports.join(&s.name);
    let pcap_dir = opts.pcap.then(|| report_dir.join("pcap"));
    if let Some(d) = &pcap_dir {
        // Old captures would mix with this run's.
        let _ = std::fs::remove_dir_all(d);
        std::fs::create_dir_all(d)?;
    }
    let t0 = Instant::now();
    let fabric = Fabric::up(
        topo,
        FabricOptions {
            prefix: crate::fabric::run_prefix(),
            pcap_dir,
            seed: s.seed,
        },
    )?;
    let mut live = Live {
        fabric,
        services: Vec::new(),
        setup: Duration::ZERO,
    };
    for h in &s.hosts {
        for svc in &h.services {
            if stop.load(Ordering::Relaxed) {
                return Err(live.abort(RunError::Interrupted));
            }
            match svc {
                Service::Turnd => {
                    // TURN too, for [[ice]] sessions (natprobe only speaks STUN).
                    let user = format!("{TURN_USER}:{TURN_PASS}");
                    if let Err(e) = live.start_turnd(&h.name, &h.addresses, &["--user", &user]) {
                        return Err(live.abort(e));
                    }
                }
            }
        }
    }
    live.setup = t0.elapsed();
    Ok(live)
}

impl Live {
    fn abort(self, e: RunError) -> RunError {
        let _ = self.down();
        e
    }

    /// Start turnd on `host` (its first address, port [`STUN_PORT`]; RFC 5780 with a second
    /// address), with `extra` arguments (TURN users, say); wait for its ready line. It stops
    /// with [`Live::down`].
    pub fn start_turnd(
        &mut self,
        host: &str,
        addrs: &[Ipv4Addr],
        extra: &[&str],
    ) -> Result<(), RunError> {
        let Some(primary) = addrs.first() else {
            return Err(RunError::Service(format!(
                "host {host} has no address for turnd"
            )));
        };
        let mut cmd = tool_command(&self.fabric, host, "turnd")?;
        cmd.args(extra);
        cmd.arg("--listen")
            .arg(format!("{primary}:{STUN_PORT}"))
            .env("RUST_LOG", "warn");
        if let Some(alt) = addrs.get(1) {
            cmd.arg("--alt-ip")
                .arg(alt.to_string())
                .arg("--alt-port")
                .arg((STUN_PORT + 1).to_string());
        }
        {
            use std::os::unix::process::CommandExt as _;
            cmd.stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .stdin(Stdio::null())
                .process_group(0);
        }
        let mut child = self.fabric.spawn(host, cmd)?;
        let stdout = child.stdout.take();
        // Keep draining stderr so turnd never blocks on a full pipe; the reader thread ends
        // with turnd and hands back the last 4 KiB for error messages.
        let err_rx = drain(child.stderr.take().map(TailReader::new));
        let (tx, rx) = std::sync::mpsc::channel();
        if let Some(out) = stdout {
            std::thread::spawn(move || {
                let mut lines = BufReader::new(out).lines();
                let first = lines.next();
                let _ = tx.send(first);
                // Keep draining so turnd never blocks on a full pipe.
                for _ in lines {}
            });
        }
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Some(Ok(line))) if line.starts_with("turnd ready") => {
                self.services.push((format!("turnd on {host}"), child));
                Ok(())
            }
            other => {
                kill_group(&mut child);
                let err = err_rx
                    .recv_timeout(Duration::from_secs(2))
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default();
                Err(RunError::Service(format!(
                    "turnd on host {host} did not start ({}): {}",
                    match other {
                        Ok(Some(Ok(l))) => format!("printed {l:?}"),
                        Err(_) => "no ready line within 10 s".into(),
                        _ => "exited".into(),
                    },
                    err.trim()
                )))
            }
        }
    }

    /// Stop services (by PID) and tear the fabric down.
    pub fn down(mut self) -> Result<(Value, Duration), RunError> {
        for (_, c) in &mut self.services {
            if let Ok(pid) = i32::try_from(c.id()) {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        for (_, c) in &mut self.services {
            while Instant::now() < deadline {
                if matches!(c.try_wait(), Ok(Some(_))) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            kill_group(c);
        }
        let t0 = Instant::now();
        let stats = self.fabric.down()?;
        let stats = serde_json::to_value(stats).unwrap_or(Value::Null);
        Ok((stats, t0.elapsed()))
    }
}

/// A reader that keeps only the last 4 KiB of what it reads (so draining a chatty child's
/// stderr for the whole run uses bounded memory).
struct TailReader<R> {
    inner: R,
    tail: Vec<u8>,
    done: bool,
}

impl<R: Read> TailReader<R> {
    fn new(inner: R) -> Self {
        TailReader {
            inner,
            tail: Vec::new(),
            done: false,
        }
    }
}

impl<R: Read> Read for TailReader<R> {
    /// Consumes the inner reader to its end, then yields the kept tail once.
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if !self.done {
            let mut buf = [0u8; 4096];
            loop {
                let n = self.inner.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                self.tail.extend_from_slice(&buf[..n]);
                if self.tail.len() > 4096 {
                    let cut = self.tail.len() - 4096;
                    self.tail.drain(..cut);
                }
            }
            self.done = true;
        }
        let n = out.len().min(self.tail.len());
        out[..n].copy_from_slice(&self.tail[..n]);
        self.tail.drain(..n);
        Ok(n)
    }
}

/// Output and status of a finished child.
struct Finished {
    status: Option<ExitStatus>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    timed_out: bool,
}

/// Kill a child and everything in its process group (it was started as a group leader).
pub(crate) fn kill_group(child: &mut Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Read a pipe to its end on a thread; the receiver gets the bytes.
pub(crate) fn drain(
    pipe: Option<impl Read + Send + 'static>,
) -> std::sync::mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut buf);
        }
        let _ = tx.send(buf);
    });
    rx
}

/// Run a command to completion with a timeout, honouring the stop flag. The command runs in
/// its own process group, so a timeout or a stop kills whatever it started too, and the
/// output readers are given up on after a grace period (a grandchild that escaped the group
/// cannot hold the run hostage).
fn run_to_end(
    fabric: &mut Fabric,
    host: &str,
    mut cmd: Command,
    timeout: Duration,
    stop: &StopFlag,
) -> Result<Finished, RunError> {
    use std::os::unix::process::CommandExt as _;
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(Stdio::null())
        .process_group(0);
    let mut child = fabric.spawn(host, cmd)?;
    let out_rx = drain(child.stdout.take());
    let err_rx = drain(child.stderr.take());
    let t0 = Instant::now();
    let mut timed_out = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) => {}
            Err(_) => break None,
        }
        if stop.load(Ordering::Relaxed) {
            kill_group(&mut child);
            return Err(RunError::Interrupted);
        }
        if t0.elapsed() > timeout {
            timed_out = true;
            kill_group(&mut child);
            break child.wait().ok();
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    // The child is gone; its group may not be (a background job it left). Give the pipes a
    // moment, then stop waiting for them.
    let grace = Duration::from_secs(2);
    let stdout = out_rx.recv_timeout(grace).unwrap_or_default();
    let stderr = err_rx.recv_timeout(grace).unwrap_or_default();
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    Ok(Finished {
        status,
        stdout,
        stderr,
        timed_out,
    })
}

pub(crate) fn tail(bytes: &[u8], max: usize) -> String {
    let s = String::from_utf8_lossy(bytes);
    if s.len() <= max {
        return s.into_owned();
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    format!("…{}", &s[start..])
}

/// Compare natprobe's report with the expectation.
pub fn compare(expected: &Expectation, report: &Value) -> Vec<Check> {
    let mut checks = Vec::new();
    let get = |k: &str| report.get(k).cloned().unwrap_or(Value::Null);
    let mut push = |property: &'static str, exp: Value, det: Value, ok: bool| {
        checks.push(Check {
            property,
            expected: exp,
            detected: det,
            ok,
        });
    };
    if let Some(b) = expected.udp_blocked {
        let d = get("udp_blocked");
        push("udp_blocked", b.into(), d.clone(), d == Value::Bool(b));
    }
    if let Some(b) = expected.nat {
        let d = get("nat");
        push("nat", b.into(), d.clone(), d == Value::Bool(b));
    }
    for (k, v) in [
        ("mapping", &expected.mapping),
        ("filtering", &expected.filtering),
        ("legacy", &expected.legacy),
    ] {
        if let Some(v) = v {
            let d = get(k);
            let ok = d.as_str() == Some(v.as_str());
            push(
                match k {
                    "mapping" => "mapping",
                    "filtering" => "filtering",
                    _ => "legacy",
                },
                Value::String(v.clone()),
                d,
                ok,
            );
        }
    }
    for (k, v) in [
        ("hairpinning", expected.hairpinning),
        ("port_preservation", expected.port_preservation),
    ] {
        if let Some(b) = v {
            let d = get(k);
            push(
                if k == "hairpinning" {
                    "hairpinning"
                } else {
                    "port_preservation"
                },
                b.into(),
                d.clone(),
                d == Value::Bool(b),
            );
        }
    }
    if let Some(t) = expected.binding_lifetime_s {
        // natprobe brackets the lifetime: alive after `binding_lifetime_s`, gone after
        // `binding_lifetime_expired_s`. The configured timeout must fall in that bracket, give
        // or take the probe's resolution and the fabric's timer granularity.
        let alive = get("binding_lifetime_s").as_f64();
        let gone = get("binding_lifetime_expired_s").as_f64();
        let slack = 1.5;
        let ok = match (alive, gone) {
            (Some(a), Some(g)) => a - slack <= t && t <= g + slack,
            (Some(a), None) => a - slack <= t,
            _ => false,
        };
        let det = serde_json::json!({ "alive_s": alive, "expired_s": gone });
        push("binding_lifetime_s", t.into(), det, ok);
    }
    checks
}

/// Run natprobe for one probe definition.
fn run_probe(
    s: &Scenario,
    live: &mut Live,
    idx: usize,
    stop: &StopFlag,
) -> Result<ProbeResult, RunError> {
    let p = &s.probes[idx];
    let host = &s.hosts[p.host];
    let server = &s.hosts[p.server];
    let mut cmd = tool_command(&live.fabric, &host.name, "natprobe")?;
    cmd.arg("--json").arg("--fast").arg("-4");
    let mut timeout = Duration::from_secs(60);
    if p.lifetime {
        cmd.arg("--lifetime")
            .arg("--lifetime-max")
            .arg(p.lifetime_max.to_string());
        timeout += Duration::from_secs(p.lifetime_max * 4);
    }
    cmd.arg(format!("{}:{STUN_PORT}", server.addresses[0]));
    let t0 = Instant::now();
    let f = run_to_end(&mut live.fabric, &host.name, cmd, timeout, stop)?;
    let elapsed_ms = t0.elapsed().as_millis() as u64;
    let report: Value = serde_json::from_slice(&f.stdout).unwrap_or(Value::Null);
    let expected = p.expected();
    let mut checks = compare(&expected, &report);
    let exit_code = f.status.and_then(|s| s.code());
    // natprobe exits 3 when UDP is blocked (no server answered); anything else but 0 is a
    // failure of the probe itself.
    let want_exit = if expected.udp_blocked == Some(true) {
        3
    } else {
        0
    };
    if exit_code != Some(want_exit) || f.timed_out {
        checks.push(Check {
            property: "exit_status",
            expected: want_exit.into(),
            detected: exit_code.map_or(Value::Null, Value::from),
            ok: false,
        });
    }
    let ok = checks.iter().all(|c| c.ok) && !report.is_null();
    Ok(ProbeResult {
        host: host.name.clone(),
        server: server.name.clone(),
        chain: p.chain.iter().map(|&i| s.nats[i].name.clone()).collect(),
        configured: p.chain.iter().map(|&i| describe_nat(s, i)).collect(),
        expected,
        checks,
        exit_code,
        ok,
        elapsed_ms,
        report,
        stderr: tail(&f.stderr, 4096),
    })
}

/// A short description of a NAT box's configuration.
pub fn describe_nat(s: &Scenario, i: usize) -> String {
    let n = &s.nats[i];
    match &n.imp {
        NatImpl::Kernel {
            random_fully: false,
        } => "kernel masquerade".into(),
        NatImpl::Kernel { random_fully: true } => "kernel masquerade random-fully".into(),
        NatImpl::Model(c) => {
            let mode = match c.mode {
                nat::Mode::Nat => String::new(),
                nat::Mode::Firewall => "firewall ".into(),
                nat::Mode::UdpBlocked => return "udp-blocked firewall".into(),
            };
            let short = |b: nat::Behavior| match b {
                nat::Behavior::EndpointIndependent => "EI",
                nat::Behavior::AddressDependent => "AD",
                nat::Behavior::AddressAndPortDependent => "APD",
            };
            if c.mode == nat::Mode::Firewall {
                format!("{mode}{}F", short(c.filtering))
            } else {
                format!(
                    "{}M/{}F{}",
                    short(c.mapping),
                    short(c.filtering),
                    if c.hairpinning { " hairpin" } else { "" }
                )
            }
        }
    }
}

/// Run a whole scenario and write its reports. Teardown happens on every path.
pub fn run(s: &Scenario, opts: &RunOptions, stop: &StopFlag) -> Result<ScenarioResult, RunError> {
    let t0 = Instant::now();
    let mut live = bring_up(s, opts, stop)?;
    let setup = live.setup;
    let mut probes = Vec::new();
    let mut runs = Vec::new();
    let mut ice = Vec::new();
    let body = (|| -> Result<(), RunError> {
        for i in 0..s.probes.len() {
            probes.push(run_probe(s, &mut live, i, stop)?);
        }
        if !s.ice.is_empty() {
            let work = WorkDir::create("ice")?;
            let agents = AgentCtx::prepare(&work.path, &python())?;
            for i in 0..s.ice.len() {
                ice.push(run_ice(s, &mut live, i, &agents, &work.path, stop)?);
            }
        }
        for r in &s.runs {
            let host = &s.hosts[r.host].name;
            let cmd = match r.command[0].as_str() {
                tool @ ("natprobe" | "turnd") => {
                    let mut c = tool_command(&live.fabric, host, tool)?;
                    c.args(&r.command[1..]);
                    c
                }
                prog => {
                    let mut c = live.fabric.command(host, prog)?;
                    c.args(&r.command[1..]);
                    c
                }
            };
            let t = Instant::now();
            let f = run_to_end(&mut live.fabric, host, cmd, r.timeout, stop)?;
            let exit_code = f.status.and_then(|s| s.code());
            let stdout = String::from_utf8_lossy(&f.stdout);
            let ok = !f.timed_out
                && exit_code == Some(r.expect_exit)
                && r.expect_stdout
                    .as_ref()
                    .is_none_or(|w| stdout.contains(w.as_str()));
            runs.push(CommandResult {
                host: host.clone(),
                command: r.command.clone(),
                exit_code,
                expect_exit: r.expect_exit,
                expect_stdout: r.expect_stdout.clone(),
                stdout: tail(&f.stdout, 4096),
                stderr: tail(&f.stderr, 4096),
                timed_out: f.timed_out,
                ok,
                elapsed_ms: t.elapsed().as_millis() as u64,
            });
        }
        Ok(())
    })();
    let down = live.down();
    body?;
    let (fabric, teardown) = down?;
    let pcap = list_pcaps(&opts.reports.join(&s.name));
    let ok = probes.iter().all(|p| p.ok) && runs.iter().all(|r| r.ok) && ice.iter().all(|i| i.ok);
    let result = ScenarioResult {
        schema_version: 1,
        scenario: s.name.clone(),
        source: s.source.display().to_string(),
        description: s.description.clone(),
        seed: s.seed,
        ok,
        probes,
        runs,
        ice,
        setup_ms: setup.as_millis() as u64,
        teardown_ms: teardown.as_millis() as u64,
        elapsed_ms: t0.elapsed().as_millis() as u64,
        fabric,
        pcap,
    };
    crate::report::write(&opts.reports, &result)?;
    Ok(result)
}

/// Environment variable naming the Python interpreter (with aioice) for `[[ice]]` sessions
/// with an aioice peer; default `python3`.
pub const PYTHON_ENV: &str = "SIM_PYTHON";

fn python() -> PathBuf {
    std::env::var_os(PYTHON_ENV)
        .filter(|p| !p.is_empty())
        .map_or_else(|| PathBuf::from("python3"), PathBuf::from)
}

/// Run one `[[ice]]` session and check it. A session that cannot run is a failed result;
/// only a stop ends the scenario.
fn run_ice(
    s: &Scenario,
    live: &mut Live,
    idx: usize,
    agents: &AgentCtx,
    work: &std::path::Path,
    stop: &StopFlag,
) -> Result<IceResult, RunError> {
    let d = &s.ice[idx];
    let t0 = Instant::now();
    let server = &s.hosts[d.server];
    let spec = SessionSpec {
        offer_host: s.hosts[d.offer].name.clone(),
        answer_host: s.hosts[d.answer].name.clone(),
        server_ip: server.addresses[0],
        mode: d.mode,
        turn: d.turn,
        peers: d.peers,
        signaling_delay: d.signaling_delay,
        timeout: d.timeout,
        seed: s.seed.wrapping_mul(1000).wrapping_add(idx as u64),
        dir: work.join(format!("ice{idx}")),
    };
    let sides = session::run_session(live, &spec, agents, stop);
    if stop.load(Ordering::Relaxed) {
        return Err(RunError::Interrupted);
    }
    let (offer_side, answer_side, error) = match sides {
        Ok((o, a)) => (o, a, None),
        Err(e) => (SideResult::default(), SideResult::default(), Some(e)),
    };
    let o = session::outcome(&offer_side, &answer_side);
    let (expected, not_derived) = match &d.derived {
        Ok(e) => (Some(e.clone()), None),
        Err(why) => (None, Some(why.clone())),
    };
    let checks = ice_checks(d.expect, expected.as_ref(), &o, error.as_deref());
    let names = |chain: &[usize]| chain.iter().map(|&i| s.nats[i].name.clone()).collect();
    Ok(IceResult {
        offer: spec.offer_host,
        answer: spec.answer_host,
        server: server.name.clone(),
        mode: d.mode,
        turn: d.turn,
        peers: d.peers,
        offer_chain: names(&d.offer_chain),
        answer_chain: names(&d.answer_chain),
        connected: o.connected,
        path: o.path,
        pair: o.pair,
        time_to_connected_ms: o.time_to_connected_ms,
        checks_sent: o.checks_sent,
        expect: d.expect,
        expected,
        not_derived,
        ok: checks.iter().all(|c| c.ok),
        checks,
        offer_side,
        answer_side,
        error,
        elapsed_ms: t0.elapsed().as_millis() as u64,
    })
}

fn kind_value(p: Option<PathKind>) -> Value {
    p.map_or(Value::Null, |k| Value::String(k.as_str().to_owned()))
}

/// What an ICE session is checked on: the file's `expect` when given, else the oracle's
/// expectation when derived, else nothing (beyond having run).
pub fn ice_checks(
    expect: Option<IceExpect>,
    derived: Option<&Expected>,
    o: &session::Outcome,
    error: Option<&str>,
) -> Vec<Check> {
    let mut checks = Vec::new();
    if let Some(e) = error {
        checks.push(Check {
            property: "session",
            expected: "ran".into(),
            detected: e.into(),
            ok: false,
        });
    }
    let (connects, path_want, path_ok) = if let Some(x) = expect {
        let path_want = match x {
            IceExpect::Connected | IceExpect::Failed => None,
            other => Some(Value::String(other.as_str().to_owned())),
        };
        (x.connects(), path_want, x.holds(true, o.path))
    } else if let Some(e) = derived {
        (
            e.connects,
            e.path.map(|p| Value::String(p.as_str().to_owned())),
            o.path == e.path,
        )
    } else {
        return checks;
    };
    checks.push(Check {
        property: "connected",
        expected: connects.into(),
        detected: o.connected.into(),
        ok: o.connected == connects,
    });
    if let Some(want) = path_want {
        checks.push(Check {
            property: "path",
            expected: want,
            detected: kind_value(o.path),
            ok: o.connected && path_ok,
        });
    }
    checks
}

fn list_pcaps(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir.join("pcap"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.ends_with(".pcap"))
        .map(|n| format!("pcap/{n}"))
        .collect();
    v.sort();
    v
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn outcome(connected: bool, path: Option<PathKind>) -> session::Outcome {
        session::Outcome {
            connected,
            path,
            pair: None,
            time_to_connected_ms: None,
            checks_sent: None,
        }
    }

    fn oracle(connects: bool, path: Option<PathKind>) -> Expected {
        Expected {
            connects,
            path,
            reason: "r".into(),
        }
    }

    #[test]
    fn ice_checks_prefer_the_file_then_the_oracle() {
        let srflx = outcome(true, Some(PathKind::Srflx));
        // The oracle alone: connected and on its path.
        let c = ice_checks(
            None,
            Some(&oracle(true, Some(PathKind::Srflx))),
            &srflx,
            None,
        );
        assert_eq!(c.len(), 2);
        assert!(c.iter().all(|c| c.ok), "{c:?}");
        let c = ice_checks(
            None,
            Some(&oracle(true, Some(PathKind::Prflx))),
            &srflx,
            None,
        );
        assert!(c[0].ok && !c[1].ok, "{c:?}");
        assert_eq!(c[1].expected, "prflx");
        assert_eq!(c[1].detected, "srflx");
        // The file's word wins over the oracle.
        let c = ice_checks(
            Some(IceExpect::Direct),
            Some(&oracle(false, None)),
            &srflx,
            None,
        );
        assert!(c.iter().all(|c| c.ok), "{c:?}");
        let failed = outcome(false, None);
        let c = ice_checks(Some(IceExpect::Relay), None, &failed, None);
        assert_eq!(c.iter().filter(|c| !c.ok).count(), 2, "{c:?}");
        let c = ice_checks(Some(IceExpect::Failed), None, &failed, None);
        assert_eq!(c.len(), 1);
        assert!(c[0].ok);
        // Neither: nothing to check, unless the session could not run.
        assert!(ice_checks(None, None, &srflx, None).is_empty());
        let c = ice_checks(None, None, &failed, Some("cannot start the agent"));
        assert_eq!(c.len(), 1);
        assert!(!c[0].ok);
        assert_eq!(c[0].property, "session");
    }
}
