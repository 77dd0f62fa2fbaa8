//! Credentials handed over with an image pull (the kubelet's
//! image-pull-secrets in a CRI `PullImage`), kept in memory only for the
//! lazy fetches of that image's layers: never written anywhere, at most
//! [`Keychain::CAPACITY`] repositories, each forgotten after its time to
//! live. Keyed by registry host and repository, so a tag or digest of the
//! same repository finds them; they go only to that registry's own host
//! (see [`super::auth`]).

use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lru::LruCache;

use super::auth::Credential;
use super::reference::RegistryRef;

/// Credentials by repository, bounded and expiring.
///
/// A pull's credential is *pending* while the pull is under way (the
/// layer mounts of that pull need it), and becomes the repository's
/// *confirmed* one only once the registry took it: a pull with a wrong
/// secret cannot replace credentials that work.
pub struct Keychain {
    entries: Mutex<Entries>,
    ttl: Duration,
}

struct Entries {
    lru: LruCache<String, Entry>,
    /// Tells a pull's pending credential from a later pull's.
    next_ticket: u64,
}

#[derive(Default)]
struct Entry {
    confirmed: Option<Held>,
    pending: Option<(u64, Held)>,
}

struct Held {
    cred: Credential,
    until: Instant,
}

impl Entry {
    /// Drops what expired by `now`; is anything left?
    fn sweep(&mut self, now: Instant) -> bool {
        if self.confirmed.as_ref().is_some_and(|h| now >= h.until) {
            self.confirmed = None;
        }
        if self.pending.as_ref().is_some_and(|(_, h)| now >= h.until) {
            self.pending = None;
        }
        self.confirmed.is_some() || self.pending.is_some()
    }
}

impl Entries {
    /// Drops (and zeroizes) every expired credential, so a secret whose
    /// repository is never looked up again is not held past its time.
    fn sweep(&mut self, now: Instant) {
        let empty: Vec<String> = self
            .lru
            .iter_mut()
            .filter_map(|(k, e)| (!e.sweep(now)).then(|| k.clone()))
            .collect();
        for k in empty {
            self.lru.pop(&k);
        }
    }
}

impl std::fmt::Debug for Keychain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keychain")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

/// A pull's credential, pending for its repository until [`confirm`]ed
/// (the pull succeeded); dropped unconfirmed, it is forgotten unless a
/// later pull's replaced it already.
///
/// [`confirm`]: Pending::confirm
#[must_use = "an unconfirmed credential is forgotten when dropped"]
pub struct Pending<'a> {
    keychain: &'a Keychain,
    key: String,
    ticket: u64,
    cred: Credential,
}

impl Pending<'_> {
    /// The registry took the credential: it is the repository's now, for
    /// the keychain's time to live.
    pub fn confirm(self) {
        self.confirm_at(Instant::now());
    }

    fn confirm_at(self, now: Instant) {
        let mut entries = crate::sync::lock(&self.keychain.entries);
        entries.sweep(now);
        let held = Held {
            cred: self.cred.clone(),
            until: self.keychain.until(now),
        };
        match entries.lru.get_mut(&self.key) {
            Some(e) => e.confirmed = Some(held),
            None => {
                entries.lru.put(
                    self.key.clone(),
                    Entry {
                        confirmed: Some(held),
                        pending: None,
                    },
                );
            }
        }
        // Drop clears the pending credential, now confirmed.
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        let mut entries = crate::sync::lock(&self.keychain.entries);
        let Some(e) = entries.lru.peek_mut(&self.key) else {
            return;
        };
        if e.pending.as_ref().is_some_and(|(t, _)| *t == self.ticket) {
            e.pending = None;
            if e.confirmed.is_none() {
                entries.lru.pop(&self.key);
            }
        }
    }
}

impl Keychain {
    /// Repositories remembered at once; the least recently used goes first.
    pub const CAPACITY: usize = 256;

    /// The longest time to live: a longer one is cut to this.
    pub const MAX_TTL: Duration = Duration::from_secs(366 * 24 * 3600);

    /// An empty keychain whose entries live `ttl` (at most
    /// [`Self::MAX_TTL`]) after they were handed over.
    pub fn new(ttl: Duration) -> Self {
        Self::with_capacity(Self::CAPACITY, ttl)
    }

    fn with_capacity(capacity: usize, ttl: Duration) -> Self {
        Keychain {
            entries: Mutex::new(Entries {
                lru: LruCache::new(NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN)),
                next_ticket: 0,
            }),
            ttl: ttl.min(Self::MAX_TTL),
        }
    }

    fn until(&self, now: Instant) -> Instant {
        // A capped ttl after a monotonic clock's reading cannot overflow;
        // were it to, the credential lives for no time rather than forever.
        now.checked_add(self.ttl).unwrap_or(now)
    }

    /// Holds `cred` as pending for `r`'s repository (lookups get it before
    /// the confirmed one) until the returned [`Pending`] is confirmed or
    /// dropped.
    pub fn hold(&self, r: &RegistryRef, cred: Credential) -> Pending<'_> {
        self.hold_at(r, cred, Instant::now())
    }

    /// The credential for `r`'s repository, unless expired: a pull's
    /// pending one (that pull's layers are being mounted), else the
    /// confirmed one.
    pub fn lookup(&self, r: &RegistryRef) -> Option<Credential> {
        self.lookup_at(r, Instant::now())
    }

    fn hold_at(&self, r: &RegistryRef, cred: Credential, now: Instant) -> Pending<'_> {
        let key = key(r);
        let mut entries = crate::sync::lock(&self.entries);
        entries.sweep(now);
        let ticket = entries.next_ticket;
        entries.next_ticket = ticket.wrapping_add(1);
        let held = Held {
            cred: cred.clone(),
            until: self.until(now),
        };
        match entries.lru.get_mut(&key) {
            Some(e) => e.pending = Some((ticket, held)),
            None => {
                entries.lru.put(
                    key.clone(),
                    Entry {
                        confirmed: None,
                        pending: Some((ticket, held)),
                    },
                );
            }
        }
        Pending {
            keychain: self,
            key,
            ticket,
            cred,
        }
    }

    fn lookup_at(&self, r: &RegistryRef, now: Instant) -> Option<Credential> {
        let mut entries = crate::sync::lock(&self.entries);
        entries.sweep(now);
        let e = entries.lru.get(&key(r))?;
        e.pending
            .as_ref()
            .map(|(_, h)| h)
            .or(e.confirmed.as_ref())
            .map(|h| h.cred.clone())
    }

    /// Repositories held.
    pub fn len(&self) -> usize {
        crate::sync::lock(&self.entries).lru.len()
    }

    /// Holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A repository as both a pull (the image as the kubelet wrote it) and a
/// layer's `cri.image-ref` (as containerd normalized it) name it:
/// [`RegistryRef::parse`] normalizes as containerd does, and Docker Hub's
/// API host is Docker Hub.
fn key(r: &RegistryRef) -> String {
    let host = r.host.to_ascii_lowercase();
    let host = if host == "registry-1.docker.io" {
        "docker.io"
    } else {
        &host
    };
    format!("{host}/{}", r.repo)
}

#[cfg(test)]
mod tests {
    use super::super::auth::Secret;
    use super::*;

    fn r(s: &str) -> RegistryRef {
        RegistryRef::parse(s).unwrap()
    }

    fn basic(s: &str) -> Credential {
        Credential::Basic(Secret::new(s.into()))
    }

    impl Keychain {
        /// A pull of `r` with `cred` that succeeded at `now`.
        fn remember_at(&self, r: &RegistryRef, cred: Credential, now: Instant) {
            self.hold_at(r, cred, now).confirm_at(now);
        }

        fn remember(&self, r: &RegistryRef, cred: Credential) {
            self.remember_at(r, cred, Instant::now());
        }
    }

    #[test]
    fn finds_a_repository_by_any_tag_or_digest_and_nothing_else() {
        let k = Keychain::new(Duration::from_secs(60));
        k.remember(&r("reg.example:5000/app/x:v1"), basic("a"));
        assert_eq!(k.lookup(&r("reg.example:5000/app/x:v2")), Some(basic("a")));
        let digest = format!("reg.example:5000/app/x@sha256:{}", "0".repeat(64));
        assert_eq!(k.lookup(&r(&digest)), Some(basic("a")));
        assert_eq!(k.lookup(&r("reg.example:5000/app/y:v1")), None);
        assert_eq!(k.lookup(&r("reg.example:5001/app/x:v1")), None);
        assert_eq!(k.lookup(&r("other.example/app/x:v1")), None);
        // Docker Hub's short names are the same repository.
        k.remember(&r("nginx"), basic("hub"));
        assert_eq!(
            k.lookup(&r("docker.io/library/nginx:1")),
            Some(basic("hub"))
        );
        k.remember(&r("reg.example:5000/app/x:v3"), basic("b"));
        assert_eq!(k.lookup(&r("reg.example:5000/app/x")), Some(basic("b")));
    }

    #[test]
    fn a_pulls_image_as_written_finds_its_layers_cri_image_ref() {
        let d = format!("sha256:{}", "c".repeat(64));
        // What the kubelet sends, and the `cri.image-ref` containerd gives
        // the image's layers.
        for (pulled, label) in [
            ("nginx", "docker.io/library/nginx:latest".to_string()),
            ("docker.io/nginx", "docker.io/library/nginx:latest".into()),
            ("index.docker.io/x/y", "docker.io/x/y:latest".into()),
            (
                "registry-1.docker.io/x/y",
                "registry-1.docker.io/x/y:latest".into(),
            ),
            ("registry-1.docker.io/x/y", "docker.io/x/y:latest".into()),
            (&format!("reg:5000/x:v1@{d}"), format!("reg:5000/x@{d}")),
            ("reg.example:443/x", "reg.example:443/x:latest".into()),
        ] {
            let k = Keychain::new(Duration::from_secs(60));
            k.remember(&r(pulled), basic("a"));
            assert_eq!(
                k.lookup(&r(&label)),
                Some(basic("a")),
                "{pulled} -> {label}"
            );
        }
    }

    #[test]
    fn entries_expire_after_their_time_to_live() {
        let k = Keychain::new(Duration::from_secs(60));
        let t0 = Instant::now();
        let x = r("reg.example/app/x:v1");
        k.remember_at(&x, basic("a"), t0);
        assert_eq!(
            k.lookup_at(&x, t0 + Duration::from_secs(59)),
            Some(basic("a"))
        );
        assert_eq!(k.lookup_at(&x, t0 + Duration::from_secs(60)), None);
        assert!(k.is_empty(), "an expired entry is dropped");
        // A new pull hands them over again, for another time to live.
        k.remember_at(&x, basic("a"), t0 + Duration::from_secs(100));
        assert_eq!(
            k.lookup_at(&x, t0 + Duration::from_secs(150)),
            Some(basic("a"))
        );
    }

    #[test]
    fn an_entry_never_looked_up_again_is_dropped_after_its_time_to_live() {
        let k = Keychain::new(Duration::from_secs(60));
        let t0 = Instant::now();
        k.remember_at(&r("reg.example/app/x"), basic("a"), t0);
        k.remember_at(
            &r("reg.example/app/y"),
            basic("b"),
            t0 + Duration::from_secs(30),
        );
        assert_eq!(k.len(), 2);
        // x is never looked up: any other use of the keychain drops it.
        k.remember_at(
            &r("reg.example/app/z"),
            basic("c"),
            t0 + Duration::from_secs(61),
        );
        assert_eq!(k.len(), 2, "x's secret is gone");
        let _ = k.lookup_at(&r("reg.example/other"), t0 + Duration::from_secs(200));
        assert!(k.is_empty());
    }

    #[test]
    fn a_huge_time_to_live_is_capped_not_instant_expiry() {
        let k = Keychain::new(Duration::MAX);
        let x = r("reg.example/app/x");
        k.remember(&x, basic("a"));
        assert_eq!(k.lookup(&x), Some(basic("a")));
        let t0 = Instant::now();
        k.remember_at(&x, basic("a"), t0);
        assert_eq!(k.lookup_at(&x, t0 + Keychain::MAX_TTL), None);
    }

    #[test]
    fn a_failed_pull_leaves_the_confirmed_credential_in_place() {
        let k = Keychain::new(Duration::from_secs(60));
        let x = r("reg.example/app/x:v1");
        k.remember(&x, basic("good"));
        // Another pod's pull with a bogus secret: its own Prepares get it
        // while it is under way, then it fails.
        let bogus = k.hold(&x, basic("bogus"));
        assert_eq!(k.lookup(&x), Some(basic("bogus")));
        drop(bogus);
        assert_eq!(k.lookup(&x), Some(basic("good")));
        // A first pull that fails leaves nothing behind.
        let y = r("reg.example/app/y");
        drop(k.hold(&y, basic("bogus")));
        assert_eq!(k.lookup(&y), None);
        assert_eq!(k.len(), 1);
    }

    #[test]
    fn a_successful_pull_confirms_its_credential() {
        let k = Keychain::new(Duration::from_secs(60));
        let x = r("reg.example/app/x:v1");
        k.remember(&x, basic("old"));
        let p = k.hold(&x, basic("new"));
        // A second pull overlaps the first and fails after it succeeded.
        let q = k.hold(&x, basic("bogus"));
        p.confirm();
        assert_eq!(k.lookup(&x), Some(basic("bogus")), "q is still under way");
        drop(q);
        assert_eq!(k.lookup(&x), Some(basic("new")));
        // A failed pull that a later pull's pending credential replaced
        // does not remove that one.
        let a = k.hold(&x, basic("a"));
        let b = k.hold(&x, basic("b"));
        drop(a);
        assert_eq!(k.lookup(&x), Some(basic("b")));
        b.confirm();
        assert_eq!(k.lookup(&x), Some(basic("b")));
    }

    #[test]
    fn holds_at_most_its_capacity_dropping_the_least_recently_used() {
        let k = Keychain::with_capacity(3, Duration::from_secs(60));
        for i in 0..3 {
            k.remember(&r(&format!("reg.example/r{i}")), basic(&i.to_string()));
        }
        // r0 used: r1 is now the least recently used.
        assert!(k.lookup(&r("reg.example/r0")).is_some());
        k.remember(&r("reg.example/r3"), basic("3"));
        assert_eq!(k.len(), 3);
        assert_eq!(k.lookup(&r("reg.example/r1")), None);
        for i in [0, 2, 3] {
            assert!(k.lookup(&r(&format!("reg.example/r{i}"))).is_some(), "r{i}");
        }
        let full = Keychain::new(Duration::from_secs(60));
        for i in 0..Keychain::CAPACITY + 10 {
            full.remember(&r(&format!("reg.example/r{i}")), basic("x"));
        }
        assert_eq!(full.len(), Keychain::CAPACITY);
    }
}
