//! Virtual ids: a process of its own, since recording a restore changes global state.

use pmig::{pid, sys};

#[test]
fn virtual_ids_translate_both_ways() {
    assert!(!pid::active());
    assert_eq!(pid::proc_path(b"/proc/1/status"), None);
    let me = sys::getpid();
    let tid = sys::gettid();
    pid::after_restore(777_001, 777_000, [(555_001, tid)].into_iter(), false);
    assert_eq!(pid::getpid(), 777_001);
    assert_eq!(pid::getppid(), 777_000);
    assert_eq!(pid::to_real(777_001), me);
    assert_eq!(pid::to_real(-777_001), -sys::getpgid());
    assert_eq!(pid::to_real(555_001), tid);
    assert_eq!(pid::to_real(42), 42);
    assert_eq!(pid::proc_path(b"/proc/777001/status"), Some(format!("/proc/{me}/status").into_bytes()));
    assert_eq!(pid::proc_path(b"/proc/777001"), Some(format!("/proc/{me}").into_bytes()));
    assert_eq!(pid::proc_path(b"/proc/self/status"), None);
    assert_eq!(pid::proc_path(b"/proc/7770012/x"), None);
    assert_eq!(pid::gettid(), 555_001);
    assert_eq!(pid::mode(), pmig_image::IdsMode::Virtual);

    // A child forked now has its own ids, and this process's virtual pid as its parent.
    // SAFETY: the child only reads atomics, makes raw system calls and _exits.
    let child = unsafe { libc::fork() };
    if child == 0 {
        pid::after_fork_in_child();
        let ok = pid::getpid() == sys::getpid() && pid::getppid() == 777_001 && pid::to_real(777_001) == me && !pid::active();
        // SAFETY: _exit has no preconditions.
        unsafe { libc::_exit(if ok { 0 } else { 1 }) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    assert_eq!(unsafe { libc::waitpid(child, &mut status, 0) }, child);
    assert_eq!(status, 0, "the forked child saw wrong ids");
}
