//! `lazycrypt bench`: the workload generator, and a tiny cold-start run
//! through all four paths with real containerd, runc, skopeo and registry.
//! Nothing here is timed; the tests check what the benchmark produces.

mod common;

use common::*;

#[test]
fn generated_workloads_are_deterministic_images_with_their_declared_layers() {
    let d = tmp();
    let gen_into = |out: &std::path::Path| {
        ok(lazycrypt()
            .args([
                "bench",
                "gen",
                "--workload",
                "many-layers",
                "--scale",
                "0.05",
                "--out",
            ])
            .arg(out))
    };
    let out = gen_into(&d.path().join("one"));
    assert!(out.starts_with("many-layers: oci:"), "{out}");
    // A second later: file times must not leak into the digests.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    gen_into(&d.path().join("two"));
    let image = |dir: &str| {
        format!(
            "oci:{}:many-layers",
            d.path().join(dir).join("many-layers/image").display()
        )
    };
    let layers = layer_digests(&image("one"));
    assert_eq!(layers.len(), 20);
    assert_eq!(
        layers,
        layer_digests(&image("two")),
        "generation is not deterministic"
    );

    let record: serde_json::Value = serde_json::from_slice(
        &std::fs::read(d.path().join("one/many-layers/workload.json")).unwrap(),
    )
    .unwrap();
    let (read, size) = (
        record["read_bytes"].as_u64().unwrap(),
        record["image_bytes"].as_u64().unwrap(),
    );
    assert!(read > 0 && read < size / 10, "reads {read} of {size}");
    // The layer trees (plaintext inputs) are gone; only the image stays.
    assert!(!d.path().join("one/many-layers/layers").exists());

    let err = fails(lazycrypt().args(["bench", "gen", "--workload", "java-like"]));
    assert!(
        err.contains(
            "unknown workload \"java-like\"; the workloads are python-like, model-serving, many-layers"
        ),
        "{err}"
    );
}

#[test]
fn a_tiny_cold_start_run_reports_every_path() {
    let d = tmp();
    let out = d.path().join("results");
    let stdout = ok(lazycrypt()
        .args([
            "bench",
            "cold-start",
            "--workload",
            "python-like",
            "--scale",
            "0.01",
            "--runs",
            "1",
            "--work",
        ])
        .arg(d.path().join("work"))
        .arg("--out")
        .arg(&out));
    for row in [
        "| python-like | (a) lazycrypt lazy, encrypted eStargz | 1 |",
        "| python-like | (b) lazycrypt lazy, skopeo-encrypted tar.gz | 1 |",
        "| python-like | (c) containerd pull + decrypt + unpack | 1 |",
        "| python-like | (d) containerd pull + unpack, unencrypted | 1 |",
    ] {
        assert!(stdout.contains(row), "{row} missing:\n{stdout}");
    }
    assert!(stdout.contains("- python-like: (c)/(a) = "), "{stdout}");
    let results: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("results.json")).unwrap()).unwrap();
    let samples = results["samples"].as_array().unwrap();
    assert_eq!(samples.len(), 4);
    for s in samples {
        assert!(s["error"].is_null(), "{s}");
        assert!(s["ready_ms"].as_f64().unwrap() > 0.0, "{s}");
        assert!(s["fetched"].as_u64().unwrap() > 0, "{s}");
        assert!(s["lazycrypt_peak_rss_kib"].as_u64().unwrap() > 0, "{s}");
    }
    assert_eq!(results["summary"].as_array().unwrap().len(), 4);
    let md = std::fs::read_to_string(out.join("results.md")).unwrap();
    assert!(stdout.starts_with(&md), "stdout is the Markdown report");
    let svg = std::fs::read_to_string(out.join("chart.svg")).unwrap();
    assert!(
        svg.contains("<svg") && svg.contains("(a) lazycrypt lazy"),
        "{svg:.300}"
    );
    // Nothing is left mounted or running from the benchmark's nodes.
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(!mounts.contains(&*d.path().to_string_lossy()), "{mounts}");
}

/// Path (e): path (b)'s kind of image, skopeo-encrypted tar.gz, with a
/// seek index published beside it before the runs; the node serves it
/// through the index, and the report compares it with (a).
#[test]
fn the_seek_indexed_path_runs_beside_a() {
    let d = tmp();
    let out = d.path().join("results");
    let stdout = ok(lazycrypt()
        .args(["bench", "cold-start", "--workload", "python-like"])
        .args(["--scale", "0.01", "--runs", "1", "--paths", "a,e"])
        .arg("--work")
        .arg(d.path().join("work"))
        .arg("--out")
        .arg(&out));
    let row = "| python-like | (e) lazycrypt lazy, skopeo-encrypted tar.gz + seek index | 1 |";
    assert!(stdout.contains(row), "{row} missing:\n{stdout}");
    assert!(stdout.contains("(e)/(a) = "), "{stdout}");
    let results: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("results.json")).unwrap()).unwrap();
    for s in results["samples"].as_array().unwrap() {
        assert!(s["error"].is_null(), "{s}");
    }
}

/// Path (s): the image signed by a key the benchmark makes, and the node's
/// `lazycrypt serve` requiring that signature. Its run starts only if the
/// daemon accepted the signature, and the report shows it beside (a).
#[test]
fn the_signed_path_runs_beside_a_with_the_daemon_verifying() {
    let d = tmp();
    let work = d.path().join("work");
    let out = d.path().join("results");
    let stdout = ok(lazycrypt()
        .args(["bench", "cold-start", "--workload", "python-like"])
        .args(["--scale", "0.01", "--runs", "1", "--paths", "a,s"])
        .arg("--work")
        .arg(&work)
        .arg("--out")
        .arg(&out));
    for row in [
        "| python-like | (a) lazycrypt lazy, encrypted eStargz | 1 |",
        "| python-like | (s) lazycrypt lazy, encrypted eStargz, signed (serve --policy) | 1 |",
    ] {
        assert!(stdout.contains(row), "{row} missing:\n{stdout}");
    }
    assert!(stdout.contains("- python-like: (s)−(a) = "), "{stdout}");
    assert!(stdout.contains("(verdict in lazycrypt serve: "), "{stdout}");
    let results: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("results.json")).unwrap()).unwrap();
    let samples = results["samples"].as_array().unwrap();
    assert_eq!(samples.len(), 2, "{results}");
    for s in samples {
        assert!(s["error"].is_null(), "{s}");
        // The daemon of (a) has no policy; that of (s) accepted one image.
        let want = if s["path"] == "S" { 1 } else { 0 };
        assert_eq!(s["verdicts_accepted"], want, "{s}");
    }
    // The policy requires the benchmark's key for its registry, and
    // rejects everything else.
    let policy: serde_json::Value =
        serde_json::from_slice(&std::fs::read(work.join("signing/policy.json")).unwrap()).unwrap();
    assert_eq!(policy["default"][0]["type"], "reject", "{policy}");
    let docker = policy["transports"]["docker"].as_object().unwrap();
    let (_, req) = docker.iter().next().unwrap();
    assert_eq!(req[0]["type"], "sigstoreSigned", "{policy}");
    assert_eq!(req[0]["signedIdentity"]["type"], "matchRepository");
    // The key is cosign's format, sealed, and private to its owner.
    let key = work.join("signing/cosign.key");
    let pem = std::fs::read_to_string(&key).unwrap();
    assert!(pem.starts_with("-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----"));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o077,
        0
    );
}

#[test]
fn a_signal_stops_the_benchmark_and_tears_down_its_node_and_registry() {
    use std::io::BufRead;
    let d = tmp();
    let work = d.path().join("work");
    let out = d.path().join("results");
    let mut child = lazycrypt()
        .args(["bench", "cold-start", "--workload", "python-like"])
        .args(["--scale", "0.01", "--runs", "20", "--paths", "a"])
        .args(["--shape", "1gbit"])
        .arg("--work")
        .arg(&work)
        .arg("--out")
        .arg(&out)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut log = String::new();
    // Once the first run is in, the second is under way: stop it there.
    while !log.contains("run 1:") {
        let mut l = String::new();
        assert!(err.read_line(&mut l).unwrap() > 0, "ended early:\n{log}");
        log.push_str(&l);
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut err, &mut rest).unwrap();
    log.push_str(&rest);
    let status = child.wait().unwrap();
    assert!(!status.success(), "{log}");
    assert!(log.contains("stopping"), "{log}");
    assert!(log.contains("stopped by a signal"), "{log}");
    // What was measured is kept; the run cut short is not recorded.
    let results: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("results.json")).unwrap()).unwrap();
    let samples = results["samples"].as_array().unwrap();
    assert!(!samples.is_empty() && samples.len() < 20, "{results}");
    assert!(samples.iter().all(|s| s["error"].is_null()), "{results}");
    // Nothing of the node or the registry is left.
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(!mounts.contains(&*work.to_string_lossy()), "{mounts}");
    assert!(!work.join("node").exists());
    let netns = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    let netns = String::from_utf8_lossy(&netns.stdout);
    assert!(
        !netns.contains(&format!("lazycrypt-bench-{pid}")),
        "{netns}"
    );
    for p in std::fs::read_dir("/proc").unwrap().flatten() {
        let cmd = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&cmd).contains(&*work.to_string_lossy()),
            "still running: {}",
            String::from_utf8_lossy(&cmd).replace('\0', " ")
        );
    }
}

#[test]
fn bad_benchmark_arguments_name_what_is_wrong() {
    let err = fails(lazycrypt().args(["bench", "cold-start", "--paths", "a,x"]));
    assert!(
        err.contains("unknown path \"x\"; the paths are a, b, c, d, e, s"),
        "{err}"
    );
    let err = fails(lazycrypt().args(["bench", "cold-start", "--shape", "fast"]));
    assert!(
        err.contains("rate \"fast\": want a number with gbit, mbit or kbit"),
        "{err}"
    );
    let err = fails(lazycrypt().args(["bench", "cold-start", "--workload", "java-like"]));
    assert!(err.contains("unknown workload \"java-like\""), "{err}");
}
