//! Credentials: user and group ids, supplementary groups, capabilities (dump and restore).
//!
//! Linux keeps credentials per thread; glibc's `setuid` & co. make every thread take the
//! same ones (see `signal::GLIBC_INTERNAL`). A checkpoint saves the main thread's. After a
//! restore every thread — the main thread, the recreated ones and pmig's own — sets them
//! itself with raw system calls ([`apply`]), so the restored program has its saved
//! credentials exactly where the restoring user may give them, and never keeps a capability
//! the restore raised (the `CAP_CHECKPOINT_RESTORE` that `clone3(set_tid)` needs).
//!
//! **Signal-time code**: [`apply`] runs in restored threads before they are released, so it
//! uses only the static below (filled by the checkpoint thread before any thread is made),
//! raw system calls and no allocation.

use crate::sys;
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicU32, Ordering::*};
use pmig_image::CredsState;

/// The process's "dumpable" flag as the program had it (`PR_GET_DUMPABLE`), recorded before a
/// dump makes it dumpable for a moment.
pub static DUMPABLE: AtomicU32 = AtomicU32::new(1);

/// The most supplementary groups put back.
const MAX_GROUPS: usize = 256;

/// What every restored thread applies.
struct Target {
    uids: [u32; 4],
    gids: [u32; 4],
    groups: [u32; MAX_GROUPS],
    n_groups: usize,
    caps: [u64; 3],
    ambient: u64,
}

struct Cell(UnsafeCell<Target>);
// SAFETY: written only by the restored checkpoint thread before it publishes `READY` (and
// before any other thread of the restored process runs); read only after.
unsafe impl Sync for Cell {}

static TARGET: Cell = Cell(UnsafeCell::new(Target {
    uids: [0; 4],
    gids: [0; 4],
    groups: [0; MAX_GROUPS],
    n_groups: 0,
    caps: [0; 3],
    ambient: 0,
}));
static READY: AtomicBool = AtomicBool::new(false);
/// What could not be put back, as bits (see [`FAILED_GROUPS`] …), for one warning.
static FAILED: AtomicU32 = AtomicU32::new(0);
const FAILED_GROUPS: u32 = 1;
const FAILED_GIDS: u32 = 2;
const FAILED_UIDS: u32 = 4;
const FAILED_CAPS: u32 = 8;

fn hex(v: &str) -> u64 {
    u64::from_str_radix(v.trim(), 16).unwrap_or(0)
}

fn four(v: &str) -> [u32; 4] {
    let mut out = [0u32; 4];
    for (o, f) in out.iter_mut().zip(v.split_whitespace()) {
        *o = f.parse().unwrap_or(0);
    }
    out
}

/// The process's credentials, from its `/proc/self/status` text (the main thread's).
pub fn dump(status: &str) -> CredsState {
    let field = |k: &str| crate::process::status_field(status, k).unwrap_or("");
    CredsState {
        uids: four(field("Uid:")),
        gids: four(field("Gid:")),
        groups: field("Groups:").split_whitespace().filter_map(|g| g.parse().ok()).collect(),
        cap_inheritable: hex(field("CapInh:")),
        cap_permitted: hex(field("CapPrm:")),
        cap_effective: hex(field("CapEff:")),
        cap_ambient: hex(field("CapAmb:")),
        securebits: sys::prctl(libc::PR_GET_SECUREBITS, 0, 0, 0, 0).unwrap_or(0) as u32,
        dumpable: DUMPABLE.load(Relaxed),
    }
}

/// Sets what every restored thread will apply (before any is made).
pub fn prepare(c: &CredsState) {
    // SAFETY: see `Cell`: no other thread of this process runs now.
    let t = unsafe { &mut *TARGET.0.get() };
    t.uids = c.uids;
    t.gids = c.gids;
    t.n_groups = c.groups.len().min(MAX_GROUPS);
    t.groups[..t.n_groups].copy_from_slice(&c.groups[..t.n_groups]);
    t.caps = [c.cap_effective, c.cap_permitted, c.cap_inheritable];
    t.ambient = c.cap_ambient;
    FAILED.store(0, Relaxed);
    READY.store(true, Release);
}

/// Signal-time: gives the calling thread the saved credentials, as far as it may.
pub fn apply() {
    if !READY.load(Acquire) {
        return;
    }
    // SAFETY: see `Cell`: written before READY was published, read-only now.
    let t = unsafe { &*TARGET.0.get() };
    let mut cur = [0u32; MAX_GROUPS];
    let n = sys::getgroups(&mut cur).unwrap_or(0) as usize;
    if cur[..n.min(MAX_GROUPS)] != t.groups[..t.n_groups] && sys::setgroups(&t.groups[..t.n_groups]).is_err() {
        FAILED.fetch_or(FAILED_GROUPS, Relaxed);
    }
    if sys::setresgid(t.gids[0], t.gids[1], t.gids[2]).is_err() {
        FAILED.fetch_or(FAILED_GIDS, Relaxed);
    }
    let _ = sys::setfsgid(t.gids[3]);
    // Keep the permitted set across a change away from uid 0 so it can be set below.
    let _ = sys::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0);
    if sys::setresuid(t.uids[0], t.uids[1], t.uids[2]).is_err() {
        FAILED.fetch_or(FAILED_UIDS, Relaxed);
    }
    let _ = sys::setfsuid(t.uids[3]);
    let _ = sys::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0);
    let _ = sys::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL as u64, 0, 0, 0);
    if sys::capset(t.caps).is_err() {
        // Never more than the saved sets: keep only what both have.
        let have = sys::capget().unwrap_or([0; 3]);
        let _ = sys::capset([have[0] & t.caps[0], have[1] & t.caps[1], have[2] & t.caps[2]]);
        FAILED.fetch_or(FAILED_CAPS, Relaxed);
    }
    for cap in 0..64u64 {
        if t.ambient & (1 << cap) != 0 {
            let _ = sys::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_RAISE as u64, cap, 0, 0);
        }
    }
}

/// Process-wide, once the threads have their credentials (a change of credentials resets it):
/// the program's "dumpable" flag.
pub fn restore_dumpable(c: &CredsState) {
    let _ = sys::prctl(libc::PR_SET_DUMPABLE, c.dumpable as u64, 0, 0, 0);
}

/// What [`apply`] could not put back, in words (for one warning), or `None`.
pub fn failures() -> Option<&'static str> {
    match FAILED.load(Relaxed) {
        0 => None,
        f if f & FAILED_UIDS != 0 => Some("the saved user ids (the restoring user may not take them)"),
        f if f & FAILED_GIDS != 0 => Some("the saved group ids (the restoring user may not take them)"),
        f if f & FAILED_GROUPS != 0 => Some("the saved supplementary groups (setgroups is not allowed here)"),
        _ => Some("some saved capabilities (the restoring user does not have them)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dump_reads_status_fields() {
        let status = "Name:\tx\nUid:\t1\t2\t3\t4\nGid:\t5\t6\t7\t8\nGroups:\t10 20 \nCapInh:\t0000000000000000\nCapPrm:\t000001ffffffffff\nCapEff:\t000001ffffffffff\nCapAmb:\t0000000000080000\n";
        let c = dump(status);
        assert_eq!(c.uids, [1, 2, 3, 4]);
        assert_eq!(c.gids, [5, 6, 7, 8]);
        assert_eq!(c.groups, vec![10, 20]);
        assert_eq!(c.cap_permitted, 0x1ff_ffff_ffff);
        assert_eq!(c.cap_ambient, 1 << 19);
    }
}
