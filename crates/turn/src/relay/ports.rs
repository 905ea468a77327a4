//! Relay addresses: the [`RelayPorts`] trait through which the core asks its driver for a relay
//! address (the driver binds the socket), and [`PortPool`], the sans-IO pool of ports of the
//! configured range, shuffled with a seeded RNG so relay ports are not predictable.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::ops::RangeInclusive;

use rand::SeedableRng;
use rand::seq::SliceRandom;

/// Address family of a relay address (REQUESTED-ADDRESS-FAMILY).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    /// The family of an address.
    pub fn of(addr: &SocketAddr) -> Family {
        if addr.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }
}

/// What the core needs from its driver to create and free relay addresses.
pub trait RelayPorts {
    /// Does this server relay on `family` at all (else 440)?
    fn supports(&self, family: Family) -> bool;
    /// Bind a relay socket of `family` (with an even port when `even`) and return its
    /// address; `None` when no port is left (508).
    fn acquire(&mut self, family: Family, even: bool) -> Option<SocketAddr>;
    /// Close the relay socket of `addr`: its allocation is gone.
    fn release(&mut self, addr: SocketAddr);
}

/// The ports of one relay IP, handed out in a seeded random order; freed ports go to the back,
/// so a port is not reused while stray packets for its last allocation may still arrive.
#[derive(Debug, Clone)]
pub struct PortPool {
    free: VecDeque<u16>,
    range: RangeInclusive<u16>,
}

impl PortPool {
    /// Every port of `range`, shuffled with `seed`.
    pub fn new(range: RangeInclusive<u16>, seed: u64) -> Self {
        let mut ports: Vec<u16> = range.clone().collect();
        ports.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
        PortPool {
            free: ports.into(),
            range,
        }
    }

    /// Ports not in use.
    pub fn available(&self) -> usize {
        self.free.len()
    }

    /// The configured range.
    pub fn range(&self) -> RangeInclusive<u16> {
        self.range.clone()
    }

    /// Take a port (an even one when `even`: the first even one in the queue).
    pub fn take(&mut self, even: bool) -> Option<u16> {
        if even {
            let i = self.free.iter().position(|p| p % 2 == 0)?;
            self.free.remove(i)
        } else {
            self.free.pop_front()
        }
    }

    /// Give a port back (ignored when outside the range).
    pub fn put(&mut self, port: u16) {
        if self.range.contains(&port) {
            self.free.push_back(port);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_is_seeded_and_reuses_ports_last() {
        let mut a = PortPool::new(50000..=50009, 1);
        let mut b = PortPool::new(50000..=50009, 1);
        let xs: Vec<_> = (0..10).map(|_| a.take(false).unwrap()).collect();
        let ys: Vec<_> = (0..10).map(|_| b.take(false).unwrap()).collect();
        assert_eq!(xs, ys, "same seed, same order");
        assert_ne!(xs, (50000..=50009).collect::<Vec<_>>(), "shuffled");
        assert_eq!(a.take(false), None, "exhausted");
        a.put(xs[3]);
        a.put(1);
        assert_eq!(a.available(), 1);
        assert_eq!(a.take(true).map(|p| p % 2), (xs[3] % 2 == 0).then_some(0));
    }
}
