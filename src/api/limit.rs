//! Rate limits (governor's keyed GCRA limiters): per client IP on the endpoints that mint
//! tokens (`/v1/anonymous`, `/v1/identify`), per user on what a token may send (`/v1/events`,
//! `/v1/decide`, WebSocket messages). Over a limit the answer is 429 `rate_limited` with
//! `Retry-After` (a WebSocket gets the same code as a message); each refusal counts in
//! `trimtab_events_rejected_total{reason="rate_*"}`. Idle keys are dropped every minute, so the
//! limiters' memory follows the active clients, not every client ever seen.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use actix_web::HttpRequest;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

use super::ApiError;
use crate::config::RateConfig;
use crate::event::Code;
use crate::privacy::UserKey;

/// What is being limited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// New anonymous ids and their renewals, per IP.
    Anonymous,
    /// Tokens for the site's own ids, per IP (the site's server calls it for every login).
    Identify,
    /// Event batches, decide requests and WebSocket messages, per user.
    User,
}

impl Kind {
    fn reason(self) -> &'static str {
        match self {
            Kind::Anonymous => "rate_anonymous",
            Kind::Identify => "rate_identify",
            Kind::User => "rate_user",
        }
    }
}

/// The server's limiters.
pub struct Limiters {
    anonymous: Option<DefaultKeyedRateLimiter<IpAddr>>,
    identify: Option<DefaultKeyedRateLimiter<IpAddr>>,
    user: Option<DefaultKeyedRateLimiter<UserKey>>,
    trust_forwarded_for: bool,
}

/// `per_minute` requests a minute with bursts of `burst`; 0 turns the limit off.
fn quota(per_minute: u32, burst: u32) -> Option<Quota> {
    let rate = NonZeroU32::new(per_minute)?;
    let burst = NonZeroU32::new(burst.max(1))?;
    Some(Quota::per_minute(rate).allow_burst(burst))
}

impl Limiters {
    pub fn new(cfg: &RateConfig, trust_forwarded_for: bool) -> Limiters {
        Limiters {
            anonymous: quota(cfg.anonymous_per_min, cfg.anonymous_burst)
                .map(DefaultKeyedRateLimiter::keyed),
            identify: quota(cfg.identify_per_min, cfg.identify_burst)
                .map(DefaultKeyedRateLimiter::keyed),
            user: quota(cfg.user_per_min, cfg.user_burst).map(DefaultKeyedRateLimiter::keyed),
            trust_forwarded_for,
        }
    }

    /// The client's IP: the peer, or with `http.trust_forwarded_for` the address the proxy
    /// appended last to `X-Forwarded-For`.
    pub fn client_ip(&self, req: &HttpRequest) -> Option<IpAddr> {
        if self.trust_forwarded_for {
            let forwarded = req
                .headers()
                .get_all("x-forwarded-for")
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .filter_map(|a| a.trim().parse().ok())
                .last();
            if forwarded.is_some() {
                return forwarded;
            }
        }
        req.peer_addr().map(|a| a.ip())
    }

    /// Admits one request of `kind` from the client of `req` (per IP; `Kind::User` is
    /// limited per user, by [`Limiters::check_user`]).
    pub fn check_ip(&self, req: &HttpRequest, kind: Kind) -> Result<(), Limited> {
        let lim = match kind {
            Kind::Anonymous => &self.anonymous,
            Kind::Identify => &self.identify,
            Kind::User => return Ok(()),
        };
        match self.client_ip(req) {
            Some(ip) => admit(lim, &ip, kind),
            None => Ok(()),
        }
    }

    /// Admits one batch, decide request or message of `user`.
    pub fn check_user(&self, user: &UserKey) -> Result<(), Limited> {
        admit(&self.user, user, Kind::User)
    }

    /// Drops the state of keys idle long enough to be back at a full burst.
    pub fn forget_idle(&self) {
        forget(&self.anonymous);
        forget(&self.identify);
        forget(&self.user);
    }
}

/// One request against `lim` (none: not limited).
fn admit<K: std::hash::Hash + Eq + Clone>(
    lim: &Option<DefaultKeyedRateLimiter<K>>,
    key: &K,
    kind: Kind,
) -> Result<(), Limited> {
    let Some(l) = lim else {
        return Ok(());
    };
    l.check_key(key).map_err(|not_until| Limited {
        kind,
        retry_after: not_until.wait_time_from(DefaultClock::default().now()),
    })
}

fn forget<K: std::hash::Hash + Eq + Clone>(lim: &Option<DefaultKeyedRateLimiter<K>>) {
    if let Some(l) = lim {
        l.retain_recent();
        l.shrink_to_fit();
    }
}

/// A refusal: what was limited and when to retry.
#[derive(Debug, Clone, Copy)]
pub struct Limited {
    pub kind: Kind,
    pub retry_after: Duration,
}

impl Limited {
    /// The metric label of the refusal.
    pub fn reason(&self) -> &'static str {
        self.kind.reason()
    }

    /// Whole seconds to wait (at least 1), for `Retry-After`.
    pub fn retry_after_s(&self) -> u64 {
        self.retry_after.as_secs_f64().ceil().max(1.0) as u64
    }

    /// The 429 answer.
    pub fn error(&self) -> ApiError {
        let what = match self.kind {
            Kind::Anonymous => "anonymous tokens from this address",
            Kind::Identify => "identify requests from this address",
            Kind::User => "requests for this user",
        };
        ApiError::new(
            Code::RateLimited,
            format!("too many {what}; retry after {} s", self.retry_after_s()),
        )
        .retry_after(self.retry_after_s())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_the_rate_holds_and_zero_turns_a_limit_off() {
        let cfg = RateConfig {
            user_per_min: 60,
            user_burst: 3,
            ..RateConfig::default()
        };
        let l = Limiters::new(&cfg, false);
        let u = UserKey([1; 16]);
        for _ in 0..3 {
            l.check_user(&u).unwrap();
        }
        let e = l.check_user(&u).unwrap_err();
        assert_eq!(e.reason(), "rate_user");
        assert_eq!(e.retry_after_s(), 1);
        // Another user has its own budget.
        l.check_user(&UserKey([2; 16])).unwrap();
        let off = Limiters::new(
            &RateConfig {
                user_per_min: 0,
                ..cfg
            },
            false,
        );
        for _ in 0..1000 {
            off.check_user(&u).unwrap();
        }
    }
}
