//! The demo's working directory and the keys it writes there. As root the
//! demo writes a private key, plaintext inputs and mounts under it, so a
//! directory another user could have made or can write to (a guessable
//! name in /tmp, a symlink they planted) must never be taken.

use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::private;

/// The directory the demo works in, absolute and free of symlinks (the
/// mount table it is compared with is): the one named by `--dir`, made
/// 0700 if missing, or a new private one in the temporary directory.
pub fn workdir(named: Option<PathBuf>) -> Result<PathBuf> {
    let dir = match named {
        Some(d) => named_dir(&d)?,
        None => new_temp_dir()?,
    };
    let abs = dir
        .canonicalize()
        .with_context(|| format!("--dir {}", dir.display()))?;
    check(&abs)?;
    Ok(abs)
}

/// `d` if it is a directory only this user may write to; made (0700, with
/// missing parents 0700) if it does not exist.
fn named_dir(d: &Path) -> Result<PathBuf> {
    // Without a trailing slash: `link/` would resolve the link.
    let d: PathBuf = d.components().collect();
    match std::fs::symlink_metadata(&d) {
        Ok(_) => check(&d)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if let Some(parent) = d.parent().filter(|p| !p.as_os_str().is_empty()) {
                // Parents that exist are the user's and keep their modes.
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(private::DIR)
                    .create(parent)
                    .with_context(|| format!("--dir {}: creating its parent", d.display()))?;
            }
            // Fails if someone made it meanwhile: then it is not ours.
            private::new_dir(&d, private::DIR).with_context(|| format!("--dir {}", d.display()))?;
        }
        Err(e) => bail!("--dir {}: {e}", d.display()),
    }
    Ok(d)
}

/// A new directory, 0700, with a name no one can take first.
fn new_temp_dir() -> Result<PathBuf> {
    let tmp = std::env::temp_dir();
    for _ in 0..16 {
        let d = tmp.join(format!("lazycrypt-demo-{:016x}", rand::random::<u64>()));
        match private::new_dir(&d, private::DIR) {
            Ok(()) => return Ok(d),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).context("creating the demo's directory"),
        }
    }
    bail!(
        "creating the demo's directory in {}: every name tried exists",
        tmp.display()
    )
}

/// Refuses what another user could have planted or can change: a symlink,
/// a non-directory, a directory owned by someone else or that group or
/// others may write to.
fn check(d: &Path) -> Result<()> {
    let m = std::fs::symlink_metadata(d).with_context(|| format!("--dir {}", d.display()))?;
    let euid = nix::unistd::geteuid().as_raw();
    if m.file_type().is_symlink() {
        bail!(
            "--dir {}: is a symbolic link; name the directory itself",
            d.display()
        );
    }
    if !m.is_dir() {
        bail!("--dir {}: not a directory", d.display());
    }
    if m.uid() != euid {
        bail!(
            "--dir {}: owned by uid {}, not by this user (uid {euid}); name a directory of your own",
            d.display(),
            m.uid()
        );
    }
    if m.mode() & 0o022 != 0 {
        bail!(
            "--dir {}: writable by group or others (mode {:04o}); name a directory only you may write to",
            d.display(),
            m.mode() & 0o7777
        );
    }
    Ok(())
}

/// Writes `bytes` to a new file at `path`, 0600, replacing a file (or a
/// symlink, never followed) an earlier run left there.
pub fn write_new(path: &Path, bytes: &[u8]) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => bail!("removing {}: {e}", path.display()),
    }
    // create_new (O_EXCL) never follows a symlink at `path`.
    let mut f = private::open(
        path,
        std::fs::OpenOptions::new().write(true).create_new(true),
    )?;
    f.write_all(bytes)
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn err(r: Result<PathBuf>) -> String {
        format!("{:#}", r.expect_err("refused"))
    }

    #[test]
    fn a_named_dir_is_refused_when_a_symlink_file_or_writable_by_others() {
        let t = tempfile::tempdir().unwrap();
        let real = t.path().join("real");
        std::fs::create_dir(&real).unwrap();
        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o700)).unwrap();
        let link = t.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        for l in [link.clone(), PathBuf::from(format!("{}/", link.display()))] {
            assert_eq!(
                err(workdir(Some(l))),
                format!(
                    "--dir {}: is a symbolic link; name the directory itself",
                    link.display()
                )
            );
        }
        let file = t.path().join("file");
        std::fs::write(&file, b"").unwrap();
        assert_eq!(
            err(workdir(Some(file.clone()))),
            format!("--dir {}: not a directory", file.display())
        );
        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert_eq!(
            err(workdir(Some(real.clone()))),
            format!(
                "--dir {}: writable by group or others (mode 0777); name a directory only you may write to",
                real.display()
            )
        );
        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(
            workdir(Some(real.clone())).unwrap(),
            real.canonicalize().unwrap()
        );
    }

    #[test]
    fn a_missing_named_dir_and_the_default_one_are_made_private() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("a/b/demo");
        let got = workdir(Some(d.clone())).unwrap();
        assert_eq!(got, d.canonicalize().unwrap());
        for p in [&d, &t.path().join("a/b"), &t.path().join("a")] {
            let mode = std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
            assert_eq!(mode, 0o700, "{}", p.display());
        }
        let (a, b) = (workdir(None).unwrap(), workdir(None).unwrap());
        assert_ne!(a, b);
        for d in [&a, &b] {
            let mode = std::fs::metadata(d).unwrap().permissions().mode() & 0o7777;
            assert_eq!(mode, 0o700, "{}", d.display());
            assert!(
                d.file_name()
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .starts_with("lazycrypt-demo-")
            );
            std::fs::remove_dir(d).unwrap();
        }
    }

    #[test]
    fn a_key_is_written_new_never_through_a_symlink() {
        let t = tempfile::tempdir().unwrap();
        let victim = t.path().join("victim");
        std::fs::write(&victim, b"keep me").unwrap();
        let key = t.path().join("key.pem");
        std::os::unix::fs::symlink(&victim, &key).unwrap();
        write_new(&key, b"KEY").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep me");
        let m = std::fs::symlink_metadata(&key).unwrap();
        assert!(m.is_file());
        assert_eq!(m.permissions().mode() & 0o7777, 0o600);
        assert_eq!(std::fs::read(&key).unwrap(), b"KEY");
        // An earlier run's key, readable by others, is replaced, not kept.
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_new(&key, b"KEY2").unwrap();
        let m = std::fs::symlink_metadata(&key).unwrap();
        assert_eq!(m.permissions().mode() & 0o7777, 0o600);
        assert_eq!(std::fs::read(&key).unwrap(), b"KEY2");
    }
}
