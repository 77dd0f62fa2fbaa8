//! The head payload's fixed-width sections (docs/seek-index.md §5.1–5.4):
//! header, ciphertext span digests, output pieces and inflater checkpoints,
//! each checked against its rules, and every count against the bytes left
//! before anything is allocated. The entries (§5.5) are handed on as bytes.

/// Entries an index may list.
pub const MAX_ENTRIES: u32 = 1 << 20;
/// Consecutive checkpoints' outputs are at most this far apart.
pub const MAX_SPACING: u64 = 256 << 20;
/// A primed window is at most this many compressed bits behind its block.
pub const MAX_PRIME_BITS: u64 = 8 * (256 << 10);
/// Deflate's history.
pub const WINDOW: u32 = 32768;
/// The reader limits are checked per this many bytes of tar stream (the
/// chunk size when the format was written; smaller chunks are bounded by
/// them too).
pub const CHUNK: u64 = 1 << 20;
/// Most compressed bytes one chunk's read may need, from its checkpoint.
pub const MAX_FETCH: u64 = 64 << 20;
/// Most output one chunk's read may inflate and drop before the chunk.
pub const MAX_INFLATE: u64 = 64 << 20;

const HEADER_LEN: usize = 88;
const SPAN_LEN: usize = 32;
const PIECE_LEN: usize = 40;
const CHECKPOINT_LEN: usize = 36;
/// Span digests are SHA-256 chaining values (§5.2). Algorithm 1, each
/// span's own SHA-256, was written before 2026-12-07 and is refused: its
/// layers are read whole until `lazycrypt index --force` replaces it.
const DIGEST_SHA256_CHAIN: u8 = 2;
/// A window record: at least the tag and one byte, at most a window plus
/// room for its own compression's worst case and the tag.
const MIN_WINDOW_RECORD: u32 = 17;
const MAX_WINDOW_RECORD: u32 = 40960;

/// How the layer's tar stream is stored in its blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None = 0,
    Gzip = 1,
}

/// What the reader knows of the layer before it opens the index: the
/// manifest's descriptor.
#[derive(Debug, Clone, Copy)]
pub struct Expect {
    /// The layer blob's SHA-256, raw.
    pub layer: [u8; 32],
    pub blob_size: u64,
    pub compression: Compression,
}

/// §5.1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub layer: [u8; 32],
    pub blob_size: u64,
    pub compression: Compression,
    pub uncompressed: u64,
    pub span: u32,
    pub piece: u32,
    pub entry_count: u32,
    pub checkpoint_count: u32,
    pub entries_len: u64,
    /// The entries section is deflated (RFC 1951) §5.5 bytes, not the
    /// bytes themselves (header byte 42).
    pub entries_deflated: bool,
    pub windows_size: u64,
    /// Entries listed for prefetch (§5.6).
    pub prioritized_count: u32,
}

/// §5.3: one piece of output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    pub digest: [u8; 32],
    /// Compressed bytes a reader needs to have produced the piece's end.
    pub in_end: u64,
}

/// §5.4: where a checkpoint's history comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// The first block of a gzip member: no history.
    None,
    /// Record number = the checkpoint's index, in the windows blob.
    Stored { offset: u64, len: u32 },
    /// Inflating stored blocks from `prime_bit` gives it.
    Primed { prime_bit: u64 },
}

/// §5.4: a deflate block's start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub out: u64,
    pub in_bit: u64,
    pub window_len: u32,
    pub window: Window,
}

/// A head payload's sections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head<'a> {
    pub header: Header,
    pub spans: Vec<[u8; 32]>,
    pub pieces: Vec<Piece>,
    pub checkpoints: Vec<Checkpoint>,
    /// §5.5, not yet parsed.
    pub entries: &'a [u8],
    /// §5.6: indices of the entries a node fetches at mount, ascending.
    pub prioritized: Vec<u32>,
}

/// Why a head payload is refused; one line naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("seek index head: {0}")]
pub struct HeadError(String);

fn bad(why: impl Into<String>) -> HeadError {
    HeadError(why.into())
}

/// A field that runs past its bytes' end, or a count that claims more than
/// they hold: the text of its error, which the section's own error wraps.
pub(super) struct FieldError(pub(super) String);

impl From<FieldError> for HeadError {
    fn from(e: FieldError) -> Self {
        HeadError(e.0)
    }
}

/// Reads little-endian fields in order, never past the end.
pub(super) struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
    /// What the bytes are, for errors ("payload").
    place: &'static str,
}

impl<'a> Reader<'a> {
    pub(super) fn new(bytes: &'a [u8], place: &'static str) -> Self {
        Reader {
            bytes,
            at: 0,
            place,
        }
    }
    /// Bytes not read yet.
    pub(super) fn left(&self) -> usize {
        self.bytes.len() - self.at
    }
    pub(super) fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], FieldError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| FieldError(format!("{what} runs past the {}'s end", self.place)))?;
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }
    pub(super) fn u8(&mut self, what: &str) -> Result<u8, FieldError> {
        Ok(self.take(1, what)?[0])
    }
    pub(super) fn u16(&mut self, what: &str) -> Result<u16, FieldError> {
        Ok(u16::from_le_bytes(self.take(2, what)?.try_into().unwrap()))
    }
    pub(super) fn u32(&mut self, what: &str) -> Result<u32, FieldError> {
        Ok(u32::from_le_bytes(self.take(4, what)?.try_into().unwrap()))
    }
    pub(super) fn u64(&mut self, what: &str) -> Result<u64, FieldError> {
        Ok(u64::from_le_bytes(self.take(8, what)?.try_into().unwrap()))
    }
    fn digest(&mut self, what: &str) -> Result<[u8; 32], FieldError> {
        Ok(self.take(32, what)?.try_into().unwrap())
    }
    /// `count` records of at least `len` bytes fit in what is left (checked
    /// before any allocation for them).
    pub(super) fn room(&self, count: u64, len: usize, what: &str) -> Result<usize, FieldError> {
        match count.checked_mul(len as u64) {
            Some(n) if n <= self.left() as u64 => Ok(count as usize),
            _ => Err(FieldError(format!(
                "{count} {what} do not fit in the {}",
                self.place
            ))),
        }
    }
}

fn ceil_div(a: u64, b: u32) -> u64 {
    a.div_ceil(u64::from(b))
}

fn size_ok(v: u32, min: u32, max: u32) -> bool {
    v.is_power_of_two() && (min..=max).contains(&v)
}

impl<'a> Head<'a> {
    /// Parses `payload` (record 0, opened) for the layer `expect` describes.
    pub fn parse(payload: &'a [u8], expect: &Expect) -> Result<Self, HeadError> {
        let mut r = Reader::new(payload, "payload");
        if payload.len() < HEADER_LEN {
            return Err(bad(format!(
                "{} bytes, shorter than its header",
                payload.len()
            )));
        }
        let layer = r.digest("layer digest")?;
        if layer != expect.layer {
            return Err(bad("it indexes another layer"));
        }
        let blob_size = r.u64("blob size")?;
        if blob_size != expect.blob_size {
            return Err(bad(format!(
                "blob size {blob_size}, not the descriptor's {}",
                expect.blob_size
            )));
        }
        let compression = match r.u8("compression")? {
            0 => Compression::None,
            1 => Compression::Gzip,
            c => return Err(bad(format!("compression {c} is not 0 or 1"))),
        };
        if compression != expect.compression {
            return Err(bad("its compression is not the layer media type's"));
        }
        let alg = r.u8("digest algorithm")?;
        if alg != DIGEST_SHA256_CHAIN {
            return Err(bad(format!(
                "digest algorithm {alg} is not SHA-256 chaining values (2){}",
                if alg == 1 {
                    ": an index from an older lazycrypt (`lazycrypt index --force` replaces it)"
                } else {
                    ""
                }
            )));
        }
        let entries_deflated = match r.u8("entries encoding")? {
            0 => false,
            1 => true,
            e => return Err(bad(format!("entries encoding {e} is not 0 or 1"))),
        };
        if r.u8("reserved")? != 0 {
            return Err(bad("reserved header bytes are not zero"));
        }
        let prioritized_count = r.u32("prioritized count")?;
        let uncompressed = r.u64("uncompressed size")?;
        let span = r.u32("span size")?;
        let piece = r.u32("piece size")?;
        let entry_count = r.u32("entry count")?;
        let checkpoint_count = r.u32("checkpoint count")?;
        let entries_len = r.u64("entries length")?;
        let windows_size = r.u64("windows blob size")?;
        if compression == Compression::None && uncompressed != blob_size {
            return Err(bad("an uncompressed layer's size is not its blob's"));
        }
        if !size_ok(span, 16 << 10, 4 << 20) {
            return Err(bad(format!(
                "span size {span} is not a power of two in 16 KiB..4 MiB"
            )));
        }
        if !size_ok(piece, 16 << 10, 1 << 20) {
            return Err(bad(format!(
                "piece size {piece} is not a power of two in 16 KiB..1 MiB"
            )));
        }
        if entry_count > MAX_ENTRIES {
            return Err(bad(format!(
                "{entry_count} entries, more than {MAX_ENTRIES}"
            )));
        }
        if prioritized_count > entry_count {
            return Err(bad(format!(
                "{prioritized_count} prioritized entries, more than its {entry_count}"
            )));
        }
        match (compression, checkpoint_count) {
            (Compression::None, 0) => {}
            (Compression::Gzip, n) if n >= 1 => {}
            _ => {
                return Err(bad(format!(
                    "{checkpoint_count} checkpoints for this compression"
                )));
            }
        }
        let header = Header {
            layer,
            blob_size,
            compression,
            uncompressed,
            span,
            piece,
            entry_count,
            checkpoint_count,
            entries_len,
            entries_deflated,
            windows_size,
            prioritized_count,
        };

        let n = r.room(ceil_div(blob_size, span), SPAN_LEN, "span digests")?;
        let mut spans = Vec::with_capacity(n);
        for _ in 0..n {
            spans.push(r.digest("span digest")?);
        }
        if spans.last().is_some_and(|last| *last != layer) {
            // The chain ends in the digest that pins the blob.
            return Err(bad("its last span digest is not the layer digest"));
        }

        let n = r.room(ceil_div(uncompressed, piece), PIECE_LEN, "pieces")?;
        let mut pieces = Vec::with_capacity(n);
        for k in 0..n as u64 {
            let digest = r.digest("piece digest")?;
            let in_end = r.u64("piece in_end")?;
            let ok = match compression {
                Compression::None => in_end == ((k + 1) * u64::from(piece)).min(uncompressed),
                Compression::Gzip => {
                    in_end <= blob_size
                        && pieces.last().is_none_or(|p: &Piece| p.in_end <= in_end)
                        && (k + 1 < n as u64 || in_end == blob_size)
                }
            };
            if !ok {
                return Err(bad(format!("piece {k}'s in_end {in_end} breaks its rules")));
            }
            pieces.push(Piece { digest, in_end });
        }

        let n = r.room(u64::from(checkpoint_count), CHECKPOINT_LEN, "checkpoints")?;
        let mut checkpoints: Vec<Checkpoint> = Vec::with_capacity(n);
        for i in 0..n {
            let c = checkpoint(&mut r, i)?;
            let fits = c.out < uncompressed.max(1)
                && c.in_bit < blob_size.saturating_mul(8)
                && match checkpoints.last() {
                    None => c.out == 0,
                    Some(p) => c.out > p.out && c.in_bit > p.in_bit && c.out - p.out <= MAX_SPACING,
                };
            if !fits {
                return Err(bad(format!(
                    "checkpoint {i} is out of order or out of range"
                )));
            }
            checkpoints.push(c);
        }
        if let Some(last) = checkpoints.last()
            && uncompressed - last.out > MAX_SPACING
        {
            return Err(bad("the last checkpoint is too far from the end"));
        }
        if compression == Compression::Gzip {
            reads_are_bounded(&checkpoints, &pieces, piece, uncompressed)?;
        }

        let len = usize::try_from(entries_len)
            .ok()
            .filter(|&l| l <= r.left())
            .ok_or_else(|| {
                bad(format!(
                    "entries length {entries_len} runs past the payload's end"
                ))
            })?;
        let entries = r.take(len, "entries")?;

        let n = r.room(u64::from(prioritized_count), 4, "prioritized entries")?;
        let mut prioritized: Vec<u32> = Vec::with_capacity(n);
        for _ in 0..n {
            let i = r.u32("prioritized entry")?;
            if i >= entry_count || prioritized.last().is_some_and(|&p| p >= i) {
                return Err(bad(format!(
                    "prioritized entry {i} is out of order or out of range"
                )));
            }
            prioritized.push(i);
        }
        if payload[r.at..].iter().any(|&b| b != 0) {
            return Err(bad("the padding after the sections is not zero"));
        }
        Ok(Head {
            header,
            spans,
            pieces,
            checkpoints,
            entries,
            prioritized,
        })
    }

    /// The payload's bytes, before padding: what [`Head::parse`] reads.
    pub fn write(&self) -> Vec<u8> {
        let h = &self.header;
        let mut out = Vec::with_capacity(
            HEADER_LEN
                + self.spans.len() * SPAN_LEN
                + self.pieces.len() * PIECE_LEN
                + self.checkpoints.len() * CHECKPOINT_LEN
                + self.entries.len()
                + self.prioritized.len() * 4,
        );
        out.extend_from_slice(&h.layer);
        out.extend_from_slice(&h.blob_size.to_le_bytes());
        out.push(h.compression as u8);
        out.push(DIGEST_SHA256_CHAIN);
        out.push(u8::from(h.entries_deflated));
        out.push(0);
        out.extend_from_slice(&h.prioritized_count.to_le_bytes());
        out.extend_from_slice(&h.uncompressed.to_le_bytes());
        out.extend_from_slice(&h.span.to_le_bytes());
        out.extend_from_slice(&h.piece.to_le_bytes());
        out.extend_from_slice(&h.entry_count.to_le_bytes());
        out.extend_from_slice(&h.checkpoint_count.to_le_bytes());
        out.extend_from_slice(&h.entries_len.to_le_bytes());
        out.extend_from_slice(&h.windows_size.to_le_bytes());
        for s in &self.spans {
            out.extend_from_slice(s);
        }
        for p in &self.pieces {
            out.extend_from_slice(&p.digest);
            out.extend_from_slice(&p.in_end.to_le_bytes());
        }
        for c in &self.checkpoints {
            out.extend_from_slice(&c.out.to_le_bytes());
            out.extend_from_slice(&c.in_bit.to_le_bytes());
            out.extend_from_slice(&c.window_len.to_le_bytes());
            let (kind, where_, len) = match c.window {
                Window::None => (0u8, 0u64, 0u32),
                Window::Stored { offset, len } => (1, offset, len),
                Window::Primed { prime_bit } => (2, prime_bit, 0),
            };
            out.push(kind);
            out.extend_from_slice(&[0; 3]);
            out.extend_from_slice(&where_.to_le_bytes());
            out.extend_from_slice(&len.to_le_bytes());
        }
        out.extend_from_slice(self.entries);
        for i in &self.prioritized {
            out.extend_from_slice(&i.to_le_bytes());
        }
        out
    }
}

/// Every 1 MiB chunk a reader loads (the unit of `stream::CHUNK`) needs
/// compressed bytes from its checkpoint to its last piece's `in_end`: that
/// range must start before it ends, and neither it nor the output inflated
/// before the chunk may pass the reader's limits (an index, even one that
/// unseals, must not make one read fetch or inflate without bound).
fn reads_are_bounded(
    checkpoints: &[Checkpoint],
    pieces: &[Piece],
    piece: u32,
    uncompressed: u64,
) -> Result<(), HeadError> {
    let chunk = CHUNK;
    let mut j = 0;
    let mut start = 0u64;
    while start < uncompressed {
        while j + 1 < checkpoints.len() && checkpoints[j + 1].out <= start {
            j += 1;
        }
        let c = &checkpoints[j];
        let end = (start + chunk).min(uncompressed);
        let last = ((end - 1) / u64::from(piece)) as usize;
        let Some(p) = pieces.get(last) else {
            return Err(bad("the pieces do not cover the stream"));
        };
        let from = c.in_bit / 8;
        let n = start / chunk;
        if p.in_end <= from {
            return Err(bad(format!(
                "chunk {n}: its pieces end before its checkpoint {j} begins"
            )));
        }
        // Deflate at worst grows data by an eighth (fixed-Huffman literals
        // of 9 bits); an inflater looks ahead a little.
        let most = (end - c.out) + (end - c.out) / 8 + (1 << 20);
        if p.in_end - from > most.min(MAX_FETCH) || start - c.out > MAX_INFLATE {
            return Err(bad(format!(
                "chunk {n}: reading it from checkpoint {j} would fetch or inflate more than {} MiB",
                MAX_FETCH >> 20
            )));
        }
        start = end;
    }
    Ok(())
}

fn checkpoint(r: &mut Reader<'_>, i: usize) -> Result<Checkpoint, HeadError> {
    let out = r.u64("checkpoint out")?;
    let in_bit = r.u64("checkpoint in_bit")?;
    let window_len = r.u32("checkpoint window_len")?;
    let kind = r.u8("checkpoint window kind")?;
    if r.take(3, "checkpoint reserved")?.iter().any(|&b| b != 0) {
        return Err(bad(format!("checkpoint {i}: reserved bytes are not zero")));
    }
    let at = r.u64("checkpoint window place")?;
    let len = r.u32("checkpoint window record length")?;
    let window = match kind {
        0 if window_len == 0 && at == 0 && len == 0 => Window::None,
        1 if (1..=WINDOW).contains(&window_len)
            && (MIN_WINDOW_RECORD..=MAX_WINDOW_RECORD).contains(&len) =>
        {
            Window::Stored { offset: at, len }
        }
        2 if (1..=WINDOW).contains(&window_len)
            && len == 0
            && at < in_bit
            && in_bit - at <= MAX_PRIME_BITS =>
        {
            Window::Primed { prime_bit: at }
        }
        _ => return Err(bad(format!("checkpoint {i}: its window breaks its rules"))),
    };
    Ok(Checkpoint {
        out,
        in_bit,
        window_len,
        window,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expect() -> Expect {
        Expect {
            layer: [4; 32],
            blob_size: 200_000,
            compression: Compression::Gzip,
        }
    }

    /// A gzip layer of 200 000 compressed and 300 000 uncompressed bytes,
    /// 64 KiB spans and pieces, two checkpoints.
    fn head() -> Head<'static> {
        let e = expect();
        let (c, u, s) = (e.blob_size, 300_000u64, 64u32 << 10);
        let pieces = (0..ceil_div(u, s))
            .map(|k| Piece {
                digest: [k as u8; 32],
                in_end: ((k + 1) * 40_000).min(c),
            })
            .collect::<Vec<_>>();
        Head {
            header: Header {
                layer: e.layer,
                blob_size: c,
                compression: Compression::Gzip,
                uncompressed: u,
                span: s,
                piece: s,
                entry_count: 3,
                checkpoint_count: 2,
                entries_len: 5,
                entries_deflated: false,
                windows_size: 100,
                prioritized_count: 2,
            },
            spans: (0..ceil_div(c, s))
                .map(|i| {
                    if i + 1 < ceil_div(c, s) {
                        [i as u8 + 9; 32]
                    } else {
                        e.layer
                    }
                })
                .collect(),
            pieces,
            checkpoints: vec![
                Checkpoint {
                    out: 0,
                    in_bit: 80,
                    window_len: 0,
                    window: Window::None,
                },
                Checkpoint {
                    out: 150_000,
                    in_bit: 8 * 100_000 + 3,
                    window_len: WINDOW,
                    window: Window::Stored {
                        offset: 0,
                        len: 100,
                    },
                },
            ],
            entries: b"entry",
            prioritized: vec![0, 2],
        }
    }

    fn padded(mut b: Vec<u8>) -> Vec<u8> {
        b.resize(b.len().div_ceil(4096) * 4096, 0);
        b
    }

    #[test]
    fn a_head_reads_back_as_written() {
        let h = head();
        let bytes = padded(h.write());
        assert_eq!(Head::parse(&bytes, &expect()).unwrap(), h);
    }

    /// Each rule refuses with a line naming what broke it.
    #[test]
    fn every_rule_is_checked_with_its_own_line() {
        let e = expect();
        let refuse =
            |h: &Head<'_>, e: &Expect| Head::parse(&padded(h.write()), e).unwrap_err().to_string();
        let other = Expect {
            layer: [5; 32],
            ..e
        };
        assert_eq!(
            refuse(&head(), &other),
            "seek index head: it indexes another layer"
        );
        let resized = Expect { blob_size: 1, ..e };
        assert!(refuse(&head(), &resized).contains("not the descriptor's 1"));
        let tar = Expect {
            compression: Compression::None,
            ..e
        };
        assert!(refuse(&head(), &tar).contains("compression is not the layer media type's"));

        let mut h = head();
        h.header.span = 3000;
        assert!(refuse(&h, &e).contains("span size 3000"));
        let mut h = head();
        h.header.piece = 2 << 20;
        assert!(refuse(&h, &e).contains("piece size 2097152"));
        let mut h = head();
        h.header.entry_count = MAX_ENTRIES + 1;
        assert!(refuse(&h, &e).contains("entries, more than"));
        let mut h = head();
        h.pieces[2].in_end = 1;
        assert!(refuse(&h, &e).contains("piece 2's in_end 1"));
        let mut h = head();
        h.pieces.last_mut().unwrap().in_end = 199_999;
        h.pieces[3].in_end = 199_999;
        assert!(refuse(&h, &e).contains("in_end 199999"));
        let mut h = head();
        h.checkpoints[1].out = 0;
        assert!(refuse(&h, &e).contains("checkpoint 1 is out of order"));
        let mut h = head();
        // Primed from a point that is not before its block.
        h.checkpoints[1].window = Window::Primed {
            prime_bit: 8 * 100_000 + 3,
        };
        assert!(refuse(&h, &e).contains("checkpoint 1: its window breaks its rules"));
        let mut h = head();
        h.checkpoints[1].window = Window::Stored {
            offset: 0,
            len: 40961,
        };
        assert!(refuse(&h, &e).contains("checkpoint 1: its window"));
        let mut h = head();
        h.header.entries_len = 1 << 40;
        assert!(refuse(&h, &e).contains("entries length 1099511627776 runs past"));
        let mut h = head();
        h.prioritized = vec![2, 0];
        assert!(refuse(&h, &e).contains("prioritized entry 0 is out of order"));
        let mut h = head();
        h.prioritized = vec![0, 3];
        assert!(refuse(&h, &e).contains("prioritized entry 3 is out of order or out of range"));
        let mut h = head();
        h.header.prioritized_count = 4;
        assert!(refuse(&h, &e).contains("4 prioritized entries, more than its 3"));
        let mut h = head();
        h.spans.last_mut().unwrap()[0] ^= 1;
        assert!(refuse(&h, &e).contains("its last span digest is not the layer digest"));
        // An index from before chaining values (algorithm 1).
        let mut bytes = padded(head().write());
        bytes[41] = 1;
        let old = Head::parse(&bytes, &e).unwrap_err().to_string();
        assert!(old.contains("digest algorithm 1 is not SHA-256 chaining values (2): an index from an older lazycrypt"), "{old}");
    }

    /// Counts that claim more than the payload holds are refused before
    /// anything is allocated for them; so is garbage after the entries.
    #[test]
    fn claimed_counts_are_checked_against_the_bytes() {
        let e = expect();
        let mut h = head();
        h.header.checkpoint_count = u32::MAX;
        let bytes = h.write();
        assert!(
            Head::parse(&bytes, &e)
                .unwrap_err()
                .to_string()
                .contains("checkpoints do not fit")
        );
        let mut h = head();
        h.header.entry_count = MAX_ENTRIES;
        h.header.prioritized_count = MAX_ENTRIES;
        assert!(
            Head::parse(&h.write(), &e)
                .unwrap_err()
                .to_string()
                .contains("prioritized entries do not fit")
        );
        let mut h = head();
        h.header.uncompressed = u64::MAX;
        assert!(
            Head::parse(&h.write(), &e)
                .unwrap_err()
                .to_string()
                .contains("pieces do not fit")
        );
        let mut bytes = padded(head().write());
        *bytes.last_mut().unwrap() = 1;
        assert!(
            Head::parse(&bytes, &e)
                .unwrap_err()
                .to_string()
                .contains("padding")
        );
        assert!(
            Head::parse(&bytes[..40], &e)
                .unwrap_err()
                .to_string()
                .contains("shorter than its header")
        );
    }
}
