//! `sim`: bring a scenario's hosts up in network namespaces behind emulated NATs, run
//! natprobe (and any program) inside them, check what was expected, report, clean up.
//!
//! The executable is also `natprobe` and `turnd` (multi-call: by `argv[0]`, or as
//! `sim tool natprobe ...`), so scenarios need nothing but this one binary.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use sim::runner::{self, RunError, RunOptions, StopFlag};
use sim::{fabric, report, scenario};

/// Exit statuses.
const EXIT_FAIL: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_ENV: u8 = 3;
const EXIT_INTERRUPTED: u8 = 130;

/// NAT scenarios in Linux network namespaces, with every RFC 4787 behaviour.
///
/// `sim FILE` is short for `sim run FILE`.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Bring the scenario up, run its probes and commands, check expectations, write reports
    /// (exit 0 only when every expectation holds).
    Run {
        /// Scenario file (TOML).
        file: PathBuf,
        #[command(flatten)]
        out: Output,
    },
    /// Validate scenario files only (no root needed).
    Check {
        /// Scenario files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Bring the scenario up and run a shell (or CMD) inside HOST; tear down when it exits.
    /// Inside, `natprobe` and `turnd` are on PATH.
    Shell {
        /// Scenario file (TOML).
        file: PathBuf,
        /// Host (or kernel NAT box) to enter.
        host: String,
        /// Command to run instead of an interactive shell.
        #[arg(last = true)]
        cmd: Vec<OsString>,
    },
    /// Remove namespaces and processes that a killed run left behind.
    Clean {
        /// Also remove namespaces of runs that are still alive.
        #[arg(long)]
        all: bool,
    },
    /// Run natprobe across scenarios and write reports/probe-accuracy.md (configured vs
    /// detected for each property; exit 0 only at 100 %).
    Accuracy {
        /// Scenario files or directories (default: scenarios/).
        paths: Vec<PathBuf>,
        #[command(flatten)]
        out: Output,
    },
    /// Run a connectivity matrix: ICE sessions between peers behind NAT profiles, cell by
    /// cell, compared with the RFC 4787 oracle; writes DIR/<matrix>/matrix.{json,md,html}.
    Matrix {
        /// Matrix file (TOML; see scenarios/README.md).
        file: PathBuf,
        /// Report root: results go to DIR/<matrix>/.
        #[arg(long, default_value = "reports", value_name = "DIR")]
        reports: PathBuf,
        /// Cells run in parallel (default: the file's `jobs`, else four per core).
        #[arg(long, value_name = "N")]
        jobs: Option<usize>,
        /// Run only shard I of N (1-based); join the parts with `sim merge`.
        #[arg(long, value_name = "I/N")]
        shard: Option<String>,
        /// Where a shard's matrix.json goes (default DIR/<matrix>/shard-I-of-N.json).
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Python interpreter with aioice installed (for aioice cells).
        #[arg(long, default_value = "python3", value_name = "PATH")]
        python: PathBuf,
        /// No progress bar or per-cell lines.
        #[arg(long)]
        quiet: bool,
        /// Exit 1 when a cell disagrees with the oracle.
        #[arg(long)]
        strict: bool,
    },
    /// Join shards of one matrix (from `sim matrix --shard I/N`) into OUT_DIR/matrix.{json,md,html}.
    Merge {
        /// Folder for the joined reports.
        out_dir: PathBuf,
        /// The shards' matrix.json files.
        #[arg(required = true)]
        parts: Vec<PathBuf>,
        /// Join even when cells are missing.
        #[arg(long)]
        partial: bool,
    },
    /// Compare a fresh matrix with a baseline: exit 1 when a cell that connected no longer
    /// does, a direct path became relayed, a time to connected regressed past the noise
    /// threshold, or a baseline cell is missing.
    Compare {
        /// Baseline matrix.json.
        baseline: PathBuf,
        /// Fresh matrix.json.
        fresh: PathBuf,
        /// A cell's time regression must exceed the baseline by this factor...
        #[arg(long, default_value_t = 2.0, value_name = "R")]
        time_ratio: f64,
        /// ...and by this many milliseconds.
        #[arg(long, default_value_t = 500.0, value_name = "MS")]
        time_abs_ms: f64,
        /// A slice (mode x TURN x agents) regresses when the median of fresh/baseline over
        /// its cells exceeds this factor...
        #[arg(long, default_value_t = 1.2, value_name = "R")]
        slice_ratio: f64,
        /// ...and the median difference this many milliseconds.
        #[arg(long, default_value_t = 100.0, value_name = "MS")]
        slice_abs_ms: f64,
        /// Print the comparison as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run a bundled tool: `sim tool natprobe ARGS`, `sim tool turnd ARGS`,
    /// `sim tool icepeer ARGS`.
    #[command(hide = true)]
    Tool {
        /// natprobe or turnd.
        name: String,
        /// Its arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
}

#[derive(Debug, clap::Args)]
struct Output {
    /// Report root: results go to DIR/<scenario>/.
    #[arg(long, default_value = "reports", value_name = "DIR")]
    reports: PathBuf,
    /// Do not write pcap files.
    #[arg(long)]
    no_pcap: bool,
    /// Print the result JSON instead of the table.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    // Multi-call: invoked as natprobe or turnd (a symlink, or argv[0] set by the runner).
    let argv0 = args
        .first()
        .and_then(|a| Path::new(a).file_name())
        .and_then(|n| n.to_str())
        .unwrap_or("sim")
        .to_owned();
    if let Some(code) = tool(&argv0, args.clone()) {
        return code;
    }
    // `sim tool NAME ARGS`: the tool sets up its own logging, so dispatch before ours.
    if args.get(1).is_some_and(|a| a == "tool") {
        if let Some(name) = args.get(2).and_then(|n| n.to_str()).map(str::to_owned) {
            if let Some(code) = tool(&name, args[2..].to_vec()) {
                return code;
            }
        }
    }
    // `sim FILE` means `sim run FILE`.
    let mut args = args;
    if let Some(first) = args.get(1).and_then(|a| a.to_str()) {
        let known = [
            "run", "check", "shell", "clean", "accuracy", "matrix", "merge", "compare", "tool",
            "help",
        ];
        if !first.starts_with('-') && !known.contains(&first) {
            args.insert(1, "run".into());
        }
    }
    let cli = Cli::parse_from(args);
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    match real_main(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sim: {e:#}");
            ExitCode::from(EXIT_FAIL)
        }
    }
}

fn tool(name: &str, args: Vec<OsString>) -> Option<ExitCode> {
    match name {
        "natprobe" => Some(probe::cli::main(args)),
        "turnd" => Some(turn::cli::main(args)),
        "icepeer" => Some(ice::cli::main(args)),
        _ => None,
    }
}

/// Signals as flags: SIGINT (Ctrl-C) in `interrupt`; SIGTERM and SIGHUP in `terminate`. Both
/// stop a run, which then tears everything down on its normal path.
struct Signals {
    interrupt: StopFlag,
    terminate: StopFlag,
}

impl Signals {
    fn install() -> Signals {
        let interrupt = Arc::new(AtomicBool::new(false));
        let terminate = Arc::new(AtomicBool::new(false));
        let mut ok =
            signal_hook::flag::register(signal_hook::consts::SIGINT, interrupt.clone()).is_ok();
        for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGHUP] {
            ok &= signal_hook::flag::register(sig, terminate.clone()).is_ok();
        }
        if !ok {
            eprintln!("sim: cannot install signal handlers; Ctrl-C will not clean up");
        }
        Signals {
            interrupt,
            terminate,
        }
    }

    /// One flag raised by any of the signals (SIGINT only with `with_interrupt`), for code
    /// that treats them alike.
    fn any(&self, with_interrupt: bool) -> StopFlag {
        let any = Arc::new(AtomicBool::new(false));
        let (i, t, a) = (self.interrupt.clone(), self.terminate.clone(), any.clone());
        std::thread::spawn(move || {
            while !((with_interrupt && i.load(Ordering::Relaxed)) || t.load(Ordering::Relaxed)) {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            eprintln!("sim: interrupted, cleaning up");
            a.store(true, Ordering::SeqCst);
        });
        any
    }
}

fn load(file: &Path) -> Result<scenario::Scenario, ExitCode> {
    scenario::load(file).map_err(|e| {
        eprintln!("sim: {e}");
        ExitCode::from(EXIT_USAGE)
    })
}

fn environment() -> Result<(), ExitCode> {
    fabric::check_environment().map_err(|e| {
        eprintln!("sim: {e}");
        ExitCode::from(EXIT_ENV)
    })
}

fn real_main(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Cmd::Tool { name, args } => {
            let mut argv = vec![OsString::from(&name)];
            argv.extend(args);
            Ok(tool(&name, argv).unwrap_or_else(|| {
                eprintln!("sim: no bundled tool {name:?} (natprobe, turnd)");
                ExitCode::from(EXIT_USAGE)
            }))
        }
        Cmd::Check { files } => {
            let mut bad = false;
            for f in &files {
                if is_matrix_file(f) {
                    match sim::matrix::spec::load(f) {
                        Ok(m) => println!(
                            "{}: ok (matrix: {} x {} profiles, {} cells)",
                            f.display(),
                            m.rows.len(),
                            m.columns.len(),
                            m.cell_count()
                        ),
                        Err(e) => {
                            eprintln!("{e}");
                            bad = true;
                        }
                    }
                    continue;
                }
                match scenario::load(f) {
                    Ok(s) => println!(
                        "{}: ok ({} networks, {} NAT boxes, {} hosts, {} probes, {} commands)",
                        f.display(),
                        s.networks.len(),
                        s.nats.len(),
                        s.hosts.len(),
                        s.probes.len(),
                        s.runs.len()
                    ),
                    Err(e) => {
                        eprintln!("{e}");
                        bad = true;
                    }
                }
            }
            Ok(ExitCode::from(if bad { EXIT_USAGE } else { 0 }))
        }
        Cmd::Clean { all } => {
            if let Err(code) = environment() {
                return Ok(code);
            }
            let r = fabric::clean(!all).context("clean")?;
            println!(
                "removed {} namespace(s), killed {} process(es)",
                r.removed.len(),
                r.killed.len()
            );
            for ns in &r.removed {
                println!("  removed {ns}");
            }
            for ns in &r.kept_live {
                println!("  kept {ns} (its sim is still running; --all removes it)");
            }
            for (ns, why) in &r.failed {
                eprintln!("sim: could not remove {ns}: {why}");
            }
            Ok(ExitCode::from(if r.failed.is_empty() {
                0
            } else {
                EXIT_FAIL
            }))
        }
        Cmd::Run { file, out } => {
            let s = match load(&file) {
                Ok(s) => s,
                Err(c) => return Ok(c),
            };
            if let Err(code) = environment() {
                return Ok(code);
            }
            let stop = Signals::install().any(true);
            let opts = RunOptions {
                reports: out.reports.clone(),
                pcap: !out.no_pcap,
            };
            match runner::run(&s, &opts, &stop) {
                Ok(r) => {
                    if out.json {
                        println!("{}", serde_json::to_string_pretty(&r)?);
                    } else {
                        print!("{}", report::render(&r));
                        println!(
                            "reports: {}",
                            out.reports.join(&r.scenario).join("result.json").display()
                        );
                    }
                    Ok(ExitCode::from(if r.ok { 0 } else { EXIT_FAIL }))
                }
                Err(RunError::Interrupted) => Ok(ExitCode::from(EXIT_INTERRUPTED)),
                Err(e) => {
                    eprintln!("sim: {}: {e}", s.name);
                    Ok(ExitCode::from(EXIT_FAIL))
                }
            }
        }
        Cmd::Accuracy { paths, out } => accuracy(paths, &out),
        Cmd::Merge {
            out_dir,
            parts,
            partial,
        } => {
            use sim::matrix::{merge, report as mreport};
            let mut read = Vec::new();
            for p in &parts {
                match mreport::read(p) {
                    Ok(m) => read.push((p.display().to_string(), m)),
                    Err(e) => {
                        eprintln!("sim: {e}");
                        return Ok(ExitCode::from(EXIT_USAGE));
                    }
                }
            }
            let m = match merge::merge_with(
                read,
                merge::MergeOptions {
                    allow_incomplete: partial,
                },
            ) {
                Ok(m) => m,
                Err(e) => {
                    eprintln!("sim: merge: {e}");
                    return Ok(ExitCode::from(EXIT_FAIL));
                }
            };
            mreport::write(&out_dir, &m)
                .with_context(|| format!("writing {}", out_dir.display()))?;
            print!("{}", sim::matrix::term::render(&m));
            println!("reports: {}", out_dir.join("matrix.json").display());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Compare {
            baseline,
            fresh,
            time_ratio,
            time_abs_ms,
            slice_ratio,
            slice_abs_ms,
            json,
        } => {
            use sim::matrix::{compare, report as mreport};
            let ok = [time_ratio, slice_ratio]
                .iter()
                .all(|r| r.is_finite() && *r >= 1.0)
                && [time_abs_ms, slice_abs_ms]
                    .iter()
                    .all(|a| a.is_finite() && *a >= 0.0);
            if !ok {
                eprintln!("sim: the ratios must be at least 1 and the milliseconds at least 0");
                return Ok(ExitCode::from(EXIT_USAGE));
            }
            let (b, f) = match (mreport::read(&baseline), mreport::read(&fresh)) {
                (Ok(b), Ok(f)) => (b, f),
                (Err(e), _) | (_, Err(e)) => {
                    eprintln!("sim: {e}");
                    return Ok(ExitCode::from(EXIT_USAGE));
                }
            };
            let c = compare::compare(
                &b,
                &f,
                &compare::Thresholds {
                    time_ratio,
                    time_abs_ms,
                    slice_ratio,
                    slice_abs_ms,
                },
            );
            if json {
                println!("{}", serde_json::to_string_pretty(&c)?);
            } else {
                print!("{}", c.markdown());
            }
            Ok(ExitCode::from(if c.failed() { EXIT_FAIL } else { 0 }))
        }
        Cmd::Matrix {
            file,
            reports,
            jobs,
            shard,
            out,
            python,
            quiet,
            strict,
        } => {
            let spec = match sim::matrix::spec::load(&file) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("sim: {e}");
                    return Ok(ExitCode::from(EXIT_USAGE));
                }
            };
            let shard = match shard.as_deref().map(sim::matrix::run::parse_shard) {
                None => None,
                Some(Ok(s)) => Some(s),
                Some(Err(e)) => {
                    eprintln!("sim: {e}");
                    return Ok(ExitCode::from(EXIT_USAGE));
                }
            };
            if let Err(code) = environment() {
                return Ok(code);
            }
            let stop = Signals::install().any(true);
            let opts = sim::matrix::run::MatrixOptions {
                jobs: jobs
                    .or(spec.jobs)
                    .unwrap_or_else(sim::matrix::run::default_jobs)
                    .clamp(1, sim::matrix::run::MAX_JOBS),
                shard,
                progress: !quiet,
                python,
            };
            eprintln!(
                "sim: matrix {}: {} of {} cells, {} in parallel",
                spec.name,
                spec.cells()
                    .iter()
                    .filter(|c| sim::matrix::run::in_shard(c.index, shard))
                    .count(),
                spec.cell_count(),
                opts.jobs
            );
            let m = match sim::matrix::run::run(&spec, &opts, &stop) {
                Ok(m) => m,
                Err(RunError::Interrupted) => return Ok(ExitCode::from(EXIT_INTERRUPTED)),
                Err(e) => {
                    eprintln!("sim: matrix {}: {e}", spec.name);
                    return Ok(ExitCode::from(EXIT_FAIL));
                }
            };
            print!("{}", sim::matrix::term::render(&m));
            let dir = reports.join(&m.matrix);
            match (shard, out) {
                (None, None) => {
                    sim::matrix::report::write(&dir, &m)
                        .with_context(|| format!("writing {}", dir.display()))?;
                    println!("reports: {}", dir.join("matrix.json").display());
                }
                (shard, out) => {
                    let path = out.unwrap_or_else(|| match shard {
                        Some(s) => dir.join(format!("shard-{}-of-{}.json", s.index, s.count)),
                        None => dir.join("matrix.json"),
                    });
                    if let Some(parent) = path.parent() {
                        std::fs::create_dir_all(parent)?;
                    }
                    std::fs::write(&path, serde_json::to_string_pretty(&m)?)
                        .with_context(|| format!("writing {}", path.display()))?;
                    println!("matrix: {}", path.display());
                }
            }
            Ok(ExitCode::from(if strict && m.summary.flagged > 0 {
                EXIT_FAIL
            } else {
                0
            }))
        }
        Cmd::Shell { file, host, cmd } => shell(&file, &host, cmd),
    }
}

/// A matrix file has a top-level `[matrix]` table.
fn is_matrix_file(path: &Path) -> bool {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| t.parse::<toml::Table>().ok())
        .is_some_and(|t| t.contains_key("matrix"))
}

fn scenario_files(paths: Vec<PathBuf>) -> anyhow::Result<Vec<PathBuf>> {
    let paths = if paths.is_empty() {
        vec![PathBuf::from("scenarios")]
    } else {
        paths
    };
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut v: Vec<PathBuf> = std::fs::read_dir(&p)
                .with_context(|| format!("cannot read {}", p.display()))?
                .flatten()
                .map(|e| e.path())
                .filter(|f| f.extension().is_some_and(|x| x == "toml"))
                .collect();
            v.sort();
            files.extend(v);
        } else {
            files.push(p);
        }
    }
    Ok(files)
}

fn accuracy(paths: Vec<PathBuf>, out: &Output) -> anyhow::Result<ExitCode> {
    let files = scenario_files(paths)?;
    let mut scenarios = Vec::new();
    for f in &files {
        match load(f) {
            Ok(s) if !s.probes.is_empty() => scenarios.push(s),
            Ok(_) => {}
            Err(c) => return Ok(c),
        }
    }
    if let Err(code) = environment() {
        return Ok(code);
    }
    let stop = Signals::install().any(true);
    let opts = RunOptions {
        reports: out.reports.clone(),
        pcap: !out.no_pcap,
    };
    let mut acc = report::Accuracy::default();
    let mut results = Vec::new();
    for s in &scenarios {
        eprint!("{:<28}", s.name);
        match runner::run(s, &opts, &stop) {
            Ok(r) => {
                eprintln!(
                    "{} ({} ms)",
                    if r.ok { "ok" } else { "MISMATCH" },
                    r.elapsed_ms
                );
                acc.add(&r);
                results.push(r);
            }
            Err(RunError::Interrupted) => return Ok(ExitCode::from(EXIT_INTERRUPTED)),
            Err(e) => {
                eprintln!("error: {e}");
                acc.errors.push((s.name.clone(), e.to_string()));
            }
        }
    }
    let md = acc.markdown(&results);
    std::fs::create_dir_all(&out.reports)?;
    let path = out.reports.join("probe-accuracy.md");
    std::fs::write(&path, &md).with_context(|| format!("cannot write {}", path.display()))?;
    if out.json {
        println!("{}", serde_json::to_string_pretty(&acc)?);
    } else {
        let (m, t) = acc
            .properties
            .iter()
            .fold((0, 0), |(a, b), (_, m, t)| (a + m, b + t));
        println!(
            "probe accuracy: {m}/{t} checks match across {} scenarios; written to {}",
            results.len(),
            path.display()
        );
        for (s, h, k, e, d) in &acc.misses {
            println!("  miss: {s}/{h}: {k} configured {e}, detected {d}");
        }
    }
    Ok(ExitCode::from(if acc.perfect() { 0 } else { EXIT_FAIL }))
}

fn shell(file: &Path, host: &str, cmd: Vec<OsString>) -> anyhow::Result<ExitCode> {
    let s = match load(file) {
        Ok(s) => s,
        Err(c) => return Ok(c),
    };
    let known = s.hosts.iter().any(|h| h.name == host)
        || s.nats
            .iter()
            .any(|n| n.name == host && matches!(n.imp, scenario::NatImpl::Kernel { .. }));
    if !known {
        let names: Vec<&str> = s.hosts.iter().map(|h| h.name.as_str()).collect();
        eprintln!(
            "sim: no host {host:?} in {} (hosts: {})",
            file.display(),
            names.join(", ")
        );
        return Ok(ExitCode::from(EXIT_USAGE));
    }
    if let Err(code) = environment() {
        return Ok(code);
    }
    let signals = Signals::install();
    let stop = signals.any(!cmd.is_empty());
    let opts = RunOptions {
        reports: PathBuf::from("reports"),
        pcap: false,
    };
    let mut live = match runner::bring_up(&s, &opts, &stop) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("sim: {e}");
            return Ok(ExitCode::from(EXIT_FAIL));
        }
    };
    // natprobe and turnd on PATH inside the shell: symlinks to this executable.
    let bin = tempdir_for_tools();
    let result = (|| -> anyhow::Result<ExitCode> {
        let bin = bin.as_ref().map_err(|e| anyhow::anyhow!("{e}"))?;
        let (program, args): (OsString, Vec<OsString>) = match cmd.split_first() {
            Some((p, rest)) => (p.clone(), rest.to_vec()),
            None => (
                std::env::var_os("SHELL").unwrap_or_else(|| "/bin/bash".into()),
                Vec::new(),
            ),
        };
        let mut c = live.fabric.command(host, &program)?;
        c.args(&args);
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut new_path = bin.clone().into_os_string();
        new_path.push(":");
        new_path.push(path);
        c.env("PATH", new_path)
            .env("SIM_HOST", host)
            .env("SIM_SCENARIO", &s.name);
        if cmd.is_empty() {
            eprintln!(
                "sim: shell in {host} (scenario {}); natprobe and turnd are on PATH; exit to tear down",
                s.name
            );
        }
        let interactive = cmd.is_empty();
        let mut child = live.fabric.spawn(host, c)?;
        // Wait for the command; SIGTERM/SIGHUP (and Ctrl-C, unless an interactive shell is
        // running: it handles Ctrl-C itself) end it and tear down.
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(ExitCode::from(status.code().map_or(EXIT_FAIL, |c| c as u8)));
            }
            let interrupted = signals.interrupt.load(Ordering::Relaxed) && !interactive;
            if interrupted || signals.terminate.load(Ordering::Relaxed) {
                let _ = child.kill();
                let _ = child.wait();
                return Ok(ExitCode::from(EXIT_INTERRUPTED));
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    })();
    if let Ok(b) = &bin {
        let _ = std::fs::remove_dir_all(b);
    }
    let down = live.down();
    if let Err(e) = down {
        eprintln!("sim: teardown: {e}");
    }
    result
}

fn tempdir_for_tools() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let dir = std::env::temp_dir().join(format!("natscope-sim-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    for t in ["natprobe", "turnd"] {
        let link = dir.join(t);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&exe, &link).map_err(|e| e.to_string())?;
    }
    Ok(dir)
}
