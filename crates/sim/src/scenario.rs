//! Scenario files: TOML in, a validated [`Scenario`] out.
//!
//! The format is documented in `scenarios/README.md`. Every mistake is reported with the file,
//! the line and what is wrong ([`ScenarioError`]); nothing here touches the system, so
//! `sim check` can run anywhere without root.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::Ipv4Addr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nat::{Behavior, Mode, NatConfig, Pooling, PortAssignment};
use serde::Deserialize;
use toml::Spanned;

use crate::matrix::model::{Expected, Mode as IceMode, PathKind, Peers, Turn};
use crate::topology::{Impairment, Ipv4Prefix};

/// Longest host, NAT or network name: namespace names are `<run prefix>-<name>`.
pub const MAX_NAME_LEN: usize = 12;

/// A scenario file that could not be used, with where and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScenarioError {
    /// The file.
    pub file: PathBuf,
    /// 1-based line, when the mistake has a place.
    pub line: Option<usize>,
    /// What is wrong, in words.
    pub message: String,
}

impl fmt::Display for ScenarioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{}: {}", self.file.display(), l, self.message),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

impl std::error::Error for ScenarioError {}

// ---------------------------------------------------------------------------------------------
// The file as written.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScenario {
    name: Option<Spanned<String>>,
    description: Option<String>,
    seed: Option<u64>,
    #[serde(default, rename = "network")]
    networks: Vec<Spanned<RawNetwork>>,
    #[serde(default, rename = "nat")]
    nats: Vec<Spanned<RawNat>>,
    #[serde(default, rename = "host")]
    hosts: Vec<Spanned<RawHost>>,
    #[serde(default, rename = "probe")]
    probes: Vec<Spanned<RawProbe>>,
    #[serde(default, rename = "run")]
    runs: Vec<Spanned<RawRun>>,
    #[serde(default, rename = "ice")]
    ice: Vec<Spanned<RawIce>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNetwork {
    name: Spanned<String>,
    prefixes: Vec<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLink {
    delay: Option<Spanned<String>>,
    jitter: Option<Spanned<String>>,
    loss: Option<Spanned<f64>>,
    rate: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNat {
    name: Spanned<String>,
    inside: Spanned<String>,
    outside: Spanned<String>,
    inside_address: Spanned<String>,
    #[serde(default)]
    external: Vec<Spanned<String>>,
    kind: Option<Spanned<String>>,
    preset: Option<Spanned<String>>,
    mode: Option<Spanned<String>>,
    mapping: Option<Spanned<String>>,
    filtering: Option<Spanned<String>>,
    port_assignment: Option<Spanned<String>>,
    port_parity: Option<bool>,
    port_range: Option<Spanned<[u16; 2]>>,
    pooling: Option<Spanned<String>>,
    udp_timeout: Option<Spanned<String>>,
    inbound_refresh: Option<bool>,
    hairpinning: Option<bool>,
    tcp_established_timeout: Option<Spanned<String>>,
    tcp_transitory_timeout: Option<Spanned<String>>,
    max_mappings: Option<usize>,
    inside_link: Option<RawLink>,
    outside_link: Option<RawLink>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHost {
    name: Spanned<String>,
    network: Spanned<String>,
    addresses: Vec<Spanned<String>>,
    link: Option<RawLink>,
    #[serde(default)]
    services: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProbe {
    host: Spanned<String>,
    server: Spanned<String>,
    #[serde(default)]
    lifetime: bool,
    lifetime_max: Option<u64>,
    expect: Option<Spanned<RawExpect>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExpect {
    nat: Option<bool>,
    udp_blocked: Option<bool>,
    mapping: Option<Spanned<String>>,
    filtering: Option<Spanned<String>>,
    hairpinning: Option<bool>,
    port_preservation: Option<bool>,
    binding_lifetime_s: Option<f64>,
    legacy: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRun {
    host: Spanned<String>,
    command: Spanned<Vec<String>>,
    #[serde(default)]
    expect_exit: i32,
    expect_stdout: Option<String>,
    timeout: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIce {
    offer: Spanned<String>,
    answer: Spanned<String>,
    server: Spanned<String>,
    mode: Option<Spanned<String>>,
    turn: Option<Spanned<String>>,
    peers: Option<Spanned<String>>,
    signaling_delay: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    expect: Option<Spanned<String>>,
}

// ---------------------------------------------------------------------------------------------
// The validated scenario.

/// A validated scenario: names resolved to indices, addresses checked, NAT configs complete.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Scenario name (the `name` key, or the file stem).
    pub name: String,
    /// Free text from the file.
    pub description: Option<String>,
    /// Seed for the fabric's impairments and the NAT models' port choices.
    pub seed: u64,
    /// Where it was read from.
    pub source: PathBuf,
    /// Networks, in file order.
    pub networks: Vec<NetworkDef>,
    /// NAT boxes, in file order.
    pub nats: Vec<NatDef>,
    /// Hosts, in file order.
    pub hosts: Vec<HostDef>,
    /// natprobe runs and their expectations.
    pub probes: Vec<ProbeDef>,
    /// Other commands to run inside hosts.
    pub runs: Vec<RunDef>,
    /// ICE sessions between two hosts.
    pub ice: Vec<IceDef>,
}

/// A network.
#[derive(Debug, Clone)]
pub struct NetworkDef {
    /// Name.
    pub name: String,
    /// Its address ranges.
    pub prefixes: Vec<Ipv4Prefix>,
}

/// How a NAT box is built.
#[derive(Debug, Clone)]
pub enum NatImpl {
    /// Our model (`nat` crate), fully configured.
    Model(NatConfig),
    /// Linux nftables masquerade in a router namespace.
    Kernel {
        /// `masquerade random,fully-random`.
        random_fully: bool,
    },
}

/// A NAT box (or firewall) between two networks.
#[derive(Debug, Clone)]
pub struct NatDef {
    /// Name.
    pub name: String,
    /// Preset it started from, if any.
    pub preset: Option<String>,
    /// Inside network index.
    pub inside: usize,
    /// Outside network index.
    pub outside: usize,
    /// The box's address in the inside network.
    pub inside_addr: Ipv4Addr,
    /// Addresses the box owns in the outside network: its external addresses, or for a
    /// firewall (no translation) the addresses of the hosts behind it.
    pub external: Vec<Ipv4Addr>,
    /// Model or kernel.
    pub imp: NatImpl,
    /// Inside link impairment.
    pub inside_link: Impairment,
    /// Outside link impairment.
    pub outside_link: Impairment,
}

impl NatDef {
    /// True when the box translates addresses (a NAT, not a firewall).
    pub fn translates(&self) -> bool {
        match &self.imp {
            NatImpl::Model(c) => c.mode == Mode::Nat,
            NatImpl::Kernel { .. } => true,
        }
    }
}

/// A program a host runs for the whole scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// turnd answering STUN on the host's first address (port 3478), with RFC 5780's
    /// alternate address (the second address) and port (3479) when the host has two.
    Turnd,
}

/// A host.
#[derive(Debug, Clone)]
pub struct HostDef {
    /// Name.
    pub name: String,
    /// Network index.
    pub network: usize,
    /// Addresses (the first is the primary).
    pub addresses: Vec<Ipv4Addr>,
    /// Link impairment.
    pub link: Impairment,
    /// Services started before probes and runs.
    pub services: Vec<Service>,
}

/// What a probe must find. `None` fields are not checked.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Expectation {
    /// A NAT is present.
    pub nat: Option<bool>,
    /// UDP is blocked.
    pub udp_blocked: Option<bool>,
    /// Mapping behaviour (RFC 4787 words).
    pub mapping: Option<String>,
    /// Filtering behaviour.
    pub filtering: Option<String>,
    /// Hairpinning works.
    pub hairpinning: Option<bool>,
    /// Ports are preserved.
    pub port_preservation: Option<bool>,
    /// Binding lifetime in seconds.
    pub binding_lifetime_s: Option<f64>,
    /// RFC 3489 label.
    pub legacy: Option<String>,
}

/// One natprobe run.
#[derive(Debug, Clone)]
pub struct ProbeDef {
    /// Host index the probe runs on.
    pub host: usize,
    /// Host index running turnd.
    pub server: usize,
    /// Also measure the binding lifetime.
    pub lifetime: bool,
    /// Longest lifetime tried (s).
    pub lifetime_max: u64,
    /// What the NAT chain implies (derived from the configuration).
    pub derived: Expectation,
    /// What the file says explicitly (overrides `derived` field by field).
    pub explicit: Expectation,
    /// NAT boxes between host and server, innermost first.
    pub chain: Vec<usize>,
}

impl ProbeDef {
    /// The expectation actually checked: explicit values win over derived ones.
    pub fn expected(&self) -> Expectation {
        let (d, e) = (&self.derived, &self.explicit);
        Expectation {
            nat: e.nat.or(d.nat),
            udp_blocked: e.udp_blocked.or(d.udp_blocked),
            mapping: e.mapping.clone().or_else(|| d.mapping.clone()),
            filtering: e.filtering.clone().or_else(|| d.filtering.clone()),
            hairpinning: e.hairpinning.or(d.hairpinning),
            port_preservation: e.port_preservation.or(d.port_preservation),
            binding_lifetime_s: e.binding_lifetime_s.or(d.binding_lifetime_s),
            legacy: e.legacy.clone().or_else(|| d.legacy.clone()),
        }
    }
}

/// A command run inside a host.
#[derive(Debug, Clone)]
pub struct RunDef {
    /// Host index.
    pub host: usize,
    /// Program and arguments. `natprobe` and `turnd` are provided by the simulator itself.
    pub command: Vec<String>,
    /// Exit status that counts as success.
    pub expect_exit: i32,
    /// Text the standard output must contain.
    pub expect_stdout: Option<String>,
    /// Give up (and fail) after this long.
    pub timeout: Duration,
}

/// What an `[[ice]]` session must come to, as the file says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IceExpect {
    /// Both sides connect (any path).
    Connected,
    /// They do not connect.
    Failed,
    /// They connect on a host-host pair.
    Host,
    /// They connect on a pair whose worst candidate is server-reflexive.
    Srflx,
    /// They connect on a pair with a peer-reflexive candidate.
    Prflx,
    /// They connect through the TURN server.
    Relay,
    /// They connect on a direct (not relayed) path.
    Direct,
}

impl IceExpect {
    const WORDS: &[(&str, IceExpect)] = &[
        ("connected", IceExpect::Connected),
        ("failed", IceExpect::Failed),
        ("host", IceExpect::Host),
        ("srflx", IceExpect::Srflx),
        ("prflx", IceExpect::Prflx),
        ("relay", IceExpect::Relay),
        ("direct", IceExpect::Direct),
    ];

    /// The word in the file.
    pub fn as_str(self) -> &'static str {
        Self::WORDS
            .iter()
            .find(|(_, v)| *v == self)
            .map_or("?", |(w, _)| w)
    }

    /// Whether the session must connect.
    pub fn connects(self) -> bool {
        self != IceExpect::Failed
    }

    /// Whether a session that connected (or not) on `path` meets this expectation.
    pub fn holds(self, connected: bool, path: Option<PathKind>) -> bool {
        match self {
            IceExpect::Failed => !connected,
            IceExpect::Connected => connected,
            IceExpect::Direct => connected && path.is_some_and(PathKind::is_direct),
            IceExpect::Host => connected && path == Some(PathKind::Host),
            IceExpect::Srflx => connected && path == Some(PathKind::Srflx),
            IceExpect::Prflx => connected && path == Some(PathKind::Prflx),
            IceExpect::Relay => connected && path == Some(PathKind::Relay),
        }
    }
}

/// One ICE session between two hosts (`[[ice]]`).
#[derive(Debug, Clone)]
pub struct IceDef {
    /// Host index of the controlling agent (it offers).
    pub offer: usize,
    /// Host index of the controlled agent (it answers).
    pub answer: usize,
    /// Host index running turnd (STUN and TURN).
    pub server: usize,
    /// Trickle or vanilla.
    pub mode: IceMode,
    /// TURN setting.
    pub turn: Turn,
    /// Agents: `row` on the offer host, `column` on the answer host.
    pub peers: Peers,
    /// One-way signaling delay (outside the emulated network).
    pub signaling_delay: Duration,
    /// Each agent's ICE timeout.
    pub timeout: Duration,
    /// What the file says the session must come to.
    pub expect: Option<IceExpect>,
    /// What the RFC 4787 oracle expects, when the peers' ways to the server share no NAT
    /// box; otherwise why it is not derived (`not derived: ...`).
    pub derived: Result<Expected, String>,
    /// NAT boxes between the offer host and the server, innermost first.
    pub offer_chain: Vec<usize>,
    /// NAT boxes between the answer host and the server, innermost first.
    pub answer_chain: Vec<usize>,
}

// ---------------------------------------------------------------------------------------------
// Parsing.

/// Read and validate a scenario file.
pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
    let text = std::fs::read_to_string(path).map_err(|e| ScenarioError {
        file: path.to_path_buf(),
        line: None,
        message: format!("cannot read: {e}"),
    })?;
    parse(path, &text)
}

/// Parse and validate scenario text; `path` names it in errors and gives the default name.
pub fn parse(path: &Path, text: &str) -> Result<Scenario, ScenarioError> {
    let cx = Cx { path, text };
    let raw: RawScenario = toml::from_str(text).map_err(|e| {
        let line = e.span().map(|s| cx.line_of(s.start));
        ScenarioError {
            file: path.to_path_buf(),
            line,
            message: e.message().to_owned(),
        }
    })?;
    cx.build(raw)
}

struct Cx<'a> {
    path: &'a Path,
    text: &'a str,
}

type Res<T> = Result<T, ScenarioError>;

impl Cx<'_> {
    fn line_of(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text
            .get(..end)
            .map_or(1, |s| s.bytes().filter(|&b| b == b'\n').count() + 1)
    }

    fn err(&self, span: Range<usize>, message: impl Into<String>) -> ScenarioError {
        ScenarioError {
            file: self.path.to_path_buf(),
            line: Some(self.line_of(span.start)),
            message: message.into(),
        }
    }

    fn name(&self, s: &Spanned<String>, what: &str) -> Res<String> {
        let n = s.get_ref();
        let ok = !n.is_empty()
            && n.len() <= MAX_NAME_LEN
            && n.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            && n.as_bytes()[0].is_ascii_lowercase();
        if !ok {
            return Err(self.err(
                s.span(),
                format!(
                    "{what} name {n:?} must be 1-{MAX_NAME_LEN} characters of a-z, 0-9 and _, \
                     starting with a letter (it becomes part of namespace and file names)"
                ),
            ));
        }
        Ok(n.clone())
    }

    fn ip(&self, s: &Spanned<String>) -> Res<Ipv4Addr> {
        s.get_ref().parse().map_err(|_| {
            self.err(
                s.span(),
                format!("{:?} is not an IPv4 address", s.get_ref()),
            )
        })
    }

    fn prefix(&self, s: &Spanned<String>) -> Res<Ipv4Prefix> {
        let bad = || {
            self.err(
                s.span(),
                format!(
                    "{:?} is not an IPv4 prefix like 192.168.1.0/24",
                    s.get_ref()
                ),
            )
        };
        let (a, l) = s.get_ref().split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = a.parse().map_err(|_| bad())?;
        let len: u8 = l.parse().map_err(|_| bad())?;
        if len > 32 {
            return Err(bad());
        }
        let p = Ipv4Prefix { addr, len };
        if !p.contains(addr) || (len < 32 && u32::from(addr) & (u32::MAX >> len) != 0) {
            return Err(self.err(
                s.span(),
                format!(
                    "{:?} has host bits set; write the network address",
                    s.get_ref()
                ),
            ));
        }
        Ok(p)
    }

    fn duration(&self, s: &Spanned<String>) -> Res<Duration> {
        parse_duration(s.get_ref()).ok_or_else(|| {
            self.err(
                s.span(),
                format!(
                    "{:?} is not a duration: write a number and a unit, e.g. 150ms, 30s, 2m, 1h",
                    s.get_ref()
                ),
            )
        })
    }

    fn link(&self, raw: Option<&RawLink>) -> Res<Impairment> {
        let Some(raw) = raw else {
            return Ok(Impairment::default());
        };
        let mut imp = Impairment::default();
        if let Some(d) = &raw.delay {
            imp.delay = self.duration(d)?;
        }
        if let Some(j) = &raw.jitter {
            imp.jitter = self.duration(j)?;
        }
        for (d, key) in [(imp.delay, &raw.delay), (imp.jitter, &raw.jitter)] {
            if d > Duration::from_secs(10) {
                let span = key.as_ref().map_or(0..0, Spanned::span);
                return Err(self.err(span, "delay and jitter are limited to 10 s"));
            }
        }
        if let Some(l) = &raw.loss {
            let v = *l.get_ref();
            if !(0.0..=1.0).contains(&v) {
                return Err(self.err(l.span(), format!("loss {v} must be between 0.0 and 1.0")));
            }
            imp.loss = v;
        }
        if let Some(r) = &raw.rate {
            let bps = parse_rate(r.get_ref()).ok_or_else(|| {
                self.err(
                    r.span(),
                    format!(
                        "{:?} is not a rate: write e.g. 500kbit, 10mbit, 1gbit",
                        r.get_ref()
                    ),
                )
            })?;
            imp.rate_bps = Some(bps);
        }
        Ok(imp)
    }

    fn lookup(
        &self,
        names: &HashMap<String, usize>,
        s: &Spanned<String>,
        what: &str,
    ) -> Res<usize> {
        names.get(s.get_ref()).copied().ok_or_else(|| {
            let mut known: Vec<&String> = names.keys().collect();
            known.sort();
            self.err(
                s.span(),
                format!("no {what} named {:?} (known: {known:?})", s.get_ref()),
            )
        })
    }

    fn build(&self, raw: RawScenario) -> Res<Scenario> {
        let valid_name = |n: &str| {
            !n.is_empty()
                && n.len() <= 64
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        };
        let name = match &raw.name {
            Some(n) => {
                if !valid_name(n.get_ref()) {
                    return Err(self.err(
                        n.span(),
                        "scenario name must be 1-64 characters of letters, digits, _ and - \
                         (it names the report folder)",
                    ));
                }
                n.get_ref().clone()
            }
            None => {
                let stem = self.path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
                if !valid_name(stem) {
                    return Err(ScenarioError {
                        file: self.path.to_path_buf(),
                        line: None,
                        message: format!(
                            "the file name {stem:?} cannot name the report folder: add \
                             name = \"...\" (letters, digits, _ and -)"
                        ),
                    });
                }
                stem.to_owned()
            }
        };

        // Networks.
        let mut networks = Vec::new();
        let mut net_names = HashMap::new();
        for n in &raw.networks {
            let nm = self.name(&n.get_ref().name, "network")?;
            if net_names.insert(nm.clone(), networks.len()).is_some() {
                return Err(self.err(
                    n.get_ref().name.span(),
                    format!("network {nm:?} is defined twice"),
                ));
            }
            if n.get_ref().prefixes.is_empty() {
                return Err(self.err(
                    n.span(),
                    format!("network {nm:?} needs at least one prefix"),
                ));
            }
            let prefixes = n
                .get_ref()
                .prefixes
                .iter()
                .map(|p| self.prefix(p))
                .collect::<Res<Vec<_>>>()?;
            networks.push(NetworkDef { name: nm, prefixes });
        }
        if networks.is_empty() {
            return Err(ScenarioError {
                file: self.path.to_path_buf(),
                line: None,
                message: "a scenario needs at least one [[network]]".into(),
            });
        }

        // Names shared by hosts and NAT boxes: both become namespaces.
        let mut node_names: HashMap<String, usize> = HashMap::new();
        // Address owners per network, to catch duplicates.
        let mut owners: Vec<BTreeMap<Ipv4Addr, String>> = vec![BTreeMap::new(); networks.len()];
        let mut claim = |net: usize, ip: Ipv4Addr, who: &str, span: Range<usize>| -> Res<()> {
            if !networks[net].prefixes.iter().any(|p| p.contains(ip)) {
                return Err(self.err(
                    span,
                    format!(
                        "{ip} is not inside network {:?} ({})",
                        networks[net].name,
                        fmt_prefixes(&networks[net].prefixes)
                    ),
                ));
            }
            if let Some(prev) = owners[net].insert(ip, who.to_owned()) {
                return Err(self.err(span, format!("{ip} is already used by {prev}")));
            }
            Ok(())
        };

        // NAT boxes.
        let mut nats = Vec::new();
        let mut gateway_of: Vec<Option<usize>> = vec![None; networks.len()];
        let mut firewall_spans = Vec::new();
        for n in &raw.nats {
            let r = n.get_ref();
            let nm = self.name(&r.name, "NAT")?;
            if node_names.insert(nm.clone(), nats.len()).is_some() {
                return Err(self.err(r.name.span(), format!("{nm:?} is defined twice")));
            }
            let inside = self.lookup(&net_names, &r.inside, "network")?;
            let outside = self.lookup(&net_names, &r.outside, "network")?;
            if inside == outside {
                return Err(self.err(
                    r.outside.span(),
                    "inside and outside must be different networks",
                ));
            }
            if let Some(prev) = gateway_of[inside] {
                let prev: &NatDef = &nats[prev];
                return Err(self.err(
                    r.inside.span(),
                    format!(
                        "network {:?} already has a gateway ({}); a network has at most one",
                        networks[inside].name, prev.name
                    ),
                ));
            }
            gateway_of[inside] = Some(nats.len());
            let inside_addr = self.ip(&r.inside_address)?;
            claim(
                inside,
                inside_addr,
                &format!("NAT {nm}"),
                r.inside_address.span(),
            )?;
            let imp = self.nat_impl(r)?;
            let translates = match &imp {
                NatImpl::Model(c) => c.mode == Mode::Nat,
                NatImpl::Kernel { .. } => true,
            };
            let mut external = Vec::new();
            for e in &r.external {
                let ip = self.ip(e)?;
                claim(outside, ip, &format!("NAT {nm}"), e.span())?;
                external.push(ip);
            }
            if translates {
                if external.is_empty() {
                    return Err(self.err(
                        n.span(),
                        format!("NAT {nm:?} needs at least one external address"),
                    ));
                }
                if matches!(imp, NatImpl::Kernel { .. }) && external.len() != 1 {
                    return Err(self.err(
                        r.external[1].span(),
                        "a kernel NAT box has exactly one external address",
                    ));
                }
            } else if let Some(e) = r.external.first() {
                return Err(self.err(
                    e.span(),
                    "a firewall does not translate: it has no external addresses (the hosts \
                     behind it keep theirs)",
                ));
            } else {
                firewall_spans.push((nats.len(), n.span()));
            }
            let (mut imp, preset) = (imp, r.preset.as_ref().map(|p| p.get_ref().clone()));
            if let NatImpl::Model(c) = &mut imp {
                c.external.clone_from(&external);
                c.validate()
                    .map_err(|e| self.err(n.span(), format!("NAT {nm:?}: {e}")))?;
            }
            nats.push(NatDef {
                name: nm,
                preset,
                inside,
                outside,
                inside_addr,
                external,
                imp,
                inside_link: self.link(r.inside_link.as_ref())?,
                outside_link: self.link(r.outside_link.as_ref())?,
            });
        }
        // No cycles: following gateways from any network must end.
        for start in 0..networks.len() {
            let mut net = start;
            for _ in 0..=nats.len() {
                match gateway_of[net] {
                    Some(g) => net = nats[g].outside,
                    None => break,
                }
                if net == start {
                    let g = gateway_of[start].unwrap_or(0);
                    return Err(self.err(
                        raw.nats[g].get_ref().outside.span(),
                        format!(
                            "NAT boxes form a loop through network {:?}",
                            networks[start].name
                        ),
                    ));
                }
            }
        }

        // A network's prefixes must not overlap those of any network on its way out: routing
        // would deliver (or drop) inside instead of going to the gateway.
        for (i, n) in networks.iter().enumerate() {
            if let Some(p) = n.prefixes.iter().find(|p| p.len == 0) {
                let span = raw.networks[i].get_ref().name.span();
                return Err(self.err(
                    span,
                    format!(
                        "network {:?}: {}/0 would cover every address",
                        n.name, p.addr
                    ),
                ));
            }
            let mut net = i;
            for _ in 0..nats.len() {
                let Some(g) = gateway_of[net] else { break };
                net = nats[g].outside;
                let outer = &networks[net];
                for p in &n.prefixes {
                    if let Some(q) = outer.prefixes.iter().find(|q| overlaps(p, q)) {
                        return Err(self.err(
                            raw.networks[i].get_ref().name.span(),
                            format!(
                                "network {:?} ({}/{}) overlaps {:?} ({}/{}), which is on its way \
                                 out: packets for the outer network would stay inside",
                                n.name, p.addr, p.len, outer.name, q.addr, q.len
                            ),
                        ));
                    }
                }
            }
        }

        // Hosts.
        let mut hosts: Vec<HostDef> = Vec::new();
        let mut host_names = HashMap::new();
        for h in &raw.hosts {
            let r = h.get_ref();
            let nm = self.name(&r.name, "host")?;
            if node_names.contains_key(&nm) || host_names.insert(nm.clone(), hosts.len()).is_some()
            {
                return Err(self.err(r.name.span(), format!("{nm:?} is defined twice")));
            }
            let network = self.lookup(&net_names, &r.network, "network")?;
            if r.addresses.is_empty() {
                return Err(self.err(h.span(), format!("host {nm:?} needs at least one address")));
            }
            let mut addresses = Vec::new();
            for a in &r.addresses {
                let ip = self.ip(a)?;
                claim(network, ip, &format!("host {nm}"), a.span())?;
                addresses.push(ip);
            }
            let mut services = Vec::new();
            for s in &r.services {
                match s.get_ref().as_str() {
                    "turnd" if services.contains(&Service::Turnd) => {
                        return Err(self.err(s.span(), "turnd is listed twice"));
                    }
                    "turnd" => services.push(Service::Turnd),
                    other => {
                        return Err(self.err(
                            s.span(),
                            format!("unknown service {other:?} (known: \"turnd\")"),
                        ));
                    }
                }
            }
            hosts.push(HostDef {
                name: nm,
                network,
                addresses,
                link: self.link(r.link.as_ref())?,
                services,
            });
        }
        // A firewall owns, in its outside network, the addresses of the hosts behind it.
        for (i, span) in firewall_spans {
            let inside = nats[i].inside;
            let outside = nats[i].outside;
            let behind: Vec<Ipv4Addr> = hosts
                .iter()
                .filter(|h| h.network == inside)
                .flat_map(|h| h.addresses.iter().copied())
                .collect();
            if behind.is_empty() {
                return Err(self.err(
                    span,
                    format!("firewall {:?} has no host behind it", nats[i].name),
                ));
            }
            if let Some(inner) = nats.iter().find(|n| n.outside == inside) {
                return Err(self.err(
                    span,
                    format!(
                        "NAT box {:?} sits behind firewall {:?}: a firewall passes only the \
                         addresses of hosts directly behind it; put the firewall outside the \
                         NAT, or make it a NAT",
                        inner.name, nats[i].name
                    ),
                ));
            }
            if let Some(g) = gateway_of[outside] {
                if matches!(nats[g].imp, NatImpl::Kernel { .. }) {
                    return Err(self.err(
                        span,
                        format!(
                            "firewall {:?} sits behind kernel NAT box {:?}, which routes only \
                             its own inside network; put the firewall elsewhere",
                            nats[i].name, nats[g].name
                        ),
                    ));
                }
            }
            for ip in &behind {
                let who = format!("the hosts behind firewall {}", nats[i].name);
                if let Some(prev) = owners[outside].insert(*ip, who) {
                    return Err(self.err(
                        span,
                        format!(
                            "{ip} behind firewall {:?} is also used in network {:?} by {prev}",
                            nats[i].name, networks[outside].name
                        ),
                    ));
                }
            }
            nats[i].external = behind;
        }

        // Probes.
        let mut probes = Vec::new();
        for p in &raw.probes {
            let r = p.get_ref();
            let host = self.lookup(&host_names, &r.host, "host")?;
            let server = self.lookup(&host_names, &r.server, "host")?;
            if !hosts[server].services.contains(&Service::Turnd) {
                return Err(self.err(
                    r.server.span(),
                    format!(
                        "host {:?} runs no STUN server: add services = [\"turnd\"] to it",
                        hosts[server].name
                    ),
                ));
            }
            let chain = path_to(
                &nats,
                &gateway_of,
                hosts[host].network,
                hosts[server].network,
            )
            .ok_or_else(|| {
                self.err(
                    r.server.span(),
                    format!(
                        "server {:?} is not on host {:?}'s way out (its network and the \
                             networks behind its gateways)",
                        hosts[server].name, hosts[host].name
                    ),
                )
            })?;
            let explicit = match &r.expect {
                Some(e) => self.expectation(e.get_ref(), e.span())?,
                None => Expectation::default(),
            };
            let kernel_on_way = chain
                .iter()
                .any(|&g| matches!(nats[g].imp, NatImpl::Kernel { .. }));
            if r.lifetime && kernel_on_way && explicit.binding_lifetime_s.is_none() {
                return Err(self.err(
                    p.span(),
                    "lifetime = true through a kernel NAT box: its conntrack timeouts are the \
                     kernel's, not the scenario's; give [probe.expect] binding_lifetime_s",
                ));
            }
            let derived = derive_expectation(
                &nats,
                &chain,
                r.lifetime,
                hosts[server].addresses.len() >= 2,
            );
            probes.push(ProbeDef {
                host,
                server,
                lifetime: r.lifetime,
                lifetime_max: r.lifetime_max.unwrap_or(300).clamp(1, 86_400),
                derived,
                explicit,
                chain,
            });
        }

        // Runs.
        let mut runs = Vec::new();
        for r in &raw.runs {
            let r = r.get_ref();
            let host = self.lookup(&host_names, &r.host, "host")?;
            if r.command.get_ref().is_empty() {
                return Err(self.err(r.command.span(), "command must name a program"));
            }
            let timeout = match &r.timeout {
                Some(t) => self.duration(t)?,
                None => Duration::from_secs(60),
            };
            runs.push(RunDef {
                host,
                command: r.command.get_ref().clone(),
                expect_exit: r.expect_exit,
                expect_stdout: r.expect_stdout.clone(),
                timeout,
            });
        }

        // ICE sessions.
        let mut ice = Vec::new();
        for i in &raw.ice {
            ice.push(self.ice(i.get_ref(), &host_names, &hosts, &nats, &gateway_of)?);
        }

        Ok(Scenario {
            name,
            description: raw.description,
            seed: raw.seed.unwrap_or(1),
            source: self.path.to_path_buf(),
            networks,
            nats,
            hosts,
            probes,
            runs,
            ice,
        })
    }

    fn ice(
        &self,
        r: &RawIce,
        host_names: &HashMap<String, usize>,
        hosts: &[HostDef],
        nats: &[NatDef],
        gateway_of: &[Option<usize>],
    ) -> Res<IceDef> {
        let offer = self.lookup(host_names, &r.offer, "host")?;
        let answer = self.lookup(host_names, &r.answer, "host")?;
        let server = self.lookup(host_names, &r.server, "host")?;
        if offer == answer {
            return Err(self.err(
                r.answer.span(),
                format!(
                    "offer and answer are both {:?}: an ICE session needs two hosts",
                    hosts[offer].name
                ),
            ));
        }
        if !hosts[server].services.contains(&Service::Turnd) {
            return Err(self.err(
                r.server.span(),
                format!(
                    "host {:?} runs no STUN/TURN server: add services = [\"turnd\"] to it",
                    hosts[server].name
                ),
            ));
        }
        let chain = |host: usize, span: Range<usize>| {
            path_to(nats, gateway_of, hosts[host].network, hosts[server].network).ok_or_else(|| {
                self.err(
                    span,
                    format!(
                        "server {:?} is not on host {:?}'s way out (its network and the \
                             networks behind its gateways)",
                        hosts[server].name, hosts[host].name
                    ),
                )
            })
        };
        let offer_chain = chain(offer, r.offer.span())?;
        let answer_chain = chain(answer, r.answer.span())?;
        let mode = match &r.mode {
            Some(m) => self.word(
                m,
                "mode",
                &[("trickle", IceMode::Trickle), ("vanilla", IceMode::Vanilla)],
            )?,
            None => IceMode::Trickle,
        };
        let turn = match &r.turn {
            Some(t) => self.word(
                t,
                "turn",
                &[("none", Turn::None), ("udp", Turn::Udp), ("tcp", Turn::Tcp)],
            )?,
            None => Turn::Udp,
        };
        let peers = match &r.peers {
            Some(p) => Peers::parse(p.get_ref()).ok_or_else(|| {
                self.err(
                    p.span(),
                    format!(
                        "peers {:?} is not one of icepeer, aioice, icepeer/aioice, \
                         aioice/icepeer (OFFER/ANSWER agents)",
                        p.get_ref()
                    ),
                )
            })?,
            None => Peers::default(),
        };
        let bounded =
            |v: &Option<Spanned<String>>, default: Duration, min: Duration, max: Duration| {
                let Some(v) = v else { return Ok(default) };
                match parse_duration(v.get_ref()) {
                Some(d) if (min..=max).contains(&d) => Ok(d),
                _ => Err(self.err(
                    v.span(),
                    format!(
                        "{:?} is not a duration from {} ms to {} s (write e.g. \"50ms\", \"10s\")",
                        v.get_ref(),
                        min.as_millis(),
                        max.as_secs()
                    ),
                )),
            }
            };
        let signaling_delay = bounded(
            &r.signaling_delay,
            Duration::from_millis(50),
            Duration::ZERO,
            Duration::from_secs(10),
        )?;
        let timeout = bounded(
            &r.timeout,
            Duration::from_secs(10),
            Duration::from_secs(1),
            Duration::from_secs(600),
        )?;
        let expect = match &r.expect {
            Some(e) => Some(self.word(e, "expect", IceExpect::WORDS)?),
            None => None,
        };
        if let (Some(e), Turn::None) = (&r.expect, turn) {
            if expect == Some(IceExpect::Relay) {
                return Err(self.err(
                    e.span(),
                    "expect = \"relay\" with turn = \"none\": without TURN there is no relayed \
                     path",
                ));
            }
        }
        let derived = ice_expectation(
            nats,
            (&hosts[offer].name, &offer_chain),
            (&hosts[answer].name, &answer_chain),
            turn,
        );
        Ok(IceDef {
            offer,
            answer,
            server,
            mode,
            turn,
            peers,
            signaling_delay,
            timeout,
            expect,
            derived,
            offer_chain,
            answer_chain,
        })
    }

    fn word<T>(&self, s: &Spanned<String>, what: &str, table: &[(&str, T)]) -> Res<T>
    where
        T: Copy,
    {
        table
            .iter()
            .find(|(w, _)| *w == s.get_ref())
            .map(|(_, v)| *v)
            .ok_or_else(|| {
                let words: Vec<&str> = table.iter().map(|(w, _)| *w).collect();
                self.err(
                    s.span(),
                    format!(
                        "{what} {:?} is not one of {}",
                        s.get_ref(),
                        words.join(", ")
                    ),
                )
            })
    }

    fn nat_impl(&self, r: &RawNat) -> Res<NatImpl> {
        let kind = r.kind.as_ref().map_or("model", |k| k.get_ref().as_str());
        match kind {
            "model" => {}
            "kernel-masquerade" | "kernel-masquerade-random-fully" => {
                let model_keys = [
                    ("preset", r.preset.is_some()),
                    ("mode", r.mode.is_some()),
                    ("mapping", r.mapping.is_some()),
                    ("filtering", r.filtering.is_some()),
                    ("port_assignment", r.port_assignment.is_some()),
                    ("port_parity", r.port_parity.is_some()),
                    ("port_range", r.port_range.is_some()),
                    ("pooling", r.pooling.is_some()),
                    ("udp_timeout", r.udp_timeout.is_some()),
                    ("inbound_refresh", r.inbound_refresh.is_some()),
                    ("hairpinning", r.hairpinning.is_some()),
                    (
                        "tcp_established_timeout",
                        r.tcp_established_timeout.is_some(),
                    ),
                    ("tcp_transitory_timeout", r.tcp_transitory_timeout.is_some()),
                    ("max_mappings", r.max_mappings.is_some()),
                ];
                if let Some((k, _)) = model_keys.iter().find(|(_, set)| *set) {
                    let span = r.kind.as_ref().map_or(0..0, Spanned::span);
                    return Err(self.err(
                        span,
                        format!(
                            "{k} configures the NAT model; a kernel box behaves as Linux \
                             conntrack does (remove {k}, or use kind = \"model\")"
                        ),
                    ));
                }
                return Ok(NatImpl::Kernel {
                    random_fully: kind == "kernel-masquerade-random-fully",
                });
            }
            other => {
                let span = r.kind.as_ref().map_or(0..0, Spanned::span);
                return Err(self.err(
                    span,
                    format!(
                        "kind {other:?} is not one of model, kernel-masquerade, \
                         kernel-masquerade-random-fully"
                    ),
                ));
            }
        }
        let mut c = match &r.preset {
            Some(p) => NatConfig::preset(p.get_ref(), Vec::new()).ok_or_else(|| {
                self.err(
                    p.span(),
                    format!(
                        "preset {:?} is not one of {}",
                        p.get_ref(),
                        NatConfig::PRESETS.join(", ")
                    ),
                )
            })?,
            None => NatConfig::default(),
        };
        if let Some(m) = &r.mode {
            c.mode = self.word(
                m,
                "mode",
                &[
                    ("nat", Mode::Nat),
                    ("firewall", Mode::Firewall),
                    ("udp-blocked", Mode::UdpBlocked),
                ],
            )?;
        }
        if let Some(m) = &r.mapping {
            c.mapping = self.word(m, "mapping", BEHAVIORS)?;
        }
        if let Some(f) = &r.filtering {
            c.filtering = self.word(f, "filtering", BEHAVIORS)?;
        }
        if let Some(p) = &r.port_assignment {
            c.port_assignment = self.word(
                p,
                "port_assignment",
                &[
                    ("preserve", PortAssignment::Preserve),
                    ("sequential", PortAssignment::Sequential),
                    ("random", PortAssignment::Random),
                ],
            )?;
        }
        if let Some(p) = r.port_parity {
            c.port_parity = p;
        }
        if let Some(pr) = &r.port_range {
            let [lo, hi] = *pr.get_ref();
            if lo == 0 || lo > hi {
                return Err(self.err(
                    pr.span(),
                    format!("port_range [{lo}, {hi}] must be 1 <= low <= high"),
                ));
            }
            c.port_range = (lo, hi);
        }
        if let Some(p) = &r.pooling {
            c.pooling = self.word(
                p,
                "pooling",
                &[
                    ("paired", Pooling::Paired),
                    ("arbitrary", Pooling::Arbitrary),
                ],
            )?;
        }
        if let Some(t) = &r.udp_timeout {
            c.udp_timeout = self.duration(t)?;
        }
        if let Some(b) = r.inbound_refresh {
            c.inbound_refresh = b;
        }
        if let Some(b) = r.hairpinning {
            c.hairpinning = b;
        }
        if let Some(t) = &r.tcp_established_timeout {
            c.tcp.established = self.duration(t)?;
        }
        if let Some(t) = &r.tcp_transitory_timeout {
            c.tcp.transitory = self.duration(t)?;
        }
        if let Some(m) = r.max_mappings {
            c.max_mappings = m;
        }
        Ok(NatImpl::Model(c))
    }

    fn expectation(&self, r: &RawExpect, span: Range<usize>) -> Res<Expectation> {
        let behavior = |s: &Option<Spanned<String>>, what: &str| -> Res<Option<String>> {
            match s {
                Some(s) => {
                    self.word(s, what, BEHAVIORS)?;
                    Ok(Some(s.get_ref().clone()))
                }
                None => Ok(None),
            }
        };
        if let Some(t) = r.binding_lifetime_s {
            if !(t.is_finite() && t > 0.0) {
                return Err(self.err(
                    span,
                    format!("binding_lifetime_s = {t} must be a positive number of seconds"),
                ));
            }
        }
        Ok(Expectation {
            nat: r.nat,
            udp_blocked: r.udp_blocked,
            mapping: behavior(&r.mapping, "mapping")?,
            filtering: behavior(&r.filtering, "filtering")?,
            hairpinning: r.hairpinning,
            port_preservation: r.port_preservation,
            binding_lifetime_s: r.binding_lifetime_s,
            legacy: r.legacy.clone(),
        })
    }
}

const BEHAVIORS: &[(&str, Behavior)] = &[
    ("endpoint-independent", Behavior::EndpointIndependent),
    ("address-dependent", Behavior::AddressDependent),
    (
        "address-and-port-dependent",
        Behavior::AddressAndPortDependent,
    ),
];

/// The RFC 4787 word for a behaviour.
pub fn behavior_word(b: Behavior) -> &'static str {
    BEHAVIORS
        .iter()
        .find(|(_, v)| *v == b)
        .map_or("unknown", |(w, _)| w)
}

fn overlaps(a: &Ipv4Prefix, b: &Ipv4Prefix) -> bool {
    a.contains(b.addr) || b.contains(a.addr)
}

fn fmt_prefixes(p: &[Ipv4Prefix]) -> String {
    p.iter()
        .map(|p| format!("{}/{}", p.addr, p.len))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Linux's default ephemeral port range (net.ipv4.ip_local_port_range): natprobe's local
/// ports come from here, so a NAT can only preserve them if its range covers it.
const EPHEMERAL: (u16, u16) = (32768, 60999);

/// NAT boxes crossed going from network `from` to network `to` (innermost first), or `None`
/// when `to` is not on `from`'s way out.
fn path_to(
    nats: &[NatDef],
    gateway_of: &[Option<usize>],
    from: usize,
    to: usize,
) -> Option<Vec<usize>> {
    let mut chain = Vec::new();
    let mut net = from;
    loop {
        if net == to {
            return Some(chain);
        }
        let g = gateway_of.get(net).copied().flatten()?;
        if chain.contains(&g) {
            return None;
        }
        chain.push(g);
        net = nats.get(g)?.outside;
    }
}

fn rank(b: Behavior) -> u8 {
    match b {
        Behavior::EndpointIndependent => 0,
        Behavior::AddressDependent => 1,
        Behavior::AddressAndPortDependent => 2,
    }
}

/// What natprobe must report for a host behind `chain` (innermost first), from the boxes'
/// configuration alone. The composition rules are documented in `scenarios/README.md`:
/// - mapping: the most dependent mapping of any translating box (a mapping that depends on
///   the destination at any level depends on it end to end);
/// - filtering: the most restrictive filtering of any box, firewalls included;
/// - hairpinning: the outermost translating box hairpins, and it and every box inside it let
///   the hairpinned packet in (endpoint-independent filtering), since the hairpinned packet
///   comes from an endpoint the probe's first socket never sent to;
/// - port preservation: every translating box preserves ports, and its port range covers the
///   local ephemeral range;
/// - binding lifetime: the shortest UDP mapping timeout on the way;
/// - Linux masquerade behaves as endpoint-independent mapping with port preservation and
///   address-and-port-dependent filtering, no hairpinning; `random-fully` makes the mapping
///   address-and-port-dependent with random ports.
pub fn derive_expectation(
    nats: &[NatDef],
    chain: &[usize],
    lifetime: bool,
    rfc5780_server: bool,
) -> Expectation {
    let boxes: Vec<&NatDef> = chain.iter().filter_map(|&i| nats.get(i)).collect();
    let blocked = boxes
        .iter()
        .any(|b| matches!(&b.imp, NatImpl::Model(c) if c.mode == Mode::UdpBlocked));
    if blocked {
        return Expectation {
            udp_blocked: Some(true),
            ..Expectation::default()
        };
    }
    let mut mapping = Behavior::EndpointIndependent;
    let mut filtering = Behavior::EndpointIndependent;
    let mut preserve = true;
    let mut lifetime_s: Option<f64> = None;
    let mut translating = 0;
    for b in &boxes {
        let (m, f, p, t) = match &b.imp {
            NatImpl::Model(c) => (
                (c.mode == Mode::Nat).then_some(c.mapping),
                c.filtering,
                c.port_assignment == PortAssignment::Preserve
                    && c.port_range.0 <= EPHEMERAL.0
                    && c.port_range.1 >= EPHEMERAL.1,
                Some(c.udp_timeout.as_secs_f64()),
            ),
            NatImpl::Kernel { random_fully } => (
                Some(if *random_fully {
                    Behavior::AddressAndPortDependent
                } else {
                    Behavior::EndpointIndependent
                }),
                Behavior::AddressAndPortDependent,
                !random_fully,
                None,
            ),
        };
        if let Some(m) = m {
            translating += 1;
            if rank(m) > rank(mapping) {
                mapping = m;
            }
            preserve &= p;
        }
        if rank(f) > rank(filtering) {
            filtering = f;
        }
        if let Some(t) = t {
            lifetime_s = Some(lifetime_s.map_or(t, |l: f64| l.min(t)));
        }
    }
    let nat = translating > 0;
    let hairpinning = if nat {
        // The outermost translating box owns the mapped address the probe sends to. The
        // hairpinned packet comes from an endpoint the probe's first socket never sent to, so
        // every box up to and including that one must filter endpoint-independently for the
        // packet to arrive (the NAT model filters hairpinned packets as if they came from
        // outside, RFC 4787 section 6).
        boxes.iter().rposition(|b| b.translates()).map(|o| {
            let hairpins = match &boxes[o].imp {
                NatImpl::Model(c) => c.hairpinning,
                NatImpl::Kernel { .. } => false,
            };
            let open = boxes[..=o].iter().all(|b| match &b.imp {
                NatImpl::Model(c) => c.filtering == Behavior::EndpointIndependent,
                NatImpl::Kernel { .. } => false,
            });
            hairpins && open
        })
    } else {
        None
    };
    Expectation {
        nat: Some(nat),
        udp_blocked: Some(false),
        mapping: Some(behavior_word(mapping).to_owned()),
        filtering: rfc5780_server.then(|| behavior_word(filtering).to_owned()),
        hairpinning,
        port_preservation: nat.then_some(preserve),
        binding_lifetime_s: if lifetime && nat { lifetime_s } else { None },
        legacy: None,
    }
}

/// What the RFC 4787 oracle expects of an ICE session between a host behind `offer`'s chain
/// and one behind `answer`'s (NAT box indices, innermost first, up to the server's network),
/// by the rules of the connectivity matrices ([`crate::matrix::spec::expected_for`]). The
/// oracle models two peers whose ways out meet only on the server's network; when the chains
/// share a NAT box, the peers' path turns inside it (hairpinning, or a shortcut behind it),
/// which it does not model: then `Err` says so.
pub fn ice_expectation(
    nats: &[NatDef],
    (offer_name, offer): (&str, &[usize]),
    (answer_name, answer): (&str, &[usize]),
    turn: Turn,
) -> Result<Expected, String> {
    if let Some(shared) = offer.iter().find(|n| answer.contains(n)) {
        let name = nats.get(*shared).map_or("?", |n| n.name.as_str());
        return Err(format!(
            "not derived: both peers are behind NAT box {name} (their path turns inside it, \
             which the RFC 4787 oracle does not model)"
        ));
    }
    let levels = |chain: &[usize]| -> Vec<nat::oracle::Level> {
        chain
            .iter()
            .filter_map(|&i| nats.get(i))
            .map(crate::matrix::spec::level_of)
            .collect()
    };
    Ok(crate::matrix::spec::expected_between(
        (&format!("offer {offer_name}"), &levels(offer)),
        (&format!("answer {answer_name}"), &levels(answer)),
        turn,
    ))
}

/// Parse `150ms`, `30s`, `2m`, `1h`, `1.5s`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (num, unit) = s.split_at(split);
    let v: f64 = num.parse().ok()?;
    let secs = match unit.trim() {
        "us" => v / 1e6,
        "ms" => v / 1e3,
        "s" => v,
        "m" | "min" => v * 60.0,
        "h" => v * 3600.0,
        _ => return None,
    };
    (secs.is_finite() && (0.0..=7.0 * 86_400.0).contains(&secs))
        .then(|| Duration::from_secs_f64(secs))
}

/// Parse `500kbit`, `10mbit`, `1gbit`, `64000bit` into bits per second.
pub fn parse_rate(s: &str) -> Option<u64> {
    let s = s.trim().to_ascii_lowercase();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (num, unit) = s.split_at(split);
    let v: f64 = num.parse().ok()?;
    let mult = match unit {
        "bit" | "bps" => 1.0,
        "kbit" | "kbps" => 1e3,
        "mbit" | "mbps" => 1e6,
        "gbit" | "gbps" => 1e9,
        _ => return None,
    };
    let bps = v * mult;
    (1000.0..=1e11).contains(&bps).then_some(bps as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
[[network]]
name = "internet"
prefixes = ["203.0.113.0/24", "198.51.100.0/24"]

[[network]]
name = "home"
prefixes = ["192.168.1.0/24"]

[[host]]
name = "stun"
network = "internet"
addresses = ["203.0.113.1", "203.0.113.2"]
services = ["turnd"]

[[host]]
name = "alice"
network = "home"
addresses = ["192.168.1.10"]

[[nat]]
name = "home_nat"
inside = "home"
outside = "internet"
inside_address = "192.168.1.1"
external = ["198.51.100.10"]
"#;

    fn parse_str(text: &str) -> Result<Scenario, ScenarioError> {
        parse(Path::new("t.toml"), text)
    }

    fn error_at(text: &str) -> (Option<usize>, String) {
        let e = parse_str(text).expect_err("should be rejected");
        (e.line, e.message)
    }

    #[test]
    fn base_parses_with_defaults() {
        let s = parse_str(BASE).unwrap();
        assert_eq!(s.name, "t");
        assert_eq!(s.networks.len(), 2);
        assert_eq!(s.hosts[0].services, vec![Service::Turnd]);
        let NatImpl::Model(c) = &s.nats[0].imp else {
            panic!("model expected")
        };
        assert_eq!(c.external, vec![Ipv4Addr::new(198, 51, 100, 10)]);
    }

    #[test]
    fn mistakes_name_the_line() {
        // Unknown key (typo): toml reports the line of the key.
        let text = format!("{BASE}mapng = \"endpoint-independent\"\n");
        let (line, msg) = error_at(&text);
        assert_eq!(line, Some(BASE.lines().count() + 1), "{msg}");
        assert!(msg.contains("mapng"), "{msg}");

        // Unknown network.
        let text = BASE.replace("network = \"home\"", "network = \"hom\"");
        let (line, msg) = error_at(&text);
        assert_eq!(line, Some(18));
        assert!(msg.contains("no network named \"hom\""), "{msg}");

        // Address outside its network.
        let text = BASE.replace("192.168.1.10", "10.0.0.1");
        let (line, msg) = error_at(&text);
        assert_eq!(line, Some(19));
        assert!(msg.contains("not inside network \"home\""), "{msg}");

        // Bad behaviour word.
        let text = format!("{BASE}filtering = \"port-restricted\"\n");
        let (_, msg) = error_at(&text);
        assert!(msg.contains("is not one of endpoint-independent"), "{msg}");

        // Bad durations and rates.
        let text = format!("{BASE}udp_timeout = \"5 parsecs\"\n");
        assert!(error_at(&text).1.contains("not a duration"));
        let text = BASE.replace(
            "addresses = [\"192.168.1.10\"]",
            "addresses = [\"192.168.1.10\"]\nlink = { rate = \"fast\" }",
        );
        assert!(error_at(&text).1.contains("not a rate"));

        // Duplicate address.
        let text = BASE.replace("192.168.1.10", "192.168.1.1");
        assert!(error_at(&text).1.contains("already used by NAT home_nat"));

        // A kernel box with model keys.
        let text = format!("{BASE}kind = \"kernel-masquerade\"\nhairpinning = true\n");
        assert!(
            error_at(&text)
                .1
                .contains("hairpinning configures the NAT model")
        );

        // Probe against a host without turnd.
        let text = format!("{BASE}\n[[probe]]\nhost = \"alice\"\nserver = \"alice\"\n");
        assert!(error_at(&text).1.contains("runs no STUN server"));

        // Syntax error.
        let (line, _) = error_at("[[network]\nname = 1\n");
        assert_eq!(line, Some(1));
    }

    #[test]
    fn runtime_failures_are_caught_by_check() {
        // The model's own validation runs at check time.
        let text = format!("{BASE}udp_timeout = \"0s\"\n");
        assert!(
            error_at(&text).1.contains("udp_timeout"),
            "{}",
            error_at(&text).1
        );
        let text = format!("{BASE}port_parity = true\nport_range = [7, 7]\n");
        assert!(error_at(&text).1.contains("parity"));
        // A name from a file stem that cannot name a folder.
        let e = parse(Path::new("/tmp/...toml"), BASE).unwrap_err();
        assert!(e.message.contains("cannot name the report folder"), "{e}");
        // Overlapping prefixes on the way out, and /0.
        let text = BASE.replace("192.168.1.0/24", "0.0.0.0/0");
        assert!(error_at(&text).1.contains("would cover every address"));
        let text = BASE
            .replace("192.168.1.0/24", "203.0.113.128/25")
            .replace("192.168.1.10", "203.0.113.130")
            .replace("192.168.1.1\"", "203.0.113.129\"");
        assert!(
            error_at(&text).1.contains("overlaps"),
            "{}",
            error_at(&text).1
        );
        // A second turnd, a NaN expectation, a jitter error on its own line.
        let text = BASE.replace(
            "services = [\"turnd\"]",
            "services = [\"turnd\", \"turnd\"]",
        );
        assert!(error_at(&text).1.contains("listed twice"));
        let text = format!(
            "{BASE}\n[[probe]]\nhost = \"alice\"\nserver = \"stun\"\n[probe.expect]\n\
             binding_lifetime_s = nan\n"
        );
        assert!(error_at(&text).1.contains("positive number"));
        let text = BASE.replace(
            "addresses = [\"192.168.1.10\"]",
            "addresses = [\"192.168.1.10\"]\nlink = { jitter = \"20s\" }",
        );
        assert_eq!(error_at(&text).0, Some(20));
        // Port preservation cannot be seen when the range misses the ephemeral ports.
        let text = format!(
            "{BASE}port_range = [1024, 2047]\n\n[[probe]]\nhost = \"alice\"\nserver = \"stun\"\n"
        );
        let s = parse_str(&text).unwrap();
        assert_eq!(s.probes[0].derived.port_preservation, Some(false));
    }

    #[test]
    fn firewall_topologies_that_cannot_route_are_refused() {
        let fw = r#"
[[network]]
name = "internet"
prefixes = ["203.0.113.0/24"]
[[network]]
name = "office"
prefixes = ["198.51.100.0/24"]
[[network]]
name = "lan"
prefixes = ["192.168.1.0/24"]
[[host]]
name = "stun"
network = "internet"
addresses = ["203.0.113.1"]
services = ["turnd"]
[[host]]
name = "a"
network = "office"
addresses = ["198.51.100.20"]
[[nat]]
name = "fw"
mode = "firewall"
inside = "office"
outside = "internet"
inside_address = "198.51.100.1"
"#;
        assert!(parse_str(fw).is_ok());
        let nat_behind = format!(
            "{fw}[[nat]]\nname = \"home\"\ninside = \"lan\"\noutside = \"office\"\n\
             inside_address = \"192.168.1.1\"\nexternal = [\"198.51.100.30\"]\n"
        );
        assert!(error_at(&nat_behind).1.contains("sits behind firewall"));
        let kernel_outside = fw.replace(
            "mode = \"firewall\"\ninside = \"office\"\noutside = \"internet\"\ninside_address = \"198.51.100.1\"",
            "mode = \"firewall\"\ninside = \"office\"\noutside = \"lan\"\ninside_address = \"198.51.100.1\"",
        ) + "[[nat]]\nname = \"k\"\nkind = \"kernel-masquerade\"\ninside = \"lan\"\noutside = \"internet\"\ninside_address = \"192.168.1.1\"\nexternal = [\"203.0.113.9\"]\n";
        assert!(
            error_at(&kernel_outside)
                .1
                .contains("behind kernel NAT box"),
            "{}",
            error_at(&kernel_outside).1
        );
    }

    #[test]
    fn loops_and_second_gateways_are_refused() {
        let text = format!(
            "{BASE}\n[[nat]]\nname = \"other\"\ninside = \"home\"\noutside = \"internet\"\n\
             inside_address = \"192.168.1.2\"\nexternal = [\"198.51.100.11\"]\n"
        );
        assert!(error_at(&text).1.contains("already has a gateway"));
        let text = format!(
            "{BASE}\n[[nat]]\nname = \"back\"\ninside = \"internet\"\noutside = \"home\"\n\
             inside_address = \"203.0.113.9\"\nexternal = [\"192.168.1.99\"]\n"
        );
        assert!(error_at(&text).1.contains("loop"));
    }

    #[test]
    fn expectation_composes_nested_nats() {
        let text = r#"
[[network]]
name = "internet"
prefixes = ["203.0.113.0/24", "198.51.100.0/24"]
[[network]]
name = "carrier"
prefixes = ["100.64.0.0/24"]
[[network]]
name = "home"
prefixes = ["192.168.1.0/24"]
[[host]]
name = "stun"
network = "internet"
addresses = ["203.0.113.1", "203.0.113.2"]
services = ["turnd"]
[[nat]]
name = "cgn"
inside = "carrier"
outside = "internet"
inside_address = "100.64.0.1"
external = ["198.51.100.1"]
mapping = "address-dependent"
filtering = "endpoint-independent"
hairpinning = true
udp_timeout = "30s"
[[nat]]
name = "home_nat"
inside = "home"
outside = "carrier"
inside_address = "192.168.1.1"
external = ["100.64.0.2"]
mapping = "endpoint-independent"
filtering = "address-dependent"
udp_timeout = "20s"
[[host]]
name = "alice"
network = "home"
addresses = ["192.168.1.10"]
[[probe]]
host = "alice"
server = "stun"
lifetime = true
[probe.expect]
hairpinning = true
"#;
        let s = parse_str(text).unwrap();
        let p = &s.probes[0];
        assert_eq!(p.chain, vec![1, 0]);
        let d = &p.derived;
        assert_eq!(d.mapping.as_deref(), Some("address-dependent"));
        assert_eq!(d.filtering.as_deref(), Some("address-dependent"));
        // The CGN hairpins and filters endpoint-independently, but the home NAT's
        // address-dependent filtering drops the packet coming back from the CGN's address.
        assert_eq!(d.hairpinning, Some(false));
        assert_eq!(d.binding_lifetime_s, Some(20.0));
        // Explicit values win.
        assert_eq!(p.expected().hairpinning, Some(true));
    }

    #[test]
    fn units() {
        assert_eq!(parse_duration("150ms"), Some(Duration::from_millis(150)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("s"), None);
        assert_eq!(parse_duration("-1s"), None);
        assert_eq!(parse_rate("10mbit"), Some(10_000_000));
        assert_eq!(parse_rate("1Gbit"), Some(1_000_000_000));
        assert_eq!(parse_rate("10"), None);
    }

    /// BASE plus bob behind a symmetric NAT of his own, and a second carrier-like layout:
    /// carol behind `cgn` with dave behind `home2` inside it.
    fn ice_base() -> String {
        format!(
            "{BASE}{}",
            r#"
[[network]]
name = "home_b"
prefixes = ["192.168.2.0/24"]

[[nat]]
name = "nat_b"
preset = "symmetric"
inside = "home_b"
outside = "internet"
inside_address = "192.168.2.1"
external = ["198.51.100.20"]

[[host]]
name = "bob"
network = "home_b"
addresses = ["192.168.2.10"]

[[network]]
name = "carrier"
prefixes = ["100.64.0.0/24"]

[[network]]
name = "home_d"
prefixes = ["192.168.4.0/24"]

[[nat]]
name = "cgn"
preset = "cgnat"
inside = "carrier"
outside = "internet"
inside_address = "100.64.0.1"
external = ["198.51.100.30"]

[[nat]]
name = "home2"
preset = "port-restricted-cone"
inside = "home_d"
outside = "carrier"
inside_address = "192.168.4.1"
external = ["100.64.0.2"]

[[host]]
name = "carol"
network = "carrier"
addresses = ["100.64.0.20"]

[[host]]
name = "dave"
network = "home_d"
addresses = ["192.168.4.10"]

[[host]]
name = "plain"
network = "internet"
addresses = ["203.0.113.50"]
"#
        )
    }

    fn with_ice(body: &str) -> String {
        format!("{}\n[[ice]]\n{body}", ice_base())
    }

    #[test]
    fn ice_sessions_parse_with_defaults_and_derive_the_oracle() {
        let s = parse_str(&with_ice(
            "offer = \"alice\"\nanswer = \"bob\"\nserver = \"stun\"\nturn = \"none\"\n",
        ))
        .unwrap();
        assert_eq!(s.ice.len(), 1);
        let i = &s.ice[0];
        assert_eq!(s.hosts[i.offer].name, "alice");
        assert_eq!(s.hosts[i.answer].name, "bob");
        assert_eq!(s.hosts[i.server].name, "stun");
        assert_eq!(i.mode, IceMode::Trickle);
        assert_eq!(i.turn, Turn::None);
        assert_eq!(i.peers.label(), "icepeer/icepeer");
        assert_eq!(i.signaling_delay, Duration::from_millis(50));
        assert_eq!(i.timeout, Duration::from_secs(10));
        assert_eq!(i.expect, None);
        let names = |c: &[usize]| {
            c.iter()
                .map(|&n| s.nats[n].name.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&i.offer_chain), ["home_nat"]);
        assert_eq!(names(&i.answer_chain), ["nat_b"]);
        // BASE's home_nat is the default model (EIM/APDF): bob's per-destination checks come
        // from ports alice's filter never opened, and there is no TURN.
        let e = i.derived.as_ref().unwrap();
        assert_eq!((e.connects, e.path), (false, None), "{}", e.reason);
        assert!(e.reason.contains("offer alice"), "{}", e.reason);
        assert!(
            e.reason.contains("answer bob maps per destination"),
            "{}",
            e.reason
        );
        // A public host has no filter: bob's checks get in, from a port nobody signalled.
        let s2 = parse_str(&with_ice(
            "offer = \"plain\"\nanswer = \"bob\"\nserver = \"stun\"\nturn = \"none\"\n",
        ))
        .unwrap();
        let e = s2.ice[0].derived.as_ref().unwrap();
        assert_eq!(
            (e.connects, e.path),
            (true, Some(PathKind::Prflx)),
            "{}",
            e.reason
        );

        // Every key given.
        let s = parse_str(&with_ice(
            "offer = \"bob\"\nanswer = \"dave\"\nserver = \"stun\"\nmode = \"vanilla\"\n\
             turn = \"tcp\"\npeers = \"aioice/icepeer\"\nsignaling_delay = \"0ms\"\n\
             timeout = \"3s\"\nexpect = \"direct\"\n",
        ))
        .unwrap();
        let i = &s.ice[0];
        assert_eq!(i.mode, IceMode::Vanilla);
        assert_eq!(i.turn, Turn::Tcp);
        assert_eq!(i.peers.label(), "aioice/icepeer");
        assert_eq!(i.signaling_delay, Duration::ZERO);
        assert_eq!(i.timeout, Duration::from_secs(3));
        assert_eq!(i.expect, Some(IceExpect::Direct));
    }

    /// The derived expectation is the matrix's: the same function on the same levels.
    #[test]
    fn ice_expectation_is_the_matrix_oracle_on_the_chains() {
        // Symmetric (bob) against the port-restricted cone inside the CGN (dave): no direct
        // path; TURN decides.
        for (turn, want) in [
            ("none", (false, None)),
            ("udp", (true, Some(PathKind::Relay))),
        ] {
            let s = parse_str(&with_ice(&format!(
                "offer = \"bob\"\nanswer = \"dave\"\nserver = \"stun\"\nturn = \"{turn}\"\n"
            )))
            .unwrap();
            let i = &s.ice[0];
            let e = i.derived.as_ref().unwrap();
            assert_eq!((e.connects, e.path), want, "{}", e.reason);
            let levels = |c: &[usize]| {
                c.iter()
                    .map(|&n| crate::matrix::spec::level_of(&s.nats[n]))
                    .collect::<Vec<_>>()
            };
            let m = crate::matrix::spec::expected_for(
                &levels(&i.offer_chain),
                &levels(&i.answer_chain),
                i.turn,
            );
            assert_eq!((m.connects, m.path), (e.connects, e.path));
        }
        // Two public hosts: host candidates.
        let s = parse_str(&with_ice(
            "offer = \"plain\"\nanswer = \"stun\"\nserver = \"stun\"\n",
        ))
        .unwrap();
        let e = s.ice[0].derived.as_ref().unwrap();
        assert_eq!((e.connects, e.path), (true, Some(PathKind::Host)));
    }

    #[test]
    fn peers_behind_a_shared_nat_get_no_derived_expectation() {
        // carol sits in the carrier network, dave behind home2 inside it: both cross cgn.
        let s = parse_str(&with_ice(
            "offer = \"dave\"\nanswer = \"carol\"\nserver = \"stun\"\nexpect = \"prflx\"\n",
        ))
        .unwrap();
        let i = &s.ice[0];
        let why = i.derived.as_ref().unwrap_err();
        assert!(
            why.starts_with("not derived: both peers are behind NAT box cgn"),
            "{why}"
        );
        assert_eq!(i.expect, Some(IceExpect::Prflx));
        // The shipped double NAT scenario: alice and bob both behind the CGN.
        let s =
            load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scenarios/double_nat.toml"))
                .unwrap();
        let i = &s.ice[0];
        assert!(
            i.derived
                .as_ref()
                .is_err_and(|w| w.contains("both peers are behind NAT box cgn")),
            "{:?}",
            i.derived
        );
        assert_eq!(i.expect, Some(IceExpect::Prflx));
    }

    #[test]
    fn ice_mistakes_name_the_line() {
        let base_lines = ice_base().lines().count() + 2;
        let bad = |body: &str| {
            let (line, msg) = error_at(&with_ice(body));
            (line.map(|l| l - base_lines), msg)
        };
        let ok = "offer = \"alice\"\nanswer = \"bob\"\nserver = \"stun\"\n";
        let (line, msg) = bad(&ok.replace("\"bob\"", "\"bobby\""));
        assert_eq!(line, Some(2), "{msg}");
        assert!(msg.contains("no host named \"bobby\""), "{msg}");
        let (line, msg) = bad(&ok.replace("\"bob\"", "\"alice\""));
        assert_eq!(line, Some(2), "{msg}");
        assert!(msg.contains("needs two hosts"), "{msg}");
        let (line, msg) = bad(&ok.replace("server = \"stun\"", "server = \"plain\""));
        assert_eq!(line, Some(3), "{msg}");
        assert!(msg.contains("add services = [\"turnd\"]"), "{msg}");
        // The server must be on both peers' way out.
        let text = with_ice(&ok.replace("server = \"stun\"", "server = \"carol\"")).replace(
            "addresses = [\"100.64.0.20\"]",
            "addresses = [\"100.64.0.20\"]\nservices = [\"turnd\"]",
        );
        let (line, msg) = error_at(&text);
        // One line more before the body (carol's services): offer is on line 2.
        assert_eq!(line.map(|l| l - base_lines), Some(2), "{msg}");
        assert!(
            msg.contains("server \"carol\" is not on host \"alice\"'s way out"),
            "{msg}"
        );
        for (key, value, words) in [
            ("mode", "\"sometimes\"", "trickle, vanilla"),
            ("turn", "\"sctp\"", "none, udp, tcp"),
            ("peers", "\"libjuice\"", "icepeer/aioice"),
            ("expect", "\"fast\"", "connected, failed, host"),
            ("timeout", "\"soon\"", "duration"),
            ("timeout", "\"0.5s\"", "duration from 1000 ms"),
            ("timeout", "\"11m\"", "to 600 s"),
            ("signaling_delay", "\"11s\"", "duration"),
        ] {
            let (line, msg) = bad(&format!("{ok}{key} = {value}\n"));
            assert_eq!(line, Some(4), "{key}: {msg}");
            assert!(msg.contains(words), "{key}: {msg}");
        }
        let (line, msg) = bad(&format!("{ok}turn = \"none\"\nexpect = \"relay\"\n"));
        assert_eq!(line, Some(5), "{msg}");
        assert!(msg.contains("no relayed path"), "{msg}");
        let (line, msg) = bad(&format!("{ok}bogus = 1\n"));
        assert!(msg.contains("bogus"), "{msg} at {line:?}");
        let (_, msg) = bad("offer = \"alice\"\nserver = \"stun\"\n");
        assert!(msg.contains("answer"), "{msg}");
    }

    #[test]
    fn ice_expect_words_judge_outcomes() {
        use IceExpect as X;
        assert!(X::Failed.holds(false, None));
        assert!(!X::Failed.holds(true, Some(PathKind::Relay)));
        assert!(X::Connected.holds(true, Some(PathKind::Relay)));
        assert!(X::Direct.holds(true, Some(PathKind::Prflx)));
        assert!(!X::Direct.holds(true, Some(PathKind::Relay)));
        assert!(!X::Direct.holds(false, None));
        assert!(X::Srflx.holds(true, Some(PathKind::Srflx)));
        assert!(!X::Srflx.holds(true, Some(PathKind::Prflx)));
        assert!(!X::Relay.holds(false, Some(PathKind::Relay)));
        for (w, x) in IceExpect::WORDS {
            assert_eq!(x.as_str(), *w);
        }
    }
}
