//! Building a layer's seek index (docs/seek-index.md §8): one pass over the
//! blob, its digest's chaining values kept per span as it is checked
//! ([`Chain`]: the span digests), its plaintext inflated with block starts recorded, the tar stream hashed per
//! piece and walked for its entries; then sealed under the layer key.

use std::collections::HashSet;
use std::io::{self, Read};
use std::sync::Mutex;

use rand::RngCore as _;
use zeroize::Zeroizing;

use super::entries;
use super::head::{Checkpoint, Compression, Head, Header, MAX_INFLATE, Piece, Window};
use super::seal::{Binding, HeadBlob, IndexKey, Kind, padded};
use super::serve::SEEK_CHUNK;
use super::windows;
use crate::layer::index::{Meter, Node, bad};
use crate::layer::stream::gzip::{BlockStart, GzReader};
use crate::layer::stream::{CHUNK, ChunkHasher, walk};
use crate::oci::chain::Chain;
use crate::oci::digest::Digest;

/// Ciphertext bytes per span digest (§8: four disk-cache blocks; a read
/// over-fetches at most one span at each end).
pub const SPAN: u32 = 16 << 10;
/// Tar-stream bytes per piece digest.
pub const PIECE: u32 = 16 << 10;
/// Output per checkpoint the writer warns about beyond (four times this):
/// a whole window costs about the compressed size of 32 KiB of output, so
/// one per 2 MiB takes 1/64 of the compressed layer.
pub const SPACING: u64 = 2 << 20;

/// The windows of a layer's checkpoints take at most 1/this of its
/// compressed size, sealed (1.6 %; ≤ 2 % with the rest of the index).
const BUDGET_SHARE: u64 = 64;

/// Least output between two block starts kept as candidate checkpoints.
const CANDIDATE: u64 = 32 << 10;

/// Most candidates kept while a layer is indexed (with their 32 KiB
/// windows, 64 MiB): past 512 MiB of output they lie further apart, up to
/// `FAR / 2` (past 32 GiB, more are kept: 32 KiB per 16 MiB).
const MAX_CANDIDATES: usize = 2048;

/// Checkpoints are at most this far apart inside any stretch of the
/// stream, whatever the files (half of [`MAX_INFLATE`]).
const FAR: u64 = MAX_INFLATE / 2;

/// A layer's index, built and not yet sealed. Holds plaintext (entries and
/// windows): wiped on drop.
pub struct Built {
    header: Header,
    spans: Vec<[u8; 32]>,
    pieces: Vec<Piece>,
    /// Checkpoints with their windows, raw.
    checkpoints: Vec<(u64, u64, Zeroizing<Vec<u8>>)>,
    entries: Zeroizing<Vec<u8>>,
    /// Entries named in `first` that hold data, for a node to prefetch.
    prioritized: Vec<u32>,
}

impl Built {
    /// Entries indexed.
    pub fn entry_count(&self) -> u32 {
        self.header.entry_count
    }

    /// Entries a node prefetches at mount.
    pub fn prioritized_count(&self) -> usize {
        self.prioritized.len()
    }

    /// Inflater checkpoints recorded.
    pub fn checkpoint_count(&self) -> usize {
        self.checkpoints.len()
    }

    /// Bytes of the uncompressed tar stream.
    pub fn uncompressed(&self) -> u64 {
        self.header.uncompressed
    }
}

/// The sealed blobs of one layer's index.
pub struct SealedIndex {
    /// The head blob (§4.3).
    pub head: Vec<u8>,
    /// The windows blob (§6), if any checkpoint stores its window.
    pub windows: Option<Vec<u8>>,
}

/// Indexes a layer from `plain`, its blob's compressed plaintext (its
/// digest verified by the reader at its end), while `spans` hashes the same
/// blob's ciphertext, keeping a value every [`SPAN`] bytes. `what` names the layer in
/// errors (its digest). The files named in `first` get checkpoints before
/// the others ([`place`]).
pub fn build<R: Read>(
    plain: R,
    compression: Compression,
    layer: &Digest,
    spans: &Mutex<Chain>,
    meter: &dyn Meter,
    first: &HashSet<String>,
) -> io::Result<Built> {
    let what = layer.to_string();
    let what = what.as_str();
    let piece = u64::from(PIECE);
    let (nodes, digests, total, ends, points) = match compression {
        Compression::None => {
            let (nodes, hasher) = walk(ChunkHasher::with_unit(plain, piece, meter, what), what)?;
            let (digests, total, _) = hasher.finish()?;
            let ends = (0..digests.len() as u64)
                .map(|k| ((k + 1) * piece).min(total))
                .collect();
            (nodes, digests, total, ends, Vec::new())
        }
        Compression::Gzip => {
            let gz = GzReader::new(plain, None)
                .with_blocks(CANDIDATE, piece)
                .with_max_points(MAX_CANDIDATES, FAR / 2)
                .with_sparse_windows();
            let (nodes, hasher) = walk(ChunkHasher::with_unit(gz, piece, meter, what), what)?;
            let (digests, total, mut gz) = hasher.finish()?;
            let mut ends = gz.piece_ends().to_vec();
            let points = place(gz.take_points(), &nodes, total, gz.in_pos(), first);
            // The last piece ends where the blob does: whatever the inflater
            // looked ahead at, a reader has it.
            ends.truncate(digests.len().saturating_sub(1));
            ends.push(gz.in_pos());
            (nodes, digests, total, ends, points)
        }
    };
    let (spans, blob_size) = crate::sync::lock(spans).values();
    let mut pieces: Vec<Piece> = digests
        .into_iter()
        .zip(ends)
        .map(|(digest, in_end)| Piece { digest, in_end })
        .collect();
    if compression == Compression::Gzip
        && let Some(last) = pieces.last_mut()
    {
        last.in_end = blob_size;
    }
    let mut checkpoints = Vec::with_capacity(points.len());
    let mut last_out = 0u64;
    for p in points {
        if p.out >= total && total > 0 {
            continue;
        }
        if p.out - last_out > MAX_INFLATE {
            return Err(spaced(what));
        }
        last_out = p.out;
        checkpoints.push((p.out, p.in_bit, p.window));
    }
    if compression == Compression::Gzip && total - last_out > MAX_INFLATE {
        return Err(spaced(what));
    }
    let entries = entries::encode(&nodes, CHUNK).map_err(|e| bad(what, e.to_string()))?;
    let entry_count = nodes.len() as u32;
    let prioritized: Vec<u32> = (0..entry_count)
        .zip(&nodes)
        .filter(|(_, n)| !n.extents.is_empty() && first.contains(&n.entry.name))
        .map(|(i, _)| i)
        .collect();
    let mut layer_raw = [0u8; 32];
    hex::decode_to_slice(layer.digest(), &mut layer_raw)
        .map_err(|_| bad(what, "the layer digest is not sha256".into()))?;
    Ok(Built {
        header: Header {
            layer: layer_raw,
            blob_size,
            compression,
            uncompressed: total,
            span: SPAN,
            piece: PIECE,
            entry_count,
            checkpoint_count: checkpoints.len() as u32,
            entries_len: entries.len() as u64,
            entries_deflated: false,
            windows_size: 0,
            prioritized_count: prioritized.len() as u32,
        },
        spans,
        pieces,
        checkpoints,
        entries,
        prioritized,
    })
}

/// Chooses checkpoints among `candidates` (block starts in output order,
/// the first at 0, their windows thinned by [`GzReader::with_sparse_windows`]):
/// windows that cost, compressed, at most 1/[`BUDGET_SHARE`] of the
/// `compressed` layer, placed where reads start. The data starts of the
/// files named in `first` (a workload's start-up files, `--prioritize`) are
/// served first: the start of each serving chunk ([`SEEK_CHUNK`], cut from
/// the file's own start) gets the candidate before the piece it begins in,
/// as far as the budget goes (a read loads whole chunks, from the
/// checkpoint at or before that piece). Then the
/// start of every chunk holding file data and every [`FAR`] of the stream
/// ask for the candidate before them if the last
/// checkpoint chosen is at least `t` before; `t` is the least from
/// [`CANDIDATE`] (to 16 KiB) that keeps within the budget. So over data that
/// barely repeats (sparse windows) every candidate may be taken; over text,
/// about one per 2 MiB of output. A candidate without a window (a gzip
/// member's start) costs nothing and is always kept.
pub(crate) fn place(
    candidates: Vec<BlockStart>,
    nodes: &[Node],
    total: u64,
    compressed: u64,
    first: &HashSet<String>,
) -> Vec<BlockStart> {
    if candidates.is_empty() {
        return candidates;
    }
    // A read loads whole chunks, inflating from the checkpoint at or before
    // the chunk's start: what a file needs is one there, for each chunk its
    // data touches, not one just before its first byte.
    let (mut wanted, mut firsts) = (Vec::new(), Vec::new());
    for n in nodes {
        let Some(e) = n.extents.first() else {
            continue;
        };
        let start = u64::from(e.chunk) * CHUNK + u64::from(e.chunk_offset);
        // Serving chunks lie on the file's own grid; a load starts at the
        // piece its chunk begins in.
        let piece = u64::from(PIECE);
        let starts = (0..n.entry.size.div_ceil(SEEK_CHUNK))
            .map(move |m| (start + m * SEEK_CHUNK) / piece * piece);
        if first.contains(&n.entry.name) {
            firsts.extend(starts.clone());
        }
        wanted.extend(starts);
    }
    let mut at = FAR;
    while at < total {
        wanted.push(at);
        at += FAR;
    }
    wanted.sort_unstable();
    wanted.dedup();
    firsts.sort_unstable();
    firsts.dedup();
    // From `forced`, adds the candidate before each point of `points` whose
    // nearest chosen checkpoint is at least `t` before it.
    let choose = |points: &[u64], t: u64, forced: &[bool]| -> Vec<bool> {
        let mut chosen = forced.to_vec();
        chosen[0] = true;
        let mut last = candidates[0].out;
        let mut next = 0;
        for &p in points {
            while next < candidates.len() && candidates[next].out <= p {
                if chosen[next] {
                    last = candidates[next].out;
                }
                next += 1;
            }
            if p < last.saturating_add(t) {
                continue;
            }
            let i = next.max(1) - 1;
            if candidates[i].out > last {
                chosen[i] = true;
                last = candidates[i].out;
            }
        }
        for (c, k) in candidates.iter().zip(chosen.iter_mut()) {
            *k |= c.window.is_empty();
        }
        chosen
    };
    // What the windows cost sealed, about: a sparse one its bytes set (the
    // zeros between compress to nothing), a dense one its compressed size.
    let sizes: Vec<u64> = candidates
        .iter()
        .map(|c| {
            let set = c.window.iter().filter(|&&b| b != 0).count();
            match c.window.len() {
                0 => 0,
                // Scattered bytes cost more than themselves, compressed.
                _ if set < 4096 => 3 * set as u64 + 64,
                _ => {
                    let z = Zeroizing::new(miniz_oxide::deflate::compress_to_vec(&c.window, 1));
                    z.len() as u64 + 16
                }
            }
        })
        .collect();
    let budget = compressed / BUDGET_SHARE;
    let cost = |chosen: &[bool]| -> u64 {
        sizes
            .iter()
            .zip(chosen)
            .filter(|(_, k)| **k)
            .map(|(s, _)| s)
            .sum()
    };
    // The least `t` in `[lo, hi]` within the budget, to 16 KiB (the cost
    // falls as `t` grows); at `hi` whatever it costs.
    let least = |points: &[u64], forced: &[bool], mut lo: u64, mut hi: u64| {
        let mut chosen = choose(points, lo, forced);
        if cost(&chosen) > budget {
            chosen = choose(points, hi, forced);
            while hi - lo > 16 << 10 {
                let mid = lo + (hi - lo) / 2;
                let c = choose(points, mid, forced);
                if cost(&c) <= budget {
                    (hi, chosen) = (mid, c);
                } else {
                    lo = mid;
                }
            }
        }
        chosen
    };
    let none = vec![false; candidates.len()];
    let forced = if firsts.is_empty() {
        none
    } else {
        least(&firsts, &none, 0, FAR)
    };
    let chosen = least(&wanted, &forced, CANDIDATE, FAR);
    candidates
        .into_iter()
        .zip(chosen)
        .filter_map(|(c, k)| k.then_some(c))
        .collect()
}

fn spaced(what: &str) -> io::Error {
    bad(
        what,
        format!(
            "its deflate blocks are so long that checkpoints would lie more than {} MiB apart",
            MAX_INFLATE >> 20
        ),
    )
}

/// Seals `built` for `manifest` under the layer's symmetric key, with a
/// fresh salt (§4.1: a key is never used for two sealings).
pub fn seal(built: &Built, symkey: &[u8], manifest: &Digest, layer: &Digest) -> SealedIndex {
    let mut salt = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut salt);
    let key = IndexKey::derive(symkey, &salt, layer);
    let binding = Binding { manifest, layer };
    let mut windows = windows::Writer::new();
    let mut checkpoints = Vec::with_capacity(built.checkpoints.len());
    for (i, (out, in_bit, window)) in built.checkpoints.iter().enumerate() {
        let kind = if window.is_empty() {
            Window::None
        } else {
            let raw = Zeroizing::new(miniz_oxide::deflate::compress_to_vec(window, 6));
            let record = key.seal(Kind::Window, i as u64, binding, &raw);
            let (offset, len) = windows.push(&record);
            Window::Stored { offset, len }
        };
        checkpoints.push(Checkpoint {
            out: *out,
            in_bit: *in_bit,
            window_len: window.len() as u32,
            window: kind,
        });
    }
    let windows = windows.finish();
    let mut header = built.header.clone();
    header.windows_size = windows.as_ref().map_or(0, |w| w.len() as u64);
    // Names and metadata repeat: deflated, the entries of a layer of many
    // small files take a third or less of the head they did.
    let packed = Zeroizing::new(miniz_oxide::deflate::compress_to_vec(&built.entries, 6));
    let entries: &[u8] = if packed.len() < built.entries.len() {
        header.entries_deflated = true;
        &packed
    } else {
        &built.entries
    };
    header.entries_len = entries.len() as u64;
    let head = Head {
        header,
        spans: built.spans.clone(),
        pieces: built.pieces.clone(),
        checkpoints,
        entries,
        prioritized: built.prioritized.clone(),
    };
    let payload = padded(&Zeroizing::new(head.write()));
    let record = key.seal(Kind::Head, 0, binding, &payload);
    SealedIndex {
        head: HeadBlob::write(&salt, &record),
        windows,
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;
    use crate::layer::index::Unmetered;
    use crate::layer::testing::{noise, tar_of, text};

    /// `tar` gzipped (zlib's default level) and indexed; and what its
    /// windows may cost, sealed.
    fn built_of(tar: &[u8], first: &HashSet<String>) -> (Built, u64) {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(tar).unwrap();
        let gz = e.finish().unwrap();
        let budget = gz.len() as u64 / BUDGET_SHARE;
        let layer = crate::oci::digest::of(&gz);
        let mut spans = Chain::new(SPAN);
        spans.update(&gz);
        let spans = Mutex::new(spans);
        build(
            &gz[..],
            Compression::Gzip,
            &layer,
            &spans,
            &Unmetered,
            first,
        )
        .map(|b| (b, budget))
        .unwrap()
    }

    /// What the windows of `built` cost, sealed (compressed as `seal` does,
    /// less the AEAD tags).
    fn window_bytes(built: &Built) -> u64 {
        built
            .checkpoints
            .iter()
            .filter(|c| !c.2.is_empty())
            .map(|c| miniz_oxide::deflate::compress_to_vec(&c.2, 6).len() as u64)
            .sum()
    }

    /// Each entry is a 512-byte header, then its data padded to 512.
    fn data_start(sizes: impl Iterator<Item = u64>) -> u64 {
        sizes.map(|s| 512 + s.div_ceil(512) * 512).sum::<u64>() + 512
    }

    /// `built`'s windows fit `budget`, and a cold read at each stream
    /// offset of `starts` inflates at most 320 KiB before its chunk (the
    /// nearest checkpoint at or before the chunk's start).
    fn assert_placed(built: &Built, budget: u64, starts: impl IntoIterator<Item = u64>) {
        assert!(window_bytes(built) <= budget, "{}", window_bytes(built));
        for at in starts {
            let start = at / SEEK_CHUNK * SEEK_CHUNK;
            let nearest = built
                .checkpoints
                .iter()
                .map(|c| c.0)
                .filter(|&o| o <= start)
                .max()
                .unwrap();
            let behind = start - nearest;
            assert!(behind <= 320 << 10, "data at {at}: {behind} behind");
        }
    }

    /// Start-up files named to the indexer get the checkpoints first: ten
    /// 1000 KiB text files (whose windows are dense, about 11 KiB sealed)
    /// afford a few windows between them, and the three named each get one just
    /// before the chunk their data starts in.
    #[test]
    fn prioritized_files_get_the_checkpoints_first() {
        // Their data starts 59 to 118 KiB into a 128 KiB chunk.
        let size = |i: u64| (1000 << 10) + i;
        let files: Vec<_> = (0..10)
            .map(|i| (format!("f{i}"), text(size(i) as usize)))
            .collect();
        let tar = tar_of(&files);
        let first: HashSet<String> = ["f3", "f6", "f8"].map(String::from).into();
        let (built, budget) = built_of(&tar, &first);
        let starts = [3, 6, 8].map(|k| data_start((0..k).map(size)));
        assert_placed(&built, budget, starts);
    }

    /// A budget for one window, a start-up file whose data begins 4 KiB
    /// into a piece, block starts every 100 KiB and one between the piece's
    /// start and the file's data: the window goes to the block start before
    /// the piece, which a read of the file's first chunk loads from (its
    /// pieces are checked whole), not to the one just before its data.
    #[test]
    fn a_start_up_files_checkpoint_lies_before_its_chunk() {
        use crate::layer::stream::gzip::BlockStart;
        use crate::layer::testing::node;

        let piece = u64::from(PIECE);
        let at = 100 * piece + (4 << 10);
        let mut outs: Vec<u64> = (0..30u64).map(|i| i * (100 << 10)).collect();
        outs.push(at - (2 << 10));
        outs.sort_unstable();
        let candidates: Vec<BlockStart> = outs
            .iter()
            .map(|&out| BlockStart {
                out,
                in_bit: out * 8 + 3,
                window: Zeroizing::new(if out == 0 {
                    Vec::new()
                } else {
                    noise(32 << 10)
                }),
            })
            .collect();
        let mut file = node("app/start.py", "reg");
        file.entry.size = 10_000;
        file.extents = vec![crate::layer::index::Extent {
            file_offset: 0,
            chunk: (at / CHUNK) as u32,
            chunk_offset: (at % CHUNK) as u32,
            len: 10_000,
        }];
        let first: HashSet<String> = ["app/start.py".to_string()].into();
        // One dense window (32 KiB of noise) and a little.
        let compressed = BUDGET_SHARE * (34 << 10);
        let chosen = place(candidates, &[file], 3 << 20, compressed, &first);
        let chosen: Vec<u64> = chosen.iter().map(|c| c.out).collect();
        let before = (100 * piece) / (100 << 10) * (100 << 10);
        assert_eq!(chosen, [0, before], "its piece starts at {}", 100 * piece);
    }

    /// Over data that barely repeats, windows are sparse and cost next to
    /// nothing: twenty 300 KiB files of noise each get a checkpoint before
    /// the chunk their data starts in (whole windows, 32 KiB each, allowed
    /// two for all).
    #[test]
    fn sparse_windows_let_every_file_of_noise_have_a_checkpoint() {
        let size = |i: u64| (300 << 10) + i;
        let files: Vec<_> = (0..20)
            .map(|i| (format!("n{i}"), noise(size(i) as usize)))
            .collect();
        let tar = tar_of(&files);
        let (built, budget) = built_of(&tar, &HashSet::new());
        assert_placed(
            &built,
            budget,
            (1..20).map(|k| data_start((0..k).map(size))),
        );
    }

    /// Small files that lie 100 KiB before each 2 MiB of the stream:
    /// periodic checkpoints (the first block start 2 MiB after the last) left
    /// each about 1.9 MiB behind its nearest one; placed ones are just before
    /// the chunk each starts in, within the same budget of windows.
    #[test]
    fn checkpoints_go_where_files_start_within_the_same_budget() {
        let mut files = Vec::new();
        for i in 0..4 {
            let before = if i == 0 { (100 << 10) + 512 } else { 1536 };
            files.push((format!("big{i}"), noise((2 << 20) - before)));
            files.push((format!("small{i}"), b"small file".to_vec()));
        }
        files.push(("tail".into(), noise(300 << 10)));
        let tar = tar_of(&files);
        let (built, budget) = built_of(&tar, &HashSet::new());
        let starts = (0..4).map(|i| {
            let name = format!("small{i}");
            let at = tar.windows(name.len()).position(|w| w == name.as_bytes());
            at.unwrap() as u64 + 512
        });
        assert_placed(&built, budget, starts);
    }
}
