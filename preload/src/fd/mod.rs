//! File descriptors: what each open fd is (dump) and making it again (restore).
//!
//! Dump runs in the checkpoint thread with the others parked (arena allocation only); restore
//! runs in the restored checkpoint thread before any other thread exists. Both use raw system
//! calls only.
//!
//! The model is CRIU's: *files* (open file descriptions, with their offset and flags) and
//! *fds* (numbers pointing at files). fds that share a description — after `dup`, or inherited
//! — are found with `kcmp(KCMP_FILE)` and share one file, so after restore they share their
//! offset again. Each resource family has its own module with a dump/restore pair, registered
//! in [`OPS`]; the first entry that claims an fd handles it.

mod board;
pub use board::Board;
mod event;
mod file;
pub use file::{beside_shared, make_deleted_dir, meta_of};
pub mod inotify;
mod pipe;
mod pty;
pub mod socket;

use crate::errno::Errno;
use crate::{log, sys};
use pmig_image::{FdState, FileKind, FileState};

/// What dump knows about an fd before a family claims it.
pub struct FdInfo {
    pub fd: i32,
    /// The `/proc/self/fd` link.
    pub link: String,
    pub st: libc::stat,
    /// `fcntl(F_GETFL)`.
    pub flags: i32,
    /// `/proc/self/fdinfo/N`.
    pub fdinfo: String,
    /// The key (with `pmig_abi::SHARE_*` flags) the tree's root gave this fd's open file
    /// description, when other processes of the tree hold it too; else 0.
    pub share: u64,
}

impl FdInfo {
    /// The value after `key` in fdinfo (e.g. `"eventfd-count:"`).
    pub fn field(&self, key: &str) -> Option<&str> {
        self.fdinfo.lines().find_map(|l| l.strip_prefix(key)).map(|v| v.trim())
    }

    pub fn file_type(&self) -> u32 {
        self.st.st_mode & libc::S_IFMT
    }
}

/// Per `(family, protocol)`: the sockets shut down in either direction, as `(inode, bits)`.
pub type ShutdownTable = Vec<((i32, i32), Vec<(u64, u8)>)>;

/// State shared by the dumps of one checkpoint.
#[derive(Default)]
pub struct DumpCtx {
    /// Pipe inodes whose queued data is already saved.
    pub pipes_with_data: Vec<u64>,
    /// Per `(family, protocol)`: the sockets shut down in either direction (inode, bits),
    /// listed once per checkpoint (see `socket::inet_shutdowns`).
    pub inet_shutdowns: ShutdownTable,
}

/// State shared by the restores of one restore.
pub struct RestoreCtx {
    /// Every fd restore creates is moved at or above this, clear of all saved fd numbers.
    pub high: i32,
    /// Ends of pipes recreated so far: `(ino, read fd, write fd)` (-1 once used).
    pub pipes: Vec<(u64, i32, i32)>,
    /// Ends of socketpairs recreated so far: `(ino, fd)`.
    pub pairs: Vec<(u64, i32)>,
    /// Time between the checkpoint and this restore, per clock (timers ran on).
    pub gap: crate::timer::Gap,
    /// Pipe ends already given to a description: `(inode, read end)`.
    pub pipe_ends: Vec<(u64, bool)>,
    /// Deleted files and memfds made so far: `(inode at checkpoint, read/write fd)`.
    pub deleted: Vec<(u64, i32)>,
    /// Names made for this restore only (a deleted FIFO made again), removed once every
    /// process of the tree has its fds.
    pub unlink_later: Vec<String>,
    /// Objects pmig-resume made and this process inherits: `(inode at checkpoint, fd, kind)`
    /// (`pmig_abi::OBJECT_*`: shared memory, the ends of pipes the tree shares).
    pub objects: Vec<(u64, i32, u32)>,
}

impl RestoreCtx {
    /// Moves `fd` to a number at or above `high` (close-on-exec until placed).
    pub fn lift(&self, fd: i32) -> Result<i32, String> {
        if fd >= self.high {
            return Ok(fd);
        }
        let n = sys::fcntl(fd, libc::F_DUPFD_CLOEXEC, self.high as u64).map_err(|e| format!("F_DUPFD: {}", Errno(e)))?;
        let _ = sys::close(fd);
        Ok(n as i32)
    }
}

/// One resource family: `dump` returns `None` for fds that are not its kind; `restore`
/// returns `None` for files that are not its kind, else a new fd for the file (any number).
pub struct Ops {
    pub name: &'static str,
    pub dump: fn(&FdInfo, &mut DumpCtx) -> Option<Result<FileKind, String>>,
    pub restore: fn(&FileState, &mut RestoreCtx) -> Option<Result<i32, String>>,
}

/// Every family, most specific first.
const OPS: &[&Ops] = &[&pipe::OPS, &socket::OPS, &event::OPS, &inotify::OPS, &file::OPS];

/// Lists the open fds, skipping `skip` (and the listing's own fd).
fn list_fds(skip: &[i32]) -> Result<Vec<i32>, i32> {
    let mut fds = Vec::new();
    sys::for_each_numbered_entry(b"/proc/self/fd\0", |fd, dir| {
        if fd != dir && !skip.contains(&fd) {
            fds.push(fd);
        }
    })?;
    fds.sort_unstable();
    Ok(fds)
}

fn fd_info(fd: i32) -> Option<FdInfo> {
    // SAFETY: an all-zero `stat` is a valid value of this plain C struct.
    let mut st: libc::stat = unsafe { core::mem::zeroed() };
    sys::fstat(fd, &mut st).ok()?;
    let link = sys::readlink_string(&sys::cstr(&format!("/proc/self/fd/{fd}"))).unwrap_or_default();
    let fdinfo = sys::read_file_vec(&sys::cstr(&format!("/proc/self/fdinfo/{fd}")))
        .map(|v| String::from_utf8_lossy(&v).into_owned())
        .unwrap_or_default();
    let flags = sys::fcntl(fd, libc::F_GETFL, 0).unwrap_or(0) as i32;
    Some(FdInfo { fd, link, st, flags, fdinfo, share: 0 })
}

// <asm-generic/fcntl.h> (the libc crate lacks them).
const F_SETSIG: i32 = 10;
const F_GETSIG: i32 = 11;
const F_SETOWN_EX: i32 = 15;
const F_GETOWN_EX: i32 = 16;
const F_OWNER_TID: i32 = 0;
const F_OWNER_PGRP: i32 = 2;

/// Gives each fd its owner thread back (`F_SETOWN_EX`, `F_OWNER_TID`), the threads recreated.
pub fn set_owners(owners: &[(i32, (i32, i32))]) {
    for &(fd, (kind, id)) in owners {
        let own = [kind, crate::pid::to_real(id)];
        if let Err(e) = sys::fcntl(fd, F_SETOWN_EX, own.as_ptr() as u64) {
            log::debug!("fd {fd}: cannot give its owner thread {id} back: {}", Errno(e));
        }
    }
}

/// Describes every open fd: the files and the fd table.
/// With `drop_unsupported`, an fd no family can save becomes `Other` (restored closed)
/// instead of failing the dump.
/// `shares`: `(fd, key)` of the fds whose open file description other processes of the tree
/// hold too (found by the tree's root).
pub fn dump(skip: &[i32], drop_unsupported: bool, shares: &[(i32, u64)]) -> Result<(Vec<FileState>, Vec<FdState>), String> {
    let fds = list_fds(skip).map_err(|e| format!("cannot list /proc/self/fd: {}", Errno(e)))?;
    let mut files: Vec<FileState> = Vec::new();
    // For each file: one fd that refers to it, and its (dev, ino), to find sharers quickly.
    let mut reps: Vec<(i32, u64, u64)> = Vec::new();
    let mut table = Vec::with_capacity(fds.len());
    let mut ctx = DumpCtx::default();
    for fd in fds {
        let Some(mut info) = fd_info(fd) else { continue };
        info.share = shares.iter().find(|s| s.0 == fd).map_or(0, |s| s.1);
        let cloexec = sys::fcntl(fd, libc::F_GETFD, 0).map(|f| f as i32 & libc::FD_CLOEXEC != 0).unwrap_or(false);
        let shared = reps
            .iter()
            .position(|&(rfd, dev, ino)| dev == info.st.st_dev && ino == info.st.st_ino && sys::kcmp_file(rfd, fd) == Ok(0));
        let file = match shared {
            Some(i) => i,
            None => {
                let kind = match OPS.iter().find_map(|ops| (ops.dump)(&info, &mut ctx)) {
                    Some(Ok(kind)) => kind,
                    None => FileKind::Other { link: info.link.clone() },
                    Some(Err(e)) if drop_unsupported => FileKind::Other { link: format!("{}: {e}", info.link) },
                    Some(Err(e)) => return Err(format!("fd {fd} ({}): {e}", info.link)),
                };
                let pos = sys::lseek(fd, 0, libc::SEEK_CUR).map(|p| p as i64).unwrap_or(0);
                let shared = info.share & !pmig_abi::SHARE_FOLLOWER;
                let mut own = [0i32; 2];
                let owner = match sys::fcntl(fd, F_GETOWN_EX, own.as_mut_ptr() as u64) {
                    Ok(_) if own[1] != 0 => (own[0], own[1]),
                    _ => (0, 0),
                };
                let owner_sig = sys::fcntl(fd, F_GETSIG, 0).map(|s| s as i32).unwrap_or(0);
                // Locks of regular files (a lock on anything else is not kept).
                let locks = if matches!(kind, FileKind::Regular { .. }) {
                    info.fdinfo.lines().filter_map(pmig_image::LockState::parse).collect()
                } else {
                    Vec::new()
                };
                files.push(FileState { flags: info.flags, pos, kind, shared, owner, owner_sig, locks });
                reps.push((fd, info.st.st_dev, info.st.st_ino));
                files.len() - 1
            }
        };
        table.push(FdState { fd, cloexec, file: file as u32 });
    }
    Ok((files, table))
}

/// Why the fd table cannot be restored, if it cannot.
pub fn unsupported(files: &[FileState], fds: &[FdState]) -> Option<String> {
    fds.iter().find_map(|f| match &files[f.file as usize].kind {
        FileKind::Other { link } => Some(format!("fd {} ({link}) cannot be checkpointed yet", f.fd)),
        _ => None,
    })
}

/// Fds whose owner (`F_SETOWN_EX`) is a thread: `(fd, (kind, tid))`.
pub type Owners = Vec<(i32, (i32, i32))>;

/// Recreates the saved fds. `keep` are fds the restorer still needs (moved out of the way
/// first, their new numbers returned in place). Every other fd not saved is closed; fds 0–2
/// that were a terminal, pipe or socket stay what they are now (the resumer's own).
/// Returns the fds whose owner is a thread (`F_OWNER_TID`), to be given it once the threads
/// exist again (see [`set_owners`]), and the tree's board (see [`Board::restored`]).
pub fn restore(
    files: &[FileState],
    fds: &[FdState],
    keep: &mut [i32],
    gap: crate::timer::Gap,
    objects: Vec<(u64, i32, u32)>,
) -> (Owners, Option<Board>) {
    let mut later = Vec::new();
    let top = fds.iter().map(|f| f.fd).max().unwrap_or(2).max(2);
    let mut ctx = RestoreCtx { high: top + 1 + keep.len() as i32 + 16, pipes: Vec::new(), pairs: Vec::new(), gap, objects, deleted: Vec::new(), pipe_ends: Vec::new(), unlink_later: Vec::new() };
    for k in keep.iter_mut() {
        if let Ok(n) = ctx.lift(*k) {
            *k = n;
        }
    }
    let mut objects = core::mem::take(&mut ctx.objects);
    for o in objects.iter_mut() {
        if let Ok(n) = ctx.lift(o.1) {
            o.1 = n;
        }
    }
    ctx.objects = objects;
    let mut keep: Vec<i32> = keep.to_vec();
    keep.extend(ctx.objects.iter().map(|o| o.1));
    let keep = &keep[..];
    // A pipe the tree shares is the tree's, even on fds 0-2.
    let tree_pipes: Vec<u64> = ctx.objects.iter().filter(|o| matches!(o.2, pmig_abi::OBJECT_PIPE_READ | pmig_abi::OBJECT_PIPE_WRITE)).map(|o| o.0).collect();
    let tree_pipe = |k: &FileKind| matches!(k, FileKind::Pipe { ino, fifo: None, .. } if tree_pipes.contains(ino));
    // So is a pty slave whose master pmig-resume made again.
    let tree_ptys: Vec<(u64, i32, u32)> = ctx.objects.iter().filter(|o| o.2 == pmig_abi::OBJECT_PTY).copied().collect();
    let tree_tty = |k: &FileKind| matches!(k, FileKind::Tty { path } if pty::slave_of_tree(path, &tree_ptys).is_some());
    let inherited = |f: &FdState| {
        let k = &files[f.file as usize].kind;
        f.fd <= 2 && k.inherited_as_stdio() && !tree_pipe(k) && !tree_tty(k)
    };
    if let Ok(open) = list_fds(keep) {
        for fd in open {
            if !fds.iter().any(|f| f.fd == fd && inherited(f)) {
                let _ = sys::close(fd);
            }
        }
    }
    // Sockets and kernel objects the tree shares: made by one process, taken by the others.
    let mut board = ctx.objects.iter().find(|o| o.2 == pmig_abi::OBJECT_BOARD).and_then(|o| board::Board::map(o.1, o.0));
    let slot: Vec<Option<usize>> =
        files.iter().map(|f| if f.shared != 0 && f.kind.made_by_one_process() { board.as_ref()?.find(f.shared) } else { None }).collect();
    let taken: Vec<bool> = slot.iter().map(|s| s.is_some_and(|s| board.as_ref().is_some_and(|b| !b.makes(s)))).collect();
    // Files with locks to take again, once every fd is in place: (fd, file).
    let mut locked: Vec<(i32, usize)> = Vec::new();
    // Sockets to shut down again, once every queue is written: (fd, shutdown bits).
    let mut shut: Vec<(i32, u8)> = Vec::new();
    // Epoll sets refer to other fds by number: make them last, once every other fd is in
    // place. Objects other processes make come after this process's own (which they may be
    // waiting for): no two processes wait for each other.
    let mut order: Vec<usize> = (0..files.len()).collect();
    // UNIX datagram sockets aimed at a named one come after the sockets that bind names (an
    // in-program server), so they can aim at it again.
    let aims = |k: &FileKind| matches!(k, FileKind::Socket(s) if s.family == libc::AF_UNIX && s.sotype == libc::SOCK_DGRAM && s.role == pmig_image::SocketRole::Connected);
    order.sort_by_key(|&i| (matches!(files[i].kind, FileKind::Epoll { .. }), taken[i], aims(&files[i].kind)));
    for i in order {
        let users: Vec<&FdState> = fds.iter().filter(|f| f.file as usize == i).collect();
        if users.is_empty() || matches!(files[i].kind, FileKind::Other { .. }) {
            // Left out at checkpoint (--drop-unsupported): stays closed.
            continue;
        }
        let f = &files[i];
        // A file shared with an inherited stdio fd is that fd: dup it.
        let new = if let Some(std) = users.iter().find(|f| inherited(f)) {
            sys::fcntl(std.fd, libc::F_DUPFD_CLOEXEC, ctx.high as u64).map(|f| f as i32).map_err(|e| format!("{}", Errno(e)))
        } else if let (Some(s), true, Some(b)) = (slot[i], taken[i], board.as_ref()) {
            take(b, s, f).and_then(|fd| ctx.lift(fd))
        } else {
            match OPS.iter().find_map(|ops| (ops.restore)(f, &mut ctx)) {
                Some(r) => r.and_then(|fd| ctx.lift(fd)),
                None => Err(format!("no way to restore a {}", f.kind.name())),
            }
        };
        if let (Some(s), false, Some(b)) = (slot[i], taken[i], board.as_mut()) {
            // This process makes it: hand it out (once; a pair's second end is made with the first).
            if !b.handed_out(s) {
                match (&new, &f.kind) {
                    (Ok(fd), FileKind::Socket(so)) if so.pair.is_some() => b.publish(s, socket::pair_ends(so, *fd, &ctx), ctx.high),
                    (Ok(fd), _) => b.publish(s, [*fd, -1], ctx.high),
                    (Err(_), _) => b.fail(s),
                }
            }
        }
        let new = match new {
            Ok(fd) => fd,
            Err(e) => {
                let nums: Vec<i32> = users.iter().map(|u| u.fd).collect();
                log::say!("warning: cannot restore fd {nums:?} ({}): {e}; it stays closed", files[i].kind.name());
                continue;
            }
        };
        // Who gets its SIGIO (F_SETOWN), and with which signal (ids translated when virtual).
        let f = &files[i];
        if f.owner.0 == F_OWNER_TID && f.owner.1 != 0 {
            if let Some(u) = users.first() {
                later.push((u.fd, f.owner));
            }
        } else if f.owner.1 != 0 {
            let id = if f.owner.0 == F_OWNER_PGRP { -crate::pid::to_real(-f.owner.1) } else { crate::pid::to_real(f.owner.1) };
            let own = [f.owner.0, id];
            if let Err(e) = sys::fcntl(new, F_SETOWN_EX, own.as_ptr() as u64) {
                log::debug!("fd {:?}: cannot give its owner back: {}", users.iter().map(|u| u.fd).collect::<Vec<_>>(), Errno(e));
            }
        }
        if f.owner_sig != 0 {
            let _ = sys::fcntl(new, F_SETSIG, f.owner_sig as u64);
        }
        // Status flags the open above may not have set (O_APPEND, O_NONBLOCK, ...).
        let setfl = libc::O_APPEND | libc::O_NONBLOCK | libc::O_ASYNC | libc::O_DIRECT | libc::O_NOATIME;
        if !users.iter().any(|u| inherited(u)) {
            let _ = sys::fcntl(new, libc::F_SETFL, (files[i].flags & setfl) as u64);
        }
        for u in users.iter().filter(|u| !inherited(u)) {
            if let Err(e) = sys::dup3(new, u.fd, if u.cloexec { libc::O_CLOEXEC } else { 0 }) {
                log::say!("warning: cannot place fd {}: {}", u.fd, Errno(e));
            }
        }
        let _ = sys::close(new);
        if let Some(u) = users.iter().find(|u| !inherited(u)).filter(|_| !f.locks.is_empty()) {
            locked.push((u.fd, i));
        }
        if let (FileKind::Socket(so), Some(u)) = (&f.kind, users.iter().find(|u| !inherited(u))) {
            if so.shutdown != 0 {
                shut.push((u.fd, so.shutdown));
            }
        }
        log::debug!("fd {:?} restored: {}", users.iter().map(|u| u.fd).collect::<Vec<_>>(), files[i].kind.name());
    }
    for (_, r, w) in ctx.pipes.drain(..) {
        for fd in [r, w] {
            if fd >= 0 {
                let _ = sys::close(fd);
            }
        }
    }
    if let Some(b) = board.as_mut() {
        b.fds_done();
    }
    for p in ctx.unlink_later.drain(..) {
        let _ = sys::unlink(&sys::cstr(&p));
    }
    for (_, fd) in ctx.pairs.drain(..).chain(ctx.objects.drain(..).map(|o| (o.0, o.1))).chain(ctx.deleted.drain(..)) {
        let _ = sys::close(fd);
    }
    for (fd, how) in shut {
        let how = match how & 3 {
            3 => libc::SHUT_RDWR,
            2 => libc::SHUT_WR,
            _ => libc::SHUT_RD,
        };
        if let Err(e) = sys::shutdown(fd, how) {
            log::debug!("fd {fd}: cannot shut the socket down again: {}", Errno(e));
        }
    }
    // Locks last, through fds in place: closing any fd of a file drops the process's POSIX
    // locks on it, so none is taken before every temporary fd is closed.
    for (fd, i) in locked {
        take_locks(fd, &files[i]);
    }
    (later, board)
}

/// Takes `f`'s saved locks again through `fd`. One another process holds meanwhile
/// (pmig-resume checked before, but it may have been taken since) is said, naming the file.
fn take_locks(fd: i32, f: &FileState) {
    use pmig_image::LockKind;
    const F_OFD_SETLK: i32 = 37;
    for l in &f.locks {
        let r = match l.kind {
            LockKind::Flock => sys::flock(fd, if l.write { libc::LOCK_EX } else { libc::LOCK_SH } | libc::LOCK_NB),
            LockKind::Posix | LockKind::Ofd => {
                // struct flock: type, whence, start, len, pid.
                let mut fl = [0u8; 32];
                let ty = if l.write { libc::F_WRLCK } else { libc::F_RDLCK } as i16;
                fl[0..2].copy_from_slice(&ty.to_ne_bytes());
                fl[2..4].copy_from_slice(&(libc::SEEK_SET as i16).to_ne_bytes());
                fl[8..16].copy_from_slice(&(l.start as i64).to_ne_bytes());
                let len = l.end.map_or(0, |e| e + 1 - l.start) as i64;
                fl[16..24].copy_from_slice(&len.to_ne_bytes());
                let cmd = if l.kind == LockKind::Posix { libc::F_SETLK } else { F_OFD_SETLK };
                sys::fcntl(fd, cmd, fl.as_mut_ptr() as u64)
            }
            LockKind::Lease => sys::fcntl(fd, libc::F_SETLEASE, if l.write { libc::F_WRLCK } else { libc::F_RDLCK } as u64),
        };
        if let Err(e) = r {
            let path = match &f.kind {
                FileKind::Regular { path, .. } => path.as_str(),
                _ => "?",
            };
            log::say!("warning: cannot take the {:?} lock on {path} again: {} (another process holds it now)", l.kind, Errno(e));
        }
    }
}

/// Takes file `f`, made by another process of the tree, from the board's slot `s`.
fn take(b: &board::Board, s: usize, f: &FileState) -> Result<i32, String> {
    match &f.kind {
        FileKind::Socket(so) if so.pair.is_some() => {
            let end = b.end_of(s, so.ino);
            let fd = b.take(s, end)?;
            socket::adopt_pair_end(fd, so, || b.take(s, 1 - end))
        }
        _ => b.take(s, 0),
    }
}
