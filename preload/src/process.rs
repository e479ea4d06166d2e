//! Process-wide state: identity, command line, mm layout, auxv, cwd, umask, resource limits,
//! and the host it runs on (dump and restore side by side).

use crate::errno::Errno;
use crate::{log, sys};
use pmig_image::{HostState, MmState, ProcessAttrs, ProcessState, RlimitState};

/// The value of `key` (with its colon) in a `/proc/.../status` text.
pub fn status_field<'a>(status: &'a str, key: &str) -> Option<&'a str> {
    status.lines().find_map(|l| l.strip_prefix(key)).map(|v| v.trim())
}

/// Fields of `/proc/self/stat` after the command name, numbered as in proc(5).
fn stat_fields(stat: &str) -> Vec<u64> {
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    // Field 3 (state) is the first after ')': pad so index == proc(5) number.
    let mut v = vec![0u64, 0, 0];
    v.extend(after.split_whitespace().map(|f| f.parse::<i64>().unwrap_or(0) as u64));
    v
}

fn utsfield(f: &[libc::c_char]) -> String {
    let b: Vec<u8> = f.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
    String::from_utf8_lossy(&b).into_owned()
}

/// The host's description.
pub fn host() -> HostState {
    // SAFETY: an all-zero `utsname` is a valid value of this plain C struct.
    let mut u: libc::utsname = unsafe { core::mem::zeroed() };
    let _ = sys::uname(&mut u);
    HostState {
        machine: utsfield(&u.machine),
        kernel_release: utsfield(&u.release),
        hostname: utsfield(&u.nodename),
        xcr0: pmig_abi::arch::xcr0(),
        cpu_features: pmig_abi::arch::cpu_feature_words().to_vec(),
        time_ns: sys::realtime_ns(),
        monotonic_ns: sys::clock_ns(libc::CLOCK_MONOTONIC),
        boottime_ns: sys::clock_ns(libc::CLOCK_BOOTTIME),
    }
}

/// Reads the process-wide state.
pub fn dump() -> Result<ProcessState, String> {
    let read = |p: &[u8]| {
        sys::read_file_vec(p).map(|v| String::from_utf8_lossy(&v).into_owned()).map_err(|e| {
            format!("cannot read {}: {}", String::from_utf8_lossy(&p[..p.len() - 1]), Errno(e))
        })
    };
    let stat = read(b"/proc/self/stat\0")?;
    let status = read(b"/proc/self/status\0")?;
    let f = stat_fields(&stat);
    let get = |i: usize| f.get(i).copied().unwrap_or(0);
    let mm = MmState {
        start_code: get(26),
        end_code: get(27),
        start_stack: get(28),
        start_data: get(45),
        end_data: get(46),
        start_brk: get(47),
        brk: sys::brk_current(),
        arg_start: get(48),
        arg_end: get(49),
        env_start: get(50),
        env_end: get(51),
    };
    let auxv_bytes = sys::read_file_vec(b"/proc/self/auxv\0").map_err(|e| format!("cannot read auxv: {}", Errno(e)))?;
    let auxv = auxv_bytes.chunks_exact(8).map(|c| u64::from_ne_bytes(c.try_into().unwrap_or([0; 8]))).collect();
    let cmdline = sys::read_file_vec(b"/proc/self/cmdline\0").unwrap_or_default();
    let argv = cmdline.split(|&c| c == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
    let rlimits = (0..16u32)
        .filter_map(|r| {
            let mut l = libc::rlimit64 { rlim_cur: 0, rlim_max: 0 };
            sys::prlimit(r, None, Some(&mut l)).ok()?;
            Some(RlimitState { resource: r, cur: l.rlim_cur, max: l.rlim_max })
        })
        .collect();
    Ok(ProcessState {
        pid: crate::pid::getpid(),
        ppid: crate::pid::getppid(),
        uid: sys::getuid(),
        gid: sys::getgid(),
        exe: sys::readlink_string(b"/proc/self/exe\0").unwrap_or_default(),
        argv,
        comm: read(b"/proc/self/comm\0").unwrap_or_default().trim_end().to_string(),
        cwd: sys::readlink_string(b"/proc/self/cwd\0").unwrap_or_default(),
        umask: status_field(&status, "Umask:").and_then(|u| u32::from_str_radix(u, 8).ok()).unwrap_or(0o022),
        rlimits,
        attrs: attrs()?,
        mm,
        auxv,
        pending_signals: Vec::new(),
        creds: crate::creds::dump(&status),
        pgid: get(5) as i32,
        sid: get(6) as i32,
        cwd_deleted: deleted_cwd(),
        ctty: get(7) as u32,
        tpgid: get(8) as i32,
        ids: crate::pid::mode(),
    })
}

/// Makes `pgid` the foreground process group of this process's controlling terminal.
pub fn set_foreground(pgid: i32) -> Result<(), i32> {
    let tty = sys::openat(libc::AT_FDCWD, b"/dev/tty\0", libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC, 0)? as i32;
    let r = pmig_abi::pty::set_int(tty, pmig_abi::pty::TIOCSPGRP, pgid);
    let _ = sys::close(tty);
    r
}

/// Makes the file open on `exe_fd` this process's `/proc/self/exe`: `PR_SET_MM_MAP` again with
/// the mm fields as they are (the engine set them) and the file (needs
/// `CAP_CHECKPOINT_RESTORE` or `CAP_SYS_ADMIN` in the user namespace).
pub fn set_exe(exe_fd: i32) -> Result<(), i32> {
    let stat = sys::read_file_vec(b"/proc/self/stat\0")?;
    let f = stat_fields(&String::from_utf8_lossy(&stat));
    let get = |i: usize| f.get(i).copied().unwrap_or(0);
    let auxv = sys::read_file_vec(b"/proc/self/auxv\0")?;
    let map = pmig_abi::MmMap {
        start_code: get(26),
        end_code: get(27),
        start_data: get(45),
        end_data: get(46),
        start_brk: get(47),
        brk: sys::brk_current(),
        start_stack: get(28),
        arg_start: get(48),
        arg_end: get(49),
        env_start: get(50),
        env_end: get(51),
        auxv: auxv.as_ptr() as u64,
        auxv_size: auxv.len() as u32,
        exe_fd: exe_fd as u32,
    };
    sys::prctl(
        libc::PR_SET_MM,
        libc::PR_SET_MM_MAP as u64,
        &map as *const pmig_abi::MmMap as u64,
        core::mem::size_of::<pmig_abi::MmMap>() as u64,
        0,
    )
    .map(|_| ())
}

/// Puts back cwd, umask and resource limits.
/// Seccomp filters in force when libpmig started (the ones the program inherited, which a
/// restore inherits the same way from pmig-resume's side); more at a checkpoint are the
/// program's own.
pub static START_SECCOMP_FILTERS: core::sync::atomic::AtomicU32 = core::sync::atomic::AtomicU32::new(0);

/// `Seccomp_filters:` of this process (of its main thread, which `/proc/self/status`
/// describes).
pub fn seccomp_filters() -> u32 {
    let mut buf = [0u8; 8192];
    let long;
    let text = match sys::read_file(b"/proc/self/status\0", &mut buf) {
        Ok(n) if n < buf.len() => &buf[..n],
        // (A long `Groups:` line: read it whole.)
        _ => {
            long = sys::read_file_vec(b"/proc/self/status\0").unwrap_or_default();
            &long[..]
        }
    };
    let status = String::from_utf8_lossy(text);
    status_field(&status, "Seccomp_filters:").and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// [`seccomp_filters`] as libpmig starts, called by the main thread (the constructor): every
/// process of a tree calls it, and one without seccomp (`PR_GET_SECCOMP`, which answers for
/// the calling thread, is 0) has no filter, so it skips `/proc/self/status`, whose reading
/// costs tens of microseconds.
pub fn seccomp_filters_at_start() -> u32 {
    if sys::prctl(libc::PR_GET_SECCOMP, 0, 0, 0, 0) == Ok(0) {
        return 0;
    }
    seccomp_filters()
}

/// The process-wide attributes; a seccomp filter the program installed fails the checkpoint
/// (it cannot be installed again yet).
fn attrs() -> Result<ProcessAttrs, String> {
    let installed = seccomp_filters().saturating_sub(START_SECCOMP_FILTERS.load(core::sync::atomic::Ordering::Relaxed));
    if installed > 0 {
        return Err(format!("the program installed {installed} seccomp filter(s), which pmig cannot install again yet"));
    }
    let oom = sys::read_file_vec(b"/proc/self/oom_score_adj\0").unwrap_or_default();
    let mut subreaper = 0i32;
    let _ = sys::prctl(libc::PR_GET_CHILD_SUBREAPER, &mut subreaper as *mut i32 as u64, 0, 0, 0);
    Ok(ProcessAttrs {
        oom_score_adj: String::from_utf8_lossy(&oom).trim().parse().unwrap_or(0),
        thp_disable: sys::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0).unwrap_or(0) == 1,
        child_subreaper: subreaper != 0,
        mlockall: MLOCKALL.load(core::sync::atomic::Ordering::Relaxed),
        membarrier: MEMBARRIER.load(core::sync::atomic::Ordering::Relaxed),
    })
}

/// Gives the process its attributes back (one that cannot be is said in debug: lowering
/// `oom_score_adj` needs privileges the restore may not have).
fn restore_attrs(a: &ProcessAttrs) {
    let now = sys::read_file_vec(b"/proc/self/oom_score_adj\0").unwrap_or_default();
    if String::from_utf8_lossy(&now).trim().parse::<i32>().ok() != Some(a.oom_score_adj) {
        let text = a.oom_score_adj.to_string();
        let r = sys::openat(libc::AT_FDCWD, b"/proc/self/oom_score_adj\0", libc::O_WRONLY | libc::O_CLOEXEC, 0)
            .and_then(|fd| {
                let w = sys::write(fd as i32, text.as_bytes());
                let _ = sys::close(fd as i32);
                w
            });
        if let Err(e) = r {
            log::debug!("oom_score_adj stays as it is (not {}): {}", a.oom_score_adj, Errno(e));
        }
    }
    if a.thp_disable {
        let _ = sys::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
    if a.child_subreaper {
        let _ = sys::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    }
    if a.mlockall != 0 {
        if let Err(e) = sys::raw(libc::SYS_mlockall, &[a.mlockall as u64]) {
            log::say!("warning: mappings made from now on are not locked in memory as the program asked (mlockall {:#x}): {}", a.mlockall, Errno(e));
        }
        MLOCKALL.store(a.mlockall, core::sync::atomic::Ordering::Relaxed);
    }
    for bit in (0..32).map(|b| 1u32 << b).filter(|b| a.membarrier & b != 0) {
        if let Err(e) = sys::raw(libc::SYS_membarrier, &[u64::from(bit), 0, 0]) {
            log::say!("warning: the program's membarrier registration {bit:#x} cannot be made again: {}", Errno(e));
        }
    }
    MEMBARRIER.store(a.membarrier, core::sync::atomic::Ordering::Relaxed);
}

/// The membarrier registrations the program made (`MEMBARRIER_CMD_REGISTER_*` bits).
pub static MEMBARRIER: core::sync::atomic::AtomicU32 = core::sync::atomic::AtomicU32::new(0);

/// After a successful `membarrier(cmd, …)` through libc's `syscall()`.
pub fn membarrier_called(cmd: i32) {
    // GLOBAL_EXPEDITED, PRIVATE_EXPEDITED, PRIVATE_EXPEDITED_SYNC_CORE, PRIVATE_EXPEDITED_RSEQ.
    const REGISTER: i32 = 1 << 2 | 1 << 4 | 1 << 6 | 1 << 8;
    if cmd & REGISTER != 0 && (cmd as u32).is_power_of_two() {
        MEMBARRIER.fetch_or(cmd as u32, core::sync::atomic::Ordering::Relaxed);
    }
}

/// The `mlockall` flags for later mappings (`MCL_FUTURE | MCL_ONFAULT` bits) in force: set by
/// the wrappers, cleared in a forked child (the kernel does not pass them on).
pub static MLOCKALL: core::sync::atomic::AtomicI32 = core::sync::atomic::AtomicI32::new(0);

/// After a successful `mlockall(flags)` or (`None`) `munlockall()`.
pub fn locked_all(flags: Option<i32>) {
    let future = flags.filter(|f| f & libc::MCL_FUTURE != 0).map_or(0, |f| f & (libc::MCL_FUTURE | 4));
    MLOCKALL.store(future, core::sync::atomic::Ordering::Relaxed);
}

/// The working directory's attributes when it was deleted.
fn deleted_cwd() -> Option<pmig_image::FileMeta> {
    // SAFETY: an all-zero `stat` is a valid value of this plain C struct.
    let mut st: libc::stat = unsafe { core::mem::zeroed() };
    sys::fstatat(libc::AT_FDCWD, b"/proc/self/cwd\0", &mut st, 0).ok()?;
    (st.st_nlink == 0).then(|| crate::fd::meta_of(&st))
}

pub fn restore(p: &ProcessState) {
    restore_attrs(&p.attrs);
    let cwd = match (&p.cwd_deleted, p.cwd.strip_suffix(" (deleted)")) {
        // Deleted: an empty directory made again beside it, entered and removed.
        (Some(meta), Some(path)) => crate::fd::make_deleted_dir(path, 0, meta).and_then(|fd| {
            let r = sys::fchdir(fd).map_err(|e| format!("cannot enter it: {}", Errno(e)));
            let _ = sys::close(fd);
            r.map(|_| ())
        }),
        _ => sys::chdir(&sys::cstr(&p.cwd)).map(|_| ()).map_err(|e| format!("{}", Errno(e))),
    };
    if let Err(e) = cwd {
        log::say!("warning: cannot change to the saved working directory {}: {e}", p.cwd);
    }
    let _ = sys::umask(p.umask);
    for l in &p.rlimits {
        let mut cur = libc::rlimit64 { rlim_cur: 0, rlim_max: 0 };
        if sys::prlimit(l.resource, None, Some(&mut cur)).is_ok() && cur.rlim_cur == l.cur && cur.rlim_max == l.max {
            continue;
        }
        let want = libc::rlimit64 { rlim_cur: l.cur, rlim_max: l.max };
        if sys::prlimit(l.resource, Some(&want), None).is_err() {
            // Unprivileged, a hard limit cannot be raised: keep the soft one if it fits.
            let soft = libc::rlimit64 { rlim_cur: l.cur.min(cur.rlim_max), rlim_max: cur.rlim_max };
            if sys::prlimit(l.resource, Some(&soft), None).is_err() || soft.rlim_cur != l.cur {
                log::debug!("resource limit {} kept at {}/{}", l.resource, cur.rlim_cur, cur.rlim_max);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_numbered_as_in_proc5() {
        let f = stat_fields("1234 (a) b) c) S 1 2 3 4 5");
        assert_eq!(f[3], 0); // "S" is not a number
        assert_eq!(f[4], 1);
        assert_eq!(f[8], 5);
    }

    #[test]
    fn dump_reads_this_process() {
        let p = dump().unwrap();
        assert_eq!(p.pid, std::process::id() as i32);
        assert!(p.mm.start_code > 0 && p.mm.end_code > p.mm.start_code);
        assert!(p.mm.brk >= p.mm.start_brk);
        assert!(p.auxv.len() > 10);
        assert!(!p.argv.is_empty());
    }
}
