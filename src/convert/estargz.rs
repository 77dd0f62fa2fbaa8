//! Streams a layer blob converted to eStargz, for encryption or upload.

use std::io::{self, Read};
use std::thread::JoinHandle;

use crate::crypto::Error;
use crate::layer::estargz::CHUNK_SIZE;
use crate::layer::estargz::writer::{Converted, convert};

/// The converter thread, joined once its output has been read or dropped.
pub struct Worker(JoinHandle<io::Result<Converted>>);

/// Starts converting `src`, a layer blob of media type `mt` (plain or gzipped
/// tar); returns the eStargz stream and the converter.
pub fn start(
    src: Box<dyn Read + Send>,
    mt: &str,
    layer: &str,
) -> Result<(io::PipeReader, Worker), Error> {
    let base = mt.trim_end_matches("+encrypted");
    let tar: Box<dyn Read + Send> = if base.ends_with(".tar") {
        src
    } else if base.ends_with("+gzip") || base.ends_with(".tar.gzip") {
        Box::new(flate2::read::MultiGzDecoder::new(src))
    } else {
        return Err(Error::Malformed(format!(
            "layer {layer}: {mt} layers cannot be converted to eStargz (tar and tar+gzip can)"
        )));
    };
    let (reader, writer) =
        io::pipe().map_err(|e| Error::Malformed(format!("layer {layer}: {e}")))?;
    let worker = std::thread::spawn(move || convert(tar, writer, CHUNK_SIZE).map(|(_, c)| c));
    Ok((reader, Worker(worker)))
}

impl Worker {
    /// Waits for the converter; call once its stream has been read or dropped.
    pub fn finish(self, layer: &str) -> Result<Converted, Error> {
        self.0
            .join()
            .map_err(|_| Error::Malformed(format!("layer {layer}: eStargz converter panicked")))?
            .map_err(|e| Error::Malformed(format!("layer {layer}: converting to eStargz: {e}")))
    }
}
