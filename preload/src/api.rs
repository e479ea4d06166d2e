//! Every function libpmig exports in place of libc's, in one auditable list.
//!
//! - Signals: they keep the program from taking away pmig's two signals (the checkpoint signal
//!   and the suspend signal): installing a handler for them or blocking them is quietly left
//!   out, and asking for their disposition answers "default".
//! - Ids: `getpid`, `getppid`, `gettid` answer with the ids the program saw before a restore;
//!   `kill`, `tgkill` and functions taking a path translate them back (`pid`).
//!
//! Everything else goes to libc unchanged; until a restore, the id wrappers cost one atomic
//! load.
//!
//! A wrapper never dereferences a pointer the program passed: it reads (or writes) through
//! `umem`, which fails with `EFAULT` instead of faulting, and then hands the program's
//! original pointer to libc, so a bad pointer fails (or faults in libc) exactly as without
//! pmig.

use crate::config;
use core::sync::atomic::Ordering::Relaxed;
use libc::{c_char, c_int, sighandler_t, sigset_t};

/// Whether `sig` is one of pmig's while pmig is active in this process.
fn ours(sig: c_int) -> bool {
    match config::get() {
        Some(c) if config::ACTIVE_PID.load(Relaxed) == crate::sys::getpid() => sig == c.signal || sig == c.suspend_signal,
        _ => false,
    }
}

/// `set` without pmig's signals, if it has any of them; `None` (the program's set goes to
/// libc as it is) also when `set` is null or unreadable.
///
/// # Safety
/// `set` comes from the program: it is read without faulting (`umem`), except where the
/// kernel refuses that, when it must be null or valid as libc requires.
unsafe fn without_ours(set: *const sigset_t) -> Option<sigset_t> {
    let c = config::get()?;
    if set.is_null() || config::ACTIVE_PID.load(Relaxed) != crate::sys::getpid() {
        return None;
    }
    // SAFETY: read without faulting; sigset_t is plain integers.
    let mut copy = unsafe { crate::umem::read(set) }?;
    // SAFETY: `copy` is a valid sigset_t we own.
    unsafe {
        libc::sigdelset(&mut copy, c.signal);
        libc::sigdelset(&mut copy, c.suspend_signal);
    }
    Some(copy)
}

redhook::hook! {
    unsafe fn sigaction(sig: c_int, act: *const libc::sigaction, old: *mut libc::sigaction) -> c_int => pmig_sigaction {
        if ours(sig) {
            if !old.is_null() {
                // SAFETY: all zero is a valid sigaction (SIG_DFL, no flags).
                let dfl: libc::sigaction = unsafe { core::mem::zeroed() };
                // SAFETY: written without faulting; a bad `old` gives EFAULT.
                if let Err(e) = unsafe { crate::umem::write(old, &dfl) } {
                    // SAFETY: errno is this thread's.
                    unsafe { *libc::__errno_location() = e };
                    return -1;
                }
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
            return libc::SIG_DFL;
        }
        // SAFETY: forwarded unchanged to libc.
        unsafe { redhook::real!(signal)(sig, handler) }
    }
}

redhook::hook! {
    unsafe fn sigprocmask(how: c_int, set: *const sigset_t, old: *mut sigset_t) -> c_int => pmig_sigprocmask {
        // SAFETY: `without_ours` reads `set` without faulting.
        match unsafe { without_ours(set) } {
            // SAFETY: forwarded to libc with a valid set of our own.
            Some(copy) => unsafe { redhook::real!(sigprocmask)(how, &copy, old) },
            // SAFETY: forwarded unchanged to libc.
            None => unsafe { redhook::real!(sigprocmask)(how, set, old) },
        }
    }
}

redhook::hook! {
    unsafe fn pthread_sigmask(how: c_int, set: *const sigset_t, old: *mut sigset_t) -> c_int => pmig_pthread_sigmask {
        // SAFETY: `without_ours` reads `set` without faulting.
        match unsafe { without_ours(set) } {
            // SAFETY: forwarded to libc with a valid set of our own.
            Some(copy) => unsafe { redhook::real!(pthread_sigmask)(how, &copy, old) },
            // SAFETY: forwarded unchanged to libc.
            None => unsafe { redhook::real!(pthread_sigmask)(how, set, old) },
        }
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
