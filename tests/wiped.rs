//! Secrets leave no copies behind in freed memory. This test binary's
//! allocator looks for a marker (a secret's encoded form) in every block
//! freed, and in every block a reallocation leaves, while a test is armed:
//! a buffer that grew, or a copy dropped unwiped, shows up there.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use lazycrypt::crypto::keys::{KeyArg, parse_key_file};
use lazycrypt::crypto::options::PrivateOptions;
use zeroize::Zeroizing;

struct Scanning;

static MARK: AtomicPtr<u8> = AtomicPtr::new(std::ptr::null_mut());
static MARK_LEN: AtomicUsize = AtomicUsize::new(0);
static SEEN: AtomicBool = AtomicBool::new(false);

/// # Safety
/// `p` points at `len` readable bytes.
unsafe fn scan(p: *const u8, len: usize) {
    let m = MARK.load(Ordering::SeqCst);
    let ml = MARK_LEN.load(Ordering::SeqCst);
    if m.is_null() || ml == 0 || len < ml {
        return;
    }
    // SAFETY: the marker is leaked, so it lives as long as the program;
    // the block is the caller's.
    let (mark, block) = unsafe {
        (
            std::slice::from_raw_parts(m, ml),
            std::slice::from_raw_parts(p, len),
        )
    };
    if block.windows(ml).any(|w| w == mark) {
        SEEN.store(true, Ordering::SeqCst);
    }
}

// SAFETY: every call goes to `System`; `realloc` moves through `alloc` and
// `dealloc` so that the block it leaves is scanned.
unsafe impl GlobalAlloc for Scanning {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe {
            scan(p, l.size());
            System.dealloc(p, l)
        }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new_size: usize) -> *mut u8 {
        unsafe {
            let n = System.alloc(Layout::from_size_align_unchecked(new_size, l.align()));
            if !n.is_null() {
                std::ptr::copy_nonoverlapping(p, n, l.size().min(new_size));
                self.dealloc(p, l);
            }
            n
        }
    }
}

#[global_allocator]
static ALLOC: Scanning = Scanning;

/// One armed test at a time: the marker is global.
static ONE: Mutex<()> = Mutex::new(());

/// Runs `f` armed with `marker`; whether a freed block held the marker.
fn leaves_a_copy(marker: &[u8], f: impl FnOnce()) -> bool {
    let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
    let m: &'static [u8] = Box::leak(marker.to_vec().into_boxed_slice());
    SEEN.store(false, Ordering::SeqCst);
    MARK_LEN.store(m.len(), Ordering::SeqCst);
    MARK.store(m.as_ptr() as *mut u8, Ordering::SeqCst);
    f();
    MARK.store(std::ptr::null_mut(), Ordering::SeqCst);
    SEEN.load(Ordering::SeqCst)
}

fn random<const N: usize>() -> Zeroizing<[u8; N]> {
    let mut k = Zeroizing::new([0u8; N]);
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut k[..]);
    k
}

/// `parts` joined in a buffer that never moves (no copy of its own).
fn joined(parts: &[&[u8]]) -> Zeroizing<Vec<u8>> {
    let mut v = Zeroizing::new(Vec::with_capacity(parts.iter().map(|p| p.len()).sum()));
    for p in parts {
        v.extend_from_slice(p);
    }
    v
}

#[test]
fn the_marker_is_found_in_a_copy_dropped_unwiped() {
    let key = random::<32>();
    let marker = Zeroizing::new(B64.encode(&key[..]));
    assert!(leaves_a_copy(marker.as_bytes(), || {
        drop(marker.to_string());
    }));
    assert!(!leaves_a_copy(marker.as_bytes(), || {
        drop(Zeroizing::new(marker.to_string()));
    }));
}

#[test]
fn private_options_json_leaves_no_copy_of_the_layer_key() {
    let key = random::<32>();
    let marker = Zeroizing::new(B64.encode(&key[..]));
    let seen = leaves_a_copy(marker.as_bytes(), || {
        let mut cipheroptions = std::collections::BTreeMap::new();
        cipheroptions.insert("nonce".to_string(), vec![7u8; 16]);
        let opts = PrivateOptions {
            symkey: key.to_vec(),
            digest: format!("sha256:{}", "ab".repeat(32)),
            cipheroptions,
        };
        let json = opts.to_json();
        let back = PrivateOptions::from_json(&json).unwrap();
        assert!(back.key()[..] == key[..]);
    });
    assert!(!seen, "a freed block held the layer key in base64");
}

#[test]
fn a_jwk_private_key_leaves_no_copy_of_d() {
    let sk = p256::SecretKey::random(&mut rand::rngs::OsRng);
    let d = Zeroizing::new(B64URL.encode(sk.to_bytes()));
    let point =
        p256::elliptic_curve::sec1::ToEncodedPoint::to_encoded_point(&sk.public_key(), false);
    let (x, y) = (
        B64URL.encode(point.x().unwrap()),
        B64URL.encode(point.y().unwrap()),
    );
    let jwk = joined(&[
        br#"{"kty":"EC","crv":"P-256","x":""#,
        x.as_bytes(),
        br#"","y":""#,
        y.as_bytes(),
        br#"","d":""#,
        d.as_bytes(),
        br#""}"#,
    ]);
    let seen = leaves_a_copy(d.as_bytes(), || {
        let keys = parse_key_file(&jwk, None).unwrap();
        assert!(keys[0].is_secret());
    });
    assert!(!seen, "a freed block held the JWK's d");
}

#[test]
fn a_password_file_leaves_no_copy_of_the_password() {
    let pw = Zeroizing::new(B64.encode(&random::<24>()[..]));
    let d = tempfile::tempdir().unwrap();
    let file = d.path().join("pw");
    let mut f = std::fs::File::create(&file).unwrap();
    f.write_all(pw.as_bytes()).unwrap();
    f.write_all(b"\n").unwrap();
    let arg = format!(
        "{}:file={}",
        d.path().join("k.pem").display(),
        file.display()
    );
    let seen = leaves_a_copy(pw.as_bytes(), || {
        let ka = KeyArg::parse(&arg).unwrap();
        assert!(ka.password.as_deref().map(|p| p.as_bytes()) == Some(pw.as_bytes()));
    });
    assert!(!seen, "a freed block held the password");
}

#[test]
fn a_keyprovider_reply_leaves_no_copy_of_the_private_options() {
    use lazycrypt::crypto::keyprovider::{Provider, ProviderCommand, ProviderConfig, unwrap};
    let opts = Zeroizing::new(B64.encode(&random::<48>()[..]));
    let d = tempfile::tempdir().unwrap();
    // Padding makes a reader that grows its buffer move it past the secret.
    let reply = d.path().join("reply");
    let mut f = std::fs::File::create(&reply).unwrap();
    f.write_all(br#"{"keyunwrapresults":{"optsdata":""#)
        .unwrap();
    f.write_all(opts.as_bytes()).unwrap();
    f.write_all(br#""}}"#).unwrap();
    f.write_all(&[b' '; 20_000]).unwrap();
    let script = d.path().join("provider");
    std::fs::write(
        &script,
        format!("#!/bin/sh\ncat >/dev/null\ncat '{}'\n", reply.display()),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let cfg = ProviderConfig {
        providers: [(
            "kp".to_string(),
            Provider {
                cmd: Some(ProviderCommand {
                    path: script,
                    args: vec![],
                }),
                grpc: None,
            },
        )]
        .into(),
        timeout: lazycrypt::crypto::keyprovider::DEFAULT_TIMEOUT,
    };
    let seen = leaves_a_copy(opts.as_bytes(), || {
        let got = unwrap(Some(&cfg), "kp", b"wrapped").unwrap();
        assert_eq!(got.len(), 48);
    });
    assert!(!seen, "a freed block held the private options in base64");
}
