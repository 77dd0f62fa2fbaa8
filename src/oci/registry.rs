//! An OCI distribution registry client (`docker://`): manifests, blobs,
//! `Range` reads, chunked uploads, and anonymous / basic / bearer-token auth.
//!
//! Blocking on purpose: the byte paths that use it (copies, FUSE reads) are
//! blocking, and a blocking client needs no async runtime underneath.

use std::io::{self, Read};
use std::sync::Mutex;

use ureq::http::{self, Response};

use super::auth::{self, Header, Origin, Secret};
use super::digest::{self, Digest};
use super::reference::RegistryRef;
use super::retry::{Limit, Paced, Timeouts, TryError, retry_after, retrying, transient};
use super::transport::{ImageDest, ImageSource, RawManifest};
use super::{Descriptor, Error, MAX_MANIFEST, media};
use crate::deadline;

/// How to reach registries.
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// Speak plain HTTP (for registries on loopback).
    pub plain_http: bool,
    /// The registry's own host's credential, overriding the auth files
    /// (never sent to its mirrors).
    pub creds: Option<auth::Credential>,
    /// How long the registry may take.
    pub timeouts: Timeouts,
}

/// A repository on a registry, reached at one endpoint (the registry or a
/// mirror). Credentials follow [`super::auth`]'s rules.
pub struct Registry {
    r: RegistryRef,
    base: String,
    /// Where `Authorization` and `headers` may go.
    origin: Origin,
    agent: ureq::Agent,
    basic: Option<Secret>,
    headers: Vec<Header>,
    /// The `Authorization` value that last worked.
    auth: Mutex<Option<Secret>>,
    timeouts: Timeouts,
}

const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json";
const MAX_REDIRECTS: u32 = 10;

enum Body<'a> {
    Empty,
    Bytes(&'a [u8]),
    Stream(&'a mut dyn Read),
}

/// Headers that go only to `origin`, not to redirects elsewhere.
struct Bound<'a> {
    origin: &'a Origin,
    headers: Vec<(&'a str, &'a str)>,
}

/// Why an exchange failed: the network, or a request or redirect that cannot be made.
enum Failure {
    Net(ureq::Error),
    Request(String),
    /// The request's deadline passed before it was sent.
    OutOfTime,
}

impl Registry {
    /// A client for `r`; credentials come from `opts.creds` or the auth files.
    pub fn new(r: RegistryRef, opts: &RegistryOptions) -> Result<Self, Error> {
        let scheme = if opts.plain_http { "http" } else { "https" };
        let base = format!("{scheme}://{}", r.api_host());
        Self::at(r, base, Vec::new(), opts)
    }

    /// The repository of `r`, reached at `base` (`scheme://host[:port]`, a
    /// mirror's address) with `headers` on each request. Credentials are
    /// those of `base`'s own host: `r`'s (`opts.creds` included) only when
    /// `base` is `r`'s registry.
    pub fn at(
        r: RegistryRef,
        base: String,
        headers: Vec<Header>,
        opts: &RegistryOptions,
    ) -> Result<Self, Error> {
        let origin = Origin::of(&base)
            .ok_or_else(|| Error::BadReference(format!("{base}: not an http(s) endpoint")))?;
        // Redirects are followed by `exchange`, which decides what they carry.
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_connect(Some(opts.timeouts.connect))
            .timeout_per_read(Some(opts.timeouts.read))
            .timeout_per_write(Some(opts.timeouts.read))
            .user_agent(concat!("lazycrypt/", env!("CARGO_PKG_VERSION")))
            .build()
            .new_agent();
        let (basic, token) =
            match auth::credential_for(&origin, &r, opts.creds.as_ref(), &auth::auth_files()) {
                Some(auth::Credential::Basic(b)) => (Some(b), None),
                Some(auth::Credential::Bearer(t)) => {
                    (None, Some(Secret::new(format!("Bearer {}", t.expose()))))
                }
                None => (None, None),
            };
        Ok(Registry {
            r,
            base,
            origin,
            agent,
            basic,
            headers,
            auth: Mutex::new(token),
            timeouts: opts.timeouts,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}/v2/{}/{path}", self.base, self.r.repo)
    }

    fn what(&self, method: &str, path: &str) -> String {
        format!(
            "registry {}: {method} /v2/{}/{path}",
            self.r.host, self.r.repo
        )
    }

    /// One request, following GET and HEAD redirects itself: `extra` goes
    /// everywhere, `bound` only to its origin. Returns the final response
    /// and whether it came from `bound`'s origin.
    fn exchange(
        &self,
        method: &str,
        url: &str,
        extra: &[(&str, &str)],
        bound: &Bound<'_>,
        body: &mut Body<'_>,
        limit: Limit,
    ) -> Result<(Response<ureq::Body>, bool), Failure> {
        let follow = matches!(method, "GET" | "HEAD");
        let mut url = url.to_string();
        let mut hops = 0;
        loop {
            let here = Origin::of(&url);
            let ours = here.as_ref() == Some(bound.origin);
            let mut b = http::Request::builder().method(method).uri(&url);
            for (k, v) in extra {
                b = b.header(*k, *v);
            }
            if ours {
                for (k, v) in &bound.headers {
                    b = b.header(*k, *v);
                }
            }
            // Not the URL: a redirect's may carry a signature.
            let bad = |e: http::Error| Failure::Request(format!("request: {e}"));
            let res = match body {
                Body::Empty => self.run(b.body(()).map_err(bad)?, limit),
                Body::Bytes(bytes) => self.run(b.body(*bytes).map_err(bad)?, limit),
                Body::Stream(r) => {
                    self.run(b.body(ureq::SendBody::from_reader(*r)).map_err(bad)?, limit)
                }
            }?;
            let status = res.status().as_u16();
            if !follow || !matches!(status, 301 | 302 | 303 | 307 | 308) {
                return Ok((res, ours));
            }
            let Some(loc) = header(&res, "location") else {
                return Ok((res, ours));
            };
            hops += 1;
            if hops > MAX_REDIRECTS {
                return Err(Failure::Request(format!(
                    "more than {MAX_REDIRECTS} redirects"
                )));
            }
            url = resolve_location(&url, &loc).ok_or_else(|| {
                Failure::Request("redirect to a URL that is not http(s)".to_string())
            })?;
        }
    }

    /// Runs one HTTP exchange within `limit`.
    fn run<S: ureq::AsSendBody>(
        &self,
        req: http::Request<S>,
        limit: Limit,
    ) -> Result<Response<ureq::Body>, Failure> {
        let left = deadline::left(limit.at()).ok_or(Failure::OutOfTime)?;
        let req = self.agent.configure_request(req);
        let req = match limit {
            Limit::Whole(_) => req.timeout_global(Some(left)),
            Limit::Headers(_) => req
                .timeout_connect(Some(left.min(self.timeouts.connect)))
                .timeout_recv_response(Some(left)),
        }
        .build();
        self.agent.run(req).map_err(Failure::Net)
    }

    /// The limit of a request whose answer has a bounded size: the open
    /// budget's deadline (a file read's), or [`Timeouts::request`].
    fn whole(&self) -> Limit {
        Limit::Whole(deadline::within(self.timeouts.request))
    }

    /// Sends a request, authenticating on 401, and retries what may succeed
    /// on another try (the network, 5xx, 429) while `limit` has time.
    fn send(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Body<'_>,
        what: &str,
        limit: Limit,
    ) -> Result<Response<ureq::Body>, Error> {
        if matches!(body, Body::Stream(_)) {
            // A stream cannot be sent twice: one try.
            return self
                .send_once(method, url, headers, body, what, limit)
                .map_err(|e| match e {
                    TryError::Again { error, .. } | TryError::Fatal(error) => error,
                });
        }
        retrying(what, limit, &self.timeouts, || {
            let body = match &body {
                Body::Bytes(b) => Body::Bytes(b),
                _ => Body::Empty,
            };
            self.send_once(method, url, headers, body, what, limit)
        })
    }

    /// One try of a request: authenticates on 401 and sends it again.
    fn send_once(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        mut body: Body<'_>,
        what: &str,
        limit: Limit,
    ) -> Result<Response<ureq::Body>, TryError> {
        let replayable = !matches!(body, Body::Stream(_));
        let mut authed = false;
        loop {
            let auth = self.auth.lock().expect("lock").clone();
            let mut bound = Bound {
                origin: &self.origin,
                headers: Vec::new(),
            };
            for h in &self.headers {
                // An answered challenge's credential replaces a configured one.
                if !(auth.is_some() && h.name.eq_ignore_ascii_case("authorization")) {
                    bound.headers.push((&h.name, h.value.expose()));
                }
            }
            if let Some(a) = &auth {
                bound.headers.push(("Authorization", a.expose()));
            }
            let res = self.exchange(method, url, headers, &bound, &mut body, limit);
            let (res, ours) = match res {
                Ok(r) => r,
                Err(Failure::Net(e)) if transient(&e) => {
                    return Err(TryError::Again {
                        error: Error::Registry(format!("{what}: {e}")),
                        after: None,
                    });
                }
                Err(Failure::Net(e)) if self.base.starts_with("https") && tls_failure(&e) => {
                    return Err(TryError::Fatal(Error::Registry(format!(
                        "{what}: TLS failed ({e}); if this registry speaks plain HTTP, use --plain-http"
                    ))));
                }
                Err(Failure::Net(e)) => {
                    return Err(Error::Registry(format!("{what}: {e}")).into());
                }
                Err(Failure::Request(e)) => {
                    return Err(Error::Registry(format!("{what}: {e}")).into());
                }
                Err(Failure::OutOfTime) => {
                    return Err(limit.left(what, &self.timeouts).unwrap_err().into());
                }
            };
            let status = res.status().as_u16();
            // A challenge from elsewhere (a redirect's target) is not ours to answer.
            if status == 401 && !authed && ours {
                let challenge = header(&res, "www-authenticate").unwrap_or_default();
                self.authenticate(&challenge, what, limit)?;
                authed = true;
                if replayable {
                    continue;
                }
            }
            if status == 401 && authed && ours && replayable {
                // A token that expired mid-run is renewed once above; a
                // registry that refuses the renewed one refuses these
                // credentials.
                let refused = match self.check(res, what, &[]) {
                    Err(e) => e.to_string(),
                    Ok(_) => format!("{what}: HTTP 401"),
                };
                return Err(TryError::Fatal(Error::Registry(format!(
                    "{refused}, even after authenticating afresh"
                ))));
            }
            if replayable && (status >= 500 || status == 429) {
                return Err(TryError::Again {
                    after: retry_after(header(&res, "retry-after").as_deref()),
                    error: self.check(res, what, &[]).unwrap_err(),
                });
            }
            return Ok(res);
        }
    }

    /// Answers a `WWW-Authenticate` challenge (Basic or Bearer token).
    fn authenticate(&self, challenge: &str, what: &str, limit: Limit) -> Result<(), Error> {
        let (scheme, params) = parse_challenge(challenge);
        let value = match scheme.to_ascii_lowercase().as_str() {
            "basic" => match &self.basic {
                Some(b) => format!("Basic {}", b.expose()),
                None => {
                    return Err(Error::Registry(format!(
                        "{what}: 401 Unauthorized and no credentials (use --creds or docker login)"
                    )));
                }
            },
            "bearer" => {
                let realm = params
                    .iter()
                    .find(|(k, _)| k == "realm")
                    .map(|(_, v)| v.clone())
                    .ok_or_else(|| {
                        Error::Registry(format!("{what}: bearer challenge without realm"))
                    })?;
                let realm_origin = Origin::of(&realm).ok_or_else(|| {
                    Error::Registry(format!(
                        "{what}: bearer realm {realm:?} is not an http(s) URL"
                    ))
                })?;
                let mut q = Vec::new();
                for key in ["service", "scope"] {
                    if let Some((_, v)) = params.iter().find(|(k, _)| k == key) {
                        q.push(format!("{key}={}", urlencode(v)));
                    }
                }
                let url = if q.is_empty() {
                    realm.clone()
                } else {
                    format!("{realm}?{}", q.join("&"))
                };
                let basic = match &self.basic {
                    Some(b) if auth::basic_to_realm(&self.origin, &realm_origin) => {
                        Some(Secret::new(format!("Basic {}", b.expose())))
                    }
                    Some(_) => {
                        tracing::warn!(
                            "{what}: token realm {realm} is plain HTTP on another host; asking it for an anonymous token, without credentials"
                        );
                        None
                    }
                    None => None,
                };
                let bound = Bound {
                    origin: &realm_origin,
                    headers: basic
                        .iter()
                        .map(|b| ("Authorization", b.expose()))
                        .collect(),
                };
                let (mut res, _) = self
                    .exchange("GET", &url, &[], &bound, &mut Body::Empty, limit)
                    .map_err(|e| {
                        let e = match e {
                            Failure::Net(e) => e.to_string(),
                            Failure::Request(e) => e,
                            Failure::OutOfTime => "out of time".to_string(),
                        };
                        Error::Registry(format!("{what}: token request to {realm}: {e}"))
                    })?;
                if !res.status().is_success() {
                    return Err(Error::Registry(format!(
                        "{what}: token request to {realm}: HTTP {}",
                        res.status().as_u16()
                    )));
                }
                let v: serde_json::Value = res
                    .body_mut()
                    .with_config()
                    .limit(1 << 20)
                    .read_json()
                    .map_err(|e| Error::Registry(format!("{what}: token response: {e}")))?;
                let token = v["token"]
                    .as_str()
                    .or(v["access_token"].as_str())
                    .ok_or_else(|| {
                        Error::Registry(format!("{what}: token response has no token"))
                    })?;
                format!("Bearer {token}")
            }
            _ => {
                return Err(Error::Registry(format!(
                    "{what}: 401 Unauthorized with unsupported challenge {challenge:?}"
                )));
            }
        };
        *self.auth.lock().expect("lock") = Some(Secret::new(value));
        Ok(())
    }

    /// Turns a non-success response into a one-line error.
    fn check(
        &self,
        mut res: Response<ureq::Body>,
        what: &str,
        ok: &[u16],
    ) -> Result<Response<ureq::Body>, Error> {
        let status = res.status();
        if ok.contains(&status.as_u16()) {
            return Ok(res);
        }
        let mut body = String::new();
        // Only for detail: a registry that trickles it gets cut short.
        let _ = Paced::new(
            res.body_mut().with_config().limit(64 << 10).reader(),
            self.timeouts.read,
        )
        .read_to_string(&mut body);
        let detail = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| {
                let e = v["errors"].as_array()?.first()?.clone();
                Some(format!(
                    " ({}: {})",
                    e["code"].as_str().unwrap_or("?"),
                    e["message"].as_str().unwrap_or("")
                ))
            })
            .unwrap_or_default();
        let text = format!(
            "{what}: HTTP {} {}{detail}",
            status.as_u16(),
            status.canonical_reason().unwrap_or("")
        );
        Err(if status.as_u16() == 404 {
            Error::NotFound(text)
        } else {
            Error::Registry(text)
        })
    }

    fn get_manifest(&self, reference: &str, expect: Option<&Digest>) -> Result<RawManifest, Error> {
        self.get_document(format!("manifests/{reference}"), expect)
    }

    /// A manifest or index at `path` (under `/v2/<repo>/`), bounded and, if
    /// `expect` names one, checked against its digest.
    fn get_document(&self, path: String, expect: Option<&Digest>) -> Result<RawManifest, Error> {
        let what = self.what("GET", &path);
        let limit = self.whole();
        let (ct, bytes) = retrying(&what, limit, &self.timeouts, || {
            let res = self.send_once(
                "GET",
                &self.url(&path),
                &[("Accept", MANIFEST_ACCEPT)],
                Body::Empty,
                &what,
                limit,
            )?;
            let mut res = self.check(res, &what, &[200])?;
            let ct = header(&res, "content-type").unwrap_or_default();
            let bytes = res
                .body_mut()
                .with_config()
                .limit(MAX_MANIFEST)
                .read_to_vec()
                .map_err(|e| body_failure(&what, e))?;
            Ok((ct, bytes))
        })?;
        let d = digest::of(&bytes);
        if let Some(want) = expect
            && &d != want
        {
            return Err(Error::Malformed(format!(
                "{what}: manifest has digest {d}, want {want}"
            )));
        }
        let mut media_type = ct.split(';').next().unwrap_or("").trim().to_string();
        if !media::is_manifest(&media_type) && !media::is_index(&media_type) {
            media_type = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v["mediaType"].as_str().map(str::to_string))
                .unwrap_or_else(|| media::OCI_MANIFEST.to_string());
        }
        Ok(RawManifest {
            media_type,
            digest: d,
            bytes,
        })
    }
}

impl ImageSource for Registry {
    fn root(&self) -> Result<RawManifest, Error> {
        let expect = if self.r.is_digest() {
            Some(digest::parse(&self.r.reference)?)
        } else {
            None
        };
        self.get_manifest(&self.r.reference, expect.as_ref())
    }

    fn manifest(&self, desc: &Descriptor) -> Result<RawManifest, Error> {
        self.get_manifest(desc.digest().as_ref(), Some(desc.digest()))
    }

    fn tagged(&self, tag: &str) -> Result<RawManifest, Error> {
        if !super::reference::valid_tag(tag) {
            return Err(Error::BadReference(format!("{tag:?} is not a valid tag")));
        }
        self.get_manifest(tag, None)
    }

    fn referrers(&self, digest: &Digest) -> Result<Option<RawManifest>, Error> {
        // A registry without the API (Debian's 2.8) answers 404.
        match self.get_document(format!("referrers/{digest}"), None) {
            Ok(index) => Ok(Some(index)),
            Err(Error::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn blob(&self, desc: &Descriptor) -> Result<Box<dyn Read + Send>, Error> {
        let path = format!("blobs/{}", desc.digest());
        let what = self.what("GET", &path);
        // However long the blob, its answer starts in time and keeps moving.
        let limit = Limit::Headers(deadline::within(self.timeouts.request));
        let res = self.send("GET", &self.url(&path), &[], Body::Empty, &what, limit)?;
        let res = self.check(res, &what, &[200])?;
        let reader = Paced::new(res.into_body().into_reader(), self.timeouts.read);
        Ok(Box::new(ErrorContext {
            inner: reader,
            what,
        }))
    }

    /// Retried (a reset, a short or misplaced answer) until the request's
    /// deadline, which is a file read's when one is waiting on it.
    fn blob_range(&self, desc: &Descriptor, offset: u64, len: u64) -> Result<Vec<u8>, Error> {
        let path = format!("blobs/{}", desc.digest());
        let what = self.what("GET", &path);
        if len == 0 {
            return Ok(Vec::new());
        }
        let last = offset
            .checked_add(len - 1)
            .ok_or_else(|| Error::Malformed(format!("{what}: range past 2^64")))?;
        let range = format!("bytes={offset}-{last}");
        let limit = self.whole();
        retrying(&what, limit, &self.timeouts, || {
            let res = self.send_once(
                "GET",
                &self.url(&path),
                &[("Range", &range)],
                Body::Empty,
                &what,
                limit,
            )?;
            let res = self.check(res, &what, &[200, 206])?;
            let skip = if res.status().as_u16() == 206 {
                let answered = header(&res, "content-range");
                range_skip(answered.as_deref(), offset, last).ok_or_else(|| TryError::Again {
                    error: Error::Registry(format!(
                        "{what}: answered Content-Range {:?} to a request for bytes {offset}-{last}",
                        answered.unwrap_or_default()
                    )),
                    after: None,
                })?
            } else {
                // The server ignored Range: skip to the offset.
                offset
            };
            let mut r = res.into_body().into_reader();
            io::copy(&mut (&mut r).take(skip), &mut io::sink())
                .map_err(|e| body_failure(&what, e.into()))?;
            let mut buf = Vec::with_capacity(len.min(16 << 20) as usize);
            r.take(len)
                .read_to_end(&mut buf)
                .map_err(|e| body_failure(&what, e.into()))?;
            if buf.len() as u64 != len {
                return Err(TryError::Again {
                    error: Error::Registry(format!(
                        "{what}: short range read: {} of {len} bytes at {offset}",
                        buf.len()
                    )),
                    after: None,
                });
            }
            Ok(buf)
        })
    }
}

/// Where the bytes `[offset, last]` asked for start in a 206 answer whose
/// `Content-Range` is `answered`: `None` unless it covers them.
fn range_skip(answered: Option<&str>, offset: u64, last: u64) -> Option<u64> {
    let spec = answered?.trim().strip_prefix("bytes ")?;
    let (span, _total) = spec.split_once('/')?;
    let (a, b) = span.split_once('-')?;
    let (a, b): (u64, u64) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    (a <= offset && last <= b).then(|| offset - a)
}

/// A failure reading an answer's body: another try if the connection
/// failed (a reset, a stall, a cut), else for good.
fn body_failure(what: &str, e: ureq::Error) -> TryError {
    let error = Error::Registry(format!("{what}: {e}"));
    if transient(&e) {
        TryError::Again { error, after: None }
    } else {
        TryError::Fatal(error)
    }
}

impl ImageDest for Registry {
    fn has_blob(&self, d: &Digest) -> Result<bool, Error> {
        let path = format!("blobs/{d}");
        let what = self.what("HEAD", &path);
        let res = self.send(
            "HEAD",
            &self.url(&path),
            &[],
            Body::Empty,
            &what,
            self.whole(),
        )?;
        match res.status().as_u16() {
            200 => Ok(true),
            404 => Ok(false),
            _ => self.check(res, &what, &[200]).map(|_| true),
        }
    }

    fn put_blob(&self, data: &mut dyn Read, _media_type: &str) -> Result<(Digest, u64), Error> {
        let what = self.what("POST", "blobs/uploads/");
        let res = self.send(
            "POST",
            &self.url("blobs/uploads/"),
            &[("Content-Length", "0")],
            Body::Empty,
            &what,
            self.whole(),
        )?;
        let res = self.check(res, &what, &[202])?;
        let loc = self.location(&res, &what)?;

        let what = self.what("PATCH", "blobs/uploads/…");
        let mut hashing = HashingReader::new(data);
        let res = self.send(
            "PATCH",
            &loc,
            &[("Content-Type", "application/octet-stream")],
            Body::Stream(&mut hashing),
            &what,
            // However long the blob: each write is held to the read timeout.
            Limit::Headers(deadline::within(self.timeouts.request)),
        );
        // A failing source (say, an HMAC mismatch at EOF) surfaces as a send error: report the source's.
        if let Some(e) = hashing.error.take() {
            return Err(Error::io("reading the blob to upload".to_string(), e));
        }
        let res = self.check(res?, &what, &[202, 204])?;
        let loc = self.location(&res, &what)?;
        let (d, n) = hashing.finish();

        let what = self.what("PUT", "blobs/uploads/…");
        let sep = if loc.contains('?') { '&' } else { '?' };
        let url = format!("{loc}{sep}digest={}", urlencode(d.as_ref()));
        let res = self.send(
            "PUT",
            &url,
            &[("Content-Length", "0")],
            Body::Empty,
            &what,
            self.whole(),
        )?;
        self.check(res, &what, &[201, 204])?;
        Ok((d, n))
    }

    fn put_manifest(&self, m: &RawManifest) -> Result<(), Error> {
        self.put_manifest_as(m, m.digest.as_ref())
    }

    fn commit(&self, root: &RawManifest) -> Result<(), Error> {
        if self.r.is_digest() {
            if root.digest.to_string() != self.r.reference {
                return Err(Error::BadReference(format!(
                    "{}: cannot write an image with digest {} under another digest",
                    self.r, root.digest
                )));
            }
            return self.put_manifest(root);
        }
        self.put_manifest_as(root, &self.r.reference.clone())
    }

    fn put_tagged(&self, m: &RawManifest, tag: &str) -> Result<(), Error> {
        if !super::reference::valid_tag(tag) {
            return Err(Error::BadReference(format!("{tag:?} is not a valid tag")));
        }
        self.put_manifest_as(m, tag)
    }

    fn put_referrer(
        &self,
        m: &RawManifest,
        subject: &Digest,
        artifact_type: &str,
    ) -> Result<(), Error> {
        self.put_manifest(m)?;
        // A registry with the referrers API lists the manifest by its
        // subject itself; for one without, the client keeps the fallback
        // tag's index (distribution spec, "Pushing Manifests with Subject").
        if ImageSource::referrers(self, subject)?.is_some() {
            return Ok(());
        }
        let tag = super::referrers::referrers_tag(subject);
        let current = match ImageSource::tagged(self, &tag) {
            Ok(raw) => Some(raw),
            Err(Error::NotFound(_)) => None,
            Err(e) => return Err(e),
        };
        match super::referrers::with_referrer(current.as_ref(), m, artifact_type, None)? {
            Some(index) => self.put_tagged(&index, &tag),
            None => Ok(()),
        }
    }

    fn abort(&self) {
        // Unreferenced blobs are the registry's garbage collector's job.
    }
}

impl Registry {
    fn put_manifest_as(&self, m: &RawManifest, reference: &str) -> Result<(), Error> {
        let path = format!("manifests/{reference}");
        let what = self.what("PUT", &path);
        let res = self.send(
            "PUT",
            &self.url(&path),
            &[("Content-Type", &m.media_type)],
            Body::Bytes(&m.bytes),
            &what,
            self.whole(),
        )?;
        self.check(res, &what, &[200, 201, 202])?;
        Ok(())
    }

    fn location(&self, res: &Response<ureq::Body>, what: &str) -> Result<String, Error> {
        let loc = header(res, "location")
            .ok_or_else(|| Error::Registry(format!("{what}: no Location header")))?;
        Ok(
            if loc.starts_with("http://") || loc.starts_with("https://") {
                loc
            } else if loc.starts_with('/') {
                format!("{}{loc}", self.base)
            } else {
                format!("{}/v2/{}/blobs/uploads/{loc}", self.base, self.r.repo)
            },
        )
    }
}

/// Hashes an upload stream and keeps the source's own error.
struct HashingReader<'a> {
    inner: &'a mut dyn Read,
    hasher: sha2::Sha256,
    len: u64,
    error: Option<io::Error>,
}

impl<'a> HashingReader<'a> {
    fn new(inner: &'a mut dyn Read) -> Self {
        use sha2::Digest as _;
        HashingReader {
            inner,
            hasher: sha2::Sha256::new(),
            len: 0,
            error: None,
        }
    }

    fn finish(self) -> (Digest, u64) {
        (digest::from_hasher(self.hasher), self.len)
    }
}

impl Read for HashingReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use sha2::Digest as _;
        match self.inner.read(buf) {
            Ok(n) => {
                self.hasher.update(&buf[..n]);
                self.len += n as u64;
                Ok(n)
            }
            Err(e) => {
                let copy = io::Error::new(e.kind(), e.to_string());
                self.error = Some(e);
                Err(copy)
            }
        }
    }
}

/// Prefixes read errors of a response body with the request they came from.
struct ErrorContext<R> {
    inner: R,
    what: String,
}

impl<R: Read> Read for ErrorContext<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner
            .read(buf)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", self.what)))
    }
}

/// A TLS handshake that failed, typically against a plain-HTTP registry.
fn tls_failure(e: &ureq::Error) -> bool {
    match e {
        ureq::Error::Rustls(_) | ureq::Error::Tls(_) => true,
        ureq::Error::Io(io) => io.kind() == io::ErrorKind::InvalidData,
        _ => false,
    }
}

fn header(res: &Response<ureq::Body>, name: &str) -> Option<String> {
    res.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Splits `Bearer realm="…",service="…"` into the scheme and its parameters.
fn parse_challenge(h: &str) -> (String, Vec<(String, String)>) {
    let h = h.trim();
    let (scheme, rest) = h.split_once(' ').unwrap_or((h, ""));
    let mut params = Vec::new();
    let mut rest = rest.trim();
    while !rest.is_empty() {
        let Some((k, after)) = rest.split_once('=') else {
            break;
        };
        let k = k.trim().trim_start_matches(',').trim().to_ascii_lowercase();
        let (v, after) = if let Some(q) = after.strip_prefix('"') {
            match q.find('"') {
                Some(end) => (q[..end].to_string(), &q[end + 1..]),
                None => (q.to_string(), ""),
            }
        } else {
            match after.find(',') {
                Some(end) => (after[..end].trim().to_string(), &after[end..]),
                None => (after.trim().to_string(), ""),
            }
        };
        params.push((k, v));
        rest = after.trim_start_matches([',', ' ']);
    }
    (scheme.to_string(), params)
}

/// The absolute URL a `Location` header names, relative to `current`;
/// `None` unless it is `http`/`https`.
fn resolve_location(current: &str, loc: &str) -> Option<String> {
    let uri: http::Uri = current.parse().ok()?;
    let scheme = uri.scheme_str()?;
    let authority = uri.authority()?.as_str();
    let lower = loc.to_ascii_lowercase();
    let url = if lower.starts_with("http://") || lower.starts_with("https://") {
        loc.to_string()
    } else if let Some(rest) = loc.strip_prefix("//") {
        format!("{scheme}://{rest}")
    } else if loc.starts_with('/') {
        format!("{scheme}://{authority}{loc}")
    } else if loc
        .split('/')
        .next()
        .is_some_and(|first| first.contains(':'))
    {
        return None; // another scheme
    } else {
        let dir = uri.path().rsplit_once('/').map(|(d, _)| d).unwrap_or("");
        format!("{scheme}://{authority}{dir}/{loc}")
    };
    Origin::of(&url).map(|_| url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_challenges() {
        let (s, p) = parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="reg",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(s, "Bearer");
        assert_eq!(p[0], ("realm".into(), "https://auth.example/token".into()));
        assert_eq!(p[2], ("scope".into(), "repository:a/b:pull,push".into()));
        assert_eq!(
            urlencode("repository:a/b:pull"),
            "repository%3Aa%2Fb%3Apull"
        );
    }

    #[test]
    fn resolves_redirect_locations() {
        let cur = "http://127.0.0.1:5000/v2/a/b/blobs/sha256:x?y=1";
        let r = |loc: &str| resolve_location(cur, loc);
        assert_eq!(
            r("https://s3.example/o?sig=1").as_deref(),
            Some("https://s3.example/o?sig=1")
        );
        assert_eq!(
            r("//cdn.example/o").as_deref(),
            Some("http://cdn.example/o")
        );
        assert_eq!(r("/v2/o").as_deref(), Some("http://127.0.0.1:5000/v2/o"));
        assert_eq!(
            r("o").as_deref(),
            Some("http://127.0.0.1:5000/v2/a/b/blobs/o")
        );
        assert_eq!(r("file:///etc/passwd"), None);
        assert_eq!(r("ftp://x/y"), None);
    }
}
