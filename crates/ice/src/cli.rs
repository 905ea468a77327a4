//! `icepeer`'s command line (the binary and `sim tool icepeer` share it): connect two machines with ICE using copy-paste signaling, then prove the path
//! with a few datagrams.
//!
//! ```text
//! icepeer offer                       # prints one line; paste the answer line back
//! icepeer answer                      # paste the offer line; prints the answer line
//! icepeer offer --trickle             # a=ice-ufrag / a=candidate / a=end-of-candidates lines
//! icepeer offer --signal-in a.in --signal-out a.out --json
//! ```
//!
//! Exit status: 0 connected and datagrams went both ways, 1 not connected, 2 bad usage,
//! 3 connected but no datagram came back.

use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::driver::{Driver, TlsRoots, TlsSettings, interface_addresses};
use crate::sdp::{Attribute, Description, parse_line};
use crate::signal::{decode_blob, encode_blob};
use crate::{Candidate, Config, Event, IceState, Nomination, Policy, TurnServer};
use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::mpsc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Role {
    /// Controlling agent: prints the offer first.
    Offer,
    /// Controlled agent: reads the offer, prints the answer.
    Answer,
}

#[derive(Debug, Parser)]
#[command(
    name = "icepeer",
    version,
    about = "ICE (RFC 8445) between two peers with copy-paste signaling"
)]
struct Args {
    /// offer (controlling) or answer (controlled).
    #[arg(value_enum)]
    role: Role,
    /// Trickle ICE: stream a=candidate lines as they are gathered, instead of one blob.
    #[arg(long)]
    trickle: bool,
    /// STUN server (host:port); repeatable.
    #[arg(long = "stun", value_name = "HOST:PORT")]
    stun: Vec<String>,
    /// TURN server: turn:host[:port][?transport=udp|tcp] or turns:host[:port]; repeatable.
    #[arg(long = "turn", value_name = "URL")]
    turn: Vec<String>,
    /// TURN username.
    #[arg(long, default_value = "")]
    turn_user: String,
    /// TURN password.
    #[arg(long, default_value = "")]
    turn_pass: String,
    /// CA certificates (PEM) for turns: servers.
    #[arg(long, value_name = "FILE")]
    turn_ca: Option<PathBuf>,
    /// INSECURE: accept any certificate from turns: servers (test servers only).
    #[arg(long)]
    turn_insecure: bool,
    /// Use relayed candidates only.
    #[arg(long)]
    relay_only: bool,
    /// Use loopback addresses (and only them) as host candidates.
    #[arg(long)]
    loopback: bool,
    /// Give up after this many seconds without a connection.
    #[arg(long, default_value_t = 30.0)]
    timeout: f64,
    /// Read signaling from this file or FIFO instead of stdin (a regular file is followed as
    /// it grows).
    #[arg(long, value_name = "FILE")]
    signal_in: Option<PathBuf>,
    /// Write signaling to this file or FIFO instead of stdout.
    #[arg(long, value_name = "FILE")]
    signal_out: Option<PathBuf>,
    /// Print the result as JSON on stdout (signaling must then go through --signal-out).
    #[arg(long)]
    json: bool,
    /// Aggressive nomination (controlling side).
    #[arg(long)]
    aggressive: bool,
    /// Be an ICE-lite agent (answer side only).
    #[arg(long)]
    lite: bool,
    /// Check pacing Ta in milliseconds.
    #[arg(long, default_value_t = 50)]
    ta: u64,
    /// Datagrams to exchange once connected.
    #[arg(long, default_value_t = 3)]
    datagrams: u32,
    /// Seed for credentials and transaction IDs (default: random).
    #[arg(long)]
    seed: Option<u64>,
}

struct SignalOut {
    out: Box<dyn Write + Send>,
}

impl SignalOut {
    fn line(&mut self, s: &str) -> Result<()> {
        writeln!(self.out, "{s}").context("writing signaling")?;
        self.out.flush().context("writing signaling")
    }
}

/// Parse `turn:host[:port][?transport=udp|tcp]` / `turns:host[:port]`.
async fn parse_turn_url(url: &str, user: &str, pass: &str) -> Result<(TurnServer, String)> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("turns:") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("turn:") {
        (false, r)
    } else {
        bail!("TURN URL must start with turn: or turns: ({url})");
    };
    let (hostport, query) = rest.split_once('?').unwrap_or((rest, ""));
    let mut transport = if tls {
        turn::client::Transport::Tls
    } else {
        turn::client::Transport::Udp
    };
    for kv in query.split('&').filter(|s| !s.is_empty()) {
        match kv {
            "transport=udp" if !tls => transport = turn::client::Transport::Udp,
            "transport=tcp" if !tls => transport = turn::client::Transport::Tcp,
            "transport=tcp" => {}
            _ => bail!("unsupported TURN URL parameter {kv:?} in {url}"),
        }
    }
    let default_port = if tls { 5349 } else { 3478 };
    let (host, port) = split_host_port(hostport, default_port)?;
    let addr = tokio::net::lookup_host((host.as_str(), port))
        .await
        .with_context(|| format!("resolving {host}"))?
        .next()
        .with_context(|| format!("{host} has no address"))?;
    Ok((
        TurnServer {
            addr,
            transport,
            username: user.to_owned(),
            password: pass.to_owned(),
        },
        host,
    ))
}

fn split_host_port(s: &str, default_port: u16) -> Result<(String, u16)> {
    if let Some(r) = s.strip_prefix('[') {
        let (h, p) = r.split_once(']').context("unclosed [ in address")?;
        let port = match p.strip_prefix(':') {
            Some(p) => p.parse().context("bad port")?,
            None => default_port,
        };
        return Ok((h.to_owned(), port));
    }
    match s.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => Ok((h.to_owned(), p.parse().context("bad port")?)),
        _ => Ok((s.to_owned(), default_port)),
    }
}

/// Lines from stdin, a FIFO, or a regular file that is followed as it grows.
fn spawn_reader(path: Option<PathBuf>, tx: mpsc::Sender<String>) {
    tokio::spawn(async move {
        let reader: Box<dyn AsyncRead + Send + Unpin> = match path {
            None => Box::new(tokio::io::stdin()),
            Some(p) => {
                // Wait for the other side to create it.
                let f = loop {
                    match tokio::fs::File::open(&p).await {
                        Ok(f) => break f,
                        Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
                    }
                };
                let regular = f.metadata().await.map(|m| m.is_file()).unwrap_or(false);
                if regular {
                    follow(f, tx).await;
                    return;
                }
                Box::new(f)
            }
        };
        let mut lines = BufReader::new(reader).lines();
        while let Ok(Some(l)) = lines.next_line().await {
            if tx.send(l).await.is_err() {
                return;
            }
        }
    });
}

async fn follow(mut f: tokio::fs::File, tx: mpsc::Sender<String>) {
    use tokio::io::AsyncReadExt;
    let mut pending = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match f.read(&mut buf).await {
            Ok(0) => tokio::time::sleep(Duration::from_millis(1)).await,
            Ok(n) => {
                pending.extend_from_slice(buf.get(..n).unwrap_or_default());
                while let Some(i) = pending.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=i).collect();
                    let s = String::from_utf8_lossy(&line).trim_end().to_owned();
                    if tx.send(s).await.is_err() {
                        return;
                    }
                }
                if pending.len() > crate::signal::MAX_BLOB {
                    return;
                }
            }
            Err(_) => return,
        }
    }
}

#[derive(Default)]
struct Remote {
    ufrag: Option<String>,
    pwd: Option<String>,
    creds_set: bool,
    got_description: bool,
}

fn cand_json(c: Option<&Candidate>) -> serde_json::Value {
    match c {
        Some(c) => serde_json::json!({
            "type": c.kind.as_str(),
            "address": c.addr.to_string(),
            "priority": c.priority,
        }),
        None => serde_json::Value::Null,
    }
}

/// Run icepeer with these arguments (the first is the program name); returns its exit
/// status.
pub fn main<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let args = match Args::try_parse_from(args) {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("icepeer: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(args)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("icepeer: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn run(args: Args) -> Result<u8> {
    if args.json && args.signal_out.is_none() {
        bail!("--json prints the result on stdout: send signaling elsewhere with --signal-out");
    }
    if args.lite && args.role == Role::Offer {
        bail!("--lite is for the answering side (a lite agent is never controlling)");
    }
    let started = Instant::now();
    let mut stun_servers = Vec::new();
    for s in &args.stun {
        let (h, p) = split_host_port(s, 3478)?;
        let a = tokio::net::lookup_host((h.as_str(), p))
            .await
            .with_context(|| format!("resolving STUN server {s}"))?
            .next()
            .with_context(|| format!("STUN server {s} has no address"))?;
        stun_servers.push(a);
    }
    let mut turn_servers = Vec::new();
    let mut tls = None;
    for u in &args.turn {
        let (t, host) = parse_turn_url(u, &args.turn_user, &args.turn_pass).await?;
        if t.transport == turn::client::Transport::Tls {
            let roots = match (&args.turn_ca, args.turn_insecure) {
                (Some(f), _) => TlsRoots::CaFile(f.clone()),
                (None, true) => TlsRoots::Insecure,
                (None, false) => bail!("turns: needs --turn-ca FILE (or --turn-insecure)"),
            };
            tls = Some(TlsSettings {
                server_name: host,
                roots,
            });
        }
        turn_servers.push(t);
    }
    if args.relay_only && turn_servers.is_empty() {
        bail!("--relay-only needs a --turn server");
    }
    let timeout = Duration::from_secs_f64(args.timeout.clamp(0.1, 3600.0));
    let config = Config {
        controlling: args.role == Role::Offer,
        lite: args.lite,
        nomination: if args.aggressive {
            Nomination::Aggressive
        } else {
            Nomination::Regular
        },
        policy: if args.relay_only {
            Policy::RelayOnly
        } else {
            Policy::All
        },
        stun_servers,
        turn_servers,
        ta: Duration::from_millis(args.ta.clamp(5, 1000)),
        connect_timeout: timeout,
        seed: args.seed.unwrap_or_else(rand::random),
        ..Config::default()
    };
    let addrs: Vec<IpAddr> = interface_addresses(args.loopback);
    if addrs.is_empty() && config.turn_servers.is_empty() {
        bail!("no usable local address (try --loopback)");
    }
    let mut d = Driver::bind(config, &addrs, tls).await?;
    let mut out = SignalOut {
        out: match &args.signal_out {
            Some(p) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .with_context(|| format!("opening {}", p.display()))?,
            ),
            None => Box::new(std::io::stdout()),
        },
    };
    let (tx, mut rx) = mpsc::channel::<String>(256);
    spawn_reader(args.signal_in.clone(), tx);

    d.with_agent(|a, now| a.gather(now));
    let creds = d.agent().local_credentials().clone();
    let mut options = vec![];
    if args.trickle {
        options.push("trickle".to_owned());
    }
    if args.trickle {
        out.line(&Attribute::Ufrag(creds.ufrag.clone()).to_line())?;
        out.line(&Attribute::Pwd(creds.pwd.clone()).to_line())?;
        out.line(&Attribute::Options(options.clone()).to_line())?;
        if args.lite {
            out.line(&Attribute::Lite.to_line())?;
        }
    }
    let mut local_cands: Vec<Candidate> = Vec::new();
    let mut gathered = false;
    let mut sent_blob = false;
    let mut remote = Remote::default();
    let mut connected_at = None;
    let deadline = tokio::time::Instant::from_std(started + timeout);
    let mut input_open = true;

    // Phase 1: signaling and checks, until connected or failed.
    let state = loop {
        let st = d.agent().state();
        if st.is_connected() || st == IceState::Failed {
            break st;
        }
        tokio::select! {
            e = d.next_event() => match e {
                Event::LocalCandidate(c) => {
                    if args.trickle {
                        out.line(&format!("a={c}"))?;
                    }
                    local_cands.push(c);
                }
                Event::GatheringComplete => {
                    gathered = true;
                    if args.trickle {
                        out.line(&Attribute::EndOfCandidates.to_line())?;
                    }
                }
                Event::StateChanged(IceState::Connected) => {
                    connected_at.get_or_insert_with(|| started.elapsed());
                }
                _ => {}
            },
            line = rx.recv(), if input_open => match line {
                Some(l) => apply_line(&mut d, &mut remote, &l, args.trickle)?,
                None => input_open = false,
            },
            () = tokio::time::sleep_until(deadline) => break d.agent().state(),
        }
        // Vanilla: the offer goes out when gathering is done; the answer once the offer is in.
        if !args.trickle
            && !sent_blob
            && gathered
            && (args.role == Role::Offer || remote.got_description)
        {
            sent_blob = true;
            let desc = Description {
                ufrag: creds.ufrag.clone(),
                pwd: creds.pwd.clone(),
                options: options.clone(),
                lite: args.lite,
                candidates: local_cands.clone(),
                end_of_candidates: true,
            };
            out.line(&encode_blob(&desc))?;
        }
    };
    let connected = state.is_connected();
    let ttc = connected_at.unwrap_or_else(|| started.elapsed());

    // Phase 2: datagrams both ways over the selected pair.
    let mut data_ok = false;
    if connected {
        data_ok = exchange(&mut d, &mut rx, args.datagrams).await;
    }
    let agent = d.agent();
    let stats = agent.stats();
    let sel = agent.selected_pair().map(|(l, r)| (l.clone(), r.clone()));
    // The agent's own reason, or ours: the peer never answered within --timeout.
    let failure = match (connected, agent.failure()) {
        (true, _) => None,
        (false, Some(f)) => Some(f.as_str()),
        (false, None) => Some("timeout"),
    };
    if args.json {
        let v = serde_json::json!({
            "connected": connected,
            "role": if agent.is_controlling() { "controlling" } else { "controlled" },
            "mode": if args.trickle { "trickle" } else { "vanilla" },
            "state": agent.state().as_str(),
            "failure": failure,
            "local": cand_json(sel.as_ref().map(|(l, _)| l)),
            "remote": cand_json(sel.as_ref().map(|(_, r)| r)),
            "time_to_connected_ms": if connected { Some(ttc.as_secs_f64() * 1000.0) } else { None },
            "checks_sent": stats.checks_sent,
            "checks_received": stats.checks_received,
            "stun_transactions": stats.stun_transactions,
            "rtt_ms": stats.rtt.map(|r| r.as_secs_f64() * 1000.0),
            "datagrams_ok": data_ok,
        });
        println!("{v}");
    } else if connected {
        let (l, r) = sel.unzip();
        eprintln!(
            "icepeer: connected in {:.1} ms: {} -> {}, checks sent {}, rtt {:?}, datagrams {}",
            ttc.as_secs_f64() * 1000.0,
            l.map(|c| format!("{} {}", c.kind, c.addr))
                .unwrap_or_default(),
            r.map(|c| format!("{} {}", c.kind, c.addr))
                .unwrap_or_default(),
            stats.checks_sent,
            stats.rtt,
            if data_ok { "ok" } else { "lost" }
        );
    } else {
        eprintln!("icepeer: not connected ({})", failure.unwrap_or("timeout"));
    }
    d.with_agent(|a, now| a.close(now));
    Ok(match (connected, data_ok) {
        (true, true) => 0,
        (false, _) => 1,
        (true, false) => 3,
    })
}

fn apply_line(d: &mut Driver, remote: &mut Remote, line: &str, trickle: bool) -> Result<()> {
    let line = line.trim();
    if line.is_empty() {
        return Ok(());
    }
    if !trickle || !line.starts_with("a=") {
        // A whole description (vanilla), or a blob even in trickle mode.
        let desc = decode_blob(line).context("reading the peer's description")?;
        remote.got_description = true;
        d.with_agent(|a, now| -> Result<()> {
            a.set_remote_lite(desc.lite);
            a.set_remote_credentials(now, &desc.ufrag, &desc.pwd)?;
            for c in desc.candidates {
                a.add_remote_candidate(now, c)?;
            }
            if desc.end_of_candidates {
                a.end_of_remote_candidates(now);
            }
            Ok(())
        })?;
        return Ok(());
    }
    let attr = match parse_line(line) {
        Ok(Some(a)) => a,
        Ok(None) => return Ok(()),
        Err(crate::sdp::SdpError::Hostname(h)) => {
            eprintln!("icepeer: skipping a candidate with host name {h}");
            return Ok(());
        }
        Err(e) => bail!("bad signaling line {line:?}: {e}"),
    };
    d.with_agent(|a, now| -> Result<()> {
        match attr {
            Attribute::Ufrag(u) => remote.ufrag = Some(u),
            Attribute::Pwd(p) => remote.pwd = Some(p),
            Attribute::Lite => a.set_remote_lite(true),
            Attribute::Options(_) => {}
            Attribute::Candidate(c) => {
                a.add_remote_candidate(now, c)?;
            }
            Attribute::EndOfCandidates => a.end_of_remote_candidates(now),
        }
        if let (false, Some(u), Some(p)) = (remote.creds_set, &remote.ufrag, &remote.pwd) {
            a.set_remote_credentials(now, u, p)?;
            remote.creds_set = true;
            remote.got_description = true;
        }
        Ok(())
    })?;
    Ok(())
}

/// Send `[0x80, seq, acked]` every 20 ms until the peer has acknowledged ours and we have
/// acknowledged theirs a few times; true when data went both ways.
async fn exchange(d: &mut Driver, rx: &mut mpsc::Receiver<String>, count: u32) -> bool {
    let mut got = 0u32;
    let mut peer_acked = false;
    let mut acks_after = 0u32;
    let end = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let mut seq = 0u8;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let acked = u8::from(got >= count.max(1));
                seq = seq.wrapping_add(1);
                if d.send(&[0x80, seq, acked]).is_err() {
                    return false;
                }
                if peer_acked && acked == 1 {
                    acks_after += 1;
                    if acks_after >= 3 {
                        return true;
                    }
                }
            }
            e = d.next_event() => {
                if let Event::Data { data, .. } = e {
                    if data.first() == Some(&0x80) {
                        got += 1;
                        if data.get(2) == Some(&1) {
                            peer_acked = true;
                        }
                    }
                }
                if d.agent().state() == IceState::Failed {
                    return false;
                }
            }
            // Trickle lines still arriving are not needed any more.
            _ = rx.recv() => {}
            () = tokio::time::sleep_until(end) => return got > 0 && peer_acked,
        }
    }
}
