//! Exact ids: restoring in a new pid namespace, and the supervisor that stays the user's handle.
//!
//! Algorithm (what `pmig-resume` does when it can have exact ids):
//! 1. `unshare` a pid and (where the kernel has one) a time namespace — and, when not root, a
//!    user namespace that owns them, in which the user's own uid and gid map to
//!    themselves (`setgroups` denied, as the kernel requires of an unprivileged map);
//! 2. write the time namespace's offsets so that `CLOCK_MONOTONIC` and `CLOCK_BOOTTIME` go on
//!    from the values the program saw at checkpoint time;
//! 3. fork the namespace's init (pid 1): in a mount namespace of its own it makes `/` a slave
//!    mount and mounts a `/proc` of the new pid namespace, then `clone3(set_tid = [saved pid])` the process that execs the
//!    restore engine (unprivileged, it first raises `CAP_CHECKPOINT_RESTORE` as an ambient
//!    capability so the engine and libpmig can ask for the saved tids; libpmig drops it with
//!    the rest of the restore's credentials before the program runs). Init then reaps, and
//!    reports the program's stops, continues and exit on a pipe;
//! 4. this process — the pid the user started, in the host's namespace — becomes the
//!    supervisor: every signal sent to it goes to the program (signals a terminal sends to its
//!    foreground group reach the program directly and are not sent twice), it stops when the
//!    program stops (so shells see job control as usual), and it exits with the program's
//!    status or dies of its signal.
//!
//! When a namespace cannot be had (a container that forbids them) the caller falls back to
//! virtual ids, saying so; with `--ids exact` it refuses instead.

use anyhow::{bail, Result};
use pmig_abi::PlanObject;
use pmig_image::{FileKind, Manifest, VerifiedImage};
use std::ffi::CString;

/// What a restore asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ids {
    /// Exact where possible, else virtual (with one line saying so).
    Auto,
    /// Exact, or refuse.
    Exact,
    /// Virtual (the restored process keeps pmig-resume's pid, libc answers the saved ids).
    Virtual,
}

impl Ids {
    pub fn parse(s: &str) -> Option<Ids> {
        Some(match s {
            "auto" => Ids::Auto,
            "exact" => Ids::Exact,
            "virtual" => Ids::Virtual,
            _ => return None,
        })
    }
}

const CAP_CHECKPOINT_RESTORE: u32 = 40;

/// Messages from init to the supervisor: `[kind, value]`.
const MSG_STARTED: u32 = 1;
const MSG_STOPPED: u32 = 2;
const MSG_CONTINUED: u32 = 3;
const MSG_EXITED: u32 = 4;
const MSG_FAILED: u32 = 5;

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// The last error as a user reads it: `ENOSPC (no space left on device)`.
fn last_error() -> pmig_abi::errno::Errno {
    pmig_abi::errno::Errno(errno())
}

fn write_file(path: &str, text: &str) -> std::io::Result<()> {
    std::fs::write(path, text)
}

/// Step 1 and 2: this process enters the new namespaces (children enter the pid and time
/// ones). Returns why not, when it cannot.
pub fn enter(m: &Manifest) -> std::result::Result<(), String> {
    // SAFETY: geteuid/getegid have no preconditions.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    let mut flags = libc::CLONE_NEWPID;
    if uid != 0 {
        flags |= libc::CLONE_NEWUSER;
    }
    // SAFETY: unshare only changes this (single-threaded) process's namespaces.
    let mut timens = unsafe { libc::unshare(flags | libc::CLONE_NEWTIME) } == 0;
    if !timens {
        // SAFETY: as above.
        if unsafe { libc::unshare(flags) } != 0 {
            return Err(format!("cannot make a pid namespace (unshare: {})", last_error()));
        }
    }
    if uid != 0 {
        let maps = write_file("/proc/self/setgroups", "deny")
            .and_then(|_| write_file("/proc/self/uid_map", &format!("{uid} {uid} 1")))
            .and_then(|_| write_file("/proc/self/gid_map", &format!("{gid} {gid} 1")));
        if let Err(e) = maps {
            return Err(format!("cannot map the user's ids in a user namespace ({e})"));
        }
    }
    if timens {
        let off = |saved: u64, clock: libc::clockid_t| {
            let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
            // SAFETY: clock_gettime writes the timespec we own.
            unsafe { libc::clock_gettime(clock, &mut ts) };
            let now = ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128;
            let d = saved as i128 - now;
            (d.div_euclid(1_000_000_000), d.rem_euclid(1_000_000_000))
        };
        let (ms, mn) = off(m.host.monotonic_ns, libc::CLOCK_MONOTONIC);
        let (bs, bn) = off(m.host.boottime_ns, libc::CLOCK_BOOTTIME);
        let text = format!("monotonic {ms} {mn}\nboottime {bs} {bn}\n");
        if m.host.monotonic_ns == 0 || write_file("/proc/self/timens_offsets", &text).is_err() {
            timens = false;
        }
    }
    let _ = timens;
    Ok(())
}

/// The ends of init's report pipe.
struct Pipe {
    r: i32,
    w: i32,
}

fn send(fd: i32, kind: u32, value: u32) {
    let msg = [kind, value];
    // SAFETY: writing 8 bytes from a local array; a pipe write of 8 bytes is atomic.
    unsafe { libc::write(fd, msg.as_ptr() as *const libc::c_void, 8) };
}

/// What each process of the restored tree needs before it execs its engine.
pub struct Build<'a> {
    /// The verified image (a tree's root, with its members), and its file.
    pub img: &'a VerifiedImage,
    pub image: &'a std::path::Path,
    /// Writes the plan of one process's image, with the objects it inherits; returns its fd.
    pub prepare: &'a dyn Fn(&VerifiedImage, &[PlanObject]) -> Result<i32>,
    pub engine: CString,
    /// As root with `--as-owner`: the uid and gid to take.
    pub as_owner: Option<(u32, u32)>,
}

/// Steps 3 and 4: fork init, which makes the program's processes with their saved pids (the
/// tree's root, which makes its children, and so on) and execs the engine in each; this
/// process supervises. Returns only on failure before init started.
/// `pager`: the running pager of a lazy restore and the fd of the engines' end of its
/// socket (closed here once init has it).
pub fn run(b: &Build<'_>, debug: bool, pager: Option<(std::thread::JoinHandle<()>, i32)>) -> Result<std::convert::Infallible> {
    let root_pid = b.img.manifest.process.pid;
    let mut p = [0i32; 2];
    // SAFETY: pipe2 writes two fds into the array we own.
    if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        bail!("cannot make a pipe: {}", last_error());
    }
    let pipe = Pipe { r: p[0], w: p[1] };
    // Every signal waits for the supervisor (blocked before the fork, so none is lost).
    // SAFETY: sigset operations on a local set; sigprocmask on this single-threaded process.
    unsafe {
        let mut all: libc::sigset_t = core::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::sigprocmask(libc::SIG_SETMASK, &all, core::ptr::null_mut());
    }
    // SAFETY: pmig-resume is single-threaded here; the child only makes raw calls and execs.
    let init = unsafe { libc::fork() };
    if init < 0 {
        bail!("cannot fork the namespace's init: {}", last_error());
    }
    if init == 0 {
        // SAFETY: in the child: only this code runs, and it ends in exec or _exit.
        unsafe { init_main(b, &pipe) }
    }
    // SAFETY: closing our copy of the write end.
    unsafe { libc::close(pipe.w) };
    let pager = pager.map(|(p, engines)| {
        // SAFETY: our copy of the engines' end: the pager sees the end of it once every
        // process that may send on it is done with it.
        unsafe { libc::close(engines) };
        crate::pager::set_init(init);
        p
    });
    if debug {
        eprintln!(
            "pmig-resume: restoring with exact ids: pid {root_pid}{} in a new pid namespace (init is pid {init} here)",
            if b.img.members.is_empty() { String::new() } else { format!(" and {} more process(es) of its tree", b.img.members.len()) }
        );
    }
    supervise(init, pipe.r, (root_pid == 1).then_some(init), pager)
}

/// Init (pid 1 of the new namespace).
///
/// # Safety
/// Only in the child of `fork` in `run`.
unsafe fn init_main(b: &Build<'_>, pipe: &Pipe) -> ! {
    let pid = b.img.manifest.process.pid;
    let fail = |what: u32, e: i32| -> ! {
        send(pipe.w, MSG_FAILED, (what << 16) | e as u32);
        // SAFETY: _exit has no preconditions.
        unsafe { libc::_exit(127) }
    };
    // SAFETY: plain system calls on this process's own state; every pointer is to a local or
    // a NUL-terminated literal.
    unsafe {
        libc::close(pipe.r);
        // (Its parent is outside the namespace, where getppid() answers 0: a supervisor that
        // died before this line is not noticed, and init goes on with the program.)
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        libc::prctl(libc::PR_SET_NAME, c"pmig-init".as_ptr());
        // A mount namespace of its own (the supervisor's /proc stays the host's, where it
        // finds the program's pid).
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            fail(1, errno());
        }
        if libc::mount(core::ptr::null(), c"/".as_ptr(), core::ptr::null(), libc::MS_REC | libc::MS_SLAVE, core::ptr::null()) != 0 {
            fail(1, errno());
        }
        let pflags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
        if libc::mount(c"proc".as_ptr(), c"/proc".as_ptr(), c"proc".as_ptr(), pflags, core::ptr::null()) != 0 {
            fail(2, errno());
        }
        if let Err((what, e)) = prepare_tree(b) {
            fail(what, e);
        }
        // Process groups of the root's session whose leader had exited (a pipeline whose
        // first command ended): a helper with the group's id holds it until its members
        // have joined it again (made first: they join it as soon as they are restored).
        for g in orphan_groups(b.img) {
            let h = clone_with_pid(g, 0);
            if h == 0 {
                // It holds nothing of the tree's (a pipe end would delay an EOF) and ends
                // with init.
                libc::syscall(libc::SYS_close_range, 0, u32::MAX, 0);
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                libc::setpgid(0, 0);
                hold_group(b.img, g);
            }
            if h < 0 {
                eprintln!("pmig-resume: warning: process group {g} (its leader had exited) cannot be made again: {}; its processes come back in another group", last_error());
            }
        }
        let child = if pid == 1 { 0 } else { clone_with_pid(pid, 0) };
        if child < 0 {
            fail(3, errno());
        }
        if child == 0 {
            build_process(b, pipe, pid, pid != 1);
        }
        // Processes that had left the tree's parentage (daemonized) are init's children, each
        // in its session (see `daemon_maker`).
        for m in daemons(b.img) {
            match daemon_maker(b.img, m) {
                Maker::Init => {}
                Maker::Leader(_) => continue,
                Maker::Helper(sid) => {
                    // The first daemon of a session whose leader is gone: a helper with the
                    // session's id makes it again and makes its daemons as init's children.
                    if daemons(b.img).take_while(|d| d.state.pid != m.state.pid).any(|d| daemon_maker(b.img, d) == Maker::Helper(sid)) {
                        continue;
                    }
                    let h = clone_with_pid(sid, 0);
                    if h < 0 {
                        eprintln!("pmig-resume: cannot make session {sid} of the tree again (its leader had exited): {}", last_error());
                        fail(3, errno());
                    }
                    if h == 0 {
                        libc::setsid();
                        for d in daemons(b.img).filter(|d| daemon_maker(b.img, d) == Maker::Helper(sid)) {
                            make_daemon(b, pipe, d);
                        }
                        libc::_exit(0);
                    }
                    continue;
                }
            }
            let c = clone_with_pid(m.state.pid, 0);
            if c < 0 {
                eprintln!("pmig-resume: cannot make process {} ({}) of the tree with its pid: {}", m.state.pid, m.state.comm, last_error());
                fail(3, errno());
            }
            if c == 0 {
                build_process(b, pipe, m.state.pid, true);
            }
        }
        send(pipe.w, MSG_STARTED, child as u32);
        // Init holds nothing of the program's: no fd but the report pipe (moved to fd 3).
        let w = 3;
        libc::dup2(pipe.w, w);
        libc::syscall(libc::SYS_close_range, w + 1, u32::MAX, 0);
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        for fd in 0..3 {
            libc::dup2(null, fd);
        }
        if null > w {
            libc::close(null);
        }
        // Init keeps every signal blocked: none is meant for it (SIGKILL still ends it).
        loop {
            let mut st = 0;
            let r = libc::waitpid(-1, &mut st, libc::__WALL | libc::WUNTRACED | libc::WCONTINUED);
            if r < 0 {
                if errno() == libc::EINTR {
                    continue;
                }
                libc::_exit(0);
            }
            if r as i64 != child {
                continue;
            }
            if libc::WIFSTOPPED(st) {
                send(w, MSG_STOPPED, libc::WSTOPSIG(st) as u32);
            } else if libc::WIFCONTINUED(st) {
                send(w, MSG_CONTINUED, 0);
            } else {
                // The program is done; processes it left behind (daemons, orphans) go on, as
                // they would have without pmig: init stays for them, no longer tied to the
                // supervisor, until the last one ends.
                libc::prctl(libc::PR_SET_PDEATHSIG, 0);
                send(w, MSG_EXITED, st as u32);
                libc::close(w);
                while libc::waitpid(-1, &mut st, libc::__WALL) > 0 || errno() == libc::EINTR {}
                libc::_exit(0);
            }
        }
    }
}

/// `clone3` a process (a copy of this one) with pid `pid` in the new namespace (and `flags`,
/// e.g. `CLONE_PARENT`): 0 in the
/// child, its pid in the parent, or -1. Where it can (root in the host's namespaces, the pid
/// free there), the process gets `pid` in the host's namespace too, so that what outside the
/// tree knows it by (a pid file read by `nginx -s reload`, a `kill` from a script) still
/// reaches it.
///
/// # Safety
/// The caller must be single-threaded (the child is a copy that goes on from here).
unsafe fn clone_with_pid(pid: i32, flags: u64) -> i64 {
    let tids = [pid, pid];
    for levels in [2u64, 1] {
        let args = pmig_abi::CloneArgs {
            flags,
            // (With CLONE_PARENT clone3 wants none: the child gets the caller's.)
            exit_signal: if flags & libc::CLONE_PARENT as u64 != 0 { 0 } else { libc::SIGCHLD as u64 },
            set_tid: tids.as_ptr() as u64,
            set_tid_size: levels,
            ..Default::default()
        };
        // SAFETY: the caller guarantees a single-threaded process; clone3 without CLONE_VM
        // copies it.
        let r = unsafe { libc::syscall(libc::SYS_clone3, &args as *const pmig_abi::CloneArgs, core::mem::size_of_val(&args)) };
        if r >= 0 || levels == 1 {
            return r;
        }
    }
    -1
}

/// The pipes the tree's processes share (held by two or more of them, with both ends inside
/// the tree): made once, with their queued bytes, before any member exists, so that every
/// process inherits them. Returns the objects each process's plan names.
fn tree_pipes(img: &VerifiedImage) -> std::result::Result<Vec<PlanObject>, String> {
    use std::collections::BTreeMap;
    /// Processes holding it, has a read end, has a write end, capacity, queued bytes.
    type Seen = (Vec<i32>, bool, bool, u32, Vec<u8>);
    let mut pipes: BTreeMap<u64, Seen> = BTreeMap::new();
    for (pid, p) in img.processes() {
        for f in &p.manifest.files {
            if let FileKind::Pipe { ino, read_end, fifo: None, capacity, data } = &f.kind {
                if !p.manifest.fds.iter().any(|d| p.manifest.files.get(d.file as usize).is_some_and(|x| std::ptr::eq(x, f))) {
                    continue;
                }
                let e = pipes.entry(*ino).or_insert_with(|| (Vec::new(), false, false, *capacity, Vec::new()));
                if !e.0.contains(&pid) {
                    e.0.push(pid);
                }
                e.1 |= *read_end;
                e.2 |= !*read_end;
                if e.4.is_empty() && !data.is_empty() {
                    e.4 = data.clone();
                }
            }
        }
    }
    let mut out = Vec::new();
    for (ino, (procs, r, w, capacity, data)) in pipes {
        if procs.len() < 2 || !r || !w {
            continue;
        }
        let mut fds = [0i32; 2];
        // SAFETY: pipe2 writes two fds into the local array; fcntl and write on them.
        unsafe {
            if libc::pipe2(fds.as_mut_ptr(), 0) != 0 {
                return Err(format!("cannot make a pipe: {}", last_error()));
            }
            libc::fcntl(fds[1], libc::F_SETPIPE_SZ, capacity as libc::c_int);
            if !data.is_empty() && libc::write(fds[1], data.as_ptr() as *const libc::c_void, data.len()) != data.len() as isize {
                return Err(format!("cannot put a pipe's {} queued bytes back", data.len()));
            }
        }
        out.push(PlanObject { ino, fd: fds[0], kind: pmig_abi::OBJECT_PIPE_READ });
        out.push(PlanObject { ino, fd: fds[1], kind: pmig_abi::OBJECT_PIPE_WRITE });
    }
    Ok(out)
}

/// The shared memory objects (`MAP_SHARED` anonymous memory, memfds, deleted files) two or
/// more processes of the tree map: made once, filled here from every process's saved pages
/// (all taken at the same instant), before any process exists, so every process maps the same
/// object and no process's engine writes into it while another already runs.
fn tree_objects(image: &std::path::Path, img: &VerifiedImage) -> std::result::Result<Vec<PlanObject>, String> {
    use std::collections::BTreeMap;
    use std::os::unix::fs::FileExt;
    let mut seen: BTreeMap<u64, (Vec<i32>, u64, String)> = BTreeMap::new();
    for (pid, p) in img.processes() {
        for o in &p.manifest.objects {
            let e = seen.entry(o.ino).or_insert_with(|| (Vec::new(), 0, o.name.clone()));
            if !e.0.contains(&pid) {
                e.0.push(pid);
            }
            e.1 = e.1.max(o.size);
        }
    }
    let file = std::fs::File::open(image).map_err(|e| format!("cannot reopen the image: {e}"))?;
    let mut out = Vec::new();
    for (ino, (procs, size, name)) in seen {
        if procs.len() < 2 {
            continue;
        }
        let cname = CString::new(name.replace('\0', "")).unwrap_or_default();
        // SAFETY: memfd_create with a NUL-terminated name; the result is checked.
        // Sealable: libpmig seals it again as the program had (a memfd's seals).
        let fd = unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_ALLOW_SEALING) };
        if fd < 0 {
            return Err(format!("memfd_create for shared object {name}: {}", last_error()));
        }
        // SAFETY: `fd` is the memfd just made; the File owns it until into_raw_fd below.
        let mem = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let mut size = size;
        for (_, p) in img.processes() {
            let m = &p.manifest;
            if let Some(c) = m.files.iter().find_map(|f| match &f.kind {
                FileKind::Memfd { ino: i, content, .. } | FileKind::Deleted { ino: i, content, .. } if *i == ino => Some(content),
                _ => None,
            }) {
                for (off, b) in &c.extents {
                    mem.write_all_at(b, *off).map_err(|e| format!("cannot fill shared object {name}: {e}"))?;
                }
                size = size.max(c.size);
            }
        }
        mem.set_len(size).map_err(|e| format!("cannot size shared object {name}: {e}"))?;
        for (_, p) in img.processes() {
            let m = &p.manifest;
            for r in &m.regions {
                let pmig_image::RegionKind::SharedObject { object, offset } = r.kind else { continue };
                // (A private mapping's changed pages are not the object's.)
                if !r.shared || m.objects.get(object as usize).map(|o| o.ino) != Some(ino) {
                    continue;
                }
                for run in &r.runs {
                    let mut buf = vec![0u8; run.len as usize];
                    file.read_exact_at(&mut buf, p.base + p.header.pages_off + run.data_off)
                        .and_then(|_| mem.write_all_at(&buf, offset + (run.addr - r.start)))
                        .map_err(|e| format!("cannot fill shared object {name}: {e}"))?;
                }
            }
        }
        out.push(PlanObject { ino, fd: std::os::fd::IntoRawFd::into_raw_fd(mem), kind: pmig_abi::OBJECT_SHARED_MEMORY });
    }
    Ok(out)
}

/// The open file descriptions of regular files two or more processes of the tree hold (one
/// offset, one set of flags: a log both write to, a file a parent and child read in turn):
/// opened once at their saved offset before any process exists, so every process inherits
/// the same description.
fn tree_files(img: &VerifiedImage) -> std::result::Result<Vec<PlanObject>, String> {
    use std::collections::BTreeMap;
    let mut seen: BTreeMap<u64, (Vec<i32>, &pmig_image::FileState)> = BTreeMap::new();
    for (pid, p) in img.processes() {
        for f in p.manifest.files.iter().filter(|f| f.shared != 0) {
            let e = seen.entry(f.shared).or_insert_with(|| (Vec::new(), f));
            if !e.0.contains(&pid) {
                e.0.push(pid);
            }
        }
    }
    let mut out = Vec::new();
    for (key, (procs, f)) in seen {
        let FileKind::Regular { path, .. } = &f.kind else { continue };
        if procs.len() < 2 {
            continue;
        }
        let flags = f.flags & !(libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC | libc::O_NOCTTY | libc::O_CLOEXEC);
        let cpath = CString::new(path.as_str()).map_err(|_| format!("a NUL byte in {path}"))?;
        // SAFETY: open with a NUL-terminated path; lseek on the fd just opened.
        let fd = unsafe { libc::open(cpath.as_ptr(), flags) };
        if fd < 0 {
            return Err(format!("cannot open {path}, which processes of the tree share: {}", last_error()));
        }
        // SAFETY: as above.
        unsafe { libc::lseek(fd, f.pos, libc::SEEK_SET) };
        out.push(PlanObject { ino: key, fd, kind: pmig_abi::OBJECT_FILE });
    }
    Ok(out)
}

/// The tree's board (see `pmig_abi::BoardHeader`): a slot for each socket or kernel object
/// two or more processes share, naming the process that makes it (the lowest pid holding it,
/// whose image has its whole state); its counters also hold every process back until all
/// are restored. `None` for a single process.
fn tree_board(img: &VerifiedImage) -> std::result::Result<Option<PlanObject>, String> {
    use pmig_abi::{BoardHeader, BoardSlot, BOARD_MAGIC};
    use std::collections::BTreeMap;
    let mut slots: BTreeMap<u64, BoardSlot> = BTreeMap::new();
    let mut live = 0u32;
    for (pid, p) in img.processes() {
        live += 1;
        for f in p.manifest.files.iter().filter(|f| f.shared != 0 && f.kind.made_by_one_process()) {
            let s = slots.entry(f.shared).or_insert_with(|| BoardSlot { key: f.shared, maker: pid, ..Default::default() });
            s.maker = s.maker.min(pid);
            if let FileKind::Socket(so) = &f.kind {
                if let Some(peer) = so.pair {
                    s.ends = [so.ino.min(peer), so.ino.max(peer)];
                }
            }
        }
    }
    if live < 2 {
        return Ok(None);
    }
    let head = BoardHeader { magic: BOARD_MAGIC, n_slots: slots.len() as u32, live, ..Default::default() };
    let mut bytes = Vec::new();
    // SAFETY: both are repr(C) structs of integers, viewed as bytes to write them.
    unsafe {
        let as_bytes = |p: *const u8, n: usize| core::slice::from_raw_parts(p, n).to_vec();
        bytes.extend(as_bytes(&head as *const BoardHeader as *const u8, core::mem::size_of::<BoardHeader>()));
        for s in slots.values() {
            bytes.extend(as_bytes(s as *const BoardSlot as *const u8, core::mem::size_of::<BoardSlot>()));
        }
    }
    // SAFETY: memfd_create with a NUL-terminated name; the result is checked.
    let fd = unsafe { libc::memfd_create(c"pmig-board".as_ptr(), 0) };
    if fd < 0 {
        return Err(format!("memfd_create for the tree's board: {}", last_error()));
    }
    // SAFETY: `fd` is the memfd just made; the File owns it until into_raw_fd below.
    let mem = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    std::os::unix::fs::FileExt::write_all_at(&mem, &bytes, 0).map_err(|e| format!("cannot write the tree's board: {e}"))?;
    Ok(Some(PlanObject { ino: slots.len() as u64, fd: std::os::fd::IntoRawFd::into_raw_fd(mem), kind: pmig_abi::OBJECT_BOARD }))
}

/// Dies as a zombie of the tree did: exits with its status, or of its signal.
fn die_as(status: i32) -> ! {
    // SAFETY: plain calls on this process; it ends here.
    unsafe {
        // Not a capability more than its parent: a zombie the restore raised any for could
        // not be inspected by it (its exit status in /proc would read 0).
        if libc::geteuid() != 0 {
            libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
            let hdr = [0x2008_0522u32, 0];
            let data = [0u32; 6];
            libc::syscall(libc::SYS_capset, hdr.as_ptr(), data.as_ptr());
        }
        if libc::WIFSIGNALED(status) {
            raise_default(libc::WTERMSIG(status));
        }
        libc::_exit(libc::WEXITSTATUS(status))
    }
}

/// Dies of `sig` with its default action (no core file: a process pmig made holds nothing
/// worth one). Returns only if the signal does not end the process.
fn raise_default(sig: i32) {
    // SAFETY: resetting this process's own disposition, limit and mask, then raising the
    // signal on itself.
    unsafe {
        let lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        libc::setrlimit(libc::RLIMIT_CORE, &lim);
        libc::signal(sig, libc::SIG_DFL);
        let mut set: libc::sigset_t = core::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, sig);
        libc::sigprocmask(libc::SIG_UNBLOCK, &set, core::ptr::null_mut());
        libc::raise(sig);
    }
}

/// In init, before it makes any process: the user the program's processes run as (with
/// `--as-owner`, the image's owner), keeping `CAP_CHECKPOINT_RESTORE` for `set_tid` (as an
/// ambient capability, which the engine's exec keeps and every process inherits), then the
/// objects the tree's processes share, made once as that user, so that every process made
/// after (the root, processes that left the tree's parentage) inherits them.
///
/// # Safety
/// Only in init, single-threaded. Fails with the phase and errno to report.
unsafe fn prepare_tree(b: &Build<'_>) -> std::result::Result<(), (u32, i32)> {
    // SAFETY: credential and capability calls on this process; pointers to locals.
    unsafe {
        if let Some((uid, gid)) = b.as_owner {
            libc::prctl(libc::PR_SET_KEEPCAPS, 1);
            if libc::setgroups(0, core::ptr::null()) != 0 || libc::setgid(gid) != 0 || libc::setuid(uid) != 0 {
                return Err((4, errno()));
            }
        }
        if libc::geteuid() != 0 || b.as_owner.is_some() {
            // The engine and libpmig need CAP_CHECKPOINT_RESTORE for set_tid; the exec
            // keeps it only as an ambient capability (inheritable and permitted first).
            // The tree's other processes inherit it from here.
            let hdr = [0x2008_0522u32, 0];
            let mut data = [0u32; 6];
            libc::syscall(libc::SYS_capget, hdr.as_ptr(), data.as_mut_ptr());
            let (word, bit) = ((CAP_CHECKPOINT_RESTORE / 32) as usize, 1u32 << (CAP_CHECKPOINT_RESTORE % 32));
            data[word * 3] |= bit; // effective
            data[word * 3 + 1] |= bit; // permitted
            data[word * 3 + 2] |= bit; // inheritable
            if libc::syscall(libc::SYS_capset, hdr.as_ptr(), data.as_ptr()) != 0
                || libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_RAISE, CAP_CHECKPOINT_RESTORE as u64, 0, 0) != 0
            {
                return Err((5, errno()));
            }
        }
    }
    match tree_pipes(b.img).and_then(|mut o| {
        o.extend(tree_objects(b.image, b.img)?);
        o.extend(tree_files(b.img)?);
        o.extend(tree_board(b.img)?);
        o.extend(crate::pty::make_all(b.img).map_err(|e| format!("{e:#}"))?);
        Ok(o)
    }) {
        Ok(o) => {
            let _ = OBJECTS.set(o);
            Ok(())
        }
        Err(e) => {
            eprintln!("pmig-resume: restore failed: {e}");
            Err((7, 0))
        }
    }
}

/// The objects the tree's processes share (see `prepare_tree`).
static OBJECTS: std::sync::OnceLock<Vec<PlanObject>> = std::sync::OnceLock::new();

/// In the process that becomes `pid` of the tree (made with its saved pid): makes its own
/// children of the tree, then execs the engine on its plan.
///
/// # Safety
/// Only in a child made by `clone_with_pid` (or init itself when the root's pid is 1).
unsafe fn build_process(b: &Build<'_>, pipe: &Pipe, pid: i32, has_init: bool) -> ! {
    let fail = |what: u32, e: i32| -> ! {
        send(pipe.w, MSG_FAILED, (what << 16) | e as u32);
        // SAFETY: _exit has no preconditions.
        unsafe { libc::_exit(127) }
    };
    let root = pid == b.img.manifest.process.pid;
    // SAFETY: prctl on this process.
    unsafe {
        if has_init {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        }
    }
    let objects = OBJECTS.get().map(Vec::as_slice).unwrap_or(&[]);
    // Its own process group or session, when it led one.
    let (sid, pgid) = match b.img.members.iter().find(|m| m.state.pid == pid) {
        Some(m) => (m.state.sid, m.state.pgid),
        None if root => (b.img.manifest.process.sid, b.img.manifest.process.pgid),
        None => (0, 0),
    };
    // SAFETY: setsid/setpgid on this process.
    unsafe {
        if sid == pid {
            libc::setsid();
        } else if pgid == pid {
            libc::setpgid(0, 0);
        }
    }
    // A session leader whose terminal was a pty of the tree takes it again, before it makes
    // the children that inherit it.
    let own = if root { Some(&b.img.manifest.process) } else { b.img.members.iter().find(|m| m.state.pid == pid).and_then(|m| m.image.as_ref()).map(|i| &i.manifest.process) };
    if let Some(index) = own.filter(|p| sid == pid && p.sid == pid).and_then(|p| p.ctty_pty()) {
        if objects.iter().any(|o| o.kind == pmig_abi::OBJECT_PTY && o.ino == u64::from(index)) {
            if let Err(e) = crate::pty::take_as_ctty(index, objects) {
                eprintln!("pmig-resume: process {pid} cannot take /dev/pts/{index} as its controlling terminal again: {e}");
                fail(3, 0);
            }
        }
    }
    // Daemons in the session this process leads, when it is init's child too: made here
    // (in its session) as init's children.
    for d in daemons(b.img).filter(|d| daemon_maker(b.img, d) == Maker::Leader(pid)) {
        // SAFETY: this process is single-threaded (a copy of pmig-resume).
        unsafe { make_daemon(b, pipe, d) };
    }
    for m in b.img.members.iter().filter(|m| m.state.ppid == pid) {
        // SAFETY: this process is single-threaded (a copy of pmig-resume).
        let c = unsafe { clone_with_pid(m.state.pid, 0) };
        if c < 0 {
            eprintln!("pmig-resume: cannot make process {} ({}) of the tree with its pid: {}", m.state.pid, m.state.comm, last_error());
            fail(3, errno());
        }
        if c == 0 {
            match m.state.state {
                pmig_image::MemberKind::Zombie { status } => die_as(status),
                // SAFETY: in the child clone_with_pid made.
                _ => unsafe { build_process(b, pipe, m.state.pid, true) },
            }
        }
    }
    let img = if root { b.img } else {
        match b.img.members.iter().find(|m| m.state.pid == pid).and_then(|m| m.image.as_ref()) {
            Some(i) => i,
            None => fail(7, 0),
        }
    };
    let plan_fd = match (b.prepare)(img, objects) {
        Ok(fd) => fd,
        Err(e) => {
            eprintln!("pmig-resume: cannot prepare the restore of process {pid}: {e:#}");
            fail(7, 0);
        }
    };
    let plan_arg = CString::new(plan_fd.to_string()).unwrap_or_default();
    // Signals stay blocked through the exec: the engine blocks them all anyway, and the
    // restored threads take their own masks from their saved frames; one sent meanwhile
    // (a checkpoint request) stays pending for the restored program.
    let argv = [c"pmig-restore-engine".as_ptr(), plan_arg.as_ptr(), core::ptr::null()];
    let envp = [core::ptr::null::<libc::c_char>()];
    // SAFETY: argv and envp are NULL-terminated arrays of NUL-terminated strings.
    unsafe { libc::execve(b.engine.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    fail(6, errno())
}

/// Process groups whose leader had exited, in the root's session (init's after the
/// restore), other than the root's own: each is made again by a helper (`hold_group`).
/// Such groups in another session are not made again: the restore says so.
fn orphan_groups(img: &VerifiedImage) -> Vec<i32> {
    let root = &img.manifest.process;
    let in_tree = |p: i32| p == root.pid || img.members.iter().any(|m| m.state.pid == p);
    let mut groups = Vec::new();
    let live = core::iter::once((root.pid, root.pgid, root.sid, "")).chain(
        img.members.iter().filter(|m| matches!(m.state.state, pmig_image::MemberKind::Live { .. })).map(|m| (m.state.pid, m.state.pgid, m.state.sid, m.state.comm.as_str())),
    );
    for (pid, pgid, sid, comm) in live {
        if pgid <= 0 || pgid == pid || pgid == sid || pgid == root.pgid || in_tree(pgid) || groups.contains(&pgid) {
            continue;
        }
        if sid == root.sid {
            groups.push(pgid);
        } else {
            eprintln!("pmig-resume: warning: process {pid} ({comm}) comes back in its parent's process group: its own, {pgid}, had lost its leader in session {sid}");
        }
    }
    groups
}

/// In a helper that made process group `g` again: waits until every live process of the tree
/// saved in `g` is in it (they join it once every process exists), then exits. Gives up
/// after 30 s (a process that failed to restore).
///
/// # Safety
/// Only in a helper `clone_with_pid` made.
unsafe fn hold_group(img: &VerifiedImage, g: i32) -> ! {
    let root = &img.manifest.process;
    let members: Vec<i32> = core::iter::once((root.pid, root.pgid))
        .chain(img.members.iter().filter(|m| matches!(m.state.state, pmig_image::MemberKind::Live { .. })).map(|m| (m.state.pid, m.state.pgid)))
        .filter(|&(_, pgid)| pgid == g)
        .map(|(pid, _)| pid)
        .collect();
    for _ in 0..3000 {
        // SAFETY: getpgid and nanosleep have no memory preconditions.
        unsafe {
            if members.iter().all(|&p| libc::getpgid(p) == g) {
                break;
            }
            libc::usleep(10_000);
        }
    }
    // SAFETY: _exit has no preconditions.
    unsafe { libc::_exit(0) }
}

/// The processes of the tree that had left its parentage (daemonized): init's children.
fn daemons(img: &VerifiedImage) -> impl Iterator<Item = &pmig_image::VerifiedMember> {
    img.members.iter().filter(|m| m.state.ppid == 0 && m.image.is_some())
}

/// Which process makes a daemon (as init's child, so that it is in its session).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Maker {
    /// Init: the daemon leads its own session, or is in the root's (init's after the
    /// restore), or its session cannot be made again (the restore says so).
    Init,
    /// The process of the tree (init's child too) that leads the daemon's session, with
    /// `CLONE_PARENT`.
    Leader(i32),
    /// A helper given the session's id (its leader had exited, as after `fork`, `setsid`,
    /// `fork`), which makes the session again, makes its daemons with `CLONE_PARENT` and exits.
    Helper(i32),
}

fn daemon_maker(img: &VerifiedImage, d: &pmig_image::VerifiedMember) -> Maker {
    let sid = d.state.sid;
    let root = &img.manifest.process;
    if sid == d.state.pid || sid == root.sid || sid <= 0 {
        return Maker::Init;
    }
    if sid == root.pid {
        // Init itself when the root is pid 1 (CLONE_PARENT is refused to a namespace's init).
        return if root.pid == 1 { Maker::Init } else { Maker::Leader(sid) };
    }
    match img.members.iter().find(|m| m.state.pid == sid) {
        // A daemon leading it, made before its followers (it makes them).
        Some(l) if l.state.ppid == 0 && l.image.is_some() && l.state.sid == sid => Maker::Leader(sid),
        Some(l) => {
            eprintln!(
                "pmig-resume: warning: process {} ({}) comes back in another session: {sid}'s leader {} is not init's child",
                d.state.pid, d.state.comm, l.state.comm
            );
            Maker::Init
        }
        None => Maker::Helper(sid),
    }
}

/// Makes daemon `d` as init's child (`CLONE_PARENT`: the caller is init's child too).
///
/// # Safety
/// The caller must be single-threaded, a child of init.
unsafe fn make_daemon(b: &Build<'_>, pipe: &Pipe, d: &pmig_image::VerifiedMember) {
    // SAFETY: the caller's guarantees.
    let c = unsafe { clone_with_pid(d.state.pid, libc::CLONE_PARENT as u64) };
    if c < 0 {
        eprintln!("pmig-resume: cannot make process {} ({}) of the tree with its pid: {}", d.state.pid, d.state.comm, last_error());
        send(pipe.w, MSG_FAILED, (3 << 16) | errno() as u32);
        // SAFETY: _exit has no preconditions.
        unsafe { libc::_exit(127) }
    }
    if c == 0 {
        // SAFETY: in the child clone_with_pid made.
        unsafe { build_process(b, pipe, d.state.pid, true) }
    }
}

fn failed_phase(what: u32) -> &'static str {
    match what {
        1 => "making a mount namespace whose / is a slave of the host's",
        2 => "mounting /proc for the new pid namespace",
        3 => "creating the process with the saved pid (clone3 set_tid)",
        4 => "taking the owner's ids",
        5 => "raising CAP_CHECKPOINT_RESTORE for the restore",
        6 => "starting the restore engine",
        7 => "preparing the restore plan",
        _ => "starting the restore",
    }
}

/// The program's pid in this (the host's) namespace: the child of init that is `inner` in
/// the program's namespace (init may have other children: daemons, helpers).
fn outer_pid(init: i32, inner: i32) -> Option<i32> {
    for _ in 0..200 {
        if let Ok(s) = std::fs::read_to_string(format!("/proc/{init}/task/{init}/children")) {
            for p in s.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
                let status = std::fs::read_to_string(format!("/proc/{p}/status")).unwrap_or_default();
                let last = status.lines().find_map(|l| l.strip_prefix("NSpid:")).and_then(|l| l.split_whitespace().last()?.parse::<i32>().ok());
                if last == Some(inner) {
                    return Some(p);
                }
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    None
}

/// Dies as the program died, or exits with its code.
/// Ends the supervisor as the program ended. A pager still at work is waited for first (a
/// daemon the program left may still be getting its memory), and a pager that had to end
/// the tree makes the exit status 1.
fn mirror(status: i32, pager: Option<std::thread::JoinHandle<()>>) -> ! {
    if let Some(p) = pager {
        let _ = p.join();
    }
    if crate::pager::failed() {
        std::process::exit(1);
    }
    if libc::WIFSIGNALED(status) {
        // No core file of the supervisor: the program's, if any, was written.
        let sig = libc::WTERMSIG(status);
        raise_default(sig);
        std::process::exit(128 + sig);
    }
    std::process::exit(libc::WEXITSTATUS(status))
}

/// Sends the program a signal the supervisor took (with its value, if it was queued).
fn forward(p: i32, sig: i32, code: i32, value: u64) {
    if code == libc::SI_QUEUE {
        // SAFETY: an all-zero siginfo is valid; the fields are set as sigqueue sets them.
        unsafe {
            let mut info: libc::siginfo_t = core::mem::zeroed();
            info.si_signo = sig;
            info.si_code = libc::SI_QUEUE;
            let raw = &mut info as *mut libc::siginfo_t as *mut u8;
            // si_pid and si_uid at 16 and 20, si_value at 24 (x86_64).
            core::ptr::write_unaligned(raw.add(16) as *mut i32, libc::getpid());
            core::ptr::write_unaligned(raw.add(20) as *mut u32, libc::getuid());
            core::ptr::write_unaligned(raw.add(24) as *mut u64, value);
            libc::syscall(libc::SYS_rt_sigqueueinfo, p, sig, &info as *const libc::siginfo_t);
        }
    } else {
        // SAFETY: kill has no memory preconditions.
        unsafe { libc::kill(p, sig) };
    }
}

/// Step 4: the supervisor loop.
fn supervise(init: i32, pipe_r: i32, program: Option<i32>, pager: Option<std::thread::JoinHandle<()>>) -> Result<std::convert::Infallible> {
    let mut pager = pager;
    // SAFETY: a signalfd for every signal (all are blocked); fds we own.
    let sfd = unsafe {
        let mut all: libc::sigset_t = core::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::signalfd(-1, &all, libc::SFD_CLOEXEC)
    };
    if sfd < 0 {
        bail!("cannot make a signalfd: {}", last_error());
    }
    let mut program = program;
    // Signals that came before the program's pid was known: sent as soon as it is.
    let mut early: Vec<(i32, i32, u64)> = Vec::new();
    let mut status: Option<i32> = None;
    let mut pipe_open = true;
    loop {
        let mut fds = [
            libc::pollfd { fd: sfd, events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: if pipe_open { pipe_r } else { -1 }, events: libc::POLLIN, revents: 0 },
        ];
        // SAFETY: poll on two pollfds we own.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if n < 0 {
            continue;
        }
        if fds[1].revents != 0 {
            let mut msg = [0u32; 2];
            // SAFETY: reading 8 bytes into a local array.
            let r = unsafe { libc::read(pipe_r, msg.as_mut_ptr() as *mut libc::c_void, 8) };
            if r != 8 {
                pipe_open = false;
            } else {
                match msg[0] {
                    MSG_STARTED => {
                        // (0: the program is init itself, known from the start.)
                        if msg[1] != 0 {
                            program = outer_pid(init, msg[1] as i32);
                        }
                        if let Some(p) = program {
                            for (sig, code, value) in early.drain(..) {
                                forward(p, sig, code, value);
                            }
                        }
                    }
                    MSG_STOPPED => {
                        // SAFETY: stopping ourselves, as the program is stopped.
                        unsafe { libc::kill(libc::getpid(), libc::SIGSTOP) };
                    }
                    MSG_CONTINUED => {}
                    MSG_EXITED => status = Some(msg[1] as i32),
                    MSG_FAILED => {
                        let (what, e) = (msg[1] >> 16, (msg[1] & 0xffff) as i32);
                        eprintln!("pmig-resume: restore failed while {}: {}", failed_phase(what), pmig_abi::errno::Errno(e));
                        status = Some(1 << 8);
                        // The tree cannot be whole: end it (init's end ends the namespace)
                        // rather than leave the others waiting for the failed one.
                        // SAFETY: kill has no memory preconditions.
                        unsafe { libc::kill(init, libc::SIGKILL) };
                    }
                    _ => {}
                }
            }
        }
        if fds[0].revents != 0 {
            // SAFETY: an all-zero signalfd_siginfo is valid; read fills it.
            let mut si: libc::signalfd_siginfo = unsafe { core::mem::zeroed() };
            // SAFETY: reading one record into the struct we own.
            let r = unsafe { libc::read(sfd, &mut si as *mut _ as *mut libc::c_void, core::mem::size_of_val(&si)) };
            if r != core::mem::size_of_val(&si) as isize {
                continue;
            }
            let sig = si.ssi_signo as i32;
            if sig == libc::SIGCHLD {
                let mut st = 0;
                // SAFETY: reaping our child init.
                let r = unsafe { libc::waitpid(init, &mut st, libc::WNOHANG) };
                if r == init {
                    // Init is gone: take what it last said, or its own status.
                    while pipe_open {
                        let mut msg = [0u32; 2];
                        // (Init has exited: the pipe holds what it wrote, then EOF.)
                        // SAFETY: reading into a local array.
                        let n = unsafe { libc::read(pipe_r, msg.as_mut_ptr() as *mut libc::c_void, 8) };
                        if n != 8 {
                            pipe_open = false;
                            continue;
                        }
                        if msg[0] == MSG_EXITED {
                            status = Some(msg[1] as i32);
                        } else if msg[0] == MSG_FAILED && status.is_none() {
                            status = Some(1 << 8);
                        }
                    }
                    mirror(status.unwrap_or(st), pager.take());
                }
                continue;
            }
            // A terminal's signals reach the whole foreground group, the program included.
            if si.ssi_code == libc::SI_KERNEL {
                continue;
            }
            match program {
                Some(p) => forward(p, sig, si.ssi_code, si.ssi_ptr),
                None => early.push((sig, si.ssi_code, si.ssi_ptr)),
            }
        }
        if let Some(st) = status {
            if !pipe_open || program.is_none() {
                // Init exits right after reporting, unless processes the program left behind
                // (daemons) go on: then it stays for them, and this handle goes now.
                let mut s = 0;
                for _ in 0..100 {
                    // SAFETY: reaping our child without blocking.
                    if unsafe { libc::waitpid(init, &mut s, libc::WNOHANG) } != 0 {
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
                mirror(st, pager.take());
            }
        }
    }
}
