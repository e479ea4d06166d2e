//! Dirty-page tracking, the mechanism live migration's pre-copy rounds (`precopy`) stand
//! on: which pages of some ranges the program wrote since the last look, while it runs.
//!
//! This kernel has no soft-dirty bits (`CONFIG_MEM_SOFT_DIRTY` is off), but it has the newer
//! way, unprivileged: the ranges are registered with a userfaultfd in write-protect mode with
//! `UFFD_FEATURE_WP_ASYNC` (a write to a protected page is let through by the kernel, which
//! only marks the page written: no message, no thread to serve it) and
//! `UFFD_FEATURE_WP_UNPOPULATED` (pages never touched count as protected too), then
//! write-protected; `PAGEMAP_SCAN` on `/proc/self/pagemap` with `PM_SCAN_WP_MATCHING` returns
//! the ranges written since and protects them again, in one call. `UFFD_USER_MODE_ONLY` is
//! enough (the kernel's own writes to a page, a `read(2)` into it, are marked written too,
//! without a fault to forward).

use crate::errno::Errno;
use crate::sys;
use pmig_abi::uffd;

/// A userfaultfd tracking writes to some ranges of this process.
pub struct Tracker {
    uffd: i32,
    pagemap: i32,
    /// The ranges tracked, sorted, disjoint.
    ranges: Vec<(u64, u64)>,
}

/// What the program did to tracked memory, as the kernel reported it (with `events`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// `madvise(MADV_DONTNEED/REMOVE)`: the pages read as zeros (or the file) from now on.
    Removed(u64, u64),
    /// `munmap` (or a mapping put over it): no longer tracked.
    Unmapped(u64, u64),
    /// `mremap`: `len` bytes moved from `from` to `to`, still tracked there.
    Moved { from: u64, to: u64, len: u64 },
}

impl Change {
    /// The change a `uffd_msg` reports, if it is one of these.
    pub fn of(m: &uffd::Msg) -> Option<Change> {
        match m.event {
            uffd::EVENT_REMOVE => Some(Change::Removed(m.arg[0], m.arg[1])),
            uffd::EVENT_UNMAP => Some(Change::Unmapped(m.arg[0], m.arg[1])),
            uffd::EVENT_REMAP => Some(Change::Moved { from: m.arg[0], to: m.arg[1], len: m.arg[2] }),
            _ => None,
        }
    }
}

impl Tracker {
    /// Starts tracking `ranges` (page-aligned `[start, end)`, private anonymous memory): from
    /// now on [`Tracker::written`] reports the pages written in them.
    pub fn new(ranges: &[(u64, u64)]) -> Result<Tracker, String> {
        let mut t = Tracker::open(false)?;
        for &(start, end) in ranges {
            t.track(start, end)?;
        }
        Ok(t)
    }

    /// A tracker of nothing yet. With `events`, the kernel also reports `munmap`, `mremap`
    /// and `madvise(MADV_DONTNEED)` of tracked memory ([`Tracker::changes`]); the thread
    /// that makes one waits until they are read, so whoever uses this must read them often.
    pub fn open(events: bool) -> Result<Tracker, String> {
        let flags = (libc::O_CLOEXEC | libc::O_NONBLOCK) as u64 | uffd::USER_MODE_ONLY;
        // SAFETY: userfaultfd(2) takes flags only.
        let fd = unsafe { libc::syscall(uffd::SYS_USERFAULTFD as i64, flags) };
        if fd < 0 {
            return Err(format!("userfaultfd: {}", Errno(errno())));
        }
        let fd = fd as i32;
        let pagemap = match sys::openat(libc::AT_FDCWD, b"/proc/self/pagemap\0", libc::O_RDONLY | libc::O_CLOEXEC, 0) {
            Ok(p) => p as i32,
            Err(e) => {
                let _ = sys::close(fd);
                return Err(format!("cannot open /proc/self/pagemap: {}", Errno(e)));
            }
        };
        let t = Tracker { uffd: fd, pagemap, ranges: Vec::new() };
        let ev = if events { uffd::FEATURE_EVENT_REMAP | uffd::FEATURE_EVENT_REMOVE | uffd::FEATURE_EVENT_UNMAP } else { 0 };
        let mut api = uffd::ApiArg { api: uffd::API, features: uffd::FEATURE_WP_ASYNC | uffd::FEATURE_WP_UNPOPULATED | ev, ioctls: 0 };
        sys::ioctl(fd, uffd::IOC_API, &mut api as *mut uffd::ApiArg as u64).map_err(|e| format!("userfaultfd with asynchronous write-protect: {}", Errno(e)))?;
        Ok(t)
    }

    /// The userfaultfd (readable when changes are waiting).
    pub fn fd(&self) -> i32 {
        self.uffd
    }

    /// Its fds: the userfaultfd and the page map.
    pub fn fds(&self) -> [i32; 2] {
        [self.uffd, self.pagemap]
    }

    /// The ranges tracked.
    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.ranges
    }

    /// Whether all of `[start, end)` is tracked.
    pub fn covers(&self, start: u64, end: u64) -> bool {
        let i = self.ranges.partition_point(|r| r.1 <= start);
        let mut at = start;
        for r in &self.ranges[i..] {
            if r.0 > at {
                return false;
            }
            at = r.1;
            if at >= end {
                return true;
            }
        }
        false
    }

    /// Starts tracking `[start, end)` (a whole mapping, or whole mappings): written pages
    /// show from now on.
    pub fn track(&mut self, start: u64, end: u64) -> Result<(), String> {
        let mut r = uffd::Register { range: uffd::Range { start, len: end - start }, mode: uffd::MODE_WP, ioctls: 0 };
        sys::ioctl(self.uffd, uffd::IOC_REGISTER, &mut r as *mut uffd::Register as u64)
            .map_err(|e| format!("cannot track writes to {start:#x}-{end:#x}: {}", Errno(e)))?;
        let mut w = uffd::Writeprotect { range: uffd::Range { start, len: end - start }, mode: uffd::WRITEPROTECT_MODE_WP };
        if let Err(e) = sys::ioctl(self.uffd, uffd::IOC_WRITEPROTECT, &mut w as *mut uffd::Writeprotect as u64) {
            let mut u = uffd::Range { start, len: end - start };
            let _ = sys::ioctl(self.uffd, uffd::IOC_UNREGISTER, &mut u as *mut uffd::Range as u64);
            return Err(format!("cannot write-protect {start:#x}-{end:#x}: {}", Errno(e)));
        }
        self.add(start, end);
        Ok(())
    }

    fn add(&mut self, start: u64, end: u64) {
        self.cut(start, end);
        let i = self.ranges.partition_point(|r| r.0 < start);
        self.ranges.insert(i, (start, end));
    }

    /// No longer counts `[start, end)` as tracked.
    fn cut(&mut self, start: u64, end: u64) {
        let mut out = Vec::with_capacity(self.ranges.len() + 1);
        for &(a, b) in &self.ranges {
            if b <= start || a >= end {
                out.push((a, b));
                continue;
            }
            if a < start {
                out.push((a, start));
            }
            if b > end {
                out.push((end, b));
            }
        }
        self.ranges = out;
    }

    /// The changes waiting (reading them lets the threads that made them go on), applied to
    /// the ranges tracked.
    pub fn changes(&mut self, out: &mut Vec<Change>) -> Result<(), String> {
        let from = out.len();
        read_changes(self.uffd, out).map_err(|e| format!("reading the userfaultfd: {}", Errno(e)))?;
        for &c in &out[from..] {
            self.apply(c);
        }
        Ok(())
    }

    /// Follows a change in the ranges tracked.
    pub fn apply(&mut self, c: Change) {
        match c {
            Change::Removed(..) => {}
            Change::Unmapped(a, b) => self.cut(a, b),
            Change::Moved { from, to, len } => {
                // Only what was tracked moves tracked.
                let moved: Vec<(u64, u64)> =
                    self.ranges.iter().filter(|r| r.0 < from + len && r.1 > from).map(|r| (r.0.max(from) - from + to, r.1.min(from + len) - from + to)).collect();
                self.cut(from, from + len);
                for (a, b) in moved {
                    self.add(a, b);
                }
            }
        }
    }

    /// Pages of the tracked ranges in `[start, end)` that are in one of the `anyof`
    /// categories and in none of `none` (`PAGEMAP_SCAN` categories); with `protect`, those
    /// reported are write-protected again.
    fn scan(&self, start: u64, end: u64, anyof: u64, none: u64, protect: bool, out: &mut Vec<(u64, u64)>) -> Result<(), String> {
        let mut buf = [uffd::PageRegion::default(); 256];
        let mut at = start;
        while at < end {
            let mut arg = uffd::PmScanArg {
                size: core::mem::size_of::<uffd::PmScanArg>() as u64,
                flags: if protect { uffd::PM_SCAN_WP_MATCHING } else { 0 },
                start: at,
                end,
                vec: buf.as_mut_ptr() as u64,
                vec_len: buf.len() as u64,
                category_inverted: none,
                category_mask: none,
                category_anyof_mask: anyof,
                return_mask: anyof,
                ..Default::default()
            };
            let n = sys::ioctl(self.pagemap, uffd::IOC_PAGEMAP_SCAN, &mut arg as *mut uffd::PmScanArg as u64)
                .map_err(|e| format!("PAGEMAP_SCAN of {at:#x}-{end:#x}: {}", Errno(e)))? as usize;
            for r in &buf[..n] {
                match out.last_mut() {
                    Some(last) if last.1 == r.start => last.1 = r.end,
                    _ => out.push((r.start, r.end)),
                }
            }
            if arg.walk_end <= at {
                break;
            }
            at = arg.walk_end;
        }
        Ok(())
    }

    /// The ranges written since the tracker started or since the last call (merged, in
    /// address order), which are protected again: a write from now on shows in the next call.
    pub fn written(&mut self) -> Result<Vec<(u64, u64)>, String> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        for &(start, end) in &self.ranges {
            self.scan(start, end, uffd::PAGE_IS_WRITTEN, 0, true, &mut out)?;
        }
        Ok(out)
    }

    /// The pages of `[start, end)` (tracked) in memory that a checkpoint saves: all present
    /// ones, or, for a private file mapping (`file_private`), those that are no longer the
    /// file's (written to). Pages swapped out are not among them (a write-protected page
    /// never touched looks swapped out to `PAGEMAP_SCAN`).
    pub fn present(&self, start: u64, end: u64, file_private: bool, out: &mut Vec<(u64, u64)>) -> Result<(), String> {
        self.scan(start, end, uffd::PAGE_IS_PRESENT, if file_private { uffd::PAGE_IS_FILE } else { 0 }, false, out)
    }

    /// The pages of the tracked ranges that map the shared zero page (read, never written).
    pub fn zero_pages(&self) -> Result<Vec<(u64, u64)>, String> {
        let mut out = Vec::new();
        for &(start, end) in &self.ranges {
            self.scan(start, end, uffd::PAGE_IS_PFNZERO, 0, false, &mut out)?;
        }
        Ok(out)
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        // Closing the userfaultfd ends the tracking (and the write-protection with it).
        let _ = sys::close(self.uffd);
        let _ = sys::close(self.pagemap);
    }
}

/// Reads the changes waiting on userfaultfd `fd` (non-blocking) into `out`, as they are.
pub fn read_changes(fd: i32, out: &mut Vec<Change>) -> Result<(), i32> {
    let mut msgs = [uffd::Msg::default(); 16];
    loop {
        let bytes = core::mem::size_of_val(&msgs);
        // SAFETY: viewing the message array as bytes of the same length.
        let buf = unsafe { core::slice::from_raw_parts_mut(msgs.as_mut_ptr() as *mut u8, bytes) };
        let n = match sys::read(fd, buf) {
            Ok(n) => n as usize / core::mem::size_of::<uffd::Msg>(),
            Err(libc::EAGAIN) => return Ok(()),
            Err(libc::EINTR) => continue,
            Err(e) => return Err(e),
        };
        out.extend(msgs[..n].iter().filter_map(Change::of));
        if n < msgs.len() {
            return Ok(());
        }
    }
}

fn errno() -> i32 {
    // SAFETY: __errno_location always returns this thread's errno.
    unsafe { *libc::__errno_location() }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: u64 = 4096;

    #[test]
    fn reports_exactly_the_pages_written_since_the_last_look() {
        let len = 64 * PAGE;
        let a = sys::mmap(0, len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0).unwrap();
        // Some pages were written before tracking starts (they count as clean then).
        for p in [1u64, 2] {
            // SAFETY: inside the mapping just made.
            unsafe { *((a + p * PAGE) as *mut u8) = 1 };
        }
        let mut t = Tracker::new(&[(a, a + len)]).unwrap();
        assert_eq!(t.written().unwrap(), vec![], "nothing written yet");
        let write = |p: u64| {
            // SAFETY: inside the mapping.
            unsafe { core::ptr::write_volatile((a + p * PAGE + 8) as *mut u8, 7) }
        };
        // A page that was populated, and pages never touched before.
        for p in [2u64, 7, 8, 9, 40] {
            write(p);
        }
        assert_eq!(t.written().unwrap(), vec![(a + 2 * PAGE, a + 3 * PAGE), (a + 7 * PAGE, a + 10 * PAGE), (a + 40 * PAGE, a + 41 * PAGE)]);
        assert_eq!(t.written().unwrap(), vec![], "the last look protected them again");
        write(8);
        assert_eq!(t.written().unwrap(), vec![(a + 8 * PAGE, a + 9 * PAGE)]);
        // The kernel's own writes count too: read(2) into a page.
        let mut fds = [0i32; 2];
        // SAFETY: pipe and write/read on our own fds and mapping.
        unsafe {
            libc::pipe(fds.as_mut_ptr());
            libc::write(fds[1], b"x".as_ptr() as *const libc::c_void, 1);
            libc::read(fds[0], (a + 20 * PAGE) as *mut libc::c_void, 1);
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
        assert_eq!(t.written().unwrap(), vec![(a + 20 * PAGE, a + 21 * PAGE)]);
        drop(t);
        // SAFETY: the mapping is ours and unused now.
        unsafe { sys::munmap(a, len).unwrap() };
    }

    #[test]
    fn follows_munmap_mremap_and_dontneed_of_tracked_memory() {
        let len = 32 * PAGE;
        let a = sys::mmap(0, 3 * len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0).unwrap();
        // [a, a+len) tracked; [a+2len, a+3len) a free slot to move into.
        // SAFETY: the last third is ours.
        unsafe { sys::munmap(a + 2 * len, len).unwrap() };
        let mut t = Tracker::open(true).unwrap();
        t.track(a, a + len).unwrap();
        assert!(t.covers(a, a + len) && t.covers(a + PAGE, a + 2 * PAGE) && !t.covers(a, a + len + PAGE));
        // The program's thread waits in each call until the report is read: another thread
        // makes them while this one reads.
        let worker = std::thread::spawn(move || {
            // SAFETY: all inside the mapping made above, which only this test uses.
            unsafe {
                libc::madvise((a + 2 * PAGE) as *mut libc::c_void, PAGE as usize, libc::MADV_DONTNEED);
                libc::munmap((a + 4 * PAGE) as *mut libc::c_void, 2 * PAGE as usize);
                let to = libc::mremap((a + 16 * PAGE) as *mut libc::c_void, 8 * PAGE as usize, 8 * PAGE as usize, libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED, (a + 2 * len) as *mut libc::c_void);
                assert_eq!(to as u64, a + 2 * len);
            }
        });
        let mut seen = Vec::new();
        let started = sys::monotonic_ms();
        while !worker.is_finished() || seen.len() < 3 {
            t.changes(&mut seen).unwrap();
            assert!(sys::monotonic_ms() - started < 10_000, "the reports did not come: {seen:?}");
            std::thread::yield_now();
        }
        worker.join().unwrap();
        t.changes(&mut seen).unwrap();
        assert!(seen.contains(&Change::Removed(a + 2 * PAGE, a + 3 * PAGE)), "{seen:?}");
        assert!(seen.contains(&Change::Unmapped(a + 4 * PAGE, a + 6 * PAGE)), "{seen:?}");
        assert!(seen.contains(&Change::Moved { from: a + 16 * PAGE, to: a + 2 * len, len: 8 * PAGE }), "{seen:?}");
        // What is tracked followed: the unmapped and moved-away parts no longer, the moved
        // part where it went.
        assert_eq!(t.ranges(), &[(a, a + 4 * PAGE), (a + 6 * PAGE, a + 16 * PAGE), (a + 24 * PAGE, a + len), (a + 2 * len, a + 2 * len + 8 * PAGE)]);
        // Still tracked there: a write to the moved pages shows.
        // SAFETY: inside the moved mapping.
        unsafe { core::ptr::write_volatile((a + 2 * len + PAGE) as *mut u8, 1) };
        assert!(t.written().unwrap().contains(&(a + 2 * len + PAGE, a + 2 * len + 2 * PAGE)));
        drop(t);
        // SAFETY: the test's own mappings.
        unsafe {
            libc::munmap(a as *mut libc::c_void, 3 * len as usize);
        }
    }
}
