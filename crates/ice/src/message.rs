//! ICE's STUN messages (RFC 8445 §7.1.1, §7.3.1.4 and §16): connectivity-check requests with
//! PRIORITY, USE-CANDIDATE, ICE-CONTROLLING / ICE-CONTROLLED, USERNAME, MESSAGE-INTEGRITY and
//! FINGERPRINT, and their responses. Built on the `stun` crate's allocation-free writer.

use std::net::SocketAddr;

use stun::credentials::{Integrity, Key, sign};
use stun::wire::{BINDING, Class, Message, MessageWriter, TransactionId, WireError, attr};

/// Room for the largest message we write (USERNAME can be 513 bytes).
const BUF: usize = 1024;

/// What a check request carries.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CheckRequest<'a> {
    pub(crate) id: TransactionId,
    /// `remote ufrag ":" local ufrag`.
    pub(crate) username: &'a str,
    pub(crate) priority: u32,
    pub(crate) controlling: bool,
    pub(crate) tie_breaker: u64,
    pub(crate) use_candidate: bool,
}

/// Encode a Binding request for a connectivity check, signed with the remote password.
pub(crate) fn check_request(req: &CheckRequest<'_>, key: &Key) -> Result<Vec<u8>, WireError> {
    let mut buf = [0u8; BUF];
    let mut w = MessageWriter::new(
        &mut buf,
        stun::wire::message_type(BINDING, Class::Request),
        &req.id,
    )?;
    w.attribute(attr::USERNAME, req.username.as_bytes())?;
    w.u32_attribute(attr::PRIORITY, req.priority)?;
    let role = if req.controlling {
        attr::ICE_CONTROLLING
    } else {
        attr::ICE_CONTROLLED
    };
    w.attribute(role, &req.tie_breaker.to_be_bytes())?;
    if req.use_candidate {
        w.attribute(attr::USE_CANDIDATE, &[])?;
    }
    sign(&mut w, key, Integrity::Sha1)?;
    w.fingerprint()?;
    let n = w.finish();
    Ok(buf.get(..n).unwrap_or_default().to_vec())
}

/// Encode a Binding request without credentials (server-reflexive gathering, RFC 8445 §5.1.1.2).
pub(crate) fn plain_binding(id: &TransactionId) -> Result<Vec<u8>, WireError> {
    let mut buf = [0u8; 64];
    let mut w = MessageWriter::new(
        &mut buf,
        stun::wire::message_type(BINDING, Class::Request),
        id,
    )?;
    w.fingerprint()?;
    let n = w.finish();
    Ok(buf.get(..n).unwrap_or_default().to_vec())
}

/// Encode a success response with XOR-MAPPED-ADDRESS, signed with the local password.
pub(crate) fn success(
    id: &TransactionId,
    mapped: SocketAddr,
    key: &Key,
) -> Result<Vec<u8>, WireError> {
    let mut buf = [0u8; 256];
    let mut w = MessageWriter::new(
        &mut buf,
        stun::wire::message_type(BINDING, Class::Success),
        id,
    )?;
    w.address(attr::XOR_MAPPED_ADDRESS, mapped)?;
    sign(&mut w, key, Integrity::Sha1)?;
    w.fingerprint()?;
    let n = w.finish();
    Ok(buf.get(..n).unwrap_or_default().to_vec())
}

/// Encode an error response; signed when `key` is given (487 is, 400/401 are not).
pub(crate) fn error(
    id: &TransactionId,
    code: u16,
    reason: &str,
    key: Option<&Key>,
) -> Result<Vec<u8>, WireError> {
    let mut buf = [0u8; 256];
    let mut w = MessageWriter::new(
        &mut buf,
        stun::wire::message_type(BINDING, Class::Error),
        id,
    )?;
    w.error_code(code, reason)?;
    if let Some(k) = key {
        sign(&mut w, k, Integrity::Sha1)?;
    }
    w.fingerprint()?;
    let n = w.finish();
    Ok(buf.get(..n).unwrap_or_default().to_vec())
}

/// The role attribute of a request: `Some((controlling, tie-breaker))`.
pub(crate) fn role(msg: &Message<'_>) -> Option<(bool, u64)> {
    let tb = |v: &[u8]| -> Option<u64> { Some(u64::from_be_bytes(v.try_into().ok()?)) };
    if let Some(a) = msg.get(attr::ICE_CONTROLLING) {
        return Some((true, tb(a.value)?));
    }
    if let Some(a) = msg.get(attr::ICE_CONTROLLED) {
        return Some((false, tb(a.value)?));
    }
    None
}

/// PRIORITY of a request.
pub(crate) fn priority(msg: &Message<'_>) -> Option<u32> {
    let a = msg.get(attr::PRIORITY)?;
    Some(u32::from_be_bytes(a.value.try_into().ok()?))
}

/// ERROR-CODE of an error response.
pub(crate) fn error_code(msg: &Message<'_>) -> Option<u16> {
    stun::credentials::error_code(msg).map(|(c, _)| c)
}

/// RFC 7983 demultiplexing: a first byte in 0..=3 is STUN.
pub fn is_stun(bytes: &[u8]) -> bool {
    matches!(bytes.first(), Some(0..=3))
}

#[cfg(test)]
mod tests {
    use super::*;
    use stun::credentials::verify;

    #[test]
    fn check_request_roundtrip() {
        let key = Key::short_term("0123456789abcdefghijkl").unwrap();
        let req = CheckRequest {
            id: [9; 12],
            username: "abcd:efgh",
            priority: 1_853_824_767,
            controlling: true,
            tie_breaker: 0x0102_0304_0506_0708,
            use_candidate: true,
        };
        let b = check_request(&req, &key).unwrap();
        let m = Message::parse(&b).unwrap();
        assert_eq!(m.check_fingerprint(), Ok(true));
        assert!(verify(&m, &key).is_ok());
        assert_eq!(priority(&m), Some(1_853_824_767));
        assert_eq!(role(&m), Some((true, 0x0102_0304_0506_0708)));
        assert!(m.get(attr::USE_CANDIDATE).is_some());
        assert_eq!(m.get(attr::USERNAME).unwrap().value, b"abcd:efgh");
        let other = Key::short_term("another-password-0123456").unwrap();
        assert!(verify(&m, &other).is_err());

        let r = error(&[1; 12], 487, "Role Conflict", Some(&key)).unwrap();
        let m = Message::parse(&r).unwrap();
        assert_eq!(error_code(&m), Some(487));
        assert!(verify(&m, &key).is_ok());
        assert!(is_stun(&r));
        assert!(!is_stun(&[0x80, 0]));
        assert!(!is_stun(&[]));
    }
}
