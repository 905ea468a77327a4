//! Link impairment, sans-IO: for each packet entering one direction of a link, decide whether it
//! is lost and when it leaves. Time comes in as `now`; randomness from a seeded generator, one
//! per link direction, so counts are reproducible for a given seed and packet sequence.

use std::time::{Duration, Instant};

use crate::topology::Impairment;

/// A small, fast, seedable generator (SplitMix64). Not cryptographic; reproducible.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub(crate) fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Derive an independent seed for one link direction.
pub(crate) fn derive_seed(seed: u64, link: usize, direction: u8) -> u64 {
    let mut r =
        Rng::new(seed ^ (link as u64).wrapping_mul(0x2545_f491_4f6c_dd1d) ^ u64::from(direction));
    r.next_u64()
}

/// What happens to one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fate {
    /// Leaves at once (a link without impairment: no queue, no copy).
    Now,
    /// Leaves at this time.
    At(Instant),
    /// Lost on the link.
    Lost,
    /// The link's queue is full (rate limiting with a backlog beyond [`MAX_BACKLOG`]).
    QueueFull,
}

/// Most time a packet may wait for serialization before it is dropped (a bounded queue, like
/// a router's buffer).
pub(crate) const MAX_BACKLOG: Duration = Duration::from_millis(500);

/// One direction of one link.
#[derive(Debug, Clone)]
pub(crate) struct LinkDirection {
    imp: Impairment,
    rng: Rng,
    /// When the serializer is next free (rate limiting).
    busy_until: Option<Instant>,
    passthrough: bool,
}

impl LinkDirection {
    pub(crate) fn new(imp: Impairment, seed: u64) -> Self {
        let passthrough = imp.delay.is_zero()
            && imp.jitter.is_zero()
            && imp.loss <= 0.0
            && imp.rate_bps.is_none();
        Self {
            imp,
            rng: Rng::new(seed),
            busy_until: None,
            passthrough,
        }
    }

    /// True when this direction never delays or drops anything.
    #[cfg(test)]
    pub(crate) fn is_passthrough(&self) -> bool {
        self.passthrough
    }

    /// Decide one packet of `len` bytes entering at `now`.
    pub(crate) fn admit(&mut self, now: Instant, len: usize) -> Fate {
        if self.passthrough {
            return Fate::Now;
        }
        if self.imp.loss > 0.0 && (self.imp.loss >= 1.0 || self.rng.next_f64() < self.imp.loss) {
            return Fate::Lost;
        }
        let mut depart = now;
        if let Some(rate) = self.imp.rate_bps.filter(|r| *r > 0) {
            let start = self.busy_until.map_or(now, |b| b.max(now));
            if start.saturating_duration_since(now) > MAX_BACKLOG {
                return Fate::QueueFull;
            }
            let bits = (len as u128) * 8;
            let nanos = bits * 1_000_000_000 / u128::from(rate);
            let done = start + Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX));
            self.busy_until = Some(done);
            depart = done;
        }
        depart += self.imp.delay;
        if !self.imp.jitter.is_zero() {
            let j = self.imp.jitter.as_nanos() as f64 * self.rng.next_f64();
            depart += Duration::from_nanos(j as u64);
        }
        if depart <= now {
            Fate::Now
        } else {
            Fate::At(depart)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn imp(delay_ms: u64, jitter_ms: u64, loss: f64, rate: Option<u64>) -> Impairment {
        Impairment {
            delay: Duration::from_millis(delay_ms),
            jitter: Duration::from_millis(jitter_ms),
            loss,
            rate_bps: rate,
        }
    }

    #[test]
    fn zero_impairment_is_passthrough() {
        let mut l = LinkDirection::new(Impairment::default(), 1);
        assert!(l.is_passthrough());
        assert_eq!(l.admit(Instant::now(), 1500), Fate::Now);
    }

    #[test]
    fn delay_and_jitter_bound_departure() {
        let now = Instant::now();
        let mut l = LinkDirection::new(imp(50, 10, 0.0, None), 7);
        for _ in 0..1000 {
            match l.admit(now, 100) {
                Fate::At(t) => {
                    let d = t - now;
                    assert!(
                        d >= Duration::from_millis(50) && d <= Duration::from_millis(60),
                        "{d:?}"
                    );
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn loss_is_reproducible_and_close_to_probability() {
        let count = |seed| {
            let mut l = LinkDirection::new(imp(0, 0, 0.5, None), seed);
            (0..10_000)
                .filter(|_| l.admit(Instant::now(), 100) == Fate::Lost)
                .count()
        };
        assert_eq!(count(42), count(42));
        let c = count(42);
        assert!((4_500..5_500).contains(&c), "{c}");
        assert_ne!(count(42), count(43));
        let mut all = LinkDirection::new(imp(0, 0, 1.0, None), 1);
        assert!((0..100).all(|_| all.admit(Instant::now(), 1) == Fate::Lost));
    }

    #[test]
    fn rate_serializes_back_to_back_packets_and_bounds_the_queue() {
        let now = Instant::now();
        // 1 Mbit/s: 1250 bytes take 10 ms.
        let mut l = LinkDirection::new(imp(0, 0, 0.0, Some(1_000_000)), 1);
        assert_eq!(
            l.admit(now, 1250),
            Fate::At(now + Duration::from_millis(10))
        );
        assert_eq!(
            l.admit(now, 1250),
            Fate::At(now + Duration::from_millis(20))
        );
        // Later arrival after the queue drained starts afresh.
        let later = now + Duration::from_secs(1);
        assert_eq!(
            l.admit(later, 1250),
            Fate::At(later + Duration::from_millis(10))
        );
        // Fill beyond the backlog limit.
        let mut full = 0;
        for _ in 0..200 {
            if l.admit(later, 1250) == Fate::QueueFull {
                full += 1;
            }
        }
        assert!(full > 100, "{full}");
    }
}
