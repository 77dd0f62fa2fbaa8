//! Prometheus text metrics on `--metrics HOST:PORT`: bytes fetched, chunks
//! decrypted, cache hits and ratio, FUSE read latency, mounts, snapshots.
//! A minimal HTTP/1.1 responder: Prometheus scrapers need no more.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::store::Store;
use crate::fs::latency::{BOUNDS_US, READS};

/// Diff-ID checks of lazily mounted layers, by outcome.
pub static DIFF_ID_VERIFIED: AtomicU64 = AtomicU64::new(0);
pub static DIFF_ID_MISMATCHES: AtomicU64 = AtomicU64::new(0);
pub static DIFF_ID_ERRORS: AtomicU64 = AtomicU64::new(0);

/// The metrics page, in Prometheus' text exposition format.
pub fn render(store: &Store) -> String {
    let mut out = String::new();
    let (remote, kinds) = match store.stats() {
        Ok(s) => s,
        Err(e) => return format!("# metrics unavailable: {e}\n"),
    };
    let c = &remote.cache;
    let lookups = c.hits + c.loaded;
    let ratio = if lookups == 0 {
        0.0
    } else {
        c.hits as f64 / lookups as f64
    };
    let simple: [(&str, &str, &str, String); 8] = [
        (
            "lazycrypt_fetched_bytes_total",
            "counter",
            "Bytes of layer blobs fetched from registries.",
            remote.fetched.to_string(),
        ),
        (
            "lazycrypt_chunks_decrypted_total",
            "counter",
            "Chunks fetched, decrypted, inflated and verified.",
            c.loaded.to_string(),
        ),
        (
            "lazycrypt_chunks_read_ahead_total",
            "counter",
            "Chunks loaded ahead of a sequential reader.",
            c.read_ahead.to_string(),
        ),
        (
            "lazycrypt_chunk_cache_hits_total",
            "counter",
            "Reads answered from the in-memory chunk cache.",
            c.hits.to_string(),
        ),
        (
            "lazycrypt_chunk_cache_evictions_total",
            "counter",
            "Chunks evicted (and zeroized) from the cache.",
            c.evicted.to_string(),
        ),
        (
            "lazycrypt_chunk_cache_bytes",
            "gauge",
            "Decrypted bytes held in memory.",
            c.held.to_string(),
        ),
        (
            "lazycrypt_chunk_cache_hit_ratio",
            "gauge",
            "Cache hits over all chunk lookups.",
            format!("{ratio:.4}"),
        ),
        (
            "lazycrypt_layer_mounts",
            "gauge",
            "Layers mounted lazily (FUSE).",
            remote.mounts.to_string(),
        ),
    ];
    for (name, kind, help, value) in simple {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    }
    let _ = writeln!(
        out,
        "# HELP lazycrypt_snapshots Snapshots by kind.\n# TYPE lazycrypt_snapshots gauge"
    );
    for (kind, n) in ["view", "active", "committed"].iter().zip(kinds) {
        let _ = writeln!(out, "lazycrypt_snapshots{{kind=\"{kind}\"}} {n}");
    }
    let _ = writeln!(
        out,
        "# HELP lazycrypt_diff_id_checks_total Lazily mounted layers hashed whole against \
         the diff ID their image claims, by result (mismatch: the layer was poisoned).\n\
         # TYPE lazycrypt_diff_id_checks_total counter"
    );
    for (result, n) in [
        ("verified", &DIFF_ID_VERIFIED),
        ("mismatch", &DIFF_ID_MISMATCHES),
        ("error", &DIFF_ID_ERRORS),
    ] {
        let n = n.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "lazycrypt_diff_id_checks_total{{result=\"{result}\"}} {n}"
        );
    }
    let (buckets, sum, count) = READS.snapshot();
    let _ = writeln!(
        out,
        "# HELP lazycrypt_fuse_read_seconds FUSE read latency.\n# TYPE lazycrypt_fuse_read_seconds histogram"
    );
    for (i, n) in buckets.iter().enumerate() {
        let le = BOUNDS_US
            .get(i)
            .map(|us| format!("{}", *us as f64 / 1e6))
            .unwrap_or_else(|| "+Inf".into());
        let _ = writeln!(out, "lazycrypt_fuse_read_seconds_bucket{{le=\"{le}\"}} {n}");
    }
    let _ = writeln!(out, "lazycrypt_fuse_read_seconds_sum {sum}");
    let _ = writeln!(out, "lazycrypt_fuse_read_seconds_count {count}");
    out
}

/// Serves `GET /metrics` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, store: Arc<Store>) -> std::io::Result<()> {
    loop {
        let (mut conn, _) = listener.accept().await?;
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            // The request line may arrive in pieces: read to the header's end.
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 16 << 10 {
                match conn.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let line = String::from_utf8_lossy(&req);
            let (status, body) = if line.starts_with("GET /metrics ") {
                let body = tokio::task::spawn_blocking(move || render(&store))
                    .await
                    .unwrap_or_default();
                ("200 OK", body)
            } else {
                ("404 Not Found", "see /metrics\n".to_string())
            };
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = conn.write_all(head.as_bytes()).await;
            let _ = conn.write_all(body.as_bytes()).await;
        });
    }
}
