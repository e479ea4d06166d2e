//! Interrupted system calls: the program never sees `EINTR` because of a checkpoint.
//!
//! A checkpoint stops every thread with the suspend signal, whose handler is installed
//! `SA_RESTART`. The kernel restarts most calls after such a handler (`read` on a pipe,
//! `accept`, `wait4`, an untimed `futex`, in the continuing process and, since the restart is
//! in the saved signal frame, in a resumed one too), but not all: calls with a timeout
//! (`poll`, `epoll_wait`, `select`, `nanosleep`, `sigtimedwait`, `semtimedop`,
//! `io_getevents`, socket calls under `SO_RCVTIMEO`/`SO_SNDTIMEO`, ...) and a few without one
//! (`epoll_wait(-1)`, `poll(-1)`, `select(NULL)`, `msgrcv`, `semop`, `sigwaitinfo`) fail with
//! `EINTR` after any handled signal. The wrappers in `api` issue those again:
//!
//! 1. pmig's two handlers (the checkpoint signal's, which lands in any thread of the program,
//!    and the suspend signal's) first bump [`EPOCH`] (`mark_interrupted`), a process-wide
//!    counter that lives in the image like the rest of memory, so a resumed thread sees the
//!    bump too.
//! 2. A wrapper reads the epoch before the call. When the call fails with `EINTR` and the epoch
//!    moved, this thread's call was interrupted by one of pmig's signals (every thread of the
//!    program gets the suspend signal during a checkpoint): the wrapper calls again, else it
//!    returns as libc did. A program's own signal thus still gives `EINTR`, except when it interrupts the same
//!    call as a checkpoint: then the call goes on (as if the signal had come just before it).
//! 3. A relative timeout is measured from the wrapper's entry on the call's clock
//!    ([`Timer`]): the call is issued again for what is left, clamped to `[0, original]`
//!    (after a restore on another host the clock may be anywhere). Absolute deadlines are
//!    issued again unchanged.
//!
//! The wrappers read no user pointer the kernel has not already read for the same call (a
//! timeout is read after the call failed with `EINTR`, so the kernel accepted it), except
//! `select`'s, which glibc reads anyway. Cost on the program's hot paths: one relaxed load
//! before the call; the rest runs only on failure. A timed call also reads its clock once.
//!
//! `mark_interrupted` is **signal-time code**: one atomic add, nothing else.

use core::sync::atomic::{AtomicU64, Ordering::Relaxed};
use libc::{c_int, timespec};

/// Bumped by every suspend handler: how many times a thread of this process was interrupted
/// by pmig.
static EPOCH: AtomicU64 = AtomicU64::new(0);

/// Signal-time: notes that the calling thread's system call, if any, was just interrupted.
pub fn mark_interrupted() {
    EPOCH.fetch_add(1, Relaxed);
}

/// The epoch, read before a call.
#[inline(always)]
pub fn epoch() -> u64 {
    // Relaxed: the bump that matters happens in this same thread (its suspend handler runs
    // inside the call), and the call is opaque to the compiler, so the loads stay on either
    // side of it.
    EPOCH.load(Relaxed)
}

/// The calling thread's errno.
#[inline]
pub fn errno() -> c_int {
    // SAFETY: `__errno_location` always returns this thread's errno slot.
    unsafe { *libc::__errno_location() }
}

/// After a call failed with errno set: whether to issue it again (`EINTR` and a checkpoint
/// interrupted it since `*e` was read). Moves `*e` on for the next attempt.
#[inline]
pub fn again(e: &mut u64) -> bool {
    again_err(errno(), e)
}

/// As [`again`] for a call that returns its error number (`clock_nanosleep`) or minus it
/// (`io_getevents` of libaio), given as `err`.
#[inline]
pub fn again_err(err: c_int, e: &mut u64) -> bool {
    if err != libc::EINTR {
        return false;
    }
    let now = epoch();
    if now == *e {
        return false;
    }
    *e = now;
    true
}

/// Nanoseconds in `ts` (saturating; a negative time is 0).
pub fn ts_ns(ts: &timespec) -> i128 {
    (ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128).max(0)
}

/// `ns` nanoseconds as a timespec.
pub fn ns_ts(ns: i128) -> timespec {
    let ns = ns.clamp(0, i64::MAX as i128 * 1_000_000_000);
    timespec { tv_sec: (ns / 1_000_000_000) as libc::time_t, tv_nsec: (ns % 1_000_000_000) as libc::c_long }
}

/// Milliseconds, rounded up, of a time known to be at most `cap` milliseconds.
pub fn ns_ms_up(ns: i128, cap: c_int) -> c_int {
    ((ns + 999_999) / 1_000_000).clamp(0, cap as i128) as c_int
}

/// The clock on which a relative timeout of `clock` runs: the kernel runs a relative
/// `CLOCK_REALTIME` timer on `CLOCK_MONOTONIC` (a jump of the wall clock does not change it).
pub fn relative_clock(clock: libc::clockid_t) -> libc::clockid_t {
    if clock == libc::CLOCK_REALTIME {
        libc::CLOCK_MONOTONIC
    } else {
        clock
    }
}

/// When a call with a relative timeout began, on the clock its timeout runs on.
#[derive(Clone, Copy)]
pub struct Timer {
    clock: libc::clockid_t,
    /// Start in nanoseconds; `None` when not started or the clock cannot be read.
    start: Option<i128>,
}

fn now(clock: libc::clockid_t) -> Option<i128> {
    let mut ts = timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid timespec of ours; clock_gettime is not wrapped by pmig (vdso).
    let r = unsafe { libc::clock_gettime(clock, &mut ts) };
    (r == 0).then(|| ts_ns(&ts))
}

impl Timer {
    /// Starts timing on `clock` when `timed` (a call with no timeout, or a zero one, needs no
    /// clock reading).
    #[inline]
    pub fn start(clock: libc::clockid_t, timed: bool) -> Timer {
        Timer { clock, start: if timed { now(clock) } else { None } }
    }

    /// What is left of a timeout of `total` nanoseconds, within `[0, total]`. A timer that
    /// could not be started gives the whole timeout again.
    pub fn left(&self, total: i128) -> i128 {
        let (Some(start), Some(now)) = (self.start, now(self.clock)) else { return total };
        (total - (now - start)).clamp(0, total.max(0))
    }

    /// What is left of `total` milliseconds, rounded up (never returns early).
    pub fn left_ms(&self, total: c_int) -> c_int {
        ns_ms_up(self.left(total as i128 * 1_000_000), total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn again_only_after_a_suspension() {
        let mut e = epoch();
        assert!(!again_err(libc::EINTR, &mut e), "no suspension: EINTR is the program's");
        mark_interrupted();
        assert!(!again_err(libc::EAGAIN, &mut e), "only EINTR is retried");
        assert!(again_err(libc::EINTR, &mut e));
        assert!(!again_err(libc::EINTR, &mut e), "one suspension, one retry");
    }

    #[test]
    fn left_is_clamped_and_rounded_up() {
        let t = Timer::start(libc::CLOCK_MONOTONIC, true);
        let left = t.left(1_000_000_000);
        assert!(left > 0 && left <= 1_000_000_000);
        assert_eq!(Timer::start(libc::CLOCK_MONOTONIC, true).left(0), 0);
        // A start in the future (a clock that went back after a restore): the whole timeout.
        let future = Timer { clock: libc::CLOCK_MONOTONIC, start: Some(now(libc::CLOCK_MONOTONIC).unwrap() + 10_000_000_000) };
        assert_eq!(future.left(5), 5);
        // A start long ago: nothing left.
        let past = Timer { clock: libc::CLOCK_MONOTONIC, start: Some(0) };
        assert_eq!(past.left_ms(300), 0);
        assert_eq!(ns_ms_up(1, 300), 1);
        assert_eq!(ns_ms_up(2_000_000_000, 300), 300);
        let ts = ns_ts(1_500_000_001);
        assert_eq!((ts.tv_sec, ts.tv_nsec), (1, 500_000_001));
        assert_eq!(ts_ns(&ts), 1_500_000_001);
    }
}
