//! Kernel event objects, all `anon_inode` files whose state `/proc/self/fdinfo` shows:
//! eventfd (counter, semaphore mode), timerfd (clock, remaining time, interval, unread
//! expirations), signalfd (mask) and epoll (each registration's fd, events and data).

use crate::errno::Errno;
use super::{DumpCtx, FdInfo, Ops, RestoreCtx};
use crate::sys;
use pmig_image::{EpollTarget, FileKind, FileState};

pub const OPS: Ops = Ops { name: "event", dump, restore };

/// `TFD_IOC_SET_TICKS`: sets a timerfd's unread expiration count.
const TFD_IOC_SET_TICKS: u64 = 0x4008_5400;

/// Parses `(sec, nsec)` as fdinfo prints timerfd times, into nanoseconds.
fn parse_time(v: &str) -> Option<u64> {
    let (s, n) = v.trim().trim_start_matches('(').trim_end_matches(')').split_once(',')?;
    Some(s.trim().parse::<u64>().ok()? * 1_000_000_000 + n.trim().parse::<u64>().ok()?)
}

/// Parses the `tfd:` lines of an epoll fdinfo: each target, and the inode of its file.
fn epoll_targets(fdinfo: &str) -> Vec<(EpollTarget, u64)> {
    fdinfo
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            if it.next()? != "tfd:" {
                return None;
            }
            let fd = it.next()?.parse().ok()?;
            let _ = it.next()?; // "events:"
            let events = u32::from_str_radix(it.next()?, 16).ok()?;
            let _ = it.next()?; // "data:"
            let data = u64::from_str_radix(it.next()?, 16).ok()?;
            let ino = it.find_map(|f| f.strip_prefix("ino:")).and_then(|v| u64::from_str_radix(v, 16).ok()).unwrap_or(0);
            Some((EpollTarget { fd, events, data, via: -1 }, ino))
        })
        .collect()
}

/// The targets of epoll set `epfd`, each with an fd of this process that names its file
/// (`via`) when its registered number no longer does (closed, or reused for another file).
fn epoll_dump(epfd: i32, fdinfo: &str) -> Result<Vec<EpollTarget>, String> {
    let mut out: Vec<EpollTarget> = Vec::new();
    for (mut t, ino) in epoll_targets(fdinfo) {
        // fdinfo lists the set in its own order, which is the order kcmp counts
        // registrations under one number in.
        let toff = out.iter().filter(|o| o.fd == t.fd).count() as u32;
        if sys::kcmp_epoll_target(t.fd, epfd, t.fd, toff) != Ok(0) {
            let mut found = -1;
            let _ = sys::for_each_numbered_entry(b"/proc/self/fd\0", |fd, dir| {
                if found < 0 && fd != dir {
                    // SAFETY: an all-zero `stat` is a valid value of this plain C struct.
                    let mut st: libc::stat = unsafe { core::mem::zeroed() };
                    if sys::fstat(fd, &mut st).is_ok() && st.st_ino == ino && sys::kcmp_epoll_target(fd, epfd, t.fd, toff) == Ok(0) {
                        found = fd;
                    }
                }
            });
            if found < 0 {
                return Err(format!(
                    "a file it watches (registered as fd {}) is no longer open in this process; pmig cannot register it again",
                    t.fd
                ));
            }
            // (`found` is `t.fd` itself when the first comparison failed for another reason.)
            t.via = if found == t.fd { -1 } else { found };
        }
        out.push(t);
    }
    Ok(out)
}

fn dump(i: &FdInfo, _: &mut DumpCtx) -> Option<Result<FileKind, String>> {
    let bad = |what: &str| Some(Err(format!("cannot read the {what}'s state from fdinfo")));
    match i.link.as_str() {
        "anon_inode:[eventfd]" => {
            // The kernel prints the count in hex (`%16llx`).
            let Some(count) = i.field("eventfd-count:").and_then(|v| u64::from_str_radix(v.trim(), 16).ok()) else { return bad("eventfd") };
            let semaphore = i.field("eventfd-semaphore:") == Some("1");
            Some(Ok(FileKind::EventFd { count, semaphore }))
        }
        "anon_inode:[timerfd]" => {
            let clockid = i.field("clockid:").and_then(|v| v.parse().ok());
            let ticks = i.field("ticks:").and_then(|v| v.parse().ok());
            let value = i.field("it_value:").and_then(parse_time);
            let interval = i.field("it_interval:").and_then(parse_time);
            match (clockid, ticks, value, interval) {
                (Some(clockid), Some(ticks), Some(value_ns), Some(interval_ns)) => {
                    Some(Ok(FileKind::TimerFd { clockid, value_ns, interval_ns, ticks }))
                }
                _ => bad("timerfd"),
            }
        }
        "anon_inode:[signalfd]" => match i.field("sigmask:").and_then(|v| u64::from_str_radix(v, 16).ok()) {
            Some(mask) => Some(Ok(FileKind::SignalFd { mask })),
            None => bad("signalfd"),
        },
        // Another process of the tree saves (and makes) an epoll set it shares with this one,
        // whose targets may be fds of that process only.
        "anon_inode:[eventpoll]" if i.share & pmig_abi::SHARE_FOLLOWER != 0 => Some(Ok(FileKind::Epoll { targets: Vec::new() })),
        "anon_inode:[eventpoll]" => Some(epoll_dump(i.fd, &i.fdinfo).map(|targets| FileKind::Epoll { targets })),
        _ => None,
    }
}

fn ts(ns: u64) -> libc::timespec {
    libc::timespec { tv_sec: (ns / 1_000_000_000) as i64, tv_nsec: (ns % 1_000_000_000) as i64 }
}

fn restore(f: &FileState, ctx: &mut RestoreCtx) -> Option<Result<i32, String>> {
    let cloexec = libc::O_CLOEXEC;
    Some(match &f.kind {
        FileKind::EventFd { count, semaphore } => {
            let flags = cloexec | if *semaphore { libc::EFD_SEMAPHORE } else { 0 };
            sys::eventfd2(0, flags).map_err(|e| format!("eventfd: {}", Errno(e))).and_then(|fd| {
                let fd = fd as i32;
                if *count > 0 {
                    sys::write_all(fd, &count.to_ne_bytes()).map_err(|e| format!("eventfd write: {}", Errno(e)))?;
                }
                Ok(fd)
            })
        }
        FileKind::TimerFd { clockid, value_ns, interval_ns, ticks } => {
            // The timer ran on while the process was an image: expirations in the gap become
            // unread ticks, as they would have for a stopped process.
            let (mut value_ns, mut ticks) = (*value_ns, *ticks);
            let gap_ns = ctx.gap.on(*clockid);
            // A periodic timer that expired and was not read yet shows 0 left (the kernel
            // re-arms it on read): its next expiry is about one interval on.
            if value_ns == 0 && *interval_ns != 0 {
                value_ns = *interval_ns;
            }
            if value_ns != 0 && gap_ns >= value_ns {
                let over = gap_ns - value_ns;
                ticks += 1 + if *interval_ns > 0 { over / interval_ns } else { 0 };
                value_ns = if *interval_ns > 0 { interval_ns - over % interval_ns } else { 0 };
            } else if value_ns != 0 {
                value_ns -= gap_ns;
            }
            let (value_ns, ticks) = (&value_ns, &ticks);
            sys::timerfd_create(*clockid, cloexec).map_err(|e| format!("timerfd_create: {}", Errno(e))).and_then(|fd| {
                let fd = fd as i32;
                if *value_ns != 0 {
                    // An armed timer with 0 left fires at once rather than disarm.
                    let v = libc::itimerspec { it_interval: ts(*interval_ns), it_value: ts((*value_ns).max(1)) };
                    sys::timerfd_settime(fd, &v).map_err(|e| format!("timerfd_settime: {}", Errno(e)))?;
                }
                if *ticks > 0 {
                    sys::ioctl(fd, TFD_IOC_SET_TICKS, ticks as *const u64 as u64)
                        .map_err(|e| format!("TFD_IOC_SET_TICKS: {}", Errno(e)))?;
                }
                Ok(fd)
            })
        }
        FileKind::SignalFd { mask } => {
            sys::signalfd(*mask, cloexec).map(|fd| fd as i32).map_err(|e| format!("signalfd: {}", Errno(e)))
        }
        FileKind::Epoll { targets } => sys::epoll_create1(cloexec).map_err(|e| format!("epoll_create1: {}", Errno(e))).map(|ep| {
            let ep = ep as i32;
            for t in targets {
                if let Err(e) = register(ep, t) {
                    crate::log::say!("warning: cannot register fd {} with epoll again: {}", t.fd, Errno(e));
                }
            }
            ep
        }),
        _ => return None,
    })
}

/// Registers `t` with `ep` under its own fd number. A target whose number the program had
/// since closed or given to another file (`via` names its file now): that number is made to
/// name the file just for the registration, and then given back what it was.
fn register(ep: i32, t: &EpollTarget) -> Result<u64, i32> {
    if t.via < 0 || t.via == t.fd {
        return sys::epoll_add(ep, t.fd, t.events, t.data);
    }
    // What the number holds now (a file of the program's, or nothing), with its FD_CLOEXEC.
    let was = sys::fcntl(t.fd, libc::F_GETFD, 0).ok().map(|fl| fl as i32 & libc::FD_CLOEXEC);
    let saved = match was {
        Some(_) => Some(sys::fcntl(t.fd, libc::F_DUPFD_CLOEXEC, 0)? as i32),
        None => None,
    };
    let r = sys::dup3(t.via, t.fd, 0).and_then(|_| sys::epoll_add(ep, t.fd, t.events, t.data));
    match (saved, was) {
        (Some(s), Some(cloexec)) => {
            let _ = sys::dup3(s, t.fd, if cloexec != 0 { libc::O_CLOEXEC } else { 0 });
            let _ = sys::close(s);
        }
        _ => {
            let _ = sys::close(t.fd);
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fdinfo_times_and_epoll_lines() {
        assert_eq!(parse_time("(1, 500)"), Some(1_000_000_500));
        assert_eq!(parse_time(" (0, 0)"), Some(0));
        let t: Vec<EpollTarget> = epoll_targets("pos:\t0\ntfd:        3 events:       19 data:                3  pos:0 ino:40f sdev:10\ntfd:       12 events: 80000001 data: ffffffffffffffff  pos:0 ino:1 sdev:2\n").into_iter().map(|(t, _)| t).collect();
        assert_eq!(t, vec![
            EpollTarget { fd: 3, events: 0x19, data: 3, via: -1 },
            EpollTarget { fd: 12, events: 0x8000_0001, data: u64::MAX, via: -1 },
        ]);
    }
}
