//! Interop: natprobe against coturn's `turnserver` in RFC 5780 mode on two loopback addresses,
//! and the same probe against turnd: the two servers must lead to the same conclusions.
//!
//! CI installs coturn from Debian (`.ci/run`). Without it this test fails, unless
//! NATSCOPE_SKIP_COTURN=1 says you knowingly run without it.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::{TcpListener, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{natprobe_json, turnd};
use stun::rfc5780::{BindingRequest, BindingResponse};

struct Coturn(Child);

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn coturn_available() -> bool {
    if Command::new("turnserver").arg("--help").output().is_ok() {
        return true;
    }
    if std::env::var("NATSCOPE_SKIP_COTURN").as_deref() == Ok("1") {
        eprintln!("coturn not installed; skipped because NATSCOPE_SKIP_COTURN=1");
        return false;
    }
    panic!(
        "coturn's turnserver is not installed: apt-get install coturn (or set NATSCOPE_SKIP_COTURN=1)"
    );
}

/// A port P with P and P+1 free for UDP and TCP on 127.0.0.1 and 127.0.0.2.
fn free_port_pair() -> u16 {
    for _ in 0..100 {
        let p = UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if p > 65000 {
            continue;
        }
        let ok = ["127.0.0.1", "127.0.0.2"].iter().all(|ip| {
            [p, p + 1].iter().all(|port| {
                UdpSocket::bind((*ip, *port)).is_ok() && TcpListener::bind((*ip, *port)).is_ok()
            })
        });
        if ok {
            return p;
        }
    }
    panic!("no free port pair");
}

fn start_coturn() -> (Coturn, u16) {
    let port = free_port_pair();
    let child = Command::new("turnserver")
        .args([
            "-n",
            "-L",
            "127.0.0.1",
            "-L",
            "127.0.0.2",
            &format!("--listening-port={port}"),
            &format!("--alt-listening-port={}", port + 1),
            "--no-tls",
            "--no-dtls",
            "--no-cli",
            "--log-file=stdout",
            "--simple-log",
            "--no-auth",
            "--relay-ip=127.0.0.1",
            "--min-port=49152",
            "--max-port=49200",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start turnserver");
    let guard = Coturn(child);
    // Ready when all four RFC 5780 addresses answer a Binding request (or fail after 10 s).
    let addrs = [
        format!("127.0.0.1:{port}"),
        format!("127.0.0.1:{}", port + 1),
        format!("127.0.0.2:{port}"),
        format!("127.0.0.2:{}", port + 1),
    ];
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let req = BindingRequest::default().encode(&[7; 12]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    for a in &addrs {
        let mut buf = [0u8; 512];
        loop {
            assert!(Instant::now() < deadline, "coturn never answered on {a}");
            sock.send_to(&req, a).unwrap();
            if let Ok((n, _)) = sock.recv_from(&mut buf) {
                if BindingResponse::parse(&buf[..n]).is_ok_and(|r| r.success) {
                    break;
                }
            }
        }
    }
    (guard, port)
}

#[test]
fn natprobe_agrees_on_coturn_and_turnd() {
    if !coturn_available() {
        return;
    }
    let (_coturn, port) = start_coturn();
    let addr = format!("127.0.0.1:{port}");
    let (code, c) = natprobe_json(&["--fast", &addr]);
    assert_eq!(code, 0, "{c:#}");
    assert_eq!(c["rfc5780"], true, "{c:#}");
    assert_eq!(c["server_check"]["status"], "suitable");
    assert_eq!(c["nat"], false);
    assert_eq!(c["mapping"], "endpoint-independent");
    assert_eq!(c["filtering"], "endpoint-independent");
    // coturn's answers came from where natprobe asked (RFC 5780 CHANGE-REQUEST honoured).
    let tests = c["tests"].as_array().unwrap();
    let from = |n: &str| tests.iter().find(|t| t["name"] == n).unwrap()["from"].clone();
    assert_eq!(
        from("filtering-II"),
        format!("127.0.0.2:{}", port + 1).as_str()
    );
    assert_eq!(
        from("filtering-III"),
        format!("127.0.0.1:{}", port + 1).as_str()
    );

    let ours = turnd("127.0.0.1", Some("127.0.0.2"), false);
    let (code, t) = natprobe_json(&["--fast", &ours.primary().to_string()]);
    assert_eq!(code, 0);
    for key in [
        "nat",
        "udp_blocked",
        "rfc5780",
        "mapping",
        "filtering",
        "legacy",
        "hairpinning",
        "port_preservation",
        "alg_detected",
    ] {
        assert_eq!(c[key], t[key], "coturn and turnd disagree on {key}");
    }
}

#[test]
fn natprobe_tcp_against_coturn() {
    if !coturn_available() {
        return;
    }
    let (_coturn, port) = start_coturn();
    let (code, c) = natprobe_json(&["--fast", "--tcp", &format!("127.0.0.1:{port}")]);
    assert_eq!(code, 0, "{c:#}");
    assert_eq!(c["transport"], "tcp");
    assert_eq!(c["nat"], false);
    assert_eq!(c["mapping"], "endpoint-independent");
}
