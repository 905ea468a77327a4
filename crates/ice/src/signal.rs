//! Copy-paste signaling for `icepeer`: a description as one line (base64 of its SDP
//! attribute lines), or, for trickle, the attribute lines themselves, one per line.
//!
//! Decoding takes untrusted text: size-capped, never panics.

use crate::sdp::{Description, SdpError};

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Largest blob accepted (a description with every candidate we accept is far smaller).
pub const MAX_BLOB: usize = 64 * 1024;

/// Standard base64 with padding (RFC 4648 §4).
pub fn base64_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk.first().copied().unwrap_or(0),
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                let idx = ((n >> (18 - 6 * i)) & 63) as usize;
                out.push(char::from(ALPHABET[idx]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decode standard base64 (padding optional, whitespace ignored). `None` on bad input.
pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    let mut acc = 0u32;
    let mut bits = 0u32;
    let mut pad = false;
    for c in s.bytes() {
        if c.is_ascii_whitespace() {
            continue;
        }
        if c == b'=' {
            pad = true;
            continue;
        }
        if pad {
            return None;
        }
        let v = ALPHABET.iter().position(|a| *a == c)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(((acc >> bits) & 0xFF) as u8);
        }
    }
    Some(out)
}

/// Why a blob was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignalError {
    /// Longer than [`MAX_BLOB`].
    #[error("signaling message too large")]
    TooLarge,
    /// Neither base64 nor SDP lines.
    #[error("signaling message is neither base64 nor SDP attribute lines")]
    Encoding,
    /// The SDP inside is wrong.
    #[error(transparent)]
    Sdp(#[from] SdpError),
}

/// One line for a whole description.
pub fn encode_blob(d: &Description) -> String {
    base64_encode(d.to_sdp().as_bytes())
}

/// Read a description from a blob, or from raw SDP attribute lines.
pub fn decode_blob(s: &str) -> Result<Description, SignalError> {
    if s.len() > MAX_BLOB {
        return Err(SignalError::TooLarge);
    }
    let t = s.trim();
    if t.contains("ice-ufrag:") {
        return Ok(Description::parse(t)?);
    }
    let bytes = base64_decode(t).ok_or(SignalError::Encoding)?;
    let text = String::from_utf8(bytes).map_err(|_| SignalError::Encoding)?;
    Ok(Description::parse(&text)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Candidate, CandidateKind};

    #[test]
    fn base64_rfc4648_vectors() {
        for (plain, enc) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64_encode(plain.as_bytes()), enc);
            assert_eq!(base64_decode(enc).unwrap(), plain.as_bytes());
        }
        assert_eq!(base64_decode("Zm9v YmFy\n").unwrap(), b"foobar");
        assert!(base64_decode("Zm9v!").is_none());
        assert!(base64_decode("Zg==Zg").is_none());
    }

    #[test]
    fn blob_roundtrip() {
        let d = Description {
            ufrag: "abcd".into(),
            pwd: "0123456789012345678901".into(),
            options: vec!["trickle".into()],
            lite: false,
            candidates: vec![Candidate::new(
                CandidateKind::Host,
                "127.0.0.1:5000".parse().unwrap(),
                2_130_706_431,
                "1",
                None,
            )],
            end_of_candidates: true,
        };
        let b = encode_blob(&d);
        assert!(!b.contains('\n'));
        assert_eq!(decode_blob(&b).unwrap(), d);
        assert_eq!(decode_blob(&d.to_sdp()).unwrap(), d);
        assert_eq!(decode_blob("!!!"), Err(SignalError::Encoding));
        assert_eq!(
            decode_blob(&"A".repeat(MAX_BLOB + 1)),
            Err(SignalError::TooLarge)
        );
    }
}
