//! The plaintext chunk cache: decrypted, decompressed, verified chunks in
//! memory under a byte budget. Buffers are zeroized when the last holder
//! drops them (on eviction, or when a reader finishes with an evicted chunk),
//! concurrent misses on one chunk share one load, and sequential readers get
//! the next chunk loaded ahead on a worker thread.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::{io, thread};

use lru::LruCache;

use super::flight::SingleFlight;
use crate::layer::index::{Layer, Meter, no_room};
use crate::layer::verified::Verified;
use crate::sync::lock;

/// One verified plaintext chunk, shared by readers.
pub type Chunk = Arc<Verified>;

type Key = (u64, u32);
/// A read-ahead request: a chunk of a layer.
type Job = (Arc<Layer>, u32);

/// Counters for `--stats`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Reads served from memory.
    pub hits: u64,
    /// Chunks fetched, decrypted, inflated and verified.
    pub loaded: u64,
    /// Chunks loaded ahead of a reader.
    pub read_ahead: u64,
    pub evicted: u64,
    /// Bytes held now.
    pub held: u64,
}

struct Shared {
    lru: Mutex<Lru>,
    flights: SingleFlight<Key, Chunk>,
    hits: AtomicU64,
    loaded: AtomicU64,
    read_ahead: AtomicU64,
    /// Chunks queued for read-ahead or being read ahead: a sequential reader
    /// asks for the same next chunks on every read, and a worker taking a
    /// second job for a chunk under way would only wait on the first.
    queued: Mutex<HashSet<Key>>,
}

struct Lru {
    map: LruCache<Key, Chunk>,
    held: u64,
    budget: u64,
    /// Held outside the map by layers' reservations.
    reserved: u64,
    evicted: u64,
}

impl Lru {
    /// Evicts until the chunks and the reservations fit the budget, or only
    /// the newest chunk is left: a chunk larger than the room there is stays
    /// alone until the next one comes, so each read of it does not load it
    /// again. The cache holds at most the budget or one chunk (at most
    /// [`crate::layer::index::MAX_CHUNK`]), whichever is larger.
    fn fit(&mut self) {
        while self.held + self.reserved > self.budget && self.map.len() > 1 {
            match self.map.pop_lru() {
                Some((_, old)) => {
                    self.held -= old.len() as u64;
                    self.evicted += 1;
                }
                None => break,
            }
        }
    }
}

/// Plaintext-derived memory a layer keeps outside the cache (its entries,
/// an indexed layer's chunk digests and inflater checkpoints with their
/// 32 KiB windows), counted against the cache's budget for as long as this
/// lives. Reservations together never pass the budget; chunks are evicted to
/// make room for them.
pub struct Reservation {
    shared: Arc<Shared>,
    bytes: AtomicU64,
}

impl Reservation {
    /// Bytes held now.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Holds exactly `bytes` from now on, or fails (holding what it held)
    /// if the budget has no room for them: the error names `what`.
    pub fn set(&self, bytes: u64, what: &str) -> io::Result<()> {
        let now = self.bytes();
        if bytes > now {
            if !self.take(bytes - now) {
                return Err(no_room(what, &format!("{} KiB", bytes.div_ceil(1024))));
            }
        } else {
            self.give(now - bytes);
        }
        Ok(())
    }
}

impl Meter for Reservation {
    fn take(&self, bytes: u64) -> bool {
        let mut l = lock(&self.shared.lru);
        if l.reserved.saturating_add(bytes) > l.budget {
            return false;
        }
        l.reserved += bytes;
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        l.fit();
        true
    }

    fn give(&self, bytes: u64) {
        let mut l = lock(&self.shared.lru);
        let bytes = bytes.min(self.bytes());
        l.reserved -= bytes;
        self.bytes.fetch_sub(bytes, Ordering::Relaxed);
    }

    fn budget(&self) -> u64 {
        lock(&self.shared.lru).budget
    }

    fn spare(&self) -> u64 {
        let l = lock(&self.shared.lru);
        l.budget.saturating_sub(l.reserved)
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        lock(&self.shared.lru).reserved -= self.bytes();
    }
}

/// The cache; cheap to share behind an `Arc`.
pub struct ChunkCache {
    shared: Arc<Shared>,
    ahead: Mutex<Option<SyncSender<Job>>>,
}

/// Read-ahead jobs waiting beyond this many are dropped: read-ahead is a hint.
const AHEAD_QUEUE: usize = 32;

impl ChunkCache {
    /// A cache holding at most `budget` bytes of plaintext, with `workers`
    /// read-ahead threads (0: no read-ahead).
    pub fn new(budget: u64, workers: usize) -> Self {
        let shared = Arc::new(Shared {
            lru: Mutex::new(Lru {
                map: LruCache::unbounded(),
                held: 0,
                budget,
                reserved: 0,
                evicted: 0,
            }),
            flights: SingleFlight::default(),
            hits: AtomicU64::new(0),
            loaded: AtomicU64::new(0),
            read_ahead: AtomicU64::new(0),
            queued: Mutex::new(HashSet::new()),
        });
        let ahead = (workers > 0).then(|| {
            let (tx, rx) = sync_channel::<Job>(AHEAD_QUEUE);
            let rx = Arc::new(Mutex::new(rx));
            for _ in 0..workers {
                let (rx, shared) = (rx.clone(), shared.clone());
                thread::Builder::new()
                    .name("lazycrypt-ahead".into())
                    .spawn(move || read_ahead_worker(&rx, &shared))
                    .expect("spawn read-ahead thread");
            }
            tx
        });
        ChunkCache {
            shared,
            ahead: Mutex::new(ahead),
        }
    }

    /// A chunk of `layer`, from memory or loaded (once, however many ask).
    pub fn get(&self, layer: &Layer, chunk: u32) -> io::Result<Chunk> {
        self.shared.get(layer, chunk, false)
    }

    /// An empty reservation, for a layer's memory to be counted against the
    /// budget (see [`Reservation`]) until it is dropped.
    pub fn reservation(&self) -> Reservation {
        Reservation {
            shared: self.shared.clone(),
            bytes: AtomicU64::new(0),
        }
    }

    /// The most plaintext the cache holds, in bytes.
    pub fn budget(&self) -> u64 {
        lock(&self.shared.lru).budget
    }

    /// Loads `chunks` of `layer` (its prioritized files) on this thread,
    /// in order, ahead of the reads that will want them; stops at half the
    /// budget, so a large prefetch cannot push out everything else. A chunk
    /// that fails does not stop the others; the first failure is returned.
    pub fn warm(&self, layer: &Layer, chunks: &[u32]) -> io::Result<()> {
        let mut loaded = 0u64;
        let mut failed = None;
        let half = lock(&self.shared.lru).budget / 2;
        for &c in chunks.iter().filter(|&&c| c < layer.chunk_count()) {
            let chunk = match self.shared.get(layer, c, true) {
                Ok(chunk) => chunk,
                Err(e) => {
                    failed.get_or_insert(e);
                    continue;
                }
            };
            loaded += chunk.len() as u64;
            if loaded >= half {
                break;
            }
        }
        failed.map_or(Ok(()), Err)
    }

    /// Takes the chunks `layer` loaded already ([`Layer::take_kept`]) into
    /// the cache, and gives the bytes they held back to `reserved`, the
    /// layer's reservation.
    pub fn adopt(&self, layer: &Layer, reserved: &Reservation) {
        let (kept, taken) = layer.take_kept();
        // Given back first: held twice, they would push out other chunks.
        reserved.give(taken);
        for (c, v) in kept {
            let fits = {
                let l = lock(&self.shared.lru);
                v.len() as u64 + l.reserved <= l.budget
            };
            // A chunk nobody asked for does not empty the cache to fit.
            if fits && !self.shared.cached(layer.id(), c) {
                self.shared.insert((layer.id(), c), Arc::new(v));
            }
        }
    }

    /// Whether `chunk` of `layer` is in memory.
    pub fn is_cached(&self, layer: &Layer, chunk: u32) -> bool {
        self.shared.cached(layer.id(), chunk)
    }

    /// Asks a worker to load `chunk` if it is not cached; never blocks.
    pub fn prefetch(&self, layer: &Arc<Layer>, chunk: u32) {
        if chunk >= layer.chunk_count() || self.shared.cached(layer.id(), chunk) {
            return;
        }
        let key = (layer.id(), chunk);
        if !lock(&self.shared.queued).insert(key) {
            return;
        }
        let guard = lock(&self.ahead);
        let sent = guard
            .as_ref()
            .is_some_and(|tx| tx.try_send((layer.clone(), chunk)).is_ok());
        if !sent {
            lock(&self.shared.queued).remove(&key);
        }
    }

    pub fn stats(&self) -> Stats {
        let l = lock(&self.shared.lru);
        Stats {
            hits: self.shared.hits.load(Ordering::Relaxed),
            loaded: self.shared.loaded.load(Ordering::Relaxed),
            read_ahead: self.shared.read_ahead.load(Ordering::Relaxed),
            evicted: l.evicted,
            held: l.held,
        }
    }

    /// Drops the chunks of the layer numbered `layer` (zeroizing those no
    /// reader holds), when it is unmounted. The cache is shared by every
    /// layer of the daemon: the others keep their chunks and read-ahead.
    pub fn forget_layer(&self, layer: u64) {
        let mut l = lock(&self.shared.lru);
        let keys: Vec<Key> = l
            .map
            .iter()
            .map(|(k, _)| *k)
            .filter(|k| k.0 == layer)
            .collect();
        for k in keys {
            if let Some(old) = l.map.pop(&k) {
                l.held -= old.len() as u64;
            }
        }
    }

    /// At shutdown: drops every chunk (zeroizing those no reader holds) and
    /// stops the read-ahead workers. Not for one layer's unmount: see
    /// [`ChunkCache::forget_layer`].
    pub fn clear(&self) {
        lock(&self.ahead).take();
        let mut l = lock(&self.shared.lru);
        l.map.clear();
        l.held = 0;
    }
}

impl Drop for ChunkCache {
    fn drop(&mut self) {
        self.clear();
    }
}

impl Shared {
    fn cached(&self, layer: u64, chunk: u32) -> bool {
        let l = lock(&self.lru);
        l.map.contains(&(layer, chunk))
    }

    /// The cached chunk, marked most recently used.
    fn lookup(&self, key: &Key) -> Option<Chunk> {
        let mut l = lock(&self.lru);
        l.map.get(key).cloned()
    }

    fn get(&self, layer: &Layer, chunk: u32, ahead: bool) -> io::Result<Chunk> {
        let key = (layer.id(), chunk);
        if let Some(c) = self.lookup(&key) {
            if !ahead {
                self.hits.fetch_add(1, Ordering::Relaxed);
            }
            return Ok(c);
        }
        self.flights.run(key, || {
            // A run that just finished may have filled it while we queued.
            if let Some(c) = self.lookup(&key) {
                return Ok(c);
            }
            let data: Chunk = Arc::new(layer.load_chunk(chunk)?);
            self.loaded.fetch_add(1, Ordering::Relaxed);
            if ahead {
                self.read_ahead.fetch_add(1, Ordering::Relaxed);
            }
            self.insert(key, data.clone());
            Ok(data)
        })
    }

    fn insert(&self, key: Key, data: Chunk) {
        let mut l = lock(&self.lru);
        let size = data.len() as u64;
        if size + l.reserved > l.budget {
            // Too big to sit beside anything: it replaces everything.
            l.evicted += l.map.len() as u64;
            l.map.clear();
            l.held = 0;
        }
        if let Some(old) = l.map.put(key, data) {
            l.held -= old.len() as u64;
        }
        l.held += size;
        l.fit();
    }
}

fn read_ahead_worker(rx: &Mutex<Receiver<Job>>, shared: &Shared) {
    loop {
        let job = lock(rx).recv();
        let Ok((layer, chunk)) = job else { return };
        if let Err(e) = shared.get(&layer, chunk, true) {
            tracing::debug!("read-ahead of a chunk failed: {e}");
        }
        lock(&shared.queued).remove(&(layer.id(), chunk));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU32;

    use zeroize::Zeroizing;

    use super::*;
    use crate::layer::index::ChunkSource;
    use crate::layer::verified::Sha256Digest;

    struct Counting(AtomicU32);

    impl ChunkSource for Counting {
        fn load(&self, chunk: u32) -> io::Result<Verified> {
            self.0.fetch_add(1, Ordering::SeqCst);
            if chunk == 9 {
                return Err(io::Error::other("layer L: chunk 9 is bad"));
            }
            let data = Zeroizing::new(vec![chunk as u8; 1000]);
            let digest = Sha256Digest(<sha2::Sha256 as sha2::Digest>::digest(&data[..]).into());
            Ok(Verified::check(data, &digest).expect("its own digest"))
        }
        fn fetched(&self) -> u64 {
            0
        }
    }

    /// Ten chunks of 1000 bytes; chunk 9 fails to load.
    fn counting_layer() -> Arc<Layer> {
        Arc::new(Layer::new("L", Vec::new(), Box::new(Counting(AtomicU32::new(0))), 10).unwrap())
    }

    #[test]
    fn keeps_to_its_budget_and_counts() {
        let layer = counting_layer();
        let c = ChunkCache::new(3000, 0);
        for k in 0..5 {
            assert_eq!(c.get(&layer, k).unwrap()[0], k as u8);
        }
        assert_eq!(c.get(&layer, 4).unwrap()[0], 4);
        let s = c.stats();
        assert_eq!((s.loaded, s.hits, s.evicted, s.held), (5, 1, 2, 3000));
        assert!(c.get(&layer, 9).is_err());
        assert!(c.get(&layer, 9).is_err(), "a failed load is retried");
        assert_eq!(c.stats().loaded, 5);
    }

    #[test]
    fn a_layers_reservation_takes_room_from_the_chunks_until_it_is_dropped() {
        let layer = counting_layer();
        let c = ChunkCache::new(3000, 0);
        for k in 0..3 {
            c.get(&layer, k).unwrap();
        }
        let r = c.reservation();
        assert!(r.take(1500));
        assert_eq!(c.stats().held, 1000, "two chunks made room");
        c.get(&layer, 3).unwrap();
        assert_eq!(
            c.stats().held,
            1000,
            "still one chunk beside the reservation"
        );
        let big = c.reservation();
        assert!(!big.take(1501), "reservations never pass the budget");
        let e = big.set(5000, "L").unwrap_err().to_string();
        assert!(
            e.starts_with("layer L: its index (5 KiB) does not fit"),
            "{e}"
        );
        assert!(big.take(1500));
        assert_eq!(
            c.stats().held,
            1000,
            "the whole budget reserved but one chunk"
        );
        c.get(&layer, 4).unwrap();
        assert_eq!(c.stats().held, 1000, "no room: kept alone");
        r.give(1500);
        big.set(0, "L").unwrap();
        drop((r, big));
        for k in 5..8 {
            c.get(&layer, k).unwrap();
        }
        assert_eq!(c.stats().held, 3000, "the whole budget again");
    }

    /// The chunks a whole-blob layer's verified pass read become its first
    /// cached chunks: reading the layer after its mount loads none, and
    /// the reservation, which held them until then, is left with the index
    /// alone. Past 1/8 of the budget, or with less than half of it left,
    /// the rest is not kept.
    /// The last chunk kept may be short.
    const CHUNK_SLACK: u64 = crate::layer::stream::CHUNK;

    #[test]
    fn a_whole_blob_layer_starts_with_the_chunks_its_verified_pass_read() {
        use crate::layer::stream::{self, Compression, Plain, sealed::Scratch};
        use crate::layer::testing::{noise, tar_of};
        use std::io::Write as _;

        let data = noise(3 << 20);
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&tar_of(&[("a/data.bin", data.clone())]))
            .unwrap();
        let gz = e.finish().unwrap();
        let scratch = Scratch::new("/nonexistent".into(), u64::MAX);
        // (budget, bytes another layer holds, chunks kept): an eighth of
        // the budget, and none once less than half of it is left.
        for (budget, other, kept) in [
            (64u64 << 20, 0, 13u64),
            (8 << 20, 0, 4),
            (8 << 20, 5 << 20, 0),
        ] {
            let c = ChunkCache::new(budget, 0);
            let elsewhere = c.reservation();
            assert!(elsewhere.take(other));
            let r = c.reservation();
            let idx = stream::index(&gz[..], Compression::Gzip, &scratch, "L", &r).unwrap();
            let src = Arc::new(crate::layer::source::MemoryRange::new(gz.clone()));
            let layer = Arc::new(stream::layer(idx, Plain::new(src, None), "L").unwrap());
            // As opening a layer does: the reservation holds what it keeps.
            r.set(layer.resident(), "L").unwrap();
            let with_kept = r.bytes();
            c.adopt(&layer, &r);
            assert_eq!(r.bytes(), layer.resident(), "{budget}: the index alone");
            assert_eq!(
                with_kept - r.bytes(),
                c.stats().held,
                "{budget}: what the cache took was counted until then"
            );
            assert!(c.stats().held + CHUNK_SLACK >= kept * stream::CHUNK);
            for k in 0..kept as u32 {
                assert!(c.is_cached(&layer, k), "{budget}: chunk {k}");
            }
            assert!(!c.is_cached(&layer, kept as u32), "{budget}");
            let got = layer.read_file("a/data.bin", 0, u64::MAX).unwrap();
            assert!(got[..] == data[..]);
            for k in 0..kept as u32 {
                c.get(&layer, k).unwrap();
            }
            assert_eq!(c.stats().loaded, 0, "{budget}");
        }
    }

    #[test]
    fn a_chunk_larger_than_the_budget_is_kept_alone_and_loaded_once() {
        let layer = counting_layer();
        let c = ChunkCache::new(700, 0);
        c.get(&layer, 0).unwrap();
        for _ in 0..5 {
            assert_eq!(c.get(&layer, 1).unwrap()[0], 1);
        }
        let s = c.stats();
        assert_eq!((s.loaded, s.hits, s.held), (2, 4, 1000));
        assert!(!c.is_cached(&layer, 0), "it replaced the others");
    }

    #[test]
    fn forgetting_one_layer_keeps_the_others_chunks_and_read_ahead() {
        let (a, b) = (counting_layer(), counting_layer());
        let c = ChunkCache::new(1 << 20, 1);
        for k in 0..3 {
            c.get(&a, k).unwrap();
            c.get(&b, k).unwrap();
        }
        c.forget_layer(a.id());
        assert_eq!(c.stats().held, 3000, "b's three chunks stay");
        assert!((0..3).all(|k| c.is_cached(&b, k) && !c.is_cached(&a, k)));
        c.prefetch(&b, 5);
        for _ in 0..200 {
            if c.is_cached(&b, 5) {
                break;
            }
            thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(c.is_cached(&b, 5), "read-ahead still runs");
    }

    #[test]
    fn read_ahead_fills_the_cache() {
        let layer = counting_layer();
        let c = ChunkCache::new(1 << 20, 2);
        c.prefetch(&layer, 3);
        for _ in 0..100 {
            if c.stats().read_ahead == 1 {
                break;
            }
            thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(c.stats().read_ahead, 1);
        c.get(&layer, 3).unwrap();
        assert_eq!(c.stats().hits, 1);
    }
}
