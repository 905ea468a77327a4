//! The report: its JSON form is the documented `--json` schema (README); [`render`] is the
//! human table, RFC 4787 words first and the legacy name as a footnote.

use comfy_table::{ContentArrangement, Table, presets::UTF8_FULL_CONDENSED};
use serde::Serialize;

use crate::classify::{Certainty, ServerCheck};
use crate::client::Observation;

/// One server and what it said to test I.
#[derive(Debug, Clone, Serialize)]
pub struct ServerReport {
    /// As given.
    pub name: String,
    /// Resolved address used.
    pub address: Option<String>,
    /// Answered test I.
    pub answered: bool,
    /// Sent OTHER-ADDRESS.
    pub rfc5780: bool,
    /// Mapped address it saw.
    pub mapped: Option<String>,
    /// SOFTWARE.
    pub software: Option<String>,
    /// Why it was not used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// How sure each conclusion is.
#[derive(Debug, Clone, Serialize)]
pub struct Certainties {
    /// Mapping.
    pub mapping: Certainty,
    /// Filtering.
    pub filtering: Certainty,
}

/// The result; its JSON form is the documented `--json` schema (see README).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Schema version.
    pub schema_version: u32,
    /// The server the RFC 5780 tests ran against, "ip:port".
    pub server: Option<String>,
    /// Local address of the mapping socket, "ip:port".
    pub local: Option<String>,
    /// Mapped (server-reflexive) address, "ip:port".
    pub mapped: Option<String>,
    /// "udp" or "tcp".
    pub transport: &'static str,
    /// A NAT is present.
    pub nat: Option<bool>,
    /// No answer at all.
    pub udp_blocked: bool,
    /// The server used passed the RFC 5780 checks.
    pub rfc5780: bool,
    /// RFC 4787 mapping.
    pub mapping: &'static str,
    /// RFC 4787 filtering.
    pub filtering: &'static str,
    /// Hairpinning works (null: not tested or not applicable).
    pub hairpinning: Option<bool>,
    /// The NAT kept the local port.
    pub port_preservation: Option<bool>,
    /// Binding lifetime in seconds: the longest wait the mapping survived (null unless
    /// `--lifetime`). A lower bound when `binding_lifetime_expired_s` is null.
    pub binding_lifetime_s: Option<f64>,
    /// The shortest wait after which the mapping had expired (null: it never expired within
    /// `--lifetime-max`, or not measured).
    pub binding_lifetime_expired_s: Option<f64>,
    /// MAPPED-ADDRESS differed from XOR-MAPPED-ADDRESS.
    pub alg_detected: bool,
    /// RFC 3489 name, derived.
    pub legacy: &'static str,
    /// How sure mapping and filtering are.
    pub certainty: Certainties,
    /// The RFC 5780 server checks.
    pub server_check: Option<ServerCheck>,
    /// Every server tried.
    pub servers: Vec<ServerReport>,
    /// Explanations, bounds, warnings.
    pub notes: Vec<String>,
    /// Every test run, in order.
    pub tests: Vec<Observation>,
    /// Wall time of the whole probe.
    pub elapsed_ms: u64,
}

impl ServerReport {
    /// The server answered test I, but with an error response.
    pub fn answered_with_error(&self) -> bool {
        self.error
            .as_deref()
            .is_some_and(|e| e.starts_with(ANSWERED_WITH_ERROR))
    }
}

/// Start of [`ServerReport::error`] for a server that sent an error response.
pub(crate) const ANSWERED_WITH_ERROR: &str = "answered test I with error";

impl Report {
    /// Some server told us our mapped address: the result means something.
    pub fn usable(&self) -> bool {
        self.mapped.is_some()
    }
}

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
        yes_no(
            r.hairpinning,
            if r.nat == Some(false) {
                "n/a (no NAT)"
            } else {
                "not tested"
            },
        ),
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
