//! FUSE requests every mount in this process answered, by kind, for the
//! metrics endpoint: how often the kernel had to ask is what the caching
//! answers (entry and attribute timeouts, negative entries, ENOSYS for
//! what a layer never has) save.

use std::sync::atomic::{AtomicU64, Ordering};

/// A kind of request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Lookup,
    Getattr,
    Open,
    Read,
    Getxattr,
    Listxattr,
    Readdir,
}

impl Op {
    pub const ALL: [Op; 7] = [
        Op::Lookup,
        Op::Getattr,
        Op::Open,
        Op::Read,
        Op::Getxattr,
        Op::Listxattr,
        Op::Readdir,
    ];

    /// The label value on the metrics page.
    pub fn name(self) -> &'static str {
        match self {
            Op::Lookup => "lookup",
            Op::Getattr => "getattr",
            Op::Open => "open",
            Op::Read => "read",
            Op::Getxattr => "getxattr",
            Op::Listxattr => "listxattr",
            Op::Readdir => "readdir",
        }
    }
}

static COUNTS: [AtomicU64; Op::ALL.len()] = [const { AtomicU64::new(0) }; Op::ALL.len()];

/// Counts one request of kind `op`.
pub fn note(op: Op) {
    COUNTS[op as usize].fetch_add(1, Ordering::Relaxed);
}

/// Requests of kind `op` so far.
pub fn count(op: Op) -> u64 {
    COUNTS[op as usize].load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_has_its_own_counter_and_name() {
        for (i, op) in Op::ALL.iter().enumerate() {
            assert_eq!(*op as usize, i, "{op:?}");
        }
        let names: std::collections::HashSet<_> = Op::ALL.iter().map(|o| o.name()).collect();
        assert_eq!(names.len(), Op::ALL.len());
        let before = count(Op::Listxattr);
        note(Op::Listxattr);
        assert!(count(Op::Listxattr) > before);
    }
}
