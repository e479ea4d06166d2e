//! pmig's own lines, written with raw `write`s from a stack buffer: usable with other threads
//! stopped. `PMIG_DEBUG` turns on the phase log.
//!
//! Where they go, so that none is overwritten or lost:
//! - during a restore, to the stderr `pmig-resume` was started with (held on an fd of its
//!   own until the program runs: the program's stderr may not be back yet, or at all);
//! - otherwise to the program's stderr, when a line added there stays: a terminal, a pipe,
//!   a socket, a file opened for appending (`>>`);
//! - but when the program's stderr is a file it writes at an offset (`2>file`), or is
//!   closed, to `IMAGE.log` beside the image (appended): a program resumed from the image
//!   goes on writing at its saved offset, over anything pmig had added after it.

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicBool, AtomicI32, Ordering};

/// Whether `PMIG_DEBUG` is on.
pub static DEBUG: AtomicBool = AtomicBool::new(false);

/// A fixed buffer that `fmt::Write` fills, truncating what does not fit.
pub struct StackBuf {
    buf: [u8; 1024],
    len: usize,
}

impl Default for StackBuf {
    fn default() -> Self {
        Self::new()
    }
}

impl StackBuf {
    pub const fn new() -> Self {
        StackBuf { buf: [0; 1024], len: 0 }
    }
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Write for StackBuf {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

/// During a restore: `pmig-resume`'s stderr, held for pmig's lines (-1: none).
static HELD: AtomicI32 = AtomicI32::new(-1);

/// Holds a copy of the current stderr (`pmig-resume`'s, at the start of a restore) at fd
/// `at` or above, for pmig's lines until [`release`]; returns it (-1 if there is none).
pub fn hold_stderr(at: i32) -> i32 {
    let fd = crate::sys::fcntl(2, libc::F_DUPFD_CLOEXEC, at as u64).map(|f| f as i32).unwrap_or(-1);
    HELD.store(fd, Ordering::Relaxed);
    fd
}

/// Stops writing to the held stderr (the caller closes it).
pub fn release() {
    HELD.store(-1, Ordering::Relaxed);
}

/// Whether a line written to `fd` stays where it is: not a file written at an offset that a
/// resumed program would write over, and open.
fn keeps_lines(fd: i32) -> bool {
    // SAFETY: an all-zero `stat` is a valid value of this plain C struct.
    let mut st: libc::stat = unsafe { core::mem::zeroed() };
    if crate::sys::fstat(fd, &mut st).is_err() {
        return false;
    }
    st.st_mode & libc::S_IFMT != libc::S_IFREG
        || crate::sys::fcntl(fd, libc::F_GETFL, 0).is_ok_and(|fl| fl as i32 & libc::O_APPEND != 0)
}

/// Writes `line` where pmig's lines go (see the module banner).
fn write_line(line: &[u8]) {
    let held = HELD.load(Ordering::Relaxed);
    if held >= 0 && crate::sys::write_all(held, line).is_ok() {
        return;
    }
    if !keeps_lines(2) {
        if let Some(cfg) = crate::config::get() {
            let mut path = StackBuf::new();
            let _ = write!(path, "{}.log\0", cfg.image_path);
            let flags = libc::O_WRONLY | libc::O_APPEND | libc::O_CREAT | libc::O_CLOEXEC;
            if path.len < path.buf.len() {
                if let Ok(fd) = crate::sys::openat(libc::AT_FDCWD, path.as_bytes(), flags, 0o600) {
                    let ok = crate::sys::write_all(fd as i32, line).is_ok();
                    let _ = crate::sys::close(fd as i32);
                    if ok {
                        return;
                    }
                }
            }
        }
    }
    let _ = crate::sys::write_all(2, line);
}

/// Writes one line `pmig[pid]: <msg>` where pmig's lines go (see the module banner).
pub fn emit(args: fmt::Arguments<'_>) {
    let mut b = StackBuf::new();
    let _ = write!(b, "pmig[{}]: ", crate::sys::getpid());
    let _ = b.write_fmt(args);
    if b.len == b.buf.len() {
        // Cut short: keep the line a line.
        b.len -= 1;
    }
    let _ = b.write_str("\n");
    write_line(b.as_bytes());
}

/// Always printed: what a user must know (a failed checkpoint, a warning).
macro_rules! say {
    ($($t:tt)*) => { $crate::log::emit(format_args!($($t)*)) };
}

/// Printed with `PMIG_DEBUG=1`: each phase of checkpoint and restore.
macro_rules! debug {
    ($($t:tt)*) => {
        if $crate::log::DEBUG.load(core::sync::atomic::Ordering::Relaxed) {
            $crate::log::emit(format_args!($($t)*))
        }
    };
}

pub(crate) use {debug, say};

/// Whether debugging output is on.
pub fn debug_on() -> bool {
    DEBUG.load(Ordering::Relaxed)
}
