//! Per-source rate limiting against reflection and amplification (sans-IO: time comes in).
//!
//! A fixed table of token buckets indexed by a keyed hash of the source: memory is bounded and
//! nothing is allocated per packet, whatever an attacker spoofs. Two sources that collide share
//! a bucket, which errs on the side of limiting. IPv6 sources are keyed by their /64, the unit
//! one subscriber usually holds.

use std::hash::BuildHasher;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Token buckets keyed by source prefix.
#[derive(Debug)]
pub struct RateLimiter {
    buckets: Box<[Bucket]>,
    rate: f64,
    burst: f64,
    epoch: Instant,
    hasher: std::collections::hash_map::RandomState,
}

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    tokens: f32,
    /// Milliseconds since `epoch` of the last refill.
    at_ms: u32,
}

/// Default bucket count: 16 Ki buckets, 128 KiB.
pub const DEFAULT_BUCKETS: usize = 1 << 14;

impl RateLimiter {
    /// `rate` packets per second per source, bursts up to `burst`. A `rate` of 0 disables
    /// limiting.
    pub fn new(now: Instant, rate: u32, burst: u32, buckets: usize) -> Self {
        RateLimiter {
            buckets: vec![Bucket::default(); buckets.max(1)].into_boxed_slice(),
            rate: f64::from(rate),
            burst: f64::from(burst.max(1)),
            epoch: now,
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }

    fn key(ip: IpAddr) -> u128 {
        match ip {
            IpAddr::V4(v4) => u128::from(u32::from(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => u128::from(u32::from(v4)),
                None => u128::from(v6) & !((1u128 << 64) - 1),
            },
        }
    }

    /// May a packet from `ip` be answered at `now`? Takes a token if so.
    pub fn allow(&mut self, now: Instant, ip: IpAddr) -> bool {
        if self.rate == 0.0 {
            return true;
        }
        let i = (self.hasher.hash_one(Self::key(ip)) % self.buckets.len() as u64) as usize;
        let now_ms = u32::try_from(
            now.saturating_duration_since(self.epoch)
                .as_millis()
                .min(u128::from(u32::MAX)),
        )
        .unwrap_or(u32::MAX);
        let Some(b) = self.buckets.get_mut(i) else {
            return false;
        };
        let fresh = b.at_ms == 0 && b.tokens == 0.0;
        let elapsed = Duration::from_millis(u64::from(now_ms.saturating_sub(b.at_ms)));
        let mut tokens = if fresh {
            self.burst
        } else {
            (f64::from(b.tokens) + elapsed.as_secs_f64() * self.rate).min(self.burst)
        };
        b.at_ms = now_ms.max(1);
        let ok = tokens >= 1.0;
        if ok {
            tokens -= 1.0;
        }
        b.tokens = tokens as f32;
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_steady_rate() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(t0, 10, 5, 1024);
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let allowed = (0..20).filter(|_| rl.allow(t0, ip)).count();
        assert_eq!(allowed, 5, "burst");
        // 10/s: after 1 s, ten more.
        let t1 = t0 + Duration::from_secs(1);
        let allowed = (0..20).filter(|_| rl.allow(t1, ip)).count();
        assert_eq!(allowed, 5, "refill is capped at the burst");
        let t2 = t1 + Duration::from_millis(300);
        let allowed = (0..20).filter(|_| rl.allow(t2, ip)).count();
        assert_eq!(allowed, 3);
    }

    #[test]
    fn sources_are_independent_and_v6_is_keyed_by_prefix() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(t0, 1, 2, 1 << 14);
        let a: IpAddr = "192.0.2.7".parse().unwrap();
        let b: IpAddr = "192.0.2.8".parse().unwrap();
        assert!(rl.allow(t0, a) && rl.allow(t0, a) && !rl.allow(t0, a));
        assert!(rl.allow(t0, b), "another source has its own bucket");
        let x: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let y: IpAddr = "2001:db8:1:2::ffff".parse().unwrap();
        assert!(
            rl.allow(t0, x) && rl.allow(t0, y) && !rl.allow(t0, x),
            "same /64"
        );
    }

    #[test]
    fn zero_rate_disables() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(t0, 0, 0, 1);
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        assert!((0..10_000).all(|_| rl.allow(t0, ip)));
    }
}
