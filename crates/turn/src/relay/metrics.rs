//! Relay counters: plain integers inside each core (no atomics on the hot path), published into
//! the server-wide [`Metrics`] by the driver once per batch, and rendered in the Prometheus text
//! exposition format.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Error codes counted separately (anything else is counted as "other").
pub const ERROR_CODES: [u16; 14] = [
    400, 401, 403, 420, 437, 438, 440, 441, 442, 443, 446, 486, 500, 508,
];

/// Why a packet was dropped without an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum DropReason {
    /// Not STUN, not ChannelData, or malformed.
    Malformed = 0,
    /// ChannelData, Send indication or other traffic for a 5-tuple without an allocation.
    NoAllocation = 1,
    /// No permission (or no bound channel) for the peer.
    NoPermission = 2,
    /// Over the allocation's bandwidth cap.
    Bandwidth = 3,
    /// Too big for the output buffer, a wrong FINGERPRINT, a stray response...
    Other = 4,
}

const DROP_NAMES: [&str; 5] = [
    "malformed",
    "no_allocation",
    "no_permission",
    "bandwidth",
    "other",
];

/// One core's counters since the last [`Counters::publish`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Counters {
    /// Allocations created.
    pub allocations_created: u64,
    /// Allocations deleted by a Refresh with lifetime 0 or by a shutdown.
    pub allocations_deleted: u64,
    /// Allocations that expired.
    pub allocations_expired: u64,
    /// Permissions installed (refreshes not counted).
    pub permissions_created: u64,
    /// Permissions that expired.
    pub permissions_expired: u64,
    /// Channels bound (refreshes not counted).
    pub channels_bound: u64,
    /// Channels that expired.
    pub channels_expired: u64,
    /// Datagrams relayed client → peer.
    pub packets_to_peer: u64,
    /// Payload bytes relayed client → peer.
    pub bytes_to_peer: u64,
    /// Datagrams relayed peer → client.
    pub packets_to_client: u64,
    /// Payload bytes relayed peer → client.
    pub bytes_to_client: u64,
    /// Success responses.
    pub responses: u64,
    /// Error responses by code, in the order of [`ERROR_CODES`], then "other".
    pub errors: [u64; ERROR_CODES.len() + 1],
    /// Requests whose credentials were wrong (unknown user, bad integrity, expired REST
    /// credential); the first unauthenticated leg of the nonce dance is not counted.
    pub auth_failures: u64,
    /// Dropped packets by reason.
    pub dropped: [u64; 5],
}

impl Counters {
    /// Count an error response.
    pub fn error(&mut self, code: u16) {
        let i = ERROR_CODES
            .iter()
            .position(|&c| c == code)
            .unwrap_or(ERROR_CODES.len());
        if let Some(e) = self.errors.get_mut(i) {
            *e += 1;
        }
    }

    /// Count a drop.
    pub fn drop(&mut self, why: DropReason) {
        if let Some(d) = self.dropped.get_mut(why as usize) {
            *d += 1;
        }
    }

    /// Errors sent with `code` (for tests and logs).
    pub fn errors_of(&self, code: u16) -> u64 {
        ERROR_CODES
            .iter()
            .position(|&c| c == code)
            .and_then(|i| self.errors.get(i).copied())
            .unwrap_or(0)
    }

    /// Add into `m` and reset.
    pub fn publish(&mut self, m: &Metrics) {
        fn add(a: &AtomicU64, n: u64) {
            if n != 0 {
                a.fetch_add(n, Relaxed);
            }
        }
        add(&m.allocations_created, self.allocations_created);
        add(&m.allocations_deleted, self.allocations_deleted);
        add(&m.allocations_expired, self.allocations_expired);
        add(&m.permissions_created, self.permissions_created);
        add(&m.permissions_expired, self.permissions_expired);
        add(&m.channels_bound, self.channels_bound);
        add(&m.channels_expired, self.channels_expired);
        add(&m.packets_to_peer, self.packets_to_peer);
        add(&m.bytes_to_peer, self.bytes_to_peer);
        add(&m.packets_to_client, self.packets_to_client);
        add(&m.bytes_to_client, self.bytes_to_client);
        add(&m.responses, self.responses);
        for (a, n) in m.errors.iter().zip(self.errors) {
            add(a, n);
        }
        add(&m.auth_failures, self.auth_failures);
        for (a, n) in m.dropped.iter().zip(self.dropped) {
            add(a, n);
        }
        *self = Counters::default();
    }
}

/// Server-wide counters.
#[derive(Debug, Default)]
pub struct Metrics {
    /// See [`Counters`].
    pub allocations_created: AtomicU64,
    /// See [`Counters`].
    pub allocations_deleted: AtomicU64,
    /// See [`Counters`].
    pub allocations_expired: AtomicU64,
    /// See [`Counters`].
    pub permissions_created: AtomicU64,
    /// See [`Counters`].
    pub permissions_expired: AtomicU64,
    /// See [`Counters`].
    pub channels_bound: AtomicU64,
    /// See [`Counters`].
    pub channels_expired: AtomicU64,
    /// See [`Counters`].
    pub packets_to_peer: AtomicU64,
    /// See [`Counters`].
    pub bytes_to_peer: AtomicU64,
    /// See [`Counters`].
    pub packets_to_client: AtomicU64,
    /// See [`Counters`].
    pub bytes_to_client: AtomicU64,
    /// See [`Counters`].
    pub responses: AtomicU64,
    /// See [`Counters`].
    pub errors: [AtomicU64; ERROR_CODES.len() + 1],
    /// See [`Counters`].
    pub auth_failures: AtomicU64,
    /// See [`Counters`].
    pub dropped: [AtomicU64; 5],
}

impl Metrics {
    /// Allocations alive now.
    pub fn allocations_active(&self) -> u64 {
        self.allocations_created.load(Relaxed).saturating_sub(
            self.allocations_deleted.load(Relaxed) + self.allocations_expired.load(Relaxed),
        )
    }

    /// Error responses sent with `code`.
    pub fn errors_of(&self, code: u16) -> u64 {
        ERROR_CODES
            .iter()
            .position(|&c| c == code)
            .and_then(|i| self.errors.get(i))
            .map_or(0, |a| a.load(Relaxed))
    }

    /// Prometheus text format (version 0.0.4). `extra` are further `(name, help, value)`
    /// counters (the Binding server's).
    pub fn render(&self, extra: &[(&str, &str, u64)]) -> String {
        let mut s = String::with_capacity(4096);
        let mut counter = |name: &str, help: &str, v: u64| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        };
        counter(
            "turnd_allocations_created_total",
            "TURN allocations created.",
            self.allocations_created.load(Relaxed),
        );
        counter(
            "turnd_allocations_deleted_total",
            "TURN allocations deleted (Refresh with lifetime 0, shutdown).",
            self.allocations_deleted.load(Relaxed),
        );
        counter(
            "turnd_allocations_expired_total",
            "TURN allocations that expired.",
            self.allocations_expired.load(Relaxed),
        );
        counter(
            "turnd_permissions_created_total",
            "Permissions installed.",
            self.permissions_created.load(Relaxed),
        );
        counter(
            "turnd_permissions_expired_total",
            "Permissions that expired.",
            self.permissions_expired.load(Relaxed),
        );
        counter(
            "turnd_channels_bound_total",
            "Channels bound.",
            self.channels_bound.load(Relaxed),
        );
        counter(
            "turnd_channels_expired_total",
            "Channel bindings that expired.",
            self.channels_expired.load(Relaxed),
        );
        counter(
            "turnd_responses_total",
            "TURN success responses sent.",
            self.responses.load(Relaxed),
        );
        counter(
            "turnd_auth_failures_total",
            "Requests with wrong credentials.",
            self.auth_failures.load(Relaxed),
        );
        for (name, help, v) in extra {
            counter(name, help, *v);
        }
        let _ = writeln!(
            s,
            "# HELP turnd_allocations_active TURN allocations alive.\n\
             # TYPE turnd_allocations_active gauge\nturnd_allocations_active {}",
            self.allocations_active()
        );
        let _ = writeln!(
            s,
            "# HELP turnd_relayed_packets_total Datagrams relayed.\n\
             # TYPE turnd_relayed_packets_total counter\n\
             turnd_relayed_packets_total{{direction=\"to_peer\"}} {}\n\
             turnd_relayed_packets_total{{direction=\"to_client\"}} {}",
            self.packets_to_peer.load(Relaxed),
            self.packets_to_client.load(Relaxed)
        );
        let _ = writeln!(
            s,
            "# HELP turnd_relayed_bytes_total Payload bytes relayed.\n\
             # TYPE turnd_relayed_bytes_total counter\n\
             turnd_relayed_bytes_total{{direction=\"to_peer\"}} {}\n\
             turnd_relayed_bytes_total{{direction=\"to_client\"}} {}",
            self.bytes_to_peer.load(Relaxed),
            self.bytes_to_client.load(Relaxed)
        );
        let _ = writeln!(
            s,
            "# HELP turnd_error_responses_total TURN error responses by code.\n\
             # TYPE turnd_error_responses_total counter"
        );
        for (i, a) in self.errors.iter().enumerate() {
            let code = ERROR_CODES
                .get(i)
                .map_or_else(|| "other".to_owned(), u16::to_string);
            let _ = writeln!(
                s,
                "turnd_error_responses_total{{code=\"{code}\"}} {}",
                a.load(Relaxed)
            );
        }
        let _ = writeln!(
            s,
            "# HELP turnd_dropped_total Packets dropped without an answer, by reason.\n\
             # TYPE turnd_dropped_total counter"
        );
        for (name, a) in DROP_NAMES.iter().zip(&self.dropped) {
            let _ = writeln!(
                s,
                "turnd_dropped_total{{reason=\"{name}\"}} {}",
                a.load(Relaxed)
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_adds_and_resets_and_render_has_every_family() {
        let m = Metrics::default();
        let mut c = Counters {
            allocations_created: 2,
            packets_to_peer: 5,
            ..Default::default()
        };
        c.error(437);
        c.error(999);
        c.drop(DropReason::Bandwidth);
        c.publish(&m);
        assert_eq!(c, Counters::default());
        assert_eq!(m.errors_of(437), 1);
        let text = m.render(&[("turnd_binding_requests_total", "Binding requests.", 3)]);
        for line in [
            "turnd_allocations_created_total 2",
            "turnd_allocations_active 2",
            "turnd_relayed_packets_total{direction=\"to_peer\"} 5",
            "turnd_error_responses_total{code=\"437\"} 1",
            "turnd_error_responses_total{code=\"other\"} 1",
            "turnd_dropped_total{reason=\"bandwidth\"} 1",
            "turnd_binding_requests_total 3",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }
    }
}
