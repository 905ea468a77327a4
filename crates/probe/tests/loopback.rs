//! natprobe end to end on loopback, against turnd on 127.0.0.1 and 127.0.0.2 (real sockets,
//! real processes for natprobe). Without a NAT in between, every test must say so.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::{dead_udp_port, natprobe, natprobe_json, turnd};
use stun::wire::{BINDING, Class, Message, MessageWriter, attr, message_type};

/// The headline: turnd with two addresses, natprobe --json reports no NAT, endpoint-independent
/// mapping and filtering, exit 0.
#[test]
fn turnd_rfc5780_no_nat_endpoint_independent() {
    let server = turnd("127.0.0.1", Some("127.0.0.2"), false);
    let addr = server.primary().to_string();
    let (code, r) = natprobe_json(&["--fast", &addr]);
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(r["server"], addr.as_str());
    assert_eq!(r["nat"], false);
    assert_eq!(r["udp_blocked"], false);
    assert_eq!(r["rfc5780"], true);
    assert_eq!(r["mapping"], "endpoint-independent");
    assert_eq!(r["filtering"], "endpoint-independent");
    assert_eq!(r["legacy"], "open-internet");
    assert_eq!(r["certainty"]["mapping"], "firm");
    assert_eq!(r["certainty"]["filtering"], "firm");
    assert_eq!(r["server_check"]["status"], "suitable");
    assert_eq!(r["alg_detected"], false);
    assert_eq!(
        r["hairpinning"],
        serde_json::Value::Null,
        "no NAT: not applicable"
    );
    assert_eq!(r["port_preservation"], serde_json::Value::Null);
    assert_eq!(r["binding_lifetime_s"], serde_json::Value::Null);
    // "No NAT" compares against the real local address, never 0.0.0.0.
    let local: SocketAddr = r["local"].as_str().unwrap().parse().unwrap();
    assert_eq!(local.ip().to_string(), "127.0.0.1");
    assert_eq!(r["mapped"], r["local"]);
    // Every RFC 5780 test ran, and the changed-address answers came from where they were asked.
    let tests = r["tests"].as_array().unwrap();
    let find = |name: &str| tests.iter().find(|t| t["name"] == name).unwrap();
    let others: Vec<String> = server
        .addresses()
        .iter()
        .map(|(_, a)| a.to_string())
        .collect();
    assert_eq!(find("filtering-II")["from"], others[3].as_str(), "A2:P2");
    assert_eq!(find("filtering-III")["from"], others[1].as_str(), "A1:P2");
    assert_eq!(find("mapping-II")["from"], others[2].as_str(), "A2:P1");
    assert_eq!(find("mapping-III")["from"], others[3].as_str(), "A2:P2");
    assert_eq!(find("server-check")["from"], others[3].as_str());
    for t in tests {
        assert_eq!(t["outcome"], "response", "{t:#}");
        assert_eq!(t["response_origin"], t["from"], "{t:#}");
    }
}

#[test]
fn human_table_uses_rfc4787_words() {
    let server = turnd("127.0.0.1", Some("127.0.0.2"), false);
    let out = natprobe(&["--fast", &server.primary().to_string()]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for want in [
        "mapping",
        "endpoint-independent",
        "filtering",
        "open-internet",
        "NAT present",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
}

#[test]
fn tcp_mapping_tests() {
    let server = turnd("127.0.0.1", Some("127.0.0.2"), true);
    let (code, r) = natprobe_json(&["--fast", "--tcp", &server.primary().to_string()]);
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(r["transport"], "tcp");
    assert_eq!(r["nat"], false);
    assert_eq!(r["mapping"], "endpoint-independent");
    assert_eq!(r["certainty"]["mapping"], "firm");
    assert_eq!(
        r["filtering"], "unknown",
        "filtering is UDP-only (RFC 5780 §3)"
    );
    let names: Vec<&str> = r["tests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"tcp-mapping-II") && names.contains(&"tcp-mapping-III"));
}

#[test]
fn nothing_answers_exit_3_udp_blocked() {
    let port = dead_udp_port();
    let (code, r) = natprobe_json(&["--fast", &format!("127.0.0.1:{port}")]);
    assert_eq!(code, 3);
    assert_eq!(r["udp_blocked"], true);
    assert_eq!(r["legacy"], "udp-blocked");
    assert_eq!(r["mapping"], "unknown");
    let out = natprobe(&["--fast", &format!("127.0.0.1:{port}")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("UDP may be blocked") && err.contains("try --tcp"),
        "{err}"
    );
}

#[test]
fn plain_server_gives_no_filtering_and_says_why() {
    let server = turnd("127.0.0.1", None, false);
    let (code, r) = natprobe_json(&["--fast", &server.primary().to_string()]);
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(r["rfc5780"], false);
    assert_eq!(r["nat"], false);
    assert_eq!(
        r["mapping"], "endpoint-independent",
        "no NAT: nothing can vary"
    );
    assert_eq!(r["filtering"], "unknown");
    assert_eq!(r["server_check"]["status"], "no-other-address");
    let notes = r["notes"].to_string();
    assert!(notes.contains("does not implement RFC 5780"), "{notes}");
}

#[test]
fn several_servers_cross_check_and_names_resolve() {
    let rfc = turnd("127.0.0.1", Some("127.0.0.2"), false);
    let plain = turnd("127.0.0.3", None, false);
    let by_name = format!("localhost:{}", rfc.primary().port());
    let (code, r) = natprobe_json(&["--fast", "-4", &by_name, &plain.primary().to_string()]);
    assert_eq!(code, 0, "{r:#}");
    let servers = r["servers"].as_array().unwrap();
    assert_eq!(servers.len(), 2);
    assert_eq!(servers[0]["address"], rfc.primary().to_string().as_str());
    assert!(servers.iter().all(|s| s["answered"] == true));
    assert_eq!(servers[0]["mapped"], servers[1]["mapped"]);
    assert_eq!(r["rfc5780"], true);
    assert_eq!(r["mapping"], "endpoint-independent");
}

#[test]
fn bad_usage_exits_2() {
    assert_eq!(natprobe(&["-4", "-6", "x"]).status.code(), Some(2));
    assert_eq!(natprobe(&["--no-such-flag"]).status.code(), Some(2));
    assert_eq!(
        natprobe(&["--rto", "0", "127.0.0.1"]).status.code(),
        Some(2)
    );
}

/// How a [`FakeServer`] misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Announces OTHER-ADDRESS but answers every request from the socket it arrived on.
    IgnoresChangeRequest,
    /// Honours CHANGE-REQUEST but ignores RESPONSE-PORT (answers the source).
    IgnoresResponsePort,
    /// Answers everything with 400.
    ErrorsOnly,
}

/// A four-address RFC 5780 look-alike on 127.0.0.1/127.0.0.2 x P/P+1 that misbehaves in one way.
struct FakeServer {
    primary: SocketAddr,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl FakeServer {
    fn start(mode: Mode) -> FakeServer {
        Self::start_delayed(mode, std::time::Duration::ZERO)
    }

    /// Every answer leaves `delay` after its request arrived.
    fn start_delayed(mode: Mode, delay: std::time::Duration) -> FakeServer {
        // Sockets in the order A1:P1, A1:P2, A2:P1, A2:P2, so index ^ 1 flips the port and
        // index ^ 2 flips the IP.
        let (socks, p1) = loop {
            let a = UdpSocket::bind("127.0.0.1:0").unwrap();
            let p1 = a.local_addr().unwrap().port();
            let p2 = p1.wrapping_add(1);
            let rest = [("127.0.0.1", p2), ("127.0.0.2", p1), ("127.0.0.2", p2)]
                .map(|(ip, p)| UdpSocket::bind((ip, p)));
            if rest.iter().all(Result::is_ok) {
                let mut v = vec![a];
                v.extend(rest.into_iter().map(Result::unwrap));
                break (v, p1);
            }
        };
        for s in &socks {
            s.set_read_timeout(Some(std::time::Duration::from_millis(50)))
                .unwrap();
        }
        let socks = Arc::new(socks);
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..4)
            .map(|idx| {
                let (stop, socks) = (stop.clone(), socks.clone());
                std::thread::spawn(move || {
                    let mut buf = [0u8; 1500];
                    while !stop.load(Ordering::Relaxed) {
                        let Ok((n, src)) = socks[idx].recv_from(&mut buf) else {
                            continue;
                        };
                        let Ok(m) = Message::parse(&buf[..n]) else {
                            continue;
                        };
                        let flags = m
                            .get(attr::CHANGE_REQUEST)
                            .map_or(0, |a| a.value.get(3).copied().unwrap_or(0));
                        let from = match mode {
                            Mode::IgnoresResponsePort => {
                                idx ^ (usize::from(flags & 4 != 0) * 2)
                                    ^ usize::from(flags & 2 != 0)
                            }
                            _ => idx,
                        };
                        let me = socks[from].local_addr().unwrap();
                        let other = socks[idx ^ 3].local_addr().unwrap();
                        let id = m.transaction_id();
                        let mut out = [0u8; 256];
                        let len = if mode == Mode::ErrorsOnly {
                            let mut w = MessageWriter::new(
                                &mut out,
                                message_type(BINDING, Class::Error),
                                &id,
                            )
                            .unwrap();
                            w.error_code(400, "Bad Request").unwrap();
                            w.finish()
                        } else {
                            let mut w = MessageWriter::new(
                                &mut out,
                                message_type(BINDING, Class::Success),
                                &id,
                            )
                            .unwrap();
                            w.address(attr::XOR_MAPPED_ADDRESS, src).unwrap();
                            w.address(attr::RESPONSE_ORIGIN, me).unwrap();
                            w.address(attr::OTHER_ADDRESS, other).unwrap();
                            w.finish()
                        };
                        std::thread::sleep(delay);
                        let _ = socks[from].send_to(&out[..len], src);
                    }
                })
            })
            .collect();
        FakeServer {
            primary: format!("127.0.0.1:{p1}").parse().unwrap(),
            stop,
            threads,
        }
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[test]
fn server_ignoring_change_request_is_unsuitable() {
    let server = FakeServer::start(Mode::IgnoresChangeRequest);
    let (code, r) = natprobe_json(&["--fast", &server.primary.to_string()]);
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(
        r["server_check"]["status"], "change-request-ignored",
        "{r:#}"
    );
    assert_eq!(r["rfc5780"], false);
    assert_eq!(
        r["filtering"], "unknown",
        "never endpoint-independent from a liar"
    );
    assert_eq!(r["certainty"]["filtering"], "none");
    // The mapping tests do not need CHANGE-REQUEST: still firm.
    assert_eq!(r["mapping"], "endpoint-independent");
    assert!(r["notes"].to_string().contains("ignores CHANGE-REQUEST"));
}

#[test]
fn an_unsuitable_server_gives_way_to_the_next_rfc5780_server() {
    // The liar answers at once and is tried first; the honest one answers 150 ms late.
    let liar = FakeServer::start(Mode::IgnoresChangeRequest);
    let honest = FakeServer::start_delayed(
        Mode::IgnoresResponsePort,
        std::time::Duration::from_millis(150),
    );
    let (code, r) = natprobe_json(&[
        "--fast",
        &liar.primary.to_string(),
        &honest.primary.to_string(),
    ]);
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(r["server"], honest.primary.to_string().as_str(), "{r:#}");
    assert_eq!(r["rfc5780"], true);
    assert_eq!(r["server_check"]["status"], "suitable");
    assert_eq!(r["filtering"], "endpoint-independent");
    let notes = r["notes"].to_string();
    assert!(
        notes.contains("unsuitable for RFC 5780 tests (change-request-ignored)"),
        "{notes}"
    );
    // The liar's own RFC 5780 tests are kept in the report.
    let sent_to_liar = r["tests"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["destination"] == liar.primary.to_string().as_str())
        .count();
    assert!(sent_to_liar >= 2, "{r:#}");
}

#[test]
fn a_silent_server_does_not_stop_the_others() {
    let port = dead_udp_port();
    let honest = turnd("127.0.0.1", Some("127.0.0.2"), false);
    let (code, r) = natprobe_json(&[
        "--fast",
        &format!("127.0.0.1:{port}"),
        &honest.primary().to_string(),
    ]);
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(r["server"], honest.primary().to_string().as_str());
    assert_eq!(r["filtering"], "endpoint-independent");
    let servers = r["servers"].as_array().unwrap();
    assert_eq!(servers[0]["answered"], false);
    assert!(
        servers[0]["error"].as_str().unwrap().contains("no answer"),
        "{r:#}"
    );
}

#[test]
fn error_responses_only_are_not_udp_blocked() {
    let server = FakeServer::start(Mode::ErrorsOnly);
    let out = natprobe(&["--fast", "--json", &server.primary.to_string()]);
    assert_eq!(out.status.code(), Some(3));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["udp_blocked"], false, "{r:#}");
    assert_eq!(r["legacy"], "unknown");
    assert!(
        r["servers"][0]["error"]
            .as_str()
            .unwrap()
            .contains("error 400")
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("only with errors"));
}

#[test]
fn lifetime_on_loopback_is_a_lower_bound() {
    let server = turnd("127.0.0.1", Some("127.0.0.2"), false);
    let (code, r) = natprobe_json(&[
        "--fast",
        "--lifetime",
        "--lifetime-max",
        "1",
        &server.primary().to_string(),
    ]);
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(r["binding_lifetime_s"], 1.0, "{r:#}");
    assert_eq!(r["binding_lifetime_expired_s"], serde_json::Value::Null);
    assert!(r["notes"].to_string().contains("still alive after 1 s"));
}

#[test]
fn lifetime_is_not_measured_when_response_port_is_ignored() {
    let server = FakeServer::start(Mode::IgnoresResponsePort);
    let (code, r) = natprobe_json(&["--fast", "--lifetime", &server.primary.to_string()]);
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(r["server_check"]["status"], "suitable", "{r:#}");
    assert_eq!(r["binding_lifetime_s"], serde_json::Value::Null, "{r:#}");
    assert!(
        r["notes"]
            .to_string()
            .contains("binding lifetime not measured"),
        "{r:#}"
    );
}

#[test]
fn tcp_nothing_answers_is_about_tcp() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = natprobe(&["--fast", "--json", "--tcp", &format!("127.0.0.1:{port}")]);
    assert_eq!(out.status.code(), Some(3));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["udp_blocked"], false);
    assert_eq!(r["legacy"], "tcp-blocked");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("over TCP"), "{err}");
}
