//! inotify instances and their watches.
//!
//! `/proc/self/fdinfo` lists each watch's descriptor, mask and watched inode, but not the path
//! the program asked for: `inotify_add_watch` is wrapped (`api`) to remember it. Restore makes
//! a new instance and adds the watches again in the order of their descriptors, which gives
//! them the same numbers when, as usual, none was removed in between.

use crate::errno::Errno;
use super::{DumpCtx, FdInfo, Ops, RestoreCtx};
use crate::sys;
use pmig_image::{FileKind, FileState, InotifyWatch};
use std::sync::Mutex;

pub const OPS: Ops = Ops { name: "inotify", dump, restore };

/// A watch the program added: its descriptor, the absolute path, and the inode it named.
struct Added {
    wd: i32,
    path: String,
    dev: u64,
    ino: u64,
}

static ADDED: Mutex<Vec<Added>> = Mutex::new(Vec::new());

/// Remembers a watch the program added (called by the `inotify_add_watch` wrapper).
pub fn remember(wd: i32, path: &str) {
    let abs = if path.starts_with('/') {
        path.to_string()
    } else {
        let cwd = sys::readlink_string(b"/proc/self/cwd\0").unwrap_or_default();
        format!("{cwd}/{path}")
    };
    // SAFETY: an all-zero `stat` is a valid value of this plain C struct.
    let mut st: libc::stat = unsafe { core::mem::zeroed() };
    if sys::fstatat(libc::AT_FDCWD, &sys::cstr(&abs), &mut st, 0).is_err() {
        return;
    }
    if let Ok(mut v) = ADDED.lock() {
        v.retain(|a| !(a.wd == wd && a.ino == st.st_ino));
        v.push(Added { wd, path: abs, dev: st.st_dev, ino: st.st_ino });
    }
}

/// Parses the `inotify wd:... ino:... sdev:... mask:...` lines of an fdinfo: `(wd, ino, sdev, mask)`.
fn parse(fdinfo: &str) -> Vec<(i32, u64, u64, u32)> {
    fdinfo
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("inotify ")?;
            let field = |k: &str| rest.split_whitespace().find_map(|f| f.strip_prefix(k));
            Some((
                i32::from_str_radix(field("wd:")?, 16).ok()?,
                u64::from_str_radix(field("ino:")?, 16).ok()?,
                u64::from_str_radix(field("sdev:")?, 16).ok()?,
                u32::from_str_radix(field("mask:")?, 16).ok()?,
            ))
        })
        .collect()
}

/// The kernel's `sdev` (old_encode_dev style `major << 20 | minor`) as a `dev_t`.
fn dev_t(sdev: u64) -> u64 {
    libc::makedev((sdev >> 20) as u32, (sdev & 0xfffff) as u32)
}

fn dump(i: &FdInfo, _: &mut DumpCtx) -> Option<Result<FileKind, String>> {
    if i.link != "anon_inode:inotify" {
        return None;
    }
    // A thread stopped inside the wrapper may hold the table: then try again later.
    let Ok(added) = ADDED.try_lock() else {
        return Some(Err("the inotify watch table is busy; checkpoint again".into()));
    };
    let mut watches = Vec::new();
    for (wd, ino, sdev, mask) in parse(&i.fdinfo) {
        let Some(a) = added.iter().find(|a| a.wd == wd && a.ino == ino && a.dev == dev_t(sdev)) else {
            return Some(Err(format!("inotify watch {wd} (inode {ino}) was not added through libc; its path is unknown")));
        };
        watches.push(InotifyWatch { wd, path: a.path.clone(), mask });
    }
    watches.sort_by_key(|w| w.wd);
    Some(Ok(FileKind::Inotify { watches }))
}

fn restore(f: &FileState, _: &mut RestoreCtx) -> Option<Result<i32, String>> {
    let FileKind::Inotify { watches } = &f.kind else { return None };
    Some((|| {
        let fd = sys::inotify_init1(libc::IN_CLOEXEC).map_err(|e| format!("inotify_init1: {}", Errno(e)))? as i32;
        for w in watches {
            match sys::inotify_add_watch(fd, &sys::cstr(&w.path), w.mask) {
                Ok(wd) if wd as i32 == w.wd => {}
                Ok(wd) => crate::log::say!("warning: inotify watch on {} is now {wd}, was {}", w.path, w.wd),
                Err(e) => crate::log::say!("warning: cannot watch {} again: {}", w.path, Errno(e)),
            }
        }
        Ok(fd)
    })())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_inotify_fdinfo() {
        let w = parse("pos:\t0\nflags:\t02004000\ninotify wd:2 ino:1a sdev:800001 mask:100 ignored_mask:0 fhandle-bytes:8 fhandle-type:1 f_handle:1a00000000000000\n");
        assert_eq!(w, vec![(2, 0x1a, 0x800001, 0x100)]);
        assert_eq!(dev_t(0x800001), libc::makedev(8, 1));
    }
}
