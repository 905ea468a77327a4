//! `turnd` configuration: command-line flags, optionally on top of a TOML file.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::binding::ResponderConfig;
use crate::server::{ServerConfig, check_announceable};

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
}

/// Merge flags over the file into a server config. Returns the config and the log format.
pub fn merge(flags: &Flags, file: FileConfig) -> Result<(ServerConfig, String), String> {
    let listen = flags
        .listen
        .or(file.listen)
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 3478)));
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
