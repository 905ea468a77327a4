//! The Internet checksum (RFC 1071) arithmetic, shared by the NAT's packet rewriting and the
//! `sim` fabric's merged TUN writes.

/// Ones' complement sum of `data` as big-endian 16-bit words (an odd last byte padded with
/// zero), added to `acc`; [`fold`] it to 16 bits. It adds 32-bit words, which gives the same
/// folded result as 16-bit words (2^16 = 1 modulo 2^16 - 1) in half the steps; a `u64` cannot
/// overflow for any slice that fits in memory.
pub fn sum(data: &[u8], mut acc: u64) -> u64 {
    let mut words = data.chunks_exact(4);
    for w in &mut words {
        let w: [u8; 4] = w.try_into().unwrap_or([0; 4]);
        acc += u64::from(u32::from_be_bytes(w));
    }
    let rest = words.remainder();
    if !rest.is_empty() {
        let mut w = [0u8; 4];
        for (d, s) in w.iter_mut().zip(rest) {
            *d = *s;
        }
        acc += u64::from(u32::from_be_bytes(w));
    }
    acc
}

/// Fold a sum from [`sum`] to 16 bits (not complemented).
pub fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

#[cfg(test)]
mod tests {
    use super::{fold, sum};

    #[test]
    fn thirty_two_bit_words_fold_like_sixteen_bit_ones() {
        let data: Vec<u8> = (0..=255u8).cycle().take(1001).collect();
        let mut slow: u64 = 0;
        for c in data.chunks(2) {
            slow += u64::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
        }
        for n in [0, 1, 2, 3, 4, 5, 7, 1000, 1001] {
            let mut s: u64 = 0;
            for c in data[..n].chunks(2) {
                s += u64::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
            }
            assert_eq!(fold(sum(&data[..n], 0)), fold(s), "{n} bytes");
        }
        assert_eq!(fold(sum(&data, 0)), fold(slow));
        assert_eq!(fold(sum(&[0xff, 0xff, 0x00, 0x02], 0)), 0x0002);
        assert_eq!(fold(sum(&[], 7)), 7);
    }
}
