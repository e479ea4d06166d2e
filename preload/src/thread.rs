//! Threads: stopping them for a checkpoint, and bringing them back after a restore.
//!
//! **Signal-time code.** `suspend_handler` and `park` run in the program's threads inside a
//! signal handler, and the restore half runs before any thread may take a lock. Rules here:
//! raw system calls only, no allocation, no locks, no `std::io`, no panics; state lives in
//! atomics and in slots that only their own thread writes while it is being stopped.
//!
//! Each thread, on the suspend signal, saves its thread pointer and robust list and then a
//! callee-saved context with `save_and_call(park)`: it counts itself parked and waits on a
//! futex for the release generation to change. Its interrupted state is in the kernel's signal
//! frame on its own stack, which the image holds. After a restore the checkpoint thread clones
//! one thread per slot straight into that context: `save_and_call` returns
//! [`RESTORED_THREAD`], the thread redoes its per-thread kernel state and waits for release,
//! then returns from the handler, and `rt_sigreturn` puts back every register, the FPU state,
//! the signal mask and the alternate signal stack.

use crate::sys;
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering::*};
use pmig_abi::{arch, Ctx, RESTORED_THREAD};

/// The most threads a checkpoint handles.
pub const MAX_THREADS: usize = 1024;

const FREE: u32 = 0;
const ASKED: u32 = 1;
const PARKED: u32 = 2;

/// One program thread's saved state.
pub struct Slot {
    pub tid: AtomicI32,
    state: AtomicU32,
    /// The release generation the thread waits to see change.
    gen: AtomicU32,
    ctx: UnsafeCell<Ctx>,
    pub fs_base: AtomicU64,
    robust_head: AtomicU64,
    robust_len: AtomicU64,
    /// `comm`, NUL padded (filled by the checkpoint thread while the thread is parked).
    pub name: UnsafeCell<[u8; 16]>,
    /// Signals pending for this thread alone, with their siginfo (the thread takes them).
    pending: UnsafeCell<[sys::SigInfo; PENDING_MAX]>,
    n_pending: AtomicU32,
    /// The thread's own attributes (scheduling, prctl), saved by itself as it parks.
    attrs: UnsafeCell<ThreadAttrs>,
}

/// What each thread sets for itself: nice value, scheduling policy and priority, CPU
/// affinity, I/O priority, timer slack, parent-death signal, personality, no_new_privs.
#[derive(Clone, Copy)]
struct ThreadAttrs {
    nice: i32,
    policy: i32,
    priority: i32,
    ioprio: i32,
    timerslack: u64,
    pdeathsig: i32,
    personality: i32,
    no_new_privs: bool,
    /// `sched_getaffinity`'s mask and its length in bytes (0: unknown).
    affinity: [u64; 16],
    affinity_len: usize,
    /// The program's own rseq registration (area, length, signature; length 0: none).
    rseq: (u64, u32, u32),
}

const NO_ATTRS: ThreadAttrs = ThreadAttrs {
    nice: 0,
    policy: 0,
    priority: 0,
    ioprio: 0,
    timerslack: 0,
    pdeathsig: 0,
    personality: 0,
    no_new_privs: false,
    affinity: [0; 16],
    affinity_len: 0,
    rseq: (0, 0, 0),
};

const IOPRIO_WHO_PROCESS: u64 = 1;
const PR_GET_TIMERSLACK: i32 = 30;
const PR_SET_TIMERSLACK: i32 = 29;

/// Signal-time: the calling thread's attributes (raw system calls, on itself).
fn save_attrs(slot: &Slot) {
    let mut a = NO_ATTRS;
    // getpriority(2)'s raw call answers 20 - nice.
    a.nice = 20 - sys::raw(libc::SYS_getpriority, &[libc::PRIO_PROCESS as u64, 0]).unwrap_or(20) as i32;
    a.policy = sys::raw(libc::SYS_sched_getscheduler, &[0]).unwrap_or(0) as i32;
    let mut param = 0i32;
    let _ = sys::raw(libc::SYS_sched_getparam, &[0, &mut param as *mut i32 as u64]);
    a.priority = param;
    a.ioprio = sys::raw(libc::SYS_ioprio_get, &[IOPRIO_WHO_PROCESS, 0]).unwrap_or(0) as i32;
    a.timerslack = sys::prctl(PR_GET_TIMERSLACK, 0, 0, 0, 0).unwrap_or(0);
    let mut sig = 0i32;
    let _ = sys::prctl(libc::PR_GET_PDEATHSIG, &mut sig as *mut i32 as u64, 0, 0, 0);
    a.pdeathsig = sig;
    a.personality = sys::raw(libc::SYS_personality, &[0xffff_ffff]).unwrap_or(0) as i32;
    a.no_new_privs = sys::prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0).unwrap_or(0) == 1;
    a.affinity_len = sys::raw(libc::SYS_sched_getaffinity, &[0, 128, a.affinity.as_mut_ptr() as u64]).unwrap_or(0) as usize;
    a.rseq = OWN_RSEQ.with(|r| r.get());
    // SAFETY: only this thread writes its slot's attributes, now, before it publishes PARKED.
    unsafe { *slot.attrs.get() = a };
}

/// In a restored thread, before it takes the saved credentials (raising a priority may need
/// the privileges the restore has): its attributes back. What cannot be set (a CPU this host
/// lacks, a real-time policy without privileges) is said in debug and left.
fn restore_attrs(slot: &Slot) {
    // SAFETY: written by this thread before it parked; nobody writes it now.
    let a = unsafe { *slot.attrs.get() };
    let failed = |what: &str, r: Result<u64, i32>| {
        if let Err(e) = r {
            crate::log::debug!("thread {}: its {what} cannot be put back: {}", sys::gettid(), crate::errno::Errno(e));
        }
    };
    let param = a.priority;
    failed("scheduling policy", sys::raw(libc::SYS_sched_setscheduler, &[0, a.policy as u64, &param as *const i32 as u64]));
    failed("nice value", sys::raw(libc::SYS_setpriority, &[libc::PRIO_PROCESS as u64, 0, a.nice as u64]));
    if a.ioprio != 0 {
        failed("I/O priority", sys::raw(libc::SYS_ioprio_set, &[IOPRIO_WHO_PROCESS, 0, a.ioprio as u64]));
    }
    if a.timerslack != 0 {
        failed("timer slack", sys::prctl(PR_SET_TIMERSLACK, a.timerslack, 0, 0, 0));
    }
    failed("parent-death signal", sys::prctl(libc::PR_SET_PDEATHSIG, a.pdeathsig as u64, 0, 0, 0));
    failed("personality", sys::raw(libc::SYS_personality, &[a.personality as u32 as u64]));
    if a.no_new_privs {
        failed("no_new_privs", sys::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0));
    }
    if a.affinity_len > 0 {
        failed("CPU affinity", sys::raw(libc::SYS_sched_setaffinity, &[0, a.affinity_len as u64, a.affinity.as_ptr() as u64]));
    }
    let (area, len, sig) = a.rseq;
    if len != 0 && RSEQ_SIZE.load(Relaxed) == 0 {
        if let Err(e) = sys::rseq(area, len, 0, sig) {
            crate::log::say!("warning: thread {}: the program's rseq area cannot be registered again: {}", sys::gettid(), crate::errno::Errno(e));
        }
    }
}

thread_local! {
    /// The calling thread's own rseq registration, made by the program through `syscall()`.
    static OWN_RSEQ: core::cell::Cell<(u64, u32, u32)> = const { core::cell::Cell::new((0, 0, 0)) };
}

/// After a successful `rseq(area, len, flags, sig)` through libc's `syscall()`.
pub fn rseq_called(area: u64, len: u32, flags: i32, sig: u32) {
    const RSEQ_FLAG_UNREGISTER: i32 = 1;
    let now = if flags & RSEQ_FLAG_UNREGISTER != 0 { (0, 0, 0) } else { (area, len, sig) };
    OWN_RSEQ.with(|r| r.set(now));
}

/// The most signals kept per thread queue.
const PENDING_MAX: usize = 8;

/// All slots.
pub struct Slots(pub [Slot; MAX_THREADS]);

// SAFETY: the UnsafeCell fields are written by exactly one party at a time, ordered by the
// `state` atomic: the owning thread writes `ctx` before it publishes PARKED; the checkpoint
// thread reads it (and writes `name`) only while the thread is parked or not yet recreated.
unsafe impl Sync for Slots {}

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY: Slot = Slot {
    tid: AtomicI32::new(0),
    state: AtomicU32::new(FREE),
    gen: AtomicU32::new(0),
    ctx: UnsafeCell::new(Ctx { rbx: 0, rbp: 0, r12: 0, r13: 0, r14: 0, r15: 0, rsp: 0, rip: 0, mxcsr: 0, fpucw: 0 }),
    fs_base: AtomicU64::new(0),
    robust_head: AtomicU64::new(0),
    robust_len: AtomicU64::new(0),
    name: UnsafeCell::new([0; 16]),
    pending: UnsafeCell::new([[0; 128]; PENDING_MAX]),
    n_pending: AtomicU32::new(0),
    attrs: UnsafeCell::new(NO_ATTRS),
};

pub static SLOTS: Slots = Slots([EMPTY; MAX_THREADS]);
/// Number of slots in use for the current checkpoint.
pub static USED: AtomicU32 = AtomicU32::new(0);
static PARKED_COUNT: AtomicU32 = AtomicU32::new(0);
static READY_COUNT: AtomicU32 = AtomicU32::new(0);
static RELEASE: AtomicU32 = AtomicU32::new(0);

/// Offset of the cached tid in glibc's `struct pthread` (from the thread pointer); -1: unknown.
pub static TID_OFFSET: AtomicI32 = AtomicI32::new(-1);
/// `__rseq_offset` and `__rseq_size` of glibc, when it registers rseq (size 0: it does not).
pub static RSEQ_OFFSET: AtomicU64 = AtomicU64::new(0);
pub static RSEQ_SIZE: AtomicU32 = AtomicU32::new(0);
const RSEQ_SIG: u32 = 0x5305_3053;

impl Slot {
    /// The saved context.
    pub fn ctx(&self) -> Ctx {
        // SAFETY: only read while the thread is parked (see `Slots`).
        unsafe { *self.ctx.get() }
    }
}

/// Finds the tid cached in glibc's `struct pthread` of the calling thread: the offset from the
/// thread pointer of the 32-bit word that holds `gettid()`. Called in two threads to be sure.
pub fn find_tid_offset() -> i32 {
    let tp = arch::fs_base();
    let tid = sys::gettid();
    if tp == 0 {
        return -1;
    }
    for off in (0..2048).step_by(4) {
        // SAFETY: glibc's struct pthread (at the thread pointer) is larger than 2 KiB on
        // x86_64 and mapped read/write for the life of the thread.
        let v = unsafe { core::ptr::read_volatile((tp + off as u64) as *const i32) };
        if v == tid {
            return off;
        }
    }
    -1
}

/// Checks that the cached tid sits at `TID_OFFSET` in the calling thread too.
pub fn confirm_tid_offset() {
    let off = TID_OFFSET.load(Relaxed);
    if off >= 0 && find_tid_offset() != off {
        crate::log::say!("warning: cannot locate glibc's cached thread id; pthread_kill may fail after restore");
        TID_OFFSET.store(-1, Relaxed);
    }
}

/// Registers the calling thread's rseq area again (a new thread starts without one).
fn reregister_rseq() {
    let size = RSEQ_SIZE.load(Relaxed);
    if size == 0 {
        return;
    }
    let area = arch::fs_base().wrapping_add(RSEQ_OFFSET.load(Relaxed));
    // The kernel wants at least the original 32-byte layout.
    let _ = sys::rseq(area, size.max(32), 0, RSEQ_SIG);
}

/// Puts back the per-thread kernel state a cloned thread lacks: the tid glibc caches (and the
/// kernel clears on exit), the robust futex list, rseq. Used by every restored thread.
pub fn fix_own_thread_state(robust_head: u64, robust_len: u64) {
    let off = TID_OFFSET.load(Relaxed);
    if off >= 0 {
        let addr = arch::fs_base() + off as u64;
        if let Ok(tid) = sys::set_tid_address(addr) {
            // SAFETY: `addr` is the tid field of this thread's own struct pthread.
            unsafe { core::ptr::write_volatile(addr as *mut i32, tid as i32) };
        }
    }
    if robust_head != 0 {
        let _ = sys::set_robust_list(robust_head, robust_len);
    }
    reregister_rseq();
}

fn slot_of(tid: i32) -> Option<&'static Slot> {
    let n = USED.load(Acquire) as usize;
    SLOTS.0[..n].iter().find(|s| s.tid.load(Acquire) == tid)
}

/// Handler of the suspend signal (installed `SA_SIGINFO | SA_RESTART`, all signals masked).
pub extern "C" fn suspend_handler(_sig: i32, _info: *mut libc::siginfo_t, _uc: *mut libc::c_void) {
    // Whatever call this interrupted with EINTR, its wrapper issues it again (`restart`).
    crate::restart::mark_interrupted();
    let Some(slot) = slot_of(sys::gettid()) else { return };
    if slot.state.load(Acquire) != ASKED {
        return;
    }
    slot.fs_base.store(arch::fs_base(), Relaxed);
    let (head, len) = sys::get_robust_list();
    slot.robust_head.store(head, Relaxed);
    slot.robust_len.store(len, Relaxed);
    slot.gen.store(RELEASE.load(Acquire), Relaxed);
    save_own_pending(slot);
    save_attrs(slot);
    // SAFETY: the slot's context is written only by this thread, now, before it publishes
    // PARKED; the slot lives in a static.
    let r = unsafe { arch::save_and_call(slot.ctx.get(), park, slot as *const Slot as u64) };
    if r == RESTORED_THREAD {
        fix_own_thread_state(slot.robust_head.load(Relaxed), slot.robust_len.load(Relaxed));
        restore_attrs(slot);
        crate::creds::apply();
        // SAFETY: `name` was filled before the image was written and nobody writes it now.
        let name = unsafe { *slot.name.get() };
        let _ = sys::prctl(libc::PR_SET_NAME, name.as_ptr() as u64, 0, 0, 0);
        // Signals queued for this thread but not yet delivered: queue them again, with their
        // siginfo; they stay pending until rt_sigreturn puts back the thread's own mask.
        let n = (slot.n_pending.load(Relaxed) as usize).min(PENDING_MAX);
        // SAFETY: written by this thread before it parked; nobody writes it now.
        let pending = unsafe { &*slot.pending.get() };
        crate::signal::requeue(&pending[..n], sys::gettid());
        READY_COUNT.fetch_add(1, AcqRel);
        let _ = sys::futex_wake(&READY_COUNT);
        wait_release(slot.gen.load(Relaxed));
    }
}

/// Signal-time: the signals queued for the calling thread alone (its `SigPnd` less the
/// process's `ShdPnd`, without pmig's suspend signal), taken with their siginfo into the slot
/// and queued again at once.
fn save_own_pending(slot: &Slot) {
    let mut buf = [0u8; 4096];
    let n = sys::read_file(b"/proc/thread-self/status\0", &mut buf).unwrap_or(0);
    let field = |key: &[u8]| -> u64 {
        buf[..n]
            .split(|&c| c == b'\n')
            .find_map(|l| l.strip_prefix(key))
            .map(|v| v.iter().filter(|c| c.is_ascii_hexdigit()).fold(0u64, |a, &c| a * 16 + (c as char).to_digit(16).unwrap_or(0) as u64))
            .unwrap_or(0)
    };
    let own = field(b"SigPnd:") & !field(b"ShdPnd:") & !(1u64 << (crate::config::SUSPEND_SIGNAL - 1));
    let mut taken = Taken { slot, n: 0 };
    if own != 0 {
        crate::signal::take_pending(own, sys::gettid(), &mut taken);
    }
    slot.n_pending.store(taken.n as u32, Relaxed);
}

/// Collects siginfos into a slot (no allocation).
struct Taken<'a> {
    slot: &'a Slot,
    n: usize,
}

impl Extend<sys::SigInfo> for Taken<'_> {
    fn extend<I: IntoIterator<Item = sys::SigInfo>>(&mut self, it: I) {
        for info in it {
            if self.n < PENDING_MAX {
                // SAFETY: only the slot's own thread writes its pending array, now.
                unsafe { (*self.slot.pending.get())[self.n] = info };
                self.n += 1;
            }
        }
    }
}

extern "C" fn park(slot: u64) -> u64 {
    // SAFETY: `slot` is the address of a static Slot passed by `suspend_handler`.
    let slot = unsafe { &*(slot as *const Slot) };
    slot.state.store(PARKED, Release);
    PARKED_COUNT.fetch_add(1, AcqRel);
    let _ = sys::futex_wake(&PARKED_COUNT);
    wait_release(slot.gen.load(Relaxed));
    0
}

fn wait_release(gen: u32) {
    while RELEASE.load(Acquire) == gen {
        let _ = sys::futex_wait(&RELEASE, gen, 0);
    }
}

/// Why `suspend_all` gave up when a thread was replacing the program (`execve`).
pub const EXEC_IN_PROGRESS: &str = "a thread is replacing the program (execve); try again";

/// Whether thread `tid` of this process is asleep inside `execve`/`execveat` (a call that
/// did not go through pmig's wrappers; the kernel says "running" while it loads the program).
fn in_exec(tid: i32) -> bool {
    let mut buf = [0u8; 32];
    let mut path = [0u8; 48];
    let mut w = crate::log::StackBuf::new();
    let _ = core::fmt::Write::write_fmt(&mut w, format_args!("/proc/self/task/{tid}/syscall"));
    let p = w.as_bytes();
    if p.len() >= path.len() {
        return false;
    }
    path[..p.len()].copy_from_slice(p);
    let n = sys::read_file(&path[..p.len() + 1], &mut buf).unwrap_or(0);
    let first = buf[..n].split(|&c| c == b' ' || c == b'\n').next().unwrap_or(b"");
    first == b"59" || first == b"322"
}

/// Lists the thread ids of this process into `out`; returns how many.
fn list_tasks(out: &mut [i32; MAX_THREADS + 1]) -> Result<usize, i32> {
    let mut n = 0;
    sys::for_each_numbered_entry(b"/proc/self/task\0", |tid, _| {
        if n < out.len() {
            out[n] = tid;
            n += 1;
        }
    })?;
    Ok(n)
}

/// Stops every thread but the caller. On error, the threads already stopped are released.
pub fn suspend_all(suspend_sig: i32) -> Result<usize, &'static str> {
    let me = sys::gettid();
    let pid = sys::getpid();
    for s in SLOTS.0.iter() {
        s.tid.store(0, Relaxed);
        s.state.store(FREE, Relaxed);
    }
    USED.store(0, Release);
    PARKED_COUNT.store(0, Release);
    // Said before any thread is looked at (see `exec`): a thread on its way into execve is
    // either seen marked below or waits for `release_all` before it goes in.
    crate::exec::SUSPENDING.store(true, SeqCst);
    let mut tasks = [0i32; MAX_THREADS + 1];
    let started = sys::monotonic_ms();
    loop {
        let n = list_tasks(&mut tasks).map_err(|_| "cannot list /proc/self/task")?;
        let mut asked_new = false;
        for &tid in &tasks[..n] {
            if tid == me || slot_of(tid).is_some() {
                continue;
            }
            // A thread inside execve would carry the suspend signal into the new program,
            // which has no handler for it yet and would die of it: give up, and let the
            // caller try again once the program has been replaced.
            if crate::exec::marked(tid) || in_exec(tid) {
                release_all();
                return Err(EXEC_IN_PROGRESS);
            }
            let used = USED.load(Acquire) as usize;
            if used == MAX_THREADS {
                release_all();
                return Err("the program has more threads than pmig supports (1024)");
            }
            let s = &SLOTS.0[used];
            s.tid.store(tid, Relaxed);
            s.state.store(ASKED, Release);
            USED.store(used as u32 + 1, Release);
            if sys::tgkill(pid, tid, suspend_sig).is_err() {
                // The thread exited between the listing and now: forget it.
                s.tid.store(-1, Release);
                s.state.store(PARKED, Release);
                PARKED_COUNT.fetch_add(1, AcqRel);
            }
            asked_new = true;
        }
        let want = USED.load(Acquire);
        loop {
            let got = PARKED_COUNT.load(Acquire);
            if got >= want {
                break;
            }
            if sys::monotonic_ms() - started >= 10_000 {
                release_all();
                return Err("a thread did not stop within 10 s (does it block pmig's suspend signal, or is it stopped?)");
            }
            // A live move's tracker reports munmap & co., and the thread that made one
            // cannot stop before the report is read.
            let tracking = crate::precopy::drain_while_stopping();
            let _ = sys::futex_wait(&PARKED_COUNT, got, if tracking { 1 } else { 50 });
        }
        if !asked_new {
            return Ok(USED.load(Acquire) as usize);
        }
    }
}

/// Lets every parked (or restored) thread go on.
pub fn release_all() {
    // Threads still only ASKED (never arrived) will find no matching state and return at once.
    for s in SLOTS.0[..USED.load(Acquire) as usize].iter() {
        if s.state.load(Acquire) == ASKED {
            s.state.store(FREE, Release);
        }
    }
    RELEASE.fetch_add(1, AcqRel);
    let _ = sys::futex_wake(&RELEASE);
    crate::exec::SUSPENDING.store(false, SeqCst);
}

/// The live slots of the current checkpoint (threads that exited while being stopped left out).
pub fn live_slots() -> impl Iterator<Item = &'static Slot> {
    SLOTS.0[..USED.load(Acquire) as usize].iter().filter(|s| s.tid.load(Relaxed) > 0)
}

/// Recreates every saved thread (the caller is the restored checkpoint thread, all signals
/// blocked). Each new thread resumes its context and reports ready. The main thread (the slot
/// whose tid the program saw as `main_tid`, the pid) is not cloned: the engine's leader thread,
/// whose tid is the pid, waits in the mailbox and becomes it. With `exact`, each clone asks
/// for the tid the program saw (`clone3(set_tid)`). Returns how many threads are ready.
///
/// # Safety
/// `mb` must be the engine's mailbox, still mapped, with its leader waiting on `leader_go`.
pub unsafe fn recreate_all(mb: *mut pmig_abi::Mailbox, main_tid: i32, exact: bool) -> Result<u32, i32> {
    READY_COUNT.store(0, Release);
    let off = TID_OFFSET.load(Relaxed);
    let mut n = 0u32;
    let mut leader = false;
    for s in live_slots() {
        let ctx = s.ctx.get() as *const Ctx;
        let fs = s.fs_base.load(Relaxed);
        let want = crate::pid::virt_tid(s.tid.load(Relaxed));
        if want == main_tid && !leader {
            leader = true;
            // SAFETY: the caller guarantees the mailbox; the leader reads these fields only
            // after it sees `leader_go` change (release/acquire through the atomic below).
            unsafe {
                (*mb).leader_ctx = ctx as u64;
                (*mb).leader_fs = fs;
            }
            // SAFETY: `leader_go` is a u32 in the mailbox, aligned, used only atomically now.
            let go = unsafe { AtomicU32::from_ptr(core::ptr::addr_of_mut!((*mb).leader_go)) };
            go.store(pmig_abi::LEADER_RESUME, Release);
            let _ = sys::futex_wake(go);
            s.tid.store(sys::getpid(), Release);
            n += 1;
            continue;
        }
        // SAFETY: the slot's context was saved by its thread, whose stack is restored; nobody
        // writes the slot now.
        let rsp = unsafe { (*ctx).rsp };
        let mut flags = pmig_abi::THREAD_FLAGS;
        let tidp = if off >= 0 {
            flags |= (libc::CLONE_PARENT_SETTID | libc::CLONE_CHILD_CLEARTID) as u64;
            fs + off as u64
        } else {
            0
        };
        // The clone starts below the saved stack pointer (below the red zone) and switches to
        // the saved one at once.
        let top = (rsp - 4096) & !15;
        let mut args = pmig_abi::CloneArgs {
            flags,
            child_tid: tidp,
            parent_tid: tidp,
            stack: top - 1024,
            stack_size: 1024,
            tls: fs,
            ..Default::default()
        };
        if exact {
            args.set_tid = &want as *const i32 as u64;
            args.set_tid_size = 1;
        }
        // SAFETY: the child only jumps to the saved context; the context and the memory it
        // refers to were restored; `tidp` is the tid field of the thread's struct pthread.
        let tid = unsafe { arch::clone3_resume(&args, ctx, RESTORED_THREAD) };
        if tid < 0 {
            return Err((-tid) as i32);
        }
        s.tid.store(tid as i32, Release);
        n += 1;
    }
    if !leader {
        // SAFETY: as above.
        let go = unsafe { AtomicU32::from_ptr(core::ptr::addr_of_mut!((*mb).leader_go)) };
        go.store(pmig_abi::LEADER_EXIT, Release);
        let _ = sys::futex_wake(go);
    }
    let started = sys::monotonic_ms();
    loop {
        let got = READY_COUNT.load(Acquire);
        if got >= n {
            return Ok(n);
        }
        if sys::monotonic_ms() - started > 10_000 {
            return Err(libc::ETIMEDOUT);
        }
        let _ = sys::futex_wait(&READY_COUNT, got, 50);
    }
}
