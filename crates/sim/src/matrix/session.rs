//! One ICE session between two hosts of a running scenario: an agent in each host's
//! namespace (our `icepeer`, or aioice through the embedded `aioice_peer.py`), STUN and TURN
//! from turnd on a server host, and signaling carried outside the emulated network through
//! files with a one-way delay. Matrix cells and scenario `[[ice]]` entries both run here.

use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::model::{Agent, Mode, PathKind, Peers, SideResult, Turn};
use super::spec::{TURN_PASS, TURN_USER};
use crate::runner::{self, Live, STUN_PORT, StopFlag};

/// The aioice peer script, carried inside the binary so a session needs nothing but `sim`
/// and the `aioice` Python package.
const AIOICE_PEER: &str = include_str!("../../../ice/tests/peers/aioice_peer.py");

/// A temporary folder (signaling files, the aioice script), removed on drop.
#[derive(Debug)]
pub struct WorkDir {
    /// The folder.
    pub path: PathBuf,
}

impl WorkDir {
    /// Create `<tmp>/natscope-<tag>-<pid>-<n>` (emptied first if it exists).
    pub fn create(tag: &str) -> std::io::Result<WorkDir> {
        static N: AtomicUsize = AtomicUsize::new(0);
        // A name nobody can guess, created only if it does not exist yet: this folder holds a
        // script that runs as root.
        let path = std::env::temp_dir().join(format!(
            "natscope-{tag}-{}-{}-{:016x}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst),
            rand::random::<u64>()
        ));
        std::fs::create_dir(&path)?;
        Ok(WorkDir { path })
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Where the agents come from.
#[derive(Debug, Clone)]
pub struct AgentCtx {
    /// This executable (`sim tool icepeer`).
    pub exe: PathBuf,
    /// Python interpreter with aioice installed.
    pub python: PathBuf,
    /// `aioice_peer.py`, written by [`AgentCtx::prepare`].
    pub script: PathBuf,
}

impl AgentCtx {
    /// Write the aioice script into `work` and find this executable.
    pub fn prepare(work: &Path, python: &Path) -> Result<AgentCtx, runner::RunError> {
        let script = work.join("aioice_peer.py");
        std::fs::write(&script, AIOICE_PEER)?;
        Ok(AgentCtx {
            exe: runner::self_exe()?,
            python: python.to_path_buf(),
            script,
        })
    }
}

/// One session to run in a scenario that is up, with turnd (STUN and TURN for
/// [`TURN_USER`]) already listening on `server_ip`.
#[derive(Debug, Clone)]
pub struct SessionSpec {
    /// Host of the controlling agent, which offers.
    pub offer_host: String,
    /// Host of the controlled agent, which answers.
    pub answer_host: String,
    /// turnd's address (port [`STUN_PORT`]).
    pub server_ip: Ipv4Addr,
    /// Trickle or vanilla.
    pub mode: Mode,
    /// TURN setting.
    pub turn: Turn,
    /// Agents: `row` offers, `column` answers.
    pub peers: Peers,
    /// One-way signaling delay.
    pub signaling_delay: Duration,
    /// ICE timeout of each agent.
    pub timeout: Duration,
    /// icepeer's seeds: `seed * 2 + 1` for the offer, `seed * 2` for the answer.
    pub seed: u64,
    /// Folder for the signaling files (created if missing).
    pub dir: PathBuf,
}

/// What a session came to, from both sides' accounts.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// Both sides connected and datagrams went both ways.
    pub connected: bool,
    /// The worse of the two sides' pair kinds, when connected.
    pub path: Option<PathKind>,
    /// The offer side's pair as `local-remote` candidate types, when connected.
    pub pair: Option<String>,
    /// The later side's time to connected, when connected.
    pub time_to_connected_ms: Option<f64>,
    /// Checks of both sides together (None if an agent does not say).
    pub checks_sent: Option<u64>,
}

/// Derive the session's outcome from the offer (controlling) and answer sides.
pub fn outcome(offer: &SideResult, answer: &SideResult) -> Outcome {
    let (r, c) = (offer, answer);
    let connected = r.connected
        && c.connected
        && r.datagrams_ok.unwrap_or(false)
        && c.datagrams_ok.unwrap_or(false);
    let kind = |s: &SideResult| match (&s.local_type, &s.remote_type) {
        (Some(l), Some(r)) => PathKind::of_pair(l, r),
        _ => None,
    };
    let mut o = Outcome {
        connected,
        path: None,
        pair: None,
        time_to_connected_ms: None,
        checks_sent: match (r.checks_sent, c.checks_sent) {
            (Some(a), Some(b)) => Some(a + b),
            _ => None,
        },
    };
    if connected {
        o.path = match (kind(r), kind(c)) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        o.pair = match (&r.local_type, &r.remote_type) {
            (Some(l), Some(rt)) => Some(format!("{l}-{rt}")),
            _ => None,
        };
        o.time_to_connected_ms = match (r.time_to_connected_ms, c.time_to_connected_ms) {
            (Some(a), Some(b)) => Some(round1(a.max(b))),
            (a, b) => a.or(b).map(round1),
        };
    }
    o
}

pub(crate) fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// Run one session: start both agents, relay their signaling with the delay, wait for both
/// to finish (or the timeout plus the datagram exchange, or a stop), and read what each
/// reported. Returns the offer side, then the answer side. An error means the session could
/// not run (an agent did not start, or a stop interrupted it).
pub fn run_session(
    live: &mut Live,
    s: &SessionSpec,
    ctx: &AgentCtx,
    stop: &StopFlag,
) -> Result<(SideResult, SideResult), String> {
    std::fs::create_dir_all(&s.dir).map_err(|e| e.to_string())?;
    let files = Signaling::new(&s.dir).map_err(|e| format!("signaling files: {e}"))?;
    let offer_cmd = peer_command(ctx, live, s, true, &files)?;
    let answer_cmd = peer_command(ctx, live, s, false, &files)?;
    let mut offer = spawn(live, &s.offer_host, offer_cmd)?;
    let mut answer = match spawn(live, &s.answer_host, answer_cmd) {
        Ok(p) => p,
        Err(e) => {
            runner::kill_group(&mut offer.child);
            return Err(e);
        }
    };
    // Both agents give up at the timeout; the datagram exchange after connecting takes up to
    // 5 s more. Past that, they are killed.
    let deadline = Instant::now() + s.timeout + Duration::from_secs(8);
    let mut relay = Relay::new(&files, s.signaling_delay);
    let mut interrupted = false;
    loop {
        relay.pump();
        let o_done = matches!(offer.child.try_wait(), Ok(Some(_)));
        let a_done = matches!(answer.child.try_wait(), Ok(Some(_)));
        if o_done && a_done {
            break;
        }
        if stop.load(Ordering::Relaxed) {
            interrupted = true;
            break;
        }
        if Instant::now() > deadline {
            break;
        }
        // 2 ms: signaling delays are tens of milliseconds, and many cells poll at once.
        std::thread::sleep(Duration::from_millis(2));
    }
    let o = finish(offer, s.peers.row);
    let a = finish(answer, s.peers.column);
    if interrupted {
        return Err("interrupted".into());
    }
    Ok((o, a))
}

/// The four signaling files of a session: each agent writes its own `*.out` and follows its
/// `*.in`, which the relay fills.
struct Signaling {
    offer_out: PathBuf,
    offer_in: PathBuf,
    answer_out: PathBuf,
    answer_in: PathBuf,
}

impl Signaling {
    fn new(dir: &Path) -> std::io::Result<Signaling> {
        let s = Signaling {
            offer_out: dir.join("row.out"),
            offer_in: dir.join("row.in"),
            answer_out: dir.join("col.out"),
            answer_in: dir.join("col.in"),
        };
        for p in [&s.offer_out, &s.offer_in, &s.answer_out, &s.answer_in] {
            std::fs::File::create(p)?;
        }
        Ok(s)
    }
}

/// Carries lines from one agent's output file to the other's input file, each after the
/// one-way delay: the signaling server of a real deployment, outside the emulated network.
struct Relay {
    lanes: [Lane; 2],
}

struct Lane {
    from: PathBuf,
    to: PathBuf,
    offset: u64,
    partial: Vec<u8>,
    queue: std::collections::VecDeque<(Instant, Vec<u8>)>,
    delay: Duration,
    /// The peer wrote more than a signaling message can hold without a line end, or more than
    /// [`MAX_SIGNALING`] in all: the lane carries nothing more.
    cut: bool,
}

/// Most bytes one agent may signal in a session (a vanilla blob is a few KiB).
const MAX_SIGNALING: u64 = 1 << 20;

impl Relay {
    fn new(f: &Signaling, delay: Duration) -> Relay {
        let lane = |from: &PathBuf, to: &PathBuf| Lane {
            from: from.clone(),
            to: to.clone(),
            offset: 0,
            partial: Vec::new(),
            queue: Default::default(),
            delay,
            cut: false,
        };
        Relay {
            lanes: [
                lane(&f.offer_out, &f.answer_in),
                lane(&f.answer_out, &f.offer_in),
            ],
        }
    }

    fn pump(&mut self) {
        for l in &mut self.lanes {
            l.pump();
        }
    }
}

impl Lane {
    fn pump(&mut self) {
        let now = Instant::now();
        if self.cut {
            return;
        }
        if let Ok(mut f) = std::fs::File::open(&self.from) {
            if f.seek(SeekFrom::Start(self.offset)).is_ok() {
                let mut buf = Vec::new();
                let room = MAX_SIGNALING.saturating_sub(self.offset);
                if let Ok(n) = (&mut f).take(room).read_to_end(&mut buf) {
                    self.offset += n as u64;
                    self.partial.extend_from_slice(&buf);
                }
            }
        }
        // A flooding peer is cut off: what it wrote in all, or one line, is bounded.
        if self.offset >= MAX_SIGNALING || self.partial.len() > ice::signal::MAX_BLOB {
            tracing::warn!(from = %self.from.display(), "signaling flood: lane closed");
            self.cut = true;
            self.partial.clear();
            self.queue.clear();
            return;
        }
        while let Some(i) = self.partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=i).collect();
            self.queue.push_back((now + self.delay, line));
        }
        let mut out = Vec::new();
        while self.queue.front().is_some_and(|(at, _)| *at <= now) {
            if let Some((_, line)) = self.queue.pop_front() {
                out.extend_from_slice(&line);
            }
        }
        if !out.is_empty() {
            if let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(&self.to) {
                let _ = f.write_all(&out);
            }
        }
    }
}

fn peer_command(
    ctx: &AgentCtx,
    live: &Live,
    s: &SessionSpec,
    offer: bool,
    files: &Signaling,
) -> Result<Command, String> {
    let (host, agent, sig_in, sig_out) = if offer {
        (
            &s.offer_host,
            s.peers.row,
            &files.offer_in,
            &files.offer_out,
        )
    } else {
        (
            &s.answer_host,
            s.peers.column,
            &files.answer_in,
            &files.answer_out,
        )
    };
    let role = if offer { "offer" } else { "answer" };
    let stun = format!("{}:{STUN_PORT}", s.server_ip);
    let timeout = format!("{:.3}", s.timeout.as_secs_f64());
    let mut cmd = match agent {
        Agent::Icepeer => {
            let mut cmd = live
                .fabric
                .command(host, &ctx.exe)
                .map_err(|e| e.to_string())?;
            cmd.args(["tool", "icepeer", role, "--stun", &stun]);
            if s.turn != Turn::None {
                cmd.arg("--turn")
                    .arg(format!("turn:{stun}?transport={}", s.turn.as_str()))
                    .args(["--turn-user", TURN_USER, "--turn-pass", TURN_PASS]);
            }
            cmd.arg("--seed").arg(
                s.seed
                    .wrapping_mul(2)
                    .wrapping_add(u64::from(offer))
                    .to_string(),
            );
            cmd
        }
        Agent::Aioice => {
            let mut cmd = live
                .fabric
                .command(host, &ctx.python)
                .map_err(|e| e.to_string())?;
            cmd.arg(&ctx.script).args([role, "--stun", &stun]);
            if s.turn != Turn::None {
                cmd.args(["--turn", &stun, "--turn-transport", s.turn.as_str()])
                    .args(["--turn-user", TURN_USER, "--turn-pass", TURN_PASS]);
            }
            cmd
        }
    };
    if s.mode == Mode::Trickle {
        cmd.arg("--trickle");
    }
    cmd.arg("--signal-in")
        .arg(sig_in)
        .arg("--signal-out")
        .arg(sig_out)
        .args(["--json", "--timeout", &timeout])
        .env("RUST_LOG", "warn");
    Ok(cmd)
}

struct Peer {
    child: Child,
    out: std::sync::mpsc::Receiver<Vec<u8>>,
    err: std::sync::mpsc::Receiver<Vec<u8>>,
}

fn spawn(live: &mut Live, host: &str, mut cmd: Command) -> Result<Peer, String> {
    use std::os::unix::process::CommandExt as _;
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(Stdio::null())
        .process_group(0);
    let mut child = live
        .fabric
        .spawn(host, cmd)
        .map_err(|e| format!("cannot start the agent on {host}: {e}"))?;
    let out = runner::drain(child.stdout.take());
    let err = runner::drain(child.stderr.take());
    Ok(Peer { child, out, err })
}

/// Stop the agent if it still runs and read what it reported.
fn finish(mut p: Peer, agent: Agent) -> SideResult {
    let status = match p.child.try_wait() {
        Ok(Some(s)) => Some(s),
        _ => {
            runner::kill_group(&mut p.child);
            None
        }
    };
    runner::kill_group(&mut p.child);
    let grace = Duration::from_secs(2);
    let out = p.out.recv_timeout(grace).unwrap_or_default();
    let err = p.err.recv_timeout(grace).unwrap_or_default();
    side_result(agent, status.and_then(|s| s.code()), &out, &err)
}

/// Read an agent's JSON line (icepeer and aioice_peer.py print the same shape).
pub(crate) fn side_result(
    agent: Agent,
    exit_code: Option<i32>,
    stdout: &[u8],
    stderr: &[u8],
) -> SideResult {
    let text = String::from_utf8_lossy(stdout);
    let json: Option<Value> = text
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<Value>(l.trim()).ok())
        .filter(Value::is_object);
    let mut s = SideResult {
        agent: agent.as_str().to_owned(),
        exit_code,
        ..SideResult::default()
    };
    let Some(v) = json else {
        s.failure = Some(match exit_code {
            None => "killed (timeout or signal) without a report".into(),
            Some(c) => format!("exited {c} without a report"),
        });
        s.stderr = Some(runner::tail(stderr, 1024));
        return s;
    };
    let str_at = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    s.connected = v.get("connected").and_then(Value::as_bool).unwrap_or(false);
    if let Some(l) = v.get("local") {
        s.local_type = str_at(l, "type");
        s.local_address = str_at(l, "address");
    }
    if let Some(r) = v.get("remote") {
        s.remote_type = str_at(r, "type");
        s.remote_address = str_at(r, "address");
    }
    s.time_to_connected_ms = v
        .get("time_to_connected_ms")
        .and_then(Value::as_f64)
        .map(round1);
    s.checks_sent = v.get("checks_sent").and_then(Value::as_u64);
    s.datagrams_ok = v.get("datagrams_ok").and_then(Value::as_bool);
    s.failure = str_at(&v, "failure").or_else(|| str_at(&v, "error"));
    if !s.connected || exit_code != Some(0) {
        let t = runner::tail(stderr, 1024);
        if !t.trim().is_empty() {
            s.stderr = Some(t);
        }
    }
    s
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn agent_reports_are_read_and_garbage_is_a_failure() {
        let line = br#"{"connected":true,"local":{"type":"srflx","address":"198.51.100.11:5000"},"remote":{"type":"prflx","address":"198.51.100.21:6000"},"time_to_connected_ms":123.456,"checks_sent":7,"datagrams_ok":true,"failure":null}"#;
        let s = side_result(Agent::Icepeer, Some(0), line, b"");
        assert!(s.connected);
        assert_eq!(s.local_type.as_deref(), Some("srflx"));
        assert_eq!(s.remote_address.as_deref(), Some("198.51.100.21:6000"));
        assert_eq!(s.time_to_connected_ms, Some(123.5));
        assert_eq!(s.checks_sent, Some(7));
        let s = side_result(Agent::Aioice, Some(1), b"Traceback...\n[1,2]\n", b"boom");
        assert!(!s.connected);
        assert_eq!(s.failure.as_deref(), Some("exited 1 without a report"));
        assert_eq!(s.stderr.as_deref(), Some("boom"));
        let s = side_result(Agent::Aioice, None, &[0xff, 0xfe, b'{'], b"");
        assert!(!s.connected);
    }

    #[test]
    fn the_signaling_relay_delays_each_line_and_keeps_partial_lines() {
        let w = WorkDir::create("relaytest").unwrap();
        let f = Signaling::new(&w.path).unwrap();
        let mut relay = Relay::new(&f, Duration::from_millis(80));
        std::fs::write(&f.offer_out, b"one\ntw").unwrap();
        relay.pump();
        assert_eq!(std::fs::read(&f.answer_in).unwrap(), b"");
        std::thread::sleep(Duration::from_millis(100));
        relay.pump();
        assert_eq!(std::fs::read(&f.answer_in).unwrap(), b"one\n");
        std::fs::write(&f.offer_out, b"one\ntwo\n").unwrap();
        relay.pump();
        std::thread::sleep(Duration::from_millis(100));
        relay.pump();
        assert_eq!(std::fs::read(&f.answer_in).unwrap(), b"one\ntwo\n");
        assert_eq!(std::fs::read(&f.offer_in).unwrap(), b"");
    }
}
