//! POSIX timers (`timer_create`): read from `/proc/self/timers` and `timer_gettime` at
//! checkpoint; made again with the same ids (`PR_TIMER_CREATE_RESTORE_IDS`, Linux 6.16) at
//! restore, once the program's threads exist again (a timer may signal one thread).

use crate::errno::Errno;
use crate::{log, pid, sys};
use pmig_abi::arch::syscall6;
use pmig_image::PosixTimerState;

/// `prctl` option that makes `timer_create` take the id it is given.
const PR_TIMER_CREATE_RESTORE_IDS: i32 = 77;

/// The kernel's `struct sigevent` (64 bytes on x86_64).
#[repr(C)]
#[derive(Clone, Copy)]
struct KSigevent {
    value: u64,
    signo: i32,
    notify: i32,
    tid: i32,
    _pad: [i32; 11],
}

fn timer_gettime(id: i32) -> Result<libc::itimerspec, i32> {
    // SAFETY: an all-zero itimerspec is valid; the kernel writes it.
    let mut v: libc::itimerspec = unsafe { core::mem::zeroed() };
    // SAFETY: timer_gettime writes one itimerspec to the pointer we own.
    let r = unsafe { syscall6(libc::SYS_timer_gettime as u64, id as u64, &mut v as *mut _ as u64, 0, 0, 0, 0) };
    if r < 0 {
        Err(-r as i32)
    } else {
        Ok(v)
    }
}

fn ns(t: &libc::timespec) -> u64 {
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

fn ts(ns: u64) -> libc::timespec {
    libc::timespec { tv_sec: (ns / 1_000_000_000) as i64, tv_nsec: (ns % 1_000_000_000) as i64 }
}

/// Parses `/proc/self/timers`.
pub fn parse(text: &str) -> Vec<PosixTimerState> {
    let mut out: Vec<PosixTimerState> = Vec::new();
    for line in text.lines() {
        let (key, val) = match line.split_once(':') {
            Some((k, v)) => (k.trim(), v.trim()),
            None => continue,
        };
        match key {
            "ID" => out.push(PosixTimerState { id: val.parse().unwrap_or(-1), ..Default::default() }),
            "signal" => {
                if let (Some(t), Some((sig, value))) = (out.last_mut(), val.split_once('/')) {
                    t.signo = sig.parse().unwrap_or(0);
                    t.sival = u64::from_str_radix(value, 16).unwrap_or(0);
                }
            }
            "notify" => {
                // "signal/pid.N", "none/pid.N", or with "tid.N" for SIGEV_THREAD_ID.
                if let (Some(t), Some((how, who))) = (out.last_mut(), val.split_once('/')) {
                    let (kind, id) = who.split_once('.').unwrap_or(("pid", "0"));
                    t.notify = match how {
                        "none" => libc::SIGEV_NONE,
                        "thread" => libc::SIGEV_THREAD,
                        _ => libc::SIGEV_SIGNAL,
                    };
                    if kind == "tid" {
                        t.notify |= libc::SIGEV_THREAD_ID;
                        t.tid = id.parse().unwrap_or(0);
                    }
                }
            }
            "ClockID" => {
                if let Some(t) = out.last_mut() {
                    t.clockid = val.parse().unwrap_or(0);
                }
            }
            _ => {}
        }
    }
    out.retain(|t| t.id >= 0);
    out
}

/// Every POSIX timer with its remaining time.
pub fn dump() -> Result<Vec<PosixTimerState>, String> {
    let text = match sys::read_file_vec(b"/proc/self/timers\0") {
        Ok(t) => String::from_utf8_lossy(&t).into_owned(),
        Err(libc::ENOENT) => return Ok(Vec::new()),
        Err(e) => return Err(format!("cannot read /proc/self/timers: {}", Errno(e))),
    };
    let mut timers = parse(&text);
    for t in timers.iter_mut() {
        let v = timer_gettime(t.id).map_err(|e| format!("timer_gettime({}): {}", t.id, Errno(e)))?;
        t.value_ns = ns(&v.it_value);
        t.interval_ns = ns(&v.it_interval);
        if t.notify & libc::SIGEV_THREAD_ID != 0 {
            t.tid = pid::virt_tid(t.tid);
        }
    }
    Ok(timers)
}

/// The time that passed between a checkpoint and its restore, per kind of clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct Gap {
    /// On `CLOCK_REALTIME` (the wall clock), always the real gap.
    pub wall_ns: u64,
    /// On the program's `CLOCK_MONOTONIC`/`CLOCK_BOOTTIME`: about zero in a time namespace
    /// that continues them from the checkpoint (the program never sees the gap), else the
    /// wall gap.
    pub clock_ns: u64,
}

impl Gap {
    /// `wall_ns` of wall time passed; the monotonic clock went from `saved_mono` to `now_mono`.
    pub fn new(wall_ns: u64, saved_mono: u64, now_mono: u64) -> Gap {
        let d = now_mono.wrapping_sub(saved_mono);
        // Only a plausible monotonic gap is the program's (same clock, or a time namespace).
        let clock_ns = if saved_mono != 0 && now_mono >= saved_mono && d <= wall_ns.saturating_add(2_000_000_000) { d } else { wall_ns };
        Gap { wall_ns, clock_ns }
    }

    /// The gap as a timer on `clockid` counts it.
    pub fn on(&self, clockid: i32) -> u64 {
        match clockid {
            libc::CLOCK_REALTIME | libc::CLOCK_REALTIME_ALARM | libc::CLOCK_TAI => self.wall_ns,
            _ => self.clock_ns,
        }
    }
}

/// Makes the timers again, with their ids; `gap` is the time passed since the checkpoint.
pub fn restore(saved: &[PosixTimerState], gap: Gap) {
    if saved.is_empty() {
        return;
    }
    let same_ids = sys::prctl(PR_TIMER_CREATE_RESTORE_IDS, 1, 0, 0, 0).is_ok();
    for t in saved {
        let sev = KSigevent {
            value: t.sival,
            signo: t.signo,
            notify: t.notify,
            tid: if t.notify & libc::SIGEV_THREAD_ID != 0 { pid::to_real(t.tid) } else { 0 },
            _pad: [0; 11],
        };
        let mut id = t.id;
        // SAFETY: timer_create reads the sigevent and reads/writes the id, both ours.
        let r = unsafe {
            syscall6(libc::SYS_timer_create as u64, t.clockid as u64, &sev as *const _ as u64, &mut id as *mut i32 as u64, 0, 0, 0)
        };
        if r < 0 || id != t.id {
            log::say!("warning: cannot make POSIX timer {} again: {} (got id {id})", t.id, Errno(-r as i32));
            continue;
        }
        // A periodic timer whose expiry is being delivered may show 0 left: one interval on.
        let left = if t.value_ns == 0 { t.interval_ns } else { t.value_ns };
        if left == 0 {
            continue;
        }
        // Time spent as an image counts (as the timer's clock saw it); an expiry missed
        // meanwhile fires at once.
        let gap_ns = gap.on(t.clockid);
        let value = if gap_ns >= left { 1 } else { left - gap_ns };
        let v = libc::itimerspec { it_interval: ts(t.interval_ns), it_value: ts(value) };
        // SAFETY: timer_settime reads one itimerspec we own.
        let r = unsafe { syscall6(libc::SYS_timer_settime as u64, id as u64, 0, &v as *const _ as u64, 0, 0, 0) };
        if r < 0 {
            log::say!("warning: cannot arm POSIX timer {}: {}", t.id, Errno(-r as i32));
        }
    }
    if same_ids {
        let _ = sys::prctl(PR_TIMER_CREATE_RESTORE_IDS, 0, 0, 0, 0);
    }
}

/// The signal pmig's timer thread waits for (`SIGEV_THREAD` timers).
pub const TIMER_SIGNAL: i32 = 61;

/// What a `SIGEV_THREAD` timer calls: kept on the heap, its address is the timer's signal value.
struct ThreadNotify {
    func: extern "C" fn(libc::sigval),
    value: libc::sigval,
}

/// The tid of pmig's timer thread (0 until the first `SIGEV_THREAD` timer).
static TIMER_THREAD: std::sync::OnceLock<i32> = std::sync::OnceLock::new();

/// pmig's own thread for `SIGEV_THREAD` timers. glibc's helper thread blocks every signal, so
/// no checkpoint could stop it; this one leaves the suspend signal open, waits for
/// [`TIMER_SIGNAL`] and calls each timer's function (one expiration after the other).
fn timer_thread() -> Option<i32> {
    let tid = TIMER_THREAD.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new().name("pmig-timers".into()).stack_size(256 << 10).spawn(move || {
            let suspend = crate::config::get().map(|c| c.suspend_signal).unwrap_or(crate::config::SUSPEND_SIGNAL);
            let mask = !(crate::signal::bit(suspend) | crate::signal::GLIBC_INTERNAL);
            let _ = sys::rt_sigprocmask(libc::SIG_SETMASK, Some(&mask), None);
            let _ = tx.send(pid::gettid());
            let wait = crate::signal::bit(TIMER_SIGNAL);
            loop {
                // SAFETY: an all-zero siginfo is valid; the kernel fills it.
                let mut si: libc::siginfo_t = unsafe { core::mem::zeroed() };
                // SAFETY: rt_sigtimedwait reads our mask and writes the siginfo we own.
                let r = unsafe {
                    syscall6(libc::SYS_rt_sigtimedwait as u64, &wait as *const u64 as u64, &mut si as *mut _ as u64, 0, 8, 0, 0)
                };
                if r != TIMER_SIGNAL as i64 {
                    continue;
                }
                // SAFETY: reading the sigval union member of a siginfo the kernel filled.
                let ptr = unsafe { si.si_value().sival_ptr } as *const ThreadNotify;
                // A timer signal carries the address of its ThreadNotify (never freed); one
                // sent again after a restore (it was pending) carries nothing: skip it.
                if si.si_code != libc::SI_TIMER || ptr.is_null() {
                    continue;
                }
                // SAFETY: see above: a live ThreadNotify.
                let n = unsafe { &*ptr };
                (n.func)(n.value);
            }
        });
        match spawned {
            Ok(_) => rx.recv().unwrap_or(0),
            Err(_) => 0,
        }
    });
    (*tid != 0).then_some(*tid)
}

/// `timer_create` for `SIGEV_THREAD`: a `SIGEV_THREAD_ID` timer aimed at pmig's timer thread.
/// Returns `None` to let libc handle other kinds.
///
/// # Safety
/// `sev` and `id` must be valid as for `timer_create`.
pub unsafe fn create_thread_timer(clock: libc::clockid_t, sev: *const libc::sigevent, id: *mut libc::timer_t) -> Option<i32> {
    // SAFETY: the caller guarantees `sev` is null or valid.
    let sev = unsafe { sev.as_ref()? };
    if sev.sigev_notify != libc::SIGEV_THREAD {
        return None;
    }
    // The thread's tid as first seen; after a restore it has a new real one.
    let tid = pid::to_real(timer_thread()?);
    // SAFETY: glibc's sigevent keeps the SIGEV_THREAD function right after the 16-byte header
    // (the `_sigev_thread._function` union member); the libc crate does not name it.
    let func: extern "C" fn(libc::sigval) = unsafe { *((sev as *const libc::sigevent as *const u8).add(16) as *const _) };
    let notify = Box::leak(Box::new(ThreadNotify { func, value: sev.sigev_value }));
    let ksev = KSigevent {
        value: notify as *const ThreadNotify as u64,
        signo: TIMER_SIGNAL,
        notify: libc::SIGEV_THREAD_ID,
        tid,
        _pad: [0; 11],
    };
    let mut kid: i32 = 0;
    // SAFETY: timer_create reads our sigevent and writes the kernel timer id we own.
    let r = unsafe {
        syscall6(libc::SYS_timer_create as u64, clock as u64, &ksev as *const _ as u64, &mut kid as *mut i32 as u64, 0, 0, 0)
    };
    if r < 0 {
        // SAFETY: errno is this thread's.
        unsafe { *libc::__errno_location() = -r as i32 };
        return Some(-1);
    }
    // glibc's timer_t for a kernel timer is the id itself, as a pointer-sized value.
    // SAFETY: the caller guarantees `id` is writable.
    unsafe { *id = kid as usize as libc::timer_t };
    Some(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_timers() {
        let t = parse("ID: 43\nsignal: 14/00000000000000ff\nnotify: signal/pid.6840\nClockID: 1\nID: 0\nsignal: 32/0000000000000000\nnotify: signal/tid.77\nClockID: 0\n");
        assert_eq!(t.len(), 2);
        assert_eq!((t[0].id, t[0].signo, t[0].sival, t[0].notify, t[0].clockid), (43, 14, 0xff, libc::SIGEV_SIGNAL, 1));
        assert_eq!((t[1].id, t[1].notify, t[1].tid, t[1].signo), (0, libc::SIGEV_THREAD_ID, 77, 32));
    }
}
