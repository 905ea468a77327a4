//! Counters the packet loop keeps and publishes: per link direction, per NAT box, per network.

use std::collections::BTreeMap;

use serde::Serialize;

/// Packets and bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counter {
    /// Packets.
    pub packets: u64,
    /// Bytes (whole IP packets).
    pub bytes: u64,
}

impl Counter {
    pub(crate) fn add(&mut self, len: usize) {
        self.packets += 1;
        self.bytes += len as u64;
    }
}

/// One direction of a link.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DirectionStats {
    /// Packets that entered the link in this direction.
    pub entered: Counter,
    /// Packets that left it (delivered onwards).
    pub delivered: Counter,
    /// Drops by reason (`loss`, `queue-full`).
    pub drops: BTreeMap<String, u64>,
    /// Datagrams the fabric wrote to the device merged with others into one UDP GSO frame
    /// (only `down`, towards a host's or kernel box's TUN device; the kernel splits them back).
    pub merged: Counter,
}

/// A link: a host to its network, or one side of a NAT box to its network.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LinkStats {
    /// Link name (also the pcap file stem): `HOST`, `BOX-inside`, `BOX-outside`.
    pub name: String,
    /// Network the link attaches to.
    pub network: String,
    /// From the host or box into the network.
    pub up: DirectionStats,
    /// From the network to the host or box.
    pub down: DirectionStats,
}

/// A NAT box.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct NatStats {
    /// Box name.
    pub name: String,
    /// `model` or `kernel`.
    pub kind: String,
    /// Packets that arrived on the inside and left by the outside.
    pub outbound: Counter,
    /// Packets that arrived on the outside and left by the inside.
    pub inbound: Counter,
    /// Packets that arrived on the inside and left by the inside (hairpinning; model boxes).
    pub hairpinned: Counter,
    /// Packets that arrived on the outside and were sent back out (model boxes).
    pub reflected: Counter,
    /// Translator drops by reason (model boxes; the kernel does not tell us).
    pub drops: BTreeMap<String, u64>,
}

/// A network's routing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct NetworkStats {
    /// Network name.
    pub name: String,
    /// Packets routed to an attachment.
    pub routed: Counter,
    /// Routing drops by reason (`no-route`, `unowned-destination`, `gateway-loop`,
    /// `not-ipv4`, `malformed`, `offload` (a GSO frame from a device, never negotiated),
    /// `write-error`).
    pub drops: BTreeMap<String, u64>,
}

/// Everything the fabric counted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FabricStats {
    /// Per link.
    pub links: Vec<LinkStats>,
    /// Per NAT box.
    pub nats: Vec<NatStats>,
    /// Per network.
    pub networks: Vec<NetworkStats>,
}

impl FabricStats {
    /// The link named `name`.
    pub fn link(&self, name: &str) -> Option<&LinkStats> {
        self.links.iter().find(|l| l.name == name)
    }

    /// The NAT box named `name`.
    pub fn nat(&self, name: &str) -> Option<&NatStats> {
        self.nats.iter().find(|n| n.name == name)
    }

    /// The network named `name`.
    pub fn network(&self, name: &str) -> Option<&NetworkStats> {
        self.networks.iter().find(|n| n.name == name)
    }
}

pub(crate) fn bump(map: &mut BTreeMap<String, u64>, reason: &str) {
    if let Some(v) = map.get_mut(reason) {
        *v += 1;
    } else {
        map.insert(reason.to_owned(), 1);
    }
}
