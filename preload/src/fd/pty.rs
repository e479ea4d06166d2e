//! Pseudo-terminal masters (`/dev/ptmx`): the pair's index, the slave's termios and window
//! size, packet mode, the lock, and the bytes queued each way (read out and put back at
//! once, see `pmig_abi::pty`). pmig-resume makes the pair again (with the same index where it
//! is free) before any process of the tree exists, so that a session leader takes the slave
//! as its controlling terminal before it makes its children; fds on the slave (`/dev/pts/N`)
//! are opened from that master.

use super::FdInfo;
use crate::errno::Errno;
use crate::sys;
use pmig_abi::pty as p;
use pmig_image::{FileKind, PtyState};

/// The largest number of queued bytes saved each way (a pty queues at most a few pages).
const MAX_QUEUED: usize = 1 << 20;

pub fn dump(i: &FdInfo) -> Result<FileKind, String> {
    let index = p::get_int(i.fd, p::TIOCGPTN).map_err(|e| format!("cannot read its pty index (TIOCGPTN): {}", Errno(e)))? as u32;
    let peer = p::peer(i.fd, libc::O_RDWR | libc::O_NOCTTY | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .map_err(|e| format!("cannot open the slave of /dev/pts/{index} (TIOCGPTPEER): {}", Errno(e)))?;
    let r = save(i, peer);
    let _ = sys::close(peer);
    r.map(|pty| FileKind::PtyMaster { index, pty }).map_err(|e| format!("pty /dev/pts/{index}: {e}"))
}

fn save(i: &FdInfo, peer: i32) -> Result<PtyState, String> {
    let termios = p::get_termios(peer).map_err(|e| format!("cannot read its termios: {}", Errno(e)))?;
    let mut st = PtyState {
        termios: termios.to_vec(),
        winsize: p::get_winsize(peer).unwrap_or_default(),
        packet: p::get_int(i.fd, p::TIOCGPKT).is_ok_and(|v| v != 0),
        locked: p::get_int(i.fd, p::TIOCGPTLCK).is_ok_and(|v| v != 0),
        ..PtyState::default()
    };
    // Another process of the tree holds this master too, and saves its queues.
    if i.share & pmig_abi::SHARE_FOLLOWER != 0 {
        return Ok(st);
    }
    st.saved = true;
    st.output = drain(i.fd, st.packet).map_err(|e| format!("cannot read the bytes queued for the master: {}", Errno(e)))?;
    // The slave's queue, whole lines or not: read with the line discipline raw.
    let taken = p::set_termios(peer, &p::raw(&termios)).and_then(|_| drain(peer, false));
    st.input = match taken {
        Ok(b) => b,
        Err(e) => {
            let _ = p::put_back(i.fd, peer, &termios, &[], &st.output);
            return Err(format!("cannot read the bytes queued for the slave: {}", Errno(e)));
        }
    };
    // The program goes on with them (or a later restore gets them from the image).
    p::put_back(i.fd, peer, &termios, &st.input, &st.output).map_err(|e| format!("cannot put its queued bytes back: {}", Errno(e)))?;
    Ok(st)
}

/// Reads what `fd` has queued now (without waiting for more).
fn drain(fd: i32, packet: bool) -> Result<Vec<u8>, i32> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 4096 + 1];
    loop {
        let n = p::pending(fd)?;
        if n == 0 || out.len() >= MAX_QUEUED {
            return Ok(out);
        }
        // In packet mode each read starts with a status byte (0 before data).
        let want = n.min(4096) + usize::from(packet);
        let got = match p::read(fd, &mut buf[..want]) {
            Ok(0) | Err(libc::EAGAIN) | Err(libc::EIO) => return Ok(out),
            Ok(g) => g,
            Err(libc::EINTR) => continue,
            Err(e) => return Err(e),
        };
        let data = if packet { buf.get(1..got).unwrap_or(&[]) } else { &buf[..got] };
        if packet && buf[0] != 0 {
            continue;
        }
        out.extend_from_slice(data);
    }
}

/// The master pmig-resume made again for a pty slave at `path` (`/dev/pts/N`), when the image
/// held that pty's master.
pub fn slave_of_tree(path: &str, objects: &[(u64, i32, u32)]) -> Option<i32> {
    let index: u64 = path.strip_prefix("/dev/pts/")?.parse().ok()?;
    objects.iter().find(|o| o.0 == index && o.2 == pmig_abi::OBJECT_PTY).map(|o| o.1)
}
