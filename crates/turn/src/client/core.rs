//! The sans-IO client state machine: one allocation on one server.

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use rand::RngCore;
use rand::SeedableRng;
use rand::rngs::StdRng;
use stun::credentials::{self, Challenge, Key, LongTerm};
use stun::transaction::{Matched, Outcome, Response, RetransmitConfig, Transaction};
use stun::wire::{Class, Message, TransactionId, attr};
use tracing::debug;

use super::request::{encode_channel_data, encode_request, encode_send};
use super::{ClientError, Config, Event, Request, State, Transmit};
use crate::proto::{self, ChannelData, Framing};

/// A permission is refreshed this long after it was installed (it lives 300 s, RFC 8656 §9),
/// leaving a full UDP transaction timeout (39.5 s) of slack.
pub const PERMISSION_REFRESH: Duration = Duration::from_secs(240);
/// A channel binding is refreshed this long after it was bound (it lives 600 s, §12).
pub const CHANNEL_REFRESH: Duration = Duration::from_secs(540);
/// After a Refresh fails without killing the allocation (a timeout, a 5xx), try again this
/// much later, for as long as the allocation has not expired.
pub const REFRESH_RETRY: Duration = Duration::from_secs(10);
/// How many 438 Stale Nonce answers one request may get before it fails.
pub const MAX_STALE_NONCE_RETRIES: u32 = 3;
/// Data waiting for a permission or channel to be installed, at most (oldest dropped first).
pub const MAX_QUEUED: usize = 64;

/// When to refresh an allocation granted `lifetime`: a minute before it ends, or at three
/// quarters of it when it is shorter than four minutes.
pub fn refresh_delay(lifetime: Duration) -> Duration {
    lifetime.saturating_sub(Duration::from_secs(60).min(lifetime / 4))
}

#[derive(Debug)]
struct Pending {
    request: Request,
    tx: Transaction,
    /// The request carried credentials: responses other than 401/438 must verify.
    signed: bool,
    stale_retries: u32,
}

#[derive(Debug)]
struct Auth {
    creds: LongTerm,
    key: Key,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Permission {
    installed: bool,
    in_flight: bool,
    refresh_at: Option<Instant>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Channel {
    number: u16,
    bound: bool,
    in_flight: bool,
    refresh_at: Option<Instant>,
    /// Until when the server may hold this binding (the last success or an unanswered
    /// attempt, plus the channel lifetime); `None` when it never could have.
    server_until: Option<Instant>,
    /// After a failed refresh: when the number stops being reserved (the server's binding
    /// plus the cool-down of RFC 8656 §12.1). The entry lives until then, delivering the
    /// server's ChannelData and keeping the number from other peers.
    release_at: Option<Instant>,
}

/// A sans-IO TURN client for one allocation on one server (RFC 8656).
///
/// It never reads the clock or touches a socket: every entry point takes `now`, and the caller
/// drains [`poll_transmit`](Client::poll_transmit), [`poll_event`](Client::poll_event) and
/// [`poll_timeout`](Client::poll_timeout) after each call. See the [module docs](super).
#[derive(Debug)]
pub struct Client {
    config: Config,
    timers: RetransmitConfig,
    rng: StdRng,
    now: Option<Instant>,
    state: State,
    auth: Option<Auth>,
    pending: Vec<Pending>,
    relayed: Option<SocketAddr>,
    mapped: Option<SocketAddr>,
    lifetime: Duration,
    expires_at: Option<Instant>,
    refresh_at: Option<Instant>,
    permissions: BTreeMap<IpAddr, Permission>,
    channels: BTreeMap<SocketAddr, Channel>,
    queued: VecDeque<(SocketAddr, Vec<u8>)>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
}

impl Client {
    /// A client for `config`, drawing transaction IDs from `rng`.
    pub fn new(config: Config, rng: StdRng) -> Client {
        Client {
            timers: config.transaction_timers(),
            config,
            rng,
            now: None,
            state: State::Idle,
            auth: None,
            pending: vec![],
            relayed: None,
            mapped: None,
            lifetime: Duration::ZERO,
            expires_at: None,
            refresh_at: None,
            permissions: BTreeMap::new(),
            channels: BTreeMap::new(),
            queued: VecDeque::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// A client whose transaction IDs come from a [`StdRng`] seeded with `seed`.
    pub fn with_seed(config: Config, seed: u64) -> Client {
        Client::new(config, StdRng::seed_from_u64(seed))
    }

    // ---------------------------------------------------------------------------------------
    // Getters.

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Where the allocation stands.
    pub fn state(&self) -> State {
        self.state
    }

    /// XOR-RELAYED-ADDRESS, once allocated.
    pub fn relayed_address(&self) -> Option<SocketAddr> {
        self.relayed
    }

    /// XOR-MAPPED-ADDRESS from the Allocate response (the server-reflexive address).
    pub fn mapped_address(&self) -> Option<SocketAddr> {
        self.mapped
    }

    /// The lifetime last granted (zero before allocation).
    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// When the allocation expires unless refreshed.
    pub fn expires_at(&self) -> Option<Instant> {
        self.expires_at
    }

    /// The channel bound (or being bound) to `peer`, and whether the server confirmed it.
    pub fn channel(&self, peer: SocketAddr) -> Option<(u16, bool)> {
        self.channels.get(&peer).map(|c| (c.number, c.bound))
    }

    /// True when a permission for `ip` is installed on the server.
    pub fn has_permission(&self, ip: IpAddr) -> bool {
        self.permissions.get(&ip).is_some_and(|p| p.installed)
    }

    // ---------------------------------------------------------------------------------------
    // Input.

    /// Feed bytes that came from the server: one UDP datagram, or one whole TCP/TLS frame (see
    /// [`StreamDecoder`](super::StreamDecoder)). Anything malformed, unexpected or failing
    /// integrity is ignored.
    pub fn handle_input(&mut self, now: Instant, bytes: &[u8]) {
        self.now = Some(now);
        match proto::framing(bytes) {
            Framing::ChannelData => self.handle_channel_data(bytes),
            Framing::Stun => match Message::parse(bytes) {
                // A FINGERPRINT, when present, must be right (RFC 8489 §7.3).
                Ok(msg) if msg.check_fingerprint().is_ok() => self.handle_stun(now, &msg),
                Ok(_) => debug!("ignoring STUN with a bad FINGERPRINT"),
                Err(e) => debug!("ignoring malformed STUN from the server: {e}"),
            },
            Framing::Other => debug!("ignoring {} bytes of non-TURN input", bytes.len()),
        }
    }

    fn handle_channel_data(&mut self, bytes: &[u8]) {
        let cd = match ChannelData::parse(bytes) {
            Ok(cd) => cd,
            Err(e) => {
                debug!("ignoring malformed ChannelData: {e}");
                return;
            }
        };
        let peer = self
            .channels
            .iter()
            .find(|(_, c)| c.number == cd.channel)
            .map(|(p, _)| *p);
        match peer {
            Some(peer) => self.events.push_back(Event::Data {
                peer,
                data: cd.data.to_vec(),
            }),
            None => debug!(
                "ignoring ChannelData on unbound channel {:#06x}",
                cd.channel
            ),
        }
    }

    fn handle_stun(&mut self, now: Instant, msg: &Message<'_>) {
        match msg.class() {
            Class::Indication if msg.method() == proto::DATA => {
                let peer = msg.address(attr::XOR_PEER_ADDRESS).and_then(Result::ok);
                let data = msg.get(attr::DATA);
                match (peer, data) {
                    (Some(peer), Some(data)) => self.events.push_back(Event::Data {
                        peer,
                        data: data.value.to_vec(),
                    }),
                    _ => debug!("ignoring Data indication without peer or data"),
                }
            }
            Class::Success | Class::Error => self.handle_response(now, msg),
            _ => debug!("ignoring STUN message of type {:#06x}", msg.message_type()),
        }
    }

    fn handle_response(&mut self, now: Instant, msg: &Message<'_>) {
        let id = msg.transaction_id();
        let Some(i) = self.pending.iter().position(|p| *p.tx.id() == id) else {
            debug!("ignoring a response to no pending transaction");
            return;
        };
        if self.pending[i].signed && !self.integrity_ok(msg) {
            debug!("ignoring a response whose integrity does not verify");
            return;
        }
        let server = self.config.server;
        if self.pending[i]
            .tx
            .handle_response(now, server, msg.as_bytes())
            != Matched::Yes
        {
            return;
        }
        let mut p = self.pending.swap_remove(i);
        if let Some(Outcome::Response(r)) = p.tx.poll_outcome() {
            self.on_response(now, p, &r);
        }
    }

    /// RFC 8489 §9.2.5: 401 and 438 are read without integrity (the client may hold the wrong
    /// key or nonce); every other response to a signed request must verify.
    fn integrity_ok(&self, msg: &Message<'_>) -> bool {
        if msg.class() == Class::Error
            && matches!(credentials::error_code(msg), Some((401 | 438, _)))
        {
            return true;
        }
        match &self.auth {
            Some(a) => credentials::verify(msg, &a.key).is_ok(),
            None => false,
        }
    }

    fn on_response(&mut self, now: Instant, p: Pending, r: &Response) {
        let Ok(msg) = r.message() else {
            return;
        };
        if r.class == Class::Success {
            self.on_success(now, p.request, &msg);
            return;
        }
        let (code, reason) = credentials::error_code(&msg).unwrap_or((0, ""));
        if code == 401 || code == 438 {
            if code == 401 && p.signed {
                self.fail(now, p.request, ClientError::Unauthenticated);
                return;
            }
            if p.stale_retries >= MAX_STALE_NONCE_RETRIES {
                let retries = p.stale_retries;
                self.fail(now, p.request, ClientError::StaleNonceLoop { retries });
                return;
            }
            let Some(challenge) = Challenge::from_message(&msg) else {
                let reason = format!("{reason} (without REALM and NONCE)");
                self.fail(now, p.request, ClientError::Other { code, reason });
                return;
            };
            if let Err(e) = self.accept_challenge(&challenge) {
                self.fail(now, p.request, e);
                return;
            }
            self.start(now, p.request, p.stale_retries + 1);
            return;
        }
        let alternate = msg.address(attr::ALTERNATE_SERVER).and_then(Result::ok);
        self.fail(
            now,
            p.request,
            ClientError::from_response(code, reason, alternate),
        );
    }

    fn accept_challenge(&mut self, challenge: &Challenge) -> Result<(), ClientError> {
        let creds = challenge.credentials(&self.config.username, &self.config.password)?;
        let key = match &self.auth {
            // The key depends on realm and algorithm, not on the nonce: skip the derivation.
            Some(a) if a.creds.realm == creds.realm && a.creds.algorithm == creds.algorithm => {
                a.key.clone()
            }
            _ => creds.key()?,
        };
        self.auth = Some(Auth { creds, key });
        Ok(())
    }

    fn on_success(&mut self, now: Instant, request: Request, msg: &Message<'_>) {
        let lifetime = msg
            .get(attr::LIFETIME)
            .and_then(|a| <[u8; 4]>::try_from(a.value).ok())
            .map(|v| Duration::from_secs(u64::from(u32::from_be_bytes(v))));
        match request {
            Request::Allocate => {
                if self.state != State::Allocating {
                    return;
                }
                let Some(Ok(relayed)) = msg.address(attr::XOR_RELAYED_ADDRESS) else {
                    let reason = "Allocate success without XOR-RELAYED-ADDRESS".to_owned();
                    self.fail(now, request, ClientError::Other { code: 0, reason });
                    return;
                };
                let lifetime = lifetime.unwrap_or(proto::DEFAULT_LIFETIME);
                self.relayed = Some(relayed);
                self.mapped = msg.address(attr::XOR_MAPPED_ADDRESS).and_then(Result::ok);
                self.state = State::Allocated;
                self.schedule_refresh(now, lifetime);
                self.events.push_back(Event::Allocated {
                    relayed,
                    mapped: self.mapped,
                    lifetime,
                });
            }
            Request::Refresh { lifetime: Some(0) } => self.closed(None),
            Request::Refresh { .. } => {
                if self.state != State::Allocated {
                    return;
                }
                let lifetime = lifetime.unwrap_or(proto::DEFAULT_LIFETIME);
                if lifetime.is_zero() {
                    self.closed(None);
                    return;
                }
                self.schedule_refresh(now, lifetime);
                self.events.push_back(Event::Refreshed { lifetime });
            }
            Request::CreatePermission { peer } => {
                let Some(p) = self.permissions.get_mut(&peer.ip()) else {
                    return;
                };
                p.installed = true;
                p.in_flight = false;
                p.refresh_at = Some(later(now, PERMISSION_REFRESH));
                self.events
                    .push_back(Event::PermissionCreated { peer: peer.ip() });
                self.flush_queue(|q| q.ip() == peer.ip());
            }
            Request::ChannelBind { peer, channel } => {
                let Some(c) = self.channels.get_mut(&peer) else {
                    return;
                };
                c.bound = true;
                c.in_flight = false;
                c.refresh_at = Some(later(now, CHANNEL_REFRESH));
                c.server_until = Some(later(now, proto::CHANNEL_LIFETIME));
                c.release_at = None;
                // A binding installs or refreshes the permission for the peer's IP (§12.2).
                let perm = self.permissions.entry(peer.ip()).or_insert(Permission {
                    installed: false,
                    in_flight: false,
                    refresh_at: None,
                });
                if !perm.in_flight {
                    perm.installed = true;
                    perm.refresh_at = Some(later(now, PERMISSION_REFRESH));
                }
                self.events.push_back(Event::ChannelBound { peer, channel });
                self.flush_queue(|q| q == peer);
            }
        }
    }

    // ---------------------------------------------------------------------------------------
    // Time.

    /// Advance time: retransmissions, transaction timeouts, refreshes, expiry. Harmless when
    /// called early or twice.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = Some(now);
        let mut i = 0;
        while i < self.pending.len() {
            self.pending[i].tx.handle_timeout(now);
            if let Some(Outcome::TimedOut { sends }) = self.pending[i].tx.poll_outcome() {
                let p = self.pending.swap_remove(i);
                self.fail(now, p.request, ClientError::Timeout { sends });
            } else {
                i += 1;
            }
        }
        if self.state != State::Allocated {
            return;
        }
        if self.expires_at.is_some_and(|t| now >= t) {
            self.closed(Some(ClientError::Expired));
            return;
        }
        if self.refresh_at.is_some_and(|t| now >= t) {
            self.refresh_at = None;
            self.start_refresh(now);
        }
        let due: Vec<IpAddr> = self
            .permissions
            .iter()
            .filter(|(_, p)| !p.in_flight && p.refresh_at.is_some_and(|t| now >= t))
            .map(|(ip, _)| *ip)
            .collect();
        for ip in due {
            if let Some(p) = self.permissions.get_mut(&ip) {
                p.in_flight = true;
                p.refresh_at = None;
            }
            let peer = SocketAddr::new(ip, 0);
            self.start(now, Request::CreatePermission { peer }, 0);
        }
        let due: Vec<(SocketAddr, u16)> = self
            .channels
            .iter()
            .filter(|(_, c)| !c.in_flight && c.refresh_at.is_some_and(|t| now >= t))
            .map(|(peer, c)| (*peer, c.number))
            .collect();
        for (peer, channel) in due {
            if let Some(c) = self.channels.get_mut(&peer) {
                c.in_flight = true;
                c.refresh_at = None;
            }
            self.start(now, Request::ChannelBind { peer, channel }, 0);
        }
        // Reserved numbers whose cool-down is over are free again.
        self.channels
            .retain(|_, c| c.bound || c.in_flight || c.release_at.is_none_or(|t| now < t));
    }

    /// The TCP/TLS connection to the server is gone, and the allocation with it (RFC 8656
    /// §3.1: an allocation on a stream lives as long as the connection).
    pub fn handle_connection_lost(&mut self, now: Instant) {
        self.now = Some(now);
        self.closed(Some(ClientError::ConnectionLost));
    }

    // ---------------------------------------------------------------------------------------
    // Commands.

    /// Start the allocation: an Allocate without credentials, answered by a 401 challenge,
    /// then the same request signed (RFC 8656 §7.1, RFC 8489 §9.2).
    pub fn allocate(&mut self, now: Instant) -> Result<(), ClientError> {
        self.now = Some(now);
        if self.state != State::Idle {
            return Err(ClientError::BadState(self.state));
        }
        self.state = State::Allocating;
        self.start(now, Request::Allocate, 0);
        Ok(())
    }

    /// Install a permission for `peer`'s IP address (RFC 8656 §10); it is kept alive (refreshed
    /// every [`PERMISSION_REFRESH`]) until the allocation ends.
    pub fn create_permission(&mut self, now: Instant, peer: SocketAddr) -> Result<(), ClientError> {
        self.now = Some(now);
        self.check_peer(peer)?;
        if let Some(p) = self.permissions.get(&peer.ip()) {
            if p.installed || p.in_flight {
                return Ok(());
            }
        }
        self.permissions.insert(
            peer.ip(),
            Permission {
                installed: false,
                in_flight: true,
                refresh_at: None,
            },
        );
        self.start(now, Request::CreatePermission { peer }, 0);
        Ok(())
    }

    /// Bind a channel to `peer` (RFC 8656 §12); returns its number (the lowest free one from
    /// 0x4000). The binding also installs the permission, and is refreshed every
    /// [`CHANNEL_REFRESH`] until the allocation ends.
    pub fn bind_channel(&mut self, now: Instant, peer: SocketAddr) -> Result<u16, ClientError> {
        self.now = Some(now);
        self.check_peer(peer)?;
        if let Some(c) = self.channels.get_mut(&peer) {
            let channel = c.number;
            if !c.bound && !c.in_flight {
                // Reserved after a failed refresh: bind the same number again now.
                c.in_flight = true;
                c.refresh_at = None;
                self.start(now, Request::ChannelBind { peer, channel }, 0);
            }
            return Ok(channel);
        }
        // Numbers of every entry are taken, including those reserved after a failure: the
        // server may still hold them, or be cooling them down (RFC 8656 §12.1).
        let channel = (proto::CHANNEL_MIN..=proto::CHANNEL_MAX)
            .find(|n| self.channels.values().all(|c| c.number != *n))
            .ok_or(ClientError::ChannelsExhausted)?;
        self.channels.insert(
            peer,
            Channel {
                number: channel,
                bound: false,
                in_flight: true,
                refresh_at: None,
                server_until: None,
                release_at: None,
            },
        );
        self.start(now, Request::ChannelBind { peer, channel }, 0);
        Ok(channel)
    }

    /// Send `data` to `peer` through the relay: as ChannelData when a channel is bound, else as
    /// a Send indication once a permission is installed. Without either, a permission is
    /// requested and the data waits for it (at most [`MAX_QUEUED`] datagrams in all).
    pub fn send_to(
        &mut self,
        now: Instant,
        peer: SocketAddr,
        data: &[u8],
    ) -> Result<(), ClientError> {
        self.now = Some(now);
        self.check_peer(peer)?;
        if data.len() > usize::from(u16::MAX) - 64 {
            return Err(ClientError::TooLarge(data.len()));
        }
        let ready = self.channels.get(&peer).is_some_and(|c| c.bound)
            || self
                .permissions
                .get(&peer.ip())
                .is_some_and(|p| p.installed);
        if ready {
            return self.transmit_data(peer, data);
        }
        let waiting = self.channels.get(&peer).is_some_and(|c| c.in_flight)
            || self
                .permissions
                .get(&peer.ip())
                .is_some_and(|p| p.in_flight);
        if !waiting {
            self.create_permission(now, peer)?;
        }
        if self.queued.len() >= MAX_QUEUED {
            self.queued.pop_front();
        }
        self.queued.push_back((peer, data.to_vec()));
        Ok(())
    }

    /// Refresh the allocation now (it is refreshed automatically before it expires).
    pub fn refresh(&mut self, now: Instant) -> Result<(), ClientError> {
        self.now = Some(now);
        if self.state != State::Allocated {
            return Err(ClientError::NotAllocated);
        }
        self.start_refresh(now);
        Ok(())
    }

    /// Deallocate (Refresh with LIFETIME 0, RFC 8656 §8). [`Event::Closed`] follows when the
    /// server answered or the request timed out. Without an allocation the client closes at
    /// once (an Allocate still in flight is abandoned).
    pub fn close(&mut self, now: Instant) {
        self.now = Some(now);
        match self.state {
            State::Allocated => {
                self.state = State::Closing;
                self.pending.clear();
                self.queued.clear();
                self.start(now, Request::Refresh { lifetime: Some(0) }, 0);
            }
            State::Idle | State::Allocating => self.closed(None),
            State::Closing | State::Closed => {}
        }
    }

    // ---------------------------------------------------------------------------------------
    // Polls.

    /// The next message to send to the server.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        if let Some(t) = self.transmits.pop_front() {
            return Some(t);
        }
        let now = self.now?;
        let destination = self.config.server;
        self.pending.iter_mut().find_map(|p| {
            p.tx.poll_transmit(now).map(|b| Transmit {
                destination,
                payload: b.to_vec(),
            })
        })
    }

    /// When [`handle_timeout`](Client::handle_timeout) next has work to do.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut t = self
            .pending
            .iter()
            .filter_map(|p| p.tx.poll_timeout())
            .min();
        if self.state == State::Allocated {
            let timers = [self.refresh_at, self.expires_at]
                .into_iter()
                .chain(
                    self.permissions
                        .values()
                        .filter(|p| !p.in_flight)
                        .map(|p| p.refresh_at),
                )
                .chain(
                    self.channels
                        .values()
                        .filter(|c| !c.in_flight)
                        .flat_map(|c| [c.refresh_at, c.release_at]),
                )
                .flatten();
            for x in timers {
                t = Some(t.map_or(x, |t| t.min(x)));
            }
        }
        t
    }

    /// The next event.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    // ---------------------------------------------------------------------------------------
    // Internals.

    fn check_peer(&self, peer: SocketAddr) -> Result<(), ClientError> {
        let relayed = match self.state {
            State::Allocated => self.relayed.ok_or(ClientError::NotAllocated)?,
            _ => return Err(ClientError::NotAllocated),
        };
        if relayed.is_ipv4() != peer.is_ipv4() {
            return Err(ClientError::PeerFamilyMismatch(peer));
        }
        Ok(())
    }

    fn transmit_data(&mut self, peer: SocketAddr, data: &[u8]) -> Result<(), ClientError> {
        let payload = match self.channels.get(&peer) {
            Some(c) if c.bound => {
                encode_channel_data(c.number, data, self.config.transport.is_reliable())?
            }
            _ => {
                let id = self.new_id();
                encode_send(&id, peer, data)?
            }
        };
        self.transmits.push_back(Transmit {
            destination: self.config.server,
            payload,
        });
        Ok(())
    }

    fn flush_queue(&mut self, matches: impl Fn(SocketAddr) -> bool) {
        let queued = std::mem::take(&mut self.queued);
        for (peer, data) in queued {
            if matches(peer) {
                if let Err(e) = self.transmit_data(peer, &data) {
                    debug!("dropping queued data to {peer}: {e}");
                }
            } else {
                self.queued.push_back((peer, data));
            }
        }
    }

    fn new_id(&mut self) -> TransactionId {
        let mut id = [0u8; 12];
        self.rng.fill_bytes(&mut id);
        id
    }

    fn start_refresh(&mut self, now: Instant) {
        let in_flight = self
            .pending
            .iter()
            .any(|p| matches!(p.request, Request::Refresh { .. }));
        if in_flight {
            return;
        }
        let lifetime = self
            .config
            .lifetime
            .map(|l| u32::try_from(l.as_secs()).unwrap_or(u32::MAX));
        self.start(now, Request::Refresh { lifetime }, 0);
    }

    fn start(&mut self, now: Instant, request: Request, stale_retries: u32) {
        let id = self.new_id();
        let auth = self.auth.as_ref().map(|a| &a.creds);
        let built = encode_request(&request, &id, &self.config, auth).and_then(|bytes| {
            Transaction::new(now, bytes, self.config.server, self.timers)
                .map_err(|e| ClientError::Credentials(e.into()))
        });
        match built {
            Ok(tx) => self.pending.push(Pending {
                request,
                tx,
                signed: auth.is_some(),
                stale_retries,
            }),
            Err(e) => self.fail(now, request, e),
        }
    }

    fn schedule_refresh(&mut self, now: Instant, lifetime: Duration) {
        self.lifetime = lifetime;
        self.expires_at = Some(later(now, lifetime));
        self.refresh_at = Some(later(now, refresh_delay(lifetime)));
    }

    fn fail(&mut self, now: Instant, request: Request, error: ClientError) {
        debug!(?request, %error, "TURN request failed");
        match request {
            Request::Allocate => {
                if self.state == State::Allocating {
                    self.events.push_back(Event::Failed {
                        request,
                        error: error.clone(),
                    });
                    self.closed(Some(error));
                }
            }
            Request::Refresh { lifetime: Some(0) } => {
                // Deallocation: 437 means the allocation is already gone; anything else still
                // leaves us with nothing to do but forget it.
                if error != ClientError::AllocationMismatch {
                    self.events.push_back(Event::Failed { request, error });
                }
                self.closed(None);
            }
            Request::Refresh { .. } => {
                if self.state != State::Allocated {
                    return;
                }
                self.events.push_back(Event::Failed {
                    request,
                    error: error.clone(),
                });
                match error {
                    ClientError::AllocationMismatch
                    | ClientError::Unauthenticated
                    | ClientError::WrongCredentials => self.closed(Some(error)),
                    _ => {
                        let retry = later(now, REFRESH_RETRY);
                        if self.expires_at.is_some_and(|t| retry < t) {
                            self.refresh_at = Some(retry);
                        }
                    }
                }
            }
            Request::CreatePermission { peer } => {
                if self.state != State::Allocated {
                    return;
                }
                // The permission lapses on the server; a channel to this IP reinstalls it at
                // its next refresh.
                self.permissions.remove(&peer.ip());
                self.queued.retain(|(q, _)| q.ip() != peer.ip());
                self.events.push_back(Event::Failed { request, error });
            }
            Request::ChannelBind { peer, .. } => {
                if self.state != State::Allocated {
                    return;
                }
                let Some(c) = self.channels.get_mut(&peer) else {
                    return;
                };
                // An unanswered request may have bound the channel on the server.
                let server_until = match (&error, c.server_until) {
                    (ClientError::Timeout { .. }, until) => {
                        Some(until.map_or(later(now, proto::CHANNEL_LIFETIME), |u| {
                            u.max(later(now, proto::CHANNEL_LIFETIME))
                        }))
                    }
                    (_, until) => until,
                };
                match server_until {
                    None => {
                        // The server never bound it: the number is free again.
                        self.channels.remove(&peer);
                        self.queued.retain(|(q, _)| *q != peer);
                    }
                    Some(until) => {
                        // The server may still hold the binding: keep the number reserved
                        // (its ChannelData keeps being delivered) and retry while the
                        // server's binding lives; release it only after the cool-down.
                        c.bound = false;
                        c.in_flight = false;
                        c.server_until = Some(until);
                        let retry = later(now, REFRESH_RETRY);
                        c.refresh_at = (retry < until).then_some(retry);
                        c.release_at = Some(later(until, proto::CHANNEL_COOLDOWN));
                    }
                }
                self.events.push_back(Event::Failed { request, error });
            }
        }
    }

    fn closed(&mut self, reason: Option<ClientError>) {
        if self.state == State::Closed {
            return;
        }
        self.state = State::Closed;
        self.pending.clear();
        self.permissions.clear();
        self.channels.clear();
        self.queued.clear();
        self.refresh_at = None;
        self.expires_at = None;
        self.events.push_back(Event::Closed { reason });
    }
}

/// `now + d`, saturating far in the future rather than panicking on overflow.
fn later(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .or_else(|| now.checked_add(Duration::from_secs(100 * 365 * 86_400)))
        .unwrap_or(now)
}
