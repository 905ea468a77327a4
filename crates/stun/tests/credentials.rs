#![allow(clippy::unwrap_used)]
//! Signing and verification round trips, and the challenge/response flow of RFC 8489 §9.2.

use stun::credentials::{
    self, Challenge, CredentialError, Integrity, Key, LongTerm, PasswordAlgorithm, ShortTerm,
    Verified,
};
use stun::stun_rs::{DecoderContextBuilder, HMACKey, MessageDecoderBuilder};
use stun::wire::{BINDING, Class, Message, MessageWriter, attr, message_type};

fn signed(integrity: Integrity, fingerprint: bool) -> Vec<u8> {
    let mut buf = [0u8; 256];
    let mut w =
        MessageWriter::new(&mut buf, message_type(BINDING, Class::Request), &[4; 12]).unwrap();
    w.attribute(attr::SOFTWARE, b"natscope").unwrap();
    ShortTerm {
        username: "alice:bob".into(),
        password: "secret".into(),
    }
    .authenticate(&mut w, integrity)
    .unwrap();
    if fingerprint {
        w.fingerprint().unwrap();
    }
    let n = w.finish();
    buf[..n].to_vec()
}

#[test]
fn short_term_sign_verify_all_integrity_kinds() {
    let key = Key::short_term("secret").unwrap();
    for (i, want) in [
        (Integrity::Sha1, Verified::Sha1),
        (Integrity::Sha256, Verified::Sha256),
        (Integrity::Both, Verified::Sha256),
    ] {
        for fp in [false, true] {
            let bytes = signed(i, fp);
            let m = Message::parse(&bytes).unwrap();
            assert_eq!(credentials::verify(&m, &key), Ok(want));
            assert_eq!(m.check_fingerprint(), Ok(fp));
            // stun-rs agrees.
            let ctx = DecoderContextBuilder::default()
                .with_key(HMACKey::new_short_term("secret").unwrap())
                .with_validation()
                .build();
            let dec = MessageDecoderBuilder::default().with_context(ctx).build();
            assert!(dec.decode(&bytes).is_ok(), "stun-rs rejects {i:?} fp={fp}");
            // Tamper with SOFTWARE: verification fails.
            let mut bad = bytes.clone();
            bad[24] ^= 0x20;
            let m = Message::parse(&bad).unwrap();
            assert_eq!(
                credentials::verify(&m, &key),
                Err(CredentialError::Mismatch)
            );
        }
    }
}

#[test]
fn missing_integrity_is_an_error_not_a_pass() {
    let mut buf = [0u8; 64];
    let w = MessageWriter::new(&mut buf, 1, &[0; 12]).unwrap();
    let n = w.finish();
    let m = Message::parse(&buf[..n]).unwrap();
    let key = Key::short_term("x").unwrap();
    assert_eq!(credentials::verify(&m, &key), Err(CredentialError::Missing));
}

fn challenge(algorithms: Option<&[u8]>) -> Vec<u8> {
    let mut buf = [0u8; 256];
    let mut w =
        MessageWriter::new(&mut buf, message_type(BINDING, Class::Error), &[6; 12]).unwrap();
    w.error_code(401, "Unauthenticated").unwrap();
    w.attribute(attr::REALM, b"example.org").unwrap();
    w.attribute(attr::NONCE, b"obMatJos2AAACf//499k954d6OL34oL9FSTvy64sA")
        .unwrap();
    if let Some(a) = algorithms {
        w.attribute(attr::PASSWORD_ALGORITHMS, a).unwrap();
    }
    let n = w.finish();
    buf[..n].to_vec()
}

#[test]
fn long_term_challenge_prefers_sha256_and_echoes_algorithms() {
    // PASSWORD-ALGORITHMS: MD5 then SHA-256, no parameters.
    let algs = [0, 1, 0, 0, 0, 2, 0, 0];
    let bytes = challenge(Some(&algs));
    let c = Challenge::from_message(&Message::parse(&bytes).unwrap()).unwrap();
    assert_eq!(c.code, 401);
    assert_eq!(c.realm, "example.org");
    assert_eq!(
        c.algorithms,
        [PasswordAlgorithm::Md5, PasswordAlgorithm::Sha256]
    );
    let creds: LongTerm = c.credentials("user", "pass").unwrap();
    assert_eq!(creds.algorithm, PasswordAlgorithm::Sha256);

    let mut buf = [0u8; 512];
    let mut w =
        MessageWriter::new(&mut buf, message_type(0x003, Class::Request), &[7; 12]).unwrap();
    creds.authenticate(&mut w).unwrap();
    let n = w.finish();
    let m = Message::parse(&buf[..n]).unwrap();
    assert_eq!(m.get(attr::PASSWORD_ALGORITHMS).unwrap().value, algs);
    assert_eq!(m.get(attr::PASSWORD_ALGORITHM).unwrap().value, [0, 2, 0, 0]);
    let key = Key::long_term("user", "example.org", "pass", PasswordAlgorithm::Sha256).unwrap();
    assert_eq!(credentials::verify(&m, &key), Ok(Verified::Sha256));
}

#[test]
fn long_term_challenge_without_algorithms_uses_md5() {
    let bytes = challenge(None);
    let c = Challenge::from_message(&Message::parse(&bytes).unwrap()).unwrap();
    let creds = c.credentials("user", "pass").unwrap();
    assert_eq!(creds.algorithm, PasswordAlgorithm::Md5);
    let mut buf = [0u8; 512];
    let mut w =
        MessageWriter::new(&mut buf, message_type(0x003, Class::Request), &[7; 12]).unwrap();
    creds.authenticate(&mut w).unwrap();
    let n = w.finish();
    let m = Message::parse(&buf[..n]).unwrap();
    assert!(m.get(attr::PASSWORD_ALGORITHM).is_none());
    let key = Key::long_term("user", "example.org", "pass", PasswordAlgorithm::Md5).unwrap();
    assert_eq!(credentials::verify(&m, &key), Ok(Verified::Sha1));
    // stun-rs computes the same MD5 long-term key.
    let rs = HMACKey::new_long_term(
        "user",
        "example.org",
        "pass",
        stun::stun_rs::Algorithm::from(stun::stun_rs::AlgorithmId::MD5),
    )
    .unwrap();
    assert_eq!(rs.as_bytes(), key.as_bytes());
}

#[test]
fn a_success_response_is_no_challenge() {
    let mut buf = [0u8; 64];
    let w = MessageWriter::new(&mut buf, message_type(BINDING, Class::Success), &[0; 12]).unwrap();
    let n = w.finish();
    assert!(Challenge::from_message(&Message::parse(&buf[..n]).unwrap()).is_none());
}

#[test]
fn only_unknown_algorithms_is_refused_not_downgraded_to_md5() {
    // PASSWORD-ALGORITHMS with a single unassigned algorithm 0x0009.
    let bytes = challenge(Some(&[0, 9, 0, 0]));
    let c = Challenge::from_message(&Message::parse(&bytes).unwrap()).unwrap();
    assert_eq!(c.preferred_algorithm(), None);
    assert_eq!(
        c.credentials("user", "pass").unwrap_err(),
        CredentialError::NoCommonAlgorithm
    );
}

#[test]
fn debug_output_never_shows_secrets() {
    let key = Key::short_term("hunter2-secret").unwrap();
    assert!(!format!("{key:?}").contains("hunter2"));
    let st = ShortTerm {
        username: "u".into(),
        password: "hunter2-secret".into(),
    };
    assert!(!format!("{st:?}").contains("hunter2"));
    let c = Challenge::from_message(&Message::parse(&challenge(None)).unwrap()).unwrap();
    let lt = c.credentials("u", "hunter2-secret").unwrap();
    assert!(!format!("{lt:?}").contains("hunter2"));
}
