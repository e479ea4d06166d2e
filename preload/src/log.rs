//! Logging to stderr with raw `write`s from a stack buffer: usable with other threads stopped,
//! and (for `log_raw`) in a signal handler. `PMIG_DEBUG` turns on the phase log.

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicBool, Ordering};

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

/// Writes one line `pmig[pid]: <msg>` to stderr.
pub fn emit(args: fmt::Arguments<'_>) {
    let mut b = StackBuf::new();
    let _ = write!(b, "pmig[{}]: ", crate::sys::getpid());
    let _ = b.write_fmt(args);
    if b.len == b.buf.len() {
        // Cut short: keep the line a line.
        b.len -= 1;
    }
    let _ = b.write_str("\n");
    let _ = crate::sys::write_all(2, b.as_bytes());
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
