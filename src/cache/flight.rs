//! Single-flight: concurrent callers asking for the same key share one
//! computation instead of each starting their own.

use std::collections::HashMap;
use std::hash::Hash;
use std::io;
use std::sync::{Arc, Mutex, OnceLock};

use crate::sync::lock;

type Outcome<V> = Result<V, (io::ErrorKind, String)>;

/// Runs at most one computation per key at a time.
pub struct SingleFlight<K, V> {
    running: Mutex<HashMap<K, Arc<OnceLock<Outcome<V>>>>>,
}

impl<K: Eq + Hash + Clone, V: Clone> Default for SingleFlight<K, V> {
    fn default() -> Self {
        SingleFlight {
            running: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Eq + Hash + Clone, V: Clone> SingleFlight<K, V> {
    /// Runs `f` for `key`, or waits for the run already under way and takes
    /// its result. Failures are shared too but not remembered: the next call
    /// after one tries again.
    pub fn run(&self, key: K, f: impl FnOnce() -> io::Result<V>) -> io::Result<V> {
        let cell = {
            let mut m = lock(&self.running);
            m.entry(key.clone()).or_default().clone()
        };
        let out = cell
            .get_or_init(|| f().map_err(|e| (e.kind(), e.to_string())))
            .clone();
        let mut m = lock(&self.running);
        if m.get(&key).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
            m.remove(&key);
        }
        out.map_err(|(kind, msg)| io::Error::new(kind, msg))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    #[test]
    fn concurrent_callers_share_one_run() {
        let f = Arc::new(SingleFlight::<u32, u32>::default());
        let runs = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (f, runs) = (f.clone(), runs.clone());
                std::thread::spawn(move || {
                    f.run(7, || {
                        runs.fetch_add(1, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(100));
                        Ok(42)
                    })
                    .unwrap()
                })
            })
            .collect();
        for t in threads {
            assert_eq!(t.join().unwrap(), 42);
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        let e = f.run(7, || Err(io::Error::other("boom"))).unwrap_err();
        assert_eq!(e.to_string(), "boom");
        assert_eq!(f.run(7, || Ok(1)).unwrap(), 1, "failures are not kept");
    }
}
