//! File descriptors: what each open fd is (dump) and reopening them (restore).
//!
//! Dump runs in the checkpoint thread with the others parked (arena allocation only); restore
//! runs in the restored checkpoint thread before any other thread exists.

use crate::{log, memory, sys};
use pmig_image::{FdKind, FdState};

/// Lists the open fds, skipping `skip`.
fn list_fds(skip: &[i32]) -> Result<Vec<i32>, i32> {
    let dir = sys::openat(libc::AT_FDCWD, b"/proc/self/fd\0", libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC, 0)?
        as i32;
    let mut fds = Vec::new();
    let mut buf = [0u8; 4096];
    let r = loop {
        let got = match sys::getdents64(dir, &mut buf) {
            Ok(0) => break Ok(()),
            Ok(g) => g as usize,
            Err(e) => break Err(e),
        };
        let mut at = 0;
        while at < got {
            let reclen = u16::from_ne_bytes([buf[at + 16], buf[at + 17]]) as usize;
            let name = &buf[at + 19..at + reclen];
            let name = &name[..name.iter().position(|&c| c == 0).unwrap_or(name.len())];
            if let Some(fd) = core::str::from_utf8(name).ok().and_then(|s| s.parse::<i32>().ok()) {
                if fd != dir && !skip.contains(&fd) {
                    fds.push(fd);
                }
            }
            at += reclen;
        }
    };
    let _ = sys::close(dir);
    r.map(|_| fds)
}

/// Describes every open fd.
pub fn dump(skip: &[i32]) -> Result<Vec<FdState>, String> {
    let fds = list_fds(skip).map_err(|e| format!("cannot list /proc/self/fd: errno {e}"))?;
    let mut out = Vec::with_capacity(fds.len());
    for fd in fds {
        let link = sys::readlink_string(&sys::cstr(&format!("/proc/self/fd/{fd}"))).unwrap_or_default();
        let flags = sys::fcntl(fd, libc::F_GETFL, 0).unwrap_or(0) as i32;
        let cloexec = sys::fcntl(fd, libc::F_GETFD, 0).map(|f| f as i32 & libc::FD_CLOEXEC != 0).unwrap_or(false);
        // SAFETY: an all-zero `stat` is a valid value of this plain C struct.
        let mut st: libc::stat = unsafe { core::mem::zeroed() };
        if sys::fstat(fd, &mut st).is_err() {
            continue;
        }
        let kind = match st.st_mode & libc::S_IFMT {
            libc::S_IFREG | libc::S_IFDIR if link.starts_with('/') && !link.ends_with(" (deleted)") => {
                let pos = sys::lseek(fd, 0, libc::SEEK_CUR).map(|p| p as i64).unwrap_or(0);
                let ident = memory::file_ident(&link).unwrap_or_default();
                FdKind::Regular { path: link, flags, pos, ident }
            }
            libc::S_IFCHR if link.starts_with("/dev/pts/") || link.starts_with("/dev/tty") || link == "/dev/console" => {
                FdKind::Tty { path: link, flags }
            }
            libc::S_IFCHR => FdKind::CharDevice { path: link, flags },
            libc::S_IFIFO => FdKind::Pipe { ino: st.st_ino, flags },
            libc::S_IFSOCK => FdKind::Socket { ino: st.st_ino, flags },
            _ => FdKind::Other { link },
        };
        out.push(FdState { fd, cloexec, kind });
    }
    Ok(out)
}

/// Why an fd cannot be restored yet, if it cannot.
pub fn unsupported(f: &FdState) -> Option<String> {
    if f.fd <= 2 && f.kind.inherited_as_stdio() {
        return None;
    }
    match &f.kind {
        FdKind::Regular { .. } | FdKind::CharDevice { .. } => None,
        k => Some(format!("fd {} ({}) cannot be checkpointed yet", f.fd, describe(k))),
    }
}

fn describe(k: &FdKind) -> String {
    match k {
        FdKind::Tty { path, .. } => format!("terminal {path}"),
        FdKind::Pipe { ino, .. } => format!("pipe:[{ino}]"),
        FdKind::Socket { ino, .. } => format!("socket:[{ino}]"),
        FdKind::Other { link } => link.clone(),
        FdKind::Regular { path, .. } | FdKind::CharDevice { path, .. } => path.clone(),
    }
}

/// Recreates the saved fds. `keep` are fds the restorer still needs (moved out of the way
/// first, their new numbers returned in place). Every other fd above 2 is closed.
pub fn restore(saved: &[FdState], keep: &mut [i32]) {
    let top = saved.iter().map(|f| f.fd).max().unwrap_or(2).max(2) + 1;
    let limit = top + keep.len() as i32;
    for k in keep.iter_mut() {
        if *k >= 0 && *k < limit {
            if let Ok(n) = sys::fcntl(*k, libc::F_DUPFD_CLOEXEC, (top + 64) as u64) {
                let _ = sys::close(*k);
                *k = n as i32;
            }
        }
    }
    if let Ok(open) = list_fds(keep) {
        for fd in open {
            let stdio_kept = fd <= 2 && saved.iter().any(|f| f.fd == fd && f.kind.inherited_as_stdio());
            if !stdio_kept {
                let _ = sys::close(fd);
            }
        }
    }
    for f in saved {
        let (path, flags, pos) = match &f.kind {
            FdKind::Regular { path, flags, pos, .. } => (path, *flags, Some(*pos)),
            FdKind::CharDevice { path, flags } => (path, *flags, None),
            _ => continue,
        };
        let oflags = flags & !(libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC | libc::O_NOCTTY) | libc::O_CLOEXEC;
        let fd = match sys::openat(libc::AT_FDCWD, &sys::cstr(path), oflags, 0) {
            Ok(fd) => fd as i32,
            Err(e) => {
                log::say!("warning: cannot reopen fd {} ({path}): errno {e}; it stays closed", f.fd);
                continue;
            }
        };
        if let Some(pos) = pos {
            let _ = sys::lseek(fd, pos, libc::SEEK_SET);
        }
        if fd != f.fd {
            let _ = sys::dup3(fd, f.fd, if f.cloexec { libc::O_CLOEXEC } else { 0 });
            let _ = sys::close(fd);
        } else if !f.cloexec {
            let _ = sys::fcntl(fd, libc::F_SETFD, 0);
        }
        log::debug!("fd {} reopened: {path}", f.fd);
    }
}
