//! `lazycrypt bench`: generate workload images, and measure cold starts.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args as ClapArgs, Subcommand};

use crate::bench::coldstart::{self, StartPath};
use crate::bench::node::Shaping;
use crate::bench::workload::{NAMES, Workload, generate};

#[derive(ClapArgs)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate workload images (plain OCI layouts) and their start-up reads.
    Gen(GenArgs),
    /// Start each workload from a cold node through each path, and report.
    ColdStart(ColdStartArgs),
}

#[derive(ClapArgs)]
struct GenArgs {
    /// Workloads to generate (repeatable) [default: all: python-like,
    /// model-serving, many-layers].
    #[arg(long = "workload", value_name = "NAME")]
    workloads: Vec<String>,
    /// Multiplies every size and count (1: up to 1 GiB per image).
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// Directory for `<workload>/image` and `<workload>/workload.json`.
    #[arg(long, default_value = "bench-images")]
    out: PathBuf,
}

#[derive(ClapArgs)]
struct ColdStartArgs {
    /// Workloads to run (repeatable) [default: all].
    #[arg(long = "workload", value_name = "NAME")]
    workloads: Vec<String>,
    /// Paths to compare, comma-separated: (a) lazycrypt eStargz, (b)
    /// lazycrypt skopeo tar.gz, (c) containerd decrypt + unpack, (d)
    /// containerd unencrypted.
    #[arg(long, default_value = "a,b,c,d", value_delimiter = ',', value_parser = StartPath::parse)]
    paths: Vec<StartPath>,
    /// Repetitions of each workload through each path.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Multiplies every size and count of the workloads.
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// Shape the registry's link with `tc` in a network namespace of the
    /// benchmark's own: RATE[,DELAY_MS], e.g. `1gbit,1` or `100mbit,5`.
    #[arg(long, value_name = "RATE[,DELAY_MS]", value_parser = parse_shaping)]
    shape: Option<Shaping>,
    /// Generated images, registry data and node state.
    #[arg(long, default_value = "/var/tmp/lazycrypt-bench")]
    work: PathBuf,
    /// Where `results.md`, `results.json` and `chart.svg` go.
    #[arg(long, default_value = "bench-results")]
    out: PathBuf,
    /// lazycrypt's chunk cache budget.
    #[arg(long, default_value = "256M")]
    cache_size: String,
    /// The kernel's read-ahead on lazycrypt's layer mounts (`serve --read-ahead`).
    #[arg(long, default_value = "auto")]
    read_ahead: String,
    /// The eStargz chunk size of path (a)'s image (`encrypt --chunk-size`):
    /// smaller chunks fetch less for partial reads of big files.
    #[arg(long, default_value = "256K")]
    chunk_size: String,
    /// Print the results as JSON instead of the Markdown table.
    #[arg(long)]
    json: bool,
}

fn parse_shaping(s: &str) -> Result<Shaping, String> {
    let (rate, delay) = s.split_once(',').unwrap_or((s, "0"));
    let ok_rate = rate
        .strip_suffix("gbit")
        .or_else(|| rate.strip_suffix("mbit"))
        .or_else(|| rate.strip_suffix("kbit"))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    if !ok_rate {
        return Err(format!(
            "rate {rate:?}: want a number with gbit, mbit or kbit"
        ));
    }
    let delay_ms = delay
        .parse()
        .map_err(|_| format!("delay {delay:?}: want milliseconds"))?;
    Ok(Shaping {
        rate: rate.to_string(),
        delay_ms,
    })
}

fn workloads(names: &[String]) -> Vec<String> {
    if names.is_empty() {
        NAMES.iter().map(|s| s.to_string()).collect()
    } else {
        names.to_vec()
    }
}

pub fn run(a: Args) -> Result<()> {
    match a.command {
        Command::Gen(g) => gen_images(g),
        Command::ColdStart(c) => cold_start(c),
    }
}

fn gen_images(a: GenArgs) -> Result<()> {
    let names = workloads(&a.workloads);
    let ws = names
        .iter()
        .map(|n| Workload::builtin(n, a.scale))
        .collect::<std::io::Result<Vec<_>>>()?;
    for w in ws {
        let dir = a.out.join(&w.name);
        std::fs::create_dir_all(&dir).with_context(|| format!("{}", dir.display()))?;
        let g = generate(&w, a.scale, &dir).with_context(|| format!("generating {}", w.name))?;
        println!(
            "{}: {} ({} layers, {} MiB, start-up reads {} MiB)",
            w.name,
            g.image,
            w.layers.len(),
            g.image_bytes >> 20,
            g.read_bytes >> 20
        );
    }
    Ok(())
}

fn cold_start(a: ColdStartArgs) -> Result<()> {
    anyhow::ensure!(a.runs > 0, "--runs must be at least 1");
    // A signal then tears the node down instead of leaving it running.
    crate::bench::stop::install()?;
    let opts = coldstart::Options {
        workloads: workloads(&a.workloads),
        paths: a.paths.clone(),
        runs: a.runs,
        scale: a.scale,
        shaping: a.shape.clone(),
        work: a.work.clone(),
        out: a.out.clone(),
        cache_size: a.cache_size.clone(),
        read_ahead: a.read_ahead.clone(),
        chunk_size: a.chunk_size.clone(),
    };
    let res = coldstart::run(&opts, &mut |l| eprintln!("{l}"))?;
    if a.json {
        println!("{}", std::fs::read_to_string(a.out.join("results.json"))?);
    } else {
        print!("{}", crate::bench::report::markdown(&res));
        eprintln!("results in {}", a.out.display());
    }
    Ok(())
}
