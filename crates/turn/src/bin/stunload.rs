//! `stunload`: a closed-loop STUN Binding load generator, for benchmarking STUN servers on
//! loopback (turnd against coturn in `scripts/bench_binding.sh`).
//!
//! Every socket keeps `--window` Binding requests in flight. Each valid Binding success response
//! (matched by transaction ID, XOR-MAPPED-ADDRESS equal to the socket's own address) is counted
//! and immediately replaced by a new request; a request unanswered after `--timeout-ms` is
//! re-sent under a new transaction ID so losses never stall the loop. Responses are counted
//! after a warm-up and reported per second.
//!
//! It is meant to share a small machine with the server it measures, so it is cheap per
//! packet: connected sockets, one `recvmmsg` per batch of responses, the batch of replacement
//! requests sent as one UDP GSO send (`UDP_SEGMENT`: the kernel cuts it into the same separate
//! datagrams; `--no-gso` or a kernel without it: one `sendmmsg`), `poll` only when idle, the
//! clock read once per batch, and nothing allocated after start-up.
//!
//! It only ever sends to a loopback target, and stops by itself: after the warm-up plus
//! `--duration` seconds, or `--max-requests` requests, whichever comes first.

use std::io::{IoSlice, IoSliceMut};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsFd, AsRawFd};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{
    MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg, sendmmsg, setsockopt, sockopt,
};
use socket2::{Domain, Protocol, Socket, Type};
use stun::wire::{BINDING, Class, Message, MessageWriter, attr, message_type};

/// Closed-loop STUN Binding load generator (loopback targets only).
///
/// Example: stunload --target 127.0.0.1:3478 --duration 5 --sockets 32 --window 32
#[derive(Debug, Parser)]
#[command(version, long_about = None)]
struct Cli {
    /// STUN server to load; must be a loopback address (127.0.0.0/8 or ::1).
    #[arg(
        long,
        short = 't',
        value_name = "IP:PORT",
        default_value = "127.0.0.1:3478"
    )]
    target: SocketAddr,
    /// Measured seconds, after the warm-up (at most 600).
    #[arg(long, short = 'd', default_value_t = 5.0)]
    duration: f64,
    /// Warm-up seconds, not counted (at most 60).
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// UDP sockets, each with its own source port (1..=1024).
    #[arg(long, short = 's', default_value_t = 32)]
    sockets: usize,
    /// Requests kept in flight per socket (1..=4096).
    #[arg(long, short = 'w', default_value_t = 32)]
    window: usize,
    /// Load-generating threads; the sockets are shared out among them.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Add a PADDING attribute of this many bytes to every request (at most 1200).
    #[arg(long, value_name = "BYTES")]
    padding: Option<usize>,
    /// Add FINGERPRINT to every request.
    #[arg(long)]
    fingerprint: bool,
    /// Re-send a request unanswered for this many milliseconds.
    #[arg(long, default_value_t = 250)]
    timeout_ms: u64,
    /// Send each batch with one datagram per request (sendmmsg) instead of one UDP GSO send
    /// (UDP_SEGMENT) per batch. The server sees the same datagrams either way; GSO only makes
    /// the load generator cheaper.
    #[arg(long)]
    no_gso: bool,
    /// Stop after sending this many requests in total (0: no limit but the duration).
    #[arg(long, default_value_t = 0)]
    max_requests: u64,
    /// A name for the result line (e.g. the server's).
    #[arg(long, default_value = "")]
    label: String,
    /// Print the result as one JSON object instead of a text line.
    #[arg(long)]
    json: bool,
}

/// Datagrams moved per `recvmmsg` / `sendmmsg`.
const BATCH: usize = 64;
/// Receive slot size: larger responses are truncated and counted invalid.
const RX_SLOT: usize = 2048;
/// Largest request: header, PADDING (at most 1200 + 4), FINGERPRINT.
const TX_SLOT: usize = 20 + 1204 + 8;
/// Most datagrams in one GSO send (the kernel's UDP_MAX_SEGMENTS is 64 or 128).
const GSO_SEGMENTS: usize = 64;
/// Most bytes in one GSO send (one IP packet's worth, before segmentation).
const GSO_BYTES: usize = 60_000;

/// Errors that say UDP GSO is not available for this socket.
fn gso_unsupported(errno: i32) -> bool {
    let e = Errno::from_raw(errno);
    matches!(
        e,
        Errno::EIO | Errno::EINVAL | Errno::ENOPROTOOPT | Errno::EOPNOTSUPP | Errno::EMSGSIZE
    )
}

/// What one run measured.
#[derive(Debug, Default, Clone, serde::Serialize)]
struct Report {
    label: String,
    target: String,
    /// Valid Binding success responses per second over the measured window.
    responses_per_sec: f64,
    /// Valid responses counted in the measured window.
    responses: u64,
    /// Length of the measured window, seconds.
    seconds: f64,
    /// Requests sent in the measured window (first sends and re-sends).
    sent: u64,
    /// Requests re-sent after `timeout_ms` in the measured window.
    timeouts: u64,
    /// Binding error responses in the measured window.
    error_responses: u64,
    /// Datagrams that were not a valid answer to one of ours (window).
    invalid: u64,
    /// Valid answers to a request already given up on and re-sent (window).
    late: u64,
    /// Socket errors in the measured window.
    socket_errors: u64,
    /// Whole-run totals, warm-up included.
    total_responses: u64,
    total_sent: u64,
    sockets: usize,
    window: usize,
    threads: usize,
    request_bytes: usize,
    /// Requests were sent with UDP GSO (one send per batch, same datagrams on the wire).
    gso: bool,
    /// Bytes of one success response, and its attributes.
    response_bytes: usize,
    response_attributes: Vec<String>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Counters {
    responses: u64,
    sent: u64,
    timeouts: u64,
    error_responses: u64,
    invalid: u64,
    late: u64,
    socket_errors: u64,
}

impl Counters {
    fn minus(self, o: Counters) -> Counters {
        Counters {
            responses: self.responses - o.responses,
            sent: self.sent - o.sent,
            timeouts: self.timeouts - o.timeouts,
            error_responses: self.error_responses - o.error_responses,
            invalid: self.invalid - o.invalid,
            late: self.late - o.late,
            socket_errors: self.socket_errors - o.socket_errors,
        }
    }

    fn add(&mut self, o: Counters) {
        self.responses += o.responses;
        self.sent += o.sent;
        self.timeouts += o.timeouts;
        self.error_responses += o.error_responses;
        self.invalid += o.invalid;
        self.late += o.late;
        self.socket_errors += o.socket_errors;
    }
}

/// What one thread measured.
#[derive(Debug, Default)]
struct ThreadResult {
    window: Counters,
    total: Counters,
    seconds: f64,
    request_bytes: usize,
    gso: bool,
    response_bytes: usize,
    attributes: Vec<u16>,
}

/// Shared, read-only run parameters.
#[derive(Debug, Clone)]
struct Plan {
    target: SocketAddr,
    window: usize,
    padding: Option<usize>,
    fingerprint: bool,
    gso: bool,
    timeout: Duration,
    /// Per-thread share of `--max-requests` (u64::MAX: none).
    max_sent: u64,
    nonce: [u8; 4],
    start: Instant,
    warm_at: Instant,
    end_at: Instant,
}

/// One request slot: always exactly one request in flight (or queued to be sent).
#[derive(Debug, Clone, Copy)]
struct Slot {
    seq: u32,
    sent_at: Instant,
}

/// Per-socket state.
#[derive(Debug)]
struct Conn {
    /// Global socket index, carried in the transaction ID.
    index: u16,
    local: SocketAddr,
    slots: Vec<Slot>,
    /// Slots whose next request is waiting to be sent.
    queue: Vec<u16>,
}

/// Transaction ID: nonce (4) | socket index (2) | slot (2) | sequence (4).
fn transaction_id(nonce: [u8; 4], conn: u16, slot: u16, seq: u32) -> [u8; 12] {
    let mut id = [0u8; 12];
    id[..4].copy_from_slice(&nonce);
    id[4..6].copy_from_slice(&conn.to_be_bytes());
    id[6..8].copy_from_slice(&slot.to_be_bytes());
    id[8..].copy_from_slice(&seq.to_be_bytes());
    id
}

fn write_request(
    buf: &mut [u8],
    id: &[u8; 12],
    padding: Option<usize>,
    fingerprint: bool,
) -> Option<usize> {
    let mut w = MessageWriter::new(buf, message_type(BINDING, Class::Request), id).ok()?;
    if let Some(p) = padding {
        w.padding(p).ok()?;
    }
    if fingerprint {
        w.fingerprint().ok()?;
    }
    Some(w.finish())
}

enum Verdict {
    /// A valid success answer to (slot, seq).
    Success {
        slot: u16,
        seq: u32,
    },
    /// A Binding error response to one of ours.
    Error,
    Invalid,
}

fn judge(bytes: &[u8], conn: &Conn, nonce: [u8; 4]) -> Verdict {
    let Ok(m) = Message::parse(bytes) else {
        return Verdict::Invalid;
    };
    let id = m.transaction_id();
    let ours = id[..4] == nonce && id[4..6] == conn.index.to_be_bytes();
    if !ours || m.method() != BINDING {
        return Verdict::Invalid;
    }
    match m.class() {
        Class::Success => {}
        Class::Error => return Verdict::Error,
        _ => return Verdict::Invalid,
    }
    match m.address(attr::XOR_MAPPED_ADDRESS) {
        Some(Ok(a)) if a == conn.local => {}
        _ => return Verdict::Invalid,
    }
    Verdict::Success {
        slot: u16::from_be_bytes([id[6], id[7]]),
        seq: u32::from_be_bytes([id[8], id[9], id[10], id[11]]),
    }
}

/// A connected, non-blocking socket; with `gso`, `UDP_SEGMENT` set to `segment` bytes. Returns
/// whether GSO could be set.
fn open_socket(target: SocketAddr, gso: Option<usize>) -> std::io::Result<(UdpSocket, bool)> {
    let s = Socket::new(
        Domain::for_address(target),
        Type::DGRAM,
        Some(Protocol::UDP),
    )?;
    let _ = s.set_recv_buffer_size(4 << 20);
    let _ = s.set_send_buffer_size(4 << 20);
    let any: SocketAddr = if target.is_ipv4() {
        (std::net::Ipv4Addr::LOCALHOST, 0).into()
    } else {
        (std::net::Ipv6Addr::LOCALHOST, 0).into()
    };
    s.bind(&any.into())?;
    s.connect(&target.into())?;
    s.set_nonblocking(true)?;
    let s: UdpSocket = s.into();
    let gso = gso
        .and_then(|n| i32::try_from(n).ok())
        .is_some_and(|n| setsockopt(&s, sockopt::UdpGsoSegment, &n).is_ok());
    Ok((s, gso))
}

/// Buffers of one thread.
struct Io {
    rx: Vec<u8>,
    tx: Vec<u8>,
    rx_headers: MultiHeaders<()>,
    tx_headers: MultiHeaders<SockaddrStorage>,
    counters: Counters,
    sample: Option<(usize, Vec<u16>)>,
    request_bytes: usize,
    /// Requests go out as one UDP GSO send per batch (every request has the same size).
    gso: bool,
    /// Whether any GSO send worked (a failure before that falls back to sendmmsg for good).
    gso_proven: bool,
}

impl Io {
    /// Send the queued requests of `conn` (connected socket: no addresses).
    fn flush(&mut self, sock: &UdpSocket, conn: &mut Conn, plan: &Plan, now: Instant) {
        while !conn.queue.is_empty() {
            if self.counters.sent >= plan.max_sent {
                conn.queue.clear();
                return;
            }
            let sent = if self.gso {
                self.send_gso(sock, conn, plan)
            } else {
                self.send_batch(sock, conn, plan)
            };
            let Some(sent) = sent else { return };
            // Both send a prefix of the queue's tail.
            let from = conn.queue.len() - sent;
            for slot in conn.queue.drain(from..) {
                if let Some(s) = conn.slots.get_mut(usize::from(slot)) {
                    s.sent_at = now;
                }
            }
            self.counters.sent += sent as u64;
        }
    }

    /// Up to [`GSO_SEGMENTS`] requests from the tail of the queue, back to back in one buffer
    /// and one `send`: the kernel cuts them into datagrams (`UDP_SEGMENT` is set on the socket
    /// to the request size). Returns how many went out, `None` to retry later.
    fn send_gso(&mut self, sock: &UdpSocket, conn: &mut Conn, plan: &Plan) -> Option<usize> {
        let size = self.request_bytes.max(1);
        let take = conn
            .queue
            .len()
            .min(GSO_SEGMENTS)
            .min(GSO_BYTES / size)
            .max(1);
        let from = conn.queue.len() - take;
        let mut len = 0;
        for &slot in &conn.queue[from..] {
            let Some(s) = conn.slots.get(usize::from(slot)) else {
                continue;
            };
            let id = transaction_id(plan.nonce, conn.index, slot, s.seq);
            let Some(chunk) = self.tx.get_mut(len..len + size) else {
                break;
            };
            len += write_request(chunk, &id, plan.padding, plan.fingerprint).unwrap_or(0);
        }
        // A queue of stale slot numbers (never happens) would leave a short buffer: send what
        // was written and count the rest as lost, the timeout re-sends them.
        match sock.send(self.tx.get(..len).unwrap_or_default()) {
            Ok(_) => {
                self.gso_proven = true;
                Some(take)
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => None,
            Err(e) if !self.gso_proven && e.raw_os_error().is_some_and(gso_unsupported) => {
                // No UDP GSO here: batch with sendmmsg instead.
                self.gso = false;
                None
            }
            Err(_) => {
                self.counters.socket_errors += 1;
                Some(take)
            }
        }
    }

    /// Up to [`BATCH`] requests from the tail of the queue, one datagram each, one `sendmmsg`.
    fn send_batch(&mut self, sock: &UdpSocket, conn: &mut Conn, plan: &Plan) -> Option<usize> {
        let take = conn.queue.len().min(BATCH);
        let from = conn.queue.len() - take;
        let mut lens = [0usize; BATCH];
        for ((&slot, chunk), len) in conn.queue[from..]
            .iter()
            .zip(self.tx.chunks_exact_mut(TX_SLOT))
            .zip(lens.iter_mut())
        {
            let Some(s) = conn.slots.get(usize::from(slot)) else {
                continue;
            };
            let id = transaction_id(plan.nonce, conn.index, slot, s.seq);
            *len = write_request(chunk, &id, plan.padding, plan.fingerprint).unwrap_or(0);
        }
        let mut chunks = self.tx.chunks_exact(TX_SLOT);
        let iovs: [[IoSlice<'_>; 1]; BATCH] = std::array::from_fn(|i| {
            let c = chunks.next().unwrap_or_default();
            [IoSlice::new(c.get(..lens[i]).unwrap_or_default())]
        });
        let addrs: [Option<SockaddrStorage>; BATCH] = [None; BATCH];
        let sent = match sendmmsg(
            sock.as_raw_fd(),
            &mut self.tx_headers,
            iovs.iter().take(take),
            &addrs[..take],
            [],
            MsgFlags::MSG_DONTWAIT,
        ) {
            Ok(r) => r.count(),
            // Socket buffer full: keep them queued for the next pass.
            Err(Errno::EAGAIN | Errno::ENOBUFS) => return None,
            Err(_) => {
                // ECONNREFUSED (no server yet) and the like: count the batch as sent and
                // lost, so the timeout re-sends it instead of spinning here.
                self.counters.socket_errors += 1;
                take
            }
        };
        // sendmmsg sends a prefix of the batch: the first `sent` of queue[from..].
        let sent = sent.clamp(1, take);
        if sent < take {
            // Keep the unsent ones at the tail, where the caller takes from.
            conn.queue[from..].rotate_left(sent);
        }
        Some(sent)
    }

    /// Drain what `sock` has received, a batch at a time, answering each batch at once.
    fn drain(&mut self, sock: &UdpSocket, conn: &mut Conn, plan: &Plan, now: Instant) {
        for _ in 0..16 {
            let mut lens = [(0usize, false); BATCH];
            let n = {
                let mut chunks = self.rx.chunks_exact_mut(RX_SLOT);
                let mut iovs: [[IoSliceMut<'_>; 1]; BATCH] =
                    std::array::from_fn(|_| [IoSliceMut::new(chunks.next().unwrap_or_default())]);
                match recvmmsg(
                    sock.as_raw_fd(),
                    &mut self.rx_headers,
                    iovs.iter_mut(),
                    MsgFlags::MSG_DONTWAIT,
                    None,
                ) {
                    Ok(results) => {
                        let mut n = 0;
                        for (l, r) in lens.iter_mut().zip(results) {
                            *l = (r.bytes, r.flags.contains(MsgFlags::MSG_TRUNC));
                            n += 1;
                        }
                        n
                    }
                    Err(Errno::EAGAIN | Errno::EINTR) => 0,
                    Err(_) => {
                        self.counters.socket_errors += 1;
                        0
                    }
                }
            };
            if n == 0 {
                break;
            }
            for (&(len, truncated), chunk) in lens.iter().take(n).zip(self.rx.chunks_exact(RX_SLOT))
            {
                let bytes = chunk.get(..len).unwrap_or_default();
                let verdict = if truncated {
                    Verdict::Invalid
                } else {
                    judge(bytes, conn, plan.nonce)
                };
                match verdict {
                    Verdict::Success { slot, seq } => {
                        let Some(s) = conn.slots.get_mut(usize::from(slot)) else {
                            self.counters.invalid += 1;
                            continue;
                        };
                        if s.seq != seq {
                            self.counters.late += 1;
                            continue;
                        }
                        self.counters.responses += 1;
                        s.seq = s.seq.wrapping_add(1);
                        conn.queue.push(slot);
                        if self.sample.is_none() {
                            let attrs = Message::parse(bytes)
                                .map(|m| m.attributes().map(|a| a.attr_type).collect())
                                .unwrap_or_default();
                            self.sample = Some((len, attrs));
                        }
                    }
                    Verdict::Error => self.counters.error_responses += 1,
                    Verdict::Invalid => self.counters.invalid += 1,
                }
            }
            self.flush(sock, conn, plan, now);
            if n < BATCH {
                break;
            }
        }
    }
}

fn run_thread(plan: &Plan, first_index: u16, count: usize) -> std::io::Result<ThreadResult> {
    let request_bytes = {
        let mut buf = [0u8; TX_SLOT];
        write_request(&mut buf, &[0; 12], plan.padding, plan.fingerprint).unwrap_or(0)
    };
    let mut gso = plan.gso;
    let mut socks = Vec::with_capacity(count);
    for _ in 0..count {
        let (s, ok) = open_socket(plan.target, gso.then_some(request_bytes))?;
        gso &= ok;
        socks.push(s);
    }
    let mut conns = Vec::with_capacity(count);
    for (i, s) in socks.iter().enumerate() {
        let index = first_index
            .checked_add(u16::try_from(i).map_err(std::io::Error::other)?)
            .ok_or_else(|| std::io::Error::other("too many sockets"))?;
        conns.push(Conn {
            index,
            local: s.local_addr()?,
            slots: vec![
                Slot {
                    seq: 0,
                    sent_at: plan.start,
                };
                plan.window
            ],
            queue: (0..plan.window)
                .filter_map(|s| u16::try_from(s).ok())
                .collect(),
        });
    }
    let mut io = Io {
        rx: vec![0u8; BATCH * RX_SLOT],
        tx: vec![0u8; BATCH * TX_SLOT],
        rx_headers: MultiHeaders::preallocate(BATCH, None),
        tx_headers: MultiHeaders::preallocate(BATCH, None),
        counters: Counters::default(),
        sample: None,
        request_bytes,
        gso,
        gso_proven: false,
    };
    let mut pollfds: Vec<PollFd<'_>> = socks
        .iter()
        .map(|s| PollFd::new(s.as_fd(), PollFlags::POLLIN))
        .collect();

    let now = Instant::now();
    for (sock, conn) in socks.iter().zip(conns.iter_mut()) {
        io.flush(sock, conn, plan, now);
    }
    let scan_every = (plan.timeout / 4).max(Duration::from_millis(5));
    let mut next_scan = now + scan_every;
    let mut at_warm: Option<(Instant, Counters)> = None;
    loop {
        let now = Instant::now();
        if now >= plan.end_at || io.counters.sent >= plan.max_sent {
            let (t0, c0) = at_warm.unwrap_or((plan.start, Counters::default()));
            return Ok(ThreadResult {
                window: io.counters.minus(c0),
                total: io.counters,
                seconds: now.saturating_duration_since(t0).as_secs_f64(),
                request_bytes: io.request_bytes,
                gso: io.gso,
                response_bytes: io.sample.as_ref().map_or(0, |s| s.0),
                attributes: io.sample.take().map(|s| s.1).unwrap_or_default(),
            });
        }
        if at_warm.is_none() && now >= plan.warm_at {
            at_warm = Some((now, io.counters));
        }
        if now >= next_scan {
            next_scan = now + scan_every;
            for conn in &mut conns {
                for (i, s) in conn.slots.iter_mut().enumerate() {
                    if now.saturating_duration_since(s.sent_at) >= plan.timeout
                        && !conn.queue.contains(&(i as u16))
                    {
                        s.seq = s.seq.wrapping_add(1);
                        s.sent_at = now;
                        conn.queue.push(i as u16);
                        io.counters.timeouts += 1;
                    }
                }
            }
            for (sock, conn) in socks.iter().zip(conns.iter_mut()) {
                io.flush(sock, conn, plan, now);
            }
        }
        // Wait for something to read, never past the next timeout scan or the end.
        let wait = next_scan
            .min(plan.end_at)
            .min(if at_warm.is_none() {
                plan.warm_at
            } else {
                plan.end_at
            })
            .saturating_duration_since(now);
        let ms = u16::try_from(wait.as_millis()).unwrap_or(u16::MAX).max(1);
        match poll(&mut pollfds, PollTimeout::from(ms)) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
        let now = Instant::now();
        for ((pfd, sock), conn) in pollfds.iter().zip(&socks).zip(conns.iter_mut()) {
            if pfd.revents().is_some_and(|r| !r.is_empty()) {
                io.drain(sock, conn, plan, now);
            }
        }
    }
}

fn attribute_name(t: u16) -> String {
    match t {
        attr::XOR_MAPPED_ADDRESS => "XOR-MAPPED-ADDRESS".into(),
        attr::MAPPED_ADDRESS => "MAPPED-ADDRESS".into(),
        attr::RESPONSE_ORIGIN => "RESPONSE-ORIGIN".into(),
        attr::OTHER_ADDRESS => "OTHER-ADDRESS".into(),
        attr::SOFTWARE => "SOFTWARE".into(),
        attr::FINGERPRINT => "FINGERPRINT".into(),
        attr::PADDING => "PADDING".into(),
        // RFC 3489's SOURCE-ADDRESS and CHANGED-ADDRESS, which some servers still send.
        0x0004 => "SOURCE-ADDRESS".into(),
        0x0005 => "CHANGED-ADDRESS".into(),
        t => format!("0x{t:04X}"),
    }
}

fn check(cli: &Cli) -> Result<(), String> {
    if !cli.target.ip().is_loopback() {
        return Err(format!(
            "{} is not a loopback address: stunload only loads servers on this machine",
            cli.target
        ));
    }
    if !(cli.duration > 0.0 && cli.duration <= 600.0) {
        return Err("--duration must be in (0, 600] seconds".into());
    }
    if !(cli.warmup >= 0.0 && cli.warmup <= 60.0) {
        return Err("--warmup must be in [0, 60] seconds".into());
    }
    if !(1..=1024).contains(&cli.sockets) {
        return Err("--sockets must be in 1..=1024".into());
    }
    if !(1..=4096).contains(&cli.window) {
        return Err("--window must be in 1..=4096".into());
    }
    if !(1..=64).contains(&cli.threads) || cli.threads > cli.sockets {
        return Err("--threads must be in 1..=64 and at most --sockets".into());
    }
    if cli.padding.is_some_and(|p| p > 1200) {
        return Err("--padding is at most 1200 bytes".into());
    }
    if !(1..=60_000).contains(&cli.timeout_ms) {
        return Err("--timeout-ms must be in 1..=60000".into());
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = check(&cli) {
        eprintln!("stunload: {e}");
        return ExitCode::from(2);
    }
    let start = Instant::now();
    let warm_at = start + Duration::from_secs_f64(cli.warmup);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
        ^ std::process::id().rotate_left(16);
    let plan = Plan {
        target: cli.target,
        window: cli.window,
        padding: cli.padding,
        fingerprint: cli.fingerprint,
        gso: !cli.no_gso,
        timeout: Duration::from_millis(cli.timeout_ms),
        max_sent: match cli.max_requests {
            0 => u64::MAX,
            n => n.div_ceil(cli.threads as u64),
        },
        nonce: seed.to_be_bytes(),
        start,
        warm_at,
        end_at: warm_at + Duration::from_secs_f64(cli.duration),
    };

    // Share the sockets out: thread t gets sockets [first, first + count).
    let results: Vec<std::io::Result<ThreadResult>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..cli.threads)
            .map(|t| {
                let first = t * cli.sockets / cli.threads;
                let next = (t + 1) * cli.sockets / cli.threads;
                let plan = &plan;
                scope.spawn(move || {
                    let count = next - first;
                    let first = u16::try_from(first).map_err(std::io::Error::other)?;
                    run_thread(plan, first, count)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(std::io::Error::other("load thread panicked")))
            })
            .collect()
    });

    let mut report = Report {
        label: cli.label.clone(),
        target: cli.target.to_string(),
        sockets: cli.sockets,
        window: cli.window,
        threads: cli.threads,
        ..Report::default()
    };
    let mut window = Counters::default();
    let mut total = Counters::default();
    let mut seconds: f64 = 0.0;
    for r in results {
        let r = match r {
            Ok(r) => r,
            Err(e) => {
                eprintln!("stunload: {e}");
                return ExitCode::from(1);
            }
        };
        if r.seconds > 0.0 {
            report.responses_per_sec += r.window.responses as f64 / r.seconds;
        }
        seconds = seconds.max(r.seconds);
        window.add(r.window);
        total.add(r.total);
        report.request_bytes = r.request_bytes;
        report.gso = r.gso;
        if report.response_attributes.is_empty() && !r.attributes.is_empty() {
            report.response_bytes = r.response_bytes;
            report.response_attributes = r.attributes.iter().map(|&t| attribute_name(t)).collect();
        }
    }
    report.seconds = seconds;
    report.responses = window.responses;
    report.sent = window.sent;
    report.timeouts = window.timeouts;
    report.error_responses = window.error_responses;
    report.invalid = window.invalid;
    report.late = window.late;
    report.socket_errors = window.socket_errors;
    report.total_responses = total.responses;
    report.total_sent = total.sent;

    if cli.json {
        match serde_json::to_string(&report) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("stunload: {e}");
                return ExitCode::from(1);
            }
        }
    } else {
        println!(
            "stunload{}{} target={} rps={:.0} responses={} secs={:.2} sent={} timeouts={} \
             errors={} invalid={} late={} socket_errors={} sockets={} window={} threads={} \
             request_bytes={} gso={} response_bytes={} attrs={}",
            if report.label.is_empty() {
                ""
            } else {
                " label="
            },
            report.label,
            report.target,
            report.responses_per_sec,
            report.responses,
            report.seconds,
            report.sent,
            report.timeouts,
            report.error_responses,
            report.invalid,
            report.late,
            report.socket_errors,
            report.sockets,
            report.window,
            report.threads,
            report.request_bytes,
            report.gso,
            report.response_bytes,
            report.response_attributes.join(","),
        );
    }
    if report.responses == 0 {
        eprintln!("stunload: no valid Binding success response in the measured window");
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}
