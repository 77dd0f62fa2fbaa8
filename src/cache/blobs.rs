//! The ciphertext disk cache: a blob's bytes, exactly as the registry served
//! them (encrypted for encrypted layers), kept in a sparse file per blob with
//! a bitmap of the 16 KiB blocks present. A range read after a restart or an
//! eviction from memory then needs no network. Nothing decrypted goes here.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use super::batches::Batches;
use super::bitmap::Bitmap;
use crate::deadline;
use crate::layer::source::{RangeSource, range_end};
use crate::oci::digest::Digest;
use crate::sync::{lock, wait};

/// Cache granularity: fetches are rounded out to whole blocks.
pub const BLOCK: u64 = 16 << 10;
/// Largest blob the cache takes: a descriptor's size is the image's word,
/// and it sizes the block map (8 MiB at this limit) and the sparse file.
pub const MAX_BLOB: u64 = 1 << 40;

/// One blob, read through the disk cache.
pub struct DiskRange {
    inner: Arc<dyn RangeSource>,
    file: File,
    /// The bitmap on disk, rewritten in place: one small write per fetch.
    map: File,
    present: Mutex<Bitmap>,
    flights: Flights,
    /// Blocks fetched together, forgotten together.
    batches: Mutex<Batches>,
    size: u64,
}

impl DiskRange {
    /// Opens (or starts) the cache file of blob `digest` under `dir`. The
    /// file is named by the digest *and* the size the descriptor claims: a
    /// descriptor that lies about the size of another image's blob gets a
    /// file of its own, and cannot truncate or reset one in use.
    pub fn open(dir: &Path, digest: &Digest, inner: Arc<dyn RangeSource>) -> io::Result<Self> {
        let dir = dir.join(digest.algorithm().as_ref());
        crate::private::dir(&dir)?;
        let size = inner.size();
        if size > MAX_BLOB {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "blob {digest}: its descriptor claims {size} bytes, more than the {} TiB limit",
                    MAX_BLOB >> 40
                ),
            ));
        }
        let base = dir.join(format!("{}-{size}", digest.digest()));
        let data_path = base.with_extension("data");
        let map_path = base.with_extension("map");
        let rw = || {
            let mut o = OpenOptions::new();
            o.read(true).write(true).create(true).truncate(false);
            o
        };
        let file = crate::private::open(&data_path, &mut rw())?;
        let blocks = size.div_ceil(BLOCK);
        let mut map = crate::private::open(&map_path, &mut rw())?;
        let mut stored = Vec::new();
        // A map longer than this size's could only be stale: read no more.
        (&mut map)
            .take(blocks.div_ceil(8) + 1)
            .read_to_end(&mut stored)?;
        // A map from another size, or a data file shorter than it claims, is stale.
        let present = match Bitmap::from_bytes(stored, blocks) {
            Some(p) if file.metadata()?.len() == size => p,
            _ => {
                let p = Bitmap::new(blocks);
                map.set_len(0)?;
                map.write_all_at(p.as_bytes(), 0)?;
                p
            }
        };
        file.set_len(size)?;
        Ok(DiskRange {
            inner,
            file,
            map,
            present: Mutex::new(present),
            flights: Flights::default(),
            batches: Mutex::default(),
            size,
        })
    }

    /// Whether every block is on disk.
    pub fn is_complete(&self) -> bool {
        lock(&self.present).is_full()
    }

    /// The whole blob from disk, for a blob that is complete.
    pub fn local(&self) -> io::Result<impl Read + Send + 'static> {
        let mut f = self.file.try_clone()?;
        io::Seek::rewind(&mut f)?;
        Ok(io::BufReader::with_capacity(1 << 20, f).take(self.size))
    }

    /// Wraps a stream of the whole blob so that what is read is also stored.
    /// Nothing counts as present until the caller, having verified the
    /// stream, calls [`DiskRange::mark_complete`].
    pub fn filling<R: Read>(this: &Arc<Self>, r: R) -> Filling<R> {
        Filling {
            cache: this.clone(),
            inner: r,
            at: 0,
        }
    }

    /// Records every block as present (after a verified whole-blob read).
    pub fn mark_complete(&self) -> io::Result<()> {
        lock(&self.batches).clear();
        self.mark(0, self.size.div_ceil(BLOCK))
    }

    /// Forgets every block: what is on disk failed verification.
    pub fn forget(&self) -> io::Result<()> {
        lock(&self.batches).clear();
        self.assign(0, self.size.div_ceil(BLOCK), false)
    }

    fn mark(&self, from: u64, to: u64) -> io::Result<()> {
        self.assign(from, to, true)
    }

    fn assign(&self, from: u64, to: u64, present: bool) -> io::Result<()> {
        let mut p = lock(&self.present);
        let changed = p.assign(from, to, present);
        // Only the bytes that changed: replacing the file whole made ext4
        // flush it on every rename, a millisecond or more per fetch. Nothing
        // here is synced, as before: a block marked but lost in a crash
        // fails its chunk's digest, and its reads get EIO, not wrong bytes.
        let at = changed.start as u64;
        self.map.write_all_at(&p.as_bytes()[changed], at)
    }

    fn missing(&self, from: u64, to: u64) -> Option<(u64, u64)> {
        lock(&self.present).missing(from, to)
    }

    /// Fetches the missing blocks of `[first, end)`. A fetch under way that
    /// overlaps them (a prefetch, another reader) is waited for, not
    /// repeated, and its failure is this one's: the registry it failed on
    /// has had its tries. The wait ends at this thread's deadline, if it has
    /// one (a file read's).
    fn fetch(&self, mut first: u64, mut end: u64) -> io::Result<()> {
        let flight = loop {
            match self.flights.join(first, end) {
                Ok(mine) => break mine,
                Err(theirs) => {
                    theirs.wait(deadline::current())?;
                    match self.missing(first, end) {
                        Some((a, b)) => (first, end) = (a, b),
                        None => return Ok(()),
                    }
                }
            }
        };
        let r = self.fetch_now(first, end);
        self.flights.land(flight, &r);
        r
    }

    /// One fetch: retrying is the source's job, which knows what may help
    /// and how long its caller may wait.
    fn fetch_now(&self, first: u64, end: u64) -> io::Result<()> {
        let start = first * BLOCK;
        let stop = (end * BLOCK).min(self.size);
        let bytes = self.inner.read_range(start, stop - start)?;
        self.file.write_all_at(&bytes, start)?;
        lock(&self.batches).add(first, end);
        self.mark(first, end)
    }
}

/// The cache files of blob `digest` (`algorithm:hex`), whatever size they
/// were opened with, under `dir`.
fn files_of<'a>(dir: &'a Path, keep: impl Fn(&str) -> bool + 'a) -> io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let algorithms = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for a in algorithms.flatten() {
        let Ok(files) = std::fs::read_dir(a.path()) else {
            continue;
        };
        let algorithm = a.file_name().to_string_lossy().into_owned();
        for f in files.flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            let Some((hex, _)) = name.split_once('-') else {
                continue;
            };
            let cached = name.ends_with(".data") || name.ends_with(".map");
            if cached && !keep(&format!("{algorithm}:{hex}")) {
                out.push(f.path());
            }
        }
    }
    Ok(out)
}

/// Deletes the cache files of every blob under `dir` that `keep` (a set of
/// `algorithm:hex` digests) does not name: a removed layer's ciphertext
/// would otherwise stay on disk for good. A layer still open elsewhere
/// keeps reading its unlinked file.
pub fn remove_unlisted(dir: &Path, keep: &HashSet<String>) -> io::Result<usize> {
    let gone = files_of(dir, |d| keep.contains(d))?;
    for f in &gone {
        std::fs::remove_file(f)?;
    }
    Ok(gone.len())
}

/// Deletes the cache files of blob `digest` under `dir`.
pub fn remove(dir: &Path, digest: &str) -> io::Result<usize> {
    let gone = files_of(dir, |d| d != digest)?;
    for f in &gone {
        std::fs::remove_file(f)?;
    }
    Ok(gone.len())
}

/// Block ranges being fetched, each with a signal for those waiting on it.
#[derive(Default)]
struct Flights(Mutex<Vec<(u64, u64, Arc<Landing>)>>);

/// How a fetch ended: its error's kind and message when it failed.
type Outcome = Result<(), (io::ErrorKind, String)>;

#[derive(Default)]
struct Landing {
    done: Mutex<Option<Outcome>>,
    cv: Condvar,
}

impl Landing {
    /// Waits for the fetch to end, until `deadline` at most; its failure is
    /// returned as the waiter's.
    fn wait(&self, deadline: Option<Instant>) -> io::Result<()> {
        let mut d = lock(&self.done);
        loop {
            if let Some(outcome) = &*d {
                return outcome
                    .clone()
                    .map_err(|(kind, msg)| io::Error::new(kind, msg));
            }
            d = match deadline {
                None => wait(&self.cv, d),
                Some(t) => {
                    let Some(left) = crate::deadline::left(t) else {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "the read's deadline passed waiting for a fetch under way",
                        ));
                    };
                    self.cv
                        .wait_timeout(d, left)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
            };
        }
    }
}

impl Flights {
    /// Registers a fetch of `[first, end)`, or returns the flight under way
    /// that overlaps it.
    fn join(&self, first: u64, end: u64) -> Result<Arc<Landing>, Arc<Landing>> {
        let mut f = lock(&self.0);
        if let Some((_, _, l)) = f.iter().find(|(a, b, _)| *a < end && first < *b) {
            return Err(l.clone());
        }
        let l = Arc::new(Landing::default());
        f.push((first, end, l.clone()));
        Ok(l)
    }

    /// Ends a flight (landed or failed): its waiters take its outcome.
    fn land(&self, l: Arc<Landing>, r: &io::Result<()>) {
        lock(&self.0).retain(|(_, _, x)| !Arc::ptr_eq(x, &l));
        *lock(&l.done) = Some(match r {
            Ok(()) => Ok(()),
            Err(e) => Err((e.kind(), e.to_string())),
        });
        l.cv.notify_all();
    }
}

impl RangeSource for DiskRange {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_into(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.prepare(offset, buf.len() as u64)?;
        self.file.read_exact_at(buf, offset)
    }

    fn prepare(&self, offset: u64, len: u64) -> io::Result<()> {
        let end = range_end(offset, len, self.size)?;
        if len > 0
            && let Some((first, last)) = self.missing(offset / BLOCK, end.div_ceil(BLOCK))
        {
            self.fetch(first, last)?;
        }
        Ok(())
    }

    fn has(&self, offset: u64, len: u64) -> bool {
        range_end(offset, len, self.size)
            .is_ok_and(|end| self.missing(offset / BLOCK, end.div_ceil(BLOCK)).is_none())
    }

    fn fetched(&self) -> u64 {
        self.inner.fetched()
    }

    fn forget_range(&self, offset: u64, len: u64) -> io::Result<()> {
        let end = offset.saturating_add(len).min(self.size);
        if offset >= end {
            return Ok(());
        }
        // What came in the same answer as the bad bytes goes with them.
        let (from, to) = lock(&self.batches).take(offset / BLOCK, end.div_ceil(BLOCK));
        self.assign(from, to, false)
    }
}

/// A whole-blob stream being stored as it is read.
pub struct Filling<R> {
    cache: Arc<DiskRange>,
    inner: R,
    at: u64,
}

impl<R: Read> Read for Filling<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 {
            return Ok(0);
        }
        if self.at + n as u64 > self.cache.size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "blob is longer than its descriptor says",
            ));
        }
        self.cache.file.write_all_at(&buf[..n], self.at)?;
        self.at += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::layer::source::MemoryRange;

    /// A source whose size is whatever its descriptor claims.
    struct Claims(u64);

    impl RangeSource for Claims {
        fn size(&self) -> u64 {
            self.0
        }
        fn read_into(&self, _: u64, _: &mut [u8]) -> io::Result<()> {
            Err(io::Error::other("never read"))
        }
        fn fetched(&self) -> u64 {
            0
        }
    }

    #[test]
    fn a_removed_blobs_files_go_and_the_others_stay() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (b"blob a".to_vec(), b"blob b".to_vec());
        let (da, db) = (crate::oci::digest::of(&a), crate::oci::digest::of(&b));
        for (d, data) in [(&da, a), (&db, b)] {
            let c = DiskRange::open(dir.path(), d, Arc::new(MemoryRange::new(data))).unwrap();
            c.read_range(0, 6).unwrap();
        }
        let count = || {
            std::fs::read_dir(dir.path().join("sha256"))
                .unwrap()
                .count()
        };
        assert_eq!(count(), 4);
        assert_eq!(remove(dir.path(), da.as_ref()).unwrap(), 2);
        assert_eq!(count(), 2);
        let keep = HashSet::from([db.to_string()]);
        assert_eq!(remove_unlisted(dir.path(), &keep).unwrap(), 0);
        assert_eq!(remove_unlisted(dir.path(), &HashSet::new()).unwrap(), 2);
        assert_eq!(count(), 0);
    }

    /// A size near 2^63 once sized a block map of 64 TiB and aborted the
    /// daemon; now it is an error naming the blob.
    #[test]
    fn a_descriptor_claiming_a_huge_size_is_refused_not_allocated() {
        let dir = tempfile::tempdir().unwrap();
        let d = crate::oci::digest::of(b"x");
        let e = DiskRange::open(dir.path(), &d, Arc::new(Claims(i64::MAX as u64)))
            .err()
            .unwrap()
            .to_string();
        assert_eq!(
            e,
            format!(
                "blob {d}: its descriptor claims 9223372036854775807 bytes, more than the 1 TiB limit"
            )
        );
        assert!(DiskRange::open(dir.path(), &d, Arc::new(Claims(MAX_BLOB))).is_ok());
    }

    #[test]
    fn a_second_read_comes_from_disk_even_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7) as u8).collect();
        let d = crate::oci::digest::of(&data);
        let src = Arc::new(MemoryRange::new(data.clone()));
        let c = DiskRange::open(dir.path(), &d, src.clone()).unwrap();
        let b = BLOCK as usize;
        assert_eq!(
            c.read_range(BLOCK + 100, 10).unwrap(),
            data[b + 100..b + 110]
        );
        assert_eq!(src.fetched(), BLOCK);
        assert_eq!(c.read_range(BLOCK, 1000).unwrap(), data[b..b + 1000]);
        assert_eq!(src.fetched(), BLOCK);
        drop(c);
        let c = Arc::new(DiskRange::open(dir.path(), &d, src.clone()).unwrap());
        assert_eq!(
            c.read_range(BLOCK + 2000, BLOCK / 2).unwrap(),
            data[b + 2000..b + 2000 + b / 2]
        );
        assert_eq!(src.fetched(), BLOCK, "still from disk after reopening");
        assert!(!c.is_complete());
        let mut all = Vec::new();
        DiskRange::filling(&c, &data[..])
            .read_to_end(&mut all)
            .unwrap();
        assert!(!c.is_complete(), "not before the caller has verified it");
        c.mark_complete().unwrap();
        assert!(c.is_complete());
        let mut back = Vec::new();
        c.local().unwrap().read_to_end(&mut back).unwrap();
        assert_eq!(back, data);
    }

    /// A descriptor that lies about another blob's size gets a file of its
    /// own: the live one is neither truncated nor reset.
    #[test]
    fn a_lying_size_cannot_truncate_or_reset_a_live_blob() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 13) as u8).collect();
        let d = crate::oci::digest::of(&data);
        let src = Arc::new(MemoryRange::new(data.clone()));
        let live = Arc::new(DiskRange::open(dir.path(), &d, src.clone()).unwrap());
        let mut all = Vec::new();
        DiskRange::filling(&live, &data[..])
            .read_to_end(&mut all)
            .unwrap();
        live.mark_complete().unwrap();
        let liar = Arc::new(MemoryRange::new(data[..10].to_vec()));
        let other = DiskRange::open(dir.path(), &d, liar).unwrap();
        assert_eq!(other.size(), 10);
        assert!(!other.is_complete());
        assert!(live.is_complete());
        assert_eq!(live.read_range(90_000, 10).unwrap(), data[90_000..90_010]);
        drop((live, other));
        let again = DiskRange::open(dir.path(), &d, src.clone()).unwrap();
        assert!(again.is_complete(), "the map survived the liar");
        assert_eq!(again.read_range(0, 100_000).unwrap(), data);
    }

    /// A range that failed its check is fetched again, not served from disk.
    #[test]
    fn a_forgotten_range_is_fetched_again() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 3) as u8).collect();
        let d = crate::oci::digest::of(&data);
        let src = Arc::new(MemoryRange::new(data.clone()));
        let c = DiskRange::open(dir.path(), &d, src.clone()).unwrap();
        // Block by block: each its own fetch.
        for b in 0..100_000u64.div_ceil(BLOCK) {
            c.prepare(b * BLOCK, BLOCK.min(100_000 - b * BLOCK))
                .unwrap();
        }
        let before = src.fetched();
        c.read_range(BLOCK + 5, 10).unwrap();
        assert_eq!(src.fetched(), before);
        c.forget_range(BLOCK + 5, 10).unwrap();
        assert!(!c.has(BLOCK, 1) && c.has(0, BLOCK) && c.has(2 * BLOCK, BLOCK));
        c.read_range(BLOCK + 5, 10).unwrap();
        assert_eq!(src.fetched(), before + BLOCK);
    }

    /// A chunk that fails its check takes the rest of the answer it came
    /// in with it: the next reads of those fetch them again, rather than
    /// each failing once on its own bad copy.
    #[test]
    fn a_forgotten_range_takes_the_rest_of_its_fetch_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..(8 * BLOCK) as u32).map(|i| (i * 5) as u8).collect();
        let d = crate::oci::digest::of(&data);
        let src = Arc::new(MemoryRange::new(data.clone()));
        let c = DiskRange::open(dir.path(), &d, src.clone()).unwrap();
        c.prepare(0, 4 * BLOCK).unwrap();
        c.prepare(4 * BLOCK, 4 * BLOCK).unwrap();
        c.forget_range(BLOCK + 5, 10).unwrap();
        assert!(
            !c.has(0, 1) && !c.has(3 * BLOCK, 1),
            "the whole first fetch"
        );
        assert!(c.has(4 * BLOCK, 4 * BLOCK), "not the next one");
        let before = src.fetched();
        assert_eq!(
            c.read_range(0, 4 * BLOCK).unwrap(),
            data[..4 * BLOCK as usize]
        );
        assert_eq!(src.fetched(), before + 4 * BLOCK);
    }

    /// A source whose first read waits until the test lets it go.
    struct Gated {
        inner: MemoryRange,
        calls: std::sync::atomic::AtomicU32,
        started: std::sync::mpsc::SyncSender<()>,
        release: Mutex<std::sync::mpsc::Receiver<()>>,
    }

    impl RangeSource for Gated {
        fn size(&self) -> u64 {
            self.inner.size()
        }
        fn read_into(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
            use std::sync::atomic::Ordering;
            if self.calls.fetch_add(1, Ordering::SeqCst) == 0 {
                self.started.send(()).unwrap();
                self.release.lock().unwrap().recv().unwrap();
            }
            self.inner.read_into(offset, buf)
        }
        fn fetched(&self) -> u64 {
            self.inner.fetched()
        }
    }

    #[test]
    fn a_read_inside_a_fetch_under_way_waits_for_it_instead_of_fetching_again() {
        use std::sync::atomic::Ordering;
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..(6 * BLOCK) as u32).map(|i| (i * 13) as u8).collect();
        let d = crate::oci::digest::of(&data);
        let (started, wait_started) = std::sync::mpsc::sync_channel(1);
        let (go, release) = std::sync::mpsc::channel();
        let src = Arc::new(Gated {
            inner: MemoryRange::new(data.clone()),
            calls: Default::default(),
            started,
            release: Mutex::new(release),
        });
        let c = Arc::new(DiskRange::open(dir.path(), &d, src.clone()).unwrap());
        let prefetch = {
            let c = c.clone();
            std::thread::spawn(move || c.prepare(0, 4 * BLOCK))
        };
        wait_started.recv().unwrap();
        let reader = {
            let c = c.clone();
            std::thread::spawn(move || c.read_range(BLOCK + 10, 100))
        };
        std::thread::sleep(Duration::from_millis(100));
        go.send(()).unwrap();
        prefetch.join().unwrap().unwrap();
        let got = reader.join().unwrap().unwrap();
        assert_eq!(got, data[BLOCK as usize + 10..][..100]);
        assert_eq!(src.calls.load(Ordering::SeqCst), 1, "one fetch for both");
        // A range only partly under way fetches just the rest.
        assert_eq!(
            c.read_range(3 * BLOCK, 2 * BLOCK).unwrap(),
            data[3 * BLOCK as usize..][..2 * BLOCK as usize]
        );
        assert_eq!(src.calls.load(Ordering::SeqCst), 2);
        assert_eq!(src.fetched(), 5 * BLOCK);
    }
}
