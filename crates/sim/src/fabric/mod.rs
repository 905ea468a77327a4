//! The packet fabric: brings a [`Topology`] up in network namespaces, moves packets between
//! their TUN devices in user space (through model NAT boxes, kernel NAT router namespaces and
//! link impairments), captures pcap files, counts, and tears everything down.
//!
//! # Names
//! Every namespace is `<prefix>-<host or kernel box>` with a per-run prefix
//! `nsim<PID>x<N>` from [`run_prefix`] (PID of the sim process, N a counter within it). When
//! the name would be longer than 31 characters or the host name has characters other than
//! `[A-Za-z0-9_.-]`, the namespace is `<prefix>-h<index>` (hosts) or `<prefix>-n<index>` (NAT
//! boxes); [`Fabric::netns`] gives the actual name. [`clean`] recognises exactly
//! `^nsim[0-9]+x[0-9]+-` and reads the owning PID from it.
//!
//! # Inside a namespace
//! Hosts: `lo` up, IPv6 off, `tun0` (IFF_TUN | IFF_NO_PI | IFF_VNET_HDR) with the host's addresses (with
//! the network's prefix length when a prefix holds them, else /32), MTU 1500, up, default route
//! via `tun0`. Kernel NAT boxes: `in0` (inside address) and `out0` (external address), the
//! inside network's prefixes routed via `in0`, default route via `out0`, `ip_forward=1`,
//! `rp_filter=0`, and nftables `masquerade` (optionally `random,fully-random`) on `out0`.
//!
//! # Packet loop
//! One OS thread (see `engine`) owns every TUN descriptor: epoll plus a timer queue for
//! impaired links. Links without impairment take a fast path: no copy, no queue.
//! TUN devices carry a virtio-net header: consecutive datagrams of one flow bound for one
//! device are written as one UDP GSO packet, which the kernel splits back into the same
//! datagrams (see `gso`). The loop thread runs in the normal scheduling class;
//! `NATSCOPE_FABRIC_SCHED=fifo|nice` chooses real-time (with a softirq-like budget) or nice -10.
//! pcap files record packets as they leave a link (lost packets are not in them).

mod engine;
mod gso;
mod impair;
mod netns;
mod pcap;
mod plan;
mod stats;
mod sys;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use netns::{CleanReport, NETNS_DIR, clean};
pub use stats::{Counter, DirectionStats, FabricStats, LinkStats, NatStats, NetworkStats};

use crate::topology::{NatKind, Topology};
use engine::{Engine, EngineParts, Shared};
use plan::Plan;

/// What went wrong, phrased for the person running `sim`.
#[derive(Debug, thiserror::Error)]
pub enum FabricError {
    /// Missing privileges.
    #[error(
        "the simulator needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN) to create network \
         namespaces and TUN devices: {0}; run it with sudo or as root"
    )]
    NotRoot(String),
    /// No TUN support.
    #[error(
        "/dev/net/tun is not usable ({0}); load the tun module (`modprobe tun`) or, in a \
         container, pass the device through (`--device /dev/net/tun`)"
    )]
    NoTun(String),
    /// A required program is missing.
    #[error(
        "`{program}` is missing or does not run ({detail}); install {package} (apt-get install -y {package})"
    )]
    MissingTool {
        /// Program name.
        program: &'static str,
        /// Debian package providing it.
        package: &'static str,
        /// What happened.
        detail: String,
    },
    /// The topology cannot be built.
    #[error("bad topology: {0}")]
    Topology(String),
    /// No such host or kernel NAT box.
    #[error("no host or kernel NAT box named {0:?} in this fabric")]
    UnknownHost(String),
    /// Setting up a namespace failed.
    #[error("setting up namespace {namespace}: {what}: {source}")]
    Setup {
        /// Namespace name.
        namespace: String,
        /// The step.
        what: String,
        /// The cause.
        source: io::Error,
    },
    /// A command (ip, nft) failed.
    #[error("`{command}` failed: {detail}")]
    Command {
        /// Command line.
        command: String,
        /// stderr or exit status.
        detail: String,
    },
    /// Another I/O failure.
    #[error("{what}: {source}")]
    Io {
        /// What the fabric was doing.
        what: String,
        /// The cause.
        source: io::Error,
    },
}

impl FabricError {
    fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> Self {
        let what = what.into();
        move |source| Self::Io { what, source }
    }
}

/// How to bring a fabric up.
#[derive(Debug, Clone)]
pub struct FabricOptions {
    /// Per-run namespace prefix, from [`run_prefix`].
    pub prefix: String,
    /// Write one pcap file per link here (`<dir>/<link>.pcap`; created if missing).
    pub pcap_dir: Option<PathBuf>,
    /// Seed for the impairment generators (loss, jitter): same seed, same decisions.
    pub seed: u64,
}

impl FabricOptions {
    /// A fresh prefix, no pcap, seed 0.
    pub fn new() -> Self {
        Self {
            prefix: run_prefix(),
            pcap_dir: None,
            seed: 0,
        }
    }
}

impl Default for FabricOptions {
    fn default() -> Self {
        Self::new()
    }
}

/// A new per-run namespace prefix: `nsim<pid>x<n>`.
pub fn run_prefix() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "nsim{}x{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// Check that this machine can run a fabric: root, /dev/net/tun, `ip`, `nft`.
pub fn check_environment() -> Result<(), FabricError> {
    check_basics()?;
    check_tool("nft", &["--version"], "nftables")
}

fn check_basics() -> Result<(), FabricError> {
    if !sys::has_admin_caps() {
        return Err(FabricError::NotRoot("this process lacks them".into()));
    }
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(|e| FabricError::NoTun(e.to_string()))?;
    check_tool("ip", &["-V"], "iproute2")
}

fn check_tool(
    program: &'static str,
    args: &[&str],
    package: &'static str,
) -> Result<(), FabricError> {
    let missing = |detail: String| FabricError::MissingTool {
        program,
        package,
        detail,
    };
    match Command::new(program).args(args).output() {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(missing(format!("exit {}", o.status))),
        Err(e) => Err(missing(e.to_string())),
    }
}

/// A handle that tears a fabric down from another thread (e.g. a Ctrl-C task) while the
/// owner still holds the [`Fabric`]. Idempotent; never panics.
#[derive(Debug, Clone)]
pub struct TeardownHandle {
    inner: Arc<Inner>,
}

impl TeardownHandle {
    /// Stop the packet loop, kill processes in the fabric's namespaces, delete them.
    pub fn teardown(&self) -> Result<(), FabricError> {
        self.inner.teardown()
    }
}

#[derive(Debug)]
struct Inner {
    shared: Arc<Shared>,
    /// Namespaces created (or being created) by this run, and whether teardown ran.
    state: Mutex<TeardownState>,
}

#[derive(Debug, Default)]
struct TeardownState {
    namespaces: Vec<String>,
    pids: Vec<u32>,
    done: bool,
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, TeardownState> {
        match self.state.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    fn teardown(&self) -> Result<(), FabricError> {
        let mut st = self.lock();
        if st.done {
            return Ok(());
        }
        st.done = true;
        self.shared.stop_and_wait(Duration::from_secs(5));
        let ids: Vec<_> = st
            .namespaces
            .iter()
            .filter_map(|n| netns::ns_id(n))
            .collect();
        // Spawned processes: killed by PID, only when still inside one of our namespaces (a
        // reaped PID may have been reused by someone else).
        for pid in &st.pids {
            if netns::pid_ns_id(*pid).is_some_and(|id| ids.contains(&id)) {
                netns::kill(*pid);
            }
        }
        let mut first_err = None;
        netns::kill_all_in(&st.namespaces);
        for ns in &st.namespaces {
            if let Err(e) = netns::delete(ns) {
                tracing::warn!("deleting namespace {ns}: {e}");
                first_err.get_or_insert(e);
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// A running fabric. Dropping it tears everything down, like [`Fabric::down`].
#[derive(Debug)]
pub struct Fabric {
    inner: Arc<Inner>,
    thread: Option<JoinHandle<()>>,
    ns_of: HashMap<String, String>,
    prefix: String,
}

impl Fabric {
    /// Build the namespaces, devices and rules of `topology` and start the packet loop.
    pub fn up(topology: Topology, opts: FabricOptions) -> Result<Fabric, FabricError> {
        let started = Instant::now();
        let plan = Plan::new(&topology, &opts.prefix)?;
        check_basics()?;
        let has_kernel = topology
            .nats
            .iter()
            .any(|n| matches!(n.kind, NatKind::Kernel { .. }));
        if has_kernel {
            check_tool("nft", &["--version"], "nftables")?;
        }
        let shared = Arc::new(Shared::new().map_err(FabricError::io("creating an eventfd"))?);
        let inner = Arc::new(Inner {
            shared: Arc::clone(&shared),
            state: Mutex::new(TeardownState::default()),
        });
        let names: Vec<String> = plan.namespaces().map(|n| n.name.clone()).collect();
        inner.lock().namespaces = names.clone();
        let mut fabric = Fabric {
            inner,
            thread: None,
            ns_of: plan
                .namespaces()
                .map(|n| (n.owner.clone(), n.name.clone()))
                .collect(),
            prefix: opts.prefix.clone(),
        };
        // From here on, an error return drops `fabric`, which removes what exists.
        netns::create_all(&names)?;
        let fds = configure_all(&plan, &topology)?;
        for (i, n) in topology.nats.iter().enumerate() {
            if let (NatKind::Kernel { random_fully }, Some(ns)) =
                (&n.kind, plan.nat_ns.get(i).and_then(Option::as_ref))
            {
                netns::load_masquerade(&ns.name, *random_fully)?;
            }
        }
        let pcaps = open_pcaps(&plan, opts.pcap_dir.as_deref())?;
        let network_names = topology.networks.iter().map(|n| n.name.clone()).collect();
        let mut nat_names = Vec::new();
        let mut translators = Vec::new();
        for n in topology.nats {
            match n.kind {
                NatKind::Model(t) => {
                    nat_names.push((n.name, "model"));
                    translators.push(Some(t));
                }
                NatKind::Kernel { .. } => {
                    nat_names.push((n.name, "kernel"));
                    translators.push(None);
                }
            }
        }
        let engine = Engine::new(
            plan,
            EngineParts {
                fds,
                pcaps,
                translators,
                nat_names,
                network_names,
                seed: opts.seed,
            },
            shared,
        );
        let thread = std::thread::Builder::new()
            .name("sim-fabric".into())
            .spawn(move || engine.run())
            .map_err(FabricError::io("starting the packet loop thread"))?;
        fabric.thread = Some(thread);
        tracing::info!(
            prefix = %fabric.prefix,
            namespaces = fabric.ns_of.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "fabric up"
        );
        Ok(fabric)
    }

    /// The run's namespace prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The namespace of a host or kernel NAT box.
    pub fn netns(&self, name: &str) -> Option<&str> {
        self.ns_of.get(name).map(String::as_str)
    }

    /// A [`Command`] for `program` that runs inside `host`'s namespace (it enters the
    /// namespace between fork and exec; `ip netns exec <ns> ...` works too).
    pub fn command(&self, host: &str, program: impl AsRef<OsStr>) -> Result<Command, FabricError> {
        let ns = self
            .netns(host)
            .ok_or_else(|| FabricError::UnknownHost(host.to_owned()))?;
        let mut cmd = Command::new(program);
        sys::enter_netns_on_exec(&mut cmd, &format!("{NETNS_DIR}/{ns}"))
            .map_err(FabricError::io("preparing a command"))?;
        Ok(cmd)
    }

    /// Spawn `cmd` inside `host`'s namespace (whether or not it came from
    /// [`Fabric::command`]) and remember its PID: [`Fabric::down`] kills it if it still runs.
    pub fn spawn(&mut self, host: &str, mut cmd: Command) -> Result<Child, FabricError> {
        let ns = self
            .netns(host)
            .ok_or_else(|| FabricError::UnknownHost(host.to_owned()))?;
        sys::enter_netns_on_exec(&mut cmd, &format!("{NETNS_DIR}/{ns}"))
            .map_err(FabricError::io("preparing a command"))?;
        let child = cmd.spawn().map_err(FabricError::io(format!(
            "starting {:?} in {host}",
            cmd.get_program()
        )))?;
        self.inner.lock().pids.push(child.id());
        Ok(child)
    }

    /// Current statistics (fresh from the packet loop).
    pub fn stats(&self) -> FabricStats {
        self.inner.shared.request_stats()
    }

    /// A handle for tearing down from elsewhere (signal handling).
    pub fn teardown_handle(&self) -> TeardownHandle {
        TeardownHandle {
            inner: Arc::clone(&self.inner),
        }
    }

    /// Stop the loop, kill what still runs in the namespaces, delete them; the final counts.
    pub fn down(mut self) -> Result<FabricStats, FabricError> {
        let r = self.inner.teardown();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let stats = self.inner.shared.request_stats();
        r.map(|()| stats)
    }
}

impl Drop for Fabric {
    fn drop(&mut self) {
        if let Err(e) = self.inner.teardown() {
            tracing::warn!("fabric teardown: {e}");
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One namespace to configure, as plain data for the helper thread.
#[derive(Debug)]
enum NsJob {
    Host {
        ns: String,
        att: usize,
        addrs: Vec<(std::net::Ipv4Addr, u8)>,
    },
    Router {
        ns: String,
        atts: (usize, usize),
        inside: (std::net::Ipv4Addr, u8),
        outside: (std::net::Ipv4Addr, u8),
        routes: Vec<(std::net::Ipv4Addr, u8)>,
    },
}

fn ns_jobs(plan: &Plan, topo: &Topology) -> Vec<NsJob> {
    let mut jobs = Vec::new();
    for (i, h) in topo.hosts.iter().enumerate() {
        let (Some(ns), Some(&att)) = (plan.host_ns.get(i), plan.host_att.get(i)) else {
            continue;
        };
        let addrs = h
            .addresses
            .iter()
            .map(|ip| (*ip, plan.prefix_len(h.network, *ip)))
            .collect();
        jobs.push(NsJob::Host {
            ns: ns.name.clone(),
            att,
            addrs,
        });
    }
    for (i, n) in topo.nats.iter().enumerate() {
        let (Some(Some(ns)), Some(&atts)) = (plan.nat_ns.get(i), plan.nat_sides.get(i)) else {
            continue;
        };
        let routes = topo
            .networks
            .get(n.inside)
            .map(|x| x.prefixes.iter().map(|p| (p.addr, p.len)).collect())
            .unwrap_or_default();
        let ext = n
            .external
            .first()
            .copied()
            .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED);
        jobs.push(NsJob::Router {
            ns: ns.name.clone(),
            atts,
            inside: (n.inside_addr, plan.prefix_len(n.inside, n.inside_addr)),
            outside: (ext, plan.prefix_len(n.outside, ext)),
            routes,
        });
    }
    jobs
}

/// Configure every namespace from one helper thread that enters each in turn; returns the
/// TUN descriptor of every attachment that has one (indexed like `plan.attachments`).
fn configure_all(plan: &Plan, topo: &Topology) -> Result<Vec<Option<OwnedFd>>, FabricError> {
    let jobs = ns_jobs(plan, topo);
    let count = plan.attachments.len();
    let worker = std::thread::spawn(move || {
        let mut fds: Vec<Option<OwnedFd>> = (0..count).map(|_| None).collect();
        let mut put = |att: usize, fd: OwnedFd| {
            if let Some(slot) = fds.get_mut(att) {
                *slot = Some(fd);
            }
        };
        for job in jobs {
            match job {
                NsJob::Host { ns, att, addrs } => put(att, netns::configure_host(&ns, &addrs)?),
                NsJob::Router {
                    ns,
                    atts,
                    inside,
                    outside,
                    routes,
                } => {
                    let (fin, fout) = netns::configure_router(&ns, inside, outside, &routes)?;
                    put(atts.0, fin);
                    put(atts.1, fout);
                }
            }
        }
        Ok(fds)
    });
    worker.join().unwrap_or_else(|_| {
        Err(FabricError::Io {
            what: "namespace setup thread".into(),
            source: io::Error::other("panicked"),
        })
    })
}

fn open_pcaps(
    plan: &Plan,
    dir: Option<&std::path::Path>,
) -> Result<Vec<Option<pcap::PcapWriter>>, FabricError> {
    let Some(dir) = dir else {
        return Ok(plan.attachments.iter().map(|_| None).collect());
    };
    std::fs::create_dir_all(dir).map_err(FabricError::io(format!("creating {}", dir.display())))?;
    plan.attachments
        .iter()
        .map(|a| {
            let safe: String = a
                .link_name
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            let path = dir.join(format!("{safe}.pcap"));
            pcap::PcapWriter::create(&path)
                .map(Some)
                .map_err(FabricError::io(format!("creating {}", path.display())))
        })
        .collect()
}
