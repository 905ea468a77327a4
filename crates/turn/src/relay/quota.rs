//! Allocation quotas per user and in total (486 Allocation Quota Reached), shared by every
//! worker and connection of a server. Only touched when an allocation is created or freed.

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
}
