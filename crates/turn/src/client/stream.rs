//! Framing of a TCP/TLS byte stream into whole STUN and ChannelData messages (RFC 8656 §12.5),
//! sans-IO: bytes in, frames out.

use crate::proto::{ChannelDataError, stream_frame_len};

/// Largest frame accepted from the server: the largest STUN message (a 20-byte header and a
/// 16-bit length), which also covers the largest padded ChannelData (4 + 65535 + 3). A Data
/// indication for a 65507-byte UDP payload is 65544 bytes and must pass.
pub const MAX_FRAME: usize = stun::wire::HEADER_LEN + 65_535;

/// Why the stream cannot be framed; the connection must be closed (a byte stream cannot be
/// re-synchronised).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    /// The bytes at a frame boundary are neither STUN nor ChannelData.
    #[error("not a TURN stream: {0}")]
    NotTurn(#[from] ChannelDataError),
    /// A frame claims more than [`MAX_FRAME`] bytes.
    #[error("frame of {0} bytes is too large")]
    TooLarge(usize),
}

/// Accumulates stream bytes and yields whole frames, each suitable for
/// [`Client::handle_input`](super::Client::handle_input).
#[derive(Debug, Default)]
pub struct StreamDecoder {
    buf: Vec<u8>,
}

impl StreamDecoder {
    /// An empty decoder.
    pub fn new() -> StreamDecoder {
        StreamDecoder::default()
    }

    /// Append bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes buffered but not yet returned as a frame.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next whole frame, `Ok(None)` when more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, StreamError> {
        let Some(len) = stream_frame_len(&self.buf)? else {
            return Ok(None);
        };
        if len > MAX_FRAME {
            return Err(StreamError::TooLarge(len));
        }
        if self.buf.len() < len {
            return Ok(None);
        }
        let rest = self.buf.split_off(len);
        Ok(Some(std::mem::replace(&mut self.buf, rest)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_and_joined_arbitrarily() {
        // A padded ChannelData (5 bytes of data -> 12 on the wire) and a 20-byte STUN header.
        let mut stream = b"\x40\x01\x00\x05hello\0\0\0".to_vec();
        let mut stun = [0u8; 20];
        stun[1] = 0x01;
        stun[4..8].copy_from_slice(&stun::wire::MAGIC_COOKIE.to_be_bytes());
        stream.extend_from_slice(&stun);
        for chunk in 1..stream.len() {
            let mut d = StreamDecoder::new();
            let mut frames = vec![];
            for piece in stream.chunks(chunk) {
                d.push(piece);
                while let Some(f) = d.next_frame().unwrap() {
                    frames.push(f);
                }
            }
            assert_eq!(frames.len(), 2, "chunk size {chunk}");
            assert_eq!(frames[0], &stream[..12]);
            assert_eq!(frames[1], stun);
            assert_eq!(d.buffered(), 0);
        }
    }

    #[test]
    fn largest_data_indication_and_channel_data_pass() {
        use stun::wire::{Class, MessageWriter, attr, message_type};
        // The largest IPv4 UDP payload a peer can send, in a Data indication (RFC 8656 §11.4).
        let payload = vec![0xAB; 65_507];
        let mut buf = vec![0u8; 70_000];
        let mut w = MessageWriter::new(
            &mut buf,
            message_type(crate::proto::DATA, Class::Indication),
            &[1; 12],
        )
        .unwrap();
        w.address(attr::XOR_PEER_ADDRESS, "198.51.100.1:9".parse().unwrap())
            .unwrap();
        w.attribute(attr::DATA, &payload).unwrap();
        let n = w.finish();
        assert_eq!(n, 65_544);
        let mut d = StreamDecoder::new();
        d.push(&buf[..n]);
        assert_eq!(d.next_frame().unwrap().unwrap().len(), n);
        // The largest ChannelData, padded as on streams.
        let mut cd = vec![0x40, 0x00, 0xFF, 0xFF];
        cd.resize(4 + 65_535 + 1, 0);
        d.push(&cd);
        assert_eq!(d.next_frame().unwrap().unwrap().len(), cd.len());
        // The largest STUN message is the bound.
        let mut big = vec![0u8; 4];
        big[2..4].copy_from_slice(&0xFFFCu16.to_be_bytes());
        d.push(&big);
        assert_eq!(
            d.next_frame(),
            Ok(None),
            "within the bound, waiting for bytes"
        );
    }

    #[test]
    fn garbage_is_an_error() {
        let mut d = StreamDecoder::new();
        d.push(b"\x80garbage");
        assert!(d.next_frame().is_err());
        let mut d = StreamDecoder::new();
        d.push(b"\x40");
        assert_eq!(d.next_frame(), Ok(None));
    }
}
