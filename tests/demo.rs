//! `lazycrypt demo`, the README's first command: as root it mounts the
//! image it built lazily and shows what that fetched and left on disk; as
//! another user it says it skipped that and runs the rest.

mod common;

use std::path::Path;

use common::mounts::files_containing;
use common::*;

/// The line of `out` starting with `prefix`.
fn line<'a>(out: &'a str, prefix: &str) -> &'a str {
    out.lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting {prefix:?} in:\n{out}"))
}

fn number(s: &str) -> u64 {
    s.parse()
        .unwrap_or_else(|e| panic!("{s:?} is not a number: {e}"))
}

#[test]
fn as_root_the_demo_reads_a_lazily_mounted_file_fetching_little_and_leaving_no_plaintext_or_mount()
{
    assert_eq!(unsafe { libc::geteuid() }, 0, "this test needs root");
    let t = tmp();
    let dir = t.path().join("demo");
    let out = ok(lazycrypt().arg("demo").arg("--dir").arg(&dir));

    // The file read through the mount names the run's marker.
    let read = line(&out, "== read /app/secret-");
    let marker = read
        .trim_start_matches("== read /app/secret-")
        .split(".txt")
        .next()
        .unwrap();
    assert!(marker.starts_with("lzdemo-"), "{read}");

    // "== fetched X of the image's Y bytes (...": a lazy mount fetches a
    // small part of the image to read one small file.
    let fetched = line(&out, "== fetched ");
    let words: Vec<&str> = fetched.split_whitespace().collect();
    let (x, y) = (number(words[2]), number(words[6]));
    assert!(x > 0 && x * 10 < y, "{fetched}");
    assert!(
        y > 8 << 20,
        "the image holds 8 MiB of random files: {fetched}"
    );

    assert_eq!(
        line(&out, "== no plaintext on disk: "),
        "== no plaintext on disk: true"
    );
    line(&out, "== unmounted ");
    line(&out, "== verified: ");

    // Checked here too: nothing left mounted, no marker at rest outside the
    // plaintext the demo itself made (its inputs and its decrypt's output).
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let dir_s = dir.display().to_string();
    assert!(
        !mounts.lines().any(|l| l.contains(&dir_s)),
        "left mounted:\n{mounts}"
    );
    let plain: Vec<_> = ["rootfs", "plain", "decrypted"]
        .iter()
        .map(|d| dir.join(d))
        .collect();
    let hits: Vec<_> = files_containing(&dir, &[marker.as_bytes()])
        .into_iter()
        .filter(|p| !plain.iter().any(|d| p.starts_with(d)))
        .collect();
    assert!(hits.is_empty(), "the marker at rest: {hits:?}");
    assert!(
        dir.join("lazy/root/blobs/sha256")
            .read_dir()
            .unwrap()
            .count()
            > 0,
        "the mount's ciphertext cache is under the demo's directory"
    );
}

#[test]
fn without_root_the_demo_says_it_skipped_the_lazy_mount_and_runs_the_rest() {
    // A directory `nobody` can reach and write: the tests' /tmp may be root's only.
    let base = tempfile::Builder::new()
        .prefix("demo-nobody-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    std::os::unix::fs::chown(base.path(), Some(65534), Some(65534)).unwrap();
    let dir = base.path().join("demo");
    let out = ok(std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(BIN)
        .arg("demo")
        .arg("--dir")
        .arg(&dir)
        .current_dir(Path::new("/")));
    assert_eq!(
        line(&out, "== skipped the lazy mount: "),
        "== skipped the lazy mount: mounting FUSE and overlayfs needs root, and this runs as uid 65534; the rest runs"
    );
    assert!(!out.contains("== mounting"), "{out}");
    line(&out, "== layerinfo ");
    line(&out, "== verified: 6 files");
    assert!(!dir.join("lazy").exists());
}
