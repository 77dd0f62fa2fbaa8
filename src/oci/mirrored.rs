//! An image source that tries a registry's mirrors in order (see
//! [`super::hosts`]): the first endpoint that answers serves the call.

use std::io::Read;

use super::digest::Digest;
use super::hosts::Endpoint;
use super::reference::RegistryRef;
use super::registry::{Registry, RegistryOptions};
use super::transport::{ImageSource, RawManifest};
use super::{Descriptor, Error};

/// Opens repository `r`: through the mirrors `hosts_dir` names for its host
/// when there are any, else directly.
pub fn open(
    r: &RegistryRef,
    hosts_dir: Option<&std::path::Path>,
    opts: &RegistryOptions,
) -> Result<Box<dyn ImageSource>, Error> {
    if let Some(dir) = hosts_dir {
        let eps = super::hosts::endpoints(dir, &r.host).map_err(Error::Malformed)?;
        if !eps.is_empty() {
            return Ok(Box::new(Mirrored::new(r, &eps, opts)?));
        }
    }
    Ok(Box::new(Registry::new(r.clone(), opts)?))
}

/// A repository reached through its mirrors, then its own server. Each
/// endpoint has its own credentials ([`Registry::at`]): a mirror never gets
/// the registry's.
pub struct Mirrored {
    endpoints: Vec<(Endpoint, Registry)>,
}

impl Mirrored {
    pub fn new(
        r: &RegistryRef,
        endpoints: &[Endpoint],
        opts: &RegistryOptions,
    ) -> Result<Self, Error> {
        let endpoints = endpoints
            .iter()
            .map(|e| {
                let reg = Registry::at(r.clone(), e.base.clone(), e.headers.clone(), opts)?;
                Ok((e.clone(), reg))
            })
            .collect::<Result<Vec<_>, Error>>()?;
        Ok(Mirrored { endpoints })
    }

    /// Runs `f` against each endpoint that `can` do it, until one succeeds.
    fn first<T>(
        &self,
        can: impl Fn(&Endpoint) -> bool,
        f: impl Fn(&Registry) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let mut last = None;
        for (e, reg) in self.endpoints.iter().filter(|(e, _)| can(e)) {
            match f(reg) {
                Ok(v) => return Ok(v),
                Err(err) => {
                    tracing::debug!("{}: {err}; trying the next endpoint", e.base);
                    last = Some(err);
                }
            }
        }
        Err(last.unwrap_or_else(|| Error::Malformed("no endpoint may serve this".into())))
    }
}

impl ImageSource for Mirrored {
    fn root(&self) -> Result<RawManifest, Error> {
        self.first(|e| e.resolve, |r| r.root())
    }

    fn manifest(&self, desc: &Descriptor) -> Result<RawManifest, Error> {
        self.first(|e| e.pull, |r| r.manifest(desc))
    }

    fn blob(&self, desc: &Descriptor) -> Result<Box<dyn Read + Send>, Error> {
        self.first(|e| e.pull, |r| r.blob(desc))
    }

    fn tagged(&self, tag: &str) -> Result<RawManifest, Error> {
        self.first(|e| e.resolve, |r| r.tagged(tag))
    }

    fn referrers(&self, digest: &Digest) -> Result<Option<RawManifest>, Error> {
        self.first(|e| e.resolve, |r| r.referrers(digest))
    }

    fn blob_range(&self, desc: &Descriptor, offset: u64, len: u64) -> Result<Vec<u8>, Error> {
        self.first(|e| e.pull, |r| r.blob_range(desc, offset, len))
    }
}
