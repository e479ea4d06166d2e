//! System V semaphore sets and message queues the image holds (see libpmig's `sysv`), made
//! again before any process: an object that still exists here with the same id and key is
//! the live one (its state is the program's own, as for SysV shared memory) and is kept; one
//! with the same key is used; otherwise a new one is made — with the saved id where this
//! process may choose ids (Linux's `sem_next_id`/`msg_next_id`, as root) — filled with the
//! saved values or messages, and given the saved owner and mode. An object that comes back
//! with another id is said: the program's calls on the old one fail.

use anyhow::{bail, Result};
use pmig_image::{SysvIpc, SysvKind, VerifiedImage};

const SETALL: i32 = 17;

fn last() -> std::io::Error {
    std::io::Error::last_os_error()
}

/// Whether `id` is a live object of this kind with key `key` (and `n` semaphores).
fn live(o: &SysvIpc) -> bool {
    // SAFETY: IPC_STAT into zeroed structs we own.
    unsafe {
        match &o.kind {
            SysvKind::Semaphores { values } => {
                let mut ds: libc::semid_ds = std::mem::zeroed();
                libc::semctl(o.id, 0, libc::IPC_STAT, &mut ds as *mut libc::semid_ds) == 0
                    && ds.sem_perm.__key == o.key
                    && ds.sem_nsems as usize == values.len()
            }
            SysvKind::Messages { .. } => {
                let mut ds: libc::msqid_ds = std::mem::zeroed();
                libc::msgctl(o.id, libc::IPC_STAT, &mut ds) == 0 && ds.msg_perm.__key == o.key
            }
        }
    }
}

/// Makes `o` again; returns its id.
fn make(o: &SysvIpc) -> Result<i32> {
    let (next, what) = match o.kind {
        SysvKind::Semaphores { .. } => ("/proc/sys/kernel/sem_next_id", "semaphore set"),
        SysvKind::Messages { .. } => ("/proc/sys/kernel/msg_next_id", "message queue"),
    };
    // SAFETY: semget/msgget/semctl/msgctl/msgsnd with buffers we own, sized as they say.
    unsafe {
        if o.key != libc::IPC_PRIVATE {
            let id = match &o.kind {
                SysvKind::Semaphores { .. } => libc::semget(o.key, 0, 0),
                SysvKind::Messages { .. } => libc::msgget(o.key, 0),
            };
            if id >= 0 {
                return Ok(id);
            }
        }
        // As root, ask for the saved id; harmless otherwise (the write fails).
        let _ = std::fs::write(next, o.id.to_string());
        let flags = libc::IPC_CREAT | libc::IPC_EXCL | (o.mode & 0o777) as i32 | 0o600;
        let id = match &o.kind {
            SysvKind::Semaphores { values } => libc::semget(o.key, values.len() as i32, flags),
            SysvKind::Messages { .. } => libc::msgget(o.key, flags),
        };
        let _ = std::fs::write(next, "-1");
        if id < 0 {
            bail!("cannot make System V {what} {} (key {:#x}) again: {}", o.id, o.key, last());
        }
        match &o.kind {
            SysvKind::Semaphores { values } => {
                let mut v = values.clone();
                if libc::semctl(id, 0, SETALL, v.as_mut_ptr()) != 0 {
                    bail!("cannot set the values of System V semaphore set {id}: {}", last());
                }
                let mut ds: libc::semid_ds = std::mem::zeroed();
                libc::semctl(id, 0, libc::IPC_STAT, &mut ds as *mut libc::semid_ds);
                (ds.sem_perm.uid, ds.sem_perm.gid, ds.sem_perm.mode) = (o.uid, o.gid, o.mode as u16);
                libc::semctl(id, 0, libc::IPC_SET, &mut ds as *mut libc::semid_ds);
            }
            SysvKind::Messages { qbytes, messages } => {
                let mut ds: libc::msqid_ds = std::mem::zeroed();
                libc::msgctl(id, libc::IPC_STAT, &mut ds);
                if *qbytes > ds.msg_qbytes as u64 {
                    ds.msg_qbytes = *qbytes as _;
                    libc::msgctl(id, libc::IPC_SET, &mut ds);
                }
                for (mtype, text) in messages {
                    let mut buf = mtype.to_ne_bytes().to_vec();
                    buf.extend_from_slice(text);
                    if libc::msgsnd(id, buf.as_ptr() as *const libc::c_void, text.len(), libc::IPC_NOWAIT) != 0 {
                        bail!("cannot queue a message on System V message queue {id} again: {}", last());
                    }
                }
                libc::msgctl(id, libc::IPC_STAT, &mut ds);
                (ds.msg_perm.uid, ds.msg_perm.gid, ds.msg_perm.mode) = (o.uid, o.gid, o.mode as u16);
                libc::msgctl(id, libc::IPC_SET, &mut ds);
            }
        }
        Ok(id)
    }
}

/// Makes again every System V semaphore set and message queue the image's processes hold
/// (each once: all were saved at the same instant).
pub fn make_again(img: &VerifiedImage) -> Result<()> {
    let mut done: Vec<(bool, i32)> = Vec::new();
    for (_, p) in img.processes() {
        for o in &p.manifest.sysv {
            let sem = matches!(o.kind, SysvKind::Semaphores { .. });
            if done.contains(&(sem, o.id)) {
                continue;
            }
            done.push((sem, o.id));
            if live(o) {
                continue;
            }
            let id = make(o)?;
            if id != o.id {
                eprintln!(
                    "pmig-resume: warning: System V {} {} is now {id} (only root may choose ids); the program's calls on {} will fail",
                    if sem { "semaphore set" } else { "message queue" },
                    o.id,
                    o.id
                );
            }
        }
    }
    Ok(())
}
