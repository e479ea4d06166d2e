//! A human description of an image, for `pmig-resume --inspect`.

use crate::{FileKind, FileState, Manifest, RegionKind, SocketRole, SocketState};
use std::fmt::Write;

/// The names of a region's `ADVICE_*` bits, as ` [nr dc ...]` (empty for none).
fn advice_text(flags: u32) -> String {
    let names = [
        (crate::ADVICE_NORESERVE, "noreserve"),
        (crate::ADVICE_DONTFORK, "dontfork"),
        (crate::ADVICE_DONTDUMP, "dontdump"),
        (crate::ADVICE_HUGEPAGE, "hugepage"),
        (crate::ADVICE_NOHUGEPAGE, "nohugepage"),
        (crate::ADVICE_WIPEONFORK, "wipeonfork"),
        (crate::ADVICE_LOCKED, "locked"),
        (crate::ADVICE_LOCKONFAULT, "lockonfault"),
        (crate::ADVICE_RANDOM, "random"),
        (crate::ADVICE_SEQUENTIAL, "sequential"),
    ];
    let on: Vec<&str> = names.iter().filter(|(b, _)| flags & b != 0).map(|(_, n)| *n).collect();
    if on.is_empty() {
        String::new()
    } else {
        format!(" [{}]", on.join(" "))
    }
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
}

fn prot(p: u32, shared: bool) -> String {
    let mut s = String::new();
    s.push(if p & 1 != 0 { 'r' } else { '-' });
    s.push(if p & 2 != 0 { 'w' } else { '-' });
    s.push(if p & 4 != 0 { 'x' } else { '-' });
    s.push(if shared { 's' } else { 'p' });
    s
}

fn content_words(c: &crate::FileContent) -> String {
    if c.stored() == c.size {
        format!("{} bytes", c.size)
    } else {
        format!("{} bytes, {} of data in {} extent(s), the rest holes", c.size, c.stored(), c.extents.len())
    }
}

/// How each fd will come back, in words.
fn fd_plan(fd: i32, f: &FileState, ptys: &[u32]) -> String {
    let tree_pty = |k: &FileKind| matches!(k, FileKind::Tty { path } if path.strip_prefix("/dev/pts/").and_then(|n| n.parse().ok()).is_some_and(|n: u32| ptys.contains(&n)));
    match &f.kind {
        k if tree_pty(k) => format!("opened from its master, made again ({})", match k { FileKind::Tty { path } => path.as_str(), _ => "" }),
        k if fd <= 2 && k.inherited_as_stdio() => "becomes pmig-resume's own".into(),
        FileKind::Regular { path, .. } => format!("reopened: {path} at offset {}", f.pos),
        FileKind::Deleted { path, content, .. } => format!("recreated from the image ({}; was {path})", content_words(content)),
        FileKind::DeletedDir { path, .. } => format!("an empty directory made again and removed (was {path})"),
        FileKind::Memfd { name, content, .. } => format!("memfd {name:?} recreated ({})", content_words(content)),
        FileKind::CharDevice { path } => format!("reopened: {path}"),
        FileKind::Tty { path } => format!("reopened: terminal {path} (from its master, when that is in the image)"),
        FileKind::PtyMaster { index, pty } => format!(
            "pty master of /dev/pts/{index} made again{}",
            if pty.saved { format!(" ({} bytes queued for the slave, {} for the master)", pty.input.len(), pty.output.len()) } else { String::new() }
        ),
        FileKind::Pipe { ino, fifo: Some(p), data, .. } => format!("FIFO {p} reopened (pipe:[{ino}], {} bytes queued)", data.len()),
        FileKind::Pipe { ino, read_end, data, .. } => format!(
            "pipe:[{ino}] {} end recreated ({} bytes queued)",
            if *read_end { "read" } else { "write" },
            data.len()
        ),
        FileKind::Socket(s) => socket_plan(s),
        FileKind::EventFd { count, semaphore } => {
            format!("eventfd recreated (count {count}{})", if *semaphore { ", semaphore" } else { "" })
        }
        FileKind::TimerFd { clockid, value_ns, interval_ns, .. } => {
            format!("timerfd recreated (clock {clockid}, next in {value_ns} ns, every {interval_ns} ns)")
        }
        FileKind::SignalFd { mask } => format!("signalfd recreated (mask {mask:#x})"),
        FileKind::Epoll { targets } => format!("epoll recreated ({} registrations)", targets.len()),
        FileKind::Inotify { watches } => format!("inotify recreated ({} watches)", watches.len()),
        FileKind::Other { link } => format!("left out at checkpoint, closed after restore ({link})"),
    }
}

fn socket_plan(s: &SocketState) -> String {
    let fam = match s.family {
        1 => "unix",
        2 => "ipv4",
        10 => "ipv6",
        _ => "other",
    };
    let ty = match s.sotype {
        1 => "stream",
        2 => "dgram",
        5 => "seqpacket",
        _ => "other",
    };
    let how = match (s.role, &s.tcp) {
        (SocketRole::Listening, _) => "bound and listening again".to_string(),
        (SocketRole::Bound, _) => "bound again".to_string(),
        (SocketRole::Unbound, _) => "recreated".to_string(),
        (SocketRole::Pair, _) => format!("socketpair recreated ({} bytes queued)", s.recv_queue.len()),
        (SocketRole::Connected, Some(_)) => "connection restored with TCP repair".to_string(),
        (SocketRole::Connected, None) if s.sotype == 2 => "connected again to its peer".to_string(),
        (SocketRole::Connected, None) if s.family == 1 => {
            "peer outside the program: the program reads what was queued, then EOF".to_string()
        }
        (SocketRole::Connected, None) => {
            "connection reset (TCP repair needs root and --exit): the program sees ECONNRESET".to_string()
        }
    };
    format!("{fam} {ty} socket:[{}] {how}", s.ino)
}

/// Renders what the image holds, without restoring anything. `ptys`: the indices of the pty
/// masters the whole image holds (their slaves are not pmig-resume's terminal).
pub fn describe(m: &Manifest, file_len: u64, ptys: &[u32]) -> String {
    let mut o = String::new();
    let p = &m.process;
    let _ = writeln!(o, "program:   {} (pid {} on {}, kernel {})", p.exe, p.pid, m.host.hostname, m.host.kernel_release);
    let _ = writeln!(o, "argv:      {:?}", p.argv);
    let _ = writeln!(o, "cwd:       {}", p.cwd);
    match (p.ctty, p.ctty_pty()) {
        (0, _) => {}
        (_, Some(n)) if p.sid == p.pid => {
            let _ = writeln!(o, "terminal:  /dev/pts/{n}, controlling terminal of the session it leads (foreground group {})", p.tpgid);
        }
        (_, Some(n)) => {
            let _ = writeln!(o, "terminal:  /dev/pts/{n} (its session's)");
        }
        (t, None) => {
            let _ = writeln!(o, "terminal:  device {}:{} (its session's)", (t >> 8) & 0xfff, (t & 0xff) | ((t >> 12) & 0xfff00));
        }
    }
    let a = &p.attrs;
    let _ = writeln!(
        o,
        "attrs:     oom_score_adj {}, THP {}, child subreaper {}{} (each thread's nice, policy, affinity, I/O priority, timer slack, parent-death signal, personality and no_new_privs come back with it)",
        a.oom_score_adj,
        if a.thp_disable { "disabled" } else { "allowed" },
        if a.child_subreaper { "yes" } else { "no" },
        match a.mlockall {
            0 => "",
            f if f & 4 != 0 => ", later mappings locked on fault (mlockall MCL_FUTURE|MCL_ONFAULT)",
            _ => ", later mappings locked (mlockall MCL_FUTURE)",
        },
    );
    if a.membarrier != 0 {
        let _ = writeln!(o, "           membarrier registrations {:#x} (made again)", a.membarrier);
    }
    let c = &p.creds;
    let _ = writeln!(
        o,
        "user:      uids {:?} gids {:?} (real, effective, saved, fs), groups {:?}, capabilities {:#x}, umask {:03o}",
        c.uids, c.gids, c.groups, c.cap_effective, p.umask
    );
    let _ = writeln!(
        o,
        "ids:       {} (parent pid {}); pmig-resume gives it this pid and these tids again where it can make a pid namespace",
        match p.ids {
            crate::IdsMode::Original => "the kernel's own: never restored",
            crate::IdsMode::Exact => "exact: restored with its saved pid and tids",
            crate::IdsMode::Virtual => "virtual: restored with new ids, libc answering the saved ones",
        },
        p.ppid
    );
    let mm = &p.mm;
    let _ = writeln!(
        o,
        "mm:        code {:#x}-{:#x} data {:#x}-{:#x} brk {:#x}-{:#x} stack {:#x} args {:#x}-{:#x} env {:#x}-{:#x}",
        mm.start_code, mm.end_code, mm.start_data, mm.end_data, mm.start_brk, mm.brk, mm.start_stack, mm.arg_start,
        mm.arg_end, mm.env_start, mm.env_end
    );
    let _ = writeln!(
        o,
        "settings:  image {}, {} after checkpoint, checkpoint signal {}",
        m.settings.image_path,
        if m.settings.exit_after { "exit" } else { "continue" },
        m.settings.signal
    );
    let _ = writeln!(o, "image:     {} on disk, {} of saved pages", mib(file_len), mib(m.saved_bytes()));
    if !m.tree.is_empty() {
        let _ = writeln!(o, "tree:      {} processes (pid, parent, group, session, program, state)", m.tree.len() + 1);
        let _ = writeln!(o, "  {:<8} {:<8} {:<8} {:<8} {:<16} running (this image's program, the root)", p.pid, p.ppid, p.pgid, p.sid, p.comm);
        for t in &m.tree {
            let state = match &t.state {
                crate::MemberKind::Live { offset, len } => format!("running ({} at offset {offset})", mib(*len)),
                crate::MemberKind::Zombie { status } if status & 0x7f == 0 => format!("zombie (exit status {})", (status >> 8) & 0xff),
                crate::MemberKind::Zombie { status } => format!("zombie (killed by signal {})", status & 0x7f),
                crate::MemberKind::Unknown => "unknown".into(),
            };
            let _ = writeln!(o, "  {:<8} {:<8} {:<8} {:<8} {:<16} {state}", t.pid, t.ppid, t.pgid, t.sid, t.comm);
        }
    }
    let _ = writeln!(o, "threads:   {}", m.threads.len());
    for t in &m.threads {
        let _ = writeln!(o, "  tid {:<8} {}{}", t.tid, t.name, if t.main { " (main)" } else { "" });
    }
    let _ = writeln!(o, "regions:   {}", m.regions.len());
    for r in &m.regions {
        let what = match &r.kind {
            RegionKind::Anon => "anonymous".to_string(),
            RegionKind::Stack => "[stack]".to_string(),
            RegionKind::Heap => "[heap]".to_string(),
            RegionKind::File { path, offset, .. } => format!("{path} @{offset:#x}"),
            RegionKind::SysvShm { key, shmid, size, .. } => format!("SysV shm key {key:#x} id {shmid} ({size} bytes)"),
            RegionKind::SharedObject { object, offset } => match m.objects.get(*object as usize) {
                Some(o) => format!("shared object {} @{offset:#x} ({} bytes)", o.name, o.size),
                None => "(damaged object reference)".to_string(),
            },
        };
        let saved: u64 = r.runs.iter().map(|x| x.len).sum();
        let flags = m.advice.iter().find(|a| a.start <= r.start && r.end <= a.end).map_or(String::new(), |a| advice_text(a.flags));
        let _ = writeln!(
            o,
            "  {:012x}-{:012x} {} {:>10} saved {:>10}  {}{}",
            r.start,
            r.end,
            prot(r.prot, r.shared),
            mib(r.end - r.start),
            mib(saved),
            what,
            flags
        );
    }
    let _ = writeln!(o, "fds:       {}", m.fds.len());
    for f in &m.fds {
        let Some(file) = m.files.get(f.file as usize) else {
            let _ = writeln!(o, "  {:<4} (damaged entry)", f.fd);
            continue;
        };
        let shared: Vec<String> =
            m.fds.iter().filter(|g| g.file == f.file && g.fd != f.fd).map(|g| g.fd.to_string()).collect();
        let locks: Vec<String> = file
            .locks
            .iter()
            .map(|l| {
                let range = match (l.kind, l.end) {
                    (crate::LockKind::Flock, _) => String::new(),
                    (_, Some(e)) => format!(" {}-{e}", l.start),
                    (_, None) => format!(" {}-EOF", l.start),
                };
                format!("{:?} {}{range}", l.kind, if l.write { "write" } else { "read" })
            })
            .collect();
        let _ = writeln!(
            o,
            "  {:<4} {:<8}{}{} {}{}",
            f.fd,
            file.kind.name(),
            if f.cloexec { " cloexec" } else { "" },
            if shared.is_empty() { String::new() } else { format!(" (shared with fd {})", shared.join(", ")) },
            fd_plan(f.fd, file, ptys),
            if locks.is_empty() { String::new() } else { format!(" [locks: {}]", locks.join(", ")) }
        );
    }
    let handled: Vec<String> =
        m.signals.iter().filter(|s| s.handler > 1).map(|s| s.sig.to_string()).collect();
    let _ = writeln!(o, "signals:   handlers for {}", if handled.is_empty() { "none".into() } else { handled.join(" ") });
    for t in &m.timers {
        let _ = writeln!(
            o,
            "timer:     id {} clock {} signal {} next in {} ns, every {} ns",
            t.id, t.clockid, t.signo, t.value_ns, t.interval_ns
        );
    }
    for t in m.itimers.iter().filter(|t| t.value_us != 0 || t.interval_us != 0) {
        let _ = writeln!(o, "itimer:    {} next in {} us, every {} us", t.which, t.value_us, t.interval_us);
    }
    for x in &m.sysv {
        let what = match &x.kind {
            crate::SysvKind::Semaphores { values } => format!("semaphore set, values {values:?}"),
            crate::SysvKind::Messages { messages, .. } => format!("message queue, {} message(s) queued", messages.len()),
        };
        let _ = writeln!(o, "sysv:      id {} key {:#x} mode {:o} owner {}:{}: {what}", x.id, x.key, x.mode, x.uid, x.gid);
    }
    o
}
