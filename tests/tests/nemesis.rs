//! The nemesis in CI: a fixed few seeds on each target, every fault kind,
//! every checker (tests/src/nemesis). `scripts/nemesis.sh` runs more.
//!
//! And the checkers' own proof on the real system: with system-b's store
//! made to ignore fencing tokens (a failpoint), stalling the lock holder
//! past its session must fail the lock and task checkers; with the
//! store on a disk that lies about fsync, a power cut must fail the task
//! checker.

use std::time::Duration;

use e2e_tests::nemesis::{self, Disk, FaultKind, Plan, Target};

async fn must_pass(plan: Plan) {
    let report = nemesis::run(&plan).await;
    println!("{}", report.summary());
    assert!(report.passed(), "a promise broke:\n{}", report.summary());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 6)]
async fn the_coordinator_keeps_every_promise_under_every_fault_kind() {
    for seed in [1, 2] {
        must_pass(Plan::new(Target::Coordinator, seed, &FaultKind::ALL, Duration::from_secs(25))).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 6)]
async fn an_ensemble_keeps_every_promise_under_every_fault_kind() {
    must_pass(Plan::new(Target::Ensemble, 5, &FaultKind::ALL, Duration::from_secs(30))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 6)]
async fn a_store_that_ignores_fencing_tokens_fails_the_lock_checker() {
    let mut plan = Plan::new(Target::Coordinator, 3, &[FaultKind::StallLockHolder], Duration::from_secs(30));
    plan.system_b_env = vec![("FAILPOINTS".into(), system_b::store::IGNORE_FENCING.into())];
    // Long work: the stalled holder is caught between its read and its write.
    plan.work_ms = 1500..1600;
    let report = nemesis::run(&plan).await;
    println!("{}", report.summary());
    let failed: Vec<&str> = report.verdicts.iter().filter(|v| !v.ok).map(|v| v.checker).collect();
    assert!(
        failed.contains(&"lock: tokens order the writes"),
        "with fencing off, a stalled holder's write must show as a write under an older token:\n{}",
        report.summary()
    );
    let _ = std::fs::remove_dir_all(&report.dir);
}

/// The durability half of the checkers, proven: system-b's store on a
/// disk whose fsync persists nothing, and power cuts of that disk. Tasks
/// acknowledged as done are then gone from the store after a cut, and the
/// task checker must say so (a final value below what was acknowledged).
#[tokio::test(flavor = "multi_thread", worker_threads = 6)]
async fn a_store_on_a_disk_that_lies_about_fsync_fails_the_task_checker() {
    let mut plan = Plan::new(Target::Coordinator, 4, &[FaultKind::PowerLoss], Duration::from_secs(20));
    plan.disks = vec![Disk::Store];
    plan.lying_disk = Some(Disk::Store);
    let report = nemesis::run(&plan).await;
    println!("{}", report.summary());
    let failed: Vec<&str> = report.verdicts.iter().filter(|v| !v.ok).map(|v| v.checker).collect();
    assert!(
        failed.contains(&"tasks: exactly once"),
        "with the store's fsync a lie, a power cut must lose acknowledged tasks, and the checker must see it:\n{}",
        report.summary()
    );
    let _ = std::fs::remove_dir_all(&report.dir);
    // A run leaves nothing on the broker: a batch of hundreds of runs that
    // each left a quorum queue once wore the broker down mid-batch.
    let out =
        std::process::Command::new("rabbitmqctl").args(["-q", "list_queues", "name"]).output().expect("rabbitmqctl");
    let left: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|q| q.starts_with(&report.queue))
        .map(str::to_string)
        .collect();
    assert_eq!(left, Vec::<String>::new(), "the run's queues are still on the broker");
}
