//! Read-ahead for a layer's files: from the runs of reads each file has
//! seen, which chunks a read should bring with it. Each chunk of a layer
//! still fetched lazily costs network, and each fetch a round trip, so the
//! plan weighs both: a reader's run earns chunks ahead, and a new run of a
//! file is expected to be as long as its last.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::layer::index::Extent;

/// Most bytes of chunks loaded ahead of a reader.
pub const READ_AHEAD_BYTES: u64 = 4 << 20;

/// A sequential run earns read-ahead of this fraction of its length: a
/// reader that stops costs at most a quarter more than it read.
const RUN_PER_BYTE_AHEAD: u64 = 4;

/// Where one file's reads have got to.
#[derive(Debug, Default)]
pub struct Runs {
    /// The furthest end of the current run.
    furthest: AtomicU64,
    /// Where the current run began.
    start: AtomicU64,
}

/// What a read is to the reads of its file before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Run {
    /// It goes on a sequential run, now this long.
    Goes(u64),
    /// It starts a new run; the one before was this long.
    Starts(u64),
}

impl Runs {
    /// Records the read `[offset, end)`. Requests may arrive a little out of
    /// order (the kernel's read-ahead sends several at once to our threads),
    /// so "sequential" means starting at most `gap` past the furthest end
    /// so far, and ending no more than `slack` before it.
    pub fn note(&self, offset: u64, end: u64, gap: u64, slack: u64) -> Run {
        let furthest = self.furthest.fetch_max(end, Ordering::Relaxed);
        let sequential = furthest > 0
            && offset <= furthest.saturating_add(gap)
            && end.saturating_add(slack) >= furthest;
        if sequential {
            return Run::Goes(end.saturating_sub(self.start.load(Ordering::Relaxed)));
        }
        let before = furthest.saturating_sub(self.start.swap(offset, Ordering::Relaxed));
        self.furthest.store(end, Ordering::Relaxed);
        Run::Starts(before)
    }
}

/// The chunks a read brings with it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Loaded ahead (fetched, verified and decrypted) by the read-ahead
    /// workers.
    pub ahead: Vec<u32>,
    /// Fetched in the same range as the read's own chunks, if those need a
    /// fetch: `ahead`, or at least the next chunk of a run longer than one.
    pub with: Vec<u32>,
}

/// The plan for a read at `offset` that is `run` to its file, where `rest`
/// are the file's extents after the read and `local` tells whether chunks
/// are on this node already.
pub fn plan(rest: &[Extent], offset: u64, run: Run, local: impl Fn(&[u32]) -> bool) -> Plan {
    let within = |bytes: u64| {
        let mut want = 0;
        rest.iter()
            .take_while(|x| {
                want += u64::from(x.len);
                want <= bytes
            })
            .count()
    };
    let chunks = |n: usize| rest[..n].iter().map(|x| x.chunk).collect::<Vec<_>>();
    let ahead = match run {
        Run::Goes(run) => {
            // Chunks on this node cost no network: a sequential reader gets
            // them all ahead at once.
            let mut ahead = chunks(within(READ_AHEAD_BYTES));
            if !local(&ahead) {
                ahead.truncate(within((run / RUN_PER_BYTE_AHEAD).min(READ_AHEAD_BYTES)));
            }
            ahead
        }
        // Readers of a file tend to read alike each time (a record, a
        // tensor, a section): a new run is expected to be as long as the
        // one before it, and comes in one range.
        Run::Starts(before) => {
            let until = offset.saturating_add(before.min(READ_AHEAD_BYTES));
            chunks(rest.iter().take_while(|x| x.file_offset < until).count())
        }
    };
    let mut with = ahead.clone();
    // A run of twice a chunk is likely to go on into the next: that one
    // comes in the same fetch, but is not loaded ahead. (After one chunk,
    // it was fetched for every 512 KiB read of 256 KiB chunks: half as
    // much again as was read.)
    if let Run::Goes(run) = run
        && ahead.is_empty()
        && let Some(x) = rest.first()
        && u64::from(x.len).saturating_mul(2) <= run
    {
        with.push(x.chunk);
    }
    Plan { ahead, with }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: u64 = 1 << 10;

    /// A file of `n` chunks of 256 KiB, chunk numbers from 10.
    fn extents(n: u32) -> Vec<Extent> {
        (0..n)
            .map(|i| Extent {
                file_offset: u64::from(i) * 256 * K,
                chunk: 10 + i,
                chunk_offset: 0,
                len: 256 << 10,
            })
            .collect()
    }

    #[test]
    fn runs_go_on_in_order_and_a_jump_starts_a_new_one_that_knows_the_last() {
        let r = Runs::default();
        let (gap, slack) = (1 << 20, 4 << 20);
        assert_eq!(r.note(0, 64 * K, gap, slack), Run::Starts(0));
        assert_eq!(r.note(64 * K, 128 * K, gap, slack), Run::Goes(128 * K));
        assert_eq!(r.note(128 * K, 512 * K, gap, slack), Run::Goes(512 * K));
        // Far ahead: a new run, after one of 512 KiB.
        let at = 20 << 20;
        assert_eq!(r.note(at, at + 64 * K, gap, slack), Run::Starts(512 * K));
        assert_eq!(
            r.note(at + 64 * K, at + 96 * K, gap, slack),
            Run::Goes(96 * K)
        );
        // Far behind, too; and the run after it counts from there.
        assert_eq!(r.note(K, 2 * K, gap, slack), Run::Starts(96 * K));
        assert_eq!(r.note(2 * K, 6 * K, gap, slack), Run::Goes(5 * K));
    }

    #[test]
    fn a_new_run_brings_as_much_as_the_last_run_in_the_same_fetch() {
        let e = extents(32);
        // A read in chunk 2, after a run of 512 KiB: chunks 3 and 4 cover
        // the next 512 KiB from the read's start (which is inside chunk 2).
        let at = 2 * 256 * K + 100;
        let p = plan(&e[3..], at, Run::Starts(512 * K), |_| false);
        assert_eq!(p.ahead, vec![13, 14]);
        assert_eq!(p.with, vec![13, 14]);
        // No run before: nothing more.
        assert_eq!(
            plan(&e[3..], at, Run::Starts(0), |_| false),
            Plan::default()
        );
        // A long run before is capped.
        let p = plan(&e[3..], at, Run::Starts(1 << 30), |_| false);
        assert_eq!(p.ahead.len(), 16);
    }

    #[test]
    fn a_run_earns_a_quarter_of_its_length_or_everything_local() {
        let e = extents(32);
        // 2 MiB read so far: 512 KiB ahead.
        let p = plan(&e[8..], 8 * 256 * K, Run::Goes(2 << 20), |_| false);
        assert_eq!(p.ahead, vec![18, 19]);
        assert_eq!(p.with, p.ahead);
        // On this node: 4 MiB ahead, whatever the run.
        let p = plan(&e[8..], 8 * 256 * K, Run::Goes(64 * K), |_| true);
        assert_eq!(p.ahead.len(), 16);
        // A run of two chunks earns none ahead, but the next comes along
        // with a fetch; a shorter run gets nothing (a read of 320 KiB so
        // far may stop at 512 KiB).
        let p = plan(&e[2..], 512 * K, Run::Goes(512 * K), |_| false);
        assert_eq!((p.ahead, p.with), (vec![], vec![12]));
        assert_eq!(
            plan(&e[1..], 256 * K, Run::Goes(320 * K), |_| false),
            Plan::default()
        );
        // At the end of the file there is nothing to plan.
        assert_eq!(
            plan(&[], 32 * 256 * K, Run::Goes(8 << 20), |_| false),
            Plan::default()
        );
    }
}
