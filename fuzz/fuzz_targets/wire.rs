//! Fuzz the STUN codec: `Message::parse` and every accessor, `BindingResponse::parse`,
//! `credentials::verify` with a fixed key, `Challenge::from_message`, the writer (re-encoding
//! and signing what was parsed), and a cross-check against stun-rs: whatever our parser
//! accepts, stun-rs's decoder must not panic on, and where both accept they must agree on the
//! header.

#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use stun::credentials::{Challenge, Integrity, Key, Verified, error_code, sign, verify};
use stun::rfc5780::BindingResponse;
use stun::stun_rs::{MessageClass, MessageDecoderBuilder};
use stun::wire::{
    BINDING, Class, HEADER_LEN, Message, MessageWriter, WireError, attr, decode_address, frame_len,
};

static KEY: LazyLock<Key> =
    LazyLock::new(|| Key::short_term("fuzz-password").expect("a plain ASCII password"));

fn class_of(c: MessageClass) -> Class {
    match c {
        MessageClass::Request => Class::Request,
        MessageClass::Indication => Class::Indication,
        MessageClass::SuccessResponse => Class::Success,
        MessageClass::ErrorResponse => Class::Error,
    }
}

fuzz_target!(|data: &[u8]| {
    let _ = frame_len(data);
    let m = match Message::parse(data) {
        Ok(m) => m,
        Err(e) => {
            assert!(
                BindingResponse::parse(data).is_err(),
                "BindingResponse accepted what Message rejected ({e})"
            );
            return;
        }
    };
    assert_eq!(frame_len(data), Some(data.len()));
    assert_eq!(m.as_bytes(), data);

    // Header accessors.
    let id = m.transaction_id();
    assert_eq!(&id[..], &data[8..HEADER_LEN]);
    let t = m.message_type();
    assert!(t < 0x4000);
    let (method, class) = (m.method(), m.class());
    assert_eq!(stun::wire::message_type(method, class), t);

    // Attributes: in order, in bounds, counted, and `get` finds the first of each type.
    let mut n = 0;
    let mut next_offset = HEADER_LEN;
    for a in m.attributes() {
        n += 1;
        assert_eq!(a.offset, next_offset, "attributes are contiguous");
        let end = a.offset + 4 + a.value.len();
        assert!(end <= data.len());
        assert_eq!(&data[a.offset + 4..end], a.value);
        next_offset = a.offset + 4 + a.value.len().div_ceil(4) * 4;
        let first = m
            .get(a.attr_type)
            .expect("get finds an attribute that is there");
        assert!(first.offset <= a.offset);
        let _ = m.address(a.attr_type);
        let _ = decode_address(a.value, a.attr_type, Some(&id));
        let _ = decode_address(a.value, a.attr_type, None);
    }
    assert_eq!(next_offset, data.len(), "attributes fill the message");
    assert_eq!(n, m.attribute_count());
    assert!(n <= stun::wire::MAX_ATTRIBUTES);

    let fingerprint = m.check_fingerprint();
    if fingerprint == Ok(true) {
        let last = m.attributes().last().expect("FINGERPRINT is an attribute");
        assert_eq!(last.attr_type, attr::FINGERPRINT);
    }
    let _ = error_code(&m);
    let _ = Challenge::from_message(&m).map(|c| c.preferred_algorithm());
    match verify(&m, &KEY) {
        Ok(Verified::Sha256) => assert!(m.get(attr::MESSAGE_INTEGRITY_SHA256).is_some()),
        Ok(Verified::Sha1) => assert!(m.get(attr::MESSAGE_INTEGRITY).is_some()),
        Err(_) => {}
    }
    match BindingResponse::parse(data) {
        Ok(r) => {
            assert_eq!(method, BINDING);
            assert_eq!(r.success, class == Class::Success);
            assert!(matches!(class, Class::Success | Class::Error));
            assert_eq!(
                r.fingerprint,
                Some(true).filter(|_| fingerprint == Ok(true))
            );
        }
        Err(_) => {
            // Fine: wrong method/class, bad address or bad FINGERPRINT.
        }
    }

    // Cross-check: stun-rs must not panic on anything we accept; where it accepts too, the
    // header must read the same.
    if let Ok((theirs, size)) = MessageDecoderBuilder::default().build().decode(data) {
        assert_eq!(size, data.len());
        assert_eq!(theirs.method().as_u16(), method);
        assert_eq!(class_of(theirs.class()), class);
        assert_eq!(theirs.transaction_id().as_bytes(), &id);
    }

    // Re-encode what we parsed: same size, same attributes.
    let mut buf = vec![0u8; data.len() + 128];
    let mut w = MessageWriter::new(&mut buf, t, &id).expect("header fits");
    for a in m.attributes() {
        w.attribute(a.attr_type, a.value).expect("re-encoding fits");
    }
    let len = w.finish();
    assert_eq!(len, data.len());
    let again = Message::parse(&buf[..len]).expect("re-encoded message parses");
    assert!(
        m.attributes()
            .map(|a| (a.attr_type, a.value))
            .eq(again.attributes().map(|a| (a.attr_type, a.value)))
    );

    // Sign the non-integrity attributes, add FINGERPRINT: it must verify, whatever came in.
    let mut buf = vec![0u8; data.len() + 128];
    let mut w = MessageWriter::new(&mut buf, t, &id).expect("header fits");
    let mut fits = true;
    for a in m.attributes().filter(|a| {
        !matches!(
            a.attr_type,
            attr::MESSAGE_INTEGRITY | attr::MESSAGE_INTEGRITY_SHA256 | attr::FINGERPRINT
        )
    }) {
        fits &= w.attribute(a.attr_type, a.value).is_ok();
    }
    fits &= sign(&mut w, &KEY, Integrity::Both).is_ok();
    fits &= w.fingerprint().is_ok();
    if fits {
        let len = w.finish();
        match Message::parse(&buf[..len]) {
            Ok(signed) => {
                assert_eq!(signed.check_fingerprint(), Ok(true));
                assert_eq!(verify(&signed, &KEY), Ok(Verified::Sha256));
            }
            // Three more attributes can push a full message over MAX_ATTRIBUTES.
            Err(e) => assert_eq!(e, WireError::TooManyAttributes),
        }
    }
});
