//! Memory: which regions the process has, which of their pages are populated, and writing
//! those pages to the image.
//!
//! Runs in the checkpoint thread with every other thread parked, allocating only from the
//! arena, or in a background checkpoint's writer (`snapshot`: a copy of that process, under
//! the same rules), which finds the populated pages of its copy ([`fill_runs`]) and writes
//! them. The truth comes from `/proc/self/maps` and `/proc/self/pagemap`: a page is saved
//! when it is present or swapped, except pages of private file mappings still shared with the
//! page cache (pagemap bit 61), which come back from the file, and shared file mappings, whose
//! file holds them.

use crate::errno::Errno;
use crate::sys;
use pmig_image::{FileIdent, ObjectState, PageRun, RegionKind, RegionState, VdsoState};
use core::sync::atomic::{AtomicBool, Ordering::Relaxed};

/// Set in a process restored lazily (and inherited by its children) until its memory is all
/// in: pmig-resume's pager puts pages in place through a userfaultfd that shows as `um` in
/// smaps' `VmFlags`, and a page not in yet reads as absent from pagemap.
pub static LAZY: AtomicBool = AtomicBool::new(false);

/// Before a checkpoint of a lazily restored process: waits until the pager has put every
/// page in place (no mapping is registered with its userfaultfd any more), so that the dump
/// sees all of the program's memory. Fails after `limit_ms`.
pub fn wait_paged(limit_ms: u64) -> Result<(), String> {
    if !LAZY.load(Relaxed) {
        return Ok(());
    }
    let t0 = sys::monotonic_ms();
    loop {
        let smaps = sys::read_file_vec(b"/proc/self/smaps\0").map_err(|e| format!("cannot read /proc/self/smaps: {}", Errno(e)))?;
        let registered = smaps
            .split(|&c| c == b'\n')
            .filter(|l| l.starts_with(b"VmFlags:"))
            .any(|l| l.split(|&c| c == b' ').any(|w| w == b"um"));
        if !registered {
            LAZY.store(false, Relaxed);
            crate::log::debug!("lazily restored memory all in (waited {} ms)", sys::monotonic_ms() - t0);
            return Ok(());
        }
        if sys::monotonic_ms() - t0 > limit_ms {
            return Err(format!("the memory of this lazily restored process is still coming in after {} s (is pmig-resume's pager stopped?)", limit_ms / 1000));
        }
        sys::sleep_ms(5);
    }
}

const PAGE: u64 = 4096;
const PM_PRESENT: u64 = 1 << 63;
const PM_SWAPPED: u64 = 1 << 62;
const PM_FILE: u64 = 1 << 61;

/// One line of `/proc/self/maps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapLine {
    pub start: u64,
    pub end: u64,
    pub prot: u32,
    pub shared: bool,
    pub offset: u64,
    pub inode: u64,
    pub path: String,
}

/// Parses `/proc/self/maps` text.
pub fn parse_maps(text: &str) -> Vec<MapLine> {
    text.lines().filter_map(parse_map_line).collect()
}

fn parse_map_line(line: &str) -> Option<MapLine> {
    let mut it = line.splitn(6, ' ');
    let range = it.next()?;
    let perms = it.next()?.as_bytes();
    let offset = u64::from_str_radix(it.next()?, 16).ok()?;
    let _dev = it.next()?;
    let inode = it.next()?.parse().ok()?;
    let path = it.next().unwrap_or("").trim_start().to_string();
    let (s, e) = range.split_once('-')?;
    if perms.len() < 4 {
        return None;
    }
    let prot = (perms[0] == b'r') as u32 | ((perms[1] == b'w') as u32) << 1 | ((perms[2] == b'x') as u32) << 2;
    Some(MapLine {
        start: u64::from_str_radix(s, 16).ok()?,
        end: u64::from_str_radix(e, 16).ok()?,
        prot,
        shared: perms[3] == b's',
        offset,
        inode,
        path,
    })
}

/// Identity of the file at `path`.
pub fn file_ident(path: &str) -> Result<FileIdent, i32> {
    // SAFETY: an all-zero `stat` is a valid value of this plain C struct.
    let mut st: libc::stat = unsafe { core::mem::zeroed() };
    sys::fstatat(libc::AT_FDCWD, &sys::cstr(path), &mut st, 0)?;
    Ok(FileIdent {
        dev: st.st_dev,
        ino: st.st_ino,
        size: st.st_size as u64,
        mtime_ns: st.st_mtime as i128 * 1_000_000_000 + st.st_mtime_nsec as i128,
        sha256: [0; 32],
    })
}

/// What the dump found: regions to restore (with their page runs), the vdso block, and the
/// total length of the page data.
pub struct Layout {
    pub regions: Vec<RegionState>,
    pub objects: Vec<ObjectState>,
    pub vdso: VdsoState,
    pub pages_len: u64,
    /// Regions whose populated pages are still to be found in the pagemap ([`fill_runs`]):
    /// `(index in regions, whether a private file mapping)`. Empty unless asked for.
    pub pending: Vec<(usize, bool)>,
}

/// What `/proc/self/smaps` says outside `skip`: every mapping's range, and the flags of those
/// that have any a program sets.
#[derive(Default)]
pub struct Flags {
    pub ranges: Vec<(u64, u64)>,
    pub advice: Vec<pmig_image::RegionAdvice>,
}

/// Reads [`Flags`] (smaps walks the page tables for its counts: ~13 ms per GiB here).
pub fn flags(skip: &[(u64, u64)]) -> Flags {
    let text = sys::read_file_vec(b"/proc/self/smaps\0").unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let mut out = Flags::default();
    let mut range: Option<(u64, u64)> = None;
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("VmFlags:") {
            let flags = pmig_image::RegionAdvice::parse_vmflags(v);
            if let Some((start, end)) = range.take() {
                if !skip.iter().any(|&(a, b)| start < b && a < end) {
                    out.ranges.push((start, end));
                    if flags != 0 {
                        out.advice.push(pmig_image::RegionAdvice { start, end, flags });
                    }
                }
            }
        } else if let Some((a, rest)) = line.split_once('-') {
            // A mapping's first line: "start-end perms ...".
            if let (Ok(start), Some(end)) = (u64::from_str_radix(a, 16), rest.split_whitespace().next()) {
                if let Ok(end) = u64::from_str_radix(end, 16) {
                    range = Some((start, end));
                }
            }
        }
    }
    out
}

/// The regions outside `skip` with flags a program sets (smaps `VmFlags`).
pub fn advice(skip: &[(u64, u64)]) -> Vec<pmig_image::RegionAdvice> {
    flags(skip).advice
}

/// Every mapping's range outside `skip`, from `/proc/self/maps` (no page-table walk).
pub fn map_ranges(skip: &[(u64, u64)]) -> Result<Vec<(u64, u64)>, i32> {
    let text = sys::read_file_vec(b"/proc/self/maps\0")?;
    let text = String::from_utf8_lossy(&text);
    Ok(parse_maps(&text).iter().map(|m| (m.start, m.end)).filter(|&(s, e)| !skip.iter().any(|&(a, b)| s < b && a < e)).collect())
}

/// In a snapshot writer: checks that its mappings are what `before` (smaps read by the
/// parent before it stopped the threads) says they were — the same flags but for `mlock`'s,
/// which a fork does not copy — and that every region whose pages it is to find
/// (`pending`) is there. A program that changed them in between (`madvise`, `mlock`)
/// fails the checkpoint instead of leaving a region out of the image.
pub fn check_flags(before: &Flags, skip: &[(u64, u64)], regions: &[RegionState], pending: &[(usize, bool)]) -> Result<(), String> {
    use pmig_image::{ADVICE_DONTFORK, ADVICE_LOCKED, ADVICE_LOCKONFAULT};
    let now = flags(skip);
    let key = |a: &pmig_image::RegionAdvice| (a.start, a.end, a.flags & !(ADVICE_LOCKED | ADVICE_LOCKONFAULT));
    let mut was: Vec<_> = before.advice.iter().filter(|a| a.flags & ADVICE_DONTFORK == 0).map(key).filter(|k| k.2 != 0).collect();
    let mut is: Vec<_> = now.advice.iter().map(key).filter(|k| k.2 != 0).collect();
    was.sort_unstable();
    is.sort_unstable();
    let missing = pending.iter().map(|&(i, _)| &regions[i]).find(|r| !now.ranges.iter().any(|&(a, b)| a <= r.start && r.end <= b));
    if was != is || missing.is_some() {
        return Err("the program changed its mappings' flags (madvise, mlock) as the checkpoint began; try again".into());
    }
    Ok(())
}

/// Gives regions their flags back (after the engine mapped them): advice, locks. What
/// cannot be (a lock over `RLIMIT_MEMLOCK`) is said in debug.
pub fn restore_advice(advice: &[pmig_image::RegionAdvice]) {
    use pmig_image::*;
    const MADV_WIPEONFORK: i32 = 18;
    for a in advice {
        let len = a.end - a.start;
        let mut todo: Vec<i32> = Vec::new();
        for (bit, adv) in [
            (ADVICE_DONTFORK, libc::MADV_DONTFORK),
            (ADVICE_DONTDUMP, libc::MADV_DONTDUMP),
            (ADVICE_HUGEPAGE, libc::MADV_HUGEPAGE),
            (ADVICE_NOHUGEPAGE, libc::MADV_NOHUGEPAGE),
            (ADVICE_WIPEONFORK, MADV_WIPEONFORK),
            (ADVICE_RANDOM, libc::MADV_RANDOM),
            (ADVICE_SEQUENTIAL, libc::MADV_SEQUENTIAL),
        ] {
            if a.flags & bit != 0 {
                todo.push(adv);
            }
        }
        for adv in todo {
            if let Err(e) = sys::raw(libc::SYS_madvise, &[a.start, len, adv as u64]) {
                crate::log::debug!("madvise({:#x}, {len}, {adv}) again: {}", a.start, Errno(e));
            }
        }
        if a.flags & (ADVICE_LOCKED | ADVICE_LOCKONFAULT) != 0 {
            let onfault = u64::from(a.flags & ADVICE_LOCKONFAULT != 0);
            if let Err(e) = sys::raw(libc::SYS_mlock2, &[a.start, len, onfault]) {
                crate::log::debug!("mlock({:#x}, {len}) again: {}", a.start, Errno(e));
            }
        }
    }
}

/// `defer`: leave the pagemap scan of private regions to [`fill_runs`] (a snapshot child does
/// it in its copy of the address space), except in the ranges `defer` lists (which a child
/// would not see as they are: `MADV_DONTFORK`, `MADV_WIPEONFORK`).
pub fn collect(skip: &[(u64, u64)], defer: Option<&[(u64, u64)]>) -> Result<Layout, String> {
    let text = sys::read_file_vec(b"/proc/self/maps\0").map_err(|e| format!("cannot read /proc/self/maps: {}", Errno(e)))?;
    let text = String::from_utf8_lossy(&text).into_owned();
    let pagemap = sys::openat(libc::AT_FDCWD, b"/proc/self/pagemap\0", libc::O_RDONLY | libc::O_CLOEXEC, 0)
        .map_err(|e| format!("cannot open /proc/self/pagemap: {}", Errno(e)))? as i32;
    let r = collect_from(&parse_maps(&text), skip, pagemap, &held_deleted(), defer);
    let _ = sys::close(pagemap);
    r
}

/// Finds the populated pages of the regions [`collect`] left pending (`pending`, reading this
/// process's pagemap), then numbers every run's place in the page data again, in region
/// order; returns the length of the page data.
pub fn fill_runs(regions: &mut [RegionState], pending: &[(usize, bool)]) -> Result<u64, String> {
    if !pending.is_empty() {
        let pagemap = sys::openat(libc::AT_FDCWD, b"/proc/self/pagemap\0", libc::O_RDONLY | libc::O_CLOEXEC, 0)
            .map_err(|e| format!("cannot open /proc/self/pagemap: {}", Errno(e)))? as i32;
        let mut entries = vec![0u64; 64 * 1024];
        let mut scratch = 0u64;
        let mut r = Ok(());
        for &(i, file_private) in pending {
            let reg = &mut regions[i];
            match populated_runs(reg.start, reg.end, file_private, pagemap, &mut entries, &mut scratch) {
                Ok(runs) => reg.runs = runs,
                Err(e) => {
                    r = Err(format!("cannot read pagemap: {}", Errno(e)));
                    break;
                }
            }
        }
        let _ = sys::close(pagemap);
        r?;
    }
    let mut off = 0u64;
    for run in regions.iter_mut().flat_map(|r| r.runs.iter_mut()) {
        run.data_off = off;
        off += run.len;
    }
    Ok(off)
}

/// The inodes of deleted files and memfds the process holds open (their content is saved
/// with the fd, so a private mapping of one can map it again).
fn held_deleted() -> Vec<u64> {
    let mut out = Vec::new();
    let _ = sys::for_each_numbered_entry(b"/proc/self/fd\0", |fd, dir| {
        // SAFETY: an all-zero `stat` is a valid value of this plain C struct.
        let mut st: libc::stat = unsafe { core::mem::zeroed() };
        if fd != dir && sys::fstat(fd, &mut st).is_ok() && st.st_mode & libc::S_IFMT == libc::S_IFREG && st.st_nlink == 0 {
            out.push(st.st_ino);
        }
    });
    out
}

/// `defer`: see [`collect`].
fn collect_from(maps: &[MapLine], skip: &[(u64, u64)], pagemap: i32, held: &[u64], defer: Option<&[(u64, u64)]>) -> Result<Layout, String> {
    let deferred = |m: &MapLine| defer.is_some_and(|eager| !eager.iter().any(|&(a, b)| m.start < b && a < m.end));
    let mut pending = Vec::new();
    let mut regions = Vec::new();
    let mut objects: Vec<ObjectState> = Vec::new();
    let mut vdso = VdsoState::default();
    let mut data_off = 0u64;
    let mut entries = vec![0u64; 64 * 1024];
    for m in maps.iter().flat_map(|m| clip(m, skip)) {
        let m = &m;
        let kind = match m.path.as_str() {
            "[vvar]" | "[vvar_vclock]" | "[vdso]" => {
                vdso.parts.push((m.path.clone(), m.start, m.end));
                if m.path == "[vdso]" {
                    let len = (m.end - m.start) as usize;
                    let mut bytes = vec![0u8; len];
                    // SAFETY: the vdso is mapped readable for its whole length.
                    unsafe { core::ptr::copy_nonoverlapping(m.start as *const u8, bytes.as_mut_ptr(), len) };
                    vdso.vdso_bytes = bytes;
                }
                continue;
            }
            "[vsyscall]" => continue,
            "[stack]" => RegionKind::Stack,
            "[heap]" => RegionKind::Heap,
            "" => RegionKind::Anon,
            p if p.starts_with("[anon:") => RegionKind::Anon,
            // MAP_SHARED anonymous memory is a shmem object (its inode names it: a process tree's
            // members share it); a private /dev/zero mapping is anonymous memory.
            "/dev/zero (deleted)" if !m.shared => RegionKind::Anon,
            p if p.starts_with('[') => return Err(format!("the mapping {p} at {:#x} is not supported yet", m.start)),
            p if p.starts_with("/SYSV") => {
                let Some((key, size, mode)) = sysv_segment(m.inode as i32) else {
                    return Err(format!("the SysV shared memory segment {} at {:#x} is not in /proc/sysvipc/shm", m.inode, m.start));
                };
                let runs = resident_runs(m.start, m.end, &mut data_off).map_err(|e| format!("mincore: {}", Errno(e)))?;
                let kind = RegionKind::SysvShm { key, shmid: m.inode as i32, size, mode };
                regions.push(RegionState { start: m.start, end: m.end, prot: m.prot, shared: true, kind, runs });
                continue;
            }
            p if p.ends_with(" (deleted)") && !m.shared && held.contains(&m.inode) => {
                // A private mapping of a deleted file (or memfd) an fd holds: the file is made
                // again (from the fd's saved content) and mapped privately, with the pages the
                // process changed on top: still tied to the file, as before.
                let object = object_of(&mut objects, m, p);
                let runs = if deferred(m) {
                    pending.push((regions.len(), true));
                    Vec::new()
                } else {
                    populated_runs(m.start, m.end, true, pagemap, &mut entries, &mut data_off)
                        .map_err(|e| format!("cannot read pagemap: {}", Errno(e)))?
                };
                let kind = RegionKind::SharedObject { object: object as u32, offset: m.offset };
                regions.push(RegionState { start: m.start, end: m.end, prot: m.prot, shared: false, kind, runs });
                continue;
            }
            p if p.ends_with(" (deleted)") && !m.shared => {
                // Its file is gone (and no fd holds it): every page comes from the image, as
                // anonymous memory.
                let runs = all_runs(m.start, m.end, &mut data_off);
                regions.push(RegionState { start: m.start, end: m.end, prot: m.prot, shared: false, kind: RegionKind::Anon, runs });
                continue;
            }
            p if p.ends_with(" (deleted)") => {
                let object = object_of(&mut objects, m, p);
                let runs = resident_runs(m.start, m.end, &mut data_off).map_err(|e| format!("mincore: {}", Errno(e)))?;
                let kind = RegionKind::SharedObject { object: object as u32, offset: m.offset };
                regions.push(RegionState { start: m.start, end: m.end, prot: m.prot, shared: true, kind, runs });
                continue;
            }
            p => {
                let ident = file_ident(p).map_err(|e| format!("cannot stat mapped file {p}: {}", Errno(e)))?;
                if ident.ino != m.inode {
                    return Err(format!("the mapped file {p} was replaced after it was mapped"));
                }
                RegionKind::File { path: p.to_string(), offset: m.offset, ident }
            }
        };
        let is_file = matches!(kind, RegionKind::File { .. });
        let runs = if is_file && m.shared {
            Vec::new()
        } else if deferred(m) {
            pending.push((regions.len(), is_file));
            Vec::new()
        } else {
            populated_runs(m.start, m.end, is_file, pagemap, &mut entries, &mut data_off)
                .map_err(|e| format!("cannot read pagemap: {}", Errno(e)))?
        };
        regions.push(RegionState { start: m.start, end: m.end, prot: m.prot, shared: m.shared, kind, runs });
    }
    Ok(Layout { regions, objects, vdso, pages_len: data_off, pending })
}

/// The index of the object (a deleted file's or memfd's inode) mapping `m` of `path` maps,
/// added when new, made large enough for the mapping.
fn object_of(objects: &mut Vec<ObjectState>, m: &MapLine, path: &str) -> usize {
    let i = match objects.iter().position(|o| o.ino == m.inode) {
        Some(i) => i,
        None => {
            let name = path.trim_end_matches(" (deleted)").trim_start_matches("/memfd:").to_string();
            objects.push(ObjectState { ino: m.inode, name, size: 0 });
            objects.len() - 1
        }
    };
    let o = &mut objects[i];
    o.size = o.size.max(m.offset + (m.end - m.start));
    i
}

/// `(key, size, mode)` of SysV shared memory segment `shmid`, from `/proc/sysvipc/shm` (the
/// inode of a segment's mapping is its id).
fn sysv_segment(shmid: i32) -> Option<(i32, u64, u32)> {
    let text = sys::read_file_vec(b"/proc/sysvipc/shm\0").ok()?;
    let text = String::from_utf8_lossy(&text).into_owned();
    text.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() < 4 || f[1].parse::<i32>().ok()? != shmid {
            return None;
        }
        Some((f[0].parse().ok()?, f[3].parse().ok()?, u32::from_str_radix(f[2], 8).ok()? & 0o1777))
    })
}

/// Every page of `[start, end)` as one run.
/// The longest page run an image holds: runs end at every multiple of this address, so that
/// a lazy restore's pager checks and copies at most this much for one first touch.
pub const RUN_MAX: u64 = 1 << 20;

/// Adds the page at `addr` (the next one in the page data) to `runs`.
fn add_page(runs: &mut Vec<PageRun>, addr: u64, data_off: &mut u64) {
    match runs.last_mut() {
        Some(r) if r.addr + r.len == addr && !addr.is_multiple_of(RUN_MAX) => r.len += PAGE,
        _ => runs.push(PageRun { addr, len: PAGE, data_off: *data_off }),
    }
    *data_off += PAGE;
}

fn all_runs(start: u64, end: u64, data_off: &mut u64) -> Vec<PageRun> {
    let mut runs = Vec::new();
    let mut addr = start;
    while addr < end {
        let to = ((addr / RUN_MAX + 1) * RUN_MAX).min(end);
        runs.push(PageRun { addr, len: to - addr, data_off: *data_off });
        *data_off += to - addr;
        addr = to;
    }
    runs
}

/// The pages of a shared mapping resident in its object (`mincore(2)`), as runs: pages of the
/// object the program wrote through any fd or mapping, without faulting in the others.
fn resident_runs(start: u64, end: u64, data_off: &mut u64) -> Result<Vec<PageRun>, i32> {
    let mut runs: Vec<PageRun> = Vec::new();
    let mut vec = vec![0u8; 64 * 1024];
    let mut addr = start;
    while addr < end {
        let len = (end - addr).min(vec.len() as u64 * PAGE);
        sys::mincore(addr, len, &mut vec)?;
        for (i, &v) in vec[..(len / PAGE) as usize].iter().enumerate() {
            if v & 1 == 0 {
                continue;
            }
            add_page(&mut runs, addr + i as u64 * PAGE, data_off);
        }
        addr += len;
    }
    Ok(runs)
}

/// The parts of `m` outside every `skip` range (the kernel may merge pmig's own mappings with
/// a neighbour of the same kind into one line of maps).
fn clip(m: &MapLine, skip: &[(u64, u64)]) -> Vec<MapLine> {
    let mut parts = vec![m.clone()];
    for &(s, e) in skip {
        let mut next = Vec::new();
        for p in parts {
            if p.end <= s || p.start >= e {
                next.push(p);
                continue;
            }
            if p.start < s {
                next.push(MapLine { end: s, ..p.clone() });
            }
            if p.end > e {
                let offset = if p.inode != 0 { p.offset + (e - p.start) } else { p.offset };
                next.push(MapLine { start: e, offset, ..p.clone() });
            }
        }
        parts = next;
    }
    parts
}

fn populated_runs(
    start: u64,
    end: u64,
    file_private: bool,
    pagemap: i32,
    entries: &mut [u64],
    data_off: &mut u64,
) -> Result<Vec<PageRun>, i32> {
    let mut runs: Vec<PageRun> = Vec::new();
    let mut page = start / PAGE;
    let last = end / PAGE;
    while page < last {
        let n = ((last - page) as usize).min(entries.len());
        // SAFETY: viewing a u64 slice as bytes of the same length is always valid.
        let bytes = unsafe { core::slice::from_raw_parts_mut(entries.as_mut_ptr() as *mut u8, n * 8) };
        let got = sys::pread(pagemap, bytes, page * 8)? as usize / 8;
        if got == 0 {
            return Err(libc::EIO);
        }
        for (i, &e) in entries[..got].iter().enumerate() {
            let want = if file_private {
                (e & PM_PRESENT != 0 && e & PM_FILE == 0) || e & PM_SWAPPED != 0
            } else {
                e & (PM_PRESENT | PM_SWAPPED) != 0
            };
            if !want {
                continue;
            }
            add_page(&mut runs, (page + i as u64) * PAGE, data_off);
        }
        page += got as u64;
    }
    Ok(runs)
}

/// Page runs copied aside while the other threads are parked, for a snapshot child that would
/// not see them as they were: pages of `MAP_SHARED` memory (the program goes on changing
/// them, and the child's mapping is the same memory), of `MADV_DONTFORK` regions (absent in
/// the child) and of `MADV_WIPEONFORK` ones (zeros there). Kept in the arena, which the
/// child inherits as a private copy.
#[derive(Default)]
pub struct Copies {
    /// `(address, length, offset in buf)`, sorted by address.
    runs: Vec<(u64, u64, usize)>,
    buf: Vec<u8>,
}

impl Copies {
    /// Nothing copied: every page is read where it is.
    pub fn none() -> Copies {
        Copies::default()
    }

    /// Copies the runs of every region that is shared or meets one of `ranges`. Fails (and
    /// copies nothing) when they come to more than `limit` bytes.
    pub fn take(regions: &[RegionState], ranges: &[(u64, u64)], limit: u64) -> Result<Copies, String> {
        let wanted = |r: &&RegionState| r.shared || ranges.iter().any(|&(a, b)| r.start < b && a < r.end);
        let total: u64 = regions.iter().filter(wanted).flat_map(|r| r.runs.iter()).map(|run| run.len).sum();
        if total > limit {
            return Err(format!("{} MiB of shared or fork-excluded memory to copy aside (more than {} MiB)", total >> 20, limit >> 20));
        }
        let mut c = Copies { runs: Vec::new(), buf: Vec::with_capacity(total as usize) };
        let mut mem = -1;
        let r = (|| {
            for r in regions.iter().filter(wanted) {
                for run in &r.runs {
                    let at = c.buf.len();
                    if r.prot & 1 != 0 {
                        // SAFETY: the run lies in a readable mapping of this process that
                        // nothing unmaps while the other threads are parked.
                        c.buf.extend_from_slice(unsafe { core::slice::from_raw_parts(run.addr as *const u8, run.len as usize) });
                    } else {
                        if mem < 0 {
                            mem = sys::openat(libc::AT_FDCWD, b"/proc/self/mem\0", libc::O_RDONLY | libc::O_CLOEXEC, 0)
                                .map_err(|e| format!("cannot open /proc/self/mem: {}", Errno(e)))? as i32;
                        }
                        c.buf.resize(at + run.len as usize, 0);
                        let got = sys::pread(mem, &mut c.buf[at..], run.addr)
                            .map_err(|e| format!("cannot read memory at {:#x} through /proc/self/mem: {}", run.addr, Errno(e)))?;
                        if got != run.len {
                            return Err(format!("short read of memory at {:#x}", run.addr));
                        }
                    }
                    c.runs.push((run.addr, run.len, at));
                }
            }
            Ok(())
        })();
        if mem >= 0 {
            let _ = sys::close(mem);
        }
        r?;
        c.runs.sort_unstable_by_key(|r| r.0);
        Ok(c)
    }

    /// Bytes copied aside.
    pub fn bytes(&self) -> u64 {
        self.buf.len() as u64
    }

    /// The copy of the run at `addr` of `len` bytes, if one was taken.
    fn find(&self, addr: u64, len: u64) -> Option<&[u8]> {
        let i = self.runs.binary_search_by_key(&addr, |r| r.0).ok()?;
        let (_, l, at) = self.runs[i];
        (l == len).then(|| &self.buf[at..at + l as usize])
    }
}

/// Writes every run's pages to `fd` through a bounce buffer (so the checksum covers exactly
/// the bytes written, even for the checkpoint thread's own stack), returning a crc per run.
/// Runs in `copies` are written from there; unreadable regions are read through
/// `/proc/self/mem`.
pub fn write_pages(out: &mut dyn crate::checkpoint::Sink, regions: &[RegionState], copies: &Copies) -> Result<Vec<u32>, String> {
    let mut crcs = Vec::new();
    let mut buf = vec![0u8; 4 << 20];
    let mem = sys::openat(libc::AT_FDCWD, b"/proc/self/mem\0", libc::O_RDONLY | libc::O_CLOEXEC, 0)
        .map_err(|e| format!("cannot open /proc/self/mem: {}", Errno(e)))? as i32;
    let r = (|| {
        for r in regions {
            let readable = r.prot & 1 != 0;
            for run in &r.runs {
                if let Some(copy) = copies.find(run.addr, run.len) {
                    crcs.push(crc32fast::hash(copy));
                    out.put(copy)?;
                    continue;
                }
                let mut h = crc32fast::Hasher::new();
                let mut done = 0u64;
                while done < run.len {
                    let n = (run.len - done).min(buf.len() as u64) as usize;
                    let src = run.addr + done;
                    if readable {
                        // SAFETY: [src, src+n) lies in a readable mapping of this process that
                        // nothing unmaps while the other threads are parked (or, in a
                        // snapshot child, that nothing else uses).
                        unsafe { core::ptr::copy_nonoverlapping(src as *const u8, buf.as_mut_ptr(), n) };
                    } else {
                        let got = sys::pread(mem, &mut buf[..n], src).map_err(|e| {
                            format!("cannot read memory at {src:#x} through /proc/self/mem: {}", Errno(e))
                        })?;
                        if got as usize != n {
                            return Err(format!("short read of memory at {src:#x}"));
                        }
                    }
                    h.update(&buf[..n]);
                    out.put(&buf[..n])?;
                    done += n as u64;
                }
                crcs.push(h.finalize());
            }
        }
        Ok(crcs)
    })();
    let _ = sys::close(mem);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_maps_lines() {
        let m = parse_maps(
            "55d0c0a00000-55d0c0a21000 rw-p 00000000 00:00 0                          [heap]\n\
             7f00000000-7f00002000 r-xs 00001000 fd:01 1234    /usr/lib/a file.so\n\
             7ffc0000-7ffc1000 ---p 00000000 00:00 0 \n",
        );
        assert_eq!(m.len(), 3);
        assert_eq!(m[0].path, "[heap]");
        assert_eq!(m[0].prot, 3);
        assert!(!m[0].shared);
        assert_eq!(m[1].path, "/usr/lib/a file.so");
        assert_eq!(m[1].prot, 5);
        assert!(m[1].shared);
        assert_eq!(m[1].offset, 0x1000);
        assert_eq!(m[1].inode, 1234);
        assert_eq!(m[2].prot, 0);
        assert_eq!(m[2].path, "");
    }

    #[test]
    fn clips_pmigs_own_ranges_out_of_merged_mappings() {
        let m = MapLine { start: 0x1000, end: 0x9000, prot: 3, shared: false, offset: 0, inode: 0, path: String::new() };
        let parts = clip(&m, &[(0x3000, 0x5000)]);
        assert_eq!(parts.iter().map(|p| (p.start, p.end)).collect::<Vec<_>>(), vec![(0x1000, 0x3000), (0x5000, 0x9000)]);
        assert!(clip(&m, &[(0x0, 0x10000)]).is_empty());
        assert_eq!(clip(&m, &[(0x20000, 0x30000)]), vec![m]);
    }

    #[test]
    fn runs_end_at_every_run_max_boundary() {
        // A populated stretch across two boundaries: three runs, data back to back.
        let start = 3 * RUN_MAX - 2 * PAGE;
        let mut runs = Vec::new();
        let mut off = 0;
        let mut a = start;
        while a < 4 * RUN_MAX + PAGE {
            add_page(&mut runs, a, &mut off);
            a += PAGE;
        }
        let got: Vec<(u64, u64, u64)> = runs.iter().map(|r| (r.addr, r.len, r.data_off)).collect();
        assert_eq!(got, vec![(start, 2 * PAGE, 0), (3 * RUN_MAX, RUN_MAX, 2 * PAGE), (4 * RUN_MAX, PAGE, RUN_MAX + 2 * PAGE)]);
        let whole = all_runs(start, 4 * RUN_MAX + PAGE, &mut 0);
        assert_eq!(whole.iter().map(|r| (r.addr, r.len, r.data_off)).collect::<Vec<_>>(), got);
    }

    #[test]
    fn finds_populated_pages_of_a_sparse_mapping() {
        let len = 64 * PAGE;
        let a = sys::mmap(0, len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0)
            .unwrap();
        for p in [3u64, 4, 10] {
            // SAFETY: inside the mapping just made.
            unsafe { *((a + p * PAGE) as *mut u8) = 1 };
        }
        let pm = sys::openat(libc::AT_FDCWD, b"/proc/self/pagemap\0", libc::O_RDONLY, 0).unwrap() as i32;
        let mut entries = vec![0u64; 16];
        let mut off = 0;
        let runs = populated_runs(a, a + len, false, pm, &mut entries, &mut off).unwrap();
        assert_eq!(runs.len(), 2);
        assert_eq!((runs[0].addr, runs[0].len, runs[0].data_off), (a + 3 * PAGE, 2 * PAGE, 0));
        assert_eq!((runs[1].addr, runs[1].len, runs[1].data_off), (a + 10 * PAGE, PAGE, 2 * PAGE));
        assert_eq!(off, 3 * PAGE);
        // SAFETY: the mapping is ours and unused now.
        unsafe { sys::munmap(a, len).unwrap() };
    }

    /// A sink that keeps what it is given.
    struct Keep(Vec<u8>);

    impl crate::checkpoint::Sink for Keep {
        fn put(&mut self, bytes: &[u8]) -> Result<(), String> {
            self.0.extend_from_slice(bytes);
            Ok(())
        }
    }

    #[test]
    fn copies_taken_aside_are_what_is_written() {
        let len = 4 * PAGE;
        let a = sys::mmap(0, len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED | libc::MAP_ANONYMOUS, -1, 0).unwrap();
        // SAFETY: inside the mapping just made.
        unsafe { core::ptr::write_bytes(a as *mut u8, 7, len as usize) };
        let run = PageRun { addr: a + PAGE, len: 2 * PAGE, data_off: 0 };
        let region = RegionState { start: a, end: a + len, prot: 3, shared: true, kind: RegionKind::Anon, runs: vec![run] };
        let regions = [region];
        let copies = Copies::take(&regions, &[], 1 << 20).unwrap();
        assert_eq!(copies.bytes(), 2 * PAGE);
        assert!(Copies::take(&regions, &[], PAGE).is_err(), "over the limit");
        // The memory changes after the copy: the image has the copy.
        // SAFETY: as above.
        unsafe { core::ptr::write_bytes(a as *mut u8, 9, len as usize) };
        let mut out = Keep(Vec::new());
        let crcs = write_pages(&mut out, &regions, &copies).unwrap();
        assert_eq!(out.0, vec![7u8; 2 * PAGE as usize]);
        assert_eq!(crcs, vec![crc32fast::hash(&out.0)]);
        let mut live = Keep(Vec::new());
        write_pages(&mut live, &regions, &Copies::none()).unwrap();
        assert_eq!(live.0, vec![9u8; 2 * PAGE as usize]);
        // SAFETY: the mapping is ours and unused now.
        unsafe { sys::munmap(a, len).unwrap() };
    }

    #[test]
    fn pending_regions_are_scanned_and_runs_numbered_in_order() {
        let len = 8 * PAGE;
        let a = sys::mmap(0, len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0).unwrap();
        for p in [1u64, 5] {
            // SAFETY: inside the mapping just made.
            unsafe { *((a + p * PAGE) as *mut u8) = 1 };
        }
        let first = RegionState {
            start: 0x1000,
            end: 0x3000,
            prot: 3,
            shared: false,
            kind: RegionKind::Anon,
            runs: vec![PageRun { addr: 0x1000, len: 2 * PAGE, data_off: 99 }],
        };
        let second = RegionState { start: a, end: a + len, prot: 3, shared: false, kind: RegionKind::Anon, runs: Vec::new() };
        let mut regions = [first, second];
        let total = fill_runs(&mut regions, &[(1, false)]).unwrap();
        assert_eq!(total, 4 * PAGE);
        assert_eq!(regions[0].runs[0].data_off, 0);
        let got: Vec<(u64, u64, u64)> = regions[1].runs.iter().map(|r| (r.addr, r.len, r.data_off)).collect();
        assert_eq!(got, vec![(a + PAGE, PAGE, 2 * PAGE), (a + 5 * PAGE, PAGE, 3 * PAGE)]);
        // SAFETY: the mapping is ours and unused now.
        unsafe { sys::munmap(a, len).unwrap() };
    }
}
