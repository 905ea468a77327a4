//! The fabric's static picture of a topology, sans-IO: attachments (a host, or one side of a
//! NAT box) with their links, and each network's routing table. Built and checked once in
//! [`Plan::new`]; the packet loop only looks things up.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use super::FabricError;
use crate::topology::{Impairment, NatKind, Side, Topology};

/// Longest namespace name we create (the brief's limit; `ip` accepts longer).
pub(crate) const MAX_NETNS_NAME: usize = 31;

/// What an attachment is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AttachKind {
    /// Host `i`: a TUN device in its namespace.
    Host(usize),
    /// One side of a model NAT box: no device, the translator runs in the loop.
    Model { nat: usize, side: Side },
    /// One side of a kernel NAT box: a TUN device in the router namespace.
    Kernel { nat: usize, side: Side },
}

/// Something attached to a network through a link.
#[derive(Debug, Clone)]
pub(crate) struct Attachment {
    pub(crate) kind: AttachKind,
    pub(crate) network: usize,
    /// Link name: `HOST`, `BOX-inside`, `BOX-outside`.
    pub(crate) link_name: String,
    pub(crate) impairment: Impairment,
}

/// Where a packet emitted into a network goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    /// To this attachment.
    To(usize),
    /// Dropped for this reason.
    Drop(&'static str),
}

/// One network's routing table.
#[derive(Debug, Clone, Default)]
pub(crate) struct NetTable {
    owners: HashMap<Ipv4Addr, usize>,
    prefixes: Vec<crate::topology::Ipv4Prefix>,
    gateway: Option<usize>,
}

/// A namespace the fabric creates.
#[derive(Debug, Clone)]
pub(crate) struct NsPlan {
    /// Host or box name from the topology.
    pub(crate) owner: String,
    /// Namespace name: `<prefix>-<owner>` (or `<prefix>-<h|n><index>` when the owner's name is
    /// unusable or too long).
    pub(crate) name: String,
}

/// The checked plan.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub(crate) attachments: Vec<Attachment>,
    pub(crate) tables: Vec<NetTable>,
    /// Namespace of host `i`.
    pub(crate) host_ns: Vec<NsPlan>,
    /// Namespace of NAT box `i` (kernel boxes only).
    pub(crate) nat_ns: Vec<Option<NsPlan>>,
    /// Attachment index of NAT box `i`'s inside and outside.
    pub(crate) nat_sides: Vec<(usize, usize)>,
    /// Attachment index of host `i`.
    pub(crate) host_att: Vec<usize>,
}

fn usable_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
}

fn ns_name(prefix: &str, owner: &str, fallback: String) -> String {
    let full = format!("{prefix}-{owner}");
    if usable_name(owner) && full.len() <= MAX_NETNS_NAME {
        full
    } else {
        format!("{prefix}-{fallback}")
    }
}

impl Plan {
    /// Check `topo` and build the tables. `prefix` is the run's namespace prefix.
    pub(crate) fn new(topo: &Topology, prefix: &str) -> Result<Self, FabricError> {
        let bad = |m: String| Err(FabricError::Topology(m));
        let nets = topo.networks.len();
        let mut names: HashMap<&str, &str> = HashMap::new();
        for h in &topo.hosts {
            if names.insert(&h.name, "host").is_some() {
                return bad(format!("the name {:?} is used twice", h.name));
            }
            if h.network >= nets {
                return bad(format!(
                    "host {:?}: network index {} out of range",
                    h.name, h.network
                ));
            }
            if h.addresses.is_empty() {
                return bad(format!("host {:?} has no address", h.name));
            }
        }
        for n in &topo.nats {
            if names.insert(&n.name, "nat").is_some() {
                return bad(format!("the name {:?} is used twice", n.name));
            }
            if n.inside >= nets || n.outside >= nets || n.inside == n.outside {
                return bad(format!("NAT box {:?}: bad inside/outside networks", n.name));
            }
            if n.external.is_empty() {
                return bad(format!("NAT box {:?} has no external address", n.name));
            }
            if matches!(n.kind, NatKind::Kernel { .. }) && n.external.len() != 1 {
                return bad(format!(
                    "kernel NAT box {:?} needs exactly one external address",
                    n.name
                ));
            }
        }
        for imp in topo.hosts.iter().map(|h| &h.link).chain(
            topo.nats
                .iter()
                .flat_map(|n| [&n.inside_link, &n.outside_link]),
        ) {
            if !(0.0..=1.0).contains(&imp.loss) {
                return bad(format!("loss {} is outside 0..=1", imp.loss));
            }
        }
        if prefix.is_empty() || prefix.len() + 2 > MAX_NETNS_NAME || !usable_name(prefix) {
            return bad(format!("unusable namespace prefix {prefix:?}"));
        }

        let mut attachments = Vec::new();
        let mut tables: Vec<NetTable> = topo
            .networks
            .iter()
            .map(|n| NetTable {
                prefixes: n.prefixes.clone(),
                ..NetTable::default()
            })
            .collect();
        let own = |tables: &mut Vec<NetTable>, net: usize, ip: Ipv4Addr, att: usize, who: &str| {
            let t = tables
                .get_mut(net)
                .ok_or_else(|| FabricError::Topology(format!("{who}: bad network")))?;
            if t.owners.insert(ip, att).is_some() {
                return Err(FabricError::Topology(format!(
                    "{who}: address {ip} is already used in network {:?}",
                    topo.networks.get(net).map_or("?", |n| n.name.as_str())
                )));
            }
            Ok(())
        };
        let mut host_att = Vec::new();
        let mut host_ns = Vec::new();
        for (i, h) in topo.hosts.iter().enumerate() {
            let att = attachments.len();
            attachments.push(Attachment {
                kind: AttachKind::Host(i),
                network: h.network,
                link_name: h.name.clone(),
                impairment: h.link,
            });
            for ip in &h.addresses {
                own(&mut tables, h.network, *ip, att, &h.name)?;
            }
            host_att.push(att);
            host_ns.push(NsPlan {
                owner: h.name.clone(),
                name: ns_name(prefix, &h.name, format!("h{i}")),
            });
        }
        let mut nat_sides = Vec::new();
        let mut nat_ns = Vec::new();
        for (i, n) in topo.nats.iter().enumerate() {
            let kernel = matches!(n.kind, NatKind::Kernel { .. });
            let kind = |side| {
                if kernel {
                    AttachKind::Kernel { nat: i, side }
                } else {
                    AttachKind::Model { nat: i, side }
                }
            };
            let inside = attachments.len();
            attachments.push(Attachment {
                kind: kind(Side::Inside),
                network: n.inside,
                link_name: format!("{}-inside", n.name),
                impairment: n.inside_link,
            });
            let outside = attachments.len();
            attachments.push(Attachment {
                kind: kind(Side::Outside),
                network: n.outside,
                link_name: format!("{}-outside", n.name),
                impairment: n.outside_link,
            });
            own(&mut tables, n.inside, n.inside_addr, inside, &n.name)?;
            for ip in &n.external {
                own(&mut tables, n.outside, *ip, outside, &n.name)?;
            }
            let t = tables
                .get_mut(n.inside)
                .ok_or_else(|| FabricError::Topology("bad network".into()))?;
            if t.gateway.replace(inside).is_some() {
                return bad(format!(
                    "network {:?} has two gateways",
                    topo.networks.get(n.inside).map_or("?", |x| x.name.as_str())
                ));
            }
            nat_sides.push((inside, outside));
            nat_ns.push(kernel.then(|| NsPlan {
                owner: n.name.clone(),
                name: ns_name(prefix, &n.name, format!("n{i}")),
            }));
        }
        Ok(Self {
            attachments,
            tables,
            host_ns,
            nat_ns,
            nat_sides,
            host_att,
        })
    }

    /// Route a packet for `dst` that attachment `from` emitted into its network.
    pub(crate) fn route(&self, from: usize, dst: Ipv4Addr) -> Route {
        let Some(net) = self.attachments.get(from).map(|a| a.network) else {
            return Route::Drop("no-route");
        };
        let Some(t) = self.tables.get(net) else {
            return Route::Drop("no-route");
        };
        if let Some(&to) = t.owners.get(&dst) {
            return if to == from {
                Route::Drop("loop")
            } else {
                Route::To(to)
            };
        }
        if t.prefixes.iter().any(|p| p.contains(dst)) {
            return Route::Drop("unowned-destination");
        }
        match t.gateway {
            Some(g) if g == from => Route::Drop("gateway-loop"),
            Some(g) => Route::To(g),
            None => Route::Drop("no-route"),
        }
    }

    /// Prefix length for `ip` on a device in network `net`: that of the first prefix holding
    /// it, else /32.
    pub(crate) fn prefix_len(&self, net: usize, ip: Ipv4Addr) -> u8 {
        self.tables
            .get(net)
            .and_then(|t| t.prefixes.iter().find(|p| p.contains(ip)))
            .map_or(32, |p| p.len.min(32))
    }

    /// Every namespace, hosts first.
    pub(crate) fn namespaces(&self) -> impl Iterator<Item = &NsPlan> {
        self.host_ns.iter().chain(self.nat_ns.iter().flatten())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::{Host, Ipv4Prefix, NatBox, Network};

    fn net(name: &str, a: [u8; 4], len: u8) -> Network {
        Network {
            name: name.into(),
            prefixes: vec![Ipv4Prefix {
                addr: a.into(),
                len,
            }],
        }
    }

    fn topo() -> Topology {
        Topology {
            name: "t".into(),
            networks: vec![
                net("internet", [203, 0, 113, 0], 24),
                net("home", [192, 168, 1, 0], 24),
            ],
            hosts: vec![
                Host {
                    name: "a".into(),
                    network: 1,
                    addresses: vec![[192, 168, 1, 10].into()],
                    link: Impairment::default(),
                },
                Host {
                    name: "b".into(),
                    network: 1,
                    addresses: vec![[192, 168, 1, 11].into()],
                    link: Impairment::default(),
                },
                Host {
                    name: "s".into(),
                    network: 0,
                    addresses: vec![[203, 0, 113, 10].into()],
                    link: Impairment::default(),
                },
            ],
            nats: vec![NatBox {
                name: "home".into(),
                inside: 1,
                outside: 0,
                inside_addr: [192, 168, 1, 1].into(),
                external: vec![[203, 0, 113, 1].into()],
                kind: NatKind::Kernel {
                    random_fully: false,
                },
                inside_link: Impairment::default(),
                outside_link: Impairment::default(),
            }],
        }
    }

    #[test]
    fn routes_follow_the_topology_rule() {
        let p = Plan::new(&topo(), "nsim1x0").unwrap();
        let (gw_in, gw_out) = p.nat_sides[0];
        let a = p.host_att[0];
        assert_eq!(
            p.route(a, [192, 168, 1, 11].into()),
            Route::To(p.host_att[1])
        );
        assert_eq!(p.route(a, [192, 168, 1, 1].into()), Route::To(gw_in));
        assert_eq!(
            p.route(a, [192, 168, 1, 99].into()),
            Route::Drop("unowned-destination")
        );
        assert_eq!(p.route(a, [198, 51, 100, 1].into()), Route::To(gw_in));
        assert_eq!(
            p.route(gw_in, [198, 51, 100, 1].into()),
            Route::Drop("gateway-loop")
        );
        assert_eq!(
            p.route(gw_out, [203, 0, 113, 10].into()),
            Route::To(p.host_att[2])
        );
        assert_eq!(
            p.route(p.host_att[2], [203, 0, 113, 1].into()),
            Route::To(gw_out)
        );
        assert_eq!(
            p.route(p.host_att[2], [198, 51, 100, 1].into()),
            Route::Drop("no-route")
        );
        assert_eq!(p.host_ns[0].name, "nsim1x0-a");
        assert_eq!(p.nat_ns[0].as_ref().unwrap().name, "nsim1x0-home");
        assert_eq!(p.prefix_len(1, [192, 168, 1, 10].into()), 24);
        assert_eq!(p.prefix_len(1, [10, 0, 0, 1].into()), 32);
    }

    #[test]
    fn bad_topologies_are_refused_with_a_reason() {
        let mut t = topo();
        t.hosts[1].addresses = vec![[192, 168, 1, 10].into()];
        let e = Plan::new(&t, "nsim1x0").unwrap_err().to_string();
        assert!(e.contains("already used"), "{e}");
        let mut t = topo();
        t.hosts[1].name = "a".into();
        assert!(Plan::new(&t, "nsim1x0").is_err());
        let mut t = topo();
        t.hosts[0].network = 9;
        assert!(Plan::new(&t, "nsim1x0").is_err());
        let mut t = topo();
        t.hosts[0].link.loss = 1.5;
        assert!(Plan::new(&t, "nsim1x0").is_err());
    }

    #[test]
    fn long_or_odd_names_fall_back_to_indices() {
        let mut t = topo();
        t.hosts[0].name = "a-very-long-host-name-indeed-yes".into();
        t.hosts[1].name = "has space".into();
        let p = Plan::new(&t, "nsim123456x12").unwrap();
        assert_eq!(p.host_ns[0].name, "nsim123456x12-h0");
        assert_eq!(p.host_ns[1].name, "nsim123456x12-h1");
        assert!(p.namespaces().all(|n| n.name.len() <= MAX_NETNS_NAME));
    }
}
