//! The demo's main part: the encrypted image mounted lazily, one file read
//! through it, what that fetched against the image's size, a scan of the
//! disk for its plaintext, and everything unmounted again.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail, ensure};

use super::scan::{scan, scan_open_files};
use crate::crypto::KeyRing;
use crate::layer::stream::sealed::Scratch;
use crate::mount::open::OpenOptions;
use crate::mount::session::{MountSpec, Mounted, mount};
use crate::mount::sys;
use crate::oci::image::Image;
use crate::oci::layout::Layout;
use crate::oci::transport::ImageSource;

/// What to mount and what to look for.
pub struct Plan<'a> {
    /// The demo's directory: the mount's state goes under it.
    pub dir: &'a Path,
    /// The encrypted eStargz image's layout, tagged `demo`.
    pub image: &'a Path,
    /// The file to read, relative to the image's root, and its bytes.
    pub file: &'a str,
    pub want: &'a [u8],
    /// Bytes of a random file to read too, so that its sample's plaintext
    /// passes the decrypt path the scan checks.
    pub window: Window<'a>,
    /// Byte strings only the image's plaintext holds.
    pub needles: &'a [Vec<u8>],
    /// What the demo wrote besides the mount's state: scanned with it.
    pub written: &'a [PathBuf],
    /// Where the demo itself keeps plaintext (its inputs): scanned as a
    /// control that the scan finds what it looks for.
    pub plaintext: &'a [PathBuf],
}

/// `want` is at `at` in `file` (relative to the image's root).
pub struct Window<'a> {
    pub file: &'a str,
    pub at: u64,
    pub want: &'a [u8],
}

/// Mounts with the keys of `ring`, reads, measures, scans, and unmounts,
/// even when a step fails.
pub fn show(p: Plan, ring: KeyRing) -> Result<()> {
    let state = p.dir.join("lazy");
    if state.exists() {
        // An earlier run killed while mounted left its mounts there.
        sys::unmount_under(&state).with_context(|| {
            format!(
                "unmounting what an earlier run left under {}",
                state.display()
            )
        })?;
        std::fs::remove_dir_all(&state)
            .with_context(|| format!("removing {} of an earlier run", state.display()))?;
    }
    let (root, run_root, mnt) = (state.join("root"), state.join("run"), state.join("mnt"));
    // Where `lazycrypt umount --run-dir` looks for the mount's state, so
    // that it cleans up after a run stopped while mounted.
    let run = crate::cli::mount::run_dir_for(&run_root, &mnt);
    for d in [&root.join("blobs"), &mnt] {
        crate::private::dir(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let src = Layout::open(p.image, Some("demo".into()))?;
    let image = Image::load(&src, "demo")?;
    let layers = image.manifests[0].manifest.layers().clone();
    let size: u64 = layers.iter().map(|l| l.size()).sum();
    let n = layers.len();
    println!(
        "== mounting oci:{}:demo lazily at {} (one FUSE file system per layer under an overlay; state in {})",
        p.image.display(),
        mnt.display(),
        state.display()
    );
    let spec = MountSpec {
        layers,
        ring,
        open: OpenOptions {
            cache_dir: root.join("blobs"),
            scratch: Scratch::new(root.join("blobs").join("sealed"), 1 << 30),
            allow_unverified_lazy: false,
        },
        cache_bytes: 64 << 20,
        writable: false,
        allow_suid_dev: false,
        run_dir: run,
        target: mnt.clone(),
        seek: None,
    };
    let src: Arc<dyn ImageSource> = Arc::new(src);
    let mounted = mount(src, spec).context("mounting the encrypted image")?;
    let cleanup = cleanup_command(&run_root, &mnt);
    println!("   if this run stops before it unmounts, `{cleanup}` removes the mount");
    let shown = while_mounted(&p, &mounted, &mnt, size, n);
    let unmounted = mounted.unmount();
    let left = sys::mounts_under(p.dir);
    if unmounted.is_err() || !left.is_empty() {
        let left: Vec<String> = left.iter().map(|m| m.display().to_string()).collect();
        eprintln!(
            "lazycrypt demo: left mounted under {}: {}; remove with `{cleanup}`",
            p.dir.display(),
            left.join(" ")
        );
    }
    shown?;
    unmounted.with_context(|| format!("unmounting {}", mnt.display()))?;
    if let Some(m) = left.first() {
        bail!("{} is still mounted after the unmount", m.display());
    }
    println!(
        "== unmounted {}: nothing under {} is mounted any more",
        mnt.display(),
        p.dir.display()
    );
    Ok(())
}

fn while_mounted(p: &Plan, m: &Mounted, mnt: &Path, size: u64, layers: usize) -> Result<()> {
    let path = mnt.join(p.file);
    let got = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    ensure!(
        got == p.want,
        "{} differs from the file built",
        path.display()
    );
    println!(
        "== read /{} through the mount: {} bytes, exactly as built",
        p.file,
        got.len()
    );
    drop(got);

    let w = &p.window;
    let path = mnt.join(w.file);
    let mut got = vec![0; w.want.len()];
    std::fs::File::open(&path)
        .and_then(|f| std::os::unix::fs::FileExt::read_exact_at(&f, &mut got, w.at))
        .with_context(|| format!("reading {}", path.display()))?;
    ensure!(
        got == w.want,
        "{} differs from the file built at offset {}",
        path.display(),
        w.at
    );
    println!(
        "== read {} bytes at offset {} of /{} (random) through the mount, exactly as built",
        got.len(),
        w.at,
        w.file
    );
    drop(got);

    let stats = m.stats();
    println!(
        "== fetched {} of the image's {size} bytes ({:.1}%, {layers} encrypted eStargz layers): \
         {} chunk{} decrypted and verified, held in memory only",
        stats.fetched,
        stats.fetched as f64 * 100.0 / size.max(1) as f64,
        stats.cache.loaded,
        if stats.cache.loaded == 1 { "" } else { "s" }
    );

    let mut written = p.written.to_vec();
    written.push(p.dir.join("lazy"));
    let mut found = scan(&written, p.needles)?;
    let open = scan_open_files(p.needles)?;
    found.hits.extend(open.hits);
    let control = scan(p.plaintext, p.needles)?.hits.len();
    // A scan that cannot find the samples where they are proves nothing.
    ensure!(
        control > 0,
        "the plaintext scan found no sample in the demo's own plaintext inputs"
    );
    let names = |ps: &[PathBuf]| {
        let v: Vec<String> = ps
            .iter()
            .map(|d| {
                let rel = d.strip_prefix(p.dir).unwrap_or(d).display();
                if d.is_dir() {
                    format!("{rel}/")
                } else {
                    rel.to_string()
                }
            })
            .collect();
        v.join(" ")
    };
    println!("== no plaintext on disk: {}", found.hits.is_empty());
    println!(
        "   searched the {} files ({} bytes) the demo and the mount wrote under {} ({}) while \
         mounted, and the {} files the demo holds open, for the image's marker and a sample of \
         each random file (/{}'s among the bytes read); the same search finds {control} hits in \
         the plaintext inputs ({})",
        found.files,
        found.bytes,
        p.dir.display(),
        names(&written),
        open.files,
        p.window.file,
        names(p.plaintext),
    );
    if let Some(h) = found.hits.first() {
        bail!("plaintext of the image found at rest in {}", h.display());
    }
    Ok(())
}

/// The command that unmounts what a run left mounted at `mnt`, its
/// paths quoted for a shell.
fn cleanup_command(run_root: &Path, mnt: &Path) -> String {
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("lazycrypt"));
    [
        exe.as_path(),
        Path::new("umount"),
        Path::new("--run-dir"),
        run_root,
        mnt,
    ]
    .iter()
    .map(|p| shell_word(&p.to_string_lossy()))
    .collect::<Vec<_>>()
    .join(" ")
}

fn shell_word(s: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "/._-+:,@=".contains(c);
    if !s.is_empty() && s.chars().all(plain) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cleanup_command_quotes_what_a_shell_would_split() {
        assert_eq!(shell_word("/tmp/a-b_c.d"), "/tmp/a-b_c.d");
        assert_eq!(shell_word("/tmp/a b"), "'/tmp/a b'");
        assert_eq!(shell_word("it's"), r"'it'\''s'");
        assert_eq!(shell_word(""), "''");
    }
}
