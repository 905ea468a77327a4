//! Allocation quotas per user and in total (486 Allocation Quota Reached), shared by every
//! worker and connection of a server. Only touched when an allocation is created or freed.
//!
//! The per-user count is keyed on the user, not the credential: a REST API username
//! `expiry:user` counts for `user`, so a client that mints many credentials (one per call, as
//! WebRTC services do) still gets `per_user` allocations in all.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

/// Quota bookkeeping.
#[derive(Debug)]
pub struct Quota {
    per_user: usize,
    total: usize,
    live: Mutex<(usize, HashMap<String, usize>)>,
}

impl Quota {
    /// At most `per_user` allocations per username and `total` in all; 0 means no limit.
    pub fn new(per_user: usize, total: usize) -> Self {
        Quota {
            per_user,
            total,
            live: Mutex::new((0, HashMap::new())),
        }
    }

    /// Count one more allocation for `user`; false when a quota is reached.
    pub fn try_acquire(&self, user: &str) -> bool {
        let user = quota_user(user);
        let mut g = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        let (total, users) = &mut *g;
        if self.total != 0 && *total >= self.total {
            return false;
        }
        let n = users.get(user).copied().unwrap_or(0);
        if self.per_user != 0 && n >= self.per_user {
            return false;
        }
        *total += 1;
        users.insert(user.to_owned(), n + 1);
        true
    }

    /// One allocation of `user` is gone.
    pub fn release(&self, user: &str) {
        let user = quota_user(user);
        let mut g = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        let (total, users) = &mut *g;
        *total = total.saturating_sub(1);
        if let Some(n) = users.get_mut(user) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                users.remove(user);
            }
        }
    }

    /// Live allocations in total.
    pub fn live(&self) -> usize {
        self.live.lock().unwrap_or_else(PoisonError::into_inner).0
    }

    /// Users with at least one allocation.
    pub fn users(&self) -> usize {
        self.live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .1
            .len()
    }
}

/// The user a username's allocations count for: `user` for a REST API name `expiry:user`
/// (digits, a colon, the rest), else the whole name.
pub fn quota_user(username: &str) -> &str {
    match username.split_once(':') {
        Some((stamp, user)) if !stamp.is_empty() && stamp.bytes().all(|b| b.is_ascii_digit()) => {
            user
        }
        _ => username,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_user_and_total() {
        let q = Quota::new(2, 3);
        assert!(q.try_acquire("a") && q.try_acquire("a"));
        assert!(!q.try_acquire("a"), "per user");
        assert!(q.try_acquire("b"));
        assert!(!q.try_acquire("c"), "total");
        q.release("a");
        assert!(q.try_acquire("c"));
        for u in ["a", "b", "c"] {
            q.release(u);
        }
        assert_eq!((q.live(), q.users()), (0, 0));
    }

    #[test]
    fn rest_credentials_count_for_their_user() {
        assert_eq!(quota_user("1700000100:carol"), "carol");
        assert_eq!(quota_user("1700000100:carol:x"), "carol:x");
        assert_eq!(quota_user("1700000100"), "1700000100");
        assert_eq!(quota_user("alice"), "alice");
        assert_eq!(quota_user("a1:carol"), "a1:carol");
        assert_eq!(quota_user(":carol"), ":carol");
        let q = Quota::new(2, 0);
        assert!(q.try_acquire("1700000100:carol"));
        assert!(q.try_acquire("1700000101:carol"));
        assert!(
            !q.try_acquire("1700000102:carol"),
            "a new credential, same user"
        );
        assert!(!q.try_acquire("carol"));
        assert!(q.try_acquire("1700000102:dave"));
        q.release("1700000100:carol");
        assert!(q.try_acquire("1700000103:carol"));
        assert_eq!((q.live(), q.users()), (3, 2));
    }
}
