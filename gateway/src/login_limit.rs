//! Login throttling: failed password attempts are counted per account and per client address
//! (sign-ups per address, in a limiter of their own) within a window; past a limit, further attempts are refused (429) until the window has
//! moved on, whatever the password. Successful logins clear the account's count.
//!
//! In memory, per gateway process: a restart or a second gateway replica starts its own counts,
//! which still bounds guessing to a few attempts per window per process. Pure apart from the
//! clock, which callers pass in.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// How many failures are allowed within `window` before attempts are refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginLimits {
    pub per_account: usize,
    pub per_address: usize,
    pub window: Duration,
}

impl LoginLimits {
    /// Sign-ups per address: each costs an argon2 hash, so a flood of them is a way to burn the
    /// gateway's CPU. Generous, since on one machine every client is the loopback address.
    pub const SIGNUPS: LoginLimits = LoginLimits {
        per_account: usize::MAX,
        per_address: 100,
        window: Duration::from_secs(3600),
    };
}

impl Default for LoginLimits {
    fn default() -> Self {
        LoginLimits {
            per_account: 5,
            per_address: 20,
            window: Duration::from_secs(15 * 60),
        }
    }
}

/// An attempt refused before its password was even checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttled {
    /// Whether the account's limit (rather than the address's) refused it.
    pub account: bool,
    /// When the oldest counted failure leaves the window.
    pub retry_after: Duration,
}

/// Bounds the memory an attacker cycling through names or addresses can make us hold.
const MAX_TRACKED: usize = 100_000;

#[derive(Debug, Default)]
pub struct LoginLimiter {
    limits: LoginLimits,
    accounts: HashMap<String, VecDeque<Instant>>,
    addresses: HashMap<IpAddr, VecDeque<Instant>>,
}

impl LoginLimiter {
    pub fn new(limits: LoginLimits) -> Self {
        LoginLimiter {
            limits,
            ..Default::default()
        }
    }

    /// Whether an attempt for `account` from `address` may check its password now.
    pub fn check(&mut self, account: &str, address: IpAddr, now: Instant) -> Result<(), Throttled> {
        let window = self.limits.window;
        if let Some(f) = self.accounts.get_mut(account)
            && let Some(wait) = over(f, self.limits.per_account, window, now)
        {
            return Err(Throttled {
                account: true,
                retry_after: wait,
            });
        }
        if let Some(f) = self.addresses.get_mut(&address)
            && let Some(wait) = over(f, self.limits.per_address, window, now)
        {
            return Err(Throttled {
                account: false,
                retry_after: wait,
            });
        }
        Ok(())
    }

    /// Counts an attempt that is limited: a wrong password (or an unknown account: the same,
    /// so names cannot be probed), or a sign-up.
    pub fn count(&mut self, account: &str, address: IpAddr, now: Instant) {
        if self.accounts.len() >= MAX_TRACKED || self.addresses.len() >= MAX_TRACKED {
            self.forget_expired(now);
        }
        let (per_account, per_address) = (self.limits.per_account, self.limits.per_address);
        push(
            self.accounts.entry(account.to_string()).or_default(),
            per_account,
            now,
        );
        push(self.addresses.entry(address).or_default(), per_address, now);
    }

    /// A correct password clears the account's failures (not the address's: one address
    /// guessing at many accounts stays limited).
    pub fn succeeded(&mut self, account: &str) {
        self.accounts.remove(account);
    }

    /// How many failures of `account` count now.
    pub fn failures(&mut self, account: &str, now: Instant) -> usize {
        let window = self.limits.window;
        self.accounts.get_mut(account).map_or(0, |f| {
            expire(f, window, now);
            f.len()
        })
    }

    fn forget_expired(&mut self, now: Instant) {
        let window = self.limits.window;
        self.accounts.retain(|_, f| {
            expire(f, window, now);
            !f.is_empty()
        });
        self.addresses.retain(|_, f| {
            expire(f, window, now);
            !f.is_empty()
        });
        // Still full of live entries: drop them all rather than grow without bound.
        if self.accounts.len() >= MAX_TRACKED {
            self.accounts.clear();
        }
        if self.addresses.len() >= MAX_TRACKED {
            self.addresses.clear();
        }
    }
}

fn expire(failures: &mut VecDeque<Instant>, window: Duration, now: Instant) {
    while failures
        .front()
        .is_some_and(|t| now.saturating_duration_since(*t) >= window)
    {
        failures.pop_front();
    }
}

/// How long until an attempt is allowed, if `failures` already reached `limit`.
fn over(
    failures: &mut VecDeque<Instant>,
    limit: usize,
    window: Duration,
    now: Instant,
) -> Option<Duration> {
    expire(failures, window, now);
    (failures.len() >= limit).then(|| {
        let oldest = failures.front().copied().unwrap_or(now);
        window.saturating_sub(now.saturating_duration_since(oldest))
    })
}

/// Only the newest `limit` failures matter, so no more are kept.
fn push(failures: &mut VecDeque<Instant>, limit: usize, now: Instant) {
    failures.push_back(now);
    while failures.len() > limit.max(1) {
        failures.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: LoginLimits = LoginLimits {
        per_account: 3,
        per_address: 5,
        window: Duration::from_secs(60),
    };

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n])
    }

    #[test]
    fn an_account_is_refused_after_its_limit_of_failures() {
        let (mut l, t) = (LoginLimiter::new(LIMITS), Instant::now());
        for i in 0..3 {
            assert_eq!(l.check("alice", ip(i), t), Ok(()));
            l.count("alice", ip(i), t);
        }
        let e = l.check("alice", ip(9), t).unwrap_err();
        assert!(e.account);
        assert_eq!(e.retry_after, Duration::from_secs(60));
        assert_eq!(
            l.check("bob", ip(9), t),
            Ok(()),
            "other accounts are not affected"
        );
    }

    #[test]
    fn an_address_is_refused_after_its_limit_across_accounts() {
        let (mut l, t) = (LoginLimiter::new(LIMITS), Instant::now());
        for i in 0..5 {
            l.count(&format!("user{i}"), ip(1), t);
        }
        let e = l.check("someone-else", ip(1), t).unwrap_err();
        assert!(!e.account);
        assert_eq!(l.check("someone-else", ip(2), t), Ok(()));
    }

    #[test]
    fn failures_leave_the_window() {
        let (mut l, t) = (LoginLimiter::new(LIMITS), Instant::now());
        for s in 0..3 {
            l.count("alice", ip(1), t + Duration::from_secs(s * 10));
        }
        let later = t + Duration::from_secs(30);
        assert_eq!(
            l.check("alice", ip(1), later).unwrap_err().retry_after,
            Duration::from_secs(30),
            "until the oldest failure is a window old"
        );
        assert_eq!(l.check("alice", ip(1), t + Duration::from_secs(60)), Ok(()));
        assert_eq!(l.failures("alice", t + Duration::from_secs(60)), 2);
    }

    #[test]
    fn a_success_clears_the_account_but_not_the_address() {
        let (mut l, t) = (LoginLimiter::new(LIMITS), Instant::now());
        for _ in 0..2 {
            l.count("alice", ip(1), t);
        }
        l.succeeded("alice");
        assert_eq!(l.failures("alice", t), 0);
        for _ in 0..3 {
            l.count("bob", ip(1), t);
        }
        assert!(
            l.check("carol", ip(1), t).is_err(),
            "the address kept all five"
        );
    }
}
