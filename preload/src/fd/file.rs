//! Files with a path: regular files and directories (reopened at their path and offset),
//! files deleted while open and memfds (their content travels in the image), terminals and
//! other character devices (reopened), pty masters (see `pty`).

use crate::errno::Errno;
use super::{FdInfo, DumpCtx, Ops, RestoreCtx};
use crate::{memory, sys};
use pmig_image::{FileContent, FileKind, FileState};

pub const OPS: Ops = Ops { name: "file", dump, restore };

/// The largest deleted file or memfd whose content is saved.
const MAX_CONTENT: u64 = 1 << 30;

/// The content of the file open as `fd`, `size` bytes: its data extents (`SEEK_DATA` /
/// `SEEK_HOLE`, on a read-only description of its own opened through `/proc/self/fd`, which
/// works for deleted files and memfds and leaves the program's offset alone); holes are not
/// read.
fn read_all(fd: i32, size: u64) -> Result<FileContent, String> {
    let path = sys::cstr(&format!("/proc/self/fd/{fd}"));
    let rd = sys::openat(libc::AT_FDCWD, &path, libc::O_RDONLY | libc::O_CLOEXEC, 0)
        .map_err(|e| format!("cannot reopen it to read its content: {}", Errno(e)))? as i32;
    let r = read_extents(rd, size);
    let _ = sys::close(rd);
    r
}

fn read_extents(rd: i32, size: u64) -> Result<FileContent, String> {
    let err = |e: i32| format!("cannot read its content: {}", Errno(e));
    let mut c = FileContent { size, extents: Vec::new() };
    let mut off = 0u64;
    while off < size {
        let data = match sys::lseek(rd, off as i64, libc::SEEK_DATA) {
            Ok(d) => d,
            // No data after `off`: the rest is a hole.
            Err(libc::ENXIO) => break,
            // A file system without holes: all data.
            Err(libc::EINVAL) => off,
            Err(e) => return Err(err(e)),
        };
        if data >= size {
            break;
        }
        let hole = sys::lseek(rd, data as i64, libc::SEEK_HOLE).unwrap_or(size).min(size);
        let len = hole.saturating_sub(data).max(1);
        c.stored_check(len, MAX_CONTENT)?;
        let mut b = vec![0u8; len as usize];
        let mut got = 0usize;
        while got < b.len() {
            match sys::pread(rd, &mut b[got..], data + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n as usize,
                Err(libc::EINTR) => {}
                Err(e) => return Err(err(e)),
            }
        }
        b.truncate(got);
        off = data + got.max(1) as u64;
        if !b.is_empty() {
            c.extents.push((data, b));
        }
    }
    Ok(c)
}

trait StoredCheck {
    fn stored_check(&self, more: u64, max: u64) -> Result<(), String>;
}

impl StoredCheck for FileContent {
    fn stored_check(&self, more: u64, max: u64) -> Result<(), String> {
        let total = self.stored() + more;
        if total > max {
            return Err(format!("its data ({total} bytes so far, holes aside) is too large to carry in the image"));
        }
        Ok(())
    }
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
            let path = path.to_string();
            let ino = i.st.st_ino;
            let meta = meta_of(&i.st);
            if t == libc::S_IFREG && i.st.st_nlink == 0 {
                return Some(read_all(i.fd, i.st.st_size as u64).map(|content| FileKind::Deleted { path, ino, content, meta }));
            }
            if t == libc::S_IFDIR && i.st.st_nlink == 0 {
                return Some(Ok(FileKind::DeletedDir { path, ino, meta }));
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

/// Mode, owner and times of a file.
pub fn meta_of(st: &libc::stat) -> pmig_image::FileMeta {
    let ns = |s: i64, n: i64| s as i128 * 1_000_000_000 + n as i128;
    pmig_image::FileMeta {
        mode: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
        atime_ns: ns(st.st_atime, st.st_atime_nsec),
        mtime_ns: ns(st.st_mtime, st.st_mtime_nsec),
    }
}

/// A name for something made again in place of a deleted `path` (a directory, a FIFO): beside
/// it when its directory is still there, else in /tmp; free now.
pub fn beside(path: &str, what: &str, ino: u64) -> String {
    format!("{}-{}", beside_shared(path, what, ino), sys::getpid())
}

/// As `beside`, one name for every process of a tree (what they make together).
pub fn beside_shared(path: &str, what: &str, ino: u64) -> String {
    let parent = match path.rfind('/') {
        Some(0) => "/",
        Some(at) => &path[..at],
        None => ".",
    };
    // SAFETY: an all-zero `stat` is a valid value of this plain C struct.
    let mut st: libc::stat = unsafe { core::mem::zeroed() };
    let dir = if sys::fstatat(libc::AT_FDCWD, &sys::cstr(parent), &mut st, 0).is_ok() && st.st_mode & libc::S_IFMT == libc::S_IFDIR { parent } else { "/tmp" };
    format!("{}/.pmig-{what}-{ino}", dir.trim_end_matches('/'))
}

/// Makes an empty directory in place of the deleted directory `path` and returns an fd on it,
/// the directory removed again (its mode and, where allowed, owner as saved).
pub fn make_deleted_dir(path: &str, ino: u64, meta: &pmig_image::FileMeta) -> Result<i32, String> {
    let tmp = beside(path, "dir", ino);
    let c = sys::cstr(&tmp);
    sys::mkdir(&c, 0o700).map_err(|e| format!("cannot make a directory in place of {path} ({tmp}): {}", Errno(e)))?;
    let fd = sys::openat(libc::AT_FDCWD, &c, libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC, 0).map(|fd| fd as i32);
    let _ = sys::rmdir(&c);
    let fd = fd.map_err(|e| format!("cannot open the directory made in place of {path}: {}", Errno(e)))?;
    let _ = sys::fchown(fd, meta.uid, meta.gid);
    let _ = sys::fchmod(fd, meta.mode);
    Ok(fd)
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

/// Gives the new file `fd` its size and data (its holes stay holes).
fn with_content(fd: i32, content: &FileContent, pos: i64) -> Result<i32, String> {
    let err = |e: i32| format!("cannot write its content back: {}", Errno(e));
    sys::ftruncate(fd, content.size as i64).map_err(err)?;
    for (off, b) in &content.extents {
        let mut done = 0usize;
        while done < b.len() {
            match sys::pwrite(fd, &b[done..], off + done as u64) {
                Ok(0) => return Err(err(libc::EIO)),
                Ok(n) => done += n as usize,
                Err(libc::EINTR) => {}
                Err(e) => return Err(err(e)),
            }
        }
    }
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
        FileKind::DeletedDir { path, ino, meta } => match ctx.deleted.iter().find(|d| d.0 == *ino) {
            Some(&(_, made)) => open(&format!("/proc/self/fd/{made}"), reopen_flags(f.flags)),
            None => make_deleted_dir(path, *ino, meta).and_then(|made| keep_made(ctx, *ino, made, f)),
        },
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
