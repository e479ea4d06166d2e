//! System V semaphore sets and message queues: the ones the program got are remembered (the
//! `semget`/`msgget` wrappers), and a checkpoint saves each one that still exists, with its
//! semaphores' values or its queued messages (read with `MSG_COPY`, which leaves them queued).
//! pmig-resume makes them again where they are missing (with the same id where it may choose
//! ids: as root) — see `restorer/src/sysv.rs`.
//!
//! A semaphore set used through an id the program did not get from `semget` in a process of
//! its tree (an id passed from outside) is not seen. `SEM_UNDO` adjustments are not kept (the
//! kernel shows them to no one).

use crate::errno::Errno;
use crate::log::debug;
use crate::sys;
use core::sync::atomic::{AtomicI32, Ordering::*};
use pmig_image::{SysvIpc, SysvKind};

const SLOTS: usize = 64;
/// Ids the program got, per kind (-1: free); a forked child inherits its parent's.
static SEMS: [AtomicI32; SLOTS] = [const { AtomicI32::new(-1) }; SLOTS];
static QUEUES: [AtomicI32; SLOTS] = [const { AtomicI32::new(-1) }; SLOTS];

fn record(table: &[AtomicI32; SLOTS], id: i32) {
    if id < 0 || table.iter().any(|s| s.load(Relaxed) == id) {
        return;
    }
    if !table.iter().any(|s| s.compare_exchange(-1, id, AcqRel, Relaxed).is_ok()) {
        debug!("more than {SLOTS} System V objects of one kind: id {id} is not kept");
    }
}

/// After `semget` returned `id`.
pub fn got_semaphores(id: i32) {
    record(&SEMS, id);
}

/// After `msgget` returned `id`.
pub fn got_queue(id: i32) {
    record(&QUEUES, id);
}

const IPC_STAT: i32 = 2;
const GETALL: i32 = 13;
const MSG_COPY: i32 = 0o40000;

/// The state of every remembered object that still exists (one gone is forgotten).
pub fn dump() -> Result<Vec<SysvIpc>, String> {
    let mut out = Vec::new();
    for s in SEMS.iter() {
        let id = s.load(Relaxed);
        if id < 0 {
            continue;
        }
        // SAFETY: an all-zero semid_ds is valid; semctl(IPC_STAT) writes it.
        let mut ds: libc::semid_ds = unsafe { core::mem::zeroed() };
        if sys::semctl(id, 0, IPC_STAT, &mut ds as *mut libc::semid_ds as *mut u8).is_err() {
            s.store(-1, Relaxed);
            continue;
        }
        let mut values = vec![0u16; ds.sem_nsems as usize];
        // GETALL writes sem_nsems values into the buffer sized for them.
        if let Err(e) = sys::semctl(id, 0, GETALL, values.as_mut_ptr() as *mut u8) {
            return Err(format!("System V semaphore set {id}: GETALL: {}", Errno(e)));
        }
        let p = &ds.sem_perm;
        out.push(SysvIpc { id, key: p.__key, mode: p.mode as u32 & 0o777, uid: p.uid, gid: p.gid, kind: SysvKind::Semaphores { values } });
    }
    for q in QUEUES.iter() {
        let id = q.load(Relaxed);
        if id < 0 {
            continue;
        }
        // SAFETY: an all-zero msqid_ds is valid; msgctl(IPC_STAT) writes it.
        let mut ds: libc::msqid_ds = unsafe { core::mem::zeroed() };
        if sys::msgctl(id, IPC_STAT, &mut ds).is_err() {
            q.store(-1, Relaxed);
            continue;
        }
        let mut messages = Vec::new();
        // A message is at most the queue's byte limit long; the buffer holds its type first.
        let mut buf = vec![0u8; 8 + ds.msg_qbytes as usize];
        for i in 0..ds.msg_qnum as i64 {
            let n = sys::msgrcv(id, &mut buf, i, MSG_COPY | libc::IPC_NOWAIT)
                .map_err(|e| format!("System V message queue {id}: copying message {i}: {}", Errno(e)))?;
            let mtype = i64::from_ne_bytes(buf[..8].try_into().unwrap_or_default());
            messages.push((mtype, buf[8..8 + n as usize].to_vec()));
        }
        let p = &ds.msg_perm;
        out.push(SysvIpc {
            id,
            key: p.__key,
            mode: p.mode as u32 & 0o777,
            uid: p.uid,
            gid: p.gid,
            kind: SysvKind::Messages { qbytes: ds.msg_qbytes as u64, messages },
        });
    }
    Ok(out)
}
