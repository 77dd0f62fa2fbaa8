//! The signature policy's verdicts on the images whose layers this daemon
//! serves, kept per image reference and manifest digest for a while: the
//! first `Prepare` of an image's layer asks the registry for its
//! signatures, the layers after it and the containers started soon after
//! reuse the answer. A verdict expires (a signature removed from the
//! registry stops new containers after [`VERDICT_TTL`]), rejections too
//! (an image signed after a refusal is accepted after as long), except a
//! refusal the registry's failure to answer caused, which is not kept. The policy
//! itself is read once, at start: a changed policy file takes effect when
//! the daemon restarts (the verdicts are in memory only).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::fs::latency::Histogram;
use crate::oci::digest::Digest;
use crate::oci::policy::Policy;
use crate::oci::reference::RegistryRef;
use crate::oci::signature::evaluate;
use crate::oci::transport::ImageSource;
use crate::sync::{KeyedLocks, lock};

/// How long a verdict is reused.
pub const VERDICT_TTL: Duration = Duration::from_secs(300);

/// Verdicts kept at most; the oldest goes first.
pub const MAX_VERDICTS: usize = 1024;

/// Verdicts given since start, by outcome, for the metrics endpoint.
pub static ACCEPTED: AtomicU64 = AtomicU64::new(0);
pub static REJECTED: AtomicU64 = AtomicU64::new(0);

/// How long each verdict took to reach: the signatures fetched from the
/// registry and checked against the policy's keys.
pub static VERIFY_TIME: Histogram = Histogram::new();

/// A policy and the verdicts it gave.
pub struct Verdicts {
    policy: Arc<Policy>,
    given: Mutex<HashMap<Key, (Instant, Outcome)>>,
    /// One evaluation per image at a time: the layers of one image prepared
    /// (or opened ahead) together wait for the first one's verdict instead
    /// of each asking the registry. Only callers of the same image wait;
    /// the map above is never locked across the registry's answer.
    evaluating: KeyedLocks<Key>,
}

/// The image reference as named (a policy scope may name a tag) and the
/// manifest digest.
type Key = (String, String);

/// A verdict: `Err` holds the one-line reason of a refusal.
type Outcome = Result<(), String>;

/// A verdict just given, and whether it may be reused: a refusal because
/// the registry failed to answer is not (a retry may be accepted).
struct Given {
    outcome: Outcome,
    keep: bool,
}

impl Verdicts {
    pub fn new(policy: Arc<Policy>) -> Self {
        Verdicts {
            policy,
            given: Mutex::new(HashMap::new()),
            evaluating: KeyedLocks::default(),
        }
    }

    /// The policy's verdict on `image` (as named by the layer's labels) at
    /// `manifest`: a recent one, or a new one read through `source`, which
    /// is opened only then. `Err(Ok(reason))` is a refusal (one line);
    /// `Err(Err(e))` an error opening the source, which is not kept.
    pub fn check<E>(
        &self,
        image: &RegistryRef,
        named: &str,
        manifest: &Digest,
        source: impl FnOnce() -> Result<Arc<dyn ImageSource>, E>,
    ) -> Result<(), Result<String, E>> {
        self.check_with(named, manifest.as_ref(), Instant::now(), || {
            let src = source()?;
            Ok(
                match evaluate(&self.policy, image, manifest, src.as_ref()) {
                    Ok(_) => Given {
                        outcome: Ok(()),
                        keep: true,
                    },
                    Err(r) => Given {
                        keep: !r.registry_failed,
                        outcome: Err(r.to_string()),
                    },
                },
            )
        })
    }

    fn check_with<E>(
        &self,
        named: &str,
        manifest: &str,
        now: Instant,
        evaluate: impl FnOnce() -> Result<Given, E>,
    ) -> Result<(), Result<String, E>> {
        let key = (named.to_string(), manifest.to_string());
        let recent = |now: Instant| {
            lock(&self.given)
                .get(&key)
                .filter(|(at, _)| now.saturating_duration_since(*at) < VERDICT_TTL)
                .map(|(_, v)| v.clone())
        };
        if let Some(v) = recent(now) {
            return v.map_err(Ok);
        }
        let _one_at_a_time = self.evaluating.lock(key.clone());
        // Given meanwhile by the caller this one waited for.
        if let Some(v) = recent(now) {
            return v.map_err(Ok);
        }
        let started = Instant::now();
        let Given {
            outcome: verdict,
            keep,
        } = evaluate().map_err(Err)?;
        VERIFY_TIME.observe(started.elapsed());
        match &verdict {
            Ok(()) => ACCEPTED.fetch_add(1, Ordering::Relaxed),
            Err(_) => REJECTED.fetch_add(1, Ordering::Relaxed),
        };
        if !keep {
            return verdict.map_err(Ok);
        }
        let mut given = lock(&self.given);
        if given.len() >= MAX_VERDICTS && !given.contains_key(&key) {
            given.retain(|_, (at, _)| now.saturating_duration_since(*at) < VERDICT_TTL);
            if given.len() >= MAX_VERDICTS
                && let Some(oldest) = given
                    .iter()
                    .min_by_key(|(_, (at, _))| *at)
                    .map(|(k, _)| k.clone())
            {
                given.remove(&oldest);
            }
        }
        given.insert(key, (now, verdict.clone()));
        verdict.map_err(Ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn verdicts() -> Verdicts {
        let policy = Policy::parse(
            br#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
            "test",
        )
        .unwrap();
        Verdicts::new(Arc::new(policy))
    }

    /// A verdict, a refusal too, is reused for a while and then asked for
    /// again; an error reaching the registry is never kept.
    #[test]
    fn verdicts_are_kept_for_a_while_and_errors_not_at_all() {
        let v = verdicts();
        let asked = Cell::new(0);
        let now = Instant::now();
        let ask = |at: Instant, verdict: Result<(), String>| {
            v.check_with::<&str>("r:t", "sha256:m", at, || {
                asked.set(asked.get() + 1);
                Ok(Given {
                    outcome: verdict,
                    keep: true,
                })
            })
        };
        assert_eq!(ask(now, Err("refused".into())), Err(Ok("refused".into())));
        assert_eq!(
            ask(now + VERDICT_TTL / 2, Ok(())),
            Err(Ok("refused".into()))
        );
        assert_eq!(asked.get(), 1);
        assert_eq!(ask(now + VERDICT_TTL, Ok(())), Ok(()));
        assert_eq!(asked.get(), 2);

        let failed = v.check_with("r:t", "sha256:other", now, || Err("registry down"));
        assert_eq!(failed, Err(Err("registry down")));
        assert_eq!(ask(now, Ok(())), Ok(()), "kept from the second ask");
        let again = v.check_with::<&str>("r:t", "sha256:other", now, || Ok(kept(Ok(()))));
        assert_eq!(again, Ok(()));
    }

    fn kept(outcome: Outcome) -> Given {
        Given {
            outcome,
            keep: true,
        }
    }

    /// A refusal because the registry failed to answer for a signature is
    /// given but not kept: the next container asks again.
    #[test]
    fn a_refusal_the_registry_caused_is_not_kept() {
        let v = verdicts();
        let now = Instant::now();
        let asked = Cell::new(0);
        let ask = |g: Given| {
            v.check_with::<()>("r:t", "sha256:m", now, || {
                asked.set(asked.get() + 1);
                Ok(g)
            })
        };
        let down = Given {
            outcome: Err("registry down".into()),
            keep: false,
        };
        assert_eq!(ask(down), Err(Ok("registry down".into())));
        assert_eq!(ask(kept(Ok(()))), Ok(()));
        assert_eq!(asked.get(), 2);
    }

    /// The cache holds at most `MAX_VERDICTS`; the oldest verdict goes.
    #[test]
    fn at_most_max_verdicts_are_kept_the_oldest_dropped() {
        let v = verdicts();
        let now = Instant::now();
        for i in 0..=MAX_VERDICTS {
            let at = now + Duration::from_millis(i as u64);
            v.check_with::<()>("r", &format!("sha256:{i}"), at, || Ok(kept(Ok(()))))
                .unwrap();
        }
        let given = lock(&v.given);
        assert_eq!(given.len(), MAX_VERDICTS);
        assert!(!given.contains_key(&("r".to_string(), "sha256:0".to_string())));
        assert!(given.contains_key(&("r".to_string(), format!("sha256:{MAX_VERDICTS}"))));
    }
}
