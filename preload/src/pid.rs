//! Process and thread ids as the program saw them.
//!
//! After a restore the process has a new pid and its threads new tids. The program keeps the
//! ids it saw before (it may have stored them, printed them, written a pid file): the wrappers
//! in `api` answer `getpid`, `getppid` and `gettid` with the *virtual* ids, and translate
//! virtual ids back to real ones in `kill`, `tgkill` and `/proc/<pid>/…` paths. Until the first
//! restore, virtual and real ids are the same and the wrappers cost one atomic load.
//!
//! The table is written only by the restored checkpoint thread before the program's threads
//! run again, and read by anyone.

use crate::sys;
use crate::thread::MAX_THREADS;
use core::sync::atomic::{AtomicI32, AtomicU32, Ordering::*};

/// The pid the program saw (0: not restored, the real pid is the virtual one).
static VIRT_PID: AtomicI32 = AtomicI32::new(0);
/// The parent pid the program saw when it was started.
static VIRT_PPID: AtomicI32 = AtomicI32::new(0);
/// `(real, virtual)` thread ids of the threads recreated by restores.
static TIDS: [(AtomicI32, AtomicI32); MAX_THREADS] = [const { (AtomicI32::new(0), AtomicI32::new(0)) }; MAX_THREADS];
static N_TIDS: AtomicU32 = AtomicU32::new(0);

/// Whether any id differs from the real one (a restore happened).
pub fn active() -> bool {
    VIRT_PID.load(Relaxed) != 0
}

/// The program's pid.
pub fn getpid() -> i32 {
    match VIRT_PID.load(Relaxed) {
        0 => sys::getpid(),
        v => v,
    }
}

/// The program's parent pid.
pub fn getppid() -> i32 {
    match VIRT_PPID.load(Relaxed) {
        0 => sys::getppid(),
        v => v,
    }
}

/// The virtual tid of the real thread `real`.
pub fn virt_tid(real: i32) -> i32 {
    let n = N_TIDS.load(Acquire) as usize;
    TIDS[..n].iter().find(|(r, _)| r.load(Relaxed) == real).map(|(_, v)| v.load(Relaxed)).unwrap_or(real)
}

/// The calling thread's tid as the program knows it.
pub fn gettid() -> i32 {
    let real = sys::gettid();
    if !active() {
        return real;
    }
    if real == sys::getpid() {
        // The restored leader is pmig's own thread; no program thread has this tid.
        return real;
    }
    virt_tid(real)
}

/// The real id for a pid or tid the program gives (process, thread, or negative group forms).
pub fn to_real(id: i32) -> i32 {
    let v = VIRT_PID.load(Relaxed);
    if v == 0 || id == 0 || id == -1 {
        return id;
    }
    if id == v {
        return sys::getpid();
    }
    if id == -v {
        // The process group the program led: the one it is in now.
        return -(sys::getpgid());
    }
    if id == VIRT_PPID.load(Relaxed) {
        return sys::getppid();
    }
    if id > 0 {
        let n = N_TIDS.load(Acquire) as usize;
        if let Some((r, _)) = TIDS[..n].iter().find(|(_, vt)| vt.load(Relaxed) == id) {
            return r.load(Relaxed);
        }
    }
    id
}

/// Records, after a restore, that the pid was `vpid` and that the program's threads now have
/// the real tids of `pairs` (`(old real tid at checkpoint, new real tid)`).
pub fn after_restore(vpid: i32, vppid: i32, pairs: impl Iterator<Item = (i32, i32)>) {
    // Ids saved in the image were themselves virtual if it was taken after a restore.
    let mut new: [(i32, i32); MAX_THREADS] = [(0, 0); MAX_THREADS];
    let mut n = 0;
    for (old, real) in pairs {
        if n < MAX_THREADS {
            new[n] = (real, virt_tid(old));
            n += 1;
        }
    }
    for (i, &(r, v)) in new[..n].iter().enumerate() {
        TIDS[i].0.store(r, Relaxed);
        TIDS[i].1.store(v, Relaxed);
    }
    N_TIDS.store(n as u32, Release);
    if VIRT_PID.load(Relaxed) == 0 {
        VIRT_PID.store(vpid, Relaxed);
        VIRT_PPID.store(vppid, Relaxed);
    }
}

/// Rewrites `/proc/<virtual pid or tid>/…` to the real id; `None` when nothing changes.
pub fn proc_path(path: &[u8]) -> Option<Vec<u8>> {
    if !active() {
        return None;
    }
    let rest = path.strip_prefix(b"/proc/")?;
    let digits = rest.iter().take_while(|c| c.is_ascii_digit()).count();
    if digits == 0 || digits > 9 || (rest.len() > digits && rest[digits] != b'/') {
        return None;
    }
    let id: i32 = core::str::from_utf8(&rest[..digits]).ok()?.parse().ok()?;
    let real = to_real(id);
    if real == id {
        return None;
    }
    let mut out = format!("/proc/{real}").into_bytes();
    out.extend_from_slice(&rest[digits..]);
    Some(out)
}
