//! A deterministic in-memory datagram network of hosts and [`Nat`] boxes, for tests.
//!
//! Hosts own IPv4 addresses in named networks; a NAT box sits between an inside and an
//! outside network and owns its external addresses in the outside network. Boxes nest to
//! any depth (a home NAT whose outside network is a carrier's network behind a CGN). Routing
//! is the simulator's rule: a datagram in network N goes to the owner of its destination
//! address in N (a host, or a NAT box's external address: inbound for that box); otherwise
//! to N's gateway (the box whose inside network is N: outbound); otherwise it is dropped
//! (`no-route`). A gateway never gets back a datagram it emitted into its own inside
//! network (no loops). A `Mode::Firewall` box also receives datagrams in its outside network
//! addressed to hosts of its inside network.
//!
//! Every link crossing (host to network, network to host, network to a box side, box side
//! to network) applies that link's [`Link`] impairment: loss, delay, uniform jitter and
//! reordering, all drawn from one seeded RNG, so the same seed and the same calls give the
//! same trace. Only UDP flows cross the boxes (via [`Nat::outbound`] / [`Nat::inbound`]).
//!
//! Drive loop (sans-IO, virtual time):
//!
//! ```text
//! net.send(now, from, to, payload)?;          // any number of times
//! while let Some(d) = net.poll_deliver(now) { /* host d.host got d.payload from d.from */ }
//! let next = net.poll_timeout();              // earliest datagram in flight; advance to it
//! ```
//!
//! or, with the [`Clock`] harness, `net.next_delivery(&mut clock)`, which jumps virtual time
//! to the next event. NAT mappings expire lazily as datagrams meet them; call
//! [`Net::handle_timeout`] to free expired mappings early.
//!
//! ```
//! use nat::net::{Clock, Net};
//! use nat::NatConfig;
//!
//! let mut net = Net::new(1);
//! let internet = net.add_network("internet");
//! let home = net.add_network("home");
//! let server = net.add_host("server", internet, "198.51.100.1".parse().unwrap()).unwrap();
//! let alice = net.add_host("alice", home, "192.168.1.2".parse().unwrap()).unwrap();
//! let cfg = NatConfig::preset("full-cone", vec!["203.0.113.1".parse().unwrap()]).unwrap();
//! net.add_nat("home-nat", cfg, home, internet).unwrap();
//!
//! let mut clock = Clock::new();
//! net.send(clock.now(), "192.168.1.2:4000".parse().unwrap(), "198.51.100.1:3478".parse().unwrap(), b"hi".to_vec()).unwrap();
//! let d = net.next_delivery(&mut clock).unwrap();
//! assert_eq!(d.host, server);
//! assert_eq!(d.from.to_string(), "203.0.113.1:4000");
//! # let _ = alice;
//! ```

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::config::{ConfigError, Mode, NatConfig};
use crate::nat::{Nat, Protocol};

/// A network (layer-3 segment).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NetId(usize);

/// A host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostId(usize);

/// A NAT box.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NatId(usize);

/// One-way impairment of a link, applied on every crossing.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Link {
    /// Fixed delay.
    pub delay: Duration,
    /// Uniform extra delay in `0..=jitter`.
    pub jitter: Duration,
    /// Loss probability, 0.0..=1.0.
    pub loss: f64,
    /// Probability that a datagram is held back by an extra `delay + jitter`, so that
    /// datagrams sent after it overtake it.
    pub reorder: f64,
}

/// A datagram handed to a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The receiving host.
    pub host: HostId,
    /// Destination (one of the host's addresses).
    pub to: SocketAddrV4,
    /// Source as the host sees it (after every NAT on the way).
    pub from: SocketAddrV4,
    /// Payload.
    pub payload: Vec<u8>,
    /// Arrival time.
    pub at: Instant,
}

/// Errors building or using the network.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetError {
    /// No host owns the source address.
    #[error("no host owns {0}")]
    UnknownSource(Ipv4Addr),
    /// Several hosts (in different networks) own the source address: use [`Net::send_from`].
    #[error("several hosts own {0}; use send_from")]
    AmbiguousSource(Ipv4Addr),
    /// The host does not own the source address.
    #[error("host does not own {0}")]
    NotOwned(Ipv4Addr),
    /// The address is already owned in that network.
    #[error("{addr} is already in use in network {network}")]
    AddressInUse {
        /// Network name.
        network: String,
        /// Address.
        addr: Ipv4Addr,
    },
    /// The network already has a gateway.
    #[error("network {0} already has a gateway NAT")]
    GatewayExists(String),
    /// Inside and outside network are the same.
    #[error("a NAT box needs two different networks")]
    SameNetwork,
    /// An id from another `Net`.
    #[error("unknown id")]
    UnknownId,
    /// The NAT configuration was refused.
    #[error("bad NAT configuration: {0}")]
    Config(#[from] ConfigError),
}

/// Counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Datagrams handed to [`Net::send`].
    pub sent: u64,
    /// Datagrams delivered to hosts.
    pub delivered: u64,
    /// Drops by reason: `loss`, `no-route`, `delay-overflow` (a link delay beyond what an
    /// `Instant` can hold), or a NAT's [`crate::DropReason::as_str`].
    pub dropped: BTreeMap<&'static str, u64>,
}

impl NetStats {
    /// Drops for `reason`.
    pub fn dropped(&self, reason: &str) -> u64 {
        self.dropped.get(reason).copied().unwrap_or(0)
    }
}

#[derive(Debug)]
struct NetworkNode {
    name: String,
    gateway: Option<usize>,
}

#[derive(Debug)]
struct HostNode {
    name: String,
    network: usize,
    addrs: Vec<Ipv4Addr>,
    link: Link,
}

#[derive(Debug)]
struct NatNode {
    name: String,
    nat: Nat,
    inside: usize,
    outside: usize,
    inside_link: Link,
    outside_link: Link,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    Host(usize),
    Nat(usize),
}

#[derive(Debug, Clone, Copy)]
enum Hop {
    /// Arrives in a network, emitted by a NAT box or a host.
    Network { net: usize, emitter: Option<usize> },
    /// Arrives at a NAT box side.
    Box { nat: usize, inside: bool },
    /// Arrives at a host.
    Host { host: usize },
}

#[derive(Debug)]
struct Event {
    at: Instant,
    seq: u64,
    hop: Hop,
    src: SocketAddrV4,
    dst: SocketAddrV4,
    payload: Vec<u8>,
}

impl PartialEq for Event {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at && self.seq == other.seq
    }
}
impl Eq for Event {}
impl PartialOrd for Event {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Event {
    // Reversed: BinaryHeap is a max-heap and we want the earliest (then first sent).
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// The network. See the module docs.
#[derive(Debug)]
pub struct Net {
    seed: u64,
    rng: StdRng,
    networks: Vec<NetworkNode>,
    hosts: Vec<HostNode>,
    nats: Vec<NatNode>,
    owners: HashMap<(usize, Ipv4Addr), Owner>,
    queue: BinaryHeap<Event>,
    seq: u64,
    stats: NetStats,
}

impl Net {
    /// An empty network; `seed` drives every impairment and every NAT's port choice.
    pub fn new(seed: u64) -> Net {
        Net {
            seed,
            rng: StdRng::seed_from_u64(seed),
            networks: Vec::new(),
            hosts: Vec::new(),
            nats: Vec::new(),
            owners: HashMap::new(),
            queue: BinaryHeap::new(),
            seq: 0,
            stats: NetStats::default(),
        }
    }

    /// Add a network.
    pub fn add_network(&mut self, name: &str) -> NetId {
        self.networks.push(NetworkNode {
            name: name.to_owned(),
            gateway: None,
        });
        NetId(self.networks.len() - 1)
    }

    /// Add a host with one address in `network`.
    pub fn add_host(
        &mut self,
        name: &str,
        network: NetId,
        addr: Ipv4Addr,
    ) -> Result<HostId, NetError> {
        if network.0 >= self.networks.len() {
            return Err(NetError::UnknownId);
        }
        self.claim(network.0, addr, Owner::Host(self.hosts.len()))?;
        self.hosts.push(HostNode {
            name: name.to_owned(),
            network: network.0,
            addrs: vec![addr],
            link: Link::default(),
        });
        Ok(HostId(self.hosts.len() - 1))
    }

    /// Give a host another address (e.g. an RFC 5780 server's alternate address).
    pub fn add_address(&mut self, host: HostId, addr: Ipv4Addr) -> Result<(), NetError> {
        let net = self.hosts.get(host.0).ok_or(NetError::UnknownId)?.network;
        self.claim(net, addr, Owner::Host(host.0))?;
        if let Some(h) = self.hosts.get_mut(host.0) {
            h.addrs.push(addr);
        }
        Ok(())
    }

    /// Add a NAT box, gateway of `inside`, with its external addresses in `outside`. Its
    /// port choices are seeded from the network's seed and the box's index.
    pub fn add_nat(
        &mut self,
        name: &str,
        config: NatConfig,
        inside: NetId,
        outside: NetId,
    ) -> Result<NatId, NetError> {
        if inside.0 >= self.networks.len() || outside.0 >= self.networks.len() {
            return Err(NetError::UnknownId);
        }
        if inside == outside {
            return Err(NetError::SameNetwork);
        }
        if self.networks[inside.0].gateway.is_some() {
            return Err(NetError::GatewayExists(
                self.networks[inside.0].name.clone(),
            ));
        }
        let index = self.nats.len();
        let seed = self
            .seed
            .wrapping_add((index as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let nat = Nat::new(config, seed)?;
        if nat.config().mode == Mode::Nat {
            for ip in nat.config().external.clone() {
                self.claim(outside.0, ip, Owner::Nat(index))?;
            }
        }
        self.networks[inside.0].gateway = Some(index);
        self.nats.push(NatNode {
            name: name.to_owned(),
            nat,
            inside: inside.0,
            outside: outside.0,
            inside_link: Link::default(),
            outside_link: Link::default(),
        });
        Ok(NatId(index))
    }

    fn claim(&mut self, net: usize, addr: Ipv4Addr, owner: Owner) -> Result<(), NetError> {
        if self.owners.contains_key(&(net, addr)) {
            return Err(NetError::AddressInUse {
                network: self
                    .networks
                    .get(net)
                    .map(|n| n.name.clone())
                    .unwrap_or_default(),
                addr,
            });
        }
        self.owners.insert((net, addr), owner);
        Ok(())
    }

    /// Impairment of a host's link (both directions).
    pub fn set_host_link(&mut self, host: HostId, link: Link) -> Result<(), NetError> {
        self.hosts.get_mut(host.0).ok_or(NetError::UnknownId)?.link = link;
        Ok(())
    }

    /// Impairments of a NAT box's inside and outside links.
    pub fn set_nat_links(
        &mut self,
        nat: NatId,
        inside: Link,
        outside: Link,
    ) -> Result<(), NetError> {
        let n = self.nats.get_mut(nat.0).ok_or(NetError::UnknownId)?;
        n.inside_link = inside;
        n.outside_link = outside;
        Ok(())
    }

    /// A NAT box's model (mappings, counters).
    pub fn nat(&self, nat: NatId) -> Option<&Nat> {
        self.nats.get(nat.0).map(|n| &n.nat)
    }

    /// A NAT box's name.
    pub fn nat_name(&self, nat: NatId) -> Option<&str> {
        self.nats.get(nat.0).map(|n| n.name.as_str())
    }

    /// A host's name.
    pub fn host_name(&self, host: HostId) -> Option<&str> {
        self.hosts.get(host.0).map(|h| h.name.as_str())
    }

    /// A host's addresses.
    pub fn host_addrs(&self, host: HostId) -> &[Ipv4Addr] {
        self.hosts
            .get(host.0)
            .map(|h| h.addrs.as_slice())
            .unwrap_or(&[])
    }

    /// Counters.
    pub fn stats(&self) -> &NetStats {
        &self.stats
    }

    /// Send a datagram from the host that owns `from`'s address (it must be unique across
    /// networks; otherwise use [`Net::send_from`]).
    pub fn send(
        &mut self,
        now: Instant,
        from: SocketAddrV4,
        to: SocketAddrV4,
        payload: Vec<u8>,
    ) -> Result<(), NetError> {
        let mut owner = None;
        for (i, h) in self.hosts.iter().enumerate() {
            if h.addrs.contains(from.ip()) {
                if owner.is_some() {
                    return Err(NetError::AmbiguousSource(*from.ip()));
                }
                owner = Some(i);
            }
        }
        let host = owner.ok_or(NetError::UnknownSource(*from.ip()))?;
        self.send_from(now, HostId(host), from, to, payload)
    }

    /// Send a datagram from `host`, which must own `from`'s address.
    pub fn send_from(
        &mut self,
        now: Instant,
        host: HostId,
        from: SocketAddrV4,
        to: SocketAddrV4,
        payload: Vec<u8>,
    ) -> Result<(), NetError> {
        let h = self.hosts.get(host.0).ok_or(NetError::UnknownId)?;
        if !h.addrs.contains(from.ip()) {
            return Err(NetError::NotOwned(*from.ip()));
        }
        let (link, net) = (h.link, h.network);
        self.stats.sent += 1;
        self.schedule(
            now,
            link,
            Hop::Network { net, emitter: None },
            from,
            to,
            payload,
        );
        Ok(())
    }

    /// Time of the next event (a datagram reaching a network, a box or a host).
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.queue.peek().map(|e| e.at)
    }

    /// Process events due at or before `now` until one is a delivery to a host.
    #[must_use]
    pub fn poll_deliver(&mut self, now: Instant) -> Option<Delivery> {
        while self.queue.peek().is_some_and(|e| e.at <= now) {
            let e = self.queue.pop()?;
            match e.hop {
                Hop::Host { host } => {
                    self.stats.delivered += 1;
                    return Some(Delivery {
                        host: HostId(host),
                        to: e.dst,
                        from: e.src,
                        payload: e.payload,
                        at: e.at,
                    });
                }
                Hop::Network { net, emitter } => self.route(e, net, emitter),
                Hop::Box { nat, inside } => self.cross(e, nat, inside),
            }
        }
        None
    }

    /// Let every NAT box expire its mappings.
    pub fn handle_timeout(&mut self, now: Instant) {
        for n in &mut self.nats {
            n.nat.handle_timeout(now);
        }
    }

    /// Harness: move `clock` forward to the next event until a datagram is delivered.
    /// `None` once nothing is in flight (the clock then stays where it is).
    pub fn next_delivery(&mut self, clock: &mut Clock) -> Option<Delivery> {
        loop {
            if let Some(d) = self.poll_deliver(clock.now()) {
                return Some(d);
            }
            let t = self.poll_timeout()?;
            clock.advance_to(t);
        }
    }

    /// Harness: every delivery up to `until`; the clock ends at `until`.
    pub fn run_until(&mut self, clock: &mut Clock, until: Instant) -> Vec<Delivery> {
        let mut out = Vec::new();
        loop {
            if let Some(d) = self.poll_deliver(clock.now()) {
                out.push(d);
                continue;
            }
            match self.poll_timeout() {
                Some(t) if t <= until => clock.advance_to(t),
                _ => break,
            }
        }
        clock.advance_to(until);
        out
    }

    fn drop_packet(&mut self, reason: &'static str) {
        *self.stats.dropped.entry(reason).or_insert(0) += 1;
    }

    fn schedule(
        &mut self,
        now: Instant,
        link: Link,
        hop: Hop,
        src: SocketAddrV4,
        dst: SocketAddrV4,
        payload: Vec<u8>,
    ) {
        if link.loss > 0.0 && self.rng.random::<f64>() < link.loss {
            self.drop_packet("loss");
            return;
        }
        let mut delay = link.delay;
        if !link.jitter.is_zero() {
            let j = self
                .rng
                .random_range(0..=link.jitter.as_nanos().min(u128::from(u64::MAX)) as u64);
            delay = delay.saturating_add(Duration::from_nanos(j));
        }
        if link.reorder > 0.0 && self.rng.random::<f64>() < link.reorder {
            delay = delay.saturating_add(link.delay.saturating_add(link.jitter));
        }
        // A delay past what an `Instant` can hold means the datagram never arrives.
        let Some(at) = now.checked_add(delay) else {
            self.drop_packet("delay-overflow");
            return;
        };
        self.seq += 1;
        self.queue.push(Event {
            at,
            seq: self.seq,
            hop,
            src,
            dst,
            payload,
        });
    }

    fn route(&mut self, e: Event, net: usize, emitter: Option<usize>) {
        match self.owners.get(&(net, *e.dst.ip())).copied() {
            Some(Owner::Host(h)) => {
                let link = self.hosts[h].link;
                self.schedule(e.at, link, Hop::Host { host: h }, e.src, e.dst, e.payload);
                return;
            }
            Some(Owner::Nat(n)) => {
                let link = self.nats[n].outside_link;
                self.schedule(
                    e.at,
                    link,
                    Hop::Box {
                        nat: n,
                        inside: false,
                    },
                    e.src,
                    e.dst,
                    e.payload,
                );
                return;
            }
            None => {}
        }
        // A firewall passes traffic for the hosts of its inside network.
        let firewall = self.nats.iter().position(|n| {
            n.outside == net
                && n.nat.config().mode != Mode::Nat
                && matches!(
                    self.owners.get(&(n.inside, *e.dst.ip())),
                    Some(Owner::Host(_))
                )
        });
        if let Some(n) = firewall {
            if emitter != Some(n) {
                let link = self.nats[n].outside_link;
                self.schedule(
                    e.at,
                    link,
                    Hop::Box {
                        nat: n,
                        inside: false,
                    },
                    e.src,
                    e.dst,
                    e.payload,
                );
                return;
            }
        }
        match self.networks[net].gateway {
            Some(g) if emitter != Some(g) => {
                let link = self.nats[g].inside_link;
                self.schedule(
                    e.at,
                    link,
                    Hop::Box {
                        nat: g,
                        inside: true,
                    },
                    e.src,
                    e.dst,
                    e.payload,
                );
            }
            _ => self.drop_packet("no-route"),
        }
    }

    fn cross(&mut self, e: Event, n: usize, inside: bool) {
        let node = &mut self.nats[n];
        let (in_net, out_net, in_link, out_link) = (
            node.inside,
            node.outside,
            node.inside_link,
            node.outside_link,
        );
        if inside {
            match node.nat.outbound(e.at, Protocol::Udp, e.src, e.dst) {
                Ok(o) => match o.hairpin_to {
                    Some(to) => self.schedule(
                        e.at,
                        in_link,
                        Hop::Network {
                            net: in_net,
                            emitter: Some(n),
                        },
                        o.external,
                        to,
                        e.payload,
                    ),
                    None => self.schedule(
                        e.at,
                        out_link,
                        Hop::Network {
                            net: out_net,
                            emitter: Some(n),
                        },
                        o.external,
                        e.dst,
                        e.payload,
                    ),
                },
                Err(r) => self.drop_packet(r.as_str()),
            }
        } else {
            match node.nat.inbound(e.at, Protocol::Udp, e.src, e.dst) {
                Ok(to) => self.schedule(
                    e.at,
                    in_link,
                    Hop::Network {
                        net: in_net,
                        emitter: Some(n),
                    },
                    e.src,
                    to,
                    e.payload,
                ),
                Err(r) => self.drop_packet(r.as_str()),
            }
        }
    }
}

/// A virtual clock for scripts: starts at a fixed `Instant`, moves only when told.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    start: Instant,
    now: Instant,
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

impl Clock {
    /// A clock at an arbitrary origin (only differences matter).
    pub fn new() -> Clock {
        let start = Instant::now();
        Clock { start, now: start }
    }
    /// Current virtual time.
    pub fn now(&self) -> Instant {
        self.now
    }
    /// Virtual time since the start.
    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }
    /// Move forward by `d`.
    pub fn advance(&mut self, d: Duration) {
        self.now += d;
    }
    /// Move forward to `t` (never backwards).
    pub fn advance_to(&mut self, t: Instant) {
        if t > self.now {
            self.now = t;
        }
    }
}
