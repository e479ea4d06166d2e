//! Pipes and FIFOs, with the bytes written but not yet read.
//!
//! Dump copies the queued bytes out of the pipe with `tee(2)` into a private pipe of the same
//! capacity, so the continuing process keeps them; restore writes them back, in order, into
//! the new pipe. Both ends of a pipe the process holds become one new pipe again; an end whose
//! peer was outside the process gets a new pipe whose other end is closed (EOF for a reader,
//! EPIPE for a writer), as if the peer had gone away.

use crate::errno::Errno;
use super::{DumpCtx, FdInfo, Ops, RestoreCtx};
use crate::sys;
use pmig_image::{FileKind, FileState};

pub const OPS: Ops = Ops { name: "pipe", dump, restore };

const F_SETPIPE_SZ: i32 = 1031;
const F_GETPIPE_SZ: i32 = 1032;

/// The bytes queued in the pipe `fd` (a read end), without consuming them.
fn queued(fd: i32, capacity: u32) -> Result<Vec<u8>, String> {
    let (r, w) = sys::pipe2(libc::O_CLOEXEC | libc::O_NONBLOCK).map_err(|e| format!("pipe2: {}", Errno(e)))?;
    let result = (|| {
        let _ = sys::fcntl(w, F_SETPIPE_SZ, capacity as u64);
        let n = match sys::tee(fd, w, capacity as u64, libc::SPLICE_F_NONBLOCK) {
            Ok(n) => n as usize,
            Err(libc::EAGAIN) => 0,
            Err(e) => return Err(format!("tee: {}", Errno(e))),
        };
        let mut data = vec![0u8; n];
        let mut got = 0;
        while got < n {
            match sys::read(r, &mut data[got..]) {
                Ok(0) | Err(libc::EAGAIN) => break,
                Ok(k) => got += k as usize,
                Err(e) => return Err(format!("reading the pipe's copy: {}", Errno(e))),
            }
        }
        data.truncate(got);
        Ok(data)
    })();
    let _ = sys::close(r);
    let _ = sys::close(w);
    result
}

fn dump(i: &FdInfo, ctx: &mut DumpCtx) -> Option<Result<FileKind, String>> {
    if i.file_type() != libc::S_IFIFO {
        return None;
    }
    let ino = i.st.st_ino;
    let read_end = i.flags & libc::O_ACCMODE != libc::O_WRONLY;
    let fifo = i.link.starts_with('/').then(|| i.link.clone());
    let capacity = sys::fcntl(i.fd, F_GETPIPE_SZ, 0).unwrap_or(65536) as u32;
    let mut data = Vec::new();
    if read_end && !ctx.pipes_with_data.contains(&ino) {
        match queued(i.fd, capacity) {
            Ok(d) => data = d,
            Err(e) => return Some(Err(e)),
        }
        ctx.pipes_with_data.push(ino);
    }
    Some(Ok(FileKind::Pipe { ino, read_end, fifo, capacity, data }))
}

fn restore(f: &FileState, ctx: &mut RestoreCtx) -> Option<Result<i32, String>> {
    let FileKind::Pipe { ino, read_end, fifo, capacity, data } = &f.kind else { return None };
    Some((|| {
        if let Some(path) = fifo {
            // A deleted FIFO: made again beside its old name (once for the whole tree), and
            // removed once every process has opened it.
            let path = &match path.strip_suffix(" (deleted)") {
                Some(old) => {
                    let made = super::beside_shared(old, "fifo", *ino);
                    match sys::mknod(&sys::cstr(&made), libc::S_IFIFO | 0o600) {
                        Ok(_) | Err(libc::EEXIST) => {}
                        Err(e) => return Err(format!("cannot make a FIFO in place of the deleted {old}: {}", Errno(e))),
                    }
                    if !ctx.unlink_later.contains(&made) {
                        ctx.unlink_later.push(made.clone());
                    }
                    made
                }
                None => path.clone(),
            };
            // Opening a FIFO read/write never blocks; the real end is opened beside it.
            let c = sys::cstr(path);
            let holder = sys::openat(libc::AT_FDCWD, &c, libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC, 0)
                .map_err(|e| format!("cannot open FIFO {path}: {}", Errno(e)))? as i32;
            let mode = f.flags & libc::O_ACCMODE;
            let fd = if mode == libc::O_RDWR {
                sys::fcntl(holder, libc::F_DUPFD_CLOEXEC, 0).map(|f| f as i32)
            } else {
                sys::openat(libc::AT_FDCWD, &c, mode | libc::O_NONBLOCK | libc::O_CLOEXEC, 0).map(|f| f as i32)
            }
            .map_err(|e| format!("cannot open FIFO {path}: {}", Errno(e)))?;
            let _ = sys::write_all(holder, data);
            let _ = sys::close(holder);
            return Ok(fd);
        }
        // A pipe other processes of the tree share: pmig-resume made it (with its bytes) and
        // this process inherited both ends.
        let want = if *read_end { pmig_abi::OBJECT_PIPE_READ } else { pmig_abi::OBJECT_PIPE_WRITE };
        if let Some(o) = ctx.objects.iter().find(|o| o.0 == *ino && o.2 == want) {
            return sys::fcntl(o.1, libc::F_DUPFD_CLOEXEC, ctx.high as u64).map(|f| f as i32).map_err(|e| format!("{}", Errno(e)));
        }
        let at = match ctx.pipes.iter().position(|p| p.0 == *ino) {
            Some(at) => at,
            None => {
                let (r, w) = sys::pipe2(libc::O_CLOEXEC).map_err(|e| format!("pipe2: {}", Errno(e)))?;
                let _ = sys::fcntl(w, F_SETPIPE_SZ, *capacity as u64);
                let (r, w) = (ctx.lift(r)?, ctx.lift(w)?);
                ctx.pipes.push((*ino, r, w));
                ctx.pipes.len() - 1
            }
        };
        let (_, r, w) = ctx.pipes[at];
        if !data.is_empty() {
            // Capacity is what it was, so the queued bytes fit without blocking.
            sys::write_all(w, data).map_err(|e| format!("cannot put the queued bytes back: {}", Errno(e)))?;
        }
        let end = if *read_end { r } else { w };
        if ctx.pipe_ends.contains(&(*ino, *read_end)) {
            // Another description of this end (opened through /proc/self/fd): a new one, so
            // that its flags stay its own (the pipe has both ends open here: no wait).
            let acc = if *read_end { libc::O_RDONLY } else { libc::O_WRONLY };
            let path = sys::cstr(&format!("/proc/self/fd/{end}"));
            return sys::openat(libc::AT_FDCWD, &path, acc | libc::O_NONBLOCK | libc::O_CLOEXEC, 0)
                .map(|f| f as i32)
                .map_err(|e| format!("cannot open another description of the pipe: {}", Errno(e)));
        }
        ctx.pipe_ends.push((*ino, *read_end));
        sys::fcntl(end, libc::F_DUPFD_CLOEXEC, ctx.high as u64).map(|f| f as i32).map_err(|e| format!("{}", Errno(e)))
    })())
}
