//! [`wait_until`]: poll a probe until it yields a value or a deadline passes.
//!
//! Every wait in the end-to-end tests goes through here or through a
//! deadline-bounded `poll(2)` in [`crate::Proc`]; nothing sleeps a fixed time
//! hoping that something has happened by then.

use std::time::{Duration, Instant};

/// Calls `probe` until it returns `Some`, for at most `timeout`.
///
/// The probe is polled at growing intervals (1 ms up to 20 ms). On timeout
/// the error names `what` and the time waited, ready to go into an
/// assertion message.
pub fn wait_until<T>(
    timeout: Duration,
    what: &str,
    mut probe: impl FnMut() -> Option<T>,
) -> Result<T, String> {
    let start = Instant::now();
    let deadline = start + timeout;
    let mut interval = Duration::from_millis(1);
    loop {
        if let Some(value) = probe() {
            return Ok(value);
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(format!(
                "timed out after {:.1?} waiting for {what}",
                now - start
            ));
        }
        std::thread::sleep(interval.min(deadline - now));
        interval = (interval * 2).min(Duration::from_millis(20));
    }
}
