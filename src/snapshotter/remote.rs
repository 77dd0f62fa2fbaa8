//! Remote layers: a `Prepare` whose labels name an image layer is answered
//! by mounting that layer lazily (FUSE) instead of letting containerd
//! download and unpack it. The ocicrypt annotations never reach a
//! snapshotter, so the layer's descriptor is read from its manifest in the
//! registry, and its key unwrapped with the node's keys.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::authorized::{self, Authorized};
use super::error::{Error, Result};
use super::meta::{DiffId, Remote};
use super::verdicts::Verdicts;
use crate::cache::chunks::{ChunkCache, Reservation};
use crate::cache::flight::SingleFlight;
use crate::crypto::envelope::layer_keys;
use crate::crypto::recipient::KeyRing;
use crate::layer::index::Layer;
use crate::layer::stream::sealed::Scratch;
use crate::mount::keeper::Keeper;
use crate::mount::layer::LayerMount;
use crate::mount::open::{Mode, OpenOptions, open_layer};
use crate::mount::seek::Found;
use crate::mount::warm::{self, Names};
use crate::oci::reference::RegistryRef;
use crate::oci::registry::RegistryOptions;
use crate::oci::transport::ImageSource;
use crate::oci::{Descriptor, ImageManifest, media};
use crate::sync::{KeyedLocks, lock};

/// The label containerd's unpacker puts on a layer's `Prepare`: the name the
/// committed layer snapshot will have.
pub const REF_LABEL: &str = "containerd.io/snapshot.ref";

/// lazycrypt's own labels naming a layer (set by `lazycrypt pull`): image
/// ref, manifest digest, layer digest.
pub const LAZYCRYPT_LABELS: [&str; 3] = [
    "containerd.io/snapshot/lazycrypt.image-ref",
    "containerd.io/snapshot/lazycrypt.manifest-digest",
    "containerd.io/snapshot/lazycrypt.layer-digest",
];

/// Labels listing the digests of this layer and the image's layers above
/// it (comma-separated), which are opened ahead: CRI's and lazycrypt's.
pub const IMAGE_LAYERS_LABELS: [&str; 2] = [
    "containerd.io/snapshot/cri.image-layers",
    "containerd.io/snapshot/lazycrypt.image-layers",
];

/// Label sets that name a layer: CRI's, and lazycrypt's own.
const LABEL_SETS: [[&str; 3]; 2] = [
    [
        "containerd.io/snapshot/cri.image-ref",
        "containerd.io/snapshot/cri.manifest-digest",
        "containerd.io/snapshot/cri.layer-digest",
    ],
    LAZYCRYPT_LABELS,
];

/// The layer a `Prepare`'s labels name, if they name one.
pub fn named_layer(labels: &BTreeMap<String, String>) -> Option<Remote> {
    labels.get(REF_LABEL)?;
    LABEL_SETS.iter().find_map(|[i, m, l]| {
        Some(Remote {
            image: labels.get(*i)?.clone(),
            manifest: labels.get(*m)?.clone(),
            layer: labels.get(*l)?.clone(),
            descriptor: String::new(),
            diff_id: DiffId::Pending,
            seek: false,
        })
    })
}

/// Whether a `Prepare`'s labels ask for a layer (containerd's unpacker
/// names its target) without naming which image layer it is: containerd
/// then unpacks the layer itself. That is how a plain `ctr images pull`
/// prepares, and how CRI does when containerd passes no layer labels on.
pub fn unnamed_layer(labels: &BTreeMap<String, String>) -> bool {
    labels.contains_key(REF_LABEL) && named_layer(labels).is_none()
}

/// What a debug line shows of a `Prepare`'s labels: their keys, and the
/// values of the layer labels containerd, CRI and lazycrypt set (names and
/// digests); other labels are anyone's, so their values are left out. An
/// image can set labels through its layers' annotations: keys and values
/// are escaped (no forged log lines) and cut short, and at most
/// [`SHOWN_LABELS`] are listed.
pub fn shown_labels(labels: &BTreeMap<String, String>) -> String {
    let known = |k: &str| {
        k == REF_LABEL
            || LABEL_SETS.iter().flatten().any(|l| *l == k)
            || IMAGE_LAYERS_LABELS.contains(&k)
    };
    let mut shown: Vec<String> = labels
        .iter()
        .take(SHOWN_LABELS)
        .map(|(k, v)| {
            if known(k) {
                format!("{}={}", short(k), short(v))
            } else {
                format!("{}=(not shown)", short(k))
            }
        })
        .collect();
    if labels.len() > SHOWN_LABELS {
        shown.push(format!("({} more)", labels.len() - SHOWN_LABELS));
    }
    format!("[{}]", shown.join(", "))
}

/// Labels a debug line lists at most.
const SHOWN_LABELS: usize = 16;

/// `s` escaped for a log line, cut after [`SHOWN_CHARS`] characters.
fn short(s: &str) -> String {
    let mut out: String = s
        .chars()
        .take(SHOWN_CHARS)
        .flat_map(char::escape_debug)
        .collect();
    if s.chars().nth(SHOWN_CHARS).is_some() {
        out.push_str(&format!("…({} bytes)", s.len()));
    }
    out
}

/// Characters of one label's key or value a debug line shows at most.
const SHOWN_CHARS: usize = 160;

/// How remote layers are fetched and unlocked on this node.
#[derive(Debug, Clone)]
pub struct RemoteConfig {
    /// Directory of private keys (like ctd-decoder's `--decryption-keys-path`).
    pub keys_dir: PathBuf,
    /// How key files in `keys_dir` are checked and keyproviders called.
    pub keys: crate::crypto::recipient::KeyOptions,
    /// Registries (`host[:port]`) reached over plain HTTP.
    pub plain_http: Vec<String>,
    /// containerd's `certs.d` directory: registry mirrors in `hosts.toml`.
    pub hosts_dir: Option<PathBuf>,
    /// Ciphertext blob cache.
    pub cache_dir: PathBuf,
    /// Plaintext chunk cache budget in bytes, shared by all layers.
    pub cache_bytes: u64,
    /// Disk the sealed copies of zstd layers may take together.
    pub sealed_bytes: u64,
    /// Serve eStargz layers with no TOC anchor before verifying them whole.
    pub allow_unverified_lazy: bool,
    /// Serve layers without a TOC through seek indexes published beside
    /// their images, where there are.
    pub seek_index: bool,
    /// The kernel's read-ahead on each layer mount.
    pub read_ahead: crate::fs::ReadAhead,
    /// The FUSE keeper's socket: layer mounts outlive a killed daemon and
    /// are taken over by the next one. None: they die with the daemon.
    pub keeper_socket: Option<PathBuf>,
    /// How long registries may take.
    pub registry_timeouts: crate::oci::retry::Timeouts,
    /// Credentials pulls handed over (the CRI keychain), consulted before
    /// the auth files.
    pub keychain: Option<Arc<crate::oci::keychain::Keychain>>,
    /// The signature policy every image's manifest must satisfy before any
    /// of its layers is fetched or its keys unwrapped. None: any image.
    pub policy: Option<Arc<crate::oci::policy::Policy>>,
}

#[cfg(test)]
impl RemoteConfig {
    /// A daemon's config under `root`, with a 1 MiB cache and no keeper.
    pub(crate) fn for_tests(root: &Path) -> Self {
        RemoteConfig {
            keys_dir: root.join("keys"),
            keys: Default::default(),
            plain_http: Vec::new(),
            hosts_dir: None,
            cache_dir: root.join("blobs"),
            cache_bytes: 1 << 20,
            sealed_bytes: 1 << 20,
            allow_unverified_lazy: false,
            seek_index: true,
            read_ahead: crate::fs::ReadAhead::Auto,
            keeper_socket: None,
            registry_timeouts: Default::default(),
            keychain: None,
            policy: None,
        }
    }
}

/// The remote layers mounted by this daemon, by snapshot id.
pub struct Remotes {
    config: RemoteConfig,
    cache: Arc<ChunkCache>,
    mounts: Mutex<HashMap<u64, LayerMount>>,
    /// Bytes fetched by layers since unmounted (keeps the total monotonic).
    fetched_before: std::sync::atomic::AtomicU64,
    /// Serializes late mounts of one snapshot, so two calls never mount
    /// its layer twice; late mounts of other snapshots go on meanwhile.
    late: KeyedLocks<u64>,
    /// Layers being opened (or opened and not yet mounted), by digest,
    /// with when they were asked for.
    opening: Mutex<HashMap<String, (Instant, Opening)>>,
    /// Seek indexes found per image manifest, for a while.
    seek_found: Mutex<HashMap<String, (Instant, SeekCell)>>,
    /// Image manifests read (checked against their digests), for a while:
    /// every layer of an image reads its manifest, which with ocicrypt's
    /// wrapped keys in each layer's annotations is tens of KiB.
    manifests: Mutex<HashMap<String, (Instant, Arc<ImageManifest>)>>,
    /// Manifest reads under way, shared by the layers that ask meanwhile.
    manifest_reads: SingleFlight<String, Result<Arc<ImageManifest>>>,
    /// Where zstd layers' sealed copies go, under their disk budget.
    scratch: Scratch,
    keeper: Option<Keeper>,
    /// Connections an earlier daemon served, by mount directory, until
    /// taken over.
    inherited: Mutex<HashMap<PathBuf, OwnedFd>>,
    /// The signature policy's recent verdicts, if there is a policy.
    verdicts: Option<Verdicts>,
    /// Layers these key files unwrapped, not unwrapped again by each start.
    authorized: Authorized,
    /// Taken by each warming of lookups ([`Remotes::warm_lookups`]), so
    /// that the layers of a pull warm one after another.
    warming: Arc<Mutex<()>>,
}

/// An opened layer, how it is served, its remote with the descriptor, and
/// its memory held in the cache's budget.
type Opened = (Arc<Layer>, Mode, Remote, Arc<Reservation>);

/// One open of a layer, shared by whoever asks for it.
type Opening = Arc<OnceLock<Result<Opened>>>;
/// An image's seek indexes, looked for once.
type SeekCell = Arc<OnceLock<Arc<Found>>>;

/// How long a layer opened ahead waits for the Prepare that wants it
/// before it is dropped, with the memory its index holds.
const OPENED_AHEAD_TTL: Duration = Duration::from_secs(600);

/// Image manifests kept at most ([`Remotes::manifests`]; a node runs a few
/// images at a time, and a manifest is at most `MAX_MANIFEST`).
const MAX_MANIFESTS_KEPT: usize = 32;

/// Largest image config read to find a layer's diff ID.
const MAX_CONFIG: u64 = 8 << 20;

/// Most layers opened ahead and not yet mounted.
const MAX_PREFETCH: usize = 64;

/// Layers opened ahead at once, as containerd downloads three at once.
const OPEN_AHEAD_AT_ONCE: usize = 3;

/// What the metrics endpoint reports of remote layers.
#[derive(Debug, Clone)]
pub struct RemoteStats {
    pub mounts: usize,
    /// Bytes fetched from registries since start.
    pub fetched: u64,
    pub cache: crate::cache::chunks::Stats,
}

impl Remotes {
    pub fn new(config: RemoteConfig) -> Self {
        let keeper = config
            .keeper_socket
            .as_deref()
            .and_then(|s| match Keeper::start(s) {
                Ok(k) => Some(k),
                Err(e) => {
                    tracing::warn!("layer mounts will not outlive this daemon: {e}");
                    None
                }
            });
        let inherited = match keeper.as_ref().map(Keeper::held) {
            Some(Ok(held)) => held.into_iter().collect(),
            Some(Err(e)) => {
                tracing::warn!("taking over the FUSE connections of the last daemon: {e}");
                HashMap::new()
            }
            None => HashMap::new(),
        };
        Remotes {
            verdicts: config.policy.clone().map(Verdicts::new),
            cache: Arc::new(ChunkCache::new(config.cache_bytes, 2)),
            scratch: Scratch::new(config.cache_dir.join("sealed"), config.sealed_bytes),
            config,
            mounts: Mutex::new(HashMap::new()),
            fetched_before: std::sync::atomic::AtomicU64::new(0),
            late: KeyedLocks::default(),
            opening: Mutex::new(HashMap::new()),
            seek_found: Mutex::new(HashMap::new()),
            manifests: Mutex::new(HashMap::new()),
            manifest_reads: SingleFlight::default(),
            authorized: Authorized::default(),
            warming: Arc::default(),
            keeper,
            inherited: Mutex::new(inherited),
        }
    }

    /// Where ciphertext blobs are cached.
    pub fn cache_dir(&self) -> &Path {
        &self.config.cache_dir
    }

    /// Counts for the metrics endpoint.
    pub fn stats(&self) -> RemoteStats {
        let mounts = lock(&self.mounts);
        let live: u64 = mounts.values().map(|m| m.layer().fetched()).sum();
        RemoteStats {
            mounts: mounts.len(),
            fetched: live
                + self
                    .fetched_before
                    .load(std::sync::atomic::Ordering::Relaxed),
            cache: self.cache.stats(),
        }
    }

    /// What snapshot `id`'s layer `remote` holds on this node: its whole
    /// ciphertext blob, which the cache holds once the layer's diff-ID check
    /// has read it (every lazily mounted layer gets one), and its sealed
    /// copy, if it has one; and its inodes, if it is mounted. The whole
    /// blob rather than the blocks fetched so far, because CRI asks a
    /// committed snapshot's `Usage` once, when it first sees it: blocks
    /// fetched later would never reach the kubelet's image GC.
    pub fn usage(&self, id: u64, remote: &Remote) -> (u64, Option<u64>) {
        let blob = descriptor(remote).map_or(0, |d| d.size());
        let mounts = lock(&self.mounts);
        let mounted = mounts.get(&id);
        let sealed = mounted.map_or(0, |m| m.layer().on_disk());
        (blob.saturating_add(sealed), mounted.map(LayerMount::inodes))
    }

    fn retire(&self, m: &LayerMount) {
        self.fetched_before
            .fetch_add(m.layer().fetched(), std::sync::atomic::Ordering::Relaxed);
    }

    /// The node's keys as they are now (re-read each time: removing a key
    /// file must take effect for the next container).
    fn ring(&self) -> Result<KeyRing> {
        let dir = &self.config.keys_dir;
        KeyRing::load(&[], dir.exists().then_some(dir.as_path()), self.config.keys).map_err(|e| {
            match e {
                crate::crypto::Error::KeyProvider(m) => Error::internal(m),
                e => Error::internal(format!("keys in {}: {e}", dir.display())),
            }
        })
    }

    fn source(&self, image: &str) -> Result<Arc<dyn ImageSource>> {
        let r = RegistryRef::parse(image)
            .map_err(|e| Error::invalid(format!("image reference {image}: {e}")))?;
        let opts = RegistryOptions {
            plain_http: self.config.plain_http.contains(&r.host),
            creds: self.config.keychain.as_ref().and_then(|k| k.lookup(&r)),
            timeouts: self.config.registry_timeouts,
        };
        let src = crate::oci::mirrored::open(&r, self.config.hosts_dir.as_deref(), &opts).map_err(
            |e| {
                Error::new(
                    tonic::Code::Unavailable,
                    format!("registry for {image}: {e}"),
                )
            },
        )?;
        Ok(Arc::from(src))
    }

    /// Whether the signature policy accepts `remote`'s image at its manifest
    /// digest (a recent verdict, or one asked for now). Called before
    /// anything of a layer is fetched and before any key is unwrapped; a
    /// refusal is `FailedPrecondition` with the verdict's one-line reason.
    fn verify(&self, remote: &Remote) -> Result<()> {
        let Some(verdicts) = &self.verdicts else {
            return Ok(());
        };
        let image = RegistryRef::parse(&remote.image)
            .map_err(|e| Error::invalid(format!("image reference {}: {e}", remote.image)))?;
        let manifest = crate::oci::digest::parse(&remote.manifest)
            .map_err(|e| Error::invalid(format!("manifest digest {}: {e}", remote.manifest)))?;
        verdicts
            .check(&image, &remote.image, &manifest, || {
                self.source(&remote.image)
            })
            .map_err(|e| match e {
                Ok(reason) => Error::failed_precondition(reason),
                Err(e) => e,
            })
    }

    /// The manifest `remote` names, read (and checked against its digest)
    /// from its image's registry.
    fn manifest(&self, remote: &Remote) -> Result<(Arc<dyn ImageSource>, Arc<ImageManifest>)> {
        let src = self.source(&remote.image)?;
        let key = opening_key(&remote.image, &remote.manifest, "");
        let now = Instant::now();
        {
            let mut m = lock(&self.manifests);
            m.retain(|_, (at, _)| now.duration_since(*at) < OPENED_AHEAD_TTL);
            if let Some((_, found)) = m.get(&key) {
                return Ok((src, found.clone()));
            }
        }
        // Read without the lock held, once for all the layers that ask at
        // the same time (the layers of an image are opened together), and
        // kept before the read ends so that no later layer reads it again.
        let read = || {
            let found = Arc::new(self.read_manifest(&*src, remote)?);
            let mut m = lock(&self.manifests);
            if m.len() >= MAX_MANIFESTS_KEPT {
                m.clear();
            }
            m.insert(key.clone(), (now, found.clone()));
            Ok(found)
        };
        let found = self
            .manifest_reads
            .run(key.clone(), || Ok(read()))
            .map_err(|e| Error::internal(format!("manifest {}: {e}", remote.manifest)))??;
        Ok((src, found))
    }

    fn read_manifest(&self, src: &dyn ImageSource, remote: &Remote) -> Result<ImageManifest> {
        let want = crate::oci::digest::parse(&remote.manifest)
            .map_err(|e| Error::invalid(format!("manifest digest {}: {e}", remote.manifest)))?;
        let mdesc = Descriptor::new(oci_spec::image::MediaType::ImageManifest, 0, want);
        let raw = src.manifest(&mdesc).map_err(|e| {
            Error::new(
                tonic::Code::Unavailable,
                format!("manifest {} of {}: {e}", remote.manifest, remote.image),
            )
        })?;
        serde_json::from_slice(&raw.bytes).map_err(|e| {
            Error::invalid(format!(
                "manifest {} of {}: {e}",
                remote.manifest, remote.image
            ))
        })
    }

    /// Finds the layer's descriptor in its manifest; fills `remote.descriptor`.
    fn resolve(&self, remote: &mut Remote) -> Result<Descriptor> {
        let (_, m) = self.manifest(remote)?;
        let desc = m
            .layers()
            .iter()
            .find(|d| d.digest().to_string() == remote.layer)
            .cloned()
            .ok_or_else(|| {
                Error::not_found(format!(
                    "layer {} is not in manifest {} of {}",
                    remote.layer, remote.manifest, remote.image
                ))
            })?;
        remote.descriptor =
            serde_json::to_string(&desc).map_err(|e| Error::internal(e.to_string()))?;
        Ok(desc)
    }

    /// The diff ID `remote`'s image config claims for its layer: what
    /// containerd named the snapshot by.
    fn claimed_diff_id(&self, remote: &Remote) -> Result<String> {
        let (src, m) = self.manifest(remote)?;
        let index = m
            .layers()
            .iter()
            .position(|d| d.digest().to_string() == remote.layer)
            .ok_or_else(|| {
                Error::not_found(format!(
                    "layer {} is not in manifest {} of {}",
                    remote.layer, remote.manifest, remote.image
                ))
            })?;
        let cdesc = m.config();
        let what = format!("config {} of {}", cdesc.digest(), remote.image);
        if cdesc.size() > MAX_CONFIG {
            return Err(Error::invalid(format!(
                "{what}: {} bytes is more than {MAX_CONFIG}",
                cdesc.size()
            )));
        }
        let mut bytes = Vec::new();
        let read = src.blob(cdesc).map_err(io::Error::other).and_then(|r| {
            crate::oci::digest::VerifyingReader::new(
                r,
                cdesc.digest().clone(),
                Some(cdesc.size()),
                &what,
            )
            .read_to_end(&mut bytes)
        });
        read.map_err(|e| Error::new(tonic::Code::Unavailable, format!("{what}: {e}")))?;
        let config: oci_spec::image::ImageConfiguration =
            serde_json::from_slice(&bytes).map_err(|e| Error::invalid(format!("{what}: {e}")))?;
        config
            .rootfs()
            .diff_ids()
            .get(index)
            .cloned()
            .ok_or_else(|| Error::invalid(format!("{what}: no diff ID for layer {index}")))
    }

    /// Checks `remote`'s layer against the diff ID its image config claims,
    /// streaming it whole at most `rate` bytes a second (it lands in the
    /// ciphertext cache on the way).
    pub fn check_diff_id(&self, id: u64, remote: &Remote, rate: Option<u64>) -> Result<DiffId> {
        self.verify(remote)?;
        let claimed = self.claimed_diff_id(remote)?;
        let desc = descriptor(remote)?;
        let src = self.source(&remote.image)?;
        let ring = self.ring()?;
        // A layer served through a seek index is checked against what the
        // index vouched for, too (docs/seek-index.md §9).
        let layer = lock(&self.mounts).get(&id).map(|m| m.layer().clone());
        let vouched = layer.as_ref().and_then(|l| l.vouched());
        let (actual, why) = crate::mount::diff_id::diff_id_checking(
            src,
            &desc,
            &ring,
            &self.open_options(),
            rate,
            vouched.as_ref(),
        )
        .map_err(|e| layer_error(&e))?;
        Ok(if let Some(why) = why {
            DiffId::IndexMismatch { why }
        } else if actual.eq_ignore_ascii_case(&claimed) {
            DiffId::Verified(actual)
        } else {
            DiffId::Mismatch { claimed, actual }
        })
    }

    /// Stops serving snapshot `id`'s layer: everything of it answers EIO
    /// from now on, and it is unmounted unless a container still holds it.
    pub fn poison(&self, id: u64) {
        let m = lock(&self.mounts).remove(&id);
        if let Some(m) = m {
            m.poison();
            if let Err(e) = self.take_down(m) {
                tracing::warn!("{e}; the poisoned layer answers EIO until it is released");
            }
        }
    }

    /// The seek indexes of `remote`'s image manifest, looked for once per
    /// image for a while and shared by its layers; none for a layer that
    /// is not encrypted or when turned off.
    fn seek_indexes(
        &self,
        remote: &Remote,
        desc: &Descriptor,
        src: &dyn ImageSource,
    ) -> Option<Arc<Found>> {
        if !self.config.seek_index || !media::is_encrypted(desc.media_type().as_ref()) {
            return None;
        }
        let manifest = crate::oci::digest::parse(&remote.manifest).ok()?;
        let now = Instant::now();
        let cell = {
            let mut m = lock(&self.seek_found);
            m.retain(|_, (at, _)| now.duration_since(*at) < OPENED_AHEAD_TTL);
            m.entry(opening_key(&remote.image, &remote.manifest, ""))
                .or_insert_with(|| (now, Arc::default()))
                .1
                .clone()
        };
        Some(
            cell.get_or_init(|| Arc::new(Found::find(src, &manifest)))
                .clone(),
        )
    }

    fn open_options(&self) -> OpenOptions {
        OpenOptions {
            cache_dir: self.config.cache_dir.clone(),
            scratch: self.scratch.clone(),
            allow_unverified_lazy: self.config.allow_unverified_lazy,
        }
    }

    /// Opens the layer (resolving its descriptor first if `remote` has
    /// none) and mounts it at `dir` for snapshot `id`; fills
    /// `remote.descriptor`. A layer opened ahead by [`Remotes::prefetch`] is
    /// taken as it is (or waited for).
    pub fn mount(&self, id: u64, remote: &mut Remote, dir: &Path) -> Result<Mode> {
        let (layer, mode, resolved, reserved) = self.take_opened(remote)?;
        *remote = resolved;
        remote.seek = mode == Mode::Seek;
        let m = LayerMount::new(
            layer,
            reserved,
            self.cache.clone(),
            dir,
            self.config.read_ahead,
        )
        .map_err(|e| Error::io("mounting layer", e))?;
        if let Some(k) = &self.keeper
            && let Err(e) = k.keep(dir, m.connection())
        {
            tracing::warn!("{} will not outlive this daemon: {e}", dir.display());
        }
        lock(&self.mounts).insert(id, m);
        Ok(mode)
    }

    /// Serves snapshot `id`'s layer again on the connection an earlier
    /// daemon left at `dir`, if the keeper kept one that is still mounted
    /// there. The containers reading it never notice more than a pause.
    fn take_over(&self, id: u64, remote: &Remote, dir: &Path) -> Result<bool> {
        let Some(conn) = lock(&self.inherited).remove(dir) else {
            return Ok(false);
        };
        if !crate::mount::sys::is_layer_mount(dir) || !connection_alive(&conn) {
            if let Some(k) = &self.keeper {
                let _ = k.release(dir);
            }
            return Ok(false);
        }
        let (layer, reserved) = match self.take_opened(remote) {
            Ok((layer, _, _, reserved)) => (layer, reserved),
            Err(e) => {
                // Tried again by the next call that needs the layer.
                lock(&self.inherited).insert(dir.to_path_buf(), conn);
                return Err(e);
            }
        };
        let m = LayerMount::resume(layer, reserved, self.cache.clone(), dir, conn)
            .map_err(|e| Error::io("taking over a layer mount", e))?;
        tracing::info!(
            "layer {} at {} taken over from the last daemon",
            remote.layer,
            dir.display()
        );
        lock(&self.mounts).insert(id, m);
        Ok(true)
    }

    /// Lets go of the connections an earlier daemon left at directories
    /// other than `claimed` (their snapshots are gone).
    pub fn release_unclaimed(&self, claimed: &std::collections::HashSet<PathBuf>) {
        let left: Vec<_> = {
            let mut inherited = lock(&self.inherited);
            let gone: Vec<PathBuf> = inherited
                .keys()
                .filter(|d| !claimed.contains(*d))
                .cloned()
                .collect();
            gone.into_iter()
                .filter_map(|d| inherited.remove_entry(&d))
                .collect()
        };
        for (dir, _) in left {
            if let Some(k) = &self.keeper {
                let _ = k.release(&dir);
            }
            let _ = crate::mount::sys::unmount_under(&dir);
        }
    }

    /// Opens `remote`'s layer once: concurrent callers (a prefetch and the
    /// Prepare that needs it) share one open, and its result is handed out
    /// once.
    fn take_opened(&self, remote: &Remote) -> Result<Opened> {
        self.expire_opened(Instant::now());
        let key = opening_key(&remote.image, &remote.manifest, &remote.layer);
        let cell = {
            let mut m = lock(&self.opening);
            m.entry(key.clone())
                .or_insert_with(|| (Instant::now(), Arc::default()))
                .1
                .clone()
        };
        let out = cell.get_or_init(|| self.open_now(remote)).clone();
        let mut m = lock(&self.opening);
        if m.get(&key).is_some_and(|(_, c)| Arc::ptr_eq(c, &cell)) {
            m.remove(&key);
        }
        out
    }

    /// Drops layers opened ahead that no Prepare took in time, and those
    /// whose open failed (a Prepare that wants one opens it again): their
    /// index memory goes back to the cache, and their slots to new images.
    fn expire_opened(&self, now: Instant) {
        lock(&self.opening).retain(|_, (asked, cell)| match cell.get() {
            None => true,
            Some(Err(_)) => false,
            Some(Ok(_)) => now.duration_since(*asked) < OPENED_AHEAD_TTL,
        });
    }

    fn open_now(&self, remote: &Remote) -> Result<Opened> {
        self.verify(remote)?;
        let mut remote = remote.clone();
        if remote.descriptor.is_empty() {
            self.resolve(&mut remote)?;
        }
        let desc = descriptor(&remote)?;
        let src = self.source(&remote.image)?;
        let ring = self.ring()?;
        let reserved = Arc::new(self.cache.reservation());
        let seek = self.seek_indexes(&remote, &desc, src.as_ref());
        let (layer, mode) = open_layer(
            src,
            &desc,
            &ring,
            &self.open_options(),
            &reserved,
            seek.as_deref(),
        )
        .map_err(|e| layer_error(&e))?;
        // Opening unwrapped its key: the container start that follows
        // need not unwrap it again.
        if let Some(f) = authorized::kept_under(&desc, &ring) {
            self.authorized.note(&remote.descriptor, f);
        }
        Ok((Arc::new(layer), mode, remote, reserved))
    }

    /// Starts opening `layers` of the same image in the background (fetching
    /// their TOCs, or verifying and indexing their blobs), so the Prepares
    /// that follow for them find them ready. Failures are left for those
    /// Prepares to report.
    pub fn prefetch(self: &Arc<Self>, image: &str, manifest: &str, layers: &[String]) {
        self.expire_opened(Instant::now());
        let mut queue = std::collections::VecDeque::new();
        for layer in layers {
            let key = opening_key(image, manifest, layer);
            let cell = {
                let mut m = lock(&self.opening);
                if m.contains_key(&key) || m.len() >= MAX_PREFETCH {
                    continue;
                }
                m.entry(key)
                    .or_insert_with(|| (Instant::now(), Arc::default()))
                    .1
                    .clone()
            };
            let remote = Remote {
                image: image.to_string(),
                manifest: manifest.to_string(),
                layer: layer.clone(),
                descriptor: String::new(),
                diff_id: DiffId::Pending,
                seek: false,
            };
            queue.push_back((remote, cell));
        }
        // In order, a few at a time: the layers below are mounted first,
        // and all of them at once would share the link (and, for whole
        // blobs, the cores) until every one was nearly done.
        let workers = OPEN_AHEAD_AT_ONCE.min(queue.len());
        let queue = Arc::new(Mutex::new(queue));
        for _ in 0..workers {
            let (this, queue) = (Arc::clone(self), Arc::clone(&queue));
            std::thread::spawn(move || {
                loop {
                    // Popped apart from the open, so the queue stays free.
                    let next = lock(&queue).pop_front();
                    let Some((remote, cell)) = next else { break };
                    if let Err(e) = cell.get_or_init(|| this.open_now(&remote)) {
                        tracing::debug!("opening layer {} ahead: {e}", remote.layer);
                    }
                }
            });
        }
    }

    /// Has the kernel learn, in the background, the names snapshot `id`'s
    /// layer and the mounted layers below it (`lowers`, nearest first) lack
    /// where the other has them ([`crate::mount::warm`]): the first
    /// container on them finds those answers cached.
    pub fn warm_lookups(&self, id: u64, lowers: &[u64]) {
        let (dirs, names): (Vec<PathBuf>, Vec<_>) = {
            let m = lock(&self.mounts);
            if !m.contains_key(&id) {
                return;
            }
            std::iter::once(&id)
                .chain(lowers)
                .filter_map(|i| m.get(i))
                .map(|l| (l.dir().to_path_buf(), l.names().clone()))
                .unzip()
        };
        let one_at_a_time = Arc::clone(&self.warming);
        let spawned = std::thread::Builder::new()
            .name("lazycrypt-warm".into())
            .spawn(move || {
                let _turn = lock(&one_at_a_time);
                let lowers: Vec<&Names> = names[1..].iter().map(|n| &**n).collect();
                let todo = warm::lookups(&names[0], &lowers, warm::MAX_LOOKUPS);
                let n = warm::warm(&dirs, &todo);
                tracing::debug!("{}: {n} lookups warmed", dirs[0].display());
            });
        if let Err(e) = spawned {
            tracing::debug!("lookups not warmed: {e}");
        }
    }

    /// Mounts snapshot `id`'s layer unless it is mounted already.
    pub fn ensure_mounted(&self, id: u64, remote: &Remote, dir: &Path) -> Result<()> {
        let _one_at_a_time = self.late.lock(id);
        if lock(&self.mounts).contains_key(&id) {
            return Ok(());
        }
        let not_mounted = |e: Error| {
            Error::new(
                e.code,
                format!("layer {} is not mounted: {}", remote.layer, e.message),
            )
        };
        match self.take_over(id, remote, dir) {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => {
                // The layer cannot be opened now (no key, no registry): a
                // fresh mount would fail the same way. The connection stays
                // with the keeper; its readers wait for a daemon that can.
                return Err(not_mounted(e));
            }
        }
        // What a killed daemon left here: a dead FUSE mount.
        let _ = crate::mount::sys::unmount_under(dir);
        self.mount(id, &mut remote.clone(), dir)
            .map(|_| ())
            .map_err(not_mounted)
    }

    /// Unmounts snapshot `id`'s layer, if this daemon mounted one.
    pub fn unmount(&self, id: u64) -> io::Result<()> {
        let m = lock(&self.mounts).remove(&id);
        let r = match m {
            Some(m) => self.take_down(m),
            None => return Ok(()),
        };
        if lock(&self.mounts).is_empty() {
            give_back_freed_memory();
        }
        r
    }

    /// Unmounts `m`. One still in use by a container stays mounted and
    /// served by this process, and the keeper keeps holding it, so the next
    /// daemon serves it after this one ends.
    fn take_down(&self, m: LayerMount) -> io::Result<()> {
        self.retire(&m);
        if let Some(k) = &self.keeper {
            let _ = k.release(m.dir());
        }
        let dir = m.dir().to_path_buf();
        let conn = m.connection().try_clone_to_owned();
        m.unmount().inspect_err(|_| {
            if let (Some(k), Ok(c)) = (&self.keeper, &conn) {
                let _ = k.keep(&dir, c.as_fd());
            }
        })
    }

    /// Unmounts every layer (daemon shutdown) and wipes the chunk cache.
    pub fn unmount_all(&self) {
        let all: Vec<_> = lock(&self.mounts).drain().collect();
        let mut busy = 0;
        for (_, m) in all {
            if let Err(e) = self.take_down(m) {
                tracing::warn!("{e}; left for the next daemon to serve");
                busy += 1;
            }
        }
        // Mounts taken from the last daemon and not served yet (their layer
        // could not be opened) also wait for the next one.
        busy += lock(&self.inherited).len();
        if busy == 0
            && let Some(k) = &self.keeper
            && let Err(e) = k.quit()
        {
            tracing::debug!("stopping the FUSE keeper: {e}");
        }
        self.cache.clear();
    }

    /// Whether a signature policy is enforced.
    pub fn has_policy(&self) -> bool {
        self.verdicts.is_some()
    }

    /// Whether a container may start from `layers` now: each image must
    /// satisfy the signature policy (a recent verdict, or a new one), and a
    /// key on this node must unwrap every encrypted layer. A layer these
    /// very key files unwrapped before is not unwrapped again
    /// ([`Authorized`]).
    pub fn authorize(&self, layers: &[&Remote]) -> Result<()> {
        let mut ring = None;
        for remote in layers {
            self.verify(remote)?;
            let desc = descriptor(remote)?;
            if !media::is_encrypted(desc.media_type().as_ref()) {
                continue;
            }
            let ring = match &mut ring {
                Some(r) => r,
                None => ring.insert(self.ring()?),
            };
            let kept = authorized::kept_under(&desc, ring);
            if kept.is_some_and(|f| self.authorized.holds(&remote.descriptor, &f)) {
                continue;
            }
            let annotations = desc.annotations().clone().unwrap_or_default();
            layer_keys(&annotations, ring, &remote.layer).map_err(|e| {
                Error::new(
                    tonic::Code::PermissionDenied,
                    format!("you are not authorized to use this image: {e}"),
                )
            })?;
            if let Some(f) = kept {
                self.authorized.note(&remote.descriptor, f);
            }
        }
        Ok(())
    }
}

/// Layers being opened are shared by image, manifest *and* layer digest:
/// a layer opened for one manifest carries that manifest's annotations
/// (its key, its TOC anchor), so another image naming the same blob digest
/// must not be handed it.
fn opening_key(image: &str, manifest: &str, layer: &str) -> String {
    format!("{image}\n{manifest}\n{layer}")
}

fn descriptor(remote: &Remote) -> Result<Descriptor> {
    serde_json::from_str(&remote.descriptor)
        .map_err(|e| Error::internal(format!("layer {}: stored descriptor: {e}", remote.layer)))
}

/// A layer that cannot be opened: a missing key is a permission problem,
/// the rest a failed precondition (containerd then falls back to unpacking,
/// which fails the same way for a missing key).
/// `open_layer` carries the crypto error inside the `io::Error`; its variant,
/// not its text, says which.
fn layer_error(e: &io::Error) -> Error {
    let missing_key = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<crate::crypto::Error>())
        .is_some_and(|c| matches!(c, crate::crypto::Error::MissingKey(_)));
    if missing_key {
        Error::new(
            tonic::Code::PermissionDenied,
            format!("you are not authorized to use this image: {e}"),
        )
    } else {
        Error::failed_precondition(e.to_string())
    }
}

/// Whether a kept FUSE connection still has its mount (an aborted one
/// reports an error when polled).
/// Returns the allocator's free pages to the kernel, once the last layer
/// is unmounted: its chunks and indexes were freed, but glibc keeps free
/// memory in its arenas (up to the trim threshold each, and any holes),
/// and a node that served a load would hold it for good.
fn give_back_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory; any thread may call it.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn connection_alive(conn: &OwnedFd) -> bool {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let mut p = [PollFd::new(conn.as_fd(), PollFlags::empty())];
    matches!(poll(&mut p, PollTimeout::ZERO), Ok(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An image sets labels through its layers' annotations: their keys and
    /// values cannot forge log lines or flood one, and only the layer
    /// labels' values show.
    #[test]
    fn a_debug_line_of_labels_is_escaped_short_and_shows_only_layer_values() {
        let mut labels = BTreeMap::from([
            (REF_LABEL.to_string(), "sha256:abc".to_string()),
            (
                "containerd.io/snapshot/lazycrypt.image-ref".to_string(),
                "r\n WARN forged".to_string(),
            ),
            (
                "containerd.io/snapshot/lazycrypt.x\nWARN".to_string(),
                "secret-ish".to_string(),
            ),
            (
                "containerd.io/snapshot/cri.image-layers".to_string(),
                "d".repeat(1000),
            ),
        ]);
        let line = shown_labels(&labels);
        assert!(!line.contains('\n'), "{line}");
        assert!(
            line.contains("containerd.io/snapshot.ref=sha256:abc"),
            "{line}"
        );
        assert!(
            line.contains("lazycrypt.image-ref=r\\n WARN forged"),
            "{line}"
        );
        assert!(line.contains("lazycrypt.x\\nWARN=(not shown)"), "{line}");
        assert!(!line.contains("secret-ish"), "{line}");
        assert!(
            line.contains(&format!("{}…(1000 bytes)", "d".repeat(160))),
            "{line}"
        );
        for i in 0..40 {
            labels.insert(format!("l{i:02}"), String::new());
        }
        let line = shown_labels(&labels);
        assert!(line.ends_with("(28 more)]"), "{line}");
    }
    use crate::crypto;
    use crate::layer::index::{ChunkSource, Meter};
    use crate::layer::verified::Verified;

    struct NoChunks;

    impl ChunkSource for NoChunks {
        fn load(&self, _: u32) -> io::Result<Verified> {
            Err(io::Error::other("no chunks"))
        }
        fn fetched(&self) -> u64 {
            0
        }
    }

    /// A layer opened ahead that no Prepare takes keeps its index memory in
    /// the budget, and its slot among the 64, only for a while; a failed
    /// open is not kept at all.
    #[test]
    fn layers_opened_ahead_and_not_taken_are_dropped_with_their_memory() {
        let dir = tempfile::tempdir().unwrap();
        let r = Remotes::new(RemoteConfig::for_tests(dir.path()));
        let now = Instant::now();
        let opened = |asked: Instant| {
            let reserved = Arc::new(r.cache.reservation());
            assert!(reserved.take(100 << 10));
            let layer = Layer::new("L", Vec::new(), Box::new(NoChunks), 0).unwrap();
            let remote = Remote {
                image: String::new(),
                manifest: String::new(),
                layer: "L".into(),
                descriptor: String::new(),
                diff_id: DiffId::Pending,
                seek: false,
            };
            let weak = Arc::downgrade(&reserved);
            let cell: Opening = Arc::default();
            let _ = cell.set(Ok((Arc::new(layer), Mode::Indexed, remote, reserved)));
            ((asked, cell), weak)
        };
        let (stale, stale_memory) = opened(now - OPENED_AHEAD_TTL);
        let (fresh, fresh_memory) = opened(now);
        let failed: Opening = Arc::default();
        let _ = failed.set(Err(Error::internal("registry down".to_string())));
        {
            let mut m = lock(&r.opening);
            m.insert("stale".into(), stale);
            m.insert("fresh".into(), fresh);
            m.insert("failed".into(), (now, failed));
            m.insert(
                "under way".into(),
                (now - 2 * OPENED_AHEAD_TTL, Arc::default()),
            );
        }
        r.expire_opened(now);
        let mut left: Vec<_> = lock(&r.opening).keys().cloned().collect();
        left.sort();
        assert_eq!(left, ["fresh", "under way"]);
        assert!(stale_memory.upgrade().is_none(), "its reservation is gone");
        assert!(fresh_memory.upgrade().is_some());
    }

    #[test]
    fn layer_errors_are_classified_by_variant_not_text() {
        let missing = io::Error::other(crypto::Error::MissingKey(" (layer L)".into()));
        let e = layer_error(&missing);
        assert_eq!(e.code, tonic::Code::PermissionDenied);
        assert_eq!(
            e.message,
            "you are not authorized to use this image: missing private key needed for decryption (layer L)"
        );

        // A malicious image can put imgcrypt's text into a malformed header;
        // that is still a malformed layer, not a missing key.
        let jwe = format!(
            r#"{{"unprotected":{{"enc":"{}"}},"iv":"AAAAAAAAAAAAAAAA","ciphertext":"","tag":""}}"#,
            crypto::MISSING_KEY
        );
        let malformed = crypto::jwe::unwrap(jwe.as_bytes(), &[]).unwrap_err();
        assert!(matches!(malformed, crypto::Error::Malformed(_)));
        let e = layer_error(&io::Error::other(malformed));
        assert_eq!(e.code, tonic::Code::FailedPrecondition, "{}", e.message);
        assert!(e.message.contains(crypto::MISSING_KEY), "{}", e.message);
    }
}
