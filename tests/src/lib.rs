//! Harness for pmig's end-to-end tests: it finds the built pmig binaries and
//! the helper programs, runs them in throw-away sandboxes, and drives the
//! checkpoint/resume *chain* that every case in `tests/e2e.rs` goes through.
//!
//! The pieces, bottom up:
//! - [`wait_until`]: a probe polled against a deadline.  Every wait in this
//!   crate is bounded (that, or `poll(2)` with a deadline in [`Proc`]); none
//!   is a fixed sleep that hopes.
//! - [`Bins`]: `pmig-run`, `pmig-resume`, `libpmig.so` and
//!   `pmig-restore-engine`, located next to the test executable.
//! - [`programs`]: the helper programs built from `programs/*.c` by
//!   `build.rs`, the inline scripts, and a C project for `make`.
//! - [`services`]: redis-server and PostgreSQL, and clients for them.
//! - [`Proc`]: a spawned child guard — stdout read line by line against
//!   deadlines, stderr captured for failure messages, killed on drop.
//! - [`Sandbox`]: a temporary directory for images, working directories and
//!   data files, optionally prepared for an unprivileged user ([`RunAs`]).
//! - [`StepCheck`]: the `step N` continuity check across processes.
//! - [`Chain`]: run → checkpoint with `--exit` → resume → checkpoint →
//!   resume to the end, with every check of the contract in between.

mod bins;
mod chain;
pub mod hosts;
mod process;
pub mod programs;
mod pty;
mod sandbox;
pub mod services;
mod steps;
mod wait;

pub use bins::Bins;
pub use chain::{
    fail_with, pmig_env, run_chain_unprivileged, Chain, ChainOpts, ChainReport, ImageCheck,
    CHECKPOINT_TIMEOUT, RESUME_TIMEOUT, STEP_TIMEOUT,
};
pub use process::{describe_status, program_pid, Proc, Terminal};
pub use programs::{Input, Program};
pub use sandbox::{RunAs, Sandbox};
pub use steps::{input_line, StepCheck};
pub use wait::wait_until;

/// `PMIG_DEBUG` value given to every pmig process of a chain: `1` (phase logs
/// on stderr, shown when a test fails) unless `PMIG_TEST_DEBUG=0` is set.
pub fn pmig_debug_value() -> &'static str {
    match std::env::var("PMIG_TEST_DEBUG") {
        Ok(v) if v == "0" => "0",
        _ => "1",
    }
}

/// Waits for a receiver (`pmig-resume --listen HOST:0`) to print its ready line and returns
/// the port it listens on; fails the test with the receiver's output if it does not.
pub fn receiver_port(r: &mut Proc, host: &str) -> u16 {
    let ready = format!("pmig-resume: listening on {host}:");
    wait_until(std::time::Duration::from_secs(20), "the receiver's ready line", || {
        r.stderr_text().lines().find_map(|l| l.strip_prefix(ready.as_str())?.trim().parse().ok())
    })
    .unwrap_or_else(|e| fail_with(&e, &mut [r]))
}

/// Whether the tests run as root (some need it, and skip with a message otherwise).
pub fn is_root() -> bool {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}
