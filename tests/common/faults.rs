//! A registry that misbehaves on command: an HTTP proxy in front of
//! Debian's registry that, while told to, breaks its answers to blob GETs
//! the ways a broken network, registry or mirror does (resets, stalls,
//! trickles, short or misplaced ranges, flipped bytes, 429/5xx with
//! `Retry-After`), and counts what it broke.
//!
//! One request per connection: the proxy asks its upstream with
//! `Connection: close`, reads the whole answer, and passes it on, broken or
//! not, with `Connection: close` too.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One way to break an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The connection is reset half-way through the body.
    Reset,
    /// Headers and half the body, then silence until the fault is changed.
    Stall,
    /// The body one byte a second.
    Trickle,
    /// The body 64 KiB a second: slow, but fast enough for every read
    /// timeout, so a whole-blob download goes on for minutes.
    Slow,
    /// A range answered with half the bytes asked, headers saying so.
    Truncate,
    /// One byte of the body flipped.
    Flip,
    /// Another range's bytes, with a `Content-Range` that says which.
    WrongRange,
    /// Another range's bytes, with the `Content-Range` of the range asked.
    LyingRange,
    /// 429 Too Many Requests, `Retry-After` this many seconds.
    TooMany(u32),
    /// 503 Service Unavailable, `Retry-After` this many seconds.
    Unavailable(u32),
    /// 500 Internal Server Error, no `Retry-After`.
    ServerError,
}

impl Fault {
    /// Every fault, for tests that cycle through them.
    pub const ALL: [Fault; 10] = [
        Fault::Reset,
        Fault::Stall,
        Fault::Trickle,
        Fault::Truncate,
        Fault::Flip,
        Fault::WrongRange,
        Fault::LyingRange,
        Fault::TooMany(1),
        Fault::Unavailable(1),
        Fault::ServerError,
    ];
}

#[derive(Default)]
struct State {
    /// The fault, and how many more answers get it (`None`: all).
    fault: Mutex<Option<(Fault, Option<u64>)>>,
    /// Bumped by each change of fault: stalls end with it.
    generation: AtomicU64,
    injected: AtomicU64,
    /// Answers being held back by a stall or a trickle now.
    holding: AtomicU64,
    /// Every request's first line (`GET /v2/… HTTP/1.1`), in order.
    requests: Mutex<Vec<String>>,
    /// A path to answer with another after its first request, and whether
    /// it was asked for yet: a registry that changes its mind.
    swap: Mutex<Option<(String, String, bool)>>,
}

impl State {
    /// The fault for the next blob answer, if any, counting it.
    fn take(&self) -> Option<Fault> {
        let mut f = self.fault.lock().unwrap();
        let (fault, left) = (*f)?;
        match left {
            Some(0) => return None,
            Some(n) => *f = Some((fault, Some(n - 1))),
            None => {}
        }
        self.injected.fetch_add(1, Ordering::SeqCst);
        Some(fault)
    }
}

/// The proxy; its threads live as long as the test process.
pub struct FaultProxy {
    pub addr: String,
    state: Arc<State>,
}

impl FaultProxy {
    pub fn start(upstream: &str) -> Self {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let state = Arc::new(State::default());
        let (up, st) = (upstream.to_string(), state.clone());
        std::thread::spawn(move || {
            for c in l.incoming() {
                let Ok(client) = c else { continue };
                let (up, st) = (up.clone(), st.clone());
                std::thread::spawn(move || {
                    let _ = serve(client, &up, &st);
                });
            }
        });
        FaultProxy { addr, state }
    }

    /// Breaks every blob answer this way until told otherwise.
    pub fn always(&self, f: Fault) {
        self.set(Some((f, None)));
    }

    /// Breaks the next `n` blob answers this way, then none.
    pub fn next(&self, f: Fault, n: u64) {
        self.set(Some((f, Some(n))));
    }

    /// Breaks nothing from now on; answers held back by a stall end.
    pub fn heal(&self) {
        self.set(None);
    }

    fn set(&self, f: Option<(Fault, Option<u64>)>) {
        *self.state.fault.lock().unwrap() = f;
        self.state.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Answers broken so far.
    pub fn injected(&self) -> u64 {
        self.state.injected.load(Ordering::SeqCst)
    }

    /// Answers held back by a stall or a trickle right now.
    pub fn holding(&self) -> u64 {
        self.state.holding.load(Ordering::SeqCst)
    }

    /// Answers requests for `from` (part of a path) after the first with
    /// what `to` names: a tag moved, or a registry lying, between two reads.
    pub fn swap_after_first(&self, from: &str, to: &str) {
        *self.state.swap.lock().unwrap() = Some((from.to_string(), to.to_string(), false));
    }

    /// The first line of every request passed on so far.
    pub fn requests(&self) -> Vec<String> {
        self.state.requests.lock().unwrap().clone()
    }
}

/// A request or response head: its first line and header lines.
struct Head {
    line: String,
    headers: Vec<(String, String)>,
}

impl Head {
    fn read(r: &mut impl BufRead) -> Option<Head> {
        let mut line = String::new();
        r.read_line(&mut line).ok()?;
        if line.is_empty() {
            return None;
        }
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            r.read_line(&mut h).ok()?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (k, v) = h.split_once(':')?;
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
        Some(Head {
            line: line.trim_end().to_string(),
            headers,
        })
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn set(&mut self, name: &str, value: &str) {
        self.headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
        self.headers.push((name.to_string(), value.to_string()));
    }

    fn bytes(&self) -> Vec<u8> {
        let mut out = format!("{}\r\n", self.line);
        for (k, v) in &self.headers {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        out.push_str("\r\n");
        out.into_bytes()
    }
}

/// `bytes=A-B` → (A, B).
fn range(v: &str) -> Option<(u64, u64)> {
    let (a, b) = v.strip_prefix("bytes=")?.split_once('-')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

fn serve(client: TcpStream, upstream: &str, st: &State) -> std::io::Result<()> {
    let mut from_client = BufReader::new(client.try_clone()?);
    let mut to_client = client;
    let Some(mut req) = Head::read(&mut from_client) else {
        return Ok(());
    };
    let mut body = vec![
        0u8;
        req.get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    ];
    from_client.read_exact(&mut body)?;
    st.requests.lock().unwrap().push(req.line.clone());
    if let Some((from, to, seen)) = st.swap.lock().unwrap().as_mut()
        && req.line.contains(from.as_str())
    {
        if *seen {
            req.line = req.line.replace(from.as_str(), to);
        }
        *seen = true;
    }
    let blob_get = req.line.starts_with("GET ") && req.line.contains("/blobs/sha256:");
    let fault = if blob_get { st.take() } else { None };
    let status = |code: u32, reason: &str, after: Option<u32>| {
        let mut r =
            format!("HTTP/1.1 {code} {reason}\r\nContent-Length: 0\r\nConnection: close\r\n");
        if let Some(s) = after {
            r.push_str(&format!("Retry-After: {s}\r\n"));
        }
        r.push_str("\r\n");
        r
    };
    match fault {
        Some(Fault::TooMany(s)) => {
            return to_client.write_all(status(429, "Too Many Requests", Some(s)).as_bytes());
        }
        Some(Fault::Unavailable(s)) => {
            return to_client.write_all(status(503, "Service Unavailable", Some(s)).as_bytes());
        }
        Some(Fault::ServerError) => {
            return to_client.write_all(status(500, "Internal Server Error", None).as_bytes());
        }
        _ => {}
    }
    let asked = req.get("range").and_then(range);
    if let (Some(Fault::WrongRange | Fault::LyingRange), Some((a, b))) = (fault, asked) {
        // One byte over: close enough to look right, never the right bytes.
        let (a, b) = if a > 0 {
            (a - 1, b - 1)
        } else {
            (a + 1, b + 1)
        };
        req.set("Range", &format!("bytes={a}-{b}"));
    }
    req.set("Connection", "close");
    let mut up = TcpStream::connect(upstream)?;
    up.write_all(&req.bytes())?;
    up.write_all(&body)?;
    let mut from_up = BufReader::new(up);
    let Some(mut res) = Head::read(&mut from_up) else {
        return Ok(());
    };
    let mut answer = Vec::new();
    if !req.line.starts_with("HEAD ") {
        from_up.read_to_end(&mut answer)?;
    }
    res.set("Connection", "close");
    let partial = res.line.contains(" 206 ");
    match fault {
        Some(Fault::Truncate) if !answer.is_empty() => {
            let keep = answer.len() / 2;
            if let (true, Some((a, _))) = (partial, asked) {
                let total = res
                    .get("content-range")
                    .and_then(|v| v.rsplit_once('/'))
                    .map_or("*".to_string(), |(_, t)| t.to_string());
                res.set(
                    "Content-Range",
                    &format!("bytes {a}-{}/{total}", a + keep as u64 - 1),
                );
            }
            answer.truncate(keep);
            res.set("Content-Length", &keep.to_string());
        }
        Some(Fault::Flip) if !answer.is_empty() => {
            let mid = answer.len() / 2;
            answer[mid] ^= 0x5a;
        }
        Some(Fault::LyingRange) => {
            if let (true, Some((a, b))) = (partial, asked) {
                let total = res
                    .get("content-range")
                    .and_then(|v| v.rsplit_once('/'))
                    .map_or("*".to_string(), |(_, t)| t.to_string());
                res.set("Content-Range", &format!("bytes {a}-{b}/{total}"));
            }
        }
        _ => {}
    }
    to_client.write_all(&res.bytes())?;
    let half = answer.len() / 2;
    match fault {
        Some(Fault::Reset) => {
            to_client.write_all(&answer[..half])?;
            reset(&to_client);
            Ok(())
        }
        Some(Fault::Stall) => {
            to_client.write_all(&answer[..half])?;
            let c = from_client.get_mut();
            c.set_read_timeout(Some(Duration::from_millis(50)))?;
            // Until the client hangs up (a read of 0) or the fault changes.
            hold(st, || !matches!(c.read(&mut [0u8; 1]), Ok(0)));
            Ok(())
        }
        Some(Fault::Slow) => {
            let mut at = 0;
            hold(st, || {
                let end = answer.len().min(at + (64 << 10));
                if at == answer.len() || to_client.write_all(&answer[at..end]).is_err() {
                    return false;
                }
                at = end;
                std::thread::sleep(Duration::from_secs(1));
                true
            });
            Ok(())
        }
        Some(Fault::Trickle) => {
            let mut at = 0;
            hold(st, || {
                if at == answer.len() || to_client.write_all(&answer[at..at + 1]).is_err() {
                    return false;
                }
                at += 1;
                std::thread::sleep(Duration::from_secs(1));
                true
            });
            Ok(())
        }
        _ => to_client.write_all(&answer),
    }
}

/// Runs `tick` while it returns true and the fault stays as it is (ten
/// minutes at most), counting the answer as held meanwhile.
fn hold(st: &State, mut tick: impl FnMut() -> bool) {
    let generation = st.generation.load(Ordering::SeqCst);
    st.holding.fetch_add(1, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(600);
    while st.generation.load(Ordering::SeqCst) == generation && Instant::now() < deadline && tick()
    {
    }
    st.holding.fetch_sub(1, Ordering::SeqCst);
}

/// Closes `s` with a TCP reset rather than an orderly close.
fn reset(s: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on an open socket with a correctly sized value.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}
