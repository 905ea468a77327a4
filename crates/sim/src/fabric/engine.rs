//! The packet loop: one dedicated OS thread that owns every TUN descriptor, the translators,
//! the link timer queue and the pcap writers. epoll over the TUN devices plus an eventfd for
//! control; level-triggered, a bounded burst of reads per ready device; no allocation and no
//! lock per packet (delayed packets reuse pooled buffers; statistics are plain fields
//! published on request).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::IoSlice;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

use super::gso::{self, Outbox, ReadHeader, VNET_HDR_LEN};
use super::impair::{Fate, LinkDirection, derive_seed};
use super::pcap::PcapWriter;
use super::plan::{AttachKind, Plan, Route};
use super::stats::{Counter, FabricStats, LinkStats, NatStats, NetworkStats, bump};
use super::sys;
use crate::topology::{Side, Translator, Verdict};

/// A packet crossing more hops than this inside the fabric is dropped (`hop-limit`): guards
/// against translators that bounce packets between each other forever.
const MAX_HOPS: u8 = 32;
/// Reads from one device before the loop looks at the others.
const READ_BURST: usize = 64;
/// Nice value of the packet loop thread in `nice` mode (and `fifo` without CAP_SYS_NICE).
const FABRIC_NICE: i32 = -10;
/// Environment variable that chooses the packet loop's scheduling: `normal` (default), `fifo`
/// or `nice` (see [`Sched`]).
const SCHED_ENV: &str = "NATSCOPE_FABRIC_SCHED";
/// Environment variable that turns merged (GSO) writes off: `off`.
const GSO_ENV: &str = "NATSCOPE_FABRIC_GSO";
const CONTROL_TOKEN: u64 = u64::MAX;
const BUF_LEN: usize = 65_536;

/// State shared between the loop and the [`super::Fabric`] handles.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) stop: AtomicBool,
    pub(crate) stats_req: AtomicU64,
    pub(crate) stats: Mutex<(u64, FabricStats)>,
    pub(crate) stats_cv: Condvar,
    pub(crate) exited: Mutex<bool>,
    pub(crate) exited_cv: Condvar,
    pub(crate) wake: OwnedFd,
}

impl Shared {
    pub(crate) fn new() -> std::io::Result<Self> {
        Ok(Self {
            stop: AtomicBool::new(false),
            stats_req: AtomicU64::new(0),
            stats: Mutex::new((0, FabricStats::default())),
            stats_cv: Condvar::new(),
            exited: Mutex::new(false),
            exited_cv: Condvar::new(),
            wake: sys::eventfd()?,
        })
    }

    pub(crate) fn wake(&self) {
        sys::eventfd_signal(self.wake.as_raw_fd());
    }

    /// Fresh statistics from the loop (or the last published ones if it does not answer
    /// within a second, e.g. because it has stopped).
    pub(crate) fn request_stats(&self) -> FabricStats {
        let want = self.stats_req.fetch_add(1, Ordering::SeqCst) + 1;
        self.wake();
        let deadline = Instant::now() + Duration::from_secs(1);
        let mut g = match self.stats.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        while g.0 < want && !self.has_exited() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            g = match self
                .stats_cv
                .wait_timeout(g, left.min(Duration::from_millis(50)))
            {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
        g.1.clone()
    }

    pub(crate) fn has_exited(&self) -> bool {
        match self.exited.lock() {
            Ok(g) => *g,
            Err(p) => *p.into_inner(),
        }
    }

    /// Ask the loop to stop and wait (bounded) until it has released its devices.
    pub(crate) fn stop_and_wait(&self, limit: Duration) {
        self.stop.store(true, Ordering::SeqCst);
        self.wake();
        let deadline = Instant::now() + limit;
        let mut g = match self.exited.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        while !*g {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            g = match self.exited_cv.wait_timeout(g, left) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    /// From the host or box into the network.
    Up = 0,
    /// From the network to the host or box.
    Down = 1,
}

#[derive(Debug)]
struct Att {
    fd: Option<OwnedFd>,
    dirs: [LinkDirection; 2],
    pcap: Option<PcapWriter>,
}

#[derive(Debug)]
struct Pending {
    att: usize,
    dir: Dir,
    hops: u8,
    buf: Vec<u8>,
}

/// Everything the loop thread owns.
#[derive(Debug)]
pub(crate) struct Engine {
    plan: Plan,
    atts: Vec<Att>,
    translators: Vec<Option<Box<dyn Translator>>>,
    heap: BinaryHeap<Reverse<(Instant, u64, usize)>>,
    slots: Vec<Option<Pending>>,
    free_slots: Vec<usize>,
    pool: Vec<Vec<u8>>,
    seq: u64,
    stats: FabricStats,
    shared: Arc<Shared>,
    epoch: (Instant, SystemTime),
    /// Datagrams bound for each attachment's device, merged while a burst lasts (see `gso`).
    outboxes: Vec<Outbox>,
    /// Attachments whose outbox holds something.
    dirty: Vec<usize>,
    /// Merging is on (`NATSCOPE_FABRIC_GSO=off`, or a kernel that refuses it, turns it off).
    merge: bool,
}

/// Inputs for [`Engine::new`]: the TUN descriptor of each attachment that has one, and an
/// open pcap writer for each link that is captured.
#[derive(Debug)]
pub(crate) struct EngineParts {
    pub(crate) fds: Vec<Option<OwnedFd>>,
    pub(crate) pcaps: Vec<Option<PcapWriter>>,
    pub(crate) translators: Vec<Option<Box<dyn Translator>>>,
    pub(crate) nat_names: Vec<(String, &'static str)>,
    pub(crate) network_names: Vec<String>,
    pub(crate) seed: u64,
}

impl Engine {
    pub(crate) fn new(plan: Plan, parts: EngineParts, shared: Arc<Shared>) -> Self {
        let EngineParts {
            fds,
            pcaps,
            translators,
            nat_names,
            network_names,
            seed,
        } = parts;
        let mut fds = fds.into_iter();
        let mut pcaps = pcaps.into_iter();
        let atts = plan
            .attachments
            .iter()
            .enumerate()
            .map(|(i, a)| Att {
                fd: fds.next().flatten(),
                dirs: [
                    LinkDirection::new(a.impairment, derive_seed(seed, i, 0)),
                    LinkDirection::new(a.impairment, derive_seed(seed, i, 1)),
                ],
                pcap: pcaps.next().flatten(),
            })
            .collect();
        let stats = FabricStats {
            links: plan
                .attachments
                .iter()
                .map(|a| LinkStats {
                    name: a.link_name.clone(),
                    network: network_names.get(a.network).cloned().unwrap_or_default(),
                    ..LinkStats::default()
                })
                .collect(),
            nats: nat_names
                .into_iter()
                .map(|(name, kind)| NatStats {
                    name,
                    kind: kind.to_owned(),
                    ..NatStats::default()
                })
                .collect(),
            networks: network_names
                .into_iter()
                .map(|name| NetworkStats {
                    name,
                    ..NetworkStats::default()
                })
                .collect(),
        };
        let outboxes = plan.attachments.iter().map(|_| Outbox::default()).collect();
        Self {
            plan,
            atts,
            translators,
            heap: BinaryHeap::new(),
            slots: Vec::new(),
            free_slots: Vec::new(),
            pool: Vec::new(),
            seq: 0,
            stats,
            shared,
            epoch: (Instant::now(), SystemTime::now()),
            outboxes,
            dirty: Vec::new(),
            merge: std::env::var(GSO_ENV).map_or(true, |v| v != "off"),
        }
    }

    /// Run until asked to stop; then release every device and publish the final statistics.
    pub(crate) fn run(mut self) {
        if let Err(e) = self.run_inner() {
            tracing::error!("fabric packet loop failed: {e}");
        }
        let mut fds = Vec::new();
        for a in &mut self.atts {
            if let Some(p) = a.pcap.as_mut() {
                if let Err(e) = p.flush() {
                    tracing::warn!("pcap flush failed: {e}");
                }
            }
            fds.extend(a.fd.take());
            a.pcap = None;
        }
        close_in_parallel(fds);
        self.publish(u64::MAX);
        let shared = Arc::clone(&self.shared);
        drop(self);
        match shared.exited.lock() {
            Ok(mut g) => *g = true,
            Err(p) => *p.into_inner() = true,
        }
        shared.exited_cv.notify_all();
    }

    fn publish(&self, generation: u64) {
        let want = self
            .shared
            .stats_req
            .load(Ordering::SeqCst)
            .max(generation.min(u64::MAX - 1));
        let snapshot = self.stats.clone();
        match self.shared.stats.lock() {
            Ok(mut g) => *g = (want.max(g.0), snapshot),
            Err(p) => *p.into_inner() = (want, snapshot),
        }
        self.shared.stats_cv.notify_all();
    }

    fn run_inner(&mut self) -> std::io::Result<()> {
        let mut sched = Sched::start();
        let epoll = sys::Epoll::new()?;
        epoll.add(self.shared.wake.as_raw_fd(), CONTROL_TOKEN)?;
        for (i, a) in self.atts.iter().enumerate() {
            if let Some(fd) = &a.fd {
                epoll.add(fd.as_raw_fd(), i as u64)?;
            }
        }
        let mut events = vec![sys::empty_event(); 256];
        let mut buf = vec![0u8; BUF_LEN];
        let mut published = 0u64;
        loop {
            let now = Instant::now();
            self.fire_timers(now);
            let timeout = self.next_deadline().map_or(1000, |t| {
                let d = t.saturating_duration_since(Instant::now());
                // Round up to whole milliseconds so the loop does not spin before a deadline.
                i32::try_from(d.as_micros().div_ceil(1000).min(1000)).unwrap_or(1000)
            });
            let n = if sched.realtime {
                // Look before sleeping: finding work ready means the loop has not been idle.
                match epoll.wait(&mut events, 0) {
                    0 => {
                        sched.idle();
                        epoll.wait(&mut events, timeout)
                    }
                    n => {
                        sched.busy(now);
                        n
                    }
                }
            } else {
                epoll.wait(&mut events, timeout)
            };
            for ev in events.iter().take(n) {
                let token = sys::event_token(ev);
                if token == CONTROL_TOKEN {
                    sys::eventfd_drain(self.shared.wake.as_raw_fd());
                    continue;
                }
                let Ok(att) = usize::try_from(token) else {
                    continue;
                };
                self.drain_device(att, &mut buf);
            }
            if self.shared.stop.load(Ordering::SeqCst) {
                return Ok(());
            }
            let req = self.shared.stats_req.load(Ordering::SeqCst);
            if req > published {
                published = req;
                self.publish(req);
            }
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let timer = self.heap.peek().map(|Reverse((t, _, _))| *t);
        let nat = self
            .translators
            .iter()
            .flatten()
            .filter_map(|t| t.poll_timeout())
            .min();
        match (timer, nat) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn fire_timers(&mut self, now: Instant) {
        for t in self.translators.iter_mut().flatten() {
            if t.poll_timeout().is_some_and(|due| due <= now) {
                t.handle_timeout(now);
            }
        }
        while let Some(Reverse((due, _, slot))) = self.heap.peek().copied() {
            if due > now {
                break;
            }
            self.heap.pop();
            let Some(p) = self.slots.get_mut(slot).and_then(Option::take) else {
                continue;
            };
            self.free_slots.push(slot);
            let mut b = p.buf;
            self.forward(now, p.att, p.dir, &mut b, p.hops, true);
            self.pool.push(b);
        }
        self.flush_outboxes();
    }

    fn drain_device(&mut self, att: usize, buf: &mut [u8]) {
        let Some(fd) = self
            .atts
            .get(att)
            .and_then(|a| a.fd.as_ref())
            .map(|f| f.as_raw_fd())
        else {
            return;
        };
        let now = Instant::now();
        for _ in 0..READ_BURST {
            match sys::read(fd, buf) {
                Ok(Some(len)) => {
                    if let Some(frame) = buf.get_mut(..len) {
                        self.on_device_frame(now, att, frame);
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!("read from TUN device failed: {e}");
                    break;
                }
            }
        }
        self.flush_outboxes();
    }

    /// A frame read from a TUN device: the virtio-net header, then the packet.
    fn on_device_frame(&mut self, now: Instant, att: usize, frame: &mut [u8]) {
        let (hdr, pkt) = frame.split_at_mut(VNET_HDR_LEN.min(frame.len()));
        match gso::read_header(hdr) {
            Some(ReadHeader::Plain) => {}
            Some(ReadHeader::NeedsChecksum { start, offset }) => {
                if !gso::complete_checksum(pkt, start, offset) {
                    return self.network_drop(att, "malformed");
                }
            }
            Some(ReadHeader::Segmented) => return self.network_drop(att, "offload"),
            None => return self.network_drop(att, "malformed"),
        }
        self.on_device_packet(now, att, pkt);
    }

    /// Hand `pkt` to attachment `att`'s device: into its outbox when it can be merged with
    /// what follows, else written now (after whatever the outbox held, to keep the order).
    fn emit(&mut self, att: usize, pkt: &[u8]) {
        if self.merge {
            let Some(out) = self.outboxes.get_mut(att) else {
                return;
            };
            let was_empty = out.is_empty();
            if out.offer(pkt) {
                if was_empty {
                    self.dirty.push(att);
                }
                return;
            }
            if !was_empty {
                // `att` stays in `dirty`: the refill (if any) is flushed with the rest.
                self.flush(att);
                if self.merge && self.outboxes.get_mut(att).is_some_and(|o| o.offer(pkt)) {
                    return;
                }
            }
        }
        self.write_alone(att, pkt);
    }

    fn write_alone(&mut self, att: usize, pkt: &[u8]) {
        let Some(fd) = self.device(att) else {
            return;
        };
        let vnet = [0u8; VNET_HDR_LEN];
        if sys::writev(fd, &[IoSlice::new(&vnet), IoSlice::new(pkt)]).is_err() {
            self.network_drop(att, "write-error");
        }
    }

    fn device(&self, att: usize) -> Option<std::os::fd::RawFd> {
        Some(self.atts.get(att)?.fd.as_ref()?.as_raw_fd())
    }

    /// Write what attachment `att`'s outbox holds as one frame.
    fn flush(&mut self, att: usize) {
        let fd = self.device(att);
        let Some(frame) = self.outboxes.get_mut(att).and_then(Outbox::take) else {
            return;
        };
        let Some(fd) = fd else {
            return;
        };
        let parts = [
            IoSlice::new(&frame.vnet),
            IoSlice::new(&frame.head),
            IoSlice::new(frame.payload),
        ];
        let (datagrams, bytes) = (frame.datagrams, frame.len_unmerged());
        match sys::writev(fd, &parts) {
            Err(e) if datagrams > 1 && e.raw_os_error() == Some(libc::EINVAL) => {
                // A kernel without UDP GSO from TUN (before 6.2): write alone from now on.
                tracing::warn!("the kernel refused a merged UDP frame ({e}); merging is off");
                self.merge = false;
                let each = self
                    .outboxes
                    .get(att)
                    .map(Outbox::unmerged)
                    .unwrap_or_default();
                for p in each {
                    self.write_alone(att, &p);
                }
                return;
            }
            Err(_) => {
                for _ in 0..datagrams {
                    self.network_drop(att, "write-error");
                }
                return;
            }
            Ok(()) => {}
        }
        if datagrams > 1 {
            if let Some(ls) = self.stats.links.get_mut(att) {
                ls.down.merged.packets += datagrams as u64;
                ls.down.merged.bytes += bytes as u64;
            }
        }
    }

    /// Write every outbox that holds something (the end of a burst or of a timer round).
    fn flush_outboxes(&mut self) {
        let mut dirty = std::mem::take(&mut self.dirty);
        for att in dirty.drain(..) {
            self.flush(att);
        }
        self.dirty = dirty;
    }

    /// A packet the kernel emitted on a TUN device (a host's, or a kernel NAT box's side).
    fn on_device_packet(&mut self, now: Instant, att: usize, pkt: &mut [u8]) {
        let Some(a) = self.plan.attachments.get(att) else {
            return;
        };
        if let AttachKind::Kernel { nat, side } = a.kind {
            if let Some(s) = self.stats.nats.get_mut(nat) {
                match side {
                    Side::Outside => s.outbound.add(pkt.len()),
                    Side::Inside => s.inbound.add(pkt.len()),
                }
            }
        }
        self.forward(now, att, Dir::Up, pkt, 0, false);
    }

    fn network_drop(&mut self, att: usize, reason: &str) {
        let net = self.plan.attachments.get(att).map_or(0, |a| a.network);
        if let Some(n) = self.stats.networks.get_mut(net) {
            bump(&mut n.drops, reason);
        }
    }

    /// Move a packet through link `att` in `dir` and onwards until it is written to a device,
    /// queued on an impaired link, or dropped. `admitted`: the packet has already crossed this
    /// link's impairment (it comes off the timer queue).
    fn forward(
        &mut self,
        now: Instant,
        mut att: usize,
        mut dir: Dir,
        pkt: &mut [u8],
        mut hops: u8,
        mut admitted: bool,
    ) {
        loop {
            if hops > MAX_HOPS {
                self.network_drop(att, "hop-limit");
                return;
            }
            let len = pkt.len();
            let d = dir as usize;
            if !admitted {
                let (Some(a), Some(ls)) = (self.atts.get_mut(att), self.stats.links.get_mut(att))
                else {
                    return;
                };
                let ds = if dir == Dir::Up {
                    &mut ls.up
                } else {
                    &mut ls.down
                };
                ds.entered.add(len);
                let Some(link) = a.dirs.get_mut(d) else {
                    return;
                };
                match link.admit(now, len) {
                    Fate::Now => {}
                    Fate::Lost => return bump(&mut ds.drops, "loss"),
                    Fate::QueueFull => return bump(&mut ds.drops, "queue-full"),
                    Fate::At(t) => {
                        self.enqueue(t, att, dir, hops, pkt);
                        return;
                    }
                }
            }
            admitted = false;
            match self.cross(now, att, dir, pkt) {
                Some((next, ndir)) => {
                    att = next;
                    dir = ndir;
                    hops += 1;
                }
                None => return,
            }
        }
    }

    fn enqueue(&mut self, at: Instant, att: usize, dir: Dir, hops: u8, pkt: &[u8]) {
        let mut buf = self.pool.pop().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(pkt);
        let p = Pending {
            att,
            dir,
            hops,
            buf,
        };
        let slot = match self.free_slots.pop() {
            Some(s) => {
                if let Some(x) = self.slots.get_mut(s) {
                    *x = Some(p);
                }
                s
            }
            None => {
                self.slots.push(Some(p));
                self.slots.len() - 1
            }
        };
        self.seq += 1;
        self.heap.push(Reverse((at, self.seq, slot)));
    }

    /// The packet leaves link `att` in `dir`: record it, then route it (up) or hand it to the
    /// attachment (down). Returns the next link to cross.
    fn cross(
        &mut self,
        now: Instant,
        att: usize,
        dir: Dir,
        pkt: &mut [u8],
    ) -> Option<(usize, Dir)> {
        let len = pkt.len();
        if let Some(ls) = self.stats.links.get_mut(att) {
            if dir == Dir::Up {
                ls.up.delivered.add(len)
            } else {
                ls.down.delivered.add(len)
            }
        }
        if let Some(p) = self.atts.get_mut(att).and_then(|a| a.pcap.as_mut()) {
            let at = self.epoch.1 + now.saturating_duration_since(self.epoch.0);
            if let Err(e) = p.record(at, pkt) {
                tracing::warn!("pcap write failed: {e}");
            }
        }
        match dir {
            Dir::Up => {
                let Some(dst) = ipv4_destination(pkt) else {
                    let reason = if pkt.first().is_some_and(|b| b >> 4 == 4) {
                        "malformed"
                    } else {
                        "not-ipv4"
                    };
                    self.network_drop(att, reason);
                    return None;
                };
                match self.plan.route(att, dst) {
                    Route::To(to) => {
                        let net = self.plan.attachments.get(att).map_or(0, |a| a.network);
                        if let Some(n) = self.stats.networks.get_mut(net) {
                            n.routed.add(len);
                        }
                        Some((to, Dir::Down))
                    }
                    Route::Drop(reason) => {
                        self.network_drop(att, reason);
                        None
                    }
                }
            }
            Dir::Down => {
                let kind = self.plan.attachments.get(att)?.kind;
                match kind {
                    AttachKind::Host(_) | AttachKind::Kernel { .. } => {
                        self.emit(att, pkt);
                        None
                    }
                    AttachKind::Model { nat, side } => self.translate(now, nat, side, pkt),
                }
            }
        }
    }

    fn translate(
        &mut self,
        now: Instant,
        nat: usize,
        from: Side,
        pkt: &mut [u8],
    ) -> Option<(usize, Dir)> {
        let t = self.translators.get_mut(nat)?.as_mut()?;
        let verdict = t.process(now, from, pkt);
        let s = self.stats.nats.get_mut(nat)?;
        let (inside, outside) = *self.plan.nat_sides.get(nat)?;
        match verdict {
            Verdict::Forward(to) => {
                let c: &mut Counter = match (from, to) {
                    (Side::Inside, Side::Outside) => &mut s.outbound,
                    (Side::Outside, Side::Inside) => &mut s.inbound,
                    (Side::Inside, Side::Inside) => &mut s.hairpinned,
                    (Side::Outside, Side::Outside) => &mut s.reflected,
                };
                c.add(pkt.len());
                Some((if to == Side::Inside { inside } else { outside }, Dir::Up))
            }
            Verdict::Drop(reason) => {
                bump(&mut s.drops, reason);
                None
            }
        }
    }
}

/// The packet loop's scheduling.
///
/// Default (`normal`): the ordinary class, sharing the CPU fairly with the programs whose
/// packets it moves; a loop that sleeps in epoll between packets is woken promptly by the
/// scheduler anyway. Since TUN writes merge datagrams (see `gso`), the loop costs so little per
/// datagram that fairness is what matters: on this 2-core machine the receiver of a flood is
/// the bottleneck, and any priority for the loop takes CPU from it.
///
/// `fifo`: SCHED_FIFO at the lowest real-time priority, modelled on the kernel's softirq and
/// ksoftirqd: the loop preempts everything when a packet is ready, until it has found work
/// waiting every time it looked for [`BUSY_BUDGET`]; then it drops to SCHED_OTHER until it next
/// finds nothing to do, as the kernel hands softirq work that outlasts its 2 ms budget to
/// ksoftirqd. Without that step a flood turns into receive livelock: the loop, each write also
/// running the receiving namespace's stack, keeps delivering datagrams into a socket whose
/// reader never gets the CPU (measured: 540,000/s delivered into the receiver's buffer, 55,000/s
/// read). Even so, plain real-time wakeups made the receiver wait behind the loop often enough
/// to halve the zero-loss rate, hence not the default. Without CAP_SYS_NICE: nice -10.
///
/// `nice`: the ordinary class at nice -10 throughout.
#[derive(Debug)]
struct Sched {
    /// Real-time was granted at start, so the loop may switch.
    realtime: bool,
    /// Currently dropped to SCHED_OTHER.
    demoted: bool,
    /// When the loop last found nothing to do.
    busy_since: Option<Instant>,
}

/// How long the loop may keep finding work before it gives up real-time priority.
const BUSY_BUDGET: Duration = Duration::from_millis(2);

impl Sched {
    fn start() -> Self {
        let mode = std::env::var(SCHED_ENV).unwrap_or_default();
        let mut realtime = false;
        if mode == "fifo" {
            match sys::set_thread_fifo(1) {
                Ok(()) => realtime = true,
                Err(e) => tracing::debug!("packet loop stays out of SCHED_FIFO: {e}"),
            }
        }
        if mode == "nice" || (mode == "fifo" && !realtime) {
            if let Err(e) = sys::set_thread_nice(FABRIC_NICE) {
                tracing::debug!("could not raise the packet loop's priority: {e}");
            }
        }
        Self {
            realtime,
            demoted: false,
            busy_since: None,
        }
    }

    /// The loop found work waiting without sleeping.
    fn busy(&mut self, now: Instant) {
        if !self.realtime || self.demoted {
            return;
        }
        let since = *self.busy_since.get_or_insert(now);
        if now.saturating_duration_since(since) >= BUSY_BUDGET {
            match sys::set_thread_normal() {
                Ok(()) => self.demoted = true,
                Err(e) => {
                    // Still real-time: try again after another budget.
                    tracing::debug!("packet loop could not leave SCHED_FIFO: {e}");
                    self.busy_since = Some(now);
                }
            }
        }
    }

    /// The loop found nothing to do and is about to sleep.
    fn idle(&mut self) {
        self.busy_since = None;
        if self.demoted {
            match sys::set_thread_fifo(1) {
                Ok(()) => self.demoted = false,
                Err(e) => {
                    // Stays in the normal class for good, which is safe.
                    tracing::debug!("packet loop could not return to SCHED_FIFO: {e}");
                    self.realtime = false;
                    self.demoted = false;
                }
            }
        }
    }
}

/// Close TUN descriptors from several threads: each close unregisters a device and waits for
/// an RCU grace period, which overlap when done concurrently.
fn close_in_parallel(fds: Vec<OwnedFd>) {
    const THREADS: usize = 16;
    if fds.len() <= 2 {
        return;
    }
    let per = fds.len().div_ceil(THREADS);
    let mut fds = fds;
    std::thread::scope(|s| {
        while !fds.is_empty() {
            let chunk: Vec<OwnedFd> = fds.drain(..per.min(fds.len())).collect();
            s.spawn(move || drop(chunk));
        }
    });
}

/// The destination of a well-formed IPv4 packet.
fn ipv4_destination(pkt: &[u8]) -> Option<Ipv4Addr> {
    let first = *pkt.first()?;
    if first >> 4 != 4 || usize::from(first & 0x0f) * 4 < 20 {
        return None;
    }
    let total = u16::from_be_bytes([*pkt.get(2)?, *pkt.get(3)?]);
    if usize::from(total) > pkt.len() || usize::from(first & 0x0f) * 4 > usize::from(total) {
        return None;
    }
    let d = pkt.get(16..20)?;
    Some(Ipv4Addr::new(d[0], d[1], d[2], d[3]))
}

#[cfg(test)]
mod tests {
    use super::ipv4_destination;

    #[test]
    fn destination_needs_a_whole_ipv4_header() {
        let mut p = [0u8; 28];
        p[0] = 0x45;
        p[3] = 28;
        p[16..20].copy_from_slice(&[203, 0, 113, 5]);
        assert_eq!(ipv4_destination(&p), Some([203, 0, 113, 5].into()));
        assert_eq!(ipv4_destination(&p[..19]), None);
        p[3] = 200;
        assert_eq!(ipv4_destination(&p), None);
        p[3] = 28;
        p[0] = 0x60;
        assert_eq!(ipv4_destination(&p), None);
        p[0] = 0x44;
        assert_eq!(ipv4_destination(&p), None);
        assert_eq!(ipv4_destination(&[]), None);
    }
}
