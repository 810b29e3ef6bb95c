//! "No acknowledged write lost", measured from inside an application pod: a writer in the pod's
//! network namespace sends `INCR` to the sidecar at `127.0.0.1:6379` as fast as it is answered,
//! reconnecting after any error, and keeps every acknowledged value with its time.
//!
//! One writer, one key, one connection at a time: each acknowledged INCR returns a value above
//! every earlier one unless an acknowledged write was lost (an INCR that got no answer may or
//! may not have happened, so values may jump, never fall). At the end the key is read back and
//! must hold at least the last acknowledged value.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::resp::{Conn, Reply};

/// The sidecar, as the application in its pod reaches it.
const SIDECAR: &str = "127.0.0.1:6379";

pub struct Writer {
    stop: Arc<AtomicBool>,
    /// Acknowledged writes so far, for a test waiting for the writes to (re)start.
    acked: Arc<AtomicU64>,
    thread: JoinHandle<Report>,
}

/// What the writer was told, and what it found at the end.
#[derive(Debug)]
pub struct Report {
    /// Every acknowledged INCR: when, and the value it returned.
    pub acked: Vec<(Instant, i64)>,
    /// Acknowledged values not above the one acknowledged before them: (before, after).
    pub fell: Vec<(i64, i64)>,
    /// The key's value read back through the sidecar after the writer stopped.
    pub final_value: i64,
    /// Requests that failed (refused, timed out, connection lost): not acknowledged.
    pub failures: u64,
}

impl Writer {
    /// Starts writing `key` through the sidecar of the pod whose network namespace is `netns`.
    pub fn start(netns: &str, password: &str, key: &str) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let (netns, password, key) = (netns.to_owned(), password.to_owned(), key.to_owned());
        let (flag, count) = (stop.clone(), acked.clone());
        let thread = std::thread::spawn(move || {
            enter_netns(&netns);
            write_until(&flag, &count, &password, &key)
        });
        Writer {
            stop,
            acked,
            thread,
        }
    }

    /// Waits until `more` writes beyond those acknowledged so far are acknowledged.
    pub fn await_more(&self, more: u64, deadline: Duration) {
        let target = self.acked.load(Ordering::SeqCst) + more;
        super::wait::eventually(
            &format!("{more} more acknowledged writes"),
            deadline,
            || match self.acked.load(Ordering::SeqCst) {
                n if n >= target => Ok(()),
                n => Err(format!("{n} of {target}")),
            },
        )
    }

    /// Stops writing and reports.
    pub fn stop(self) -> Report {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().expect("writer thread")
    }
}

/// Moves the calling thread (only it: setns(2) is per thread) into a named network namespace.
fn enter_netns(name: &str) {
    let ns = File::open(Path::new("/run/netns").join(name)).expect("the pod's network namespace");
    // SAFETY: setns(2) on a descriptor we own; affects only this thread.
    let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {name}: {}", std::io::Error::last_os_error());
}

fn write_until(stop: &AtomicBool, count: &AtomicU64, password: &str, key: &str) -> Report {
    let mut report = Report {
        acked: Vec::new(),
        fell: Vec::new(),
        final_value: 0,
        failures: 0,
    };
    let mut conn: Option<Conn> = None;
    while !stop.load(Ordering::SeqCst) {
        let Some(c) = conn.as_mut() else {
            conn = Conn::connect(SIDECAR, password).ok();
            if conn.is_none() {
                report.failures += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            continue;
        };
        match c.cmd(&["INCR", key]) {
            Ok(Reply::Int(value)) => {
                if let Some(&(_, before)) = report.acked.last()
                    && value <= before
                {
                    report.fell.push((before, value));
                }
                report.acked.push((Instant::now(), value));
                count.fetch_add(1, Ordering::SeqCst);
            }
            // An error reply (e.g. NOREPLICAS while fenced) or none at all: not acknowledged.
            Ok(_) | Err(_) => {
                report.failures += 1;
                conn = None;
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
    report.final_value = super::wait::eventually(
        "a read of the writer's key through the sidecar",
        Duration::from_secs(30),
        || match Conn::connect(SIDECAR, password).and_then(|mut c| c.cmd(&["GET", key])) {
            Ok(Reply::Bulk(Some(v))) => v.parse().map_err(|e| format!("{v:?}: {e}")),
            other => Err(format!("{other:?}")),
        },
    );
    report
}

impl Report {
    pub fn last(&self) -> i64 {
        self.acked.last().map_or(0, |&(_, v)| v)
    }

    /// The longest time between two acknowledged writes.
    pub fn longest_pause(&self) -> Duration {
        self.acked
            .windows(2)
            .map(|w| w[1].0 - w[0].0)
            .max()
            .unwrap_or_default()
    }

    /// Panics if an acknowledged write was lost, and says how many there were.
    pub fn assert_none_lost(&self, scenario: &str) {
        assert!(
            self.acked.len() > 100,
            "{scenario}: only {} writes acknowledged",
            self.acked.len()
        );
        assert!(
            self.fell.is_empty(),
            "{scenario}: acknowledged INCRs lost: {:?}",
            self.fell
        );
        assert!(
            self.final_value >= self.last(),
            "{scenario}: the key holds {} after {} was acknowledged",
            self.final_value,
            self.last()
        );
        eprintln!(
            "{scenario}: {} writes acknowledged, {} failed, last value {}, read back {}, lost 0, longest pause {:?}",
            self.acked.len(),
            self.failures,
            self.last(),
            self.final_value,
            self.longest_pause()
        );
    }
}
