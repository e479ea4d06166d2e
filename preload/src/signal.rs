//! Signals: pmig's own two handlers, and the program's dispositions, interval timers and
//! pending signals (dump and restore side by side).
//!
//! `ckpt_handler` is signal-time code: it only bumps a futex word and the restart epoch
//! (async-signal-safe).

use crate::errno::Errno;
use crate::sys::{self, KSigAction};
use crate::{config, log};
use core::sync::atomic::{AtomicU64, Ordering::*};
use pmig_image::{ItimerState, SigActionState};

/// The program's own disposition for the checkpoint signal (its `sigaction`/`signal` calls
/// are kept here, not given to the kernel): handler (`SIG_DFL` = 0, `SIG_IGN` = 1, or a
/// function), `SA_*` flags, and the mask of the first 64 signals.
pub struct ProgramAction {
    pub handler: AtomicU64,
    pub flags: AtomicU64,
    pub mask: AtomicU64,
}

/// See [`ProgramAction`].
pub static PROGRAM_ACTION: ProgramAction =
    ProgramAction { handler: AtomicU64::new(0), flags: AtomicU64::new(0), mask: AtomicU64::new(0) };

/// Whether process `pid` (as this process's namespace numbers it) is this process or one of
/// the tree's: it, or one of its ancestors, is the tree's root. Signal-time safe (raw reads
/// of `/proc/PID/stat` into the stack).
fn in_tree(pid: i32, root: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    let mut p = pid;
    for _ in 0..64 {
        if p == root || p == sys::getpid() {
            return true;
        }
        let mut path = crate::log::StackBuf::new();
        let _ = core::fmt::Write::write_fmt(&mut path, format_args!("/proc/{p}/stat\0"));
        let mut buf = [0u8; 512];
        let Ok(n) = sys::read_file(path.as_bytes(), &mut buf) else { return false };
        // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        let Some(close) = buf[..n].iter().rposition(|&c| c == b')') else { return false };
        let ppid = buf[close + 1..n].split(|&c| c == b' ').filter(|f| !f.is_empty()).nth(1);
        match ppid.and_then(|f| core::str::from_utf8(f).ok()).and_then(|f| f.parse::<i32>().ok()) {
            Some(pp) if pp > 1 => p = pp,
            _ => return false,
        }
    }
    false
}

/// Signal-time: a checkpoint signal that a process of the tree sent to a program that set
/// its own disposition for it is the program's (postgres's postmaster tells its checkpointer
/// to shut down with SIGUSR2): its handler runs here, or it is ignored. Returns whether it
/// was the program's.
fn programs_own(sig: i32, info: *mut libc::siginfo_t, uc: *mut libc::c_void, code: i32) -> bool {
    let handler = PROGRAM_ACTION.handler.load(Acquire);
    if handler == libc::SIG_DFL as u64 || !matches!(code, libc::SI_USER | libc::SI_TKILL | libc::SI_QUEUE) {
        return false;
    }
    // SAFETY: for these codes the sender's pid is at offset 16 of the siginfo on x86_64.
    let sender = unsafe { core::ptr::read_unaligned((info as *const u8).add(16) as *const i32) };
    let Some(cfg) = config::get() else { return false };
    if !in_tree(sender, cfg.root_pid) {
        return false;
    }
    if handler == libc::SIG_IGN as u64 {
        return true;
    }
    let flags = PROGRAM_ACTION.flags.load(Acquire);
    if flags & libc::SA_RESETHAND as u64 != 0 {
        PROGRAM_ACTION.handler.store(libc::SIG_DFL as u64, Release);
    }
    // SAFETY: the program installed this function as its handler for `sig`, with these flags;
    // it is called as the kernel would call it (here with every other signal blocked).
    unsafe {
        if flags & libc::SA_SIGINFO as u64 != 0 {
            let f: extern "C" fn(i32, *mut libc::siginfo_t, *mut libc::c_void) = core::mem::transmute(handler as usize);
            f(sig, info, uc);
        } else {
            let f: extern "C" fn(i32) = core::mem::transmute(handler as usize);
            f(sig);
        }
    }
    true
}

/// Signal-time: the checkpoint signal only wakes the checkpoint thread (or is the program's,
/// see [`programs_own`]).
extern "C" fn ckpt_handler(sig: i32, info: *mut libc::siginfo_t, uc: *mut libc::c_void) {
    // The call this signal interrupted (the kernel picks any thread that does not block it) is
    // issued again by its wrapper (`restart`).
    crate::restart::mark_interrupted();
    // A forked child inherits the handler but not the checkpoint thread: ignore it there.
    if sys::getpid() != config::ACTIVE_PID.load(Relaxed) {
        return;
    }
    // The tree's root asks this process to take part in its checkpoint: a queued signal whose
    // value carries pmig's mark and the nonce of the root's socket.
    if !info.is_null() {
        // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler; for SI_QUEUE the
        // value is at offset 24 on x86_64.
        let (code, value) = unsafe { ((*info).si_code, core::ptr::read_unaligned((info as *const u8).add(24) as *const u64)) };
        if code == libc::SI_QUEUE && value >> 32 == config::TREE_MAGIC {
            // pmig's own: the root asking (with its nonce), or a member passing a request on.
            if value as u32 != 0 {
                config::TREE_NONCE.store(value as u32, Release);
            }
        } else if programs_own(sig, info, uc, code) {
            return;
        }
    }
    config::CKPT_REQUEST.fetch_add(1, AcqRel);
    let _ = sys::futex_wake(&config::CKPT_REQUEST);
}

/// `SA_RESTORER` (x86_64): `restorer` is the `rt_sigreturn` trampoline.
const SA_RESTORER: u64 = 0x0400_0000;

fn install(sig: i32, handler: u64) -> Result<(), i32> {
    let act = KSigAction {
        handler,
        flags: (libc::SA_SIGINFO | libc::SA_RESTART) as u64 | SA_RESTORER,
        restorer: pmig_abi::arch::sigreturn_trampoline(),
        mask: !0u64,
    };
    sys::rt_sigaction(sig, Some(&act), None).map(|_| ())
}

/// Installs the checkpoint and suspend handlers.
pub fn install_handlers(ckpt_sig: i32, suspend_sig: i32) -> Result<(), i32> {
    install(ckpt_sig, ckpt_handler as *const () as u64)?;
    install(suspend_sig, crate::thread::suspend_handler as *const () as u64)
}

/// Bit of `sig` in a kernel signal mask.
pub fn bit(sig: i32) -> u64 {
    1u64 << (sig - 1)
}

/// glibc's own signals: `SIGCANCEL` (32, thread cancellation) and `SIGSETXID` (33: `setuid`,
/// `setgid`, `setgroups`, … run the call in every thread glibc knows, by sending it this
/// signal and waiting for each). pmig's threads are glibc threads (`std::thread`), so they
/// must take them: a thread that blocks `SIGSETXID` makes every set*id call of the program
/// hang, and would otherwise keep the old credentials.
pub const GLIBC_INTERNAL: u64 = (1 << (32 - 1)) | (1 << (33 - 1));

/// Blocks every signal in the calling thread but glibc's internal ones and, in the checkpoint
/// thread, the checkpoint signal: pmig's threads run no handler of the program's, and the
/// checkpoint signal is taken by the checkpoint thread only (the program's threads keep it
/// blocked, see `block_checkpoint_signal`).
pub fn block_all() {
    let open = GLIBC_INTERNAL | config::get().map_or(0, |c| bit(c.signal));
    let all = !open;
    let _ = sys::rt_sigprocmask(libc::SIG_SETMASK, Some(&all), None);
}

/// Blocks the checkpoint signal in the calling thread (the program's main thread, at start;
/// every thread it makes inherits that). A process-directed signal then reaches only the
/// checkpoint thread; a thread that execs passes it on blocked, so a request that arrives
/// before the new program's libpmig has installed its handler waits instead of killing it.
pub fn block_checkpoint_signal(sig: i32) {
    let b = bit(sig);
    let _ = sys::rt_sigprocmask(libc::SIG_BLOCK, Some(&b), None);
}

/// Every signal's disposition.
pub fn dump_actions() -> Vec<SigActionState> {
    let mut v = Vec::with_capacity(64);
    for sig in 1..=64 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        let mut old = KSigAction::default();
        if sys::rt_sigaction(sig, None, Some(&mut old)).is_ok() {
            v.push(SigActionState { sig, handler: old.handler, flags: old.flags, restorer: old.restorer, mask: old.mask });
        }
    }
    v
}

/// Puts every saved disposition back (pmig's own handlers are among them).
pub fn restore_actions(saved: &[SigActionState]) {
    for s in saved {
        let act = KSigAction { handler: s.handler, flags: s.flags, restorer: s.restorer, mask: s.mask };
        if let Err(e) = sys::rt_sigaction(s.sig, Some(&act), None) {
            log::say!("warning: cannot restore the handler of signal {}: {}", s.sig, Errno(e));
        }
    }
}

fn tv_us(tv: &libc::timeval) -> u64 {
    tv.tv_sec as u64 * 1_000_000 + tv.tv_usec as u64
}

fn us_tv(us: u64) -> libc::timeval {
    libc::timeval { tv_sec: (us / 1_000_000) as i64, tv_usec: (us % 1_000_000) as i64 }
}

/// The three interval timers.
pub fn dump_itimers() -> Vec<ItimerState> {
    (0..3)
        .filter_map(|which| {
            let mut v = libc::itimerval { it_interval: us_tv(0), it_value: us_tv(0) };
            sys::getitimer(which, &mut v).ok()?;
            Some(ItimerState { which, interval_us: tv_us(&v.it_interval), value_us: tv_us(&v.it_value) })
        })
        .collect()
}

/// Re-arms the interval timers. `ITIMER_REAL` counts wall time, which went on while the
/// process was an image: the time spent there (`gap_us`) is taken off what was left, and a
/// timer that would have expired meanwhile fires now (one signal, as for a stopped process)
/// and goes on from its interval. The CPU-time timers stopped with the process.
pub fn restore_itimers(saved: &[ItimerState], gap_us: u64) {
    for t in saved.iter().filter(|t| t.value_us != 0 || t.interval_us != 0) {
        let (mut value, interval) = (t.value_us, t.interval_us);
        if t.which == libc::ITIMER_REAL {
            if gap_us >= value {
                let _ = sys::kill(sys::getpid(), libc::SIGALRM);
                if interval == 0 {
                    continue;
                }
                value = interval - (gap_us - value) % interval;
            } else {
                value -= gap_us;
            }
        }
        // An armed timer with 0 left would disarm; fire it at once instead.
        let v = libc::itimerval { it_interval: us_tv(interval), it_value: us_tv(value.max(1)) };
        if let Err(e) = sys::setitimer(t.which, &v) {
            log::say!("warning: cannot re-arm interval timer {}: {}", t.which, Errno(e));
        }
    }
}

/// Signals waiting in a queue: dequeues every one of `set` (with its full siginfo, so real-time
/// values survive) and queues them again at once, so the continuing process keeps them.
/// `tid` 0: the process's shared queue (the caller blocks every signal); else the calling
/// thread's own queue. Returns the siginfos in order.
pub fn take_pending(set: u64, tid: i32, out: &mut impl Extend<sys::SigInfo>) -> usize {
    let mut got: [sys::SigInfo; 32] = [[0; 128]; 32];
    let mut n = 0;
    while n < got.len() {
        match sys::sigtimedwait_now(set, &mut got[n]) {
            Ok(_) => n += 1,
            Err(_) => break,
        }
    }
    for info in &got[..n] {
        let sig = i32::from_ne_bytes([info[0], info[1], info[2], info[3]]);
        let _ = sys::sigqueueinfo(tid, sig, info);
    }
    out.extend(got[..n].iter().copied());
    n
}

/// Queues saved signals again (after a restore), with their siginfo; `tid` as for
/// [`take_pending`].
pub fn requeue(saved: &[sys::SigInfo], tid: i32) {
    for info in saved {
        let sig = i32::from_ne_bytes([info[0], info[1], info[2], info[3]]);
        let _ = sys::sigqueueinfo(tid, sig, info);
    }
}
