//! containerd's `hosts.toml` (mirrors, capabilities, headers).
#![no_main]

use lazycrypt::oci::hosts;
use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: lazycrypt_fuzz::write_seeds(|| vec![
        b"server = \"https://registry.example.com\"\n[header]\n  x-a = \"b\"\n\
          [host.\"http://127.0.0.1:5000\"]\n  capabilities = [\"pull\", \"resolve\"]\n\
          [host.\"https://m.example/v2\".header]\n  Authorization = [\"Basic eDp5\"]\n"
            .to_vec(),
    ]),
    |data: &[u8]| {
        if let Ok(s) = std::str::from_utf8(data) {
            let _ = hosts::parse(s, "registry.example.com", std::path::Path::new("hosts.toml"));
        }
    }
);
