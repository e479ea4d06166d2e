//! Pseudo-terminals for the tests that give a program a terminal instead of
//! pipes: `openpty(3)` with echo turned off, so that everything read from the
//! master is the program's output.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

/// A pseudo-terminal pair.
pub struct Pty {
    /// The harness's side: read the program's output, write its input.
    pub master: OwnedFd,
    /// The program's side: its stdin and stdout.
    pub slave: OwnedFd,
}

/// Opens a pseudo-terminal with `ECHO` off (canonical mode stays on, so the
/// program reads whole lines) and both fds close-on-exec.
///
/// `openpty` cannot set `O_CLOEXEC` itself; a child spawned by another test
/// thread in between could inherit the fds, which is why [`crate::Proc`]
/// marks every inherited fd above 2 close-on-exec in the child before exec.
pub fn open() -> io::Result<Pty> {
    let mut master: libc::c_int = -1;
    let mut slave: libc::c_int = -1;
    // SAFETY: openpty writes two fds through the valid pointers to locals;
    // the name, termios and winsize arguments may be null per openpty(3).
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: openpty succeeded, so both fds are open and owned by nobody else.
    let pty = unsafe {
        Pty {
            master: OwnedFd::from_raw_fd(master),
            slave: OwnedFd::from_raw_fd(slave),
        }
    };
    for fd in [master, slave] {
        // SAFETY: fd is open (owned by `pty`); F_SETFD takes an int flag.
        if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    // SAFETY: termios is plain old data; all-zero is a valid value to be
    // overwritten by tcgetattr.
    let mut tio: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: slave is an open terminal fd and tio a valid, writable termios.
    if unsafe { libc::tcgetattr(slave, &mut tio) } != 0 {
        return Err(io::Error::last_os_error());
    }
    tio.c_lflag &= !(libc::ECHO | libc::ECHOE | libc::ECHOK | libc::ECHONL);
    // SAFETY: slave is an open terminal fd and tio a valid termios.
    if unsafe { libc::tcsetattr(slave, libc::TCSANOW, &tio) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(pty)
}
