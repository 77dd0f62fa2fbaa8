//! Benchmark workloads: realistic multi-layer images generated offline, each
//! with the reads a container makes before it is "ready".
//!
//! A workload is declared (layers of generated files, and an access plan of
//! files and byte ranges), then generated: its layer trees, a plain OCI
//! image, and a `/bench/ready.sh` inside the image that performs exactly the
//! planned reads and prints `ready <name>`. Generation is deterministic: the
//! same name and scale give the same bytes.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The built-in workloads, by name.
pub const NAMES: [&str; 3] = ["python-like", "model-serving", "many-layers"];

/// What a generated file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Content {
    /// Incompressible bytes (shared objects, weights).
    Noise,
    /// Source-like text that compresses about 3:1.
    Text,
}

/// One generated file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileSpec {
    /// Absolute path inside the image.
    pub path: String,
    pub size: u64,
    pub content: Content,
}

/// One read the workload makes on its way to ready.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Access {
    pub path: String,
    pub offset: u64,
    pub len: u64,
}

/// A declared workload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Workload {
    pub name: String,
    /// Layers, bottom first; the first holds busybox, the last the ready script.
    pub layers: Vec<Vec<FileSpec>>,
    /// Reads in order, then `ready <name>` on stdout.
    pub ready: Vec<Access>,
}

impl Workload {
    /// The built-in workload `name`, its sizes and counts multiplied by
    /// `scale` (1.0: a few hundred MiB to 1 GiB, minutes to generate on
    /// two cores).
    pub fn builtin(name: &str, scale: f64) -> io::Result<Workload> {
        if !(scale > 0.0 && scale.is_finite()) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("scale must be a positive number, not {scale}"),
            ));
        }
        let s = Scale(scale);
        let (layers, ready) = match name {
            "python-like" => python_like(s),
            "model-serving" => model_serving(s),
            "many-layers" => many_layers(s),
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "unknown workload {name:?}; the workloads are {}",
                        NAMES.join(", ")
                    ),
                ));
            }
        };
        Ok(Workload {
            name: name.to_string(),
            layers,
            ready,
        })
    }

    /// Uncompressed bytes of all generated files.
    pub fn image_bytes(&self) -> u64 {
        self.layers.iter().flatten().map(|f| f.size).sum()
    }

    /// Bytes the ready script reads.
    pub fn read_bytes(&self) -> u64 {
        self.ready.iter().map(|a| a.len).sum()
    }

    /// The script the container runs: the planned reads, then the marker.
    pub fn ready_script(&self) -> String {
        let mut s = String::from("#!/bin/sh\nset -e\n");
        let mut whole: Vec<&str> = Vec::new();
        let flush = |s: &mut String, whole: &mut Vec<&str>| {
            if !whole.is_empty() {
                s.push_str(&format!("cat {} >/dev/null\n", whole.join(" ")));
                whole.clear();
            }
        };
        for a in &self.ready {
            let size = self.file(&a.path).map(|f| f.size);
            if a.offset == 0 && Some(a.len) == size {
                whole.push(&a.path);
                if whole.len() == 200 {
                    flush(&mut s, &mut whole);
                }
                continue;
            }
            flush(&mut s, &mut whole);
            s.push_str(&format!(
                "dd if={} of=/dev/null bs=65536 skip={} count={} iflag=skip_bytes,count_bytes 2>/dev/null\n",
                a.path, a.offset, a.len
            ));
        }
        flush(&mut s, &mut whole);
        s.push_str(&format!("echo ready {}\n", self.name));
        s
    }

    /// The files to put first for prefetch, as an access profile recorded
    /// on a first start would list them: the shell and the ready script it
    /// runs, and the files start-up reads whole. Files read only in part
    /// stay where they are, since prefetch fetches prioritized files whole.
    pub fn prioritized(&self) -> Vec<String> {
        let mut v = vec!["/bin/busybox".to_string(), READY_SCRIPT.to_string()];
        for a in &self.ready {
            if a.offset == 0 && self.file(&a.path).is_some_and(|f| f.size == a.len) {
                v.push(a.path.clone());
            }
        }
        v
    }

    fn file(&self, path: &str) -> Option<&FileSpec> {
        self.layers.iter().flatten().find(|f| f.path == path)
    }
}

/// Path of the ready script inside every workload image.
pub const READY_SCRIPT: &str = "/bench/ready.sh";

#[derive(Clone, Copy)]
struct Scale(f64);

impl Scale {
    /// A size scaled, at least 4 KiB.
    fn bytes(self, b: u64) -> u64 {
        ((b as f64 * self.0) as u64).max(4096)
    }
    /// A count scaled, at least 1.
    fn count(self, n: usize) -> usize {
        ((n as f64 * self.0).round() as usize).max(1)
    }
}

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;

fn noise(path: String, size: u64) -> FileSpec {
    FileSpec {
        path,
        size,
        content: Content::Noise,
    }
}

fn text(path: String, size: u64) -> FileSpec {
    FileSpec {
        path,
        size,
        content: Content::Text,
    }
}

fn whole(f: &FileSpec) -> Access {
    Access {
        path: f.path.clone(),
        offset: 0,
        len: f.size,
    }
}

/// `n` reads of `len` bytes spread evenly over `f`.
fn spread(f: &FileSpec, n: u64, len: u64) -> Vec<Access> {
    let len = len.min(f.size);
    let step = (f.size - len) / n.max(1);
    (0..n)
        .map(|i| Access {
            path: f.path.clone(),
            offset: i * step,
            len,
        })
        .collect()
}

/// A Python application: thousands of small modules, a few large shared
/// objects. Start-up imports about one module in seven and touches the
/// headers and a few pages of each shared object.
fn python_like(s: Scale) -> (Vec<Vec<FileSpec>>, Vec<Access>) {
    let modules: Vec<FileSpec> = (0..s.count(4000))
        .map(|i| {
            let size = s.bytes(KIB + (i as u64 * 7919 % 15) * KIB);
            text(
                format!("/usr/lib/python3/pkg{:02}/mod{i:04}.py", i % 64),
                size,
            )
        })
        .collect();
    let objects: Vec<FileSpec> = (0..8)
        .map(|i| {
            noise(
                format!("/usr/lib/python3/site/_native{i}.so"),
                s.bytes(32 * MIB),
            )
        })
        .collect();
    let mut ready: Vec<Access> = modules.iter().step_by(7).map(whole).collect();
    for o in &objects {
        ready.extend(spread(o, 3, s.bytes(512 * KIB)));
    }
    let app = text("/app/main.py".into(), 8 * KIB);
    ready.push(whole(&app));
    (vec![base(), modules, objects, vec![app]], ready)
}

/// A model server: one large weights file of which start-up reads the
/// header and a few tensors, plus a tokenizer and a config read whole.
fn model_serving(s: Scale) -> (Vec<Vec<FileSpec>>, Vec<Access>) {
    let weights = noise("/models/weights.bin".into(), s.bytes(1024 * MIB));
    let tokenizer = text("/models/tokenizer.json".into(), s.bytes(2 * MIB));
    let config = text("/models/config.json".into(), 4 * KIB);
    let mut ready = vec![whole(&config), whole(&tokenizer)];
    ready.push(Access {
        path: weights.path.clone(),
        offset: 0,
        len: s.bytes(MIB).min(weights.size),
    });
    ready.extend(spread(&weights, 16, s.bytes(4 * MIB)));
    let app = text("/app/serve.py".into(), 8 * KIB);
    ready.push(whole(&app));
    (
        vec![base(), vec![weights, tokenizer, config], vec![app]],
        ready,
    )
}

/// Twenty layers (base, eighteen of data, the app): start-up reads one
/// small file whole and the start of one large file in each data layer.
fn many_layers(s: Scale) -> (Vec<Vec<FileSpec>>, Vec<Access>) {
    let mut layers = vec![base()];
    let mut ready = Vec::new();
    for l in 1..=18 {
        let mut files = Vec::new();
        for i in 0..4 {
            files.push(noise(format!("/layer{l:02}/blob{i}.bin"), s.bytes(MIB)));
            files.push(text(format!("/layer{l:02}/conf{i}.txt"), s.bytes(64 * KIB)));
        }
        ready.push(whole(&files[1]));
        ready.push(Access {
            path: files[0].path.clone(),
            offset: 0,
            len: s.bytes(256 * KIB).min(files[0].size),
        });
        layers.push(files);
    }
    let app = text("/app/run.sh".into(), 4 * KIB);
    ready.push(whole(&app));
    layers.push(vec![app]);
    (layers, ready)
}

/// The bottom layer's own files (busybox is copied in at generation).
fn base() -> Vec<FileSpec> {
    vec![text("/etc/os-release".into(), 4 * KIB)]
}

/// Bumped when `generate` makes different bytes from the same workload:
/// 2 since its gzip is level 2 (level 1 wrote deflate blocks of many MiB,
/// which left a seek index no checkpoints; images kept from before were
/// still used).
pub const GENERATOR: u32 = 2;

/// What `generate` wrote.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Generated {
    pub workload: Workload,
    pub scale: f64,
    /// How the image was made ([`GENERATOR`]); images made otherwise are
    /// made again.
    #[serde(default)]
    pub generator: u32,
    /// The plain image: `oci:DIR:TAG`.
    pub image: String,
    pub image_bytes: u64,
    pub read_bytes: u64,
}

/// Writes the workload's layer trees under `out/layers`, builds the plain
/// image `oci:out/image:<name>` from them (tar+gzip), records
/// `out/workload.json`, and removes the trees.
pub fn generate(w: &Workload, scale: f64, out: &Path) -> io::Result<Generated> {
    use crate::oci::build::{BuildSpec, build};
    use crate::oci::platform::Platform;
    use crate::oci::reference::ImageRef;
    use crate::oci::transport::{TransportOptions, open_dest};

    let trees = out.join("layers");
    let _ = std::fs::remove_dir_all(&trees);
    let mut dirs: Vec<PathBuf> = Vec::new();
    for (i, files) in w.layers.iter().enumerate() {
        let dir = trees.join(format!("{i:02}"));
        std::fs::create_dir_all(&dir)?;
        for (k, f) in files.iter().enumerate() {
            super::stop::check()?;
            write_file(&dir, f, seed(&w.name, i, k))?;
        }
        dirs.push(dir);
    }
    // busybox at the bottom, the ready script on top.
    let bin = dirs[0].join("bin");
    std::fs::create_dir_all(&bin)?;
    std::fs::copy(BUSYBOX, bin.join("busybox")).map_err(|e| {
        io::Error::new(e.kind(), format!("{BUSYBOX}: {e} (install busybox-static)"))
    })?;
    std::os::unix::fs::symlink("busybox", bin.join("sh"))?;
    let top = dirs.last().expect("a workload has layers");
    let script = top.join(READY_SCRIPT.trim_start_matches('/'));
    std::fs::create_dir_all(script.parent().expect("script has a parent"))?;
    std::fs::write(&script, w.ready_script())?;
    for d in &dirs {
        pin_times(d)?;
    }

    let image = format!("oci:{}:{}", out.join("image").display(), w.name);
    let spec = BuildSpec {
        layers: dirs,
        gzip: true,
        cmd: vec!["/bin/sh".into(), READY_SCRIPT.into()],
        platform: Platform::host(),
    };
    let r = ImageRef::parse(&image).map_err(io::Error::other)?;
    let dst = open_dest(&r, &TransportOptions::default()).map_err(io::Error::other)?;
    build(&spec, dst.as_ref()).map_err(io::Error::other)?;
    std::fs::remove_dir_all(&trees)?;

    let g = Generated {
        generator: GENERATOR,
        scale,
        image,
        image_bytes: w.image_bytes(),
        read_bytes: w.read_bytes(),
        workload: w.clone(),
    };
    std::fs::write(
        out.join("workload.json"),
        serde_json::to_vec_pretty(&g).map_err(io::Error::other)?,
    )?;
    Ok(g)
}

/// Sets every entry under `root` (symlinks themselves included) to one fixed
/// time, so the image's tar headers, and so its digests, do not depend on
/// when it was generated.
fn pin_times(root: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    const PINNED: libc::timespec = libc::timespec {
        tv_sec: 1_577_836_800, // 2020-01-01T00:00:00Z
        tv_nsec: 0,
    };
    let mut stack = vec![root.to_path_buf()];
    let mut all = Vec::new();
    while let Some(p) = stack.pop() {
        if p.is_dir() && !p.is_symlink() {
            for e in std::fs::read_dir(&p)? {
                stack.push(e?.path());
            }
        }
        all.push(p);
    }
    for p in all {
        let c = std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(io::Error::other)?;
        let times = [PINNED, PINNED];
        // SAFETY: `c` is a NUL-terminated path and `times` holds two entries.
        let r = unsafe {
            libc::utimensat(
                libc::AT_FDCWD,
                c.as_ptr(),
                times.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Where the static busybox comes from (Debian's busybox-static).
pub const BUSYBOX: &str = "/bin/busybox";

fn seed(name: &str, layer: usize, file: usize) -> u64 {
    let mut h = 0xcbf29ce484222325u64;
    for b in name.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x100000001b3);
    }
    h ^ ((layer as u64) << 32 | file as u64).wrapping_mul(0x9e3779b97f4a7c15) | 1
}

fn write_file(root: &Path, f: &FileSpec, seed: u64) -> io::Result<()> {
    let p = root.join(f.path.trim_start_matches('/'));
    std::fs::create_dir_all(p.parent().expect("file path has a parent"))?;
    let mut out = io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&p)?);
    let mut g = Gen(seed);
    let mut left = f.size;
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        match f.content {
            Content::Noise => g.noise(&mut buf[..n]),
            Content::Text => g.text(&mut buf[..n]),
        }
        out.write_all(&buf[..n])?;
        left -= n as u64;
    }
    out.flush()
}

/// xorshift64: fast, deterministic filler.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn noise(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }

    /// Words from a small vocabulary, in lines: compresses like source code.
    fn text(&mut self, buf: &mut [u8]) {
        const WORDS: [&str; 24] = [
            "def", "return", "self", "import", "from", "class", "None", "if", "else", "for", "in",
            "value", "config", "data", "result", "args", "kwargs", "len", "dict", "list", "True",
            "False", "raise", "yield",
        ];
        let mut i = 0;
        while i < buf.len() {
            let r = self.next();
            let w = WORDS[(r % WORDS.len() as u64) as usize].as_bytes();
            let sep: &[u8] = if r >> 60 == 0 { b"\n" } else { b" " };
            for &b in w.iter().chain(sep) {
                if i == buf.len() {
                    break;
                }
                buf[i] = b;
                i += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_workloads_and_bad_scales_are_refused_by_name() {
        let e = Workload::builtin("java-like", 1.0).unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown workload \"java-like\"; the workloads are python-like, model-serving, many-layers"
        );
        assert!(Workload::builtin("python-like", 0.0).is_err());
        assert!(Workload::builtin("python-like", f64::NAN).is_err());
    }

    #[test]
    fn workloads_read_a_small_part_of_their_image() {
        for name in NAMES {
            let w = Workload::builtin(name, 1.0).unwrap();
            let share = w.read_bytes() as f64 / w.image_bytes() as f64;
            assert!(share < 0.10, "{name}: reads {share:.3} of its image");
            for a in &w.ready {
                let f = w
                    .file(&a.path)
                    .unwrap_or_else(|| panic!("{name}: {}", a.path));
                assert!(a.offset + a.len <= f.size, "{name}: {a:?} past {}", f.size);
            }
        }
        assert_eq!(
            Workload::builtin("many-layers", 1.0).unwrap().layers.len(),
            20
        );
    }

    #[test]
    fn the_ready_script_reads_the_plan_then_says_ready() {
        let w = Workload::builtin("model-serving", 0.01).unwrap();
        let s = w.ready_script();
        assert!(
            s.starts_with(
                "#!/bin/sh\nset -e\ncat /models/config.json /models/tokenizer.json >/dev/null\n"
            ),
            "{s}"
        );
        assert!(
            s.contains("dd if=/models/weights.bin of=/dev/null bs=65536 skip=0 count=10485"),
            "{s}"
        );
        assert!(s.ends_with("echo ready model-serving\n"), "{s}");
    }

    #[test]
    fn generated_content_is_deterministic_and_text_compresses() {
        let (mut a, mut b) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
        Gen(7).text(&mut a);
        Gen(7).text(&mut b);
        assert_eq!(a, b);
        let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(&a).unwrap();
        let ratio = a.len() as f64 / z.finish().unwrap().len() as f64;
        assert!(ratio > 2.5, "text compresses only {ratio:.1}:1");
    }
}
