//! Faults under writes through the demo app's sidecar: each loses no acknowledged write.

use std::time::Instant;

use crate::support::pair::{Example, PAIR, Published, SETTLE};
use crate::support::writer::{Report, Writer};

/// The example installed and Healthy, and a writer going through its demo app's sidecar.
pub fn writing(test: &str) -> (Example, Published, Writer) {
    writing_with(test, &[])
}

/// `writing` with more helm arguments for the install.
pub fn writing_with(test: &str, helm: &[&str]) -> (Example, Published, Writer) {
    let example = Example::install_with(test, helm);
    let before = example.await_published("the example pair Healthy", |_| true);
    let writer = Writer::start(&example.app_netns(), &example.password(), test);
    writer.await_more(500, SETTLE);
    (example, before, writer)
}

/// Once the fault is over: the pair is Healthy with its replica in sync again, writes go on,
/// and none that was acknowledged is lost.
pub fn settle_and_check(example: &Example, writer: Writer, scenario: &str) -> Report {
    example.await_published("the pair Healthy again", |_| true);
    writer.await_more(500, SETTLE);
    let report = writer.stop();
    report.assert_none_lost(scenario);
    report
}

#[test]
fn kill_9_of_the_master_redis_loses_no_acknowledged_write() {
    let (example, before, writer) = writing("kill-master");
    let pid = example.container_pid(&before.master_pod, "redis");
    let killed = Instant::now();
    // SAFETY: kill(2) of the process the node agent reports for the master's container.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);

    let after = example.await_published("a new master published", |p| {
        p.epoch > before.epoch && p.active != before.active && p.master_pod != before.master_pod
    });
    let published_in = killed.elapsed();
    writer.await_more(100, SETTLE);
    let report = settle_and_check(&example, writer, "kill -9 of the master");
    // The writer's longest pause is the failover as a client sees it; kubectl's polling only
    // bounds when the publication was made.
    eprintln!(
        "kill -9 of the master: {} → {} (epoch {}), seen published within {published_in:?}, \
         longest write pause {:?}",
        before.master_pod,
        after.master_pod,
        after.epoch,
        report.longest_pause()
    );
}

#[test]
fn a_switchover_by_annotation_loses_no_acknowledged_write() {
    let (example, before, writer) = writing("switchover");
    let asked = Instant::now();
    example.kubectl(&["annotate", "redispair", PAIR, "redispair.io/switchover=any"]);

    let after = example.await_published("the switchover done", |p| {
        p.epoch > before.epoch
            && p.active != before.active
            && p.master_pod != before.master_pod
            && !p.switchover_pending
    });
    let done_in = asked.elapsed();
    let report = settle_and_check(&example, writer, "switchover");
    eprintln!(
        "switchover: {} → {} (epoch {}) within {done_in:?}, longest write pause {:?}",
        before.master_pod,
        after.master_pod,
        after.epoch,
        report.longest_pause()
    );
}

#[test]
fn a_rolling_restart_of_the_redis_statefulset_loses_no_acknowledged_write() {
    let (example, before, writer) = writing("rollout");
    let started = Instant::now();
    example.kubectl(&["rollout", "restart", "statefulset", PAIR]);
    example.kubectl(&["rollout", "status", "statefulset", PAIR, "--timeout=300s"]);
    let rolled_in = started.elapsed();

    // The master's pod was replaced too: its role moved to the other pod first.
    let after = example.await_published("a publication after the restart", |p| {
        p.epoch > before.epoch
    });
    let report = settle_and_check(&example, writer, "rollout restart");
    let pause = report.longest_pause();
    eprintln!(
        "rollout restart: done in {rolled_in:?}, master {} → {} (epoch {}), longest write pause {pause:?}",
        before.master_pod, after.master_pod, after.epoch
    );
}
