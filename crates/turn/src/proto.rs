//! TURN (RFC 8656) wire vocabulary shared by the client and the server: method numbers,
//! ChannelData framing (§12.4), channel-number rules and protocol numbers.
//!
//! The STUN-level codec is [`stun::wire`]; TURN attributes are ordinary attributes there
//! (XOR-PEER-ADDRESS and XOR-RELAYED-ADDRESS are XOR-encoded by `MessageWriter::address`).
//! Like `stun::wire`, nothing here panics on hostile bytes: every read is bounds-checked.

use std::time::Duration;

/// Allocate (RFC 8656 §7).
pub const ALLOCATE: u16 = 0x003;
/// Refresh (§8).
pub const REFRESH: u16 = 0x004;
/// Send indication (§11).
pub const SEND: u16 = 0x006;
/// Data indication (§11).
pub const DATA: u16 = 0x007;
/// CreatePermission (§10).
pub const CREATE_PERMISSION: u16 = 0x008;
/// ChannelBind (§12).
pub const CHANNEL_BIND: u16 = 0x009;

/// REQUESTED-TRANSPORT value for UDP (IANA protocol number 17).
pub const PROTOCOL_UDP: u8 = 17;

/// REQUESTED-ADDRESS-FAMILY values (§18.8).
pub const FAMILY_IPV4: u8 = 0x01;
/// REQUESTED-ADDRESS-FAMILY value for IPv6.
pub const FAMILY_IPV6: u8 = 0x02;

/// Lowest valid channel number (§12).
pub const CHANNEL_MIN: u16 = 0x4000;
/// Highest valid channel number (§12).
pub const CHANNEL_MAX: u16 = 0x4FFF;

/// Default allocation lifetime (§3.2): 10 minutes.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(600);
/// Maximum lifetime a server grants by default (§7.2): 1 hour.
pub const MAX_LIFETIME: Duration = Duration::from_secs(3600);
/// Permission lifetime (§9): 5 minutes, not refreshable by data.
pub const PERMISSION_LIFETIME: Duration = Duration::from_secs(300);
/// Channel binding lifetime (§12): 10 minutes.
pub const CHANNEL_LIFETIME: Duration = Duration::from_secs(600);
/// After a channel binding expires, neither its number nor its peer may be rebound for this
/// long (§12).
pub const CHANNEL_COOLDOWN: Duration = Duration::from_secs(300);

/// ADDITIONAL-ADDRESS-FAMILY (RFC 8656 §18.11; comprehension-optional).
pub const ATTR_ADDITIONAL_ADDRESS_FAMILY: u16 = 0x8000;
/// ADDRESS-ERROR-CODE (RFC 8656 §18.12): why one family of a dual allocation failed.
pub const ATTR_ADDRESS_ERROR_CODE: u16 = 0x8001;
/// ICMP (RFC 8656 §18.13).
pub const ATTR_ICMP: u16 = 0x8004;

/// Highest channel number of RFC 5766 (0x4000-0x7FFF). RFC 8656 §12 reserves 0x5000-0x7FFF,
/// but RFC 5766 clients (coturn's `turnutils_uclient` among them) still pick numbers there, so
/// a server may accept them for compatibility.
pub const CHANNEL_MAX_RFC5766: u16 = 0x7FFF;

/// ChannelData header: channel number (2) and length (2).
pub const CHANNEL_DATA_HEADER: usize = 4;

/// True when `n` is a channel number a client may bind (0x4000 through 0x4FFF).
pub const fn is_valid_channel(n: u16) -> bool {
    n >= CHANNEL_MIN && n <= CHANNEL_MAX
}

/// What the first two bits of a datagram say it is (RFC 8656 §12, RFC 7983 demultiplexing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// First byte 0x00–0x03: a STUN message.
    Stun,
    /// First byte 0x40–0x4F: ChannelData.
    ChannelData,
    /// Anything else (including an empty buffer).
    Other,
}

/// Classify a datagram or stream frame by its first byte.
pub fn framing(bytes: &[u8]) -> Framing {
    match bytes.first() {
        Some(0x00..=0x03) => Framing::Stun,
        Some(0x40..=0x4F) => Framing::ChannelData,
        _ => Framing::Other,
    }
}

/// Why a ChannelData message was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChannelDataError {
    /// Shorter than the 4-byte header.
    #[error("ChannelData shorter than its header")]
    Truncated,
    /// The channel number is outside 0x4000..=0x4FFF.
    #[error("channel number {0:#06x} is outside 0x4000-0x4FFF")]
    BadChannel(u16),
    /// The length field claims more bytes than the datagram carries.
    #[error("ChannelData length {claimed} exceeds the {available} bytes present")]
    BadLength {
        /// Length field.
        claimed: usize,
        /// Bytes after the header.
        available: usize,
    },
    /// The output buffer cannot hold the message.
    #[error("buffer too small for ChannelData")]
    BufferFull,
}

/// A parsed ChannelData message borrowing its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelData<'a> {
    /// Channel number, 0x4000..=0x4FFF.
    pub channel: u16,
    /// Application data (exactly the length field's bytes; padding excluded).
    pub data: &'a [u8],
}

impl<'a> ChannelData<'a> {
    /// Parse a ChannelData message. Over UDP the datagram may carry padding after the data
    /// (§12.5 says to ignore it); a length larger than what is present is an error.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, ChannelDataError> {
        let header = bytes
            .get(..CHANNEL_DATA_HEADER)
            .ok_or(ChannelDataError::Truncated)?;
        let channel = u16::from_be_bytes([header[0], header[1]]);
        if !is_valid_channel(channel) {
            return Err(ChannelDataError::BadChannel(channel));
        }
        let claimed = usize::from(u16::from_be_bytes([header[2], header[3]]));
        let rest = bytes.get(CHANNEL_DATA_HEADER..).unwrap_or(&[]);
        let data = rest.get(..claimed).ok_or(ChannelDataError::BadLength {
            claimed,
            available: rest.len(),
        })?;
        Ok(ChannelData { channel, data })
    }

    /// Bytes this message occupies on the wire. `padded` rounds up to a multiple of 4, as
    /// required over TCP and TLS (§12.5) and allowed over UDP.
    pub const fn wire_len(data_len: usize, padded: bool) -> usize {
        let n = CHANNEL_DATA_HEADER + data_len;
        if padded { n.div_ceil(4) * 4 } else { n }
    }

    /// Write a ChannelData message into `buf`; returns the bytes written (padding included
    /// when `padded`, zero-filled).
    pub fn write(
        buf: &mut [u8],
        channel: u16,
        data: &[u8],
        padded: bool,
    ) -> Result<usize, ChannelDataError> {
        if !is_valid_channel(channel) {
            return Err(ChannelDataError::BadChannel(channel));
        }
        let len = u16::try_from(data.len()).map_err(|_| ChannelDataError::BufferFull)?;
        let total = Self::wire_len(data.len(), padded);
        let out = buf.get_mut(..total).ok_or(ChannelDataError::BufferFull)?;
        out[0..2].copy_from_slice(&channel.to_be_bytes());
        out[2..4].copy_from_slice(&len.to_be_bytes());
        out[4..4 + data.len()].copy_from_slice(data);
        out[4 + data.len()..].fill(0);
        Ok(total)
    }
}

/// Length of the next complete frame at the start of a TCP/TLS byte stream: a STUN message
/// (header length + 20) or a ChannelData message (padded to 4). `Ok(None)` means more bytes
/// are needed; `Err` means the stream is not TURN and must be closed.
pub fn stream_frame_len(bytes: &[u8]) -> Result<Option<usize>, ChannelDataError> {
    match framing(bytes) {
        Framing::Stun => Ok(stun::wire::frame_len(bytes)),
        Framing::ChannelData => {
            let Some(header) = bytes.get(..CHANNEL_DATA_HEADER) else {
                return Ok(None);
            };
            let len = usize::from(u16::from_be_bytes([header[2], header[3]]));
            Ok(Some(ChannelData::wire_len(len, true)))
        }
        Framing::Other => match bytes.first() {
            None => Ok(None),
            Some(&b) => Err(ChannelDataError::BadChannel(u16::from(b) << 8)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_data_round_trip_padded_and_not() {
        let mut buf = [0xAAu8; 16];
        let n = ChannelData::write(&mut buf, 0x4001, b"hello", true).unwrap();
        assert_eq!(n, 12);
        assert_eq!(&buf[..n], b"\x40\x01\x00\x05hello\0\0\0");
        let cd = ChannelData::parse(&buf[..n]).unwrap();
        assert_eq!((cd.channel, cd.data), (0x4001, &b"hello"[..]));
        let n = ChannelData::write(&mut buf, 0x4FFF, b"hello", false).unwrap();
        assert_eq!(n, 9);
    }

    #[test]
    fn channel_data_rejects_hostile_frames() {
        assert_eq!(
            ChannelData::parse(b"\x40"),
            Err(ChannelDataError::Truncated)
        );
        assert_eq!(
            ChannelData::parse(b"\x50\x00\x00\x00"),
            Err(ChannelDataError::BadChannel(0x5000))
        );
        assert_eq!(
            ChannelData::parse(b"\x40\x00\x00\x09abc"),
            Err(ChannelDataError::BadLength {
                claimed: 9,
                available: 3
            })
        );
        let mut small = [0u8; 6];
        assert_eq!(
            ChannelData::write(&mut small, 0x4000, b"hello", false),
            Err(ChannelDataError::BufferFull)
        );
        assert_eq!(
            ChannelData::write(&mut small, 0x3FFF, b"", false),
            Err(ChannelDataError::BadChannel(0x3FFF))
        );
    }

    #[test]
    fn stream_framing() {
        assert_eq!(stream_frame_len(b""), Ok(None));
        assert_eq!(stream_frame_len(b"\x40\x00"), Ok(None));
        assert_eq!(stream_frame_len(b"\x40\x00\x00\x05"), Ok(Some(12)));
        assert!(stream_frame_len(b"\x80").is_err());
        assert_eq!(framing(b"\x01\x01"), Framing::Stun);
    }
}
