//! A two-agent world over `nat::net` with a virtual clock (shared by the deterministic tests).
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use ice::{
    Agent, Candidate, CandidateKind, Config, Event, FailReason, IceState, Nomination, Policy, Via,
};
use nat::NatConfig;
use nat::net::{Clock, HostId, Link, Net};
use std::sync::Arc;

use ice::TurnServer;
use turn::binding::{Listener, Responder, ResponderConfig, Transport};
use turn::relay::{
    AuthConfig, Authenticator, Family, FiveTuple, Output, PeerPolicy, PortPool, Quota, RelayConfig,
    RelayPorts, Server, Shared,
};

/// Relay ports of the in-process TURN server, all on its one address.
#[derive(Debug)]
pub struct Pool {
    ip: Ipv4Addr,
    ports: PortPool,
}

impl RelayPorts for Pool {
    fn supports(&self, f: Family) -> bool {
        f == Family::V4
    }
    fn acquire(&mut self, f: Family, even: bool) -> Option<SocketAddr> {
        (f == Family::V4).then_some(())?;
        Some(SocketAddr::new(self.ip.into(), self.ports.take(even)?))
    }
    fn release(&mut self, a: SocketAddr) {
        self.ports.put(a.port());
    }
}

/// The TURN server core (RFC 8656) of the `turn` crate on a public host of the network.
pub struct TurnHost {
    pub host: HostId,
    pub addr: SocketAddrV4,
    pub server: Server,
    pub pool: Pool,
}

pub const TURN_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
/// Local port of each agent's socket towards the TURN server.
pub const TURN_CLIENT_PORT: u16 = 40000;

/// The kind of path a selected pair uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    Direct,
    ServerReflexive,
    PeerReflexive,
    Relayed,
}

pub fn path_of(local: &Candidate, remote: &Candidate) -> Path {
    let kinds = [local.kind, remote.kind];
    if kinds.contains(&CandidateKind::Relayed) {
        Path::Relayed
    } else if kinds.contains(&CandidateKind::PeerReflexive) {
        Path::PeerReflexive
    } else if kinds.contains(&CandidateKind::ServerReflexive) {
        Path::ServerReflexive
    } else {
        Path::Direct
    }
}

#[derive(Debug, Clone)]
pub struct Opts {
    pub trickle: bool,
    pub nomination: Nomination,
    pub policy: Policy,
    pub loss: f64,
    pub reorder: f64,
    pub a_controlling: Option<bool>,
    pub b_controlling: Option<bool>,
    pub b_lite: bool,
    pub stun_delay: Duration,
    pub signal_delay: Duration,
    /// Extra delay on B's trickled candidates (not its credentials).
    pub b_candidate_delay: Duration,
    /// A TURN server (the `turn::relay` core) on the public network; both agents use it.
    pub turn: bool,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            trickle: true,
            nomination: Nomination::Regular,
            policy: Policy::All,
            loss: 0.0,
            reorder: 0.0,
            a_controlling: None,
            b_controlling: None,
            b_lite: false,
            stun_delay: Duration::ZERO,
            signal_delay: Duration::from_millis(50),
            b_candidate_delay: Duration::ZERO,
            turn: false,
        }
    }
}

#[derive(Debug, Clone)]
pub enum Sig {
    Creds {
        ufrag: String,
        pwd: String,
        lite: bool,
    },
    Cand(Candidate),
    End,
}

pub struct Peer {
    pub agent: Agent,
    pub host: HostId,
    pub addr: SocketAddrV4,
    pub gathered: Vec<Candidate>,
    pub gathering_done: bool,
    pub offer_received: bool,
    pub answered: bool,
    pub data: Vec<Vec<u8>>,
    pub connected_at: Option<Duration>,
    pub events: Vec<(Duration, Event)>,
}

#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub connected: bool,
    pub path_a: Option<Path>,
    pub path_b: Option<Path>,
    pub fail_a: Option<FailReason>,
    pub fail_b: Option<FailReason>,
    pub connected_at: Option<Duration>,
    pub ended_at: Duration,
    pub data_ok: bool,
}

pub struct World {
    pub net: Net,
    pub clock: Clock,
    pub start: Instant,
    pub a: Peer,
    pub b: Peer,
    pub stun_host: HostId,
    pub stun_addr: SocketAddrV4,
    pub responder: Responder,
    /// Signals in flight: (due, to_b, signal).
    pub signals: VecDeque<(Instant, bool, Sig)>,
    pub turn: Option<TurnHost>,
    pub silence_b: bool,
    pub opts: Opts,
}

fn peer_host(
    net: &mut Net,
    internet: nat::net::NetId,
    name: &str,
    kind: &str,
    public: Ipv4Addr,
    private: Ipv4Addr,
    external: Ipv4Addr,
) -> (HostId, Ipv4Addr) {
    if kind == "none" {
        return (net.add_host(name, internet, public).unwrap(), public);
    }
    let home = net.add_network(&format!("{name}-home"));
    let h = net.add_host(name, home, private).unwrap();
    let mut cfg = NatConfig::preset(kind, vec![external]).unwrap();
    cfg.udp_timeout = Duration::from_secs(30);
    net.add_nat(&format!("{name}-nat"), cfg, home, internet)
        .unwrap();
    (h, private)
}

impl World {
    pub fn new(seed: u64, a_kind: &str, b_kind: &str, opts: Opts) -> World {
        let mut net = Net::new(seed);
        let internet = net.add_network("internet");
        let stun_ip = Ipv4Addr::new(198, 51, 100, 1);
        let stun_host = net.add_host("stun", internet, stun_ip).unwrap();
        let stun_addr = SocketAddrV4::new(stun_ip, 3478);
        let (ha, ipa) = peer_host(
            &mut net,
            internet,
            "a",
            a_kind,
            Ipv4Addr::new(198, 51, 100, 10),
            Ipv4Addr::new(10, 0, 1, 2),
            Ipv4Addr::new(203, 0, 113, 1),
        );
        let (hb, ipb) = peer_host(
            &mut net,
            internet,
            "b",
            b_kind,
            Ipv4Addr::new(198, 51, 100, 20),
            Ipv4Addr::new(10, 0, 2, 2),
            Ipv4Addr::new(203, 0, 113, 2),
        );
        let link = Link {
            delay: Duration::from_millis(10),
            jitter: Duration::ZERO,
            loss: opts.loss,
            reorder: opts.reorder,
        };
        net.set_host_link(ha, link).unwrap();
        net.set_host_link(hb, link).unwrap();
        net.set_host_link(
            stun_host,
            Link {
                delay: opts.stun_delay,
                ..Link::default()
            },
        )
        .unwrap();
        let clock = Clock::new();
        let start = clock.now();
        let turn = opts.turn.then(|| {
            let host = net.add_host("turn", internet, TURN_IP).unwrap();
            let addr = SocketAddrV4::new(TURN_IP, 3478);
            let auth = Authenticator::new(AuthConfig {
                realm: "example.org".into(),
                users: vec![("user".into(), "pass".into())],
                rest_secret: None,
                nonce_key: [7; 32],
                nonce_lifetime: Duration::from_secs(3600),
                epoch: start,
                unix_at_epoch: 1_700_000_000,
            })
            .unwrap();
            let mut policy = PeerPolicy::new();
            policy.deny_defaults = false;
            policy.relay_ips = vec![TURN_IP.into()];
            policy.relay_ports = Some(50000..=50999);
            policy.service = vec![SocketAddr::V4(addr)];
            let shared = Arc::new(Shared {
                config: RelayConfig {
                    seed,
                    ..RelayConfig::default()
                },
                auth,
                policy,
                quota: Quota::new(0, 0),
            });
            TurnHost {
                host,
                addr,
                server: Server::new(shared, 0),
                pool: Pool {
                    ip: TURN_IP,
                    ports: PortPool::new(50000..=50999, seed),
                },
            }
        });
        let turn_servers: Vec<TurnServer> = turn
            .as_ref()
            .map(|t| TurnServer {
                addr: SocketAddr::V4(t.addr),
                transport: turn::client::Transport::Udp,
                username: "user".into(),
                password: "pass".into(),
            })
            .into_iter()
            .collect();
        let mk = |controlling: bool, lite: bool, s: u64| {
            Agent::new(Config {
                controlling,
                lite,
                nomination: opts.nomination,
                policy: opts.policy,
                stun_servers: vec![SocketAddr::V4(stun_addr)],
                turn_servers: turn_servers.clone(),
                seed: s,
                ..Config::default()
            })
            .unwrap()
        };
        let peer = |agent, host, ip| Peer {
            agent,
            host,
            addr: SocketAddrV4::new(ip, 5000),
            gathered: vec![],
            gathering_done: false,
            offer_received: false,
            answered: false,
            data: vec![],
            connected_at: None,
            events: vec![],
        };
        let a = peer(
            mk(opts.a_controlling.unwrap_or(true), false, seed * 2 + 1),
            ha,
            ipa,
        );
        let b = peer(
            mk(
                opts.b_controlling.unwrap_or(false),
                opts.b_lite,
                seed * 2 + 2,
            ),
            hb,
            ipb,
        );
        let mut w = World {
            net,
            clock,
            start,
            a,
            b,
            stun_host,
            stun_addr,
            responder: Responder::new(ResponderConfig::new(SocketAddr::V4(stun_addr), None)),
            signals: VecDeque::new(),
            turn,
            silence_b: false,
            opts,
        };
        let now = w.clock.now();
        for p in [&mut w.a, &mut w.b] {
            p.agent.add_host(now, SocketAddr::V4(p.addr)).unwrap();
            p.agent.gather(now);
        }
        if w.opts.trickle {
            // Offer and answer carry the credentials at once; candidates trickle.
            w.signal_creds(true);
            w.signal_creds(false);
        }
        w
    }

    fn signal(&mut self, to_b: bool, s: Sig) {
        let mut due = self.clock.now() + self.opts.signal_delay;
        if !to_b && matches!(s, Sig::Cand(_) | Sig::End) {
            due += self.opts.b_candidate_delay;
        }
        // Keep the queue ordered by due time (delays differ per kind of signal).
        let at = self.signals.partition_point(|(t, _, _)| *t <= due);
        self.signals.insert(at, (due, to_b, s));
    }

    fn signal_creds(&mut self, from_a: bool) {
        let p = if from_a { &self.a } else { &self.b };
        let c = p.agent.local_credentials().clone();
        let lite = !from_a && self.opts.b_lite;
        self.signal(
            from_a,
            Sig::Creds {
                ufrag: c.ufrag,
                pwd: c.pwd,
                lite,
            },
        );
    }

    pub fn elapsed(&self) -> Duration {
        self.clock.now() - self.start
    }

    /// Drain both agents' polls; route transmits into the network and signals.
    fn pump(&mut self) {
        let now = self.clock.now();
        let elapsed = self.elapsed();
        for is_a in [true, false] {
            let mut out = Vec::new();
            {
                let p = if is_a { &mut self.a } else { &mut self.b };
                while let Some(t) = p.agent.poll_transmit() {
                    out.push(t);
                }
                while let Some(e) = p.agent.poll_event() {
                    p.events.push((elapsed, e.clone()));
                    match e {
                        Event::LocalCandidate(c) => p.gathered.push(c),
                        Event::GatheringComplete => p.gathering_done = true,
                        Event::Data { data, .. } => p.data.push(data),
                        Event::StateChanged(IceState::Connected) if p.connected_at.is_none() => {
                            p.connected_at = Some(elapsed)
                        }
                        _ => {}
                    }
                }
            }
            let (host, addr) = if is_a {
                (self.a.host, self.a.addr)
            } else {
                (self.b.host, self.b.addr)
            };
            if !is_a && self.silence_b {
                continue;
            }
            for t in out {
                let src = match t.via {
                    Via::Host(src) => {
                        assert_eq!(src, SocketAddr::V4(addr));
                        addr
                    }
                    Via::Turn(0) => SocketAddrV4::new(*addr.ip(), TURN_CLIENT_PORT),
                    Via::Turn(i) => panic!("no TURN server {i}"),
                };
                let SocketAddr::V4(dst) = t.destination else {
                    continue;
                };
                self.net.send_from(now, host, src, dst, t.payload).unwrap();
            }
        }
        self.signal_candidates();
    }

    /// Trickle: forward new candidates. Vanilla: send the whole description when ready.
    fn signal_candidates(&mut self) {
        for from_a in [true, false] {
            let p = if from_a { &mut self.a } else { &mut self.b };
            if self.opts.trickle {
                let cands: Vec<Candidate> = p.gathered.drain(..).collect();
                let done = std::mem::take(&mut p.gathering_done);
                for c in cands {
                    self.signal(from_a, Sig::Cand(c));
                }
                if done {
                    self.signal(from_a, Sig::End);
                }
            } else {
                let ready = p.gathering_done && !p.answered && (from_a || p.offer_received);
                if ready {
                    p.answered = true;
                    let cands: Vec<Candidate> = p.gathered.drain(..).collect();
                    self.signal_creds(from_a);
                    for c in cands {
                        self.signal(from_a, Sig::Cand(c));
                    }
                    self.signal(from_a, Sig::End);
                }
            }
        }
    }

    fn deliver_signals(&mut self) -> bool {
        let now = self.clock.now();
        let mut any = false;
        while self.signals.front().is_some_and(|(t, _, _)| *t <= now) {
            let Some((_, to_b, s)) = self.signals.pop_front() else {
                break;
            };
            any = true;
            let p = if to_b { &mut self.b } else { &mut self.a };
            match s {
                Sig::Creds { ufrag, pwd, lite } => {
                    p.offer_received = true;
                    p.agent.set_remote_lite(lite);
                    p.agent.set_remote_credentials(now, &ufrag, &pwd).unwrap();
                }
                Sig::Cand(c) => {
                    p.agent.add_remote_candidate(now, c).unwrap();
                }
                Sig::End => p.agent.end_of_remote_candidates(now),
            }
        }
        any
    }

    fn deliver_packets(&mut self) -> bool {
        let now = self.clock.now();
        let mut any = false;
        while let Some(d) = self.net.poll_deliver(now) {
            any = true;
            if let Some(t) = self.turn.as_mut().filter(|t| t.host == d.host) {
                let mut out = vec![0u8; 2048];
                if d.to == t.addr {
                    let five = FiveTuple {
                        client: SocketAddr::V4(d.from),
                        server: SocketAddr::V4(d.to),
                        transport: turn::relay::Transport::Udp,
                    };
                    match t
                        .server
                        .handle_client(now, &mut t.pool, five, &d.payload, &mut out)
                    {
                        Output::Client { len } => {
                            self.net
                                .send_from(now, t.host, t.addr, d.from, out[..len].to_vec())
                                .unwrap();
                        }
                        Output::Peer { relay, peer, data } => {
                            let (SocketAddr::V4(relay), SocketAddr::V4(peer)) = (relay, peer)
                            else {
                                continue;
                            };
                            self.net
                                .send_from(now, t.host, relay, peer, d.payload[data].to_vec())
                                .unwrap();
                        }
                        Output::Binding | Output::None => {}
                    }
                } else if let Some(tc) = t.server.handle_peer(
                    now,
                    SocketAddr::V4(d.to),
                    SocketAddr::V4(d.from),
                    &d.payload,
                    &mut out,
                ) {
                    let (SocketAddr::V4(srv), SocketAddr::V4(client)) =
                        (tc.five.server, tc.five.client)
                    else {
                        continue;
                    };
                    self.net
                        .send_from(now, t.host, srv, client, out[..tc.len].to_vec())
                        .unwrap();
                }
                continue;
            }
            if d.host == self.stun_host {
                let mut out = [0u8; 1500];
                if let Ok(r) = self.responder.handle(
                    Transport::Udp,
                    Listener::PRIMARY,
                    SocketAddr::V4(d.from),
                    &d.payload,
                    &mut out,
                ) {
                    let SocketAddr::V4(to) = r.to else { continue };
                    self.net
                        .send_from(
                            now,
                            self.stun_host,
                            self.stun_addr,
                            to,
                            out[..r.len].to_vec(),
                        )
                        .unwrap();
                }
                continue;
            }
            if d.host == self.b.host && self.silence_b {
                continue;
            }
            let p = if d.host == self.a.host {
                &mut self.a
            } else {
                &mut self.b
            };
            if d.to.port() == TURN_CLIENT_PORT {
                p.agent.handle_turn_input(now, 0, &d.payload);
            } else {
                p.agent.handle_packet(
                    now,
                    SocketAddr::V4(d.to),
                    SocketAddr::V4(d.from),
                    &d.payload,
                );
            }
        }
        any
    }

    fn timers(&mut self) {
        let now = self.clock.now();
        if let Some(t) = self.turn.as_mut() {
            if t.server.poll_timeout().is_some_and(|x| x <= now) {
                t.server.handle_timeout(now, &mut t.pool);
            }
        }
        for p in [&mut self.a, &mut self.b] {
            if p.agent.poll_timeout().is_some_and(|t| t <= now) {
                p.agent.handle_timeout(now);
            }
        }
    }

    /// Process everything due now, then jump to the next event. False when nothing is left.
    pub fn step(&mut self, until: Instant) -> bool {
        for i in 0.. {
            assert!(i < 10_000, "an agent's poll_timeout stays in the past");
            self.timers();
            self.pump();
            let s = self.deliver_signals();
            self.pump();
            let p = self.deliver_packets();
            self.pump();
            let now = self.clock.now();
            let timers_due = [&self.a, &self.b]
                .iter()
                .any(|p| p.agent.poll_timeout().is_some_and(|t| t <= now));
            if !s && !p && !timers_due {
                break;
            }
        }
        let next = [
            self.net.poll_timeout(),
            self.a.agent.poll_timeout(),
            self.b.agent.poll_timeout(),
            self.signals.front().map(|(t, _, _)| *t),
            self.turn.as_ref().and_then(|t| t.server.poll_timeout()),
        ]
        .into_iter()
        .flatten()
        .min();
        match next {
            Some(t) => {
                assert!(t >= self.clock.now(), "a poll_timeout in the past");
                self.clock.advance_to(t.min(until).max(self.clock.now()));
                true
            }
            None => false,
        }
    }

    pub fn run_until(&mut self, mut done: impl FnMut(&World) -> bool, limit: Duration) {
        let end = self.clock.now() + limit;
        let mut steps = 0u32;
        while !done(self) && self.clock.now() < end {
            steps += 1;
            assert!(steps < 1_000_000, "simulation spins");
            if !self.step(end) {
                break;
            }
            if self.clock.now() > end {
                break;
            }
        }
    }

    pub fn run(&mut self, limit: Duration) -> Outcome {
        let both = |w: &World| {
            let ended =
                |p: &Peer| p.agent.state().is_connected() || p.agent.state() == IceState::Failed;
            (w.a.agent.state().is_connected() && w.b.agent.state().is_connected())
                || (ended(&w.a) && ended(&w.b))
        };
        self.run_until(both, limit);
        let mut o = Outcome {
            connected: self.a.agent.state().is_connected() && self.b.agent.state().is_connected(),
            fail_a: self.a.agent.failure(),
            fail_b: self.b.agent.failure(),
            connected_at: self.a.connected_at.max(self.b.connected_at),
            ended_at: self.elapsed(),
            ..Outcome::default()
        };
        o.path_a = self.a.agent.selected_pair().map(|(l, r)| path_of(l, r));
        o.path_b = self.b.agent.selected_pair().map(|(l, r)| path_of(l, r));
        if o.connected {
            o.data_ok = self.exchange_data();
            // Let in-flight checks settle.
            self.run_until(|_| false, Duration::from_millis(500));
        }
        o
    }

    /// A sends to B and B to A over the selected pairs; true when both arrive.
    pub fn exchange_data(&mut self) -> bool {
        let now = self.clock.now();
        let (na, nb) = (self.a.data.len(), self.b.data.len());
        if self.a.agent.send(now, b"\x80hello from a").is_err()
            || self.b.agent.send(now, b"\x80hello from b").is_err()
        {
            return false;
        }
        self.run_until(
            |w| w.a.data.len() > na && w.b.data.len() > nb,
            Duration::from_secs(2),
        );
        self.a.data.last().is_some_and(|d| d == b"\x80hello from b")
            && self.b.data.last().is_some_and(|d| d == b"\x80hello from a")
    }

    /// ICE restart by A (the offerer), answered by B: new credentials both ways, candidates
    /// signalled again.
    pub fn restart(&mut self) {
        let now = self.clock.now();
        self.a.agent.restart(now).unwrap();
        self.b.agent.restart(now).unwrap();
        for from_a in [true, false] {
            self.signal_creds(from_a);
            let p = if from_a { &self.a } else { &self.b };
            let cands = p.agent.local_candidates();
            for c in cands {
                self.signal(from_a, Sig::Cand(c));
            }
            self.signal(from_a, Sig::End);
        }
    }
}
