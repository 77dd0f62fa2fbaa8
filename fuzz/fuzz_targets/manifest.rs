//! OCI and Docker manifests and indexes as a registry serves them, with
//! what the snapshotter reads of their descriptors: media types, digests,
//! platforms and the encryption annotations.
#![no_main]

use lazycrypt::crypto::envelope::{self, PUBOPTS};
use lazycrypt::crypto::options::PublicOptions;
use lazycrypt::oci::image::parse_manifest;
use lazycrypt::oci::platform::Platform;
use lazycrypt::oci::transport::RawManifest;
use lazycrypt::oci::{Descriptor, ImageIndex, digest, media};
use libfuzzer_sys::fuzz_target;

fn descriptor(d: &Descriptor) {
    let mt = d.media_type().to_string();
    let _ = (
        media::is_encrypted(&mt),
        media::is_layer(&mt),
        media::encrypted(&mt),
    );
    let _ = (media::decrypted(&mt), media::to_oci_layer(&mt));
    let _ = digest::parse(&d.digest().to_string());
    if let Some(p) = d.platform() {
        let _ = Platform::describe(p);
    }
    if let Some(a) = d.annotations() {
        let _ = envelope::schemes(a);
        if let Some(v) = a.get(PUBOPTS) {
            let _ = PublicOptions::from_annotation(v);
        }
    }
}

const MANIFEST: &str = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},
"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip+encrypted","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":123,
"annotations":{"org.opencontainers.image.enc.keys.jwe":"e30=","org.opencontainers.image.enc.pubopts":"e30=","containerd.io/snapshot/stargz/toc.digest":"sha256:00"}}]}"#;
const INDEX: &str = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[
{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":7,"platform":{"architecture":"arm64","os":"linux","variant":"v8"}}]}"#;

fuzz_target!(
    init: lazycrypt_fuzz::write_seeds(|| vec![MANIFEST.into(), INDEX.into()]),
    |data: &[u8]| {
        let raw = RawManifest {
            media_type: media::OCI_MANIFEST.into(),
            digest: digest::of(data),
            bytes: data.to_vec(),
        };
        if let Ok(m) = parse_manifest(&raw, "fuzz") {
            descriptor(m.config());
            m.layers().iter().for_each(descriptor);
        }
        if let Ok(i) = serde_json::from_slice::<ImageIndex>(data) {
            i.manifests().iter().for_each(descriptor);
        }
    }
);
