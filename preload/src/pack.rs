//! Packing an image (`--compress`) on every CPU the process may run on: the plain image,
//! made whole in a memfd, is cut into blocks that raw packer threads and the writer (the
//! checkpoint thread, or the background writer `pmig-snapshot`) pack into a small ring of
//! reused buffers; the writer writes them to the file in order. The bytes written are those
//! of the single-threaded `pmig_image::packed::pack`: only who packs a block changes.
//!
//! **Runs with the program's threads parked** (or in a copy of the process whose threads may
//! hold libc's locks): no `malloc` (the arena is on; it takes allocations from several
//! threads, `alloc::arena_alloc`), no `pthread_create` or `std::thread`, no locks, no
//! `std::io`, no panics; raw system calls only. The packers are threads of this process made
//! with a raw `clone` (`CLONE_VM | CLONE_THREAD | …`, no thread pointer of their own: they
//! run only code that uses none — reads, LZ4, CRC32, futexes), with every signal blocked (a
//! signal for the process is never handled on one), on stacks taken from the arena. They
//! exist only inside [`pack`], which waits until each has exited (`CLONE_CHILD_CLEARTID`) and
//! is gone from the thread group before it returns: no other part of pmig ever sees them.
//!
//! The ring: `S` slots, block `k` goes into slot `k % S`. A packer claims the next block
//! (`next`), waits until the writer has written block `k - S` (`written`), packs it into the
//! slot and sets the slot's `done` to `k + 1`. The writer waits for block `w`'s slot to be
//! done; while it waits, it packs the next unclaimed block itself if that block's slot is
//! free. The plain bytes are read from a read-only mapping of the memfd (no copy: a raw
//! block is written to the file straight from it), or, if it cannot be mapped, copied into
//! the slot with `pread`. A slot's buffers stay the same for the whole image, so after the
//! first round they are memory already touched (a fresh page costs more here than packing
//! it). When a packer cannot be started, [`pack`] goes on with those that were, or packs on
//! its own thread exactly as before (`pmig_image::packed::pack`, with `pread`).

use crate::log::debug;
use crate::sys;
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicU32, Ordering::*};
use pmig_abi::Ctx;
use pmig_image::packed::{self, End, Packed, BLOCK, MAGIC, MAX_STORED};

/// At most this many packer threads besides the writer (the ring's memory grows with them).
const MAX_PACKERS: usize = 7;
/// Stack of a packer thread (it needs a few KiB: LZ4's hash table is allocated, not on it).
const STACK: usize = 256 << 10;

/// Packs the plain image of `total` bytes in `src` (a memfd), giving the
/// packed bytes to `out` in order. `threads`: how many threads pack (0: one per CPU this
/// thread may run on). Returns the packed length and how many threads packed.
pub fn pack(src: i32, total: u64, threads: usize, out: &mut dyn FnMut(&[u8]) -> Result<(), i32>) -> Result<(u64, usize), i32> {
    let blocks = total.div_ceil(BLOCK as u64);
    let threads = if threads == 0 { cpus() } else { threads };
    let want = threads.saturating_sub(1).min(MAX_PACKERS).min(blocks.saturating_sub(1) as usize);
    // The packers allocate (LZ4's hash table) from the arena, which they reach only while it
    // is on for every thread: with it on for one thread alone (`alloc::ARENA_TID`), or off,
    // they would call libc's malloc with another thread's thread pointer.
    let arena = crate::alloc::ARENA_ON.load(Relaxed);
    if want == 0 || !arena || blocks >= u32::MAX as u64 / 2 {
        return single(src, total, out).map(|len| (len, 1));
    }
    let slots = (2 * (want + 1)).min(blocks as usize);
    // Blocks are packed from a mapping of the memfd (no copy), else read into the slots.
    let map = sys::mmap(0, total, libc::PROT_READ, libc::MAP_SHARED, src, 0).unwrap_or(0);
    let ring = Ring::new(src, map, total, blocks as u32, slots);
    let mut crew = Crew::start(&ring, want);
    if crew.started() == 0 {
        debug!("packing on one thread: cannot start a packer thread: {}", crate::checkpoint::errno_str(crew.error));
        drop(crew);
        return single(src, total, out).map(|len| (len, 1));
    }
    if crew.started() < want {
        debug!("packing with {} of {want} packer threads: cannot start the others: {}", crew.started(), crate::checkpoint::errno_str(crew.error));
    }
    let threads = crew.started() + 1;
    let r = ring.write(out);
    if r.is_err() {
        ring.halt();
    }
    crew.join();
    if map != 0 {
        // SAFETY: every packer has exited and the writer is done: nothing reads the mapping.
        let _ = unsafe { sys::munmap(map, total) };
    }
    r.map(|len| (len, threads))
}

/// The single-threaded packer (one CPU, or no packer thread could be started).
fn single(src: i32, total: u64, out: &mut dyn FnMut(&[u8]) -> Result<(), i32>) -> Result<u64, i32> {
    packed::pack(total, |off, buf| sys::pread(src, buf, off).map(|n| n as usize), out)
}

/// CPUs this thread may run on (`sched_getaffinity(2)`; 1 when unknown).
fn cpus() -> usize {
    let mut mask = [0u64; 16];
    match sys::raw(libc::SYS_sched_getaffinity, &[0, core::mem::size_of_val(&mask) as u64, mask.as_mut_ptr() as u64]) {
        Ok(n) => mask[..(n as usize / 8).min(mask.len())].iter().map(|w| w.count_ones() as usize).sum::<usize>().max(1),
        Err(_) => 1,
    }
}

/// One slot of the ring: a block's plain bytes, its packed bytes and result.
struct Slot {
    /// `k + 1` once block `k` is packed here (the futex the writer waits on).
    done: AtomicU32,
    job: UnsafeCell<Job>,
}

struct Job {
    plain: Vec<u8>,
    scratch: Vec<u8>,
    /// The packed block, or the errno of reading it.
    res: Result<Packed, i32>,
}

/// What the packers and the writer share.
struct Ring {
    src: i32,
    /// Where `src` is mapped whole (read-only), or 0: read with `pread` into the slots.
    map: u64,
    total: u64,
    blocks: u32,
    /// The next block nobody has claimed yet.
    next: AtomicU32,
    /// Blocks written so far (the futex packers wait on for a free slot); `u32::MAX` once
    /// the writer has given up.
    written: AtomicU32,
    /// Set when the writer gives up: packers claim nothing more.
    stop: AtomicU32,
    slots: Vec<Slot>,
}

// SAFETY: a slot's `job` is used by one thread at a time, handed over through `done` and
// `written` with release/acquire ordering (see `Ring::pack` and `Ring::write`); everything
// else is atomics or read-only after `Ring::new`.
unsafe impl Sync for Ring {}

impl Ring {
    fn new(src: i32, map: u64, total: u64, blocks: u32, slots: usize) -> Ring {
        let slots = (0..slots)
            .map(|_| Slot {
                done: AtomicU32::new(0),
                job: UnsafeCell::new(Job { plain: if map == 0 { vec![0u8; BLOCK] } else { Vec::new() }, scratch: vec![0u8; MAX_STORED], res: Err(libc::EIO) }),
            })
            .collect();
        Ring { src, map, total, blocks, next: AtomicU32::new(0), written: AtomicU32::new(0), stop: AtomicU32::new(0), slots }
    }

    /// A packer thread's loop: claims blocks until there are none left or the writer gives up.
    fn work(&self) {
        let n = self.slots.len() as u32;
        loop {
            let k = self.next.fetch_add(1, AcqRel);
            if k >= self.blocks {
                return;
            }
            // Block k's slot is free once block k - n is written.
            loop {
                if self.stop.load(Acquire) != 0 {
                    return;
                }
                let w = self.written.load(Acquire);
                if k < w.saturating_add(n) {
                    break;
                }
                let _ = sys::futex_wait(&self.written, w, 0);
            }
            self.pack(k);
        }
    }

    /// Reads block `k` into its slot and packs it there. The caller claimed block `k`, and the
    /// writer has written block `k - S`.
    fn pack(&self, k: u32) {
        let slot = &self.slots[k as usize % self.slots.len()];
        // SAFETY: the slot belongs to block k's claimer (the caller) from when block k - S is
        // written (the writer no longer reads it) until `done` says k + 1 (below, release).
        let job = unsafe { &mut *slot.job.get() };
        let off = k as u64 * BLOCK as u64;
        let len = (self.total - off).min(BLOCK as u64) as usize;
        job.res = if self.map == 0 {
            read_full(self.src, &mut job.plain[..len], off).map(|()| packed::pack_block(&job.plain[..len], &mut job.scratch))
        } else {
            let plain = self.mapped(k);
            // The block's pages mapped in one call, not a fault per 16 of them (an
            // older kernel refuses: faults it is).
            // SAFETY: MADV_POPULATE_READ only maps the pages; `plain` is in the mapping.
            let _ = unsafe { sys::madvise(plain.as_ptr() as u64 & !4095, (plain.len() as u64 + (plain.as_ptr() as u64 & 4095)).next_multiple_of(4096), libc::MADV_POPULATE_READ) };
            Ok(packed::pack_block(plain, &mut job.scratch))
        };
        slot.done.store(k + 1, Release);
        let _ = sys::futex_wake(&slot.done);
    }

    /// The writer: writes the magic, every block in order as it is packed, and the end;
    /// packs blocks itself while the one it needs is not ready. Returns the packed length.
    fn write(&self, out: &mut dyn FnMut(&[u8]) -> Result<(), i32>) -> Result<u64, i32> {
        let n = self.slots.len() as u32;
        let mut end = End::new();
        out(&MAGIC)?;
        for w in 0..self.blocks {
            let slot = &self.slots[w as usize % self.slots.len()];
            loop {
                let d = slot.done.load(Acquire);
                if d == w + 1 {
                    break;
                }
                // Written == w here: block k's slot is free when k < w + n.
                let k = self.next.load(Acquire);
                if k < self.blocks && k < w + n && self.next.compare_exchange(k, k + 1, AcqRel, Acquire).is_ok() {
                    self.pack(k);
                    continue;
                }
                // Block w is claimed by a packer whose slot is free: it is being packed.
                let _ = sys::futex_wait(&slot.done, d, 0);
            }
            // SAFETY: `done` == w + 1 (acquire): block w's packer is finished with the slot,
            // and block w + n is not packed into it before `written` passes w (below).
            let job = unsafe { &*slot.job.get() };
            let b = job.res?;
            end.add(&b);
            out(&b.head)?;
            let plain = if self.map == 0 { &job.plain[..b.plain_len()] } else { self.mapped(w) };
            out(b.stored(plain, &job.scratch))?;
            self.written.store(w + 1, Release);
            let _ = sys::futex_wake(&self.written);
        }
        out(&end.bytes())?;
        Ok(end.written())
    }

    /// Block `k`'s plain bytes in the mapping.
    fn mapped(&self, k: u32) -> &[u8] {
        let off = k as u64 * BLOCK as u64;
        let len = (self.total - off).min(BLOCK as u64) as usize;
        // SAFETY: `map` maps `total` bytes of `src` read-only until every packer has exited
        // (`pack` unmaps it after `Crew::join`); nothing writes the memfd meanwhile.
        unsafe { core::slice::from_raw_parts((self.map + off) as *const u8, len) }
    }

    /// The writer gives up: packers stop claiming and leave.
    fn halt(&self) {
        self.stop.store(1, Release);
        self.written.store(u32::MAX, Release);
        let _ = sys::futex_wake(&self.written);
    }
}

/// Reads all of `buf` at `off` (`EIO` if the file ends first).
fn read_full(fd: i32, buf: &mut [u8], off: u64) -> Result<(), i32> {
    let mut got = 0;
    while got < buf.len() {
        match sys::pread(fd, &mut buf[got..], off + got as u64) {
            Ok(0) => return Err(libc::EIO),
            Ok(n) => got += n as usize,
            Err(libc::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// One packer thread. `ctx` first: the thread starts with `rdi` pointing at it.
#[repr(C)]
struct Packer {
    ctx: Ctx,
    ring: *const Ring,
    /// 1 until the kernel clears it (and wakes it) when the thread has exited.
    tid_word: AtomicU32,
    tid: i32,
    stack: Vec<u8>,
}

/// The packer threads of one [`pack`].
struct Crew {
    packers: Vec<Packer>,
    /// Why the last packer that could not be started was not.
    error: i32,
}

impl Crew {
    /// Starts up to `n` packer threads on `ring` (fewer if `clone` fails).
    fn start(ring: &Ring, n: usize) -> Crew {
        // Filled first, never moved after: each thread holds the address of its `Packer`.
        let mut packers: Vec<Packer> = (0..n)
            .map(|_| Packer { ctx: Ctx::default(), ring, tid_word: AtomicU32::new(0), tid: 0, stack: Vec::with_capacity(STACK) })
            .collect();
        let mut crew = Crew { packers: Vec::new(), error: 0 };
        // The packers start with every signal blocked (a new thread takes its creator's mask).
        let (all, mut old) = (!0u64, 0u64);
        if let Err(e) = sys::rt_sigprocmask(libc::SIG_SETMASK, Some(&all), Some(&mut old)) {
            crew.error = e;
            return crew;
        }
        let flags = (pmig_abi::THREAD_FLAGS & !(libc::CLONE_SETTLS as u64)) | libc::CLONE_CHILD_CLEARTID as u64;
        let mut started = 0;
        for p in packers.iter_mut() {
            let top = (p.stack.as_ptr() as u64 + STACK as u64) & !15;
            p.ctx = Ctx { rsp: top - 8, rip: packer_main as *const () as u64, mxcsr: 0x1f80, fpucw: 0x37f, ..Ctx::default() };
            p.tid_word.store(1, Relaxed);
            // The thread runs `packer_main` (no thread pointer) on STACK bytes of the arena no
            // one else touches; `p` and its stack stay until `join` sees `tid_word` cleared.
            // SAFETY: a thread of this process on its own stack, see just above.
            let r = unsafe { pmig_abi::arch::clone_thread(flags, top - 8, 0, p.tid_word.as_ptr() as u64, 0, &p.ctx) };
            if r < 0 {
                p.tid_word.store(0, Relaxed);
                crew.error = (-r) as i32;
                break;
            }
            p.tid = r as i32;
            started += 1;
        }
        let _ = sys::rt_sigprocmask(libc::SIG_SETMASK, Some(&old), None);
        packers.truncate(started);
        crew.packers = packers;
        crew
    }

    fn started(&self) -> usize {
        self.packers.len()
    }

    /// Waits until every packer has exited and left the thread group.
    fn join(&mut self) {
        let pid = sys::getpid();
        for p in &self.packers {
            loop {
                let t = p.tid_word.load(Acquire);
                if t == 0 {
                    break;
                }
                let _ = sys::futex_wait_shared(&p.tid_word, t, 0);
            }
            // Cleared at exit, a moment before the kernel takes it out of /proc/self/task.
            for _ in 0..10_000 {
                if sys::tgkill(pid, p.tid, 0) == Err(libc::ESRCH) {
                    break;
                }
                let _ = sys::sched_yield();
            }
        }
        self.packers.clear();
    }
}

impl Drop for Crew {
    fn drop(&mut self) {
        self.join();
    }
}

/// Where a packer thread starts (`rdi` = its `Packer`'s context).
extern "C" fn packer_main(ctx: *const Ctx) -> ! {
    // SAFETY: `ctx` is the first field of a `Packer` (repr(C)) that `Crew::join` keeps in
    // place, with the ring it points to, until this thread has exited.
    let ring = unsafe { &*(*(ctx as *const Packer)).ring };
    ring.work();
    let _ = sys::raw(libc::SYS_exit, &[0]);
    loop {
        core::hint::spin_loop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Tests that fork take it (one fork at a time in this test process).
    static FORK: Mutex<()> = Mutex::new(());

    /// Runs `f` in a forked child with the arena on, as at a checkpoint: a packer thread has
    /// no thread pointer of its own, so it must not reach libc's `malloc` (which keeps state
    /// in the creator's thread-local storage). Fails the test if `f` fails or panics there.
    fn in_child(f: impl FnOnce() -> Result<(), String>) {
        let _g = FORK.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: the child only runs `f` with the arena on (no libc allocation) and leaves
        // with `_exit`.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork");
        if pid == 0 {
            let ok = crate::alloc::map_arena(0) && {
                crate::alloc::arena_on();
                match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
                    Ok(Ok(())) => true,
                    Ok(Err(why)) => {
                        let _ = sys::write_all(2, format!("in the child: {why}\n").as_bytes());
                        false
                    }
                    Err(_) => false,
                }
            };
            // SAFETY: ends the child without running the test harness's exit handlers.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: waits for the child just forked.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "the child failed: status {status:#x}");
    }

    fn check(ok: bool, why: impl FnOnce() -> String) -> Result<(), String> {
        if ok {
            Ok(())
        } else {
            Err(why())
        }
    }

    fn memfd_with(data: &[u8]) -> i32 {
        let fd = sys::memfd_create(b"pmig-pack-test\0", libc::MFD_CLOEXEC).expect("memfd") as i32;
        sys::write_all(fd, data).expect("write");
        fd
    }

    /// Blocks of text, random bytes and zeros in turn.
    fn data(len: usize) -> Vec<u8> {
        let mut x = 88172645463325252u64;
        (0..len)
            .map(|i| match (i / BLOCK) % 3 {
                0 => b"the packer packs a block of text "[i % 33],
                1 => {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                }
                _ => 0,
            })
            .collect()
    }

    fn single_packed(fd: i32, total: u64) -> Vec<u8> {
        let mut v = Vec::new();
        single(fd, total, &mut |b| {
            v.extend_from_slice(b);
            Ok(())
        })
        .expect("single");
        v
    }

    #[test]
    fn one_packer_thread_packs_a_block_and_exits() {
        // The first step: one raw thread, its stack in the arena, packs a block, exits, and
        // is joined; the writer writes what it packed.
        in_child(|| {
            let d = data(BLOCK / 2);
            let fd = memfd_with(&d);
            let ring = Ring::new(fd, 0, d.len() as u64, 1, 1);
            let mut crew = Crew::start(&ring, 1);
            check(crew.started() == 1, || format!("clone failed: {}", crew.error))?;
            let tid = crew.packers[0].tid;
            // The packer claims block 0 (the writer is not there yet) and packs it.
            while ring.slots[0].done.load(Acquire) != 1 {
                let _ = sys::futex_wait(&ring.slots[0].done, 0, 10);
            }
            crew.join();
            check(sys::tgkill(sys::getpid(), tid, 0) == Err(libc::ESRCH), || "the packer thread is still there".into())?;
            let mut v = Vec::new();
            let len = ring
                .write(&mut |b| {
                    v.extend_from_slice(b);
                    Ok(())
                })
                .map_err(|e| format!("write: {e}"))?;
            check(len == v.len() as u64, || "length".into())?;
            check(v == single_packed(fd, d.len() as u64), || "the packer's block differs".into())
        });
    }

    #[test]
    fn many_threads_write_what_one_does() {
        in_child(|| {
            let d = data(9 * BLOCK + 12345);
            let fd = memfd_with(&d);
            let one = single_packed(fd, d.len() as u64);
            for threads in [1, 2, 3, 8] {
                let mut v = Vec::new();
                let (len, used) = pack(fd, d.len() as u64, threads, &mut |b| {
                    v.extend_from_slice(b);
                    Ok(())
                })
                .map_err(|e| format!("pack: {e}"))?;
                check(used == threads, || format!("{used} threads packed, not {threads}"))?;
                check(len == v.len() as u64, || "length".into())?;
                check(v == one, || format!("{threads} threads: another image"))?;
            }
            Ok(())
        });
    }

    #[test]
    fn packers_read_with_pread_when_the_image_is_not_mapped() {
        in_child(|| {
            let d = data(7 * BLOCK + 999);
            let fd = memfd_with(&d);
            let ring = Ring::new(fd, 0, d.len() as u64, 8, 4);
            let mut crew = Crew::start(&ring, 2);
            check(crew.started() == 2, || format!("clone failed: {}", crew.error))?;
            let mut v = Vec::new();
            let r = ring.write(&mut |b| {
                v.extend_from_slice(b);
                Ok(())
            });
            crew.join();
            check(r == Ok(v.len() as u64), || format!("{r:?}"))?;
            check(v == single_packed(fd, d.len() as u64), || "another image".into())
        });
    }

    #[test]
    fn a_failing_write_stops_the_packers() {
        in_child(|| {
            let d = data(12 * BLOCK);
            let fd = memfd_with(&d);
            let mut writes = 0;
            let r = pack(fd, d.len() as u64, 3, &mut |_| {
                writes += 1;
                if writes == 6 {
                    Err(libc::ENOSPC)
                } else {
                    Ok(())
                }
            });
            check(r == Err(libc::ENOSPC), || format!("{r:?}"))
        });
    }
}
