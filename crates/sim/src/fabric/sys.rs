//! The fabric's one module with `unsafe`: TUN devices, interface ioctls, eventfd, epoll and the
//! `pre_exec` hook that moves a child into a namespace. Everything here is a thin, checked
//! wrapper over one system call; the rest of the fabric is safe code.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const SIOCGIFFLAGS: libc::c_ulong = 0x8913;
const SIOCSIFFLAGS: libc::c_ulong = 0x8914;
const SIOCSIFADDR: libc::c_ulong = 0x8916;
const SIOCSIFNETMASK: libc::c_ulong = 0x891c;
const SIOCSIFMTU: libc::c_ulong = 0x8922;
const SIOCADDRT: libc::c_ulong = 0x890b;
const IFF_UP: libc::c_short = 0x1;
const RTF_UP: libc::c_ushort = 0x1;
const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;

/// `struct ifreq` restricted to the members used here.
#[repr(C)]
#[derive(Clone, Copy)]
union IfReqData {
    addr: libc::sockaddr_in,
    flags: libc::c_short,
    mtu: libc::c_int,
    pad: [u8; 24],
}

#[repr(C)]
#[derive(Clone, Copy)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    data: IfReqData,
}

/// `struct rtentry` from `<linux/route.h>`.
#[repr(C)]
struct RtEntry {
    rt_pad1: libc::c_ulong,
    rt_dst: libc::sockaddr_in,
    rt_gateway: libc::sockaddr_in,
    rt_genmask: libc::sockaddr_in,
    rt_flags: libc::c_ushort,
    rt_pad2: libc::c_short,
    rt_pad3: libc::c_ulong,
    rt_pad4: *mut libc::c_void,
    rt_metric: libc::c_short,
    rt_dev: *mut libc::c_char,
    rt_mtu: libc::c_ulong,
    rt_window: libc::c_ulong,
    rt_irtt: libc::c_ushort,
}

fn ifreq(name: &str) -> io::Result<IfReq> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad interface name {name:?}"),
        ));
    }
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        data: IfReqData { pad: [0; 24] },
    };
    for (dst, src) in req.name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    Ok(req)
}

fn sockaddr(ip: Ipv4Addr) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    }
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Open a TUN device (IFF_TUN | IFF_NO_PI | IFF_VNET_HDR, non-blocking, close-on-exec) named
/// `name` in the calling thread's network namespace. Every read and write carries a
/// virtio-net header (see `gso`); no offload is negotiated, so reads are whole packets.
pub(crate) fn open_tun(name: &str) -> io::Result<OwnedFd> {
    let mut req = ifreq(name)?;
    req.data.flags = IFF_TUN | IFF_NO_PI | IFF_VNET_HDR;
    // SAFETY: the path is a valid NUL-terminated string; open has no other preconditions.
    let fd = check(unsafe {
        libc::open(
            c"/dev/net/tun".as_ptr(),
            libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: `fd` was just returned by open and is owned by nobody else.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: TUNSETIFF reads a `struct ifreq`; `req` is one, alive for the call.
    check(unsafe { libc::ioctl(owned.as_raw_fd(), TUNSETIFF as _, &mut req as *mut IfReq) })?;
    Ok(owned)
}

/// An AF_INET datagram socket in the calling thread's namespace, used for interface ioctls.
pub(crate) struct IfSocket(OwnedFd);

impl std::fmt::Debug for IfSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("IfSocket")
            .field(&self.0.as_raw_fd())
            .finish()
    }
}

impl IfSocket {
    pub(crate) fn new() -> io::Result<Self> {
        // SAFETY: plain socket(2) call with constant arguments.
        let fd = check(unsafe {
            libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0)
        })?;
        // SAFETY: `fd` is fresh and owned by nobody else.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn ioctl(&self, request: libc::c_ulong, req: &mut IfReq) -> io::Result<()> {
        // SAFETY: every request used here (SIOC[GS]IF*) takes a `struct ifreq`, which `req` is.
        check(unsafe { libc::ioctl(self.0.as_raw_fd(), request as _, req as *mut IfReq) })?;
        Ok(())
    }

    /// Bring `dev` up.
    pub(crate) fn up(&self, dev: &str) -> io::Result<()> {
        let mut req = ifreq(dev)?;
        self.ioctl(SIOCGIFFLAGS, &mut req)?;
        // SAFETY: SIOCGIFFLAGS filled the `flags` member.
        let flags = unsafe { req.data.flags };
        req.data.flags = flags | IFF_UP;
        self.ioctl(SIOCSIFFLAGS, &mut req)
    }

    /// Set the MTU of `dev`.
    pub(crate) fn set_mtu(&self, dev: &str, mtu: i32) -> io::Result<()> {
        let mut req = ifreq(dev)?;
        req.data.mtu = mtu;
        self.ioctl(SIOCSIFMTU, &mut req)
    }

    /// Add an IPv4 address with a prefix length. `label` is `dev` for the first address and
    /// `dev:N` for the others (the ioctl interface's secondary addresses).
    pub(crate) fn add_addr(&self, label: &str, ip: Ipv4Addr, prefix_len: u8) -> io::Result<()> {
        let mut req = ifreq(label)?;
        req.data.addr = sockaddr(ip);
        self.ioctl(SIOCSIFADDR, &mut req)?;
        let mut req = ifreq(label)?;
        req.data.addr = sockaddr(mask(prefix_len));
        self.ioctl(SIOCSIFNETMASK, &mut req)
    }

    /// A route to `dst/len` out of `dev` (no gateway: TUN devices are point-to-point).
    pub(crate) fn add_route(&self, dst: Ipv4Addr, len: u8, dev: &str) -> io::Result<()> {
        let name = CString::new(dev)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in device name"))?;
        let mut rt = RtEntry {
            rt_pad1: 0,
            rt_dst: sockaddr(dst),
            rt_gateway: sockaddr(Ipv4Addr::UNSPECIFIED),
            rt_genmask: sockaddr(mask(len)),
            rt_flags: RTF_UP,
            rt_pad2: 0,
            rt_pad3: 0,
            rt_pad4: std::ptr::null_mut(),
            rt_metric: 0,
            rt_dev: name.as_ptr().cast_mut(),
            rt_mtu: 0,
            rt_window: 0,
            rt_irtt: 0,
        };
        // SAFETY: SIOCADDRT takes a `struct rtentry`; `rt` is one and `name` outlives the call
        // (the kernel only reads through `rt_dev`).
        check(unsafe { libc::ioctl(self.0.as_raw_fd(), SIOCADDRT as _, &mut rt as *mut RtEntry) })?;
        Ok(())
    }
}

/// The netmask of a prefix length.
pub(crate) fn mask(len: u8) -> Ipv4Addr {
    let len = u32::from(len.min(32));
    if len == 0 {
        Ipv4Addr::UNSPECIFIED
    } else {
        Ipv4Addr::from(u32::MAX << (32 - len))
    }
}

/// Read one packet; `Ok(None)` when nothing is queued.
pub(crate) fn read(fd: RawFd, buf: &mut [u8]) -> io::Result<Option<usize>> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the duration of the call.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(None),
            _ => Err(e),
        };
    }
    Ok(Some(n.unsigned_abs()))
}

/// Write one packet gathered from `parts`.
pub(crate) fn writev(fd: RawFd, parts: &[std::io::IoSlice<'_>]) -> io::Result<()> {
    let count = libc::c_int::try_from(parts.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "too many parts"))?;
    // SAFETY: `IoSlice` is ABI-compatible with `struct iovec` and every slice is valid for
    // reads of its length for the duration of the call.
    let n = unsafe { libc::writev(fd, parts.as_ptr().cast(), count) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Set the nice value of the calling thread (on Linux the nice value is per thread).
pub(crate) fn set_thread_nice(nice: i32) -> io::Result<()> {
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    let who = libc::id_t::try_from(tid).map_err(|_| io::Error::other("negative thread id"))?;
    // SAFETY: plain setpriority(2) call on our own thread id.
    check(unsafe { libc::setpriority(libc::PRIO_PROCESS, who, nice) })?;
    Ok(())
}

/// Put the calling thread in the SCHED_FIFO class at `priority` (1 = lowest real-time).
pub(crate) fn set_thread_fifo(priority: i32) -> io::Result<()> {
    let param = libc::sched_param {
        sched_priority: priority,
    };
    // SAFETY: `param` is a valid sched_param for the call; pid 0 is the calling thread.
    check(unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) })?;
    Ok(())
}

/// Put the calling thread back in the normal (SCHED_OTHER) class.
pub(crate) fn set_thread_normal() -> io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid sched_param for the call; pid 0 is the calling thread.
    check(unsafe { libc::sched_setscheduler(0, libc::SCHED_OTHER, &param) })?;
    Ok(())
}

/// A non-blocking eventfd: how other threads wake the packet loop.
pub(crate) fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: plain eventfd(2) call.
    let fd = check(unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) })?;
    // SAFETY: `fd` is fresh and owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Add one to an eventfd (wakes a poller).
pub(crate) fn eventfd_signal(fd: RawFd) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a live u64; failure (counter saturated) is harmless.
    let _ = unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
}

/// Reset an eventfd to zero.
pub(crate) fn eventfd_drain(fd: RawFd) {
    let mut v: u64 = 0;
    // SAFETY: reads at most 8 bytes into a live u64.
    let _ = unsafe { libc::read(fd, (&mut v as *mut u64).cast(), 8) };
}

/// An epoll instance with level-triggered readable interest; `u64` tokens.
pub(crate) struct Epoll(OwnedFd);

impl std::fmt::Debug for Epoll {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Epoll").field(&self.0.as_raw_fd()).finish()
    }
}

impl Epoll {
    pub(crate) fn new() -> io::Result<Self> {
        // SAFETY: plain epoll_create1(2) call.
        let fd = check(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        // SAFETY: `fd` is fresh and owned by nobody else.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    pub(crate) fn add(&self, fd: RawFd, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: token,
        };
        // SAFETY: `ev` is a valid epoll_event for the duration of the call.
        check(unsafe { libc::epoll_ctl(self.0.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) })?;
        Ok(())
    }

    /// Wait up to `timeout_ms` (-1: forever); fills `tokens`, returns how many are ready.
    pub(crate) fn wait(&self, events: &mut [libc::epoll_event], timeout_ms: i32) -> usize {
        let max = i32::try_from(events.len()).unwrap_or(i32::MAX);
        // SAFETY: `events` is valid for `max` entries for the duration of the call.
        let n =
            unsafe { libc::epoll_wait(self.0.as_raw_fd(), events.as_mut_ptr(), max, timeout_ms) };
        usize::try_from(n).unwrap_or(0)
    }
}

/// The token of a ready epoll event.
pub(crate) fn event_token(ev: &libc::epoll_event) -> u64 {
    ev.u64
}

/// A zeroed epoll event array entry.
pub(crate) fn empty_event() -> libc::epoll_event {
    libc::epoll_event { events: 0, u64: 0 }
}

/// Make `cmd` enter the network namespace bound at `path` (e.g. /run/netns/NAME) between fork
/// and exec. The namespace file is opened in the child, so a stale `Command` fails cleanly
/// (ENOENT) instead of entering a recycled descriptor.
pub(crate) fn enter_netns_on_exec(cmd: &mut Command, path: &str) -> io::Result<()> {
    let path = CString::new(path)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in namespace path"))?;
    // SAFETY: the hook runs in the forked child before exec and only calls open, setns and
    // close, which are async-signal-safe; it allocates nothing (the path was built before).
    unsafe {
        cmd.pre_exec(move || {
            let fd = libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            let r = libc::setns(fd, libc::CLONE_NEWNET);
            let err = io::Error::last_os_error();
            libc::close(fd);
            if r < 0 { Err(err) } else { Ok(()) }
        });
    }
    Ok(())
}

/// Effective capabilities of this process include CAP_NET_ADMIN and CAP_SYS_ADMIN.
pub(crate) fn has_admin_caps() -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    let Some(hex) = status.lines().find_map(|l| l.strip_prefix("CapEff:")) else {
        return false;
    };
    let Ok(caps) = u64::from_str_radix(hex.trim(), 16) else {
        return false;
    };
    const CAP_NET_ADMIN: u64 = 1 << 12;
    const CAP_SYS_ADMIN: u64 = 1 << 21;
    caps & CAP_NET_ADMIN != 0 && caps & CAP_SYS_ADMIN != 0
}
