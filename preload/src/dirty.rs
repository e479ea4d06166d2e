//! Dirty-page tracking, the mechanism live migration's pre-copy rounds stand on (issue 11;
//! not wired into a checkpoint yet): which pages of some ranges the program wrote since the
//! last look, while it runs.
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
    ranges: Vec<(u64, u64)>,
}

impl Tracker {
    /// Starts tracking `ranges` (page-aligned `[start, end)`, private anonymous memory): from
    /// now on [`Tracker::written`] reports the pages written in them.
    pub fn new(ranges: &[(u64, u64)]) -> Result<Tracker, String> {
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
        let t = Tracker { uffd: fd, pagemap, ranges: ranges.to_vec() };
        let mut api = uffd::ApiArg { api: uffd::API, features: uffd::FEATURE_WP_ASYNC | uffd::FEATURE_WP_UNPOPULATED, ioctls: 0 };
        sys::ioctl(fd, uffd::IOC_API, &mut api as *mut uffd::ApiArg as u64).map_err(|e| format!("userfaultfd with asynchronous write-protect: {}", Errno(e)))?;
        for &(start, end) in ranges {
            let mut r = uffd::Register { range: uffd::Range { start, len: end - start }, mode: uffd::MODE_WP, ioctls: 0 };
            sys::ioctl(fd, uffd::IOC_REGISTER, &mut r as *mut uffd::Register as u64)
                .map_err(|e| format!("cannot track writes to {start:#x}-{end:#x}: {}", Errno(e)))?;
            let mut w = uffd::Writeprotect { range: uffd::Range { start, len: end - start }, mode: uffd::WRITEPROTECT_MODE_WP };
            sys::ioctl(fd, uffd::IOC_WRITEPROTECT, &mut w as *mut uffd::Writeprotect as u64)
                .map_err(|e| format!("cannot write-protect {start:#x}-{end:#x}: {}", Errno(e)))?;
        }
        Ok(t)
    }

    /// The ranges written since the tracker started or since the last call (merged, in
    /// address order), which are protected again: a write from now on shows in the next call.
    pub fn written(&mut self) -> Result<Vec<(u64, u64)>, String> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        let mut buf = vec![uffd::PageRegion::default(); 512];
        for &(start, end) in &self.ranges {
            let mut at = start;
            while at < end {
                let mut arg = uffd::PmScanArg {
                    size: core::mem::size_of::<uffd::PmScanArg>() as u64,
                    flags: uffd::PM_SCAN_WP_MATCHING | uffd::PM_SCAN_CHECK_WPASYNC,
                    start: at,
                    end,
                    vec: buf.as_mut_ptr() as u64,
                    vec_len: buf.len() as u64,
                    category_mask: uffd::PAGE_IS_WRITTEN,
                    return_mask: uffd::PAGE_IS_WRITTEN,
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
}
