//! Per-source rate limiting against reflection and amplification (sans-IO: time comes in).
//!
//! One limiter serves the whole server: every UDP worker of every listener and the TCP driver
//! share it, so a source gets `rate` answers per second in total however many addresses, ports
//! and source ports it spreads its packets over (per-worker limiters would multiply the rate by
//! listeners x workers).
//!
//! A fixed table of buckets indexed by a keyed hash of the source: memory is bounded and nothing
//! is allocated per packet, whatever an attacker spoofs. Two sources that collide share a
//! bucket, which errs on the side of limiting. IPv6 sources are keyed by their /64, the unit one
//! subscriber usually holds.
//!
//! Each bucket is a single `AtomicU64` holding a GCRA "theoretical arrival time" (virtual
//! scheduling; exactly a token bucket of `burst` tokens refilled at `rate` per second) in
//! nanoseconds since the limiter's epoch: lock-free, no shard to contend on, and a refused packet
//! only reads its bucket. 64-bit nanoseconds last 584 years.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Token buckets keyed by source prefix, shareable between threads (`allow` takes `&self`).
pub struct RateLimiter {
    /// Per bucket: the time (ns since `epoch`) at which the bucket is back to full minus one
    /// interval per token it holds less than `burst`, i.e. GCRA's theoretical arrival time.
    /// 0 (or anything in the past) is a full bucket. Empty when limiting is disabled.
    buckets: Box<[AtomicU64]>,
    /// Nanoseconds per token (the steady-state gap between two packets). 0: unlimited.
    interval: u64,
    /// How far ahead of `now` the arrival time may run: (burst - 1) intervals.
    tolerance: u64,
    /// Limiting is on (`rate` > 0).
    enabled: bool,
    epoch: Instant,
    hasher: RandomState,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("enabled", &self.enabled)
            .field("interval_ns", &self.interval)
            .field("tolerance_ns", &self.tolerance)
            .field("buckets", &self.buckets.len())
            .finish_non_exhaustive()
    }
}

/// Default bucket count: 64 Ki buckets, 512 KiB, for the whole server.
pub const DEFAULT_BUCKETS: usize = 1 << 16;

const NANOS_PER_SEC: u64 = 1_000_000_000;

/// The unit a source is limited as: an IPv4 address (IPv4-mapped IPv6 included) or an IPv6 /64.
pub(crate) fn source_key(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => u128::from(u32::from(v4)),
            None => u128::from(v6) & !((1u128 << 64) - 1),
        },
    }
}

impl RateLimiter {
    /// `rate` packets per second per source, bursts up to `burst`. A `rate` of 0 disables
    /// limiting (and allocates no table).
    pub fn new(now: Instant, rate: u32, burst: u32, buckets: usize) -> Self {
        let enabled = rate > 0;
        let interval = NANOS_PER_SEC / u64::from(rate.max(1));
        let tolerance = interval.saturating_mul(u64::from(burst.max(1) - 1));
        let buckets = if enabled { buckets.max(1) } else { 0 };
        RateLimiter {
            buckets: (0..buckets).map(|_| AtomicU64::new(0)).collect(),
            interval,
            tolerance,
            enabled,
            epoch: now,
            hasher: RandomState::new(),
        }
    }

    /// Is limiting on?
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// May a packet from `ip` be answered at `now`? Takes a token if so.
    #[inline]
    pub fn allow(&self, now: Instant, ip: IpAddr) -> bool {
        if !self.enabled {
            return true;
        }
        self.allow_slow(now, ip)
    }

    fn allow_slow(&self, now: Instant, ip: IpAddr) -> bool {
        let i = (self.hasher.hash_one(source_key(ip)) % self.buckets.len() as u64) as usize;
        let Some(bucket) = self.buckets.get(i) else {
            return false;
        };
        let now =
            u64::try_from(now.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX);
        let mut tat = bucket.load(Ordering::Relaxed);
        loop {
            // A bucket last used in the past has refilled (up to the burst).
            let start = tat.max(now);
            if start - now > self.tolerance {
                return false;
            }
            match bucket.compare_exchange_weak(
                tat,
                start.saturating_add(self.interval),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(current) => tat = current,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn burst_then_steady_rate() {
        let t0 = Instant::now();
        let rl = RateLimiter::new(t0, 10, 5, 1024);
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

    /// The clock is 64-bit: a server up for 60 days (past 2^32 ms, 49.7 days) still refills.
    #[test]
    fn buckets_still_refill_after_sixty_days() {
        let epoch = Instant::now();
        let rl = RateLimiter::new(epoch, 10, 5, 1024);
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let day = Duration::from_secs(86_400);
        let t = epoch + 60 * day;
        assert_eq!((0..20).filter(|_| rl.allow(t, ip)).count(), 5, "burst");
        let t = t + Duration::from_millis(500);
        assert_eq!((0..20).filter(|_| rl.allow(t, ip)).count(), 5, "refill");
        let t = t + Duration::from_millis(200);
        assert_eq!(
            (0..20).filter(|_| rl.allow(t, ip)).count(),
            2,
            "steady rate"
        );
        // And much later still.
        let t = epoch + 400 * day;
        assert_eq!((0..20).filter(|_| rl.allow(t, ip)).count(), 5);
        let t = t + Duration::from_millis(100);
        assert_eq!((0..20).filter(|_| rl.allow(t, ip)).count(), 1);
    }

    #[test]
    fn sources_are_independent_and_v6_is_keyed_by_prefix() {
        let t0 = Instant::now();
        let rl = RateLimiter::new(t0, 1, 2, 1 << 14);
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
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert!(!rl.allow(t0, mapped), "IPv4-mapped IPv6 is the IPv4 source");
    }

    #[test]
    fn zero_rate_disables_and_allocates_nothing() {
        let t0 = Instant::now();
        let rl = RateLimiter::new(t0, 0, 0, DEFAULT_BUCKETS);
        assert!(!rl.enabled());
        assert_eq!(rl.buckets.len(), 0);
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        assert!((0..10_000).all(|_| rl.allow(t0, ip)));
    }

    #[test]
    fn burst_one_and_huge_rates() {
        let t0 = Instant::now();
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let rl = RateLimiter::new(t0, 2, 0, 16);
        assert!(rl.allow(t0, ip) && !rl.allow(t0, ip), "burst 0 acts as 1");
        assert!(rl.allow(t0 + Duration::from_millis(500), ip));
        let rl = RateLimiter::new(t0, u32::MAX, u32::MAX, 16);
        assert!((0..100_000).all(|_| rl.allow(t0, ip)));
    }

    /// Threads sharing the limiter take exactly the burst between them, no more.
    #[test]
    fn shared_between_threads_the_burst_is_taken_once() {
        let t0 = Instant::now();
        let rl = Arc::new(RateLimiter::new(t0, 1, 1000, 64));
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let rl = rl.clone();
                std::thread::spawn(move || (0..1000).filter(|_| rl.allow(t0, ip)).count())
            })
            .collect();
        let total: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(total, 1000);
    }
}
