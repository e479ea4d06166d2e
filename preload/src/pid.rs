//! Process and thread ids as the program saw them.
//!
//! After a restore the process has a new pid and its threads new tids. The program keeps the
//! ids it saw before (it may have stored them, printed them, written a pid file): the wrappers
//! in `api` answer `getpid`, `getppid` and `gettid` with the *virtual* ids, and translate
//! virtual ids back to real ones in `kill`, `tgkill` and `/proc/<pid>/…` paths. Until the first
//! restore, virtual and real ids are the same and the wrappers cost one atomic load.
//!
//! That is the *virtual* mode, used where a restore cannot have exact ids. Where it can (a
//! new pid namespace in which `clone3(set_tid)` gives every thread its saved tid) the ids are
//! the kernel's own again and the wrappers pass them through; only `getppid` keeps answering
//! the parent the program was started by (its real parent is now pmig-resume's reaper, pid 1
//! of the namespace, or another host's process).
//!
//! A child forked after a restore has its own real pid; its `getppid` answers the pid its
//! parent sees as its own.
//!
//! The table is written only by the restored checkpoint thread before the program's threads
//! run again (and by a forked child, alone in its process), and read by anyone.

use crate::sys;
use crate::thread::MAX_THREADS;
use core::sync::atomic::{AtomicI32, AtomicU32, Ordering::*};
use pmig_image::IdsMode;

/// How this process's ids came to be: 0 original, 1 exact, 2 virtual.
static MODE: AtomicU32 = AtomicU32::new(0);

/// How this process's ids came to be (saved in images).
pub fn mode() -> IdsMode {
    match MODE.load(Relaxed) {
        1 => IdsMode::Exact,
        2 => IdsMode::Virtual,
        _ => IdsMode::Original,
    }
}

/// In a child just forked (`pthread_atfork`): its own ids are the kernel's; its parent is the
/// pid the parent sees as its own.
pub extern "C" fn after_fork_in_child() {
    VIRT_PPID.store(VIRT_PID.load(Relaxed), Relaxed);
    VIRT_PID.store(0, Relaxed);
    N_TIDS.store(0, Release);
    MODE.store(0, Relaxed);
}

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
    virt_tid(real)
}

/// The real id for a pid or tid the program gives (process, thread, or negative group forms).
pub fn to_real(id: i32) -> i32 {
    let v = VIRT_PID.load(Relaxed);
    if id == 0 || id == -1 {
        return id;
    }
    let vp = VIRT_PPID.load(Relaxed);
    if vp != 0 && id == vp {
        return sys::getppid();
    }
    if v == 0 {
        return id;
    }
    if id == v {
        return sys::getpid();
    }
    if id == -v {
        // The process group the program led: the one it is in now.
        return -(sys::getpgid());
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
/// the real tids of `pairs` (`(old real tid at checkpoint, new real tid)`). With exact ids
/// the new ids are the saved ones: nothing is translated any more.
pub fn after_restore(vpid: i32, vppid: i32, pairs: impl Iterator<Item = (i32, i32)>, exact: bool) {
    if exact {
        N_TIDS.store(0, Release);
        VIRT_PID.store(0, Relaxed);
        if VIRT_PPID.load(Relaxed) == 0 {
            VIRT_PPID.store(vppid, Relaxed);
        }
        MODE.store(1, Relaxed);
        return;
    }
    MODE.store(2, Relaxed);
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
