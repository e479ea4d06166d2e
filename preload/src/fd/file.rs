//! Files with a path: regular files and directories (reopened at their path and offset),
//! files deleted while open and memfds (their content travels in the image), terminals and
//! other character devices (reopened).

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
        return Some(read_all(i.fd, i.st.st_size as u64).map(|content| FileKind::Memfd { name, ino, content }));
    }
    if (t == libc::S_IFREG || t == libc::S_IFDIR) && i.link.starts_with('/') {
        if let Some(path) = i.link.strip_suffix(" (deleted)") {
            if t == libc::S_IFREG && i.st.st_nlink == 0 {
                let path = path.to_string();
                let ino = i.st.st_ino;
                return Some(read_all(i.fd, i.st.st_size as u64).map(|content| FileKind::Deleted { path, ino, content }));
            }
        }
        let ident = memory::file_ident(&i.link).unwrap_or_default();
        return Some(Ok(FileKind::Regular { path: i.link.clone(), ident }));
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
        FileKind::Tty { path } | FileKind::CharDevice { path } => open(path, reopen_flags(f.flags) | libc::O_NOCTTY),
        FileKind::Deleted { ino, .. } | FileKind::Memfd { ino, .. } if ctx.objects.iter().any(|o| o.0 == *ino && o.2 == pmig_abi::OBJECT_SHARED_MEMORY) => {
            // Also mapped shared: pmig-resume made the object (with this content) for the
            // mapping; open a new description of that same object.
            let ofd = ctx.objects.iter().find(|o| o.0 == *ino && o.2 == pmig_abi::OBJECT_SHARED_MEMORY).map(|o| o.1).unwrap_or(-1);
            let acc = if f.flags & libc::O_ACCMODE == libc::O_RDONLY { libc::O_RDONLY } else { libc::O_RDWR };
            open(&format!("/proc/self/fd/{ofd}"), acc | libc::O_CLOEXEC).inspect(|&fd| {
                let _ = sys::lseek(fd, f.pos, libc::SEEK_SET);
            })
        }
        FileKind::Deleted { path, content, .. } => {
            // An unlinked file in the same directory (or /tmp), as the original was.
            let dir = path.rsplit_once('/').map(|(d, _)| if d.is_empty() { "/" } else { d }).unwrap_or("/tmp");
            let tmp = libc::O_TMPFILE | libc::O_RDWR | libc::O_CLOEXEC;
            open(dir, tmp).or_else(|_| open("/tmp", tmp)).and_then(|fd| with_content(fd, content, f.pos))
        }
        FileKind::Memfd { name, content, .. } => sys::memfd_create(&sys::cstr(name), libc::MFD_CLOEXEC)
            .map_err(|e| format!("memfd_create: {}", Errno(e)))
            .and_then(|fd| with_content(fd as i32, content, f.pos)),
        _ => return None,
    })
}
