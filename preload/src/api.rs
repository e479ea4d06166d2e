//! Every function libpmig exports in place of libc's, in one auditable list.
//!
//! - Signals: they keep the program from taking away pmig's two signals (the checkpoint signal
//!   and the suspend signal): blocking them is quietly left out; a handler the program installs
//!   for the checkpoint signal is kept aside and run for that signal when a process of the
//!   tree sends it (`signal::PROGRAM_ACTION`), and asking for its disposition answers the
//!   program's own; for the suspend signal, "default".
//! - Ids: `getpid`, `getppid`, `gettid` answer with the ids the program saw before a restore;
//!   `kill`, `tgkill` and functions taking a path translate them back (`pid`).
//!
//! - Interrupted calls: calls a checkpoint would fail with `EINTR` (timed waits, sockets with
//!   a timeout, System V IPC, ...) are issued again for what is left of their timeout
//!   (`restart`); the program's own signals still interrupt them.
//!
//! Everything else goes to libc unchanged; until a restore, the id wrappers cost one atomic
//! load, and the restarting ones one load before the call.
//!
//! A wrapper never dereferences a pointer the program passed: it reads (or writes) through
//! `umem`, which fails with `EFAULT` instead of faulting, and then hands the program's
//! original pointer to libc, so a bad pointer fails (or faults in libc) exactly as without
//! pmig.

use crate::{config, restart};
use core::sync::atomic::Ordering::Relaxed;
use libc::{c_char, c_int, c_long, c_void, sighandler_t, sigset_t, size_t, ssize_t, timespec};

/// Whether `sig` is one of pmig's while pmig is active in this process.
fn ours(sig: c_int) -> bool {
    match config::get() {
        Some(c) if config::ACTIVE_PID.load(Relaxed) == crate::sys::getpid() => sig == c.signal || sig == c.suspend_signal,
        _ => false,
    }
}

/// The program's `set` for `how`, made to keep pmig's two signals as pmig needs them: the
/// suspend signal never blocked (it stops each thread for a checkpoint), the checkpoint signal
/// always blocked in the program's threads (only pmig's checkpoint thread takes it, so a
/// thread that execs passes it on blocked, and a request that arrives while the new program
/// has no handler yet waits instead of killing it). `None` (the program's set goes to libc as
/// it is) when `set` is null or unreadable.
///
/// # Safety
/// `set` comes from the program: it is read without faulting (`umem`), except where the
/// kernel refuses that, when it must be null or valid as libc requires.
unsafe fn kept_ours(how: c_int, set: *const sigset_t) -> Option<sigset_t> {
    let c = config::get()?;
    if set.is_null() || config::ACTIVE_PID.load(Relaxed) != crate::sys::getpid() {
        return None;
    }
    // SAFETY: read without faulting; sigset_t is plain integers.
    let mut copy = unsafe { crate::umem::read(set) }?;
    // SAFETY: `copy` is a valid sigset_t we own.
    unsafe {
        libc::sigdelset(&mut copy, c.suspend_signal);
        match how {
            libc::SIG_SETMASK => {
                libc::sigaddset(&mut copy, c.signal);
            }
            libc::SIG_UNBLOCK => {
                libc::sigdelset(&mut copy, c.signal);
            }
            _ => {}
        }
    }
    Some(copy)
}

/// Hides pmig's checkpoint signal from the old mask reported to the program.
///
/// # Safety
/// `old` comes from the program (null, or written by libc just now).
unsafe fn hide_ours(old: *mut sigset_t) {
    let Some(c) = config::get() else { return };
    if old.is_null() || config::ACTIVE_PID.load(Relaxed) != crate::sys::getpid() {
        return;
    }
    // SAFETY: read and written without faulting.
    if let Some(mut v) = unsafe { crate::umem::read(old) } {
        // SAFETY: `v` is a valid sigset_t we own.
        unsafe { libc::sigdelset(&mut v, c.signal) };
        // SAFETY: as above.
        let _ = unsafe { crate::umem::write(old, &v) };
    }
}

/// The program's own action for pmig's checkpoint signal, as `sigaction` reports it.
fn program_action() -> libc::sigaction {
    use crate::signal::PROGRAM_ACTION as P;
    use core::sync::atomic::Ordering::Acquire;
    // SAFETY: all zero is a valid sigaction (SIG_DFL, no flags, empty mask).
    let mut a: libc::sigaction = unsafe { core::mem::zeroed() };
    a.sa_sigaction = P.handler.load(Acquire) as usize;
    a.sa_flags = P.flags.load(Acquire) as c_int;
    let mask = P.mask.load(Acquire);
    for sig in 1..=64 {
        if mask & crate::signal::bit(sig) != 0 {
            // SAFETY: `a.sa_mask` is a valid sigset_t.
            unsafe { libc::sigaddset(&mut a.sa_mask, sig) };
        }
    }
    a
}

/// Keeps `act` as the program's own action for pmig's checkpoint signal (see
/// `signal::PROGRAM_ACTION`).
fn keep_program_action(act: &libc::sigaction) {
    use crate::signal::PROGRAM_ACTION as P;
    use core::sync::atomic::Ordering::Release;
    let mut mask = 0u64;
    for sig in 1..=64 {
        // SAFETY: `act.sa_mask` is a valid sigset_t.
        if unsafe { libc::sigismember(&act.sa_mask, sig) } == 1 {
            mask |= crate::signal::bit(sig);
        }
    }
    P.mask.store(mask, Release);
    P.flags.store(act.sa_flags as u64, Release);
    P.handler.store(act.sa_sigaction as u64, Release);
}

/// Whether `sig` is pmig's checkpoint signal (whose disposition the program keeps for itself,
/// see `signal::PROGRAM_ACTION`), rather than its suspend signal.
fn is_checkpoint_signal(sig: c_int) -> bool {
    config::get().is_some_and(|c| c.signal == sig)
}

redhook::hook! {
    unsafe fn sigaction(sig: c_int, act: *const libc::sigaction, old: *mut libc::sigaction) -> c_int => pmig_sigaction {
        if ours(sig) {
            let fail = |e: i32| {
                // SAFETY: errno is this thread's.
                unsafe { *libc::__errno_location() = e };
                -1
            };
            // The checkpoint signal: the program's own action is kept aside (it runs for
            // signals from the tree's processes); the suspend signal's answers "default".
            let kept = is_checkpoint_signal(sig);
            let new = if act.is_null() { None } else {
                // SAFETY: read without faulting; a bad `act` gives EFAULT.
                match unsafe { crate::umem::read(act) } {
                    Some(a) => Some(a),
                    None => return fail(libc::EFAULT),
                }
            };
            if !old.is_null() {
                // SAFETY: all zero is a valid sigaction (SIG_DFL, no flags).
                let prev: libc::sigaction = if kept { program_action() } else { unsafe { core::mem::zeroed() } };
                // SAFETY: written without faulting; a bad `old` gives EFAULT.
                if let Err(e) = unsafe { crate::umem::write(old, &prev) } {
                    return fail(e);
                }
            }
            if let (Some(a), true) = (new, kept) {
                keep_program_action(&a);
            }
            return 0;
        }
        // SAFETY: forwarded unchanged to libc.
        unsafe { redhook::real!(sigaction)(sig, act, old) }
    }
}

redhook::hook! {
    unsafe fn signal(sig: c_int, handler: sighandler_t) -> sighandler_t => pmig_signal {
        if ours(sig) {
            if !is_checkpoint_signal(sig) {
                return libc::SIG_DFL;
            }
            let prev = program_action().sa_sigaction;
            // SAFETY: all zero is a valid sigaction; glibc's signal() gives BSD semantics.
            let mut a: libc::sigaction = unsafe { core::mem::zeroed() };
            a.sa_sigaction = handler;
            a.sa_flags = libc::SA_RESTART;
            // SAFETY: `a.sa_mask` is a valid sigset_t.
            unsafe { libc::sigaddset(&mut a.sa_mask, sig) };
            keep_program_action(&a);
            return prev;
        }
        // SAFETY: forwarded unchanged to libc.
        unsafe { redhook::real!(signal)(sig, handler) }
    }
}

redhook::hook! {
    unsafe fn sigprocmask(how: c_int, set: *const sigset_t, old: *mut sigset_t) -> c_int => pmig_sigprocmask {
        // SAFETY: `kept_ours` reads `set` without faulting.
        let r = match unsafe { kept_ours(how, set) } {
            // SAFETY: forwarded to libc with a valid set of our own.
            Some(copy) => unsafe { redhook::real!(sigprocmask)(how, &copy, old) },
            // SAFETY: forwarded unchanged to libc.
            None => unsafe { redhook::real!(sigprocmask)(how, set, old) },
        };
        if r == 0 {
            // SAFETY: `old` is the program's pointer libc just wrote.
            unsafe { hide_ours(old) };
        }
        r
    }
}

redhook::hook! {
    unsafe fn pthread_sigmask(how: c_int, set: *const sigset_t, old: *mut sigset_t) -> c_int => pmig_pthread_sigmask {
        // SAFETY: `kept_ours` reads `set` without faulting.
        let r = match unsafe { kept_ours(how, set) } {
            // SAFETY: forwarded to libc with a valid set of our own.
            Some(copy) => unsafe { redhook::real!(pthread_sigmask)(how, &copy, old) },
            // SAFETY: forwarded unchanged to libc.
            None => unsafe { redhook::real!(pthread_sigmask)(how, set, old) },
        };
        if r == 0 {
            // SAFETY: `old` is the program's pointer libc just wrote.
            unsafe { hide_ours(old) };
        }
        r
    }
}

// ---- ids as the program saw them (see `pid`) ----

redhook::hook! {
    unsafe fn getpid() -> libc::pid_t => pmig_getpid {
        crate::pid::getpid()
    }
}

redhook::hook! {
    unsafe fn getppid() -> libc::pid_t => pmig_getppid {
        crate::pid::getppid()
    }
}

redhook::hook! {
    unsafe fn gettid() -> libc::pid_t => pmig_gettid {
        crate::pid::gettid()
    }
}

redhook::hook! {
    unsafe fn kill(pid: libc::pid_t, sig: c_int) -> c_int => pmig_kill {
        // SAFETY: forwarded to libc with a translated pid.
        unsafe { redhook::real!(kill)(crate::pid::to_real(pid), sig) }
    }
}

redhook::hook! {
    unsafe fn tgkill(tgid: libc::pid_t, tid: libc::pid_t, sig: c_int) -> c_int => pmig_tgkill {
        // SAFETY: forwarded to libc with translated ids.
        unsafe { redhook::real!(tgkill)(crate::pid::to_real(tgid), crate::pid::to_real(tid), sig) }
    }
}

/// `path` with `/proc/<virtual id>` rewritten to the real id, when that changes it; `None`
/// (the program's pointer goes to libc as it is, which fails with EFAULT) also when `path` is
/// null or unreadable.
///
/// # Safety
/// `path` comes from the program: it is read without faulting (`umem`), except where the
/// kernel refuses that, when it must be null or a valid C string as libc requires.
unsafe fn proc_path(path: *const c_char) -> Option<std::ffi::CString> {
    if path.is_null() || !crate::pid::active() {
        return None;
    }
    // SAFETY: read without faulting.
    let bytes = unsafe { crate::umem::c_string(path) }?;
    std::ffi::CString::new(crate::pid::proc_path(&bytes)?).ok()
}

/// Defines a wrapper for a libc function whose first path argument may name `/proc/<pid>`.
macro_rules! path_hook {
    ($name:ident => $hook:ident ($path:ident : *const c_char $(, $a:ident : $t:ty)*) -> $r:ty) => {
        redhook::hook! {
            unsafe fn $name($path: *const c_char $(, $a: $t)*) -> $r => $hook {
                // SAFETY: `proc_path` reads `$path` without faulting.
                match unsafe { proc_path($path) } {
                    // SAFETY: forwarded to libc with a valid translated path.
                    Some(p) => unsafe { redhook::real!($name)(p.as_ptr() $(, $a)*) },
                    // SAFETY: forwarded unchanged to libc.
                    None => unsafe { redhook::real!($name)($path $(, $a)*) },
                }
            }
        }
    };
}

path_hook!(open => pmig_open(path: *const c_char, flags: c_int, mode: libc::mode_t) -> c_int);
path_hook!(open64 => pmig_open64(path: *const c_char, flags: c_int, mode: libc::mode_t) -> c_int);
path_hook!(__open_2 => pmig_open_2(path: *const c_char, flags: c_int) -> c_int);
path_hook!(__open64_2 => pmig_open64_2(path: *const c_char, flags: c_int) -> c_int);
path_hook!(fopen => pmig_fopen(path: *const c_char, mode: *const c_char) -> *mut libc::FILE);
path_hook!(fopen64 => pmig_fopen64(path: *const c_char, mode: *const c_char) -> *mut libc::FILE);
path_hook!(opendir => pmig_opendir(path: *const c_char) -> *mut libc::DIR);
path_hook!(readlink => pmig_readlink(path: *const c_char, buf: *mut c_char, len: libc::size_t) -> libc::ssize_t);
path_hook!(access => pmig_access(path: *const c_char, mode: c_int) -> c_int);
path_hook!(stat => pmig_stat(path: *const c_char, buf: *mut libc::stat) -> c_int);
path_hook!(lstat => pmig_lstat(path: *const c_char, buf: *mut libc::stat) -> c_int);
path_hook!(stat64 => pmig_stat64(path: *const c_char, buf: *mut libc::stat64) -> c_int);
path_hook!(lstat64 => pmig_lstat64(path: *const c_char, buf: *mut libc::stat64) -> c_int);

/// Defines a wrapper for a libc `*at` function whose path argument may name `/proc/<pid>`.
macro_rules! at_hook {
    ($name:ident => $hook:ident ($dirfd:ident : c_int, $path:ident : *const c_char $(, $a:ident : $t:ty)*) -> $r:ty) => {
        redhook::hook! {
            unsafe fn $name($dirfd: c_int, $path: *const c_char $(, $a: $t)*) -> $r => $hook {
                // SAFETY: `proc_path` reads `$path` without faulting.
                match unsafe { proc_path($path) } {
                    // SAFETY: forwarded to libc with a valid translated path.
                    Some(p) => unsafe { redhook::real!($name)($dirfd, p.as_ptr() $(, $a)*) },
                    // SAFETY: forwarded unchanged to libc.
                    None => unsafe { redhook::real!($name)($dirfd, $path $(, $a)*) },
                }
            }
        }
    };
}

at_hook!(openat => pmig_openat(dirfd: c_int, path: *const c_char, flags: c_int, mode: libc::mode_t) -> c_int);
at_hook!(openat64 => pmig_openat64(dirfd: c_int, path: *const c_char, flags: c_int, mode: libc::mode_t) -> c_int);
at_hook!(readlinkat => pmig_readlinkat(dirfd: c_int, path: *const c_char, buf: *mut c_char, len: libc::size_t) -> libc::ssize_t);
at_hook!(fstatat => pmig_fstatat(dirfd: c_int, path: *const c_char, buf: *mut libc::stat, flags: c_int) -> c_int);
at_hook!(fstatat64 => pmig_fstatat64(dirfd: c_int, path: *const c_char, buf: *mut libc::stat64, flags: c_int) -> c_int);

// ---- POSIX timers (see `timer`) ----

redhook::hook! {
    unsafe fn timer_create(clock: libc::clockid_t, sev: *const libc::sigevent, id: *mut libc::timer_t) -> c_int => pmig_timer_create {
        // SAFETY: arguments from the program, valid as timer_create requires.
        match unsafe { crate::timer::create_thread_timer(clock, sev, id) } {
            Some(r) => r,
            // SAFETY: forwarded unchanged to libc.
            None => unsafe { redhook::real!(timer_create)(clock, sev, id) },
        }
    }
}

// ---- inotify (see `fd::inotify`) ----

redhook::hook! {
    unsafe fn inotify_add_watch(fd: c_int, path: *const c_char, mask: u32) -> c_int => pmig_inotify_add_watch {
        // SAFETY: forwarded unchanged to libc.
        let wd = unsafe { redhook::real!(inotify_add_watch)(fd, path, mask) };
        if wd >= 0 {
            // SAFETY: read without faulting (the call succeeded, so it was readable then, but
            // another thread may have unmapped it since).
            if let Some(p) = unsafe { crate::umem::c_string(path) } {
                crate::fd::inotify::remember(wd, &String::from_utf8_lossy(&p));
            }
        }
        wd
    }
}

// ---- calls a checkpoint interrupts: issued again (see `restart`) ----

/// Defines a wrapper that issues a call again, unchanged, when a checkpoint interrupted it
/// (calls with no timeout, an absolute one, or one the socket holds).
macro_rules! retry_hook {
    ($name:ident => $hook:ident ($($a:ident : $t:ty),*) -> $r:ty) => {
        redhook::hook! {
            unsafe fn $name($($a: $t),*) -> $r => $hook {
                let mut e = restart::epoch();
                loop {
                    // SAFETY: forwarded unchanged to libc.
                    let r = unsafe { redhook::real!($name)($($a),*) };
                    if r >= 0 || !restart::again(&mut e) {
                        return r;
                    }
                }
            }
        }
    };
}

// Sockets with SO_RCVTIMEO / SO_SNDTIMEO fail with EINTR (without, the kernel restarts them):
// issued again with the socket's whole timeout. `read`/`write` and the `_chk` entries of
// _FORTIFY_SOURCE programs may be on sockets too.
retry_hook!(read => pmig_read(fd: c_int, buf: *mut c_void, n: size_t) -> ssize_t);
retry_hook!(write => pmig_write(fd: c_int, buf: *const c_void, n: size_t) -> ssize_t);
retry_hook!(readv => pmig_readv(fd: c_int, iov: *const libc::iovec, n: c_int) -> ssize_t);
retry_hook!(writev => pmig_writev(fd: c_int, iov: *const libc::iovec, n: c_int) -> ssize_t);
retry_hook!(__read_chk => pmig_read_chk(fd: c_int, buf: *mut c_void, n: size_t, len: size_t) -> ssize_t);
retry_hook!(recv => pmig_recv(fd: c_int, buf: *mut c_void, n: size_t, flags: c_int) -> ssize_t);
retry_hook!(__recv_chk => pmig_recv_chk(fd: c_int, buf: *mut c_void, n: size_t, len: size_t, flags: c_int) -> ssize_t);
retry_hook!(recvfrom => pmig_recvfrom(fd: c_int, buf: *mut c_void, n: size_t, flags: c_int, addr: *mut libc::sockaddr, alen: *mut libc::socklen_t) -> ssize_t);
retry_hook!(__recvfrom_chk => pmig_recvfrom_chk(fd: c_int, buf: *mut c_void, n: size_t, len: size_t, flags: c_int, addr: *mut libc::sockaddr, alen: *mut libc::socklen_t) -> ssize_t);
retry_hook!(recvmsg => pmig_recvmsg(fd: c_int, msg: *mut libc::msghdr, flags: c_int) -> ssize_t);
retry_hook!(send => pmig_send(fd: c_int, buf: *const c_void, n: size_t, flags: c_int) -> ssize_t);
retry_hook!(sendto => pmig_sendto(fd: c_int, buf: *const c_void, n: size_t, flags: c_int, addr: *const libc::sockaddr, alen: libc::socklen_t) -> ssize_t);
retry_hook!(sendmsg => pmig_sendmsg(fd: c_int, msg: *const libc::msghdr, flags: c_int) -> ssize_t);
retry_hook!(accept => pmig_accept(fd: c_int, addr: *mut libc::sockaddr, alen: *mut libc::socklen_t) -> c_int);
retry_hook!(accept4 => pmig_accept4(fd: c_int, addr: *mut libc::sockaddr, alen: *mut libc::socklen_t, flags: c_int) -> c_int);
// A blocking connect issued again waits for the same connection attempt (as the kernel's own
// restart does).
retry_hook!(connect => pmig_connect(fd: c_int, addr: *const libc::sockaddr, alen: libc::socklen_t) -> c_int);

// System V IPC without a timeout, signal waits without one, POSIX semaphores with an absolute
// deadline.
redhook::hook! {
    unsafe fn semget(key: libc::key_t, n: c_int, flags: c_int) -> c_int => pmig_semget {
        // SAFETY: forwarded unchanged to libc.
        let id = unsafe { redhook::real!(semget)(key, n, flags) };
        crate::sysv::got_semaphores(id);
        id
    }
}

// Registrations only a raw system call makes and /proc does not show: the program's own rseq
// area (when glibc's is off) and membarrier registrations. Programs make them through libc's
// syscall(), wrapped here with its six register arguments (x86_64 passes variadic integers
// as fixed ones; glibc's syscall() reads only registers).
redhook::hook! {
    unsafe fn syscall(n: c_long, a1: c_long, a2: c_long, a3: c_long, a4: c_long, a5: c_long, a6: c_long) -> c_long => pmig_syscall {
        // SAFETY: forwarded unchanged to libc.
        let r = unsafe { redhook::real!(syscall)(n, a1, a2, a3, a4, a5, a6) };
        if r >= 0 {
            match n {
                libc::SYS_membarrier => crate::process::membarrier_called(a1 as i32),
                libc::SYS_rseq => crate::thread::rseq_called(a1 as u64, a2 as u32, a3 as i32, a4 as u32),
                _ => {}
            }
        }
        r
    }
}

// mlockall(MCL_FUTURE) leaves no trace pmig can read (the mm's default flags): the wrappers
// record it, for the restore to ask for it again.
redhook::hook! {
    unsafe fn mlockall(flags: c_int) -> c_int => pmig_mlockall {
        // SAFETY: forwarded unchanged to libc.
        let r = unsafe { redhook::real!(mlockall)(flags) };
        if r == 0 {
            crate::process::locked_all(Some(flags));
        }
        r
    }
}

redhook::hook! {
    unsafe fn munlockall() -> c_int => pmig_munlockall {
        // SAFETY: forwarded unchanged to libc.
        let r = unsafe { redhook::real!(munlockall)() };
        if r == 0 {
            crate::process::locked_all(None);
        }
        r
    }
}

redhook::hook! {
    unsafe fn msgget(key: libc::key_t, flags: c_int) -> c_int => pmig_msgget {
        // SAFETY: forwarded unchanged to libc.
        let id = unsafe { redhook::real!(msgget)(key, flags) };
        crate::sysv::got_queue(id);
        id
    }
}

retry_hook!(msgrcv => pmig_msgrcv(id: c_int, buf: *mut c_void, n: size_t, typ: c_long, flags: c_int) -> ssize_t);
retry_hook!(msgsnd => pmig_msgsnd(id: c_int, buf: *const c_void, n: size_t, flags: c_int) -> c_int);
retry_hook!(semop => pmig_semop(id: c_int, ops: *mut libc::sembuf, n: size_t) -> c_int);
retry_hook!(sigwaitinfo => pmig_sigwaitinfo(set: *const sigset_t, info: *mut libc::siginfo_t) -> c_int);
retry_hook!(sem_timedwait => pmig_sem_timedwait(sem: *mut libc::sem_t, abs: *const timespec) -> c_int);
retry_hook!(sem_clockwait => pmig_sem_clockwait(sem: *mut libc::sem_t, clock: libc::clockid_t, abs: *const timespec) -> c_int);

/// Defines a wrapper for a call with a relative timeout in milliseconds (`$ms`, negative: none),
/// measured on CLOCK_MONOTONIC and issued again for what is left of it.
macro_rules! ms_hook {
    ($name:ident => $hook:ident ($($a:ident : $t:ty),* ; $ms:ident $(; $b:ident : $u:ty)*) -> $r:ty) => {
        redhook::hook! {
            unsafe fn $name($($a: $t,)* $ms: c_int $(, $b: $u)*) -> $r => $hook {
                let mut e = restart::epoch();
                let timer = restart::Timer::start(libc::CLOCK_MONOTONIC, $ms > 0);
                let mut left = $ms;
                loop {
                    // SAFETY: forwarded to libc with the program's arguments and a timeout no
                    // longer than its own.
                    let r = unsafe { redhook::real!($name)($($a,)* left $(, $b)*) };
                    if r >= 0 || !restart::again(&mut e) {
                        return r;
                    }
                    if $ms > 0 {
                        left = timer.left_ms($ms);
                    }
                }
            }
        }
    };
}

ms_hook!(poll => pmig_poll(fds: *mut libc::pollfd, n: libc::nfds_t; timeout) -> c_int);
ms_hook!(__poll_chk => pmig_poll_chk(fds: *mut libc::pollfd, n: libc::nfds_t; timeout; len: size_t) -> c_int);
ms_hook!(epoll_wait => pmig_epoll_wait(epfd: c_int, ev: *mut libc::epoll_event, max: c_int; timeout) -> c_int);
ms_hook!(epoll_pwait => pmig_epoll_pwait(epfd: c_int, ev: *mut libc::epoll_event, max: c_int; timeout; mask: *const sigset_t) -> c_int);

/// Defines a wrapper for a call with a relative timeout in a `*const timespec` (`$ts`, null:
/// none) that the call does not change, measured on `$clock` and issued again for what is left
/// of it. The timeout is read only after the call failed with EINTR (the kernel read it too).
macro_rules! ts_hook {
    ($name:ident => $hook:ident ($($a:ident : $t:ty),* ; $ts:ident $(; $b:ident : $u:ty)*) -> $r:ty, $clock:expr) => {
        redhook::hook! {
            unsafe fn $name($($a: $t,)* $ts: *const timespec $(, $b: $u)*) -> $r => $hook {
                let mut e = restart::epoch();
                let timer = restart::Timer::start($clock, !$ts.is_null());
                let mut cur = $ts;
                let mut left: timespec;
                loop {
                    // SAFETY: forwarded to libc with the program's arguments and either its own
                    // timeout or `left`, no longer than it.
                    let r = unsafe { redhook::real!($name)($($a,)* cur $(, $b)*) };
                    if r >= 0 || !restart::again(&mut e) {
                        return r;
                    }
                    if !$ts.is_null() {
                        // SAFETY: not null, and the call read it before it waited and failed
                        // with EINTR (a bad pointer fails with EFAULT first).
                        let total = restart::ts_ns(unsafe { &*$ts });
                        left = restart::ns_ts(timer.left(total));
                        cur = &left;
                    }
                }
            }
        }
    };
}

ts_hook!(ppoll => pmig_ppoll(fds: *mut libc::pollfd, n: libc::nfds_t; timeout; mask: *const sigset_t) -> c_int, libc::CLOCK_MONOTONIC);
ts_hook!(__ppoll_chk => pmig_ppoll_chk(fds: *mut libc::pollfd, n: libc::nfds_t; timeout; mask: *const sigset_t; len: size_t) -> c_int, libc::CLOCK_MONOTONIC);
ts_hook!(pselect => pmig_pselect(n: c_int, r: *mut libc::fd_set, w: *mut libc::fd_set, x: *mut libc::fd_set; timeout; mask: *const sigset_t) -> c_int, libc::CLOCK_MONOTONIC);
ts_hook!(epoll_pwait2 => pmig_epoll_pwait2(epfd: c_int, ev: *mut libc::epoll_event, max: c_int; timeout; mask: *const sigset_t) -> c_int, libc::CLOCK_MONOTONIC);
ts_hook!(sigtimedwait => pmig_sigtimedwait(set: *const sigset_t, info: *mut libc::siginfo_t; timeout) -> c_int, libc::CLOCK_MONOTONIC);
ts_hook!(semtimedop => pmig_semtimedop(id: c_int, ops: *mut libc::sembuf, n: size_t; timeout) -> c_int, libc::CLOCK_MONOTONIC);
// The remaining time nanosleep writes to `rem` when the program's own signal interrupts it is
// the kernel's, for the request in force: what is left of the original one.
ts_hook!(nanosleep => pmig_nanosleep(; req; rem: *mut timespec) -> c_int, libc::CLOCK_MONOTONIC);

redhook::hook! {
    unsafe fn select(n: c_int, r: *mut libc::fd_set, w: *mut libc::fd_set, x: *mut libc::fd_set, tv: *mut libc::timeval) -> c_int => pmig_select {
        let mut e = restart::epoch();
        // Linux writes what is left into `tv`, even on EINTR, so the original is read now
        // (glibc reads it before the call as well). The fd sets are left alone on EINTR.
        let total = if tv.is_null() {
            None
        } else {
            // SAFETY: not null; glibc's select dereferences it the same way.
            let t = unsafe { *tv };
            Some((t.tv_sec as i128 * 1_000_000 + t.tv_usec as i128).max(0) * 1000)
        };
        let timer = restart::Timer::start(libc::CLOCK_MONOTONIC, total.is_some_and(|t| t > 0));
        loop {
            // SAFETY: forwarded to libc with the program's arguments.
            let ret = unsafe { redhook::real!(select)(n, r, w, x, tv) };
            if ret >= 0 || !restart::again(&mut e) {
                return ret;
            }
            if let Some(total) = total {
                let left = (timer.left(total) + 999) / 1000;
                // SAFETY: the kernel accepted and wrote this timeval during the call.
                unsafe {
                    (*tv).tv_sec = (left / 1_000_000) as libc::time_t;
                    (*tv).tv_usec = (left % 1_000_000) as libc::suseconds_t;
                }
            }
        }
    }
}

redhook::hook! {
    unsafe fn clock_nanosleep(clock: libc::clockid_t, flags: c_int, req: *const timespec, rem: *mut timespec) -> c_int => pmig_clock_nanosleep {
        let mut e = restart::epoch();
        // An absolute deadline is issued again unchanged; a relative one for what is left.
        let relative = flags & libc::TIMER_ABSTIME == 0 && !req.is_null();
        let timer = restart::Timer::start(restart::relative_clock(clock), relative);
        let mut cur = req;
        let mut left: timespec;
        loop {
            // SAFETY: forwarded to libc with the program's arguments and either its own request
            // or `left`, no longer than it.
            let r = unsafe { redhook::real!(clock_nanosleep)(clock, flags, cur, rem) };
            if r == 0 || !restart::again_err(r, &mut e) {
                return r;
            }
            if relative {
                // SAFETY: not null, and the kernel read it before the sleep (else EFAULT).
                left = restart::ns_ts(timer.left(restart::ts_ns(unsafe { &*req })));
                cur = &left;
            }
        }
    }
}

// glibc's `usleep` and `sleep` call its nanosleep internally, not through this library.

redhook::hook! {
    unsafe fn usleep(us: libc::useconds_t) -> c_int => pmig_usleep {
        let mut e = restart::epoch();
        let timer = restart::Timer::start(libc::CLOCK_MONOTONIC, us > 0);
        let mut left = us;
        loop {
            // SAFETY: forwarded to libc with a time no longer than the program's.
            let r = unsafe { redhook::real!(usleep)(left) };
            if r == 0 || !restart::again(&mut e) {
                return r;
            }
            left = ((timer.left(us as i128 * 1000) + 999) / 1000) as libc::useconds_t;
        }
    }
}

redhook::hook! {
    unsafe fn sleep(secs: libc::c_uint) -> libc::c_uint => pmig_sleep {
        // glibc's sleep answers the whole seconds left when interrupted, 0 with less than one
        // left, so a checkpoint cannot be told from the end: it is done here, with the
        // nanosleep wrapper, answering as glibc does.
        let req = timespec { tv_sec: secs as libc::time_t, tv_nsec: 0 };
        let mut rem = timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: two valid timespecs of ours.
        if unsafe { pmig_nanosleep(&req, &mut rem) } == 0 {
            return 0;
        }
        rem.tv_sec as libc::c_uint
    }
}

/// libaio's `io_getevents`, which returns minus the error number. Not every program loads
/// libaio, so the real function is looked up without redhook (which panics on a missing one).
///
/// # Safety
/// As libaio's: the arguments must be valid for `io_getevents(2)`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn io_getevents(ctx: libc::c_ulong, min: c_long, nr: c_long, ev: *mut c_void, tmo: *mut timespec) -> c_int {
    type F = unsafe extern "C" fn(libc::c_ulong, c_long, c_long, *mut c_void, *mut timespec) -> c_int;
    static REAL: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);
    let mut f = REAL.load(Relaxed);
    if f == 0 {
        // SAFETY: dlsym with RTLD_NEXT and a NUL-terminated name.
        f = unsafe { libc::dlsym(libc::RTLD_NEXT, c"io_getevents".as_ptr()) } as usize;
        if f == 0 {
            return -libc::ENOSYS;
        }
        REAL.store(f, Relaxed);
    }
    // SAFETY: `f` is libaio's io_getevents, of this signature.
    let real: F = unsafe { core::mem::transmute::<usize, F>(f) };
    let mut e = restart::epoch();
    let timer = restart::Timer::start(libc::CLOCK_MONOTONIC, !tmo.is_null());
    let mut cur = tmo;
    let mut left: timespec;
    loop {
        // SAFETY: forwarded to libaio with the program's arguments and either its own timeout
        // or `left`, no longer than it.
        let r = unsafe { real(ctx, min, nr, ev, cur) };
        if r >= 0 || !restart::again_err(-r, &mut e) {
            return r;
        }
        if !tmo.is_null() {
            // SAFETY: not null, and the kernel read it before it waited (else EFAULT).
            left = restart::ns_ts(timer.left(restart::ts_ns(unsafe { &*tmo })));
            cur = &mut left;
        }
    }
}

/// Looks up, while the program starts, the libc functions the wrappers above call: redhook
/// does it on first use otherwise, with `dlsym`, which a checkpoint thread must not call
/// while the other threads are stopped (pmig's own std code reads and writes through them).
pub fn resolve_real() {
    let _ = (redhook::real!(read), redhook::real!(write), redhook::real!(readv), redhook::real!(writev));
    let _ = (redhook::real!(recv), redhook::real!(recvfrom), redhook::real!(recvmsg));
    let _ = (redhook::real!(send), redhook::real!(sendto), redhook::real!(sendmsg));
    let _ = (redhook::real!(accept), redhook::real!(accept4), redhook::real!(connect));
    let _ = (redhook::real!(poll), redhook::real!(ppoll), redhook::real!(select), redhook::real!(pselect));
    let _ = (redhook::real!(nanosleep), redhook::real!(clock_nanosleep));
    // (Rust's std in pmig's own threads calls syscall() too: resolved before any signal.)
    let _ = redhook::real!(syscall);
}
