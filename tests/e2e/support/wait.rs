//! Waiting for a condition, always with a deadline: the one place a test polls.

use std::time::{Duration, Instant};

/// How often a condition is checked again.
const POLL: Duration = Duration::from_millis(100);

/// Calls `check` until it returns `Ok`, and returns that value; panics naming `what` and the
/// last reason when `deadline` passes first.
pub fn eventually<T>(
    what: &str,
    deadline: Duration,
    mut check: impl FnMut() -> Result<T, String>,
) -> T {
    let started = Instant::now();
    loop {
        match check() {
            Ok(value) => return value,
            Err(reason) if started.elapsed() >= deadline => {
                panic!("no {what} after {deadline:?}: {reason}")
            }
            Err(_) => std::thread::sleep(POLL),
        }
    }
}
