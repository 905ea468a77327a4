//! Classic pcap files (not pcapng): LINKTYPE_RAW (101, bare IP packets), microsecond
//! timestamps, native little-endian magic. Wireshark and tshark open them.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// LINKTYPE_RAW: the packet begins with an IPv4 or IPv6 header.
pub(crate) const LINKTYPE_RAW: u32 = 101;
const SNAPLEN: u32 = 65_535;

/// One open capture file.
#[derive(Debug)]
pub(crate) struct PcapWriter {
    out: BufWriter<File>,
}

impl PcapWriter {
    /// Create `path` (truncating) and write the global header.
    pub(crate) fn create(path: &Path) -> io::Result<Self> {
        let mut out = BufWriter::with_capacity(256 * 1024, File::create(path)?);
        out.write_all(&global_header())?;
        Ok(Self { out })
    }

    /// Append one packet captured at `at`.
    pub(crate) fn record(&mut self, at: SystemTime, packet: &[u8]) -> io::Result<()> {
        self.out.write_all(&record_header(at, packet.len()))?;
        let caplen = packet.len().min(SNAPLEN as usize);
        self.out.write_all(packet.get(..caplen).unwrap_or(packet))
    }

    pub(crate) fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

fn global_header() -> [u8; 24] {
    let mut h = [0u8; 24];
    h[0..4].copy_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    h[4..6].copy_from_slice(&2u16.to_le_bytes());
    h[6..8].copy_from_slice(&4u16.to_le_bytes());
    // thiszone and sigfigs stay zero.
    h[16..20].copy_from_slice(&SNAPLEN.to_le_bytes());
    h[20..24].copy_from_slice(&LINKTYPE_RAW.to_le_bytes());
    h
}

fn record_header(at: SystemTime, len: usize) -> [u8; 16] {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let len = u32::try_from(len).unwrap_or(u32::MAX);
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(
        &u32::try_from(since.as_secs())
            .unwrap_or(u32::MAX)
            .to_le_bytes(),
    );
    h[4..8].copy_from_slice(&since.subsec_micros().to_le_bytes());
    h[8..12].copy_from_slice(&len.min(SNAPLEN).to_le_bytes());
    h[12..16].copy_from_slice(&len.to_le_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn headers_have_the_classic_layout() {
        let g = global_header();
        assert_eq!(&g[0..4], &[0xd4, 0xc3, 0xb2, 0xa1]);
        assert_eq!(u32::from_le_bytes([g[20], g[21], g[22], g[23]]), 101);
        let at = UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789);
        let r = record_header(at, 84);
        assert_eq!(u32::from_le_bytes([r[0], r[1], r[2], r[3]]), 1_700_000_000);
        assert_eq!(u32::from_le_bytes([r[4], r[5], r[6], r[7]]), 123_456);
        assert_eq!(u32::from_le_bytes([r[8], r[9], r[10], r[11]]), 84);
        assert_eq!(u32::from_le_bytes([r[12], r[13], r[14], r[15]]), 84);
    }
}
