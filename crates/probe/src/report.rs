//! The human-readable report: RFC 4787 words first, the legacy name as a footnote.

use comfy_table::{ContentArrangement, Table, presets::UTF8_FULL_CONDENSED};

use crate::classify::Certainty;
use crate::run::Report;

fn yes_no(b: Option<bool>, na: &str) -> String {
    match b {
        Some(true) => "yes".into(),
        Some(false) => "no".into(),
        None => na.into(),
    }
}

fn certainty(c: Certainty) -> &'static str {
    match c {
        Certainty::Firm => "",
        Certainty::Bound => " (bound, not measured)",
        Certainty::None => "",
    }
}

/// Render the report as text tables.
pub fn render(r: &Report) -> String {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(vec!["property", "result"]);
    let dash = || "-".to_owned();
    t.add_row(vec!["server".into(), r.server.clone().unwrap_or_else(dash)]);
    t.add_row(vec!["transport".into(), r.transport.to_owned()]);
    t.add_row(vec![
        "local address".into(),
        r.local.clone().unwrap_or_else(dash),
    ]);
    t.add_row(vec![
        "mapped address".into(),
        r.mapped.clone().unwrap_or_else(dash),
    ]);
    t.add_row(vec!["UDP blocked".into(), yes_no(Some(r.udp_blocked), "")]);
    t.add_row(vec!["NAT present".into(), yes_no(r.nat, "unknown")]);
    t.add_row(vec!["RFC 5780 server".into(), yes_no(Some(r.rfc5780), "")]);
    t.add_row(vec![
        "mapping".into(),
        format!("{}{}", r.mapping, certainty(r.certainty.mapping)),
    ]);
    t.add_row(vec![
        "filtering".into(),
        format!("{}{}", r.filtering, certainty(r.certainty.filtering)),
    ]);
    t.add_row(vec![
        "hairpinning".into(),
        yes_no(r.hairpinning, "not tested"),
    ]);
    t.add_row(vec![
        "port preservation".into(),
        yes_no(r.port_preservation, "n/a"),
    ]);
    t.add_row(vec![
        "binding lifetime".into(),
        r.binding_lifetime_s.map_or_else(
            || "not measured (--lifetime)".into(),
            |s| format!("{s:.1} s"),
        ),
    ]);
    t.add_row(vec![
        "ALG rewriting addresses".into(),
        yes_no(Some(r.alg_detected), ""),
    ]);
    t.add_row(vec!["legacy (RFC 3489) name".into(), r.legacy.to_owned()]);
    let mut out = t.to_string();

    let mut s = Table::new();
    s.load_preset(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(vec![
            "server", "address", "answered", "RFC 5780", "mapped", "note",
        ]);
    for x in &r.servers {
        s.add_row(vec![
            x.name.clone(),
            x.address.clone().unwrap_or_else(dash),
            yes_no(Some(x.answered), ""),
            yes_no(Some(x.rfc5780), ""),
            x.mapped.clone().unwrap_or_else(dash),
            x.error.clone().unwrap_or_default(),
        ]);
    }
    out.push('\n');
    out.push_str(&s.to_string());
    if !r.notes.is_empty() {
        out.push_str("\nnotes:\n");
        for n in &r.notes {
            out.push_str("  - ");
            out.push_str(n);
            out.push('\n');
        }
    }
    out.push_str(&format!("\nfinished in {} ms\n", r.elapsed_ms));
    out
}
