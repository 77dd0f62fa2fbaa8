//! Image signatures: cosign's classic format and the simple-signing payload
//! it signs, verified against the public keys a signature policy trusts.
//! [`fetch`] finds them in the image's repository; [`evaluate`] gives a
//! policy's verdict.

mod bundle;
mod classic;
mod fetch;
mod payload;
mod sign;
mod verdict;

#[cfg(test)]
mod sign_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod verdict_tests;

pub use crate::oci::policy::{BadSignature, KeyError, MAX_KEY_PEM, PublicKey};
pub use bundle::{
    BUNDLE_MEDIA_TYPE, Bundle, BundleError, IN_TOTO_PAYLOAD_TYPE, MAX_BUNDLE, SIGN_PREDICATE_TYPE,
    STATEMENT_TYPE, VerifiedBundle, pae,
};
pub use classic::{
    ClassicSignature, SIGNATURE_ANNOTATION, SIMPLE_SIGNING_MEDIA_TYPE, SignatureError,
    SignatureLayer, VerifiedPayload, signature_tag, verify_any,
};
pub use fetch::{FetchError, Found, MAX_CLASSIC_SIGNATURES, MAX_REFERRERS, fetch, referrers_tag};
pub use payload::{MAX_PAYLOAD, OtherDigest, Payload, PayloadError, SIGNATURE_TYPE};
pub use sign::{
    Attached, Passphrase, PrivateKeyError, PrivateKeyProblem, SIGSTORE_PRIVATE_KEY_PEM, Signer,
    attach_classic, classic_payload,
};
pub use verdict::{
    Accepted, Inspected, Outcome, Reason, Refusal, Rejected, Verdict, evaluate, evaluate_found,
    inspect,
};
