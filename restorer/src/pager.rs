//! The pager of a lazy restore: a thread of the supervising `pmig-resume` that puts the
//! restored processes' private anonymous memory in place, on first touch and in the
//! background, through the userfaultfd each process's engine sends it.
//!
//! Algorithm:
//! 1. before init is forked, `pmig-resume` makes a `SOCK_SEQPACKET` pair; every engine
//!    inherits one end (`PlanHeader::pager_fd`), the pager keeps the other, and maps the
//!    image file read-only;
//! 2. each engine registers its lazy regions (`REGION_LAZY`) with a userfaultfd in
//!    `MISSING` mode and sends one [`PagerHello`] with it and a pidfd of its process (or a
//!    hello without fds when it could not, having read its pages in itself);
//! 3. the loop: read every message waiting on every userfaultfd — a page fault is served at
//!    once (the saved run holding the page, at most [`RUN_MAX`] bytes, checked against its
//!    checksum the first time and copied in with `UFFDIO_COPY`; a page of the region the
//!    image holds no data for gets `UFFDIO_ZEROPAGE`), a fork gives the child's userfaultfd
//!    and a copy of the parent's pending runs, `mremap` moves pending runs, `munmap` and
//!    `MADV_DONTNEED` drop them (the program must find zeros there, not saved bytes) — then
//!    copy one pending run in the background, and again;
//! 4. a process whose runs are all in place has its userfaultfd closed: its memory is
//!    ordinary memory again. The pager ends when every process it serves is done (or gone)
//!    and every engine has said hello.
//!
//! A run whose checksum does not match ends the restored tree (init is killed: no process
//! may run on with memory the image does not hold) and `pmig-resume` exits with status 1,
//! naming the run. A userfaultfd outlives only the pager's copy: the supervisor waits for the
//! pager before it exits, and the program dies with the supervisor (init's parent-death
//! signal), so no page is ever filled with zeros instead of its saved bytes.
//!
//! [`PagerHello`]: pmig_abi::PagerHello
//! [`RUN_MAX`]: the dump splits runs at every MiB of address (`preload/src/memory.rs`).

use anyhow::{bail, Context, Result};
use pmig_abi::uffd;
use pmig_image::VerifiedImage;
use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering::*};

const PAGE: u64 = 4096;

/// Set when the pager ended the tree (a damaged run, a copy the kernel refused).
static FAILED: AtomicBool = AtomicBool::new(false);
/// The restored tree's init (outside pid), once forked: what the pager kills on a failure.
static INIT: AtomicI32 = AtomicI32::new(0);

/// Tells the pager the pid of the restored tree's init.
pub fn set_init(pid: i32) {
    INIT.store(pid, Release);
}

/// `true` once the pager has ended the restored tree because of a failure.
pub fn failed() -> bool {
    FAILED.load(Acquire)
}

/// One saved run of an image: where its bytes are in the file and their checksum.
struct Run {
    file_off: u64,
    len: u64,
    crc: u32,
    checked: bool,
}

/// The lazy runs of one process's image.
struct Source {
    saved_pid: i32,
    runs: Vec<Run>,
    /// `addr → (len, run index)`: every lazy run at its saved address.
    pieces: BTreeMap<u64, Piece>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Piece {
    len: u64,
    /// Index in `Source::runs`.
    run: usize,
    /// Offset of this piece in its run (a piece is a run, or what is left of one after an
    /// `munmap`, `MADV_DONTNEED` or `mremap` cut it).
    skip: u64,
}

/// A process being served.
struct Mm {
    uffd: OwnedFd,
    /// Index in `Pager::sources`.
    source: usize,
    /// Runs still to copy in, by the address they go to now.
    pieces: BTreeMap<u64, Piece>,
}

/// What the pager thread owns.
pub struct Pager {
    sock: OwnedFd,
    /// The image, mapped shared (a packed image's memfd is filled in while the pager runs,
    /// and it reads what was written; a private mapping could keep a zero page read from a
    /// hole).
    map: crate::receive::Mapped,
    sources: Vec<Source>,
    /// Engines that have not said hello yet.
    expected: usize,
    mms: Vec<Mm>,
    debug: bool,
    /// `PMIG_PAGER_TRACE` set: every userfaultfd message is logged.
    trace: bool,
    /// A packed image's memfd and its unpacking (see [`Pager::new`]).
    packed: Option<(std::fs::File, crate::receive::Packed)>,
    copied: u64,
}

/// `true` where a lazy restore can run: a userfaultfd that follows forks and every change of
/// the memory map (root, or `CAP_SYS_PTRACE`; with `vm.unprivileged_userfaultfd` alone
/// the fork events are refused).
pub fn available() -> std::result::Result<(), String> {
    // SAFETY: plain system calls on an fd this function owns and closes.
    unsafe {
        let fd = libc::syscall(uffd::SYS_USERFAULTFD as i64, libc::O_CLOEXEC | libc::O_NONBLOCK);
        if fd < 0 {
            return Err(format!("userfaultfd: {}", std::io::Error::last_os_error()));
        }
        let fd = OwnedFd::from_raw_fd(fd as i32);
        let mut api = uffd::ApiArg { api: uffd::API, features: uffd::FEATURES, ioctls: 0 };
        if libc::ioctl(fd.as_raw_fd(), uffd::IOC_API, &mut api) != 0 {
            return Err(format!("userfaultfd with fork and remap events: {}", std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

impl Pager {
    /// Maps the image and gathers the lazy runs of every process of `img`; `sock` is the
    /// pager's end of the socket pair the engines have the other end of.
    /// `packed`: the memfd `image` names holds a packed image unpacked only in part, and
    /// what unpacks the rest (each run is unpacked before it is read).
    pub fn new(image: &Path, img: &VerifiedImage, sock: OwnedFd, debug: bool, packed: Option<(std::fs::File, crate::receive::Packed)>) -> Result<Pager> {
        let map = crate::receive::Mapped::new(image).context("cannot map the image for the pager")?;
        let map_len = map.bytes().len() as u64;
        let mut sources = Vec::new();
        for (pid, i) in img.processes() {
            let mut s = Source { saved_pid: pid, runs: Vec::new(), pieces: BTreeMap::new() };
            let mut crcs = i.trailer.run_crcs.iter();
            for r in &i.manifest.regions {
                for run in &r.runs {
                    let crc = *crcs.next().context("fewer checksums than runs")?;
                    if r.is_lazy_candidate() {
                        let file_off = i.base + i.header.pages_off + run.data_off;
                        if file_off + run.len > map_len {
                            bail!("a page run at {:#x} lies beyond the image", run.addr);
                        }
                        s.pieces.insert(run.addr, Piece { len: run.len, run: s.runs.len(), skip: 0 });
                        s.runs.push(Run { file_off, len: run.len, crc, checked: false });
                    }
                }
            }
            sources.push(s);
        }
        let expected = sources.len();
        Ok(Pager { sock, map, sources, expected, mms: Vec::new(), debug, trace: std::env::var_os("PMIG_PAGER_TRACE").is_some(), copied: 0, packed })
    }

    /// Starts serving, in a thread (made before pmig-resume enters the new pid namespace:
    /// a process that did cannot make threads; until init exists it only waits on its
    /// socket, holding no lock a fork could catch). Join the handle before exiting: the
    /// program's memory depends on it.
    pub fn start(self) -> Result<std::thread::JoinHandle<()>> {
        // It takes no signal (every signal is the program's, forwarded by the supervisor's
        // thread): made with all blocked, which it inherits.
        // SAFETY: sigset operations on locals; pthread_sigmask on this thread.
        let old = unsafe {
            let mut all: libc::sigset_t = std::mem::zeroed();
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
            old
        };
        let r = std::thread::Builder::new().name("pmig-pager".into()).spawn(move || self.serve());
        // SAFETY: restoring this thread's own mask.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
        r.context("cannot start the pager thread")
    }

    fn serve(mut self) {
        let t0 = std::time::Instant::now();
        let mut sock_open = true;
        let mut busy = true;
        loop {
            if !sock_open && self.expected > 0 {
                // An engine that died before its hello serves no one.
                self.expected = 0;
            }
            self.mms.retain(|m| !m.pieces.is_empty());
            if self.expected == 0 && self.mms.is_empty() {
                break;
            }
            let mut fds: Vec<libc::pollfd> = self.mms.iter().map(|m| libc::pollfd { fd: m.uffd.as_raw_fd(), events: libc::POLLIN, revents: 0 }).collect();
            fds.push(libc::pollfd { fd: if sock_open { self.sock.as_raw_fd() } else { -1 }, events: libc::POLLIN, revents: 0 });
            // Faults first: after messages, the background waits for a quiet millisecond (the
            // restore and the program's first steps fault in what they need without a
            // background copy in the way, and without it taking their CPU); once quiet, it
            // goes on without a break until the next message.
            let timeout = if self.mms.is_empty() { -1 } else if busy { 1 } else { 0 };
            // SAFETY: poll on pollfds we own.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as u64, timeout) };
            if n < 0 {
                continue;
            }
            busy = n > 0;
            if fds.last().is_some_and(|p| p.revents != 0) && !self.hello() {
                sock_open = false;
            }
            for (i, f) in fds[..fds.len() - 1].iter().enumerate() {
                if f.revents != 0 {
                    self.drain(i);
                }
            }
            if self.failed_now() {
                return;
            }
            // One run in the background, from the process with the most left.
            if busy {
                continue;
            }
            if let Some(i) = (0..self.mms.len()).filter(|&i| !self.mms[i].pieces.is_empty()).max_by_key(|&i| self.mms[i].pieces.len()) {
                let (&addr, &p) = self.mms[i].pieces.iter().next().expect("not empty");
                self.put(i, addr, p);
            }
            if self.failed_now() {
                return;
            }
        }
        if self.debug {
            say!("pmig-resume: pager done: {} MiB put in place in {} ms", self.copied >> 20, t0.elapsed().as_millis());
        }
    }

    fn failed_now(&self) -> bool {
        FAILED.load(Acquire)
    }

    /// Ends the restored tree: its memory cannot be made whole.
    fn fail(&mut self, why: String) {
        say!("pmig-resume: {why}; the restored program is stopped (killed) rather than run with memory the image does not hold");
        FAILED.store(true, Release);
        let init = INIT.load(Acquire);
        if init > 0 {
            // SAFETY: kill has no memory preconditions.
            unsafe { libc::kill(init, libc::SIGKILL) };
        }
        // The userfaultfds stay open: closing one would let a thread waiting for a page go on
        // with zeros there before the kill reaches it. They end with the supervisor.
        std::mem::forget(std::mem::take(&mut self.mms));
    }

    /// Reads one engine's hello. `false` at the end of the socket.
    fn hello(&mut self) -> bool {
        let mut hello = pmig_abi::PagerHello::default();
        let mut iov = libc::iovec { iov_base: &mut hello as *mut _ as *mut libc::c_void, iov_len: std::mem::size_of::<pmig_abi::PagerHello>() };
        let mut control = [0u64; 8];
        // SAFETY: an all-zero msghdr is valid; its pointers are to live locals.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = std::mem::size_of_val(&control);
        // SAFETY: recvmsg into the buffers set up above.
        let n = unsafe { libc::recvmsg(self.sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC | libc::MSG_DONTWAIT) };
        if n == 0 {
            return false;
        }
        if n < 0 {
            return std::io::Error::last_os_error().raw_os_error() == Some(libc::EAGAIN);
        }
        // The fds: one SCM_RIGHTS message (cmsg_len, level/type, then the fds).
        let mut fds = Vec::new();
        if msg.msg_controllen >= 24 && control[1] == (libc::SOL_SOCKET as u64 | (libc::SCM_RIGHTS as u64) << 32) {
            let count = (control[0] as usize - 16) / 4;
            for k in 0..count.min(2) {
                let fd = (control[2] >> (32 * k)) as u32 as i32;
                // SAFETY: the kernel installed these fds for us.
                fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
        self.expected = self.expected.saturating_sub(1);
        if n as usize != std::mem::size_of_val(&hello) || hello.magic != pmig_abi::PAGER_MAGIC {
            return true;
        }
        let Some(source) = self.sources.iter().position(|s| s.saved_pid == hello.saved_pid) else { return true };
        if hello.lazy == 0 || fds.is_empty() {
            if self.debug {
                say!(
                    "pmig-resume: process {} reads its memory in at once: the engine could not hand it to the pager ({})",
                    hello.saved_pid,
                    pmig_abi::errno::Errno(hello.errno)
                );
            }
            // The engine read the runs in unchecked: check them now, late but before anything
            // trusts them longer.
            for r in 0..self.sources[source].runs.len() {
                if let Err(why) = self.check(source, r) {
                    self.fail(why);
                    return true;
                }
            }
            return true;
        }
        let pieces = self.sources[source].pieces.clone();
        let uffd = fds.swap_remove(0);
        if self.debug {
            let bytes: u64 = pieces.values().map(|p| p.len).sum();
            say!("pmig-resume: pager serves process {} ({} MiB to come in lazily)", hello.saved_pid, bytes >> 20);
        }
        self.mms.push(Mm { uffd, source, pieces });
        true
    }

    /// Checks run `r` of source `s` against its checksum (once).
    fn check(&mut self, s: usize, r: usize) -> std::result::Result<(), String> {
        let pid = self.sources[s].saved_pid;
        let run = &mut self.sources[s].runs[r];
        if run.checked {
            return Ok(());
        }
        if let Some((f, p)) = &self.packed {
            p.ensure(f, run.file_off, run.len).map_err(|e| format!("{e:#}"))?;
        }
        // (Inside the mapping: checked against the file's length in `new`.)
        let bytes = &self.map.bytes()[run.file_off as usize..(run.file_off + run.len) as usize];
        if crc32fast::hash(bytes) != run.crc {
            return Err(format!(
                "the image is damaged: checksum mismatch in the saved pages of process {} ({} bytes at file offset {})",
                pid, run.len, run.file_off
            ));
        }
        run.checked = true;
        Ok(())
    }

    /// Reads and handles every message waiting on process `i`'s userfaultfd.
    fn drain(&mut self, i: usize) {
        loop {
            if i >= self.mms.len() {
                return;
            }
            let mut msgs = [uffd::Msg::default(); 16];
            // SAFETY: reading whole messages into an array we own.
            let n = unsafe { libc::read(self.mms[i].uffd.as_raw_fd(), msgs.as_mut_ptr() as *mut libc::c_void, std::mem::size_of_val(&msgs)) };
            if n <= 0 {
                return;
            }
            for m in &msgs[..n as usize / std::mem::size_of::<uffd::Msg>()] {
                self.event(i, m);
                if self.failed_now() {
                    return;
                }
            }
        }
    }

    fn event(&mut self, i: usize, m: &uffd::Msg) {
        if self.trace {
            say!("pager: mm {i} event {:#x} {:#x} {:#x} {:#x}", m.event, m.arg[0], m.arg[1], m.arg[2]);
        }
        match m.event {
            uffd::EVENT_PAGEFAULT => {
                let addr = m.arg[1] & !(PAGE - 1);
                match piece_at(&self.mms[i].pieces, addr) {
                    Some((start, p)) => self.put(i, start, p),
                    None => {
                        let mut z = uffd::Zeropage { range: uffd::Range { start: addr, len: PAGE }, mode: 0, zeropage: 0 };
                        // SAFETY: ioctl with a struct we own. EEXIST (someone put it there
                        // meanwhile) is fine: the wake below lets the thread go on.
                        unsafe { libc::ioctl(self.mms[i].uffd.as_raw_fd(), uffd::IOC_ZEROPAGE, &mut z) };
                    }
                }
                if let Some(mm) = self.mms.get(i) {
                    let mut r = uffd::Range { start: addr, len: PAGE };
                    // SAFETY: ioctl with a struct we own.
                    unsafe { libc::ioctl(mm.uffd.as_raw_fd(), uffd::IOC_WAKE, &mut r) };
                }
            }
            uffd::EVENT_FORK => {
                // SAFETY: the kernel installed the child's userfaultfd in our table.
                let uffd = unsafe { OwnedFd::from_raw_fd(m.arg[0] as u32 as i32) };
                let child = Mm { uffd, source: self.mms[i].source, pieces: self.mms[i].pieces.clone() };
                self.mms.push(child);
            }
            uffd::EVENT_REMAP => {
                let (from, to, len) = (m.arg[0], m.arg[1], m.arg[2]);
                let moved = cut(&mut self.mms[i].pieces, from, from + len);
                for (a, p) in moved {
                    self.mms[i].pieces.insert(a - from + to, p);
                }
            }
            uffd::EVENT_REMOVE | uffd::EVENT_UNMAP => {
                let (start, end) = (m.arg[0], m.arg[1]);
                cut(&mut self.mms[i].pieces, start, end);
            }
            _ => {}
        }
    }

    /// Copies the piece at `addr` into process `i` (checking its run first).
    fn put(&mut self, i: usize, addr: u64, p: Piece) {
        let s = self.mms[i].source;
        if let Err(why) = self.check(s, p.run) {
            return self.fail(why);
        }
        let run = &self.sources[s].runs[p.run];
        let src = self.map.bytes().as_ptr() as u64 + run.file_off + p.skip;
        let fd = self.mms[i].uffd.as_raw_fd();
        let mut done = 0u64;
        while done < p.len {
            let mut c = uffd::Copy { dst: addr + done, src: src + done, len: p.len - done, mode: 0, copy: 0 };
            // SAFETY: ioctl with a struct we own; `src` lies in our mapping of the image.
            let r = unsafe { libc::ioctl(fd, uffd::IOC_COPY, &mut c) };
            if r == 0 {
                done = p.len;
                break;
            }
            if c.copy > 0 {
                done += c.copy as u64;
                continue;
            }
            // Some refusals (no such process any more, a bad range) leave `copy` alone.
            let errno = if c.copy < 0 { (-c.copy) as i32 } else { std::io::Error::last_os_error().raw_os_error().unwrap_or(0) };
            match errno {
                // A page already there (a child's copy of one its parent had): the next.
                libc::EEXIST => done += PAGE,
                // The map is changing (an event waits to be read): later.
                libc::EAGAIN => {
                    self.keep_rest(i, addr, p, done);
                    return;
                }
                // Unmapped meanwhile (its event is on the way), or the process is gone.
                libc::ENOENT | libc::EINVAL | libc::EFAULT => break,
                libc::ESRCH => {
                    self.mms[i].pieces.clear();
                    return;
                }
                e => {
                    let why = format!("cannot put the saved pages at {:#x} in place: {}", addr + done, pmig_abi::errno::Errno(e));
                    return self.fail(why);
                }
            }
        }
        self.copied += done.min(p.len);
        self.mms[i].pieces.remove(&addr);
    }

    /// After a partial copy: the rest of the piece stays pending.
    fn keep_rest(&mut self, i: usize, addr: u64, p: Piece, done: u64) {
        let pieces = &mut self.mms[i].pieces;
        pieces.remove(&addr);
        if done < p.len {
            pieces.insert(addr + done, Piece { len: p.len - done, run: p.run, skip: p.skip + done });
        }
        self.copied += done;
    }
}

/// The piece holding `addr`, by its start.
fn piece_at(pieces: &BTreeMap<u64, Piece>, addr: u64) -> Option<(u64, Piece)> {
    let (&a, &p) = pieces.range(..=addr).next_back()?;
    (addr < a + p.len).then_some((a, p))
}

/// Takes `[start, end)` out of `pieces` (splitting the pieces at its edges); returns what
/// was inside, by address.
fn cut(pieces: &mut BTreeMap<u64, Piece>, start: u64, end: u64) -> Vec<(u64, Piece)> {
    let mut out = Vec::new();
    let hit: Vec<(u64, Piece)> = pieces
        .range(..end)
        .rev()
        .take_while(|(&a, p)| a + p.len > start)
        .map(|(&a, &p)| (a, p))
        .collect();
    for (a, p) in hit.into_iter().rev() {
        pieces.remove(&a);
        let e = a + p.len;
        if a < start {
            pieces.insert(a, Piece { len: start - a, ..p });
        }
        if e > end {
            pieces.insert(end, Piece { len: e - end, skip: p.skip + (end - a), ..p });
        }
        let (s2, e2) = (a.max(start), e.min(end));
        out.push((s2, Piece { len: e2 - s2, skip: p.skip + (s2 - a), ..p }));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(list: &[(u64, u64)]) -> BTreeMap<u64, Piece> {
        list.iter().enumerate().map(|(i, &(a, l))| (a, Piece { len: l, run: i, skip: 0 })).collect()
    }

    #[test]
    fn finds_the_piece_holding_an_address() {
        let m = map(&[(0x1000, 0x2000), (0x8000, 0x1000)]);
        assert_eq!(piece_at(&m, 0x2fff).map(|(a, _)| a), Some(0x1000));
        assert_eq!(piece_at(&m, 0x3000), None);
        assert_eq!(piece_at(&m, 0x8000).map(|(a, p)| (a, p.run)), Some((0x8000, 1)));
        assert_eq!(piece_at(&m, 0x0), None);
    }

    #[test]
    fn cutting_keeps_the_outside_and_returns_the_inside() {
        let mut m = map(&[(0x1000, 0x4000), (0x8000, 0x1000), (0x10000, 0x1000)]);
        let inside = cut(&mut m, 0x3000, 0x9000);
        let left: Vec<(u64, u64, u64)> = m.iter().map(|(&a, p)| (a, p.len, p.skip)).collect();
        assert_eq!(left, vec![(0x1000, 0x2000, 0), (0x10000, 0x1000, 0)]);
        let got: Vec<(u64, u64, u64, usize)> = inside.iter().map(|(a, p)| (*a, p.len, p.skip, p.run)).collect();
        assert_eq!(got, vec![(0x3000, 0x2000, 0x2000, 0), (0x8000, 0x1000, 0, 1)]);
        // A cut inside one piece leaves both ends, the right one further into its run.
        let mut m = map(&[(0x0, 0x10000)]);
        cut(&mut m, 0x4000, 0x5000);
        let left: Vec<(u64, u64, u64)> = m.iter().map(|(&a, p)| (a, p.len, p.skip)).collect();
        assert_eq!(left, vec![(0x0, 0x4000, 0), (0x5000, 0xb000, 0x5000)]);
    }
}
