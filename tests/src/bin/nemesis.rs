//! `scripts/nemesis.sh`: many nemesis runs, then the table docs/faults.md
//! keeps (fault kind × target: runs, violations).
//!
//! nemesis [--target coordinator|ensemble|both] [--seed S] [--runs N]
//!         [--seconds T] [--faults kind,kind,...]
//!
//! Seeds S, S+1, ... S+N-1 on each target. Every failed run keeps its
//! history under target/nemesis/ and prints how to run it again. Exits 1
//! if any run broke a promise.

use std::collections::BTreeMap;
use std::time::Duration;

use e2e_tests::nemesis::{self, FaultKind, Plan, Target};

struct Args {
    targets: Vec<Target>,
    seed: u64,
    runs: u64,
    seconds: u64,
    faults: Vec<FaultKind>,
}

fn parse() -> Result<Args, String> {
    let mut a =
        Args { targets: vec![Target::Coordinator], seed: 1, runs: 1, seconds: 25, faults: FaultKind::ALL.to_vec() };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--target" => {
                a.targets = match value.as_str() {
                    "coordinator" => vec![Target::Coordinator],
                    "ensemble" => vec![Target::Ensemble],
                    "both" => vec![Target::Coordinator, Target::Ensemble],
                    other => return Err(format!("unknown target {other}: coordinator, ensemble or both")),
                }
            }
            "--seed" => a.seed = value.parse().map_err(|e| format!("--seed {value}: {e}"))?,
            "--runs" => a.runs = value.parse().map_err(|e| format!("--runs {value}: {e}"))?,
            "--seconds" => a.seconds = value.parse().map_err(|e| format!("--seconds {value}: {e}"))?,
            "--faults" => {
                a.faults = value
                    .split(',')
                    .map(|k| FaultKind::parse(k.trim()).ok_or(format!("unknown fault kind {k}")))
                    .collect::<Result<_, _>>()?
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(a)
}

fn main() {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("nemesis: {e}");
            std::process::exit(2);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(6).enable_all().build().expect("a runtime");
    // (target, kind) -> (runs it struck in, runs that broke a promise)
    let mut table: BTreeMap<(&str, &str), (u32, u32)> = BTreeMap::new();
    let mut failed = Vec::new();
    for target in &args.targets {
        for seed in args.seed..args.seed + args.runs {
            let plan = Plan::new(*target, seed, &args.faults, Duration::from_secs(args.seconds));
            let report = rt.block_on(nemesis::run(&plan));
            print!("{}", report.summary());
            let mut kinds = report.struck.clone();
            kinds.sort();
            kinds.dedup();
            for k in kinds {
                let row = table.entry((target.name(), k.name())).or_default();
                row.0 += 1;
                row.1 += u32::from(!report.passed());
            }
            if !report.passed() {
                failed.push(plan.rerun());
            }
        }
    }
    println!("\n| target | fault kind | runs it struck in | runs with a violation |\n|---|---|---|---|");
    for ((target, kind), (runs, bad)) in &table {
        println!("| {target} | {kind} | {runs} | {bad} |");
    }
    if !failed.is_empty() {
        println!("\n{} runs broke a promise; rerun each with:\n{}", failed.len(), failed.join("\n"));
        std::process::exit(1);
    }
}
