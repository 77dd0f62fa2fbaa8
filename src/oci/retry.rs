//! Deadlines and retries of registry requests: how long a registry may take,
//! which failures are worth another try, how long to wait before it
//! (`Retry-After` honoured, capped), and a check that a whole-blob download
//! keeps moving. Nothing here waits past a request's deadline.

use std::io::{self, Read};
use std::time::{Duration, Instant};

use super::Error;
use crate::deadline;

/// How long a registry may take. The defaults suit a node daemon: a
/// stalled registry costs a file read [`Timeouts::request`], not forever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Connecting, TLS handshake included.
    pub connect: Duration,
    /// The longest the registry may stay silent in the middle of a request
    /// (no byte for this long fails the try; another follows while the
    /// request has time). A whole-blob download must also bring
    /// [`PACE_BYTES`] in each such stretch of waiting.
    pub read: Duration,
    /// A whole request whose answer has a bounded size (a manifest, a token,
    /// a range of a blob), retries included. A file read that waits on the
    /// registry fails with EIO after this long.
    pub request: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(10),
            read: Duration::from_secs(15),
            request: Duration::from_secs(30),
        }
    }
}

/// Tries of one request, at most (fewer if its deadline comes first).
pub const TRIES: u32 = 4;
/// The longest wait a `Retry-After` gets.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(10);
/// Bytes a whole-blob download must bring in each [`Timeouts::read`] of
/// waiting on the registry: a registry that trickles fails, as one that is
/// silent does.
pub const PACE_BYTES: u64 = 64 << 10;

/// How long an exchange may take.
#[derive(Debug, Clone, Copy)]
pub enum Limit {
    /// The whole exchange, answer body included, ends by then.
    Whole(Instant),
    /// The answer's headers arrive by then; its body (a whole blob) is held
    /// to [`Timeouts::read`] and [`PACE_BYTES`] instead, however long it is.
    Headers(Instant),
}

impl Limit {
    pub fn at(self) -> Instant {
        match self {
            Limit::Whole(t) | Limit::Headers(t) => t,
        }
    }

    /// Time left, or an error saying the request ran out of it.
    pub fn left(self, what: &str, t: &Timeouts) -> Result<Duration, Error> {
        deadline::left(self.at()).ok_or_else(|| out_of_time(what, t))
    }
}

fn out_of_time(what: &str, t: &Timeouts) -> Error {
    Error::Registry(format!(
        "{what}: no answer within {} s (registry_timeout)",
        t.request.as_secs()
    ))
}

/// Why one try failed, and whether another may help.
pub enum TryError {
    /// Worth another try, after the registry's `Retry-After` if it gave one.
    Again {
        error: Error,
        after: Option<Duration>,
    },
    /// Another try would fail the same way.
    Fatal(Error),
}

impl From<Error> for TryError {
    fn from(e: Error) -> Self {
        TryError::Fatal(e)
    }
}

/// Runs `once` until it succeeds, fails for good, has had [`TRIES`], or
/// another try would not fit before `limit`'s deadline.
pub fn retrying<T>(
    what: &str,
    limit: Limit,
    t: &Timeouts,
    mut once: impl FnMut() -> Result<T, TryError>,
) -> Result<T, Error> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        limit.left(what, t)?;
        let (error, after) = match once() {
            Ok(v) => return Ok(v),
            Err(TryError::Fatal(e)) => return Err(e),
            Err(TryError::Again { error, after }) => (error, after),
        };
        if attempt >= TRIES {
            return Err(error);
        }
        let wait = match after {
            Some(a) => a.min(MAX_RETRY_AFTER),
            None => backoff(attempt),
        };
        match deadline::left(limit.at()) {
            Some(left) if left > wait => {}
            // The answer will not come in time: say so now, and free the
            // caller (a file read) early.
            _ => return Err(error),
        }
        tracing::warn!("{error}; retrying in {} ms", wait.as_millis());
        std::thread::sleep(wait);
    }
}

/// 100 ms, 400 ms, 1.6 s, …
fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(100u64.saturating_mul(4u64.saturating_pow(attempt.saturating_sub(1))))
}

/// A `Retry-After` in seconds (the HTTP-date form is not honoured: the
/// usual backoff applies instead).
pub fn retry_after(value: Option<&str>) -> Option<Duration> {
    let v = value?.trim();
    if v.is_empty() || v.len() > 9 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok().map(Duration::from_secs)
}

/// Failures worth another try: the connection, not the conversation.
pub fn transient(e: &ureq::Error) -> bool {
    use io::ErrorKind::*;
    match e {
        ureq::Error::Io(io) => matches!(
            io.kind(),
            ConnectionRefused
                | ConnectionReset
                | ConnectionAborted
                | TimedOut
                | UnexpectedEof
                | BrokenPipe
                | Interrupted
        ),
        ureq::Error::Timeout(_) | ureq::Error::ConnectionFailed => true,
        _ => false,
    }
}

/// Whether an error reading an answer's body is worth another try.
pub fn transient_io(e: io::Error) -> bool {
    transient(&ureq::Error::from(e))
}

/// A whole-blob body that must keep moving: fails once it has waited
/// `window` on the registry while bringing fewer than [`PACE_BYTES`]. Only
/// time spent waiting for the registry counts, not the reader's own pauses
/// (a rate-limited check, a slow destination).
pub struct Paced<R> {
    inner: R,
    window: Duration,
    waited: Duration,
    got: u64,
}

impl<R> Paced<R> {
    pub fn new(inner: R, window: Duration) -> Self {
        Paced {
            inner,
            window,
            waited: Duration::ZERO,
            got: 0,
        }
    }
}

impl<R: Read> Read for Paced<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let started = Instant::now();
        let n = self.inner.read(buf)?;
        self.waited += started.elapsed();
        self.got += n as u64;
        if self.got >= PACE_BYTES {
            (self.got, self.waited) = (0, Duration::ZERO);
        } else if n > 0 && self.waited >= self.window {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "the registry sent under {} KiB in {} s (registry_read_timeout)",
                    PACE_BYTES >> 10,
                    self.window.as_secs()
                ),
            ));
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_takes_seconds_only() {
        assert_eq!(retry_after(Some(" 3 ")), Some(Duration::from_secs(3)));
        assert_eq!(retry_after(Some("0")), Some(Duration::ZERO));
        assert_eq!(retry_after(Some("Wed, 21 Oct 2015 07:28:00 GMT")), None);
        assert_eq!(retry_after(Some("-1")), None);
        assert_eq!(retry_after(Some("99999999999999999999")), None);
        assert_eq!(retry_after(None), None);
    }

    fn fails(n: &mut u32, after: Option<Duration>) -> Result<(), TryError> {
        *n += 1;
        Err(TryError::Again {
            error: Error::Registry(format!("try {n}")),
            after,
        })
    }

    #[test]
    fn retries_are_bounded_by_count_and_by_the_deadline() {
        let t = Timeouts::default();
        let far = Limit::Whole(Instant::now() + Duration::from_secs(60));
        let mut n = 0;
        let e = retrying("x", far, &t, || fails(&mut n, Some(Duration::ZERO))).unwrap_err();
        assert_eq!((n, e.to_string()), (TRIES, format!("try {TRIES}")));

        // A Retry-After longer than the time left fails at once.
        let near = Limit::Whole(Instant::now() + Duration::from_secs(2));
        let mut n = 0;
        let started = Instant::now();
        let e = retrying("x", near, &t, || {
            fails(&mut n, Some(Duration::from_secs(5)))
        });
        assert_eq!((n, e.unwrap_err().to_string()), (1, "try 1".to_string()));
        assert!(started.elapsed() < Duration::from_secs(2));

        // A deadline already passed tries nothing.
        let past = Limit::Whole(Instant::now() - Duration::from_millis(1));
        let mut n = 0;
        let e = retrying("GET /x", past, &t, || fails(&mut n, None)).unwrap_err();
        assert_eq!(n, 0);
        assert!(
            e.to_string().contains("GET /x: no answer within 30 s"),
            "{e}"
        );

        let mut n = 0;
        let fatal = retrying("x", far, &t, || -> Result<(), TryError> {
            n += 1;
            Err(Error::Registry("no".into()).into())
        });
        assert!(fatal.is_err() && n == 1, "a fatal failure is not retried");
    }

    /// Hands out one byte per read, each after `pause`.
    struct Trickle {
        pause: Duration,
        left: usize,
    }

    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.left == 0 || buf.is_empty() {
                return Ok(0);
            }
            std::thread::sleep(self.pause);
            self.left -= 1;
            buf[0] = 7;
            Ok(1)
        }
    }

    #[test]
    fn a_trickling_body_fails_but_a_slow_reader_does_not() {
        let trickle = Trickle {
            pause: Duration::from_millis(20),
            left: usize::MAX,
        };
        let mut p = Paced::new(trickle, Duration::from_millis(200));
        let e = io::copy(&mut p, &mut io::sink()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(e.to_string().contains("registry_read_timeout"), "{e}");

        // The reader's own pauses between reads do not count.
        let mut p = Paced::new(&[1u8; 100][..], Duration::from_millis(50));
        let mut b = [0u8; 10];
        for _ in 0..10 {
            std::thread::sleep(Duration::from_millis(20));
            assert_eq!(p.read(&mut b).unwrap(), 10);
        }
    }
}
