#![allow(clippy::unwrap_used)]
//! The TURN client (driver and `turnc`) against Debian coturn (`turnserver -n`) on loopback,
//! over UDP, TCP and TLS, through channels and Send indications, with an echoing peer.
//!
//! coturn must be installed; without it these tests fail unless NATSCOPE_SKIP_COTURN=1.

mod client_support;

use std::net::{IpAddr, Ipv6Addr};

use client_support::{
    Coturn, DataPath, PASS, TestPki, TurncEchoPeer, USER, assert_turnc_report, check_echo,
    check_echo_family, tls_for, turnc, turnc_json,
};
use turn::client::Transport;
use turn::client::driver::{DriverError, TurnClient};
use turn::client::{AddressFamily, ClientError, Config};

#[tokio::test]
async fn udp_and_tcp_channels_and_send_indications_echo() {
    let Some(coturn) = Coturn::start(None, &[]) else {
        return;
    };
    for transport in [Transport::Udp, Transport::Tcp] {
        for path in [DataPath::Channel, DataPath::SendIndication] {
            let r = check_echo(coturn.addr, transport, None, USER, PASS, path, 40).await;
            // No NAT on loopback: the server saw our own address.
            assert_eq!(r.mapped, Some(r.local), "{transport:?} {path:?}");
            assert_eq!(r.relayed.ip(), coturn.addr.ip());
        }
    }
}

#[tokio::test]
async fn ipv6_relayed_address_via_requested_address_family() {
    // RFC 8656 §7.1: REQUESTED-ADDRESS-FAMILY IPv6 over an IPv4 connection to the server.
    let Some(coturn) = Coturn::start(None, &["--relay-ip=::1"]) else {
        return;
    };
    let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
    for (transport, path) in [
        (Transport::Udp, DataPath::Channel),
        (Transport::Tcp, DataPath::SendIndication),
    ] {
        let r = check_echo_family(
            coturn.addr,
            transport,
            None,
            USER,
            PASS,
            path,
            10,
            Some(AddressFamily::V6),
            v6,
        )
        .await;
        assert_eq!(r.relayed.ip(), v6);
    }
}

#[tokio::test]
async fn tls_with_a_ca_file_echoes() {
    let pki = TestPki::new();
    let Some(coturn) = Coturn::start(Some(&pki), &[]) else {
        return;
    };
    let tls_addr = coturn.tls_addr.unwrap();
    for path in [DataPath::Channel, DataPath::SendIndication] {
        let r = check_echo(
            tls_addr,
            Transport::Tls,
            Some(tls_for(&pki)),
            USER,
            PASS,
            path,
            25,
        )
        .await;
        assert_eq!(r.echoed, 25);
    }
}

#[tokio::test]
async fn tls_with_an_untrusted_certificate_is_refused() {
    let pki = TestPki::new();
    let other = TestPki::new();
    let Some(coturn) = Coturn::start(Some(&pki), &[]) else {
        return;
    };
    let config = Config::new(coturn.tls_addr.unwrap(), Transport::Tls, USER, PASS);
    let err = TurnClient::connect(config, Some(tls_for(&other)), 1)
        .await
        .unwrap_err();
    assert!(matches!(err, DriverError::Connect { .. }), "{err}");
    assert!(err.to_string().contains("certificate"), "{err}");
}

#[tokio::test]
async fn wrong_password_and_forbidden_peer_are_typed_errors() {
    // coturn answers 403 to permissions for denied peer addresses.
    let Some(coturn) = Coturn::start(None, &["--denied-peer-ip=127.0.0.99"]) else {
        return;
    };
    let config = Config::new(coturn.addr, Transport::Udp, USER, "wrong");
    let err = TurnClient::connect(config, None, 1).await.unwrap_err();
    assert!(
        matches!(err, DriverError::Turn(ClientError::Unauthenticated)),
        "{err}"
    );

    let config = Config::new(coturn.addr, Transport::Udp, USER, PASS);
    let turn = TurnClient::connect(config, None, 2).await.unwrap();
    let denied = "127.0.0.99:4000".parse().unwrap();
    let err = turn.bind_channel(denied).await.unwrap_err();
    assert!(
        matches!(err, DriverError::Turn(ClientError::Forbidden { .. })),
        "{err}"
    );
    let err = turn.create_permission(denied).await.unwrap_err();
    assert!(
        matches!(err, DriverError::Turn(ClientError::Forbidden { .. })),
        "{err}"
    );
    // The allocation survives a refused permission.
    turn.refresh().await.unwrap();
    turn.close().await.unwrap();
}

#[test]
fn turnc_json_over_udp_tcp_and_tls() {
    let pki = TestPki::new();
    let Some(coturn) = Coturn::start(Some(&pki), &[]) else {
        return;
    };
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
        let (status, v) = turnc_json(coturn.addr, &args);
        assert_eq!(status, 0, "{v:#}");
        assert_turnc_report(&v, transport, mode, 30);
        assert_eq!(v["mapped"], v["local"], "no NAT on loopback");
    }
    let tls = coturn.tls_addr.unwrap();
    let ca = pki.ca.display().to_string();
    let mut args = common.to_vec();
    args.extend(["-t", "tls", "--ca", &ca, "-s", "1001"]);
    let (status, v) = turnc_json(tls, &args);
    assert_eq!(status, 0, "{v:#}");
    assert_turnc_report(&v, "tls", "channel", 30);
    let mut args = common.to_vec();
    args.extend(["-t", "tls", "--insecure", "--send-indication"]);
    let (status, v) = turnc_json(tls, &args);
    assert_eq!(status, 0, "{v:#}");
    assert_turnc_report(&v, "tls", "send-indication", 30);
}

#[test]
fn turnc_exit_statuses() {
    let Some(coturn) = Coturn::start(None, &[]) else {
        return;
    };
    let peer = TurncEchoPeer::start();
    let p = peer.addr.to_string();
    // Refused allocation: 3, with the error code.
    let (status, v) = turnc_json(coturn.addr, &["-u", USER, "-p", "nope", "--peer", &p]);
    assert_eq!(status, 3, "{v:#}");
    assert_eq!(v["error_code"], 401, "{v:#}");
    assert_eq!(v["ok"], false);
    assert!(v["relayed"].is_null());
    // Unreachable server (nothing listens on the TCP port): 3.
    let dead = format!("127.0.0.1:{}", client_support::free_port());
    let out = turnc(&[&dead, "-t", "tcp", "-u", USER, "-p", PASS, "--peer", &p]);
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot reach"), "{err}");
    // Loss beyond --max-loss: 1. A peer that never answers loses everything.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let s = silent.local_addr().unwrap().to_string();
    let args = [
        "-u", USER, "-p", PASS, "--peer", &s, "-n", "3", "--wait", "300",
    ];
    let (status, v) = turnc_json(coturn.addr, &args);
    assert_eq!(status, 1, "{v:#}");
    assert_eq!((v["sent"].as_u64(), v["lost"].as_u64()), (Some(3), Some(3)));
    assert!(v["rtt_ms"].is_null());
    // ...but 0 when that much loss is allowed.
    let mut args = args.to_vec();
    args.extend(["--max-loss", "1"]);
    let (status, _) = turnc_json(coturn.addr, &args);
    assert_eq!(status, 0);
    // Usage errors: 2.
    for bad in [
        vec![coturn.addr.to_string(), "--peer".into(), p.clone()],
        vec![
            coturn.addr.to_string(),
            "-u".into(),
            "x".into(),
            "-p".into(),
            "y".into(),
        ],
        vec!["-t".into(), "carrier-pigeon".into()],
        vec![
            coturn.addr.to_string(),
            "-t".into(),
            "tls".into(),
            "-u".into(),
            "x".into(),
            "-p".into(),
            "y".into(),
            "--peer".into(),
            p.clone(),
        ],
    ] {
        let args: Vec<&str> = bad.iter().map(String::as_str).collect();
        assert_eq!(turnc(&args).status.code(), Some(2), "{bad:?}");
    }
}

#[tokio::test]
async fn stale_nonce_438_is_retried_against_coturn() {
    // With --stale-nonce=1 coturn's nonces expire after a second and it answers 438; every
    // request after that must be retried with the new nonce (RFC 8489 §9.2.5).
    let Some(coturn) = Coturn::start(None, &["--stale-nonce=1"]) else {
        return;
    };
    let peer = client_support::EchoPeer::start().await;
    let config = Config::new(coturn.addr, Transport::Udp, USER, PASS);
    let turn = TurnClient::connect(config, None, 3).await.unwrap();
    let mut events = turn.events();
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    turn.refresh().await.unwrap();
    let refreshed = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        loop {
            match events.recv().await.unwrap() {
                turn::client::Event::Refreshed { lifetime } => return lifetime,
                turn::client::Event::Failed { error, .. } => panic!("refresh failed: {error}"),
                _ => {}
            }
        }
    })
    .await
    .expect("a Refresh answer after the stale nonce");
    assert!(refreshed.as_secs() > 0);
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    turn.bind_channel(peer.addr).await.unwrap();
    turn.send_to(peer.addr, b"after 438").await.unwrap();
    let (from, data) = tokio::time::timeout(std::time::Duration::from_secs(2), turn.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((from, data.as_slice()), (peer.addr, &b"after 438"[..]));
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    turn.close().await.unwrap();
}
