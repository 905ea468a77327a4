//! Matrix files: which NAT profiles meet which, in which ICE modes, with which TURN setting
//! and agents; and, per cell, the scenario that builds it and what the oracle expects.
//!
//! ```toml
//! name = "matrix_ci"
//! description = "..."
//! seed = 1
//!
//! [matrix]
//! rows = ["eim-eif", "eim-adf", "double-nat"]   # profiles (built in, or [[profile]] below)
//! columns = ["eim-eif", "apdm-apdf"]            # default: the rows
//! modes = ["trickle", "vanilla"]                # default ["trickle"]
//! turn = ["none", "udp", "tcp"]                 # default ["udp"]
//! peers = ["icepeer", "icepeer/aioice"]         # row agent / column agent; default icepeer
//! signaling_delay = "50ms"                      # one way, outside the emulated network
//! link_delay = "5ms"                            # each NAT box's outside link
//! server_delay = "10ms"                         # the STUN/TURN server's link
//! timeout = "10s"                               # per-cell ICE timeout
//!
//! [[profile]]                                   # a custom profile: NAT levels, innermost
//! name = "home-in-cgn"                          # first; each level takes the keys of a
//! description = "..."                           # scenario [[nat]] (preset, kind, mode,
//! levels = [{ preset = "port-restricted-cone" }, { preset = "cgnat" }]   # mapping, ...)
//! ```

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nat::oracle::{self, Direct, Level, Remote};
use nat::{Behavior, NatConfig};
use serde::Deserialize;
use toml::{Spanned, Table, Value};

use super::model::{Expected, Mode, PathKind, Peers, ProfileInfo, Turn};
use crate::scenario::{self, NatDef, NatImpl, Scenario};

/// TURN credentials the cells' turnd accepts and the peers use.
pub const TURN_USER: &str = "natscope";
/// Password of [`TURN_USER`].
pub const TURN_PASS: &str = "natscope";
/// The server's primary address in every cell.
pub const SERVER_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
/// Host name of the server in a cell's scenario.
pub const SERVER_HOST: &str = "server";
/// Host name of the row side's peer.
pub const ROW_HOST: &str = "rpeer";
/// Host name of the column side's peer.
pub const COLUMN_HOST: &str = "cpeer";

/// Most cells one matrix may have (a typo in a dimension should not start a week-long run).
pub const MAX_CELLS: usize = 20_000;

/// A mistake in a matrix file.
#[derive(Debug, thiserror::Error)]
#[error("{}{}: {message}", file.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct SpecError {
    /// The file.
    pub file: PathBuf,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
}

/// A NAT profile: the levels a peer sits behind, innermost first, each a scenario `[[nat]]`
/// table without the addressing keys (the cell supplies those).
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    /// Name used in rows and columns.
    pub name: String,
    /// What it is.
    pub description: String,
    /// Levels, innermost first. Empty: a host on the public network.
    pub levels: Vec<Table>,
}

/// The built-in profiles: every preset as one level, plus a few composites.
pub fn builtin(name: &str) -> Option<Profile> {
    let one = |k: &str, v: &str| {
        let mut t = Table::new();
        t.insert(k.into(), Value::String(v.into()));
        t
    };
    let p = |description: String, levels: Vec<Table>| Profile {
        name: name.to_owned(),
        description,
        levels,
    };
    Some(match name {
        "open" => p("no NAT: a host on the public network".into(), vec![]),
        "double-nat" => p(
            "a port-restricted-cone home NAT behind a carrier-grade NAT (cgnat)".into(),
            vec![
                one("preset", "port-restricted-cone"),
                one("preset", "cgnat"),
            ],
        ),
        "kernel-masquerade" => p(
            "Linux nftables masquerade in a router namespace".into(),
            vec![one("kind", "kernel-masquerade")],
        ),
        "kernel-random-fully" => p(
            "Linux nftables masquerade random,fully-random".into(),
            vec![one("kind", "kernel-masquerade-random-fully")],
        ),
        n if NatConfig::PRESETS.contains(&n) => {
            let c = NatConfig::preset(n, vec![Ipv4Addr::new(198, 51, 100, 1)])?;
            let what = match c.mode {
                nat::Mode::Nat => format!(
                    "{} mapping, {} filtering",
                    c.mapping.as_str(),
                    c.filtering.as_str()
                ),
                nat::Mode::Firewall => {
                    format!("firewall, {} filtering", c.filtering.as_str())
                }
                nat::Mode::UdpBlocked => "firewall that drops all UDP".into(),
            };
            p(format!("preset {n}: {what}"), vec![one("preset", n)])
        }
        _ => return None,
    })
}

/// Names `builtin` knows, for error messages.
pub fn builtin_names() -> Vec<String> {
    let mut v: Vec<String> = [
        "open",
        "double-nat",
        "kernel-masquerade",
        "kernel-random-fully",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    v.extend(NatConfig::PRESETS.iter().map(|s| (*s).to_owned()));
    v
}

/// A validated matrix file.
#[derive(Debug, Clone)]
pub struct MatrixSpec {
    /// Name (report folder).
    pub name: String,
    /// Free text.
    pub description: Option<String>,
    /// Seed; cell `i` uses `seed + i`.
    pub seed: u64,
    /// The file.
    pub source: PathBuf,
    /// Row profiles.
    pub rows: Vec<String>,
    /// Column profiles.
    pub columns: Vec<String>,
    /// Modes.
    pub modes: Vec<Mode>,
    /// TURN settings.
    pub turn: Vec<Turn>,
    /// Agent pairs.
    pub peers: Vec<Peers>,
    /// Every profile used, by name.
    pub profiles: BTreeMap<String, Profile>,
    /// One-way signaling delay.
    pub signaling_delay: Duration,
    /// Delay of each NAT box's outside link.
    pub link_delay: Duration,
    /// Delay of the server's link.
    pub server_delay: Duration,
    /// ICE timeout per cell.
    pub timeout: Duration,
    /// Cells in parallel, when the file says (`sim matrix --jobs` wins).
    pub jobs: Option<usize>,
}

/// One cell to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CellSpec {
    /// Position in the enumeration.
    pub index: usize,
    /// Row profile.
    pub row: String,
    /// Column profile.
    pub column: String,
    /// Mode.
    pub mode: Mode,
    /// TURN setting.
    pub turn: Turn,
    /// Agents.
    pub peers: Peers,
}

impl CellSpec {
    /// `row|column|mode|turn|peers`.
    pub fn id(&self) -> String {
        format!(
            "{}|{}|{}|{}|{}",
            self.row,
            self.column,
            self.mode.as_str(),
            self.turn.as_str(),
            self.peers.label()
        )
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    name: Option<String>,
    description: Option<String>,
    seed: Option<u64>,
    matrix: Spanned<RawMatrix>,
    #[serde(default)]
    profile: Vec<Spanned<RawProfile>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMatrix {
    rows: Vec<Spanned<String>>,
    columns: Option<Vec<Spanned<String>>>,
    modes: Option<Vec<Mode>>,
    turn: Option<Vec<Turn>>,
    peers: Option<Vec<Spanned<String>>>,
    signaling_delay: Option<Spanned<String>>,
    link_delay: Option<Spanned<String>>,
    server_delay: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    jobs: Option<Spanned<usize>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    name: Spanned<String>,
    description: Option<String>,
    levels: Vec<Table>,
}

/// Keys a profile level may not set: the cell's addressing owns them.
const ADDRESSING_KEYS: [&str; 5] = ["name", "inside", "outside", "inside_address", "external"];

/// Read and validate a matrix file.
pub fn load(path: &Path) -> Result<MatrixSpec, SpecError> {
    let text = std::fs::read_to_string(path).map_err(|e| SpecError {
        file: path.to_path_buf(),
        line: None,
        message: format!("cannot read: {e}"),
    })?;
    parse(path, &text)
}

/// Validate matrix text read from `path`.
pub fn parse(path: &Path, text: &str) -> Result<MatrixSpec, SpecError> {
    let line_of = |offset: usize| {
        text.get(..offset.min(text.len()))
            .map_or(1, |s| s.bytes().filter(|&b| b == b'\n').count() + 1)
    };
    let err = |span: Option<std::ops::Range<usize>>, message: String| SpecError {
        file: path.to_path_buf(),
        line: span.map(|s| line_of(s.start)),
        message,
    };
    let raw: RawFile = toml::from_str(text).map_err(|e| err(e.span(), e.message().to_owned()))?;
    let name = match raw.name {
        Some(n) => n,
        None => path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("matrix")
            .to_owned(),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !name_ok {
        return Err(err(
            None,
            format!("matrix name {name:?} must be 1-64 characters of A-Z, a-z, 0-9, _ and -"),
        ));
    }
    let m_span = raw.matrix.span();
    let m = raw.matrix.into_inner();

    let mut custom: BTreeMap<String, Profile> = BTreeMap::new();
    for p in raw.profile {
        let span = p.span();
        let p = p.into_inner();
        let pname = p.name.get_ref().clone();
        let pname_ok = !pname.is_empty()
            && pname.len() <= 32
            && pname
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if !pname_ok {
            return Err(err(
                Some(p.name.span()),
                format!("profile name {pname:?} must be 1-32 characters of a-z, 0-9, - and _"),
            ));
        }
        if custom.contains_key(&pname) {
            return Err(err(
                Some(p.name.span()),
                format!("profile {pname:?} is defined twice"),
            ));
        }
        if p.levels.len() > 4 {
            return Err(err(
                Some(span),
                format!("profile {pname:?}: at most 4 NAT levels"),
            ));
        }
        for l in &p.levels {
            if let Some(k) = ADDRESSING_KEYS.iter().find(|k| l.contains_key(**k)) {
                return Err(err(
                    Some(span.clone()),
                    format!(
                        "profile {pname:?}: a level may not set {k:?} (the cell assigns names \
                         and addresses)"
                    ),
                ));
            }
        }
        let nontranslating = p.levels.iter().filter(|l| !level_translates(l)).count();
        if nontranslating > 0 && p.levels.len() > 1 {
            return Err(err(
                Some(span),
                format!(
                    "profile {pname:?}: a firewall level (mode firewall or udp-blocked) must be \
                     the profile's only level"
                ),
            ));
        }
        let description = p
            .description
            .unwrap_or_else(|| format!("{} level(s)", p.levels.len()));
        custom.insert(
            pname.clone(),
            Profile {
                name: pname,
                description,
                levels: p.levels,
            },
        );
    }

    let mut profiles = BTreeMap::new();
    let mut resolve =
        |list: &[Spanned<String>]| -> Result<Vec<String>, SpecError> {
            let mut out = Vec::new();
            for s in list {
                let n = s.get_ref();
                let p = custom.get(n).cloned().or_else(|| builtin(n)).ok_or_else(|| {
                err(
                    Some(s.span()),
                    format!(
                        "unknown profile {n:?}: define it in a [[profile]] or use one of: {}",
                        builtin_names().join(", ")
                    ),
                )
            })?;
                if out.contains(n) {
                    return Err(err(
                        Some(s.span()),
                        format!("profile {n:?} is listed twice"),
                    ));
                }
                profiles.insert(n.clone(), p);
                out.push(n.clone());
            }
            Ok(out)
        };
    if m.rows.is_empty() {
        return Err(err(Some(m_span.clone()), "rows must not be empty".into()));
    }
    let rows = resolve(&m.rows)?;
    let columns = match &m.columns {
        Some(c) if c.is_empty() => {
            return Err(err(Some(m_span), "columns must not be empty".into()));
        }
        Some(c) => resolve(c)?,
        None => rows.clone(),
    };
    fn nonempty<T: PartialEq>(v: Option<Vec<T>>, default: T) -> Option<Vec<T>> {
        match v {
            Some(v) if v.is_empty() => None,
            Some(v) => {
                let mut out = Vec::new();
                for x in v {
                    if !out.contains(&x) {
                        out.push(x);
                    }
                }
                Some(out)
            }
            None => Some(vec![default]),
        }
    }
    let modes = nonempty(m.modes, Mode::Trickle)
        .ok_or_else(|| err(Some(m_span.clone()), "modes is empty".into()))?;
    let turn = nonempty(m.turn, Turn::Udp)
        .ok_or_else(|| err(Some(m_span.clone()), "turn is empty".into()))?;
    let peers = match m.peers {
        None => vec![Peers::default()],
        Some(v) if v.is_empty() => {
            return Err(err(Some(m_span), "peers is empty".into()));
        }
        Some(v) => {
            let mut out = Vec::new();
            for s in v {
                let p = Peers::parse(s.get_ref()).ok_or_else(|| {
                    err(
                        Some(s.span()),
                        format!(
                            "peers {:?}: write `icepeer`, `aioice`, or `ROW/COLUMN` of those",
                            s.get_ref()
                        ),
                    )
                })?;
                if !out.contains(&p) {
                    out.push(p);
                }
            }
            out
        }
    };
    let dur = |v: &Option<Spanned<String>>, default: Duration, max: Duration| match v {
        None => Ok(default),
        Some(s) => match scenario::parse_duration(s.get_ref()) {
            Some(d) if d <= max => Ok(d),
            _ => Err(err(
                Some(s.span()),
                format!(
                    "{:?} is not a duration up to {} s (write e.g. \"50ms\")",
                    s.get_ref(),
                    max.as_secs()
                ),
            )),
        },
    };
    let signaling_delay = dur(
        &m.signaling_delay,
        Duration::from_millis(50),
        Duration::from_secs(10),
    )?;
    let link_delay = dur(
        &m.link_delay,
        Duration::from_millis(5),
        Duration::from_secs(5),
    )?;
    let server_delay = dur(
        &m.server_delay,
        Duration::from_millis(10),
        Duration::from_secs(5),
    )?;
    let timeout = dur(
        &m.timeout,
        Duration::from_secs(10),
        Duration::from_secs(600),
    )?;
    let jobs = match &m.jobs {
        None => None,
        Some(j) if (1..=super::run::MAX_JOBS).contains(j.get_ref()) => Some(*j.get_ref()),
        Some(j) => {
            return Err(err(
                Some(j.span()),
                format!("jobs must be 1 to {}", super::run::MAX_JOBS),
            ));
        }
    };
    if timeout < Duration::from_secs(1) {
        return Err(err(None, "timeout must be at least 1 s".into()));
    }
    let spec = MatrixSpec {
        name,
        description: raw.description,
        seed: raw.seed.unwrap_or(1),
        source: path.to_path_buf(),
        rows,
        columns,
        modes,
        turn,
        peers,
        profiles,
        signaling_delay,
        link_delay,
        server_delay,
        timeout,
        jobs,
    };
    let n = spec.cell_count();
    if n > MAX_CELLS {
        return Err(err(
            None,
            format!("{n} cells: more than {MAX_CELLS}; split the matrix"),
        ));
    }
    // Every profile must build: catch bad level keys now, with the file's name, rather
    // than in the middle of a run.
    for p in spec.profiles.values() {
        spec.scenario_for(p, p, 0).map_err(|e| {
            err(
                None,
                format!("profile {:?} does not build a scenario: {e}", p.name),
            )
        })?;
    }
    Ok(spec)
}

fn level_translates(l: &Table) -> bool {
    let mode = l.get("mode").and_then(Value::as_str);
    let preset = l.get("preset").and_then(Value::as_str);
    let filters_only = match mode {
        Some(m) => matches!(m, "firewall" | "udp-blocked"),
        None => matches!(preset, Some("firewall" | "firewall-open" | "udp-blocked")),
    };
    !filters_only
}

fn table(pairs: Vec<(&str, Value)>) -> Table {
    pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

fn s(v: impl Into<String>) -> Value {
    Value::String(v.into())
}

fn arr(v: &[String]) -> Value {
    Value::Array(v.iter().map(|x| s(x.clone())).collect())
}

fn ms(d: Duration) -> Value {
    s(format!("{}us", d.as_micros()))
}

impl MatrixSpec {
    /// Number of cells.
    pub fn cell_count(&self) -> usize {
        self.rows.len() * self.columns.len() * self.modes.len() * self.turn.len() * self.peers.len()
    }

    /// Every cell, in a fixed order: agents, TURN, mode, row, column.
    pub fn cells(&self) -> Vec<CellSpec> {
        let mut out = Vec::with_capacity(self.cell_count());
        for &peers in &self.peers {
            for &turn in &self.turn {
                for &mode in &self.modes {
                    for row in &self.rows {
                        for column in &self.columns {
                            out.push(CellSpec {
                                index: out.len(),
                                row: row.clone(),
                                column: column.clone(),
                                mode,
                                turn,
                                peers,
                            });
                        }
                    }
                }
            }
        }
        out
    }

    /// A fingerprint of everything that defines the cells and their conditions.
    pub fn definition(&self) -> String {
        let mut text = format!(
            "{}|{:?}|{:?}|{:?}|{:?}|{:?}|{}|{}|{}|{}|{}",
            self.name,
            self.rows,
            self.columns,
            self.modes,
            self.turn,
            self.peers.iter().map(Peers::label).collect::<Vec<_>>(),
            self.seed,
            self.signaling_delay.as_micros(),
            self.link_delay.as_micros(),
            self.server_delay.as_micros(),
            self.timeout.as_micros(),
        );
        for p in self.profiles.values() {
            text.push_str(&format!("|{}={:?}", p.name, p.levels));
        }
        // FNV-1a, 64 bits: stable across Rust versions (unlike DefaultHasher).
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in text.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        format!("{h:016x}")
    }

    /// Whether a profile has a kernel (nftables) NAT level.
    pub fn has_kernel(&self, profile: &str) -> bool {
        self.profiles.get(profile).is_some_and(|p| {
            p.levels.iter().any(|l| {
                l.get("kind")
                    .and_then(Value::as_str)
                    .is_some_and(|k| k.starts_with("kernel"))
            })
        })
    }

    /// The profiles, for the report.
    pub fn profile_info(&self) -> Vec<ProfileInfo> {
        let mut names: Vec<&String> = self.rows.iter().collect();
        for c in &self.columns {
            if !names.contains(&c) {
                names.push(c);
            }
        }
        names
            .into_iter()
            .filter_map(|n| self.profiles.get(n))
            .map(|p| ProfileInfo {
                name: p.name.clone(),
                description: p.description.clone(),
                levels: p
                    .levels
                    .iter()
                    .map(|l| {
                        l.iter()
                            .map(|(k, v)| {
                                format!("{k}={}", v.as_str().map_or(v.to_string(), str::to_owned))
                            })
                            .collect::<Vec<_>>()
                            .join(" ")
                    })
                    .collect(),
            })
            .collect()
    }

    /// The scenario of one cell.
    pub fn scenario(&self, cell: &CellSpec) -> Result<Scenario, String> {
        let row = self
            .profiles
            .get(&cell.row)
            .ok_or_else(|| format!("no profile {}", cell.row))?;
        let column = self
            .profiles
            .get(&cell.column)
            .ok_or_else(|| format!("no profile {}", cell.column))?;
        self.scenario_for(row, column, cell.index)
    }

    fn scenario_for(
        &self,
        row: &Profile,
        column: &Profile,
        index: usize,
    ) -> Result<Scenario, String> {
        let mut networks = vec![table(vec![
            ("name", s("internet")),
            (
                "prefixes",
                arr(&[
                    "203.0.113.0/24".into(),
                    "198.51.100.0/24".into(),
                    "192.0.2.128/25".into(),
                ]),
            ),
        ])];
        let mut nats = Vec::new();
        let mut hosts = vec![table(vec![
            ("name", s(SERVER_HOST)),
            ("network", s("internet")),
            (
                "addresses",
                arr(&[SERVER_IP.to_string(), "203.0.113.2".into()]),
            ),
            (
                "link",
                Value::Table(table(vec![("delay", ms(self.server_delay))])),
            ),
        ])];
        for (side, p, host) in [(1u8, row, ROW_HOST), (2u8, column, COLUMN_HOST)] {
            let tag = if side == 1 { "r" } else { "c" };
            let k = p.levels.len();
            if k == 0 {
                hosts.push(table(vec![
                    ("name", s(host)),
                    ("network", s("internet")),
                    ("addresses", arr(&[format!("192.0.2.{}", 120 + 10 * side)])),
                    (
                        "link",
                        Value::Table(table(vec![("delay", ms(self.link_delay))])),
                    ),
                ]));
                continue;
            }
            let firewall = k == 1 && !level_translates(&p.levels[0]);
            for (i, level) in p.levels.iter().enumerate() {
                let net = format!("{tag}_net{i}");
                let (prefix, inside, host_ip) = if firewall {
                    let base = if side == 1 { 0 } else { 64 };
                    (
                        format!("192.0.2.{base}/26"),
                        format!("192.0.2.{}", base + 1),
                        format!("192.0.2.{}", base + 10),
                    )
                } else if i == 0 {
                    (
                        format!("192.168.{side}.0/24"),
                        format!("192.168.{side}.1"),
                        format!("192.168.{side}.10"),
                    )
                } else {
                    (
                        format!("100.64.{side}{i}.0/24"),
                        format!("100.64.{side}{i}.1"),
                        String::new(),
                    )
                };
                networks.push(table(vec![("name", s(&net)), ("prefixes", arr(&[prefix]))]));
                if i == 0 {
                    hosts.push(table(vec![
                        ("name", s(host)),
                        ("network", s(&net)),
                        ("addresses", arr(&[host_ip])),
                    ]));
                }
                let outside = if i + 1 == k {
                    "internet".to_owned()
                } else {
                    format!("{tag}_net{}", i + 1)
                };
                let mut t = level.clone();
                t.insert("name".into(), s(format!("{tag}_nat{i}")));
                t.insert("inside".into(), s(&net));
                t.insert("outside".into(), s(outside));
                t.insert("inside_address".into(), s(inside));
                if !firewall {
                    let external = if i + 1 == k {
                        format!("198.51.100.{}", 10 * side + 1)
                    } else {
                        format!("100.64.{side}{}.2", i + 1)
                    };
                    t.insert("external".into(), arr(&[external]));
                }
                if !t.contains_key("outside_link") {
                    t.insert(
                        "outside_link".into(),
                        Value::Table(table(vec![("delay", ms(self.link_delay))])),
                    );
                }
                nats.push(t);
            }
        }
        let mut doc = Table::new();
        doc.insert("name".into(), s(format!("cell{index}")));
        doc.insert(
            "seed".into(),
            Value::Integer(
                i64::try_from(self.seed.wrapping_add(index as u64) & 0x7fff_ffff_ffff_ffff)
                    .unwrap_or(1),
            ),
        );
        let tables = |v: Vec<Table>| Value::Array(v.into_iter().map(Value::Table).collect());
        doc.insert("network".into(), tables(networks));
        doc.insert("nat".into(), tables(nats));
        doc.insert("host".into(), tables(hosts));
        let text = toml::to_string(&doc).map_err(|e| e.to_string())?;
        let path = PathBuf::from(format!(
            "{}#{}-vs-{}",
            self.source.display(),
            row.name,
            column.name
        ));
        scenario::parse(&path, &text).map_err(|e| e.to_string())
    }
}

/// The oracle's view of one NAT box.
pub fn level_of(n: &NatDef) -> Level {
    match &n.imp {
        NatImpl::Model(c) => Level {
            mapping: c.mapping,
            filtering: c.filtering,
            translates: c.mode == nat::Mode::Nat,
            udp_blocked: c.mode == nat::Mode::UdpBlocked,
        },
        // Linux conntrack: masquerade keeps one mapping per socket (endpoint-independent)
        // unless random-fully picks a port per flow; filtering is per 5-tuple.
        NatImpl::Kernel { random_fully } => Level {
            mapping: if *random_fully {
                Behavior::AddressAndPortDependent
            } else {
                Behavior::EndpointIndependent
            },
            filtering: Behavior::AddressAndPortDependent,
            translates: true,
            udp_blocked: false,
        },
    }
}

/// The levels on one side of a cell's scenario, innermost first.
fn side_levels(s: &Scenario, tag: &str) -> Vec<Level> {
    s.nats
        .iter()
        .filter(|n| n.name.starts_with(tag))
        .map(level_of)
        .collect()
}

/// A side summarised as one level: the most dependent mapping and filtering of its chain.
#[derive(Debug, Clone, Copy)]
struct Effective {
    translates: bool,
    filters: bool,
    udp_blocked: bool,
    mapping: Behavior,
    filtering: Behavior,
}

/// The oracle's one-level summary of a chain (`None`: nothing on the way).
fn effective(levels: &[Level]) -> Effective {
    match oracle::effective(levels) {
        None => Effective {
            translates: false,
            filters: false,
            udp_blocked: false,
            mapping: Behavior::EndpointIndependent,
            filtering: Behavior::EndpointIndependent,
        },
        Some(l) => Effective {
            translates: l.translates,
            filters: true,
            udp_blocked: l.udp_blocked,
            mapping: l.mapping,
            filtering: l.filtering,
        },
    }
}

fn describe(side: &str, e: &Effective) -> String {
    if e.udp_blocked {
        format!("{side} sits behind a firewall that drops UDP")
    } else if !e.filters {
        format!("{side} has no NAT")
    } else if !e.translates {
        format!(
            "{side} sits behind a firewall with {} filtering",
            e.filtering.as_str()
        )
    } else {
        format!(
            "{side} has {} mapping and {} filtering",
            e.mapping.as_str(),
            e.filtering.as_str()
        )
    }
}

/// What the RFC 4787 oracle expects of a cell built from `s` (the cell's scenario).
pub fn expected(s: &Scenario, turn: Turn) -> Expected {
    expected_for(&side_levels(s, "r_"), &side_levels(s, "c_"), turn)
}

/// What the oracle expects of two peers behind `a` (the row side, which offers) and `b` (the
/// column side), each innermost first, whose outermost levels meet on the network of the
/// STUN/TURN server. Reasons call the sides "row" and "column".
pub fn expected_for(a: &[Level], b: &[Level], turn: Turn) -> Expected {
    expected_between(("row", a), ("column", b), turn)
}

/// [`expected_for`] with the sides' names for the reason, e.g. `("offer alice", levels)`.
pub fn expected_between(
    (name_a, a): (&str, &[Level]),
    (name_b, b): (&str, &[Level]),
    turn: Turn,
) -> Expected {
    let (ea, eb) = (effective(a), effective(b));
    let sides = format!("{}; {}", describe(name_a, &ea), describe(name_b, &eb));
    let direct = oracle::direct(a, b);
    let why_not_direct = match direct {
        Direct::Connects(ra, rb) => {
            let prflx = ra == Remote::PeerReflexive || rb == Remote::PeerReflexive;
            let path = if prflx {
                PathKind::Prflx
            } else if ea.translates || eb.translates {
                PathKind::Srflx
            } else {
                PathKind::Host
            };
            let how = match path {
                PathKind::Prflx => {
                    "checks arrive from a port the other side never saw signalled (a mapping \
                     that depends on the destination), and the other side's filtering lets them \
                     in once its own checks have opened the way, so the pair uses a \
                     peer-reflexive candidate"
                }
                PathKind::Srflx => {
                    "each side's signalled address is the one its checks come from, and the \
                     first checks open the filters for the answers: direct over \
                     server-reflexive candidates"
                }
                _ => "nothing translates: host candidates reach each other",
            };
            let relay_note = if turn == Turn::None {
                ""
            } else {
                "; a direct pair outranks the relayed ones"
            };
            return Expected {
                connects: true,
                path: Some(path),
                reason: format!("{sides}: {how}{relay_note}"),
            };
        }
        Direct::UdpBlocked => "UDP does not get through, so there is no direct path".to_owned(),
        Direct::Impossible => {
            let dep = |e: &Effective| e.translates && e.mapping != Behavior::EndpointIndependent;
            if dep(&ea) && dep(&eb) {
                "both sides map per destination, so neither side's checks come from the \
                 address the other learnt, and each side's filter drops the other's first \
                 checks: no direct path"
                    .to_owned()
            } else {
                let (x, y, ey) = if dep(&ea) {
                    (name_a, name_b, eb)
                } else {
                    (name_b, name_a, ea)
                };
                format!(
                    "{x} maps per destination, so its checks come from a port {y} never sent \
                     to, and {y}'s {} filtering drops them: no direct path",
                    ey.filtering.as_str()
                )
            }
        }
    };
    // Relaying: a side can allocate when TURN runs over TCP, or over UDP that gets
    // through; a side without a relay needs UDP to reach the other's relay address.
    let (can_a, can_b) = match turn {
        Turn::None => (false, false),
        Turn::Udp => (!ea.udp_blocked, !eb.udp_blocked),
        Turn::Tcp => (true, true),
    };
    let (udp_a, udp_b) = (!ea.udp_blocked, !eb.udp_blocked);
    let relays = (can_a && (can_b || udp_b)) || (can_b && udp_a);
    let tail = match (turn, relays) {
        (Turn::None, _) => "; no TURN server, so they cannot connect".to_owned(),
        (t, true) => format!("; they connect through TURN over {}", t.as_str()),
        (t, false) => format!(
            "; TURN over {} cannot be reached from the UDP-blocked side, so they cannot \
             connect",
            t.as_str()
        ),
    };
    Expected {
        connects: relays,
        path: relays.then_some(PathKind::Relay),
        reason: format!("{sides}: {why_not_direct}{tail}"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn spec(text: &str) -> Result<MatrixSpec, SpecError> {
        parse(Path::new("m.toml"), text)
    }

    const NINE: &str = r#"
        name = "nine"
        [matrix]
        rows = ["eim-eif", "eim-adf", "eim-apdf", "adm-eif", "adm-adf", "adm-apdf",
                "apdm-eif", "apdm-adf", "apdm-apdf"]
        modes = ["trickle", "vanilla"]
        turn = ["none", "udp", "tcp"]
        peers = ["icepeer", "icepeer/aioice"]
    "#;

    #[test]
    fn enumerates_every_cell_once_in_a_fixed_order() {
        let m = spec(NINE).unwrap();
        let cells = m.cells();
        assert_eq!(cells.len(), 9 * 9 * 2 * 3 * 2);
        assert_eq!(m.cell_count(), cells.len());
        let ids: std::collections::HashSet<_> = cells.iter().map(CellSpec::id).collect();
        assert_eq!(ids.len(), cells.len());
        assert!(cells.iter().enumerate().all(|(i, c)| c.index == i));
        assert_eq!(
            cells[0].id(),
            "eim-eif|eim-eif|trickle|none|icepeer/icepeer"
        );
        assert_eq!(
            cells[1].id(),
            "eim-eif|eim-adf|trickle|none|icepeer/icepeer"
        );
        assert_eq!(
            cells.last().unwrap().id(),
            "apdm-apdf|apdm-apdf|vanilla|tcp|icepeer/aioice"
        );
    }

    #[test]
    fn the_definition_changes_with_what_defines_cells() {
        let a = spec(NINE).unwrap().definition();
        assert_eq!(a, spec(NINE).unwrap().definition());
        let b = spec(&NINE.replace("[matrix]", "[matrix]\nsignaling_delay = \"20ms\""))
            .unwrap()
            .definition();
        assert_ne!(a, b);
    }

    #[test]
    fn mistakes_name_the_line() {
        let e = spec("[matrix]\nrows = [\"eim-eif\",\n \"nope\"]\n").unwrap_err();
        assert_eq!(e.line, Some(3), "{e}");
        assert!(e.to_string().contains("unknown profile \"nope\""), "{e}");
        let e = spec("[matrix]\nrows = [\"eim-eif\"]\nturn = [\"sctp\"]\n").unwrap_err();
        assert_eq!(e.line, Some(3), "{e}");
        let e = spec("[matrix]\nrows = [\"eim-eif\"]\npeers = [\"x/y\"]\n").unwrap_err();
        assert!(e.to_string().contains("peers"), "{e}");
        let e = spec("[matrix]\nrows = [\"eim-eif\"]\ntimeout = \"soon\"\n").unwrap_err();
        assert_eq!(e.line, Some(3), "{e}");
        let e = spec("[matrix]\nrows = [\"eim-eif\"]\njobs = 0\n").unwrap_err();
        assert_eq!(e.line, Some(3), "{e}");
        assert!(e.to_string().contains("jobs must be 1 to 64"), "{e}");
        assert_eq!(
            spec("[matrix]\nrows = [\"eim-eif\"]\njobs = 3\n")
                .unwrap()
                .jobs,
            Some(3)
        );
        let e = spec("[matrix]\nrows = []\n").unwrap_err();
        assert!(e.to_string().contains("rows"), "{e}");
        let e = spec("[matrix]\nrows = [\"eim-eif\", \"eim-eif\"]\n").unwrap_err();
        assert!(e.to_string().contains("twice"), "{e}");
        let e = spec("[matrix]\nrows = [\"x\"]\nbogus = 1\n").unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
        let e = spec(
            "[matrix]\nrows = [\"p\"]\n[[profile]]\nname = \"p\"\nlevels = [{ preset = \"firewall\" }, { preset = \"cgnat\" }]\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("only level"), "{e}");
        let e = spec(
            "[matrix]\nrows = [\"p\"]\n[[profile]]\nname = \"p\"\nlevels = [{ external = [\"1.2.3.4\"] }]\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("external"), "{e}");
        let e = spec(
            "[matrix]\nrows = [\"p\"]\n[[profile]]\nname = \"p\"\nlevels = [{ mapping = \"sideways\" }]\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("does not build"), "{e}");
    }

    #[test]
    fn every_builtin_profile_builds_against_every_other() {
        let names = builtin_names();
        let text = format!(
            "[matrix]\nrows = [{}]\n",
            names
                .iter()
                .map(|n| format!("{n:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let m = spec(&text).unwrap();
        for c in m.cells() {
            let s = m.scenario(&c).unwrap_or_else(|e| panic!("{}: {e}", c.id()));
            assert!(s.hosts.iter().any(|h| h.name == ROW_HOST));
            assert!(s.hosts.iter().any(|h| h.name == COLUMN_HOST));
        }
    }

    fn expect(m: &MatrixSpec, row: &str, col: &str, turn: Turn) -> Expected {
        let c = m
            .cells()
            .into_iter()
            .find(|c| c.row == row && c.column == col)
            .unwrap();
        expected(&m.scenario(&c).unwrap(), turn)
    }

    #[test]
    fn the_expectation_follows_the_oracle_and_the_turn_setting() {
        let m = spec(
            "[matrix]\nrows = [\"eim-eif\", \"eim-apdf\", \"apdm-apdf\", \"apdm-eif\", \"open\", \
             \"udp-blocked\", \"double-nat\", \"kernel-masquerade\", \"kernel-random-fully\"]\n",
        )
        .unwrap();
        let e = expect(&m, "eim-apdf", "eim-apdf", Turn::None);
        assert_eq!(
            (e.connects, e.path),
            (true, Some(PathKind::Srflx)),
            "{}",
            e.reason
        );
        let e = expect(&m, "apdm-apdf", "apdm-apdf", Turn::None);
        assert_eq!((e.connects, e.path), (false, None), "{}", e.reason);
        assert!(e.reason.contains("per destination"), "{}", e.reason);
        let e = expect(&m, "apdm-apdf", "apdm-apdf", Turn::Udp);
        assert_eq!((e.connects, e.path), (true, Some(PathKind::Relay)));
        let e = expect(&m, "apdm-apdf", "eim-eif", Turn::None);
        assert_eq!(
            (e.connects, e.path),
            (true, Some(PathKind::Prflx)),
            "{}",
            e.reason
        );
        let e = expect(&m, "open", "open", Turn::Udp);
        assert_eq!((e.connects, e.path), (true, Some(PathKind::Host)));
        let e = expect(&m, "udp-blocked", "eim-eif", Turn::Udp);
        assert!(!e.connects, "{}", e.reason);
        let e = expect(&m, "udp-blocked", "eim-eif", Turn::Tcp);
        assert_eq!((e.connects, e.path), (true, Some(PathKind::Relay)));
        let e = expect(&m, "udp-blocked", "udp-blocked", Turn::Tcp);
        assert!(e.connects);
        let e = expect(&m, "double-nat", "double-nat", Turn::None);
        assert_eq!(
            (e.connects, e.path),
            (true, Some(PathKind::Srflx)),
            "{}",
            e.reason
        );
        let e = expect(&m, "kernel-masquerade", "kernel-masquerade", Turn::None);
        assert_eq!((e.connects, e.path), (true, Some(PathKind::Srflx)));
        let e = expect(&m, "kernel-random-fully", "kernel-masquerade", Turn::None);
        assert!(!e.connects, "{}", e.reason);
        let e = expect(&m, "kernel-random-fully", "eim-eif", Turn::None);
        assert_eq!(e.path, Some(PathKind::Prflx));
    }
}
