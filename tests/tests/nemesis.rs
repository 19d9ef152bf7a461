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

/// A seed whose schedule pauses the active ha-worker past its session.
const HA_PROOF_SEED: u64 = 69;

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

/// Runs `plan`, which breaks a promise on purpose, and asserts that
/// `checker` says so; `why` is the failure message if it does not.
async fn must_fail(plan: Plan, checker: &str, why: &str) -> nemesis::Report {
    let report = nemesis::run(&plan).await;
    println!("{}", report.summary());
    let failed: Vec<&str> = report.verdicts.iter().filter(|v| !v.ok).map(|v| v.checker).collect();
    assert!(failed.contains(&checker), "{why}:\n{}", report.summary());
    let _ = std::fs::remove_dir_all(&report.dir);
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 6)]
async fn a_store_that_ignores_fencing_tokens_fails_the_lock_checker() {
    let mut plan = Plan::new(Target::Coordinator, 3, &[FaultKind::StallLockHolder], Duration::from_secs(30));
    plan.failpoints = vec![system_b::store::IGNORE_FENCING];
    // Long work: the stalled holder is caught between its read and its write.
    plan.work_ms = 1500..1600;
    must_fail(
        plan,
        "lock: tokens order the writes",
        "with fencing off, a stalled holder's write must show as a write under an older token",
    )
    .await;
}

/// The HA checker, proven: with the journal's fence off, an active paused
/// past its session writes once more as it resumes (its due write goes
/// before the news of the lost session, by design: the fence is what
/// stops it), after the new active has written under a newer term.
#[tokio::test(flavor = "multi_thread", worker_threads = 6)]
async fn a_journal_that_ignores_terms_fails_the_ha_checker() {
    let mut plan = Plan::new(Target::Coordinator, HA_PROOF_SEED, &[FaultKind::PauseService], Duration::from_secs(20));
    plan.failpoints = vec![ha_worker::journal::IGNORE_TERMS];
    let report = must_fail(
        plan,
        "ha: one writer per term",
        "with the journal's fence off, a paused active's write after the takeover must show as a term going back",
    )
    .await;
    assert!(
        report.faults.iter().any(|f| f.starts_with("pause h")),
        "the seed no longer pauses an ha-worker: {:?}",
        report.faults
    );
}

/// The config checker, proven: a one-shot watch taken for a subscription
/// (system-b applies the first config it reads and no change after it)
/// while the operator changes the config every 1-3 s. No fault needed.
#[tokio::test(flavor = "multi_thread", worker_threads = 6)]
async fn a_config_watch_that_fires_once_fails_the_config_checker() {
    let mut plan = Plan::new(Target::Coordinator, 6, &[], Duration::from_secs(8));
    plan.failpoints = vec![servicekit::CONFIG_WATCH_ONCE];
    must_fail(plan, "config: converged", "with a config watch that fires once, system-b must stay on an old version")
        .await;
}

/// The durability half on the server: the coordinator's new log segment
/// not fsynced into its directory (the failpoint), and power cuts of its
/// data dir. Whatever the segment held is gone after a cut, though every
/// write in it was acknowledged; a read then sees a register older than
/// an acknowledged write.
#[tokio::test(flavor = "multi_thread", worker_threads = 6)]
async fn a_log_segment_not_fsynced_into_its_directory_fails_the_register_checker() {
    let mut plan = Plan::new(Target::Coordinator, 8, &[FaultKind::PowerLoss], Duration::from_secs(12));
    plan.disks = vec![Disk::Server];
    plan.failpoints = vec!["coordinator/skip-segment-dir-fsync"];
    must_fail(
        plan,
        "registers: linearizable",
        "with the segment's directory entry unsynced, a power cut must lose acknowledged writes, and the checker must see it",
    )
    .await;
}

/// The durability half, proven: system-b's store on a
/// disk whose fsync persists nothing, and power cuts of that disk. Tasks
/// acknowledged as done are then gone from the store after a cut, and the
/// task checker must say so (a final value below what was acknowledged).
#[tokio::test(flavor = "multi_thread", worker_threads = 6)]
async fn a_store_on_a_disk_that_lies_about_fsync_fails_the_task_checker() {
    let mut plan = Plan::new(Target::Coordinator, 4, &[FaultKind::PowerLoss], Duration::from_secs(20));
    plan.disks = vec![Disk::Store];
    plan.lying_disk = Some(Disk::Store);
    let report = must_fail(
        plan,
        "tasks: exactly once",
        "with the store's fsync a lie, a power cut must lose acknowledged tasks, and the checker must see it",
    )
    .await;
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
