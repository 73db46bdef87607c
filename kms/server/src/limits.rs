//! Call rate limits (`[limits]`): a token bucket per principal (the client certificate's name)
//! that every call spends from, on every service, and one per peer IP address for calls whose
//! caller is not established (identification failures, admin requests that fail
//! authentication), which are otherwise audited one row each. A call over its bucket is refused
//! with `rate_limited` (RESOURCE_EXHAUSTED) and counted, not audited one by one; each interval
//! one audit record per refused caller says how many (`limits.refused`), so a flood cannot grow
//! the audit log by a row per call.
//!
//! The buckets are per replica (an operator running N replicas behind a balancer allows up to N
//! times the rate); they are in memory and forgotten when idle.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use kms_core::ids::Principal;
use kms_proto::Reason;

use crate::audit::{Audit, AuditLog};
use crate::config::LimitsConfig;
use crate::error::ApiError;

/// One bucket per key of `K`, or none (the limit is off).
struct Buckets<K: std::hash::Hash + Eq + Clone> {
    limiter: Option<DefaultKeyedRateLimiter<K>>,
    per_second: u32,
    setting: &'static str,
}

impl<K: std::hash::Hash + Eq + Clone> Buckets<K> {
    fn new(per_second: u32, burst: u32, setting: &'static str) -> Self {
        let limiter = NonZeroU32::new(per_second).map(|rate| {
            let burst = NonZeroU32::new(burst.max(per_second)).unwrap_or(rate);
            RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
        });
        Self {
            limiter,
            per_second,
            setting,
        }
    }

    /// `Err(wait)` when `key`'s bucket is empty.
    fn check(&self, key: &K, clock: &DefaultClock) -> Result<(), Duration> {
        match &self.limiter {
            None => Ok(()),
            Some(l) => l
                .check_key(key)
                .map_err(|not_until| not_until.wait_time_from(clock.now())),
        }
    }

    fn forget_idle(&self) {
        if let Some(l) = &self.limiter {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }
}

/// The rate limits of one kmsd process.
pub struct Limits {
    principals: Buckets<Principal>,
    peers: Buckets<IpAddr>,
    clock: DefaultClock,
    /// Refusals since the last report, by (kind, caller).
    refused: Mutex<BTreeMap<(&'static str, String), u64>>,
    report_interval: Duration,
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limits")
            .field("principal_per_second", &self.principals.per_second)
            .field("unauthenticated_per_second", &self.peers.per_second)
            .finish_non_exhaustive()
    }
}

impl Limits {
    /// Limits as configured (a rate of 0 turns that limit off).
    pub fn new(cfg: &LimitsConfig) -> Self {
        Self {
            principals: Buckets::new(
                cfg.principal_per_second,
                cfg.principal_burst,
                "limits.principal_per_second",
            ),
            peers: Buckets::new(
                cfg.unauthenticated_per_second,
                cfg.unauthenticated_burst,
                "limits.unauthenticated_per_second",
            ),
            clock: DefaultClock::default(),
            refused: Mutex::default(),
            report_interval: Duration::from_secs(cfg.report_interval_secs.max(1)),
        }
    }

    /// A call by `who` (identified by its client certificate).
    pub fn check_principal(&self, who: &Principal) -> Result<(), ApiError> {
        self.principals
            .check(who, &self.clock)
            .map_err(|wait| self.refuse("principal", who.as_str().to_owned(), &self.principals, wait))
    }

    /// A call from `peer` whose caller is not established, before it is audited (`None`: no
    /// address, e.g. a Unix socket, is never limited here).
    pub fn check_peer(&self, peer: Option<IpAddr>) -> Result<(), ApiError> {
        let Some(ip) = peer else { return Ok(()) };
        self.peers
            .check(&ip, &self.clock)
            .map_err(|wait| self.refuse("peer", ip.to_string(), &self.peers, wait))
    }

    fn refuse<K: std::hash::Hash + Eq + Clone>(
        &self,
        kind: &'static str,
        who: String,
        buckets: &Buckets<K>,
        wait: Duration,
    ) -> ApiError {
        let msg = format!(
            "{kind} {who} is over {} calls per second ({}): retry in {} ms",
            buckets.per_second,
            buckets.setting,
            wait.as_millis().max(1)
        );
        *self
            .refused
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry((kind, who))
            .or_default() += 1;
        ApiError::new(Reason::RateLimited, msg)
    }

    /// Takes the refusal counts since the last call.
    pub fn take_refused(&self) -> BTreeMap<(&'static str, String), u64> {
        std::mem::take(&mut *self.refused.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// Every `limits.report_interval_secs`: one audit record per caller that was refused, with
    /// the count, and the idle buckets forgotten. Runs until the process ends.
    pub async fn report(self: std::sync::Arc<Self>, audit: AuditLog) {
        let mut tick = tokio::time::interval(self.report_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            for ((kind, who), n) in self.take_refused() {
                tracing::warn!(kind, caller = %who, refused = n, "calls refused by the rate limit");
                let caller = match kind {
                    "principal" => who.clone(),
                    _ => format!("peer:{who}"),
                };
                let mut record = Audit::new(caller, "limits.refused");
                record.detail("refused", n);
                record.detail("interval_secs", self.report_interval.as_secs());
                let e = ApiError::new(Reason::RateLimited, format!("{n} calls refused by the rate limit"));
                audit.record(record.failed(&e)).await;
            }
            self.principals.forget_idle();
            self.peers.forget_idle();
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn limits(principal: u32, peer: u32) -> Limits {
        Limits::new(&LimitsConfig {
            principal_per_second: principal,
            principal_burst: principal,
            unauthenticated_per_second: peer,
            unauthenticated_burst: peer,
            report_interval_secs: 60,
        })
    }

    #[test]
    fn a_bucket_refuses_past_its_burst_and_counts_each_refusal() {
        let l = limits(3, 2);
        let app = Principal::new("spiffe://eu/app");
        for _ in 0..3 {
            l.check_principal(&app).unwrap();
        }
        let e = l.check_principal(&app).unwrap_err();
        assert_eq!(e.reason, Reason::RateLimited);
        assert!(e.message.contains("limits.principal_per_second"), "{}", e.message);
        // Another principal has its own bucket.
        l.check_principal(&Principal::new("spiffe://eu/other")).unwrap();
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        l.check_peer(Some(ip)).unwrap();
        l.check_peer(Some(ip)).unwrap();
        assert_eq!(l.check_peer(Some(ip)).unwrap_err().reason, Reason::RateLimited);
        l.check_peer(None).unwrap();
        let refused = l.take_refused();
        assert_eq!(refused.get(&("principal", app.as_str().to_owned())), Some(&1));
        assert_eq!(refused.get(&("peer", "192.0.2.7".to_owned())), Some(&1));
        assert!(l.take_refused().is_empty());
    }

    #[test]
    fn a_rate_of_zero_is_no_limit() {
        let l = limits(0, 0);
        let app = Principal::new("spiffe://eu/app");
        for _ in 0..10_000 {
            l.check_principal(&app).unwrap();
        }
    }
}
