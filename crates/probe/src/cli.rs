//! `natprobe`'s command line, as a library function so other binaries (the simulator runs
//! it inside network namespaces) can call it as a multi-call entry point.

use std::process::ExitCode;
use std::time::Duration;

use crate::run::{Family, ProbeConfig};
use clap::Parser;
use stun::transaction::RetransmitConfig;

/// Classify the NAT in front of this machine (RFC 5780 tests, RFC 4787 words).
///
/// With no SERVER, a built-in list of public RFC 5780 servers is tried, plus a plain server
/// for a cross-check. Exit status: 0 classified, 2 bad usage, 3 no usable server answered.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// STUN servers (host, host:port, ip:port, [v6]:port). The first RFC 5780 server that
    /// answers runs the full tests; the others are used to cross-check the mapping.
    #[arg(value_name = "SERVER")]
    servers: Vec<String>,
    /// IPv4 only.
    #[arg(short = '4', conflicts_with = "ipv6")]
    ipv4: bool,
    /// IPv6 only.
    #[arg(short = '6')]
    ipv6: bool,
    /// Run the mapping tests over TCP (filtering and lifetime are UDP-only, RFC 5780 §3).
    #[arg(long)]
    tcp: bool,
    /// Also measure the binding lifetime (RFC 5780 §4.6; takes minutes).
    #[arg(long)]
    lifetime: bool,
    /// Longest binding lifetime tried, in seconds (1-86400).
    #[arg(long, default_value_t = 300, value_name = "SECS",
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    lifetime_max: u64,
    /// Lifetime resolution, in seconds (0.1-3600).
    #[arg(long, default_value_t = 1.0, value_name = "SECS")]
    lifetime_resolution: f64,
    /// Lift the RFC 5780 §5 pacing (10 new transactions/s); only for your own server.
    #[arg(long)]
    fast: bool,
    /// Initial retransmission timeout in milliseconds (RFC 8489 RTO; 1-60000).
    #[arg(long, default_value_t = 100, value_name = "MS",
          value_parser = clap::value_parser!(u64).range(1..=60_000))]
    rto: u64,
    /// Requests sent per transaction (RFC 8489 Rc; 1-20).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=20))]
    rc: u32,
    /// Wait after the last request, in RTOs (RFC 8489 Rm; 1-100).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=100))]
    rm: u32,
    /// Use the RFC 8489 default retransmissions (RTO 500 ms, Rc 7, Rm 16) for slow paths.
    #[arg(long, conflicts_with_all = ["rto", "rc", "rm"])]
    rfc_timers: bool,
    /// Bind this local IP instead of the one the kernel would pick.
    #[arg(long, value_name = "IP")]
    bind: Option<std::net::IpAddr>,
    /// Print the documented JSON report instead of tables.
    #[arg(long)]
    json: bool,
}

/// Run the command with `args` (the first item is the program name, as in `std::env::args`).
/// Parse errors and `--help` print and exit the process, as clap does for a binary.
pub fn main<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = Cli::parse_from(args);
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    if !(0.1..=3600.0).contains(&cli.lifetime_resolution) {
        eprintln!("natprobe: --lifetime-resolution must be between 0.1 and 3600 seconds");
        return ExitCode::from(2);
    }
    let servers = if cli.servers.is_empty() {
        crate::DEFAULT_RFC5780_SERVERS
            .iter()
            .chain(crate::DEFAULT_PLAIN_SERVERS)
            .map(|s| (*s).to_owned())
            .collect()
    } else {
        cli.servers.clone()
    };
    let cfg = ProbeConfig {
        servers,
        family: if cli.ipv4 {
            Family::V4
        } else if cli.ipv6 {
            Family::V6
        } else {
            Family::Any
        },
        tcp: cli.tcp,
        lifetime: cli.lifetime,
        lifetime_max: Duration::from_secs(cli.lifetime_max),
        lifetime_resolution: Duration::from_secs_f64(cli.lifetime_resolution),
        fast: cli.fast,
        retransmit: if cli.rfc_timers {
            RetransmitConfig::RFC8489
        } else {
            RetransmitConfig {
                rto: Duration::from_millis(cli.rto),
                rc: cli.rc,
                rm: cli.rm,
            }
        },
        bind: cli.bind,
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("natprobe: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let report = match rt.block_on(crate::run::run(&cfg)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("natprobe: {e}");
            return ExitCode::from(3);
        }
    };
    if cli.json {
        match serde_json::to_string_pretty(&report) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("natprobe: cannot encode JSON: {e}");
                return ExitCode::from(1);
            }
        }
    } else {
        print!("{}", crate::report::render(&report));
    }
    if report.usable() {
        ExitCode::SUCCESS
    } else if report.servers.iter().any(|s| s.answered_with_error()) {
        eprintln!(
            "natprobe: the servers answered only with errors ({}); see each server's error, \
             and try other servers",
            cfg.servers.join(", ")
        );
        ExitCode::from(3)
    } else if cli.tcp {
        eprintln!(
            "natprobe: no server answered over TCP ({}). TCP may be blocked towards them, or \
             they do not serve STUN over TCP: try without --tcp, or other servers",
            cfg.servers.join(", ")
        );
        ExitCode::from(3)
    } else {
        eprintln!(
            "natprobe: no server answered ({}). UDP may be blocked on this network: try --tcp, \
             another network, or your own server (turnd --listen IP:3478 --alt-ip IP2)",
            cfg.servers.join(", ")
        );
        ExitCode::from(3)
    }
}
