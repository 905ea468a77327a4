//! Shared helpers for natprobe's end-to-end tests.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::{IpAddr, SocketAddr};
use std::process::{Command, Output};

use turn::binding::ResponderConfig;
use turn::server::{RunningServer, ServerConfig};

/// Start turnd in-process on `ip` (port chosen free), optionally with an alternate IP.
pub(crate) fn turnd(ip: &str, alt: Option<&str>, tcp: bool) -> RunningServer {
    let primary = SocketAddr::new(ip.parse().unwrap(), 0);
    let alternate = alt.map(|a| (a.parse::<IpAddr>().unwrap(), 0));
    let mut cfg = ServerConfig::new(ResponderConfig::new(primary, alternate));
    cfg.rate_limit = 0;
    cfg.tcp = tcp;
    cfg.workers = 1;
    turn::server::spawn(cfg).unwrap()
}

/// Run natprobe with arguments; returns the process output.
pub(crate) fn natprobe(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_natprobe"))
        .args(args)
        .output()
        .unwrap()
}

/// Run `natprobe --json` and parse stdout.
pub(crate) fn natprobe_json(args: &[&str]) -> (i32, serde_json::Value) {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    let out = natprobe(&a);
    let code = out.status.code().unwrap_or(-1);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "natprobe printed no JSON ({e}); exit {code}; stdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (code, v)
}

/// A UDP port on 127.0.0.1 that nothing listens on (bound, read, released).
pub(crate) fn dead_udp_port() -> u16 {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap().port()
}
