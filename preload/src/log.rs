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

/// In a background checkpoint's writer (`snapshot`), which holds none of the program's fds,
/// pmig's lines are kept in an area the checkpoint thread reads when the writer has exited:
/// a `u32` count of bytes used, then the lines. Its address and size are kept in the arena's
/// own words (`alloc::own_words`), not in a static: the writer writes the image from its own
/// memory, which must stay as it was at the snapshot.
///
/// From now on, keeps pmig's lines (without their `pmig[PID]: ` prefix) in the `len` bytes
/// at `addr`, which must stay mapped read/write in this process.
pub fn capture(addr: u64, len: u64) {
    if let Some(w) = crate::alloc::own_words() {
        w[1].store(len, Ordering::Relaxed);
        w[0].store(addr, Ordering::Relaxed);
    }
}

/// The capture area (address, length), if [`capture`] set one in this process.
fn capture_area() -> Option<(u64, u64)> {
    let w = crate::alloc::own_words()?;
    let addr = w[0].load(Ordering::Relaxed);
    (addr != 0).then(|| (addr, w[1].load(Ordering::Relaxed)))
}

/// The lines kept at `addr` by [`capture`] (in another process).
///
/// # Safety
/// `[addr, addr + len)` must be mapped and readable, and nobody may write it now.
pub unsafe fn captured(addr: u64, len: u64) -> String {
    // SAFETY: the caller guarantees the area; the count is clamped to it.
    let used = unsafe { core::ptr::read_unaligned(addr as *const u32) } as u64;
    let n = used.min(len.saturating_sub(4)) as usize;
    // SAFETY: as above: `n` bytes after the count lie inside the area.
    String::from_utf8_lossy(unsafe { core::slice::from_raw_parts((addr + 4) as *const u8, n) }).into_owned()
}

/// Adds `msg` and a newline to the capture area; false when none is set.
fn capture_line(msg: &[u8]) -> bool {
    let Some((addr, len)) = capture_area() else { return false };
    let room = len.saturating_sub(4);
    // SAFETY: `capture`'s caller keeps the area mapped; only this (single-threaded) writer
    // process writes it.
    unsafe {
        let used = core::ptr::read_unaligned(addr as *const u32) as u64;
        if used + (msg.len() as u64) < room {
            let at = (addr + 4 + used) as *mut u8;
            core::ptr::copy_nonoverlapping(msg.as_ptr(), at, msg.len());
            *at.add(msg.len()) = b'\n';
            core::ptr::write_unaligned(addr as *mut u32, (used + msg.len() as u64 + 1) as u32);
        }
    }
    true
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
    if capture_area().is_some() {
        let mut b = StackBuf::new();
        let _ = b.write_fmt(args);
        capture_line(b.as_bytes());
        return;
    }
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
