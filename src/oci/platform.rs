//! Platforms (`os/arch[/variant]`) and matching them against index entries.

use std::fmt;

use super::Error;

/// A platform as users write it: `linux/amd64`, `linux/arm64/v8`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub arch: String,
    pub variant: Option<String>,
}

impl Platform {
    /// Parses `os/arch[/variant]`.
    pub fn parse(s: &str) -> Result<Self, Error> {
        let parts: Vec<&str> = s.split('/').collect();
        match parts.as_slice() {
            [os, arch] if !os.is_empty() && !arch.is_empty() => Ok(Platform {
                os: os.to_string(),
                arch: arch.to_string(),
                variant: None,
            }),
            [os, arch, v] if !os.is_empty() && !arch.is_empty() && !v.is_empty() => Ok(Platform {
                os: os.to_string(),
                arch: arch.to_string(),
                variant: Some(v.to_string()),
            }),
            _ => Err(Error::BadReference(format!(
                "invalid platform {s:?} (want OS/ARCH[/VARIANT])"
            ))),
        }
    }

    /// The platform this binary runs on, in OCI's names.
    pub fn host() -> Self {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            other => other,
        };
        Platform {
            os: std::env::consts::OS.to_string(),
            arch: arch.to_string(),
            variant: None,
        }
    }

    /// Does an index entry's platform match? A missing variant matches any.
    pub fn matches(&self, p: &oci_spec::image::Platform) -> bool {
        p.os().to_string() == self.os
            && p.architecture().to_string() == self.arch
            && match (&self.variant, p.variant()) {
                (Some(want), Some(got)) => want == got,
                _ => true,
            }
    }

    /// Formats an index entry's platform.
    pub fn describe(p: &oci_spec::image::Platform) -> String {
        match p.variant() {
            Some(v) => format!("{}/{}/{v}", p.os(), p.architecture()),
            None => format!("{}/{}", p.os(), p.architecture()),
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.variant {
            Some(v) => write!(f, "{}/{}/{v}", self.os, self.arch),
            None => write!(f, "{}/{}", self.os, self.arch),
        }
    }
}
