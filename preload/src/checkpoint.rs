//! The checkpoint thread: waits for the checkpoint signal, stops the other threads, writes the
//! image, and either exits (`--exit`) or lets the program go on. A checkpoint that fails always
//! lets the program go on, `--exit` or not. A checkpoint the program survives lets it go on
//! as soon as the manifest is read and a snapshot taken: a child writes the image (see
//! `snapshot`), and the next request is served once it has.
//!
//! **Runs with other threads stopped** from `suspend_all` to `release_all`: no `malloc` (the
//! arena is on), no locks, no `std::io`, no panics; I/O by raw system calls.
//!
//! The dump runs inside `save_and_call`, so the image holds this thread's context exactly at
//! that call: after a restore, the engine resumes it and `save_and_call` returns a pointer to
//! the engine's mailbox instead of the dump's status, and the restore half takes over.

use crate::errno::Errno;
use crate::log::{debug, say, StackBuf};
use crate::{alloc, config, fd, memory, process, signal, sys, thread};
use core::cell::UnsafeCell;
use core::fmt::Write;
use core::sync::atomic::{AtomicI32, AtomicU64, Ordering::*};
use pmig_abi::{arch, Ctx, Mailbox, ENGINE_BASE, RESERVE_LEN};
use pmig_image::{CkptThreadState, Footer, Header, Manifest, SettingsState, ThreadState, Trailer};

/// The checkpoint thread's saved context.
pub struct CtxCell(UnsafeCell<Ctx>);
// SAFETY: only the checkpoint thread writes or reads it.
unsafe impl Sync for CtxCell {}
pub static CKPT_CTX: CtxCell = CtxCell(UnsafeCell::new(Ctx {
    rbx: 0, rbp: 0, r12: 0, r13: 0, r14: 0, r15: 0, rsp: 0, rip: 0, mxcsr: 0, fpucw: 0,
}));
pub static CKPT_FS: AtomicU64 = AtomicU64::new(0);
pub static CKPT_ROBUST: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];
pub static CKPT_TID: AtomicI32 = AtomicI32::new(0);

/// How long a checkpoint of a lazily restored process waits for its memory to be all in.
pub const PAGED_WAIT_MS: u64 = 120_000;

/// Starts the checkpoint thread.
pub fn start() -> Result<(), String> {
    std::thread::Builder::new()
        .name("pmig-ckpt".into())
        .stack_size(1 << 20)
        .spawn(run)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn run() {
    signal::block_all();
    thread::confirm_tid_offset();
    CKPT_TID.store(sys::gettid(), Relaxed);
    let Some(cfg) = config::get() else { return };
    // Requests are counted from 0: one that arrived before this thread first ran is served.
    // `served` moves only to the count seen *before* a checkpoint started, so a request that
    // arrives during one (or, in a restored process, before this thread runs again) is
    // served by the next.
    let mut served = 0;
    loop {
        let mut req = config::CKPT_REQUEST.load(Acquire);
        while req == served {
            let _ = sys::futex_wait(&config::CKPT_REQUEST, served, 0);
            req = config::CKPT_REQUEST.load(Acquire);
        }
        if let Some(nonce) = crate::tree::pending_request() {
            // The tree's root checkpoints the tree: take part.
            crate::tree::take_part(cfg, nonce);
        } else if !cfg.is_root() {
            // A checkpoint signal sent to a member: the root checkpoints the whole tree. The
            // request carries pmig's mark (nonce 0), so that a root whose program has a
            // handler of its own for the signal takes it as a request all the same.
            if sys::sigqueue(cfg.root_pid, cfg.signal, config::TREE_MAGIC << 32).is_err() {
                say!("checkpoint skipped: this process belongs to the tree of pid {}, which is gone; the program goes on", cfg.root_pid);
            }
        } else {
            checkpoint_once(cfg);
        }
        served = req;
    }
}

/// What the dump reports back (kept on this stack: no heap).
struct Job<'a> {
    cfg: &'static config::Config,
    /// What was agreed with the receiver (`--to`).
    connection: Option<&'a crate::transfer::Connection>,
    /// Connected receiver (`--to`), or -1 to write the image file.
    conn: i32,
    /// The other processes of the tree, stopped.
    tree: Option<crate::tree::Session>,
    bytes: u64,
    msg: StackBuf,
    /// The child writing the image while the program goes on (a background checkpoint).
    writer: Option<crate::snapshot::Writer>,
    /// The mappings' flags, read before the threads were stopped (a background checkpoint
    /// then need not read them while they are).
    pre: Option<memory::Flags>,
    /// A live move's pre-copy (`--live`): what was sent while the program ran. In the arena.
    live: Option<crate::precopy::Precopy>,
}

/// The ranges that are pmig's own and never saved: the engine's and the arena.
fn own_ranges() -> [(u64, u64); 2] {
    let arena = alloc::ARENA_BASE.load(Relaxed);
    [(ENGINE_BASE, ENGINE_BASE + RESERVE_LEN), (arena, arena + alloc::ARENA_LEN)]
}

fn checkpoint_once(cfg: &'static config::Config) {
    let t0 = sys::monotonic_ms();
    debug!("checkpoint requested");
    if let Err(e) = memory::wait_paged(PAGED_WAIT_MS) {
        return failed(cfg, format_args!("{e}"));
    }
    // Pre-copy covers one process: a tree's other processes could not be followed.
    let live = cfg.live
        && cfg.to.is_some()
        && match crate::tree::descendants().iter().filter(|f| !f.zombie).count() {
            0 => true,
            n => {
                say!("the program has {n} child process(es): pre-copy (--live) covers a single process; it is moved stopped");
                false
            }
        };
    // A receiver is reached and authenticated before the program is stopped.
    let mut connection = match &cfg.to {
        Some(addr) => match crate::transfer::connect(addr, &cfg.token, cfg.compress, cfg.shared_fs, live) {
            Ok(c) => Some(c),
            Err(e) => return failed(cfg, format_args!("{e}")),
        },
        None => None,
    };
    let conn = connection.as_ref().map_or(-1, |c| c.fd);
    // (A test switch: time for the tree to change between the handshake and the stop.)
    if let Some(ms) = connection.as_ref().and(std::env::var("PMIG_TEST_MOVE_DELAY_MS").ok()).and_then(|v| v.parse::<u64>().ok()) {
        sys::sleep_ms(ms);
    }
    // --live: memory goes while the program runs (the checkpoint thread's allocations go to
    // the arena meanwhile, see `precopy`).
    let mut live_state = None;
    if live {
        alloc::thread_arena_on();
        match crate::precopy::run(conn, cfg.compress, &own_ranges()) {
            Ok(p) => live_state = Some(p),
            Err(e) => {
                failed(cfg, format_args!("{e}"));
                drop(e);
                alloc::arena_off();
                if let Some(c) = connection.as_mut() {
                    c.close();
                }
                return;
            }
        }
    }
    fd::socket::forget_repairs();
    // Read while the program runs: smaps costs ~13 ms per GiB, which a background checkpoint
    // then does not stop the program for (its writer checks nothing changed since).
    let pre = (cfg.background && !cfg.exit_after && cfg.to.is_none()).then(|| memory::flags(&own_ranges()));
    // A thread caught replacing the program (execve) is waited for: the new program takes
    // the request (the checkpoint signal stays pending for it).
    let mut tries = 0;
    let t_stop = sys::monotonic_ms();
    let mut stopped = thread::suspend_all(cfg.suspend_signal);
    while stopped == Err(thread::EXEC_IN_PROGRESS) && tries < 50 {
        tries += 1;
        sys::sleep_ms(10);
        stopped = thread::suspend_all(cfg.suspend_signal);
    }
    let n = match stopped {
        Ok(n) => n,
        Err(e) => {
            if let Some(c) = connection.as_mut() {
                c.close();
            }
            failed(cfg, format_args!("{e}"));
            if live_state.take().is_some() {
                alloc::arena_off();
            }
            return;
        }
    };
    debug!("{n} thread(s) stopped in {} ms", sys::monotonic_ms() - t_stop);
    alloc::arena_on();
    // The rest of the tree stops too before anything is read.
    let helpers: Vec<i32> = connection.as_ref().and_then(|c| c.ssh.as_ref()).map(|c| c.id() as i32).into_iter().collect();
    let tree = match crate::tree::Session::stop_tree(cfg, &helpers) {
        Ok(t) => t,
        Err(e) => {
            // Said before the arena (which holds the message) is emptied.
            failed(cfg, format_args!("{e}"));
            drop(live_state);
            alloc::arena_off();
            thread::release_all();
            if let Some(c) = connection.as_mut() {
                c.close();
            }
            return;
        }
    };
    CKPT_FS.store(arch::fs_base(), Relaxed);
    let (h, l) = sys::get_robust_list();
    CKPT_ROBUST[0].store(h, Relaxed);
    CKPT_ROBUST[1].store(l, Relaxed);
    let mut job = Job { cfg, conn, connection: connection.as_ref(), tree, bytes: 0, msg: StackBuf::new(), writer: None, pre, live: live_state };
    // SAFETY: CKPT_CTX is this thread's; `job` outlives the call.
    let r = unsafe { arch::save_and_call(CKPT_CTX.0.get(), dump_entry, &mut job as *mut Job as u64) };
    if r >= ENGINE_BASE {
        // The tree session belonged to the process that wrote the image: its memory was in
        // the arena (mapped anew, empty) and its fds are gone. It is forgotten, not dropped.
        core::mem::forget(job.tree.take());
        // So was the pre-copy's state (in the arena, which is not in the image).
        core::mem::forget(job.live.take());
        // SAFETY: only the engine resumes this context, handing over its mailbox's address
        // (always at or above ENGINE_BASE; a dump returns 0 or 1).
        unsafe { crate::restore::restored(r as *mut Mailbox) };
        return;
    }
    let Job { bytes, msg, tree, writer, pre, live, .. } = job;
    let live_note = live.as_ref().map(|p| {
        format!(
            "; live: {} round(s) sent {} MiB while it ran, {} MiB with it stopped for {} ms",
            p.rounds,
            p.sent >> 20,
            p.sent_stopped >> 20,
            sys::monotonic_ms() - t_stop
        )
    });
    // Before the arena it lives in is emptied.
    drop(live);
    if let Some(c) = connection.as_mut() {
        c.close();
    }
    if r != 0 {
        // The checkpoint failed and the program goes on: its connections (those the tree's
        // members lent for repair too, still held by the session) are its own again.
        fd::socket::undo_repairs();
    }
    // The members go on, or (the image durable, --exit) exit.
    let members_exit = r == 0 && (cfg.exit_after || cfg.to.is_some());
    if let Some(t) = tree {
        t.finish(members_exit);
    }
    if r != 0 {
        alloc::arena_off();
        thread::release_all();
        let msg = core::str::from_utf8(msg.as_bytes()).unwrap_or("?");
        return failed(cfg, format_args!("{msg}"));
    }
    if let Some(w) = writer {
        // A background checkpoint: the program goes on while the writer works; the next
        // request is served once it is done.
        alloc::arena_off();
        thread::release_all();
        drop(pre);
        let paused = sys::monotonic_ms() - t_stop;
        debug!("the program goes on after a pause of {paused} ms; the image is written in the background (pid {})", w.pid());
        match w.wait() {
            Ok(bytes) => {
                let ms = (sys::monotonic_ms() - t0).max(1);
                debug!("checkpoint written to {} ({bytes} bytes in {ms} ms, the program paused for {paused} ms); going on", cfg.image_path);
            }
            Err(e) => failed(cfg, format_args!("{e}")),
        }
        crate::snapshot::told();
        return;
    }
    let ms = (sys::monotonic_ms() - t0).max(1);
    if let Some(to) = cfg.to.as_ref() {
        say!(
            "moved to {to} ({} MiB in {ms} ms{}); the receiver has it and checked it; exiting",
            bytes >> 20,
            live_note.as_deref().unwrap_or("")
        );
        sys::exit_group(0);
    }
    if cfg.exit_after {
        say!("checkpoint written to {} ({} MiB in {ms} ms); exiting", cfg.image_path, bytes >> 20);
        // The other threads stay parked: the program does nothing more here.
        sys::exit_group(0);
    }
    alloc::arena_off();
    thread::release_all();
    debug!("checkpoint written to {} ({} bytes in {ms} ms); going on", cfg.image_path, bytes);
}

/// Says why a checkpoint failed. The program always goes on, `--exit` or not: nothing of it
/// was saved, so ending it would lose its work (the threads are running again by now).
fn failed(cfg: &config::Config, why: core::fmt::Arguments<'_>) {
    if let Some(to) = cfg.to.as_ref() {
        say!("moving the program to {to} failed: {why}; the program goes on here");
        return;
    }
    say!(
        "checkpoint failed: {why}; the program goes on (no image written; the previous image at {}, if any, is untouched)",
        cfg.image_path
    );
}

extern "C" fn dump_entry(job: u64) -> u64 {
    // SAFETY: `job` is the address of the Job on the caller's stack, alive for this call.
    let job = unsafe { &mut *(job as *mut Job<'_>) };
    // A program that changed its credentials (a daemon dropping root) is not dumpable: its
    // /proc/self files belong to root and it cannot read its own pagemap. It is made
    // dumpable for the dump only, and the flag it had is what the image keeps.
    let dumpable = sys::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0).unwrap_or(1) as u32;
    crate::creds::DUMPABLE.store(dumpable, Relaxed);
    if dumpable != 1 {
        let _ = sys::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0);
    }
    let background = job.cfg.background && !job.cfg.exit_after && job.conn < 0 && job.tree.is_none();
    let background = background.then_some((&mut job.writer, job.pre.as_ref()));
    let result = dump(job.cfg, job.conn, job.connection, job.tree.as_mut(), None, background, job.live.as_mut());
    if dumpable != 1 {
        let _ = sys::prctl(libc::PR_SET_DUMPABLE, dumpable as u64, 0, 0, 0);
    }
    match result {
        Ok(bytes) => {
            job.bytes = bytes;
            0
        }
        Err(e) => {
            let _ = job.msg.write_str(&e);
            1
        }
    }
}

/// A member of a tree, told by its root to take part: stops nothing more (its threads are
/// parked), saves its context like `checkpoint_once` and serves the root's orders inside it.
/// Returns `true` in a restored process (where the socket to the root does not exist).
pub fn member_dump(cfg: &'static config::Config, sock: i32) -> bool {
    alloc::arena_on();
    CKPT_FS.store(arch::fs_base(), Relaxed);
    let (h, l) = sys::get_robust_list();
    CKPT_ROBUST[0].store(h, Relaxed);
    CKPT_ROBUST[1].store(l, Relaxed);
    let mut job = MemberJob { cfg, sock };
    // SAFETY: CKPT_CTX is this thread's; `job` outlives the call.
    let r = unsafe { arch::save_and_call(CKPT_CTX.0.get(), member_entry, &mut job as *mut MemberJob as u64) };
    if r >= ENGINE_BASE {
        // SAFETY: as in `checkpoint_once`: only the engine resumes this context.
        unsafe { crate::restore::restored(r as *mut Mailbox) };
        return true;
    }
    alloc::arena_off();
    thread::release_all();
    false
}

struct MemberJob {
    cfg: &'static config::Config,
    sock: i32,
}

extern "C" fn member_entry(job: u64) -> u64 {
    // SAFETY: `job` is the address of the MemberJob on the caller's stack, alive for this call.
    let job = unsafe { &mut *(job as *mut MemberJob) };
    let (cfg, sock) = (job.cfg, job.sock);
    crate::tree::serve(cfg, sock, &mut |fd, shares| {
        let dumpable = sys::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0).unwrap_or(1) as u32;
        crate::creds::DUMPABLE.store(dumpable, Relaxed);
        if dumpable != 1 {
            let _ = sys::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0);
        }
        let r = dump(cfg, -1, None, None, Some((fd, sock, shares)), None, None);
        if dumpable != 1 {
            let _ = sys::prctl(libc::PR_SET_DUMPABLE, dumpable as u64, 0, 0, 0);
        }
        r
    });
    0
}

/// The most memory a background checkpoint copies aside while the program is stopped
/// (`memory::Copies`); with more, the image is written with the program stopped.
const COPY_LIMIT: u64 = 2 << 30;

/// Collects everything and writes the image; returns its size. `tree`: the root's session
/// with the stopped members, which write their images first; `member`: this process is a
/// member writing its image into `(fd, …)` for its root (the root's socket is the second);
/// `background`: the image file may be written by a child while the program goes on (see
/// `snapshot`), which is then put here (and the size returned is 0), with the mappings'
/// flags read before the threads stopped, if they were.
fn dump(
    cfg: &config::Config,
    conn: i32,
    connection: Option<&crate::transfer::Connection>,
    tree: Option<&mut crate::tree::Session>,
    member: Option<(i32, i32, &[crate::tree::Share])>,
    background: Option<(&mut Option<crate::snapshot::Writer>, Option<&memory::Flags>)>,
    mut live: Option<&mut crate::precopy::Precopy>,
) -> Result<u64, String> {
    let background = background.filter(|_| conn < 0 && member.is_none() && tree.is_none());
    let t0 = sys::monotonic_ms();
    // The last writes noted and the tracker gone before the page map is read.
    if let Some(p) = live.as_mut() {
        p.stop_tracking()?;
    }
    let skip = own_ranges();
    // Flags read before the stop serve when the mappings are the same now; the writer checks
    // that their flags were too (`memory::check_flags`).
    let pre = background.as_ref().and_then(|b| b.1).filter(|p| memory::map_ranges(&skip).is_ok_and(|r| r == p.ranges));
    let advice = match pre {
        Some(p) => p.advice.clone(),
        None => memory::advice(&skip),
    };
    // Regions a snapshot child would not see as they are: their pages are found and copied
    // here; the child finds the others' in its own copy of the address space.
    let unforked: Vec<(u64, u64)> = advice
        .iter()
        .filter(|a| a.flags & (pmig_image::ADVICE_DONTFORK | pmig_image::ADVICE_WIPEONFORK) != 0)
        .map(|a| (a.start, a.end))
        .collect();
    let t_collect = sys::monotonic_ms();
    let mut layout = memory::collect(&skip, background.is_some().then_some(&unforked[..]))?;
    debug!("advice read in {} ms, page map in {} ms", t_collect - t0, sys::monotonic_ms() - t_collect);
    let pending = core::mem::take(&mut layout.pending);
    debug!(
        "{} regions, {} KiB of populated pages ({} regions left to the writer, flags {}), in {} ms",
        layout.regions.len(),
        layout.pages_len >> 10,
        pending.len(),
        if pre.is_some() { "read before the stop" } else { "read now" },
        sys::monotonic_ms() - t0
    );
    let mut process = process::dump()?;
    // Signals queued for the whole process, with their siginfo (this thread blocks them all).
    let status = sys::read_file_vec(b"/proc/self/status\0").unwrap_or_default();
    let status = String::from_utf8_lossy(&status).into_owned();
    let shared = process::status_field(&status, "ShdPnd:").and_then(|p| u64::from_str_radix(p, 16).ok()).unwrap_or(0)
        & !signal::bit(cfg.suspend_signal);
    let mut infos: Vec<sys::SigInfo> = Vec::new();
    if shared != 0 {
        signal::take_pending(shared, 0, &mut infos);
    }
    process.pending_signals = infos.iter().map(|i| i.to_vec()).collect();
    // The connection to a receiver is pmig's own, not the program's.
    let rfd = connection.map_or(-1, |c| c.rfd);
    let mut own = vec![conn, rfd];
    if let Some(p) = live.as_ref() {
        own.extend(p.fds());
    }
    if let Some(t) = tree.as_ref() {
        own.extend(t.fds());
    }
    let mut shares: Vec<(i32, u64)> = tree.as_ref().map(|t| t.shares_of(sys::getpid())).unwrap_or_default();
    if let Some((fd, sock, s)) = member {
        own.extend([fd, sock]);
        shares.extend_from_slice(s);
    }
    let dumped = fd::dump(&own, cfg.drop_unsupported, &shares);
    // Repair states the root gave (in the arena): gone before the image holds this memory.
    fd::socket::forget_given();
    let (files, fds) = dumped?;
    if let Some(why) = fd::unsupported(&files, &fds) {
        if !cfg.drop_unsupported {
            return Err(format!("{why} (pmig-run --drop-unsupported checkpoints without it)"));
        }
        for f in fds.iter().filter(|f| matches!(files[f.file as usize].kind, pmig_image::FileKind::Other { .. })) {
            say!("warning: fd {} is left out of the image (--drop-unsupported); it will be closed after restore", f.fd);
        }
    }
    // An object also open as an fd is as large as the file, not only its mapped part.
    let mut objects = layout.objects;
    for o in objects.iter_mut() {
        for f in &files {
            if let pmig_image::FileKind::Memfd { ino, content, .. } | pmig_image::FileKind::Deleted { ino, content, .. } = &f.kind {
                if *ino == o.ino {
                    o.size = o.size.max(content.size);
                }
            }
        }
    }
    let mut threads = Vec::new();
    for s in thread::live_slots() {
        let tid = s.tid.load(Relaxed);
        let mut name = [0u8; 16];
        if let Ok(n) = sys::read_file(&sys::cstr(&format!("/proc/self/task/{tid}/comm")), &mut name) {
            let n = if n > 0 && name[n - 1] == b'\n' { n - 1 } else { n };
            name[n.min(15)..].fill(0);
        }
        // SAFETY: the thread is parked; only this thread touches the slot's name now.
        unsafe { *s.name.get() = name };

        let len = name.iter().position(|&c| c == 0).unwrap_or(16);
        let vtid = crate::pid::virt_tid(tid);
        threads.push(ThreadState {
            tid: vtid,
            name: String::from_utf8_lossy(&name[..len]).into_owned(),
            main: vtid == process.pid,
        });
    }
    // SAFETY: CKPT_CTX was written by save_and_call in this thread.
    let c = unsafe { *CKPT_CTX.0.get() };
    let manifest = Manifest {
        host: process::host(),
        settings: SettingsState {
            image_path: cfg.image_path.clone(),
            exit_after: cfg.exit_after,
            signal: cfg.signal,
            suspend_signal: cfg.suspend_signal,
        },
        threads,
        ckpt: CkptThreadState {
            tid: sys::gettid(),
            rbx: c.rbx,
            rbp: c.rbp,
            r12: c.r12,
            r13: c.r13,
            r14: c.r14,
            r15: c.r15,
            rsp: c.rsp,
            rip: c.rip,
            mxcsr: c.mxcsr,
            fpucw: c.fpucw,
            fs_base: CKPT_FS.load(Relaxed),
        },
        signals: signal::dump_actions(),
        itimers: signal::dump_itimers(),
        timers: crate::timer::dump()?,
        files,
        fds,
        regions: layout.regions,
        objects,
        carried: Vec::new(),
        tree: Vec::new(),
        sysv: crate::sysv::dump()?,
        advice,
        vdso: layout.vdso,
        process,
    };
    if conn >= 0 {
        let mut manifest = manifest;
        if let Some(c) = connection {
            crate::transfer::carry(&mut manifest, c)?;
        }
        if let Some(p) = live {
            // Pages go where they are (most sent already), then what places them.
            let (run_crcs, pages_len) = p.place_and_send(&mut manifest.regions)?;
            let bytes = pmig_image::encode(&manifest).map_err(|e| e.to_string())?;
            let header = Header::layout_far(bytes.len() as u64, crc32fast::hash(&bytes), pages_len);
            let trailer = pmig_image::encode(&Trailer { run_crcs }).map_err(|e| e.to_string())?;
            let footer = Footer { trailer_off: header.trailer_off(), trailer_len: trailer.len() as u64, trailer_crc: crc32fast::hash(&trailer) };
            p.send_at(0, &header.to_bytes())?;
            p.send_at(header.manifest_off, &bytes)?;
            p.send_at(footer.trailer_off, &trailer)?;
            p.send_at(footer.trailer_off + footer.trailer_len, &footer.to_bytes())?;
            p.end()?;
            let verdict = crate::transfer::verdict(connection.map_or(conn, |c| c.rfd))?;
            debug!("receiver: {verdict}");
            return Ok(p.sent + p.sent_stopped + bytes.len() as u64);
        }
        // A tree's members write their images into a memfd first; it goes ahead of the root's.
        let mut members_fd = -1;
        let mut members_len = 0u64;
        let mut tree = tree;
        if let Some(t) = tree.as_mut() {
            members_fd = sys::memfd_create(b"pmig-tree\0", libc::MFD_CLOEXEC).map_err(|e| format!("memfd_create: {}", Errno(e)))? as i32;
            let r = t.dump_members(members_fd);
            match r {
                Ok(table) => manifest.tree = table,
                Err(e) => {
                    let _ = sys::close(members_fd);
                    return Err(e);
                }
            }
            members_len = sys::lseek(members_fd, 0, libc::SEEK_CUR).map_err(|e| format!("{}", Errno(e)))?;
        }
        let (bytes, header) = self::layout(&manifest, layout.pages_len)?;
        let total = members_len + header.trailer_off() + 4096;
        let mut sink = crate::transfer::WireSink::new(conn, rfd, cfg.compress, total);
        if members_fd >= 0 {
            let mut buf = vec![0u8; 1 << 20];
            let mut off = 0u64;
            while off < members_len {
                let want = ((members_len - off) as usize).min(buf.len());
                let n = match sys::pread(members_fd, &mut buf[..want], off) {
                    Ok(0) => {
                        // A hole at the end (the page-boundary seek): zeros.
                        buf[..want].fill(0);
                        want
                    }
                    Ok(n) => n as usize,
                    Err(e) => {
                        let _ = sys::close(members_fd);
                        return Err(format!("reading the tree's images back: {}", Errno(e)));
                    }
                };
                if let Err(e) = sink.put(&buf[..n]) {
                    let _ = sys::close(members_fd);
                    return Err(e);
                }
                off += n as u64;
            }
            let _ = sys::close(members_fd);
        }
        let len = stream_image(&mut sink, &manifest, &bytes, &header, &memory::Copies::none())?;
        let verdict = sink.finish()?;
        debug!("receiver: {verdict}");
        return Ok(len);
    }
    if let Some((fd, _, _)) = member {
        // Into the root's file, where it points: the root makes it durable.
        let (bytes, header) = self::layout(&manifest, layout.pages_len)?;
        return stream_image(&mut FileSink { fd, path: &cfg.image_path }, &manifest, &bytes, &header, &memory::Copies::none());
    }
    let mut manifest = manifest;
    if let Some((slot, _)) = background {
        debug!("manifest read in {} ms", sys::monotonic_ms() - t0);
        match memory::Copies::take(&manifest.regions, &unforked, COPY_LIMIT) {
            Ok(copies) => {
                let mut write = || {
                    if let Some(p) = pre {
                        memory::check_flags(p, &skip, &manifest.regions, &pending)?;
                    }
                    let pages_len = memory::fill_runs(&mut manifest.regions, &pending)?;
                    write_image(&cfg.image_path, &mut manifest, pages_len, None, cfg.compress, &copies)
                };
                match crate::snapshot::start(&mut write) {
                    Ok(w) => {
                        debug!("{} KiB copied aside; image writer {} started", copies.bytes() >> 10, w.pid());
                        *slot = Some(w);
                        return Ok(0);
                    }
                    Err(e) => debug!("cannot start an image writer (clone: {}); the image is written with the program stopped", Errno(e)),
                }
            }
            Err(why) => debug!("{why}: the image is written with the program stopped"),
        }
    }
    let pages_len = memory::fill_runs(&mut manifest.regions, &pending)?;
    write_image(&cfg.image_path, &mut manifest, pages_len, tree, cfg.compress, &memory::Copies::none())
}

/// Where an image goes: a file, or a receiver on the network.
pub trait Sink {
    fn put(&mut self, bytes: &[u8]) -> Result<(), String>;
}

/// An image file being written.
struct FileSink<'a> {
    fd: i32,
    path: &'a str,
}

impl Sink for FileSink<'_> {
    fn put(&mut self, bytes: &[u8]) -> Result<(), String> {
        sys::write_all(self.fd, bytes).map_err(|e| format!("cannot write {}: {}", self.path, errno_str(e)))
    }
}

/// The encoded manifest and the header that places it.
pub fn layout(m: &Manifest, pages_len: u64) -> Result<(Vec<u8>, Header), String> {
    let bytes = pmig_image::encode(m).map_err(|e| e.to_string())?;
    let header = Header::layout(bytes.len() as u64, crc32fast::hash(&bytes), pages_len);
    Ok((bytes, header))
}

/// Streams the whole image, front to back, into `out`; returns its length.
pub fn stream_image(out: &mut dyn Sink, m: &Manifest, manifest: &[u8], header: &Header, copies: &memory::Copies) -> Result<u64, String> {
    out.put(&header.to_bytes())?;
    out.put(manifest)?;
    out.put(&vec![0u8; (header.pages_off - header.manifest_off - header.manifest_len) as usize])?;
    let run_crcs = memory::write_pages(out, &m.regions, copies)?;
    let trailer = pmig_image::encode(&Trailer { run_crcs }).map_err(|e| e.to_string())?;
    out.put(&trailer)?;
    let footer = Footer { trailer_off: header.trailer_off(), trailer_len: trailer.len() as u64, trailer_crc: crc32fast::hash(&trailer) };
    out.put(&footer.to_bytes())?;
    Ok(footer.total_len())
}

/// Writes the image so that a reader, a crash or a `kill -9` finds the old image or the new
/// one under `path`, never half of one, and no temporary file is left behind:
/// 1. `PATH.tmp.PID` files left by dead processes (see 3) are removed;
/// 2. the image is written to an unnamed file in `path`'s directory (`O_TMPFILE`) and made
///    durable (`fsync`): if the process dies meanwhile, the kernel frees it;
/// 3. it gets a name with `linkat` — `path` itself when there is no image yet, else
///    `PATH.tmp.PID`, which `rename` then puts over `path` atomically (`linkat` cannot
///    replace); only between these two calls can a death leave a file, which 1 removes;
/// 4. the directory is synced, so the new name is durable too.
///
/// A file system without `O_TMPFILE` gets `PATH.tmp.PID` from the start (step 2 named).
fn write_image(
    path: &str,
    m: &mut Manifest,
    pages_len: u64,
    mut tree: Option<&mut crate::tree::Session>,
    compress: bool,
    copies: &memory::Copies,
) -> Result<u64, String> {
    let (dir, base) = match path.rsplit_once('/') {
        Some((d, b)) => (if d.is_empty() { "/" } else { d }, b),
        None => (".", path),
    };
    remove_stale_temps(dir, base);
    let tmp = format!("{path}.tmp.{}", sys::getpid());
    let ctmp = sys::cstr(&tmp);
    let cpath = sys::cstr(path);
    let cdir = sys::cstr(dir);
    let unnamed = sys::openat(libc::AT_FDCWD, &cdir, libc::O_TMPFILE | libc::O_WRONLY | libc::O_CLOEXEC, 0o600);
    let (fd, named) = match unnamed {
        Ok(fd) => (fd as i32, false),
        Err(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL) => {
            debug!("{dir} has no O_TMPFILE: writing {tmp}");
            let fd = sys::openat(libc::AT_FDCWD, &ctmp, libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC, 0o600)
                .map_err(|e| format!("cannot create {tmp}: {}", errno_str(e)))?;
            (fd as i32, true)
        }
        Err(e) => return Err(format!("cannot create the image in {dir}: {}", errno_str(e))),
    };
    // Whether `tmp` exists now (and must be renamed over `path`, or removed on failure).
    let mut tmp_exists = named;
    let r = (|| {
        // Packed (--compress): the plain image is made in memory, then packed into the file.
        let plain = if compress {
            sys::memfd_create(b"pmig-plain-image\0", libc::MFD_CLOEXEC).map_err(|e| format!("cannot make a memfd for the image: {}", errno_str(e)))? as i32
        } else {
            fd
        };
        let made = (|| {
            if let Some(t) = tree.as_mut() {
                // The members' images first; the root's, which lists them, ends the file.
                m.tree = t.dump_members(plain)?;
            }
            let (bytes, header) = layout(m, pages_len)?;
            stream_image(&mut FileSink { fd: plain, path: if named { &tmp } else { path } }, m, &bytes, &header, copies)
        })();
        let total = if compress {
            let t0 = sys::monotonic_ms();
            let packed = made.and_then(|total| {
                let err = |e: i32| format!("cannot write {}: {}", if named { &tmp } else { path }, errno_str(e));
                // The whole file: a tree's members' images come before the root's.
                let whole = sys::lseek(plain, 0, libc::SEEK_END).map_err(err)?;
                let threads = config::CONFIG.get().map_or(0, |c| c.packers);
                crate::pack::pack(plain, whole, threads, &mut |b| sys::write_all(fd, b)).map(|(len, n)| (total, len, n)).map_err(err)
            });
            let _ = sys::close(plain);
            let (total, len, threads) = packed?;
            debug!("image packed: {total} bytes in {len}, by {threads} packer thread(s) in {} ms", sys::monotonic_ms() - t0);
            total
        } else {
            made?
        };
        sys::fsync(fd).map_err(|e| format!("cannot sync {}: {}", if named { &tmp } else { path }, errno_str(e)))?;
        if !named {
            match link_unnamed(fd, &cpath) {
                Ok(()) => return Ok(total),
                Err(libc::EEXIST) => {}
                Err(e) => return Err(format!("cannot name the new image {path}: {}", errno_str(e))),
            }
            // A `tmp` here is stale (this process writes one image at a time).
            let mut linked = link_unnamed(fd, &ctmp);
            if linked == Err(libc::EEXIST) {
                let _ = sys::unlink(&ctmp);
                linked = link_unnamed(fd, &ctmp);
            }
            linked.map_err(|e| format!("cannot name the new image {tmp}: {}", errno_str(e)))?;
            tmp_exists = true;
        }
        Ok(total)
    })();
    let _ = sys::close(fd);
    let total = match r {
        Ok(t) => t,
        Err(e) => {
            if tmp_exists {
                let _ = sys::unlink(&ctmp);
            }
            return Err(e);
        }
    };
    if tmp_exists {
        if let Err(e) = sys::rename(&ctmp, &cpath) {
            let _ = sys::unlink(&ctmp);
            return Err(format!("cannot rename {tmp} to {path}: {}", errno_str(e)));
        }
    }
    match sys::openat(libc::AT_FDCWD, &cdir, libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC, 0) {
        Ok(dfd) => {
            if let Err(e) = sys::fsync(dfd as i32) {
                say!("warning: the image {path} is written, but syncing {dir} failed: {}", errno_str(e));
            }
            let _ = sys::close(dfd as i32);
        }
        Err(e) => say!("warning: the image {path} is written, but {dir} cannot be opened to sync it: {}", errno_str(e)),
    }
    Ok(total)
}

/// Gives the unnamed (`O_TMPFILE`) file `fd` the name `to` (NUL-terminated): through
/// `/proc/self/fd` (unprivileged), else with `AT_EMPTY_PATH` (needs `CAP_DAC_READ_SEARCH`).
fn link_unnamed(fd: i32, to: &[u8]) -> Result<(), i32> {
    let proc_fd = sys::cstr(&format!("/proc/self/fd/{fd}"));
    match sys::linkat(libc::AT_FDCWD, &proc_fd, libc::AT_FDCWD, to, libc::AT_SYMLINK_FOLLOW) {
        Ok(_) => Ok(()),
        Err(libc::ENOENT) => match sys::linkat(fd, b"\0", libc::AT_FDCWD, to, libc::AT_EMPTY_PATH) {
            Ok(_) => Ok(()),
            Err(_) => Err(libc::ENOENT),
        },
        Err(e) => Err(e),
    }
}

/// Removes `BASE.tmp.PID` files in `dir` whose process is gone (or is this one, which writes
/// one image at a time): what a process killed between naming its new image and renaming it
/// leaves (see `write_image`).
fn remove_stale_temps(dir: &str, base: &str) {
    let prefix = format!("{base}.tmp.");
    let me = sys::getpid();
    let mut stale: Vec<String> = Vec::new();
    let _ = sys::for_each_entry(&sys::cstr(dir), |name| {
        let Some(pid) = name.strip_prefix(prefix.as_bytes()) else { return };
        let Some(pid) = core::str::from_utf8(pid).ok().filter(|p| !p.is_empty() && p.bytes().all(|c| c.is_ascii_digit())) else {
            return;
        };
        let Some(pid) = pid.parse::<i32>().ok().filter(|&p| p > 0) else { return };
        if pid == me || sys::kill(pid, 0) == Err(libc::ESRCH) {
            stale.push(format!("{dir}/{}", String::from_utf8_lossy(name)));
        }
    });
    for f in stale {
        match sys::unlink(&sys::cstr(&f)) {
            Ok(_) => debug!("removed {f}, left by a checkpoint that did not finish"),
            Err(e) => debug!("cannot remove {f}: {}", errno_str(e)),
        }
    }
}

/// `ENOSPC (no space left on device)` for `e` (see `errno`).
pub fn errno_str(e: i32) -> String {
    crate::errno::Errno(e).to_string()
}
