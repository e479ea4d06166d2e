//! pmig's global allocator: libc's `malloc` normally, and a private bump arena while the
//! checkpoint thread works with the other threads stopped.
//!
//! A stopped thread may hold a `malloc` lock, so the checkpoint thread must not call `malloc`
//! then. With [`ARENA_ON`] set (only by the checkpoint thread, only while every other thread is
//! parked), allocations come from the arena: a `MAP_NORESERVE` mapping that is never saved in an
//! image and is emptied at the end of each checkpoint or restore. Frees of arena memory are
//! ignored; frees of `malloc` memory while the arena is on are leaked rather than risk the lock.

use core::alloc::{GlobalAlloc, Layout};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::alloc::System;

/// Size of the arena's address range.
pub const ARENA_LEN: u64 = 1 << 32;

/// The arena's last page is never handed out: words kept there are in no image (the arena
/// is never saved) and read as zeros in every process that did not write them (see
/// [`own_words`]).
const OWN_PAGE: u64 = 4096;

/// Allocations go to the arena while this is set.
pub static ARENA_ON: AtomicBool = AtomicBool::new(false);
/// The one thread whose allocations go to the arena while the others run (0: none): the
/// checkpoint thread during a live move's pre-copy, which must neither grow the program's
/// heap (it would be in the image) nor free into it (glibc may then unmap memory the
/// pre-copy tracks, and wait for the thread itself to read the event).
static ARENA_TID: core::sync::atomic::AtomicI32 = core::sync::atomic::AtomicI32::new(0);
/// Start of the arena (0 until mapped).
pub static ARENA_BASE: AtomicU64 = AtomicU64::new(0);
static ARENA_NEXT: AtomicU64 = AtomicU64::new(0);

pub struct PmigAlloc;

/// Whether this allocation goes to (or this free is ignored for) the arena.
fn arena_here() -> bool {
    if ARENA_ON.load(Ordering::Relaxed) {
        return true;
    }
    let t = ARENA_TID.load(Ordering::Relaxed);
    t != 0 && t == crate::sys::gettid()
}

fn in_arena(p: *mut u8) -> bool {
    let base = ARENA_BASE.load(Ordering::Relaxed);
    let a = p as u64;
    base != 0 && a >= base && a < base + ARENA_LEN
}

fn arena_alloc(layout: Layout) -> *mut u8 {
    let base = ARENA_BASE.load(Ordering::Relaxed);
    let align = layout.align().max(16) as u64;
    // A compare-and-swap: the image's packer threads (`pack`) allocate alongside the
    // checkpoint thread.
    let mut cur = ARENA_NEXT.load(Ordering::Relaxed);
    loop {
        let start = (base + cur).next_multiple_of(align);
        let end = start + layout.size() as u64;
        if base == 0 || end > base + ARENA_LEN - OWN_PAGE {
            return core::ptr::null_mut();
        }
        match ARENA_NEXT.compare_exchange_weak(cur, end - base, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return start as *mut u8,
            Err(now) => cur = now,
        }
    }
}

// SAFETY: both halves return memory that is valid for the layout and not otherwise in use: the
// System allocator by its contract, the arena because its bump pointer only moves forward while
// the arena is in use (a compare-and-swap: the checkpoint thread and the packer threads it
// starts, `pack`, may allocate at once), and only those threads reach it: it is on for every
// thread only while the others are parked (or in the image writer), else for one (`ARENA_TID`).
unsafe impl GlobalAlloc for PmigAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if arena_here() {
            return arena_alloc(layout);
        }
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if in_arena(ptr) || arena_here() {
            return;
        }
        // SAFETY: `ptr` came from System.alloc with this layout (it is not an arena pointer).
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !in_arena(ptr) && !arena_here() {
            // SAFETY: `ptr` came from System with this layout.
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        // SAFETY: the new layout has the old alignment and a size the caller vouches for.
        let new = unsafe { self.alloc(Layout::from_size_align_unchecked(new_size, layout.align())) };
        if !new.is_null() {
            // SAFETY: both blocks are valid for the copied length and do not overlap (the arena
            // only hands out fresh memory).
            unsafe { core::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size)) };
            // SAFETY: forwarded to our own dealloc with the block's layout.
            unsafe { self.dealloc(ptr, layout) };
        }
        new
    }
}

/// Maps the arena (at `at` when non-zero, as after a restore). Returns false on failure.
pub fn map_arena(at: u64) -> bool {
    let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE
        | if at != 0 { libc::MAP_FIXED_NOREPLACE } else { 0 };
    match crate::sys::mmap(at, ARENA_LEN, libc::PROT_READ | libc::PROT_WRITE, flags, -1, 0) {
        Ok(a) if at == 0 || a == at => {
            ARENA_BASE.store(a, Ordering::Relaxed);
            ARENA_NEXT.store(0, Ordering::Relaxed);
            true
        }
        _ => false,
    }
}

/// Two words of the arena's last page (`None` before the arena is mapped): state of this
/// process alone that an image written from a copy of its memory must not hold (a snapshot
/// writer's log area, see `log::capture`). Zero unless this process wrote them.
pub fn own_words() -> Option<&'static [AtomicU64; 2]> {
    let base = ARENA_BASE.load(Ordering::Relaxed);
    if base == 0 {
        return None;
    }
    // SAFETY: the arena is mapped read/write for ARENA_LEN bytes from `base` for the life of
    // the process (mapped again at the same place after a restore); its last page is never
    // allocated, and AtomicU64 has the alignment of the page-aligned address.
    Some(unsafe { &*((base + ARENA_LEN - OWN_PAGE) as *const [AtomicU64; 2]) })
}

/// Turns the arena on (the caller has stopped every other thread). What the calling thread
/// put there with [`thread_arena_on`] stays.
pub fn arena_on() {
    if ARENA_TID.load(Ordering::Relaxed) != crate::sys::gettid() {
        ARENA_NEXT.store(0, Ordering::Relaxed);
    }
    ARENA_ON.store(true, Ordering::SeqCst);
}

/// Sends the calling thread's allocations (only its) to the arena while the other threads
/// run, until [`arena_off`]. The arena must not be in use.
pub fn thread_arena_on() {
    ARENA_NEXT.store(0, Ordering::Relaxed);
    ARENA_TID.store(crate::sys::gettid(), Ordering::SeqCst);
}

/// Turns the arena off and gives its memory back. Nothing allocated in it may be used again.
pub fn arena_off() {
    ARENA_ON.store(false, Ordering::SeqCst);
    ARENA_TID.store(0, Ordering::SeqCst);
    let used = ARENA_NEXT.swap(0, Ordering::Relaxed);
    let base = ARENA_BASE.load(Ordering::Relaxed);
    if base != 0 && used != 0 {
        // SAFETY: the arena's contents are dead: the caller dropped or forgot everything it
        // allocated there.
        unsafe {
            let _ = crate::sys::madvise(base, used.next_multiple_of(4096), libc::MADV_DONTNEED);
        }
    }
}
