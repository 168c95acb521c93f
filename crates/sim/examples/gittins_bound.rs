//! How close can a size-blind scheduler get to the oracle? For each workload's reply lengths,
//! the M/G/1 mean response time of Gittins (the optimal policy that knows the size distribution
//! but not the sizes), of LAS and of FCFS, over SRPT's (the oracle that knows every size), at
//! batch 1 with a request's service proportional to its reply length (one step per token, no
//! prompt cost, SD off). Exact formulas (`lapsd_sim::theory`) on the length distribution, drawn
//! here as a histogram of 1,000,000 lengths per workload. Prints a Markdown table.
//!
//! ```sh
//! cargo run --release -p lapsd-sim --example gittins_bound [-- LENGTHS.jsonl]
//! ```
//! LENGTHS.jsonl: a length trace as `lapsd sim --matrix-lengths` takes it; ShareGPT's is written
//! by `scripts/regime-matrix.sh OUT_DIR` as OUT_DIR/sharegpt-lengths.jsonl (the `lapsd bench
//! --dry-run --emit-sim-trace` line there).
use std::collections::BTreeMap;
use std::path::PathBuf;

use lapsd_sim::matrix::read_length_pairs;
use lapsd_sim::theory::{
    fb_mean_latency_s, gittins_mean_latency_s, pk_mean_latency_s, srpt_mean_latency_s, DiscreteDist,
};
use lapsd_sim::workload::WorkloadKind;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const DRAWS: usize = 1_000_000;
const LOADS: [f64; 5] = [0.5, 0.7, 0.8, 0.9, 0.95];
/// Seconds per token: only ratios are printed, so any unit will do.
const STEP_S: f64 = 1.0;

fn histogram(lengths: impl Iterator<Item = u32>) -> anyhow::Result<DiscreteDist> {
    let mut counts: BTreeMap<u32, f64> = BTreeMap::new();
    for n in lengths {
        *counts.entry(n.max(1)).or_default() += 1.0;
    }
    Ok(DiscreteDist::new(
        counts
            .into_iter()
            .map(|(n, c)| (f64::from(n) * STEP_S, c))
            .collect(),
    )?)
}

fn main() -> anyhow::Result<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let mut workloads: Vec<(String, DiscreteDist)> = Vec::new();
    for kind in WorkloadKind::ALL {
        let output = kind.profile().output;
        let lengths: Vec<u32> = (0..DRAWS).map(|_| output.sample(&mut rng)).collect();
        workloads.push((kind.name().to_string(), histogram(lengths.into_iter())?));
    }
    if let Some(path) = std::env::args().nth(1).map(PathBuf::from) {
        let pairs = read_length_pairs(&path)?;
        let lengths: Vec<u32> = (0..DRAWS)
            .map(|_| pairs[rng.gen_range(0..pairs.len())].1)
            .collect();
        let name = path
            .file_stem()
            .map_or_else(|| "lengths".into(), |s| s.to_string_lossy().into_owned());
        workloads.push((name, histogram(lengths.into_iter())?));
    }
    println!("| workload | reply CV^2 | load | FCFS / SRPT | LAS / SRPT | Gittins / SRPT |");
    println!("|---|---|---|---|---|---|");
    for (name, dist) in &workloads {
        for load in LOADS {
            let lambda = load / dist.mean_s();
            let srpt = srpt_mean_latency_s(lambda, dist)?;
            println!(
                "| {name} | {:.2} | {load} | {:.3} | {:.3} | {:.3} |",
                dist.scv(),
                pk_mean_latency_s(lambda, dist)? / srpt,
                fb_mean_latency_s(lambda, dist)? / srpt,
                gittins_mean_latency_s(lambda, dist, STEP_S)? / srpt,
            );
        }
    }
    Ok(())
}
