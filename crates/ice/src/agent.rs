//! The ICE agent: one data stream, one component, full or lite (RFC 8445).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use stun::credentials::{Key, verify};
use stun::transaction::{Outcome, Transaction};
use stun::wire::{BINDING, Class, Message, TransactionId, attr};
use tracing::{debug, trace};
use turn::client::{Client as TurnClient, Config as TurnConfig, Event as TurnEvent};

use crate::candidate::{Candidate, CandidateKind, Protocol, local_preference, priority};
use crate::config::{Config, Nomination, Policy};
use crate::message::{self, CheckRequest};
use crate::pair::{CandidatePair, PairState, pair_priority};
use crate::{Error, Event, FailReason, GatheringState, IceState, Stats, Transmit, Via};

/// ICE credentials (RFC 8445 §5.3).
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// Username fragment.
    pub ufrag: String,
    /// Password.
    pub pwd: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("ufrag", &self.ufrag)
            .field("pwd", &"<redacted>")
            .finish()
    }
}

/// Peer-reflexive remote candidates learnt from one remote IP address on one local base (see
/// `Agent::may_learn_prflx`). A peer behind an address-and-port-dependent NAT legitimately shows
/// one port per pair of (its base, our candidate on that base): a few host addresses times our
/// host and server-reflexive candidates stays well below this.
const MAX_PRFLX_PER_BASE_AND_IP: usize = 8;

const ICE_CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn random_string(rng: &mut StdRng, len: usize) -> String {
    (0..len)
        .map(|_| char::from(ICE_CHARS[rng.random_range(0..ICE_CHARS.len())]))
        .collect()
}

/// A local candidate and how to send from it.
#[derive(Debug, Clone)]
struct Local {
    cand: Candidate,
    /// The base (RFC 8445 §5.1.1.3): the socket address we send from, or the relayed address.
    base: SocketAddr,
    via: Via,
    local_pref: u16,
}

#[derive(Debug)]
struct Gather {
    tx: Transaction,
    base: SocketAddr,
    server: SocketAddr,
}

#[derive(Debug)]
struct Turn {
    client: TurnClient,
    /// Still waiting for the allocation.
    pending: bool,
    /// Index of the relayed local candidate, once allocated.
    local: Option<usize>,
    index: usize,
}

#[derive(Debug)]
struct Consent {
    next: Instant,
    last_ok: Instant,
    tx: Option<(Transaction, usize)>,
}

/// The ICE agent. See the [crate docs](crate) for the drive loop.
#[derive(Debug)]
pub struct Agent {
    config: Config,
    rng: StdRng,
    now: Option<Instant>,
    local_creds: Credentials,
    local_key: Key,
    remote_creds: Option<Credentials>,
    remote_key: Option<Key>,
    tie_breaker: u64,
    controlling: bool,
    locals: Vec<Local>,
    remotes: Vec<Candidate>,
    pairs: Vec<CandidatePair>,
    triggered: VecDeque<usize>,
    gathers: Vec<Gather>,
    turns: Vec<Turn>,
    foundations: HashMap<String, String>,
    gathering: GatheringState,
    gather_started: bool,
    state: IceState,
    failure: Option<FailReason>,
    next_check: Option<Instant>,
    checks_started: Option<Instant>,
    first_valid: Option<Instant>,
    nominating: Option<usize>,
    selected: Option<usize>,
    /// After a restart, the old path keeps carrying data until a new pair is selected.
    carry: Option<(Via, SocketAddr, SocketAddr)>,
    remote_end: bool,
    remote_lite: bool,
    consent: Option<Consent>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    stats: Stats,
    host_count: usize,
    /// Last authenticated check from the peer: while it keeps checking, we do not give up.
    last_request: Option<Instant>,
    /// When the last paced check went out (Ta pacing).
    last_check_at: Option<Instant>,
}

impl Agent {
    /// A new agent with fresh credentials drawn from `config.seed`.
    pub fn new(config: Config) -> Result<Agent, Error> {
        let mut rng = StdRng::seed_from_u64(config.seed);
        let local_creds = Credentials {
            ufrag: random_string(&mut rng, 8),
            pwd: random_string(&mut rng, 24),
        };
        let local_key = Key::short_term(&local_creds.pwd)?;
        let tie_breaker = rng.random();
        let controlling = config.controlling && !config.lite;
        let turns = config
            .turn_servers
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let mut c =
                    TurnConfig::new(t.addr, t.transport, t.username.clone(), t.password.clone());
                c.retransmit = config.stun_retransmit;
                Turn {
                    client: TurnClient::with_seed(c, rng.random()),
                    pending: false,
                    local: None,
                    index: i,
                }
            })
            .collect();
        Ok(Agent {
            rng,
            now: None,
            local_creds,
            local_key,
            remote_creds: None,
            remote_key: None,
            tie_breaker,
            controlling,
            locals: Vec::new(),
            remotes: Vec::new(),
            pairs: Vec::new(),
            triggered: VecDeque::new(),
            gathers: Vec::new(),
            turns,
            foundations: HashMap::new(),
            gathering: GatheringState::New,
            gather_started: false,
            state: IceState::New,
            failure: None,
            next_check: None,
            checks_started: None,
            first_valid: None,
            nominating: None,
            selected: None,
            carry: None,
            remote_end: false,
            remote_lite: false,
            consent: None,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: Stats::default(),
            host_count: 0,
            last_request: None,
            last_check_at: None,
            config,
        })
    }

    // ---------------------------------------------------------------------------------------
    // Getters.

    /// Our ufrag and password, to signal to the peer.
    pub fn local_credentials(&self) -> &Credentials {
        &self.local_creds
    }

    /// True while the agent is the controlling one.
    pub fn is_controlling(&self) -> bool {
        self.controlling
    }

    /// The local candidates signalled so far (host, srflx, relay; never prflx).
    pub fn local_candidates(&self) -> Vec<Candidate> {
        self.locals
            .iter()
            .filter(|l| self.signalled(l))
            .map(|l| l.cand.clone())
            .collect()
    }

    /// The remote candidates known (signalled and peer-reflexive).
    pub fn remote_candidates(&self) -> &[Candidate] {
        &self.remotes
    }

    /// Connection state.
    pub fn state(&self) -> IceState {
        self.state
    }

    /// Why the agent failed, once it has.
    pub fn failure(&self) -> Option<FailReason> {
        self.failure
    }

    /// Gathering state.
    pub fn gathering_state(&self) -> GatheringState {
        self.gathering
    }

    /// The selected pair: (local candidate, remote candidate).
    pub fn selected_pair(&self) -> Option<(&Candidate, &Candidate)> {
        let p = self.pairs.get(self.selected?)?;
        Some((&self.locals.get(p.local)?.cand, self.remotes.get(p.remote)?))
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        let mut s = self.stats.clone();
        s.pairs = self.pairs.len();
        s
    }

    /// Pairs as `(local, remote, state, nominated)`, highest priority first (for tests and
    /// diagnostics).
    pub fn pairs(&self) -> Vec<(Candidate, Candidate, PairState, bool)> {
        let mut v: Vec<_> = self.pairs.iter().collect();
        v.sort_by_key(|p| std::cmp::Reverse(p.priority));
        v.into_iter()
            .filter_map(|p| {
                Some((
                    self.locals.get(p.local)?.cand.clone(),
                    self.remotes.get(p.remote)?.clone(),
                    p.state,
                    p.nominated,
                ))
            })
            .collect()
    }

    fn signalled(&self, l: &Local) -> bool {
        match l.cand.kind {
            CandidateKind::PeerReflexive => false,
            CandidateKind::Relayed => true,
            _ => self.config.policy == Policy::All,
        }
    }

    // ---------------------------------------------------------------------------------------
    // Input.

    /// Add a host candidate for a bound UDP socket (`addr` is the socket's local address, not
    /// a wildcard). Starts its server-reflexive gathering if gathering has started.
    pub fn add_host(&mut self, now: Instant, addr: SocketAddr) -> Result<(), Error> {
        self.now = Some(now);
        if addr.ip().is_unspecified() || addr.port() == 0 {
            return Err(Error::BadAddress(addr));
        }
        if self.locals.iter().any(|l| l.base == addr) {
            return Ok(());
        }
        let lp = local_preference(addr.ip(), self.host_count, 0);
        self.host_count += 1;
        let foundation = self.foundation(CandidateKind::Host, addr, None, "udp");
        let cand = Candidate::new(
            CandidateKind::Host,
            addr,
            priority(CandidateKind::Host.type_preference(), lp, 1),
            foundation,
            None,
        );
        let idx = self.push_local(Local {
            cand,
            base: addr,
            via: Via::Host(addr),
            local_pref: lp,
        });
        if self.gather_started {
            self.start_srflx(now, addr);
        }
        self.pair_local(now, idx);
        Ok(())
    }

    /// Start gathering: server-reflexive candidates for every host, relayed candidates on every
    /// TURN server. Ends with [`Event::GatheringComplete`] (at once without servers).
    pub fn gather(&mut self, now: Instant) {
        self.now = Some(now);
        if self.gather_started {
            return;
        }
        self.gather_started = true;
        self.set_gathering(GatheringState::Gathering);
        if !self.config.lite {
            let bases: Vec<SocketAddr> = self
                .locals
                .iter()
                .filter(|l| l.cand.kind == CandidateKind::Host)
                .map(|l| l.base)
                .collect();
            for b in bases {
                self.start_srflx(now, b);
            }
            for t in &mut self.turns {
                if t.client.allocate(now).is_ok() {
                    t.pending = true;
                }
            }
            self.drain_turn(now);
        }
        self.check_gathering_done();
    }

    /// The peer's credentials (from its offer or answer). Checks start once they are known.
    pub fn set_remote_credentials(
        &mut self,
        now: Instant,
        ufrag: &str,
        pwd: &str,
    ) -> Result<(), Error> {
        self.now = Some(now);
        crate::sdp::check_ufrag(ufrag)?;
        crate::sdp::check_pwd(pwd)?;
        if self
            .remote_creds
            .as_ref()
            .is_some_and(|c| c.ufrag == ufrag && c.pwd == pwd)
        {
            return Ok(());
        }
        self.remote_key = Some(Key::short_term(pwd)?);
        self.remote_creds = Some(Credentials {
            ufrag: ufrag.to_owned(),
            pwd: pwd.to_owned(),
        });
        if self.checks_started.is_none() {
            self.checks_started = Some(now);
        }
        if matches!(self.state, IceState::New) {
            self.set_state(IceState::Checking);
        }
        self.schedule_check(now);
        Ok(())
    }

    /// The peer is an ICE-lite agent (`a=ice-lite`): we must be controlling (RFC 8445 §6.1.1).
    pub fn set_remote_lite(&mut self, lite: bool) {
        self.remote_lite = lite;
        if lite && !self.config.lite && !self.controlling {
            self.switch_role(true);
        }
    }

    /// A remote candidate (from the offer/answer or trickled). Non-UDP candidates and
    /// components other than 1 are ignored (`Ok(false)`).
    pub fn add_remote_candidate(&mut self, now: Instant, cand: Candidate) -> Result<bool, Error> {
        self.now = Some(now);
        if cand.protocol != Protocol::Udp || cand.component != 1 {
            return Ok(false);
        }
        if self.remotes.len() >= crate::sdp::MAX_CANDIDATES {
            return Err(Error::TooManyCandidates);
        }
        if let Some(i) = self.remotes.iter().position(|r| r.addr == cand.addr) {
            // A peer-reflexive candidate learnt first gets its signalled type (RFC 8445
            // §7.3.1.3 leaves it prflx; RFC 8838 §11 lets the signalled one replace it).
            if self.remotes[i].kind == CandidateKind::PeerReflexive {
                self.remotes[i] = cand;
                self.reprioritise();
            }
            return Ok(true);
        }
        self.remotes.push(cand);
        let r = self.remotes.len() - 1;
        let locals: Vec<usize> = (0..self.locals.len()).collect();
        for l in locals {
            self.add_pair(l, r, false);
        }
        self.schedule_check(now);
        Ok(true)
    }

    /// The peer has no more candidates (`a=end-of-candidates`, or vanilla ICE).
    pub fn end_of_remote_candidates(&mut self, now: Instant) {
        self.now = Some(now);
        self.remote_end = true;
        self.check_failed(now);
    }

    /// A datagram arrived on the host socket bound to `local` from `from`. STUN is processed;
    /// anything else (RFC 7983: first byte above 3) is application data and comes back as
    /// [`Event::Data`].
    pub fn handle_packet(
        &mut self,
        now: Instant,
        local: SocketAddr,
        from: SocketAddr,
        bytes: &[u8],
    ) {
        self.now = Some(now);
        let Some(li) = self
            .locals
            .iter()
            .position(|l| l.via == Via::Host(local) && l.cand.kind == CandidateKind::Host)
        else {
            debug!(%local, "datagram on an unknown socket");
            return;
        };
        self.handle_on(now, li, from, bytes);
    }

    /// Bytes from TURN server `index`'s connection: one datagram (UDP) or one whole frame
    /// (TCP/TLS, cut with [`turn::client::StreamDecoder`]).
    pub fn handle_turn_input(&mut self, now: Instant, index: usize, bytes: &[u8]) {
        self.now = Some(now);
        if let Some(t) = self.turns.get_mut(index) {
            t.client.handle_input(now, bytes);
        }
        self.drain_turn(now);
    }

    /// TURN server `index`'s TCP/TLS connection is gone (or could not be made).
    pub fn handle_turn_connection_lost(&mut self, now: Instant, index: usize) {
        self.now = Some(now);
        if let Some(t) = self.turns.get_mut(index) {
            t.client.handle_connection_lost(now);
        }
        self.drain_turn(now);
    }

    /// Advance time: retransmissions, paced checks, nomination, consent, timeouts. Harmless
    /// when called early.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = Some(now);
        self.gather_timeouts(now);
        for t in &mut self.turns {
            t.client.handle_timeout(now);
        }
        self.drain_turn(now);
        self.check_timeouts(now);
        if self.next_check.is_some_and(|t| t <= now) {
            self.next_check = None;
            self.send_next_check(now);
        }
        self.maybe_nominate(now);
        self.consent_timeouts(now);
        if let Some(start) = self.checks_started {
            if self.selected.is_none()
                && !matches!(self.state, IceState::Failed | IceState::Closed)
                && now.saturating_duration_since(start) >= self.config.connect_timeout
            {
                self.fail(FailReason::Timeout);
            }
        }
        self.check_failed(now);
    }

    // ---------------------------------------------------------------------------------------
    // Commands.

    /// Send application data over the selected pair.
    pub fn send(&mut self, now: Instant, data: &[u8]) -> Result<(), Error> {
        self.now = Some(now);
        let (via, _src, dst) = match self.selected.and_then(|s| self.pairs.get(s)) {
            Some(p) => {
                let l = self.locals.get(p.local).ok_or(Error::NotConnected)?;
                let r = self.remotes.get(p.remote).ok_or(Error::NotConnected)?;
                (l.via, l.base, r.addr)
            }
            None => self.carry.ok_or(Error::NotConnected)?,
        };
        self.stats.data_sent += 1;
        self.send_via(now, via, dst, data.to_vec());
        Ok(())
    }

    /// ICE restart (RFC 8445 §9): new local credentials, remote credentials and candidates
    /// forgotten, checks start again once the peer's new ones arrive. The selected pair keeps
    /// carrying data until a new one is selected. Local candidates are kept.
    pub fn restart(&mut self, now: Instant) -> Result<(), Error> {
        self.now = Some(now);
        self.local_creds = Credentials {
            ufrag: random_string(&mut self.rng, 8),
            pwd: random_string(&mut self.rng, 24),
        };
        self.local_key = Key::short_term(&self.local_creds.pwd)?;
        if let Some(p) = self.selected.and_then(|s| self.pairs.get(s)) {
            if let (Some(l), Some(r)) = (self.locals.get(p.local), self.remotes.get(p.remote)) {
                self.carry = Some((l.via, l.base, r.addr));
            }
        }
        self.remote_creds = None;
        self.remote_key = None;
        self.remotes.clear();
        self.pairs.clear();
        self.triggered.clear();
        self.locals
            .retain(|l| l.cand.kind != CandidateKind::PeerReflexive);
        self.selected = None;
        self.nominating = None;
        self.first_valid = None;
        self.consent = None;
        self.remote_end = false;
        self.failure = None;
        self.checks_started = None;
        self.next_check = None;
        self.stats.restarts += 1;
        self.set_state(IceState::New);
        Ok(())
    }

    /// Close: stop checks and consent, deallocate TURN allocations. State `closed`.
    pub fn close(&mut self, now: Instant) {
        self.now = Some(now);
        for t in &mut self.turns {
            t.client.close(now);
        }
        self.drain_turn(now);
        self.pairs.iter_mut().for_each(|p| p.tx = None);
        self.triggered.clear();
        self.next_check = None;
        self.consent = None;
        self.set_state(IceState::Closed);
    }

    // ---------------------------------------------------------------------------------------
    // Polls.

    /// The next datagram to send.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`handle_timeout`](Agent::handle_timeout) next has work to do.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut t: Option<Instant> = None;
        let mut at = |x: Option<Instant>| {
            if let Some(x) = x {
                t = Some(t.map_or(x, |t| t.min(x)));
            }
        };
        if matches!(self.state, IceState::Closed) {
            for tu in &self.turns {
                at(tu.client.poll_timeout());
            }
            return t;
        }
        at(self.next_check);
        for g in &self.gathers {
            at(g.tx.poll_timeout());
        }
        for tu in &self.turns {
            at(tu.client.poll_timeout());
        }
        for p in &self.pairs {
            at(p.tx.as_ref().and_then(|x| x.tx.poll_timeout()));
        }
        if let Some(c) = &self.consent {
            if c.tx.is_none() {
                at(Some(c.next));
            }
            at(c.tx.as_ref().and_then(|(x, _)| x.poll_timeout()));
            if matches!(self.state, IceState::Connected | IceState::Completed) {
                at(Some(c.last_ok + self.config.disconnected_timeout));
            }
            at(Some(c.last_ok + self.config.consent_timeout));
        }
        if self.selected.is_none() && !matches!(self.state, IceState::Failed) {
            if let Some(s) = self.checks_started {
                at(Some(s + self.config.connect_timeout));
            }
            if let (Some(t), Some(now)) = (self.last_request, self.now) {
                let until = t + self.config.check_retransmit.total_timeout();
                if until > now && self.state == IceState::Checking {
                    at(Some(until));
                }
            }
            if let (Some(f), None) = (self.first_valid, self.nominating) {
                if self.controlling && self.config.nomination == Nomination::Regular {
                    at(Some(f + self.config.nomination_delay));
                }
            }
        }
        t
    }

    // ---------------------------------------------------------------------------------------
    // Internals: candidates and pairs.

    fn foundation(
        &mut self,
        kind: CandidateKind,
        base: SocketAddr,
        server: Option<SocketAddr>,
        transport: &str,
    ) -> String {
        let key = format!(
            "{kind} {} {} {transport}",
            base.ip(),
            server.map(|s| s.ip().to_string()).unwrap_or_default()
        );
        let n = self.foundations.len() + 1;
        self.foundations
            .entry(key)
            .or_insert_with(|| n.to_string())
            .clone()
    }

    fn push_local(&mut self, l: Local) -> usize {
        let signalled = self.signalled(&l);
        let cand = l.cand.clone();
        self.locals.push(l);
        if signalled {
            self.events.push_back(Event::LocalCandidate(cand));
        }
        self.locals.len() - 1
    }

    /// Pair a new local candidate with every remote candidate.
    fn pair_local(&mut self, now: Instant, l: usize) {
        for r in 0..self.remotes.len() {
            self.add_pair(l, r, false);
        }
        self.schedule_check(now);
    }

    /// Whether a local candidate takes part in checks (RFC 8445 §6.1.2.4: server-reflexive
    /// candidates are replaced by their base; peer-reflexive ones only appear in valid pairs).
    fn pairable(&self, l: usize) -> bool {
        let Some(loc) = self.locals.get(l) else {
            return false;
        };
        match loc.cand.kind {
            CandidateKind::Host => self.config.policy == Policy::All,
            CandidateKind::Relayed => true,
            _ => false,
        }
    }

    /// Add the pair (l, r) unless it exists; returns its index.
    fn add_pair(&mut self, l: usize, r: usize, force: bool) -> Option<usize> {
        if !force && !self.pairable(l) {
            return None;
        }
        let (loc, rem) = (self.locals.get(l)?, self.remotes.get(r)?);
        if loc.base.is_ipv4() != rem.addr.is_ipv4() {
            return None;
        }
        // Never pair a link-local/loopback base with a remote it cannot reach.
        if loc.base.ip().is_loopback() != rem.addr.ip().is_loopback()
            && loc.cand.kind == CandidateKind::Host
            && rem.kind == CandidateKind::Host
        {
            return None;
        }
        if let Some(i) = self
            .pairs
            .iter()
            .position(|p| p.local == l && p.remote == r)
        {
            return Some(i);
        }
        // Pruning (§6.1.2.4): same base and same remote is the same pair for sending.
        if !force {
            if let Some(i) = self.pairs.iter().position(|p| {
                p.remote == r && self.locals.get(p.local).is_some_and(|x| x.base == loc.base)
            }) {
                return Some(i);
            }
        }
        if self.pairs.len() >= 1024 {
            return None;
        }
        let prio = self.pair_prio(loc.cand.priority, rem.priority);
        let foundation = format!("{}:{}", loc.cand.foundation, rem.foundation);
        // Frozen unless no other pair of this foundation exists (§6.1.2.6).
        let state = if self.pairs.iter().any(|p| p.foundation == foundation) {
            PairState::Frozen
        } else {
            PairState::Waiting
        };
        let selected_or_done = self.selected.is_some();
        self.pairs.push(CandidatePair {
            local: l,
            remote: r,
            priority: prio,
            foundation,
            state: if selected_or_done && !force {
                PairState::Frozen
            } else {
                state
            },
            tx: None,
            nominated: false,
            nominate_on_success: false,
            valid: false,
            valid_of: None,
            rtt: None,
        });
        Some(self.pairs.len() - 1)
    }

    fn pair_prio(&self, local: u32, remote: u32) -> u64 {
        if self.controlling {
            pair_priority(local, remote)
        } else {
            pair_priority(remote, local)
        }
    }

    fn switch_role(&mut self, controlling: bool) {
        if self.controlling == controlling {
            return;
        }
        debug!(controlling, "role switch");
        self.controlling = controlling;
        self.stats.role_switches += 1;
        self.reprioritise();
    }

    /// Recompute every pair's priority (after a role switch or a candidate's new priority).
    fn reprioritise(&mut self) {
        for i in 0..self.pairs.len() {
            let (l, r) = (self.pairs[i].local, self.pairs[i].remote);
            let lp = self.locals.get(l).map_or(0, |x| x.cand.priority);
            let rp = self.remotes.get(r).map_or(0, |x| x.priority);
            self.pairs[i].priority = self.pair_prio(lp, rp);
        }
    }

    fn set_state(&mut self, s: IceState) {
        if self.state != s {
            debug!(from = ?self.state, to = ?s, "ICE state");
            self.state = s;
            self.events.push_back(Event::StateChanged(s));
        }
    }

    fn set_gathering(&mut self, s: GatheringState) {
        if self.gathering != s {
            self.gathering = s;
            if s == GatheringState::Complete {
                self.events.push_back(Event::GatheringComplete);
            }
        }
    }

    fn fail(&mut self, reason: FailReason) {
        if matches!(self.state, IceState::Failed | IceState::Closed) {
            return;
        }
        debug!(?reason, "ICE failed");
        self.failure = Some(reason);
        self.pairs.iter_mut().for_each(|p| p.tx = None);
        self.triggered.clear();
        self.next_check = None;
        self.consent = None;
        self.set_state(IceState::Failed);
    }

    /// Every pair failed and nothing more can come: fail with `no-valid-pair`.
    fn check_failed(&mut self, now: Instant) {
        if self.peer_still_checking(now) {
            return;
        }
        if self.selected.is_some()
            || self.config.lite
            || !matches!(self.state, IceState::Checking)
            || !self.remote_end
            || self.gathering != GatheringState::Complete
            || self.remote_creds.is_none()
            || !self.triggered.is_empty()
        {
            return;
        }
        let all_failed = self.pairs.iter().all(|p| p.state == PairState::Failed);
        if all_failed {
            self.fail(FailReason::NoValidPair);
        }
    }

    /// The peer sent a check less than one check timeout ago: a triggered check may still
    /// succeed, so a failure would be premature.
    fn peer_still_checking(&self, now: Instant) -> bool {
        self.last_request
            .is_some_and(|t| now < t + self.config.check_retransmit.total_timeout())
    }

    // ---------------------------------------------------------------------------------------
    // Internals: gathering.

    fn start_srflx(&mut self, now: Instant, base: SocketAddr) {
        if self.config.policy != Policy::All || self.config.lite {
            return;
        }
        if base.ip().is_loopback() {
            return;
        }
        let servers: Vec<SocketAddr> = self
            .config
            .stun_servers
            .iter()
            .copied()
            .filter(|s| s.is_ipv4() == base.is_ipv4())
            .collect();
        for server in servers {
            let id: TransactionId = self.rng.random();
            let Ok(req) = message::plain_binding(&id) else {
                continue;
            };
            let Ok(mut tx) = Transaction::new(now, req, server, self.config.stun_retransmit) else {
                continue;
            };
            self.stats.stun_transactions += 1;
            if let Some(b) = tx.poll_transmit(now) {
                self.stats.gather_requests_sent += 1;
                self.transmits.push_back(Transmit {
                    via: Via::Host(base),
                    destination: server,
                    payload: b.to_vec(),
                });
            }
            self.gathers.push(Gather { tx, base, server });
        }
    }

    fn gather_timeouts(&mut self, now: Instant) {
        let mut done = false;
        for g in &mut self.gathers {
            g.tx.handle_timeout(now);
            while let Some(b) = g.tx.poll_transmit(now) {
                self.stats.gather_requests_sent += 1;
                self.transmits.push_back(Transmit {
                    via: Via::Host(g.base),
                    destination: g.server,
                    payload: b.to_vec(),
                });
            }
            if g.tx.is_done() {
                done = true;
            }
        }
        if done {
            let finished: Vec<Gather> = {
                let (d, keep): (Vec<_>, Vec<_>) =
                    self.gathers.drain(..).partition(|g| g.tx.is_done());
                self.gathers = keep;
                d
            };
            for mut g in finished {
                if let Some(Outcome::TimedOut { .. }) = g.tx.poll_outcome() {
                    debug!(server = %g.server, "STUN server did not answer");
                }
            }
            self.check_gathering_done();
        }
    }

    fn gather_response(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) -> bool {
        let Some(i) = self.gathers.iter_mut().position(|g| {
            g.tx.handle_response(now, from, bytes) == stun::transaction::Matched::Yes
        }) else {
            return false;
        };
        let mut g = self.gathers.remove(i);
        if let Some(Outcome::Response(r)) = g.tx.poll_outcome() {
            let mapped = r.message().ok().and_then(|m| {
                m.address(attr::XOR_MAPPED_ADDRESS)
                    .or_else(|| m.address(attr::MAPPED_ADDRESS))
                    .and_then(Result::ok)
            });
            if r.class == Class::Success {
                if let Some(m) = mapped {
                    self.add_srflx(now, g.base, m, g.server);
                }
            }
        }
        self.check_gathering_done();
        true
    }

    fn add_srflx(
        &mut self,
        _now: Instant,
        base: SocketAddr,
        mapped: SocketAddr,
        server: SocketAddr,
    ) {
        if mapped == base || self.locals.iter().any(|l| l.cand.addr == mapped) {
            return;
        }
        let Some(lp) = self
            .locals
            .iter()
            .find(|l| l.base == base && l.cand.kind == CandidateKind::Host)
            .map(|l| l.local_pref)
        else {
            return;
        };
        let foundation = self.foundation(CandidateKind::ServerReflexive, base, Some(server), "udp");
        let cand = Candidate::new(
            CandidateKind::ServerReflexive,
            mapped,
            priority(CandidateKind::ServerReflexive.type_preference(), lp, 1),
            foundation,
            Some(base),
        );
        self.push_local(Local {
            cand,
            base,
            via: Via::Host(base),
            local_pref: lp,
        });
    }

    fn check_gathering_done(&mut self) {
        if self.gather_started && self.gathers.is_empty() && self.turns.iter().all(|t| !t.pending) {
            self.set_gathering(GatheringState::Complete);
        }
    }

    /// Move TURN clients' transmits and events into ours.
    fn drain_turn(&mut self, now: Instant) {
        for i in 0..self.turns.len() {
            while let Some(t) = self.turns[i].client.poll_transmit() {
                self.transmits.push_back(Transmit {
                    via: Via::Turn(i),
                    destination: t.destination,
                    payload: t.payload,
                });
            }
            while let Some(e) = self.turns[i].client.poll_event() {
                self.on_turn_event(now, i, e);
            }
            // Events may have queued more (checks through the relay).
            while let Some(t) = self.turns[i].client.poll_transmit() {
                self.transmits.push_back(Transmit {
                    via: Via::Turn(i),
                    destination: t.destination,
                    payload: t.payload,
                });
            }
        }
    }

    fn on_turn_event(&mut self, now: Instant, i: usize, e: TurnEvent) {
        match e {
            TurnEvent::Allocated {
                relayed, mapped, ..
            } => {
                let Some(t) = self.turns.get(i) else { return };
                let server = t.client.config().server;
                let penalty = if t.client.config().transport.is_reliable() {
                    0x800
                } else {
                    0
                };
                let lp = local_preference(relayed.ip(), t.index, penalty);
                let foundation =
                    self.foundation(CandidateKind::Relayed, relayed, Some(server), "udp");
                let cand = Candidate::new(
                    CandidateKind::Relayed,
                    relayed,
                    priority(CandidateKind::Relayed.type_preference(), lp, 1),
                    foundation,
                    mapped,
                );
                let idx = self.push_local(Local {
                    cand,
                    base: relayed,
                    via: Via::Turn(i),
                    local_pref: lp,
                });
                if let Some(t) = self.turns.get_mut(i) {
                    t.pending = false;
                    t.local = Some(idx);
                }
                self.pair_local(now, idx);
                self.check_gathering_done();
            }
            TurnEvent::Data { peer, data } => {
                let Some(li) = self.turns.get(i).and_then(|t| t.local) else {
                    return;
                };
                self.handle_on(now, li, peer, &data);
            }
            TurnEvent::Closed { reason } => {
                debug!(server = i, ?reason, "TURN allocation closed");
                let local = self.turns.get_mut(i).and_then(|t| {
                    t.pending = false;
                    t.local.take()
                });
                if let Some(li) = local {
                    for p in self.pairs.iter_mut().filter(|p| p.local == li) {
                        p.state = PairState::Failed;
                        p.tx = None;
                    }
                    if self
                        .selected
                        .and_then(|s| self.pairs.get(s))
                        .is_some_and(|p| p.local == li)
                        && !matches!(self.state, IceState::Closed)
                    {
                        self.fail(FailReason::RelayLost);
                    }
                }
                self.check_gathering_done();
            }
            TurnEvent::Failed { request, error } => {
                debug!(server = i, ?request, %error, "TURN request failed");
            }
            _ => {}
        }
    }

    fn send_via(&mut self, now: Instant, via: Via, dst: SocketAddr, payload: Vec<u8>) {
        match via {
            Via::Host(_) => self.transmits.push_back(Transmit {
                via,
                destination: dst,
                payload,
            }),
            Via::Turn(i) => {
                if let Some(t) = self.turns.get_mut(i) {
                    if let Err(e) = t.client.send_to(now, dst, &payload) {
                        debug!(%e, "cannot send through the relay");
                    }
                }
                self.drain_turn(now);
            }
        }
    }

    // ---------------------------------------------------------------------------------------
    // Internals: STUN in.

    fn handle_on(&mut self, now: Instant, li: usize, from: SocketAddr, bytes: &[u8]) {
        if !message::is_stun(bytes) {
            // Application data only from the peer's known addresses (signalled or learnt
            // from its checks); anything else is noise or an attack on the socket.
            if !self.remotes.iter().any(|r| r.addr == from)
                && self.carry.is_none_or(|(_, _, dst)| dst != from)
            {
                trace!(%from, "data from an unknown source dropped");
                return;
            }
            self.stats.data_received += 1;
            self.events.push_back(Event::Data {
                from,
                data: bytes.to_vec(),
            });
            return;
        }
        let Ok(msg) = Message::parse(bytes) else {
            trace!("malformed STUN dropped");
            return;
        };
        if msg.check_fingerprint().is_err() || msg.method() != BINDING {
            return;
        }
        match msg.class() {
            Class::Request => self.on_request(now, li, from, &msg),
            Class::Success | Class::Error => {
                if self.gather_response(now, from, bytes) {
                    return;
                }
                self.on_response(now, li, from, &msg, bytes);
            }
            Class::Indication => {}
        }
    }

    fn respond(&mut self, now: Instant, li: usize, to: SocketAddr, bytes: Vec<u8>) {
        let Some(via) = self.locals.get(li).map(|l| l.via) else {
            return;
        };
        self.send_via(now, via, to, bytes);
    }

    /// RFC 8445 §7.3: an incoming connectivity check.
    fn on_request(&mut self, now: Instant, li: usize, from: SocketAddr, msg: &Message<'_>) {
        if self.config.policy == Policy::RelayOnly
            && self
                .locals
                .get(li)
                .is_some_and(|l| l.cand.kind != CandidateKind::Relayed)
        {
            // Relay-only: the host sockets are not ours to offer, not even peer-reflexively.
            return;
        }
        let id = msg.transaction_id();
        let username = msg
            .get(attr::USERNAME)
            .and_then(|a| std::str::from_utf8(a.value).ok());
        let Some(username) = username else {
            if let Ok(b) = message::error(&id, 400, "Bad Request", None) {
                self.respond(now, li, from, b);
            }
            return;
        };
        let ours = username.split(':').next().unwrap_or_default();
        if ours != self.local_creds.ufrag || verify(msg, &self.local_key).is_err() {
            debug!(%from, "check with a wrong username or integrity");
            if let Ok(b) = message::error(&id, 401, "Unauthenticated", None) {
                self.respond(now, li, from, b);
            }
            return;
        }
        self.stats.checks_received += 1;
        self.last_request = Some(now);
        let (Some(prio), Some((their_controlling, their_tb))) =
            (message::priority(msg), message::role(msg))
        else {
            if let Ok(b) = message::error(&id, 400, "Bad Request", None) {
                self.respond(now, li, from, b);
            }
            return;
        };
        // A check from an address we do not know would make a new peer-reflexive candidate
        // (§7.3.1.3). When we could not keep it, do not answer either: a success would give the
        // peer a valid pair (and, with USE-CANDIDATE, a selected one) that we do not have.
        if !self.remotes.iter().any(|c| c.addr == from) && !self.may_learn_prflx(li, from) {
            debug!(%from, "check from one more new address of the same peer: dropped");
            return;
        }
        // Role conflict (§7.3.1.1).
        if their_controlling == self.controlling {
            let ours_wins = self.tie_breaker >= their_tb;
            if self.controlling == ours_wins {
                let key = self.local_key.clone();
                if let Ok(b) = message::error(&id, 487, "Role Conflict", Some(&key)) {
                    self.respond(now, li, from, b);
                }
                return;
            }
            self.switch_role(!self.controlling);
        }
        let use_candidate = msg.get(attr::USE_CANDIDATE).is_some();
        let key = self.local_key.clone();
        if let Ok(b) = message::success(&id, from, &key) {
            self.stats.responses_sent += 1;
            self.respond(now, li, from, b);
        }
        if matches!(self.state, IceState::Failed | IceState::Closed) {
            return;
        }
        // Peer-reflexive remote candidate (§7.3.1.3).
        let r = match self.remotes.iter().position(|c| c.addr == from) {
            Some(r) => r,
            None => {
                let foundation = format!("prflx{}", self.remotes.len());
                self.remotes.push(Candidate::new(
                    CandidateKind::PeerReflexive,
                    from,
                    prio,
                    foundation,
                    None,
                ));
                self.remotes.len() - 1
            }
        };
        // The pair whose local candidate received the check (§7.3.1.4).
        let Some(pi) = self.add_pair(li, r, true) else {
            return;
        };
        if self.config.lite {
            // A lite agent never checks: a nominating request selects the pair (§7.3.1.5 for
            // lite implementations, RFC 8445 §2.5).
            let p = &mut self.pairs[pi];
            p.state = PairState::Succeeded;
            p.valid = true;
            p.valid_of = Some(pi);
            if use_candidate {
                p.nominated = true;
                self.update_selected(now);
            }
            return;
        }
        let state = self.pairs[pi].state;
        match state {
            PairState::Succeeded => {
                if use_candidate && !self.controlling {
                    let v = self.pairs[pi].valid_of.unwrap_or(pi);
                    if let Some(vp) = self.pairs.get_mut(v) {
                        vp.nominated = true;
                    }
                    self.update_selected(now);
                }
            }
            PairState::InProgress => {
                if use_candidate && !self.controlling {
                    self.pairs[pi].nominate_on_success = true;
                }
                // §7.3.1.4 lets us cancel the in-progress check and trigger a new one. The
                // peer's nomination waits for our check to succeed, and its request proves the
                // path works now (its TURN permission or NAT binding may not have existed when
                // ours went out): resend our request once, at once, rather than waiting for
                // the retransmission timer.
                if use_candidate && !self.controlling {
                    self.resend_in_progress(now, pi);
                }
            }
            PairState::Waiting | PairState::Frozen | PairState::Failed => {
                if use_candidate && !self.controlling {
                    self.pairs[pi].nominate_on_success = true;
                }
                if self.selected.is_none() || use_candidate {
                    self.pairs[pi].state = PairState::Waiting;
                    if !self.triggered.contains(&pi) {
                        self.triggered.push_back(pi);
                    }
                    self.schedule_check(now);
                }
            }
        }
    }

    /// Whether a check arriving on local candidate `li` from the unknown address `from` may
    /// become a new peer-reflexive remote candidate.
    ///
    /// Behind two NATs that both map address-and-port-dependently and filter
    /// endpoint-independently (RFC 4787 `apdm-eif` on both sides), peer-reflexive learning never
    /// ends on its own: our triggered check to the peer's new address leaves our NAT through a
    /// fresh mapping, which the peer's EIF NAT lets in, so the peer learns it as a new
    /// peer-reflexive candidate and sends a triggered check of its own through a fresh mapping
    /// of its NAT, which ours lets in, and so on; no response is ever symmetric. Unbounded, that
    /// chain kept the Ta pacer busy with triggered checks (which go before ordinary ones, so the
    /// relayed pairs were checked seconds late) and filled the remote candidate table, after
    /// which the controlled agent answered the nominating check arriving on its relayed
    /// candidate but could not pair it: the controlling agent selected a pair the controlled one
    /// never had, and the latter timed out.
    ///
    /// So the peer-reflexive candidates of one remote IP address on one local base are bounded
    /// ([`MAX_PRFLX_PER_BASE_AND_IP`]); a relayed candidate is a base of its own, and keeps its
    /// own budget whatever happens on the host socket.
    fn may_learn_prflx(&self, li: usize, from: SocketAddr) -> bool {
        if self.remotes.len() >= crate::sdp::MAX_CANDIDATES {
            return false;
        }
        let Some(base) = self.locals.get(li).map(|l| l.base) else {
            return false;
        };
        let learnt = self
            .remotes
            .iter()
            .enumerate()
            .filter(|(_, r)| r.kind == CandidateKind::PeerReflexive && r.addr.ip() == from.ip())
            .filter(|(ri, _)| {
                self.pairs.iter().any(|p| {
                    p.remote == *ri && self.locals.get(p.local).is_some_and(|l| l.base == base)
                })
            })
            .count();
        learnt < MAX_PRFLX_PER_BASE_AND_IP
    }

    /// RFC 8445 §7.2.5: a response to one of our checks (or consent requests).
    fn on_response(
        &mut self,
        now: Instant,
        li: usize,
        from: SocketAddr,
        msg: &Message<'_>,
        bytes: &[u8],
    ) {
        // Consent response?
        if let Some(c) = &mut self.consent {
            if let Some((tx, _)) = &mut c.tx {
                if tx.handle_response(now, from, bytes) == stun::transaction::Matched::Yes {
                    let ok = msg.class() == Class::Success
                        && self
                            .remote_key
                            .as_ref()
                            .is_some_and(|k| verify(msg, k).is_ok());
                    let rtt = match tx.poll_outcome() {
                        Some(Outcome::Response(r)) => r.rtt,
                        _ => None,
                    };
                    c.tx = None;
                    self.stats.responses_received += 1;
                    if ok {
                        c.last_ok = now;
                        if rtt.is_some() {
                            self.stats.rtt = rtt;
                        }
                        if self.state == IceState::Disconnected {
                            self.set_state(IceState::Connected);
                            self.maybe_complete();
                        }
                    }
                    return;
                }
            }
        }
        let Some(pi) = self.pairs.iter_mut().position(|p| {
            p.tx.as_mut().is_some_and(|x| {
                x.tx.handle_response(now, from, bytes) == stun::transaction::Matched::Yes
            })
        }) else {
            return;
        };
        let Some(check) = self.pairs[pi].tx.take() else {
            return;
        };
        self.stats.responses_received += 1;
        let Some(key) = self.remote_key.clone() else {
            return;
        };
        if verify(msg, &key).is_err() {
            // Not from the peer: keep waiting for the real answer (§7.2.5.2.1 says discard).
            debug!("response failed integrity");
            self.pairs[pi].tx = Some(check);
            return;
        }
        let mut check = check;
        let outcome = check.tx.poll_outcome();
        let (p_local, p_remote) = (self.pairs[pi].local, self.pairs[pi].remote);
        // Symmetric transport addresses (§7.2.5.2.1).
        let expected_from = self.remotes.get(p_remote).map(|r| r.addr);
        if expected_from != Some(from)
            || self.locals.get(p_local).map(|l| l.via) != self.locals.get(li).map(|l| l.via)
        {
            self.pairs[pi].state = PairState::Failed;
            self.schedule_check(now);
            return;
        }
        if msg.class() == Class::Error {
            if message::error_code(msg) == Some(487) {
                // Role conflict (§7.2.5.1): switch and retry.
                self.switch_role(!check.controlling);
                self.pairs[pi].state = PairState::Waiting;
                self.triggered.push_back(pi);
                self.schedule_check(now);
            } else {
                self.pairs[pi].state = PairState::Failed;
                self.schedule_check(now);
            }
            return;
        }
        let rtt = match outcome {
            Some(Outcome::Response(r)) => r.rtt,
            _ => None,
        };
        if rtt.is_some() {
            self.stats.rtt = rtt;
            self.pairs[pi].rtt = rtt;
        }
        let Some(Ok(mapped)) = msg.address(attr::XOR_MAPPED_ADDRESS) else {
            self.pairs[pi].state = PairState::Failed;
            return;
        };
        // The valid pair (§7.2.5.3.2): local candidate = the mapped address.
        let base = self.locals.get(p_local).map(|l| l.base);
        let via = self.locals.get(p_local).map(|l| l.via);
        let vl = match self
            .locals
            .iter()
            .position(|l| l.cand.addr == mapped && Some(l.via) == via)
        {
            Some(i) => i,
            None => {
                // A peer-reflexive local candidate (§7.2.5.3.1).
                let (Some(base), Some(via)) = (base, via) else {
                    return;
                };
                let lp = self.locals.get(p_local).map_or(0, |l| l.local_pref);
                let foundation = self.foundation(CandidateKind::PeerReflexive, base, None, "udp");
                let cand = Candidate::new(
                    CandidateKind::PeerReflexive,
                    mapped,
                    check.priority,
                    foundation,
                    Some(base),
                );
                self.push_local(Local {
                    cand,
                    base,
                    via,
                    local_pref: lp,
                })
            }
        };
        self.pairs[pi].state = PairState::Succeeded;
        let vp = if vl == p_local {
            pi
        } else {
            match self.add_pair(vl, p_remote, true) {
                Some(v) => v,
                None => pi,
            }
        };
        self.pairs[pi].valid_of = Some(vp);
        {
            let v = &mut self.pairs[vp];
            v.state = PairState::Succeeded;
            v.valid = true;
            if rtt.is_some() {
                v.rtt = rtt;
            }
        }
        if self.first_valid.is_none() {
            self.first_valid = Some(now);
        }
        // Unfreeze pairs of the same foundation (§7.2.5.3.3).
        let f = self.pairs[pi].foundation.clone();
        for p in &mut self.pairs {
            if p.foundation == f && p.state == PairState::Frozen && self.selected.is_none() {
                p.state = PairState::Waiting;
            }
        }
        // Nomination (§7.2.5.3.4).
        if check.use_candidate && self.controlling {
            self.pairs[vp].nominated = true;
            if self.nominating == Some(pi) || self.nominating == Some(vp) {
                self.nominating = None;
            }
        }
        if !self.controlling && self.pairs[pi].nominate_on_success {
            self.pairs[vp].nominated = true;
        }
        if let Some(c) = &mut self.consent {
            if self.selected == Some(vp) {
                c.last_ok = now;
            }
        }
        self.update_selected(now);
        self.maybe_nominate(now);
        self.schedule_check(now);
    }

    fn update_selected(&mut self, now: Instant) {
        let best = self
            .pairs
            .iter()
            .enumerate()
            .filter(|(_, p)| p.nominated && p.valid)
            .max_by_key(|(_, p)| p.priority)
            .map(|(i, _)| i);
        let Some(best) = best else { return };
        if self.selected == Some(best) {
            return;
        }
        self.selected = Some(best);
        self.carry = None;
        let p = &self.pairs[best];
        let (Some(l), Some(r)) = (self.locals.get(p.local), self.remotes.get(p.remote)) else {
            return;
        };
        debug!(local = %l.cand, remote = %r, "selected pair");
        self.events.push_back(Event::SelectedPairChanged {
            local: l.cand.clone(),
            remote: r.clone(),
        });
        if let Via::Turn(i) = l.via {
            // Data through the relay goes as ChannelData from now on.
            let peer = r.addr;
            if let Some(t) = self.turns.get_mut(i) {
                let _ = t.client.bind_channel(now, peer);
            }
            self.drain_turn(now);
        }
        // Stop scheduling new ordinary checks (§8.1.2): what is in flight finishes.
        for p in &mut self.pairs {
            if matches!(p.state, PairState::Waiting | PairState::Frozen) {
                p.state = PairState::Frozen;
            }
        }
        if self.consent.is_none() && !self.config.lite {
            let jitter = self.consent_jitter();
            self.consent = Some(Consent {
                next: now + jitter,
                last_ok: now,
                tx: None,
            });
        }
        if !matches!(self.state, IceState::Connected | IceState::Completed) {
            self.set_state(IceState::Connected);
        }
        self.maybe_complete();
    }

    fn maybe_complete(&mut self) {
        if self.selected.is_some()
            && self.state == IceState::Connected
            && self.pairs.iter().all(|p| p.state != PairState::InProgress)
            && self.triggered.is_empty()
            && self.nominating.is_none()
        {
            self.set_state(IceState::Completed);
        }
    }

    fn consent_jitter(&mut self) -> Duration {
        let f: f64 = self.rng.random_range(0.8..1.2);
        self.config.consent_interval.mul_f64(f)
    }

    // ---------------------------------------------------------------------------------------
    // Internals: checks out.

    /// Arm the Ta pacer if a check could be sent.
    fn schedule_check(&mut self, now: Instant) {
        if self.config.lite || self.remote_creds.is_none() || self.next_check.is_some() {
            return;
        }
        if matches!(self.state, IceState::Failed | IceState::Closed) {
            return;
        }
        let at = self
            .last_check_at
            .map_or(now, |t| (t + self.config.ta).max(now));
        self.next_check = Some(at);
    }

    fn send_next_check(&mut self, now: Instant) {
        if self.remote_creds.is_none() || self.config.lite {
            return;
        }
        // Triggered checks first (§6.1.4.2), then the highest-priority Waiting pair, then
        // unfreeze a Frozen one whose foundation is idle.
        let mut pick = None;
        while let Some(p) = self.triggered.pop_front() {
            if self.pairs.get(p).is_some_and(|x| x.tx.is_none()) {
                pick = Some((p, false));
                break;
            }
        }
        if pick.is_none() && self.selected.is_none() {
            pick = self
                .pairs
                .iter()
                .enumerate()
                .filter(|(_, p)| p.state == PairState::Waiting && p.tx.is_none())
                .max_by_key(|(_, p)| p.priority)
                .map(|(i, _)| (i, false));
            if pick.is_none() {
                let busy: Vec<String> = self
                    .pairs
                    .iter()
                    .filter(|p| matches!(p.state, PairState::Waiting | PairState::InProgress))
                    .map(|p| p.foundation.clone())
                    .collect();
                pick = self
                    .pairs
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| p.state == PairState::Frozen && !busy.contains(&p.foundation))
                    .max_by_key(|(_, p)| p.priority)
                    .map(|(i, _)| (i, false));
            }
        }
        let Some((pi, _)) = pick else {
            // Nothing to send now; a later event re-arms the pacer.
            self.check_failed(now);
            self.maybe_complete();
            return;
        };
        let use_candidate = self.controlling
            && (self.config.nomination == Nomination::Aggressive || self.nominating == Some(pi));
        self.start_check(now, pi, use_candidate);
        self.last_check_at = Some(now);
        self.schedule_check(now);
    }

    fn resend_in_progress(&mut self, now: Instant, pi: usize) {
        let Some(p) = self.pairs.get_mut(pi) else {
            return;
        };
        let Some(c) = &mut p.tx else { return };
        if c.resent {
            return;
        }
        c.resent = true;
        let bytes = c.request.clone();
        let (Some(l), Some(r)) = (self.locals.get(p.local), self.remotes.get(p.remote)) else {
            return;
        };
        let (via, dst) = (l.via, r.addr);
        self.stats.checks_sent += 1;
        self.send_via(now, via, dst, bytes);
    }

    fn start_check(&mut self, now: Instant, pi: usize, use_candidate: bool) {
        let (Some(creds), Some(key)) = (self.remote_creds.clone(), self.remote_key.clone()) else {
            return;
        };
        let Some(p) = self.pairs.get(pi) else { return };
        let Some(l) = self.locals.get(p.local) else {
            return;
        };
        let Some(r) = self.remotes.get(p.remote) else {
            return;
        };
        let (via, dst) = (l.via, r.addr);
        // PRIORITY: what a peer-reflexive candidate from this base would get (§7.1.1).
        let prflx_priority = priority(
            CandidateKind::PeerReflexive.type_preference(),
            l.local_pref,
            1,
        );
        let username = format!("{}:{}", creds.ufrag, self.local_creds.ufrag);
        let req = CheckRequest {
            id: self.rng.random(),
            username: &username,
            priority: prflx_priority,
            controlling: self.controlling,
            tie_breaker: self.tie_breaker,
            use_candidate,
        };
        let Ok(bytes) = message::check_request(&req, &key) else {
            return;
        };
        let request = bytes.clone();
        let Ok(mut tx) = Transaction::new(now, bytes, dst, self.config.check_retransmit) else {
            return;
        };
        self.stats.stun_transactions += 1;
        let first = tx.poll_transmit(now).map(<[u8]>::to_vec);
        let p = &mut self.pairs[pi];
        p.state = PairState::InProgress;
        p.tx = Some(crate::pair::Check {
            tx,
            use_candidate,
            controlling: self.controlling,
            priority: prflx_priority,
            request,
            resent: false,
        });
        if let Some(b) = first {
            self.stats.checks_sent += 1;
            self.send_via(now, via, dst, b);
        }
    }

    fn check_timeouts(&mut self, now: Instant) {
        let mut out = Vec::new();
        let mut changed = false;
        let mut retry = Vec::new();
        for (i, p) in self.pairs.iter_mut().enumerate() {
            let Some(c) = &mut p.tx else { continue };
            c.tx.handle_timeout(now);
            while let Some(b) = c.tx.poll_transmit(now) {
                out.push((i, b.to_vec()));
            }
            if c.tx.is_done() {
                // Timed out (a response would have been taken in on_response).
                p.tx = None;
                changed = true;
                if p.nominate_on_success {
                    // The peer nominated this pair, so it works: our answers reach the peer.
                    // Keep checking until ours get through (bounded by connect_timeout).
                    p.state = PairState::Waiting;
                    retry.push(i);
                } else {
                    p.state = PairState::Failed;
                }
            }
        }
        for (i, b) in out {
            let (via, dst) = {
                let p = &self.pairs[i];
                match (self.locals.get(p.local), self.remotes.get(p.remote)) {
                    (Some(l), Some(r)) => (l.via, r.addr),
                    _ => continue,
                }
            };
            self.stats.checks_sent += 1;
            self.send_via(now, via, dst, b);
        }
        self.triggered.extend(retry);
        if changed {
            if let Some(n) = self.nominating {
                if self
                    .pairs
                    .get(n)
                    .is_some_and(|p| p.state == PairState::Failed)
                {
                    self.nominating = None;
                }
            }
            self.schedule_check(now);
            self.maybe_complete();
        }
    }

    /// Regular nomination by the controlling agent (§8.1.1).
    fn maybe_nominate(&mut self, now: Instant) {
        if !self.controlling
            || self.config.lite
            || self.config.nomination != Nomination::Regular
            || self.nominating.is_some()
            || self.selected.is_some()
            || self.remote_creds.is_none()
        {
            return;
        }
        let Some((best, bp)) = self
            .pairs
            .iter()
            .enumerate()
            .filter(|(_, p)| p.valid)
            .max_by_key(|(_, p)| p.priority)
            .map(|(i, p)| (i, p.priority))
        else {
            return;
        };
        let better_pending = self.pairs.iter().any(|p| {
            p.priority > bp
                && matches!(
                    p.state,
                    PairState::Waiting | PairState::InProgress | PairState::Frozen
                )
        });
        let waited = self
            .first_valid
            .is_some_and(|f| now >= f + self.config.nomination_delay);
        if better_pending && !waited {
            return;
        }
        debug!(pair = best, "nominating");
        self.nominating = Some(best);
        // Send at once: the nomination is a triggered check that jumps the queue.
        if self.pairs[best].tx.is_some() {
            // A check is in flight on it: retry when it ends.
            self.triggered.push_front(best);
            self.schedule_check(now);
        } else {
            self.start_check(now, best, true);
            self.last_check_at = Some(now);
        }
    }

    fn consent_timeouts(&mut self, now: Instant) {
        let Some(sel) = self.selected else { return };
        let Some(c) = &mut self.consent else { return };
        let mut out = Vec::new();
        if let Some((tx, _)) = &mut c.tx {
            tx.handle_timeout(now);
            while let Some(b) = tx.poll_transmit(now) {
                out.push(b.to_vec());
            }
            if tx.is_done() {
                c.tx = None;
            }
        }
        let since = now.saturating_duration_since(c.last_ok);
        let start_new = c.tx.is_none() && now >= c.next;
        let (via, dst) = match self.pairs.get(sel).and_then(|p| {
            Some((
                self.locals.get(p.local)?.via,
                self.remotes.get(p.remote)?.addr,
            ))
        }) {
            Some(x) => x,
            None => return,
        };
        for b in out {
            self.stats.checks_sent += 1;
            self.send_via(now, via, dst, b);
        }
        if since >= self.config.consent_timeout {
            self.fail(FailReason::ConsentExpired);
            return;
        }
        if since >= self.config.disconnected_timeout
            && matches!(self.state, IceState::Connected | IceState::Completed)
        {
            self.set_state(IceState::Disconnected);
        }
        if start_new {
            let jitter = self.consent_jitter();
            let (Some(creds), Some(key)) = (self.remote_creds.clone(), self.remote_key.clone())
            else {
                return;
            };
            let lp = self
                .pairs
                .get(sel)
                .and_then(|p| self.locals.get(p.local))
                .map_or(0, |l| l.local_pref);
            let username = format!("{}:{}", creds.ufrag, self.local_creds.ufrag);
            let req = CheckRequest {
                id: self.rng.random(),
                username: &username,
                priority: priority(CandidateKind::PeerReflexive.type_preference(), lp, 1),
                controlling: self.controlling,
                tie_breaker: self.tie_breaker,
                use_candidate: false,
            };
            let Ok(bytes) = message::check_request(&req, &key) else {
                return;
            };
            let Ok(mut tx) = Transaction::new(now, bytes, dst, self.config.check_retransmit) else {
                return;
            };
            self.stats.stun_transactions += 1;
            self.stats.consent_requests += 1;
            let first = tx.poll_transmit(now).map(<[u8]>::to_vec);
            if let Some(c) = &mut self.consent {
                c.next = now + jitter;
                c.tx = Some((tx, sel));
            }
            if let Some(b) = first {
                self.stats.checks_sent += 1;
                self.send_via(now, via, dst, b);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// A controlled agent with two host sockets, and a check signed as the peer would sign it.
    fn agent_and_signer() -> (Agent, Instant, impl Fn(u64) -> Vec<u8>) {
        let now = Instant::now();
        let mut a = Agent::new(Config {
            controlling: false,
            seed: 5,
            ..Config::default()
        })
        .unwrap();
        a.add_host(now, "10.0.0.1:5000".parse().unwrap()).unwrap();
        a.add_host(now, "10.0.0.2:5000".parse().unwrap()).unwrap();
        a.set_remote_credentials(now, "peerufrag", "peerpasswordpeerpassword")
            .unwrap();
        let (ours, key) = (a.local_credentials().ufrag.clone(), a.local_key.clone());
        let check = move |id: u64| {
            let mut tid = [0u8; 12];
            tid[..8].copy_from_slice(&id.to_be_bytes());
            let username = format!("{ours}:peerufrag");
            let req = CheckRequest {
                id: TransactionId::from(tid),
                username: &username,
                priority: 1_000,
                controlling: true,
                tie_breaker: 1,
                use_candidate: false,
            };
            message::check_request(&req, &key).unwrap()
        };
        (a, now, check)
    }

    /// Responses queued for `to`.
    fn answers_to(a: &mut Agent, to: SocketAddr) -> usize {
        let mut n = 0;
        while let Some(t) = a.poll_transmit() {
            if t.destination == to && message::is_stun(&t.payload) {
                let m = Message::parse(&t.payload).unwrap();
                if m.class() == Class::Success {
                    n += 1;
                }
            }
        }
        n
    }

    #[test]
    fn peer_reflexive_learning_is_bounded_per_base_and_remote_ip() {
        let (mut a, now, check) = agent_and_signer();
        let base: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        // One peer IP showing a new port on every check (an APDM NAT): the first
        // MAX_PRFLX_PER_BASE_AND_IP become candidates and are answered, the rest are dropped.
        for i in 0..20u16 {
            let from = SocketAddr::from(([203, 0, 113, 9], 1000 + i));
            a.handle_packet(now, base, from, &check(u64::from(i)));
            let answered = answers_to(&mut a, from);
            let want = usize::from(usize::from(i) < MAX_PRFLX_PER_BASE_AND_IP);
            assert_eq!(answered, want, "check {i}");
        }
        let prflx = |a: &Agent| {
            a.remote_candidates()
                .iter()
                .filter(|c| c.kind == CandidateKind::PeerReflexive)
                .count()
        };
        assert_eq!(prflx(&a), MAX_PRFLX_PER_BASE_AND_IP);
        // An address already known is still answered.
        let known = SocketAddr::from(([203, 0, 113, 9], 1000));
        a.handle_packet(now, base, known, &check(100));
        assert_eq!(answers_to(&mut a, known), 1);
        // Another remote IP on the same base, and the same IP on another base, have budgets of
        // their own (the relayed candidate is such another base).
        let other_ip = SocketAddr::from(([203, 0, 113, 10], 1000));
        a.handle_packet(now, base, other_ip, &check(101));
        assert_eq!(answers_to(&mut a, other_ip), 1);
        let other_base: SocketAddr = "10.0.0.2:5000".parse().unwrap();
        let same_ip = SocketAddr::from(([203, 0, 113, 9], 2000));
        a.handle_packet(now, other_base, same_ip, &check(102));
        assert_eq!(answers_to(&mut a, same_ip), 1);
        assert_eq!(prflx(&a), MAX_PRFLX_PER_BASE_AND_IP + 2);
    }
}
