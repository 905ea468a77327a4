//! `turnd`'s command line, as a library function so other binaries (the simulator runs it on
//! a scenario's public host) can call it as a multi-call entry point.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::config::{self, Flags};
use clap::Parser;

/// A STUN server that implements RFC 5780 (two IPs x two ports), hardened for public use, and
/// a TURN server (RFC 8656) when credentials are configured.
///
/// Example (RFC 5780 on loopback):
///   turnd --listen 127.0.0.1:3478 --alt-ip 127.0.0.2 --alt-port 3479
///
/// Example (TURN over UDP, TCP and TLS, metrics):
///   turnd --listen 192.0.2.1:3478 --user alice:secret --realm example.org
///         --tls-listen 192.0.2.1:5349 --cert cert.pem --key key.pem --metrics 127.0.0.1:9641
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// TOML configuration file; command-line flags override its keys.
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(flatten)]
    flags: Flags,
}

/// Run the command with `args` (the first item is the program name, as in `std::env::args`).
/// Parse errors and `--help` print and exit the process, as clap does for a binary.
pub fn main<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = Cli::parse_from(args);
    let (cfg, log_format) = match config::load(&cli.flags, cli.config.as_ref()) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("turnd: {e}");
            return ExitCode::from(2);
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if log_format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }

    // Signals are registered before the server runs: registering needs file descriptors, and
    // once clients connect there may be none left (a failed registration used to end turnd).
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("turnd: {e}");
            return ExitCode::from(1);
        }
    };
    let signals = {
        use tokio::signal::unix::{SignalKind, signal};
        let _runtime = rt.enter();
        signal(SignalKind::interrupt()).and_then(|i| Ok((i, signal(SignalKind::terminate())?)))
    };
    let (mut interrupt, mut terminate) = match signals {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot register signal handlers");
            eprintln!("turnd: cannot register signal handlers: {e}");
            return ExitCode::from(1);
        }
    };

    raise_fd_limit();
    let server = match crate::server::spawn(cfg.clone()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            eprintln!("turnd: {e}");
            return ExitCode::from(1);
        }
    };
    for (l, a) in server.addresses() {
        tracing::info!(
            address = %a, ip = l.ip, port = l.port, udp = cfg.udp, tcp = cfg.tcp,
            "listening"
        );
    }
    tracing::info!(
        rfc5780 = cfg.responder.alternate.is_some(),
        rate_limit = cfg.rate_limit,
        rate_burst = cfg.rate_burst,
        max_tcp_per_source = cfg.max_tcp_per_source,
        "ready"
    );
    if let Some(t) = &cfg.turn {
        tracing::info!(
            realm = %t.realm, users = t.users.len(), rest = t.rest_secret.is_some(),
            relay_ip = ?t.relay_ip, relay_ip6 = ?t.relay_ip6,
            relay_ports = %format!("{}-{}", t.ports.start(), t.ports.end()),
            tls = ?server.tls_addr(), metrics = ?server.metrics_addr(),
            "TURN enabled"
        );
    }
    // One machine-readable line on stdout, for scripts and tests that asked for port 0:
    // the listener addresses, then `tls=ADDR` and `metrics=ADDR` when configured.
    let mut list: Vec<String> = server
        .addresses()
        .iter()
        .map(|(_, a)| a.to_string())
        .collect();
    list.extend(server.tls_addr().map(|a| format!("tls={a}")));
    list.extend(server.metrics_addr().map(|a| format!("metrics={a}")));
    println!("turnd ready {}", list.join(" "));

    rt.block_on(async {
        tokio::select! {
            _ = interrupt.recv() => {},
            _ = terminate.recv() => {},
        }
    });
    let s = server.stats();
    use std::sync::atomic::Ordering::Relaxed;
    tracing::info!(
        received = s.received.load(Relaxed),
        answered = s.answered.load(Relaxed),
        errors = s.errors.load(Relaxed),
        dropped = s.dropped.load(Relaxed),
        rate_limited = s.rate_limited.load(Relaxed),
        tcp_refused = s.tcp_refused.load(Relaxed),
        "shutting down"
    );
    let metrics = server.turn_metrics().cloned();
    // Stops listening, and each worker deletes its allocations and closes their relay sockets.
    server.shutdown();
    if let Some(m) = metrics {
        tracing::info!(
            allocations_created = m.allocations_created.load(Relaxed),
            allocations_expired = m.allocations_expired.load(Relaxed),
            allocations_deleted = m.allocations_deleted.load(Relaxed),
            packets_to_peer = m.packets_to_peer.load(Relaxed),
            packets_to_client = m.packets_to_client.load(Relaxed),
            bytes_to_peer = m.bytes_to_peer.load(Relaxed),
            bytes_to_client = m.bytes_to_client.load(Relaxed),
            auth_failures = m.auth_failures.load(Relaxed),
            "TURN final stats"
        );
    }
    ExitCode::SUCCESS
}

/// Each allocation holds a relay socket: lift the soft file limit to the hard one.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!(error = %e, "cannot raise the open file limit");
            }
        }
    }
}
