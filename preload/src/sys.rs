//! Raw system calls, one function per call, named after it.
//!
//! pmig calls the kernel directly instead of through libc: its checkpoint code runs while
//! other threads are stopped (maybe inside libc, holding its locks), and libc's own entry points
//! for `open`, `sigaction`, … are the ones pmig wraps for the program. Each function returns
//! the kernel's result or `Err(errno)`.

use pmig_abi::arch::syscall6;

pub type Res = Result<u64, i32>;

fn res(r: i64) -> Res {
    if (-4095..0).contains(&r) {
        Err((-r) as i32)
    } else {
        Ok(r as u64)
    }
}

macro_rules! sc {
    ($n:expr) => { sc!($n, 0, 0, 0, 0, 0, 0) };
    ($n:expr, $a:expr) => { sc!($n, $a, 0, 0, 0, 0, 0) };
    ($n:expr, $a:expr, $b:expr) => { sc!($n, $a, $b, 0, 0, 0, 0) };
    ($n:expr, $a:expr, $b:expr, $c:expr) => { sc!($n, $a, $b, $c, 0, 0, 0) };
    ($n:expr, $a:expr, $b:expr, $c:expr, $d:expr) => { sc!($n, $a, $b, $c, $d, 0, 0) };
    ($n:expr, $a:expr, $b:expr, $c:expr, $d:expr, $e:expr) => { sc!($n, $a, $b, $c, $d, $e, 0) };
    ($n:expr, $a:expr, $b:expr, $c:expr, $d:expr, $e:expr, $f:expr) => {
        // SAFETY: each wrapper below documents what its pointer arguments must satisfy; the
        // ones taking slices or references derive pointers and lengths from them.
        res(unsafe { syscall6($n as u64, $a as u64, $b as u64, $c as u64, $d as u64, $e as u64, $f as u64) })
    };
}

/// `read(2)`.
pub fn read(fd: i32, buf: &mut [u8]) -> Res {
    sc!(libc::SYS_read, fd, buf.as_mut_ptr(), buf.len())
}

/// `write(2)`.
pub fn write(fd: i32, buf: &[u8]) -> Res {
    sc!(libc::SYS_write, fd, buf.as_ptr(), buf.len())
}

/// `pread64(2)`.
pub fn pread(fd: i32, buf: &mut [u8], off: u64) -> Res {
    sc!(libc::SYS_pread64, fd, buf.as_mut_ptr(), buf.len(), off)
}

/// `pwrite64(2)`.
pub fn pwrite(fd: i32, buf: &[u8], off: u64) -> Res {
    sc!(libc::SYS_pwrite64, fd, buf.as_ptr(), buf.len(), off)
}

/// `ftruncate(2)`.
pub fn ftruncate(fd: i32, len: i64) -> Res {
    sc!(libc::SYS_ftruncate, fd, len)
}

/// Writes all of `buf`, retrying short writes and `EINTR`.
pub fn write_all(fd: i32, mut buf: &[u8]) -> Result<(), i32> {
    while !buf.is_empty() {
        match write(fd, buf) {
            Ok(n) => buf = &buf[n as usize..],
            Err(libc::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// `openat(2)`; `path` must end with a NUL byte.
pub fn openat(dirfd: i32, path: &[u8], flags: i32, mode: u32) -> Res {
    debug_assert_eq!(path.last(), Some(&0));
    sc!(libc::SYS_openat, dirfd, path.as_ptr(), flags, mode)
}

/// `close(2)`.
pub fn close(fd: i32) -> Res {
    sc!(libc::SYS_close, fd)
}

/// `lseek(2)`.
pub fn lseek(fd: i32, off: i64, whence: i32) -> Res {
    sc!(libc::SYS_lseek, fd, off, whence)
}

/// `fcntl(2)` with an integer argument.
pub fn fcntl(fd: i32, cmd: i32, arg: u64) -> Res {
    sc!(libc::SYS_fcntl, fd, cmd, arg)
}

/// `semctl(2)` with a pointer argument (`IPC_STAT`, `GETALL`, `SETALL`, `IPC_SET`).
pub fn semctl(id: i32, num: i32, cmd: i32, arg: *mut u8) -> Res {
    sc!(libc::SYS_semctl, id, num, cmd, arg)
}

/// `msgctl(2)`.
pub fn msgctl(id: i32, cmd: i32, buf: *mut libc::msqid_ds) -> Res {
    sc!(libc::SYS_msgctl, id, cmd, buf)
}

/// `msgrcv(2)` into `buf` (a long for the type, then the text).
pub fn msgrcv(id: i32, buf: &mut [u8], typ: i64, flags: i32) -> Res {
    sc!(libc::SYS_msgrcv, id, buf.as_mut_ptr(), buf.len().saturating_sub(8), typ, flags)
}

/// A system call with up to six integer arguments, for calls used once (attributes).
pub fn raw(nr: i64, args: &[u64]) -> Res {
    let a = |i: usize| args.get(i).copied().unwrap_or(0);
    sc!(nr, a(0), a(1), a(2), a(3), a(4), a(5))
}

/// `fchmod(2)`.
pub fn fchmod(fd: i32, mode: u32) -> Res {
    sc!(libc::SYS_fchmod, fd, mode)
}

/// `fchown(2)`.
pub fn fchown(fd: i32, uid: u32, gid: u32) -> Res {
    sc!(libc::SYS_fchown, fd, uid, gid)
}

/// `futimens(3)`: `utimensat(fd, NULL, times, 0)`.
pub fn futimens(fd: i32, times: &[libc::timespec; 2]) -> Res {
    sc!(libc::SYS_utimensat, fd, 0, times.as_ptr(), 0)
}

/// `fchmodat(AT_FDCWD, path, mode)`; `path` must end with a NUL byte.
pub fn fchmodat(path: &[u8], mode: u32) -> Res {
    sc!(libc::SYS_fchmodat, libc::AT_FDCWD, path.as_ptr(), mode)
}

/// `fchownat(AT_FDCWD, path, uid, gid, AT_SYMLINK_NOFOLLOW)`; `path` must end with a NUL
/// byte.
pub fn lchown(path: &[u8], uid: u32, gid: u32) -> Res {
    sc!(libc::SYS_fchownat, libc::AT_FDCWD, path.as_ptr(), uid, gid, libc::AT_SYMLINK_NOFOLLOW)
}

/// `shutdown(2)`.
pub fn shutdown(fd: i32, how: i32) -> Res {
    sc!(libc::SYS_shutdown, fd, how)
}

/// `flock(2)`.
pub fn flock(fd: i32, op: i32) -> Res {
    sc!(libc::SYS_flock, fd, op)
}

/// `pidfd_open(2)`.
pub fn pidfd_open(pid: i32) -> Res {
    sc!(libc::SYS_pidfd_open, pid, 0)
}

/// `pidfd_getfd(2)`: a copy (close-on-exec) of another process's fd.
pub fn pidfd_getfd(pidfd: i32, fd: i32) -> Res {
    sc!(libc::SYS_pidfd_getfd, pidfd, fd, 0)
}

/// `dup3(2)`.
pub fn dup3(old: i32, new: i32, flags: i32) -> Res {
    sc!(libc::SYS_dup3, old, new, flags)
}

/// `fsync(2)`.
pub fn fsync(fd: i32) -> Res {
    sc!(libc::SYS_fsync, fd)
}

/// `fstat(2)`.
pub fn fstat(fd: i32, st: &mut libc::stat) -> Res {
    sc!(libc::SYS_fstat, fd, st as *mut libc::stat)
}

/// `newfstatat(2)`; `path` must end with a NUL byte.
pub fn fstatat(dirfd: i32, path: &[u8], st: &mut libc::stat, flags: i32) -> Res {
    sc!(libc::SYS_newfstatat, dirfd, path.as_ptr(), st as *mut libc::stat, flags)
}

/// `readlinkat(2)`; `path` must end with a NUL byte.
pub fn readlinkat(dirfd: i32, path: &[u8], buf: &mut [u8]) -> Res {
    sc!(libc::SYS_readlinkat, dirfd, path.as_ptr(), buf.as_mut_ptr(), buf.len())
}

/// `renameat(2)`; both paths must end with a NUL byte.
pub fn rename(from: &[u8], to: &[u8]) -> Res {
    sc!(libc::SYS_renameat, libc::AT_FDCWD, from.as_ptr(), libc::AT_FDCWD, to.as_ptr())
}

/// `linkat(2)`; both paths must end with a NUL byte.
pub fn linkat(olddirfd: i32, old: &[u8], newdirfd: i32, new: &[u8], flags: i32) -> Res {
    debug_assert_eq!(old.last(), Some(&0));
    debug_assert_eq!(new.last(), Some(&0));
    sc!(libc::SYS_linkat, olddirfd, old.as_ptr(), newdirfd, new.as_ptr(), flags)
}

/// `unlinkat(2)`; `path` must end with a NUL byte.
pub fn unlink(path: &[u8]) -> Res {
    sc!(libc::SYS_unlinkat, libc::AT_FDCWD, path.as_ptr(), 0)
}

/// `fchdir(2)`.
pub fn fchdir(fd: i32) -> Res {
    sc!(libc::SYS_fchdir, fd)
}

/// `rmdir(2)`.
pub fn rmdir(path: &[u8]) -> Res {
    sc!(libc::SYS_unlinkat, libc::AT_FDCWD, path.as_ptr(), libc::AT_REMOVEDIR)
}

/// `mkdir(2)`.
pub fn mkdir(path: &[u8], mode: u32) -> Res {
    sc!(libc::SYS_mkdirat, libc::AT_FDCWD, path.as_ptr(), mode)
}

/// `mknod(2)` (a FIFO: `S_IFIFO | mode`).
pub fn mknod(path: &[u8], mode: u32) -> Res {
    sc!(libc::SYS_mknodat, libc::AT_FDCWD, path.as_ptr(), mode, 0)
}

/// `getdents64(2)`.
pub fn getdents64(fd: i32, buf: &mut [u8]) -> Res {
    sc!(libc::SYS_getdents64, fd, buf.as_mut_ptr(), buf.len())
}

/// `chdir(2)`; `path` must end with a NUL byte.
pub fn chdir(path: &[u8]) -> Res {
    sc!(libc::SYS_chdir, path.as_ptr())
}

/// `umask(2)`.
pub fn umask(mask: u32) -> Res {
    sc!(libc::SYS_umask, mask)
}

/// `getpid(2)`.
pub fn getpid() -> i32 {
    sc!(libc::SYS_getpid).unwrap_or(0) as i32
}

/// `getpgid(2)` of this process.
pub fn getpgid() -> i32 {
    sc!(libc::SYS_getpgid, 0).unwrap_or(0) as i32
}

/// `setpgid(0, pgid)`: this process joins process group `pgid`.
pub fn join_pgid(pgid: i32) -> Res {
    sc!(libc::SYS_setpgid, 0, pgid)
}

/// `getppid(2)`.
pub fn getppid() -> i32 {
    sc!(libc::SYS_getppid).unwrap_or(0) as i32
}

/// `gettid(2)`.
pub fn gettid() -> i32 {
    sc!(libc::SYS_gettid).unwrap_or(0) as i32
}

/// `getuid(2)`.
pub fn getuid() -> u32 {
    sc!(libc::SYS_getuid).unwrap_or(0) as u32
}

/// `getgid(2)`.
pub fn getgid() -> u32 {
    sc!(libc::SYS_getgid).unwrap_or(0) as u32
}

/// `tgkill(2)`.
pub fn tgkill(pid: i32, tid: i32, sig: i32) -> Res {
    sc!(libc::SYS_tgkill, pid, tid, sig)
}

/// `kill(2)`.
pub fn kill(pid: i32, sig: i32) -> Res {
    sc!(libc::SYS_kill, pid, sig)
}

/// `futex(FUTEX_WAIT_PRIVATE)` while `*word == val`, for at most `timeout_ms` (0: forever).
pub fn futex_wait(word: &core::sync::atomic::AtomicU32, val: u32, timeout_ms: u64) -> Res {
    let ts = libc::timespec { tv_sec: (timeout_ms / 1000) as i64, tv_nsec: ((timeout_ms % 1000) * 1_000_000) as i64 };
    let tsp = if timeout_ms == 0 { core::ptr::null() } else { &ts as *const libc::timespec };
    sc!(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG, val, tsp)
}

/// `futex(FUTEX_WAIT)` (shared: the kind the kernel wakes a `CLONE_CHILD_CLEARTID` word
/// with) while `*word == val`, for at most `timeout_ms` (0: forever).
pub fn futex_wait_shared(word: &core::sync::atomic::AtomicU32, val: u32, timeout_ms: u64) -> Res {
    let ts = libc::timespec { tv_sec: (timeout_ms / 1000) as i64, tv_nsec: ((timeout_ms % 1000) * 1_000_000) as i64 };
    let tsp = if timeout_ms == 0 { core::ptr::null() } else { &ts as *const libc::timespec };
    sc!(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAIT, val, tsp)
}

/// `sched_yield(2)`.
pub fn sched_yield() -> Res {
    sc!(libc::SYS_sched_yield)
}

/// `futex(FUTEX_WAKE_PRIVATE)` of every waiter.
pub fn futex_wake(word: &core::sync::atomic::AtomicU32) -> Res {
    sc!(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG, i32::MAX)
}

/// `mmap(2)`.
pub fn mmap(addr: u64, len: u64, prot: i32, flags: i32, fd: i32, off: u64) -> Res {
    sc!(libc::SYS_mmap, addr, len, prot, flags, fd, off)
}

/// `munmap(2)`.
///
/// # Safety
/// Nothing may still use the memory.
pub unsafe fn munmap(addr: u64, len: u64) -> Res {
    sc!(libc::SYS_munmap, addr, len)
}

/// `madvise(2)`.
///
/// # Safety
/// With `MADV_DONTNEED`, nothing may still need the contents.
pub unsafe fn madvise(addr: u64, len: u64, advice: i32) -> Res {
    sc!(libc::SYS_madvise, addr, len, advice)
}

/// The kernel's `struct sigaction` (x86_64).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct KSigAction {
    pub handler: u64,
    pub flags: u64,
    pub restorer: u64,
    pub mask: u64,
}

/// `rt_sigaction(2)`.
pub fn rt_sigaction(sig: i32, act: Option<&KSigAction>, old: Option<&mut KSigAction>) -> Res {
    let a = act.map_or(core::ptr::null(), |a| a as *const KSigAction);
    let o = old.map_or(core::ptr::null_mut(), |o| o as *mut KSigAction);
    sc!(libc::SYS_rt_sigaction, sig, a, o, 8)
}

/// `rt_sigprocmask(2)` on a kernel 64-bit mask.
pub fn rt_sigprocmask(how: i32, set: Option<&u64>, old: Option<&mut u64>) -> Res {
    let s = set.map_or(core::ptr::null(), |s| s as *const u64);
    let o = old.map_or(core::ptr::null_mut(), |o| o as *mut u64);
    sc!(libc::SYS_rt_sigprocmask, how, s, o, 8)
}

/// `getitimer(2)`.
pub fn getitimer(which: i32, v: &mut libc::itimerval) -> Res {
    sc!(libc::SYS_getitimer, which, v as *mut libc::itimerval)
}

/// `setitimer(2)`.
pub fn setitimer(which: i32, v: &libc::itimerval) -> Res {
    sc!(libc::SYS_setitimer, which, v as *const libc::itimerval, 0)
}

/// `prlimit64(2)` on this process.
pub fn prlimit(resource: u32, new: Option<&libc::rlimit64>, old: Option<&mut libc::rlimit64>) -> Res {
    let n = new.map_or(core::ptr::null(), |n| n as *const libc::rlimit64);
    let o = old.map_or(core::ptr::null_mut(), |o| o as *mut libc::rlimit64);
    sc!(libc::SYS_prlimit64, 0, resource, n, o)
}

/// `get_robust_list(2)` of the calling thread: `(head, len)`.
pub fn get_robust_list() -> (u64, u64) {
    let (mut head, mut len) = (0u64, 0u64);
    let _ = sc!(libc::SYS_get_robust_list, 0, &mut head as *mut u64, &mut len as *mut u64);
    (head, len)
}

/// `set_robust_list(2)`.
pub fn set_robust_list(head: u64, len: u64) -> Res {
    sc!(libc::SYS_set_robust_list, head, len)
}

/// `set_tid_address(2)`; returns the caller's tid.
pub fn set_tid_address(addr: u64) -> Res {
    sc!(libc::SYS_set_tid_address, addr)
}

/// `rseq(2)` registration.
pub fn rseq(area: u64, len: u32, flags: i32, sig: u32) -> Res {
    sc!(libc::SYS_rseq, area, len, flags, sig)
}

/// `prctl(2)`.
pub fn prctl(op: i32, a: u64, b: u64, c: u64, d: u64) -> Res {
    sc!(libc::SYS_prctl, op, a, b, c, d)
}

/// `exit_group(2)`.
pub fn exit_group(code: i32) -> ! {
    let _ = sc!(libc::SYS_exit_group, code);
    unreachable!("exit_group returned")
}

/// `uname(2)`.
pub fn uname(u: &mut libc::utsname) -> Res {
    sc!(libc::SYS_uname, u as *mut libc::utsname)
}

/// `brk(2)` with 0: the current program break.
pub fn brk_current() -> u64 {
    sc!(libc::SYS_brk, 0).unwrap_or(0)
}

/// `clock_gettime(CLOCK_REALTIME)` in nanoseconds, by system call (no vdso).
pub fn realtime_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    let _ = sc!(libc::SYS_clock_gettime, libc::CLOCK_REALTIME, &mut ts as *mut libc::timespec);
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// `clock_gettime(CLOCK_MONOTONIC)` in milliseconds, by system call.
pub fn monotonic_ms() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    let _ = sc!(libc::SYS_clock_gettime, libc::CLOCK_MONOTONIC, &mut ts as *mut libc::timespec);
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

/// `nanosleep` for `ms` milliseconds.
pub fn sleep_ms(ms: u64) {
    let ts = libc::timespec { tv_sec: (ms / 1000) as i64, tv_nsec: ((ms % 1000) * 1_000_000) as i64 };
    let _ = sc!(libc::SYS_nanosleep, &ts as *const libc::timespec, 0);
}

/// Reads a whole (small, `/proc`) file into `buf`; returns the length read.
pub fn read_file(path: &[u8], buf: &mut [u8]) -> Result<usize, i32> {
    let fd = openat(libc::AT_FDCWD, path, libc::O_RDONLY | libc::O_CLOEXEC, 0)? as i32;
    let mut n = 0;
    let r = loop {
        if n == buf.len() {
            break Ok(n);
        }
        match read(fd, &mut buf[n..]) {
            Ok(0) => break Ok(n),
            Ok(k) => n += k as usize,
            Err(libc::EINTR) => {}
            Err(e) => break Err(e),
        }
    };
    let _ = close(fd);
    r
}

/// Reads a whole `/proc` file of any size into a `Vec` (allocates).
pub fn read_file_vec(path: &[u8]) -> Result<Vec<u8>, i32> {
    let fd = openat(libc::AT_FDCWD, path, libc::O_RDONLY | libc::O_CLOEXEC, 0)? as i32;
    let mut v = vec![0u8; 64 * 1024];
    let mut n = 0;
    let r = loop {
        if n == v.len() {
            v.resize(v.len() * 2, 0);
        }
        match read(fd, &mut v[n..]) {
            Ok(0) => break Ok(()),
            Ok(k) => n += k as usize,
            Err(libc::EINTR) => {}
            Err(e) => break Err(e),
        }
    };
    let _ = close(fd);
    r.map(|_| {
        v.truncate(n);
        v
    })
}

/// Reads a symlink into a `String` (allocates); `path` must end with a NUL byte.
pub fn readlink_string(path: &[u8]) -> Result<String, i32> {
    let mut buf = vec![0u8; 4096];
    let n = readlinkat(libc::AT_FDCWD, path, &mut buf)? as usize;
    buf.truncate(n);
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// A NUL-terminated copy of `s` (allocates).
pub fn cstr(s: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(s.len() + 1);
    v.extend_from_slice(s.as_bytes());
    v.push(0);
    v
}

/// `mincore(2)`: one byte per page of `[addr, addr+len)`, bit 0 set when resident.
pub fn mincore(addr: u64, len: u64, vec: &mut [u8]) -> Res {
    debug_assert!(vec.len() as u64 >= len.div_ceil(4096));
    sc!(libc::SYS_mincore, addr, len, vec.as_mut_ptr())
}

/// `pipe2(2)`: `(read end, write end)`.
pub fn pipe2(flags: i32) -> Result<(i32, i32), i32> {
    let mut fds = [0i32; 2];
    sc!(libc::SYS_pipe2, fds.as_mut_ptr(), flags)?;
    Ok((fds[0], fds[1]))
}

/// `tee(2)`: duplicates up to `len` bytes of pipe `from` into pipe `to` without consuming them.
pub fn tee(from: i32, to: i32, len: u64, flags: u32) -> Res {
    sc!(libc::SYS_tee, from, to, len, flags)
}

/// `kcmp(KCMP_FILE)` of two fds of this process: 0 when they share an open file description.
pub fn kcmp_file(fd1: i32, fd2: i32) -> Res {
    let pid = getpid();
    sc!(libc::SYS_kcmp, pid, pid, 0, fd1, fd2)
}

/// `ioctl(2)` with an integer or pointer argument.
pub fn ioctl(fd: i32, req: u64, arg: u64) -> Res {
    sc!(libc::SYS_ioctl, fd, req, arg)
}

/// `eventfd2(2)`.
pub fn eventfd2(initval: u32, flags: i32) -> Res {
    sc!(libc::SYS_eventfd2, initval, flags)
}

/// `timerfd_create(2)`.
pub fn timerfd_create(clockid: i32, flags: i32) -> Res {
    sc!(libc::SYS_timerfd_create, clockid, flags)
}

/// `timerfd_settime(2)` with a relative time.
pub fn timerfd_settime(fd: i32, v: &libc::itimerspec) -> Res {
    sc!(libc::SYS_timerfd_settime, fd, 0, v as *const libc::itimerspec, 0)
}

/// `signalfd4(2)` creating a new signalfd for a kernel 64-bit mask.
pub fn signalfd(mask: u64, flags: i32) -> Res {
    sc!(libc::SYS_signalfd4, -1i64, &mask as *const u64, 8, flags)
}

/// `epoll_create1(2)`.
pub fn epoll_create1(flags: i32) -> Res {
    sc!(libc::SYS_epoll_create1, flags)
}

/// `kcmp(KCMP_EPOLL_TFD)` in this process: 0 when `fd` is the file epoll set `epfd` has
/// registered under fd number `tfd` (the `toff`-th such registration, in the set's order).
pub fn kcmp_epoll_target(fd: i32, epfd: i32, tfd: i32, toff: u32) -> Res {
    let slot: [u32; 3] = [epfd as u32, tfd as u32, toff];
    let pid = getpid();
    sc!(libc::SYS_kcmp, pid, pid, 7, fd, slot.as_ptr())
}

/// `epoll_ctl(EPOLL_CTL_ADD)`.
pub fn epoll_add(epfd: i32, fd: i32, events: u32, data: u64) -> Res {
    let ev = libc::epoll_event { events, u64: data };
    sc!(libc::SYS_epoll_ctl, epfd, libc::EPOLL_CTL_ADD, fd, &ev as *const libc::epoll_event)
}

/// `inotify_init1(2)`.
pub fn inotify_init1(flags: i32) -> Res {
    sc!(libc::SYS_inotify_init1, flags)
}

/// `inotify_add_watch(2)`; `path` must end with a NUL byte.
pub fn inotify_add_watch(fd: i32, path: &[u8], mask: u32) -> Res {
    sc!(libc::SYS_inotify_add_watch, fd, path.as_ptr(), mask)
}

/// `memfd_create(2)`; `name` must end with a NUL byte.
pub fn memfd_create(name: &[u8], flags: u32) -> Res {
    sc!(libc::SYS_memfd_create, name.as_ptr(), flags)
}

/// `socket(2)`.
pub fn socket(family: i32, ty: i32, proto: i32) -> Res {
    sc!(libc::SYS_socket, family, ty, proto)
}

/// `socketpair(2)`.
pub fn socketpair(family: i32, ty: i32, proto: i32) -> Result<(i32, i32), i32> {
    let mut fds = [0i32; 2];
    sc!(libc::SYS_socketpair, family, ty, proto, fds.as_mut_ptr())?;
    Ok((fds[0], fds[1]))
}

/// `bind(2)` to the raw sockaddr bytes `addr`.
pub fn bind(fd: i32, addr: &[u8]) -> Res {
    sc!(libc::SYS_bind, fd, addr.as_ptr(), addr.len())
}

/// `listen(2)`.
pub fn listen(fd: i32, backlog: i32) -> Res {
    sc!(libc::SYS_listen, fd, backlog)
}

/// `connect(2)` to the raw sockaddr bytes `addr`.
pub fn connect(fd: i32, addr: &[u8]) -> Res {
    sc!(libc::SYS_connect, fd, addr.as_ptr(), addr.len())
}

/// `getsockopt(2)` into `buf`; returns the length the kernel wrote.
pub fn getsockopt(fd: i32, level: i32, name: i32, buf: &mut [u8]) -> Result<usize, i32> {
    let mut len = buf.len() as u32;
    sc!(libc::SYS_getsockopt, fd, level, name, buf.as_mut_ptr(), &mut len as *mut u32)?;
    Ok(len as usize)
}

/// `setsockopt(2)`.
pub fn setsockopt(fd: i32, level: i32, name: i32, val: &[u8]) -> Res {
    sc!(libc::SYS_setsockopt, fd, level, name, val.as_ptr(), val.len())
}

/// `getsockname(2)` / `getpeername(2)` (`peer`): the raw sockaddr bytes.
pub fn sockname(fd: i32, peer: bool) -> Result<Vec<u8>, i32> {
    let mut buf = [0u8; 128];
    let mut len = buf.len() as u32;
    let nr = if peer { libc::SYS_getpeername } else { libc::SYS_getsockname };
    sc!(nr, fd, buf.as_mut_ptr(), &mut len as *mut u32)?;
    Ok(buf[..(len as usize).min(buf.len())].to_vec())
}

/// `recvfrom(2)` with `flags` (e.g. `MSG_PEEK | MSG_DONTWAIT`).
pub fn recv(fd: i32, buf: &mut [u8], flags: i32) -> Res {
    sc!(libc::SYS_recvfrom, fd, buf.as_mut_ptr(), buf.len(), flags, 0, 0)
}

/// Reads up to `size` bytes of `fd` from offset 0 (allocates).
pub fn pread_all(fd: i32, size: u64) -> Result<Vec<u8>, i32> {
    let mut v = vec![0u8; size as usize];
    let mut got = 0;
    while got < v.len() {
        match pread(fd, &mut v[got..], got as u64) {
            Ok(0) => break,
            Ok(n) => got += n as usize,
            Err(libc::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
    v.truncate(got);
    Ok(v)
}

/// Calls `f` with the name of each entry of directory `path` (without `.` and `..`) and the
/// directory's own fd, open meanwhile. Allocates nothing. `path` must end with a NUL byte.
fn walk(path: &[u8], mut f: impl FnMut(&[u8], i32)) -> Result<(), i32> {
    let dir = openat(libc::AT_FDCWD, path, libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC, 0)? as i32;
    let mut buf = [0u8; 4096];
    let r = loop {
        let got = match getdents64(dir, &mut buf) {
            Ok(0) => break Ok(()),
            Ok(g) => g as usize,
            Err(e) => break Err(e),
        };
        let mut at = 0;
        while at < got {
            let reclen = u16::from_ne_bytes([buf[at + 16], buf[at + 17]]) as usize;
            let name = &buf[at + 19..at + reclen];
            let name = &name[..name.iter().position(|&c| c == 0).unwrap_or(name.len())];
            if !name.is_empty() && name != b"." && name != b".." {
                f(name, dir);
            }
            at += reclen;
        }
    };
    let _ = close(dir);
    r
}

/// Calls `f` with each entry of directory `path` whose name is a number (e.g. the fds in
/// `/proc/self/fd`, the tids in `/proc/self/task`), and with the directory's own fd, which
/// is open meanwhile. Allocates nothing. `path` must end with a NUL byte.
pub fn for_each_numbered_entry(path: &[u8], mut f: impl FnMut(i32, i32)) -> Result<(), i32> {
    walk(path, |name, dir| {
        if name.len() < 10 && name.iter().all(u8::is_ascii_digit) {
            f(name.iter().fold(0i32, |n, &c| n * 10 + (c - b'0') as i32), dir);
        }
    })
}

/// Calls `f` with the name of each entry of directory `path` (without `.` and `..`).
/// Allocates nothing. `path` must end with a NUL byte.
pub fn for_each_entry(path: &[u8], mut f: impl FnMut(&[u8])) -> Result<(), i32> {
    walk(path, |name, _| f(name))
}

/// `process_vm_readv(2)` of this process, one buffer each side: copies `buf.len()` bytes from
/// address `from` of our own memory into `buf`, or fails with `EFAULT` (never faults) when
/// they are not all readable; a short count stops at the first unreadable page.
pub fn process_vm_read_self(buf: &mut [u8], from: u64) -> Res {
    let local = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    let remote = libc::iovec { iov_base: from as *mut libc::c_void, iov_len: buf.len() };
    sc!(libc::SYS_process_vm_readv, getpid(), &local as *const libc::iovec, 1, &remote as *const libc::iovec, 1, 0)
}

/// `process_vm_writev(2)` of this process, one buffer each side: copies `buf` to address `to`
/// of our own memory, or fails with `EFAULT` (never faults) when it is not writable.
pub fn process_vm_write_self(buf: &[u8], to: u64) -> Res {
    let local = libc::iovec { iov_base: buf.as_ptr() as *mut libc::c_void, iov_len: buf.len() };
    let remote = libc::iovec { iov_base: to as *mut libc::c_void, iov_len: buf.len() };
    sc!(libc::SYS_process_vm_writev, getpid(), &local as *const libc::iovec, 1, &remote as *const libc::iovec, 1, 0)
}

/// A raw `siginfo_t` (128 bytes).
pub type SigInfo = [u8; 128];

/// `rt_sigtimedwait(2)` with a zero timeout: dequeues one pending signal of `set` into
/// `info`; returns its number, or `Err(EAGAIN)` when none is pending.
pub fn sigtimedwait_now(set: u64, info: &mut SigInfo) -> Result<i32, i32> {
    let zero = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    sc!(libc::SYS_rt_sigtimedwait, &set as *const u64, info.as_mut_ptr(), &zero as *const libc::timespec, 8).map(|s| s as i32)
}

/// `rt_tgsigqueueinfo(2)` to a thread of this process (`tid` 0: the process, via
/// `rt_sigqueueinfo`), with a full siginfo.
pub fn sigqueueinfo(tid: i32, sig: i32, info: &SigInfo) -> Res {
    if tid == 0 {
        sc!(libc::SYS_rt_sigqueueinfo, getpid(), sig, info.as_ptr())
    } else {
        sc!(libc::SYS_rt_tgsigqueueinfo, getpid(), tid, sig, info.as_ptr())
    }
}

/// `setgroups(2)` — the raw call, for the calling thread only (glibc's runs in every thread).
pub fn setgroups(groups: &[u32]) -> Res {
    sc!(libc::SYS_setgroups, groups.len(), groups.as_ptr())
}

/// `getgroups(2)` of the calling thread.
pub fn getgroups(out: &mut [u32]) -> Res {
    sc!(libc::SYS_getgroups, out.len(), out.as_mut_ptr())
}

/// `setresuid(2)` — the raw call, for the calling thread only.
pub fn setresuid(r: u32, e: u32, s: u32) -> Res {
    sc!(libc::SYS_setresuid, r, e, s)
}

/// `setresgid(2)` — the raw call, for the calling thread only.
pub fn setresgid(r: u32, e: u32, s: u32) -> Res {
    sc!(libc::SYS_setresgid, r, e, s)
}

/// `setfsuid(2)`: returns the previous fsuid (never fails visibly).
pub fn setfsuid(u: u32) -> Res {
    sc!(libc::SYS_setfsuid, u)
}

/// `setfsgid(2)`: returns the previous fsgid.
pub fn setfsgid(g: u32) -> Res {
    sc!(libc::SYS_setfsgid, g)
}

/// `capget(2)`/`capset(2)` data, version 3: `[effective, permitted, inheritable]` as masks.
pub fn capget() -> Result<[u64; 3], i32> {
    let hdr = [0x2008_0522u32, 0];
    let mut data = [0u32; 6];
    sc!(libc::SYS_capget, hdr.as_ptr(), data.as_mut_ptr())?;
    let m = |i: usize| data[i] as u64 | (data[i + 3] as u64) << 32;
    Ok([m(0), m(1), m(2)])
}

/// `capset(2)` of the calling thread: `[effective, permitted, inheritable]`.
pub fn capset(caps: [u64; 3]) -> Res {
    let hdr = [0x2008_0522u32, 0];
    let data = [
        caps[0] as u32,
        caps[1] as u32,
        caps[2] as u32,
        (caps[0] >> 32) as u32,
        (caps[1] >> 32) as u32,
        (caps[2] >> 32) as u32,
    ];
    sc!(libc::SYS_capset, hdr.as_ptr(), data.as_ptr())
}

/// `clock_gettime(2)` in nanoseconds.
pub fn clock_ns(clock: i32) -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    let _ = sc!(libc::SYS_clock_gettime, clock, &mut ts as *mut libc::timespec);
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// `accept4(2)`, not asking for the peer's address.
pub fn accept4(fd: i32, flags: i32) -> Res {
    sc!(libc::SYS_accept4, fd, 0, 0, flags)
}

/// `sendmsg(2)` of `data`, with `fd` attached as `SCM_RIGHTS` when given.
pub fn send_with_fd(sock: i32, data: &[u8], fd: Option<i32>) -> Res {
    let mut iov = libc::iovec { iov_base: data.as_ptr() as *mut libc::c_void, iov_len: data.len() };
    // Room for one cmsghdr (16 bytes) and one int, aligned.
    let mut cbuf = [0u64; 4];
    // SAFETY: an all-zero msghdr is valid; the pointers set below live until the call returns.
    let mut msg: libc::msghdr = unsafe { core::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if let Some(fd) = fd {
        let space = 24usize; // CMSG_SPACE(sizeof(int)) on x86_64
        let c = cbuf.as_mut_ptr() as *mut libc::cmsghdr;
        // SAFETY: `cbuf` is 32 bytes, 8-aligned: room for the header and the int after it.
        unsafe {
            (*c).cmsg_len = 20; // CMSG_LEN(sizeof(int))
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            core::ptr::write_unaligned((c as *mut u8).add(16) as *mut i32, fd);
        }
        msg.msg_control = cbuf.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = space;
    }
    sc!(libc::SYS_sendmsg, sock, &msg as *const libc::msghdr, libc::MSG_NOSIGNAL)
}

/// `recvmsg(2)` into `buf`; returns the length and the fd passed with it (`SCM_RIGHTS`, made
/// close-on-exec), if any.
pub fn recv_with_fd(sock: i32, buf: &mut [u8]) -> Result<(usize, Option<i32>), i32> {
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr() as *mut libc::c_void, iov_len: buf.len() };
    let mut cbuf = [0u64; 8];
    // SAFETY: an all-zero msghdr is valid; the pointers set below live until the call returns.
    let mut msg: libc::msghdr = unsafe { core::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = core::mem::size_of_val(&cbuf);
    let n = sc!(libc::SYS_recvmsg, sock, &mut msg as *mut libc::msghdr, libc::MSG_CMSG_CLOEXEC)? as usize;
    let mut fd = None;
    if msg.msg_controllen >= 20 {
        let c = cbuf.as_ptr() as *const libc::cmsghdr;
        // SAFETY: the kernel wrote at least one cmsghdr (controllen >= its size) into `cbuf`.
        unsafe {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                fd = Some(core::ptr::read_unaligned((c as *const u8).add(16) as *const i32));
            }
        }
    }
    Ok((n, fd))
}

/// `poll(2)` on one fd for `events`; `Ok(true)` when ready.
pub fn poll_one(fd: i32, events: i16, timeout_ms: i32) -> Result<bool, i32> {
    let mut p = libc::pollfd { fd, events, revents: 0 };
    let n = sc!(libc::SYS_poll, &mut p as *mut libc::pollfd, 1, timeout_ms)?;
    Ok(n > 0)
}

/// `rt_sigqueueinfo(2)`: `sig` to process `pid` with the value `value` (`SI_QUEUE`).
pub fn sigqueue(pid: i32, sig: i32, value: u64) -> Res {
    let mut info = [0u8; 128];
    info[0..4].copy_from_slice(&sig.to_ne_bytes());
    info[8..12].copy_from_slice(&(libc::SI_QUEUE).to_ne_bytes());
    info[16..20].copy_from_slice(&getpid().to_ne_bytes());
    info[20..24].copy_from_slice(&getuid().to_ne_bytes());
    info[24..32].copy_from_slice(&value.to_ne_bytes());
    sc!(libc::SYS_rt_sigqueueinfo, pid, sig, info.as_ptr())
}
