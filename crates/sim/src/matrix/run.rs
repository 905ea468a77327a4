//! Running cells: each cell brings its own small scenario up (a server host with turnd, two
//! peers behind their profiles' NATs), starts one ICE agent in each peer's namespace, carries
//! their signaling outside the emulated network with a one-way delay, and records what the
//! agents report. Cells run in parallel on worker threads, each with its own fabric.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use super::model::{
    Cell, Expected, Matrix, PathKind, SCHEMA_VERSION, Shard, SideResult, Summary,
    fill_trickle_savings,
};
use super::session::{self, AgentCtx, SessionSpec, WorkDir};
use super::spec::{
    self, COLUMN_HOST, CellSpec, MatrixSpec, ROW_HOST, SERVER_HOST, SERVER_IP, TURN_PASS, TURN_USER,
};
use crate::runner::{self, RunError, RunOptions, StopFlag};

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

/// Most cells in parallel: each is a fabric thread, turnd and two agents.
pub const MAX_JOBS: usize = 64;

/// A sensible number of parallel cells: four per core. A cell mostly waits (on timers, the
/// signaling delay, the emulated links), so cells overlap well; on 2 cores, 8 in parallel
/// leave the nine-by-nine matrix's median time to connected where 2 leave it (753 vs 755 ms),
/// while 16 stretch it by about 11 % (scripts/bench_matrix.sh --jobs N).
pub fn default_jobs() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get() * 4)
        .unwrap_or(4)
        .clamp(1, 32)
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
    let work = WorkDir::create("matrix")?;
    let ctx = Ctx {
        spec,
        work: &work.path,
        agents: AgentCtx::prepare(&work.path, &opts.python)?,
    };
    let jobs = opts.jobs.clamp(1, cells.len().clamp(1, MAX_JOBS));
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

struct Ctx<'a> {
    spec: &'a MatrixSpec,
    work: &'a Path,
    agents: AgentCtx,
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
    let o = session::outcome(&cell.row_side, &cell.column_side);
    cell.connected = o.connected;
    cell.path = o.path;
    cell.pair = o.pair;
    cell.time_to_connected_ms = o.time_to_connected_ms;
    cell.checks_sent = o.checks_sent;
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
        let s = SessionSpec {
            offer_host: ROW_HOST.to_owned(),
            answer_host: COLUMN_HOST.to_owned(),
            server_ip: SERVER_IP,
            mode: c.mode,
            turn: c.turn,
            peers: c.peers,
            signaling_delay: ctx.spec.signaling_delay,
            timeout: ctx.spec.timeout,
            seed: ctx.spec.seed.wrapping_add(c.index as u64),
            dir: ctx.work.join(format!("cell{}", c.index)),
        };
        session::run_session(&mut live, &s, &ctx.agents, stop)
    })();
    let down = live.down();
    let (r, k) = result?;
    down.map_err(|e| format!("teardown: {e}"))?;
    Ok((expected, r, k))
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
        // The terminal grid's cell text; an error also says why.
        let outcome = match &c.error {
            Some(e) => format!("error: {e}"),
            None if c.connected => format!("{} ms", super::term::outcome(c)),
            None => "failed".to_owned(),
        };
        let mark = if c.agrees {
            ""
        } else {
            " (disagrees with the oracle)"
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

    fn cell_with(expected: Expected, row: SideResult, column: SideResult) -> Cell {
        Cell {
            index: 0,
            id: "a|b|trickle|udp|icepeer/icepeer".into(),
            row: "a".into(),
            column: "b".into(),
            mode: super::super::model::Mode::Trickle,
            turn: super::super::model::Turn::Udp,
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
