//! The `matrix.json` contract (documented in reports/README.md): what `sim matrix` writes,
//! what `sim merge` joins and what `sim compare` checks against a baseline.

use serde::{Deserialize, Serialize};

/// Version of the `matrix.json` layout. Readers refuse other versions.
pub const SCHEMA_VERSION: u32 = 1;

/// ICE signaling mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Candidates one by one as they are gathered (RFC 8838).
    Trickle,
    /// All candidates in one offer/answer round trip, after gathering.
    Vanilla,
}

impl Mode {
    /// `trickle` or `vanilla`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Trickle => "trickle",
            Mode::Vanilla => "vanilla",
        }
    }
}

/// Whether the peers may use a TURN server, and over which transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Turn {
    /// STUN only: no relayed candidates.
    None,
    /// TURN over UDP.
    Udp,
    /// TURN over TCP.
    Tcp,
}

impl Turn {
    /// `none`, `udp` or `tcp`.
    pub fn as_str(self) -> &'static str {
        match self {
            Turn::None => "none",
            Turn::Udp => "udp",
            Turn::Tcp => "tcp",
        }
    }
}

/// An ICE implementation on one side of a cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Agent {
    /// natscope's own agent (`icepeer`).
    Icepeer,
    /// aioice (Python, from PyPI), through `aioice_peer.py`.
    Aioice,
}

impl Agent {
    /// `icepeer` or `aioice`.
    pub fn as_str(self) -> &'static str {
        match self {
            Agent::Icepeer => "icepeer",
            Agent::Aioice => "aioice",
        }
    }
}

/// Which agent runs on the row side (controlling, offers) and on the column side
/// (controlled, answers). Written `row/column` in files and JSON, e.g. `icepeer/aioice`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Peers {
    /// Row side: controlling, sends the offer.
    pub row: Agent,
    /// Column side: controlled, sends the answer.
    pub column: Agent,
}

impl Default for Peers {
    /// icepeer on both sides.
    fn default() -> Self {
        Peers {
            row: Agent::Icepeer,
            column: Agent::Icepeer,
        }
    }
}

impl Peers {
    /// Parse `icepeer/aioice` (a single name means the same agent on both sides).
    pub fn parse(s: &str) -> Option<Peers> {
        let agent = |a: &str| match a.trim() {
            "icepeer" => Some(Agent::Icepeer),
            "aioice" => Some(Agent::Aioice),
            _ => None,
        };
        match s.split_once('/') {
            Some((r, c)) => Some(Peers {
                row: agent(r)?,
                column: agent(c)?,
            }),
            None => {
                let a = agent(s)?;
                Some(Peers { row: a, column: a })
            }
        }
    }

    /// `row/column`.
    pub fn label(&self) -> String {
        format!("{}/{}", self.row.as_str(), self.column.as_str())
    }
}

impl Serialize for Peers {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.label())
    }
}

impl<'de> Deserialize<'de> for Peers {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Peers::parse(&s).ok_or_else(|| serde::de::Error::custom(format!("unknown peers {s:?}")))
    }
}

/// The kind of path a cell ended on: the most indirect candidate type in either side's
/// selected pair. Ordered from best to worst: a regression is a
/// move to a later variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PathKind {
    /// Host candidate to host candidate: no translation on the way.
    Host,
    /// A server-reflexive candidate, as signalled, on at least one end.
    Srflx,
    /// A peer-reflexive candidate (learned from a check) on at least one end.
    Prflx,
    /// Through the TURN server.
    Relay,
}

impl PathKind {
    /// `host`, `srflx`, `prflx` or `relay`.
    pub fn as_str(self) -> &'static str {
        match self {
            PathKind::Host => "host",
            PathKind::Srflx => "srflx",
            PathKind::Prflx => "prflx",
            PathKind::Relay => "relay",
        }
    }

    /// Direct (not relayed).
    pub fn is_direct(self) -> bool {
        self != PathKind::Relay
    }

    /// The path kind of a pair of candidate types (`host`, `srflx`, `prflx`, `relay`);
    /// `None` for a type this enum does not know.
    pub fn of_pair(local: &str, remote: &str) -> Option<PathKind> {
        let kind = |t: &str| match t {
            "host" => Some(PathKind::Host),
            "srflx" => Some(PathKind::Srflx),
            "prflx" => Some(PathKind::Prflx),
            "relay" => Some(PathKind::Relay),
            _ => None,
        };
        Some(kind(local)?.max(kind(remote)?))
    }
}

/// What the RFC 4787 oracle (`nat::oracle`) expects of a cell.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Expected {
    /// The peers connect.
    pub connects: bool,
    /// The path they end on (`None` when they do not connect).
    pub path: Option<PathKind>,
    /// Why, in a sentence (from the profiles' mapping and filtering and the TURN setting).
    pub reason: String,
}

/// One side's account of the session, as its agent reported it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SideResult {
    /// The agent (`icepeer`, `aioice`).
    pub agent: String,
    /// It reached the connected state.
    pub connected: bool,
    /// Selected pair: local candidate type and address.
    pub local_type: Option<String>,
    /// Local candidate address `ip:port`.
    pub local_address: Option<String>,
    /// Selected pair: remote candidate type.
    pub remote_type: Option<String>,
    /// Remote candidate address `ip:port`.
    pub remote_address: Option<String>,
    /// From the agent's start (both start together) to connected, in milliseconds.
    pub time_to_connected_ms: Option<f64>,
    /// Connectivity checks sent (icepeer: every Binding request of a check, retransmissions
    /// included; aioice: checks started).
    pub checks_sent: Option<u64>,
    /// Datagrams went both ways over the selected pair.
    pub datagrams_ok: Option<bool>,
    /// Why it did not connect, as the agent said.
    pub failure: Option<String>,
    /// Exit status of the peer process (None: killed).
    pub exit_code: Option<i32>,
    /// Last part of its standard error, when it failed.
    pub stderr: Option<String>,
}

/// One cell: a row profile against a column profile, in one mode, with one TURN setting and
/// one pair of agents.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cell {
    /// Position in the full matrix's enumeration (stable for a given matrix definition;
    /// shards hold disjoint sets of indices).
    pub index: usize,
    /// `row|column|mode|turn|peers`: the key `sim compare` matches cells by.
    pub id: String,
    /// Row profile (controlling peer's NATs).
    pub row: String,
    /// Column profile (controlled peer's NATs).
    pub column: String,
    /// ICE mode.
    pub mode: Mode,
    /// TURN setting.
    pub turn: Turn,
    /// Agents.
    pub peers: Peers,
    /// Both sides connected and datagrams went both ways.
    pub connected: bool,
    /// The path: the most indirect candidate type in either side's selected pair.
    pub path: Option<PathKind>,
    /// Row side's selected pair as `local-remote` candidate types (e.g. `srflx-prflx`).
    pub pair: Option<String>,
    /// Time to connected: the later of the two sides, in milliseconds.
    pub time_to_connected_ms: Option<f64>,
    /// Checks sent by both sides together (None if an agent does not say).
    pub checks_sent: Option<u64>,
    /// What the oracle expects.
    pub expected: Expected,
    /// The outcome agrees with the oracle (connects, and on the same path kind).
    pub agrees: bool,
    /// When it does not agree: what differs and the likely reason.
    pub flag: Option<String>,
    /// Vanilla's time to connected minus trickle's on the same row, column, TURN setting and
    /// agents, when the matrix has both and both connected: what trickle saves.
    pub trickle_saving_ms: Option<f64>,
    /// The row (controlling) side.
    pub row_side: SideResult,
    /// The column (controlled) side.
    pub column_side: SideResult,
    /// The cell could not run (setup failure): why. Such a cell is not `connected`.
    pub error: Option<String>,
    /// Wall time of the cell, setup and teardown included.
    pub elapsed_ms: u64,
}

/// A profile: the NAT levels a peer sits behind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProfileInfo {
    /// Name, as in rows and columns.
    pub name: String,
    /// What it is, in RFC 4787 terms.
    pub description: String,
    /// Each level, innermost first, as its keys (e.g. `preset=eim-apdf`, `kind=kernel-masquerade`).
    pub levels: Vec<String>,
}

/// Which part of a matrix a file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    /// 1-based.
    pub index: usize,
    /// Number of shards.
    pub count: usize,
}

/// Counts over the cells present.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// Cells in this file.
    pub cells: usize,
    /// Connected.
    pub connected: usize,
    /// On a direct path.
    pub direct: usize,
    /// Relayed.
    pub relayed: usize,
    /// Agree with the oracle.
    pub agree: usize,
    /// Flagged (disagree with the oracle).
    pub flagged: usize,
    /// Could not run.
    pub errors: usize,
}

impl Summary {
    /// Count `cells`.
    pub fn of(cells: &[Cell]) -> Summary {
        let mut s = Summary {
            cells: cells.len(),
            ..Summary::default()
        };
        for c in cells {
            s.connected += usize::from(c.connected);
            s.direct += usize::from(c.connected && c.path.is_some_and(PathKind::is_direct));
            s.relayed += usize::from(c.connected && c.path == Some(PathKind::Relay));
            s.agree += usize::from(c.agrees);
            s.flagged += usize::from(!c.agrees);
            s.errors += usize::from(c.error.is_some());
        }
        s
    }
}

/// A matrix run (or one shard of it): the `matrix.json` contract.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Matrix {
    /// [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// Matrix name (the report folder's name).
    pub matrix: String,
    /// Matrix file it came from.
    pub source: String,
    /// Description from the file.
    pub description: Option<String>,
    /// Fingerprint of the definition (profiles, dimensions, delays, timeouts): shards merge
    /// only when it matches, and `sim compare` warns when a baseline's differs.
    pub definition: String,
    /// Row profiles, in order.
    pub rows: Vec<String>,
    /// Column profiles, in order.
    pub columns: Vec<String>,
    /// Modes, in order.
    pub modes: Vec<Mode>,
    /// TURN settings, in order.
    pub turn: Vec<Turn>,
    /// Agent pairs, in order.
    pub peers: Vec<Peers>,
    /// The profiles used.
    pub profiles: Vec<ProfileInfo>,
    /// One-way signaling delay, milliseconds.
    pub signaling_delay_ms: u64,
    /// Per-cell session timeout, milliseconds.
    pub timeout_ms: u64,
    /// Cells in the whole matrix (all shards).
    pub total_cells: usize,
    /// This file's part; `None` when it holds every cell.
    pub shard: Option<Shard>,
    /// Cells run in parallel.
    pub jobs: usize,
    /// Wall time of the run (for a merge: the sum of the shards').
    pub elapsed_ms: u64,
    /// Counts.
    pub summary: Summary,
    /// The cells, by index.
    pub cells: Vec<Cell>,
}

impl Matrix {
    /// Cells per minute of wall time.
    pub fn cells_per_minute(&self) -> f64 {
        if self.elapsed_ms == 0 {
            return 0.0;
        }
        self.cells.len() as f64 * 60_000.0 / self.elapsed_ms as f64
    }
}

/// Fill in each cell's [`Cell::trickle_saving_ms`]: vanilla's time to connected minus
/// trickle's for the same row, column, TURN setting and agents, on both cells of the pair,
/// when both connected. Cells without a counterpart get `None`.
pub fn fill_trickle_savings(cells: &mut [Cell]) {
    use std::collections::HashMap;
    let key = |c: &Cell| (c.row.clone(), c.column.clone(), c.turn, c.peers);
    let mut times: HashMap<_, [Option<f64>; 2]> = HashMap::new();
    for c in cells.iter() {
        let slot = times.entry(key(c)).or_default();
        let t = if c.connected {
            c.time_to_connected_ms
        } else {
            None
        };
        match c.mode {
            Mode::Trickle => slot[0] = t,
            Mode::Vanilla => slot[1] = t,
        }
    }
    for c in cells.iter_mut() {
        c.trickle_saving_ms = match times.get(&key(c)) {
            Some([Some(t), Some(v)]) => Some(((v - t) * 10.0).round() / 10.0),
            _ => None,
        };
    }
}
