//! The windows blob (docs/seek-index.md §6): each stored checkpoint's
//! 32 KiB of history, raw-deflated and sealed as its own record, so a read
//! fetches one window by range rather than all of them.

use zeroize::Zeroizing;

use super::head::WINDOW;
use super::seal::{Binding, IndexKey, Kind, SealError, TAG_LEN, VERSION};

/// The windows blob's magic.
pub const MAGIC: &[u8; 6] = b"LZSWIN";
/// Magic and version.
pub const PREAMBLE: u64 = 8;

/// Lays window records out back to back after the preamble.
pub struct Writer {
    blob: Vec<u8>,
}

impl Default for Writer {
    fn default() -> Self {
        Self::new()
    }
}

impl Writer {
    pub fn new() -> Self {
        let mut blob = MAGIC.to_vec();
        blob.extend_from_slice(&VERSION.to_le_bytes());
        Writer { blob }
    }

    /// Appends a sealed record; returns its offset and length.
    pub fn push(&mut self, record: &[u8]) -> (u64, u32) {
        let at = self.blob.len() as u64;
        self.blob.extend_from_slice(record);
        (at, record.len() as u32)
    }

    /// The blob, or `None` if no record was pushed.
    pub fn finish(self) -> Option<Vec<u8>> {
        (self.blob.len() as u64 > PREAMBLE).then_some(self.blob)
    }
}

/// Why a window cannot be used; one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    #[error("window {0}: its record lies outside the windows blob")]
    OutOfBlob(u64),
    #[error("{0}")]
    Seal(#[from] SealError),
    #[error("window {0}: it does not inflate to the {1} bytes its checkpoint names")]
    BadLength(u64, u32),
}

/// Checks that record `number` at `[offset, offset + len)` lies in a
/// windows blob of `blob_size` bytes, after its preamble.
pub fn check_place(number: u64, offset: u64, len: u32, blob_size: u64) -> Result<(), WindowError> {
    match offset.checked_add(u64::from(len)) {
        Some(end) if offset >= PREAMBLE && end <= blob_size && len as usize > TAG_LEN => Ok(()),
        _ => Err(WindowError::OutOfBlob(number)),
    }
}

/// Opens record `number` (its sealed bytes) and inflates it to exactly
/// `window_len` bytes of history.
pub fn open(
    key: &IndexKey,
    number: u64,
    binding: Binding<'_>,
    sealed: &[u8],
    window_len: u32,
) -> Result<Zeroizing<Vec<u8>>, WindowError> {
    let raw = key.open(Kind::Window, number, binding, sealed)?;
    if window_len > WINDOW {
        return Err(WindowError::BadLength(number, window_len));
    }
    // One byte past the limit tells "too long" from "exactly right".
    let out = miniz_oxide::inflate::decompress_to_vec_with_limit(&raw, window_len as usize + 1)
        .map_err(|_| WindowError::BadLength(number, window_len))?;
    let out = Zeroizing::new(out);
    if out.len() != window_len as usize {
        return Err(WindowError::BadLength(number, window_len));
    }
    Ok(out)
}
