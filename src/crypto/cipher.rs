//! `AES_256_CTR_HMAC_SHA256`, ocicrypt's layer cipher.
//!
//! The 16-byte nonce is the whole initial counter block, incremented as a
//! 128-bit big-endian integer (Go's `cipher.NewCTR`), so any byte offset can be
//! decrypted on its own. HMAC-SHA256, keyed with the layer key, covers the
//! whole ciphertext and is only known at the end of the stream.

use std::io::{self, Read};
use std::sync::{Arc, Mutex};

use aes::cipher::{KeyIvInit, StreamCipher, StreamCipherSeek};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

use super::options::{CIPHER_AES_CTR_HMAC, PrivateOptions, PublicOptions};
use crate::pipeline::{Stage, StagedReader};

type Aes256Ctr = ctr::Ctr128BE<aes::Aes256>;
type HmacSha256 = Hmac<Sha256>;

/// A layer key and counter block; zeroized on drop (copies too).
#[derive(Clone)]
pub struct LayerKey {
    key: Zeroizing<[u8; 32]>,
    nonce: [u8; 16],
}

impl LayerKey {
    /// A fresh random key and nonce, as ocicrypt makes for every layer.
    pub fn generate() -> Self {
        let mut key = Zeroizing::new([0u8; 32]);
        let mut nonce = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(key.as_mut());
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        LayerKey { key, nonce }
    }

    /// The key the private options carry.
    pub fn from_options(opts: &PrivateOptions) -> Self {
        LayerKey {
            key: opts.key(),
            nonce: opts.nonce(),
        }
    }

    /// Private options for this key and a plaintext digest.
    pub fn to_options(&self, plain_digest: String) -> PrivateOptions {
        let mut cipheroptions = std::collections::BTreeMap::new();
        cipheroptions.insert("nonce".to_string(), self.nonce.to_vec());
        PrivateOptions {
            symkey: self.key.to_vec(),
            digest: plain_digest,
            cipheroptions,
        }
    }

    /// XORs the keystream for bytes `[offset, offset + buf.len())` into `buf`.
    /// Encryption and decryption are the same operation; no earlier byte is needed.
    pub fn apply_at(&self, offset: u64, buf: &mut [u8]) {
        let mut c = self.ctr();
        c.seek(offset);
        c.apply_keystream(buf);
    }

    fn ctr(&self) -> Aes256Ctr {
        Aes256Ctr::new(self.key.as_ref().into(), (&self.nonce).into())
    }

    fn mac(&self) -> HmacSha256 {
        <HmacSha256 as Mac>::new_from_slice(self.key.as_ref()).expect("HMAC takes any key length")
    }

    /// Plaintext → ciphertext stream. The returned [`EncryptResult`] is filled
    /// once the reader has reached EOF. When the caller already checks the
    /// plaintext against a digest as it streams (a verifying reader), pass it
    /// as `plain_digest` and the plaintext is not hashed a second time.
    pub fn encrypt_reader<R: Read + Send + 'static>(
        &self,
        src: R,
        plain_digest: Option<&str>,
    ) -> (StagedReader, EncryptResult) {
        let result = EncryptResult::default();
        let mut first: Vec<Box<dyn Stage>> = Vec::new();
        match plain_digest {
            Some(d) => *result.plain_digest.lock().expect("fresh lock") = Some(d.to_string()),
            None => first.push(Box::new(Sha256Stage::new(result.plain_digest.clone()))),
        }
        first.push(Box::new(CtrStage(self.ctr())));
        let mac = MacStage {
            mac: self.mac(),
            expect: None,
            out: Some(result.hmac.clone()),
        };
        let reader = StagedReader::new(src, vec![first, vec![Box::new(mac)]], vec![]);
        (reader, result)
    }

    /// Ciphertext → plaintext stream that fails at EOF unless the HMAC matches
    /// `expected_hmac` and, when given, the plaintext hashes to
    /// `expected_digest` (`sha256:<hex>`; callers whose sink hashes the
    /// plaintext anyway check there instead). `what` names the layer in errors.
    pub fn decrypt_reader<R: Read + Send + 'static>(
        &self,
        src: R,
        expected_hmac: &[u8],
        expected_digest: Option<&str>,
        what: &str,
    ) -> StagedReader {
        let mac = MacStage {
            mac: self.mac(),
            expect: Some((expected_hmac.to_vec(), what.to_string())),
            out: None,
        };
        let ctr = CtrStage(self.ctr());
        let tail: Vec<Box<dyn Stage>> = match expected_digest {
            Some(d) => vec![Box::new(Sha256Stage::verify(
                d.to_string(),
                what.to_string(),
            ))],
            None => vec![],
        };
        StagedReader::new(src, vec![vec![Box::new(mac), Box::new(ctr)]], tail)
    }
}

impl LayerKey {
    /// Ciphertext → plaintext with no HMAC check, for a source pinned by
    /// its digest (`src` checks it at EOF): what the seek indexer reads, on
    /// three threads, `first` (span digests) running on the thread that
    /// reads and verifies `src`, decryption on another, the caller's work
    /// on its own.
    pub fn decrypt_reader_pinned<R: Read + Send + 'static>(
        &self,
        src: R,
        first: Vec<Box<dyn Stage>>,
    ) -> StagedReader {
        let ctr: Box<dyn Stage> = Box::new(CtrStage(self.ctr()));
        StagedReader::new(src, vec![first, vec![ctr]], vec![])
    }
}

/// What encryption learns by the end of the stream.
#[derive(Clone, Default)]
pub struct EncryptResult {
    plain_digest: Arc<Mutex<Option<String>>>,
    hmac: Arc<Mutex<Option<Vec<u8>>>>,
}

impl EncryptResult {
    /// Digest of the plaintext (`sha256:<hex>`), once the stream has ended.
    pub fn plain_digest(&self) -> Option<String> {
        self.plain_digest.lock().ok()?.clone()
    }

    /// The public options, once the stream has ended.
    pub fn public_options(&self) -> Option<PublicOptions> {
        let hmac = self.hmac.lock().ok()?.clone()?;
        Some(PublicOptions {
            cipher: CIPHER_AES_CTR_HMAC.into(),
            hmac,
            cipheroptions: Default::default(),
        })
    }
}

struct CtrStage(Aes256Ctr);

impl Stage for CtrStage {
    fn process(&mut self, block: &mut [u8]) {
        self.0.apply_keystream(block);
    }
}

struct MacStage {
    mac: HmacSha256,
    expect: Option<(Vec<u8>, String)>,
    out: Option<Arc<Mutex<Option<Vec<u8>>>>>,
}

impl Stage for MacStage {
    fn process(&mut self, block: &mut [u8]) {
        self.mac.update(block);
    }

    fn finish(&mut self) -> io::Result<()> {
        let mac = std::mem::replace(
            &mut self.mac,
            <HmacSha256 as Mac>::new_from_slice(b"").expect("hmac"),
        );
        if let Some((expect, what)) = &self.expect {
            // verify_slice compares in constant time.
            return mac.verify_slice(expect).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("layer {what}: HMAC mismatch: the ciphertext was modified or the pubopts annotation is wrong"),
                )
            });
        }
        if let Some(out) = &self.out {
            *out.lock().map_err(|_| io::Error::other("poisoned"))? =
                Some(mac.finalize().into_bytes().to_vec());
        }
        Ok(())
    }
}

/// Hashes the plaintext: either records the digest or checks it.
struct Sha256Stage {
    hasher: Sha256,
    out: Option<Arc<Mutex<Option<String>>>>,
    expect: Option<(String, String)>,
}

impl Sha256Stage {
    fn new(out: Arc<Mutex<Option<String>>>) -> Self {
        Sha256Stage {
            hasher: Sha256::new(),
            out: Some(out),
            expect: None,
        }
    }

    fn verify(expected: String, what: String) -> Self {
        Sha256Stage {
            hasher: Sha256::new(),
            out: None,
            expect: Some((expected, what)),
        }
    }
}

impl Stage for Sha256Stage {
    fn process(&mut self, block: &mut [u8]) {
        self.hasher.update(block);
    }

    fn finish(&mut self) -> io::Result<()> {
        let got = format!(
            "sha256:{}",
            hex::encode(std::mem::take(&mut self.hasher).finalize())
        );
        if let Some((want, what)) = &self.expect
            && !want.eq_ignore_ascii_case(&got)
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "layer {what}: decrypted data has digest {got}, but the private options say {want}"
                ),
            ));
        }
        if let Some(out) = &self.out {
            *out.lock().map_err(|_| io::Error::other("poisoned"))? = Some(got);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(len: usize) {
        let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        let key = LayerKey::generate();
        let (mut enc, res) = key.encrypt_reader(io::Cursor::new(data.clone()), None);
        let mut ct = Vec::new();
        enc.read_to_end(&mut ct).unwrap();
        drop(enc);
        assert_eq!(ct.len(), data.len());
        let digest = res.plain_digest().unwrap();
        assert_eq!(
            digest,
            format!("sha256:{}", hex::encode(Sha256::digest(&data)))
        );
        let pubopts = res.public_options().unwrap();

        // Whole-stream decryption verifies HMAC and digest.
        let mut pt = Vec::new();
        key.decrypt_reader(
            io::Cursor::new(ct.clone()),
            &pubopts.hmac,
            Some(&digest),
            "L",
        )
        .read_to_end(&mut pt)
        .unwrap();
        assert_eq!(pt, data);

        // Any range decrypts on its own.
        for (off, n) in [
            (0usize, 1usize),
            (5, 40),
            (len / 2, len / 3),
            (len.saturating_sub(3), 3),
        ] {
            let n = n.min(len - off.min(len));
            let off = off.min(len);
            let mut buf = ct[off..off + n].to_vec();
            key.apply_at(off as u64, &mut buf);
            assert_eq!(buf, &data[off..off + n]);
        }
    }

    #[test]
    fn roundtrip_sizes() {
        for len in [0, 1, 15, 16, 17, 4096, 3 * crate::pipeline::BLOCK + 5] {
            roundtrip(len);
        }
    }

    #[test]
    fn tampering_is_detected_with_the_layer_named() {
        let key = LayerKey::generate();
        let (mut enc, res) = key.encrypt_reader(io::Cursor::new(vec![9u8; 1000]), None);
        let mut ct = Vec::new();
        enc.read_to_end(&mut ct).unwrap();
        let hmac = res.public_options().unwrap().hmac;
        let digest = res.plain_digest().unwrap();
        ct[500] ^= 1;
        let e = key
            .decrypt_reader(
                io::Cursor::new(ct.clone()),
                &hmac,
                Some(&digest),
                "sha256:abc",
            )
            .read_to_end(&mut Vec::new())
            .unwrap_err();
        assert!(
            e.to_string().contains("layer sha256:abc: HMAC mismatch"),
            "{e}"
        );
        ct[500] ^= 1;
        let e = key
            .decrypt_reader(io::Cursor::new(ct), &hmac, Some("sha256:00"), "sha256:abc")
            .read_to_end(&mut Vec::new())
            .unwrap_err();
        assert!(e.to_string().contains("decrypted data has digest"), "{e}");
    }

    #[test]
    fn counter_matches_go_ctr_across_the_carry() {
        // A nonce whose low 64 bits overflow after one block: Go increments the
        // full 128-bit block, so byte 16 uses counter 0x..01_00..00.
        let opts = {
            let mut co = std::collections::BTreeMap::new();
            let mut n = [0u8; 16];
            n[8..].copy_from_slice(&[0xff; 8]);
            co.insert("nonce".into(), n.to_vec());
            PrivateOptions {
                symkey: vec![1; 32],
                digest: String::new(),
                cipheroptions: co,
            }
        };
        let key = LayerKey::from_options(&opts);
        let mut whole = vec![0u8; 48];
        key.apply_at(0, &mut whole);
        let mut n = [0u8; 16];
        n[7] = 1;
        let direct = Aes256Ctr::new((&[1u8; 32]).into(), (&n).into());
        let mut second = vec![0u8; 16];
        { direct }.apply_keystream(&mut second);
        assert_eq!(&whole[16..32], &second[..]);
    }
}
