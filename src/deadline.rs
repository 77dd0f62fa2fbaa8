//! How long the work on this thread may still wait on the network.
//!
//! A FUSE read opens a [`Budget`]: every registry request made for it,
//! whichever layer or cache code makes it and however often it is retried,
//! then shares one deadline, so that a stalled registry fails the read with
//! EIO after one registry timeout rather than one per request. The deadline
//! starts with the first request that needs one, and lasts as long as that
//! request's own timeout. Work outside a budget (read-ahead, prefetch,
//! opening a layer) gives each request its own deadline.

use std::cell::Cell;
use std::time::{Duration, Instant};

#[derive(Clone, Copy)]
enum Slot {
    /// No budget open: each request has its own deadline.
    None,
    /// A budget open and not started yet.
    Open,
    /// A budget running until this instant.
    Until(Instant),
}

thread_local! {
    static SLOT: Cell<Slot> = const { Cell::new(Slot::None) };
}

/// One budget of waiting for this thread, until dropped (budgets nest: an
/// inner one ends with its scope and the outer one goes on).
#[must_use = "the budget ends when this is dropped"]
pub struct Budget {
    outer: Slot,
}

/// Opens a budget on this thread; it starts with the first [`within`].
pub fn budget() -> Budget {
    Budget {
        outer: SLOT.with(|s| s.replace(Slot::Open)),
    }
}

impl Drop for Budget {
    fn drop(&mut self) {
        SLOT.with(|s| s.set(self.outer));
    }
}

/// The deadline of work that may take `d`: the open budget's (started now
/// for `d` if it has not started), or `d` from now if none is open.
pub fn within(d: Duration) -> Instant {
    let now = Instant::now();
    let fresh = now
        .checked_add(d)
        .unwrap_or(now + Duration::from_secs(86_400));
    SLOT.with(|s| match s.get() {
        Slot::None => fresh,
        Slot::Open => {
            s.set(Slot::Until(fresh));
            fresh
        }
        Slot::Until(t) => t,
    })
}

/// The running budget's deadline, if one has started on this thread.
pub fn current() -> Option<Instant> {
    SLOT.with(|s| match s.get() {
        Slot::Until(t) => Some(t),
        Slot::None | Slot::Open => None,
    })
}

/// Time left until `deadline`, if any.
pub fn left(deadline: Instant) -> Option<Duration> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_is_shared_by_the_requests_in_it_and_ends_with_its_scope() {
        let d = Duration::from_secs(100);
        let before = Instant::now();
        let alone = within(d);
        assert!(alone >= before + d && current().is_none());
        {
            let _b = budget();
            assert!(current().is_none(), "not started before a request");
            let first = within(d);
            std::thread::sleep(Duration::from_millis(5));
            assert_eq!(within(Duration::from_secs(500)), first, "one deadline");
            assert_eq!(current(), Some(first));
            {
                let _inner = budget();
                assert!(current().is_none());
                assert!(within(Duration::from_secs(500)) > first);
            }
            assert_eq!(current(), Some(first), "the outer one goes on");
        }
        assert!(current().is_none());
        assert!(within(d) > alone, "outside a budget each has its own");
        assert_eq!(left(Instant::now() - Duration::from_secs(1)), None);
    }
}
