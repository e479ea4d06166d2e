//! The in-process half of restore, run by the restored checkpoint thread.
//!
//! **Runs before any other thread exists and while their memory says they are parked**
//! (possibly inside libc, holding its locks): no `malloc` (the arena is on), no locks, raw
//! system calls only.
//!
//! Algorithm:
//! 1. map the arena again (it is never saved) — nothing may allocate before this;
//! 2. read the engine's mailbox, fix this thread's own kernel state (tid, robust list, rseq);
//! 3. read the manifest from the plan fd; reopen fds, put back cwd, umask, rlimits, signal
//!    dispositions, interval timers;
//! 4. hand the main thread's context to the engine's leader thread (whose tid is the pid) and
//!    clone every other saved thread into its context — with its saved tid when ids are
//!    exact — and wait until each has fixed its own state and taken the saved credentials;
//! 5. take the saved credentials here too (dropping any capability the restore raised),
//!    re-send pending signals, drop the engine and re-reserve its range, release the threads.

use crate::checkpoint::{CKPT_ROBUST, CKPT_TID};
use crate::log::{debug, say};
use crate::{alloc, config, fd, log, process, signal, sys, thread};
use core::sync::atomic::Ordering::*;
use pmig_abi::{Mailbox, ENGINE_BASE, MAILBOX_MAGIC, RESERVE_LEN};
use pmig_image::Manifest;

/// Takes over from the engine. Returns with the program running again.
///
/// # Safety
/// `mb` must be the engine's mailbox, as `save_and_call` returns it after a restore.
pub unsafe fn restored(mb_ptr: *mut Mailbox) {
    // The engine made this thread with every signal blocked; glibc's own must get through.
    signal::block_all();
    if !alloc::map_arena(alloc::ARENA_BASE.load(Relaxed)) {
        say!("restore failed: cannot map pmig's arena again");
        sys::exit_group(120);
    }
    // SAFETY: the engine passes the address of its mailbox, which stays mapped (in the
    // reserved range) until step 5.
    let mb = unsafe { *mb_ptr };
    if mb.magic != MAILBOX_MAGIC {
        say!("restore failed: the engine's mailbox is damaged");
        sys::exit_group(121);
    }
    // pmig-resume's PMIG_DEBUG is the restore's; the program keeps its own afterwards.
    let own_debug = log::DEBUG.swap(mb.debug != 0, Relaxed);
    crate::memory::LAZY.store(mb.lazy != 0, Relaxed);
    thread::fix_own_thread_state(CKPT_ROBUST[0].load(Relaxed), CKPT_ROBUST[1].load(Relaxed));
    CKPT_TID.store(sys::gettid(), Relaxed);
    config::ACTIVE_PID.store(sys::getpid(), Relaxed);
    debug!("restore: in the restored process");

    let mut buf = vec![0u8; mb.manifest_len as usize];
    let mut got = 0;
    while got < buf.len() {
        match sys::pread(mb.plan_fd, &mut buf[got..], mb.manifest_off + got as u64) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n as usize,
        }
    }
    let m: Manifest = match pmig_image::decode(&buf[..got], "manifest") {
        Ok(m) => m,
        Err(e) => {
            say!("restore failed: cannot read the manifest from the plan: {e}");
            sys::exit_group(122);
        }
    };
    // pmig's lines go to pmig-resume's stderr until the program runs: held above every fd
    // the restore places or moves, so it stays put (see `log`).
    let top = m.fds.iter().map(|f| f.fd).max().unwrap_or(2);
    let mut keep = [mb.plan_fd, mb.image_fd, log::hold_stderr(top + 64), mb.exe_fd];
    let gap = crate::timer::Gap::new(
        sys::realtime_ns().saturating_sub(m.host.time_ns),
        m.host.monotonic_ns,
        sys::clock_ns(libc::CLOCK_MONOTONIC),
    );
    let mut table = vec![pmig_abi::PlanObject::default(); mb.n_objects as usize];
    // SAFETY: viewing the repr(C) integer-only table as bytes to read it from the plan.
    let bytes = unsafe {
        core::slice::from_raw_parts_mut(table.as_mut_ptr() as *mut u8, table.len() * core::mem::size_of::<pmig_abi::PlanObject>())
    };
    if !bytes.is_empty() && sys::pread(mb.plan_fd, bytes, mb.objects_off).map(|n| n as usize) != Ok(bytes.len()) {
        say!("warning: cannot read the shared object table from the plan");
        table.clear();
    }
    let objects = table.iter().filter(|o| o.fd >= 0).map(|o| (o.ino, o.fd, o.kind)).collect();
    // Its controlling terminal is a pty pmig-resume made again (its session leader took it).
    let tree_ctty = m.process.ctty_pty().is_some_and(|n| table.iter().any(|o| o.kind == pmig_abi::OBJECT_PTY && o.ino == u64::from(n)));
    let (owners, board) = fd::restore(&m.files, &m.fds, &mut keep, gap, objects);
    // In a tree every process exists by now (the board waited for all to have their fds):
    // one in a process group another process of the tree leads joins it again (pmig-resume
    // made it in its parent's, or its own when it led one).
    let pgid = m.process.pgid;
    if board.is_some() && pgid > 0 && pgid != m.process.pid && pgid != sys::getpgid() {
        if let Err(e) = sys::join_pgid(pgid) {
            debug!("restore: cannot join process group {pgid} again: {}", crate::errno::Errno(e));
        }
    }
    // The session leader gives the terminal its foreground process group back (every
    // process of the tree exists by now, in its group).
    if tree_ctty && m.process.sid == m.process.pid && m.process.tpgid > 0 {
        if let Err(e) = process::set_foreground(m.process.tpgid) {
            say!("warning: cannot make process group {} its terminal's foreground group again: {}", m.process.tpgid, crate::errno::Errno(e));
        }
    }
    process::restore(&m.process);
    crate::memory::restore_advice(&m.advice);
    // Filters from here on are the ones this process inherited (its next checkpoint counts
    // only what the program adds).
    process::START_SECCOMP_FILTERS.store(process::seccomp_filters(), Relaxed);
    signal::restore_actions(&m.signals);
    signal::restore_itimers(&m.itimers, gap.clock_ns / 1000);
    let mut comm = [0u8; 16];
    let n = m.process.comm.len().min(15);
    comm[..n].copy_from_slice(&m.process.comm.as_bytes()[..n]);
    let _ = sys::prctl(libc::PR_SET_NAME, comm.as_ptr() as u64, 0, 0, 0);
    debug!("restore: process state back; recreating {} thread(s)", m.threads.len());

    let exact = mb.ids == pmig_abi::IDS_EXACT;
    let old_tids: Vec<i32> = thread::live_slots().map(|s| s.tid.load(Relaxed)).collect();
    crate::creds::prepare(&m.process.creds);
    // SAFETY: the mailbox is the engine's, whose leader waits on it.
    match unsafe { thread::recreate_all(mb_ptr, m.process.pid, exact) } {
        Ok(n) => debug!("restore: {n} thread(s) ready, ids {}", if exact { "exact" } else { "virtual" }),
        Err(e) => {
            say!("restore failed: cannot recreate the program's threads: {}", crate::errno::Errno(e));
            sys::exit_group(123);
        }
    }
    // Every thread has left the engine: drop it, and give the process its executable back
    // as /proc/self/exe (with the capability the restore raised, before it is dropped).
    // SAFETY: nothing uses the engine any more (its mailbox was copied above).
    unsafe {
        let _ = sys::munmap(ENGINE_BASE, RESERVE_LEN);
    }
    crate::reserve_engine_range();
    if keep[3] >= 0 {
        if let Err(e) = process::set_exe(keep[3]) {
            debug!("restore: /proc/self/exe stays the restore engine's: {}", crate::errno::Errno(e));
        }
    }
    crate::creds::apply();
    crate::creds::restore_dumpable(&m.process.creds);
    if let Some(what) = crate::creds::failures() {
        if what.contains("supplementary") {
            debug!("restore: could not put back {what}");
        } else {
            say!("warning: the restored program could not be given {what}");
        }
    }
    let new_tids = thread::live_slots().map(|s| s.tid.load(Relaxed));
    crate::pid::after_restore(m.process.pid, m.process.ppid, old_tids.iter().copied().zip(new_tids), exact);
    fd::set_owners(&owners);
    crate::timer::restore(&m.timers, gap);
    let pending: Vec<sys::SigInfo> =
        m.process.pending_signals.iter().filter_map(|i| <sys::SigInfo>::try_from(i.as_slice()).ok()).collect();
    signal::requeue(&pending, 0);
    // (Said while pmig-resume's stderr is still the one: the program's may be a terminal the
    // program itself reads, as under `script`.)
    debug!("restore: done; the program goes on as pid {}", sys::getpid());
    log::release();
    log::DEBUG.store(own_debug, Relaxed);
    for k in keep {
        let _ = sys::close(k);
    }
    drop(buf);
    drop(m);
    alloc::arena_off();
    if let Some(b) = board {
        b.restored();
    }
    thread::release_all();
}
