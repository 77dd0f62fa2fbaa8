//! Locks shared by FUSE, read-ahead and gRPC threads. A panic on one thread
//! must not make every later caller panic too, so a poisoned lock is taken
//! as it is.

use std::collections::HashSet;
use std::hash::Hash;
use std::sync::{Condvar, Mutex, MutexGuard};

/// Locks `m`, poisoned or not.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Waits on `cv` with `guard`, poisoned or not.
pub fn wait<'a, T>(cv: &Condvar, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
    cv.wait(guard).unwrap_or_else(|p| p.into_inner())
}

/// A lock per key: callers with the same key take turns, callers with
/// different keys never wait for each other.
pub struct KeyedLocks<K> {
    busy: Mutex<HashSet<K>>,
    freed: Condvar,
}

impl<K> Default for KeyedLocks<K> {
    fn default() -> Self {
        KeyedLocks {
            busy: Mutex::new(HashSet::new()),
            freed: Condvar::new(),
        }
    }
}

/// Holds one key's lock until dropped; see [`KeyedLocks::lock`].
pub struct KeyedGuard<'a, K: Eq + Hash> {
    owner: &'a KeyedLocks<K>,
    key: Option<K>,
}

impl<K: Eq + Hash + Clone> KeyedLocks<K> {
    /// Waits until no one holds `key`, then holds it.
    pub fn lock(&self, key: K) -> KeyedGuard<'_, K> {
        let mut busy = lock(&self.busy);
        while busy.contains(&key) {
            busy = wait(&self.freed, busy);
        }
        busy.insert(key.clone());
        KeyedGuard {
            owner: self,
            key: Some(key),
        }
    }
}

impl<K: Eq + Hash> Drop for KeyedGuard<'_, K> {
    fn drop(&mut self) {
        if let Some(k) = self.key.take() {
            lock(&self.owner.busy).remove(&k);
            self.owner.freed.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::mpsc::channel;
    use std::time::Duration;

    use super::*;

    #[test]
    fn one_key_takes_turns_and_other_keys_pass() {
        let locks = Arc::new(KeyedLocks::default());
        let held = locks.lock(1u64);
        let (tx, rx) = channel();
        let waiter = {
            let (locks, tx) = (locks.clone(), tx.clone());
            std::thread::spawn(move || {
                let _g = locks.lock(1);
                tx.send("same key").unwrap();
            })
        };
        {
            let _other = locks.lock(2);
            tx.send("other key").unwrap();
        }
        assert_eq!(rx.recv().unwrap(), "other key");
        assert!(rx.recv_timeout(Duration::from_millis(100)).is_err());
        drop(held);
        assert_eq!(rx.recv().unwrap(), "same key");
        waiter.join().unwrap();
        assert!(lock(&locks.busy).is_empty());
    }
}
