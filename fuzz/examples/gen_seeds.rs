//! Regenerate the checked-in seed corpora under `fuzz/seeds/`:
//!
//! ```sh
//! cargo run --manifest-path fuzz/Cargo.toml --example gen_seeds
//! ```
//!
//! `seeds/wire/*` are raw STUN messages; `seeds/responder/*` are the same requests behind the
//! responder target's 10 control bytes (see `fuzz_targets/responder.rs`).

use std::net::SocketAddr;
use std::path::Path;

use stun::credentials::{Integrity, Key, ShortTerm, sign};
use stun::rfc5780::BindingRequest;
use stun::wire::{BINDING, Class, MessageWriter, attr, message_type};

fn message(t: u16, f: impl FnOnce(&mut MessageWriter<'_>)) -> Vec<u8> {
    let mut buf = vec![0u8; 2048];
    let mut w = MessageWriter::new(&mut buf, t, &[0x5A; 12]).expect("header");
    f(&mut w);
    let n = w.finish();
    buf.truncate(n);
    buf
}

fn main() {
    let id = [0x5A; 12];
    let req = |r: BindingRequest| r.encode(&id).expect("encodes");
    let requests: Vec<(&str, Vec<u8>)> = vec![
        ("binding", req(BindingRequest::default())),
        (
            "change-ip-port",
            req(BindingRequest {
                change_ip: true,
                change_port: true,
                ..Default::default()
            }),
        ),
        (
            "response-port",
            req(BindingRequest {
                response_port: Some(40001),
                ..Default::default()
            }),
        ),
        (
            "padding-fingerprint",
            req(BindingRequest {
                padding: Some(13),
                software: Some("seed".into()),
                fingerprint: true,
                ..Default::default()
            }),
        ),
        (
            "unknown-attribute",
            message(message_type(BINDING, Class::Request), |w| {
                w.attribute(0x7ABC, b"?").expect("fits");
                w.attribute(0xC0DE, b"optional").expect("fits");
            }),
        ),
        (
            "allocate",
            message(message_type(0x003, Class::Request), |w| {
                w.u32_attribute(attr::REQUESTED_TRANSPORT, 17 << 24)
                    .expect("fits");
            }),
        ),
        (
            "short-term-signed",
            message(message_type(BINDING, Class::Request), |w| {
                let creds = ShortTerm {
                    username: "user".into(),
                    password: "fuzz-password".into(),
                };
                creds.authenticate(w, Integrity::Both).expect("signs");
                w.fingerprint().expect("fits");
            }),
        ),
    ];
    let src: SocketAddr = "192.0.2.99:40000".parse().expect("address");
    let responses: Vec<(&str, Vec<u8>)> = vec![
        (
            "success",
            message(message_type(BINDING, Class::Success), |w| {
                w.address(attr::XOR_MAPPED_ADDRESS, src).expect("fits");
                w.address(attr::MAPPED_ADDRESS, src).expect("fits");
                w.address(
                    attr::RESPONSE_ORIGIN,
                    "[2001:db8::1]:3478".parse().expect("v6"),
                )
                .expect("fits");
                w.address(attr::OTHER_ADDRESS, "192.0.2.2:3479".parse().expect("v4"))
                    .expect("fits");
                w.fingerprint().expect("fits");
            }),
        ),
        (
            "error-420",
            message(message_type(BINDING, Class::Error), |w| {
                w.error_code(420, "Unknown Attribute").expect("fits");
                w.unknown_attributes(&[0x7ABC, 0x0003, 0x1234])
                    .expect("fits");
            }),
        ),
        (
            "challenge-401",
            message(message_type(0x003, Class::Error), |w| {
                w.error_code(401, "Unauthenticated").expect("fits");
                w.attribute(attr::REALM, b"example.org").expect("fits");
                w.attribute(attr::NONCE, b"obMatJos2AAACf//499k954d6OL34oL9FSTvy64sA")
                    .expect("fits");
                w.attribute(attr::PASSWORD_ALGORITHMS, &[0, 2, 0, 0, 0, 1, 0, 0])
                    .expect("fits");
            }),
        ),
        (
            "long-term-signed",
            message(message_type(0x003, Class::Request), |w| {
                w.attribute(attr::USERNAME, b"user").expect("fits");
                w.attribute(attr::REALM, b"example.org").expect("fits");
                let key = Key::long_term(
                    "user",
                    "example.org",
                    "pass",
                    stun::credentials::PasswordAlgorithm::Sha256,
                )
                .expect("key");
                sign(w, &key, Integrity::Sha256).expect("signs");
            }),
        ),
    ];

    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    for dir in ["wire", "responder"] {
        std::fs::create_dir_all(root.join(dir)).expect("mkdir");
    }
    for (name, bytes) in requests.iter().chain(&responses) {
        std::fs::write(root.join("wire").join(name), bytes).expect("write");
    }
    // Control bytes: UDP, primary listener, RFC 5780 IPv4 config, amplification 3, 2048-byte
    // buffer, source 192.0.2.99:40000; one IPv6 TCP variant; one tight-amplification variant.
    let controls: [(&str, [u8; 10]); 3] = [
        ("", [0, 0, 0, 0, 192, 0, 2, 99, 0x9C, 0x40]),
        ("-v6-tcp", [0x29, 0, 0, 0, 0, 0, 0, 99, 0x9C, 0x40]),
        (
            "-amp1-small-buffer",
            [0x02, 0x04, 0x80, 0x40, 192, 0, 2, 99, 0x9C, 0x40],
        ),
    ];
    for (name, bytes) in &requests {
        for (suffix, control) in &controls {
            let mut seed = control.to_vec();
            seed.extend_from_slice(bytes);
            std::fs::write(root.join("responder").join(format!("{name}{suffix}")), seed)
                .expect("write");
        }
    }
    println!("seeds written under {}", root.display());
}
