//! Reports: `reports/<scenario>/result.json` and `summary.md`, the terminal table, and the
//! probe-accuracy summary across scenarios.

use std::fmt::Write as _;
use std::path::Path;

use comfy_table::{Cell, Color, ContentArrangement, Table, presets::UTF8_FULL_CONDENSED};
use serde_json::Value;

use crate::runner::{Check, ScenarioResult};

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
    let _ = writeln!(out, "{t}");
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
    if !r.pcap.is_empty() {
        let _ = writeln!(md, "## Captures\n");
        for p in &r.pcap {
            let _ = writeln!(md, "- [{p}]({p})");
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
