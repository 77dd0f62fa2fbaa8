//! containerd's filter syntax, as `Walk` requests carry it, matched against
//! a snapshot's info.
#![no_main]

use std::collections::BTreeMap;
use std::time::SystemTime;

use lazycrypt::snapshotter::filter::Filter;
use lazycrypt::snapshotter::meta::Kind;
use lazycrypt::snapshotter::store::Info;
use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: lazycrypt_fuzz::write_seeds(|| [
        "name==snap,kind==committed",
        r#"labels."containerd.io/gc.root"!="x\"y",parent"#,
        "labels.a , kind != view",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()),
    |data: &[u8]| {
        let Ok(s) = std::str::from_utf8(data) else { return };
        if let Ok(f) = Filter::parse(s) {
            let info = Info {
                name: "snap".into(),
                parent: String::new(),
                kind: Kind::Committed,
                created: SystemTime::UNIX_EPOCH,
                updated: SystemTime::UNIX_EPOCH,
                labels: BTreeMap::from([("a".into(), "b".into())]),
            };
            let _ = f.matches(&info);
        }
    }
);
