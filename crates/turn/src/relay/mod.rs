//! TURN server core (RFC 8656), sans-IO: allocations, permissions, channels, long-term
//! credentials, quotas and the peer policy, with time passed in and side effects left to the
//! driver.
//!
//! # Drive loop
//!
//! ```text
//! packet from a client  -> Server::handle_client(now, ports, five_tuple, bytes, out)
//!                          -> Output::Client { len }      send out[..len] back to the client
//!                          -> Output::Peer { relay, peer, data }   send bytes[data] from relay
//!                          -> Output::Binding             not TURN: the Binding responder's
//! datagram on a relay   -> Server::handle_peer(now, relay, peer, bytes, out)
//!                          -> Some(ToClient { five, len })  send out[..len] to that client
//! timer                 -> Server::poll_timeout() / Server::handle_timeout(now, ports)
//! ```
//!
//! Relay sockets are the driver's: the core asks for one through [`RelayPorts::acquire`] when
//! an Allocate succeeds and gives it back with [`RelayPorts::release`] when the allocation is
//! deleted or expires. The ChannelData paths (both directions) do not allocate: a relayed
//! payload is a range of the input buffer, and the way back is written into `out`.
//!
//! Nothing is stored for a client before it authenticates (401/438 answers are computed from
//! the request and the stateless nonce), so a flood of unauthenticated Allocates from spoofed
//! sources costs no memory.
//!
//! # Out of scope
//! TCP allocations (RFC 6062), RESERVATION-TOKEN reservations (answered 508), PASSWORD-ALGORITHMS
//! negotiation (the nonce cookie advertises no feature: MD5 keys), ICMP relaying, mobility.
//!
//! RFC 8656 sections used: §5 (5-tuples, authentication), §7 (Allocate), §8 (Refresh), §9
//! (permissions), §10 (CreatePermission), §11 (Send and Data), §12 (channels), §18
//! (attributes), §21–§22 (security: peer restrictions). RFC 8489 §9.2 (long-term credentials,
//! nonce cookie).

pub mod auth;
mod batch;
pub mod driver;
pub mod metrics;
pub mod policy;
pub mod ports;
pub mod quota;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use stun::credentials::{self, Integrity, Key, Verified};
use stun::wire::{
    self, BINDING, Class, Message, MessageWriter, TransactionId, WireError, attr, message_type,
};

use crate::proto::{self, ChannelData, Framing};
pub use auth::{AuthConfig, Authenticator};
pub use metrics::{Counters, DropReason, Metrics};
pub use policy::{Cidr, PeerPolicy};
pub use ports::{Family, PortPool, RelayPorts};
pub use quota::Quota;

/// Transport between client and server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// UDP.
    Udp,
    /// TCP.
    Tcp,
    /// TLS over TCP.
    Tls,
}

/// A client's 5-tuple (RFC 8656 §2): it identifies an allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FiveTuple {
    /// The client's address as the server sees it.
    pub client: SocketAddr,
    /// The server address the client talks to.
    pub server: SocketAddr,
    /// The transport.
    pub transport: Transport,
}

/// What to do after [`Server::handle_client`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Nothing (dropped, and counted).
    None,
    /// A STUN Binding request: the Binding responder answers it.
    Binding,
    /// Send `out[..len]` to the client.
    Client {
        /// Bytes written to `out`.
        len: usize,
    },
    /// Send `packet[data]` from the relay address `relay` to `peer`.
    Peer {
        /// The allocation's relay address (the socket to send from).
        relay: SocketAddr,
        /// The peer.
        peer: SocketAddr,
        /// The payload's position in the input packet.
        data: Range<usize>,
    },
}

/// A datagram for a client, from [`Server::handle_peer`]: send `out[..len]` on `five`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ToClient {
    /// The client's 5-tuple.
    pub five: FiveTuple,
    /// Bytes written to `out`.
    pub len: usize,
}

/// Relay settings.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Allocation lifetime when the client asks for none (RFC 8656: 600 s).
    pub default_lifetime: Duration,
    /// Longest allocation lifetime granted (3600 s).
    pub max_lifetime: Duration,
    /// Permission lifetime (300 s).
    pub permission_lifetime: Duration,
    /// Channel lifetime (600 s).
    pub channel_lifetime: Duration,
    /// Time after a channel expires during which neither its number nor its peer may be bound
    /// to something else (300 s).
    pub channel_cooldown: Duration,
    /// Most permissions per allocation (more: 508).
    pub max_permissions: usize,
    /// Most channels per allocation (more: 508).
    pub max_channels: usize,
    /// Relayed bytes per second per allocation, each direction; `None` for no cap.
    pub bandwidth: Option<u64>,
    /// SOFTWARE on success responses to Allocate, if any.
    pub software: Option<String>,
    /// Seed for transaction IDs of Data indications.
    pub seed: u64,
    /// Accept RFC 5766 channel numbers 0x5000-0x7FFF too (RFC 8656 reserves them; RFC 5766
    /// clients such as coturn's still use them). Default true.
    pub rfc5766_channels: bool,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            default_lifetime: proto::DEFAULT_LIFETIME,
            max_lifetime: proto::MAX_LIFETIME,
            permission_lifetime: proto::PERMISSION_LIFETIME,
            channel_lifetime: proto::CHANNEL_LIFETIME,
            channel_cooldown: proto::CHANNEL_COOLDOWN,
            max_permissions: 64,
            max_channels: 64,
            bandwidth: None,
            software: None,
            seed: 0,
            rfc5766_channels: true,
        }
    }
}

/// What every core of one server shares (immutable, or internally synchronised).
#[derive(Debug)]
pub struct Shared {
    /// Settings.
    pub config: RelayConfig,
    /// Credentials.
    pub auth: Authenticator,
    /// Peer policy.
    pub policy: PeerPolicy,
    /// Quotas.
    pub quota: Quota,
}

/// Largest ratio of an unauthenticated UDP answer to its request, both counted on the wire
/// with IP and UDP headers: the Binding responder's default bound, kept by every TURN error
/// answer to a source without credentials (401, 438, 400, 420).
pub const AMPLIFICATION: usize = 3;

/// IP + UDP header bytes of a datagram to or from `addr`.
const fn wire_overhead(addr: &SocketAddr) -> usize {
    match addr {
        SocketAddr::V4(_) => 20 + 8,
        SocketAddr::V6(_) => 40 + 8,
    }
}

/// How often expired state is swept.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// A fast non-cryptographic hasher (FxHash). The tables it keys hold only authenticated state
/// bounded by quotas, so hash flooding is not a concern.
#[derive(Debug, Default, Clone, Copy)]
pub struct FxHasher(u64);

impl Hasher for FxHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.add(u64::from_le_bytes(b));
        }
    }
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }
    fn write_u16(&mut self, i: u16) {
        self.add(u64::from(i));
    }
    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
}

impl FxHasher {
    fn add(&mut self, i: u64) {
        self.0 = (self.0.rotate_left(5) ^ i).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

#[derive(Debug, Clone, Copy)]
struct Channel {
    peer: SocketAddr,
    expires: Instant,
    /// The expiry was counted.
    expired: bool,
}

#[derive(Debug)]
struct TokenBucket {
    rate: u64,
    tokens: u64,
    last: Instant,
}

impl TokenBucket {
    fn take(&mut self, now: Instant, n: usize) -> bool {
        let elapsed = now.saturating_duration_since(self.last);
        let add =
            u64::try_from(elapsed.as_nanos().saturating_mul(u128::from(self.rate)) / 1_000_000_000)
                .unwrap_or(u64::MAX);
        if add > 0 {
            self.tokens = self.tokens.saturating_add(add).min(self.rate);
            self.last = now;
        }
        let n = n as u64;
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }
}

/// What ChannelData and Send indications share on their way to a peer: the permission, the
/// relay address of the peer's family, the bandwidth cap and the counters. `data` is the
/// payload's range in the client's packet.
fn forward_to_peer(
    counters: &mut Counters,
    a: &mut Allocation,
    now: Instant,
    peer: SocketAddr,
    data: Range<usize>,
) -> Output {
    if !a.permitted(now, peer.ip()) {
        counters.drop(DropReason::NoPermission);
        return Output::None;
    }
    let Some(relay) = a.relay_for(&peer) else {
        counters.drop(DropReason::NoPermission);
        return Output::None;
    };
    if let Some(b) = a.to_peer.as_mut() {
        if !b.take(now, data.len()) {
            counters.drop(DropReason::Bandwidth);
            return Output::None;
        }
    }
    counters.packets_to_peer += 1;
    counters.bytes_to_peer += data.len() as u64;
    Output::Peer { relay, peer, data }
}

#[derive(Debug)]
struct Allocation {
    five: FiveTuple,
    relays: [Option<SocketAddr>; 2],
    username: Box<str>,
    key: Key,
    expires: Instant,
    txid: TransactionId,
    permissions: FxMap<IpAddr, Instant>,
    channels: FxMap<u16, Channel>,
    channel_of_peer: FxMap<SocketAddr, u16>,
    to_peer: Option<TokenBucket>,
    to_client: Option<TokenBucket>,
}

impl Allocation {
    fn relay_for(&self, peer: &SocketAddr) -> Option<SocketAddr> {
        self.relays
            .iter()
            .flatten()
            .find(|r| r.is_ipv4() == peer.is_ipv4())
            .copied()
    }

    fn permitted(&self, now: Instant, peer: IpAddr) -> bool {
        self.permissions.get(&peer).is_some_and(|&t| t > now)
    }

    fn lifetime_left(&self, now: Instant) -> u32 {
        u32::try_from(self.expires.saturating_duration_since(now).as_secs()).unwrap_or(u32::MAX)
    }
}

/// Attributes the relay understands (no 420 for them).
const UNDERSTOOD: &[u16] = &[
    attr::USERNAME,
    attr::MESSAGE_INTEGRITY,
    attr::MESSAGE_INTEGRITY_SHA256,
    attr::REALM,
    attr::NONCE,
    attr::PASSWORD_ALGORITHM,
    attr::CHANNEL_NUMBER,
    attr::LIFETIME,
    attr::XOR_PEER_ADDRESS,
    attr::DATA,
    attr::REQUESTED_ADDRESS_FAMILY,
    attr::EVEN_PORT,
    attr::REQUESTED_TRANSPORT,
    // Not DONT-FRAGMENT: relay sockets are shared by every peer of an allocation and the
    // driver cannot set DF per datagram, so it is unsupported and, as RFC 8656 §7.2 says,
    // treated as an unknown comprehension-required attribute (420; Send indications with it
    // are discarded, §11.2).
    attr::RESERVATION_TOKEN,
    attr::FINGERPRINT,
];

/// Result of authentication: the username, its key, the integrity kind to answer with and
/// when the credential expires (REST credentials).
struct Authed {
    username: Box<str>,
    key: Key,
    integrity: Integrity,
    expires: Option<Instant>,
}

impl Authed {
    /// `lifetime` from `now`, cut so it ends when the credential does.
    fn cap(&self, now: Instant, lifetime: Duration) -> Duration {
        match self.expires {
            Some(e) => lifetime.min(e.saturating_duration_since(now)),
            None => lifetime,
        }
    }
}

/// An error response to write.
struct Failure {
    code: u16,
    reason: &'static str,
}

const fn fail(code: u16, reason: &'static str) -> Failure {
    Failure { code, reason }
}

/// One TURN core: the allocations of the clients one driver (a UDP worker, a TCP connection)
/// serves.
#[derive(Debug)]
pub struct Server {
    shared: Arc<Shared>,
    slots: Vec<Option<Allocation>>,
    free: Vec<usize>,
    by_client: FxMap<FiveTuple, usize>,
    by_relay: FxMap<SocketAddr, usize>,
    counters: Counters,
    next_sweep: Option<Instant>,
    rng: u64,
}

impl Server {
    /// A core sharing `shared` with the server's other cores. `instance` varies the Data
    /// indication transaction IDs between cores.
    pub fn new(shared: Arc<Shared>, instance: u64) -> Self {
        let rng = (shared.config.seed ^ instance.wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1;
        Server {
            shared,
            slots: vec![],
            free: vec![],
            by_client: FxMap::default(),
            by_relay: FxMap::default(),
            counters: Counters::default(),
            next_sweep: None,
            rng,
        }
    }

    /// The shared state.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Live allocations in this core.
    pub fn allocations(&self) -> usize {
        self.by_client.len()
    }

    /// Entries in every table of this core (allocations, permissions, channels), for tests that
    /// check memory stays bounded.
    pub fn table_sizes(&self) -> (usize, usize, usize) {
        let (mut p, mut c) = (0, 0);
        for a in self.slots.iter().flatten() {
            p += a.permissions.len();
            c += a.channels.len();
        }
        (self.by_client.len() + self.by_relay.len(), p, c)
    }

    /// Does `five` have an allocation (the driver exempts its traffic from the rate limiter)?
    pub fn has_allocation(&self, five: &FiveTuple) -> bool {
        self.by_client.contains_key(five)
    }

    /// The relay addresses of `five`'s allocation.
    pub fn relay_addresses(&self, five: &FiveTuple) -> Vec<SocketAddr> {
        self.by_client
            .get(five)
            .and_then(|&i| self.slots.get(i)?.as_ref())
            .map(|a| a.relays.iter().flatten().copied().collect())
            .unwrap_or_default()
    }

    /// Counters since the last publish.
    pub fn counters(&mut self) -> &mut Counters {
        &mut self.counters
    }

    /// When [`Server::handle_timeout`] next has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.by_client.is_empty() {
            None
        } else {
            self.next_sweep
        }
    }

    /// Expire allocations, permissions and channels.
    pub fn handle_timeout<P: RelayPorts + ?Sized>(&mut self, now: Instant, ports: &mut P) {
        if self.next_sweep.is_some_and(|t| now < t) {
            return;
        }
        self.next_sweep = Some(now + SWEEP_INTERVAL);
        let cooldown = self.shared.config.channel_cooldown;
        for i in 0..self.slots.len() {
            let Some(a) = self.slots.get_mut(i).and_then(Option::as_mut) else {
                continue;
            };
            if a.expires <= now {
                self.counters.allocations_expired += 1;
                self.remove(i, ports);
                continue;
            }
            let before = a.permissions.len();
            a.permissions.retain(|_, t| *t > now);
            self.counters.permissions_expired += (before - a.permissions.len()) as u64;
            let counters = &mut self.counters;
            let peers = &mut a.channel_of_peer;
            a.channels.retain(|_, c| {
                if c.expires <= now && !c.expired {
                    c.expired = true;
                    counters.channels_expired += 1;
                }
                let keep = c.expires + cooldown > now;
                if !keep {
                    peers.remove(&c.peer);
                }
                keep
            });
        }
    }

    /// Delete every allocation (shutdown, or the TCP connection closed).
    pub fn close_all<P: RelayPorts + ?Sized>(&mut self, ports: &mut P) {
        for i in 0..self.slots.len() {
            if self.slots.get(i).is_some_and(Option::is_some) {
                self.counters.allocations_deleted += 1;
                self.remove(i, ports);
            }
        }
    }

    fn remove<P: RelayPorts + ?Sized>(&mut self, i: usize, ports: &mut P) {
        let Some(a) = self.slots.get_mut(i).and_then(Option::take) else {
            return;
        };
        self.by_client.remove(&a.five);
        for r in a.relays.iter().flatten() {
            self.by_relay.remove(r);
            self.shared.policy.live.remove(*r);
            ports.release(*r);
        }
        self.shared.quota.release(&a.username);
        self.free.push(i);
    }

    fn alloc_index(&self, five: &FiveTuple) -> Option<usize> {
        self.by_client.get(five).copied()
    }

    fn next_id(&mut self) -> TransactionId {
        // xorshift64*: unpredictable enough for Data indication IDs, which protect nothing.
        let mut id = [0u8; 12];
        for chunk in id.chunks_mut(6) {
            self.rng ^= self.rng >> 12;
            self.rng ^= self.rng << 25;
            self.rng ^= self.rng >> 27;
            let v = self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
            chunk.copy_from_slice(&v[..6]);
        }
        id
    }

    /// Handle one datagram (UDP) or frame (TCP/TLS) from a client.
    pub fn handle_client<P: RelayPorts + ?Sized>(
        &mut self,
        now: Instant,
        ports: &mut P,
        five: FiveTuple,
        packet: &[u8],
        out: &mut [u8],
    ) -> Output {
        match self.framing(packet) {
            Framing::ChannelData => self.channel_data(now, five, packet),
            Framing::Stun => match Message::parse(packet) {
                Ok(msg) => self.stun(now, ports, five, &msg, out),
                Err(_) => {
                    self.counters.drop(DropReason::Malformed);
                    Output::None
                }
            },
            Framing::Other => {
                self.counters.drop(DropReason::Malformed);
                Output::None
            }
        }
    }

    /// What a client's packet is: [`proto::framing`], widened to 0x40-0x7F for ChannelData
    /// when RFC 5766 channel numbers are accepted.
    pub fn framing(&self, packet: &[u8]) -> Framing {
        match packet.first() {
            Some(0x50..=0x7F) if self.shared.config.rfc5766_channels => Framing::ChannelData,
            _ => proto::framing(packet),
        }
    }

    fn channel_max(&self) -> u16 {
        if self.shared.config.rfc5766_channels {
            proto::CHANNEL_MAX_RFC5766
        } else {
            proto::CHANNEL_MAX
        }
    }

    fn channel_data(&mut self, now: Instant, five: FiveTuple, packet: &[u8]) -> Output {
        let Some(cd) = parse_channel_data(packet, self.channel_max()) else {
            self.counters.drop(DropReason::Malformed);
            return Output::None;
        };
        let Some(a) = self
            .by_client
            .get(&five)
            .and_then(|&i| self.slots.get_mut(i)?.as_mut())
        else {
            self.counters.drop(DropReason::NoAllocation);
            return Output::None;
        };
        let Some(ch) = a.channels.get(&cd.channel).filter(|c| c.expires > now) else {
            self.counters.drop(DropReason::NoPermission);
            return Output::None;
        };
        let peer = ch.peer;
        let start = proto::CHANNEL_DATA_HEADER;
        forward_to_peer(
            &mut self.counters,
            a,
            now,
            peer,
            start..start + cd.data.len(),
        )
    }

    fn stun<P: RelayPorts + ?Sized>(
        &mut self,
        now: Instant,
        ports: &mut P,
        five: FiveTuple,
        msg: &Message<'_>,
        out: &mut [u8],
    ) -> Output {
        if msg.method() == BINDING {
            return Output::Binding;
        }
        if msg.check_fingerprint().is_err() {
            self.counters.drop(DropReason::Malformed);
            return Output::None;
        }
        match msg.class() {
            Class::Indication if msg.method() == proto::SEND => {
                self.send_indication(now, five, msg)
            }
            Class::Request => self.request(now, ports, five, msg, out),
            _ => {
                self.counters.drop(DropReason::Other);
                Output::None
            }
        }
    }

    fn send_indication(&mut self, now: Instant, five: FiveTuple, msg: &Message<'_>) -> Output {
        let Some(a) = self
            .by_client
            .get(&five)
            .and_then(|&i| self.slots.get_mut(i)?.as_mut())
        else {
            self.counters.drop(DropReason::NoAllocation);
            return Output::None;
        };
        let (Some(Ok(peer)), Some(data)) =
            (msg.address(attr::XOR_PEER_ADDRESS), msg.get(attr::DATA))
        else {
            self.counters.drop(DropReason::Malformed);
            return Output::None;
        };
        if msg.get(attr::DONT_FRAGMENT).is_some() {
            // Unsupported (see UNDERSTOOD): the datagram cannot be sent with DF set.
            self.counters.drop(DropReason::Other);
            return Output::None;
        }
        let start = data.offset + 4;
        forward_to_peer(
            &mut self.counters,
            a,
            now,
            peer,
            start..start + data.value.len(),
        )
    }

    /// Handle a datagram that arrived from `peer` on the relay address `relay`.
    pub fn handle_peer(
        &mut self,
        now: Instant,
        relay: SocketAddr,
        peer: SocketAddr,
        data: &[u8],
        out: &mut [u8],
    ) -> Option<ToClient> {
        let Some(a) = self
            .by_relay
            .get(&relay)
            .and_then(|&i| self.slots.get_mut(i)?.as_mut())
            .filter(|a| a.expires > now)
        else {
            self.counters.drop(DropReason::NoAllocation);
            return None;
        };
        if !a.permitted(now, peer.ip()) {
            self.counters.drop(DropReason::NoPermission);
            return None;
        }
        if let Some(b) = a.to_client.as_mut() {
            if !b.take(now, data.len()) {
                self.counters.drop(DropReason::Bandwidth);
                return None;
            }
        }
        let five = a.five;
        let channel = a
            .channel_of_peer
            .get(&peer)
            .and_then(|n| a.channels.get(n).filter(|c| c.expires > now).map(|_| *n));
        let len = match channel {
            Some(n) => write_channel_data(out, n, data, five.transport != Transport::Udp),
            None => {
                let id = self.next_id();
                data_indication(out, &id, peer, data).ok()
            }
        };
        let Some(len) = len else {
            self.counters.drop(DropReason::Other);
            return None;
        };
        self.counters.packets_to_client += 1;
        self.counters.bytes_to_client += data.len() as u64;
        Some(ToClient { five, len })
    }

    fn request<P: RelayPorts + ?Sized>(
        &mut self,
        now: Instant,
        ports: &mut P,
        five: FiveTuple,
        msg: &Message<'_>,
        out: &mut [u8],
    ) -> Output {
        let method = msg.method();
        if !matches!(
            method,
            proto::ALLOCATE | proto::REFRESH | proto::CREATE_PERMISSION | proto::CHANNEL_BIND
        ) {
            return self.error(
                out,
                msg,
                &fail(400, "Bad Request: unknown method"),
                None,
                now,
                five,
            );
        }
        // RFC 8489 §6.3.1: unknown comprehension-required attributes.
        let mut unknown = [0u16; 8];
        let mut n_unknown = 0;
        for a in msg.attributes() {
            if wire::attr::is_comprehension_required(a.attr_type)
                && !UNDERSTOOD.contains(&a.attr_type)
                && n_unknown < unknown.len()
            {
                unknown[n_unknown] = a.attr_type;
                n_unknown += 1;
            }
        }
        if n_unknown > 0 {
            let types = &unknown[..n_unknown];
            let extra = MessageWriter::attribute_size(2 * types.len());
            let Some(reason) = self.bounded_reason(msg, five, "Unknown Attribute", extra) else {
                return Output::None;
            };
            return self.write(
                out,
                msg,
                None,
                |w| {
                    w.error_code(420, reason)?;
                    w.unknown_attributes(types)
                },
                Some(420),
            );
        }
        let authed = match self.authenticate(now, five, msg) {
            Ok(a) => a,
            Err(code) => return self.challenge(out, msg, code, now, five),
        };
        let idx = self.alloc_index(&five);
        // An allocation past its lifetime is gone, whatever the sweep timer says.
        let idx = match idx {
            Some(i)
                if self
                    .slots
                    .get(i)
                    .and_then(Option::as_ref)
                    .is_some_and(|a| a.expires <= now) =>
            {
                self.counters.allocations_expired += 1;
                self.remove(i, ports);
                None
            }
            x => x,
        };
        if method == proto::ALLOCATE {
            return self.allocate(now, ports, five, msg, out, authed, idx);
        }
        let Some(i) = idx else {
            return self.error(
                out,
                msg,
                &fail(437, "Allocation Mismatch"),
                Some(&authed),
                now,
                five,
            );
        };
        if self
            .slots
            .get(i)
            .and_then(Option::as_ref)
            .is_some_and(|a| *a.username != *authed.username)
        {
            return self.error(
                out,
                msg,
                &fail(441, "Wrong Credentials"),
                Some(&authed),
                now,
                five,
            );
        }
        let r = match method {
            proto::REFRESH => self.refresh(now, ports, i, msg, &authed),
            proto::CREATE_PERMISSION => self.create_permission(now, i, msg),
            _ => self.channel_bind(now, i, msg),
        };
        match r {
            Ok(lifetime) => self.write(
                out,
                msg,
                Some(&authed),
                |w| {
                    if let Some(l) = lifetime {
                        w.u32_attribute(attr::LIFETIME, l)?;
                    }
                    Ok(())
                },
                None,
            ),
            Err(f) => self.error(out, msg, &f, Some(&authed), now, five),
        }
    }

    /// RFC 8489 §9.2.4, in its order.
    fn authenticate(
        &mut self,
        now: Instant,
        five: FiveTuple,
        msg: &Message<'_>,
    ) -> Result<Authed, auth::AuthFailure> {
        use auth::AuthFailure;
        // RFC 8489 length limits, before anything hashes these values.
        let too_long = |t: u16, max: usize| msg.get(t).is_some_and(|a| a.value.len() >= max);
        if too_long(attr::USERNAME, auth::MAX_USERNAME)
            || too_long(attr::REALM, auth::MAX_REALM_NONCE)
            || too_long(attr::NONCE, auth::MAX_REALM_NONCE)
        {
            return Err(AuthFailure::TooLong);
        }
        let sha256 = msg.get(attr::MESSAGE_INTEGRITY_SHA256).is_some();
        if !sha256 && msg.get(attr::MESSAGE_INTEGRITY).is_none() {
            return Err(AuthFailure::Challenge);
        }
        let (Some(user), Some(_realm), Some(nonce)) = (
            msg.get(attr::USERNAME),
            msg.get(attr::REALM),
            msg.get(attr::NONCE),
        ) else {
            return Err(AuthFailure::BadRequest);
        };
        let auth = &self.shared.auth;
        if !auth.nonce_valid(now, five.client, nonce.value) {
            return Err(AuthFailure::StaleNonce);
        }
        let Ok(username) = std::str::from_utf8(user.value) else {
            self.counters.auth_failures += 1;
            return Err(AuthFailure::Unauthorized);
        };
        // A REST credential expires for its allocation too: checked on every request, not
        // only when the key is derived.
        if auth.expired(now, username) {
            self.counters.auth_failures += 1;
            return Err(AuthFailure::Unauthorized);
        }
        let cached = self
            .by_client
            .get(&five)
            .and_then(|&i| self.slots.get(i)?.as_ref())
            .filter(|a| *a.username == *username)
            .map(|a| a.key.clone());
        let Some(key) = cached.or_else(|| auth.key(now, username)) else {
            self.counters.auth_failures += 1;
            return Err(AuthFailure::Unauthorized);
        };
        match credentials::verify(msg, &key) {
            Ok(v) => Ok(Authed {
                username: username.into(),
                key,
                integrity: if v == Verified::Sha256 {
                    Integrity::Sha256
                } else {
                    Integrity::Sha1
                },
                expires: auth.expiry(username),
            }),
            Err(_) => {
                self.counters.auth_failures += 1;
                Err(AuthFailure::Unauthorized)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn allocate<P: RelayPorts + ?Sized>(
        &mut self,
        now: Instant,
        ports: &mut P,
        five: FiveTuple,
        msg: &Message<'_>,
        out: &mut [u8],
        authed: Authed,
        existing: Option<usize>,
    ) -> Output {
        if let Some(i) = existing {
            let Some(a) = self.slots.get(i).and_then(Option::as_ref) else {
                return Output::None;
            };
            if a.txid == msg.transaction_id() && *a.username == *authed.username {
                // A retransmission (RFC 8656 §7.2): the same answer again.
                let (relays, left) = (a.relays, a.lifetime_left(now));
                return self.allocate_success(out, msg, &authed, five, relays, left, None);
            }
            return self.error(
                out,
                msg,
                &fail(437, "Allocation Mismatch"),
                Some(&authed),
                now,
                five,
            );
        }
        match self.new_allocation(now, ports, five, msg, &authed) {
            Ok((relays, lifetime, address_error)) => {
                self.counters.allocations_created += 1;
                self.next_sweep.get_or_insert(now + SWEEP_INTERVAL);
                self.allocate_success(out, msg, &authed, five, relays, lifetime, address_error)
            }
            Err(f) => self.error(out, msg, &f, Some(&authed), now, five),
        }
    }

    #[allow(clippy::type_complexity)]
    fn new_allocation<P: RelayPorts + ?Sized>(
        &mut self,
        now: Instant,
        ports: &mut P,
        five: FiveTuple,
        msg: &Message<'_>,
        authed: &Authed,
    ) -> Result<([Option<SocketAddr>; 2], u32, Option<u16>), Failure> {
        let Some(t) = msg.get(attr::REQUESTED_TRANSPORT) else {
            return Err(fail(400, "Bad Request: no REQUESTED-TRANSPORT"));
        };
        if t.value.len() != 4 {
            return Err(fail(400, "Bad Request: bad REQUESTED-TRANSPORT"));
        }
        if t.value.first() != Some(&proto::PROTOCOL_UDP) {
            return Err(fail(442, "Unsupported Transport Protocol"));
        }
        let family_of = |v: &[u8]| match v {
            [proto::FAMILY_IPV4, 0, 0, 0] => Ok(Family::V4),
            [proto::FAMILY_IPV6, 0, 0, 0] => Ok(Family::V6),
            _ => Err(fail(440, "Address Family not Supported")),
        };
        let requested = msg.get(attr::REQUESTED_ADDRESS_FAMILY);
        let additional = msg.get(proto::ATTR_ADDITIONAL_ADDRESS_FAMILY);
        let token = msg.get(attr::RESERVATION_TOKEN);
        let even = msg.get(attr::EVEN_PORT);
        if token.is_some() && (even.is_some() || requested.is_some() || additional.is_some()) {
            return Err(fail(
                400,
                "Bad Request: RESERVATION-TOKEN with other options",
            ));
        }
        if requested.is_some() && additional.is_some() {
            return Err(fail(400, "Bad Request: both address family attributes"));
        }
        if token.is_some() {
            return Err(fail(508, "Insufficient Capacity: no such reservation"));
        }
        let family = match requested {
            Some(a) => family_of(a.value)?,
            None => Family::V4,
        };
        let dual = match additional {
            None => false,
            Some(a) if family_of(a.value).ok() == Some(Family::V6) => true,
            Some(_) => {
                return Err(fail(
                    400,
                    "Bad Request: ADDITIONAL-ADDRESS-FAMILY must be IPv6",
                ));
            }
        };
        if !ports.supports(family) {
            return Err(fail(440, "Address Family not Supported"));
        }
        let even_port = match even.map(|a| a.value) {
            None => false,
            Some([flags, ..]) if flags & 0x80 != 0 => {
                return Err(fail(
                    508,
                    "Insufficient Capacity: port reservations not supported",
                ));
            }
            Some([_, ..]) => true,
            Some([]) => return Err(fail(400, "Bad Request: bad EVEN-PORT")),
        };
        let cfg = &self.shared.config;
        let lifetime = match msg.get(attr::LIFETIME).map(|a| a.value) {
            Some(&[a, b, c, d]) => {
                let asked = Duration::from_secs(u64::from(u32::from_be_bytes([a, b, c, d])));
                grant_lifetime(cfg, asked)
            }
            Some(_) => return Err(fail(400, "Bad Request: bad LIFETIME")),
            None => cfg.default_lifetime,
        };
        let lifetime = authed.cap(now, lifetime);
        if !self.shared.quota.try_acquire(&authed.username) {
            return Err(fail(486, "Allocation Quota Reached"));
        }
        let Some(first) = ports.acquire(family, even_port) else {
            self.shared.quota.release(&authed.username);
            return Err(fail(508, "Insufficient Capacity"));
        };
        let mut relays = [Some(first), None];
        let mut address_error = None;
        if dual {
            if !ports.supports(Family::V6) {
                address_error = Some(440);
            } else if let Some(second) = ports.acquire(Family::V6, false) {
                relays[1] = Some(second);
            } else {
                address_error = Some(508);
            }
        }
        let bucket = |rate| TokenBucket {
            rate,
            tokens: rate,
            last: now,
        };
        let a = Allocation {
            five,
            relays,
            username: authed.username.clone(),
            key: authed.key.clone(),
            expires: now + lifetime,
            txid: msg.transaction_id(),
            permissions: FxMap::default(),
            channels: FxMap::default(),
            channel_of_peer: FxMap::default(),
            to_peer: cfg.bandwidth.map(bucket),
            to_client: cfg.bandwidth.map(bucket),
        };
        let i = match self.free.pop() {
            Some(i) => {
                if let Some(s) = self.slots.get_mut(i) {
                    *s = Some(a);
                }
                i
            }
            None => {
                self.slots.push(Some(a));
                self.slots.len() - 1
            }
        };
        self.by_client.insert(five, i);
        for r in relays.iter().flatten() {
            self.by_relay.insert(*r, i);
            self.shared.policy.live.insert(*r);
        }
        let secs = u32::try_from(lifetime.as_secs()).unwrap_or(u32::MAX);
        Ok((relays, secs, address_error))
    }

    #[allow(clippy::too_many_arguments)]
    fn allocate_success(
        &mut self,
        out: &mut [u8],
        msg: &Message<'_>,
        authed: &Authed,
        five: FiveTuple,
        relays: [Option<SocketAddr>; 2],
        lifetime: u32,
        address_error: Option<u16>,
    ) -> Output {
        let software = self.shared.config.software.clone();
        self.write(
            out,
            msg,
            Some(authed),
            |w| {
                for r in relays.iter().flatten() {
                    w.address(attr::XOR_RELAYED_ADDRESS, *r)?;
                }
                w.u32_attribute(attr::LIFETIME, lifetime)?;
                w.address(attr::XOR_MAPPED_ADDRESS, five.client)?;
                if let Some(code) = address_error {
                    // ADDRESS-ERROR-CODE: family (IPv6), reserved, class, number, reason.
                    let mut v = [0u8; 8];
                    v[0] = proto::FAMILY_IPV6;
                    v[2] = u8::try_from(code / 100).unwrap_or(5);
                    v[3] = u8::try_from(code % 100).unwrap_or(0);
                    v[4..].copy_from_slice(b"IPv6");
                    w.attribute(proto::ATTR_ADDRESS_ERROR_CODE, &v)?;
                }
                if let Some(s) = &software {
                    w.attribute(attr::SOFTWARE, s.as_bytes())?;
                }
                Ok(())
            },
            None,
        )
    }

    fn refresh<P: RelayPorts + ?Sized>(
        &mut self,
        now: Instant,
        ports: &mut P,
        i: usize,
        msg: &Message<'_>,
        authed: &Authed,
    ) -> Result<Option<u32>, Failure> {
        let cfg = &self.shared.config;
        let asked = match msg.get(attr::LIFETIME).map(|a| a.value) {
            Some(&[a, b, c, d]) => Some(u32::from_be_bytes([a, b, c, d])),
            Some(_) => return Err(fail(400, "Bad Request: bad LIFETIME")),
            None => None,
        };
        // §8.2: a REQUESTED-ADDRESS-FAMILY the allocation has no relay of is a mismatch
        // (checked before LIFETIME 0 deletes anything).
        if let Some(f) = msg.get(attr::REQUESTED_ADDRESS_FAMILY) {
            let v4 = match f.value {
                [proto::FAMILY_IPV4, 0, 0, 0] => true,
                [proto::FAMILY_IPV6, 0, 0, 0] => false,
                _ => return Err(fail(400, "Bad Request: bad REQUESTED-ADDRESS-FAMILY")),
            };
            let Some(a) = self.slots.get(i).and_then(Option::as_ref) else {
                return Err(fail(437, "Allocation Mismatch"));
            };
            if !a.relays.iter().flatten().any(|r| r.is_ipv4() == v4) {
                return Err(fail(443, "Peer Address Family Mismatch"));
            }
        }
        if asked == Some(0) {
            self.counters.allocations_deleted += 1;
            self.remove(i, ports);
            return Ok(Some(0));
        }
        let lifetime = asked.map_or(cfg.default_lifetime, |s| {
            grant_lifetime(cfg, Duration::from_secs(u64::from(s)))
        });
        let lifetime = authed.cap(now, lifetime);
        let Some(a) = self.slots.get_mut(i).and_then(Option::as_mut) else {
            return Err(fail(437, "Allocation Mismatch"));
        };
        a.expires = now + lifetime;
        Ok(Some(u32::try_from(lifetime.as_secs()).unwrap_or(u32::MAX)))
    }

    /// Policy and family checks shared by CreatePermission and ChannelBind.
    fn check_peer(&self, a: &Allocation, peer: SocketAddr) -> Result<(), Failure> {
        if a.relay_for(&peer).is_none() {
            return Err(fail(443, "Peer Address Family Mismatch"));
        }
        self.shared
            .policy
            .check(peer)
            .map_err(|_| fail(403, "Forbidden"))
    }

    fn create_permission(
        &mut self,
        now: Instant,
        i: usize,
        msg: &Message<'_>,
    ) -> Result<Option<u32>, Failure> {
        let id = msg.transaction_id();
        let mut peers = [None::<IpAddr>; 16];
        let mut n = 0;
        let Some(a) = self.slots.get(i).and_then(Option::as_ref) else {
            return Err(fail(437, "Allocation Mismatch"));
        };
        for at in msg
            .attributes()
            .filter(|a| a.attr_type == attr::XOR_PEER_ADDRESS)
        {
            let peer = wire::decode_address(at.value, at.attr_type, Some(&id))
                .map_err(|_| fail(400, "Bad Request: bad XOR-PEER-ADDRESS"))?;
            self.check_peer(a, peer)?;
            let slot = peers
                .get_mut(n)
                .ok_or(fail(400, "Bad Request: too many XOR-PEER-ADDRESS"))?;
            *slot = Some(peer.ip());
            n += 1;
        }
        if n == 0 {
            return Err(fail(400, "Bad Request: no XOR-PEER-ADDRESS"));
        }
        let fresh = peers[..n]
            .iter()
            .flatten()
            .filter(|ip| !a.permissions.contains_key(*ip))
            .count();
        if a.permissions.len() + fresh > self.shared.config.max_permissions {
            return Err(fail(508, "Insufficient Capacity: too many permissions"));
        }
        let until = now + self.shared.config.permission_lifetime;
        let Some(a) = self.slots.get_mut(i).and_then(Option::as_mut) else {
            return Err(fail(437, "Allocation Mismatch"));
        };
        for ip in peers[..n].iter().flatten() {
            if a.permissions.insert(*ip, until).is_none() {
                self.counters.permissions_created += 1;
            }
        }
        Ok(None)
    }

    fn channel_bind(
        &mut self,
        now: Instant,
        i: usize,
        msg: &Message<'_>,
    ) -> Result<Option<u32>, Failure> {
        let number = match msg.get(attr::CHANNEL_NUMBER).map(|a| a.value) {
            Some(&[a, b, 0, 0]) => u16::from_be_bytes([a, b]),
            _ => return Err(fail(400, "Bad Request: bad or missing CHANNEL-NUMBER")),
        };
        if !(proto::CHANNEL_MIN..=self.channel_max()).contains(&number) {
            return Err(fail(400, "Bad Request: channel number out of range"));
        }
        let Some(Ok(peer)) = msg.address(attr::XOR_PEER_ADDRESS) else {
            return Err(fail(400, "Bad Request: bad or missing XOR-PEER-ADDRESS"));
        };
        let Some(a) = self.slots.get(i).and_then(Option::as_ref) else {
            return Err(fail(437, "Allocation Mismatch"));
        };
        self.check_peer(a, peer)?;
        // §12: a number is bound to one peer and a peer to one number, also while cooling down.
        if a.channels.get(&number).is_some_and(|c| c.peer != peer) {
            return Err(fail(400, "Bad Request: channel bound to another peer"));
        }
        if a.channel_of_peer.get(&peer).is_some_and(|&n| n != number) {
            return Err(fail(400, "Bad Request: peer bound to another channel"));
        }
        let fresh = !a.channels.contains_key(&number);
        if fresh && a.channels.len() >= self.shared.config.max_channels {
            return Err(fail(508, "Insufficient Capacity: too many channels"));
        }
        let perm_fresh = !a.permissions.contains_key(&peer.ip());
        if perm_fresh && a.permissions.len() >= self.shared.config.max_permissions {
            return Err(fail(508, "Insufficient Capacity: too many permissions"));
        }
        let cfg = &self.shared.config;
        let (ch_until, perm_until) = (now + cfg.channel_lifetime, now + cfg.permission_lifetime);
        let Some(a) = self.slots.get_mut(i).and_then(Option::as_mut) else {
            return Err(fail(437, "Allocation Mismatch"));
        };
        let was_live = a.channels.get(&number).is_some_and(|c| c.expires > now);
        a.channels.insert(
            number,
            Channel {
                peer,
                expires: ch_until,
                expired: false,
            },
        );
        a.channel_of_peer.insert(peer, number);
        if !was_live {
            self.counters.channels_bound += 1;
        }
        if a.permissions.insert(peer.ip(), perm_until).is_none() {
            self.counters.permissions_created += 1;
        }
        Ok(None)
    }

    /// 401 / 438 / 400 from authentication: REALM and NONCE, no integrity.
    fn challenge(
        &mut self,
        out: &mut [u8],
        msg: &Message<'_>,
        why: auth::AuthFailure,
        now: Instant,
        five: FiveTuple,
    ) -> Output {
        let code = why.code();
        let reason = match why {
            auth::AuthFailure::BadRequest => "Bad Request: missing USERNAME, REALM or NONCE",
            auth::AuthFailure::TooLong => "Bad Request: USERNAME, REALM or NONCE too long",
            auth::AuthFailure::StaleNonce => "Stale Nonce",
            _ => "Unauthorized",
        };
        self.error(out, msg, &fail(code, reason), None, now, five)
    }

    fn error(
        &mut self,
        out: &mut [u8],
        msg: &Message<'_>,
        f: &Failure,
        authed: Option<&Authed>,
        now: Instant,
        five: FiveTuple,
    ) -> Output {
        let shared = self.shared.clone();
        let mut nonce_buf = [0u8; 64];
        // Unauthenticated errors carry a fresh nonce and the realm so the client can retry.
        let challenge = authed.is_none() && matches!(f.code, 401 | 438);
        let mut reason = f.reason;
        if authed.is_none() {
            let extra = if challenge {
                MessageWriter::attribute_size(shared.auth.realm().len())
                    + MessageWriter::attribute_size(auth::NONCE_LEN)
            } else {
                0
            };
            match self.bounded_reason(msg, five, f.reason, extra) {
                Some(r) => reason = r,
                None => return Output::None,
            }
        }
        let nonce = if challenge {
            shared.auth.nonce(now, five.client, &mut nonce_buf)
        } else {
            ""
        };
        self.write(
            out,
            msg,
            authed,
            |w| {
                w.error_code(f.code, reason)?;
                if challenge {
                    w.attribute(attr::REALM, shared.auth.realm().as_bytes())?;
                    w.attribute(attr::NONCE, nonce.as_bytes())?;
                }
                Ok(())
            },
            Some(f.code),
        )
    }

    /// The reason phrase an unauthenticated UDP error answer to `msg` can carry within the
    /// amplification bound: `reason`, or "" when that is too long, or `None` (drop the
    /// answer, counted) when even the bare answer is too large. `extra` is what the answer
    /// carries besides the header, ERROR-CODE and FINGERPRINT.
    fn bounded_reason(
        &mut self,
        msg: &Message<'_>,
        five: FiveTuple,
        reason: &'static str,
        extra: usize,
    ) -> Option<&'static str> {
        if five.transport != Transport::Udp {
            return Some(reason);
        }
        let overhead = wire_overhead(&five.client);
        let limit = AMPLIFICATION * (msg.as_bytes().len() + overhead);
        let fingerprint = if msg.get(attr::FINGERPRINT).is_some() {
            MessageWriter::attribute_size(4)
        } else {
            0
        };
        let size = |r: &str| {
            overhead
                + wire::HEADER_LEN
                + MessageWriter::attribute_size(4 + r.len().min(128))
                + extra
                + fingerprint
        };
        if size(reason) <= limit {
            Some(reason)
        } else if size("") <= limit {
            Some("")
        } else {
            self.counters.drop(DropReason::Other);
            None
        }
    }

    /// Write a response: success when `error` is `None`. Integrity when authenticated;
    /// FINGERPRINT when the request had one.
    fn write(
        &mut self,
        out: &mut [u8],
        msg: &Message<'_>,
        authed: Option<&Authed>,
        body: impl FnOnce(&mut MessageWriter<'_>) -> Result<(), WireError>,
        error: Option<u16>,
    ) -> Output {
        let class = if error.is_some() {
            Class::Error
        } else {
            Class::Success
        };
        let r = (|| {
            let mut w = MessageWriter::new(
                out,
                message_type(msg.method(), class),
                &msg.transaction_id(),
            )?;
            body(&mut w)?;
            if let Some(a) = authed {
                credentials::sign(&mut w, &a.key, a.integrity)?;
            }
            if msg.get(attr::FINGERPRINT).is_some() {
                w.fingerprint()?;
            }
            Ok::<usize, WireError>(w.finish())
        })();
        match r {
            Ok(len) => {
                match error {
                    Some(code) => self.counters.error(code),
                    None => self.counters.responses += 1,
                }
                Output::Client { len }
            }
            Err(_) => {
                self.counters.drop(DropReason::Other);
                Output::None
            }
        }
    }
}

/// The lifetime granted for a non-zero request (RFC 8656 §7.2, §8.2): the requested one capped
/// at the maximum, but never less than the default.
fn grant_lifetime(cfg: &RelayConfig, asked: Duration) -> Duration {
    asked
        .min(cfg.max_lifetime)
        .max(cfg.default_lifetime.min(cfg.max_lifetime))
}

/// [`ChannelData::parse`] with channel numbers up to `max`.
fn parse_channel_data(bytes: &[u8], max: u16) -> Option<ChannelData<'_>> {
    let header = bytes.get(..proto::CHANNEL_DATA_HEADER)?;
    let channel = u16::from_be_bytes([header[0], header[1]]);
    if !(proto::CHANNEL_MIN..=max).contains(&channel) {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([header[2], header[3]]));
    let data = bytes.get(proto::CHANNEL_DATA_HEADER..)?.get(..len)?;
    Some(ChannelData { channel, data })
}

/// [`ChannelData::write`] for any channel number the core accepted.
fn write_channel_data(out: &mut [u8], channel: u16, data: &[u8], padded: bool) -> Option<usize> {
    let len = u16::try_from(data.len()).ok()?;
    let total = ChannelData::wire_len(data.len(), padded);
    let buf = out.get_mut(..total)?;
    buf[0..2].copy_from_slice(&channel.to_be_bytes());
    buf[2..4].copy_from_slice(&len.to_be_bytes());
    buf[4..4 + data.len()].copy_from_slice(data);
    buf[4 + data.len()..].fill(0);
    Some(total)
}

/// Write a Data indication (RFC 8656 §11.4).
fn data_indication(
    out: &mut [u8],
    id: &TransactionId,
    peer: SocketAddr,
    data: &[u8],
) -> Result<usize, WireError> {
    let mut w = MessageWriter::new(out, message_type(proto::DATA, Class::Indication), id)?;
    w.address(attr::XOR_PEER_ADDRESS, peer)?;
    w.attribute(attr::DATA, data)?;
    Ok(w.finish())
}
