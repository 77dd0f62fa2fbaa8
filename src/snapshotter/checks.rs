//! The queue of diff-ID checks: lazily mounted layers waiting to be hashed
//! whole in the background (see [`super::store::Store::check_diff_ids`]).
//! A check runs after a delay, so a container's start does not share the
//! link with it; one a `Prepare` waits for runs at once, unthrottled.

use std::collections::HashMap;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::sync::lock;

/// How the background checks run.
#[derive(Debug, Clone, Copy)]
pub struct DiffIdConfig {
    /// Most blob bytes a second a background check reads (None: no limit).
    pub rate: Option<u64>,
    /// How long after its mount a layer is checked.
    pub delay: Duration,
    /// How long a `Prepare` waits for another image's layer to be checked.
    pub wait: Duration,
}

impl Default for DiffIdConfig {
    fn default() -> Self {
        DiffIdConfig {
            rate: Some(32 << 20),
            delay: Duration::from_secs(5),
            wait: Duration::from_secs(300),
        }
    }
}

/// A snapshot whose layer is to be checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub key: String,
    pub id: u64,
    pub due: Instant,
    /// Someone waits for it: no delay, no rate limit.
    pub urgent: bool,
}

/// Jobs, and the news of finished ones.
#[derive(Default)]
pub struct Queue {
    jobs: Mutex<Vec<Job>>,
    more: Condvar,
    /// Failures of the last check, by snapshot id, for those who wait.
    failed: Mutex<HashMap<u64, String>>,
    /// Bumped whenever a check ends, for those who wait.
    ended: Mutex<u64>,
    news: Condvar,
}

impl Queue {
    /// Adds a check of snapshot `id` (or makes the queued one urgent).
    pub fn push(&self, key: &str, id: u64, due: Instant, urgent: bool) {
        let mut jobs = lock(&self.jobs);
        match jobs.iter_mut().find(|j| j.id == id) {
            Some(j) if urgent => {
                j.urgent = true;
                j.due = j.due.min(due);
            }
            Some(_) => {}
            None => jobs.push(Job {
                key: key.to_string(),
                id,
                due,
                urgent,
            }),
        }
        self.more.notify_all();
    }

    /// The next due job, urgent ones first; None if none is due within
    /// `patience` (so the worker can look whether it is still wanted).
    pub fn next(&self, patience: Duration) -> Option<Job> {
        let deadline = Instant::now() + patience;
        let mut jobs = lock(&self.jobs);
        loop {
            let now = Instant::now();
            let pick = jobs
                .iter()
                .enumerate()
                .filter(|(_, j)| j.due <= now)
                .min_by_key(|(_, j)| (!j.urgent, j.due))
                .map(|(i, _)| i);
            if let Some(i) = pick {
                return Some(jobs.swap_remove(i));
            }
            let next_due = jobs.iter().map(|j| j.due).min().unwrap_or(deadline);
            let until = next_due.min(deadline);
            if until <= now {
                return None;
            }
            jobs = self
                .more
                .wait_timeout(jobs, until - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }

    /// Records the end of a check of snapshot `id` (`Err`: it could not run).
    pub fn ended(&self, id: u64, outcome: Result<(), String>) {
        match outcome {
            Ok(()) => lock(&self.failed).remove(&id),
            Err(e) => lock(&self.failed).insert(id, e),
        };
        *lock(&self.ended) += 1;
        self.news.notify_all();
    }

    /// Why the last check of snapshot `id` could not run, if it could not.
    pub fn failure(&self, id: u64) -> Option<String> {
        lock(&self.failed).get(&id).cloned()
    }

    /// Waits until a check ends or `until` passes; false at `until`.
    pub fn wait_news(&self, seen: &mut u64, until: Instant) -> bool {
        let mut n = lock(&self.ended);
        while *n == *seen {
            let now = Instant::now();
            if now >= until {
                return false;
            }
            n = self
                .news
                .wait_timeout(n, until - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
        *seen = *n;
        true
    }

    /// The current count of ended checks (to wait for the next).
    pub fn seen(&self) -> u64 {
        *lock(&self.ended)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urgent_jobs_go_first_and_late_ones_wait() {
        let q = Queue::default();
        let now = Instant::now();
        q.push("a", 1, now, false);
        q.push("b", 2, now + Duration::from_secs(3600), false);
        q.push("c", 3, now, false);
        q.push("c", 3, now, true);
        assert_eq!(q.next(Duration::ZERO).unwrap().id, 3);
        assert_eq!(q.next(Duration::ZERO).unwrap().id, 1);
        assert!(q.next(Duration::from_millis(10)).is_none(), "b is not due");
        q.push("b", 2, now, true);
        let b = q.next(Duration::ZERO).unwrap();
        assert!(b.urgent && b.id == 2);
        let mut seen = q.seen();
        q.ended(2, Err("registry down".into()));
        assert!(q.wait_news(&mut seen, Instant::now()));
        assert_eq!(q.failure(2).as_deref(), Some("registry down"));
        assert!(!q.wait_news(&mut seen, Instant::now() + Duration::from_millis(10)));
    }
}
