//! The resolved shape of a scenario's network: what the packet fabric builds.
//!
//! The scenario layer (`scenario.rs`) turns a TOML file into a [`Topology`]; the fabric
//! (`fabric/`) brings it up in network namespaces and moves packets. The fabric knows nothing
//! about the NAT model: a model NAT box is a [`Translator`] the scenario layer constructs.
//!
//! Routing in user space (the fabric's job):
//! - Every host and every NAT side is attached to exactly one [`Network`].
//! - A packet sent into network N is delivered to the attachment that owns its destination
//!   address in N (a host's address, a NAT box's inside address, or a NAT box's external
//!   address, which makes it inbound traffic for that box).
//! - A destination not owned by anyone in N and outside N's prefixes goes to N's gateway: the
//!   NAT box whose `inside` network is N (outbound traffic). A network has at most one such
//!   box. Without a gateway, or when the destination is inside N's prefixes but unowned, the
//!   packet is dropped (and counted).
//! - Packets the gateway itself emits into N towards an unknown destination are dropped
//!   (no loops).

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

/// A scenario's network, ready for the fabric.
#[derive(Debug)]
pub struct Topology {
    /// Scenario name (file stem); used in report paths.
    pub name: String,
    /// Layer-3 segments.
    pub networks: Vec<Network>,
    /// End hosts: each gets its own namespace with one TUN device.
    pub hosts: Vec<Host>,
    /// NAT boxes: model (in the fabric process) or kernel (a router namespace).
    pub nats: Vec<NatBox>,
}

/// An IPv4 prefix such as 192.168.1.0/24.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Prefix {
    /// Network address.
    pub addr: Ipv4Addr,
    /// Prefix length, 0..=32.
    pub len: u8,
}

impl Ipv4Prefix {
    /// True when `ip` is inside this prefix.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        if self.len == 0 {
            return true;
        }
        let shift = 32 - u32::from(self.len.min(32));
        (u32::from(ip) >> shift) == (u32::from(self.addr) >> shift)
    }
}

/// A layer-3 segment (the Internet, a carrier's CGN space, a home LAN).
#[derive(Debug, Clone)]
pub struct Network {
    /// Name from the scenario file.
    pub name: String,
    /// Address ranges of this segment.
    pub prefixes: Vec<Ipv4Prefix>,
}

/// One-way impairment applied to every packet crossing a link, in each direction.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Impairment {
    /// Fixed one-way delay.
    pub delay: Duration,
    /// Uniform extra delay in 0..=jitter.
    pub jitter: Duration,
    /// Loss probability, 0.0..=1.0.
    pub loss: f64,
    /// Serialization rate in bits per second (None: unlimited).
    pub rate_bps: Option<u64>,
}

/// An end host: its own namespace, one TUN device, a default route into its network.
#[derive(Debug, Clone)]
pub struct Host {
    /// Name from the scenario file (also used in namespace and pcap file names).
    pub name: String,
    /// Index into [`Topology::networks`].
    pub network: usize,
    /// Addresses on the host's TUN device (at least one).
    pub addresses: Vec<Ipv4Addr>,
    /// Impairment on the host's link to its network.
    pub link: Impairment,
}

/// Which side of a NAT box a packet arrives on or leaves by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// The private side (towards `NatBox::inside`).
    Inside,
    /// The public side (towards `NatBox::outside`).
    Outside,
}

/// What a translator decided for one packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The packet (rewritten in place) leaves by this side. A hairpinned packet arrives on
    /// `Inside` and leaves by `Inside`.
    Forward(Side),
    /// Dropped; the reason is counted in the fabric's statistics.
    Drop(&'static str),
}

/// A NAT (or firewall) run by the fabric process on whole IPv4 packets.
pub trait Translator: Send + std::fmt::Debug {
    /// Translate one IPv4 packet that arrived on `from`. The packet is rewritten in place
    /// (addresses, ports, checksums, ICMP payload headers); its length never changes.
    fn process(&mut self, now: Instant, from: Side, packet: &mut [u8]) -> Verdict;
    /// Earliest time the translator wants [`Translator::handle_timeout`] (mapping expiry).
    fn poll_timeout(&self) -> Option<Instant> {
        None
    }
    /// Let time pass: expire mappings.
    fn handle_timeout(&mut self, _now: Instant) {}
}

/// How a NAT box is implemented.
#[derive(Debug)]
pub enum NatKind {
    /// Our model, run in the fabric process.
    Model(Box<dyn Translator>),
    /// A router namespace with two TUN devices, forwarding on and nftables masquerade on the
    /// outside device (`random_fully`: `masquerade random,fully-random`).
    Kernel {
        /// Use `masquerade random,fully-random`.
        random_fully: bool,
    },
}

/// A NAT box between two networks.
#[derive(Debug)]
pub struct NatBox {
    /// Name from the scenario file.
    pub name: String,
    /// Index of the private network (this box is its gateway).
    pub inside: usize,
    /// Index of the public network.
    pub outside: usize,
    /// The box's own address in the inside network (the hosts' gateway).
    pub inside_addr: Ipv4Addr,
    /// External addresses in the outside network (kernel boxes: exactly one).
    pub external: Vec<Ipv4Addr>,
    /// Model or kernel.
    pub kind: NatKind,
    /// Impairment between the box and its inside network.
    pub inside_link: Impairment,
    /// Impairment between the box and its outside network.
    pub outside_link: Impairment,
}
