//! The restore engine: a static, `no_std` program linked inside the range libpmig keeps free in
//! every process it runs in, so it can tear down its own address space around itself and build
//! the saved one.
//!
//! Algorithm:
//! 1. `_start` switches to a stack in the engine's own .bss and reads the plan fd from argv;
//! 2. map the plan (from its memfd) at `PLAN_ADDR` and check it; block every signal;
//! 3. move the kernel's `[vvar]`, `[vvar_vclock]`, `[vdso]` block to `VDSO_PARK`;
//! 4. unmap everything below and above the reserved range (the old stack included);
//! 5. map every saved region at its address (anonymous, file or shared), writable while filling;
//!    with a pager (a lazy restore), register the `REGION_LAZY` regions with a userfaultfd
//!    and send it to pmig-resume's pager (`hand_to_pager`), or tell it why not;
//! 6. read the saved page runs not left to the pager from the image straight into place, on
//!    every CPU the process may use (`fill_all`: helper threads with a share each);
//! 7. set each region's final protection;
//! 8. move the vdso block to where the saved process had it (same kernel, checked before) or,
//!    for another kernel's vdso, to a free place, with the saved vdso made a proxy of it;
//! 9. `PR_SET_MM_MAP`: brk, stack, arg/env and auxv of the saved process;
//! 10. close the mapped files' fds, fill the mailbox, and `clone3` the checkpoint thread
//!     (with its saved tid when ids are exact) straight into its saved context, handing it
//!     the mailbox; libpmig does the rest;
//! 11. this thread — the leader, whose tid is the pid — waits on the mailbox until the
//!     checkpoint thread hands it the main thread's context, sets that thread pointer and
//!     resumes it: the program's main thread is its thread group's leader again.
//!
//! Once step 4 has run there is nothing to return to: a failure writes the phase and errno to
//! stderr and exits with the phase's code (`pmig_abi::exit_code`).
#![no_std]
#![no_main]

use core::cell::UnsafeCell;
use pmig_abi::arch::syscall6;
use pmig_abi::{exit_code as ec, Mailbox, PlanHeader, PlanRegion, PlanRun, MAILBOX_MAGIC, PLAN_ADDR, PLAN_MAGIC, PLAN_MAX, PLAN_VERSION, VDSO_PARK};
use pmig_abi::{region_kind as rk, ENGINE_BASE, REGION_FILL, REGION_SYSV_RMID, RESERVE_LEN};

const STACK_SIZE: usize = 256 * 1024;
const TASK_SIZE: u64 = 0x7fff_ffff_f000;

#[repr(C, align(16))]
struct Bss<T>(UnsafeCell<T>);
// SAFETY: the engine is single-threaded.
unsafe impl<T> Sync for Bss<T> {}

static STACK: Bss<[u8; STACK_SIZE]> = Bss(UnsafeCell::new([0; STACK_SIZE]));
static MAILBOX: Bss<Mailbox> = Bss(UnsafeCell::new(Mailbox {
    magic: 0,
    plan_fd: -1,
    image_fd: -1,
    manifest_off: 0,
    manifest_len: 0,
    debug: 0,
    _pad: 0,
    objects_off: 0,
    n_objects: 0,
    leader_go: 0,
    ids: 0,
    leader_ctx: 0,
    leader_fs: 0,
    exe_fd: -1,
    lazy: 0,
}));
static DEBUG: Bss<bool> = Bss(UnsafeCell::new(false));
/// The checkpoint thread's first stack, used only until it switches to its saved one.
const CLONE_STACK_SIZE: usize = 16 * 1024;
static CLONE_STACK: Bss<[u8; CLONE_STACK_SIZE]> = Bss(UnsafeCell::new([0; CLONE_STACK_SIZE]));
const FUTEX_WAIT_PRIVATE: u64 = 128;

core::arch::global_asm!(
    ".globl _start",
    "_start:",
    "mov rdi, rsp",
    "lea rsp, [rip + {stack}]",
    "add rsp, {size}",
    "and rsp, -16",
    "call {main}",
    "ud2",
    stack = sym STACK,
    size = const STACK_SIZE,
    main = sym engine_main,
);

mod nr {
    pub const READ: u64 = 0;
    pub const WRITE: u64 = 1;
    pub const OPEN: u64 = 2;
    pub const CLOSE: u64 = 3;
    pub const FSTAT: u64 = 5;
    pub const MMAP: u64 = 9;
    pub const MPROTECT: u64 = 10;
    pub const MUNMAP: u64 = 11;
    pub const RT_SIGPROCMASK: u64 = 14;
    pub const PREAD64: u64 = 17;
    pub const MREMAP: u64 = 25;
    pub const MADVISE: u64 = 28;
    pub const SHMAT: u64 = 30;
    pub const SHMCTL: u64 = 31;
    pub const GETPID: u64 = 39;
    pub const SENDMSG: u64 = 46;
    pub const IOCTL: u64 = 16;
    pub const PIDFD_OPEN: u64 = 434;
    pub const PRCTL: u64 = 157;
    pub const ARCH_PRCTL: u64 = 158;
    pub const EXIT: u64 = 60;
    pub const FUTEX: u64 = 202;
    pub const SCHED_GETAFFINITY: u64 = 204;
    pub const EXIT_GROUP: u64 = 231;
}

fn sys(n: u64, a: u64, b: u64, c: u64, d: u64, e: u64, f: u64) -> i64 {
    // SAFETY: every call site passes arguments that are valid for its system call; the engine
    // owns the whole address space, so no Rust object is invalidated behind the compiler's back
    // except by the documented unmapping steps, after which only .bss and the plan are used.
    unsafe { syscall6(n, a, b, c, d, e, f) }
}

fn write_err(s: &[u8]) {
    sys(nr::WRITE, 2, s.as_ptr() as u64, s.len() as u64, 0, 0, 0);
}

fn fmt_u64(mut v: u64, hex: bool, buf: &mut [u8; 24]) -> &[u8] {
    let base = if hex { 16 } else { 10 };
    let mut i = buf.len();
    loop {
        i -= 1;
        let d = (v % base) as u8;
        buf[i] = if d < 10 { b'0' + d } else { b'a' + d - 10 };
        v /= base;
        if v == 0 {
            break;
        }
    }
    &buf[i..]
}

fn debug_on() -> bool {
    // SAFETY: single-threaded; written once in phase 2.
    unsafe { *DEBUG.0.get() }
}

/// One line of output, written with one `write` (pmig-resume's pager writes to the same
/// stderr: a line made of several writes could be cut by one of its lines).
struct Line {
    buf: [u8; 320],
    len: usize,
}

impl Line {
    fn new() -> Line {
        Line { buf: [0; 320], len: 0 }
    }

    fn push(&mut self, s: &[u8]) -> &mut Line {
        let n = s.len().min(self.buf.len() - 1 - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s[..n]);
        self.len += n;
        self
    }

    fn num(&mut self, v: u64, hex: bool) -> &mut Line {
        let mut b = [0u8; 24];
        let text = fmt_u64(v, hex, &mut b);
        let mut copy = [0u8; 24];
        copy[..text.len()].copy_from_slice(text);
        self.push(&copy[..text.len()])
    }

    fn end(&mut self) {
        self.buf[self.len] = b'\n';
        write_err(&self.buf[..self.len + 1]);
    }
}

fn log(msg: &[u8], val: Option<u64>) {
    if !debug_on() {
        return;
    }
    let mut l = Line::new();
    l.push(b"pmig-restore-engine: ").push(msg);
    if let Some(v) = val {
        l.push(b" 0x").num(v, true);
    }
    l.end();
}

fn fail(code: i32, errno: i64, at: u64) -> ! {
    let mut l = Line::new();
    l.push(b"pmig-restore-engine: restore failed while ").push(ec::name(code).unwrap_or("restoring").as_bytes()).push(b" (");
    match pmig_abi::errno::name(errno.unsigned_abs() as i32) {
        Some(n) => {
            l.push(n.as_bytes()).push(b": ").push(pmig_abi::errno::description(errno.unsigned_abs() as i32).unwrap_or("").as_bytes());
        }
        None => {
            l.push(b"errno ").num(errno.unsigned_abs(), false);
        }
    }
    l.push(b", at 0x").num(at, true).push(b"); exit code ").num(code as u64, false);
    l.end();
    sys(nr::EXIT_GROUP, code as u64, 0, 0, 0, 0, 0);
    loop {
        core::hint::spin_loop();
    }
}

fn check(code: i32, r: i64, at: u64) -> u64 {
    if r < 0 && r > -4096 {
        fail(code, r, at);
    }
    r as u64
}

/// Finds `[vvar]`, `[vvar_vclock]` and `[vdso]` in our own maps: `(kind, start, end)`.
fn own_vdso(out: &mut [(u32, u64, u64); 4]) -> usize {
    let buf = [0u8; 8192];
    let fd = sys(nr::OPEN, c"/proc/self/maps".as_ptr() as u64, 0, 0, 0, 0, 0);
    let fd = check(ec::VDSO_PARK, fd, 0);
    let mut len = 0usize;
    loop {
        let r = sys(nr::READ, fd, buf.as_ptr() as u64 + len as u64, (buf.len() - len) as u64, 0, 0, 0);
        if r <= 0 {
            break;
        }
        len += r as usize;
    }
    sys(nr::CLOSE, fd, 0, 0, 0, 0, 0);
    let mut n = 0;
    for line in buf[..len].split(|&c| c == b'\n') {
        let kind = if line.ends_with(b"[vvar]") {
            1
        } else if line.ends_with(b"[vvar_vclock]") {
            2
        } else if line.ends_with(b"[vdso]") {
            3
        } else {
            continue;
        };
        let mut vals = [0u64; 2];
        let mut which = 0;
        for &c in line {
            let d = match c {
                b'0'..=b'9' => c - b'0',
                b'a'..=b'f' => c - b'a' + 10,
                b'-' if which == 0 => {
                    which = 1;
                    continue;
                }
                _ => break,
            };
            vals[which] = vals[which] * 16 + d as u64;
        }
        if n < out.len() {
            out[n] = (kind, vals[0], vals[1]);
            n += 1;
        }
    }
    n
}

/// Makes a userfaultfd for this process, registers the lazy regions and sends it (with a
/// pidfd of this process) to the pager. `false` when any of it fails: the pager is told so
/// (it serves nothing for this process) and the caller reads every run in.
fn hand_to_pager(h: &PlanHeader, regions: &[PlanRegion]) -> bool {
    use pmig_abi::uffd;
    if !regions.iter().any(|r| r.flags & pmig_abi::REGION_LAZY != 0) {
        tell_pager(h, -1, -1, 0);
        return false;
    }
    let fd = sys(uffd::SYS_USERFAULTFD, (libc::O_CLOEXEC | libc::O_NONBLOCK) as u64, 0, 0, 0, 0, 0);
    if fd < 0 {
        log(b"no userfaultfd here (every page is read in now); errno", Some(fd.unsigned_abs()));
        tell_pager(h, -1, -1, fd.unsigned_abs() as i32);
        return false;
    }
    let fd = fd as u64;
    let give_up = |errno: i64| {
        log(b"userfaultfd refused (every page is read in now); errno", Some(errno.unsigned_abs()));
        // Closing it drops every registration.
        sys(nr::CLOSE, fd, 0, 0, 0, 0, 0);
        tell_pager(h, -1, -1, errno.unsigned_abs() as i32);
        false
    };
    let mut api = uffd::ApiArg { api: uffd::API, features: uffd::FEATURES, ioctls: 0 };
    let r = sys(nr::IOCTL, fd, uffd::IOC_API, &mut api as *mut uffd::ApiArg as u64, 0, 0, 0);
    if r < 0 {
        return give_up(r);
    }
    for reg in regions.iter().filter(|r| r.flags & pmig_abi::REGION_LAZY != 0) {
        let mut a = uffd::Register { range: uffd::Range { start: reg.start, len: reg.end - reg.start }, mode: uffd::MODE_MISSING, ioctls: 0 };
        let r = sys(nr::IOCTL, fd, uffd::IOC_REGISTER, &mut a as *mut uffd::Register as u64, 0, 0, 0);
        if r < 0 {
            return give_up(r);
        }
    }
    let pid = sys(nr::GETPID, 0, 0, 0, 0, 0, 0);
    let pidfd = sys(nr::PIDFD_OPEN, pid as u64, 0, 0, 0, 0, 0);
    if pidfd < 0 {
        return give_up(pidfd);
    }
    let sent = tell_pager(h, fd as i32, pidfd as i32, 0);
    sys(nr::CLOSE, pidfd as u64, 0, 0, 0, 0, 0);
    if !sent {
        return give_up(-(libc::EPIPE as i64));
    }
    // The pager holds it now; this copy would keep the registrations alive after the pager
    // is done.
    sys(nr::CLOSE, fd, 0, 0, 0, 0, 0);
    log(b"lazy regions handed to the pager; userfaultfd", Some(fd));
    true
}

/// Sends the pager this process's [`pmig_abi::PagerHello`], with the userfaultfd and pidfd
/// when `uffd >= 0`. Closes the pager socket either way (the engine has nothing more to say).
fn tell_pager(h: &PlanHeader, uffd: i32, pidfd: i32, errno: i32) -> bool {
    let hello = pmig_abi::PagerHello { magic: pmig_abi::PAGER_MAGIC, lazy: (uffd >= 0) as u32, saved_pid: h.saved_pid, errno };
    let mut iov = libc::iovec { iov_base: &hello as *const pmig_abi::PagerHello as *mut libc::c_void, iov_len: core::mem::size_of::<pmig_abi::PagerHello>() };
    // One SCM_RIGHTS message with two fds: cmsg_len (16 + 8), level and type, the fds.
    let control: [u64; 3] = [24, (libc::SOL_SOCKET as u64) | ((libc::SCM_RIGHTS as u64) << 32), (uffd as u32 as u64) | ((pidfd as u32 as u64) << 32)];
    // SAFETY: an all-zero msghdr is valid; the fields set below point at live locals.
    let mut msg: libc::msghdr = unsafe { core::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if uffd >= 0 {
        msg.msg_control = control.as_ptr() as *mut libc::c_void;
        msg.msg_controllen = 24;
    }
    let r = sys(nr::SENDMSG, h.pager_fd as u64, &msg as *const libc::msghdr as u64, libc::MSG_NOSIGNAL as u64, 0, 0, 0);
    sys(nr::CLOSE, h.pager_fd as u64, 0, 0, 0, 0, 0);
    r == core::mem::size_of::<pmig_abi::PagerHello>() as i64
}

/// `MADV_POPULATE_WRITE` (Linux 5.14; not in every libc crate).
const MADV_POPULATE_WRITE: u64 = 23;

/// Most filling threads the engine uses (itself included).
const MAX_FILLERS: usize = 8;
const FILLER_STACK: usize = 32 * 1024;
static FILLER_STACKS: Bss<[[u8; FILLER_STACK]; MAX_FILLERS - 1]> = Bss(UnsafeCell::new([[0; FILLER_STACK]; MAX_FILLERS - 1]));
/// Per helper: the context it starts in and its job.
static FILLER_CTX: Bss<[pmig_abi::Ctx; MAX_FILLERS - 1]> =
    Bss(UnsafeCell::new([pmig_abi::Ctx { rbx: 0, rbp: 0, r12: 0, r13: 0, r14: 0, r15: 0, rsp: 0, rip: 0, mxcsr: 0, fpucw: 0 }; MAX_FILLERS - 1]));
static FILLER_JOB: Bss<[FillJob; MAX_FILLERS - 1]> = Bss(UnsafeCell::new([FillJob { from: 0, to: 0, tid: 0, errno: 0, at: 0, lazy: false }; MAX_FILLERS - 1]));
/// The plan's header and runs, for the helpers (set before any starts).
static FILL_PLAN: Bss<(u64, u64)> = Bss(UnsafeCell::new((0, 0)));

/// A helper's share of the filling: bytes `[from, to)` of the page data to read, its tid
/// (cleared by the kernel when it exits), and the error it met (`errno` < 0, at `at`).
#[derive(Clone, Copy)]
struct FillJob {
    from: u64,
    to: u64,
    tid: i32,
    errno: i64,
    at: u64,
    lazy: bool,
}

/// Reads bytes `[from, to)` of the page data the runs to fill hold (counted across them in
/// order) into place. `Err((errno, address))` on failure.
fn fill_range(image_fd: u64, runs: &[PlanRun], lazy: bool, from: u64, to: u64) -> Result<(), (i64, u64)> {
    let mut pos = 0u64;
    for run in runs.iter().filter(|r| !(lazy && r.lazy != 0)) {
        let (start, end) = (pos, pos + run.len);
        pos = end;
        if end <= from || start >= to {
            continue;
        }
        let mut done = from.saturating_sub(start);
        let stop = run.len - end.saturating_sub(to);
        // The pages made in one go (MADV_POPULATE_WRITE) cost less than one fault each
        // during the copy (about 15% of an eager restore here); where it fails the copy
        // faults them in as before.
        sys(nr::MADVISE, run.addr + done, stop - done, MADV_POPULATE_WRITE, 0, 0, 0);
        while done < stop {
            let r = sys(nr::PREAD64, image_fd, run.addr + done, stop - done, run.file_off + done, 0, 0);
            if r == -4 {
                continue;
            }
            if r <= 0 {
                return Err((r, run.addr + done));
            }
            done += r as u64;
        }
    }
    Ok(())
}

/// Where a filling helper starts (`rdi` = its context, one of `FILLER_CTX`).
extern "C" fn filler_main(ctx: *const pmig_abi::Ctx) -> ! {
    // SAFETY: the parent set the plan pointers and this helper's job before cloning it, and
    // waits for it to exit before it reads the job back or unmaps anything.
    unsafe {
        let i = ctx.offset_from((*FILLER_CTX.0.get()).as_ptr()) as usize;
        let (hp, rp) = *FILL_PLAN.0.get();
        let h = &*(hp as *const PlanHeader);
        let runs = core::slice::from_raw_parts(rp as *const PlanRun, h.n_runs as usize);
        let job = &mut (*FILLER_JOB.0.get())[i];
        if let Err((e, at)) = fill_range(h.image_fd as u64, runs, job.lazy, job.from, job.to) {
            job.errno = e;
            job.at = at;
        }
    }
    sys(nr::EXIT, 0, 0, 0, 0, 0, 0);
    loop {
        core::hint::spin_loop();
    }
}

/// Phase 6: every run not left to the pager, read in by this thread and one helper thread
/// per other CPU it may run on (each a share of the bytes).
fn fill_all(h: &PlanHeader, runs: &[PlanRun], lazy: bool) {
    let total: u64 = runs.iter().filter(|r| !(lazy && r.lazy != 0)).map(|r| r.len).sum();
    let mut mask = [0u64; 16];
    let n = sys(nr::SCHED_GETAFFINITY, 0, core::mem::size_of_val(&mask) as u64, mask.as_mut_ptr() as u64, 0, 0, 0);
    let cpus = if n > 0 { mask.iter().map(|w| w.count_ones() as usize).sum::<usize>().max(1) } else { 1 };
    // Below a few MiB each, a thread costs more than it saves.
    let fillers = cpus.min(MAX_FILLERS).min((total >> 22) as usize).max(1);
    let share = (total / fillers as u64 + 4095) & !4095;
    // SAFETY: single-threaded until the clones below; the statics are the helpers' only.
    unsafe { *FILL_PLAN.0.get() = (h as *const PlanHeader as u64, runs.as_ptr() as u64) };
    // A thread of this process without a thread pointer of its own (the engine uses none),
    // whose tid word the kernel clears at its exit (CLONE_CHILD_CLEARTID).
    let flags = (pmig_abi::THREAD_FLAGS & !(libc::CLONE_SETTLS as u64)) | libc::CLONE_CHILD_CLEARTID as u64;
    let mut started = 0;
    for i in 0..fillers - 1 {
        let from = share * (i as u64 + 1);
        // SAFETY: helper i's statics, written before its clone and read by it only.
        unsafe {
            let job = &mut (*FILLER_JOB.0.get())[i];
            *job = FillJob { from, to: (from + share).min(total), tid: 1, errno: 0, at: 0, lazy };
            let top = ((*FILLER_STACKS.0.get())[i].as_ptr() as u64 + FILLER_STACK as u64) & !15;
            let ctx = &mut (*FILLER_CTX.0.get())[i];
            *ctx = pmig_abi::Ctx { rbx: 0, rbp: 0, r12: 0, r13: 0, r14: 0, r15: 0, rsp: top - 8, rip: filler_main as *const () as u64, mxcsr: 0x1f80, fpucw: 0x37f };
            let r = pmig_abi::arch::clone_thread(flags, top - 8, 0, &mut job.tid as *mut i32 as u64, 0, ctx);
            if r < 0 {
                job.tid = 0;
                break;
            }
        }
        started += 1;
    }
    // This thread's share, and the shares of helpers that could not be started.
    let mine = [(0, share.min(total)), (share * (started as u64 + 1), total)];
    for (from, to) in mine.into_iter().take(if started == fillers - 1 { 1 } else { 2 }) {
        if let Err((e, at)) = fill_range(h.image_fd as u64, runs, lazy, from, to) {
            fail(ec::FILL, e, at);
        }
    }
    for i in 0..started {
        // SAFETY: the kernel clears `tid` (and wakes it) when the helper exits.
        let job = unsafe { &(*FILLER_JOB.0.get())[i] };
        let tid = &job.tid as *const i32;
        loop {
            // SAFETY: reading a word the kernel writes at the helper's exit.
            let t = unsafe { core::ptr::read_volatile(tid) };
            if t == 0 {
                break;
            }
            sys(nr::FUTEX, tid as u64, 0, t as u64, 0, 0, 0);
        }
        if job.errno != 0 {
            fail(ec::FILL, job.errno, job.at);
        }
    }
}

extern "C" fn engine_main(sp: *const u64) -> ! {
    // Phase 1: the plan fd from argv[1].
    // SAFETY: the kernel put argc, then argv pointers, at the initial stack pointer.
    let (argc, arg1) = unsafe { (*sp, *(sp.add(2)) as *const u8) };
    if argc < 2 {
        fail(ec::ARGS, 0, 0);
    }
    let mut plan_fd = 0u64;
    let mut p = arg1;
    // SAFETY: argv[1] is a NUL-terminated string on the initial stack, still mapped.
    while let c @ b'0'..=b'9' = unsafe { *p } {
        plan_fd = plan_fd * 10 + (c - b'0') as u64;
        // SAFETY: still inside the NUL-terminated string.
        p = unsafe { p.add(1) };
    }

    // Phase 2: map and check the plan.
    let mut st = [0u64; 18];
    check(ec::PLAN, sys(nr::FSTAT, plan_fd, st.as_mut_ptr() as u64, 0, 0, 0, 0), 0);
    let size = st[6];
    if size < core::mem::size_of::<PlanHeader>() as u64 || size > PLAN_MAX {
        fail(ec::PLAN, 0, size);
    }
    let flags = (libc::MAP_PRIVATE | libc::MAP_FIXED_NOREPLACE) as u64;
    let got = check(ec::PLAN, sys(nr::MMAP, PLAN_ADDR, size, libc::PROT_READ as u64, flags, plan_fd, 0), PLAN_ADDR);
    if got != PLAN_ADDR {
        fail(ec::PLAN, 0, got);
    }
    // SAFETY: the plan is mapped at PLAN_ADDR for `size` bytes, which covers the header.
    let h: &PlanHeader = unsafe { &*(PLAN_ADDR as *const PlanHeader) };
    let regions_end = h.regions_off + h.n_regions * core::mem::size_of::<PlanRegion>() as u64;
    let runs_end = h.runs_off + h.n_runs * core::mem::size_of::<PlanRun>() as u64;
    let objects_end = h.objects_off + h.n_objects * core::mem::size_of::<pmig_abi::PlanObject>() as u64;
    if h.magic != PLAN_MAGIC
        || h.version != PLAN_VERSION
        || h.total_len != size
        || regions_end > size
        || runs_end > size
        || objects_end > size
        || h.vdso_proxy_off.checked_add(h.vdso_proxy_len).is_none_or(|e| h.vdso_proxy_len != 0 && e > size)
    {
        fail(ec::PLAN, 0, h.magic);
    }
    // SAFETY: bounds checked above; the arrays are aligned (8-byte multiples from PLAN_ADDR).
    let regions: &[PlanRegion] =
        unsafe { core::slice::from_raw_parts((PLAN_ADDR + h.regions_off) as *const PlanRegion, h.n_regions as usize) };
    // SAFETY: as above.
    let runs: &[PlanRun] =
        unsafe { core::slice::from_raw_parts((PLAN_ADDR + h.runs_off) as *const PlanRun, h.n_runs as usize) };
    // SAFETY: single-threaded.
    unsafe { *DEBUG.0.get() = h.debug != 0 };
    log(b"plan mapped; regions:", Some(h.n_regions));
    let all: u64 = !0;
    sys(nr::RT_SIGPROCMASK, libc::SIG_SETMASK as u64, &all as *const u64 as u64, 0, 8, 0, 0);

    // Phase 3: park the vdso block.
    let mut cur = [(0u32, 0u64, 0u64); 4];
    let n = own_vdso(&mut cur);
    let base = if n > 0 { cur[0].1 } else { 0 };
    for &(_, s, e) in &cur[..n] {
        let to = VDSO_PARK + (s - base);
        let mflags = (libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED) as u64;
        check(ec::VDSO_PARK, sys(nr::MREMAP, s, e - s, e - s, mflags, to, 0), s);
    }
    log(b"vdso parked", Some(VDSO_PARK));

    // Phase 4: nothing of the old process image but us.
    check(ec::UNMAP, sys(nr::MUNMAP, 0, ENGINE_BASE, 0, 0, 0, 0), 0);
    let hi = ENGINE_BASE + RESERVE_LEN;
    check(ec::UNMAP, sys(nr::MUNMAP, hi, TASK_SIZE - hi, 0, 0, 0, 0), hi);
    log(b"old address space gone", None);

    // Phase 5: map the saved regions.
    for r in regions {
        let len = r.end - r.start;
        let fill_prot = r.prot as u64 | libc::PROT_WRITE as u64;
        let fixed = libc::MAP_FIXED as u64;
        let noreserve = if r.flags & pmig_abi::REGION_NORESERVE != 0 { libc::MAP_NORESERVE as u64 } else { 0 };
        let (prot, flags, fd, off) = match r.kind {
            // MAP_NORESERVE only where the program's region had it (it shows in smaps).
            rk::ANON => (fill_prot, (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64 | noreserve, u64::MAX, 0),
            rk::STACK => (fill_prot, (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_GROWSDOWN) as u64 | noreserve, u64::MAX, 0),
            rk::SHARED_ANON => (fill_prot, (libc::MAP_SHARED | libc::MAP_ANONYMOUS) as u64, u64::MAX, 0),
            rk::FILE_PRIVATE => (fill_prot, libc::MAP_PRIVATE as u64, r.fd as u64, r.offset),
            rk::SYSV => {
                let ro = r.prot & libc::PROT_WRITE as u32 == 0 && r.flags & REGION_FILL == 0;
                let shmflg = if ro { libc::SHM_RDONLY as u64 } else { 0 };
                let got = check(ec::MAP, sys(nr::SHMAT, r.fd as u64, r.start, shmflg, 0, 0, 0), r.start);
                if got != r.start {
                    fail(ec::MAP, 0, r.start);
                }
                if r.flags & REGION_SYSV_RMID != 0 {
                    sys(nr::SHMCTL, r.fd as u64, libc::IPC_RMID as u64, 0, 0, 0, 0);
                }
                continue;
            }
            rk::FILE_SHARED if r.flags & REGION_FILL != 0 => (fill_prot, libc::MAP_SHARED as u64, r.fd as u64, r.offset),
            rk::FILE_SHARED => (r.prot as u64, libc::MAP_SHARED as u64, r.fd as u64, r.offset),
            _ => fail(ec::MAP, 0, r.start),
        };
        let got = check(ec::MAP, sys(nr::MMAP, r.start, len, prot, flags | fixed, fd, off), r.start);
        if got != r.start {
            fail(ec::MAP, 0, r.start);
        }
    }
    log(b"regions mapped", None);

    // Phase 5b: lazy regions go to the pager (or, where they cannot, are read in below).
    let lazy = h.pager_fd >= 0 && hand_to_pager(h, regions);

    // Phase 6: fill them, on every CPU the process may use (page faults and copies scale).
    fill_all(h, runs, lazy);
    log(b"pages read; runs:", Some(h.n_runs));

    // Phase 7: final protections.
    let keeps_prot = |r: &&PlanRegion| (r.kind == rk::FILE_SHARED || r.kind == rk::SYSV) && r.flags & REGION_FILL == 0;
    for r in regions.iter().filter(|r| !keeps_prot(r)) {
        check(ec::PROTECT, sys(nr::MPROTECT, r.start, r.end - r.start, r.prot as u64, 0, 0, 0), r.start);
    }

    // Phase 8: the vdso block where the saved process had it.
    let mflags = (libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED) as u64;
    if h.vdso_proxy_len == 0 {
        for &(kind, s, e) in &cur[..n] {
            let Some(saved) = h.vdso.iter().find(|v| v.kind == kind) else { fail(ec::VDSO_PLACE, 0, s) };
            let from = VDSO_PARK + (s - base);
            check(ec::VDSO_PLACE, sys(nr::MREMAP, from, e - s, e - s, mflags, saved.start, 0), saved.start);
        }
        log(b"vdso in place", None);
    } else {
        // Another kernel's vdso: this one's block goes to a free place, and the saved vdso,
        // its functions made jumps into this one, where the saved process calls it.
        for &(_, s, e) in &cur[..n] {
            let to = h.vdso_new_base + (s - base);
            check(ec::VDSO_PLACE, sys(nr::MREMAP, VDSO_PARK + (s - base), e - s, e - s, mflags, to, 0), to);
        }
        let len = (h.vdso_proxy_len + 4095) & !4095;
        let (at, rw) = (h.vdso_proxy_at, (libc::PROT_READ | libc::PROT_WRITE) as u64);
        let flags = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED) as u64;
        check(ec::VDSO_PLACE, sys(nr::MMAP, at, len, rw, flags, u64::MAX, 0), at);
        // SAFETY: the proxy's bytes lie in the plan (bounds checked in phase 2) and the
        // mapping just made is writable and `len` long.
        unsafe { core::ptr::copy_nonoverlapping((PLAN_ADDR + h.vdso_proxy_off) as *const u8, at as *mut u8, h.vdso_proxy_len as usize) };
        check(ec::VDSO_PLACE, sys(nr::MPROTECT, at, len, (libc::PROT_READ | libc::PROT_EXEC) as u64, 0, 0, 0), at);
        log(b"vdso of this kernel moved, the saved one made a proxy at", Some(at));
    }

    // Phase 9: the mm fields.
    let mut mm = h.mm;
    mm.auxv = h.auxv.as_ptr() as u64;
    // /proc/PID/exe is set by libpmig later: the kernel refuses while the engine is mapped.
    mm.exe_fd = u32::MAX;
    let r = sys(
        nr::PRCTL,
        libc::PR_SET_MM as u64,
        libc::PR_SET_MM_MAP as u64,
        &mm as *const pmig_abi::MmMap as u64,
        core::mem::size_of::<pmig_abi::MmMap>() as u64,
        0,
        0,
    );
    check(ec::MM_MAP, r, mm.brk);
    log(b"mm map set; brk", Some(mm.brk));

    // Phase 10: hand over.
    // Shared objects' fds stay open: libpmig gives them to the program's fds of the same object.
    // SAFETY: bounds of the object table were checked with the rest of the plan in phase 2.
    let objects: &[pmig_abi::PlanObject] = unsafe {
        core::slice::from_raw_parts((PLAN_ADDR + h.objects_off) as *const pmig_abi::PlanObject, h.n_objects as usize)
    };
    for (i, r) in regions.iter().enumerate() {
        if r.kind != rk::SYSV && r.fd >= 0 && !regions[..i].iter().any(|o| o.fd == r.fd) && !objects.iter().any(|o| o.fd == r.fd && o.kind == pmig_abi::OBJECT_SHARED_MEMORY) {
            sys(nr::CLOSE, r.fd as u64, 0, 0, 0, 0, 0);
        }
    }
    // SAFETY: single-threaded until the clone below; the mailbox lives in .bss until libpmig
    // unmaps the engine, which it does only after the leader has left (it reports ready).
    let mb = unsafe { &mut *MAILBOX.0.get() };
    *mb = Mailbox {
        magic: MAILBOX_MAGIC,
        plan_fd: h.plan_fd,
        image_fd: h.image_fd,
        manifest_off: h.manifest_off,
        manifest_len: h.manifest_len,
        debug: h.debug,
        _pad: 0,
        objects_off: h.objects_off,
        n_objects: h.n_objects,
        leader_go: 0,
        ids: h.ids,
        leader_ctx: 0,
        leader_fs: 0,
        exe_fd: h.mm.exe_fd as i32,
        lazy: lazy as u32,
    };
    // The checkpoint thread is a new thread (with its saved tid when ids are exact); this
    // thread, the leader, whose tid is the pid, becomes the program's main thread once the
    // checkpoint thread has put back what the process shares.
    let tid = h.ckpt_tid;
    let mut args = pmig_abi::CloneArgs {
        flags: pmig_abi::THREAD_FLAGS,
        // SAFETY: taking the address of the static's contents; nothing else uses it.
        stack: unsafe { (*CLONE_STACK.0.get()).as_ptr() } as u64,
        stack_size: CLONE_STACK_SIZE as u64,
        tls: h.fs_base,
        ..Default::default()
    };
    if h.ids == pmig_abi::IDS_EXACT && tid > 0 {
        args.set_tid = &tid as *const i32 as u64;
        args.set_tid_size = 1;
    }
    log(b"starting the checkpoint thread at", Some(h.ctx.rip));
    // SAFETY: the saved address space is in place; the child gets the checkpoint thread's
    // thread pointer and resumes its context (saved by save_and_call in this address space),
    // using the clone stack only for the jump.
    let r = unsafe { pmig_abi::arch::clone3_resume(&args, &h.ctx, mb as *mut Mailbox as u64) };
    check(ec::CLONE, r, tid as u64);
    log(b"leader waiting for the main thread's context", None);
    loop {
        // SAFETY: the mailbox word is written by the checkpoint thread (atomically).
        let go = unsafe { core::ptr::read_volatile(&mb.leader_go) };
        match go {
            pmig_abi::LEADER_RESUME => break,
            pmig_abi::LEADER_EXIT => {
                sys(nr::EXIT, 0, 0, 0, 0, 0, 0);
            }
            _ => {
                sys(nr::FUTEX, &mb.leader_go as *const u32 as u64, FUTEX_WAIT_PRIVATE, go as u64, 0, 0, 0);
            }
        }
    }
    let (ctx, fs) = (mb.leader_ctx as *const pmig_abi::Ctx, mb.leader_fs);
    check(ec::JUMP, sys(nr::ARCH_PRCTL, 0x1002, fs, 0, 0, 0, 0), fs);
    // SAFETY: the checkpoint thread handed over the main thread's saved context (in the
    // restored libpmig) and its thread pointer, which is now set.
    unsafe { pmig_abi::arch::restore_context(ctx, pmig_abi::RESTORED_THREAD) }
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    write_err(b"pmig-restore-engine: internal error (panic)\n");
    sys(nr::EXIT_GROUP, 100, 0, 0, 0, 0, 0);
    loop {
        core::hint::spin_loop();
    }
}

/// `memcpy` for the compiler (no libc here).
///
/// # Safety
/// As C's memcpy.
#[no_mangle]
pub unsafe extern "C" fn memcpy(d: *mut u8, s: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller passes valid, non-overlapping ranges; `rep movsb` copies n bytes.
    unsafe { core::arch::asm!("rep movsb", inout("rcx") n => _, inout("rdi") d => _, inout("rsi") s => _, options(nostack)) };
    d
}

/// `memmove` for the compiler.
///
/// # Safety
/// As C's memmove.
#[no_mangle]
pub unsafe extern "C" fn memmove(d: *mut u8, s: *const u8, n: usize) -> *mut u8 {
    if (d as usize) <= (s as usize) || (d as usize) >= (s as usize + n) {
        // SAFETY: forward copy is safe when the destination starts before the source.
        return unsafe { memcpy(d, s, n) };
    }
    // SAFETY: backward copy with the direction flag set, restored after.
    unsafe {
        core::arch::asm!("std", "rep movsb", "cld",
            inout("rcx") n => _, inout("rdi") d.add(n - 1) => _, inout("rsi") s.add(n - 1) => _, options(nostack));
    }
    d
}

/// `memset` for the compiler.
///
/// # Safety
/// As C's memset.
#[no_mangle]
pub unsafe extern "C" fn memset(d: *mut u8, c: i32, n: usize) -> *mut u8 {
    // SAFETY: the caller passes a valid range; `rep stosb` stores n bytes.
    unsafe { core::arch::asm!("rep stosb", inout("rcx") n => _, inout("rdi") d => _, in("al") c as u8, options(nostack)) };
    d
}

/// `memcmp` for the compiler.
///
/// # Safety
/// As C's memcmp.
#[no_mangle]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    for i in 0..n {
        // SAFETY: the caller passes ranges valid for n bytes; volatile keeps LLVM from turning
        // this loop back into a call to memcmp.
        let (x, y) = unsafe { (core::ptr::read_volatile(a.add(i)), core::ptr::read_volatile(b.add(i))) };
        if x != y {
            return x as i32 - y as i32;
        }
    }
    0
}

/// `bcmp` for the compiler.
///
/// # Safety
/// As C's bcmp.
#[no_mangle]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: same contract.
    unsafe { memcmp(a, b, n) }
}

/// The precompiled `core` refers to an unwinding personality even with `panic = "abort"`; it
/// is never called (nothing unwinds here).
#[no_mangle]
pub extern "C" fn rust_eh_personality() {}
