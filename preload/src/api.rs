//! Every function libpmig exports in place of libc's, in one auditable list.
//!
//! They keep the program from taking away pmig's two signals (the checkpoint signal and the
//! suspend signal): installing a handler for them or blocking them is quietly left out, and
//! asking for their disposition answers "default". Everything else goes to libc unchanged.

use crate::config;
use core::sync::atomic::Ordering::Relaxed;
use libc::{c_int, sighandler_t, sigset_t};

/// Whether `sig` is one of pmig's while pmig is active in this process.
fn ours(sig: c_int) -> bool {
    match config::get() {
        Some(c) if config::ACTIVE_PID.load(Relaxed) == crate::sys::getpid() => sig == c.signal || sig == c.suspend_signal,
        _ => false,
    }
}

/// `set` without pmig's signals, if it has any of them.
///
/// # Safety
/// `set` must be null or point to a valid `sigset_t`.
unsafe fn without_ours(set: *const sigset_t) -> Option<sigset_t> {
    let c = config::get()?;
    if set.is_null() || config::ACTIVE_PID.load(Relaxed) != crate::sys::getpid() {
        return None;
    }
    // SAFETY: the caller guarantees `set` points to a valid sigset_t.
    let mut copy = unsafe { *set };
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
                // SAFETY: the program passed a writable sigaction; zero is SIG_DFL, no flags.
                unsafe { core::ptr::write_bytes(old, 0, 1) };
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
        // SAFETY: `set` comes from the program, null or valid as libc requires.
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
        // SAFETY: `set` comes from the program, null or valid as libc requires.
        match unsafe { without_ours(set) } {
            // SAFETY: forwarded to libc with a valid set of our own.
            Some(copy) => unsafe { redhook::real!(pthread_sigmask)(how, &copy, old) },
            // SAFETY: forwarded unchanged to libc.
            None => unsafe { redhook::real!(pthread_sigmask)(how, set, old) },
        }
    }
}
