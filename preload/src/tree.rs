//! Process trees: one checkpoint for the process `pmig-run` started (the root) and every
//! process it forked or that one of them exec'd (its members), at one instant.
//!
//! Every process of the tree runs libpmig (a forked child starts its own checkpoint thread;
//! an exec'd program loads libpmig again from the environment). The root's checkpoint thread
//! drives the checkpoint over a `SOCK_SEQPACKET` UNIX socket with an abstract name made of its
//! pid and a random nonce:
//!
//! 1. the root stops its own threads (it can fork no more), lists its descendants through
//!    `/proc/PID/task/TID/children`, and asks each live one with a queued checkpoint signal
//!    whose value carries pmig's mark and the nonce; each member connects (the root checks
//!    its pid with `SO_PEERCRED`), stops its threads and says so; the root lists again until
//!    no process is new (a fork that raced the first listing is caught there). Zombies are
//!    recorded with their exit status;
//! 2. with every process stopped, the root hands each member in turn the image file being
//!    written (`SCM_RIGHTS`, the open file description shared, positioned at the next page
//!    boundary): the member writes its complete image there and says how long it is. The
//!    root writes its own image last, its manifest listing the members (`Manifest::tree`);
//! 3. once the file is durable the root tells every member to go on (or, with `--exit`, to
//!    exit). A member that fails or does not answer fails the checkpoint, naming it, and the
//!    whole tree goes on; a member whose root goes away goes on too.
//!
//! **Runs with the caller's other threads stopped** (both sides): raw system calls, the arena
//! for allocation, no locks.

use crate::errno::Errno;
use crate::log::{debug, say};
use crate::{config, sys, thread};
use core::sync::atomic::Ordering::*;
use pmig_image::{MemberKind, MemberState};

/// Messages (fixed 256 bytes: kind, value, text).
const MSG_LEN: usize = 256;
const HELLO: u32 = 1;
const PARKED: u32 = 2;
const FAIL: u32 = 3;
const DUMP: u32 = 4;
const DONE: u32 = 5;
const RELEASE: u32 = 6;
const EXIT: u32 = 7;
/// Up to 14 `(fd, key)` pairs of shared open file descriptions, ahead of `DUMP`.
const SHARES: u32 = 8;
/// To a member, before `DUMP`: the TCP repair state of its connection on fd `value`, taken
/// by the root (the memfd attached holds it; see `fd::socket::repair_for`).
const REPAIR: u32 = 9;
const PAIRS_PER_MSG: usize = 14;

/// How long a member may take to stop, and to write its image.
const STOP_TIMEOUT_MS: u64 = 10_000;
const DUMP_TIMEOUT_MS: i32 = 600_000;

fn msg(kind: u32, value: u64, text: &str) -> [u8; MSG_LEN] {
    let mut m = [0u8; MSG_LEN];
    m[0..4].copy_from_slice(&kind.to_ne_bytes());
    m[8..16].copy_from_slice(&value.to_ne_bytes());
    let t = text.as_bytes();
    let n = t.len().min(MSG_LEN - 16);
    m[16..16 + n].copy_from_slice(&t[..n]);
    m
}

fn parse(m: &[u8]) -> (u32, u64, String) {
    let kind = u32::from_ne_bytes([m[0], m[1], m[2], m[3]]);
    let mut v = [0u8; 8];
    v.copy_from_slice(&m[8..16]);
    let text = &m[16..];
    let end = text.iter().position(|&c| c == 0).unwrap_or(text.len());
    (kind, u64::from_ne_bytes(v), String::from_utf8_lossy(&text[..end]).into_owned())
}

/// Sends one message; `fd` goes with it.
fn send(sock: i32, kind: u32, value: u64, text: &str, fd: Option<i32>) -> Result<(), i32> {
    sys::send_with_fd(sock, &msg(kind, value, text), fd).map(|_| ())
}

/// Waits up to `timeout_ms` for one message: `(kind, value, text, fd)`; `None` on timeout or
/// when the peer is gone.
fn recv(sock: i32, timeout_ms: i32) -> Option<(u32, u64, String, Option<i32>)> {
    loop {
        match sys::poll_one(sock, libc::POLLIN, timeout_ms) {
            Ok(true) => break,
            Ok(false) => return None,
            Err(libc::EINTR) => continue,
            Err(_) => return None,
        }
    }
    let mut buf = [0u8; MSG_LEN];
    match sys::recv_with_fd(sock, &mut buf) {
        Ok((n, fd)) if n == MSG_LEN => {
            let (k, v, t) = parse(&buf);
            Some((k, v, t, fd))
        }
        _ => None,
    }
}

/// The abstract socket address of the root `root` for the checkpoint `nonce`.
fn address(root: i32, nonce: u32) -> Vec<u8> {
    let name = format!("pmig-tree-{root}-{nonce:08x}");
    let mut a = Vec::with_capacity(3 + name.len());
    a.extend_from_slice(&(libc::AF_UNIX as u16).to_ne_bytes());
    a.push(0);
    a.extend_from_slice(name.as_bytes());
    a
}

/// A process found below the root.
#[derive(Clone, Debug)]
pub struct Found {
    pub pid: i32,
    pub ppid: i32,
    pub pgid: i32,
    pub sid: i32,
    pub comm: String,
    pub zombie: bool,
    /// The wait status of a zombie (`exit_code` of `/proc/PID/stat`).
    pub exit_code: i32,
}

/// `/proc/PID/stat` of `pid`, parsed.
fn stat_of(pid: i32) -> Option<Found> {
    let text = sys::read_file_vec(&sys::cstr(&format!("/proc/{pid}/stat"))).ok()?;
    let text = String::from_utf8_lossy(&text).into_owned();
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text[open + 1..close].to_string();
    let f: Vec<&str> = text[close + 1..].split_whitespace().collect();
    // After ')': state is field 3 (index 0), ppid 4, pgrp 5, session 6, exit_code 52.
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
    Some(Found {
        pid,
        ppid: num(1) as i32,
        pgid: num(2) as i32,
        sid: num(3) as i32,
        comm,
        zombie: f.first() == Some(&"Z"),
        exit_code: num(49) as i32,
    })
}

/// Whether process `pid` catches the checkpoint signal `sig`, or blocks it (a program just
/// exec'd by a process of pmig's, whose libpmig has not run yet).
fn takes_requests(pid: i32, sig: i32) -> bool {
    let Ok(text) = sys::read_file_vec(&sys::cstr(&format!("/proc/{pid}/status"))) else { return false };
    let text = String::from_utf8_lossy(&text);
    let mask = |key: &str| crate::process::status_field(&text, key).and_then(|v| u64::from_str_radix(v, 16).ok()).unwrap_or(0);
    let bit = 1u64 << (sig - 1);
    (mask("SigCgt:") | mask("SigBlk:")) & bit != 0
}

const CAP_NET_ADMIN: u32 = 12;

/// Whether process `pid` has capability `cap` in effect.
fn has_cap(pid: i32, cap: u32) -> bool {
    let Ok(text) = sys::read_file_vec(&sys::cstr(&format!("/proc/{pid}/status"))) else { return false };
    let text = String::from_utf8_lossy(&text);
    let eff = crate::process::status_field(&text, "CapEff:").and_then(|v| u64::from_str_radix(v, 16).ok()).unwrap_or(0);
    eff & (1 << cap) != 0
}

/// Every process of this tree but this one (its root), parents before their children: its
/// descendants, and the processes that left them (daemonized: reparented to init or a
/// subreaper) but are still the tree's — libpmig's environment names this root (`PMIG_PID`)
/// and they are in this pid namespace — with their own descendants.
pub fn descendants() -> Vec<Found> {
    let me = sys::getpid();
    let mut out: Vec<Found> = Vec::new();
    let mut queue = vec![me];
    loop {
        while let Some(p) = queue.pop() {
            let mut tids = Vec::new();
            let _ = sys::for_each_numbered_entry(&sys::cstr(&format!("/proc/{p}/task")), |t, _| tids.push(t));
            for t in tids {
                let Ok(text) = sys::read_file_vec(&sys::cstr(&format!("/proc/{p}/task/{t}/children"))) else { continue };
                for c in String::from_utf8_lossy(&text).split_whitespace().filter_map(|c| c.parse::<i32>().ok()) {
                    // pmig's own image writer (a background checkpoint) is not the program's.
                    if out.iter().any(|f| f.pid == c) || c == crate::snapshot::writer_pid() {
                        continue;
                    }
                    if let Some(f) = stat_of(c) {
                        if !f.zombie {
                            queue.push(c);
                        }
                        out.push(f);
                    }
                }
            }
        }
        for f in left_the_tree(me, &out) {
            queue.push(f.pid);
            out.push(f);
        }
        if queue.is_empty() {
            return out;
        }
    }
}

/// Live processes of this root's tree that are not below it (see [`descendants`]), `known`
/// left out.
fn left_the_tree(root: i32, known: &[Found]) -> Vec<Found> {
    let own_ns = sys::readlink_string(b"/proc/self/ns/pid\0").unwrap_or_default();
    let mark = format!("PMIG_PID={root}");
    let mut pids = Vec::new();
    let _ = sys::for_each_numbered_entry(b"/proc\0", |p, _| pids.push(p));
    let mut out = Vec::new();
    for p in pids {
        if p == root || known.iter().any(|f| f.pid == p) || p == crate::snapshot::writer_pid() {
            continue;
        }
        // Readable only for processes of this user (or by root): others are not the tree's.
        let Ok(env) = sys::read_file_vec(&sys::cstr(&format!("/proc/{p}/environ"))) else { continue };
        if !env.split(|&b| b == 0).any(|e| e == mark.as_bytes()) {
            continue;
        }
        if own_ns.is_empty() || sys::readlink_string(&sys::cstr(&format!("/proc/{p}/ns/pid"))).ok().as_ref() != Some(&own_ns) {
            continue;
        }
        if let Some(f) = stat_of(p).filter(|f| !f.zombie) {
            debug!("tree: {} ({}) left the tree's parentage (parent {}); it is taken with the tree", f.pid, f.comm, f.ppid);
            out.push(f);
        }
    }
    out
}

/// A member taking part.
struct Member {
    found: Found,
    sock: i32,
}

/// The root's side of one tree checkpoint.
pub struct Session {
    /// `(pid, fd, key)`: open file descriptions two or more processes of the tree hold.
    shares: Vec<(i32, i32, u64)>,
    listen: i32,
    members: Vec<Member>,
    zombies: Vec<Found>,
    /// The checkpoint signal and this checkpoint's nonce (requests are sent again).
    signal: i32,
    nonce: u32,
    /// Requests sent again to processes that were replacing their program.
    retries: u32,
    /// Members' connections this process holds in repair mode for them (closed at the end:
    /// in repair mode, with nothing sent to the peer).
    held: Vec<i32>,
}

impl Session {
    /// Step 1: asks every descendant to stop, and waits until all have (the caller's own
    /// threads are stopped already). `Ok(None)` when the process has no children. `exclude`:
    /// pmig's own helpers (the ssh client of a move), not part of the program.
    pub fn stop_tree(cfg: &config::Config, exclude: &[i32]) -> Result<Option<Session>, String> {
        let descendants = || {
            let mut d = descendants();
            d.retain(|f| !exclude.contains(&f.pid));
            d
        };
        let first = descendants();
        if first.is_empty() {
            return Ok(None);
        }
        let mut nonce = [0u8; 4];
        // SAFETY: getrandom writes 4 bytes into the local array.
        unsafe { pmig_abi::arch::syscall6(libc::SYS_getrandom as u64, nonce.as_mut_ptr() as u64, 4, 0, 0, 0, 0) };
        let nonce = u32::from_ne_bytes(nonce) | 1;
        let listen = sys::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0)
            .map_err(|e| format!("cannot make the tree's socket: {}", Errno(e)))? as i32;
        let mut s = Session { shares: Vec::new(), listen, members: Vec::new(), zombies: Vec::new(), signal: cfg.signal, nonce, retries: 0, held: Vec::new() };
        sys::bind(listen, &address(sys::getpid(), nonce))
            .and_then(|_| sys::listen(listen, 128))
            .map_err(|e| format!("cannot listen on the tree's socket: {}", Errno(e)))?;
        let mut asked: Vec<Found> = Vec::new();
        let mut found = first;
        loop {
            let mut new = 0;
            for f in found {
                if asked.iter().any(|a| a.pid == f.pid) || s.zombies.iter().any(|z| z.pid == f.pid) {
                    continue;
                }
                new += 1;
                if f.zombie {
                    s.add_zombie(f);
                    continue;
                }
                // Only a process of pmig's takes the request: it catches the checkpoint signal,
                // or (a program it exec'd, before its libpmig runs) has it blocked. Sent to any
                // other process it would end it.
                if !takes_requests(f.pid, cfg.signal) {
                    if stat_of(f.pid).is_some_and(|z| !z.zombie) {
                        return Err(format!(
                            "process {} ({}) of the tree is not running under pmig (a static program, or one started with a cleared environment); it cannot be checkpointed with the tree",
                            f.pid, f.comm
                        ));
                    }
                    continue;
                }
                debug!("tree: asking {} ({}) to stop", f.pid, f.comm);
                if sys::sigqueue(f.pid, cfg.signal, config::TREE_MAGIC << 32 | nonce as u64).is_err() {
                    // Gone meanwhile: the next listing shows it as a zombie or not at all.
                    continue;
                }
                asked.push(f);
            }
            if new == 0 {
                break;
            }
            s.wait_parked(&mut asked)?;
            found = descendants();
        }
        s.find_shares();
        debug!("tree: {} member(s) stopped, {} zombie(s), {} fd(s) on shared objects", s.members.len(), s.zombies.len(), s.shares.len());
        Ok(Some(s))
    }

    /// Accepts members until every one in `asked` has said it stopped.
    fn wait_parked(&mut self, asked: &mut Vec<Found>) -> Result<(), String> {
        let started = sys::monotonic_ms();
        loop {
            let waiting: Vec<&Found> = asked.iter().filter(|a| !self.members.iter().any(|m| m.found.pid == a.pid)).collect();
            if waiting.is_empty() {
                return Ok(());
            }
            let left = STOP_TIMEOUT_MS.saturating_sub(sys::monotonic_ms() - started);
            if left == 0 {
                // One that exited meanwhile is a zombie now; one still running never answered.
                let mut silent = Vec::new();
                for w in &waiting {
                    match stat_of(w.pid) {
                        Some(f) if f.zombie => self.add_zombie(f),
                        Some(f) => silent.push(f),
                        None => {}
                    }
                }
                if let Some(f) = silent.first() {
                    return Err(format!(
                        "process {} ({}) of the tree did not take part in the checkpoint within {} s (is it running under pmig? a static program, or one started with a cleared environment, is not)",
                        f.pid,
                        f.comm,
                        STOP_TIMEOUT_MS / 1000
                    ));
                }
                asked.retain(|a| self.members.iter().any(|m| m.found.pid == a.pid));
                return Ok(());
            }
            if !matches!(sys::poll_one(self.listen, libc::POLLIN, left.min(200) as i32), Ok(true)) {
                // A request can be missed by a child caught between fork and its own
                // checkpoint thread: ask again every second; one that exited is a zombie now.
                let waited = sys::monotonic_ms() - started;
                if waited / 1000 != (waited.saturating_sub(200)) / 1000 {
                    for w in waiting.iter() {
                        match stat_of(w.pid) {
                            Some(z) if z.zombie => self.add_zombie(z),
                            None => {}
                            Some(_) => {
                                let _ = sys::sigqueue(w.pid, self.signal, config::TREE_MAGIC << 32 | self.nonce as u64);
                            }
                        }
                    }
                    let (zombies, members) = (&self.zombies, &self.members);
                    asked.retain(|a| !zombies.iter().any(|z| z.pid == a.pid) || members.iter().any(|m| m.found.pid == a.pid));
                }
                continue;
            }
            let Ok(c) = sys::accept4(self.listen, libc::SOCK_CLOEXEC) else { continue };
            let c = c as i32;
            let mut cred = [0u8; 12];
            let pid = match sys::getsockopt(c, libc::SOL_SOCKET, libc::SO_PEERCRED, &mut cred) {
                Ok(12) => i32::from_ne_bytes([cred[0], cred[1], cred[2], cred[3]]),
                _ => 0,
            };
            let Some(f) = asked.iter().find(|a| a.pid == pid).cloned() else {
                let _ = sys::close(c);
                continue;
            };
            let answer = recv(c, STOP_TIMEOUT_MS as i32).and_then(|m| (m.0 == HELLO).then_some(())).and_then(|_| recv(c, STOP_TIMEOUT_MS as i32));
            if let Some((PARKED, ..)) = answer {
                self.members.push(Member { found: f, sock: c });
                continue;
            }
            let _ = sys::close(c);
            // A process that exited while it was being stopped (a short-lived child) is a
            // zombie now, or gone: that is what the tree holds. One that was replacing its
            // program (execve) is asked again: the new program takes part.
            sys::sleep_ms(5);
            let execing = match &answer {
                Some((FAIL, _, why, _)) => why == thread::EXEC_IN_PROGRESS,
                None => true,
                _ => false,
            };
            match stat_of(f.pid) {
                Some(z) if z.zombie => {
                    asked.retain(|a| a.pid != f.pid);
                    self.add_zombie(z);
                }
                None => asked.retain(|a| a.pid != f.pid),
                Some(_) if execing && self.retries < 20 => {
                    self.retries += 1;
                    sys::sleep_ms(20);
                    let _ = sys::sigqueue(f.pid, self.signal, config::TREE_MAGIC << 32 | self.nonce as u64);
                }
                Some(_) => {
                    return Err(match answer {
                        Some((FAIL, _, why, _)) => format!("process {} ({}) of the tree could not stop: {why}", f.pid, f.comm),
                        _ => format!("process {} ({}) of the tree stopped answering", f.pid, f.comm),
                    })
                }
            }
        }
    }

    /// Finds what two or more processes of the tree share, every process stopped: open file
    /// descriptions of regular files, sockets and anonymous-inode objects (eventfd, epoll,
    /// timerfd, signalfd, inotify) held by several (`kcmp` on fds of the same inode), and
    /// UNIX connections whose two ends are in different processes (`unix_diag`'s peer).
    /// Pty masters too (pmig-resume makes them; the lowest pid saves their queues).
    ///
    /// Each such object gets a key, sent to every process holding it (and saved as
    /// `FileState::shared`), so that the restore makes it once: regular files by
    /// pmig-resume, the others by the lowest pid holding them (the board). A socket's state
    /// (its queue, its TCP repair state) is saved by the lowest pid holding its description
    /// only: two processes peeking one queue at once would garble it; the others get
    /// `SHARE_FOLLOWER`. The ends of a UNIX connection split between processes get
    /// `SHARE_TREE_PEER`: each process saves its end as one end of a pair.
    fn find_shares(&mut self) {
        use pmig_abi::{SHARE_FOLLOWER, SHARE_TREE_PEER};
        let pids: Vec<i32> = core::iter::once(sys::getpid()).chain(self.members.iter().map(|m| m.found.pid)).collect();
        // (pid, fd, dev, ino) of every regular file, socket and anonymous-inode file.
        let mut all: Vec<(i32, i32, u64, u64)> = Vec::new();
        let mut kind_of: Vec<u32> = Vec::new();
        for &p in &pids {
            let _ = sys::for_each_numbered_entry(&sys::cstr(&format!("/proc/{p}/fd")), |fd, _| {
                // SAFETY: an all-zero `stat` is a valid value of this plain C struct.
                let mut st: libc::stat = unsafe { core::mem::zeroed() };
                if sys::fstatat(libc::AT_FDCWD, &sys::cstr(&format!("/proc/{p}/fd/{fd}")), &mut st, 0).is_ok() {
                    let t = st.st_mode & libc::S_IFMT;
                    let ptmx = t == libc::S_IFCHR && libc::major(st.st_rdev) == pmig_abi::pty::PTMX_MAJOR && libc::minor(st.st_rdev) == pmig_abi::pty::PTMX_MINOR;
                    if t == libc::S_IFREG || t == libc::S_IFSOCK || t == 0 || ptmx {
                        all.push((p, fd, st.st_dev, st.st_ino));
                        kind_of.push(t);
                    }
                }
            });
        }
        fn top(up: &mut [usize], mut i: usize) -> usize {
            while up[i] != i {
                up[i] = up[up[i]];
                i = up[i];
            }
            i
        }
        // Open file descriptions: fds of one inode that kcmp says are the same.
        let mut desc: Vec<usize> = (0..all.len()).collect();
        for i in 0..all.len() {
            for j in 0..i {
                let (a, b) = (all[j], all[i]);
                if a.2 != b.2 || a.3 != b.3 || top(&mut desc, i) == top(&mut desc, j) {
                    continue;
                }
                // SAFETY: kcmp only compares two fds of two processes; no memory is passed.
                let same = unsafe { pmig_abi::arch::syscall6(libc::SYS_kcmp as u64, a.0 as u64, b.0 as u64, 0, a.1 as u64, b.1 as u64, 0) } == 0;
                if same {
                    let r = top(&mut desc, j);
                    let ri = top(&mut desc, i);
                    desc[ri] = r;
                }
            }
        }
        // Objects: descriptions, with the two ends of a UNIX connection joined.
        let mut obj = desc.clone();
        let mut peer_in_tree = vec![false; all.len()];
        let mut peers: Vec<(u64, Option<u64>)> = Vec::new();
        for i in 0..all.len() {
            if kind_of[i] != libc::S_IFSOCK {
                continue;
            }
            let ino = all[i].3;
            let peer = match peers.iter().find(|p| p.0 == ino) {
                Some(p) => p.1,
                None => {
                    let p = crate::fd::socket::unix_peer(ino);
                    peers.push((ino, p));
                    p
                }
            };
            let Some(peer) = peer else { continue };
            if let Some(j) = (0..all.len()).find(|&j| kind_of[j] == libc::S_IFSOCK && all[j].3 == peer) {
                peer_in_tree[i] = true;
                let (a, b) = (top(&mut obj, i), top(&mut obj, j));
                obj[a] = b;
            }
        }
        let mut shares = Vec::new();
        for i in 0..all.len() {
            let o = top(&mut obj, i);
            let members: Vec<usize> = (0..all.len()).filter(|&j| top(&mut obj, j) == o).collect();
            if members.iter().all(|&j| all[j].0 == all[i].0) {
                continue;
            }
            let first = members[0];
            let mut key = 1 << 63 | (all[first].0 as u64) << 20 | all[first].1 as u64;
            if kind_of[i] != libc::S_IFREG {
                if members.iter().any(|&j| peer_in_tree[j]) {
                    key |= SHARE_TREE_PEER;
                }
                let d = top(&mut desc, i);
                let lowest = (0..all.len()).filter(|&j| top(&mut desc, j) == d).map(|j| all[j].0).min();
                if lowest != Some(all[i].0) {
                    key |= SHARE_FOLLOWER;
                }
            }
            shares.push((all[i].0, all[i].1, key));
        }
        self.shares = shares;
    }

    /// `(fd, key)` of `pid`'s shared open file descriptions.
    pub fn shares_of(&self, pid: i32) -> Vec<(i32, u64)> {
        self.shares.iter().filter(|s| s.0 == pid).map(|s| (s.1, s.2)).collect()
    }

    /// Records a zombie once.
    fn add_zombie(&mut self, z: Found) {
        if !self.zombies.iter().any(|y| y.pid == z.pid) {
            self.zombies.push(z);
        }
    }

    /// pmig's own fds of this session (left out of the root's image).
    pub fn fds(&self) -> Vec<i32> {
        core::iter::once(self.listen).chain(self.members.iter().map(|m| m.sock)).chain(self.held.iter().copied()).collect()
    }

    /// Before a member writes its image (an exiting checkpoint, this process privileged and
    /// the member not): its established TCP connections are put in repair mode from here and
    /// their state handed to it, so that they move although it could not take that state
    /// itself (nginx's workers, running as nobody under a root master).
    /// Returns the copies it holds (see `held`).
    fn lend_repairs(shares: &[(i32, i32, u64)], m: &Member) -> Vec<i32> {
        use crate::fd::socket;
        let mut held = Vec::new();
        if !socket::can_repair_for_others() || has_cap(m.found.pid, CAP_NET_ADMIN) {
            return held;
        }
        let mut fds = Vec::new();
        let _ = sys::for_each_numbered_entry(&sys::cstr(&format!("/proc/{}/fd", m.found.pid)), |fd, _| fds.push(fd));
        for fd in fds {
            // A description several processes hold is saved by the lowest pid holding it.
            if shares.iter().any(|s| s.0 == m.found.pid && s.1 == fd && s.2 & pmig_abi::SHARE_FOLLOWER != 0) {
                continue;
            }
            match socket::repair_for(m.found.pid, fd) {
                None => {}
                Some(Err(e)) => debug!("tree: no repair state for fd {fd} of {} ({}): {e}", m.found.pid, m.found.comm),
                Some(Ok((copy, state))) => {
                    held.push(copy);
                    let Ok(mfd) = sys::memfd_create(b"pmig-repair\0", libc::MFD_CLOEXEC) else { continue };
                    let mfd = mfd as i32;
                    if sys::write_all(mfd, &state).is_ok() {
                        let _ = send(m.sock, REPAIR, fd as u64, "", Some(mfd));
                    }
                    let _ = sys::close(mfd);
                }
            }
        }
        held
    }

    /// Step 2: each member writes its image into `fd` (at the next page boundary); returns
    /// the tree's table for the root's manifest.
    pub fn dump_members(&mut self, fd: i32) -> Result<Vec<MemberState>, String> {
        let mut table = Vec::new();
        self.members.sort_by_key(|m| m.found.pid);
        // Every member writes its image into a memfd of its own, all at once (as many at a
        // time as there are cores to run them); the images are then copied into `fd` in pid
        // order, each on a page boundary.
        let mut bufs: Vec<i32> = Vec::with_capacity(self.members.len());
        let result = (|| {
            for m in &self.members {
                let f = &m.found;
                let who = |e: i32| format!("process {} ({}) of the tree: {}", f.pid, f.comm, Errno(e));
                let mfd = sys::memfd_create(b"pmig-member\0", libc::MFD_CLOEXEC).map_err(who)? as i32;
                bufs.push(mfd);
                let held = Self::lend_repairs(&self.shares, m);
                self.held.extend(held);
                for chunk in self.shares_of(f.pid).chunks(PAIRS_PER_MSG) {
                    let mut m2 = msg(SHARES, chunk.len() as u64, "");
                    for (k, (sfd, key)) in chunk.iter().enumerate() {
                        m2[16 + k * 16..20 + k * 16].copy_from_slice(&sfd.to_ne_bytes());
                        m2[24 + k * 16..32 + k * 16].copy_from_slice(&key.to_ne_bytes());
                    }
                    sys::send_with_fd(m.sock, &m2, None).map_err(who)?;
                }
                send(m.sock, DUMP, 0, "", Some(mfd)).map_err(who)?;
            }
            let mut lens = vec![0u64; self.members.len()];
            for (i, m) in self.members.iter().enumerate() {
                let f = &m.found;
                match recv(m.sock, DUMP_TIMEOUT_MS) {
                    Some((DONE, len, ..)) => lens[i] = len,
                    Some((FAIL, _, why, _)) => return Err(format!("process {} ({}) of the tree: {why}", f.pid, f.comm)),
                    _ => return Err(format!("process {} ({}) of the tree stopped answering while writing its image", f.pid, f.comm)),
                }
            }
            for (i, m) in self.members.iter().enumerate() {
                let f = &m.found;
                let end = sys::lseek(fd, 0, libc::SEEK_END).map_err(|e| format!("cannot size the image: {}", Errno(e)))?;
                let offset = end.div_ceil(4096) * 4096;
                sys::lseek(fd, offset as i64, libc::SEEK_SET).map_err(|e| format!("cannot seek in the image: {}", Errno(e)))?;
                copy_into(bufs[i], fd, lens[i]).map_err(|e| format!("cannot copy the image of process {} ({}): {}", f.pid, f.comm, Errno(e)))?;
                debug!("tree: {} ({}) wrote {} bytes, at {offset}", f.pid, f.comm, lens[i]);
                // A parent outside the tree: the process left it (daemonized), and comes back
                // as a child of the namespace's init.
                let inside = f.ppid == sys::getpid() || self.members.iter().any(|o| o.found.pid == f.ppid);
                table.push(MemberState {
                    pid: f.pid,
                    ppid: if inside { f.ppid } else { 0 },
                    pgid: f.pgid,
                    sid: f.sid,
                    comm: f.comm.clone(),
                    state: MemberKind::Live { offset, len: lens[i] },
                });
            }
            Ok(())
        })();
        for b in bufs {
            let _ = sys::close(b);
        }
        result?;
        for z in &self.zombies {
            table.push(MemberState {
                pid: z.pid,
                ppid: z.ppid,
                pgid: z.pgid,
                sid: z.sid,
                comm: z.comm.clone(),
                state: MemberKind::Zombie { status: z.exit_code },
            });
        }
        // Whatever follows (the root's image) starts on a page boundary too.
        let end = sys::lseek(fd, 0, libc::SEEK_END).map_err(|e| format!("cannot size the image: {}", Errno(e)))?;
        sys::lseek(fd, (end.div_ceil(4096) * 4096) as i64, libc::SEEK_SET).map_err(|e| format!("cannot seek in the image: {}", Errno(e)))?;
        Ok(table)
    }

    /// Step 3: every member goes on (`exit`: exits), and the session ends.
    pub fn finish(mut self, exit: bool) {
        self.end(exit);
    }

    fn end(&mut self, exit: bool) {
        for fd in self.held.drain(..) {
            let _ = sys::close(fd);
        }
        for m in self.members.drain(..) {
            let _ = send(m.sock, if exit { EXIT } else { RELEASE }, 0, "", None);
            let _ = sys::close(m.sock);
        }
        if self.listen >= 0 {
            let _ = sys::close(self.listen);
            self.listen = -1;
        }
    }
}

impl Drop for Session {
    /// A session given up (a member failed): every member stopped so far goes on.
    fn drop(&mut self) {
        self.end(false);
    }
}

/// A member's side of the root's checkpoint `nonce`: stop, write the image when asked, then go
/// on or exit as told. Runs in the member's checkpoint thread.
pub fn take_part(cfg: &'static config::Config, nonce: u32) {
    // Before it says hello: a member still getting its memory (lazily restored) is not
    // ready to be saved.
    if let Err(e) = crate::memory::wait_paged(crate::checkpoint::PAGED_WAIT_MS) {
        say!("checkpoint of this member skipped: {e}");
        return;
    }
    let sock = match sys::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0) {
        Ok(s) => s as i32,
        Err(_) => return,
    };
    if sys::connect(sock, &address(cfg.root_pid, nonce)).is_err() {
        debug!("tree: the root's checkpoint socket is gone");
        let _ = sys::close(sock);
        return;
    }
    let mut cred = [0u8; 12];
    let peer = match sys::getsockopt(sock, libc::SOL_SOCKET, libc::SO_PEERCRED, &mut cred) {
        Ok(12) => i32::from_ne_bytes([cred[0], cred[1], cred[2], cred[3]]),
        _ => 0,
    };
    if peer != cfg.root_pid || send(sock, HELLO, sys::getpid() as u64, "", None).is_err() {
        let _ = sys::close(sock);
        return;
    }
    if let Err(e) = thread::suspend_all(cfg.suspend_signal) {
        let _ = send(sock, FAIL, 0, e, None);
        let _ = sys::close(sock);
        return;
    }
    if send(sock, PARKED, 0, "", None).is_err() {
        thread::release_all();
        let _ = sys::close(sock);
        return;
    }
    crate::fd::socket::forget_repairs();
    if !crate::checkpoint::member_dump(cfg, sock) {
        let _ = sys::close(sock);
    }
}

/// Writes this member's image into an fd, given its shared `(fd, key)` pairs; returns its length.
pub type DumpInto<'a> = dyn FnMut(i32, &[Share]) -> Result<u64, String> + 'a;

/// `(fd, key)`: an fd whose open file description other processes of the tree hold too.
pub type Share = (i32, u64);

/// In the member, inside `save_and_call`: waits for the root's orders. Returns when the
/// member must go on; exits the process when told to.
pub fn serve(cfg: &config::Config, sock: i32, dump: &mut DumpInto<'_>) {
    let mut shares: Vec<(i32, u64)> = Vec::new();
    loop {
        let mut buf = [0u8; MSG_LEN];
        let got = match sys::poll_one(sock, libc::POLLIN, -1) {
            Ok(true) => sys::recv_with_fd(sock, &mut buf).ok(),
            Err(libc::EINTR) => continue,
            _ => None,
        };
        let Some((n, fd)) = got else { return };
        if n != MSG_LEN {
            return;
        }
        let (kind, value, _) = parse(&buf);
        if let (REPAIR, Some(mfd)) = (kind, fd) {
            let state = sys::read_file_vec(&sys::cstr(&format!("/proc/self/fd/{mfd}"))).unwrap_or_default();
            let _ = sys::close(mfd);
            crate::fd::socket::given_repair(value as i32, &state);
            continue;
        }
        if kind == SHARES {
            for k in 0..(value as usize).min(PAIRS_PER_MSG) {
                let at = 16 + k * 16;
                let sfd = i32::from_ne_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]);
                let mut key = [0u8; 8];
                key.copy_from_slice(&buf[at + 8..at + 16]);
                shares.push((sfd, u64::from_ne_bytes(key)));
            }
            continue;
        }
        match (kind, fd) {
            (DUMP, Some(fd)) => {
                let r = dump(fd, &shares);
                let _ = sys::close(fd);
                let _ = match r {
                    Ok(len) => send(sock, DONE, len, "", None),
                    Err(e) => send(sock, FAIL, 0, &e, None),
                };
            }
            (EXIT, _) => {
                debug!("tree: exiting with the tree (--exit)");
                let _ = cfg;
                sys::exit_group(0);
            }
            // Released, or the root is gone: go on, with the connections lent for repair (a
            // failed checkpoint) taken out of it.
            _ => {
                crate::fd::socket::undo_repairs();
                crate::fd::socket::forget_given();
                return;
            }
        }
    }
}

/// Copies the first `len` bytes of `from` (from its start) to `to` at its position.
fn copy_into(from: i32, to: i32, len: u64) -> Result<(), i32> {
    let mut off: i64 = 0;
    while (off as u64) < len {
        let want = (len - off as u64).min(1 << 30);
        // SAFETY: sendfile reads `from` at `off` (a local it advances) and writes `to`.
        let n = unsafe { pmig_abi::arch::syscall6(libc::SYS_sendfile as u64, to as u64, from as u64, &mut off as *mut i64 as u64, want, 0, 0) };
        if n == -(libc::EINTR as i64) {
            continue;
        }
        if n <= 0 {
            return Err(if n == 0 { libc::EIO } else { (-n) as i32 });
        }
    }
    Ok(())
}

/// Whether a request of the root is pending (and takes it).
pub fn pending_request() -> Option<u32> {
    match config::TREE_NONCE.swap(0, AcqRel) {
        0 => None,
        n => Some(n),
    }
}
