//! Per-address rate limits for public routes that take input (`/track`): a token bucket per client
//! address (`governor`), bounded in memory.

use std::net::IpAddr;
use std::num::NonZeroU32;

/// Requests per client address per minute, with a burst of the same size.
pub struct PerAddress {
    limiter: governor::DefaultKeyedRateLimiter<IpAddr>,
}

/// Addresses tracked before the state is pruned of those whose budget has refilled.
const PRUNE_AT: usize = 100_000;

impl PerAddress {
    pub fn per_minute(n: u32) -> Self {
        let n = NonZeroU32::new(n.max(1)).expect("at least 1");
        Self { limiter: governor::RateLimiter::keyed(governor::Quota::per_minute(n).allow_burst(n)) }
    }

    /// Whether `ip` may make one more request now. IPv6 clients are limited per /64 (one subscriber's
    /// prefix), so rotating through a prefix's addresses buys nothing.
    pub fn allow(&self, ip: IpAddr) -> bool {
        if self.limiter.len() > PRUNE_AT {
            self.limiter.retain_recent();
        }
        let key = match ip {
            IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => {
                let mut o = v6.octets();
                o[8..].fill(0);
                IpAddr::V6(o.into())
            }
            other => other,
        };
        self.limiter.check_key(&key).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_address_has_its_own_budget() {
        let limit = PerAddress::per_minute(3);
        let a: IpAddr = "203.0.113.1".parse().unwrap();
        let b: IpAddr = "203.0.113.2".parse().unwrap();
        assert_eq!((0..5).filter(|_| limit.allow(a)).count(), 3);
        assert!(limit.allow(b), "another address is not slowed by the first");
        let v6 = PerAddress::per_minute(1);
        assert!(v6.allow("2001:db8::1".parse().unwrap()));
        assert!(!v6.allow("2001:db8::2".parse().unwrap()), "one /64, one budget");
        assert!(v6.allow("2001:db8:0:1::1".parse().unwrap()), "another /64");
    }
}
