//! `execve` and its family, made safe against a checkpoint stopping the process meanwhile.
//!
//! A thread inside `execve` cannot take pmig's suspend signal: it would carry it, pending,
//! into the new program, which has no handler for it yet and dies of it (the default action
//! of a real-time signal). The kernel shows no reliable sign of a thread being in `execve`
//! (`/proc/.../syscall` says "running" while it loads the program), so the wrappers say it
//! themselves, with a handshake against `thread::suspend_all`:
//!
//! - a wrapper writes its tid into a slot of [`EXECING`], then reads [`SUSPENDING`]; if set,
//!   it takes its tid back, waits (the suspend signal parks it meanwhile) and tries again;
//! - `suspend_all` sets [`SUSPENDING`], then reads the slots, and gives up (to try again a
//!   little later) if one holds a thread of this process.
//!
//! Both sides store before they load, all sequentially consistent, so at least one sees the
//! other: a thread is never signalled once it is on its way into `execve`. Slots of threads
//! that are not this process's (a `vfork` child sharing the memory, threads a `fork` left
//! behind) are ignored, and the failed `exec` takes its slot back.
//!
//! `execl`, `execle` and `execlp` are variadic; Rust cannot define those, so a naked
//! trampoline hands the register and stack arguments to [`l_variant`], which builds `argv`.

use crate::{config, sys};
use core::sync::atomic::{AtomicBool, AtomicI32, Ordering::*};
use libc::{c_char, c_int};

const SLOTS: usize = 64;

/// Tids of the threads inside an exec wrapper (0: free).
pub static EXECING: [AtomicI32; SLOTS] = [const { AtomicI32::new(0) }; SLOTS];
/// Set by `suspend_all` while it stops threads, until `release_all`.
pub static SUSPENDING: AtomicBool = AtomicBool::new(false);

/// Whether thread `tid` has said it is on its way into `execve`.
pub fn marked(tid: i32) -> bool {
    EXECING.iter().any(|s| s.load(SeqCst) == tid)
}

/// In a child just forked: no thread of it is in an exec wrapper, and nothing stops it.
pub fn after_fork_in_child() {
    for s in EXECING.iter() {
        s.store(0, Relaxed);
    }
    SUSPENDING.store(false, Relaxed);
}

/// A thread's place in [`EXECING`] while it execs; dropping it (the exec failed) frees it.
pub struct Guard(Option<usize>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(i) = self.0 {
            EXECING[i].store(0, SeqCst);
        }
    }
}

/// Marks the calling thread as on its way into `execve` once no checkpoint is stopping the
/// process (see the module's comment). A thread of a process pmig does not manage, or a
/// `vfork` child (the memory is its parent's), passes at once unmarked.
pub fn enter() -> Guard {
    if config::get().is_none() || config::ACTIVE_PID.load(Relaxed) != sys::getpid() {
        return Guard(None);
    }
    let me = sys::gettid();
    loop {
        let Some(i) = EXECING.iter().position(|s| s.compare_exchange(0, me, SeqCst, SeqCst).is_ok()) else {
            sys::sleep_ms(1);
            continue;
        };
        if !SUSPENDING.load(SeqCst) {
            return Guard(Some(i));
        }
        EXECING[i].store(0, SeqCst);
        while SUSPENDING.load(SeqCst) {
            sys::sleep_ms(1);
        }
    }
}

unsafe extern "C" {
    static environ: *const *const c_char;
}

/// Which `execl*` a trampoline stands for.
const L_PLAIN: u32 = 0;
const L_ENV: u32 = 1;
const L_PATH: u32 = 2;

/// Builds `argv` from an `execl*` call's arguments and execs through the guarded wrappers.
/// `regs` holds the five integer registers after the path (rsi, rdx, rcx, r8, r9), `stack`
/// the arguments the caller pushed.
///
/// # Safety
/// Called only from the trampolines, with the caller's arguments as the C ABI placed them:
/// a NULL-terminated list of strings (then `envp` for `execle`).
unsafe extern "C" fn l_variant(path: *const c_char, regs: *const usize, stack: *const usize, kind: u32) -> c_int {
    // SAFETY: per the contract, argument `i` is in `regs` for i < 5, then on the stack.
    let arg = |i: usize| unsafe { if i < 5 { *regs.add(i) } else { *stack.add(i - 5) } };
    let mut n = 0;
    while arg(n) != 0 {
        n += 1;
    }
    let envp = if kind == L_ENV { arg(n + 1) as *const *const c_char } else {
        // SAFETY: glibc's environment pointer.
        unsafe { environ }
    };
    let mut small = [core::ptr::null::<c_char>(); 256];
    let mut big = Vec::new();
    let argv: &mut [*const c_char] = if n < small.len() {
        &mut small[..n + 1]
    } else {
        big.resize(n + 1, core::ptr::null());
        &mut big
    };
    for (i, a) in argv.iter_mut().enumerate().take(n) {
        *a = arg(i) as *const c_char;
    }
    let _g = enter();
    // SAFETY: forwarded to libc with an argv built from the caller's own arguments.
    unsafe {
        if kind == L_PATH {
            redhook::real!(execvpe)(path, argv.as_ptr(), envp)
        } else {
            redhook::real!(execve)(path, argv.as_ptr(), envp)
        }
    }
}

/// A trampoline for one `execl*`: spills the argument registers next to each other and calls
/// [`l_variant`] with their address, the stacked arguments' address and the kind.
macro_rules! l_trampoline {
    ($name:ident, $kind:expr) => {
        /// Exported in place of libc's (see the module's comment).
        ///
        /// # Safety
        /// As libc's: a NULL-terminated list of C strings follows `path`.
        #[unsafe(no_mangle)]
        #[unsafe(naked)]
        pub unsafe extern "C" fn $name(path: *const c_char, arg0: *const c_char) -> c_int {
            core::arch::naked_asm!(
                "push rbp",
                "mov rbp, rsp",
                "push r9",
                "push r8",
                "push rcx",
                "push rdx",
                "push rsi",
                "mov rsi, rsp",
                "lea rdx, [rbp + 16]",
                "mov ecx, {kind}",
                "sub rsp, 8",
                "call {imp}",
                "leave",
                "ret",
                kind = const $kind,
                imp = sym l_variant,
            )
        }
    };
}

l_trampoline!(execl, L_PLAIN);
l_trampoline!(execle, L_ENV);
l_trampoline!(execlp, L_PATH);

redhook::hook! {
    unsafe fn execve(path: *const c_char, argv: *const *const c_char, envp: *const *const c_char) -> c_int => pmig_execve {
        let _g = enter();
        // SAFETY: forwarded unchanged to libc.
        unsafe { redhook::real!(execve)(path, argv, envp) }
    }
}

redhook::hook! {
    unsafe fn execv(path: *const c_char, argv: *const *const c_char) -> c_int => pmig_execv {
        let _g = enter();
        // SAFETY: forwarded unchanged to libc.
        unsafe { redhook::real!(execv)(path, argv) }
    }
}

redhook::hook! {
    unsafe fn execvp(file: *const c_char, argv: *const *const c_char) -> c_int => pmig_execvp {
        let _g = enter();
        // SAFETY: forwarded unchanged to libc.
        unsafe { redhook::real!(execvp)(file, argv) }
    }
}

redhook::hook! {
    unsafe fn execvpe(file: *const c_char, argv: *const *const c_char, envp: *const *const c_char) -> c_int => pmig_execvpe {
        let _g = enter();
        // SAFETY: forwarded unchanged to libc.
        unsafe { redhook::real!(execvpe)(file, argv, envp) }
    }
}

redhook::hook! {
    unsafe fn fexecve(fd: c_int, argv: *const *const c_char, envp: *const *const c_char) -> c_int => pmig_fexecve {
        let _g = enter();
        // SAFETY: forwarded unchanged to libc.
        unsafe { redhook::real!(fexecve)(fd, argv, envp) }
    }
}

redhook::hook! {
    unsafe fn execveat(dirfd: c_int, path: *const c_char, argv: *const *const c_char, envp: *const *const c_char, flags: c_int) -> c_int => pmig_execveat {
        let _g = enter();
        // SAFETY: forwarded unchanged to libc.
        unsafe { redhook::real!(execveat)(dirfd, path, argv, envp, flags) }
    }
}

/// Resolves the real functions before any checkpoint (dlsym takes a lock).
pub fn resolve_real() {
    let _ = (redhook::real!(execve), redhook::real!(execv), redhook::real!(execvp), redhook::real!(execvpe));
    let _ = (redhook::real!(fexecve), redhook::real!(execveat));
}
