//! Running cells: each cell brings its own small scenario up (a server host with turnd, two
//! peers behind their profiles' NATs), starts one ICE agent in each peer's namespace, carries
//! their signaling outside the emulated network with a one-way delay, and records what the
//! agents report. Cells run in parallel on worker threads, each with its own fabric.

use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::model::{
    Agent, Cell, Expected, Matrix, PathKind, SCHEMA_VERSION, Shard, SideResult, Summary, Turn,
    fill_trickle_savings,
};
use super::spec::{
    self, COLUMN_HOST, CellSpec, MatrixSpec, ROW_HOST, SERVER_HOST, SERVER_IP, TURN_PASS, TURN_USER,
};
use crate::runner::{self, RunError, RunOptions, STUN_PORT, StopFlag};

/// The aioice peer script, carried inside the binary so a matrix needs nothing but `sim`
/// and the `aioice` Python package.
const AIOICE_PEER: &str = include_str!("../../../ice/tests/peers/aioice_peer.py");

/// How a matrix run is done.
#[derive(Debug, Clone)]
pub struct MatrixOptions {
    /// Cells in parallel (at least 1).
    pub jobs: usize,
    /// Run only this shard.
    pub shard: Option<Shard>,
    /// Show a progress bar (or, when stderr is not a terminal, a line per cell).
    pub progress: bool,
    /// Python interpreter for aioice.
    pub python: PathBuf,
}

/// A sensible number of parallel cells: the agents mostly wait on timers and the network,
/// so two per core keeps the machine busy without starving the fabric threads.
pub fn default_jobs() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get() * 2)
        .unwrap_or(2)
        .clamp(1, 16)
}

/// Parse `i/n` (1-based).
pub fn parse_shard(s: &str) -> Result<Shard, String> {
    let bad = || format!("--shard {s:?}: write i/n with 1 <= i <= n, e.g. 2/4");
    let (i, n) = s.split_once('/').ok_or_else(bad)?;
    let (index, count): (usize, usize) = (
        i.trim().parse().map_err(|_| bad())?,
        n.trim().parse().map_err(|_| bad())?,
    );
    if count == 0 || index == 0 || index > count || count > 1000 {
        return Err(bad());
    }
    Ok(Shard { index, count })
}

/// The cells a shard holds: every `count`-th cell, starting at `index - 1`, so each shard
/// gets a mix of rows and settings.
pub fn in_shard(cell: usize, shard: Option<Shard>) -> bool {
    shard.is_none_or(|s| cell % s.count == s.index - 1)
}

/// Run a matrix (or one shard of it). Cells that fail to set up are recorded with an
/// error; a stop (signal) ends the run with [`RunError::Interrupted`] after cleaning up.
pub fn run(spec: &MatrixSpec, opts: &MatrixOptions, stop: &StopFlag) -> Result<Matrix, RunError> {
    let t0 = Instant::now();
    let cells: Vec<CellSpec> = spec
        .cells()
        .into_iter()
        .filter(|c| in_shard(c.index, opts.shard))
        .collect();
    let work = WorkDir::create()?;
    let script = work.path.join("aioice_peer.py");
    std::fs::write(&script, AIOICE_PEER)?;
    let ctx = Ctx {
        spec,
        work: &work.path,
        script: &script,
        python: &opts.python,
        exe: runner::self_exe()?,
    };
    let jobs = opts.jobs.clamp(1, cells.len().max(1));
    let progress = Progress::new(cells.len(), opts.progress);
    let next = AtomicUsize::new(0);
    let done = Mutex::new(Vec::with_capacity(cells.len()));
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| {
                loop {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(c) = cells.get(i) else { return };
                    let cell = run_cell(&ctx, c, stop);
                    progress.cell(&cell);
                    if let Ok(mut d) = done.lock() {
                        d.push(cell);
                    }
                }
            });
        }
    });
    progress.finish();
    if stop.load(Ordering::Relaxed) {
        return Err(RunError::Interrupted);
    }
    let mut cells = done.into_inner().unwrap_or_default();
    cells.sort_by_key(|c| c.index);
    fill_trickle_savings(&mut cells);
    Ok(Matrix {
        schema_version: SCHEMA_VERSION,
        matrix: spec.name.clone(),
        source: spec.source.display().to_string(),
        description: spec.description.clone(),
        definition: spec.definition(),
        rows: spec.rows.clone(),
        columns: spec.columns.clone(),
        modes: spec.modes.clone(),
        turn: spec.turn.clone(),
        peers: spec.peers.clone(),
        profiles: spec.profile_info(),
        signaling_delay_ms: spec.signaling_delay.as_millis() as u64,
        timeout_ms: spec.timeout.as_millis() as u64,
        total_cells: spec.cell_count(),
        shard: opts.shard,
        jobs,
        elapsed_ms: t0.elapsed().as_millis() as u64,
        summary: Summary::of(&cells),
        cells,
    })
}

/// A temporary folder for signaling files and the aioice script, removed on drop.
struct WorkDir {
    path: PathBuf,
}

impl WorkDir {
    fn create() -> std::io::Result<WorkDir> {
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "natscope-matrix-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)?;
        Ok(WorkDir { path })
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

struct Ctx<'a> {
    spec: &'a MatrixSpec,
    work: &'a Path,
    script: &'a Path,
    python: &'a Path,
    exe: PathBuf,
}

/// Run one cell; never fails: problems become the cell's `error`.
fn run_cell(ctx: &Ctx<'_>, c: &CellSpec, stop: &StopFlag) -> Cell {
    let t0 = Instant::now();
    let mut cell = Cell {
        index: c.index,
        id: c.id(),
        row: c.row.clone(),
        column: c.column.clone(),
        mode: c.mode,
        turn: c.turn,
        peers: c.peers,
        connected: false,
        path: None,
        pair: None,
        time_to_connected_ms: None,
        checks_sent: None,
        expected: Expected {
            connects: false,
            path: None,
            reason: String::new(),
        },
        agrees: false,
        flag: None,
        trickle_saving_ms: None,
        row_side: SideResult::default(),
        column_side: SideResult::default(),
        error: None,
        elapsed_ms: 0,
    };
    match session(ctx, c, stop) {
        Ok((expected, row, column)) => {
            cell.expected = expected;
            cell.row_side = row;
            cell.column_side = column;
            judge(&mut cell);
            if !cell.agrees && (ctx.spec.has_kernel(&c.row) || ctx.spec.has_kernel(&c.column)) {
                if let Some(f) = &mut cell.flag {
                    f.push_str(KERNEL_HINT);
                }
            }
        }
        Err(e) => {
            cell.error = Some(e);
            cell.flag = Some(format!(
                "the cell could not run: {}",
                cell.error.as_deref().unwrap_or_default()
            ));
        }
    }
    cell.elapsed_ms = t0.elapsed().as_millis() as u64;
    cell
}

/// Derive the cell's outcome from both sides and compare it with the oracle.
fn judge(cell: &mut Cell) {
    let (r, c) = (&cell.row_side, &cell.column_side);
    cell.connected = r.connected
        && c.connected
        && r.datagrams_ok.unwrap_or(false)
        && c.datagrams_ok.unwrap_or(false);
    let kind = |s: &SideResult| match (&s.local_type, &s.remote_type) {
        (Some(l), Some(r)) => PathKind::of_pair(l, r),
        _ => None,
    };
    if cell.connected {
        cell.path = match (kind(r), kind(c)) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        cell.pair = match (&r.local_type, &r.remote_type) {
            (Some(l), Some(rt)) => Some(format!("{l}-{rt}")),
            _ => None,
        };
        cell.time_to_connected_ms = match (r.time_to_connected_ms, c.time_to_connected_ms) {
            (Some(a), Some(b)) => Some(round1(a.max(b))),
            (a, b) => a.or(b).map(round1),
        };
    }
    cell.checks_sent = match (r.checks_sent, c.checks_sent) {
        (Some(a), Some(b)) => Some(a + b),
        _ => None,
    };
    let e = &cell.expected;
    cell.agrees = cell.connected == e.connects && (!cell.connected || cell.path == e.path);
    if !cell.agrees {
        cell.flag = Some(explain(cell));
    }
}

/// Added to the flag of a cell with a kernel NAT box that disagrees with the oracle.
const KERNEL_HINT: &str = " A Linux masquerade box is on the way; the likely cause: when the other peer's first \
    check reaches the box before this side's own check to it leaves, conntrack records that \
    inbound flow, and the outgoing check, which has the same addresses and ports, must then \
    get another source port. Under simultaneous open the kernel's mapping is not \
    endpoint-independent, which the oracle (masquerade = endpoint-independent mapping, \
    address-and-port-dependent filtering) does not model.";

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// Why a cell disagrees with the oracle, from what the agents said.
fn explain(cell: &Cell) -> String {
    let e = &cell.expected;
    let want = match (e.connects, e.path) {
        (true, Some(p)) => format!("a {} path", p.as_str()),
        (true, None) => "a connection".into(),
        (false, _) => "no connection".into(),
    };
    let got = if cell.connected {
        format!(
            "a {} path ({})",
            cell.path.map_or("unknown", PathKind::as_str),
            cell.pair.as_deref().unwrap_or("pair unknown")
        )
    } else {
        "no connection".into()
    };
    let side = |name: &str, s: &SideResult| {
        let mut parts = Vec::new();
        if s.connected {
            parts.push(format!(
                "connected on {}-{}",
                s.local_type.as_deref().unwrap_or("?"),
                s.remote_type.as_deref().unwrap_or("?")
            ));
            if s.datagrams_ok == Some(false) {
                parts.push("but no datagram came back".into());
            }
        } else {
            parts.push(format!(
                "not connected ({})",
                s.failure.as_deref().unwrap_or("no reason given")
            ));
        }
        if let Some(code) = s.exit_code {
            parts.push(format!("exit {code}"));
        }
        format!("{name} {}: {}", s.agent, parts.join(", "))
    };
    let hint = match (e.connects, cell.connected) {
        (true, false) => {
            "the oracle finds a path the agents did not: a bug in an agent, the NAT model or \
             the fabric, or a session timeout too short for the checks"
        }
        (false, true) => {
            "the agents found a path the oracle rules out: the NAT let through what its \
             configuration says it filters, or the oracle's rules are wrong"
        }
        _ => match (e.path, cell.path) {
            (Some(w), Some(g)) if w.is_direct() && !g.is_direct() => {
                "the direct pair did not succeed before the relayed one was nominated"
            }
            (Some(w), Some(g)) if !w.is_direct() && g.is_direct() => {
                "a direct pair worked where the oracle expects none: a NAT let through more \
                 than its filtering allows"
            }
            _ => {
                "the pair differs in candidate type only: a check arrived before the \
                 candidate it came from was signalled (peer-reflexive), or the other way round"
            }
        },
    };
    format!(
        "expected {want}, got {got}: {hint}. {}; {}.",
        side("row", &cell.row_side),
        side("column", &cell.column_side)
    )
}

type SessionResult = (Expected, SideResult, SideResult);

fn session(ctx: &Ctx<'_>, c: &CellSpec, stop: &StopFlag) -> Result<SessionResult, String> {
    let scenario = ctx.spec.scenario(c)?;
    let expected = spec::expected(&scenario, c.turn);
    let opts = RunOptions {
        reports: ctx.work.to_path_buf(),
        pcap: false,
    };
    let mut live = runner::bring_up(&scenario, &opts, stop).map_err(|e| e.to_string())?;
    let user = format!("{TURN_USER}:{TURN_PASS}");
    let result = (|| {
        live.start_turnd(
            SERVER_HOST,
            &[SERVER_IP],
            &["--user", &user, "--workers", "1"],
        )
        .map_err(|e| e.to_string())?;
        let dir = ctx.work.join(format!("cell{}", c.index));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let files = Signaling::new(&dir).map_err(|e| format!("signaling files: {e}"))?;
        let row_cmd = peer_command(ctx, &live, c, true, &files)?;
        let col_cmd = peer_command(ctx, &live, c, false, &files)?;
        let mut row = spawn(&mut live, ROW_HOST, row_cmd)?;
        let mut col = match spawn(&mut live, COLUMN_HOST, col_cmd) {
            Ok(p) => p,
            Err(e) => {
                runner::kill_group(&mut row.child);
                return Err(e);
            }
        };
        // Both agents give up at the timeout; the datagram exchange after connecting takes
        // up to 5 s more. Past that, they are killed.
        let deadline = Instant::now() + ctx.spec.timeout + Duration::from_secs(8);
        let mut relay = Relay::new(&files, ctx.spec.signaling_delay);
        let mut interrupted = false;
        loop {
            relay.pump();
            let r_done = matches!(row.child.try_wait(), Ok(Some(_)));
            let c_done = matches!(col.child.try_wait(), Ok(Some(_)));
            if r_done && c_done {
                break;
            }
            if stop.load(Ordering::Relaxed) {
                interrupted = true;
                break;
            }
            if Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let r = finish(row, c.peers.row);
        let k = finish(col, c.peers.column);
        if interrupted {
            return Err("interrupted".into());
        }
        Ok((r, k))
    })();
    let down = live.down();
    let (r, k) = result?;
    down.map_err(|e| format!("teardown: {e}"))?;
    Ok((expected, r, k))
}

/// The four signaling files of a cell: each agent writes its own `*.out` and follows its
/// `*.in`, which the relay fills.
struct Signaling {
    row_out: PathBuf,
    row_in: PathBuf,
    col_out: PathBuf,
    col_in: PathBuf,
}

impl Signaling {
    fn new(dir: &Path) -> std::io::Result<Signaling> {
        let s = Signaling {
            row_out: dir.join("row.out"),
            row_in: dir.join("row.in"),
            col_out: dir.join("col.out"),
            col_in: dir.join("col.in"),
        };
        for p in [&s.row_out, &s.row_in, &s.col_out, &s.col_in] {
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
}

impl Relay {
    fn new(f: &Signaling, delay: Duration) -> Relay {
        let lane = |from: &PathBuf, to: &PathBuf| Lane {
            from: from.clone(),
            to: to.clone(),
            offset: 0,
            partial: Vec::new(),
            queue: Default::default(),
            delay,
        };
        Relay {
            lanes: [lane(&f.row_out, &f.col_in), lane(&f.col_out, &f.row_in)],
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
        if let Ok(mut f) = std::fs::File::open(&self.from) {
            if f.seek(SeekFrom::Start(self.offset)).is_ok() {
                let mut buf = Vec::new();
                // Bounded: a peer that floods its signaling file is cut off at 1 MiB.
                if let Ok(n) = (&mut f).take(1 << 20).read_to_end(&mut buf) {
                    self.offset += n as u64;
                    self.partial.extend_from_slice(&buf);
                }
            }
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
    ctx: &Ctx<'_>,
    live: &runner::Live,
    c: &CellSpec,
    row: bool,
    files: &Signaling,
) -> Result<Command, String> {
    let (host, agent, sig_in, sig_out) = if row {
        (ROW_HOST, c.peers.row, &files.row_in, &files.row_out)
    } else {
        (COLUMN_HOST, c.peers.column, &files.col_in, &files.col_out)
    };
    let role = if row { "offer" } else { "answer" };
    let stun = format!("{SERVER_IP}:{STUN_PORT}");
    let timeout = format!("{:.3}", ctx.spec.timeout.as_secs_f64());
    let mut cmd = match agent {
        Agent::Icepeer => {
            let mut cmd = live
                .fabric
                .command(host, &ctx.exe)
                .map_err(|e| e.to_string())?;
            cmd.args(["tool", "icepeer", role, "--stun", &stun]);
            if c.turn != Turn::None {
                cmd.arg("--turn")
                    .arg(format!("turn:{stun}?transport={}", c.turn.as_str()))
                    .args(["--turn-user", TURN_USER, "--turn-pass", TURN_PASS]);
            }
            cmd.arg("--seed")
                .arg((ctx.spec.seed.wrapping_add(c.index as u64) * 2 + u64::from(row)).to_string());
            cmd
        }
        Agent::Aioice => {
            let mut cmd = live
                .fabric
                .command(host, ctx.python)
                .map_err(|e| e.to_string())?;
            cmd.arg(ctx.script).args([role, "--stun", &stun]);
            if c.turn != Turn::None {
                cmd.args(["--turn", &stun, "--turn-transport", c.turn.as_str()])
                    .args(["--turn-user", TURN_USER, "--turn-pass", TURN_PASS]);
            }
            cmd
        }
    };
    if c.mode == super::model::Mode::Trickle {
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

fn spawn(live: &mut runner::Live, host: &str, mut cmd: Command) -> Result<Peer, String> {
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
fn side_result(agent: Agent, exit_code: Option<i32>, stdout: &[u8], stderr: &[u8]) -> SideResult {
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
            None => "killed after the timeout without a report".into(),
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

/// Progress: a bar on a terminal, a line per cell otherwise (CI logs).
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    lines: bool,
    total: usize,
    done: AtomicUsize,
}

impl Progress {
    fn new(total: usize, enabled: bool) -> Progress {
        use std::io::IsTerminal as _;
        let tty = std::io::stderr().is_terminal();
        let bar = (enabled && tty).then(|| {
            let b = indicatif::ProgressBar::new(total as u64);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{elapsed_precise} [{bar:40.cyan/blue}] {pos}/{len} cells, eta {eta} {msg}",
            ) {
                b.set_style(style.progress_chars("=> "));
            }
            b
        });
        Progress {
            bar,
            lines: enabled && !tty,
            total,
            done: AtomicUsize::new(0),
        }
    }

    fn cell(&self, c: &Cell) {
        let n = self.done.fetch_add(1, Ordering::SeqCst) + 1;
        let outcome = if let Some(e) = &c.error {
            format!("error: {e}")
        } else if c.connected {
            format!(
                "{} {:.0} ms",
                c.path.map_or("?", PathKind::as_str),
                c.time_to_connected_ms.unwrap_or(0.0)
            )
        } else {
            "failed".into()
        };
        let mark = if c.agrees {
            ""
        } else {
            "  (disagrees with the oracle)"
        };
        let line = format!(
            "{} vs {} {} turn={} {}: {outcome}{mark}",
            c.row,
            c.column,
            c.mode.as_str(),
            c.turn.as_str(),
            c.peers.label()
        );
        if let Some(b) = &self.bar {
            b.inc(1);
            b.set_message(line);
        } else if self.lines {
            eprintln!("[{n}/{}] {line}", self.total);
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn shards_partition_the_cells() {
        let s = parse_shard("2/3").unwrap();
        assert_eq!((s.index, s.count), (2, 3));
        for bad in ["0/3", "4/3", "1/0", "x", "1/", "/2", "-1/2"] {
            assert!(parse_shard(bad).is_err(), "{bad}");
        }
        let shards: Vec<_> = (1..=3)
            .map(|i| Some(Shard { index: i, count: 3 }))
            .collect();
        for cell in 0..100 {
            assert_eq!(shards.iter().filter(|s| in_shard(cell, **s)).count(), 1);
            assert!(in_shard(cell, None));
        }
    }

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

    fn cell_with(expected: Expected, row: SideResult, column: SideResult) -> Cell {
        Cell {
            index: 0,
            id: "a|b|trickle|udp|icepeer/icepeer".into(),
            row: "a".into(),
            column: "b".into(),
            mode: super::super::model::Mode::Trickle,
            turn: Turn::Udp,
            peers: super::super::model::Peers::parse("icepeer").unwrap(),
            connected: false,
            path: None,
            pair: None,
            time_to_connected_ms: None,
            checks_sent: None,
            expected,
            agrees: false,
            flag: None,
            trickle_saving_ms: None,
            row_side: row,
            column_side: column,
            error: None,
            elapsed_ms: 0,
        }
    }

    fn side(local: &str, remote: &str, ttc: f64) -> SideResult {
        SideResult {
            agent: "icepeer".into(),
            connected: true,
            local_type: Some(local.into()),
            remote_type: Some(remote.into()),
            time_to_connected_ms: Some(ttc),
            checks_sent: Some(3),
            datagrams_ok: Some(true),
            exit_code: Some(0),
            ..SideResult::default()
        }
    }

    #[test]
    fn a_cell_is_judged_on_both_sides_and_explained_when_it_disagrees() {
        let want = |connects, path| Expected {
            connects,
            path,
            reason: "r".into(),
        };
        let mut c = cell_with(
            want(true, Some(PathKind::Prflx)),
            side("srflx", "prflx", 100.0),
            side("srflx", "srflx", 120.0),
        );
        judge(&mut c);
        assert!(c.connected && c.agrees, "{c:?}");
        assert_eq!(c.path, Some(PathKind::Prflx));
        assert_eq!(c.pair.as_deref(), Some("srflx-prflx"));
        assert_eq!(c.time_to_connected_ms, Some(120.0));
        assert_eq!(c.checks_sent, Some(6));

        let mut c = cell_with(
            want(true, Some(PathKind::Srflx)),
            side("relay", "srflx", 100.0),
            side("srflx", "relay", 100.0),
        );
        judge(&mut c);
        assert!(c.connected && !c.agrees);
        let flag = c.flag.unwrap();
        assert!(
            flag.contains("expected a srflx path, got a relay path"),
            "{flag}"
        );

        // Connected, but the datagrams did not make it back: not connected.
        let mut lost = side("srflx", "srflx", 10.0);
        lost.datagrams_ok = Some(false);
        let mut c = cell_with(
            want(true, Some(PathKind::Srflx)),
            lost,
            side("srflx", "srflx", 1.0),
        );
        judge(&mut c);
        assert!(!c.connected && !c.agrees);
        assert!(c.flag.unwrap().contains("no datagram came back"));

        let failed = SideResult {
            agent: "aioice".into(),
            failure: Some("timeout".into()),
            exit_code: Some(1),
            ..SideResult::default()
        };
        let mut c = cell_with(want(false, None), failed.clone(), failed);
        judge(&mut c);
        assert!(!c.connected && c.agrees && c.flag.is_none());
    }
}
