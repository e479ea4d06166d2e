//! Virtual ids: a process of its own, since recording a restore changes global state.

use pmig::{pid, sys};

#[test]
fn virtual_ids_translate_both_ways() {
    assert!(!pid::active());
    assert_eq!(pid::proc_path(b"/proc/1/status"), None);
    let me = sys::getpid();
    let tid = sys::gettid();
    pid::after_restore(777_001, 777_000, [(555_001, tid)].into_iter());
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
    if tid != me {
        assert_eq!(pid::gettid(), 555_001);
    }
}
