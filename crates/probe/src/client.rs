//! The tokio driver: UDP sockets whose datagrams are demultiplexed by transaction ID, so many
//! tests can run at once on one socket, each driven by the sans-IO [`Transaction`].

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use stun::rfc5780::{BindingRequest, BindingResponse};
use stun::transaction::{Outcome, RetransmitConfig, Transaction, new_transaction_id};
use stun::wire::{Message, TransactionId};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

type Waiters = Arc<Mutex<HashMap<TransactionId, mpsc::Sender<(Vec<u8>, SocketAddr)>>>>;

/// Limits how many new transactions start per second (RFC 5780 §5 asks clients to stay at or
/// under 10 per second towards a server). Retransmissions are not counted.
#[derive(Debug, Clone)]
pub struct Pacer {
    inner: Option<Arc<tokio::sync::Mutex<VecDeque<tokio::time::Instant>>>>,
    per_second: usize,
}

impl Pacer {
    /// At most `per_second` new transactions in any one-second window.
    pub fn new(per_second: usize) -> Self {
        Pacer {
            inner: Some(Arc::new(tokio::sync::Mutex::new(VecDeque::new()))),
            per_second: per_second.max(1),
        }
    }

    /// No pacing (for your own server: `--fast`).
    pub fn unlimited() -> Self {
        Pacer {
            inner: None,
            per_second: usize::MAX,
        }
    }

    /// Wait for a slot.
    pub async fn acquire(&self) {
        let Some(inner) = &self.inner else { return };
        let mut q = inner.lock().await;
        loop {
            // tokio's clock, so tests can run the pacer on virtual time.
            let now = tokio::time::Instant::now();
            while q
                .front()
                .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(1))
            {
                q.pop_front();
            }
            if q.len() < self.per_second {
                q.push_back(now);
                return;
            }
            let wait = q.front().map_or(Duration::ZERO, |t| {
                Duration::from_secs(1).saturating_sub(now - *t)
            });
            tokio::time::sleep(wait).await;
        }
    }
}

/// A UDP socket with a background receiver that routes datagrams to waiting transactions.
#[derive(Debug, Clone)]
pub struct StunSocket {
    socket: Arc<UdpSocket>,
    waiters: Waiters,
    local: SocketAddr,
    reader: Arc<tokio::task::JoinHandle<()>>,
}

impl Drop for StunSocket {
    fn drop(&mut self) {
        // The last clone stops the reader.
        if Arc::strong_count(&self.reader) == 1 {
            self.reader.abort();
        }
    }
}

/// What one test observed.
#[derive(Debug, Clone, Serialize)]
pub struct Observation {
    /// Test name.
    pub name: String,
    /// Local address of the socket.
    pub local: SocketAddr,
    /// Where the request went.
    pub destination: SocketAddr,
    /// CHANGE-REQUEST flags asked for.
    pub change_ip: bool,
    /// CHANGE-REQUEST flags asked for.
    pub change_port: bool,
    /// RESPONSE-PORT asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_port: Option<u16>,
    /// "response", "error-response", "timeout", "delivered", "not-delivered" or "io-error".
    pub outcome: &'static str,
    /// Where the answer came from.
    pub from: Option<SocketAddr>,
    /// XOR-MAPPED-ADDRESS, else MAPPED-ADDRESS.
    pub mapped: Option<SocketAddr>,
    /// MAPPED-ADDRESS as sent (for ALG detection).
    pub mapped_plain: Option<SocketAddr>,
    /// RESPONSE-ORIGIN.
    pub response_origin: Option<SocketAddr>,
    /// OTHER-ADDRESS.
    pub other_address: Option<SocketAddr>,
    /// ERROR-CODE of an error response.
    pub error_code: Option<u16>,
    /// SOFTWARE of the server.
    pub software: Option<String>,
    /// Round-trip time in milliseconds (only when not retransmitted).
    pub rtt_ms: Option<f64>,
    /// Requests sent.
    pub sends: u32,
    /// An I/O error or an unparsable response, as text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Observation {
    pub(crate) fn new(
        name: &str,
        local: SocketAddr,
        destination: SocketAddr,
        req: &BindingRequest,
    ) -> Self {
        Observation {
            name: name.to_owned(),
            local,
            destination,
            change_ip: req.change_ip,
            change_port: req.change_port,
            response_port: req.response_port,
            outcome: "timeout",
            from: None,
            mapped: None,
            mapped_plain: None,
            response_origin: None,
            other_address: None,
            error_code: None,
            software: None,
            rtt_ms: None,
            sends: 0,
            detail: None,
        }
    }

    /// A success response arrived.
    pub fn answered(&self) -> bool {
        self.outcome == "response"
    }

    /// MAPPED-ADDRESS and XOR-MAPPED-ADDRESS both present and different.
    pub fn alg(&self) -> bool {
        matches!((self.mapped_plain, self.mapped), (Some(p), Some(x)) if p != x)
    }

    fn fail(&mut self, detail: String) {
        self.outcome = "io-error";
        self.detail = Some(detail);
    }

    pub(crate) fn record(&mut self, r: &BindingResponse) {
        self.mapped = r.mapped_address();
        self.mapped_plain = r.mapped;
        self.response_origin = r.response_origin;
        self.other_address = r.other_address;
        self.software = r.software.clone();
        self.error_code = r.error.as_ref().map(|e| e.0);
        self.outcome = if r.success {
            "response"
        } else {
            "error-response"
        };
    }
}

impl StunSocket {
    /// Bind a socket at `local` (use a concrete IP: the "no NAT" test compares addresses).
    pub async fn bind(local: SocketAddr) -> io::Result<StunSocket> {
        let socket = Arc::new(UdpSocket::bind(local).await?);
        let local = socket.local_addr()?;
        let waiters: Waiters = Arc::default();
        let reader = {
            let socket = socket.clone();
            let waiters = waiters.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 2048];
                loop {
                    let (n, from) = match socket.recv_from(&mut buf).await {
                        Ok(x) => x,
                        // ICMP errors surface as recv errors on some systems: keep reading.
                        Err(_) => continue,
                    };
                    let Some(bytes) = buf.get(..n) else { continue };
                    let Ok(msg) = Message::parse(bytes) else {
                        tracing::trace!(%from, "ignored a non-STUN datagram");
                        continue;
                    };
                    let id = msg.transaction_id();
                    let tx = waiters.lock().ok().and_then(|w| w.get(&id).cloned());
                    if let Some(tx) = tx {
                        let _ = tx.try_send((bytes.to_vec(), from));
                    }
                }
            })
        };
        Ok(StunSocket {
            socket,
            waiters,
            local,
            reader: Arc::new(reader),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    fn register(&self, id: TransactionId) -> mpsc::Receiver<(Vec<u8>, SocketAddr)> {
        let (tx, rx) = mpsc::channel(8);
        if let Ok(mut w) = self.waiters.lock() {
            w.insert(id, tx);
        }
        rx
    }

    fn unregister(&self, id: &TransactionId) {
        if let Ok(mut w) = self.waiters.lock() {
            w.remove(id);
        }
    }

    /// Run one Binding transaction to `dest` with retransmissions; never fails: the outcome is
    /// in the observation.
    pub async fn transact(
        &self,
        name: &str,
        dest: SocketAddr,
        req: &BindingRequest,
        cfg: RetransmitConfig,
        pacer: &Pacer,
    ) -> Observation {
        let (mut obs, result) = self.exchange(name, dest, req, cfg, pacer, None).await;
        match result {
            Ok((Outcome::Response(r), sends)) => {
                obs.sends = sends;
                obs.from = Some(r.from);
                obs.rtt_ms = r.rtt.map(|d| d.as_secs_f64() * 1000.0);
                match BindingResponse::parse(&r.bytes) {
                    Ok(b) => obs.record(&b),
                    Err(e) => obs.fail(format!("unreadable response: {e}")),
                }
            }
            Ok((Outcome::TimedOut { sends }, _)) => obs.sends = sends,
            Err(e) => obs.fail(e.to_string()),
        }
        obs
    }

    /// Send a request from this socket to `dest` (with the usual retransmissions) and report
    /// whether *another* socket, `receiver`, gets a STUN message with its transaction ID. Used
    /// for hairpinning (the request itself arrives) and binding lifetime (the response, sent
    /// with RESPONSE-PORT, arrives).
    pub async fn deliver(
        &self,
        name: &str,
        dest: SocketAddr,
        req: &BindingRequest,
        receiver: &StunSocket,
        cfg: RetransmitConfig,
        pacer: &Pacer,
    ) -> Observation {
        let (mut obs, result) = self
            .exchange(name, dest, req, cfg, pacer, Some(receiver))
            .await;
        match result {
            Ok((Outcome::Response(r), sends)) => {
                obs.sends = sends;
                obs.outcome = "delivered";
                obs.from = Some(r.from);
                if let Ok(b) = BindingResponse::parse(&r.bytes) {
                    obs.mapped = b.mapped_address();
                    obs.response_origin = b.response_origin;
                }
            }
            Ok((Outcome::TimedOut { sends }, _)) => {
                obs.sends = sends;
                obs.outcome = "not-delivered";
            }
            Err(e) => obs.fail(e.to_string()),
        }
        obs
    }

    /// Encode, pace, register the transaction ID on the socket that should hear back (this one,
    /// or `elsewhere`), drive the transaction, unregister.
    async fn exchange(
        &self,
        name: &str,
        dest: SocketAddr,
        req: &BindingRequest,
        cfg: RetransmitConfig,
        pacer: &Pacer,
        elsewhere: Option<&StunSocket>,
    ) -> (Observation, io::Result<(Outcome, u32)>) {
        let obs = Observation::new(name, self.local, dest, req);
        let id = new_transaction_id();
        let bytes = match req.encode(&id) {
            Ok(b) => b,
            Err(e) => return (obs, Err(io::Error::new(io::ErrorKind::InvalidInput, e))),
        };
        pacer.acquire().await;
        let listener = elsewhere.unwrap_or(self);
        let mut rx = listener.register(id);
        let result = match elsewhere {
            None => self.drive(&bytes, dest, cfg, Some(&mut rx), None).await,
            Some(_) => self.drive(&bytes, dest, cfg, None, Some(&mut rx)).await,
        };
        listener.unregister(&id);
        (obs, result)
    }

    /// Drive a transaction: `own` receives matching responses on this socket; `elsewhere`
    /// receives any message with the ID on another socket (counted as success).
    async fn drive(
        &self,
        bytes: &[u8],
        dest: SocketAddr,
        cfg: RetransmitConfig,
        mut own: Option<&mut mpsc::Receiver<(Vec<u8>, SocketAddr)>>,
        mut elsewhere: Option<&mut mpsc::Receiver<(Vec<u8>, SocketAddr)>>,
    ) -> io::Result<(Outcome, u32)> {
        let mut tx = Transaction::new(Instant::now(), bytes.to_vec(), dest, cfg)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        loop {
            let now = Instant::now();
            while let Some(b) = tx.poll_transmit(now) {
                if let Err(e) = self.socket.send_to(b, dest).await {
                    // Unreachable networks and the like: fatal for this test only.
                    return Err(io::Error::new(e.kind(), format!("sending to {dest}: {e}")));
                }
            }
            if let Some(o) = tx.poll_outcome() {
                return Ok((o, tx.sends()));
            }
            let Some(deadline) = tx.poll_timeout() else {
                return Ok((Outcome::TimedOut { sends: tx.sends() }, tx.sends()));
            };
            let deadline = tokio::time::Instant::from_std(deadline);
            tokio::select! {
                Some((b, from)) = recv_opt(&mut own) => {
                    tx.handle_response(Instant::now(), from, &b);
                }
                Some((b, from)) = recv_opt(&mut elsewhere) => {
                    // Any message with our ID reached the other socket: that is the answer.
                    let sends = tx.sends();
                    let class = Message::parse(&b).map(|m| m.class())
                        .unwrap_or(stun::wire::Class::Request);
                    return Ok((Outcome::Response(stun::transaction::Response {
                        bytes: b, from, class, rtt: None, sends,
                    }), sends));
                }
                () = tokio::time::sleep_until(deadline) => tx.handle_timeout(Instant::now()),
            }
        }
    }
}

async fn recv_opt(
    rx: &mut Option<&mut mpsc::Receiver<(Vec<u8>, SocketAddr)>>,
) -> Option<(Vec<u8>, SocketAddr)> {
    match rx {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 5780 §5: no more than 10 new transactions in any one-second window.
    #[tokio::test(start_paused = true)]
    async fn pacer_allows_ten_per_second() {
        let p = Pacer::new(10);
        let t0 = tokio::time::Instant::now();
        let mut starts = vec![];
        for _ in 0..25 {
            p.acquire().await;
            starts.push(tokio::time::Instant::now() - t0);
        }
        assert!(starts[..10].iter().all(|d| *d == Duration::ZERO));
        assert_eq!(starts[10], Duration::from_secs(1));
        assert_eq!(starts[20], Duration::from_secs(2));
        for w in starts.windows(11) {
            assert!(
                w[10] - w[0] >= Duration::from_secs(1),
                "11 starts within a second"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn unlimited_pacer_never_waits() {
        let p = Pacer::unlimited();
        let t0 = tokio::time::Instant::now();
        for _ in 0..1000 {
            p.acquire().await;
        }
        assert_eq!(tokio::time::Instant::now(), t0);
    }
}
