//! Reports: `reports/<scenario>/result.json` and `summary.md`, the terminal table, and the
//! probe-accuracy summary across scenarios.

use std::fmt::Write as _;
use std::path::Path;

use comfy_table::{Cell, Color, ContentArrangement, Table, presets::UTF8_FULL_CONDENSED};
use serde_json::Value;

use crate::runner::{Check, IceResult, ScenarioResult};

fn show(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Object(m) if m.contains_key("alive_s") => {
            let f = |k: &str| {
                m.get(k)
                    .and_then(Value::as_f64)
                    .map_or("-".into(), |x| format!("{x:.1}"))
            };
            format!("alive {} s, gone {} s", f("alive_s"), f("expired_s"))
        }
        other => other.to_string(),
    }
}

fn mark(ok: bool) -> &'static str {
    if ok { "ok" } else { "MISMATCH" }
}

/// The terminal table for one scenario.
pub fn render(r: &ScenarioResult) -> String {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(vec!["host", "via", "property", "expected", "detected", ""]);
    for p in &r.probes {
        let via = if p.configured.is_empty() {
            "(no NAT)".to_owned()
        } else {
            p.chain
                .iter()
                .zip(&p.configured)
                .map(|(n, c)| format!("{n}: {c}"))
                .collect::<Vec<_>>()
                .join(" → ")
        };
        for (i, c) in p.checks.iter().enumerate() {
            let status = Cell::new(mark(c.ok)).fg(if c.ok { Color::Green } else { Color::Red });
            t.add_row(vec![
                Cell::new(if i == 0 { p.host.as_str() } else { "" }),
                Cell::new(if i == 0 { via.as_str() } else { "" }),
                Cell::new(c.property),
                Cell::new(show(&c.expected)),
                Cell::new(show(&c.detected)),
                status,
            ]);
        }
    }
    for c in &r.runs {
        t.add_row(vec![
            Cell::new(&c.host),
            Cell::new(c.command.join(" ")),
            Cell::new("exit status"),
            Cell::new(c.expect_exit),
            Cell::new(c.exit_code.map_or("killed".into(), |x| x.to_string())),
            Cell::new(mark(c.ok)).fg(if c.ok { Color::Green } else { Color::Red }),
        ]);
    }
    let mut out = format!("scenario {}", r.scenario);
    if let Some(d) = &r.description {
        let _ = write!(out, ": {d}");
    }
    let _ = writeln!(out);
    if r.ice.is_empty() || !(r.probes.is_empty() && r.runs.is_empty()) {
        let _ = writeln!(out, "{t}");
    }
    if !r.ice.is_empty() {
        let mut t = Table::new();
        t.load_preset(UTF8_FULL_CONDENSED)
            .set_content_arrangement(ContentArrangement::Dynamic)
            .set_header(vec!["ICE offer → answer", "session", "expected", "got", ""]);
        for i in &r.ice {
            t.add_row(vec![
                Cell::new(format!("{} → {}", i.offer, i.answer)),
                Cell::new(ice_session(i)),
                Cell::new(ice_expected(i)),
                Cell::new(ice_got(i)),
                Cell::new(mark(i.ok)).fg(if i.ok { Color::Green } else { Color::Red }),
            ]);
        }
        let _ = writeln!(out, "{t}");
        for i in r
            .ice
            .iter()
            .filter_map(|i| i.not_derived.as_ref().map(|n| (i, n)))
        {
            let _ = writeln!(out, "{} → {}: expectation {}", i.0.offer, i.0.answer, i.1);
        }
    }
    let _ = writeln!(
        out,
        "{} — setup {} ms, teardown {} ms, total {} ms",
        if r.ok { "PASS" } else { "FAIL" },
        r.setup_ms,
        r.teardown_ms,
        r.elapsed_ms
    );
    out
}

/// `trickle, TURN udp, icepeer/aioice`.
fn ice_session(i: &IceResult) -> String {
    format!(
        "{}, TURN {}, {}",
        i.mode.as_str(),
        i.turn.as_str(),
        i.peers.label()
    )
}

/// What the session was checked against: the file's word, the oracle's, or nothing.
fn ice_expected(i: &IceResult) -> String {
    let oracle = i.expected.as_ref().map(|e| match (e.connects, e.path) {
        (true, Some(p)) => p.as_str().to_owned(),
        (true, None) => "connected".to_owned(),
        (false, _) => "failed".to_owned(),
    });
    match (i.expect, oracle) {
        (Some(x), _) => format!("{} (file)", x.as_str()),
        (None, Some(o)) => format!("{o} (oracle)"),
        (None, None) => "- (not derived)".to_owned(),
    }
}

/// What happened: `srflx srflx-prflx 182 ms`, `failed`, `error: ...`.
fn ice_got(i: &IceResult) -> String {
    if let Some(e) = &i.error {
        return format!("error: {e}");
    }
    if !i.connected {
        return "failed".to_owned();
    }
    let mut s = i.path.map_or("connected", |p| p.as_str()).to_owned();
    if let Some(p) = &i.pair {
        let _ = write!(s, " {p}");
    }
    if let Some(t) = i.time_to_connected_ms {
        let _ = write!(s, " {t:.0} ms");
    }
    s
}

/// `summary.md` for one scenario.
pub fn summary_md(r: &ScenarioResult) -> String {
    let mut md = format!(
        "# Scenario `{}`: {}\n\n",
        r.scenario,
        if r.ok { "pass" } else { "FAIL" }
    );
    if let Some(d) = &r.description {
        let _ = writeln!(md, "{d}\n");
    }
    let _ = writeln!(
        md,
        "Source `{}`, seed {}. Setup {} ms, teardown {} ms, total {} ms.\n",
        r.source, r.seed, r.setup_ms, r.teardown_ms, r.elapsed_ms
    );
    for p in &r.probes {
        let _ = writeln!(
            md,
            "## natprobe on `{}` against `{}` ({})\n",
            p.host,
            p.server,
            if p.ok { "pass" } else { "FAIL" }
        );
        if p.chain.is_empty() {
            let _ = writeln!(md, "No NAT box on the way.\n");
        } else {
            let _ = writeln!(md, "On the way, innermost first:\n");
            for (n, c) in p.chain.iter().zip(&p.configured) {
                let _ = writeln!(md, "- `{n}`: {c}");
            }
            let _ = writeln!(md);
        }
        md.push_str(&checks_md(&p.checks));
        let _ = writeln!(
            md,
            "\nnatprobe exit status {:?}, {} ms.\n",
            p.exit_code, p.elapsed_ms
        );
    }
    if !r.runs.is_empty() {
        let _ = writeln!(
            md,
            "## Commands\n\n| host | command | expected exit | exit | |\n|---|---|---|---|---|"
        );
        for c in &r.runs {
            let _ = writeln!(
                md,
                "| {} | `{}` | {} | {} | {} |",
                c.host,
                c.command.join(" "),
                c.expect_exit,
                c.exit_code.map_or("killed".into(), |x| x.to_string()),
                mark(c.ok)
            );
        }
        let _ = writeln!(md);
    }
    if !r.ice.is_empty() {
        md.push_str(&ice_md(&r.ice));
    }
    if !r.pcap.is_empty() {
        let _ = writeln!(md, "## Captures\n");
        for p in &r.pcap {
            let _ = writeln!(md, "- [{p}]({p})");
        }
    }
    md
}

fn ice_md(ice: &[IceResult]) -> String {
    let mut md = String::from(
        "## ICE sessions\n\n| offer → answer | session | expected | got | checks sent | |\n\
         |---|---|---|---|---|---|\n",
    );
    for i in ice {
        let _ = writeln!(
            md,
            "| {} → {} | {} | {} | {} | {} | {} |",
            i.offer,
            i.answer,
            ice_session(i),
            ice_expected(i),
            ice_got(i).replace('|', "/"),
            i.checks_sent.map_or("-".into(), |c| c.to_string()),
            mark(i.ok)
        );
    }
    let _ = writeln!(md);
    for i in ice {
        let _ = writeln!(
            md,
            "### `{}` → `{}` ({}): {}\n",
            i.offer,
            i.answer,
            ice_session(i),
            if i.ok { "pass" } else { "FAIL" }
        );
        let chain = |c: &[String]| {
            if c.is_empty() {
                "no NAT box".to_owned()
            } else {
                c.iter()
                    .map(|n| format!("`{n}`"))
                    .collect::<Vec<_>>()
                    .join(" → ")
            }
        };
        let _ = writeln!(
            md,
            "- to the server `{}`: offer via {}, answer via {}",
            i.server,
            chain(&i.offer_chain),
            chain(&i.answer_chain)
        );
        if let Some(x) = i.expect {
            let _ = writeln!(md, "- expected by the file: {}", x.as_str());
        }
        match (&i.expected, &i.not_derived) {
            (Some(e), _) => {
                let _ = writeln!(md, "- the RFC 4787 oracle: {}", e.reason);
            }
            (None, Some(n)) => {
                let _ = writeln!(md, "- oracle expectation {n}");
            }
            (None, None) => {}
        }
        if let Some(e) = &i.error {
            let _ = writeln!(md, "- could not run: {e}");
        }
        for (role, side) in [("offer", &i.offer_side), ("answer", &i.answer_side)] {
            let pair = match (&side.local_type, &side.remote_type) {
                (Some(l), Some(r)) => format!(
                    "{l} {} → {r} {}",
                    side.local_address.as_deref().unwrap_or("?"),
                    side.remote_address.as_deref().unwrap_or("?")
                ),
                _ => "no pair".to_owned(),
            };
            let _ = writeln!(
                md,
                "- {role} ({}): {}{}",
                side.agent,
                if side.connected {
                    format!("connected on {pair}")
                } else {
                    "not connected".to_owned()
                },
                side.failure
                    .as_ref()
                    .map(|f| format!(" ({f})"))
                    .unwrap_or_default()
            );
        }
        let _ = writeln!(md);
        if !i.checks.is_empty() {
            md.push_str(&checks_md(&i.checks));
            let _ = writeln!(md);
        }
    }
    md
}

fn checks_md(checks: &[Check]) -> String {
    let mut md = String::from("| property | expected | detected | |\n|---|---|---|---|\n");
    for c in checks {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} |",
            c.property,
            show(&c.expected),
            show(&c.detected),
            mark(c.ok)
        );
    }
    md
}

/// Write `result.json` and `summary.md` under `<root>/<scenario>/`.
pub fn write(root: &Path, r: &ScenarioResult) -> std::io::Result<()> {
    let dir = root.join(&r.scenario);
    std::fs::create_dir_all(&dir)?;
    let json = serde_json::to_string_pretty(r).map_err(std::io::Error::other)?;
    std::fs::write(dir.join("result.json"), json + "\n")?;
    std::fs::write(dir.join("summary.md"), summary_md(r))?;
    Ok(())
}

/// Per-property tallies across scenarios.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Accuracy {
    /// (property, matched, total).
    pub properties: Vec<(String, usize, usize)>,
    /// Mismatches: (scenario, host, property, expected, detected).
    pub misses: Vec<(String, String, String, String, String)>,
    /// Scenarios that could not run: (scenario, error).
    pub errors: Vec<(String, String)>,
}

impl Accuracy {
    /// Count one scenario's probe checks.
    pub fn add(&mut self, r: &ScenarioResult) {
        for p in &r.probes {
            for c in &p.checks {
                let i = match self.properties.iter().position(|(k, _, _)| k == c.property) {
                    Some(i) => i,
                    None => {
                        self.properties.push((c.property.to_owned(), 0, 0));
                        self.properties.len() - 1
                    }
                };
                self.properties[i].2 += 1;
                if c.ok {
                    self.properties[i].1 += 1;
                } else {
                    self.misses.push((
                        r.scenario.clone(),
                        p.host.clone(),
                        c.property.to_owned(),
                        show(&c.expected),
                        show(&c.detected),
                    ));
                }
            }
        }
    }

    /// Every check matched and every scenario ran.
    pub fn perfect(&self) -> bool {
        self.misses.is_empty() && self.errors.is_empty() && !self.properties.is_empty()
    }

    /// `reports/probe-accuracy.md`.
    pub fn markdown(&self, results: &[ScenarioResult]) -> String {
        let (m, t) = self
            .properties
            .iter()
            .fold((0, 0), |(a, b), (_, m, t)| (a + m, b + t));
        let mut md = String::from("# natprobe accuracy across the shipped scenarios\n\n");
        let _ = writeln!(
            md,
            "Generated by `sim accuracy`: natprobe runs inside each scenario's hosts against \
             turnd on the public host, and each property it reports is compared with what the \
             configured NAT boxes imply (rules in scenarios/README.md).\n"
        );
        let pct = if t == 0 {
            0.0
        } else {
            100.0 * m as f64 / t as f64
        };
        let _ = writeln!(md, "**{m} of {t} checks match ({pct:.1} %).**\n");
        let _ = writeln!(md, "| property | matched | checked |\n|---|---|---|");
        for (k, m, t) in &self.properties {
            let _ = writeln!(md, "| {k} | {m} | {t} |");
        }
        let _ = writeln!(md, "\n## Configured vs detected, per scenario\n");
        let _ = writeln!(
            md,
            "| scenario | host | NAT boxes (innermost first) | property | expected from the configuration | detected | |\n\
             |---|---|---|---|---|---|---|"
        );
        for r in results {
            for p in &r.probes {
                let conf = if p.configured.is_empty() {
                    "no NAT".to_owned()
                } else {
                    p.configured.join(" → ")
                };
                for c in &p.checks {
                    let _ = writeln!(
                        md,
                        "| {} | {} | {} | {} | {} | {} | {} |",
                        r.scenario,
                        p.host,
                        conf,
                        c.property,
                        show(&c.expected),
                        show(&c.detected),
                        mark(c.ok)
                    );
                }
            }
        }
        if !self.errors.is_empty() {
            let _ = writeln!(md, "\n## Scenarios that did not run\n");
            for (s, e) in &self.errors {
                let _ = writeln!(md, "- `{s}`: {e}");
            }
        }
        if !self.misses.is_empty() {
            let _ = writeln!(md, "\n## Misses\n");
            for (s, h, k, e, d) in &self.misses {
                let _ = writeln!(md, "- `{s}` / `{h}`: {k} configured {e}, detected {d}");
            }
        }
        md
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::matrix::model::{Expected, Mode, PathKind, Peers, SideResult, Turn};
    use crate::runner::IceResult;

    fn result(ice: Vec<IceResult>) -> ScenarioResult {
        ScenarioResult {
            schema_version: 1,
            scenario: "s".into(),
            source: "s.toml".into(),
            description: None,
            seed: 1,
            ok: ice.iter().all(|i| i.ok),
            probes: Vec::new(),
            runs: Vec::new(),
            ice,
            setup_ms: 1,
            teardown_ms: 1,
            elapsed_ms: 2,
            fabric: Value::Null,
            pcap: Vec::new(),
        }
    }

    fn session(ok: bool, derived: bool) -> IceResult {
        IceResult {
            offer: "alice".into(),
            answer: "bob".into(),
            server: "stun".into(),
            mode: Mode::Trickle,
            turn: Turn::Udp,
            peers: Peers::parse("icepeer/aioice").unwrap(),
            offer_chain: vec!["home_nat".into(), "cgn".into()],
            answer_chain: vec!["cgn".into()],
            connected: true,
            path: Some(PathKind::Prflx),
            pair: Some("prflx-host".into()),
            time_to_connected_ms: Some(108.7),
            checks_sent: Some(4),
            expect: None,
            expected: derived.then(|| Expected {
                connects: true,
                path: Some(PathKind::Srflx),
                reason: "the oracle's reason".into(),
            }),
            not_derived: (!derived)
                .then(|| "not derived: both peers are behind NAT box cgn".into()),
            checks: Vec::new(),
            ok,
            offer_side: SideResult {
                agent: "icepeer".into(),
                connected: true,
                ..SideResult::default()
            },
            answer_side: SideResult {
                agent: "aioice".into(),
                failure: Some("timeout".into()),
                ..SideResult::default()
            },
            error: None,
            elapsed_ms: 200,
        }
    }

    #[test]
    fn ice_sessions_get_their_own_table_and_section() {
        let r = result(vec![session(true, false), session(false, true)]);
        let t = render(&r);
        assert!(t.contains("ICE offer → answer"), "{t}");
        assert!(t.contains("prflx prflx-host 109 ms"), "{t}");
        assert!(t.contains("- (not derived)"), "{t}");
        assert!(t.contains("srflx (oracle)"), "{t}");
        assert!(
            t.contains("not derived: both peers are behind NAT box cgn"),
            "{t}"
        );
        assert!(t.contains("MISMATCH") && t.contains("FAIL"), "{t}");
        // No empty probe table when a scenario has only ICE sessions.
        assert!(!t.contains("property"), "{t}");
        let md = summary_md(&r);
        assert!(md.contains("## ICE sessions"), "{md}");
        assert!(
            md.contains("| alice → bob | trickle, TURN udp, icepeer/aioice |"),
            "{md}"
        );
        assert!(
            md.contains("offer via `home_nat` → `cgn`, answer via `cgn`"),
            "{md}"
        );
        assert!(md.contains("the oracle's reason"), "{md}");
        assert!(
            md.contains("answer (aioice): not connected (timeout)"),
            "{md}"
        );
    }
}
