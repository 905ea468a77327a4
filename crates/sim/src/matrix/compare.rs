//! A fresh matrix against a baseline (`sim compare`): what regressed, what improved, what
//! merely changed. Cells are matched by [`Cell::id`].
//!
//! Regressions (the comparison fails):
//! - a cell connected in the baseline and does not now (failed or could not run);
//! - its path went from direct (host, srflx, prflx) to relay;
//! - its time to connected grew past both thresholds: fresh > baseline x `time_ratio` and
//!   fresh - baseline > `time_abs_ms`;
//! - a baseline cell is missing from the fresh run.
//!
//! Improvements: newly connects; relay to direct; faster past both thresholds (baseline >
//! fresh x ratio and baseline - fresh > abs). Notes: another direct kind (e.g. srflx <->
//! prflx), new cells, cells that newly disagree (or newly agree) with the oracle. Warnings:
//! the matrices' names or definitions differ, or a file is incomplete.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;

use serde::Serialize;

use super::model::{Cell, Matrix, PathKind};
use super::report::{ms, outcome};

/// When a change in time to connected counts.
///
/// One cell's time is lumpy: a lost race costs a retransmission (200 ms) or a nomination
/// wait (500 ms), and an interpreted agent (aioice) feels the machine's load. On this
/// project's 2-core machine, re-runs of the CI matrices moved single cells by up to 1.47x /
/// +400 ms with the medians of every slice within 1 %. So a single cell fails only on a
/// large jump (x2 and +500 ms: a timeout, a lost path), and a slice (mode x TURN x agents)
/// fails when its median moves (x1.2 and +100 ms): what a slower agent does everywhere.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Thresholds {
    /// A cell: fresh must exceed baseline x this (and the other way round for an improvement).
    pub time_ratio: f64,
    /// And differ by more than this many milliseconds.
    pub time_abs_ms: f64,
    /// A slice: the median of fresh/baseline over its cells connected in both must exceed
    /// this...
    pub slice_ratio: f64,
    /// ...and the median difference this many milliseconds.
    pub slice_abs_ms: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            time_ratio: 2.0,
            time_abs_ms: 500.0,
            slice_ratio: 1.2,
            slice_abs_ms: 100.0,
        }
    }
}

/// How one slice's times moved.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SliceTiming {
    /// `MODE, TURN T, ROW/COLUMN`, e.g. `vanilla, TURN none, icepeer/aioice`.
    pub slice: String,
    /// Cells connected in both runs.
    pub cells: usize,
    /// Median of fresh / baseline time to connected.
    pub median_ratio: f64,
    /// Median of fresh - baseline, milliseconds.
    pub median_diff_ms: f64,
    /// Past both slice thresholds: a regression.
    pub slower: bool,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The median time change of every slice, over cells connected in both runs.
fn slice_timings(
    baseline: &HashMap<&str, &Cell>,
    fresh: &Matrix,
    t: &Thresholds,
) -> Vec<SliceTiming> {
    let mut by_slice: std::collections::BTreeMap<String, Vec<(f64, f64)>> = Default::default();
    for f in &fresh.cells {
        let Some(b) = baseline.get(f.id.as_str()) else {
            continue;
        };
        if let (true, true, Some(tb), Some(tf)) = (
            b.connected,
            f.connected,
            b.time_to_connected_ms,
            f.time_to_connected_ms,
        ) {
            if tb > 0.0 {
                let key = format!(
                    "{}, TURN {}, {}",
                    f.mode.as_str(),
                    f.turn.as_str(),
                    f.peers.label()
                );
                by_slice.entry(key).or_default().push((tf / tb, tf - tb));
            }
        }
    }
    by_slice
        .into_iter()
        .map(|(slice, v)| {
            let median_ratio = median(v.iter().map(|x| x.0).collect());
            let median_diff_ms = median(v.iter().map(|x| x.1).collect());
            SliceTiming {
                slice,
                cells: v.len(),
                median_ratio: (median_ratio * 1000.0).round() / 1000.0,
                median_diff_ms: median_diff_ms.round(),
                slower: median_ratio > t.slice_ratio && median_diff_ms > t.slice_abs_ms,
            }
        })
        .collect()
}

/// How a change weighs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Fails the comparison.
    Regression,
    /// Better than the baseline.
    Improvement,
    /// Worth knowing, neither.
    Note,
}

/// What changed in a cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    /// Connected in the baseline, not now.
    NoLongerConnects,
    /// Direct in the baseline, relayed now.
    DirectToRelay,
    /// Slower past the thresholds.
    Slower,
    /// In the baseline, not in the fresh run.
    Missing,
    /// Did not connect in the baseline, connects now.
    NowConnects,
    /// Relayed in the baseline, direct now.
    RelayToDirect,
    /// Faster past the thresholds.
    Faster,
    /// Another direct path kind (host, srflx, prflx).
    DirectKind,
    /// Not in the baseline.
    New,
    /// Agreed with the oracle in the baseline, does not now.
    NewlyFlagged,
    /// Disagreed with the oracle in the baseline, agrees now.
    NoLongerFlagged,
}

impl ChangeKind {
    /// Its weight.
    pub fn severity(self) -> Severity {
        use ChangeKind::*;
        match self {
            NoLongerConnects | DirectToRelay | Slower | Missing => Severity::Regression,
            NowConnects | RelayToDirect | Faster => Severity::Improvement,
            DirectKind | New | NewlyFlagged | NoLongerFlagged => Severity::Note,
        }
    }

    /// In words.
    pub fn describe(self) -> &'static str {
        use ChangeKind::*;
        match self {
            NoLongerConnects => "no longer connects",
            DirectToRelay => "direct path now relayed",
            Slower => "slower",
            Missing => "missing from the fresh run",
            NowConnects => "now connects",
            RelayToDirect => "relayed path now direct",
            Faster => "faster",
            DirectKind => "another direct path kind",
            New => "new cell",
            NewlyFlagged => "newly disagrees with the oracle",
            NoLongerFlagged => "now agrees with the oracle",
        }
    }
}

/// One change of one cell, with the value before and after.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Change {
    /// What changed.
    pub kind: ChangeKind,
    /// The value in the baseline (`-` when the cell was not there).
    pub baseline: String,
    /// The value in the fresh run (`-` when the cell is not there).
    pub fresh: String,
}

/// Every change of one cell, of one severity.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CellChanges {
    /// The cell's id (`row|column|mode|turn|peers`).
    pub id: String,
    /// Its outcome in the baseline (`srflx 182 ms`, `failed`, ...), if there.
    pub baseline: Option<String>,
    /// Its outcome in the fresh run, if there.
    pub fresh: Option<String>,
    /// The changes.
    pub changes: Vec<Change>,
}

/// Which matrix a side of the comparison is.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Side {
    /// Matrix name.
    pub matrix: String,
    /// Definition fingerprint.
    pub definition: String,
    /// Cells in the file.
    pub cells: usize,
    /// Cells in the whole matrix.
    pub total_cells: usize,
}

impl Side {
    fn of(m: &Matrix) -> Side {
        Side {
            matrix: m.matrix.clone(),
            definition: m.definition.clone(),
            cells: m.cells.len(),
            total_cells: m.total_cells,
        }
    }
}

/// The outcome of [`compare`]; `Serialize` for `sim compare --json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Comparison {
    /// The baseline.
    pub baseline: Side,
    /// The fresh run.
    pub fresh: Side,
    /// The thresholds used.
    pub thresholds: Thresholds,
    /// The comparison fails ([`Comparison::failed`]).
    pub failed: bool,
    /// Things that make the comparison less meaningful (different definitions, ...).
    pub warnings: Vec<String>,
    /// Cells that got worse (fail).
    pub regressions: Vec<CellChanges>,
    /// Cells that got better.
    pub improvements: Vec<CellChanges>,
    /// Other changes.
    pub notes: Vec<CellChanges>,
    /// Cells in both with no change at all.
    pub unchanged: usize,
    /// Each slice's median time change.
    pub slices: Vec<SliceTiming>,
}

impl Comparison {
    /// At least one regression: a cell, or a slice whose median time moved.
    pub fn failed(&self) -> bool {
        !self.regressions.is_empty() || self.slices.iter().any(|s| s.slower)
    }

    /// What changed, for people: a verdict, warnings, then one line per cell and severity
    /// with the values before and after.
    pub fn markdown(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "# Matrix comparison: {} (baseline) vs {} (fresh)\n",
            self.baseline.matrix, self.fresh.matrix
        );
        let _ = writeln!(
            o,
            "**{}**: {} regressed, {} improved, {} other changes, {} unchanged \
             (baseline {} cells, fresh {} cells; time thresholds: a cell x{} and +{}, a \
             slice's median x{} and +{}).\n",
            if self.failed() { "FAIL" } else { "PASS" },
            self.regressions.len(),
            self.improvements.len(),
            self.notes.len(),
            self.unchanged,
            self.baseline.cells,
            self.fresh.cells,
            self.thresholds.time_ratio,
            ms(self.thresholds.time_abs_ms),
            self.thresholds.slice_ratio,
            ms(self.thresholds.slice_abs_ms),
        );
        if !self.slices.is_empty() {
            let _ = writeln!(
                o,
                "| slice | cells | median fresh/baseline | median change |"
            );
            let _ = writeln!(o, "|---|---|---|---|");
            for s in &self.slices {
                let _ = writeln!(
                    o,
                    "| {}{} | {} | {:.3} | {:+.0} ms |",
                    s.slice,
                    if s.slower { " **SLOWER**" } else { "" },
                    s.cells,
                    s.median_ratio,
                    s.median_diff_ms
                );
            }
            let _ = writeln!(o);
        }
        for w in &self.warnings {
            let _ = writeln!(o, "- warning: {w}");
        }
        if !self.warnings.is_empty() {
            let _ = writeln!(o);
        }
        for (title, list) in [
            ("Regressions", &self.regressions),
            ("Improvements", &self.improvements),
            ("Other changes", &self.notes),
        ] {
            if list.is_empty() {
                continue;
            }
            let _ = writeln!(o, "## {title}\n");
            for c in list {
                let what = c
                    .changes
                    .iter()
                    .map(|ch| format!("{}: {} → {}", ch.kind.describe(), ch.baseline, ch.fresh))
                    .collect::<Vec<_>>()
                    .join("; ");
                let _ = writeln!(
                    o,
                    "- `{}`: {} → {} ({what})",
                    c.id.replace('`', "'"),
                    c.baseline.as_deref().unwrap_or("-"),
                    c.fresh.as_deref().unwrap_or("-"),
                );
            }
            let _ = writeln!(o);
        }
        o
    }
}

fn path_text(c: &Cell) -> String {
    c.path.map_or("-", PathKind::as_str).to_owned()
}

fn agree_text(c: &Cell) -> String {
    if c.agrees {
        "agrees".into()
    } else {
        format!(
            "disagrees: {}",
            c.flag.as_deref().unwrap_or("differs from the oracle")
        )
    }
}

/// The changes from `b` (baseline) to `f` (fresh) of one cell.
fn changes(b: &Cell, f: &Cell, t: &Thresholds) -> Vec<Change> {
    let mut out = Vec::new();
    let mut push = |kind, baseline: String, fresh: String| {
        out.push(Change {
            kind,
            baseline,
            fresh,
        })
    };
    match (b.connected, f.connected) {
        (true, false) => push(ChangeKind::NoLongerConnects, outcome(b), outcome(f)),
        (false, true) => push(ChangeKind::NowConnects, outcome(b), outcome(f)),
        (false, false) => {}
        (true, true) => {
            if let (Some(pb), Some(pf)) = (b.path, f.path) {
                if pb.is_direct() && !pf.is_direct() {
                    push(ChangeKind::DirectToRelay, path_text(b), path_text(f));
                } else if !pb.is_direct() && pf.is_direct() {
                    push(ChangeKind::RelayToDirect, path_text(b), path_text(f));
                } else if pb != pf {
                    push(ChangeKind::DirectKind, path_text(b), path_text(f));
                }
            }
            if let (Some(tb), Some(tf)) = (b.time_to_connected_ms, f.time_to_connected_ms) {
                if tf > tb * t.time_ratio && tf - tb > t.time_abs_ms {
                    push(ChangeKind::Slower, ms(tb), ms(tf));
                } else if tb > tf * t.time_ratio && tb - tf > t.time_abs_ms {
                    push(ChangeKind::Faster, ms(tb), ms(tf));
                }
            }
        }
    }
    match (b.agrees, f.agrees) {
        (true, false) => push(ChangeKind::NewlyFlagged, agree_text(b), agree_text(f)),
        (false, true) => push(ChangeKind::NoLongerFlagged, agree_text(b), agree_text(f)),
        _ => {}
    }
    out
}

/// Compare `fresh` with `baseline`.
pub fn compare(baseline: &Matrix, fresh: &Matrix, t: &Thresholds) -> Comparison {
    let mut warnings = Vec::new();
    if baseline.matrix != fresh.matrix {
        warnings.push(format!(
            "different matrices: baseline {:?}, fresh {:?}",
            baseline.matrix, fresh.matrix
        ));
    }
    if baseline.definition != fresh.definition {
        warnings.push(format!(
            "definitions differ (baseline {}, fresh {}): profiles, dimensions, delays or \
             timeouts changed; update the baseline if that was intended",
            baseline.definition, fresh.definition
        ));
    }
    for (name, m) in [("baseline", baseline), ("fresh run", fresh)] {
        if m.cells.len() < m.total_cells {
            let what = match m.shard {
                Some(s) => format!("is shard {}/{}", s.index, s.count),
                None => "is incomplete".into(),
            };
            warnings.push(format!(
                "the {name} {what}: {} of {} cells",
                m.cells.len(),
                m.total_cells
            ));
        }
    }
    let fresh_by_id = by_id(fresh, "fresh run", &mut warnings);
    let base_by_id = by_id(baseline, "baseline", &mut warnings);

    let mut regressions = Vec::new();
    let mut improvements = Vec::new();
    let mut notes = Vec::new();
    let mut unchanged = 0;
    let mut done = HashSet::new();
    for b in &baseline.cells {
        if !done.insert(b.id.as_str()) {
            continue;
        }
        let Some(f) = fresh_by_id.get(b.id.as_str()) else {
            regressions.push(CellChanges {
                id: b.id.clone(),
                baseline: Some(outcome(b)),
                fresh: None,
                changes: vec![Change {
                    kind: ChangeKind::Missing,
                    baseline: outcome(b),
                    fresh: "-".into(),
                }],
            });
            continue;
        };
        let all = changes(b, f, t);
        if all.is_empty() {
            unchanged += 1;
            continue;
        }
        for (severity, list) in [
            (Severity::Regression, &mut regressions),
            (Severity::Improvement, &mut improvements),
            (Severity::Note, &mut notes),
        ] {
            let these: Vec<Change> = all
                .iter()
                .filter(|c| c.kind.severity() == severity)
                .cloned()
                .collect();
            if !these.is_empty() {
                list.push(CellChanges {
                    id: b.id.clone(),
                    baseline: Some(outcome(b)),
                    fresh: Some(outcome(f)),
                    changes: these,
                });
            }
        }
    }
    let mut new_seen = HashSet::new();
    for f in &fresh.cells {
        if base_by_id.contains_key(f.id.as_str()) || !new_seen.insert(f.id.as_str()) {
            continue;
        }
        notes.push(CellChanges {
            id: f.id.clone(),
            baseline: None,
            fresh: Some(outcome(f)),
            changes: vec![Change {
                kind: ChangeKind::New,
                baseline: "-".into(),
                fresh: outcome(f),
            }],
        });
    }
    let slices = slice_timings(&base_by_id, fresh, t);
    let failed = !regressions.is_empty() || slices.iter().any(|s| s.slower);
    Comparison {
        baseline: Side::of(baseline),
        fresh: Side::of(fresh),
        thresholds: *t,
        failed,
        warnings,
        regressions,
        improvements,
        notes,
        unchanged,
        slices,
    }
}

/// Cells by id (the first of duplicates, with a warning).
fn by_id<'a>(m: &'a Matrix, name: &str, warnings: &mut Vec<String>) -> HashMap<&'a str, &'a Cell> {
    let mut out: HashMap<&str, &Cell> = HashMap::new();
    for c in &m.cells {
        match out.entry(c.id.as_str()) {
            std::collections::hash_map::Entry::Occupied(_) => warnings.push(format!(
                "the {name} has cell {:?} more than once: the first one counts",
                c.id
            )),
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(c);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::matrix::model::Shard;
    use crate::matrix::report::tests::sample;

    fn ids(list: &[CellChanges]) -> Vec<(&str, Vec<ChangeKind>)> {
        list.iter()
            .map(|c| (c.id.as_str(), c.changes.iter().map(|ch| ch.kind).collect()))
            .collect()
    }

    /// Per-cell thresholds only (the slice check has its own test).
    const T: Thresholds = Thresholds {
        time_ratio: 1.5,
        time_abs_ms: 250.0,
        slice_ratio: 1e9,
        slice_abs_ms: 1e9,
    };

    #[test]
    fn identical_matrices_pass() {
        let m = sample();
        let c = compare(&m, &m, &Thresholds::default());
        assert_eq!(c.thresholds, Thresholds::default());
        assert!(!c.failed() && !c.failed);
        assert!(c.regressions.is_empty() && c.improvements.is_empty() && c.notes.is_empty());
        assert!(c.warnings.is_empty());
        assert_eq!(c.unchanged, 16);
        assert!(
            c.markdown().contains("**PASS**: 0 regressed"),
            "{}",
            c.markdown()
        );
    }

    #[test]
    fn each_regression_kind_is_found() {
        let base = sample();
        let mut fresh = base.clone();
        // 0: srflx -> failed.
        fresh.cells[0].connected = false;
        fresh.cells[0].path = None;
        // 4: srflx -> relay (TURN udp slice).
        fresh.cells[4].path = Some(PathKind::Relay);
        // 5: 155 -> 600 ms (x3.9, +445).
        fresh.cells[5].time_to_connected_ms = Some(600.0);
        // 8: connected -> error.
        fresh.cells[8].connected = false;
        fresh.cells[8].error = Some("setup failed".into());
        // 15: gone.
        let gone = fresh.cells.pop().unwrap();
        let c = compare(&base, &fresh, &T);
        assert!(c.failed());
        use ChangeKind::*;
        assert_eq!(
            ids(&c.regressions),
            vec![
                (
                    "eim|eif|trickle|none|icepeer/icepeer",
                    vec![NoLongerConnects]
                ),
                ("eim|eif|trickle|udp|icepeer/icepeer", vec![DirectToRelay]),
                ("eim|apdf|trickle|udp|icepeer/icepeer", vec![Slower]),
                (
                    "eim|eif|vanilla|none|icepeer/icepeer",
                    vec![NoLongerConnects]
                ),
                (gone.id.as_str(), vec![Missing]),
            ]
        );
        assert!(c.improvements.is_empty());
        assert_eq!(c.unchanged, 16 - 5);
        let md = c.markdown();
        assert!(md.contains("**FAIL**: 5 regressed"), "{md}");
        assert!(
            md.contains(
                "- `eim|eif|trickle|none|icepeer/icepeer`: srflx 150 ms → failed (no longer \
             connects: srflx 150 ms → failed)"
            ),
            "{md}"
        );
        assert!(md.contains("(slower: 155 ms → 600 ms)"), "{md}");
        assert!(
            md.contains("(direct path now relayed: srflx → relay)"),
            "{md}"
        );
        assert!(
            md.contains("→ error (no longer connects: srflx 308 ms → error)"),
            "{md}"
        );
        assert!(
            md.contains("→ - (missing from the fresh run: relay 315 ms → -)"),
            "{md}"
        );
        // JSON for --json.
        let j = serde_json::to_value(&c).unwrap();
        assert_eq!(j["failed"], true);
        assert_eq!(j["regressions"][2]["changes"][0]["kind"], "slower");
        assert_eq!(j["thresholds"]["time_abs_ms"], 250.0);
    }

    #[test]
    fn each_improvement_and_note_kind_is_found() {
        let base = sample();
        let mut fresh = base.clone();
        // 3: failed -> srflx.
        fresh.cells[3].connected = true;
        fresh.cells[3].path = Some(PathKind::Srflx);
        fresh.cells[3].time_to_connected_ms = Some(200.0);
        // 7: relay -> srflx.
        fresh.cells[7].path = Some(PathKind::Srflx);
        // 9: 309 -> 50 ms (x6, -259).
        fresh.cells[9].time_to_connected_ms = Some(50.0);
        // 10: srflx -> prflx, and now flagged.
        fresh.cells[10].path = Some(PathKind::Prflx);
        fresh.cells[10].agrees = false;
        fresh.cells[10].flag = Some("expected srflx, got prflx".into());
        // 1: flagged before, agrees now (srflx again).
        fresh.cells[1].path = Some(PathKind::Srflx);
        fresh.cells[1].agrees = true;
        fresh.cells[1].flag = None;
        // A new cell.
        let mut extra = base.cells[0].clone();
        extra.id = "new|eif|trickle|none|icepeer/icepeer".into();
        extra.index = 16;
        fresh.cells.push(extra);
        let c = compare(&base, &fresh, &T);
        assert!(!c.failed(), "{}", c.markdown());
        use ChangeKind::*;
        assert_eq!(
            ids(&c.improvements),
            vec![
                ("apdm|apdf|trickle|none|icepeer/icepeer", vec![NowConnects]),
                ("apdm|apdf|trickle|udp|icepeer/icepeer", vec![RelayToDirect]),
                ("eim|apdf|vanilla|none|icepeer/icepeer", vec![Faster]),
            ]
        );
        assert_eq!(
            ids(&c.notes),
            vec![
                (
                    "eim|apdf|trickle|none|icepeer/icepeer",
                    vec![DirectKind, NoLongerFlagged]
                ),
                (
                    "apdm|eif|vanilla|none|icepeer/icepeer",
                    vec![DirectKind, NewlyFlagged]
                ),
                ("new|eif|trickle|none|icepeer/icepeer", vec![New]),
            ]
        );
        let md = c.markdown();
        assert!(
            md.contains("**PASS**: 0 regressed, 3 improved, 3 other changes"),
            "{md}"
        );
        assert!(
            md.contains(
                "newly disagrees with the oracle: agrees → disagrees: expected srflx, got prflx"
            ),
            "{md}"
        );
        assert!(md.contains("(faster: 309 ms → 50 ms)"), "{md}");
    }

    #[test]
    fn time_needs_both_thresholds() {
        let base = sample();
        let b0 = base.cells[0].time_to_connected_ms.unwrap(); // 150 ms
        let run = |fresh_ms: f64, t: &Thresholds| {
            let mut fresh = base.clone();
            fresh.cells[0].time_to_connected_ms = Some(fresh_ms);
            let c = compare(&base, &fresh, t);
            (c.failed(), c.improvements.len())
        };
        // x2.67 but only +250: not past the absolute threshold (strictly greater).
        assert_eq!(run(b0 + 250.0, &T), (false, 0));
        assert_eq!(run(b0 + 251.0, &T), (true, 0));
        // A slow cell: +400 ms but only x1.33: not past the ratio.
        let mut slow = base.clone();
        slow.cells[0].time_to_connected_ms = Some(1200.0);
        let mut fresh = slow.clone();
        fresh.cells[0].time_to_connected_ms = Some(1600.0);
        assert!(!compare(&slow, &fresh, &T).failed());
        fresh.cells[0].time_to_connected_ms = Some(1801.0);
        assert!(compare(&slow, &fresh, &T).failed());
        // Both thresholds are parameters.
        let loose = Thresholds {
            time_ratio: 10.0,
            time_abs_ms: 1400.0,
            ..T
        };
        assert_eq!(run(1400.0, &loose), (false, 0));
        assert_eq!(run(1501.0, &loose), (false, 0));
        assert_eq!(run(1600.0, &loose), (true, 0));
        let tight = Thresholds {
            time_ratio: 1.1,
            time_abs_ms: 10.0,
            ..T
        };
        assert_eq!(run(170.0, &tight), (true, 0));
        assert_eq!(run(160.0, &tight), (false, 0));
        // Faster: symmetric.
        assert_eq!(run(100.0, &tight), (false, 1));
        assert_eq!(run(100.0, &T), (false, 0));
    }

    #[test]
    fn a_slice_whose_median_moves_fails_while_single_cells_stay_under_their_threshold() {
        let base = sample();
        let t = Thresholds::default();
        // Every connected cell 30 % and at least 150 ms slower: no single cell passes x2 and
        // +500 ms, but each slice's median does pass x1.2 and +100 ms.
        let mut fresh = base.clone();
        for c in &mut fresh.cells {
            if let Some(x) = c.time_to_connected_ms.as_mut() {
                *x = (*x * 1.3).max(*x + 150.0);
            }
        }
        let c = compare(&base, &fresh, &t);
        assert!(c.regressions.is_empty(), "{:?}", c.regressions);
        assert!(c.failed());
        assert!(c.slices.iter().any(|s| s.slower), "{:?}", c.slices);
        assert!(c.markdown().contains("**SLOWER**"), "{}", c.markdown());
        // Unchanged times: every slice's median ratio is 1.
        let c = compare(&base, &base, &t);
        assert!(!c.failed());
        assert!(c.slices.iter().all(|s| s.median_ratio == 1.0 && !s.slower));
        // Faster everywhere is not a regression.
        let mut fast = base.clone();
        for c in &mut fast.cells {
            if let Some(x) = c.time_to_connected_ms.as_mut() {
                *x *= 0.5;
            }
        }
        assert!(!compare(&base, &fast, &t).failed());
    }

    #[test]
    fn warnings_for_other_definitions_and_shards() {
        let base = sample();
        let mut fresh = base.clone();
        fresh.definition = "def-9999".into();
        let c = compare(&base, &fresh, &T);
        assert!(!c.failed());
        assert_eq!(c.warnings.len(), 1);
        assert!(c.warnings[0].contains("definitions differ (baseline def-0123, fresh def-9999)"));
        assert!(c.markdown().contains("- warning: definitions differ"));

        let mut shard = base.clone();
        shard.cells.truncate(8);
        shard.shard = Some(Shard { index: 1, count: 2 });
        let c = compare(&base, &shard, &T);
        assert!(c.failed());
        assert_eq!(c.regressions.len(), 8);
        assert!(
            c.warnings
                .iter()
                .any(|w| w == "the fresh run is shard 1/2: 8 of 16 cells"),
            "{:?}",
            c.warnings
        );

        let mut dup = base.clone();
        dup.cells.push(dup.cells[0].clone());
        let last = dup.cells.last_mut().unwrap();
        last.connected = false;
        let c = compare(&base, &dup, &T);
        assert!(!c.failed(), "the first of duplicates counts");
        assert!(c.warnings.iter().any(|w| w.contains("more than once")));
    }
}
