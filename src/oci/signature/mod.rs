//! Image signatures: cosign's classic format and the simple-signing payload
//! it signs, verified against the public keys a signature policy trusts.
//! Pure verification; fetching the signatures is the caller's.

mod classic;
mod key;
mod payload;

#[cfg(test)]
mod tests;

pub use classic::{
    ClassicSignature, SIGNATURE_ANNOTATION, SIMPLE_SIGNING_MEDIA_TYPE, SignatureError,
    SignatureLayer, VerifiedPayload, signature_tag, verify_any,
};
pub use key::{BadSignature, KeyError, MAX_KEY_PEM, PublicKey};
pub use payload::{MAX_PAYLOAD, OtherDigest, Payload, PayloadError, SIGNATURE_TYPE};
