//! `turnd` configuration: command-line flags, optionally on top of a TOML file.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::binding::ResponderConfig;
use crate::relay::Cidr;
use crate::server::{ServerConfig, TlsConfig, TurnConfig, check_announceable};

/// The TOML file. Every key is optional; flags given on the command line win.
///
/// ```toml
/// listen = "192.0.2.1:3478"   # primary address and port (A1, P1)
/// alt_ip = "192.0.2.2"        # alternate IP (A2): enables RFC 5780
/// alt_port = 3479             # alternate port (P2)
/// udp = true
/// tcp = true
/// software = "natscope turnd"
/// rate_limit = 100            # packets per second per source (0 = off)
/// rate_burst = 200
/// max_padding = 1200
/// amplification = 3
/// workers = 0                 # UDP threads per address, 0 = one per core
/// max_tcp_connections = 1024
/// max_tcp_per_source = 16     # per IPv4 address or IPv6 /64 (0 = no per-source cap)
/// tcp_idle_timeout_s = 30
/// udp_io = "gso"              # gso | batch | simple: UDP socket calls (fall back by themselves)
/// log_format = "text"         # or "json"
/// # TURN (enabled by users, users_file or auth_secret)
/// realm = "example.org"
/// users = ["alice:secret"]
/// users_file = "/etc/turnd/users"   # one name:password per line, # comments
/// auth_secret = "shared-secret"     # REST API ephemeral credentials (expiry:user)
/// nonce_lifetime_s = 600
/// relay_ip = "192.0.2.1"            # default: the --listen IP
/// relay_ip6 = "2001:db8::1"
/// relay_ports = "49152-65535"
/// allow_peers = ["198.51.100.0/24"] # CIDR; checked before deny_peers and the defaults
/// deny_peers = ["203.0.113.0/24"]
/// deny_private_peers = true         # loopback, RFC 1918, 100.64/10, link-local, ULA...
/// user_quota = 10                   # allocations per user (0 = no limit; default 10)
/// total_quota = 10000               # allocations in all (0 = no limit; default 10000)
/// max_lifetime_s = 3600
/// max_permissions = 64              # per allocation
/// max_channels = 64                 # per allocation
/// bandwidth = 0                     # bytes/s per allocation and direction (0 = no cap)
/// tls_listen = "192.0.2.1:5349"
/// cert = "/etc/turnd/cert.pem"
/// key = "/etc/turnd/key.pem"
/// metrics = "127.0.0.1:9641"
/// ```
#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Primary address.
    pub listen: Option<SocketAddr>,
    /// Alternate IP.
    pub alt_ip: Option<IpAddr>,
    /// Alternate port.
    pub alt_port: Option<u16>,
    /// Serve UDP.
    pub udp: Option<bool>,
    /// Serve TCP.
    pub tcp: Option<bool>,
    /// SOFTWARE value; empty string to omit.
    pub software: Option<String>,
    /// Per-source rate.
    pub rate_limit: Option<u32>,
    /// Per-source burst.
    pub rate_burst: Option<u32>,
    /// PADDING cap.
    pub max_padding: Option<usize>,
    /// Amplification bound.
    pub amplification: Option<usize>,
    /// UDP workers per address.
    pub workers: Option<usize>,
    /// Most TCP connections.
    pub max_tcp_connections: Option<usize>,
    /// Most TCP connections per source.
    pub max_tcp_per_source: Option<usize>,
    /// TCP idle timeout in seconds.
    pub tcp_idle_timeout_s: Option<u64>,
    /// "text" or "json".
    pub log_format: Option<String>,
    /// "gso", "batch" or "simple".
    pub udp_io: Option<String>,
    /// REALM.
    pub realm: Option<String>,
    /// Users, `name:password`.
    pub users: Option<Vec<String>>,
    /// File of `name:password` lines.
    pub users_file: Option<PathBuf>,
    /// REST API secret.
    pub auth_secret: Option<String>,
    /// Nonce lifetime in seconds.
    pub nonce_lifetime_s: Option<u64>,
    /// IPv4 (or only) relay address.
    pub relay_ip: Option<IpAddr>,
    /// IPv6 relay address.
    pub relay_ip6: Option<IpAddr>,
    /// "first-last".
    pub relay_ports: Option<String>,
    /// Allowed peer prefixes.
    pub allow_peers: Option<Vec<String>>,
    /// Denied peer prefixes.
    pub deny_peers: Option<Vec<String>>,
    /// Deny internal peer ranges by default.
    pub deny_private_peers: Option<bool>,
    /// Allocations per user.
    pub user_quota: Option<usize>,
    /// Allocations in total.
    pub total_quota: Option<usize>,
    /// Longest allocation lifetime.
    pub max_lifetime_s: Option<u64>,
    /// Permissions per allocation.
    pub max_permissions: Option<usize>,
    /// Channels per allocation.
    pub max_channels: Option<usize>,
    /// Bytes per second per allocation and direction.
    pub bandwidth: Option<u64>,
    /// TLS listening address.
    pub tls_listen: Option<SocketAddr>,
    /// Certificate PEM.
    pub cert: Option<PathBuf>,
    /// Key PEM.
    pub key: Option<PathBuf>,
    /// Metrics endpoint.
    pub metrics: Option<SocketAddr>,
}

/// Read and parse a TOML file; errors name the file and the line.
pub fn read_file(path: &Path) -> Result<FileConfig, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| {
        let line = e.span().map(|s| {
            text.as_bytes()[..s.start.min(text.len())]
                .iter()
                .filter(|&&b| b == b'\n')
                .count()
                + 1
        });
        match line {
            Some(l) => format!("{}:{l}: {}", path.display(), e.message()),
            None => format!("{}: {}", path.display(), e.message()),
        }
    })
}

/// Flags, as the binary parses them (kept here so tests can build them).
#[derive(Debug, Default, Clone, PartialEq, Eq, clap::Args)]
pub struct Flags {
    /// Primary listening address (A1:P1). Port 0 picks a free port pair.
    #[arg(long, value_name = "IP:PORT")]
    pub listen: Option<SocketAddr>,
    /// Alternate IP (A2); with it turnd is a full RFC 5780 server.
    #[arg(long, value_name = "IP")]
    pub alt_ip: Option<IpAddr>,
    /// Alternate port (P2); default primary port + 1.
    #[arg(long, value_name = "PORT")]
    pub alt_port: Option<u16>,
    /// Do not serve UDP.
    #[arg(long)]
    pub no_udp: bool,
    /// Do not serve TCP.
    #[arg(long)]
    pub no_tcp: bool,
    /// SOFTWARE attribute ("" to omit).
    #[arg(long)]
    pub software: Option<String>,
    /// Packets per second answered per source (IPv4 address or IPv6 /64); 0 disables.
    #[arg(long, value_name = "PPS")]
    pub rate_limit: Option<u32>,
    /// Burst allowed per source.
    #[arg(long)]
    pub rate_burst: Option<u32>,
    /// Largest PADDING echoed back.
    #[arg(long, value_name = "BYTES")]
    pub max_padding: Option<usize>,
    /// Largest response/request size ratio on the wire.
    #[arg(long)]
    pub amplification: Option<usize>,
    /// UDP worker threads per address (0 = one per core).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Most simultaneous TCP connections from one source (IPv4 address or IPv6 /64); 0 lifts
    /// the per-source cap. Default 16.
    #[arg(long, value_name = "N")]
    pub max_tcp_per_source: Option<usize>,
    /// Log format: text or json.
    #[arg(long, value_parser = ["text", "json"])]
    pub log_format: Option<String>,
    /// UDP socket calls: gso (recvmmsg/sendmmsg + UDP GSO), batch (no GSO) or simple (one
    /// call per datagram). Each falls back to the next if the kernel refuses it.
    #[arg(long, value_parser = ["gso", "batch", "simple"])]
    pub udp_io: Option<String>,

    /// TURN user `name:password` (repeatable). Users or --auth-secret turn TURN on.
    #[arg(long = "user", value_name = "NAME:PASSWORD", help_heading = "TURN")]
    pub users: Vec<String>,
    /// File with one `name:password` per line (`#` starts a comment).
    #[arg(long, value_name = "FILE", help_heading = "TURN")]
    pub users_file: Option<PathBuf>,
    /// Shared secret of REST API ephemeral credentials: username `expiry:user`, password
    /// base64(HMAC-SHA1(secret, username)); expired usernames are refused.
    #[arg(long, value_name = "SECRET", help_heading = "TURN")]
    pub auth_secret: Option<String>,
    /// REALM (default "natscope").
    #[arg(long, help_heading = "TURN")]
    pub realm: Option<String>,
    /// Nonce lifetime in seconds (then 438 Stale Nonce); default 600.
    #[arg(long, value_name = "SECS", help_heading = "TURN")]
    pub nonce_lifetime: Option<u64>,
    /// Relay address (default: the --listen IP, which must then be concrete).
    #[arg(long, value_name = "IP", help_heading = "TURN")]
    pub relay_ip: Option<IpAddr>,
    /// IPv6 relay address (enables REQUESTED-ADDRESS-FAMILY IPv6).
    #[arg(long, value_name = "IP", help_heading = "TURN")]
    pub relay_ip6: Option<IpAddr>,
    /// Relay port range (default 49152-65535).
    #[arg(long, value_name = "FIRST-LAST", help_heading = "TURN")]
    pub relay_ports: Option<String>,
    /// Allow peers in this prefix (repeatable; checked before the deny rules).
    #[arg(long = "allow-peer", value_name = "CIDR", help_heading = "TURN")]
    pub allow_peers: Vec<String>,
    /// Deny peers in this prefix (repeatable).
    #[arg(long = "deny-peer", value_name = "CIDR", help_heading = "TURN")]
    pub deny_peers: Vec<String>,
    /// Do not deny loopback, private (RFC 1918, 100.64/10, ULA), link-local and other internal
    /// peers by default. turnd's own service addresses stay denied.
    #[arg(long, help_heading = "TURN")]
    pub allow_private_peers: bool,
    /// Allocations per user (0 = no limit; default 10). A REST credential `expiry:user`
    /// counts for `user`, whatever its expiry.
    #[arg(long, value_name = "N", help_heading = "TURN")]
    pub user_quota: Option<usize>,
    /// Allocations in total (0 = no limit; default 10000).
    #[arg(long, value_name = "N", help_heading = "TURN")]
    pub total_quota: Option<usize>,
    /// Longest allocation lifetime in seconds (default 3600).
    #[arg(long, value_name = "SECS", help_heading = "TURN")]
    pub max_lifetime: Option<u64>,
    /// Bandwidth cap per allocation and direction, bytes per second (0 = none).
    #[arg(long, value_name = "BYTES", help_heading = "TURN")]
    pub bandwidth: Option<u64>,
    /// TLS listening address (TURN over TLS); needs --cert and --key.
    #[arg(long, value_name = "IP:PORT", help_heading = "TURN")]
    pub tls_listen: Option<SocketAddr>,
    /// TLS certificate chain (PEM).
    #[arg(long, value_name = "FILE", help_heading = "TURN")]
    pub cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, value_name = "FILE", help_heading = "TURN")]
    pub key: Option<PathBuf>,
    /// Prometheus metrics endpoint: HTTP GET /metrics on this address.
    #[arg(long, value_name = "IP:PORT")]
    pub metrics: Option<SocketAddr>,
}

/// `user:password` pairs from a users file; errors name the line.
fn read_users(path: &Path) -> Result<Vec<(String, String)>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read users file {}: {e}", path.display()))?;
    let mut out = vec![];
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        out.push(parse_user(line).map_err(|e| format!("{}:{}: {e}", path.display(), i + 1))?);
    }
    Ok(out)
}

fn parse_user(s: &str) -> Result<(String, String), String> {
    match s.split_once(':') {
        Some((u, p)) if !u.is_empty() && !p.is_empty() => Ok((u.to_owned(), p.to_owned())),
        _ => Err(format!("user must be name:password, not {s:?}")),
    }
}

fn parse_ports(s: &str) -> Result<std::ops::RangeInclusive<u16>, String> {
    let bad = || format!("relay ports must be FIRST-LAST (like 49152-65535), not {s:?}");
    let (a, b) = s.split_once('-').ok_or_else(bad)?;
    let a: u16 = a.trim().parse().map_err(|_| bad())?;
    let b: u16 = b.trim().parse().map_err(|_| bad())?;
    if a == 0 || a > b {
        return Err(bad());
    }
    Ok(a..=b)
}

/// A relay port range must not contain a port turnd listens on at a relay IP (or a wildcard):
/// relay sockets would fail to bind there, and the peer policy must never take a service
/// port for a relay.
fn check_relay_ports(t: &TurnConfig, own: &[(&str, SocketAddr)]) -> Result<(), String> {
    let relay_ips: Vec<IpAddr> = t.relay_ip.into_iter().chain(t.relay_ip6).collect();
    for (what, a) in own {
        let shared_ip = a.ip().is_unspecified() || relay_ips.contains(&a.ip());
        if a.port() != 0 && shared_ip && t.ports.contains(&a.port()) {
            return Err(format!(
                "relay ports {}-{} contain the {what} port {}: choose a relay range without \
                 turnd's own ports",
                t.ports.start(),
                t.ports.end(),
                a.port()
            ));
        }
    }
    Ok(())
}

/// The TURN part of the config, if TURN is enabled.
fn merge_turn(
    flags: &Flags,
    file: &FileConfig,
    listen: SocketAddr,
) -> Result<Option<TurnConfig>, String> {
    let mut users = vec![];
    for u in flags.users.iter().chain(file.users.iter().flatten()) {
        users.push(parse_user(u)?);
    }
    if let Some(p) = flags.users_file.as_ref().or(file.users_file.as_ref()) {
        users.extend(read_users(p)?);
    }
    let secret = flags.auth_secret.clone().or(file.auth_secret.clone());
    if users.is_empty() && secret.is_none() {
        return Ok(None);
    }
    let mut t = TurnConfig::new();
    t.users = users;
    t.rest_secret = secret;
    if let Some(r) = flags.realm.clone().or(file.realm.clone()) {
        t.realm = r;
    }
    if let Some(n) = flags.nonce_lifetime.or(file.nonce_lifetime_s) {
        if n == 0 {
            return Err("nonce lifetime must be at least 1 second".into());
        }
        t.nonce_lifetime = Duration::from_secs(n);
    }
    let relay_ip = match flags.relay_ip.or(file.relay_ip) {
        Some(ip) => ip,
        None if !listen.ip().is_unspecified() => listen.ip(),
        None => {
            return Err(
                "TURN needs a relay address: pass --relay-ip (the --listen IP is a wildcard)"
                    .into(),
            );
        }
    };
    if relay_ip.is_unspecified() {
        return Err("--relay-ip must be a concrete address".into());
    }
    let relay_ip6 = flags.relay_ip6.or(file.relay_ip6);
    match (relay_ip, relay_ip6) {
        (IpAddr::V4(_), Some(IpAddr::V6(_)) | None) => {
            t.relay_ip = Some(relay_ip);
            t.relay_ip6 = relay_ip6;
        }
        (IpAddr::V6(_), None) => t.relay_ip6 = Some(relay_ip),
        _ => return Err("--relay-ip6 must be an IPv6 address next to an IPv4 --relay-ip".into()),
    }
    if let Some(r) = flags.relay_ports.as_deref().or(file.relay_ports.as_deref()) {
        t.ports = parse_ports(r)?;
    }
    let cidrs =
        |v: &mut Vec<Cidr>, items: &mut dyn Iterator<Item = &String>| -> Result<(), String> {
            for c in items {
                v.push(c.parse()?);
            }
            Ok(())
        };
    cidrs(
        &mut t.allow,
        &mut flags
            .allow_peers
            .iter()
            .chain(file.allow_peers.iter().flatten()),
    )?;
    cidrs(
        &mut t.deny,
        &mut flags
            .deny_peers
            .iter()
            .chain(file.deny_peers.iter().flatten()),
    )?;
    t.deny_defaults = !flags.allow_private_peers && file.deny_private_peers.unwrap_or(true);
    if let Some(q) = flags.user_quota.or(file.user_quota) {
        t.user_quota = q;
    }
    if let Some(q) = flags.total_quota.or(file.total_quota) {
        t.total_quota = q;
    }
    if let Some(m) = flags.max_lifetime.or(file.max_lifetime_s) {
        if m < 60 {
            return Err("max lifetime must be at least 60 seconds".into());
        }
        t.relay.max_lifetime = Duration::from_secs(m);
        t.relay.default_lifetime = t.relay.default_lifetime.min(t.relay.max_lifetime);
    }
    if let Some(m) = file.max_permissions {
        t.relay.max_permissions = m;
    }
    if let Some(m) = file.max_channels {
        t.relay.max_channels = m.min(0x1000);
    }
    if let Some(b) = flags.bandwidth.or(file.bandwidth) {
        t.relay.bandwidth = (b > 0).then_some(b);
    }
    Ok(Some(t))
}

/// Merge flags over the file into a server config. Returns the config and the log format.
pub fn merge(flags: &Flags, file: FileConfig) -> Result<(ServerConfig, String), String> {
    let listen = flags
        .listen
        .or(file.listen)
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 3478)));
    let turn = merge_turn(flags, &file, listen)?;
    let metrics = flags.metrics.or(file.metrics);
    let tls_parts = (
        flags.tls_listen.or(file.tls_listen),
        flags.cert.clone().or(file.cert.clone()),
        flags.key.clone().or(file.key.clone()),
    );
    let alt_ip = flags.alt_ip.or(file.alt_ip);
    let alternate = match alt_ip {
        Some(ip) => {
            check_announceable(listen.ip())?;
            check_announceable(ip)?;
            if ip == listen.ip() {
                return Err("--alt-ip must differ from the primary IP".into());
            }
            if ip.is_ipv4() != listen.is_ipv4() {
                return Err("--alt-ip must be of the same family as --listen".into());
            }
            let port = match flags.alt_port.or(file.alt_port) {
                Some(p) => p,
                None if listen.port() == 0 => 0,
                None => listen
                    .port()
                    .checked_add(1)
                    .ok_or("primary port 65535 leaves no room for --alt-port")?,
            };
            if port == listen.port() && port != 0 {
                return Err("--alt-port must differ from the primary port".into());
            }
            Some((ip, port))
        }
        None if flags.alt_port.or(file.alt_port).is_some() => {
            return Err("--alt-port needs --alt-ip (RFC 5780 needs two IPs and two ports)".into());
        }
        None => None,
    };
    let mut responder = ResponderConfig::new(listen, alternate);
    if let Some(s) = flags.software.clone().or(file.software) {
        responder.software = (!s.is_empty()).then_some(s);
    }
    if let Some(p) = flags.max_padding.or(file.max_padding) {
        responder.max_padding = p.min(1400);
    }
    if let Some(a) = flags.amplification.or(file.amplification) {
        if a == 0 {
            return Err("--amplification must be at least 1".into());
        }
        responder.amplification = a;
    }
    let mut cfg = ServerConfig::new(responder);
    cfg.udp = !flags.no_udp && file.udp.unwrap_or(true);
    cfg.tcp = !flags.no_tcp && file.tcp.unwrap_or(true);
    if !cfg.udp && !cfg.tcp {
        return Err("nothing to serve: both UDP and TCP are disabled".into());
    }
    if let Some(r) = flags.rate_limit.or(file.rate_limit) {
        cfg.rate_limit = r;
    }
    if let Some(b) = flags.rate_burst.or(file.rate_burst) {
        cfg.rate_burst = b;
    }
    if let Some(w) = flags.workers.or(file.workers) {
        cfg.workers = w;
    }
    if let Some(io) = flags.udp_io.clone().or(file.udp_io) {
        cfg.udp_io = io.parse()?;
    }
    if let Some(m) = file.max_tcp_connections {
        cfg.max_tcp_connections = m;
    }
    if let Some(m) = flags.max_tcp_per_source.or(file.max_tcp_per_source) {
        cfg.max_tcp_per_source = m;
    }
    if let Some(s) = file.tcp_idle_timeout_s {
        cfg.tcp_idle_timeout = Duration::from_secs(s);
    }
    if let Some(t) = &turn {
        let mut own = vec![("--listen", listen)];
        if let Some((ip, port)) = alternate {
            own.push(("--alt-ip/--alt-port", SocketAddr::new(ip, port)));
            own.push(("--alt-port", SocketAddr::new(listen.ip(), port)));
            own.push(("--alt-ip", SocketAddr::new(ip, listen.port())));
        }
        own.extend(tls_parts.0.map(|a| ("--tls-listen", a)));
        own.extend(metrics.map(|a| ("--metrics", a)));
        check_relay_ports(t, &own)?;
    }
    cfg.turn = turn;
    cfg.metrics = metrics;
    cfg.tls = match tls_parts {
        (Some(listen), Some(cert), Some(key)) => {
            if cfg.turn.is_none() {
                return Err("TLS serves TURN: configure users or an auth secret too".into());
            }
            Some(TlsConfig { listen, cert, key })
        }
        (Some(_), _, _) => return Err("--tls-listen needs --cert and --key".into()),
        (None, None, None) => None,
        (None, _, _) => return Err("--cert and --key need --tls-listen".into()),
    };
    let log = flags
        .log_format
        .clone()
        .or(file.log_format)
        .unwrap_or_else(|| "text".into());
    if log != "text" && log != "json" {
        return Err(format!(
            "log_format must be \"text\" or \"json\", not {log:?}"
        ));
    }
    Ok((cfg, log))
}

/// Load flags plus an optional file.
pub fn load(flags: &Flags, file: Option<&PathBuf>) -> Result<(ServerConfig, String), String> {
    let f = match file {
        Some(p) => read_file(p)?,
        None => FileConfig::default(),
    };
    merge(flags, f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_file_and_alt_port_defaults_to_plus_one() {
        let file: FileConfig = toml::from_str(
            "listen = \"192.0.2.1:3478\"\nalt_ip = \"192.0.2.2\"\nrate_limit = 5\ntcp = false",
        )
        .unwrap();
        let flags = Flags {
            rate_limit: Some(7),
            ..Default::default()
        };
        let (cfg, log) = merge(&flags, file).unwrap();
        assert_eq!(cfg.rate_limit, 7);
        assert!(!cfg.tcp && cfg.udp);
        assert_eq!(
            cfg.responder.alternate,
            Some(("192.0.2.2".parse().unwrap(), 3479))
        );
        assert_eq!(log, "text");
    }

    #[test]
    fn max_tcp_per_source_from_file_and_flag() {
        let (cfg, _) = merge(&Flags::default(), FileConfig::default()).unwrap();
        assert_eq!(cfg.max_tcp_per_source, 16, "default");
        let file = || toml::from_str::<FileConfig>("max_tcp_per_source = 4").unwrap();
        let (cfg, _) = merge(&Flags::default(), file()).unwrap();
        assert_eq!(cfg.max_tcp_per_source, 4);
        let flags = Flags {
            max_tcp_per_source: Some(0),
            ..Default::default()
        };
        let (cfg, _) = merge(&flags, file()).unwrap();
        assert_eq!(cfg.max_tcp_per_source, 0, "the flag wins");
    }

    #[test]
    fn bad_configs_are_explained() {
        let f = |s: &str| merge(&Flags::default(), toml::from_str(s).unwrap()).unwrap_err();
        assert!(f("listen = \"0.0.0.0:3478\"\nalt_ip = \"192.0.2.2\"").contains("concrete IP"));
        assert!(f("listen = \"192.0.2.1:3478\"\nalt_ip = \"192.0.2.1\"").contains("differ"));
        assert!(f("alt_port = 4000").contains("needs --alt-ip"));
        assert!(f("udp = false\ntcp = false").contains("nothing to serve"));
        assert!(f("listen = \"192.0.2.1:3478\"\nalt_ip = \"2001:db8::1\"").contains("family"));
    }

    #[test]
    fn turn_is_off_without_credentials_and_configured_from_file_and_flags() {
        let (cfg, _) = merge(&Flags::default(), FileConfig::default()).unwrap();
        assert!(cfg.turn.is_none(), "Binding-only by default");
        let file: FileConfig = toml::from_str(
            "listen = \"192.0.2.1:3478\"\nusers = [\"alice:pw\"]\nrealm = \"ex.org\"\n\
             relay_ports = \"50000-50100\"\nallow_peers = [\"10.0.0.0/8\"]\n\
             user_quota = 3\nmax_channels = 9999\nbandwidth = 1000\nmetrics = \"127.0.0.1:9641\"",
        )
        .unwrap();
        let flags = Flags {
            users: vec!["bob:pw2".into()],
            deny_peers: vec!["198.51.100.0/24".into()],
            total_quota: Some(50),
            ..Default::default()
        };
        let (cfg, _) = merge(&flags, file).unwrap();
        let t = cfg.turn.unwrap();
        assert_eq!(
            t.users,
            vec![("bob".into(), "pw2".into()), ("alice".into(), "pw".into())]
        );
        assert_eq!(t.realm, "ex.org");
        assert_eq!(
            t.relay_ip,
            Some("192.0.2.1".parse().unwrap()),
            "the listen IP"
        );
        assert_eq!(t.ports, 50000..=50100);
        assert_eq!((t.allow.len(), t.deny.len()), (1, 1));
        assert!(t.deny_defaults);
        assert_eq!((t.user_quota, t.total_quota), (3, 50));
        assert_eq!(t.relay.max_channels, 0x1000, "capped");
        assert_eq!(t.relay.bandwidth, Some(1000));
        assert_eq!(cfg.metrics, Some("127.0.0.1:9641".parse().unwrap()));
    }

    #[test]
    fn quotas_are_on_by_default() {
        let file: FileConfig =
            toml::from_str("listen = \"192.0.2.1:3478\"\nusers = [\"a:b\"]").unwrap();
        let t = merge(&Flags::default(), file).unwrap().0.turn.unwrap();
        assert_eq!((t.user_quota, t.total_quota), (10, 10_000));
        let flags = Flags {
            user_quota: Some(0),
            ..Default::default()
        };
        let file: FileConfig =
            toml::from_str("listen = \"192.0.2.1:3478\"\nusers = [\"a:b\"]").unwrap();
        let t = merge(&flags, file).unwrap().0.turn.unwrap();
        assert_eq!((t.user_quota, t.total_quota), (0, 10_000), "0 lifts it");
    }

    #[test]
    fn bad_turn_configs_are_explained() {
        let f = |s: &str| merge(&Flags::default(), toml::from_str(s).unwrap()).unwrap_err();
        assert!(f("users = [\"alice\"]").contains("name:password"));
        assert!(
            f("users = [\"a:b\"]").contains("--relay-ip"),
            "wildcard listen"
        );
        let base = "listen = \"192.0.2.1:3478\"\nusers = [\"a:b\"]\n";
        assert!(f(&format!("{base}relay_ports = \"9-3\"")).contains("FIRST-LAST"));
        let e = f(&format!("{base}relay_ports = \"3000-4000\""));
        assert!(e.contains("--listen port 3478"), "{e}");
        let e = f(&format!(
            "{base}relay_ports = \"9000-9999\"\nmetrics = \"0.0.0.0:9641\""
        ));
        assert!(e.contains("--metrics port 9641"), "{e}");
        let e = f(&format!(
            "{base}relay_ports = \"5000-5400\"\ntls_listen = \"192.0.2.1:5349\"\n\
             cert = \"c\"\nkey = \"k\""
        ));
        assert!(e.contains("--tls-listen port 5349"), "{e}");
        let e = f(&format!(
            "{base}relay_ports = \"3479-3479\"\nalt_ip = \"192.0.2.2\""
        ));
        assert!(e.contains("port 3479"), "{e}");
        // A listener on another IP may share a port number with the relay range.
        let ok = "listen = \"192.0.2.1:3478\"\nusers = [\"a:b\"]\nrelay_ip = \"192.0.2.9\"\n\
                  relay_ports = \"3000-4000\"";
        assert!(merge(&Flags::default(), toml::from_str(ok).unwrap()).is_ok());
        assert!(f(&format!("{base}allow_peers = [\"10.0.0.0/99\"]")).contains("prefix length"));
        assert!(f(&format!("{base}tls_listen = \"192.0.2.1:5349\"")).contains("--cert"));
        assert!(
            f("listen = \"192.0.2.1:3478\"\ntls_listen = \"192.0.2.1:5349\"\ncert = \"c\"\nkey = \"k\"")
                .contains("TURN")
        );
        let dir = std::env::temp_dir().join(format!("turnd-users-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("users");
        std::fs::write(&p, "# users\nalice:pw\n\nbroken\n").unwrap();
        let flags = Flags {
            users_file: Some(p.clone()),
            relay_ip: Some("192.0.2.1".parse().unwrap()),
            ..Default::default()
        };
        let e = merge(&flags, FileConfig::default()).unwrap_err();
        assert!(e.contains("users:4"), "{e}");
        std::fs::write(&p, "# users\nalice:pw\n").unwrap();
        let (cfg, _) = merge(&flags, FileConfig::default()).unwrap();
        assert_eq!(cfg.turn.unwrap().users.len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unknown_key_reports_the_line() {
        let dir = std::env::temp_dir().join(format!("turnd-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("t.toml");
        std::fs::write(&p, "udp = true\n\nlisten_addr = \"x\"\n").unwrap();
        let e = read_file(&p).unwrap_err();
        assert!(e.contains("t.toml:3"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
