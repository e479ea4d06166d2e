//! Live migration's pre-copy (`pmig-run --to HOST:PORT --live`): the program's memory goes to
//! the receiver while the program runs, in rounds, each sending what the program wrote since
//! the last one began; then the program is stopped for the pages written in the last round and
//! the rest of its state. See `pmig_image::wire` for the frames.
//!
//! - Writes are seen through `dirty::Tracker` (userfaultfd asynchronous write-protect and
//!   `PAGEMAP_SCAN`), with the kernel's reports of `munmap`, `mremap` and
//!   `madvise(MADV_DONTNEED)` of tracked memory. A thread doing one of those waits until the
//!   report is read: the rounds read them between every frame, and `thread::suspend_all`
//!   reads them while it waits for the threads to stop (through [`drain_while_stopping`]).
//! - Every page sent has a place in the page data ("store offset": one 2 MiB slot per 2 MiB
//!   of address space, in the order first sent) and its CRC-32, kept here; a page sent again
//!   goes to the same place. When the program stops, each run of the image is placed where
//!   its pages are (runs are cut at 2 MiB boundaries) and its checksum is put together from
//!   its pages' (`pmig_image::crc`): no page is read again, here or on the receiver.
//! - A page counts as sent only while it lies in tracked memory and nothing was reported
//!   since: written, removed (`MADV_DONTNEED`), unmapped, moved, or mapping the zero page
//!   when the program stops (a page read after being removed). Everything else of the image
//!   — pages never sent, shared memory (another process may write it), memory that could not
//!   be tracked — is sent while the program is stopped, as without `--live`.
//! - The rounds run in the checkpoint thread while the other threads run: its allocations go
//!   to pmig's arena (`alloc::thread_arena_on`): never in the program's heap, never in an
//!   image, never freed into memory the tracker follows.
//! - Memory is read through `/proc/self/mem` while the program runs (a page unmapped
//!   meanwhile is an error to skip, not a fault).

use crate::dirty::{Change, Tracker};
use crate::errno::Errno;
use crate::{log, memory, sys};
use pmig_image::wire::{self, frame, MAX_FRAME};
use pmig_image::{PageRun, RegionState};
use std::collections::HashMap;

const PAGE: u64 = 4096;
/// Page data is placed in slots of this much address space.
const WINDOW: u64 = 2 << 20;
/// The most rounds before the program is stopped whatever remains.
const MAX_ROUNDS: u32 = 30;
/// Rounds go on until what is left to send takes about this long at the link's rate.
const TARGET_MS: f64 = 20.0;
/// Rounds that bring no real progress (10% less to send than the best so far) before pre-copy
/// gives up: the program writes about as fast as the link carries.
const STALLED_ROUNDS: u32 = 4;

/// A 2 MiB window of address space: where its pages go and the checksums of those sent.
struct Window {
    slot: u64,
    crc: Box<[u32; 512]>,
    valid: [u64; 8],
}

/// Pre-copy state: the tracker, what was sent where, the link.
pub struct Precopy {
    t: Option<Tracker>,
    /// The tracked ranges when tracking ended (only pages in them may count as sent).
    tracked: Vec<(u64, u64)>,
    windows: HashMap<u64, Window>,
    slots: u64,
    /// Ranges whose pages in memory are to be sent whole (newly tracked, moved).
    look: Vec<(u64, u64)>,
    fd: i32,
    lz4: bool,
    mem: i32,
    buf: Vec<u8>,
    cbuf: Vec<u8>,
    changes: Vec<Change>,
    /// Bytes of pages sent while the program ran, and in how many rounds.
    pub sent: u64,
    pub rounds: u32,
    /// Bytes of pages sent while the program was stopped.
    pub sent_stopped: u64,
    /// Bytes on the wire in all.
    pub wire_bytes: u64,
    /// (A test switch, `PMIG_TEST_LINK_MIB_S`: the rounds send at most this many MiB/s, as
    /// over a slow link.)
    cap: Option<(u64, u64)>,
}

/// The tracker's userfaultfd while the threads are being stopped, and the changes read from
/// it meanwhile (only the checkpoint thread touches these).
static STOPPING_FD: core::sync::atomic::AtomicI32 = core::sync::atomic::AtomicI32::new(-1);
struct Stopping(core::cell::UnsafeCell<Vec<Change>>);
// SAFETY: only the checkpoint thread reads or writes the vector (in suspend_all's wait and
// in `Precopy::stop_tracking`, both on that thread).
unsafe impl Sync for Stopping {}
static STOPPING: Stopping = Stopping(core::cell::UnsafeCell::new(Vec::new()));

/// Called by `thread::suspend_all` while it waits for the threads to stop: a thread in
/// `munmap` of tracked memory waits for its report to be read before it can stop. Returns
/// whether a tracker is in use (the caller then waits in short steps).
pub fn drain_while_stopping() -> bool {
    let fd = STOPPING_FD.load(core::sync::atomic::Ordering::Relaxed);
    if fd < 0 {
        return false;
    }
    // SAFETY: see `Stopping`.
    let _ = crate::dirty::read_changes(fd, unsafe { &mut *STOPPING.0.get() });
    true
}

fn mib(b: u64) -> f64 {
    b as f64 / 1048576.0
}

impl Precopy {
    fn new(fd: i32, lz4: bool) -> Result<Precopy, String> {
        let t = Tracker::open(true)?;
        let mem = sys::openat(libc::AT_FDCWD, b"/proc/self/mem\0", libc::O_RDONLY | libc::O_CLOEXEC, 0)
            .map_err(|e| format!("cannot open /proc/self/mem: {}", Errno(e)))? as i32;
        Ok(Precopy {
            t: Some(t),
            tracked: Vec::new(),
            windows: HashMap::new(),
            slots: 0,
            look: Vec::new(),
            fd,
            lz4,
            mem,
            buf: vec![0u8; MAX_FRAME],
            cbuf: if lz4 { vec![0u8; lz4_flex::block::get_maximum_output_size(MAX_FRAME)] } else { Vec::new() },
            changes: Vec::new(),
            sent: 0,
            rounds: 0,
            sent_stopped: 0,
            wire_bytes: 0,
            cap: std::env::var("PMIG_TEST_LINK_MIB_S").ok().and_then(|v| v.parse::<u64>().ok()).map(|c| (c.max(1) << 20, sys::monotonic_ms())),
        })
    }

    fn store_off(&mut self, addr: u64) -> u64 {
        let w = addr / WINDOW;
        let next = self.slots;
        let win = self.windows.entry(w).or_insert_with(|| Window { slot: next, crc: Box::new([0; 512]), valid: [0; 8] });
        if win.slot == next {
            self.slots += 1;
        }
        win.slot * WINDOW + addr % WINDOW
    }

    fn set(&mut self, addr: u64, crc: u32) {
        self.store_off(addr);
        let win = self.windows.get_mut(&(addr / WINDOW)).expect("placed above");
        let k = ((addr % WINDOW) / PAGE) as usize;
        win.crc[k] = crc;
        win.valid[k / 64] |= 1 << (k % 64);
    }

    fn sent_crc(&self, addr: u64) -> Option<u32> {
        let win = self.windows.get(&(addr / WINDOW))?;
        let k = ((addr % WINDOW) / PAGE) as usize;
        (win.valid[k / 64] & (1 << (k % 64)) != 0).then_some(win.crc[k])
    }

    /// Forgets what was sent of `[start, end)`: it is sent again (later round or the stop).
    fn invalidate(&mut self, start: u64, end: u64) {
        let mut w = start / WINDOW;
        while w * WINDOW < end {
            if let Some(win) = self.windows.get_mut(&w) {
                let a = start.max(w * WINDOW);
                let b = end.min((w + 1) * WINDOW);
                for k in ((a % WINDOW) / PAGE)..((b - w * WINDOW).div_ceil(PAGE)) {
                    let k = k as usize;
                    win.valid[k / 64] &= !(1 << (k % 64));
                }
            }
            w += 1;
        }
    }

    fn apply(&mut self, c: Change) {
        match c {
            Change::Removed(a, b) | Change::Unmapped(a, b) => self.invalidate(a, b),
            Change::Moved { from, to, len } => {
                self.invalidate(from, from + len);
                self.invalidate(to, to + len);
                self.look.push((to, to + len));
            }
        }
    }

    /// Reads the kernel's reports of changes to tracked memory (letting the threads that made
    /// them go on) and follows them.
    fn follow_changes(&mut self) -> Result<(), String> {
        let mut changes = core::mem::take(&mut self.changes);
        changes.clear();
        if let Some(t) = self.t.as_mut() {
            t.changes(&mut changes)?;
        }
        for &c in &changes {
            self.apply(c);
        }
        self.changes = changes;
        Ok(())
    }

    /// Starts tracking the private mappings not tracked yet (all of them the first time).
    fn track_new(&mut self, skip: &[(u64, u64)]) -> Result<(), String> {
        let text = sys::read_file_vec(b"/proc/self/maps\0").map_err(|e| format!("cannot read /proc/self/maps: {}", Errno(e)))?;
        let text = String::from_utf8_lossy(&text).into_owned();
        let t = self.t.as_mut().expect("tracking");
        let mut new = Vec::new();
        for m in memory::parse_maps(&text) {
            let special = m.path.starts_with('[') && !(m.path == "[heap]" || m.path == "[stack]" || m.path.starts_with("[anon:"));
            // Reservations (PROT_NONE) are not tracked: write-protecting a range puts a marker
            // in every page table entry of it (page tables for all of it, 2 MiB per GiB), and
            // nothing can be written there without a change of protection, after which the
            // mapping is tracked like a new one. What they hold goes with the program stopped.
            if m.shared || special || m.prot == 0 || skip.iter().any(|&(a, b)| m.start < b && a < m.end) || t.covers(m.start, m.end) {
                continue;
            }
            // Only the parts not tracked yet: protecting a tracked page again would lose
            // the mark of a write not looked at yet.
            let mut at = m.start;
            let mut parts = Vec::new();
            for &(a, b) in t.ranges().iter().filter(|r| r.0 < m.end && r.1 > m.start) {
                if a > at {
                    parts.push((at, a));
                }
                at = at.max(b);
            }
            if at < m.end {
                parts.push((at, m.end));
            }
            for (a, b) in parts {
                // Memory userfaultfd cannot track (another userfaultfd's, special kinds) is
                // sent while the program is stopped.
                match t.track(a, b) {
                    Ok(()) => new.push((a, b)),
                    Err(e) => log::debug!("pre-copy: {e}; sent with the program stopped"),
                }
            }
        }
        for (a, b) in new {
            self.invalidate(a, b);
            self.look.push((a, b));
        }
        Ok(())
    }

    /// What to send this round: pages written since the last look, and the pages in memory of
    /// ranges to look at whole. Merged, in address order.
    fn pages_to_send(&mut self) -> Result<Vec<(u64, u64)>, String> {
        let t = self.t.as_mut().expect("tracking");
        let mut out = t.written()?;
        // Written: what was sent of them is stale.
        for &(a, b) in &out {
            self.invalidate(a, b);
        }
        let t = self.t.as_ref().expect("tracking");
        for (a, b) in core::mem::take(&mut self.look) {
            t.present(a, b, true, &mut out)?;
        }
        out.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(out.len());
        for (a, b) in out {
            match merged.last_mut() {
                Some(l) if a <= l.1 => l.1 = l.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        Ok(merged)
    }

    /// Writes all of `parts` to the receiver. While the program runs (`running`), the socket
    /// is non-blocking and the tracker's reports are read whenever the socket is full.
    fn send(&mut self, parts: &[&[u8]], running: bool) -> Result<(), String> {
        for p in parts {
            let mut b: &[u8] = p;
            while !b.is_empty() {
                match sys::write(self.fd, b) {
                    Ok(n) => b = &b[n as usize..],
                    Err(libc::EINTR) => {}
                    Err(libc::EAGAIN) if running => {
                        let uffd = self.t.as_ref().map_or(-1, |t| t.fd());
                        let mut fds = [libc::pollfd { fd: self.fd, events: libc::POLLOUT, revents: 0 }, libc::pollfd { fd: uffd, events: libc::POLLIN, revents: 0 }];
                        // SAFETY: poll on our own array of two pollfds.
                        let n = unsafe { libc::syscall(libc::SYS_poll, fds.as_mut_ptr(), 2, 60_000) };
                        if n == 0 {
                            return Err("the receiver stopped reading (timed out)".into());
                        }
                        self.follow_changes()?;
                    }
                    Err(libc::EPIPE | libc::ECONNRESET) => return Err("the receiver closed the connection".into()),
                    Err(e) => return Err(format!("sending to the receiver: {}", Errno(e))),
                }
            }
        }
        self.wire_bytes += parts.iter().map(|p| p.len() as u64).sum::<u64>();
        if let (Some((per_s, t0)), true) = (self.cap, running) {
            let due = t0 + self.wire_bytes * 1000 / per_s;
            let now = sys::monotonic_ms();
            if due > now {
                sys::sleep_ms(due - now);
            }
        }
        Ok(())
    }

    /// Sends the pages of `ranges` (page-aligned), each to its place, noting their checksums.
    /// While the program runs, memory is read through /proc/self/mem (a part unmapped
    /// meanwhile is skipped) and the tracker's reports are read between frames. Returns the
    /// bytes of pages sent.
    fn send_ranges(&mut self, ranges: &[(u64, u64)], running: bool) -> Result<u64, String> {
        let mut total = 0u64;
        let all: u64 = ranges.iter().map(|r| r.1 - r.0).sum();
        let t0 = sys::monotonic_ms();
        let mut said = t0;
        for &(start, end) in ranges {
            let mut at = start;
            while at < end {
                let stop = end.min((at / WINDOW + 1) * WINDOW).min(at + MAX_FRAME as u64);
                let len = (stop - at) as usize;
                let mut buf = core::mem::take(&mut self.buf);
                let got = match sys::pread(self.mem, &mut buf[..len], at) {
                    Ok(n) => n as usize / PAGE as usize * PAGE as usize,
                    Err(_) if running => 0,
                    Err(e) => {
                        self.buf = buf;
                        return Err(format!("cannot read memory at {at:#x} through /proc/self/mem: {}", Errno(e)));
                    }
                };
                if got < len && !running {
                    self.buf = buf;
                    return Err(format!("short read of memory at {at:#x}"));
                }
                if got > 0 {
                    let data = &buf[..got];
                    for (i, page) in data.chunks(PAGE as usize).enumerate() {
                        self.set(at + i as u64 * PAGE, crc32fast::hash(page));
                    }
                    let off = self.store_off(at);
                    let compressed = if self.lz4 { lz4_flex::block::compress_into(data, &mut self.cbuf).ok() } else { None };
                    let mut cbuf = core::mem::take(&mut self.cbuf);
                    let r = match compressed {
                        Some(c) if c + 4 < got => {
                            let h = wire::frame_header(frame::PAGES_LZ4, (12 + c) as u32);
                            self.send(&[&h, &off.to_le_bytes(), &(got as u32).to_le_bytes(), &cbuf[..c]], running)
                        }
                        _ => {
                            let h = wire::frame_header(frame::PAGES, (8 + got) as u32);
                            self.send(&[&h, &off.to_le_bytes(), data], running)
                        }
                    };
                    core::mem::swap(&mut self.cbuf, &mut cbuf);
                    self.buf = buf;
                    r?;
                    total += got as u64;
                } else {
                    self.buf = buf;
                }
                if running {
                    self.follow_changes()?;
                    // A round longer than a second (a slow link) says how it goes, each second.
                    let now = sys::monotonic_ms();
                    if now - said >= 1000 {
                        said = now;
                        log::say!(
                            "pre-copy round {}: {:.1} of {:.1} MiB sent, {:.0} MiB/s",
                            self.rounds,
                            mib(total),
                            mib(all),
                            mib(total) * 1000.0 / (now - t0) as f64
                        );
                    }
                }
                // Skip what could not be read (unmapped meanwhile).
                at = if got == 0 { stop } else { at + got as u64 };
            }
        }
        Ok(total)
    }

    /// The rounds, while the program runs; returns when what is left is small enough to send
    /// with the program stopped (or pre-copy stops making progress).
    fn rounds(&mut self, skip: &[(u64, u64)]) -> Result<(), String> {
        let t0 = sys::monotonic_ms();
        let mut rate = 0.0f64; // bytes per ms, measured
        let mut best = u64::MAX;
        let mut stalled = 0;
        let mut last = (0u64, 1u64); // the last round: bytes sent, ms
        loop {
            let round_start = sys::monotonic_ms();
            self.follow_changes()?;
            self.track_new(skip)?;
            let ranges = self.pages_to_send()?;
            let bytes: u64 = ranges.iter().map(|r| r.1 - r.0).sum();
            if self.rounds > 0 {
                // What the program wrote during the last round is what this one would send.
                let est = if rate > 0.0 { bytes as f64 / rate } else { f64::INFINITY };
                log::say!(
                    "pre-copy round {}: {:.1} MiB sent in {} ms ({:.0} MiB/s); the program wrote {:.1} MiB meanwhile ({:.0} MiB/s); expected downtime {:.0} ms",
                    self.rounds,
                    mib(last.0),
                    last.1,
                    rate * 1000.0 / 1048576.0,
                    mib(bytes),
                    mib(bytes) * 1000.0 / last.1 as f64,
                    est
                );
                if bytes < best.saturating_mul(9) / 10 {
                    best = bytes;
                    stalled = 0;
                } else {
                    stalled += 1;
                }
                if est <= TARGET_MS {
                    log::debug!("pre-copy: {} rounds, {:.1} MiB in {} ms", self.rounds, mib(self.sent), sys::monotonic_ms() - t0);
                    return Ok(());
                }
                let why = if self.rounds >= MAX_ROUNDS {
                    format!("{MAX_ROUNDS} rounds")
                } else if stalled >= STALLED_ROUNDS {
                    format!("{STALLED_ROUNDS} rounds without progress")
                } else {
                    String::new()
                };
                if !why.is_empty() {
                    log::say!(
                        "pre-copy does not converge after {why}: the program writes about as fast as the link carries; stopping it for the rest ({:.1} MiB)",
                        mib(bytes)
                    );
                    return Ok(());
                }
            }
            self.rounds += 1;
            let sent = self.send_ranges(&ranges, true)?;
            self.sent += sent;
            let mut r = [0u8; 12];
            r[..4].copy_from_slice(&self.rounds.to_le_bytes());
            r[4..].copy_from_slice(&sent.to_le_bytes());
            self.send(&[&wire::frame_header(frame::ROUND, 12), &r], true)?;
            let ms = (sys::monotonic_ms() - round_start).max(1);
            if sent > 0 {
                rate = sent as f64 / ms as f64;
            }
            last = (sent, ms);
        }
    }

    /// pmig's own fds the pre-copy holds (never the program's: left out of the image).
    pub fn fds(&self) -> Vec<i32> {
        let mut v = vec![self.mem];
        if let Some(t) = &self.t {
            v.extend(t.fds());
        }
        v
    }

    /// Ends tracking once the program is stopped: the last changes and writes are noted (what
    /// they touched is sent now), then the userfaultfd is closed (which takes its marks off
    /// the memory, before the checkpoint reads the page map).
    pub fn stop_tracking(&mut self) -> Result<(), String> {
        let t0 = sys::monotonic_ms();
        STOPPING_FD.store(-1, core::sync::atomic::Ordering::Relaxed);
        // SAFETY: see `Stopping`.
        let early = core::mem::take(unsafe { &mut *STOPPING.0.get() });
        for c in early {
            if let Some(t) = self.t.as_mut() {
                t.apply(c);
            }
            self.apply(c);
        }
        self.follow_changes()?;
        let t = self.t.as_mut().expect("tracking");
        let written = t.written()?;
        let zero = t.zero_pages()?;
        self.tracked = t.ranges().to_vec();
        let t1 = sys::monotonic_ms();
        self.t = None;
        let t2 = sys::monotonic_ms();
        let n = written.len() + zero.len();
        for (a, b) in written.into_iter().chain(zero) {
            self.invalidate(a, b);
        }
        log::debug!("pre-copy: last writes read in {} ms ({n} ranges), tracking ended in {} ms", t1 - t0, t2 - t1);
        Ok(())
    }

    /// With the program stopped and its regions collected: places every page run where its
    /// pages are (cut at 2 MiB), sends the pages not sent yet, and returns the runs'
    /// checksums and the page data's length.
    pub fn place_and_send(&mut self, regions: &mut [RegionState]) -> Result<(Vec<u32>, u64), String> {
        let _ = sys::fcntl(self.fd, libc::F_SETFL, 0);
        let mut missing: Vec<(u64, u64)> = Vec::new();
        let tracked = core::mem::take(&mut self.tracked);
        let in_tracked = |a: u64| {
            let i = tracked.partition_point(|r| r.1 <= a);
            tracked.get(i).is_some_and(|r| r.0 <= a)
        };
        for r in regions.iter_mut() {
            let mut runs = Vec::with_capacity(r.runs.len());
            for run in &r.runs {
                let mut at = run.addr;
                let end = run.addr + run.len;
                while at < end {
                    let stop = end.min((at / WINDOW + 1) * WINDOW);
                    runs.push(PageRun { addr: at, len: stop - at, data_off: self.store_off(at) });
                    let mut p = at;
                    while p < stop {
                        if !in_tracked(p) || self.sent_crc(p).is_none() {
                            match missing.last_mut() {
                                Some(l) if l.1 == p => l.1 = p + PAGE,
                                _ => missing.push((p, p + PAGE)),
                            }
                        }
                        p += PAGE;
                    }
                    at = stop;
                }
            }
            r.runs = runs;
        }
        log::debug!(
            "pre-copy: {} range(s) of pages not sent yet or changed since, sent now: {:x?}{}",
            missing.len(),
            &missing[..missing.len().min(8)],
            if missing.len() > 8 { " ..." } else { "" }
        );
        self.sent_stopped = self.send_ranges(&missing, false)?;
        let mut crcs = Vec::new();
        for run in regions.iter().flat_map(|r| r.runs.iter()) {
            let mut crc = 0u32;
            let mut p = run.addr;
            while p < run.addr + run.len {
                let c = self.sent_crc(p).ok_or_else(|| format!("pre-copy: the page at {p:#x} was neither sent nor read"))?;
                crc = pmig_image::crc::append_page(crc, c);
                p += PAGE;
            }
            crcs.push(crc);
        }
        Ok((crcs, self.slots * WINDOW))
    }

    /// Sends `bytes` to be put at `off` of the image (header, manifest, trailer, footer).
    pub fn send_at(&mut self, mut off: u64, mut bytes: &[u8]) -> Result<(), String> {
        while !bytes.is_empty() {
            let n = bytes.len().min(MAX_FRAME);
            self.send(&[&wire::frame_header(frame::AT, (8 + n) as u32), &off.to_le_bytes(), &bytes[..n]], false)?;
            off += n as u64;
            bytes = &bytes[n..];
        }
        Ok(())
    }

    /// Ends the stream.
    pub fn end(&mut self) -> Result<(), String> {
        self.send(&[&wire::frame_header(frame::END, 0)], false)
    }
}

impl Drop for Precopy {
    fn drop(&mut self) {
        STOPPING_FD.store(-1, core::sync::atomic::Ordering::Relaxed);
        let _ = sys::close(self.mem);
        let _ = sys::fcntl(self.fd, libc::F_SETFL, 0);
    }
}

/// Runs the pre-copy rounds to the connected receiver (`fd`), the program running. On
/// success, the tracker's reports are read by `thread::suspend_all` from now on.
pub fn run(fd: i32, lz4: bool, skip: &[(u64, u64)]) -> Result<Precopy, String> {
    let mut p = Precopy::new(fd, lz4)?;
    sys::fcntl(fd, libc::F_SETFL, libc::O_NONBLOCK as u64).map_err(|e| format!("fcntl: {}", Errno(e)))?;
    p.rounds(skip)?;
    STOPPING_FD.store(p.t.as_ref().map_or(-1, |t| t.fd()), core::sync::atomic::Ordering::Relaxed);
    Ok(p)
}
