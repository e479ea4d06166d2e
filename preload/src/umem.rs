//! Reading and writing memory the program hands to a wrapper, without ever faulting.
//!
//! A wrapper in `api` that looks at a pointer the program passed (a path, a signal set) must
//! behave as libc does with a bad pointer — fail with `EFAULT`, or fault *in libc* where libc
//! itself faults — never crash inside pmig. So the program's memory is read with
//! `process_vm_readv` on this very process, which returns `EFAULT` instead of faulting; a
//! caller that gets `None` forwards the program's original pointer to libc unchanged.
//!
//! Where `process_vm_readv` is not allowed (a seccomp filter, a kernel without it), the
//! memory is read directly, as before: the pointer is then trusted as libc trusts it.

use crate::sys;

/// Longest string read: a path the kernel takes is shorter than `PATH_MAX`; a longer one
/// goes to libc untouched (which fails with `ENAMETOOLONG`).
const MAX_STRING: usize = libc::PATH_MAX as usize;

const PAGE: u64 = 4096;

/// Whether `process_vm_readv` on ourselves fails for another reason than a bad address.
fn unavailable(e: i32) -> bool {
    matches!(e, libc::ENOSYS | libc::EPERM | libc::EACCES)
}

/// The bytes of the NUL-terminated string at `p` (without the NUL), read one page at a time:
/// `None` if `p` is null, a byte of it is unreadable, or it has no NUL within `PATH_MAX`.
///
/// # Safety
/// None for addresses this reads through `process_vm_readv`; in the fallback (that call not
/// allowed), `p` must be null or a valid C string, as libc requires.
pub unsafe fn c_string(p: *const libc::c_char) -> Option<Vec<u8>> {
    if p.is_null() {
        return None;
    }
    let mut out = Vec::new();
    let mut at = p as u64;
    while out.len() < MAX_STRING {
        // Never past the end of this page (a string may end just before an unmapped one), and
        // a short piece first: most paths are short.
        let n = ((PAGE - at % PAGE) as usize).min(MAX_STRING - out.len()).min(if out.is_empty() { 256 } else { 4096 });
        let old = out.len();
        out.resize(old + n, 0);
        match sys::process_vm_read_self(&mut out[old..], at) {
            Ok(got) if got as usize == n => {}
            Ok(_) | Err(libc::EFAULT) => return None,
            Err(e) if unavailable(e) => {
                // SAFETY: the caller guarantees a valid C string when this call is refused.
                return Some(unsafe { core::ffi::CStr::from_ptr(p) }.to_bytes().to_vec());
            }
            Err(_) => return None,
        }
        if let Some(end) = out[old..].iter().position(|&c| c == 0) {
            out.truncate(old + end);
            return Some(out);
        }
        at += n as u64;
    }
    None
}

/// A copy of the `T` at `p`: `None` if `p` is null or any byte of it is unreadable.
///
/// # Safety
/// `T` must be valid for any bit pattern (a libc struct of integers). In the fallback (the
/// call not allowed), `p` must be null or point to a valid `T`, as libc requires.
pub unsafe fn read<T: Copy>(p: *const T) -> Option<T> {
    if p.is_null() {
        return None;
    }
    let mut v = core::mem::MaybeUninit::<T>::zeroed();
    // SAFETY: `v` is ours, size_of::<T>() bytes, zero-initialised.
    let buf = unsafe { core::slice::from_raw_parts_mut(v.as_mut_ptr().cast::<u8>(), core::mem::size_of::<T>()) };
    match sys::process_vm_read_self(buf, p as u64) {
        // SAFETY: every byte was written, and T is valid for any bit pattern.
        Ok(n) if n as usize == buf.len() => Some(unsafe { v.assume_init() }),
        // SAFETY: the caller guarantees `p` is valid when this call is refused.
        Err(e) if unavailable(e) => Some(unsafe { *p }),
        _ => None,
    }
}

/// Stores `v` at `p`; `Err(EFAULT)` if any byte of it is not writable.
///
/// # Safety
/// `T` must be a plain libc struct. In the fallback (the call not allowed), `p` must point to
/// a writable `T`, as libc requires.
pub unsafe fn write<T: Copy>(p: *mut T, v: &T) -> Result<(), i32> {
    // SAFETY: `v` is a valid T of size_of::<T>() bytes.
    let bytes = unsafe { core::slice::from_raw_parts((v as *const T).cast::<u8>(), core::mem::size_of::<T>()) };
    match sys::process_vm_write_self(bytes, p as u64) {
        Ok(n) if n as usize == bytes.len() => Ok(()),
        Err(e) if unavailable(e) => {
            // SAFETY: the caller guarantees `p` is writable when this call is refused.
            unsafe { p.write(*v) };
            Ok(())
        }
        _ => Err(libc::EFAULT),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_read_or_refused() {
        let s = c"/proc/1/status";
        // SAFETY: a valid C string.
        assert_eq!(unsafe { c_string(s.as_ptr()) }.as_deref(), Some(&b"/proc/1/status"[..]));
        // SAFETY: bad addresses are what this reads safely.
        assert_eq!(unsafe { c_string(usize::MAX as *const libc::c_char) }, None);
        // SAFETY: as above.
        assert_eq!(unsafe { c_string(16 as *const libc::c_char) }, None);
        // SAFETY: null is allowed.
        assert_eq!(unsafe { c_string(core::ptr::null()) }, None);
    }

    #[test]
    fn a_string_ending_before_an_unmapped_page_is_read() {
        let len = 2 * PAGE as usize;
        // SAFETY: a fresh private anonymous mapping of two pages, the second unmapped again.
        unsafe {
            let m = libc::mmap(core::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0);
            assert_ne!(m, libc::MAP_FAILED);
            libc::munmap(m.cast::<u8>().add(PAGE as usize).cast(), PAGE as usize);
            let end = m.cast::<u8>().add(PAGE as usize);
            end.sub(4).copy_from(c"abc".as_ptr().cast::<u8>(), 4);
            assert_eq!(c_string(end.sub(4).cast()).as_deref(), Some(&b"abc"[..]));
            // No NUL before the unmapped page: refused, not a fault.
            *end.sub(1) = b'x';
            assert_eq!(c_string(end.sub(4).cast()), None);
            libc::munmap(m, PAGE as usize);
        }
    }

    #[test]
    fn structs_are_read_and_written_or_refused() {
        let mut set: libc::sigset_t = unsafe_zeroed();
        // SAFETY: sigset_t is plain integers; the pointers are ours or deliberately bad.
        unsafe {
            libc::sigaddset(&mut set, libc::SIGUSR1);
            let copy = read(&set as *const libc::sigset_t).expect("readable");
            assert_eq!(libc::sigismember(&copy, libc::SIGUSR1), 1);
            assert!(read(usize::MAX as *const libc::sigset_t).is_none());
            let mut out: libc::sigset_t = unsafe_zeroed();
            write(&mut out, &copy).expect("writable");
            assert_eq!(libc::sigismember(&out, libc::SIGUSR1), 1);
            assert_eq!(write(16 as *mut libc::sigset_t, &copy), Err(libc::EFAULT));
        }
    }

    fn unsafe_zeroed<T>() -> T {
        // SAFETY: used only for libc structs of integers, valid when all zero.
        unsafe { core::mem::zeroed() }
    }
}
