//! The tree's board: sockets and kernel objects that processes of a tree share, made once.
//!
//! pmig-resume writes one slot per shared object into a memfd every process of the tree
//! inherits (`pmig_abi::BoardHeader`). Each object has a maker, the process with the lowest
//! pid that holds it (its image has the object's whole state: its receive queue, its TCP
//! repair state, ... were saved by that process only). The maker restores it as it would a
//! file of its own, and hands it out: it keeps copies of the fds above its own (`lent`) and
//! marks the slot ready. The others take them with `pidfd_getfd` (the same open file
//! description, as after a fork) and place them at their own numbers.
//!
//! No process waits for an object before it has made all of its own (see `fd::restore`'s
//! phases), so no two wait for each other. Once its fds are in place, each process counts
//! itself done and waits until every process is (the copies it lent must stay until taken),
//! then closes its copies. At the very end of its restore each waits again until all are
//! restored: the tree goes on at one instant, and no process meets another half restored
//! (still privileged, say, which makes `kcmp` or `ptrace` on it fail). Waits are bounded (a
//! process that died in its restore is noticed by the others' timeouts, which say so).
//!
//! Runs in the restored checkpoint thread: raw system calls only.

use crate::errno::Errno;
use crate::{log, sys};
use core::sync::atomic::{AtomicU32, Ordering::*};
use pmig_abi::{BoardHeader, BoardSlot, BOARD_MAGIC, SLOT_FAILED, SLOT_READY, SLOT_WAITING};

/// How long a process waits for an object's maker, or for the others to be done.
const WAIT_MS: u64 = 20_000;

pub struct Board {
    base: u64,
    len: u64,
    n: usize,
    /// Copies of the fds this process handed out, closed once every process is done.
    lent: Vec<i32>,
}

impl Board {
    /// Maps the board pmig-resume made (`fd`, with `n` slots); `None` when it is not one.
    pub fn map(fd: i32, n: u64) -> Option<Board> {
        let len = (core::mem::size_of::<BoardHeader>() + n as usize * core::mem::size_of::<BoardSlot>()) as u64;
        let base = sys::mmap(0, len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fd, 0).ok()? as u64;
        let b = Board { base, len, n: n as usize, lent: Vec::new() };
        // SAFETY: the mapping holds a header (written by pmig-resume) at its start.
        let head = unsafe { &*(base as *const BoardHeader) };
        if head.magic != BOARD_MAGIC || head.n_slots as usize != b.n {
            log::say!("warning: the tree's board is damaged; objects the tree shares stay closed");
            return None;
        }
        Some(b)
    }

    fn slot(&self, i: usize) -> *mut BoardSlot {
        (self.base as usize + core::mem::size_of::<BoardHeader>() + i * core::mem::size_of::<BoardSlot>()) as *mut BoardSlot
    }

    fn state(&self, i: usize) -> &AtomicU32 {
        // SAFETY: `state` is an aligned u32 inside slot `i` of the shared mapping, which lives
        // as long as `self`; every process touches it only atomically.
        unsafe { AtomicU32::from_ptr(core::ptr::addr_of_mut!((*self.slot(i)).state)) }
    }

    fn counter(&self, which: Counter) -> &AtomicU32 {
        let h = self.base as *mut BoardHeader;
        // SAFETY: as for `state`, in the header.
        unsafe {
            AtomicU32::from_ptr(match which {
                Counter::Live => core::ptr::addr_of_mut!((*h).live),
                Counter::Done => core::ptr::addr_of_mut!((*h).done),
                Counter::Restored => core::ptr::addr_of_mut!((*h).restored),
            })
        }
    }

    /// Counts this process in `which` and waits until every process of the tree is (or the
    /// wait runs out, said with `what`).
    fn all(&self, which: Counter, what: &str) {
        self.counter(which).fetch_add(1, AcqRel);
        let live = self.counter(Counter::Live).load(Acquire);
        let started = sys::monotonic_ms();
        while self.counter(which).load(Acquire) < live {
            if sys::monotonic_ms() - started >= WAIT_MS {
                log::say!("warning: processes of the tree took more than {} s to {what}; going on", WAIT_MS / 1000);
                return;
            }
            sys::sleep_ms(1);
        }
    }

    /// The slot of the object whose files carry `key` (`FileState::shared`).
    pub fn find(&self, key: u64) -> Option<usize> {
        // SAFETY: slots below `n` are inside the mapping; `key` is written only by pmig-resume.
        (0..self.n).find(|&i| unsafe { (*self.slot(i)).key } == key)
    }

    /// Whether this process makes object `i`.
    pub fn makes(&self, i: usize) -> bool {
        // SAFETY: as for `find`.
        unsafe { (*self.slot(i)).maker == sys::getpid() }
    }

    /// Which end of a pair the socket with inode `ino` is (0 for other objects).
    pub fn end_of(&self, i: usize, ino: u64) -> usize {
        // SAFETY: as for `find`.
        usize::from(unsafe { (*self.slot(i)).ends[1] } == ino && ino != 0)
    }

    /// Hands out object `i`: copies of `fds` (one per end) above `high`, then ready.
    pub fn publish(&mut self, i: usize, fds: [i32; 2], high: i32) {
        let mut copies = [-1; 2];
        for (c, &fd) in copies.iter_mut().zip(&fds) {
            if fd >= 0 {
                match sys::fcntl(fd, libc::F_DUPFD_CLOEXEC, high as u64) {
                    Ok(n) => *c = n as i32,
                    Err(e) => {
                        log::say!("warning: cannot hand out an object the tree shares: {}", Errno(e));
                        return self.fail(i);
                    }
                }
            }
        }
        self.lent.extend(copies.iter().filter(|&&c| c >= 0));
        // SAFETY: this process is the slot's only writer of `fds` (its maker), before ready.
        unsafe { (*self.slot(i)).fds = copies };
        self.state(i).store(SLOT_READY, Release);
    }

    /// Whether this process already handed out (or gave up on) object `i`.
    pub fn handed_out(&self, i: usize) -> bool {
        self.state(i).load(Acquire) != SLOT_WAITING
    }

    /// Says object `i` could not be made (the others leave their fds for it closed).
    pub fn fail(&self, i: usize) {
        self.state(i).store(SLOT_FAILED, Release);
    }

    /// Takes end `end` of object `i` from its maker once it is ready.
    pub fn take(&self, i: usize, end: usize) -> Result<i32, String> {
        let started = sys::monotonic_ms();
        loop {
            match self.state(i).load(Acquire) {
                SLOT_READY => break,
                SLOT_WAITING if sys::monotonic_ms() - started < WAIT_MS => sys::sleep_ms(1),
                SLOT_WAITING => return Err(format!("its maker, process {}, did not make it within {} s", self.maker(i), WAIT_MS / 1000)),
                _ => return Err(format!("its maker, process {}, could not make it", self.maker(i))),
            }
        }
        // SAFETY: `fds` was written before the Release store of READY seen above.
        let fd = unsafe { (*self.slot(i)).fds[end] };
        if fd < 0 {
            return Err("its maker did not hand out this end".into());
        }
        let pidfd = sys::pidfd_open(self.maker(i)).map_err(|e| format!("pidfd_open({}): {}", self.maker(i), Errno(e)))?;
        let got = sys::pidfd_getfd(pidfd as i32, fd);
        let _ = sys::close(pidfd as i32);
        got.map(|n| n as i32).map_err(|e| format!("pidfd_getfd from process {}: {}", self.maker(i), Errno(e)))
    }

    fn maker(&self, i: usize) -> i32 {
        // SAFETY: as for `find`.
        unsafe { (*self.slot(i)).maker }
    }

    /// Once this process's fds are all in place: waits until every process's are, and closes
    /// the copies it handed out.
    pub fn fds_done(&mut self) {
        self.all(Counter::Done, "restore their fds");
        for fd in self.lent.drain(..) {
            let _ = sys::close(fd);
        }
    }

    /// At the end of this process's restore: waits until every process of the tree is
    /// restored, then lets go of the board.
    pub fn restored(self) {
        self.all(Counter::Restored, "be restored");
        // SAFETY: nothing refers to the mapping past this point.
        let _ = unsafe { sys::munmap(self.base, self.len) };
    }
}

#[derive(Clone, Copy)]
enum Counter {
    Live,
    Done,
    Restored,
}
