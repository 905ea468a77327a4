//! Namespaces: create (one `ip -batch` for all), configure from a thread that enters each one
//! (TUN devices, addresses, routes, sysctls by ioctl and /proc/sys; no process per host),
//! nftables for kernel NAT boxes, and removal: kill what runs inside, unmount, unlink.

use std::io::Write;
use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sched::CloneFlags;
use serde::Serialize;

use super::{FabricError, sys};

/// Where named network namespaces are bound (iproute2's convention).
pub const NETNS_DIR: &str = "/run/netns";

/// Run `ip -batch -` with these lines.
fn ip_batch(lines: &str) -> Result<(), FabricError> {
    let fail = |detail: String| FabricError::Command {
        command: "ip -batch -".into(),
        detail,
    };
    let mut child = Command::new("ip")
        .args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| FabricError::MissingTool {
            program: "ip",
            package: "iproute2",
            detail: e.to_string(),
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(lines.as_bytes())
            .map_err(|e| fail(e.to_string()))?;
    }
    let out = child.wait_with_output().map_err(|e| fail(e.to_string()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(fail(String::from_utf8_lossy(&out.stderr).trim().to_owned()))
    }
}

/// Create the namespaces (bind mounts under /run/netns, so `ip netns exec` works).
pub(crate) fn create_all(names: &[String]) -> Result<(), FabricError> {
    if names.is_empty() {
        return Ok(());
    }
    let mut lines = String::new();
    for n in names {
        lines.push_str("netns add ");
        lines.push_str(n);
        lines.push('\n');
    }
    ip_batch(&lines)
}

fn setup_err(ns: &str, what: &str) -> impl FnOnce(std::io::Error) -> FabricError {
    let (namespace, what) = (ns.to_owned(), what.to_owned());
    move |source| FabricError::Setup {
        namespace,
        what,
        source,
    }
}

/// Enter `ns` with the calling thread (which must be a helper thread: it stays there).
fn enter(ns: &str) -> Result<(), FabricError> {
    let f = std::fs::File::open(format!("{NETNS_DIR}/{ns}"))
        .map_err(setup_err(ns, "opening the namespace"))?;
    nix::sched::setns(f, CloneFlags::CLONE_NEWNET).map_err(|e| FabricError::Setup {
        namespace: ns.into(),
        what: "entering the namespace".into(),
        source: e.into(),
    })
}

/// Write a sysctl of the calling thread's namespace. Missing keys (e.g. no IPv6) are fine.
fn sysctl(ns: &str, key: &str, value: &str, required: bool) -> Result<(), FabricError> {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    match std::fs::write(&path, value) {
        Ok(()) => Ok(()),
        Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(setup_err(ns, &format!("setting {key}={value}"))(e)),
    }
}

fn common(ns: &str, s: &sys::IfSocket) -> Result<(), FabricError> {
    sysctl(ns, "net.ipv6.conf.all.disable_ipv6", "1", false)?;
    sysctl(ns, "net.ipv6.conf.default.disable_ipv6", "1", false)?;
    sysctl(ns, "net.ipv4.conf.all.rp_filter", "0", true)?;
    sysctl(ns, "net.ipv4.conf.default.rp_filter", "0", true)?;
    s.up("lo").map_err(setup_err(ns, "bringing lo up"))
}

fn tun(
    ns: &str,
    s: &sys::IfSocket,
    dev: &str,
    addrs: &[(Ipv4Addr, u8)],
) -> Result<OwnedFd, FabricError> {
    let fd = sys::open_tun(dev).map_err(setup_err(ns, &format!("creating TUN device {dev}")))?;
    s.set_mtu(dev, 1500)
        .map_err(setup_err(ns, "setting the MTU"))?;
    for (i, (ip, len)) in addrs.iter().enumerate() {
        let label = if i == 0 {
            dev.to_owned()
        } else {
            format!("{dev}:{i}")
        };
        s.add_addr(&label, *ip, *len)
            .map_err(setup_err(ns, &format!("adding {ip}/{len}")))?;
    }
    s.up(dev)
        .map_err(setup_err(ns, &format!("bringing {dev} up")))?;
    Ok(fd)
}

/// A host: `tun0` with `addrs`, default route through it. Call from a helper thread.
pub(crate) fn configure_host(ns: &str, addrs: &[(Ipv4Addr, u8)]) -> Result<OwnedFd, FabricError> {
    enter(ns)?;
    let s = sys::IfSocket::new().map_err(setup_err(ns, "opening a socket"))?;
    common(ns, &s)?;
    let fd = tun(ns, &s, "tun0", addrs)?;
    s.add_route(Ipv4Addr::UNSPECIFIED, 0, "tun0")
        .map_err(setup_err(ns, "adding the default route"))?;
    Ok(fd)
}

/// A kernel NAT router: `in0`, `out0`, forwarding, routes. Call from a helper thread.
pub(crate) fn configure_router(
    ns: &str,
    inside: (Ipv4Addr, u8),
    outside: (Ipv4Addr, u8),
    inside_routes: &[(Ipv4Addr, u8)],
) -> Result<(OwnedFd, OwnedFd), FabricError> {
    enter(ns)?;
    let s = sys::IfSocket::new().map_err(setup_err(ns, "opening a socket"))?;
    common(ns, &s)?;
    sysctl(ns, "net.ipv4.ip_forward", "1", true)?;
    let fin = tun(ns, &s, "in0", &[inside])?;
    let fout = tun(ns, &s, "out0", &[outside])?;
    for (dst, len) in inside_routes {
        let dst = Ipv4Addr::from(u32::from(*dst) & u32::from(sys::mask(*len)));
        match s.add_route(dst, *len, "in0") {
            Ok(()) => {}
            // The connected route of in0's own address already covers this prefix.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(setup_err(ns, &format!("adding route {dst}/{len}"))(e)),
        }
    }
    s.add_route(Ipv4Addr::UNSPECIFIED, 0, "out0")
        .map_err(setup_err(ns, "adding the default route"))?;
    sysctl(ns, "net.ipv4.conf.in0.rp_filter", "0", true)?;
    sysctl(ns, "net.ipv4.conf.out0.rp_filter", "0", true)?;
    Ok((fin, fout))
}

/// The nftables ruleset of a kernel NAT box.
pub(crate) fn masquerade_ruleset(random_fully: bool) -> String {
    let flags = if random_fully {
        " random,fully-random"
    } else {
        ""
    };
    format!(
        "table ip natscope {{\n  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n    oifname \"out0\" masquerade{flags}\n  }}\n}}\n"
    )
}

/// Load the masquerade ruleset into `ns`.
pub(crate) fn load_masquerade(ns: &str, random_fully: bool) -> Result<(), FabricError> {
    let mut cmd = Command::new("nft");
    cmd.args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    sys::enter_netns_on_exec(&mut cmd, &format!("{NETNS_DIR}/{ns}"))
        .map_err(setup_err(ns, "preparing nft"))?;
    let mut child = cmd.spawn().map_err(|e| FabricError::MissingTool {
        program: "nft",
        package: "nftables",
        detail: e.to_string(),
    })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(masquerade_ruleset(random_fully).as_bytes())
            .map_err(setup_err(ns, "writing to nft"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(setup_err(ns, "running nft"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(FabricError::Command {
            command: format!("nft -f - (in {ns})"),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

/// Identity (device, inode) of a named namespace.
pub(crate) fn ns_id(name: &str) -> Option<(u64, u64)> {
    std::fs::metadata(format!("{NETNS_DIR}/{name}"))
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

/// Identity of a process's network namespace.
pub(crate) fn pid_ns_id(pid: u32) -> Option<(u64, u64)> {
    std::fs::metadata(format!("/proc/{pid}/ns/net"))
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

/// Processes (other than this one) whose network namespace is one of `ids`: one pass over
/// /proc (what `ip netns pids` does per namespace).
pub(crate) fn pids_in_any(ids: &[(u64, u64)]) -> Vec<u32> {
    if ids.is_empty() {
        return Vec::new();
    }
    let me = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me && pid_ns_id(*pid).is_some_and(|id| ids.contains(&id)))
        .collect()
}

/// SIGKILL one process.
pub(crate) fn kill(pid: u32) {
    let Ok(raw) = i32::try_from(pid) else { return };
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(raw),
        nix::sys::signal::Signal::SIGKILL,
    );
}

/// Kill every process in the namespaces `names` and wait (up to two seconds) until none is
/// left; the killed PIDs.
pub(crate) fn kill_all_in(names: &[String]) -> Vec<u32> {
    let ids: Vec<_> = names.iter().filter_map(|n| ns_id(n)).collect();
    let mut killed = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let pids = pids_in_any(&ids);
        if pids.is_empty() || Instant::now() > deadline {
            return killed;
        }
        for pid in pids {
            kill(pid);
            if !killed.contains(&pid) {
                killed.push(pid);
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Delete a named namespace: detach its bind mount and remove the file (what `ip netns del`
/// does). A namespace that is already gone is not an error.
pub(crate) fn delete(name: &str) -> Result<(), FabricError> {
    let path = format!("{NETNS_DIR}/{name}");
    if std::fs::symlink_metadata(&path).is_err() {
        return Ok(());
    }
    match nix::mount::umount2(path.as_str(), nix::mount::MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => {
            return Err(FabricError::Io {
                what: format!("unmounting {path}"),
                source: e.into(),
            });
        }
    }
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(FabricError::Io {
            what: format!("removing {path}"),
            source: e,
        }),
    }
}

/// The owning PID encoded in a sim namespace name (`nsim<PID>x<N>-...`), if it is one.
pub(crate) fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("nsim")?;
    let (prefix, _) = rest.split_once('-')?;
    let (pid, n) = prefix.split_once('x')?;
    if pid.is_empty()
        || n.is_empty()
        || !n.bytes().all(|b| b.is_ascii_digit())
        || !pid.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    pid.parse().ok()
}

/// What [`clean`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CleanReport {
    /// Namespaces deleted.
    pub removed: Vec<String>,
    /// PIDs killed inside them.
    pub killed: Vec<u32>,
    /// Namespaces left alone because their sim process is alive (`only_dead`).
    pub kept_live: Vec<String>,
    /// Namespaces that could not be deleted, with the reason.
    pub failed: Vec<(String, String)>,
}

/// Remove what simulator runs left behind: every namespace in /run/netns named
/// `nsim<PID>x<N>-...` (with `only_dead`, only those whose PID is no longer running); kills
/// the processes inside first.
pub fn clean(only_dead: bool) -> Result<CleanReport, FabricError> {
    let mut report = CleanReport::default();
    let entries = match std::fs::read_dir(NETNS_DIR) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(report),
        Err(e) => {
            return Err(FabricError::Io {
                what: format!("listing {NETNS_DIR}"),
                source: e,
            });
        }
    };
    let mut names: Vec<(String, u32)> = entries
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            let pid = owner_pid(&name)?;
            Some((name, pid))
        })
        .collect();
    names.sort();
    for (name, pid) in names {
        if only_dead && std::path::Path::new(&format!("/proc/{pid}")).exists() {
            report.kept_live.push(name);
            continue;
        }
        report
            .killed
            .extend(kill_all_in(std::slice::from_ref(&name)));
        match delete(&name) {
            Ok(()) => report.removed.push(name),
            Err(e) => report.failed.push((name, e.to_string())),
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_pid_reads_only_sim_names() {
        assert_eq!(owner_pid("nsim1234x0-alice"), Some(1234));
        assert_eq!(owner_pid("nsim1234x17-h3"), Some(1234));
        assert_eq!(owner_pid("nsim1234-alice"), None);
        assert_eq!(owner_pid("nsimx0-a"), None);
        assert_eq!(owner_pid("nsim12x-a"), None);
        assert_eq!(owner_pid("knat123-0-c"), None);
        assert_eq!(owner_pid("nsim99999999999999999999x0-a"), None);
    }

    #[test]
    fn ruleset_masquerades_on_the_outside_device() {
        assert!(masquerade_ruleset(false).contains("oifname \"out0\" masquerade\n"));
        assert!(masquerade_ruleset(true).contains("masquerade random,fully-random"));
    }
}
