//! Long-term credentials for the relay (RFC 8489 §9.2, RFC 8656 §5): a static user list, the
//! "REST API" ephemeral credentials WebRTC services hand out (username `expiry:user`, password
//! `base64(HMAC-SHA1(secret, username))`), and stateless nonces.
//!
//! Nonces carry no server state: `obMatJos2` + `AAAA` (the RFC 8489 §9.2 nonce cookie with no
//! security feature bits set: MD5 keys, no PASSWORD-ALGORITHMS, no USERHASH), then the expiry
//! (seconds since the authenticator's epoch, 8 hex digits) and the first 8 bytes of
//! HMAC-SHA1(nonce key, expiry ‖ client address) in hex. A nonce is only good for the client
//! address it was given to and until it expires (then 438 Stale Nonce). Nothing is stored before
//! a request authenticates.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha1::Sha1;
use stun::credentials::{Key, PasswordAlgorithm};

/// The RFC 8489 §9.2 nonce cookie followed by 24 zero feature bits in base64.
pub const NONCE_PREFIX: &str = "obMatJos2AAAA";
/// Length of every nonce this server issues.
pub const NONCE_LEN: usize = NONCE_PREFIX.len() + 8 + 16;

/// USERNAME must be shorter than this (RFC 8489 §14.3: "less than 513 bytes").
pub const MAX_USERNAME: usize = 513;
/// REALM and NONCE must be shorter than this (RFC 8489 §14.9, §14.10: "less than 763 bytes").
pub const MAX_REALM_NONCE: usize = 763;

/// Default nonce lifetime.
pub const DEFAULT_NONCE_LIFETIME: Duration = Duration::from_secs(600);

/// Credential settings.
#[derive(Clone)]
pub struct AuthConfig {
    /// REALM.
    pub realm: String,
    /// Static users: name and password.
    pub users: Vec<(String, String)>,
    /// Shared secret of the REST API ephemeral credentials, if enabled.
    pub rest_secret: Option<Vec<u8>>,
    /// Key of the nonce HMAC (random per server run; shared by every worker).
    pub nonce_key: [u8; 32],
    /// How long a nonce is good for.
    pub nonce_lifetime: Duration,
    /// The instant nonce timestamps count from.
    pub epoch: Instant,
    /// Unix time (seconds) at `epoch`, for REST credential expiry.
    pub unix_at_epoch: u64,
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig")
            .field("realm", &self.realm)
            .field("users", &self.users.len())
            .field("rest_secret", &self.rest_secret.is_some())
            .field("nonce_lifetime", &self.nonce_lifetime)
            .finish_non_exhaustive()
    }
}

/// Why a request did not authenticate; the code to answer with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// 401 without counting as a failure: the request carried no credentials at all (the first
    /// leg of the nonce dance).
    Challenge,
    /// 400: integrity without USERNAME, REALM or NONCE.
    BadRequest,
    /// 400: USERNAME of [`MAX_USERNAME`] bytes or more, REALM or NONCE of [`MAX_REALM_NONCE`]
    /// or more (RFC 8489 §14.3, §14.9, §14.10), refused before any cryptography.
    TooLong,
    /// 438: the nonce expired, was forged, or was issued to another client address.
    StaleNonce,
    /// 401: unknown user, expired REST credential or wrong integrity.
    Unauthorized,
}

impl AuthFailure {
    /// The error code.
    pub const fn code(self) -> u16 {
        match self {
            AuthFailure::Challenge | AuthFailure::Unauthorized => 401,
            AuthFailure::BadRequest | AuthFailure::TooLong => 400,
            AuthFailure::StaleNonce => 438,
        }
    }
}

/// Checks credentials. Immutable after construction: one is shared by every worker.
pub struct Authenticator {
    realm: String,
    /// Static users' MD5 long-term keys, derived once.
    users: HashMap<String, Key>,
    rest_secret: Option<Vec<u8>>,
    nonce_key: [u8; 32],
    nonce_lifetime: Duration,
    epoch: Instant,
    unix_at_epoch: u64,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("realm", &self.realm)
            .field("users", &self.users.len())
            .field("rest", &self.rest_secret.is_some())
            .finish_non_exhaustive()
    }
}

/// Errors building an [`Authenticator`].
#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    /// A username, realm or password the OpaqueString profile rejects.
    #[error("user {user:?}: {source}")]
    BadCredential {
        /// The user.
        user: String,
        /// Why.
        source: stun::credentials::CredentialError,
    },
    /// Neither users nor a REST secret.
    #[error("no credentials configured")]
    Empty,
}

impl Authenticator {
    /// Derive every static user's key.
    pub fn new(config: AuthConfig) -> Result<Self, AuthConfigError> {
        if config.users.is_empty() && config.rest_secret.is_none() {
            return Err(AuthConfigError::Empty);
        }
        let mut users = HashMap::new();
        for (name, password) in &config.users {
            let key = Key::long_term(name, &config.realm, password, PasswordAlgorithm::Md5)
                .map_err(|source| AuthConfigError::BadCredential {
                    user: name.clone(),
                    source,
                })?;
            users.insert(name.clone(), key);
        }
        Ok(Authenticator {
            realm: config.realm,
            users,
            rest_secret: config.rest_secret,
            nonce_key: config.nonce_key,
            nonce_lifetime: config.nonce_lifetime,
            epoch: config.epoch,
            unix_at_epoch: config.unix_at_epoch,
        })
    }

    /// REALM.
    pub fn realm(&self) -> &str {
        &self.realm
    }

    fn nonce_mac(&self, expiry: u32, client: SocketAddr) -> [u8; 8] {
        let mut m = <Hmac<Sha1> as Mac>::new_from_slice(&self.nonce_key)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        m.update(&expiry.to_be_bytes());
        match client {
            SocketAddr::V4(a) => m.update(&a.ip().octets()),
            SocketAddr::V6(a) => m.update(&a.ip().octets()),
        }
        m.update(&client.port().to_be_bytes());
        let tag = m.finalize().into_bytes();
        let mut out = [0u8; 8];
        out.copy_from_slice(tag.get(..8).unwrap_or(&[0; 8]));
        out
    }

    fn secs(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_secs()
    }

    /// A fresh nonce for `client`, valid for the nonce lifetime. Written into `buf`, which it
    /// returns as a string slice (no allocation).
    pub fn nonce<'b>(&self, now: Instant, client: SocketAddr, buf: &'b mut [u8; 64]) -> &'b str {
        let expiry = u32::try_from(self.secs(now) + self.nonce_lifetime.as_secs().max(1))
            .unwrap_or(u32::MAX);
        let mac = self.nonce_mac(expiry, client);
        let (prefix, rest) = buf.split_at_mut(NONCE_PREFIX.len());
        prefix.copy_from_slice(NONCE_PREFIX.as_bytes());
        hex(&expiry.to_be_bytes(), &mut rest[..8]);
        hex(&mac, &mut rest[8..24]);
        std::str::from_utf8(&buf[..NONCE_LEN]).unwrap_or("")
    }

    /// Is `nonce` one we issued to `client` that has not expired?
    pub fn nonce_valid(&self, now: Instant, client: SocketAddr, nonce: &[u8]) -> bool {
        if nonce.len() != NONCE_LEN || !nonce.starts_with(NONCE_PREFIX.as_bytes()) {
            return false;
        }
        let rest = &nonce[NONCE_PREFIX.len()..];
        let (mut e, mut m) = ([0u8; 4], [0u8; 8]);
        if !unhex(&rest[..8], &mut e) || !unhex(&rest[8..], &mut m) {
            return false;
        }
        let expiry = u32::from_be_bytes(e);
        // Constant-time enough: the MAC is over public data; compare all bytes regardless.
        let want = self.nonce_mac(expiry, client);
        let same = want.iter().zip(m).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
        same && u64::from(expiry) > self.secs(now)
    }

    /// The MD5 long-term key of `username`, if it is a configured user or a REST credential
    /// that has not expired at `now`.
    pub fn key(&self, now: Instant, username: &str) -> Option<Key> {
        if let Some(k) = self.users.get(username) {
            return Some(k.clone());
        }
        let secret = self.rest_secret.as_ref()?;
        if self.expired(now, username) {
            return None;
        }
        let password = rest_password(secret, username);
        Key::long_term(username, &self.realm, &password, PasswordAlgorithm::Md5).ok()
    }

    /// When the credential `username` stops being valid: `None` for static users (never),
    /// the REST timestamp for `expiry:user` names. A name that is neither is already expired.
    pub fn expiry(&self, username: &str) -> Option<Instant> {
        if self.users.contains_key(username) {
            return None;
        }
        // `expiry:user` (or just `expiry`), expiry in Unix seconds.
        let expiry = username
            .split(':')
            .next()
            .and_then(|s| s.parse::<u64>().ok())
            .filter(|_| self.rest_secret.is_some())
            .unwrap_or(0);
        let after_epoch = expiry.saturating_sub(self.unix_at_epoch);
        Some(
            self.epoch
                .checked_add(Duration::from_secs(after_epoch))
                .unwrap_or(self.epoch),
        )
    }

    /// Has the credential `username` expired at `now`? Checked on every authenticated request,
    /// also when the key comes from the allocation (RFC 8656 §5: a credential that is no longer
    /// valid gets 401 on Refresh, CreatePermission and ChannelBind too).
    pub fn expired(&self, now: Instant, username: &str) -> bool {
        self.expiry(username).is_some_and(|e| now >= e)
    }
}

/// The REST API password of `username`: base64(HMAC-SHA1(secret, username)).
pub fn rest_password(secret: &[u8], username: &str) -> String {
    let mut m = <Hmac<Sha1> as Mac>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    m.update(username.as_bytes());
    base64(&m.finalize().into_bytes())
}

fn hex(bytes: &[u8], out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (b, o) in bytes.iter().zip(out.chunks_exact_mut(2)) {
        o[0] = DIGITS[usize::from(b >> 4)];
        o[1] = DIGITS[usize::from(b & 0xF)];
    }
}

fn unhex(text: &[u8], out: &mut [u8]) -> bool {
    fn digit(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    if text.len() != out.len() * 2 {
        return false;
    }
    for (pair, o) in text.chunks_exact(2).zip(out.iter_mut()) {
        match (digit(pair[0]), digit(pair[1])) {
            (Some(h), Some(l)) => *o = h << 4 | l,
            _ => return false,
        }
    }
    true
}

/// Standard base64 with padding (RFC 4648 §4).
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(now: Instant) -> Authenticator {
        Authenticator::new(AuthConfig {
            realm: "example.org".into(),
            users: vec![("alice".into(), "secret".into())],
            rest_secret: Some(b"north".to_vec()),
            nonce_key: [7; 32],
            nonce_lifetime: Duration::from_secs(60),
            epoch: now,
            unix_at_epoch: 1_700_000_000,
        })
        .unwrap()
    }

    #[test]
    fn base64_rfc4648_vectors() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn rest_password_matches_the_coturn_formula() {
        // HMAC-SHA1("north", "1700000100:bob"), computed independently with openssl:
        // echo -n 1700000100:bob | openssl dgst -sha1 -hmac north -binary | base64
        assert_eq!(
            rest_password(b"north", "1700000100:bob"),
            "ygmnYZmFPeq7eD4kaOay8IVxY5A="
        );
    }

    #[test]
    fn nonces_expire_and_are_bound_to_the_client() {
        let t0 = Instant::now();
        let a = auth(t0);
        let c1: SocketAddr = "192.0.2.1:5000".parse().unwrap();
        let c2: SocketAddr = "192.0.2.1:5001".parse().unwrap();
        let mut buf = [0u8; 64];
        let n = a.nonce(t0, c1, &mut buf).to_owned();
        assert!(n.starts_with("obMatJos2AAAA"), "{n}");
        assert!(a.nonce_valid(t0 + Duration::from_secs(59), c1, n.as_bytes()));
        assert!(!a.nonce_valid(t0 + Duration::from_secs(60), c1, n.as_bytes()));
        assert!(!a.nonce_valid(t0, c2, n.as_bytes()), "another client");
        let mut forged = n.clone().into_bytes();
        forged[14] = if forged[14] == b'f' { b'e' } else { b'f' };
        assert!(!a.nonce_valid(t0, c1, &forged), "extended expiry");
        assert!(!a.nonce_valid(t0, c1, b"obMatJos2AAAA"));
        assert!(!a.nonce_valid(t0, c1, &[0xFF; 37]));
    }

    #[test]
    fn rest_credentials_expire() {
        let t0 = Instant::now();
        let a = auth(t0);
        assert!(a.key(t0, "1700000100:bob").is_some());
        assert!(
            a.key(t0 + Duration::from_secs(100), "1700000100:bob")
                .is_none()
        );
        assert!(a.key(t0, "1600000000:bob").is_none());
        assert!(a.key(t0, "bob").is_none());
        assert!(a.key(t0, "alice").is_some());
        assert_eq!(a.expiry("alice"), None, "static users do not expire");
        assert_eq!(
            a.expiry("1700000100:bob"),
            Some(t0 + Duration::from_secs(100))
        );
        assert!(!a.expired(t0 + Duration::from_secs(99), "1700000100:bob"));
        assert!(a.expired(t0 + Duration::from_secs(100), "1700000100:bob"));
        assert!(a.expired(t0, "bob"), "not a REST name");
        assert!(a.expired(t0, "1600000000:bob"));
        // The key is the MD5 long-term key over the REST password.
        let pw = rest_password(b"north", "1700000100:bob");
        let k = Key::long_term("1700000100:bob", "example.org", &pw, PasswordAlgorithm::Md5);
        assert_eq!(a.key(t0, "1700000100:bob"), k.ok());
    }
}
