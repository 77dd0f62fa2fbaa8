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
pub struct Keychain {
    entries: Mutex<LruCache<String, (Credential, Instant)>>,
    ttl: Duration,
}

impl std::fmt::Debug for Keychain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keychain")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl Keychain {
    /// Repositories remembered at once; the least recently used goes first.
    pub const CAPACITY: usize = 256;

    /// An empty keychain whose entries live `ttl` after they were handed
    /// over.
    pub fn new(ttl: Duration) -> Self {
        Self::with_capacity(Self::CAPACITY, ttl)
    }

    fn with_capacity(capacity: usize, ttl: Duration) -> Self {
        Keychain {
            entries: Mutex::new(LruCache::new(
                NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN),
            )),
            ttl,
        }
    }

    /// Remembers `cred` for `r`'s repository, replacing what was there.
    pub fn remember(&self, r: &RegistryRef, cred: Credential) {
        self.remember_at(r, cred, Instant::now());
    }

    /// The credential remembered for `r`'s repository, unless expired.
    pub fn lookup(&self, r: &RegistryRef) -> Option<Credential> {
        self.lookup_at(r, Instant::now())
    }

    fn remember_at(&self, r: &RegistryRef, cred: Credential, now: Instant) {
        let until = now.checked_add(self.ttl).unwrap_or(now);
        crate::sync::lock(&self.entries).put(key(r), (cred, until));
    }

    fn lookup_at(&self, r: &RegistryRef, now: Instant) -> Option<Credential> {
        let mut entries = crate::sync::lock(&self.entries);
        let k = key(r);
        match entries.get(&k) {
            Some((c, until)) if now < *until => Some(c.clone()),
            Some(_) => {
                // Dropped (and zeroized) as soon as it is seen expired.
                entries.pop(&k);
                None
            }
            None => None,
        }
    }

    /// Repositories held (expired ones included until looked up).
    pub fn len(&self) -> usize {
        crate::sync::lock(&self.entries).len()
    }

    /// Holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn key(r: &RegistryRef) -> String {
    format!("{}/{}", r.host.to_ascii_lowercase(), r.repo)
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
