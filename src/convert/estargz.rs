//! Streams a layer blob converted to eStargz, for encryption or upload.

use std::collections::HashSet;
use std::io::{self, Read};

use super::verified_source;
use crate::crypto::Error;
use crate::layer::estargz::writer::{Converted, convert, convert_prioritized};
use crate::oci::copy::LayerCtx;

/// Converts the layer of `ctx` (plain or gzipped tar) to eStargz on a
/// thread of its own, handing the stream to `consume`; returns what
/// `consume` returned and what the conversion produced. Files named in
/// `prioritized` go first, behind the prefetch landmark; that takes a
/// second read of the source.
pub fn convert_layer<T>(
    ctx: &LayerCtx<'_>,
    prioritized: &HashSet<String>,
    chunk_size: u64,
    consume: impl FnOnce(io::PipeReader) -> T,
) -> Result<(T, Converted), Error> {
    let layer = ctx.desc.digest().to_string();
    let mt = ctx.desc.media_type().to_string();
    let base = mt.trim_end_matches("+encrypted");
    let gzipped = if base.ends_with(".tar") {
        false
    } else if base.ends_with("+gzip") || base.ends_with(".tar.gzip") {
        true
    } else {
        return Err(Error::Malformed(format!(
            "layer {layer}: {mt} layers cannot be converted to eStargz (tar and tar+gzip can)"
        )));
    };
    let open = || -> io::Result<Box<dyn Read + Send>> {
        let src = verified_source(ctx).map_err(|e| io::Error::other(e.to_string()))?;
        Ok(if gzipped {
            Box::new(flate2::read::MultiGzDecoder::new(src))
        } else {
            src
        })
    };
    let (reader, writer) =
        io::pipe().map_err(|e| Error::Malformed(format!("layer {layer}: {e}")))?;
    std::thread::scope(|s| {
        let worker = s.spawn(move || {
            let r = if prioritized.is_empty() {
                open().and_then(|src| convert(src, writer, chunk_size))
            } else {
                convert_prioritized(open, writer, chunk_size, prioritized)
            };
            r.map(|(_, c)| c)
        });
        // `consume` owns the reader, so the converter sees it closed
        // when `consume` is done, even if it stopped early.
        let out = consume(reader);
        let c = worker
            .join()
            .map_err(|_| Error::Malformed(format!("layer {layer}: eStargz converter panicked")))?
            .map_err(|e| Error::Malformed(format!("layer {layer}: converting to eStargz: {e}")))?;
        Ok((out, c))
    })
}
