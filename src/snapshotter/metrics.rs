//! Prometheus text metrics on `--metrics HOST:PORT`: bytes fetched, chunks
//! decrypted, cache hits and ratio, FUSE read latency, mounts, snapshots.
//! A minimal HTTP/1.1 responder: Prometheus scrapers need no more.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::store::Store;
use crate::fs::latency::{BOUNDS_US, Histogram, READS};

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
    let simple: [(&str, &str, &str, String); 9] = [
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
        (
            "lazycrypt_key_unwraps_total",
            "counter",
            "Layer keys unwrapped (or tried) with private keys or keyproviders.",
            crate::crypto::envelope::UNWRAPS
                .load(Ordering::Relaxed)
                .to_string(),
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
        "# HELP lazycrypt_fuse_requests_total FUSE requests the layer mounts answered, by \
         kind.\n# TYPE lazycrypt_fuse_requests_total counter"
    );
    for op in crate::fs::requests::Op::ALL {
        let _ = writeln!(
            out,
            "lazycrypt_fuse_requests_total{{op=\"{}\"}} {}",
            op.name(),
            crate::fs::requests::count(op)
        );
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
    let _ = writeln!(
        out,
        "# HELP lazycrypt_signature_verdicts_total The signature policy's verdicts on images \
         (each manifest asked for once in a while; a rejected image's layers are not \
         fetched).\n# TYPE lazycrypt_signature_verdicts_total counter"
    );
    for (verdict, n) in [
        ("accepted", &super::verdicts::ACCEPTED),
        ("rejected", &super::verdicts::REJECTED),
    ] {
        let n = n.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "lazycrypt_signature_verdicts_total{{verdict=\"{verdict}\"}} {n}"
        );
    }
    histogram(
        &mut out,
        "lazycrypt_signature_verify_seconds",
        "Time to reach a signature verdict: signatures fetched and checked.",
        &super::verdicts::VERIFY_TIME,
    );
    histogram(
        &mut out,
        "lazycrypt_fuse_read_seconds",
        "FUSE read latency.",
        &READS,
    );
    out
}

fn histogram(out: &mut String, name: &str, help: &str, h: &Histogram) {
    let (buckets, sum, count) = h.snapshot();
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    for (i, n) in buckets.iter().enumerate() {
        let le = BOUNDS_US
            .get(i)
            .map(|us| format!("{}", *us as f64 / 1e6))
            .unwrap_or_else(|| "+Inf".into());
        let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {n}");
    }
    let _ = writeln!(out, "{name}_sum {sum}");
    let _ = writeln!(out, "{name}_count {count}");
}

/// How the metrics endpoint bounds what its clients cost.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The most a connection may take to send its request, and then to
    /// take the answer: a client that sends nothing, or dribbles, is
    /// dropped after it.
    pub timeout: Duration,
    /// Connections served at once; more wait in the kernel's backlog, not
    /// as descriptors of the daemon.
    pub max_connections: usize,
    /// The pause after a failed accept (e.g. EMFILE) before trying again.
    pub backoff: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout: Duration::from_secs(5),
            max_connections: 16,
            backoff: Duration::from_millis(500),
        }
    }
}

/// What the accept loop takes connections from: a TCP listener, or a
/// test's stand-in.
pub trait Listener: Send + 'static {
    type Conn: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn accept(&self) -> impl Future<Output = std::io::Result<Self::Conn>> + Send;
}

impl Listener for TcpListener {
    type Conn = TcpStream;
    async fn accept(&self) -> std::io::Result<TcpStream> {
        TcpListener::accept(self).await.map(|(c, _)| c)
    }
}

/// Serves `GET /metrics` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, store: Arc<Store>) {
    let addr = listener
        .local_addr()
        .map_or_else(|_| "?".into(), |a| a.to_string());
    let page = Arc::new(move || render(&store));
    accept_loop(listener, Limits::default(), &addr, page).await
}

/// Accepts connections for ever, each served on a task of its own while a
/// slot of `limits.max_connections` is free. A failed accept (out of
/// descriptors, say) is logged once per run of failures and tried again
/// after a pause: it never ends the loop.
pub async fn accept_loop<L: Listener>(
    listener: L,
    limits: Limits,
    addr: &str,
    page: Arc<dyn Fn() -> String + Send + Sync>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut failing = false;
    loop {
        // Taken before accepting: over the cap, connections wait in the
        // backlog instead of holding a descriptor each.
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        match listener.accept().await {
            Ok(conn) => {
                if failing {
                    tracing::info!("metrics on {addr}: accepting connections again");
                    failing = false;
                }
                let page = Arc::clone(&page);
                tokio::spawn(async move {
                    respond(conn, limits.timeout, page).await;
                    drop(slot);
                });
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(
                        "metrics on {addr}: cannot accept a connection ({e}); retrying every {:?}",
                        limits.backoff
                    );
                    failing = true;
                }
                drop(slot);
                tokio::time::sleep(limits.backoff).await;
            }
        }
    }
}

/// Reads one request (to the end of its header, within `timeout`) and
/// answers it (within `timeout` too); a client too slow either way is
/// dropped.
async fn respond<C: AsyncRead + AsyncWrite + Unpin>(
    mut conn: C,
    timeout: Duration,
    page: Arc<dyn Fn() -> String + Send + Sync>,
) {
    let read = async {
        // The request line may arrive in pieces: read to the header's end.
        let mut req = Vec::new();
        let mut buf = [0u8; 1024];
        while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 16 << 10 {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => req.extend_from_slice(&buf[..n]),
            }
        }
        req
    };
    let Ok(req) = tokio::time::timeout(timeout, read).await else {
        return;
    };
    let (status, body) = if req.starts_with(b"GET /metrics ") {
        let body = tokio::task::spawn_blocking(move || page())
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
    let write = async {
        conn.write_all(head.as_bytes()).await?;
        conn.write_all(body.as_bytes()).await?;
        conn.shutdown().await
    };
    let _ = tokio::time::timeout(timeout, write).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;
    use std::sync::atomic::AtomicUsize;
    use tokio::io::DuplexStream;
    use tokio::sync::mpsc;

    /// A listener whose accepts the test scripts: errors, then streams.
    struct Scripted {
        next: tokio::sync::Mutex<mpsc::UnboundedReceiver<io::Result<DuplexStream>>>,
        accepted: Arc<AtomicUsize>,
    }

    impl Listener for Scripted {
        type Conn = DuplexStream;
        async fn accept(&self) -> io::Result<DuplexStream> {
            match self.next.lock().await.recv().await {
                Some(r) => {
                    if r.is_ok() {
                        self.accepted.fetch_add(1, Ordering::SeqCst);
                    }
                    r
                }
                None => std::future::pending().await,
            }
        }
    }

    type Script = mpsc::UnboundedSender<io::Result<DuplexStream>>;

    fn scripted(limits: Limits) -> (Script, Arc<AtomicUsize>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let accepted = Arc::new(AtomicUsize::new(0));
        let listener = Scripted {
            next: tokio::sync::Mutex::new(rx),
            accepted: Arc::clone(&accepted),
        };
        let page = Arc::new(|| "lazycrypt_up 1\n".to_string());
        tokio::spawn(async move { accept_loop(listener, limits, "test", page).await });
        (tx, accepted)
    }

    /// One request on `conn`, and the whole answer.
    async fn get<C: AsyncRead + AsyncWrite + Unpin>(mut conn: C) -> String {
        conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        conn.read_to_string(&mut out).await.unwrap();
        out
    }

    async fn until(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !f() {
            assert!(tokio::time::Instant::now() < deadline, "{what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn failed_accepts_never_end_the_accept_loop() {
        let limits = Limits {
            backoff: Duration::from_millis(1),
            ..Limits::default()
        };
        let (script, _) = scripted(limits);
        for _ in 0..3 {
            script
                .send(Err(io::Error::from_raw_os_error(libc::EMFILE)))
                .unwrap();
        }
        script
            .send(Err(io::Error::from_raw_os_error(libc::ECONNABORTED)))
            .unwrap();
        let (client, server) = tokio::io::duplex(1 << 16);
        script.send(Ok(server)).unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(30), get(client))
            .await
            .expect("the connection after the failed accepts is served");
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(answer.ends_with("\r\n\r\nlazycrypt_up 1\n"), "{answer}");
    }

    #[tokio::test]
    async fn connections_beyond_the_cap_are_not_accepted_until_a_slot_frees() {
        let limits = Limits {
            timeout: Duration::from_secs(3600),
            max_connections: 2,
            ..Limits::default()
        };
        let (script, accepted) = scripted(limits);
        let mut idle = Vec::new();
        for _ in 0..5 {
            let (client, server) = tokio::io::duplex(1024);
            script.send(Ok(server)).unwrap();
            idle.push(client);
        }
        until("two connections accepted", || {
            accepted.load(Ordering::SeqCst) == 2
        })
        .await;
        // Three more wait; the loop does not take them while both slots are
        // held.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        // A client that goes away frees its slot for the next.
        drop(idle.remove(0));
        until("a third connection accepted once a slot freed", || {
            accepted.load(Ordering::SeqCst) == 3
        })
        .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_silent_or_dribbling_client_is_dropped_and_others_are_served() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = Limits {
            timeout: Duration::from_millis(300),
            // Both slots go to the slow clients below: the third client is
            // served only once they are dropped.
            max_connections: 2,
            ..Limits::default()
        };
        let page = Arc::new(|| "lazycrypt_up 1\n".to_string());
        tokio::spawn(async move { accept_loop(listener, limits, "test", page).await });

        let mut silent = TcpStream::connect(addr).await.unwrap();
        let mut dribbler = TcpStream::connect(addr).await.unwrap();
        let dribbling = tokio::spawn(async move {
            for b in b"GET /metrics HTTP/1.1\r\n".iter().cycle() {
                if dribbler.write_all(&[*b]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        let third = TcpStream::connect(addr).await.unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(30), get(third))
            .await
            .expect("a third client is served despite the slow ones");
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");

        // The silent client was hung up on, the dribbler too.
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(30), silent.read(&mut buf))
            .await
            .expect("the silent client is hung up on");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        tokio::time::timeout(Duration::from_secs(30), dribbling)
            .await
            .expect("the dribbling client is hung up on")
            .unwrap();
    }
}
