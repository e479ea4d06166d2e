//! Files with a path: regular files and directories (reopened at their path and offset),
//! files deleted while open and memfds (their content travels in the image), terminals and
//! other character devices (reopened), pty masters (see `pty`).

use crate::errno::Errno;
use super::{FdInfo, DumpCtx, Ops, RestoreCtx};
use crate::{memory, sys};
use pmig_image::{FileKind, FileState};

pub const OPS: Ops = Ops { name: "file", dump, restore };

/// The largest deleted file or memfd whose content is saved.
const MAX_CONTENT: u64 = 1 << 30;

/// The whole content of the file open as `fd`; a write-only fd is read through a new
/// read-only open of its `/proc/self/fd` link (which works for deleted files too).
fn read_all(fd: i32, size: u64) -> Result<Vec<u8>, String> {
    if size > MAX_CONTENT {
        return Err(format!("its content ({size} bytes) is too large to carry in the image"));
    }
    let writeonly = sys::fcntl(fd, libc::F_GETFL, 0).map(|f| f as i32 & libc::O_ACCMODE == libc::O_WRONLY).unwrap_or(false);
    if writeonly {
        let path = sys::cstr(&format!("/proc/self/fd/{fd}"));
        let rd = sys::openat(libc::AT_FDCWD, &path, libc::O_RDONLY | libc::O_CLOEXEC, 0)
            .map_err(|e| format!("cannot reopen it to read its content: {}", Errno(e)))? as i32;
        let r = read_all(rd, size);
        let _ = sys::close(rd);
        return r;
    }
    sys::pread_all(fd, size).map_err(|e| format!("cannot read its content: {}", Errno(e)))
}

fn dump(i: &FdInfo, _: &mut DumpCtx) -> Option<Result<FileKind, String>> {
    let t = i.file_type();
    if t == libc::S_IFREG && i.link.starts_with("/memfd:") {
        let name = i.link.trim_start_matches("/memfd:").trim_end_matches(" (deleted)").to_string();
        let ino = i.st.st_ino;
        let mode = i.st.st_mode & 0o7777;
        // F_GET_SEALS: a memfd made without MFD_ALLOW_SEALING answers F_SEAL_SEAL.
        let seals = sys::fcntl(i.fd, F_GET_SEALS, 0).map(|s| s as u32).unwrap_or(F_SEAL_SEAL);
        return Some(read_all(i.fd, i.st.st_size as u64).map(|content| FileKind::Memfd { name, ino, content, mode, seals }));
    }
    if (t == libc::S_IFREG || t == libc::S_IFDIR) && i.link.starts_with('/') {
        if let Some(path) = i.link.strip_suffix(" (deleted)") {
            if t == libc::S_IFREG && i.st.st_nlink == 0 {
                let path = path.to_string();
                let ino = i.st.st_ino;
                let ns = |s: i64, n: i64| s as i128 * 1_000_000_000 + n as i128;
                let meta = pmig_image::FileMeta {
                    mode: i.st.st_mode & 0o7777,
                    uid: i.st.st_uid,
                    gid: i.st.st_gid,
                    atime_ns: ns(i.st.st_atime, i.st.st_atime_nsec),
                    mtime_ns: ns(i.st.st_mtime, i.st.st_mtime_nsec),
                };
                return Some(read_all(i.fd, i.st.st_size as u64).map(|content| FileKind::Deleted { path, ino, content, meta }));
            }
        }
        let ident = memory::file_ident(&i.link).unwrap_or_default();
        return Some(Ok(FileKind::Regular { path: i.link.clone(), ident }));
    }
    if t == libc::S_IFCHR && libc::major(i.st.st_rdev) == pmig_abi::pty::PTMX_MAJOR && libc::minor(i.st.st_rdev) == pmig_abi::pty::PTMX_MINOR {
        return Some(super::pty::dump(i));
    }
    if t == libc::S_IFCHR {
        let tty = i.link.starts_with("/dev/pts/") || i.link.starts_with("/dev/tty") || i.link == "/dev/console";
        let path = i.link.clone();
        return Some(Ok(if tty { FileKind::Tty { path } } else { FileKind::CharDevice { path } }));
    }
    None
}

/// Open flags without the ones that only matter when a file is created.
fn reopen_flags(flags: i32) -> i32 {
    flags & !(libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC | libc::O_NOCTTY) | libc::O_CLOEXEC
}

const F_ADD_SEALS: i32 = 1033;
const F_GET_SEALS: i32 = 1034;
const F_SEAL_SEAL: u32 = 1;
const MFD_ALLOW_SEALING: u32 = 2;

/// Keeps `made` (read/write, at offset 0) for other descriptions of the same file, and
/// returns this description: `made` itself when the saved one was read/write, else a new
/// one with the saved access mode; at the saved offset.
fn keep_made(ctx: &mut RestoreCtx, ino: u64, made: i32, f: &FileState) -> Result<i32, String> {
    let made = ctx.lift(made)?;
    ctx.deleted.push((ino, made));
    let fd = if f.flags & libc::O_ACCMODE == libc::O_RDWR {
        sys::fcntl(made, libc::F_DUPFD_CLOEXEC, ctx.high as u64).map(|fd| fd as i32)
    } else {
        sys::openat(libc::AT_FDCWD, &sys::cstr(&format!("/proc/self/fd/{made}")), reopen_flags(f.flags), 0).map(|fd| fd as i32)
    }
    .map_err(|e| format!("cannot open it again as saved: {}", Errno(e)))?;
    let _ = sys::lseek(fd, f.pos, libc::SEEK_SET);
    Ok(fd)
}

fn with_content(fd: i32, content: &[u8], pos: i64) -> Result<i32, String> {
    sys::write_all(fd, content).map_err(|e| format!("cannot write its content back: {}", Errno(e)))?;
    let _ = sys::lseek(fd, pos, libc::SEEK_SET);
    Ok(fd)
}

fn restore(f: &FileState, ctx: &mut RestoreCtx) -> Option<Result<i32, String>> {
    let open = |path: &str, flags: i32| {
        sys::openat(libc::AT_FDCWD, &sys::cstr(path), flags, 0).map(|fd| fd as i32).map_err(|e| format!("cannot open {path}: {}", Errno(e)))
    };
    // An open file description other processes of the tree share: pmig-resume opened it once
    // (at its offset) and this process inherited it.
    if f.shared != 0 {
        if let Some(o) = ctx.objects.iter().find(|o| o.0 == f.shared && o.2 == pmig_abi::OBJECT_FILE) {
            return Some(sys::fcntl(o.1, libc::F_DUPFD_CLOEXEC, ctx.high as u64).map(|fd| fd as i32).map_err(|e| format!("{}", Errno(e))));
        }
    }
    Some(match &f.kind {
        FileKind::Regular { path, .. } => open(path, reopen_flags(f.flags)).inspect(|&fd| {
            let _ = sys::lseek(fd, f.pos, libc::SEEK_SET);
        }),
        FileKind::Tty { path } => match super::pty::slave_of_tree(path, &ctx.objects) {
            Some(master) => pmig_abi::pty::peer(master, reopen_flags(f.flags) | libc::O_NOCTTY).map_err(|e| format!("cannot open the slave of its pty: {}", Errno(e))),
            None => open(path, reopen_flags(f.flags) | libc::O_NOCTTY),
        },
        FileKind::PtyMaster { index, .. } => match ctx.objects.iter().find(|o| o.0 == u64::from(*index) && o.2 == pmig_abi::OBJECT_PTY) {
            Some(o) => sys::fcntl(o.1, libc::F_DUPFD_CLOEXEC, ctx.high as u64).map(|fd| fd as i32).map_err(|e| format!("{}", Errno(e))),
            None => Err(format!("pmig-resume did not make the pty /dev/pts/{index} again")),
        },
        FileKind::CharDevice { path } => open(path, reopen_flags(f.flags) | libc::O_NOCTTY),
        FileKind::Deleted { ino, .. } | FileKind::Memfd { ino, .. } if ctx.objects.iter().any(|o| o.0 == *ino && o.2 == pmig_abi::OBJECT_SHARED_MEMORY) => {
            // Also mapped shared: pmig-resume made the object (with this content) for the
            // mapping; open a new description of that same object.
            let ofd = ctx.objects.iter().find(|o| o.0 == *ino && o.2 == pmig_abi::OBJECT_SHARED_MEMORY).map(|o| o.1).unwrap_or(-1);
            let acc = if f.flags & libc::O_ACCMODE == libc::O_RDONLY { libc::O_RDONLY } else { libc::O_RDWR };
            open(&format!("/proc/self/fd/{ofd}"), acc | libc::O_CLOEXEC).inspect(|&fd| {
                let _ = sys::lseek(fd, f.pos, libc::SEEK_SET);
                if let FileKind::Memfd { name, mode, seals, .. } = &f.kind {
                    let _ = sys::fchmod(fd, *mode);
                    let now = sys::fcntl(fd, F_GET_SEALS, 0).unwrap_or(0) as u32;
                    if *seals & !now != 0 {
                        if let Err(e) = sys::fcntl(fd, F_ADD_SEALS, (*seals & !now) as u64) {
                            crate::log::say!("warning: memfd {name} cannot be sealed again ({seals:#x}): {}", Errno(e));
                        }
                    }
                }
            })
        }
        FileKind::Deleted { ino, .. } | FileKind::Memfd { ino, .. } if ctx.deleted.iter().any(|d| d.0 == *ino) => {
            // Another description of a file this restore already made: the same file.
            let made = ctx.deleted.iter().find(|d| d.0 == *ino).map_or(-1, |d| d.1);
            open(&format!("/proc/self/fd/{made}"), reopen_flags(f.flags)).inspect(|&fd| {
                let _ = sys::lseek(fd, f.pos, libc::SEEK_SET);
            })
        }
        FileKind::Deleted { path, content, meta, ino } => {
            // An unlinked file in the same directory (or /tmp), as the original was, with its
            // mode, owner (where this process may) and times.
            let dir = path.rsplit_once('/').map(|(d, _)| if d.is_empty() { "/" } else { d }).unwrap_or("/tmp");
            let tmp = libc::O_TMPFILE | libc::O_RDWR | libc::O_CLOEXEC;
            let made = sys::openat(libc::AT_FDCWD, &sys::cstr(dir), tmp, meta.mode)
                .or_else(|_| sys::openat(libc::AT_FDCWD, b"/tmp\0", tmp, meta.mode))
                .map(|fd| fd as i32)
                .map_err(|e| format!("cannot make the deleted file {path} again: {}", Errno(e)))
                .and_then(|fd| with_content(fd, content, 0));
            made.and_then(|fd| {
                let _ = sys::fchmod(fd, meta.mode);
                let _ = sys::fchown(fd, meta.uid, meta.gid);
                let ts = |ns: i128| libc::timespec { tv_sec: (ns / 1_000_000_000) as i64, tv_nsec: (ns % 1_000_000_000) as i64 };
                let _ = sys::futimens(fd, &[ts(meta.atime_ns), ts(meta.mtime_ns)]);
                keep_made(ctx, *ino, fd, f)
            })
        }
        FileKind::Memfd { name, content, mode, seals, ino } => {
            let flags = libc::MFD_CLOEXEC | if seals & F_SEAL_SEAL == 0 || *seals != F_SEAL_SEAL { MFD_ALLOW_SEALING } else { 0 };
            sys::memfd_create(&sys::cstr(name), flags)
                .map_err(|e| format!("memfd_create: {}", Errno(e)))
                .and_then(|fd| with_content(fd as i32, content, 0))
                .and_then(|fd| {
                    let _ = sys::fchmod(fd, *mode);
                    if flags & MFD_ALLOW_SEALING != 0 && *seals != 0 {
                        if let Err(e) = sys::fcntl(fd, F_ADD_SEALS, *seals as u64) {
                            crate::log::say!("warning: memfd {name} cannot be sealed again ({seals:#x}): {}", Errno(e));
                        }
                    }
                    keep_made(ctx, *ino, fd, f)
                })
        }
        _ => return None,
    })
}
