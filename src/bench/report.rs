//! Benchmark results as a Markdown table, JSON and an SVG chart.

use std::io;
use std::path::Path;

use serde::Serialize;

use super::coldstart::{Results, Sample, StartPath};

/// Median and spread of one measure over the successful runs.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Stat {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Stat {
    fn of(mut v: Vec<f64>) -> Option<Stat> {
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Stat {
            median,
            min: v[0],
            max: v[n - 1],
        })
    }
}

/// One workload through one path, summarized.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub workload: String,
    pub path: StartPath,
    pub ok: usize,
    pub failed: usize,
    pub ready_ms: Option<Stat>,
    pub fetched_bytes: Option<Stat>,
    pub lazycrypt_peak_rss_mib: Option<Stat>,
    pub cpu_seconds: Option<Stat>,
    /// Time `lazycrypt serve` spent on signature verdicts, per run (paths
    /// with a policy).
    pub verify_ms: Option<Stat>,
    pub errors: Vec<String>,
}

/// Summaries in workload order, then path order.
pub fn summarize(r: &Results) -> Vec<Summary> {
    let mut keys: Vec<(String, StartPath)> = Vec::new();
    for s in &r.samples {
        if !keys.iter().any(|(w, p)| *w == s.workload && *p == s.path) {
            keys.push((s.workload.clone(), s.path));
        }
    }
    keys.sort_by_key(|(w, p)| (r.workloads.iter().position(|i| i.name == *w), *p));
    keys.into_iter()
        .map(|(w, p)| {
            let runs: Vec<&Sample> = r
                .samples
                .iter()
                .filter(|s| s.workload == w && s.path == p)
                .collect();
            let good: Vec<&&Sample> = runs.iter().filter(|s| s.error.is_none()).collect();
            let stat = |f: &dyn Fn(&Sample) -> Option<f64>| {
                Stat::of(good.iter().filter_map(|s| f(s)).collect())
            };
            let mut errors: Vec<String> = runs.iter().filter_map(|s| s.error.clone()).collect();
            errors.dedup();
            Summary {
                ok: good.len(),
                failed: runs.len() - good.len(),
                ready_ms: stat(&|s| s.ready_ms),
                fetched_bytes: stat(&|s| s.fetched.map(|b| b as f64)),
                lazycrypt_peak_rss_mib: stat(&|s| {
                    s.lazycrypt_peak_rss_kib.map(|k| k as f64 / 1024.0)
                }),
                cpu_seconds: stat(&|s| s.cpu_seconds),
                verify_ms: stat(&|s| s.verify_ms.filter(|_| s.verdicts_accepted > Some(0))),
                errors,
                workload: w,
                path: p,
            }
        })
        .collect()
}

/// `1.5 MiB`.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

fn spread(s: &Option<Stat>, digits: usize) -> String {
    match s {
        Some(s) => format!("{:.d$} ({:.d$}–{:.d$})", s.median, s.min, s.max, d = digits),
        None => "—".into(),
    }
}

/// The Markdown report: the table, then the ratios against the targets.
pub fn markdown(r: &Results) -> String {
    let sums = summarize(r);
    let mut m = String::new();
    m.push_str(&format!(
        "Machine: {}. Network: {}. lazycrypt cache: {}, read-ahead: {}, eStargz chunks: {}.\n\n",
        r.machine,
        r.shaping.as_deref().unwrap_or("loopback, unshaped"),
        r.cache_size,
        r.read_ahead,
        r.chunk_size
    ));
    m.push_str("| workload | image | read at start-up | layers |\n|---|---|---|---|\n");
    for w in &r.workloads {
        m.push_str(&format!(
            "| {} | {} | {} ({:.1}%) | {} |\n",
            w.name,
            mib(w.image_bytes),
            mib(w.read_bytes),
            100.0 * w.read_bytes as f64 / w.image_bytes.max(1) as f64,
            w.layers
        ));
    }
    m.push_str(
        "\n| workload | path | runs | time to ready, ms (median, min–max) | fetched from registry, MiB | lazycrypt peak RSS, MiB | CPU s |\n|---|---|---|---|---|---|---|\n",
    );
    for s in &sums {
        let fetched = s.fetched_bytes.map(|f| Stat {
            median: f.median / (1 << 20) as f64,
            min: f.min / (1 << 20) as f64,
            max: f.max / (1 << 20) as f64,
        });
        m.push_str(&format!(
            "| {} | ({}) {} | {}{} | {} | {} | {} | {} |\n",
            s.workload,
            s.path.letter(),
            s.path.describe(),
            s.ok,
            if s.failed > 0 {
                format!(" (+{} failed)", s.failed)
            } else {
                String::new()
            },
            spread(&s.ready_ms, 0),
            spread(&fetched, 1),
            spread(&s.lazycrypt_peak_rss_mib, 0),
            spread(&s.cpu_seconds, 2),
        ));
    }
    m.push_str("\nRatios (medians):\n\n");
    for w in &r.workloads {
        let get = |p: StartPath| sums.iter().find(|s| s.workload == w.name && s.path == p);
        let t = |p| get(p).and_then(|s| s.ready_ms).map(|s| s.median);
        let mut line = format!("- {}:", w.name);
        if let (Some(a), Some(c)) = (t(StartPath::A), t(StartPath::C)) {
            line.push_str(&format!(" (c)/(a) = {:.1}×;", c / a));
        }
        if let (Some(a), Some(d)) = (t(StartPath::A), t(StartPath::D)) {
            line.push_str(&format!(" (d)/(a) = {:.1}×;", d / a));
        }
        if let (Some(a), Some(s)) = (t(StartPath::A), t(StartPath::S)) {
            line.push_str(&format!(" (s)−(a) = {:+.0} ms", s - a));
            if let Some(v) = get(StartPath::S).and_then(|s| s.verify_ms) {
                line.push_str(&format!(
                    " (verdict in lazycrypt serve: {})",
                    spread(&Some(v), 1)
                ));
            }
            line.push(';');
        }
        if let (Some(b), Some(c)) = (t(StartPath::B), t(StartPath::C)) {
            line.push_str(&format!(" (b)/(c) = {:.2};", b / c));
        }
        if let (Some(a), Some(e)) = (t(StartPath::A), t(StartPath::E)) {
            line.push_str(&format!(" (e)/(a) = {:.2};", e / a));
        }
        if let Some(f) = get(StartPath::E).and_then(|s| s.fetched_bytes) {
            line.push_str(&format!(
                " (e) fetched / read = {:.2};",
                f.median / w.read_bytes.max(1) as f64
            ));
            if let Some(a) = w.artifact_bytes {
                line.push_str(&format!(
                    " (e) artifact {}, fetched beyond it / read = {:.2};",
                    mib(a),
                    (f.median - a as f64) / w.read_bytes.max(1) as f64
                ));
            }
        }
        if let Some(f) = get(StartPath::A).and_then(|s| s.fetched_bytes) {
            line.push_str(&format!(
                " (a) fetched / read = {:.2};",
                f.median / w.read_bytes.max(1) as f64
            ));
        }
        m.push_str(line.trim_end_matches(';'));
        m.push('\n');
    }
    for s in sums.iter().filter(|s| !s.errors.is_empty()) {
        m.push_str(&format!(
            "\n{} ({}) failed: {}\n",
            s.workload,
            s.path.letter(),
            s.errors.join("; ")
        ));
    }
    for n in &r.notes {
        m.push_str(&format!("\nNote: {n}\n"));
    }
    m
}

/// Writes `results.json`, `results.md` and `chart.svg` into `dir`.
pub fn write(r: &Results, dir: &Path) -> io::Result<()> {
    #[derive(Serialize)]
    struct Out<'a> {
        #[serde(flatten)]
        results: &'a Results,
        summary: Vec<Summary>,
    }
    let json = serde_json::to_vec_pretty(&Out {
        results: r,
        summary: summarize(r),
    })
    .map_err(io::Error::other)?;
    std::fs::write(dir.join("results.json"), json)?;
    std::fs::write(dir.join("results.md"), markdown(r))?;
    chart(r, &dir.join("chart.svg"))
}

/// Grouped bars: median time to ready per workload, one bar per path.
fn chart(r: &Results, file: &Path) -> io::Result<()> {
    use plotters::prelude::*;
    let sums = summarize(r);
    let names: Vec<&str> = r.workloads.iter().map(|w| w.name.as_str()).collect();
    let top = sums
        .iter()
        .filter_map(|s| s.ready_ms.map(|t| t.max))
        .fold(1.0, f64::max)
        * 1.1;
    // One per path, in StartPath::ALL's order: the type keeps them in step.
    let colors: [RGBColor; StartPath::ALL.len()] = [
        RGBColor(0x1b, 0x9e, 0x77),
        RGBColor(0x66, 0xa6, 0x1e),
        RGBColor(0x75, 0x70, 0xb3),
        RGBColor(0xe7, 0x29, 0x8a),
        RGBColor(0xd9, 0x5f, 0x02),
        RGBColor(0x66, 0x66, 0x66),
    ];
    let draw = || -> Result<(), Box<dyn std::error::Error>> {
        let root = SVGBackend::new(file, (900, 480)).into_drawing_area();
        root.fill(&WHITE)?;
        let n = names.len().max(1) as f64;
        let mut c = ChartBuilder::on(&root)
            .caption(
                "Time to ready (median of runs; lower is better)",
                ("sans-serif", 20),
            )
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(64)
            .build_cartesian_2d(0.0..n, 0.0..top)?;
        c.configure_mesh()
            .disable_x_mesh()
            .x_labels(names.len().max(1))
            .x_label_formatter(&|x| {
                let i = x.floor() as usize;
                if (x - x.floor() - 0.5).abs() < 0.01 {
                    names.get(i).map(|s| s.to_string()).unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .y_desc("ms")
            .draw()?;
        for (k, p) in StartPath::ALL.iter().enumerate() {
            let color = colors[k];
            let bars: Vec<_> = names
                .iter()
                .enumerate()
                .filter_map(|(i, w)| {
                    let t = sums
                        .iter()
                        .find(|s| s.workload == *w && s.path == *p)?
                        .ready_ms?
                        .median;
                    let x0 = i as f64 + 0.1 + 0.16 * k as f64;
                    Some(Rectangle::new([(x0, 0.0), (x0 + 0.14, t)], color.filled()))
                })
                .collect();
            if bars.is_empty() {
                continue;
            }
            c.draw_series(bars)?
                .label(format!("({}) {}", p.letter(), p.describe()))
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled())
                });
        }
        c.configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .draw()?;
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| io::Error::other(format!("chart {}: {e}", file.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::coldstart::WorkloadInfo;

    fn sample(path: StartPath, run: usize, ms: Option<f64>) -> Sample {
        Sample {
            workload: "w".into(),
            path,
            run,
            ready_ms: ms,
            pull_ms: None,
            fetched: ms.map(|_| 3 << 20),
            lazycrypt_peak_rss_kib: ms.map(|_| 100 << 10),
            cpu_seconds: ms.map(|_| 0.5),
            verdicts_accepted: ms.map(|_| u64::from(path == StartPath::S)),
            verify_ms: ms.map(|_| 4.0),
            error: ms.is_none().then(|| "registry down".to_string()),
        }
    }

    #[test]
    fn summaries_keep_failures_and_the_report_shows_ratios() {
        let r = Results {
            workloads: vec![WorkloadInfo {
                name: "w".into(),
                layers: 3,
                files: 10,
                image_bytes: 100 << 20,
                read_bytes: 2 << 20,
                artifact_bytes: None,
            }],
            samples: vec![
                sample(StartPath::A, 1, Some(100.0)),
                sample(StartPath::A, 2, Some(300.0)),
                sample(StartPath::A, 3, Some(200.0)),
                sample(StartPath::C, 1, Some(2000.0)),
                sample(StartPath::S, 1, Some(212.0)),
                sample(StartPath::D, 1, None),
            ],
            ..Default::default()
        };
        let s = summarize(&r);
        assert_eq!(s.len(), 4);
        assert_eq!(s[0].verify_ms, None, "(a) has no policy");
        assert_eq!(s[1].path, StartPath::S, "(s) is next to (a)");
        assert_eq!(
            s[0].ready_ms,
            Some(Stat {
                median: 200.0,
                min: 100.0,
                max: 300.0
            })
        );
        assert_eq!((s[3].ok, s[3].failed), (0, 1));
        let md = markdown(&r);
        assert!(
            md.contains(
                "- w: (c)/(a) = 10.0×; (s)−(a) = +12 ms (verdict in lazycrypt serve: 4.0 (4.0–4.0)); (a) fetched / read = 1.50\n"
            ),
            "{md}"
        );
        assert!(md.contains("w (d) failed: registry down"), "{md}");
        let dir = tempfile::tempdir().unwrap();
        write(&r, dir.path()).unwrap();
        let svg = std::fs::read_to_string(dir.path().join("chart.svg")).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.contains("lazycrypt lazy"),
            "{svg:.200}"
        );
    }
}
