#![allow(clippy::unwrap_used)]
//! RFC 5769 test vectors (and the RFC 8489 Appendix B.1 SHA-256 vector), checked by our codec
//! and by stun-rs, so the two cannot drift apart.

use std::net::SocketAddr;

use stun::credentials::{self, Key, PasswordAlgorithm, Verified};
use stun::rfc5780::BindingResponse;
use stun::stun_rs::{DecoderContextBuilder, HMACKey, MessageDecoderBuilder};
use stun::wire::{BINDING, Class, Message, attr};

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// RFC 5769 §2.1 Sample Request (short-term, password "VOkJxbRl1RmTxUk/WvJxBt").
fn sample_request() -> Vec<u8> {
    hex("00 01 00 58 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
         80 22 00 10 53 54 55 4e 20 74 65 73 74 20 63 6c 69 65 6e 74
         00 24 00 04 6e 00 01 ff 80 29 00 08 93 2f f9 b1 51 26 3b 36
         00 06 00 09 65 76 74 6a 3a 68 36 76 59 20 20 20
         00 08 00 14 9a ea a7 0c bf d8 cb 56 78 1e f2 b5 b2 d3 f2 49 c1 b5 71 a2
         80 28 00 04 e5 7a 3b cf")
}

/// RFC 5769 §2.2 Sample IPv4 Response.
fn sample_ipv4_response() -> Vec<u8> {
    hex("01 01 00 3c 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
         80 22 00 0b 74 65 73 74 20 76 65 63 74 6f 72 20
         00 20 00 08 00 01 a1 47 e1 12 a6 43
         00 08 00 14 2b 91 f5 99 fd 9e 90 c3 8c 74 89 f9 2a f9 ba 53 f0 6b e7 d7
         80 28 00 04 c0 7d 4c 96")
}

/// RFC 5769 §2.3 Sample IPv6 Response.
fn sample_ipv6_response() -> Vec<u8> {
    hex("01 01 00 48 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
         80 22 00 0b 74 65 73 74 20 76 65 63 74 6f 72 20
         00 20 00 14 00 02 a1 47 01 13 a9 fa a5 d3 f1 79 bc 25 f4 b5 be d2 b9 d9
         00 08 00 14 a3 82 95 4e 4b e6 7b f1 17 84 c9 7c 82 92 c2 75 bf e3 ed 41
         80 28 00 04 c8 fb 0b 4c")
}

/// RFC 5769 §2.4 Sample Request with Long-Term Authentication.
fn sample_long_term_request() -> Vec<u8> {
    hex("00 01 00 60 21 12 a4 42 78 ad 34 33 c6 ad 72 c0 29 da 41 2e
         00 06 00 12 e3 83 9e e3 83 88 e3 83 aa e3 83 83 e3 82 af e3 82 b9 00 00
         00 15 00 1c 66 2f 2f 34 39 39 6b 39 35 34 64 36 4f 4c 33 34 6f 4c 39 46 53 54 76 79 36 34 73 41
         00 14 00 0b 65 78 61 6d 70 6c 65 2e 6f 72 67 00
         00 08 00 14 f6 70 24 65 6d d6 4a 3e 02 b8 e0 71 2e 85 c9 a2 8c a8 96 66")
}

/// RFC 8489 Appendix B.1 (with erratum 6268): USERHASH, PASSWORD-ALGORITHM SHA-256,
/// MESSAGE-INTEGRITY-SHA256.
fn rfc8489_b1_request() -> Vec<u8> {
    hex("00 01 00 90 21 12 a4 42 78 ad 34 33 c6 ad 72 c0 29 da 41 2e
         00 1e 00 20 4a 3c f3 8f ef 69 92 bd a9 52 c6 78 04 17 da 0f 24 81 94 15 56 9e 60 b2 05 c4 6e 41 40 7f 17 04
         00 15 00 29 6f 62 4d 61 74 4a 6f 73 32 41 41 41 43 66 2f 2f 34 39 39 6b 39 35 34 64 36 4f 4c 33 34 6f 4c 39 46 53 54 76 79 36 34 73 41 00 00 00
         00 14 00 0b 65 78 61 6d 70 6c 65 2e 6f 72 67 00
         00 1d 00 04 00 02 00 00
         00 1c 00 20 b5 c7 bf 00 5b 6c 52 a2 1c 51 c5 e8 92 f8 19 24 13 62 96 cb 92 7c 43 14 93 09 27 8c c6 51 8e 65")
}

const SHORT_TERM_PASSWORD: &str = "VOkJxbRl1RmTxUk/WvJxBt";
/// "マトリックス"
const LT_USER: &str = "\u{30DE}\u{30C8}\u{30EA}\u{30C3}\u{30AF}\u{30B9}";
/// RFC 5769 gives "The<U+00AD>M<U+00AA>tr<U+2168>"; its SASLprep/OpaqueString form is "TheMatrIX".
const LT_PASSWORD: &str = "TheMatrIX";

fn stun_rs_verifies(bytes: &[u8], key: HMACKey) -> bool {
    let ctx = DecoderContextBuilder::default()
        .with_key(key)
        .with_validation()
        .build();
    MessageDecoderBuilder::default()
        .with_context(ctx)
        .build()
        .decode(bytes)
        .is_ok()
}

#[test]
fn rfc5769_2_1_sample_request() {
    let bytes = sample_request();
    let m = Message::parse(&bytes).unwrap();
    assert_eq!((m.method(), m.class()), (BINDING, Class::Request));
    assert_eq!(m.check_fingerprint(), Ok(true));
    assert_eq!(m.get(attr::SOFTWARE).unwrap().value, b"STUN test client");
    assert_eq!(m.get(attr::USERNAME).unwrap().value, b"evtj:h6vY");
    let key = Key::short_term(SHORT_TERM_PASSWORD).unwrap();
    assert_eq!(credentials::verify(&m, &key), Ok(Verified::Sha1));
    let wrong = Key::short_term("wrong").unwrap();
    assert!(credentials::verify(&m, &wrong).is_err());
    assert!(stun_rs_verifies(
        &bytes,
        HMACKey::new_short_term(SHORT_TERM_PASSWORD).unwrap()
    ));
}

fn check_response(bytes: &[u8], expected: &str) {
    let m = Message::parse(bytes).unwrap();
    assert_eq!((m.method(), m.class()), (BINDING, Class::Success));
    let key = Key::short_term(SHORT_TERM_PASSWORD).unwrap();
    assert_eq!(credentials::verify(&m, &key), Ok(Verified::Sha1));
    let r = BindingResponse::parse(bytes).unwrap();
    let want: SocketAddr = expected.parse().unwrap();
    assert_eq!(r.xor_mapped, Some(want));
    assert_eq!(r.software.as_deref(), Some("test vector"));
    assert_eq!(r.fingerprint, Some(true));
    assert!(stun_rs_verifies(
        bytes,
        HMACKey::new_short_term(SHORT_TERM_PASSWORD).unwrap()
    ));
    // stun-rs reads the same address.
    let (msg, _) = MessageDecoderBuilder::default()
        .build()
        .decode(bytes)
        .unwrap();
    let x = msg
        .get::<stun::stun_rs::attributes::stun::XorMappedAddress>()
        .unwrap()
        .as_xor_mapped_address()
        .unwrap();
    assert_eq!(*x.socket_address(), want);
}

#[test]
fn rfc5769_2_2_sample_ipv4_response() {
    check_response(&sample_ipv4_response(), "192.0.2.1:32853");
}

#[test]
fn rfc5769_2_3_sample_ipv6_response() {
    check_response(
        &sample_ipv6_response(),
        "[2001:db8:1234:5678:11:2233:4455:6677]:32853",
    );
}

#[test]
fn rfc5769_2_4_long_term_md5() {
    let bytes = sample_long_term_request();
    let m = Message::parse(&bytes).unwrap();
    assert_eq!(m.get(attr::USERNAME).unwrap().value, LT_USER.as_bytes());
    assert_eq!(m.get(attr::REALM).unwrap().value, b"example.org");
    assert_eq!(
        m.get(attr::NONCE).unwrap().value,
        b"f//499k954d6OL34oL9FSTvy64sA"
    );
    let key = Key::long_term(LT_USER, "example.org", LT_PASSWORD, PasswordAlgorithm::Md5).unwrap();
    assert_eq!(credentials::verify(&m, &key), Ok(Verified::Sha1));
    let bad = Key::long_term(LT_USER, "example.com", LT_PASSWORD, PasswordAlgorithm::Md5).unwrap();
    assert_eq!(
        credentials::verify(&m, &bad),
        Err(credentials::CredentialError::Mismatch)
    );
}

#[test]
fn rfc8489_b1_long_term_sha256() {
    let bytes = rfc8489_b1_request();
    let m = Message::parse(&bytes).unwrap();
    let key = Key::long_term(
        LT_USER,
        "example.org",
        LT_PASSWORD,
        PasswordAlgorithm::Sha256,
    )
    .unwrap();
    assert_eq!(credentials::verify(&m, &key), Ok(Verified::Sha256));
    let md5 = Key::long_term(LT_USER, "example.org", LT_PASSWORD, PasswordAlgorithm::Md5).unwrap();
    assert!(credentials::verify(&m, &md5).is_err());
}

#[test]
fn every_single_byte_truncation_is_rejected_cleanly() {
    for v in [
        sample_request(),
        sample_ipv4_response(),
        sample_ipv6_response(),
        sample_long_term_request(),
        rfc8489_b1_request(),
    ] {
        for n in 0..v.len() {
            assert!(Message::parse(&v[..n]).is_err(), "prefix {n} accepted");
            assert!(BindingResponse::parse(&v[..n]).is_err());
        }
    }
}
