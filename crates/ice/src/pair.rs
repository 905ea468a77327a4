//! Candidate pairs (RFC 8445 §6.1.2): priority and state.

use stun::transaction::Transaction;

/// State of a candidate pair (RFC 8445 §6.1.2.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PairState {
    /// Waiting for a check of its foundation to succeed.
    Frozen,
    /// Ready to be checked.
    Waiting,
    /// A check is in flight.
    InProgress,
    /// A check succeeded.
    Succeeded,
    /// Checks failed (timeout, error, or asymmetric response).
    Failed,
}

/// Pair priority (RFC 8445 §6.1.2.3): `2^32*MIN(G,D) + 2*MAX(G,D) + (G>D?1:0)`, with G the
/// controlling agent's candidate priority and D the controlled agent's.
pub const fn pair_priority(g: u32, d: u32) -> u64 {
    let (min, max) = if g < d { (g, d) } else { (d, g) };
    // Candidate priorities are below 2^31 (type preference <= 126); saturate anyway.
    ((min as u64) << 32)
        .saturating_add(2 * (max as u64))
        .saturating_add(if g > d { 1 } else { 0 })
}

/// An in-flight connectivity check.
#[derive(Debug)]
pub(crate) struct Check {
    pub(crate) tx: Transaction,
    pub(crate) use_candidate: bool,
    pub(crate) controlling: bool,
    pub(crate) priority: u32,
    /// The encoded request, for an early resend.
    pub(crate) request: Vec<u8>,
    /// Already resent once because the peer's check came in.
    pub(crate) resent: bool,
}

#[derive(Debug)]
pub(crate) struct CandidatePair {
    pub(crate) local: usize,
    pub(crate) remote: usize,
    pub(crate) priority: u64,
    pub(crate) foundation: String,
    pub(crate) state: PairState,
    pub(crate) tx: Option<Check>,
    pub(crate) nominated: bool,
    /// Controlled: the peer nominated this pair before our check on it succeeded.
    pub(crate) nominate_on_success: bool,
    /// In the valid list.
    pub(crate) valid: bool,
    /// The valid pair this pair's successful check produced.
    pub(crate) valid_of: Option<usize>,
    pub(crate) rtt: Option<std::time::Duration>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pair_priority_rfc8445_6_1_2_3() {
        assert_eq!(pair_priority(1, 2), (1u64 << 32) + 4);
        assert_eq!(pair_priority(2, 1), (1u64 << 32) + 5);
        // Both sides compute the same value for the same pair when roles are consistent.
        let (a, b) = (2_130_706_431u32, 1_694_498_815u32);
        assert_eq!(pair_priority(a, b), pair_priority(a, b));
        assert!(pair_priority(a, a) > pair_priority(a, a - 1));
        assert_eq!(pair_priority(u32::MAX, u32::MAX), u64::MAX);
    }
}
