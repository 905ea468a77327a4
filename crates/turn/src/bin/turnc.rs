//! `turnc`: allocate on a TURN server, send datagrams to a peer through the relay, and measure
//! the echo. Also a tiny UDP echo peer (`--echo-peer`) so tests need no coturn peer.
//!
//! Exit status: 0 when every datagram came back (or the loss stayed within `--max-loss`), 1 when
//! more were lost or a later step failed (permission, channel), 2 on usage errors, 3 when the
//! server could not be reached or refused the allocation (its error code is in the message).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::{CommandFactory, Parser, ValueEnum, error::ErrorKind};
use serde::Serialize;
use turn::client::driver::{DriverError, TlsRoots, TlsSettings, TurnClient};
use turn::client::{AddressFamily, Config, Transport};

/// Allocate on a TURN server (RFC 8656), send datagrams to a peer through the relay and
/// measure their echo: counts sent / received / lost, round-trip times, allocation time.
///
/// The peer must echo what it receives: coturn's `turnutils_peer` does, and so does
/// `turnc --echo-peer ADDR`.
///
/// Examples:
///   turnc --echo-peer 127.0.0.1:9000 &
///   turnc 127.0.0.1:3478 -u user -p pass --peer 127.0.0.1:9000 -n 100 --json
///   turnc 127.0.0.1:5349 --transport tls --ca ca.pem -u user -p pass --peer 127.0.0.1:9000
///
/// JSON (`--json`, schema_version 1), one object on stdout:
///   schema_version (1), server, transport ("udp"|"tcp"|"tls"),
///   mode ("channel"|"send-indication"), local, mapped (or null), relayed, peer,
///   channel (number or null), allocation_ms, sent, received, lost, loss (fraction),
///   duplicates, rtt_ms ({min, median, p95, max} or null when nothing came back),
///   ok (exit status 0), error (string or null), error_code (TURN error code or null).
///   Addresses are "ip:port" ("[v6]:port"); on a failure before the allocation, the fields
///   that need it are null.
///
/// Exit status: 0 all echoed (or loss <= --max-loss), 1 more loss or a later failure,
/// 2 usage error, 3 server unreachable or allocation refused.
#[derive(Debug, Parser)]
#[command(version, about, long_about, verbatim_doc_comment)]
struct Cli {
    /// TURN server, host[:port] (port 3478, or 5349 with --transport tls).
    #[arg(required_unless_present = "echo_peer")]
    server: Option<String>,
    /// Long-term credential username.
    #[arg(long, short = 'u')]
    user: Option<String>,
    /// Long-term credential password.
    #[arg(long, short = 'p')]
    password: Option<String>,
    /// Transport to the server.
    #[arg(long, short = 't', value_enum, default_value_t = TransportArg::Udp)]
    transport: TransportArg,
    /// The echoing peer the datagrams go to (through the relay).
    #[arg(long, short = 'e')]
    peer: Option<SocketAddr>,
    /// Datagrams to send.
    #[arg(long, short = 'n', default_value_t = 10)]
    count: u32,
    /// Payload size in bytes (at least 12).
    #[arg(long, short = 's', default_value_t = 100)]
    size: usize,
    /// Interval between datagrams, in milliseconds.
    #[arg(long, short = 'i', default_value_t = 20)]
    interval: u64,
    /// Send through a bound channel (ChannelData); the default.
    #[arg(long, conflicts_with = "send_indication")]
    channel: bool,
    /// Send Send indications after CreatePermission instead of binding a channel.
    #[arg(long)]
    send_indication: bool,
    /// How long to wait for echoes after the last send, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    wait: u64,
    /// Fraction of datagrams (0..=1) that may be lost with exit status 0.
    #[arg(long, default_value_t = 0.0)]
    max_loss: f64,
    /// Print one JSON object (schema in --help) instead of text.
    #[arg(long)]
    json: bool,
    /// PEM file of CA certificates to verify the server's TLS certificate against.
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// INSECURE: accept any TLS certificate (self-signed test servers only).
    #[arg(long)]
    insecure: bool,
    /// Name to verify the certificate against and send as SNI (default: the server host).
    #[arg(long)]
    sni: Option<String>,
    /// Ask for an IPv4 relayed address (REQUESTED-ADDRESS-FAMILY).
    #[arg(short = '4', conflicts_with = "ipv6")]
    ipv4: bool,
    /// Ask for an IPv6 relayed address (REQUESTED-ADDRESS-FAMILY).
    #[arg(short = '6')]
    ipv6: bool,
    /// Allocation lifetime to ask for, in seconds.
    #[arg(long)]
    lifetime: Option<u64>,
    /// Seed for transaction IDs (default: random).
    #[arg(long)]
    seed: Option<u64>,
    /// Run as an echo peer on this UDP address instead: every datagram goes back to its sender.
    /// Prints "turnc echo-peer ready ADDR" when listening.
    #[arg(long, value_name = "LISTEN", conflicts_with_all = ["server", "peer"])]
    echo_peer: Option<SocketAddr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum TransportArg {
    Udp,
    Tcp,
    Tls,
}

impl From<TransportArg> for Transport {
    fn from(t: TransportArg) -> Transport {
        match t {
            TransportArg::Udp => Transport::Udp,
            TransportArg::Tcp => Transport::Tcp,
            TransportArg::Tls => Transport::Tls,
        }
    }
}

#[derive(Debug, Serialize)]
struct Rtt {
    min: f64,
    median: f64,
    p95: f64,
    max: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    schema_version: u32,
    server: Option<String>,
    transport: &'static str,
    mode: &'static str,
    local: Option<String>,
    mapped: Option<String>,
    relayed: Option<String>,
    peer: String,
    channel: Option<u16>,
    allocation_ms: Option<f64>,
    sent: u32,
    received: u32,
    lost: u32,
    loss: f64,
    duplicates: u32,
    rtt_ms: Option<Rtt>,
    ok: bool,
    error: Option<String>,
    error_code: Option<u16>,
}

const MAGIC: &[u8; 4] = b"TRNC";
const MIN_SIZE: usize = 12;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("turnc: {e}");
            return ExitCode::from(1);
        }
    };
    if let Some(listen) = cli.echo_peer {
        return match rt.block_on(echo_peer(listen)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("turnc: {e:#}");
                ExitCode::from(1)
            }
        };
    }
    let usage = |msg: String| -> ! {
        Cli::command()
            .error(ErrorKind::ArgumentConflict, msg)
            .exit()
    };
    let (Some(user), Some(password)) = (cli.user.clone(), cli.password.clone()) else {
        usage("--user and --password are required".into())
    };
    let Some(peer) = cli.peer else {
        usage("--peer is required (an address that echoes UDP datagrams)".into())
    };
    if cli.size < MIN_SIZE || cli.size > 65_000 {
        usage(format!("--size must be {MIN_SIZE}..=65000"));
    }
    if !(0.0..=1.0).contains(&cli.max_loss) {
        usage("--max-loss must be a fraction between 0 and 1".into());
    }
    if cli.transport == TransportArg::Tls && cli.ca.is_none() && !cli.insecure {
        usage(
            "--transport tls needs --ca FILE, or --insecure for a self-signed test server".into(),
        );
    }
    let server = cli.server.clone().unwrap_or_default();
    rt.block_on(run(&cli, &server, user, password, peer))
}

/// Resolve `host[:port]`; returns the address and the host part (for TLS names).
async fn resolve(server: &str, default_port: u16) -> Result<(SocketAddr, String)> {
    if let Ok(a) = server.parse::<SocketAddr>() {
        return Ok((a, a.ip().to_string()));
    }
    if let Ok(ip) = server.parse::<std::net::IpAddr>() {
        return Ok((SocketAddr::new(ip, default_port), ip.to_string()));
    }
    let (host, port) = match server.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (
            h.to_owned(),
            p.parse::<u16>()
                .with_context(|| format!("bad port in {server:?}"))?,
        ),
        _ => (server.to_owned(), default_port),
    };
    let addr = tokio::net::lookup_host((host.as_str(), port))
        .await
        .with_context(|| format!("cannot resolve {host:?}"))?
        .next()
        .ok_or_else(|| anyhow!("{host:?} has no address"))?;
    Ok((addr, host))
}

async fn run(
    cli: &Cli,
    server: &str,
    user: String,
    password: String,
    peer: SocketAddr,
) -> ExitCode {
    let transport = Transport::from(cli.transport);
    let mode = if cli.send_indication {
        "send-indication"
    } else {
        "channel"
    };
    let mut report = Report {
        schema_version: 1,
        server: None,
        transport: transport.name(),
        mode,
        local: None,
        mapped: None,
        relayed: None,
        peer: peer.to_string(),
        channel: None,
        allocation_ms: None,
        sent: 0,
        received: 0,
        lost: 0,
        loss: 0.0,
        duplicates: 0,
        rtt_ms: None,
        ok: false,
        error: None,
        error_code: None,
    };
    let default_port = if transport == Transport::Tls {
        5349
    } else {
        3478
    };
    let (addr, host) = match resolve(server, default_port).await {
        Ok(x) => x,
        Err(e) => return finish(cli, report, Some((format!("{e:#}"), None)), 3),
    };
    report.server = Some(addr.to_string());
    let mut config = Config::new(addr, transport, user, password);
    config.family = match (cli.ipv4, cli.ipv6) {
        (true, _) => Some(AddressFamily::V4),
        (_, true) => Some(AddressFamily::V6),
        _ => None,
    };
    config.lifetime = cli.lifetime.map(Duration::from_secs);
    let tls = (transport == Transport::Tls).then(|| TlsSettings {
        server_name: cli.sni.clone().unwrap_or(host),
        roots: match &cli.ca {
            Some(p) => TlsRoots::CaFile(p.clone()),
            None => TlsRoots::Insecure,
        },
    });
    let seed = cli.seed.unwrap_or_else(rand::random);
    let turn = match TurnClient::connect(config, tls, seed).await {
        Ok(t) => t,
        Err(e) => {
            let code = match &e {
                DriverError::Turn(t) => t.code(),
                _ => None,
            };
            let status = if e.is_unreachable_or_refused() { 3 } else { 1 };
            return finish(
                cli,
                report,
                Some((format!("allocation failed: {e}"), code)),
                status,
            );
        }
    };
    report.local = Some(turn.local_addr().to_string());
    report.relayed = Some(turn.relayed_addr().to_string());
    report.mapped = turn.mapped_addr().map(|a| a.to_string());
    report.allocation_ms = Some(ms(turn.allocation_time()));

    let path = if cli.send_indication {
        turn.create_permission(peer).await.map(|()| None)
    } else {
        turn.bind_channel(peer).await.map(Some)
    };
    match path {
        Ok(ch) => report.channel = ch,
        Err(e) => {
            let code = match &e {
                DriverError::Turn(t) => t.code(),
                _ => None,
            };
            let what = if cli.send_indication {
                "CreatePermission"
            } else {
                "ChannelBind"
            };
            let _ = tokio::time::timeout(Duration::from_secs(5), turn.close()).await;
            return finish(cli, report, Some((format!("{what} failed: {e}"), code)), 1);
        }
    }

    let error = match exchange(cli, &turn, peer, &mut report).await {
        Ok(()) => None,
        Err(e) => Some((format!("{e:#}"), None)),
    };
    // Deallocate; a server that does not answer must not hold the report hostage.
    match tokio::time::timeout(Duration::from_secs(5), turn.close()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!("deallocation: {e}"),
        Err(_) => tracing::warn!("deallocation: no answer within 5 s"),
    }
    let allowed = (f64::from(cli.count) * cli.max_loss).floor();
    let status = if error.is_none() && f64::from(report.lost) <= allowed {
        0
    } else {
        1
    };
    finish(cli, report, error, status)
}

/// Send `count` datagrams at `interval` and collect their echoes until `wait` after the last.
async fn exchange(
    cli: &Cli,
    turn: &TurnClient,
    peer: SocketAddr,
    report: &mut Report,
) -> Result<()> {
    let run_id: u32 = rand::random();
    let count = usize::try_from(cli.count).context("count")?;
    let mut sent_at: Vec<Option<Instant>> = vec![None; count];
    let mut rtts: Vec<Option<Duration>> = vec![None; count];
    let mut duplicates = 0u32;
    let mut ticker = tokio::time::interval(Duration::from_millis(cli.interval.max(1)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next = 0usize;
    let far = tokio::time::Instant::now() + Duration::from_secs(86_400 * 365);
    let mut deadline = far;
    let mut received = 0usize;
    let mut payload = vec![0u8; cli.size];
    for (i, b) in payload.iter_mut().enumerate().skip(MIN_SIZE) {
        *b = (i % 251) as u8;
    }
    payload[..4].copy_from_slice(MAGIC);
    payload[4..8].copy_from_slice(&run_id.to_be_bytes());
    loop {
        if next == count && received == count {
            break;
        }
        tokio::select! {
            _ = ticker.tick(), if next < count => {
                let seq = u32::try_from(next).unwrap_or(u32::MAX);
                payload[8..12].copy_from_slice(&seq.to_be_bytes());
                sent_at[next] = Some(Instant::now());
                turn.send_to(peer, &payload).await.context("send")?;
                next += 1;
                if next == count {
                    deadline = tokio::time::Instant::now() + Duration::from_millis(cli.wait);
                }
            }
            r = turn.recv() => {
                let Some((from, data)) = r else { bail!("the allocation closed") };
                let now = Instant::now();
                if from != peer || data.get(..4) != Some(MAGIC.as_slice())
                    || data.get(4..8) != Some(run_id.to_be_bytes().as_slice())
                {
                    continue;
                }
                let Some(seq) = data.get(8..12).and_then(|s| <[u8; 4]>::try_from(s).ok()) else {
                    continue;
                };
                let seq = u32::from_be_bytes(seq) as usize;
                match (sent_at.get(seq).copied().flatten(), rtts.get_mut(seq)) {
                    (Some(t), Some(slot @ None)) => {
                        *slot = Some(now.saturating_duration_since(t));
                        received += 1;
                    }
                    (Some(_), Some(Some(_))) => duplicates += 1,
                    _ => {}
                }
            }
            () = tokio::time::sleep_until(deadline) => break,
        }
    }
    let mut got: Vec<Duration> = rtts.iter().flatten().copied().collect();
    got.sort();
    report.sent = u32::try_from(next).unwrap_or(u32::MAX);
    report.received = u32::try_from(got.len()).unwrap_or(u32::MAX);
    report.lost = report.sent - report.received;
    report.loss = if report.sent == 0 {
        0.0
    } else {
        f64::from(report.lost) / f64::from(report.sent)
    };
    report.duplicates = duplicates;
    report.rtt_ms = (!got.is_empty()).then(|| Rtt {
        min: ms(got[0]),
        median: ms(percentile(&got, 0.5)),
        p95: ms(percentile(&got, 0.95)),
        max: ms(got[got.len() - 1]),
    });
    Ok(())
}

/// Nearest-rank percentile of a sorted, non-empty slice.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let n = sorted.len();
    let rank = ((p * n as f64).ceil() as usize).clamp(1, n);
    sorted.get(rank - 1).copied().unwrap_or_default()
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

fn finish(
    cli: &Cli,
    mut report: Report,
    error: Option<(String, Option<u16>)>,
    status: u8,
) -> ExitCode {
    report.ok = status == 0;
    if let Some((msg, code)) = error {
        if !cli.json {
            eprintln!("turnc: {msg}");
        }
        report.error = Some(msg);
        report.error_code = code;
    }
    if cli.json {
        match serde_json::to_string_pretty(&report) {
            Ok(s) => println!("{s}"),
            Err(e) => eprintln!("turnc: {e}"),
        }
    } else if report.relayed.is_some() {
        let opt = |o: &Option<String>| o.clone().unwrap_or_else(|| "-".into());
        println!(
            "server {} ({}), local {}, mapped {}, relayed {}, peer {} via {}{}",
            opt(&report.server),
            report.transport,
            opt(&report.local),
            opt(&report.mapped),
            opt(&report.relayed),
            report.peer,
            report.mode,
            report
                .channel
                .map(|c| format!(" {c:#06x}"))
                .unwrap_or_default()
        );
        println!(
            "allocation {:.3} ms; sent {}, received {}, lost {} ({:.1}%), duplicates {}",
            report.allocation_ms.unwrap_or_default(),
            report.sent,
            report.received,
            report.lost,
            report.loss * 100.0,
            report.duplicates
        );
        if let Some(r) = &report.rtt_ms {
            println!(
                "rtt ms: min {:.3} / median {:.3} / p95 {:.3} / max {:.3}",
                r.min, r.median, r.p95, r.max
            );
        }
    }
    ExitCode::from(status)
}

/// Echo every UDP datagram back to its sender, until killed.
async fn echo_peer(listen: SocketAddr) -> Result<()> {
    let socket = tokio::net::UdpSocket::bind(listen)
        .await
        .with_context(|| format!("cannot bind {listen}"))?;
    println!("turnc echo-peer ready {}", socket.local_addr()?);
    use std::io::Write;
    std::io::stdout().flush()?;
    let mut buf = vec![0u8; 65_536];
    loop {
        let (n, from) = match socket.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!("echo peer: {e}");
                continue;
            }
        };
        if let Err(e) = socket.send_to(buf.get(..n).unwrap_or_default(), from).await {
            tracing::debug!("echo peer: send to {from}: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<Duration> = (1..=20).map(Duration::from_millis).collect();
        assert_eq!(percentile(&v, 0.5), Duration::from_millis(10));
        assert_eq!(percentile(&v, 0.95), Duration::from_millis(19));
        assert_eq!(percentile(&v[..1], 0.95), Duration::from_millis(1));
        assert_eq!(ms(Duration::from_micros(1234)), 1.234);
    }
}
