//! Short-term and long-term credentials (RFC 8489 §9): key derivation, MESSAGE-INTEGRITY and
//! MESSAGE-INTEGRITY-SHA256, nonce/realm challenges, PASSWORD-ALGORITHM negotiation.
//!
//! Keys are derived through stun-rs, which applies the PRECIS OpaqueString profile RFC 8489
//! requires. Signing and verification run over our zero-copy [`wire`](crate::wire) view with a
//! streaming HMAC and a constant-time comparison, so a server can check a request without
//! allocating and without leaking timing.

use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::Sha256;
use stun_rs::{Algorithm, AlgorithmId, HMACKey};

use crate::wire::{HEADER_LEN, Message, MessageWriter, WireError, attr};

/// A password algorithm for the long-term mechanism (RFC 8489 §18.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PasswordAlgorithm {
    /// MD5(username ":" realm ":" password), the RFC 5389 default.
    Md5,
    /// SHA-256(username ":" realm ":" password), RFC 8489.
    Sha256,
}

impl PasswordAlgorithm {
    /// The IANA number used in PASSWORD-ALGORITHM(S).
    pub const fn number(self) -> u16 {
        match self {
            PasswordAlgorithm::Md5 => 0x0001,
            PasswordAlgorithm::Sha256 => 0x0002,
        }
    }

    /// Parse the IANA number.
    pub const fn from_number(n: u16) -> Option<Self> {
        match n {
            0x0001 => Some(PasswordAlgorithm::Md5),
            0x0002 => Some(PasswordAlgorithm::Sha256),
            _ => None,
        }
    }
}

/// Which integrity attribute(s) to put on a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Integrity {
    /// MESSAGE-INTEGRITY (HMAC-SHA1), understood by every STUN implementation.
    Sha1,
    /// MESSAGE-INTEGRITY-SHA256 only.
    Sha256,
    /// Both, SHA-1 first, for a peer whose support is unknown (RFC 8489 §9.1.1).
    Both,
}

/// Errors of the credential layer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    /// A username, realm or password that the OpaqueString profile rejects.
    #[error("credential text rejected by the OpaqueString profile: {0}")]
    BadText(String),
    /// The message carries no MESSAGE-INTEGRITY or MESSAGE-INTEGRITY-SHA256.
    #[error("message has no integrity attribute")]
    Missing,
    /// The integrity attribute does not match the key.
    #[error("message integrity check failed")]
    Mismatch,
    /// The server offered only password algorithms we do not implement.
    #[error("the server offers no password algorithm we support (MD5, SHA-256)")]
    NoCommonAlgorithm,
    /// The message is malformed.
    #[error(transparent)]
    Wire(#[from] WireError),
}

/// A derived HMAC key. Its `Debug` output never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct Key {
    bytes: Vec<u8>,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key(<{} bytes, redacted>)", self.bytes.len())
    }
}

impl Key {
    /// Short-term key: the OpaqueString-prepared password (RFC 8489 §9.1.1).
    pub fn short_term(password: &str) -> Result<Key, CredentialError> {
        let k = HMACKey::new_short_term(password)
            .map_err(|e| CredentialError::BadText(e.to_string()))?;
        Ok(Key {
            bytes: k.as_bytes().to_vec(),
        })
    }

    /// Long-term key: H(username ":" OpaqueString(realm) ":" OpaqueString(password))
    /// (RFC 8489 §9.2.2), H being MD5 or SHA-256.
    pub fn long_term(
        username: &str,
        realm: &str,
        password: &str,
        algorithm: PasswordAlgorithm,
    ) -> Result<Key, CredentialError> {
        let id = match algorithm {
            PasswordAlgorithm::Md5 => AlgorithmId::MD5,
            PasswordAlgorithm::Sha256 => AlgorithmId::SHA256,
        };
        let k = HMACKey::new_long_term(username, realm, password, Algorithm::from(id))
            .map_err(|e| CredentialError::BadText(e.to_string()))?;
        Ok(Key {
            bytes: k.as_bytes().to_vec(),
        })
    }

    /// Raw key bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// The header with its length field rewritten to end right after an integrity attribute of
/// `value_len` bytes starting at `offset` (RFC 8489 §14.5: the length covers the attribute
/// itself but nothing after it).
fn adjusted_header(msg: &[u8], offset: usize, value_len: usize) -> Option<[u8; HEADER_LEN]> {
    let mut h = [0u8; HEADER_LEN];
    h.copy_from_slice(msg.get(..HEADER_LEN)?);
    let len = u16::try_from(offset + 4 + value_len - HEADER_LEN).ok()?;
    h[2..4].copy_from_slice(&len.to_be_bytes());
    Some(h)
}

fn mac_sha1(key: &[u8], header: &[u8], body: &[u8]) -> Hmac<Sha1> {
    // HMAC accepts keys of any length: `new_from_slice` cannot fail for it.
    let mut m = <Hmac<Sha1> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    m.update(header);
    m.update(body);
    m
}

fn mac_sha256(key: &[u8], header: &[u8], body: &[u8]) -> Hmac<Sha256> {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    m.update(header);
    m.update(body);
    m
}

/// Which integrity attribute verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verified {
    /// MESSAGE-INTEGRITY-SHA256.
    Sha256,
    /// MESSAGE-INTEGRITY.
    Sha1,
}

/// Verify a parsed message against `key`.
///
/// RFC 8489 §9.1.4: if MESSAGE-INTEGRITY-SHA256 is present it is the one checked (a downgrade to
/// SHA-1 is refused); otherwise MESSAGE-INTEGRITY. Attributes after the integrity attribute
/// other than FINGERPRINT are ignored by the caller, as the RFC says.
pub fn verify(msg: &Message<'_>, key: &Key) -> Result<Verified, CredentialError> {
    let bytes = msg.as_bytes();
    if let Some(a) = msg.get(attr::MESSAGE_INTEGRITY_SHA256) {
        // Truncation to 16 bytes is allowed (RFC 8489 §14.6); shorter is not.
        if a.value.len() < 16 || a.value.len() > 32 || a.value.len() % 4 != 0 {
            return Err(WireError::BadAttributeLength {
                attr_type: a.attr_type,
            }
            .into());
        }
        let h = adjusted_header(bytes, a.offset, a.value.len()).ok_or(WireError::BufferFull)?;
        let body = bytes
            .get(HEADER_LEN..a.offset)
            .ok_or(WireError::BufferFull)?;
        return mac_sha256(&key.bytes, &h, body)
            .verify_truncated_left(a.value)
            .map(|()| Verified::Sha256)
            .map_err(|_| CredentialError::Mismatch);
    }
    if let Some(a) = msg.get(attr::MESSAGE_INTEGRITY) {
        if a.value.len() != 20 {
            return Err(WireError::BadAttributeLength {
                attr_type: a.attr_type,
            }
            .into());
        }
        let h = adjusted_header(bytes, a.offset, 20).ok_or(WireError::BufferFull)?;
        let body = bytes
            .get(HEADER_LEN..a.offset)
            .ok_or(WireError::BufferFull)?;
        return mac_sha1(&key.bytes, &h, body)
            .verify_slice(a.value)
            .map(|()| Verified::Sha1)
            .map_err(|_| CredentialError::Mismatch);
    }
    Err(CredentialError::Missing)
}

/// Append integrity attribute(s) computed with `key` to a message being written. Call it after
/// every other attribute and before [`MessageWriter::fingerprint`].
pub fn sign(w: &mut MessageWriter<'_>, key: &Key, integrity: Integrity) -> Result<(), WireError> {
    if matches!(integrity, Integrity::Sha1 | Integrity::Both) {
        append_mac::<20>(w, attr::MESSAGE_INTEGRITY, |h, body| {
            mac_sha1(&key.bytes, h, body).finalize().into_bytes().into()
        })?;
    }
    if matches!(integrity, Integrity::Sha256 | Integrity::Both) {
        append_mac::<32>(w, attr::MESSAGE_INTEGRITY_SHA256, |h, body| {
            mac_sha256(&key.bytes, h, body)
                .finalize()
                .into_bytes()
                .into()
        })?;
    }
    Ok(())
}

/// Append an `N`-byte integrity attribute whose value is `mac(adjusted header, body before it)`.
fn append_mac<const N: usize>(
    w: &mut MessageWriter<'_>,
    attr_type: u16,
    mac: impl FnOnce(&[u8], &[u8]) -> [u8; N],
) -> Result<(), WireError> {
    w.attribute(attr_type, &[0u8; N])?;
    let (msg, start) = w.last_attribute_mut();
    let h = adjusted_header(msg, start, N).ok_or(WireError::BufferFull)?;
    let body = msg.get(HEADER_LEN..start).ok_or(WireError::BufferFull)?;
    let tag = mac(&h, body);
    msg.get_mut(start + 4..start + 4 + N)
        .ok_or(WireError::BufferFull)?
        .copy_from_slice(&tag);
    Ok(())
}

/// What a server's 401 or 438 error response asks for (RFC 8489 §9.2.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// The error code (401 Unauthenticated or 438 Stale Nonce).
    pub code: u16,
    /// REALM.
    pub realm: String,
    /// NONCE.
    pub nonce: String,
    /// PASSWORD-ALGORITHMS offered, in the server's order; empty means MD5 only.
    pub algorithms: Vec<PasswordAlgorithm>,
    /// The raw PASSWORD-ALGORITHMS value, echoed back unchanged in the next request.
    pub algorithms_raw: Option<Vec<u8>>,
}

impl Challenge {
    /// Read a challenge from an error response; `None` if it is not one.
    pub fn from_message(msg: &Message<'_>) -> Option<Challenge> {
        let code = error_code(msg)?.0;
        if code != 401 && code != 438 {
            return None;
        }
        let realm = std::str::from_utf8(msg.get(attr::REALM)?.value).ok()?;
        let nonce = std::str::from_utf8(msg.get(attr::NONCE)?.value).ok()?;
        let raw = msg.get(attr::PASSWORD_ALGORITHMS).map(|a| a.value);
        let mut algorithms = vec![];
        if let Some(mut v) = raw {
            // Each entry: algorithm (2), parameter length (2), parameters padded to 4.
            while let (Some(n), Some(l)) = (be16(v, 0), be16(v, 2)) {
                if let Some(a) = PasswordAlgorithm::from_number(n) {
                    algorithms.push(a);
                }
                let skip = 4 + usize::from(l).div_ceil(4) * 4;
                v = v.get(skip..).unwrap_or(&[]);
            }
        }
        Some(Challenge {
            code,
            realm: realm.to_owned(),
            nonce: nonce.to_owned(),
            algorithms,
            algorithms_raw: raw.map(<[u8]>::to_vec),
        })
    }

    /// The strongest algorithm both sides support (SHA-256 over MD5). MD5 when the server
    /// sent no PASSWORD-ALGORITHMS (RFC 5389 servers); `None` when it offered only algorithms
    /// we do not know: guessing MD5 then would be a downgrade.
    pub fn preferred_algorithm(&self) -> Option<PasswordAlgorithm> {
        if self.algorithms.contains(&PasswordAlgorithm::Sha256) {
            Some(PasswordAlgorithm::Sha256)
        } else if self.algorithms.contains(&PasswordAlgorithm::Md5) || self.algorithms_raw.is_none()
        {
            Some(PasswordAlgorithm::Md5)
        } else {
            None
        }
    }

    /// Long-term credentials answering this challenge.
    pub fn credentials(&self, username: &str, password: &str) -> Result<LongTerm, CredentialError> {
        let algorithm = self
            .preferred_algorithm()
            .ok_or(CredentialError::NoCommonAlgorithm)?;
        Ok(LongTerm {
            username: username.to_owned(),
            password: password.to_owned(),
            realm: self.realm.clone(),
            nonce: self.nonce.clone(),
            algorithm,
            algorithms_raw: self.algorithms_raw.clone(),
        })
    }
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    let s = b.get(at..at + 2)?;
    Some(u16::from_be_bytes([s[0], s[1]]))
}

/// ERROR-CODE of a message: (code, reason).
pub fn error_code<'a>(msg: &Message<'a>) -> Option<(u16, &'a str)> {
    let v = msg.get(attr::ERROR_CODE)?.value;
    let class = u16::from(*v.get(2)? & 0x07);
    let number = u16::from(*v.get(3)?);
    let reason = std::str::from_utf8(v.get(4..)?).unwrap_or("");
    Some((class * 100 + number, reason))
}

/// Long-term credentials for one realm and nonce (RFC 8489 §9.2). `Debug` hides the password.
#[derive(Clone, PartialEq, Eq)]
pub struct LongTerm {
    /// USERNAME.
    pub username: String,
    /// The password (never sent).
    pub password: String,
    /// REALM from the server's challenge.
    pub realm: String,
    /// NONCE from the server's challenge.
    pub nonce: String,
    /// Chosen password algorithm.
    pub algorithm: PasswordAlgorithm,
    /// PASSWORD-ALGORITHMS as the server sent it, echoed when present (RFC 8489 §9.2.4).
    pub algorithms_raw: Option<Vec<u8>>,
}

impl LongTerm {
    /// The HMAC key.
    pub fn key(&self) -> Result<Key, CredentialError> {
        Key::long_term(&self.username, &self.realm, &self.password, self.algorithm)
    }

    /// Append USERNAME, REALM, NONCE, PASSWORD-ALGORITHMS/-ALGORITHM (when the server offered
    /// them) and the integrity attribute(s). Call after the request's own attributes.
    pub fn authenticate(&self, w: &mut MessageWriter<'_>) -> Result<(), CredentialError> {
        let key = self.key()?;
        w.attribute(attr::USERNAME, self.username.as_bytes())?;
        w.attribute(attr::REALM, self.realm.as_bytes())?;
        w.attribute(attr::NONCE, self.nonce.as_bytes())?;
        if let Some(raw) = &self.algorithms_raw {
            w.attribute(attr::PASSWORD_ALGORITHMS, raw)?;
            let mut v = [0u8; 4];
            v[..2].copy_from_slice(&self.algorithm.number().to_be_bytes());
            w.attribute(attr::PASSWORD_ALGORITHM, &v)?;
        }
        let integrity = match (&self.algorithms_raw, self.algorithm) {
            (Some(_), PasswordAlgorithm::Sha256) => Integrity::Sha256,
            _ => Integrity::Sha1,
        };
        sign(w, &key, integrity)?;
        Ok(())
    }
}

impl std::fmt::Debug for LongTerm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LongTerm")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("realm", &self.realm)
            .field("nonce", &self.nonce)
            .field("algorithm", &self.algorithm)
            .finish()
    }
}

/// Short-term credentials (RFC 8489 §9.1), as ICE uses them. `Debug` hides the password.
#[derive(Clone, PartialEq, Eq)]
pub struct ShortTerm {
    /// USERNAME.
    pub username: String,
    /// The password (never sent).
    pub password: String,
}

impl ShortTerm {
    /// Append USERNAME and integrity.
    pub fn authenticate(
        &self,
        w: &mut MessageWriter<'_>,
        integrity: Integrity,
    ) -> Result<(), CredentialError> {
        let key = Key::short_term(&self.password)?;
        w.attribute(attr::USERNAME, self.username.as_bytes())?;
        sign(w, &key, integrity)?;
        Ok(())
    }
}

impl std::fmt::Debug for ShortTerm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShortTerm")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}
