//! `lazycrypt demo`, the README's first command: as root it mounts the
//! image it built lazily and shows what that fetched and left on disk; as
//! another user it says it skipped that and runs the rest.

mod common;

use std::io::BufRead;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

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

/// Where a test makes a directory `nobody` can reach: the FHS's /var/tmp
/// (world-writable, sticky), since /tmp may be root's only here.
const NOBODY_REACHES: &str = "/var/tmp";

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
        y > 16 << 20,
        "the image holds 16 MiB of random files: {fetched}"
    );

    // A random file is read too, so that the scan's samples of random
    // files include plaintext that passed the decrypt path.
    let window = line(&out, "== read 4096 bytes at offset ");
    assert!(
        window.ends_with(" of /app/model-0.bin (random) through the mount, exactly as built"),
        "{window}"
    );
    assert!(
        fetched.contains(": 2 chunks decrypted and verified"),
        "the secret's chunk and the random file's: {fetched}"
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
    // A directory `nobody` can reach and write: /tmp may be root's only,
    // and the checkout (so the target dir) may be under it.
    let base = tempfile::Builder::new()
        .prefix("demo-nobody-")
        .tempdir_in(NOBODY_REACHES)
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

/// Runs the demo as root with `--dir dir` and kills it once it has read
/// through its mount, as an interrupted run; returns its output so far and
/// what it left mounted.
fn kill_while_mounted(dir: &Path) -> (String, Vec<String>) {
    let mut child = lazycrypt()
        .arg("demo")
        .arg("--dir")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = String::new();
    for l in std::io::BufReader::new(child.stdout.take().unwrap()).lines() {
        let l = l.unwrap();
        out.push_str(&l);
        out.push('\n');
        if l.starts_with("== read /app/secret-") {
            child.kill().unwrap();
            break;
        }
    }
    // The demo serves its FUSE mounts itself: killed while it holds one of
    // their files open (its next read), its exit waits on its own, dead,
    // server, in the kernel. Aborting the connections lets it end, as the
    // end of a server does; the mounts stay, as after a crash.
    abort_fuse_under(dir);
    child.wait().unwrap();
    let left = mounted_under(dir);
    // Killed after the mount's first read and well before its unmount.
    assert!(
        !left.is_empty(),
        "the killed run left nothing mounted:\n{out}"
    );
    (out, left)
}

/// Aborts the FUSE connections of the mounts under `dir`, found through
/// mountinfo's device numbers (a `stat` of the mount would wait on it).
fn abort_fuse_under(dir: &Path) {
    // The connections' control files are in fusectl, not always mounted.
    let control = Path::new("/sys/fs/fuse/connections");
    if std::fs::read_dir(control).is_ok_and(|mut d| d.next().is_none()) {
        let _ = std::process::Command::new("mount")
            .args(["-t", "fusectl", "none"])
            .arg(control)
            .status();
    }
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let dir = format!("{}/", dir.display());
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    for l in info.lines() {
        let f: Vec<&str> = l.split(' ').collect();
        let fuse = l.split(" - ").nth(1).is_some_and(|t| t.starts_with("fuse"));
        if f.len() > 4 && fuse && format!("{}/", f[4]).starts_with(&dir) {
            let minor = f[2].rsplit(':').next().unwrap();
            let _ = std::fs::write(format!("/sys/fs/fuse/connections/{minor}/abort"), "1");
        }
    }
}

fn mounted_under(dir: &Path) -> Vec<String> {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let dir = format!("{}/", dir.display());
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(1))
        .filter(|p| format!("{p}/").starts_with(&dir))
        .map(str::to_string)
        .collect()
}

/// Detaches what is left mounted under a directory when a test fails.
struct Detach<'a>(&'a Path);

impl Drop for Detach<'_> {
    fn drop(&mut self) {
        for m in mounted_under(self.0).iter().rev() {
            let _ = std::process::Command::new("umount")
                .args(["-l", m])
                .status();
        }
    }
}

#[test]
fn as_root_the_command_a_run_prints_when_mounting_removes_what_it_left_when_stopped() {
    assert_eq!(unsafe { libc::geteuid() }, 0, "this test needs root");
    let t = tmp();
    let dir = t.path().join("demo");
    let _detach = Detach(&dir);
    let (out, left) = kill_while_mounted(&dir);
    let hint = line(&out, "   if this run stops before it unmounts, `");
    let cmd = hint.split('`').nth(1).unwrap();
    let words: Vec<&str> = cmd.split_whitespace().collect();
    let abs = dir.canonicalize().unwrap();
    assert_eq!(
        words[1..],
        [
            "umount",
            "--run-dir",
            &format!("{}/lazy/run", abs.display()),
            &format!("{}/lazy/mnt", abs.display()),
        ],
        "{hint}"
    );
    ok(std::process::Command::new(words[0]).args(&words[1..]));
    assert_eq!(mounted_under(&dir), Vec::<String>::new(), "was: {left:?}");
}

#[test]
fn as_root_a_relative_dir_finds_an_earlier_runs_mounts_and_leaves_none() {
    assert_eq!(unsafe { libc::geteuid() }, 0, "this test needs root");
    let t = tmp();
    let dir = t.path().join("demo");
    let _detach = Detach(&dir);
    kill_while_mounted(&dir);
    // The same directory named relative to the working directory: its
    // mounts are found (in the mount table's absolute paths) and removed.
    let out = ok(lazycrypt()
        .arg("demo")
        .arg("--dir")
        .arg("demo")
        .current_dir(t.path()));
    assert_eq!(
        line(&out, "== working in "),
        format!("== working in {}", dir.canonicalize().unwrap().display())
    );
    assert_eq!(
        line(&out, "== no plaintext on disk: "),
        "== no plaintext on disk: true"
    );
    line(&out, "== unmounted ");
    assert_eq!(mounted_under(&dir), Vec::<String>::new());
}

#[test]
fn as_root_a_dir_another_user_could_have_planted_is_refused_and_nothing_written_through_it() {
    assert_eq!(unsafe { libc::geteuid() }, 0, "this test needs root");
    let t = tmp();
    let victim = t.path().join("victim");
    std::fs::write(&victim, b"keep me").unwrap();
    let planted = |d: &Path, mode: u32| -> PathBuf {
        std::fs::create_dir(d).unwrap();
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(mode)).unwrap();
        std::os::unix::fs::symlink(&victim, d.join("key.pem")).unwrap();
        d.to_path_buf()
    };
    let real = planted(&t.path().join("real"), 0o700);
    let link = t.path().join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let open = planted(&t.path().join("open"), 0o777);
    let theirs = planted(&t.path().join("theirs"), 0o755);
    std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
    for (dir, why) in [
        (
            &link,
            "is a symbolic link; name the directory itself".to_string(),
        ),
        (
            &open,
            "writable by group or others (mode 0777); name a directory only you may write to"
                .to_string(),
        ),
        (
            &theirs,
            "owned by uid 65534, not by this user (uid 0); name a directory of your own"
                .to_string(),
        ),
    ] {
        let err = fails(lazycrypt().arg("demo").arg("--dir").arg(dir));
        assert_eq!(
            err.trim_end(),
            format!("lazycrypt: --dir {}: {why}", dir.display())
        );
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep me");
    }
    for d in [&real, &open, &theirs] {
        let names: Vec<_> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["key.pem"], "written into {}", d.display());
        assert!(d.join("key.pem").is_symlink());
    }
}

#[test]
fn without_a_dir_the_demo_works_in_a_new_private_one() {
    // A temporary directory `nobody` can reach and write.
    let base = tempfile::Builder::new()
        .prefix("demo-tmp-")
        .tempdir_in(NOBODY_REACHES)
        .unwrap();
    std::os::unix::fs::chown(base.path(), Some(65534), Some(65534)).unwrap();
    let out = ok(std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(BIN)
        .arg("demo")
        .env("TMPDIR", base.path())
        .current_dir(Path::new("/")));
    let dir = PathBuf::from(line(&out, "== working in ").trim_start_matches("== working in "));
    assert_eq!(
        dir.parent(),
        Some(base.path().canonicalize().unwrap().as_path()),
        "{}",
        dir.display()
    );
    let name = dir.file_name().unwrap().to_str().unwrap();
    assert!(name.starts_with("lazycrypt-demo-"), "{name}");
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o700, "{}", dir.display());
    line(&out, "== verified: 6 files");
}
