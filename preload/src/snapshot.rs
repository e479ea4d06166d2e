//! Background checkpoints: a checkpoint the program survives (no `--exit`, no `--to`, no
//! other process in its tree) stops the program only while the manifest is read and a
//! copy-on-write snapshot of its address space is taken; a child process writes the page
//! data and the rest of the image from that snapshot while the program goes on.
//!
//! Algorithm:
//! 1. With every other thread parked, the checkpoint thread reads everything that is not page
//!    content (the manifest: fds, queues, timers, signals, registers, the list of regions),
//!    and copies aside the pages a child would not see as they are (`memory::Copies`:
//!    `MAP_SHARED` memory, `MADV_DONTFORK` and `MADV_WIPEONFORK` regions).
//! 2. [`start`] maps a shared report page and makes the writer with a raw `clone` (no glibc
//!    fork handlers, exit signal 0: no `SIGCHLD` reaches the program and its `wait`s without
//!    `__WCLONE`/`__WALL` do not see the writer). The parent releases the threads at once.
//! 3. The writer (named `pmig-snapshot`) closes every fd it inherited (the program's sockets
//!    and pipes must not stay open in it), finds the populated pages in its own pagemap,
//!    writes the image exactly as a stopped checkpoint would (`O_TMPFILE`, `fsync`,
//!    `linkat`/`rename`, directory `fsync`), puts the result and its log lines in the report
//!    page and exits.
//! 4. The checkpoint thread waits for it ([`Writer::wait`], `wait4` with `__WCLONE`) before it
//!    serves another request, and says how it went.
//!
//! **The writer runs as a copy of a process whose other threads were parked**, maybe holding
//! libc's locks: the same rules as the checkpoint thread with threads parked (raw system
//! calls, the arena for allocation, which stays on in the child, no `std::io`, no panics).

use crate::log::{self, debug};
use crate::sys;
use core::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering::*};

/// The live writer's pid (0: none), left out when the tree lists its processes.
static WRITER: AtomicI32 = AtomicI32::new(0);
/// 1 while a writer works (a futex word for [`wait_at_exit`]).
static WRITING: AtomicU32 = AtomicU32::new(0);

/// The report page's size: a header, the failure message, then the writer's log lines.
const REPORT_LEN: u64 = 64 * 1024;
const MSG_OFF: u64 = 64;
const MSG_LEN: u64 = 2048;
const LOG_OFF: u64 = MSG_OFF + MSG_LEN;

/// `state` in the report (0 while the writer works).
const DONE: u32 = 1;
const FAILED: u32 = 2;

/// `wait4`'s flag for children that do not signal their parent with `SIGCHLD`.
const WCLONE: u64 = 0x8000_0000;

/// The report page, shared between the checkpoint thread and its writer.
#[repr(C)]
struct Report {
    state: AtomicU32,
    msg_len: AtomicU32,
    bytes: AtomicU64,
}

/// A writer at work.
pub struct Writer {
    pid: i32,
    report: u64,
}

/// The pid of the image writer at work, or 0.
pub fn writer_pid() -> i32 {
    WRITER.load(Relaxed)
}

/// Starts the writer, which runs `write` (in the child only) and exits; the caller goes on
/// at once. `Err(errno)`: no writer was made (the caller writes the image itself).
pub fn start(write: &mut dyn FnMut() -> Result<u64, String>) -> Result<Writer, i32> {
    let report = sys::mmap(0, REPORT_LEN, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED | libc::MAP_ANONYMOUS, -1, 0)?;
    let parent = sys::getpid();
    // clone(2) with no flags but exit signal 0: a new process with a copy-on-write copy of the
    // address space, returning twice, like fork(2) without glibc's handlers.
    let t0 = sys::clock_ns(libc::CLOCK_MONOTONIC);
    match sys::raw(libc::SYS_clone, &[0, 0, 0, 0, 0]) {
        Ok(0) => child(report, parent, write),
        Ok(pid) => {
            debug!("snapshot taken in {} us", (sys::clock_ns(libc::CLOCK_MONOTONIC) - t0) / 1000);
            WRITER.store(pid as i32, Relaxed);
            WRITING.store(1, Release);
            Ok(Writer { pid: pid as i32, report })
        }
        Err(e) => {
            // SAFETY: the report page was mapped above and nothing else refers to it.
            unsafe {
                let _ = sys::munmap(report, REPORT_LEN);
            }
            Err(e)
        }
    }
}

/// The writer: see the module banner, step 3.
fn child(report: u64, parent: i32, write: &mut dyn FnMut() -> Result<u64, String>) -> ! {
    let _ = sys::prctl(libc::PR_SET_NAME, c"pmig-snapshot".as_ptr() as u64, 0, 0, 0);
    // A program that dies (killed, or `_exit`) takes the checkpoint in progress with it, as
    // when the program is stopped for the whole checkpoint: its unnamed file is freed and the
    // previous image stays. (One that returns from `main` or calls `exit` first waits for
    // it, see `wait_at_exit`.)
    let _ = sys::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as u64, 0, 0, 0);
    if sys::getppid() != parent {
        sys::exit_group(1);
    }
    // close_range(2): none of the program's fds stays open in the writer.
    let _ = sys::raw(libc::SYS_close_range, &[0, u32::MAX as u64, 0]);
    log::capture(report + LOG_OFF, REPORT_LEN - LOG_OFF);
    let r = write();
    // SAFETY: the report page is mapped shared, read/write, for REPORT_LEN bytes, and its
    // header is only written here (the parent reads it once this process has exited).
    let rep = unsafe { &*(report as *const Report) };
    match r {
        Ok(bytes) => {
            rep.bytes.store(bytes, Relaxed);
            rep.state.store(DONE, Release);
        }
        Err(e) => {
            let n = e.len().min(MSG_LEN as usize);
            // SAFETY: the message area lies inside the report page and nothing else writes it.
            unsafe { core::ptr::copy_nonoverlapping(e.as_ptr(), (report + MSG_OFF) as *mut u8, n) };
            rep.msg_len.store(n as u32, Relaxed);
            rep.state.store(FAILED, Release);
        }
    }
    sys::exit_group(if rep.state.load(Relaxed) == DONE { 0 } else { 1 })
}

/// In a child the program forked (during a write, maybe): the parent's writer is not its
/// own, and its `exit` must not wait for it.
pub fn after_fork_in_child() {
    WRITER.store(0, Relaxed);
    WRITING.store(0, Relaxed);
}

/// Says that the last writer's result has been told: a program waiting to exit goes on.
pub fn told() {
    WRITING.store(0, Release);
    let _ = sys::futex_wake(&WRITING);
}

/// Waits until no writer works and its result is told (called as the program exits).
pub fn wait_at_exit() {
    while WRITING.load(Acquire) == 1 {
        let _ = sys::futex_wait(&WRITING, 1, 0);
    }
}

impl Writer {
    /// The writer's pid.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Waits for the writer to exit and returns what it wrote (the image's size) or why it
    /// failed. Its log lines are said here, in order.
    pub fn wait(self) -> Result<u64, String> {
        let mut status = 0i32;
        let waited = loop {
            match sys::raw(libc::SYS_wait4, &[self.pid as u64, &mut status as *mut i32 as u64, WCLONE, 0]) {
                Err(libc::EINTR) => continue,
                r => break r,
            }
        };
        WRITER.store(0, Relaxed);
        // SAFETY: the report page is still mapped; the writer is gone (or, reaped by the
        // program's own `wait` with `__WALL`, finished before `waited` failed).
        let rep = unsafe { &*(self.report as *const Report) };
        // SAFETY: as above; the log area holds `used` bytes of complete lines after its count.
        let lines = unsafe { log::captured(self.report + LOG_OFF, REPORT_LEN - LOG_OFF) };
        for line in lines.split('\n').filter(|l| !l.is_empty()) {
            log::emit(format_args!("{line}"));
        }
        let r = match rep.state.load(Acquire) {
            DONE => Ok(rep.bytes.load(Relaxed)),
            FAILED => {
                let n = (rep.msg_len.load(Relaxed) as u64).min(MSG_LEN) as usize;
                // SAFETY: the message area lies inside the report page; the writer is done.
                let msg = unsafe { core::slice::from_raw_parts((self.report + MSG_OFF) as *const u8, n) };
                Err(String::from_utf8_lossy(msg).into_owned())
            }
            _ => Err(match waited {
                Ok(_) if libc::WIFSIGNALED(status) => {
                    format!("the image writer (pid {}) was killed by signal {}", self.pid, libc::WTERMSIG(status))
                }
                Ok(_) => format!("the image writer (pid {}) exited with status {} before it finished", self.pid, libc::WEXITSTATUS(status)),
                Err(e) => format!("the image writer (pid {}) could not be waited for: {}", self.pid, crate::errno::Errno(e)),
            }),
        };
        // SAFETY: the report page is ours and nobody uses it any more.
        unsafe {
            let _ = sys::munmap(self.report, REPORT_LEN);
        }
        if r.is_ok() {
            debug!("image writer {} done", self.pid);
        }
        r
    }
}
