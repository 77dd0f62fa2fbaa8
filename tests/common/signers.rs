//! Real signers: cosign 3.1 (unpacked by `scripts/install-deps.sh` from
//! Debian unstable), run offline against a plain-HTTP registry. Each run
//! gets a HOME and a TUF cache inside the test's own directory, so nothing
//! is written outside it; cosign warns that it cannot reach its TUF
//! repository and goes on.
//!
//! Debian 12's skopeo 1.9.3 cannot take part: Debian built it with sigstore
//! disabled, so both `--sign-by-sigstore-private-key` and a `sigstoreSigned`
//! policy fail with "Debian-local change: sigstore disabled". skopeo 1.22
//! from Debian unstable (also unpacked by `scripts/install-deps.sh`, run on
//! unstable's own loader and libc) signs and verifies instead.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sha2::{Digest, Sha256};

use super::{Registry, ok, run};

/// The password of every key [`cosign_keys`] makes.
pub const PASSWORD: &str = "pw";

/// Where `scripts/install-deps.sh` unpacks cosign 3.1.1.
pub fn cosign_bin() -> PathBuf {
    std::env::var_os("LAZYCRYPT_COSIGN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/lazycrypt-test/cosign"))
        .join("usr/bin/cosign")
}

/// cosign, run in `dir` with its HOME and TUF cache under `dir`.
pub fn cosign(dir: &Path) -> Command {
    let home = dir.join("cosign-home");
    std::fs::create_dir_all(&home).unwrap();
    let mut c = Command::new(cosign_bin());
    c.current_dir(dir)
        .env("HOME", &home)
        .env("TUF_ROOT", home.join("tuf"))
        .env("COSIGN_PASSWORD", PASSWORD)
        .env_remove("DOCKER_CONFIG")
        .env_remove("SIGSTORE_ROOT_FILE")
        .env_remove("COSIGN_REPOSITORY");
    c
}

/// A cosign key pair made in `dir` (one pair per directory): the
/// password-encrypted private key `cosign.key` (ECDSA P-256, PEM type
/// `ENCRYPTED SIGSTORE PRIVATE KEY`) and the public key `cosign.pub`.
pub fn cosign_keys(dir: &Path) -> (PathBuf, PathBuf) {
    std::fs::create_dir_all(dir).unwrap();
    ok(cosign(dir).arg("generate-key-pair"));
    (dir.join("cosign.key"), dir.join("cosign.pub"))
}

/// The two ways cosign 3.1 stores a key-based image signature.
#[derive(Clone, Copy, Debug)]
pub enum Format {
    /// A Sigstore bundle v0.3 (DSSE envelope of an in-toto statement),
    /// attached as an OCI 1.1 referrer; on a registry without the
    /// referrers API, listed in the `sha256-<hex>` fallback tag's index.
    Bundle,
    /// The pre-v3 simple-signing payload under the `sha256-<hex>.sig` tag.
    Classic,
}

const REGISTRY_FLAGS: [&str; 2] = ["--allow-http-registry", "--allow-insecure-registry"];

/// cosign signs `reference` (`HOST/REPO@sha256:…` on a plain-HTTP
/// registry) with `key`, in `format`, without any transparency log.
pub fn cosign_sign(dir: &Path, key: &Path, format: Format, reference: &str) {
    let mut c = cosign(dir);
    c.arg("sign").arg("--key").arg(key);
    match format {
        Format::Bundle => {
            // A signing config with no services: no Rekor, no TSA.
            let sc = dir.join("signing-config.json");
            if !sc.exists() {
                ok(cosign(dir)
                    .args(["signing-config", "create", "--out"])
                    .arg(&sc));
            }
            c.arg("--signing-config").arg(sc);
        }
        Format::Classic => {
            c.args([
                "--use-signing-config=false",
                "--tlog-upload=false",
                "--new-bundle-format=false",
            ]);
        }
    }
    ok(c.args(REGISTRY_FLAGS).args(["-y", reference]));
}

/// `cosign verify --key PUB` of `reference`, offline (no transparency log
/// check). With `Format::Bundle` cosign looks for bundles first and falls
/// back to classic signatures; with `Format::Classic` it reads only the
/// `.sig` tag.
pub fn cosign_verify(dir: &Path, public: &Path, format: Format, reference: &str) -> Output {
    let mut c = cosign(dir);
    c.arg("verify")
        .arg("--key")
        .arg(public)
        .arg("--insecure-ignore-tlog");
    if let Format::Classic = format {
        c.arg("--new-bundle-format=false");
    }
    run(c.args(REGISTRY_FLAGS).arg(reference))
}

/// The digest reference `HOST/REPO@sha256:…` of `REPO:TAG` on `reg`, and
/// the digest.
pub fn digest_ref(reg: &Registry, repo: &str, tag: &str) -> (String, String) {
    let raw = registry_get(reg, repo, &format!("manifests/{tag}"));
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(raw)));
    (format!("{}/{repo}@{digest}", reg.addr), digest)
}

/// GET `path` (after `/v2/REPO/`) from `reg` over plain HTTP, accepting OCI
/// manifests and indexes: the body, or a panic naming the status.
pub fn registry_get(reg: &Registry, repo: &str, path: &str) -> Vec<u8> {
    let url = format!("http://{}/v2/{repo}/{path}", reg.addr);
    let out = run(Command::new("curl")
        .args(["-sS", "--fail", "-H"])
        .arg(
            "Accept: application/vnd.oci.image.index.v1+json, \
             application/vnd.oci.image.manifest.v1+json",
        )
        .arg(&url));
    assert!(
        out.status.success(),
        "GET {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// [`registry_get`] of a JSON document.
pub fn registry_json(reg: &Registry, repo: &str, path: &str) -> serde_json::Value {
    serde_json::from_slice(&registry_get(reg, repo, path)).unwrap()
}

/// Uploads `data` as a blob of `repo` on `reg` (a POST, then the PUT that
/// names its digest); its digest.
pub fn registry_put_blob(reg: &Registry, repo: &str, data: &[u8]) -> String {
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(data)));
    let url = format!("http://{}/v2/{repo}/blobs/uploads/", reg.addr);
    let head = ok(Command::new("curl").args([
        "-sS",
        "--fail",
        "-X",
        "POST",
        "-D",
        "-",
        "-o",
        "/dev/null",
        &url,
    ]));
    let location = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("location")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_else(|| panic!("no upload location in {head}"));
    let sep = if location.contains('?') { '&' } else { '?' };
    let put = if location.starts_with('/') {
        format!("http://{}{location}{sep}digest={digest}", reg.addr)
    } else {
        format!("{location}{sep}digest={digest}")
    };
    let body = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(body.path(), data).unwrap();
    ok(Command::new("curl")
        .args([
            "-sS",
            "--fail",
            "-X",
            "PUT",
            "-H",
            "Content-Type: application/octet-stream",
            "--data-binary",
        ])
        .arg(format!("@{}", body.path().display()))
        .arg(&put));
    digest
}

/// PUTs the manifest or index `doc` (as its `mediaType`) to `repo` on
/// `reg` under `reference` (a tag or its digest); its digest.
pub fn registry_put_manifest(
    reg: &Registry,
    repo: &str,
    reference: &str,
    doc: &serde_json::Value,
) -> String {
    let data = serde_json::to_vec(doc).unwrap();
    let media = doc["mediaType"].as_str().expect("a mediaType");
    let body = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(body.path(), &data).unwrap();
    ok(Command::new("curl")
        .args(["-sS", "--fail", "-X", "PUT", "-H"])
        .arg(format!("Content-Type: {media}"))
        .arg("--data-binary")
        .arg(format!("@{}", body.path().display()))
        .arg(format!(
            "http://{}/v2/{repo}/manifests/{reference}",
            reg.addr
        )));
    format!("sha256:{}", hex::encode(Sha256::digest(&data)))
}

/// Where `scripts/install-deps.sh` puts skopeo 1.22 (sigstore enabled):
/// the wrapper that starts it on Debian unstable's loader and libc.
pub fn skopeo_sigstore_bin() -> PathBuf {
    let bin = std::env::var_os("LAZYCRYPT_SKOPEO_SIGSTORE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/lazycrypt-test/skopeo-sigstore/bin/skopeo"));
    assert!(
        bin.is_file(),
        "skopeo 1.22 with sigstore is not at {} (LAZYCRYPT_SKOPEO_SIGSTORE): run scripts/install-deps.sh",
        bin.display()
    );
    bin
}

/// skopeo 1.22, run offline in `dir` without reading or writing the
/// system's containers configuration: its own registries.d (sigstore
/// attachments on, for every registry), an empty registries.conf, HOME
/// under `dir`. Give `--policy P` (or `--insecure-policy` where nothing is
/// verified) before the subcommand.
pub fn skopeo_sigstore(dir: &Path) -> Command {
    let home = dir.join("skopeo-home");
    let registries_d = home.join("registries.d");
    std::fs::create_dir_all(&registries_d).unwrap();
    std::fs::write(
        registries_d.join("default.yaml"),
        "default-docker:\n  use-sigstore-attachments: true\n",
    )
    .unwrap();
    let registries_conf = home.join("registries.conf");
    std::fs::write(&registries_conf, "").unwrap();
    let mut c = Command::new(skopeo_sigstore_bin());
    c.current_dir(dir)
        .env("HOME", &home)
        .env("CONTAINERS_REGISTRIES_CONF", &registries_conf)
        .env_remove("REGISTRY_AUTH_FILE")
        .env_remove("DOCKER_CONFIG")
        .env_remove("CONTAINERS_POLICY_JSON")
        .arg("--registries.d")
        .arg(&registries_d);
    c
}

/// skopeo 1.22 copies `src` to `dst` (transport references; `docker://`
/// ones on a plain-HTTP registry) and signs the destination's manifest
/// digest with the cosign private key `key`, encrypted with `passphrase`:
/// the classic `sha256-<hex>.sig` tag. Verifies nothing. Returns stdout.
pub fn skopeo_sign(dir: &Path, key: &Path, passphrase: &str, src: &str, dst: &str) -> String {
    let pass = dir.join("skopeo-sign-passphrase");
    std::fs::write(&pass, format!("{passphrase}\n")).unwrap();
    let mut c = skopeo_sigstore(dir);
    c.args(["--insecure-policy", "copy"]);
    if src.starts_with("docker://") {
        c.arg("--src-tls-verify=false");
    }
    if dst.starts_with("docker://") {
        c.arg("--dest-tls-verify=false");
    }
    ok(c.arg("--sign-by-sigstore-private-key")
        .arg(key)
        .arg("--sign-passphrase-file")
        .arg(&pass)
        .args([src, dst]))
}

/// An image of one file (`hello.txt`), encrypted as eStargz to a key of its
/// own and pushed to `reg` as `REPO:v1`: its digest reference
/// (`HOST/REPO@sha256:…`) and digest.
pub fn encrypted_hello(dir: &Path, reg: &Registry, repo: &str) -> (String, String) {
    let src = dir.join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("hello.txt"), "signed and encrypted\n").unwrap();
    let plain = format!("oci:{}/img:plain", dir.display());
    super::build_dir(&src, &plain, &[]);
    let k = super::rsa_keys(dir, "k");
    super::encrypt_estargz(&plain, &reg.image(&format!("{repo}:v1")), &k.public);
    digest_ref(reg, repo, "v1")
}

/// Writes to `path` a policy accepting only images signed by `public`, for
/// their repository (cosign's signatures name no more).
pub fn write_signed_by_policy(path: &Path, public: &Path) {
    let p = serde_json::json!({
        "default": [{"type": "sigstoreSigned", "keyPath": public,
                     "signedIdentity": {"type": "matchRepository"}}],
    });
    std::fs::write(path, serde_json::to_vec(&p).unwrap()).unwrap();
}
