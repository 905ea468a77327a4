//! A matrix for people and for machines: `matrix.md`, a self-contained `matrix.html` heatmap,
//! and `matrix.json` (the contract in [`super::model`], documented in reports/README.md).
//!
//! Layout of both renderings: the summary, then one rows x columns table per slice (mode x
//! TURN setting x agent pair, in the matrix's order), then the cells that disagree with the
//! oracle, then trickle against vanilla when the matrix has both modes.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::model::{Cell, Matrix, Mode, PathKind, Peers, SCHEMA_VERSION, SideResult, Turn};

/// Marker on cells that disagree with the oracle.
pub const FLAG_MARK: &str = "⚠";

/// Why a `matrix.json` could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not a matrix.json of the expected layout.
    #[error("{path} is not a valid matrix.json: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The cause, with line and column.
        source: serde_json::Error,
    },
    /// The sizes in the file do not add up or are out of bounds.
    #[error("{path} is not a consistent matrix.json: {why}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// The file has no `schema_version` (not a matrix.json at all, probably).
    #[error("{path} has no schema_version: not a matrix.json")]
    NoSchema {
        /// The file.
        path: PathBuf,
    },
    /// The file has another layout version.
    #[error(
        "{path} has schema_version {found}, this sim reads only {expected}: \
         re-run the matrix (or use the sim that wrote it)"
    )]
    Schema {
        /// The file.
        path: PathBuf,
        /// Its version.
        found: u64,
        /// [`SCHEMA_VERSION`].
        expected: u32,
    },
}

/// Parse a `matrix.json`, refusing another schema version before looking at the rest.
pub fn read(path: &Path) -> Result<Matrix, ReadError> {
    let text = std::fs::read_to_string(path).map_err(|source| ReadError::Io {
        path: path.to_owned(),
        source,
    })?;
    parse(path, &text)
}

fn parse(path: &Path, text: &str) -> Result<Matrix, ReadError> {
    #[derive(Deserialize)]
    struct Version {
        schema_version: Option<serde_json::Value>,
    }
    let json = |source| ReadError::Json {
        path: path.to_owned(),
        source,
    };
    let v: Version = serde_json::from_str(text).map_err(json)?;
    match v.schema_version.as_ref().map(serde_json::Value::as_u64) {
        None => {
            return Err(ReadError::NoSchema {
                path: path.to_owned(),
            });
        }
        Some(Some(found)) if found == u64::from(SCHEMA_VERSION) => {}
        Some(found) => {
            return Err(ReadError::Schema {
                path: path.to_owned(),
                found: found.unwrap_or(u64::MAX),
                expected: SCHEMA_VERSION,
            });
        }
    }
    let m: Matrix = serde_json::from_str(text).map_err(json)?;
    // The file drives loops in merge and in the reports: its sizes must be consistent and
    // bounded before anything iterates over them.
    let dims = [
        m.rows.len(),
        m.columns.len(),
        m.modes.len(),
        m.turn.len(),
        m.peers.len(),
    ]
    .iter()
    .try_fold(1usize, |a, &b| a.checked_mul(b));
    let bad = |why: String| ReadError::Invalid {
        path: path.to_owned(),
        why,
    };
    if m.total_cells > crate::matrix::spec::MAX_CELLS {
        return Err(bad(format!(
            "total_cells {} is more than {}",
            m.total_cells,
            crate::matrix::spec::MAX_CELLS
        )));
    }
    if dims != Some(m.total_cells) {
        return Err(bad(format!(
            "total_cells {} is not rows x columns x modes x turn x peers",
            m.total_cells
        )));
    }
    if m.cells.len() > m.total_cells {
        return Err(bad(format!(
            "{} cells, more than total_cells {}",
            m.cells.len(),
            m.total_cells
        )));
    }
    if let Some(s) = m.shard {
        if s.count == 0 || s.count > 1000 || s.index == 0 || s.index > s.count {
            return Err(bad(format!(
                "shard {}/{} is not i/n with 1 <= i <= n <= 1000",
                s.index, s.count
            )));
        }
    }
    Ok(m)
}

/// Create `dir` and write `matrix.json` (pretty), `matrix.md` and `matrix.html` into it.
pub fn write(dir: &Path, m: &Matrix) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut json = serde_json::to_string_pretty(m).map_err(std::io::Error::other)?;
    json.push('\n');
    std::fs::write(dir.join("matrix.json"), json)?;
    std::fs::write(dir.join("matrix.md"), markdown(m))?;
    std::fs::write(dir.join("matrix.html"), html(m))?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Shared pieces

/// Milliseconds, rounded to the unit.
pub(crate) fn ms(x: f64) -> String {
    format!("{x:.0} ms")
}

/// What a cell ended as, in a few words: `srflx 182 ms`, `relay 240 ms`, `failed`, `error`.
pub(crate) fn outcome(c: &Cell) -> String {
    if c.error.is_some() {
        return "error".into();
    }
    if !c.connected {
        return "failed".into();
    }
    let path = c.path.map_or("connected", PathKind::as_str);
    match c.time_to_connected_ms {
        Some(t) => format!("{path} {}", ms(t)),
        None => path.to_owned(),
    }
}

/// What the oracle expects, in a few words: `srflx`, `relay`, `no connection`.
pub(crate) fn expected_short(c: &Cell) -> String {
    match (c.expected.connects, c.expected.path) {
        (true, Some(p)) => p.as_str().to_owned(),
        (true, None) => "connects".into(),
        (false, _) => "no connection".into(),
    }
}

/// The CSS class (and legend entry) of a cell.
fn class(c: &Cell) -> &'static str {
    if c.error.is_some() {
        "error"
    } else if !c.connected {
        "failed"
    } else {
        c.path.map_or("unknown", PathKind::as_str)
    }
}

type Key<'a> = (&'a str, &'a str, Mode, Turn, Peers);

fn index(m: &Matrix) -> HashMap<Key<'_>, &Cell> {
    m.cells
        .iter()
        .map(|c| {
            (
                (c.row.as_str(), c.column.as_str(), c.mode, c.turn, c.peers),
                c,
            )
        })
        .collect()
}

/// Slices in the matrix's order: mode, then TURN setting, then agent pair.
fn slices(m: &Matrix) -> Vec<(Mode, Turn, Peers)> {
    let mut out = Vec::new();
    for &mode in &m.modes {
        for &turn in &m.turn {
            for &peers in &m.peers {
                out.push((mode, turn, peers));
            }
        }
    }
    out
}

fn slice_title(mode: Mode, turn: Turn, peers: Peers) -> String {
    format!(
        "{} · TURN {} · {}",
        mode.as_str(),
        turn.as_str(),
        peers.label()
    )
}

/// A trickle cell with its vanilla counterpart, both connected (`trickle_saving_ms` set).
struct Saving<'a> {
    trickle: &'a Cell,
    vanilla: &'a Cell,
    saving: f64,
}

fn savings(m: &Matrix) -> Vec<Saving<'_>> {
    if !(m.modes.contains(&Mode::Trickle) && m.modes.contains(&Mode::Vanilla)) {
        return Vec::new();
    }
    let by_key = index(m);
    let mut out = Vec::new();
    for c in m.cells.iter().filter(|c| c.mode == Mode::Trickle) {
        let Some(saving) = c.trickle_saving_ms else {
            continue;
        };
        let key = (
            c.row.as_str(),
            c.column.as_str(),
            Mode::Vanilla,
            c.turn,
            c.peers,
        );
        if let Some(v) = by_key.get(&key) {
            out.push(Saving {
                trickle: c,
                vanilla: v,
                saving,
            });
        }
    }
    out
}

fn shard_text(m: &Matrix) -> Option<String> {
    m.shard.map(|s| {
        format!(
            "{}/{} ({} of {} cells)",
            s.index,
            s.count,
            m.cells.len(),
            m.total_cells
        )
    })
}

/// The summary as (label, value) pairs, shared by both renderings.
fn summary_rows(m: &Matrix) -> Vec<(&'static str, String)> {
    let s = &m.summary;
    let mut rows = vec![
        (
            "cells",
            if m.cells.len() == m.total_cells {
                s.cells.to_string()
            } else {
                format!("{} of {}", s.cells, m.total_cells)
            },
        ),
        ("connected", s.connected.to_string()),
        ("direct", s.direct.to_string()),
        ("relayed", s.relayed.to_string()),
        ("agree with the oracle", s.agree.to_string()),
        ("flagged", s.flagged.to_string()),
        ("errors", s.errors.to_string()),
        (
            "wall time",
            format!("{:.1} s", m.elapsed_ms as f64 / 1000.0),
        ),
        ("cells/min", format!("{:.1}", m.cells_per_minute())),
        ("jobs", m.jobs.to_string()),
        ("signaling delay", format!("{} ms", m.signaling_delay_ms)),
        ("cell timeout", format!("{} ms", m.timeout_ms)),
    ];
    if let Some(t) = shard_text(m) {
        rows.push(("shard", t));
    } else if m.cells.len() < m.total_cells {
        rows.push((
            "incomplete",
            format!("{} cells missing", m.total_cells - m.cells.len()),
        ));
    }
    rows
}

fn side_lines(label: &str, s: &SideResult) -> Vec<String> {
    let mut out = Vec::new();
    let agent = if s.agent.is_empty() { "?" } else { &s.agent };
    out.push(format!(
        "{label} ({agent}): {}",
        if s.connected {
            "connected"
        } else {
            "not connected"
        }
    ));
    let opt = |x: &Option<String>| x.clone().unwrap_or_else(|| "?".into());
    if s.local_type.is_some() || s.remote_type.is_some() {
        out.push(format!(
            "  pair {} {} → {} {}",
            opt(&s.local_type),
            opt(&s.local_address),
            opt(&s.remote_type),
            opt(&s.remote_address)
        ));
    }
    let mut facts = Vec::new();
    if let Some(t) = s.time_to_connected_ms {
        facts.push(format!("connected after {}", ms(t)));
    }
    if let Some(n) = s.checks_sent {
        facts.push(format!("{n} checks sent"));
    }
    if let Some(ok) = s.datagrams_ok {
        facts.push(format!("datagrams {}", if ok { "ok" } else { "lost" }));
    }
    if !s.connected {
        facts.push(match s.exit_code {
            Some(c) => format!("exit {c}"),
            None => "killed".into(),
        });
    }
    if !facts.is_empty() {
        out.push(format!("  {}", facts.join(", ")));
    }
    if let Some(f) = &s.failure {
        out.push(format!("  failure: {f}"));
    }
    if let Some(e) = &s.stderr {
        let e = e.trim();
        if !e.is_empty() {
            // The tail: the end of standard error says why.
            let tail: String = {
                let chars: Vec<char> = e.chars().collect();
                let start = chars.len().saturating_sub(300);
                chars.get(start..).unwrap_or_default().iter().collect()
            };
            out.push(format!("  stderr: {tail}"));
        }
    }
    out
}

/// Everything about a cell, one fact per line (the HTML tooltip).
fn details(c: &Cell) -> Vec<String> {
    let mut out = vec![c.id.clone()];
    out.push(format!("outcome: {}", outcome(c)));
    if let Some(p) = &c.pair {
        out.push(format!("selected pair (row side): {p}"));
    }
    if let Some(n) = c.checks_sent {
        out.push(format!("checks sent (both sides): {n}"));
    }
    out.push(format!(
        "expected: {} — {}",
        expected_short(c),
        c.expected.reason
    ));
    if let Some(f) = &c.flag {
        out.push(format!("{FLAG_MARK} {f}"));
    } else if !c.agrees {
        out.push(format!("{FLAG_MARK} disagrees with the oracle"));
    }
    if let Some(s) = c.trickle_saving_ms {
        out.push(format!("trickle saves {}", ms(s)));
    }
    if let Some(e) = &c.error {
        out.push(format!("error: {e}"));
    }
    out.extend(side_lines("row side", &c.row_side));
    out.extend(side_lines("column side", &c.column_side));
    out.push(format!("cell wall time {}", ms(c.elapsed_ms as f64)));
    out
}

// ---------------------------------------------------------------------------------------------
// Markdown

/// Make data safe inside a Markdown table cell or line.
fn md(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '|' => out.push_str("\\|"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '`' => out.push('\''),
            '\n' | '\r' | '\t' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// Make data safe inside a Markdown code span outside tables (no `\|` escape there).
fn code(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '`' => '\'',
            '\n' | '\r' | '\t' => ' ',
            c => c,
        })
        .collect()
}

/// `matrix.md`.
pub fn markdown(m: &Matrix) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "# Connectivity matrix {}\n", md(&m.matrix));
    if let Some(d) = &m.description {
        let _ = writeln!(o, "{}\n", md(d));
    }
    let _ = writeln!(
        o,
        "From `{}`, definition `{}`.\n",
        code(&m.source),
        code(&m.definition)
    );

    let _ = writeln!(o, "## Summary\n");
    let _ = writeln!(o, "| | |\n|---|---|");
    for (k, v) in summary_rows(m) {
        let _ = writeln!(o, "| {k} | {} |", md(&v));
    }
    let _ = writeln!(o);
    if !m.profiles.is_empty() {
        let _ = writeln!(o, "## Profiles\n");
        let _ = writeln!(
            o,
            "| profile | what | levels (innermost first) |\n|---|---|---|"
        );
        for p in &m.profiles {
            let _ = writeln!(
                o,
                "| {} | {} | {} |",
                md(&p.name),
                md(&p.description),
                md(&p.levels.join(" → "))
            );
        }
        let _ = writeln!(o);
    }

    let _ = writeln!(
        o,
        "## Cells\n\nRows are the controlling (offering) side, columns the controlled side. \
         {FLAG_MARK}: disagrees with the oracle (see below).\n"
    );
    let by_key = index(m);
    for (mode, turn, peers) in slices(m) {
        let _ = writeln!(o, "### {}\n", slice_title(mode, turn, peers));
        let _ = write!(o, "| row \\ column |");
        for c in &m.columns {
            let _ = write!(o, " {} |", md(c));
        }
        let _ = write!(o, "\n|---|");
        for _ in &m.columns {
            let _ = write!(o, "---|");
        }
        let _ = writeln!(o);
        for r in &m.rows {
            let _ = write!(o, "| **{}** |", md(r));
            for col in &m.columns {
                let text = match by_key.get(&(r.as_str(), col.as_str(), mode, turn, peers)) {
                    Some(c) if c.agrees => outcome(c),
                    Some(c) => format!("{FLAG_MARK} {}", outcome(c)),
                    None => "·".into(),
                };
                let _ = write!(o, " {text} |");
            }
            let _ = writeln!(o);
        }
        let _ = writeln!(o);
    }
    if m.cells.len() < m.total_cells {
        let _ = writeln!(o, "`·`: cell not in this file.\n");
    }

    let _ = writeln!(o, "## Flagged cells\n");
    let flagged: Vec<&Cell> = m.cells.iter().filter(|c| !c.agrees).collect();
    if flagged.is_empty() {
        let _ = writeln!(o, "None: every cell agrees with the oracle.\n");
    }
    for c in flagged {
        let _ = writeln!(
            o,
            "- {FLAG_MARK} `{}`: {}; expected {} ({}). {}",
            code(&c.id),
            outcome(c),
            expected_short(c),
            md(&c.expected.reason),
            md(c.flag.as_deref().unwrap_or("disagrees with the oracle")),
        );
        if let Some(e) = &c.error {
            let _ = writeln!(o, "  - error: {}", md(e));
        }
        for (label, s) in [("row side", &c.row_side), ("column side", &c.column_side)] {
            if let Some(f) = &s.failure {
                let _ = writeln!(o, "  - {label}: {}", md(f));
            }
        }
    }
    let _ = writeln!(o);

    let sv = savings(m);
    if m.modes.contains(&Mode::Trickle) && m.modes.contains(&Mode::Vanilla) {
        let _ = writeln!(o, "## Trickle vs vanilla\n");
        if sv.is_empty() {
            let _ = writeln!(o, "No cell connected in both modes.\n");
        } else {
            let _ = writeln!(
                o,
                "Time to connected (the later side), where both modes connected.\n\n\
                 | row | column | TURN | peers | trickle | vanilla | saving |\n\
                 |---|---|---|---|---:|---:|---:|"
            );
            for s in &sv {
                let t = s.trickle;
                let _ = writeln!(
                    o,
                    "| {} | {} | {} | {} | {} | {} | {} |",
                    md(&t.row),
                    md(&t.column),
                    t.turn.as_str(),
                    t.peers.label(),
                    t.time_to_connected_ms.map_or("-".into(), ms),
                    s.vanilla.time_to_connected_ms.map_or("-".into(), ms),
                    ms(s.saving)
                );
            }
            let mut all: Vec<f64> = sv.iter().map(|s| s.saving).collect();
            all.sort_by(f64::total_cmp);
            if let Some(med) = all.get(all.len() / 2) {
                let _ = writeln!(o, "\nMedian saving: {} over {} pairs.", ms(*med), all.len());
            }
            let _ = writeln!(o);
        }
    }
    o
}

// ---------------------------------------------------------------------------------------------
// HTML

/// Escape data for HTML text and attribute values.
pub(crate) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const CSS: &str = "\
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fff}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0}
th,td{border:1px solid #bbb;padding:.3em .5em}
th{background:#f3f3f3;text-align:left}
table.kv td:last-child{text-align:right}
table.heat td{position:relative;min-width:6.5em;text-align:center;cursor:default}
table.heat td .tip{display:none;position:absolute;z-index:10;left:0;top:100%;width:30em;\
text-align:left;white-space:pre-wrap;background:#fffde7;color:#222;border:1px solid #555;\
padding:.5em;font-size:12px;box-shadow:2px 2px 6px rgba(0,0,0,.3)}
table.heat td:nth-last-child(-n+2) .tip{left:auto;right:0}
table.heat td:hover .tip,table.heat td:focus .tip{display:block}
.host{background:#1b7a33;color:#fff}
.srflx{background:#7cc47f}
.prflx{background:#d4e157}
.relay{background:#ffa040}
.unknown{background:#b3e5fc}
.failed{background:#e53935;color:#fff}
.error{background:#616161;color:#fff}
.missing{background:repeating-linear-gradient(45deg,#eee,#eee 4px,#fff 4px,#fff 8px);color:#888}
td.flag{border:3px solid #6a1b9a;font-weight:bold}
.mark{color:#6a1b9a;background:#fff;border-radius:3px;padding:0 .2em;margin-right:.2em}
.legend span.sw{display:inline-block;min-width:4.5em;padding:.15em .4em;margin:0 .3em .3em 0;\
border:1px solid #bbb;text-align:center}
.legend span.sw.flag{border:3px solid #6a1b9a}
.meta{color:#555}
";

fn legend() -> String {
    let mut o = String::from("<div class=\"legend\"><h2>Legend</h2><p>");
    for (class, text) in [
        ("host", "host: no translation"),
        ("srflx", "srflx: server-reflexive"),
        ("prflx", "prflx: peer-reflexive"),
        ("relay", "relay: through TURN"),
        ("failed", "failed: did not connect"),
        ("error", "error: could not run"),
        ("missing", "not in this file"),
    ] {
        let _ = write!(o, "<span class=\"sw {class}\">{}</span>", esc(text));
    }
    let _ = write!(
        o,
        "<span class=\"sw flag\"><span class=\"mark\">{FLAG_MARK}</span>disagrees with the \
         oracle</span></p><p class=\"meta\">Rows: controlling (offering) side; columns: \
         controlled side. The path kind is the most indirect candidate type in either side's \
         selected pair. Hover over (or focus) a cell for details.</p></div>"
    );
    o
}

fn html_cell(c: &Cell) -> String {
    let mut classes = class(c).to_owned();
    if !c.agrees {
        classes.push_str(" flag");
    }
    let mark = if c.agrees {
        String::new()
    } else {
        format!("<span class=\"mark\">{FLAG_MARK}</span>")
    };
    let text = if c.error.is_some() || !c.connected {
        esc(&outcome(c))
    } else {
        let path = c.path.map_or("connected", PathKind::as_str);
        match c.time_to_connected_ms {
            Some(t) => format!("{path}<br>{}", ms(t)),
            None => path.to_owned(),
        }
    };
    let tip = details(c)
        .iter()
        .map(|l| esc(l))
        .collect::<Vec<_>>()
        .join("\n");
    format!(
        "<td class=\"{classes}\" tabindex=\"0\">{mark}{text}<div class=\"tip\">{tip}</div></td>"
    )
}

/// `matrix.html`: one self-contained file (inline CSS, no script, no external resource).
pub fn html(m: &Matrix) -> String {
    let mut o = String::new();
    let _ = write!(
        o,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>Connectivity matrix {}</title>\n<style>\n{CSS}</style>\n</head>\n<body>\n",
        esc(&m.matrix)
    );
    let _ = writeln!(o, "<h1>Connectivity matrix {}</h1>", esc(&m.matrix));
    if let Some(d) = &m.description {
        let _ = writeln!(o, "<p>{}</p>", esc(d));
    }
    let _ = writeln!(
        o,
        "<p class=\"meta\">From <code>{}</code>, definition <code>{}</code>.</p>",
        esc(&m.source),
        esc(&m.definition)
    );

    let _ = writeln!(o, "<h2>Summary</h2>\n<table class=\"kv\"><tbody>");
    for (k, v) in summary_rows(m) {
        let _ = writeln!(o, "<tr><th>{}</th><td>{}</td></tr>", esc(k), esc(&v));
    }
    let _ = writeln!(o, "</tbody></table>");
    let _ = writeln!(o, "{}", legend());

    let by_key = index(m);
    for (mode, turn, peers) in slices(m) {
        let _ = writeln!(o, "<h2>{}</h2>", esc(&slice_title(mode, turn, peers)));
        let _ = write!(o, "<table class=\"heat\"><thead><tr><th>row \\ column</th>");
        for c in &m.columns {
            let _ = write!(o, "<th>{}</th>", esc(c));
        }
        let _ = writeln!(o, "</tr></thead><tbody>");
        for r in &m.rows {
            let _ = write!(o, "<tr><th>{}</th>", esc(r));
            for col in &m.columns {
                match by_key.get(&(r.as_str(), col.as_str(), mode, turn, peers)) {
                    Some(c) => o.push_str(&html_cell(c)),
                    None => o.push_str("<td class=\"missing\">·</td>"),
                }
            }
            let _ = writeln!(o, "</tr>");
        }
        let _ = writeln!(o, "</tbody></table>");
    }

    let flagged: Vec<&Cell> = m.cells.iter().filter(|c| !c.agrees).collect();
    let _ = writeln!(o, "<h2>Flagged cells ({})</h2>", flagged.len());
    if flagged.is_empty() {
        let _ = writeln!(o, "<p>None: every cell agrees with the oracle.</p>");
    } else {
        let _ = writeln!(
            o,
            "<table><thead><tr><th>cell</th><th>outcome</th><th>expected</th>\
             <th>why expected</th><th>flag</th></tr></thead><tbody>"
        );
        for c in flagged {
            let _ = writeln!(
                o,
                "<tr><td><code>{}</code></td><td class=\"{}\">{}</td><td>{}</td><td>{}</td>\
                 <td>{}</td></tr>",
                esc(&c.id),
                class(c),
                esc(&outcome(c)),
                esc(&expected_short(c)),
                esc(&c.expected.reason),
                esc(c.flag.as_deref().unwrap_or("disagrees with the oracle"))
            );
        }
        let _ = writeln!(o, "</tbody></table>");
    }

    if m.modes.contains(&Mode::Trickle) && m.modes.contains(&Mode::Vanilla) {
        let sv = savings(m);
        let _ = writeln!(o, "<h2>Trickle vs vanilla</h2>");
        if sv.is_empty() {
            let _ = writeln!(o, "<p>No cell connected in both modes.</p>");
        } else {
            let _ = writeln!(
                o,
                "<table><thead><tr><th>row</th><th>column</th><th>TURN</th><th>peers</th>\
                 <th>trickle</th><th>vanilla</th><th>saving</th></tr></thead><tbody>"
            );
            for s in &sv {
                let t = s.trickle;
                let _ = writeln!(
                    o,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
                     <td>{}</td></tr>",
                    esc(&t.row),
                    esc(&t.column),
                    t.turn.as_str(),
                    esc(&t.peers.label()),
                    t.time_to_connected_ms.map_or("-".into(), ms),
                    s.vanilla.time_to_connected_ms.map_or("-".into(), ms),
                    ms(s.saving)
                );
            }
            let _ = writeln!(o, "</tbody></table>");
        }
    }
    let _ = writeln!(o, "</body>\n</html>");
    o
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::matrix::model::{
        Agent, Expected, Peers, ProfileInfo, Shard, Summary, fill_trickle_savings,
    };

    const ICE: Peers = Peers {
        row: Agent::Icepeer,
        column: Agent::Icepeer,
    };

    /// A connected cell on `path` after `ms` milliseconds, agreeing with the oracle.
    pub(crate) fn cell(
        index: usize,
        row: &str,
        column: &str,
        mode: Mode,
        turn: Turn,
        path: Option<PathKind>,
        ms: f64,
    ) -> Cell {
        let connected = path.is_some();
        let side = |agent: &str, t: &str| SideResult {
            agent: agent.into(),
            connected,
            local_type: path.map(|_| t.to_owned()),
            local_address: path.map(|_| "192.0.2.10:40000".to_owned()),
            remote_type: path.map(|_| t.to_owned()),
            remote_address: path.map(|_| "198.51.100.20:50000".to_owned()),
            time_to_connected_ms: path.map(|_| ms),
            checks_sent: Some(4),
            datagrams_ok: Some(connected),
            failure: (!connected).then(|| "ICE failed: no valid pair".to_owned()),
            exit_code: Some(if connected { 0 } else { 1 }),
            stderr: None,
        };
        let t = path.map_or("host", PathKind::as_str);
        Cell {
            index,
            id: format!(
                "{row}|{column}|{}|{}|{}",
                mode.as_str(),
                turn.as_str(),
                ICE.label()
            ),
            row: row.into(),
            column: column.into(),
            mode,
            turn,
            peers: ICE,
            connected,
            path,
            pair: path.map(|p| format!("{0}-{0}", p.as_str())),
            time_to_connected_ms: path.map(|_| ms),
            checks_sent: Some(8),
            expected: Expected {
                connects: connected,
                path,
                reason: "both endpoint-independent".into(),
            },
            agrees: true,
            flag: None,
            trickle_saving_ms: None,
            row_side: side("icepeer", t),
            column_side: side("icepeer", t),
            error: None,
            elapsed_ms: 1000,
        }
    }

    /// A 2x2 matrix, both modes, TURN none and udp: 16 cells, with one relay, one failure,
    /// one flagged cell and one error.
    pub(crate) fn sample() -> Matrix {
        let rows = vec!["eim".to_owned(), "apdm".to_owned()];
        let columns = vec!["eif".to_owned(), "apdf".to_owned()];
        let modes = vec![Mode::Trickle, Mode::Vanilla];
        let turns = vec![Turn::None, Turn::Udp];
        let mut cells = Vec::new();
        for &mode in &modes {
            for &turn in &turns {
                for r in &rows {
                    for c in &columns {
                        let hard = r == "apdm" && c == "apdf";
                        let path = match (hard, turn) {
                            (true, Turn::None) => None,
                            (true, _) => Some(PathKind::Relay),
                            _ => Some(PathKind::Srflx),
                        };
                        let base = if mode == Mode::Trickle { 150.0 } else { 300.0 };
                        let t = base + cells.len() as f64;
                        cells.push(cell(cells.len(), r, c, mode, turn, path, t));
                    }
                }
            }
        }
        // A flagged cell: expected srflx, got prflx.
        let f = cells.get_mut(1).unwrap();
        f.path = Some(PathKind::Prflx);
        f.pair = Some("prflx-srflx".into());
        f.agrees = false;
        f.flag = Some("expected srflx, got prflx: the answer's candidates came late".into());
        // A cell that could not run.
        let e = cells.get_mut(2).unwrap();
        e.connected = false;
        e.path = None;
        e.time_to_connected_ms = None;
        e.error = Some("namespace setup failed: EEXIST".into());
        e.agrees = false;
        e.flag = Some("could not run".into());
        fill_trickle_savings(&mut cells);
        let total = cells.len();
        Matrix {
            schema_version: SCHEMA_VERSION,
            matrix: "sample".into(),
            source: "scenarios/matrix_sample.toml".into(),
            description: Some("A sample matrix".into()),
            definition: "def-0123".into(),
            rows,
            columns,
            modes,
            turn: turns,
            peers: vec![ICE],
            profiles: vec![ProfileInfo {
                name: "eim".into(),
                description: "endpoint-independent mapping".into(),
                levels: vec!["model eim-eif".into()],
            }],
            signaling_delay_ms: 50,
            timeout_ms: 10_000,
            total_cells: total,
            shard: None,
            jobs: 2,
            elapsed_ms: 60_000,
            summary: Summary::of(&cells),
            cells,
        }
    }

    /// Check that every element opened is closed, in order (void elements excepted), and
    /// that raw text (style, script) holds no markup. Returns the number of tags seen.
    fn balanced(html: &str) -> usize {
        const VOID: &[&str] = &["meta", "br", "hr", "img", "link", "input", "!doctype"];
        let mut stack: Vec<String> = Vec::new();
        let mut rest = html;
        let mut tags = 0;
        while let Some(start) = rest.find('<') {
            rest = &rest[start + 1..];
            let end = rest.find('>').expect("unterminated tag");
            let tag = &rest[..end];
            rest = &rest[end + 1..];
            tags += 1;
            let name: String = tag
                .trim_start_matches('/')
                .chars()
                .take_while(|c| !c.is_whitespace())
                .collect::<String>()
                .to_ascii_lowercase();
            if tag.starts_with('/') {
                let open = stack.pop().expect("close without open");
                assert_eq!(open, name, "</{name}> closes <{open}>");
            } else if !VOID.contains(&name.as_str()) {
                if name == "style" || name == "script" {
                    let close = format!("</{name}>");
                    let body_end = rest.find(&close).expect("raw text not closed");
                    assert!(!rest[..body_end].contains('<'), "markup inside <{name}>");
                    rest = &rest[body_end + close.len()..];
                    tags += 1;
                    continue;
                }
                stack.push(name);
            }
        }
        assert!(stack.is_empty(), "unclosed: {stack:?}");
        tags
    }

    #[test]
    #[should_panic(expected = "closes")]
    fn balance_check_catches_misnesting() {
        balanced("<table><tr><td>x</tr></td></table>");
    }

    #[test]
    #[should_panic(expected = "unclosed")]
    fn balance_check_catches_unclosed() {
        balanced("<table><tr><td>x</td></tr>");
    }

    #[test]
    fn outcome_texts() {
        let m = sample();
        assert_eq!(outcome(&m.cells[0]), "srflx 150 ms");
        assert_eq!(outcome(&m.cells[1]), "prflx 151 ms");
        assert_eq!(outcome(&m.cells[2]), "error");
        assert_eq!(outcome(&m.cells[3]), "failed");
        assert_eq!(outcome(&m.cells[7]), "relay 157 ms");
    }

    #[test]
    fn markdown_has_cells_flags_and_savings() {
        let m = sample();
        let md = markdown(&m);
        assert!(md.contains("# Connectivity matrix sample"));
        assert!(md.contains("A sample matrix"));
        // Four slices, in the matrix's order.
        let titles = [
            "### trickle · TURN none · icepeer/icepeer",
            "### trickle · TURN udp · icepeer/icepeer",
            "### vanilla · TURN none · icepeer/icepeer",
            "### vanilla · TURN udp · icepeer/icepeer",
        ];
        let pos: Vec<usize> = titles.iter().map(|t| md.find(t).unwrap()).collect();
        assert!(pos.windows(2).all(|w| w[0] < w[1]), "{pos:?}");
        // First slice: row eim = srflx, flagged prflx; row apdm = error, failed.
        assert!(
            md.contains("| **eim** | srflx 150 ms | ⚠ prflx 151 ms |"),
            "{md}"
        );
        assert!(md.contains("| **apdm** | ⚠ error | failed |"), "{md}");
        assert!(md.contains("| **apdm** | srflx 156 ms | relay 157 ms |"));
        // Summary.
        let s = &m.summary;
        assert_eq!((s.cells, s.flagged, s.errors), (16, 2, 1));
        assert!(md.contains("| flagged | 2 |"));
        assert!(md.contains("| errors | 1 |"));
        assert!(md.contains("| cells/min | 16.0 |"));
        assert!(!md.contains("| shard |"));
        // Flagged section: id, outcome, expectation, flag.
        assert!(
            md.contains(
                "- ⚠ `eim|apdf|trickle|none|icepeer/icepeer`: prflx 151 ms; expected srflx \
             (both endpoint-independent). expected srflx, got prflx: the answer's candidates \
             came late"
            ),
            "{md}"
        );
        assert!(md.contains("  - error: namespace setup failed: EEXIST"));
        // Trickle vs vanilla: cell 0 (150) against cell 8 (308): 158 saved.
        assert!(md.contains("## Trickle vs vanilla"));
        assert!(
            md.contains("| eim | eif | none | icepeer/icepeer | 150 ms | 308 ms | 158 ms |"),
            "{md}"
        );
        // No saving row for the failed pair.
        assert!(!md.contains("| apdm | apdf | none |"));
    }

    #[test]
    fn markdown_without_vanilla_has_no_trickle_section() {
        let mut m = sample();
        m.modes = vec![Mode::Trickle];
        m.cells.retain(|c| c.mode == Mode::Trickle);
        fill_trickle_savings(&mut m.cells);
        let md = markdown(&m);
        assert!(!md.contains("Trickle vs vanilla"));
        assert!(!md.contains("### vanilla"));
    }

    #[test]
    fn markdown_marks_shards_and_missing_cells() {
        let mut m = sample();
        m.cells.retain(|c| c.index % 2 == 0);
        m.shard = Some(Shard { index: 1, count: 2 });
        m.summary = Summary::of(&m.cells);
        let md = markdown(&m);
        assert!(md.contains("| shard | 1/2 (8 of 16 cells) |"), "{md}");
        assert!(md.contains("| cells | 8 of 16 |"));
        assert!(md.contains("| **eim** | srflx 150 ms | · |"), "{md}");
    }

    #[test]
    fn markdown_escapes_table_breakers() {
        let mut m = sample();
        m.cells[1].flag = Some("a | b\nc <x>".into());
        let md = markdown(&m);
        assert!(md.contains("a \\| b c &lt;x&gt;"));
    }

    fn hostile() -> Matrix {
        let mut m = sample();
        m.matrix = "m<script>alert(1)</script>".into();
        m.description = Some("\"quoted\" & 'single' <b>".into());
        m.cells[1].flag = Some("<script>alert('x')</script>".into());
        m.cells[1].expected.reason = "</td></tr></table><script>".into();
        m.cells[3].row_side.failure = Some("<img src=x onerror=alert(1)>".into());
        m.cells[3].row_side.stderr = Some("\"><svg onload=alert(1)>".into());
        m.cells[2].error = Some("</div><script>bad()</script>".into());
        // A hostile profile name, in the headers, ids and tooltips.
        let evil = "ap<i>dm</i>\"'&";
        for r in m.rows.iter_mut().filter(|r| *r == "apdm") {
            *r = evil.into();
        }
        for c in m.cells.iter_mut().filter(|c| c.row == "apdm") {
            c.row = evil.into();
            c.id = c.id.replace("apdm", evil);
        }
        m
    }

    #[test]
    fn html_is_balanced_self_contained_and_escaped() {
        let m = hostile();
        let h = html(&m);
        assert!(h.starts_with("<!DOCTYPE html>"));
        assert!(balanced(&h) > 100);
        assert_eq!(h.matches("<table").count(), h.matches("</table>").count());
        assert_eq!(h.matches("<tr>").count(), h.matches("</tr>").count());
        assert!(!h.contains("<script"), "unescaped script");
        assert!(!h.contains("<img"));
        assert!(!h.contains("<svg"));
        assert!(h.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"));
        assert!(h.contains("&quot;quoted&quot; &amp; &#39;single&#39; &lt;b&gt;"));
        assert!(h.contains("&lt;img src=x onerror=alert(1)&gt;"));
        assert!(!h.contains("<i>"));
        assert!(h.contains("<tr><th>ap&lt;i&gt;dm&lt;/i&gt;&quot;&#39;&amp;</th>"));
        // Still one heatmap cell per cell: the hostile rows were found, not left empty.
        assert_eq!(h.matches("tabindex=\"0\"").count(), 16);
        assert!(!h.contains("class=\"missing\">"));
        assert!(!h.contains("http://") && !h.contains("https://"));
        assert!(!h.contains("src=\"") && !h.contains("href="));
        assert!(!h.contains("@import") && !h.contains("url("));
    }

    #[test]
    fn html_has_legend_summary_heatmap_and_details() {
        let m = sample();
        let h = html(&m);
        assert!(h.contains("<h2>Legend</h2>"));
        for class in ["host", "srflx", "prflx", "relay", "failed", "error"] {
            assert!(
                h.contains(&format!("<span class=\"sw {class}\">")),
                "{class}"
            );
            assert!(h.contains(&format!(".{class}{{background:")), "{class}");
        }
        // One heatmap per slice, 2x2 cells each.
        assert_eq!(h.matches("<table class=\"heat\">").count(), 4);
        assert_eq!(h.matches("tabindex=\"0\"").count(), 16);
        // The flagged cell: class, mark, tooltip with both sides, expectation and flag.
        let flagged = h
            .split("<td class=\"prflx flag\" tabindex=\"0\">")
            .nth(1)
            .unwrap();
        let tip = &flagged[..flagged.find("</td>").unwrap()];
        assert!(tip.starts_with("<span class=\"mark\">⚠</span>prflx<br>151 ms"));
        for want in [
            "eim|apdf|trickle|none|icepeer/icepeer",
            "selected pair (row side): prflx-srflx",
            "expected: srflx — both endpoint-independent",
            "⚠ expected srflx, got prflx",
            "row side (icepeer): connected",
            "column side (icepeer): connected",
            "pair srflx 192.0.2.10:40000 → srflx 198.51.100.20:50000",
            "connected after 151 ms, 4 checks sent",
            "trickle saves 158 ms",
        ] {
            assert!(tip.contains(&esc(want)), "{want} not in {tip}");
        }
        // Failure reasons in the failed cell's tooltip; error text in the error cell's.
        assert!(h.contains("failure: ICE failed: no valid pair"));
        assert!(h.contains("error: namespace setup failed: EEXIST"));
        assert!(h.contains("<td class=\"error flag\" tabindex=\"0\">"));
        assert!(h.contains("<td class=\"relay\" tabindex=\"0\">relay<br>157 ms"));
        // Summary and the other sections.
        assert!(h.contains("<tr><th>flagged</th><td>2</td></tr>"));
        assert!(h.contains("<h2>Flagged cells (2)</h2>"));
        assert!(h.contains("<h2>Trickle vs vanilla</h2>"));
    }

    #[test]
    fn write_then_read_round_trips() {
        let dir = std::env::temp_dir().join(format!("mreport-{}", std::process::id()));
        let m = hostile();
        write(&dir.join("sample"), &m).unwrap();
        for f in ["matrix.json", "matrix.md", "matrix.html"] {
            assert!(dir.join("sample").join(f).is_file(), "{f}");
        }
        let back = read(&dir.join("sample/matrix.json")).unwrap();
        assert_eq!(back, m);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn read_refuses_other_versions_and_junk() {
        let p = Path::new("x/matrix.json");
        let mut v = serde_json::to_value(sample()).unwrap();
        v["schema_version"] = 2.into();
        let e = parse(p, &v.to_string()).unwrap_err();
        assert!(matches!(e, ReadError::Schema { found: 2, .. }), "{e}");
        assert!(
            e.to_string()
                .contains("schema_version 2, this sim reads only 1")
        );
        v["schema_version"] = "1".into();
        assert!(matches!(
            parse(p, &v.to_string()),
            Err(ReadError::Schema { .. })
        ));
        let e = parse(p, "{\"scenario\": \"x\"}").unwrap_err();
        assert!(matches!(e, ReadError::NoSchema { .. }), "{e}");
        let e = parse(p, "{\"schema_version\": 1, \"matrix\": 3}").unwrap_err();
        assert!(matches!(e, ReadError::Json { .. }), "{e}");
        assert!(matches!(parse(p, "[1,"), Err(ReadError::Json { .. })));
        assert!(matches!(parse(p, ""), Err(ReadError::Json { .. })));
        let e = read(Path::new("/nonexistent/matrix.json")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/matrix.json"));
    }

    #[test]
    fn read_refuses_sizes_that_do_not_add_up() {
        let p = Path::new("x/matrix.json");
        let good = serde_json::to_value(sample()).unwrap();
        assert!(parse(p, &good.to_string()).is_ok());
        let with = |k: &str, val: serde_json::Value| {
            let mut v = good.clone();
            v[k] = val;
            parse(p, &v.to_string())
        };
        // A hostile total would make merge loop for ever.
        let e = with("total_cells", 1_000_000_000_000_000u64.into()).unwrap_err();
        assert!(matches!(e, ReadError::Invalid { .. }), "{e}");
        let total = good["total_cells"].as_u64().unwrap();
        let e = with("total_cells", (total + 1).into()).unwrap_err();
        assert!(e.to_string().contains("rows x columns"), "{e}");
        let e = with("shard", serde_json::json!({"index": 1, "count": 1_000_000})).unwrap_err();
        assert!(e.to_string().contains("shard"), "{e}");
        let e = with("shard", serde_json::json!({"index": 3, "count": 2})).unwrap_err();
        assert!(e.to_string().contains("shard"), "{e}");
    }
}
