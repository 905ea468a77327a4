#![allow(clippy::unwrap_used)]
//! Our TURN client (the `turn::client` driver and `turnc`) against our own server (`turnd`),
//! over UDP, TCP and TLS, through channels and Send indications. The same checks run against
//! coturn in client_coturn.rs, so both servers are held to one standard.

mod client_support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use client_support::{
    DataPath, TestPki, TurncEchoPeer, assert_turnc_report, check_echo, tls_for, turnc_json,
};
use turn::client::Transport;

const USER: &str = "alice";
const PASS: &str = "wonderland";

/// turnd with TURN on loopback (loopback peers allowed), killed by PID on drop.
struct Turnd {
    child: Child,
    addr: SocketAddr,
    tls: SocketAddr,
}

impl Drop for Turnd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_turnd(pki: &TestPki, ports: &str) -> Turnd {
    let user = format!("{USER}:{PASS}");
    let (cert, key) = (
        pki.cert.display().to_string(),
        pki.key.display().to_string(),
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_turnd"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--user",
            &user,
            "--realm",
            "natscope.test",
        ])
        .args([
            "--allow-peer",
            "127.0.0.0/8",
            "--relay-ports",
            ports,
            "--rate-limit",
            "0",
        ])
        .args([
            "--tls-listen",
            "127.0.0.1:0",
            "--cert",
            &cert,
            "--key",
            &key,
        ])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let mut line = String::new();
        let _ = r.read_line(&mut line);
        let _ = tx.send(line);
        let _ = std::io::copy(&mut r, &mut std::io::sink());
    });
    let line = rx.recv_timeout(Duration::from_secs(15)).unwrap();
    let rest = line.trim().strip_prefix("turnd ready ").unwrap().to_owned();
    let mut addr = None;
    let mut tls = None;
    for tok in rest.split_whitespace() {
        if let Some(a) = tok.strip_prefix("tls=") {
            tls = Some(a.parse().unwrap());
        } else if !tok.contains('=') {
            addr.get_or_insert(tok.parse().unwrap());
        }
    }
    Turnd {
        child,
        addr: addr.unwrap(),
        tls: tls.unwrap(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_driver_echoes_through_turnd_on_every_transport() {
    let pki = TestPki::new();
    let turnd = start_turnd(&pki, "22000-22099");
    for transport in [Transport::Udp, Transport::Tcp] {
        for path in [DataPath::Channel, DataPath::SendIndication] {
            let r = check_echo(turnd.addr, transport, None, USER, PASS, path, 40).await;
            assert_eq!(r.echoed, 40, "{transport:?} {path:?}");
            assert!((22000..22100).contains(&r.relayed.port()), "{r:?}");
        }
    }
    for path in [DataPath::Channel, DataPath::SendIndication] {
        let tls = Some(tls_for(&pki));
        let r = check_echo(turnd.tls, Transport::Tls, tls, USER, PASS, path, 40).await;
        assert_eq!(r.echoed, 40, "TLS {path:?}");
    }
}

#[test]
fn turnc_json_against_turnd() {
    let pki = TestPki::new();
    let turnd = start_turnd(&pki, "22100-22199");
    let peer = TurncEchoPeer::start();
    let p = peer.addr.to_string();
    let common = ["-u", USER, "-p", PASS, "--peer", &p, "-n", "30", "-i", "2"];
    for (transport, mode) in [
        ("udp", "channel"),
        ("udp", "send-indication"),
        ("tcp", "channel"),
        ("tcp", "send-indication"),
    ] {
        let mut args = common.to_vec();
        args.extend(["-t", transport]);
        if mode == "send-indication" {
            args.push("--send-indication");
        }
        let (status, v) = turnc_json(turnd.addr, &args);
        assert_eq!(status, 0, "{v:#}");
        assert_turnc_report(&v, transport, mode, 30);
    }
    let ca = pki.ca.display().to_string();
    let mut args = common.to_vec();
    args.extend(["-t", "tls", "--ca", &ca]);
    let (status, v) = turnc_json(turnd.tls, &args);
    assert_eq!(status, 0, "{v:#}");
    assert_turnc_report(&v, "tls", "channel", 30);
    // A wrong password is refused with 401: exit status 3 and the code in the report.
    let (status, v) = turnc_json(
        turnd.addr,
        &["-u", USER, "-p", "nope", "--peer", &p, "-n", "1"],
    );
    assert_eq!(status, 3, "{v:#}");
    assert_eq!(v["error_code"], 401, "{v:#}");
}
