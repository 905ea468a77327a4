//! Sans-IO STUN client transactions with RFC 8489 §6.2.1 retransmission.
//!
//! A [`Transaction`] never reads the clock or touches a socket. Drive it like this:
//!
//! ```text
//! let mut tx = Transaction::new(now, request, destination, config)?;
//! loop {
//!     while let Some(bytes) = tx.poll_transmit(now) { send(tx.destination(), bytes) }
//!     if let Some(outcome) = tx.poll_outcome() { break outcome }
//!     wait until tx.poll_timeout() or a datagram arrives:
//!         datagram  -> tx.handle_response(now, from, bytes)
//!         timer     -> tx.handle_timeout(now)
//! }
//! ```
//!
//! Retransmission (RFC 8489 §6.2.1): the request is sent at t=0, then again after RTO, 2·RTO,
//! 4·RTO... for `rc` sends in all; after the last send the client waits `rm`·RTO before giving up.
//! With the RFC defaults (RTO 500 ms, Rc 7, Rm 16) that is sends at 0, 0.5, 1.5, 3.5, 7.5, 15.5
//! and 31.5 s and a timeout at 39.5 s.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::wire::{Class, Message, TransactionId, WireError};

/// Retransmission parameters (RFC 8489 §6.2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetransmitConfig {
    /// Initial retransmission timeout.
    pub rto: Duration,
    /// Total number of sends (the first one included).
    pub rc: u32,
    /// After the last send, wait `rm` times the initial RTO for a response.
    pub rm: u32,
}

impl RetransmitConfig {
    /// The RFC 8489 defaults: RTO 500 ms, Rc 7, Rm 16.
    pub const RFC8489: RetransmitConfig = RetransmitConfig {
        rto: Duration::from_millis(500),
        rc: 7,
        rm: 16,
    };

    /// A faster profile for diagnostics: RTO 100 ms, Rc 4, Rm 4 (sends at 0, 0.1, 0.3 and
    /// 0.7 s; gives up at 1.1 s). Four sends keep a test correct under moderate loss while a
    /// negative result (a filtered response) is known in about one second.
    pub const DIAGNOSTIC: RetransmitConfig = RetransmitConfig {
        rto: Duration::from_millis(100),
        rc: 4,
        rm: 4,
    };

    /// Time from the first send until the transaction gives up (saturating: absurd settings
    /// give a huge duration, never a panic).
    pub fn total_timeout(&self) -> Duration {
        let rc = self.rc.max(1);
        // Sends happen at rto * (2^k - 1) for k in 0..rc; the wait after the last is rm * rto.
        let last_send = self
            .rto
            .saturating_mul(2u32.saturating_pow(rc - 1).saturating_sub(1));
        last_send.saturating_add(self.rto.saturating_mul(self.rm))
    }
}

impl Default for RetransmitConfig {
    fn default() -> Self {
        Self::RFC8489
    }
}

/// How a transaction ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A response (success or error) arrived.
    Response(Response),
    /// No response after every retransmission.
    TimedOut {
        /// Number of times the request was sent.
        sends: u32,
    },
}

/// A response matched to its transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The raw response message, already checked by [`Message::parse`].
    pub bytes: Vec<u8>,
    /// Where the response came from.
    pub from: SocketAddr,
    /// Success or error response.
    pub class: Class,
    /// Round-trip time, measured only if the request was not retransmitted (Karn's rule).
    pub rtt: Option<Duration>,
    /// Number of sends before the response arrived.
    pub sends: u32,
}

impl Response {
    /// Re-parse the stored bytes.
    pub fn message(&self) -> Result<Message<'_>, WireError> {
        Message::parse(&self.bytes)
    }
}

/// What `handle_response` made of a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Matched {
    /// The datagram is the response to this transaction; the outcome is ready.
    Yes,
    /// Not for this transaction (other ID, not a response, or already finished).
    No,
}

/// One client transaction.
#[derive(Debug)]
pub struct Transaction {
    id: TransactionId,
    request: Vec<u8>,
    destination: SocketAddr,
    config: RetransmitConfig,
    started: Option<Instant>,
    method: u16,
    sends: u32,
    next_send: Option<Instant>,
    deadline: Option<Instant>,
    rto: Duration,
    outcome: Option<Outcome>,
    delivered: bool,
}

impl Transaction {
    /// A new transaction for an encoded request. The first send is due at `now`.
    ///
    /// Fails if `request` is not a well-formed STUN request.
    pub fn new(
        now: Instant,
        request: Vec<u8>,
        destination: SocketAddr,
        config: RetransmitConfig,
    ) -> Result<Self, WireError> {
        let msg = Message::parse(&request)?;
        if msg.class() != Class::Request {
            return Err(WireError::NotStun);
        }
        let id = msg.transaction_id();
        let method = msg.method();
        Ok(Transaction {
            id,
            request,
            destination,
            config: RetransmitConfig {
                rc: config.rc.max(1),
                ..config
            },
            started: None,
            method,
            sends: 0,
            next_send: Some(now),
            deadline: None,
            rto: config.rto,
            outcome: None,
            delivered: false,
        })
    }

    /// The transaction ID.
    pub fn id(&self) -> &TransactionId {
        &self.id
    }

    /// Where the request goes.
    pub fn destination(&self) -> SocketAddr {
        self.destination
    }

    /// Number of sends so far.
    pub fn sends(&self) -> u32 {
        self.sends
    }

    /// True once an outcome is known.
    pub fn is_done(&self) -> bool {
        self.outcome.is_some()
    }

    /// Feed a datagram received from `from`. Returns whether it answered this transaction.
    ///
    /// Responses are matched on the transaction ID only: RFC 5780 responses legitimately come
    /// from another address than the request went to. The caller checks the source.
    pub fn handle_response(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) -> Matched {
        if self.outcome.is_some() {
            return Matched::No;
        }
        let Ok(msg) = Message::parse(bytes) else {
            return Matched::No;
        };
        let class = msg.class();
        if msg.transaction_id() != self.id
            || msg.method() != self.method
            || !matches!(class, Class::Success | Class::Error)
        {
            return Matched::No;
        }
        let rtt = match (self.sends, self.started) {
            (1, Some(t)) => Some(now.saturating_duration_since(t)),
            _ => None,
        };
        self.outcome = Some(Outcome::Response(Response {
            bytes: bytes.to_vec(),
            from,
            class,
            rtt,
            sends: self.sends,
        }));
        self.next_send = None;
        self.deadline = None;
        Matched::Yes
    }

    /// Advance time. Harmless when called early or more than once.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.outcome.is_some() {
            return;
        }
        if let Some(d) = self.deadline {
            if now >= d {
                self.outcome = Some(Outcome::TimedOut { sends: self.sends });
                self.next_send = None;
                self.deadline = None;
            }
        }
    }

    /// The request bytes, if a send is due at `now`.
    #[must_use]
    pub fn poll_transmit(&mut self, now: Instant) -> Option<&[u8]> {
        if self.outcome.is_some() {
            return None;
        }
        let due = match (self.sends, self.next_send) {
            (0, _) => true,
            (_, Some(t)) => now >= t,
            (_, None) => false,
        };
        // (The first send is due whenever it is polled: `now` in `new` only feeds
        // `poll_timeout`.)
        if !due {
            return None;
        }
        if self.sends == 0 {
            self.started = Some(now);
        } else {
            self.rto = self.rto.saturating_mul(2);
        }
        self.sends += 1;
        if self.sends < self.config.rc {
            self.next_send = Some(later(now, self.rto));
        } else {
            self.next_send = None;
            self.deadline = Some(later(now, self.config.rto.saturating_mul(self.config.rm)));
        }
        Some(&self.request)
    }

    /// When `handle_timeout` or `poll_transmit` next has something to do.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.outcome.is_some() {
            return None;
        }
        self.next_send.or(self.deadline)
    }

    /// The outcome, once, when known.
    #[must_use]
    pub fn poll_outcome(&mut self) -> Option<Outcome> {
        if self.delivered {
            return None;
        }
        let o = self.outcome.clone()?;
        self.delivered = true;
        Some(o)
    }
}

/// `now + d`, or a point so far ahead it never comes when that overflows `Instant`.
fn later(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .or_else(|| now.checked_add(Duration::from_secs(100 * 365 * 86_400)))
        .unwrap_or(now)
}

/// A fresh random transaction ID.
pub fn new_transaction_id() -> TransactionId {
    rand::random()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{BINDING, MessageWriter, message_type};

    fn request(id: TransactionId) -> Vec<u8> {
        let mut buf = [0u8; 64];
        let w = MessageWriter::new(&mut buf, message_type(BINDING, Class::Request), &id).unwrap();
        let n = w.finish();
        buf[..n].to_vec()
    }

    fn response(id: TransactionId, class: Class) -> Vec<u8> {
        let mut buf = [0u8; 64];
        let w = MessageWriter::new(&mut buf, message_type(BINDING, class), &id).unwrap();
        let n = w.finish();
        buf[..n].to_vec()
    }

    /// Run a transaction with no responses under a virtual clock; return send times and the
    /// time of the timeout, relative to the start.
    fn schedule(cfg: RetransmitConfig) -> (Vec<Duration>, Duration) {
        let t0 = Instant::now();
        let dst = "192.0.2.1:3478".parse().unwrap();
        let mut tx = Transaction::new(t0, request([1; 12]), dst, cfg).unwrap();
        let mut now = t0;
        let mut sends = vec![];
        for _ in 0..100 {
            while tx.poll_transmit(now).is_some() {
                sends.push(now - t0);
            }
            if let Some(o) = tx.poll_outcome() {
                assert_eq!(o, Outcome::TimedOut { sends: cfg.rc });
                return (sends, now - t0);
            }
            now = tx
                .poll_timeout()
                .expect("a pending transaction has a timeout");
            tx.handle_timeout(now);
        }
        panic!("transaction never finished");
    }

    #[test]
    fn rfc8489_6_2_1_schedule() {
        // RFC 8489 §6.2.1: "sent at times 0 ms, 500 ms, 1500 ms, 3500 ms, 7500 ms, 15500 ms,
        // and 31500 ms ... the client will consider the transaction to have failed at 39500 ms".
        let (sends, end) = schedule(RetransmitConfig::RFC8489);
        let ms: Vec<u128> = sends.iter().map(|d| d.as_millis()).collect();
        assert_eq!(ms, [0, 500, 1500, 3500, 7500, 15500, 31500]);
        assert_eq!(end, Duration::from_millis(39500));
        assert_eq!(RetransmitConfig::RFC8489.total_timeout(), end);
    }

    #[test]
    fn diagnostic_schedule() {
        let (sends, end) = schedule(RetransmitConfig::DIAGNOSTIC);
        let ms: Vec<u128> = sends.iter().map(|d| d.as_millis()).collect();
        assert_eq!(ms, [0, 100, 300, 700]);
        assert_eq!(end, Duration::from_millis(1100));
        assert_eq!(RetransmitConfig::DIAGNOSTIC.total_timeout(), end);
    }

    #[test]
    fn custom_schedule_single_send() {
        let cfg = RetransmitConfig {
            rto: Duration::from_millis(50),
            rc: 1,
            rm: 3,
        };
        let (sends, end) = schedule(cfg);
        assert_eq!(sends, [Duration::ZERO]);
        assert_eq!(end, Duration::from_millis(150));
    }

    #[test]
    fn matches_by_transaction_id_and_measures_rtt() {
        let t0 = Instant::now();
        let dst: SocketAddr = "192.0.2.1:3478".parse().unwrap();
        let other: SocketAddr = "192.0.2.2:3479".parse().unwrap();
        let mut tx =
            Transaction::new(t0, request([9; 12]), dst, RetransmitConfig::DIAGNOSTIC).unwrap();
        assert!(tx.poll_transmit(t0).is_some());
        let t1 = t0 + Duration::from_millis(30);
        // Wrong ID, a request with the right ID, garbage: none match.
        assert_eq!(
            tx.handle_response(t1, dst, &response([8; 12], Class::Success)),
            Matched::No
        );
        assert_eq!(tx.handle_response(t1, dst, &request([9; 12])), Matched::No);
        assert_eq!(tx.handle_response(t1, dst, &[0xff; 7]), Matched::No);
        assert!(tx.poll_outcome().is_none());
        // The right one, from another address (RFC 5780 CHANGE-REQUEST): matches.
        assert_eq!(
            tx.handle_response(t1, other, &response([9; 12], Class::Error)),
            Matched::Yes
        );
        let Some(Outcome::Response(r)) = tx.poll_outcome() else {
            panic!("expected a response")
        };
        assert_eq!(r.from, other);
        assert_eq!(r.class, Class::Error);
        assert_eq!(r.rtt, Some(Duration::from_millis(30)));
        assert_eq!(r.sends, 1);
        assert!(tx.poll_outcome().is_none(), "the outcome is delivered once");
        assert!(tx.poll_transmit(t1 + Duration::from_secs(5)).is_none());
        assert_eq!(tx.poll_timeout(), None);
        // A duplicate response after completion is not matched again.
        assert_eq!(
            tx.handle_response(t1, dst, &response([9; 12], Class::Success)),
            Matched::No
        );
    }

    #[test]
    fn no_rtt_after_retransmission_karn() {
        let t0 = Instant::now();
        let dst: SocketAddr = "192.0.2.1:3478".parse().unwrap();
        let mut tx =
            Transaction::new(t0, request([3; 12]), dst, RetransmitConfig::DIAGNOSTIC).unwrap();
        assert!(tx.poll_transmit(t0).is_some());
        let t = tx.poll_timeout().unwrap();
        assert_eq!(t - t0, Duration::from_millis(100));
        assert!(
            tx.poll_transmit(t - Duration::from_millis(1)).is_none(),
            "not due yet"
        );
        assert!(tx.poll_transmit(t).is_some());
        tx.handle_timeout(t);
        assert!(!tx.is_done(), "a retransmission timer is not the deadline");
        tx.handle_response(t, dst, &response([3; 12], Class::Success));
        let Some(Outcome::Response(r)) = tx.poll_outcome() else {
            panic!("expected a response")
        };
        assert_eq!(r.rtt, None);
        assert_eq!(r.sends, 2);
    }

    #[test]
    fn first_send_is_due_at_creation() {
        // A driver that sleeps until poll_timeout before polling transmits must not stall.
        let t0 = Instant::now();
        let dst = "192.0.2.1:3478".parse().unwrap();
        let mut tx =
            Transaction::new(t0, request([2; 12]), dst, RetransmitConfig::RFC8489).unwrap();
        assert_eq!(tx.poll_timeout(), Some(t0));
        assert!(tx.poll_transmit(t0).is_some());
        assert_eq!(tx.poll_timeout(), Some(t0 + Duration::from_millis(500)));
    }

    #[test]
    fn response_of_another_method_does_not_match() {
        let t0 = Instant::now();
        let dst = "192.0.2.1:3478".parse().unwrap();
        let mut tx =
            Transaction::new(t0, request([4; 12]), dst, RetransmitConfig::DIAGNOSTIC).unwrap();
        assert!(tx.poll_transmit(t0).is_some());
        let mut buf = [0u8; 64];
        // An Allocate (0x003) success with the same transaction ID.
        let w =
            MessageWriter::new(&mut buf, message_type(0x003, Class::Success), &[4; 12]).unwrap();
        let n = w.finish();
        assert_eq!(tx.handle_response(t0, dst, &buf[..n]), Matched::No);
    }

    #[test]
    fn absurd_settings_saturate_instead_of_panicking() {
        let cfg = RetransmitConfig {
            rto: Duration::from_millis(u64::MAX),
            rc: u32::MAX,
            rm: u32::MAX,
        };
        let _ = cfg.total_timeout();
        let t0 = Instant::now();
        let dst = "192.0.2.1:3478".parse().unwrap();
        let mut tx = Transaction::new(t0, request([5; 12]), dst, cfg).unwrap();
        for _ in 0..100 {
            let _ = tx.poll_transmit(t0);
            let t = tx.poll_timeout().unwrap();
            let _ = tx.poll_transmit(t);
            tx.handle_timeout(t);
        }
        let rc1 = RetransmitConfig { rc: 1, ..cfg };
        let mut tx = Transaction::new(t0, request([6; 12]), dst, rc1).unwrap();
        assert!(tx.poll_transmit(t0).is_some());
        assert!(tx.poll_timeout().is_some());
    }

    #[test]
    fn rejects_non_stun_request() {
        let dst = "192.0.2.1:3478".parse().unwrap();
        let now = Instant::now();
        assert!(Transaction::new(now, vec![1, 2, 3], dst, RetransmitConfig::default()).is_err());
        // A response or an indication is not a request.
        for class in [Class::Success, Class::Error, Class::Indication] {
            let r = response([1; 12], class);
            assert!(Transaction::new(now, r, dst, RetransmitConfig::default()).is_err());
        }
    }
}
