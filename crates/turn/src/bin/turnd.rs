//! `turnd`: STUN server with full RFC 5780 NAT behaviour discovery support.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use turn::config::{self, Flags};

/// A STUN server that implements RFC 5780 (two IPs x two ports), hardened for public use.
///
/// Example (RFC 5780 on loopback):
///   turnd --listen 127.0.0.1:3478 --alt-ip 127.0.0.2 --alt-port 3479
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// TOML configuration file; command-line flags override its keys.
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(flatten)]
    flags: Flags,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
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

    let server = match turn::server::spawn(cfg.clone()) {
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
        "ready"
    );
    // One machine-readable line on stdout, for scripts and tests that asked for port 0.
    let list: Vec<String> = server
        .addresses()
        .iter()
        .map(|(_, a)| a.to_string())
        .collect();
    println!("turnd ready {}", list.join(" "));

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
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {},
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
        "shutting down"
    );
    server.shutdown();
    ExitCode::SUCCESS
}
