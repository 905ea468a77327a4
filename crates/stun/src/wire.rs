//! Zero-copy, bounds-checked STUN message view and allocation-free writer (RFC 8489 §5, §14).
//!
//! The rule of this module: untrusted bytes enter only through [`Message::parse`], which checks
//! the header, the length field and every attribute header before it returns. After it succeeds
//! no accessor can panic or read out of bounds: every later access goes through `get` on slices
//! whose bounds were already proven, and still returns an error rather than indexing.
//!
//! This is the hot path of `turnd`: parsing a Binding request and writing its response allocate
//! nothing. Richer decoding (credentials, every registered attribute) goes through `stun-rs`; the
//! two are cross-checked in the tests.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Length of the fixed STUN header.
pub const HEADER_LEN: usize = 20;
/// The magic cookie of RFC 8489 §5.
pub const MAGIC_COOKIE: u32 = 0x2112_A442;
/// The value XORed into the CRC-32 of FINGERPRINT (RFC 8489 §14.7).
pub const FINGERPRINT_XOR: u32 = 0x5354_554E;
/// Largest number of attributes a parsed message may carry. A legitimate message has a dozen;
/// a hostile one can pack 16 000 empty attributes into 64 KiB.
pub const MAX_ATTRIBUTES: usize = 64;

/// A 96-bit transaction ID.
pub type TransactionId = [u8; 12];

/// Attribute type numbers (IANA "STUN Attributes" registry).
#[allow(missing_docs)]
pub mod attr {
    pub const MAPPED_ADDRESS: u16 = 0x0001;
    pub const CHANGE_REQUEST: u16 = 0x0003;
    pub const USERNAME: u16 = 0x0006;
    pub const MESSAGE_INTEGRITY: u16 = 0x0008;
    pub const ERROR_CODE: u16 = 0x0009;
    pub const UNKNOWN_ATTRIBUTES: u16 = 0x000A;
    pub const CHANNEL_NUMBER: u16 = 0x000C;
    pub const LIFETIME: u16 = 0x000D;
    pub const XOR_PEER_ADDRESS: u16 = 0x0012;
    pub const DATA: u16 = 0x0013;
    pub const REALM: u16 = 0x0014;
    pub const NONCE: u16 = 0x0015;
    pub const XOR_RELAYED_ADDRESS: u16 = 0x0016;
    pub const REQUESTED_ADDRESS_FAMILY: u16 = 0x0017;
    pub const EVEN_PORT: u16 = 0x0018;
    pub const REQUESTED_TRANSPORT: u16 = 0x0019;
    pub const DONT_FRAGMENT: u16 = 0x001A;
    pub const MESSAGE_INTEGRITY_SHA256: u16 = 0x001C;
    pub const PASSWORD_ALGORITHM: u16 = 0x001D;
    pub const USERHASH: u16 = 0x001E;
    pub const XOR_MAPPED_ADDRESS: u16 = 0x0020;
    pub const RESERVATION_TOKEN: u16 = 0x0022;
    pub const PRIORITY: u16 = 0x0024;
    pub const USE_CANDIDATE: u16 = 0x0025;
    pub const PADDING: u16 = 0x0026;
    pub const RESPONSE_PORT: u16 = 0x0027;
    pub const PASSWORD_ALGORITHMS: u16 = 0x8002;
    pub const ALTERNATE_DOMAIN: u16 = 0x8003;
    pub const SOFTWARE: u16 = 0x8022;
    pub const ALTERNATE_SERVER: u16 = 0x8023;
    pub const FINGERPRINT: u16 = 0x8028;
    pub const ICE_CONTROLLED: u16 = 0x8029;
    pub const ICE_CONTROLLING: u16 = 0x802A;
    pub const RESPONSE_ORIGIN: u16 = 0x802B;
    pub const OTHER_ADDRESS: u16 = 0x802C;

    /// Attributes in 0x0000-0x7FFF must be understood or the request rejected (RFC 8489 §14).
    pub const fn is_comprehension_required(t: u16) -> bool {
        t < 0x8000
    }
}

/// CHANGE-REQUEST flag: send the response from the alternate IP address (RFC 5780 §7.2).
pub const CHANGE_IP: u32 = 0x4;
/// CHANGE-REQUEST flag: send the response from the alternate port (RFC 5780 §7.2).
pub const CHANGE_PORT: u32 = 0x2;

/// STUN message class (RFC 8489 §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    /// A request.
    Request,
    /// An indication.
    Indication,
    /// A success response.
    Success,
    /// An error response.
    Error,
}

/// The Binding method.
pub const BINDING: u16 = 0x001;

/// Why bytes are not an acceptable STUN message. Small and `Copy`: bad input never allocates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Fewer than 20 bytes, or fewer than the length field promises.
    #[error("message truncated: {have} bytes, need {need}")]
    Truncated {
        /// Bytes present.
        have: usize,
        /// Bytes required.
        need: usize,
    },
    /// More bytes than the length field says (a datagram carries exactly one message).
    #[error("{extra} trailing bytes after the message")]
    TrailingBytes {
        /// Bytes past the end of the message.
        extra: usize,
    },
    /// The two most significant bits are not zero: not STUN (maybe RTP, DTLS or ChannelData).
    #[error("not a STUN message (leading bits set)")]
    NotStun,
    /// The magic cookie is wrong (an RFC 3489 client or not STUN).
    #[error("wrong magic cookie")]
    BadCookie,
    /// The length field is not a multiple of four.
    #[error("message length {0} is not a multiple of 4")]
    Unaligned(u16),
    /// An attribute's length runs past the end of the message.
    #[error("attribute 0x{attr_type:04x} overruns the message")]
    AttributeOverrun {
        /// The offending attribute type.
        attr_type: u16,
    },
    /// More than [`MAX_ATTRIBUTES`] attributes.
    #[error("more than {MAX_ATTRIBUTES} attributes")]
    TooManyAttributes,
    /// FINGERPRINT is present but not last, has the wrong length or the wrong value.
    #[error("FINGERPRINT is invalid")]
    BadFingerprint,
    /// An address attribute is malformed.
    #[error("malformed address attribute 0x{attr_type:04x}")]
    BadAddress {
        /// The offending attribute type.
        attr_type: u16,
    },
    /// An attribute value has the wrong length for its type.
    #[error("attribute 0x{attr_type:04x} has a bad length")]
    BadAttributeLength {
        /// The offending attribute type.
        attr_type: u16,
    },
    /// The output buffer is too small for what is being written.
    #[error("output buffer too small")]
    BufferFull,
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    let s = b.get(at..at.checked_add(2)?)?;
    Some(u16::from_be_bytes([s[0], s[1]]))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

/// Compose a message type from method and class (RFC 8489 §5, figure 3).
pub const fn message_type(method: u16, class: Class) -> u16 {
    let c = match class {
        Class::Request => 0b00,
        Class::Indication => 0b01,
        Class::Success => 0b10,
        Class::Error => 0b11,
    };
    (method & 0x000F)
        | ((method & 0x0070) << 1)
        | ((method & 0x0F80) << 2)
        | ((c & 0b01) << 4)
        | ((c & 0b10) << 7)
}

/// Split a message type into method and class.
pub const fn split_type(t: u16) -> (u16, Class) {
    let method = (t & 0x000F) | ((t >> 1) & 0x0070) | ((t >> 2) & 0x0F80);
    let class = match ((t >> 4) & 0b01) | ((t >> 7) & 0b10) {
        0 => Class::Request,
        1 => Class::Indication,
        2 => Class::Success,
        _ => Class::Error,
    };
    (method, class)
}

/// Length of the whole STUN message that starts `bytes` (for framing on TCP), if the first
/// four bytes are there. Does not validate anything else.
pub fn frame_len(bytes: &[u8]) -> Option<usize> {
    be16(bytes, 2).map(|l| HEADER_LEN + usize::from(l))
}

/// One attribute inside a parsed message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attribute<'a> {
    /// Attribute type.
    pub attr_type: u16,
    /// Value, without padding.
    pub value: &'a [u8],
    /// Offset of the attribute header from the start of the message.
    pub offset: usize,
}

/// A validated view of one STUN message.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    bytes: &'a [u8],
    count: usize,
}

impl<'a> Message<'a> {
    /// Parse exactly one STUN message that fills `bytes` (a datagram or a TCP frame).
    pub fn parse(bytes: &'a [u8]) -> Result<Self, WireError> {
        let too_short = WireError::Truncated {
            have: bytes.len(),
            need: HEADER_LEN,
        };
        let first = *bytes.first().ok_or(too_short)?;
        if bytes.len() < HEADER_LEN {
            return Err(too_short);
        }
        if first & 0xC0 != 0 {
            return Err(WireError::NotStun);
        }
        if be32(bytes, 4) != Some(MAGIC_COOKIE) {
            return Err(WireError::BadCookie);
        }
        let length = be16(bytes, 2).ok_or(too_short)?;
        if length % 4 != 0 {
            return Err(WireError::Unaligned(length));
        }
        let total = HEADER_LEN + usize::from(length);
        if bytes.len() < total {
            return Err(WireError::Truncated {
                have: bytes.len(),
                need: total,
            });
        }
        if bytes.len() > total {
            return Err(WireError::TrailingBytes {
                extra: bytes.len() - total,
            });
        }
        let mut msg = Message { bytes, count: 0 };
        let mut count = 0;
        let mut seen_fingerprint = false;
        let it = msg.raw_iter();
        for a in it {
            let a = a?;
            count += 1;
            if count > MAX_ATTRIBUTES {
                return Err(WireError::TooManyAttributes);
            }
            if seen_fingerprint {
                // RFC 8489 §14.7: FINGERPRINT is always last.
                return Err(WireError::BadFingerprint);
            }
            if a.attr_type == attr::FINGERPRINT {
                seen_fingerprint = true;
            }
        }
        msg.count = count;
        Ok(msg)
    }

    fn raw_iter(&self) -> Attributes<'a> {
        Attributes {
            bytes: self.bytes,
            pos: HEADER_LEN,
        }
    }

    /// The whole message.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The 14-bit message type.
    pub fn message_type(&self) -> u16 {
        be16(self.bytes, 0).unwrap_or(0) & 0x3FFF
    }

    /// The method (e.g. [`BINDING`]).
    pub fn method(&self) -> u16 {
        split_type(self.message_type()).0
    }

    /// The class.
    pub fn class(&self) -> Class {
        split_type(self.message_type()).1
    }

    /// The transaction ID.
    pub fn transaction_id(&self) -> TransactionId {
        let mut id = [0u8; 12];
        if let Some(s) = self.bytes.get(8..HEADER_LEN) {
            id.copy_from_slice(s);
        }
        id
    }

    /// Number of attributes on the wire, including those [`Message::attributes`] hides.
    pub fn attribute_count(&self) -> usize {
        self.count
    }

    /// Iterate over the attributes a receiver may act on, in order.
    ///
    /// RFC 8489 §14.5 and §14.6: after MESSAGE-INTEGRITY only MESSAGE-INTEGRITY-SHA256 and
    /// FINGERPRINT count, and after MESSAGE-INTEGRITY-SHA256 only FINGERPRINT. Anything else
    /// there is not covered by the integrity check (anyone on the path can append it), so it
    /// is skipped here and by [`Message::get`]: code that reads a message cannot obey it by
    /// mistake. [`Message::raw_attributes`] still shows everything.
    pub fn attributes(&self) -> impl Iterator<Item = Attribute<'a>> + use<'a> {
        let mut seen_mi = false;
        let mut seen_sha256 = false;
        self.raw_attributes().filter(move |a| {
            let visible = match a.attr_type {
                attr::FINGERPRINT => true,
                attr::MESSAGE_INTEGRITY_SHA256 => !seen_sha256,
                _ => !seen_mi && !seen_sha256,
            };
            match a.attr_type {
                attr::MESSAGE_INTEGRITY if visible => seen_mi = true,
                attr::MESSAGE_INTEGRITY_SHA256 if visible => seen_sha256 = true,
                _ => {}
            }
            visible
        })
    }

    /// Every attribute on the wire, in order, including those after the integrity attributes
    /// that [`Message::attributes`] hides. For diagnostics, not for acting on a message.
    pub fn raw_attributes(&self) -> impl Iterator<Item = Attribute<'a>> + use<'a> {
        // Already validated in `parse`: errors cannot occur, but never panic if they did.
        self.raw_iter().map_while(Result::ok)
    }

    /// The first attribute of a type among [`Message::attributes`].
    pub fn get(&self, attr_type: u16) -> Option<Attribute<'a>> {
        self.attributes().find(|a| a.attr_type == attr_type)
    }

    /// Check FINGERPRINT, if present. `Ok(true)` when present and valid, `Ok(false)` when absent.
    pub fn check_fingerprint(&self) -> Result<bool, WireError> {
        let Some(a) = self.get(attr::FINGERPRINT) else {
            return Ok(false);
        };
        let stored = match a.value {
            [a, b, c, d] => u32::from_be_bytes([*a, *b, *c, *d]),
            _ => return Err(WireError::BadFingerprint),
        };
        // FINGERPRINT is last (checked in `parse`), so the header length already covers it.
        let covered = self
            .bytes
            .get(..a.offset)
            .ok_or(WireError::BadFingerprint)?;
        if crc32fast::hash(covered) ^ FINGERPRINT_XOR == stored {
            Ok(true)
        } else {
            Err(WireError::BadFingerprint)
        }
    }

    /// Decode an address attribute (XOR-decoded when `attr_type` is an XOR type).
    pub fn address(&self, attr_type: u16) -> Option<Result<SocketAddr, WireError>> {
        let a = self.get(attr_type)?;
        let xor = matches!(
            attr_type,
            attr::XOR_MAPPED_ADDRESS | attr::XOR_PEER_ADDRESS | attr::XOR_RELAYED_ADDRESS
        );
        let id = self.transaction_id();
        Some(decode_address(a.value, attr_type, xor.then_some(&id)))
    }
}

/// Iterator over raw attributes; yields an error and stops at the first malformed one.
#[derive(Debug)]
struct Attributes<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Iterator for Attributes<'a> {
    type Item = Result<Attribute<'a>, WireError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.pos >= self.bytes.len() {
            return None;
        }
        let offset = self.pos;
        let (Some(t), Some(len)) = (be16(self.bytes, offset), be16(self.bytes, offset + 2)) else {
            self.pos = self.bytes.len();
            return Some(Err(WireError::AttributeOverrun { attr_type: 0 }));
        };
        let start = offset + 4;
        let end = start + usize::from(len);
        let padded = start + usize::from(len).div_ceil(4) * 4;
        match (self.bytes.get(start..end), padded <= self.bytes.len()) {
            (Some(value), true) => {
                self.pos = padded;
                Some(Ok(Attribute {
                    attr_type: t,
                    value,
                    offset,
                }))
            }
            _ => {
                self.pos = self.bytes.len();
                Some(Err(WireError::AttributeOverrun { attr_type: t }))
            }
        }
    }
}

/// Decode a (XOR-)MAPPED-ADDRESS style value (RFC 8489 §14.1, §14.2).
pub fn decode_address(
    value: &[u8],
    attr_type: u16,
    xor_id: Option<&TransactionId>,
) -> Result<SocketAddr, WireError> {
    let bad = WireError::BadAddress { attr_type };
    let family = value.get(1).ok_or(bad)?;
    let mut port = be16(value, 2).ok_or(bad)?;
    let cookie = MAGIC_COOKIE.to_be_bytes();
    if xor_id.is_some() {
        port ^= (MAGIC_COOKIE >> 16) as u16;
    }
    match (family, value.len()) {
        (0x01, 8) => {
            let mut ip = [0u8; 4];
            ip.copy_from_slice(value.get(4..8).ok_or(bad)?);
            if xor_id.is_some() {
                for (b, k) in ip.iter_mut().zip(cookie) {
                    *b ^= k;
                }
            }
            Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port))
        }
        (0x02, 20) => {
            let mut ip = [0u8; 16];
            ip.copy_from_slice(value.get(4..20).ok_or(bad)?);
            if let Some(id) = xor_id {
                let key = cookie.iter().chain(id.iter());
                for (b, k) in ip.iter_mut().zip(key) {
                    *b ^= k;
                }
            }
            Ok(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), port))
        }
        _ => Err(bad),
    }
}

/// Writes one STUN message into a caller-provided buffer without allocating.
///
/// The header length field is kept current after every attribute, so integrity and FINGERPRINT
/// can be computed at any point.
#[derive(Debug)]
pub struct MessageWriter<'b> {
    buf: &'b mut [u8],
    len: usize,
    last: usize,
    id: TransactionId,
}

impl<'b> MessageWriter<'b> {
    /// Start a message of `message_type` with transaction ID `id`.
    pub fn new(
        buf: &'b mut [u8],
        message_type: u16,
        id: &TransactionId,
    ) -> Result<Self, WireError> {
        let header = buf.get_mut(..HEADER_LEN).ok_or(WireError::BufferFull)?;
        header[0..2].copy_from_slice(&(message_type & 0x3FFF).to_be_bytes());
        header[2..4].copy_from_slice(&0u16.to_be_bytes());
        header[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
        header[8..20].copy_from_slice(id);
        Ok(MessageWriter {
            buf,
            len: HEADER_LEN,
            last: HEADER_LEN,
            id: *id,
        })
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when only the header has been written.
    pub fn is_empty(&self) -> bool {
        self.len == HEADER_LEN
    }

    /// Size an attribute with a value of `value_len` bytes takes, padding included.
    pub const fn attribute_size(value_len: usize) -> usize {
        4 + value_len.div_ceil(4) * 4
    }

    /// Size of an address attribute for this address family.
    pub const fn address_size(addr: &SocketAddr) -> usize {
        match addr {
            SocketAddr::V4(_) => 12,
            SocketAddr::V6(_) => 24,
        }
    }

    fn reserve(&mut self, attr_type: u16, value_len: usize) -> Result<&mut [u8], WireError> {
        let total = Self::attribute_size(value_len);
        let end = self.len + total;
        let new_len = u16::try_from(end - HEADER_LEN).map_err(|_| WireError::BufferFull)?;
        let len16 = u16::try_from(value_len).map_err(|_| WireError::BufferFull)?;
        let slot = self
            .buf
            .get_mut(self.len..end)
            .ok_or(WireError::BufferFull)?;
        slot[0..2].copy_from_slice(&attr_type.to_be_bytes());
        slot[2..4].copy_from_slice(&len16.to_be_bytes());
        // Zero the padding so nothing stale leaks onto the wire.
        slot[4 + value_len..].fill(0);
        self.buf[2..4].copy_from_slice(&new_len.to_be_bytes());
        self.last = self.len;
        self.len = end;
        Ok(&mut self.buf[end - total + 4..end - total + 4 + value_len])
    }

    /// Append an attribute with an opaque value.
    pub fn attribute(&mut self, attr_type: u16, value: &[u8]) -> Result<(), WireError> {
        self.reserve(attr_type, value.len())?.copy_from_slice(value);
        Ok(())
    }

    /// Append an attribute whose value is a 32-bit number (CHANGE-REQUEST, LIFETIME...).
    pub fn u32_attribute(&mut self, attr_type: u16, value: u32) -> Result<(), WireError> {
        self.attribute(attr_type, &value.to_be_bytes())
    }

    /// Append an address attribute, XOR-encoded when `attr_type` is an XOR type.
    pub fn address(&mut self, attr_type: u16, addr: SocketAddr) -> Result<(), WireError> {
        let xor = matches!(
            attr_type,
            attr::XOR_MAPPED_ADDRESS | attr::XOR_PEER_ADDRESS | attr::XOR_RELAYED_ADDRESS
        );
        let cookie = MAGIC_COOKIE.to_be_bytes();
        let id = self.id;
        let mut port = addr.port();
        if xor {
            port ^= (MAGIC_COOKIE >> 16) as u16;
        }
        match addr.ip() {
            IpAddr::V4(ip) => {
                let v = self.reserve(attr_type, 8)?;
                v[0] = 0;
                v[1] = 0x01;
                v[2..4].copy_from_slice(&port.to_be_bytes());
                v[4..8].copy_from_slice(&ip.octets());
                if xor {
                    for (b, k) in v[4..8].iter_mut().zip(cookie) {
                        *b ^= k;
                    }
                }
            }
            IpAddr::V6(ip) => {
                let v = self.reserve(attr_type, 20)?;
                v[0] = 0;
                v[1] = 0x02;
                v[2..4].copy_from_slice(&port.to_be_bytes());
                v[4..20].copy_from_slice(&ip.octets());
                if xor {
                    for (b, k) in v[4..20].iter_mut().zip(cookie.iter().chain(id.iter())) {
                        *b ^= k;
                    }
                }
            }
        }
        Ok(())
    }

    /// Append ERROR-CODE (RFC 8489 §14.8). `code` is 300..=699.
    pub fn error_code(&mut self, code: u16, reason: &str) -> Result<(), WireError> {
        // Reason phrases are ours and short; cap them anyway (the RFC allows 763 bytes).
        let reason = reason.as_bytes();
        let reason = reason.get(..reason.len().min(128)).unwrap_or(&[]);
        let v = self.reserve(attr::ERROR_CODE, 4 + reason.len())?;
        v[0] = 0;
        v[1] = 0;
        v[2] = u8::try_from(code / 100).unwrap_or(5) & 0x07;
        v[3] = u8::try_from(code % 100).unwrap_or(0);
        v[4..].copy_from_slice(reason);
        Ok(())
    }

    /// Append UNKNOWN-ATTRIBUTES (RFC 8489 §14.9).
    pub fn unknown_attributes(&mut self, types: &[u16]) -> Result<(), WireError> {
        let v = self.reserve(attr::UNKNOWN_ATTRIBUTES, types.len() * 2)?;
        for (chunk, t) in v.chunks_exact_mut(2).zip(types) {
            chunk.copy_from_slice(&t.to_be_bytes());
        }
        Ok(())
    }

    /// Append PADDING of `len` bytes (RFC 5780 §7.6).
    pub fn padding(&mut self, len: usize) -> Result<(), WireError> {
        self.reserve(attr::PADDING, len)?.fill(0);
        Ok(())
    }

    /// Append FINGERPRINT; it must be the last attribute (RFC 8489 §14.7).
    pub fn fingerprint(&mut self) -> Result<(), WireError> {
        // Reserve first so the length field covers FINGERPRINT, then CRC what precedes it.
        let start = self.len;
        self.reserve(attr::FINGERPRINT, 4)?;
        let crc = crc32fast::hash(&self.buf[..start]) ^ FINGERPRINT_XOR;
        self.buf[start + 4..start + 8].copy_from_slice(&crc.to_be_bytes());
        Ok(())
    }

    /// The message written so far and the offset of its last attribute, for attributes whose
    /// value is computed over what precedes them (integrity).
    pub fn last_attribute_mut(&mut self) -> (&mut [u8], usize) {
        (&mut self.buf[..self.len], self.last)
    }

    /// Finish: the message occupies the first `len()` bytes of the buffer.
    pub fn finish(self) -> usize {
        self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_roundtrip_rfc8489_figure_3() {
        assert_eq!(message_type(BINDING, Class::Request), 0x0001);
        assert_eq!(message_type(BINDING, Class::Success), 0x0101);
        assert_eq!(message_type(BINDING, Class::Error), 0x0111);
        assert_eq!(message_type(BINDING, Class::Indication), 0x0011);
        // TURN Allocate (0x003) error response is 0x0113.
        assert_eq!(message_type(0x003, Class::Error), 0x0113);
        for m in [0x001, 0x003, 0x004, 0x008, 0x009, 0x00A, 0xFFF] {
            for c in [
                Class::Request,
                Class::Indication,
                Class::Success,
                Class::Error,
            ] {
                assert_eq!(split_type(message_type(m, c)), (m, c));
            }
        }
    }

    #[test]
    fn writer_roundtrip_with_fingerprint() {
        let id = [7u8; 12];
        let mut buf = [0u8; 256];
        let mut w =
            MessageWriter::new(&mut buf, message_type(BINDING, Class::Success), &id).unwrap();
        let v4: SocketAddr = "192.0.2.1:32853".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::1]:5000".parse().unwrap();
        w.address(attr::XOR_MAPPED_ADDRESS, v4).unwrap();
        w.address(attr::MAPPED_ADDRESS, v6).unwrap();
        w.address(attr::OTHER_ADDRESS, v6).unwrap();
        w.error_code(420, "Unknown Attribute").unwrap();
        w.unknown_attributes(&[0x7777]).unwrap();
        w.fingerprint().unwrap();
        let n = w.finish();
        let m = Message::parse(&buf[..n]).unwrap();
        assert_eq!(m.class(), Class::Success);
        assert_eq!(m.transaction_id(), id);
        assert_eq!(m.address(attr::XOR_MAPPED_ADDRESS).unwrap().unwrap(), v4);
        assert_eq!(m.address(attr::MAPPED_ADDRESS).unwrap().unwrap(), v6);
        assert_eq!(m.check_fingerprint(), Ok(true));
        assert_eq!(m.attribute_count(), 6);
        // Flip one bit of the body: the fingerprint must catch it.
        let mut bad = buf;
        bad[30] ^= 1;
        assert_eq!(
            Message::parse(&bad[..n]).unwrap().check_fingerprint(),
            Err(WireError::BadFingerprint)
        );
    }

    #[test]
    fn rejects_hostile_shapes() {
        assert!(matches!(
            Message::parse(&[]),
            Err(WireError::Truncated { .. })
        ));
        assert!(matches!(
            Message::parse(&[0; 19]),
            Err(WireError::Truncated { .. })
        ));
        let mut h = [0u8; 20];
        h[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
        assert!(Message::parse(&h).is_ok());
        let mut x = h;
        x[0] = 0x80;
        assert_eq!(Message::parse(&x).unwrap_err(), WireError::NotStun);
        let mut x = h;
        x[4] = 0;
        assert_eq!(Message::parse(&x).unwrap_err(), WireError::BadCookie);
        let mut x = h;
        x[3] = 2;
        assert_eq!(Message::parse(&x).unwrap_err(), WireError::Unaligned(2));
        let mut x = h;
        x[3] = 4;
        assert!(matches!(
            Message::parse(&x),
            Err(WireError::Truncated { need: 24, .. })
        ));
        // Attribute claims 100 bytes in a 4-byte body.
        let mut x = [0u8; 28];
        x[..20].copy_from_slice(&h);
        x[3] = 8;
        x[20..24].copy_from_slice(&[0x00, 0x01, 0x00, 100]);
        assert_eq!(
            Message::parse(&x).unwrap_err(),
            WireError::AttributeOverrun { attr_type: 1 }
        );
        // Trailing garbage after a valid message.
        let mut x = [0u8; 24];
        x[..20].copy_from_slice(&h);
        assert_eq!(
            Message::parse(&x).unwrap_err(),
            WireError::TrailingBytes { extra: 4 }
        );
    }

    #[test]
    fn huge_attribute_count_is_rejected() {
        // 200 empty SOFTWARE attributes.
        let mut v = vec![0u8; 20 + 200 * 4];
        v[2..4].copy_from_slice(&(200u16 * 4).to_be_bytes());
        v[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
        for i in 0..200 {
            v[20 + i * 4..22 + i * 4].copy_from_slice(&attr::SOFTWARE.to_be_bytes());
        }
        assert_eq!(
            Message::parse(&v).unwrap_err(),
            WireError::TooManyAttributes
        );
    }

    #[test]
    fn fingerprint_must_be_last() {
        let id = [1u8; 12];
        let mut buf = [0u8; 64];
        let mut w = MessageWriter::new(&mut buf, 1, &id).unwrap();
        w.fingerprint().unwrap();
        w.attribute(attr::SOFTWARE, b"x").unwrap();
        let n = w.finish();
        assert_eq!(
            Message::parse(&buf[..n]).unwrap_err(),
            WireError::BadFingerprint
        );
    }

    /// Append an attribute to a finished message by hand (what an on-path attacker can do).
    fn append(msg: &mut Vec<u8>, t: u16, v: &[u8]) {
        msg.extend_from_slice(&t.to_be_bytes());
        msg.extend_from_slice(&u16::try_from(v.len()).unwrap().to_be_bytes());
        msg.extend_from_slice(v);
        while msg.len() % 4 != 0 {
            msg.push(0);
        }
        let l = u16::try_from(msg.len() - HEADER_LEN).unwrap();
        msg[2..4].copy_from_slice(&l.to_be_bytes());
    }

    #[test]
    fn attributes_after_integrity_are_ignored_rfc8489_14_5() {
        let id = [3u8; 12];
        let mut buf = [0u8; 256];
        let mut w = MessageWriter::new(&mut buf, 0x0003, &id).unwrap();
        w.u32_attribute(attr::LIFETIME, 600).unwrap();
        w.attribute(attr::MESSAGE_INTEGRITY, &[0; 20]).unwrap();
        let n = w.finish();
        let mut m = buf[..n].to_vec();
        append(&mut m, attr::LIFETIME, &0u32.to_be_bytes());
        append(&mut m, attr::XOR_PEER_ADDRESS, &[0, 1, 0, 1, 1, 2, 3, 4]);
        append(&mut m, attr::MESSAGE_INTEGRITY_SHA256, &[0; 32]);
        append(&mut m, attr::USERNAME, b"late");
        append(&mut m, attr::MESSAGE_INTEGRITY, &[1; 20]);
        let msg = Message::parse(&m).unwrap();
        let seen: Vec<u16> = msg.attributes().map(|a| a.attr_type).collect();
        assert_eq!(
            seen,
            [
                attr::LIFETIME,
                attr::MESSAGE_INTEGRITY,
                attr::MESSAGE_INTEGRITY_SHA256
            ]
        );
        assert_eq!(
            msg.get(attr::LIFETIME).unwrap().value,
            600u32.to_be_bytes(),
            "the appended LIFETIME 0 is not the one read"
        );
        assert!(msg.get(attr::XOR_PEER_ADDRESS).is_none());
        assert!(msg.get(attr::USERNAME).is_none());
        assert_eq!(msg.get(attr::MESSAGE_INTEGRITY).unwrap().value, [0; 20]);
        assert_eq!(msg.raw_attributes().count(), 7);
        assert_eq!(msg.attribute_count(), 7);
        // FINGERPRINT after the integrity attributes still counts.
        append(&mut m, attr::FINGERPRINT, &[0; 4]);
        let msg = Message::parse(&m).unwrap();
        assert!(msg.get(attr::FINGERPRINT).is_some());
        // SHA256 alone: only FINGERPRINT may follow it.
        let mut w = MessageWriter::new(&mut buf, 0x0003, &id).unwrap();
        w.attribute(attr::MESSAGE_INTEGRITY_SHA256, &[0; 32])
            .unwrap();
        let n = w.finish();
        let mut m = buf[..n].to_vec();
        append(&mut m, attr::MESSAGE_INTEGRITY, &[0; 20]);
        append(&mut m, attr::LIFETIME, &[0; 4]);
        let msg = Message::parse(&m).unwrap();
        assert!(msg.get(attr::MESSAGE_INTEGRITY).is_none());
        assert!(msg.get(attr::LIFETIME).is_none());
        // Without integrity everything is visible.
        let mut w = MessageWriter::new(&mut buf, 0x0003, &id).unwrap();
        w.u32_attribute(attr::LIFETIME, 1).unwrap();
        w.attribute(attr::USERNAME, b"u").unwrap();
        let n = w.finish();
        assert_eq!(Message::parse(&buf[..n]).unwrap().attributes().count(), 2);
    }

    #[test]
    fn writer_reports_full_buffer() {
        let id = [1u8; 12];
        let mut buf = [0u8; 24];
        assert!(MessageWriter::new(&mut buf[..10], 1, &id).is_err());
        let mut w = MessageWriter::new(&mut buf, 1, &id).unwrap();
        assert_eq!(w.padding(8), Err(WireError::BufferFull));
        assert_eq!(w.padding(0), Ok(()));
    }

    #[test]
    fn bad_address_values() {
        let id = [0u8; 12];
        for v in [
            &[][..],
            &[0, 1, 0],
            &[0, 1, 0, 1, 1, 2, 3],
            &[0, 3, 0, 1, 1, 2, 3, 4],
        ] {
            assert!(decode_address(v, 1, Some(&id)).is_err());
        }
    }
}
