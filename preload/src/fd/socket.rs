//! Sockets: listening, bound, paired and connected ones, with the bytes queued in them.
//!
//! **Dump runs in the checkpoint thread while every other thread is parked; restore runs in
//! the restored process before any other thread exists.** Both use raw system calls only (no
//! libc entry point that may take a lock, no `std::io`), allocate only from pmig's arena, and
//! never panic: a socket that cannot be saved fails the checkpoint with a message naming it; a
//! socket that cannot be made again is an `Err` (the caller logs it and leaves its fd closed).
//!
//! What each socket becomes:
//! - unbound, bound or listening (TCP, UDP, UNIX path or abstract, netlink, …): a new socket
//!   with the saved options, bound to the same address, listening with the same backlog;
//! - UDP, or UNIX datagram aimed at a named socket (path or abstract), connected: the same,
//!   connected again (a UNIX one whose peer is not there: as a UNIX connection below);
//! - a socketpair, or any UNIX connection with both ends in the program: a new socketpair;
//!   each end's unread bytes are put back so they arrive at that end, in order;
//! - a UNIX connection to a peer outside the program: one end of a socketpair whose other end
//!   is closed: the unread bytes, then EOF (writes: `EPIPE`);
//! - an established TCP connection, checkpointed as root with `--exit`: the same connection,
//!   rebuilt in TCP repair mode (sequence numbers, both queues, windows, MSS, window scale,
//!   SACK, timestamps): the peer notices nothing;
//! - any other TCP connection (not root, no `--exit`, not established, repair refused): a
//!   socket whose connection was reset: the unread bytes, then `ECONNRESET`.
//!
//! Without `--exit` the process goes on using its connections and closes them some day (FIN or
//! RST to the peer): an image of their state goes stale, and a connection rebuilt from it would
//! only be ignored by the peer (a hang until TCP gives up). So they are restored reset. The
//! same holds for an image resumed twice: the second copy's connections are stale.
//!
//! Options: those in [`OPTIONS`] whose value differs from a fresh socket of the same kind
//! (`IPV6_V6ONLY` always) are saved; the kernel reports `SO_RCVBUF`/`SO_SNDBUF` doubled, so
//! half is saved. fds 0–2 that are sockets become `pmig-resume`'s own: only their identity is
//! recorded, nothing is read from them.
//!
//! Encodings inside [`SocketState`] (the image types are fixed; see the notes):
//! - `recv_queue` of a datagram or seqpacket socket holds each queued message as a 4-byte
//!   little-endian length followed by its bytes (senders' addresses and passed fds are lost).
//!   A bound (unconnected) datagram socket gets them back from a new socket of its own, sent
//!   to its address; a connected UDP socket's queue is not saved (only its peer may send to
//!   it, and datagrams may be lost on any network).
//! - `TcpRepairState::window` is one byte of the negotiated options (`tcpi_options`:
//!   timestamps, SACK, window scaling) followed by the kernel's `struct tcp_repair_window`.
//! - `recv_seq`/`send_seq` are `rcv_nxt`/`write_seq` at checkpoint: the queues end there.
//!
//! TCP repair, as CRIU does it. Dump: `TCP_REPAIR` on; read `TCP_INFO`, `TCP_REPAIR_WINDOW`,
//! both queues (select with `TCP_REPAIR_QUEUE`, `TCP_QUEUE_SEQ` for the sequence number,
//! `MSG_PEEK` for the bytes; retried until a read sees no packet arrive in between),
//! `TCP_MAXSEG` (the clamp, in repair mode) and `TCP_TIMESTAMP`. The socket then stays in repair
//! mode behind a drop-everything socket filter, so neither a late packet is acknowledged by the
//! old socket nor the exit sends FIN or RST (if the dump fails, repair mode is left without a
//! window probe and `SO_REUSEADDR` put back, as leaving repair clears it). Restore:
//! options, `TCP_REPAIR` on, both queue sequence numbers, bind, connect (no SYN in repair
//! mode), `TCP_REPAIR_OPTIONS`, `TCP_TIMESTAMP`, the receive queue and the send queue (sent
//! in repair mode, so the kernel treats it as sent and unacknowledged and retransmits it),
//! `TCP_REPAIR_WINDOW`, `TCP_REPAIR` off without a window probe (unlike CRIU: the other end
//! may be a socket of the program not made yet, whose port a listener would answer with a
//! reset). Like CRIU, pmig does not lock the network: packets the peer sends between the
//! checkpoint and the restore meet no socket and are answered with a reset unless something
//! drops them meanwhile (a firewall rule).

use crate::errno::Errno;
use super::{DumpCtx, FdInfo, Ops, RestoreCtx};
use core::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use crate::log::{debug, say};
use crate::sys;
use pmig_abi::arch::syscall6;
use pmig_image::{FileKind, FileState, SocketRole, SocketState, TcpRepairState};

pub const OPS: Ops = Ops { name: "socket", dump, restore };

const AF_UNIX: i32 = libc::AF_UNIX;
const AF_INET: i32 = libc::AF_INET;
const AF_INET6: i32 = libc::AF_INET6;
const AF_NETLINK: i32 = libc::AF_NETLINK;
const SOL_SOCKET: i32 = libc::SOL_SOCKET;
const SOL_TCP: i32 = libc::IPPROTO_TCP;
const SOL_IP: i32 = libc::IPPROTO_IP;
const SOL_IPV6: i32 = libc::IPPROTO_IPV6;

const SO_REUSEADDR: i32 = 2;
const SO_SNDBUF: i32 = 7;
const SO_RCVBUF: i32 = 8;
const SO_LINGER: i32 = 13;
const SO_ATTACH_FILTER: i32 = 26;
const SO_DETACH_FILTER: i32 = 27;
const SO_SNDBUFFORCE: i32 = 32;
const SO_RCVBUFFORCE: i32 = 33;
const SO_PEEK_OFF: i32 = 42;
const IPV6_V6ONLY: i32 = 26;

const TCP_INFO: i32 = 11;
const TCP_REPAIR: i32 = 19;
const TCP_REPAIR_QUEUE: i32 = 20;
const TCP_QUEUE_SEQ: i32 = 21;
const TCP_REPAIR_OPTIONS: i32 = 22;
const TCP_TIMESTAMP: i32 = 24;
const TCP_REPAIR_WINDOW: i32 = 29;
const TCP_REPAIR_ON: i32 = 1;
/// Leaves repair mode without sending a window probe.
const TCP_REPAIR_OFF_NO_WP: i32 = -1;
const TCP_NO_QUEUE: i32 = 0;
const TCP_RECV_QUEUE: i32 = 1;
const TCP_SEND_QUEUE: i32 = 2;
const TCPOPT_MAXSEG: u32 = 2;
const TCPOPT_WINDOW: u32 = 3;
const TCPOPT_SACK_PERM: u32 = 4;
const TCPOPT_TIMESTAMP: u32 = 8;
const TCPI_OPT_TIMESTAMPS: u8 = 1;
const TCPI_OPT_SACK: u8 = 2;
const TCPI_OPT_WSCALE: u8 = 4;
const TCP_ESTABLISHED: u8 = 1;
const TCP_CLOSE: u8 = 7;
const TCP_LISTEN: u8 = 10;

/// `FIONREAD`: bytes in the receive queue.
const SIOCINQ: u64 = 0x541B;
/// `TIOCOUTQ`: bytes in the send queue (TCP: not yet acknowledged).
const SIOCOUTQ: u64 = 0x5411;

const NETLINK_SOCK_DIAG: i32 = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const UDIAG_SHOW_PEER: u32 = 4;
const UDIAG_SHOW_RQLEN: u32 = 0x10;
const UNIX_DIAG_PEER: u16 = 2;
const UNIX_DIAG_RQLEN: u16 = 4;
const UNIX_DIAG_SHUTDOWN: u16 = 6;

/// Backlog of a listener whose real one cannot be read.
const DEFAULT_BACKLOG: i32 = 128;
/// Longest wait of a restore step on the loopback (connect, accept, delivery), in ms.
const LOOPBACK_WAIT_MS: u64 = 2000;

/// Which sockets an option is read from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum For {
    All,
    Tcp,
    /// TCP sockets that are not connected (the kernel computes these once connected).
    TcpIdle,
    V4,
    V6,
    /// IPv4 datagram sockets (multicast options; on an accepted TCP socket they hold the
    /// SYN's TTL and cannot be set).
    V4Dgram,
    V6Dgram,
}

/// The options saved when they differ from a fresh socket's: `(level, name, size, which, name)`.
const OPTIONS: &[(i32, i32, usize, For, &str)] = &[
    (SOL_SOCKET, SO_REUSEADDR, 4, For::All, "SO_REUSEADDR"),
    (SOL_SOCKET, 15, 4, For::All, "SO_REUSEPORT"),
    (SOL_SOCKET, 9, 4, For::All, "SO_KEEPALIVE"),
    (SOL_SOCKET, 6, 4, For::All, "SO_BROADCAST"),
    (SOL_SOCKET, SO_LINGER, 8, For::All, "SO_LINGER"),
    (SOL_SOCKET, 10, 4, For::All, "SO_OOBINLINE"),
    (SOL_SOCKET, 16, 4, For::All, "SO_PASSCRED"),
    (SOL_SOCKET, 34, 4, For::All, "SO_PASSSEC"),
    (SOL_SOCKET, 18, 4, For::All, "SO_RCVLOWAT"),
    (SOL_SOCKET, 20, 16, For::All, "SO_RCVTIMEO"),
    (SOL_SOCKET, 21, 16, For::All, "SO_SNDTIMEO"),
    (SOL_SOCKET, 12, 4, For::All, "SO_PRIORITY"),
    (SOL_SOCKET, 36, 4, For::All, "SO_MARK"),
    (SOL_SOCKET, 25, 16, For::All, "SO_BINDTODEVICE"),
    (SOL_SOCKET, 29, 4, For::All, "SO_TIMESTAMP"),
    (SOL_SOCKET, 35, 4, For::All, "SO_TIMESTAMPNS"),
    (SOL_SOCKET, 40, 4, For::All, "SO_RXQ_OVFL"),
    (SOL_SOCKET, SO_RCVBUF, 4, For::All, "SO_RCVBUF"),
    (SOL_SOCKET, SO_SNDBUF, 4, For::All, "SO_SNDBUF"),
    (SOL_SOCKET, SO_PEEK_OFF, 4, For::All, "SO_PEEK_OFF"),
    (SOL_TCP, 1, 4, For::Tcp, "TCP_NODELAY"),
    (SOL_TCP, 3, 4, For::Tcp, "TCP_CORK"),
    (SOL_TCP, 4, 4, For::Tcp, "TCP_KEEPIDLE"),
    (SOL_TCP, 5, 4, For::Tcp, "TCP_KEEPINTVL"),
    (SOL_TCP, 6, 4, For::Tcp, "TCP_KEEPCNT"),
    (SOL_TCP, 7, 4, For::Tcp, "TCP_SYNCNT"),
    (SOL_TCP, 8, 4, For::Tcp, "TCP_LINGER2"),
    (SOL_TCP, 9, 4, For::Tcp, "TCP_DEFER_ACCEPT"),
    (SOL_TCP, 13, 16, For::Tcp, "TCP_CONGESTION"),
    (SOL_TCP, 16, 4, For::Tcp, "TCP_THIN_LINEAR_TIMEOUTS"),
    (SOL_TCP, 18, 4, For::Tcp, "TCP_USER_TIMEOUT"),
    (SOL_TCP, 25, 4, For::Tcp, "TCP_NOTSENT_LOWAT"),
    (SOL_TCP, 2, 4, For::TcpIdle, "TCP_MAXSEG"),
    (SOL_TCP, 10, 4, For::TcpIdle, "TCP_WINDOW_CLAMP"),
    (SOL_TCP, 23, 4, For::TcpIdle, "TCP_FASTOPEN"),
    (SOL_IP, 1, 4, For::V4, "IP_TOS"),
    (SOL_IP, 2, 4, For::V4, "IP_TTL"),
    (SOL_IP, 8, 4, For::V4, "IP_PKTINFO"),
    (SOL_IP, 11, 4, For::V4, "IP_RECVERR"),
    (SOL_IP, 13, 4, For::V4, "IP_RECVTOS"),
    (SOL_IP, 15, 4, For::V4, "IP_FREEBIND"),
    (SOL_IP, 19, 4, For::V4, "IP_TRANSPARENT"),
    (SOL_IP, 24, 4, For::V4, "IP_BIND_ADDRESS_NO_PORT"),
    (SOL_IP, 33, 4, For::V4Dgram, "IP_MULTICAST_TTL"),
    (SOL_IP, 34, 4, For::V4Dgram, "IP_MULTICAST_LOOP"),
    (SOL_IPV6, IPV6_V6ONLY, 4, For::V6, "IPV6_V6ONLY"),
    (SOL_IPV6, 16, 4, For::V6, "IPV6_UNICAST_HOPS"),
    (SOL_IPV6, 18, 4, For::V6Dgram, "IPV6_MULTICAST_HOPS"),
    (SOL_IPV6, 19, 4, For::V6Dgram, "IPV6_MULTICAST_LOOP"),
    (SOL_IPV6, 25, 4, For::V6, "IPV6_RECVERR"),
    (SOL_IPV6, 49, 4, For::V6, "IPV6_RECVPKTINFO"),
    (SOL_IPV6, 67, 4, For::V6, "IPV6_TCLASS"),
    (SOL_IPV6, 75, 4, For::V6, "IPV6_TRANSPARENT"),
    (SOL_IPV6, 78, 4, For::V6, "IPV6_FREEBIND"),
];

// ---------------------------------------------------------------------------------------------
// System calls sys.rs lacks, and small helpers.

fn ret(r: i64) -> sys::Res {
    if (-4095..0).contains(&r) {
        Err((-r) as i32)
    } else {
        Ok(r as u64)
    }
}

/// `sendto(2)` of `buf` with `flags`, to `addr` (raw sockaddr bytes) or, when `addr` is
/// empty, to the connected peer.
fn sendto(fd: i32, buf: &[u8], flags: i32, addr: &[u8]) -> sys::Res {
    let (a, alen) = if addr.is_empty() { (0, 0) } else { (addr.as_ptr() as u64, addr.len() as u64) };
    // SAFETY: the kernel reads `buf.len()` bytes at `buf` and `alen` bytes at `a`, both from
    // slices borrowed for the whole call (or no address at all).
    ret(unsafe {
        syscall6(libc::SYS_sendto as u64, fd as u64, buf.as_ptr() as u64, buf.len() as u64, flags as u64, a, alen)
    })
}

/// `accept4(2)`, without asking for the peer's address.
fn accept4(fd: i32, flags: i32) -> sys::Res {
    // SAFETY: no pointer is passed: the address and its length are null.
    ret(unsafe { syscall6(libc::SYS_accept4 as u64, fd as u64, 0, 0, flags as u64, 0, 0) })
}

/// An fd this module owns until it hands it over with [`Fd::keep`]; closed when dropped.
struct Fd(i32);

impl Fd {
    fn keep(self) -> i32 {
        let n = self.0;
        core::mem::forget(self);
        n
    }
}

impl Drop for Fd {
    fn drop(&mut self) {
        let _ = sys::close(self.0);
    }
}

fn new_socket(family: i32, ty: i32, protocol: i32) -> Result<Fd, String> {
    sys::socket(family, ty | libc::SOCK_CLOEXEC, protocol)
        .map(|f| Fd(f as i32))
        .map_err(|e| format!("socket({family}, {ty}, {protocol}): {}", Errno(e)))
}

/// Moves `fd` above every saved fd number (see [`RestoreCtx::lift`]).
fn lifted(ctx: &RestoreCtx, fd: Fd) -> Result<Fd, String> {
    let n = ctx.lift(fd.0)?;
    core::mem::forget(fd);
    Ok(Fd(n))
}

fn get_int(fd: i32, level: i32, name: i32) -> Result<i32, i32> {
    let mut b = [0u8; 4];
    sys::getsockopt(fd, level, name, &mut b)?;
    Ok(i32::from_ne_bytes(b))
}

fn set_int(fd: i32, level: i32, name: i32, v: i32) -> Result<(), i32> {
    sys::setsockopt(fd, level, name, &v.to_ne_bytes()).map(|_| ())
}

/// An `ioctl` that reports a byte count (`SIOCINQ`, `SIOCOUTQ`).
fn ioctl_count(fd: i32, req: u64) -> Result<usize, i32> {
    let mut v: i32 = 0;
    sys::ioctl(fd, req, &mut v as *mut i32 as u64)?;
    Ok(v.max(0) as usize)
}

/// Sets `SO_RCVBUF` or `SO_SNDBUF` to `v` (the kernel doubles it), forcing it past the
/// system maximum when allowed (root).
fn set_buf(fd: i32, name: i32, v: i32) -> Result<(), i32> {
    let r = set_int(fd, SOL_SOCKET, name, v);
    if get_int(fd, SOL_SOCKET, name).is_ok_and(|got| got >= v.saturating_mul(2)) {
        return Ok(());
    }
    let force = if name == SO_RCVBUF { SO_RCVBUFFORCE } else { SO_SNDBUFFORCE };
    set_int(fd, SOL_SOCKET, force, v).or(r)
}

/// Calls `done` every millisecond until it is true or `ms` have passed.
fn wait_until(ms: u64, mut done: impl FnMut() -> bool) -> bool {
    let end = sys::monotonic_ms() + ms;
    loop {
        if done() {
            return true;
        }
        if sys::monotonic_ms() >= end {
            return false;
        }
        sys::sleep_ms(1);
    }
}

/// The first bytes of `TCP_INFO` (state at 0, options at 5, window scales at 6).
fn tcp_info(fd: i32) -> Result<[u8; 32], i32> {
    let mut b = [0u8; 64];
    let n = sys::getsockopt(fd, SOL_TCP, TCP_INFO, &mut b)?;
    if n < 32 {
        return Err(libc::EINVAL);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(&b[..32]);
    Ok(out)
}

fn tcp_state(fd: i32) -> Option<u8> {
    tcp_info(fd).ok().map(|i| i[0])
}

fn is_tcp(s: &SocketState) -> bool {
    matches!(s.family, AF_INET | AF_INET6)
        && s.sotype == libc::SOCK_STREAM
        && matches!(s.protocol, 0 | libc::IPPROTO_TCP)
}

fn exiting() -> bool {
    crate::config::get().is_some_and(|c| c.exit_after || c.to.is_some())
}

/// Connections this checkpoint left in repair mode behind a drop filter (an exiting
/// checkpoint), with their `SO_REUSEADDR`: if a move then fails and the program goes on,
/// [`undo_repairs`] gives them back to it.
static REPAIRED: [(AtomicI32, AtomicI32); 64] = [const { (AtomicI32::new(-1), AtomicI32::new(0)) }; 64];
static N_REPAIRED: AtomicUsize = AtomicUsize::new(0);

/// Whether this process can put other processes' connections in repair mode for them: an
/// exiting checkpoint (only then is a connection moved), `CAP_NET_ADMIN` and
/// `CAP_SYS_PTRACE` in effect (`TCP_REPAIR`, `pidfd_getfd`).
pub fn can_repair_for_others() -> bool {
    let Ok(text) = sys::read_file_vec(b"/proc/self/status\0") else { return false };
    let text = String::from_utf8_lossy(&text);
    let eff = crate::process::status_field(&text, "CapEff:").and_then(|v| u64::from_str_radix(v, 16).ok()).unwrap_or(0);
    exiting() && eff & (1 << 12) != 0 && eff & (1 << 19) != 0
}

/// For process `pid`'s fd `fd`, when it is an established TCP connection: takes it
/// (`pidfd_getfd`), saves it in repair mode as `repair_dump` does for the process's own, and
/// returns the copy (held until the checkpoint ends: the connection stays in repair mode, or
/// is given back by `undo_repairs`) and the state, encoded for the process. `None` for any
/// other fd.
pub fn repair_for(pid: i32, fd: i32) -> Option<Result<(i32, Vec<u8>), String>> {
    let link = sys::readlink_string(&sys::cstr(&format!("/proc/{pid}/fd/{fd}"))).ok()?;
    if !link.starts_with("socket:[") {
        return None;
    }
    let pidfd = Fd(sys::pidfd_open(pid).ok()? as i32);
    let copy = Fd(sys::pidfd_getfd(pidfd.0, fd).ok()? as i32);
    let s = SocketState {
        family: get_int(copy.0, SOL_SOCKET, libc::SO_DOMAIN).ok()?,
        sotype: get_int(copy.0, SOL_SOCKET, libc::SO_TYPE).ok()?,
        protocol: get_int(copy.0, SOL_SOCKET, libc::SO_PROTOCOL).unwrap_or(0),
        ..Default::default()
    };
    if !is_tcp(&s) || tcp_state(copy.0) != Some(TCP_ESTABLISHED) {
        return None;
    }
    Some(repair_dump(copy.0, true).and_then(|state| {
        pmig_image::encode(&state).map(|bytes| (copy.keep(), bytes)).map_err(|e| format!("{e}"))
    }))
}

/// Repair states the tree's root took for this process's connections: `(fd, state, queue)`.
static GIVEN: std::sync::Mutex<Vec<(i32, TcpRepairState, Vec<u8>)>> = std::sync::Mutex::new(Vec::new());

/// Keeps the repair state the root took for this process's connection on `fd` (encoded by
/// [`repair_for`]), for this checkpoint's dump.
pub fn given_repair(fd: i32, bytes: &[u8]) {
    match pmig_image::decode::<(TcpRepairState, Vec<u8>)>(bytes, "repair state") {
        Ok((t, q)) => GIVEN.lock().unwrap_or_else(|e| e.into_inner()).push((fd, t, q)),
        Err(e) => debug!("fd {fd}: the repair state the tree's root sent is unreadable: {e}"),
    }
}

/// The repair state given for `fd`, if any.
fn take_given(fd: i32) -> Option<(TcpRepairState, Vec<u8>)> {
    let mut g = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let at = g.iter().position(|x| x.0 == fd)?;
    let (_, t, q) = g.swap_remove(at);
    Some((t, q))
}

/// Forgets what an earlier checkpoint left (called as one starts): the connections it put
/// in repair mode, the states given for them.
pub fn forget_given() {
    let mut g = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    g.clear();
    g.shrink_to_fit();
}

/// Forgets the connections of an earlier checkpoint (called as one starts).
pub fn forget_repairs() {
    N_REPAIRED.store(0, Ordering::Relaxed);
}

/// Takes every connection this checkpoint put in repair mode out of it again (no window
/// probe) and removes its drop filter: the program goes on with them as they were.
pub fn undo_repairs() {
    let n = N_REPAIRED.swap(0, Ordering::Relaxed).min(REPAIRED.len());
    for (fd, reuse) in &REPAIRED[..n] {
        let (fd, reuse) = (fd.load(Ordering::Relaxed), reuse.load(Ordering::Relaxed));
        let _ = set_int(fd, SOL_TCP, TCP_REPAIR_QUEUE, TCP_NO_QUEUE);
        let _ = set_int(fd, SOL_TCP, TCP_REPAIR, TCP_REPAIR_OFF_NO_WP);
        let _ = sys::setsockopt(fd, SOL_SOCKET, SO_DETACH_FILTER, &0i32.to_ne_bytes());
        if reuse != 0 {
            let _ = set_int(fd, SOL_SOCKET, SO_REUSEADDR, reuse);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Addresses.

/// Whether a `getsockname` result names an address (not the unbound wildcard).
fn is_bound(family: i32, a: &[u8]) -> bool {
    match family {
        AF_UNIX => a.len() > 2,
        AF_INET | AF_INET6 => a.len() >= 4 && (a[2] != 0 || a[3] != 0),
        _ => a.len() > 2 && a[2..].iter().any(|&b| b != 0),
    }
}

/// The path of a UNIX address bound to a file name (not abstract, not unnamed).
fn unix_path(a: &[u8]) -> Option<&[u8]> {
    if a.len() <= 2 || a[2] == 0 {
        return None;
    }
    let p = &a[2..];
    Some(&p[..p.iter().position(|&c| c == 0).unwrap_or(p.len())])
}

/// `a` with a relative UNIX path made absolute against `cwd`, if it is one and still fits.
fn absolute_unix(a: &[u8], cwd: &[u8]) -> Option<Vec<u8>> {
    let path = unix_path(a)?;
    if path.first() == Some(&b'/') || cwd.first() != Some(&b'/') {
        return None;
    }
    let mut out = a[..2].to_vec();
    out.extend_from_slice(cwd);
    if !cwd.ends_with(b"/") {
        out.push(b'/');
    }
    out.extend_from_slice(path);
    out.push(0);
    (out.len() - 2 <= 108).then_some(out)
}

/// `127.0.0.1:port` as a `sockaddr_in`.
fn loopback_v4(port: [u8; 2]) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[..2].copy_from_slice(&(AF_INET as u16).to_ne_bytes());
    a[2..4].copy_from_slice(&port);
    a[4..8].copy_from_slice(&[127, 0, 0, 1]);
    a
}

/// A `sockaddr_in` as the IPv4-mapped `sockaddr_in6` (`::ffff:a.b.c.d`).
fn v4_mapped(sin: &[u8]) -> [u8; 28] {
    let mut a = [0u8; 28];
    a[..2].copy_from_slice(&(AF_INET6 as u16).to_ne_bytes());
    if sin.len() >= 8 {
        a[2..4].copy_from_slice(&sin[2..4]);
        a[18..20].copy_from_slice(&[0xff, 0xff]);
        a[20..24].copy_from_slice(&sin[4..8]);
    }
    a
}

/// A socket address for messages: `1.2.3.4:80`, `[0:0:0:0:0:0:0:1]:80`, a path, `@name`.
fn addr_text(a: Option<&[u8]>) -> String {
    let Some(a) = a.filter(|a| a.len() >= 2) else { return "?".into() };
    let family = u16::from_ne_bytes([a[0], a[1]]) as i32;
    let port = |a: &[u8]| u16::from_be_bytes([a[2], a[3]]);
    match family {
        AF_INET if a.len() >= 8 => format!("{}.{}.{}.{}:{}", a[4], a[5], a[6], a[7], port(a)),
        AF_INET6 if a.len() >= 24 => {
            let g: Vec<String> =
                a[8..24].chunks(2).map(|c| format!("{:x}", u16::from_be_bytes([c[0], c[1]]))).collect();
            format!("[{}]:{}", g.join(":"), port(a))
        }
        AF_UNIX if a.len() == 2 => "(unnamed)".into(),
        AF_UNIX if a[2] == 0 => format!("@{}", String::from_utf8_lossy(&a[3..])),
        AF_UNIX => String::from_utf8_lossy(unix_path(a).unwrap_or_default()).into_owned(),
        _ => format!("(family {family})"),
    }
}

// ---------------------------------------------------------------------------------------------
// Datagram queues: length-prefixed records.

fn push_record(out: &mut Vec<u8>, msg: &[u8]) {
    out.extend_from_slice(&(msg.len() as u32).to_le_bytes());
    out.extend_from_slice(msg);
}

/// The messages of a datagram queue saved by [`push_record`] (a truncated tail is dropped).
fn records(mut q: &[u8]) -> impl Iterator<Item = &[u8]> {
    core::iter::from_fn(move || {
        if q.len() < 4 {
            return None;
        }
        let n = u32::from_le_bytes([q[0], q[1], q[2], q[3]]) as usize;
        let msg = q.get(4..4 + n)?;
        q = &q[4 + n..];
        Some(msg)
    })
}

// ---------------------------------------------------------------------------------------------
// UNIX sockets' peers, from the sock_diag netlink (works unprivileged for any socket in the
// network namespace).

#[derive(Debug, Default, PartialEq, Eq)]
struct UnixDiag {
    /// The inode of the connected peer.
    peer: Option<u32>,
    /// `(queued, max backlog)` for a listener; `(queued bytes, sent bytes)` otherwise.
    queue: Option<(u32, u32)>,
    /// `sk_shutdown`: `RCV_SHUTDOWN` (1), `SEND_SHUTDOWN` (2).
    shutdown: u8,
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn unix_diag(ino: u64) -> Result<UnixDiag, i32> {
    let nl = Fd(sys::socket(AF_NETLINK, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, NETLINK_SOCK_DIAG)? as i32);
    // struct nlmsghdr (16 bytes), then struct unix_diag_req (24 bytes).
    let mut req = [0u8; 40];
    req[0..4].copy_from_slice(&40u32.to_ne_bytes());
    req[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req[6..8].copy_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    req[8..12].copy_from_slice(&1u32.to_ne_bytes());
    req[16] = AF_UNIX as u8;
    req[20..24].copy_from_slice(&u32::MAX.to_ne_bytes()); // every state
    req[24..28].copy_from_slice(&(ino as u32).to_ne_bytes());
    req[28..32].copy_from_slice(&(UDIAG_SHOW_PEER | UDIAG_SHOW_RQLEN).to_ne_bytes());
    req[32..40].fill(0xff); // no cookie
    sys::write(nl.0, &req)?;
    let mut buf = vec![0u8; 8192];
    // The kernel answers within the write: the reply is already queued.
    let n = sys::recv(nl.0, &mut buf, libc::MSG_DONTWAIT)? as usize;
    parse_unix_diag(&buf[..n], ino as u32)
}

/// Parses the answer to a `unix_diag_req` for inode `ino`.
fn parse_unix_diag(b: &[u8], ino: u32) -> Result<UnixDiag, i32> {
    if b.len() < 20 {
        return Err(libc::EIO);
    }
    let len = (u32_at(b, 0) as usize).min(b.len());
    match u16_at(b, 4) {
        NLMSG_ERROR => return Err(u32_at(b, 16).wrapping_neg() as i32),
        SOCK_DIAG_BY_FAMILY if len >= 32 && u32_at(b, 20) == ino => {}
        _ => return Err(libc::EIO),
    }
    // struct unix_diag_msg is 16 bytes after the header; attributes follow, 4-aligned.
    let mut d = UnixDiag::default();
    let mut at = 32;
    while at + 4 <= len {
        let alen = u16_at(b, at) as usize;
        if alen < 4 || at + alen > len {
            break;
        }
        let payload = &b[at + 4..at + alen];
        match u16_at(b, at + 2) {
            UNIX_DIAG_PEER if payload.len() >= 4 => d.peer = Some(u32_at(payload, 0)).filter(|&p| p != 0),
            UNIX_DIAG_RQLEN if payload.len() >= 8 => d.queue = Some((u32_at(payload, 0), u32_at(payload, 4))),
            UNIX_DIAG_SHUTDOWN if !payload.is_empty() => d.shutdown = payload[0],
            _ => {}
        }
        at += (alen + 3) & !3;
    }
    Ok(d)
}

/// The inode of the other end of UNIX socket `ino`'s connection (`None`: not a connected
/// UNIX socket).
pub fn unix_peer(ino: u64) -> Option<u64> {
    unix_diag(ino).ok()?.peer.filter(|&p| p != 0).map(u64::from)
}

/// Whether one of this process's fds is the socket with inode `ino`.
fn holds_socket(ino: u64) -> bool {
    let want = format!("socket:[{ino}]");
    let Ok(dir) =
        sys::openat(libc::AT_FDCWD, b"/proc/self/fd\0", libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC, 0)
    else {
        return false;
    };
    let dir = Fd(dir as i32);
    let mut buf = vec![0u8; 4096];
    while let Ok(got) = sys::getdents64(dir.0, &mut buf) {
        if got == 0 {
            break;
        }
        let mut at = 0;
        while at + 19 < got as usize {
            let reclen = u16_at(&buf, at + 16) as usize;
            if reclen == 0 {
                break;
            }
            let name = &buf[at + 19..(at + reclen).min(buf.len())];
            let name = &name[..name.iter().position(|&c| c == 0).unwrap_or(name.len())];
            if name.first().is_some_and(u8::is_ascii_digit) {
                let mut path = b"/proc/self/fd/".to_vec();
                path.extend_from_slice(name);
                path.push(0);
                if sys::readlink_string(&path).is_ok_and(|l| l == want) {
                    return true;
                }
            }
            at += reclen;
        }
    }
    false
}

// ---------------------------------------------------------------------------------------------
// Dump.

fn dump(i: &FdInfo, ctx: &mut DumpCtx) -> Option<Result<FileKind, String>> {
    if i.file_type() != libc::S_IFSOCK {
        return None;
    }
    let mut s = SocketState { ino: i.st.st_ino, ..Default::default() };
    let known = identify(i.fd, &mut s);
    let tree_peer = i.share & pmig_abi::SHARE_TREE_PEER != 0;
    if i.share & pmig_abi::SHARE_FOLLOWER != 0 {
        // Another process of the tree saves its state (and makes it at restore): only what
        // it is, and which end of a pair.
        if tree_peer && s.role == SocketRole::Connected {
            if let Some(peer) = unix_peer(s.ino) {
                s.role = SocketRole::Pair;
                s.pair = Some(peer);
            }
        }
        return Some(known.map(|()| FileKind::Socket(s)));
    }
    if i.fd <= 2 {
        // Becomes pmig-resume's own: only its identity is recorded.
        return Some(Ok(FileKind::Socket(s)));
    }
    if matches!(s.family, AF_INET | AF_INET6) && matches!(s.sotype, libc::SOCK_STREAM | libc::SOCK_DGRAM) {
        // Every socket of the family's shut-down ones, listed once per checkpoint.
        let proto = if s.sotype == libc::SOCK_STREAM { libc::IPPROTO_TCP } else { libc::IPPROTO_UDP };
        let key = (s.family, proto);
        if !ctx.inet_shutdowns.iter().any(|c| c.0 == key) {
            let listed = inet_shutdowns(s.family, proto);
            if let Err(e) = &listed {
                debug!("inet_diag of family {} protocol {proto}: {}", s.family, Errno(*e));
            }
            ctx.inet_shutdowns.push((key, listed.unwrap_or_default()));
        }
        let shut = ctx.inet_shutdowns.iter().find(|c| c.0 == key).and_then(|c| c.1.iter().find(|x| x.0 == s.ino));
        s.shutdown = shut.map_or(0, |x| x.1);
    }
    Some(known.and_then(|()| dump_state(i.fd, &mut s, tree_peer)).map(|()| FileKind::Socket(s)))
}

/// Family, type, protocol, addresses and role.
fn identify(fd: i32, s: &mut SocketState) -> Result<(), String> {
    s.family = get_int(fd, SOL_SOCKET, libc::SO_DOMAIN).map_err(|e| format!("SO_DOMAIN: {}", Errno(e)))?;
    s.sotype = get_int(fd, SOL_SOCKET, libc::SO_TYPE).map_err(|e| format!("SO_TYPE: {}", Errno(e)))?;
    s.protocol = get_int(fd, SOL_SOCKET, libc::SO_PROTOCOL).unwrap_or(0);
    s.local = sys::sockname(fd, false).ok().filter(|a| a.len() >= 2);
    s.peer = sys::sockname(fd, true).ok().filter(|a| a.len() >= 2);
    if s.family == AF_NETLINK {
        // getpeername of netlink answers the default destination: the kernel, port 0.
        s.peer = s.peer.take().filter(|a| a.len() >= 12 && a[4..12].iter().any(|&b| b != 0));
    }
    let listening = get_int(fd, SOL_SOCKET, libc::SO_ACCEPTCONN) == Ok(1);
    let bound = s.local.as_deref().is_some_and(|a| is_bound(s.family, a));
    s.role = if listening {
        SocketRole::Listening
    } else if s.peer.is_some() {
        SocketRole::Connected
    } else if bound {
        SocketRole::Bound
    } else {
        SocketRole::Unbound
    };
    if is_tcp(s) && !listening {
        // A connection being made or closed has no peer name but is a connection still.
        if tcp_state(fd).is_some_and(|st| st != TCP_CLOSE && st != TCP_LISTEN) {
            s.role = SocketRole::Connected;
        }
    }
    Ok(())
}

/// `tree_peer`: the other end of a UNIX connection is in another process of the tree.
fn dump_state(fd: i32, s: &mut SocketState, tree_peer: bool) -> Result<(), String> {
    // Options first: TCP repair mode changes what SO_REUSEADDR reads.
    s.options = read_options(fd, s);
    match s.family {
        AF_UNIX => dump_unix(fd, s, tree_peer),
        AF_INET | AF_INET6 if is_tcp(s) => dump_tcp(fd, s),
        AF_INET | AF_INET6 if s.sotype == libc::SOCK_DGRAM && s.role == SocketRole::Bound => {
            s.recv_queue = peek_queue(fd, s.sotype).unwrap_or_default();
            Ok(())
        }
        _ => Ok(()),
    }
}

fn read_options(fd: i32, s: &SocketState) -> Vec<(i32, i32, Vec<u8>)> {
    // A fresh socket of the same kind shows the defaults.
    let probe = new_socket(s.family, s.sotype, s.protocol).ok();
    let tcp = is_tcp(s);
    let mut out = Vec::new();
    for &(level, name, size, which, _) in OPTIONS {
        let applies = match which {
            For::All => true,
            For::Tcp => tcp,
            For::TcpIdle => tcp && s.role != SocketRole::Connected,
            For::V4 => s.family == AF_INET,
            For::V6 => s.family == AF_INET6,
            For::V4Dgram => s.family == AF_INET && s.sotype != libc::SOCK_STREAM,
            For::V6Dgram => s.family == AF_INET6 && s.sotype != libc::SOCK_STREAM,
        };
        if !applies {
            continue;
        }
        let read = |fd: i32| {
            let mut v = vec![0u8; size];
            sys::getsockopt(fd, level, name, &mut v).ok().map(|n| {
                v.truncate(n);
                v
            })
        };
        let Some(mut v) = read(fd) else { continue };
        let default = probe.as_ref().and_then(|p| read(p.0));
        let buffer = level == SOL_SOCKET && (name == SO_RCVBUF || name == SO_SNDBUF);
        if default.as_ref() == Some(&v) && !(level == SOL_IPV6 && name == IPV6_V6ONLY) {
            continue;
        }
        if buffer {
            // Setting a size locks it (no more autotuning): only sizes the program chose.
            if default.is_none() || v.len() != 4 {
                continue;
            }
            v = (i32::from_ne_bytes([v[0], v[1], v[2], v[3]]) / 2).to_ne_bytes().to_vec();
        }
        out.push((level, name, v));
    }
    out
}

fn dump_unix(fd: i32, s: &mut SocketState, tree_peer: bool) -> Result<(), String> {
    let diag = unix_diag(s.ino).map_err(|e| debug!("unix_diag of socket {}: {}", s.ino, Errno(e))).ok();
    s.shutdown = diag.as_ref().map_or(0, |d| d.shutdown);
    match s.role {
        SocketRole::Listening => {
            let backlog = diag.as_ref().and_then(|d| d.queue).map(|(_, max)| max as i32);
            s.backlog = backlog.unwrap_or(DEFAULT_BACKLOG);
        }
        // A datagram socket aimed at a named one is aimed at it by name again, wherever it is.
        SocketRole::Connected
            if s.sotype == libc::SOCK_DGRAM && s.peer.as_deref().is_some_and(|p| is_bound(AF_UNIX, p)) => {}
        SocketRole::Connected => {
            if let Some(peer) = diag.as_ref().and_then(|d| d.peer) {
                if tree_peer || holds_socket(peer as u64) {
                    s.role = SocketRole::Pair;
                    s.pair = Some(peer as u64);
                }
            }
        }
        _ => {}
    }
    // The socket file's mode and owner (what `chmod`/`chown` the program did on it).
    if let Some(path) = s.local.as_deref().and_then(unix_path) {
        let mut p = path.to_vec();
        p.push(0);
        // SAFETY: an all-zero `stat` is a valid value of this plain C struct.
        let mut st: libc::stat = unsafe { core::mem::zeroed() };
        if sys::fstatat(libc::AT_FDCWD, &p, &mut st, libc::AT_SYMLINK_NOFOLLOW).is_ok() && st.st_mode & libc::S_IFMT == libc::S_IFSOCK {
            s.path_meta = Some((st.st_mode & 0o7777, st.st_uid, st.st_gid));
        }
    }
    // A relative path is relative to the cwd at bind time: take the cwd now as the best guess.
    if let Ok(cwd) = sys::readlink_string(b"/proc/self/cwd\0") {
        for a in [&mut s.local, &mut s.peer].into_iter().flatten() {
            if let Some(abs) = absolute_unix(a, cwd.as_bytes()) {
                *a = abs;
            }
        }
    }
    let stream = s.sotype == libc::SOCK_STREAM;
    let has_queue = match s.role {
        SocketRole::Listening | SocketRole::Unbound => false,
        SocketRole::Bound => !stream,
        SocketRole::Connected | SocketRole::Pair => true,
    };
    if has_queue {
        s.recv_queue =
            peek_queue(fd, s.sotype).map_err(|e| format!("cannot read the socket's queued bytes: {}", Errno(e)))?;
    }
    Ok(())
}

/// The queued bytes of a UNIX or UDP socket, left in place: stepped through with `SO_PEEK_OFF`
/// so a stream reads past message boundaries and datagrams come one by one (as records).
fn peek_queue(fd: i32, sotype: i32) -> Result<Vec<u8>, i32> {
    let stream = sotype == libc::SOCK_STREAM;
    let expect = if stream { ioctl_count(fd, SIOCINQ)? } else { usize::MAX };
    if expect == 0 {
        return Ok(Vec::new());
    }
    let old = get_int(fd, SOL_SOCKET, SO_PEEK_OFF).unwrap_or(-1);
    set_int(fd, SOL_SOCKET, SO_PEEK_OFF, 0)?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut off = 0usize;
    let r = loop {
        if stream && out.len() >= expect {
            break Ok(());
        }
        if !stream && out.len() > 256 << 20 {
            break Err(libc::EOVERFLOW);
        }
        match sys::recv(fd, &mut buf, libc::MSG_PEEK | libc::MSG_DONTWAIT | libc::MSG_TRUNC) {
            Ok(0) if stream => break Ok(()),
            Ok(n) if stream => out.extend_from_slice(&buf[..(n as usize).min(buf.len())]),
            Ok(n) if n as usize > buf.len() => {
                // A datagram larger than the buffer: grow it and peek the same one again.
                buf.resize(n as usize, 0);
                if let Err(e) = set_int(fd, SOL_SOCKET, SO_PEEK_OFF, off as i32) {
                    break Err(e);
                }
            }
            Ok(n) => {
                push_record(&mut out, &buf[..n as usize]);
                off += n as usize;
            }
            Err(libc::EAGAIN) => break Ok(()),
            Err(libc::EINTR) => {}
            Err(e) => break Err(e),
        }
    };
    let _ = set_int(fd, SOL_SOCKET, SO_PEEK_OFF, old);
    r.map(|()| out)
}

fn dump_tcp(fd: i32, s: &mut SocketState) -> Result<(), String> {
    match s.role {
        SocketRole::Listening => {
            // For a listener TCP_INFO's tcpi_sacked (offset 28) is the backlog.
            s.backlog = tcp_info(fd).map(|i| u32_at(&i, 28) as i32).unwrap_or(DEFAULT_BACKLOG);
            Ok(())
        }
        SocketRole::Connected => {
            // Only a checkpoint that ends the process can move a connection unnoticed:
            // otherwise the process goes on with it (or closes it) and the image goes stale.
            if let Some((t, q)) = take_given(fd) {
                // Taken by the tree's root, which could (this process cannot).
                s.tcp = Some(t);
                s.recv_queue = q;
                return Ok(());
            }
            if exiting() && tcp_state(fd) == Some(TCP_ESTABLISHED) {
                match repair_dump(fd, true) {
                    Ok((t, q)) => {
                        s.tcp = Some(t);
                        s.recv_queue = q;
                        return Ok(());
                    }
                    Err(e) => debug!(
                        "TCP {} → {}: no repair state ({e}); it will be restored reset",
                        addr_text(s.local.as_deref()),
                        addr_text(s.peer.as_deref())
                    ),
                }
            }
            // What the program has not read yet, handed to it before the reset.
            s.recv_queue = ioctl_count(fd, SIOCINQ).and_then(|n| peek_tcp(fd, n)).unwrap_or_default();
            Ok(())
        }
        _ => Ok(()),
    }
}

/// `n` bytes of a TCP queue, without consuming them (any `SO_PEEK_OFF` put aside meanwhile).
fn peek_tcp(fd: i32, n: usize) -> Result<Vec<u8>, i32> {
    if n == 0 {
        return Ok(Vec::new());
    }
    let old = get_int(fd, SOL_SOCKET, SO_PEEK_OFF).unwrap_or(-1);
    if old >= 0 {
        set_int(fd, SOL_SOCKET, SO_PEEK_OFF, -1)?;
    }
    let mut buf = vec![0u8; n + 1];
    let r = sys::recv(fd, &mut buf, libc::MSG_PEEK | libc::MSG_DONTWAIT);
    if old >= 0 {
        let _ = set_int(fd, SOL_SOCKET, SO_PEEK_OFF, old);
    }
    let got = r? as usize;
    if got != n {
        return Err(libc::EAGAIN);
    }
    buf.truncate(n);
    Ok(buf)
}

/// Attaches a socket filter that drops every packet (one classic BPF `ret #0`), so the
/// kernel neither queues nor acknowledges anything more on this socket.
fn attach_drop_filter(fd: i32) -> bool {
    // struct sock_filter: code BPF_RET | BPF_K, jt 0, jf 0, k 0.
    let insn: [u8; 8] = [0x06, 0, 0, 0, 0, 0, 0, 0];
    // struct sock_fprog { u16 len; struct sock_filter *filter; }: the kernel copies the one
    // instruction from `insn`, which lives until the call returns.
    let mut prog = [0u8; 16];
    prog[0..2].copy_from_slice(&1u16.to_ne_bytes());
    prog[8..16].copy_from_slice(&(insn.as_ptr() as u64).to_ne_bytes());
    sys::setsockopt(fd, SOL_SOCKET, SO_ATTACH_FILTER, &prog).is_ok()
}

/// Saves an established connection in repair mode; returns its state and receive queue.
fn repair_dump(fd: i32, exit: bool) -> Result<(TcpRepairState, Vec<u8>), String> {
    let reuse = get_int(fd, SOL_SOCKET, SO_REUSEADDR).unwrap_or(0);
    set_int(fd, SOL_TCP, TCP_REPAIR, TCP_REPAIR_ON).map_err(|e| format!("TCP_REPAIR: {}", Errno(e)))?;
    if exit {
        // The socket dies with the process: stop it taking in what the image will not hold.
        let _ = attach_drop_filter(fd);
    }
    let r = repair_read(fd);
    let _ = set_int(fd, SOL_TCP, TCP_REPAIR_QUEUE, TCP_NO_QUEUE);
    if !exit || r.is_err() {
        // The program goes on with this connection: as it was, no probe sent.
        let _ = set_int(fd, SOL_TCP, TCP_REPAIR, TCP_REPAIR_OFF_NO_WP);
        if reuse != 0 {
            let _ = set_int(fd, SOL_SOCKET, SO_REUSEADDR, reuse);
        }
    }
    // With `exit`, the socket stays in repair mode: closing it then sends nothing to the peer.
    if exit && r.is_ok() {
        let i = N_REPAIRED.fetch_add(1, Ordering::Relaxed);
        if let Some((f, ru)) = REPAIRED.get(i) {
            f.store(fd, Ordering::Relaxed);
            ru.store(reuse, Ordering::Relaxed);
        }
    }
    r
}

fn repair_read(fd: i32) -> Result<(TcpRepairState, Vec<u8>), String> {
    let qseq = |queue: i32| -> Result<u32, String> {
        set_int(fd, SOL_TCP, TCP_REPAIR_QUEUE, queue).map_err(|e| format!("TCP_REPAIR_QUEUE: {}", Errno(e)))?;
        get_int(fd, SOL_TCP, TCP_QUEUE_SEQ).map(|v| v as u32).map_err(|e| format!("TCP_QUEUE_SEQ: {}", Errno(e)))
    };
    let err = |what: &'static str| move |e: i32| format!("{what}: {}", Errno(e));
    // Packets may still arrive (acknowledgements shrink the send queue, data grows the
    // receive queue): read until nothing changed in between.
    for _ in 0..50 {
        let info = tcp_info(fd).map_err(err("TCP_INFO"))?;
        if info[0] != TCP_ESTABLISHED {
            return Err(format!("state {} is not established", info[0]));
        }
        let window = repair_window(fd)?;
        let send_seq = qseq(TCP_SEND_QUEUE)?;
        let outq = ioctl_count(fd, SIOCOUTQ).map_err(err("SIOCOUTQ"))?;
        let send_queue = peek_tcp(fd, outq);
        let outq2 = ioctl_count(fd, SIOCOUTQ).map_err(err("SIOCOUTQ"))?;
        let recv_seq = qseq(TCP_RECV_QUEUE)?;
        let inq = ioctl_count(fd, SIOCINQ).map_err(err("SIOCINQ"))?;
        let recv_queue = peek_tcp(fd, inq);
        let recv_seq2 = qseq(TCP_RECV_QUEUE)?;
        let (Ok(send_queue), Ok(recv_queue)) = (send_queue, recv_queue) else {
            sys::sleep_ms(1);
            continue;
        };
        if outq != outq2 || recv_seq != recv_seq2 {
            sys::sleep_ms(1);
            continue;
        }
        let mss = get_int(fd, SOL_TCP, libc::TCP_MAXSEG).map_err(err("TCP_MAXSEG"))? as u32;
        let timestamp = get_int(fd, SOL_TCP, TCP_TIMESTAMP).map_err(err("TCP_TIMESTAMP"))? as u32;
        let mut w = vec![info[5]];
        w.extend_from_slice(&window);
        let t = TcpRepairState {
            send_seq,
            recv_seq,
            send_queue,
            mss,
            snd_wscale: (info[6] & 0xf) as u32,
            rcv_wscale: (info[6] >> 4) as u32,
            timestamp,
            window: w,
        };
        return Ok((t, recv_queue));
    }
    Err("the connection's queues kept changing".into())
}

/// `struct tcp_repair_window` as this kernel has it (20 bytes; newer kernels may add fields).
fn repair_window(fd: i32) -> Result<Vec<u8>, String> {
    let mut last = 0;
    for size in [20, 28, 32, 36, 40] {
        let mut w = vec![0u8; size];
        match sys::getsockopt(fd, SOL_TCP, TCP_REPAIR_WINDOW, &mut w) {
            Ok(n) => {
                w.truncate(n);
                return Ok(w);
            }
            Err(e) => last = e,
        }
    }
    Err(format!("TCP_REPAIR_WINDOW: {}", Errno(last)))
}

// ---------------------------------------------------------------------------------------------
// Restore.

fn restore(f: &FileState, ctx: &mut RestoreCtx) -> Option<Result<i32, String>> {
    let FileKind::Socket(s) = &f.kind else { return None };
    Some(restore_socket(s, ctx))
}

fn restore_socket(s: &SocketState, ctx: &mut RestoreCtx) -> Result<i32, String> {
    match s.role {
        SocketRole::Pair => match s.pair {
            Some(peer) => pair_end(s, peer, ctx),
            None => dead_peer(s),
        },
        SocketRole::Connected if s.family == AF_UNIX => {
            // A datagram socket's "connection" is only its default destination: aim at it again.
            if s.sotype == libc::SOCK_DGRAM && s.peer.as_deref().is_some_and(|p| is_bound(AF_UNIX, p)) {
                match fresh(s) {
                    Ok(fd) => return Ok(fd),
                    Err(e) => debug!("UNIX datagram socket to {}: {e}; its peer is gone", addr_text(s.peer.as_deref())),
                }
            }
            dead_peer(s)
        }
        SocketRole::Connected if is_tcp(s) => tcp_connection(s),
        _ => fresh(s),
    }
}

/// Sets the saved options on `fd`, except those in `skip` and `SO_PEEK_OFF` (set once the
/// queue is back, by [`set_peek_off`]). An option the kernel refuses is a warning.
fn set_options(fd: i32, s: &SocketState, skip: &[(i32, i32)]) {
    for (level, name, v) in &s.options {
        if (*level, *name) == (SOL_SOCKET, SO_PEEK_OFF) || skip.contains(&(*level, *name)) {
            continue;
        }
        let r = if *level == SOL_SOCKET && (*name == SO_RCVBUF || *name == SO_SNDBUF) && v.len() == 4 {
            set_buf(fd, *name, i32::from_ne_bytes([v[0], v[1], v[2], v[3]]))
        } else {
            sys::setsockopt(fd, *level, *name, v).map(|_| ())
        };
        if let Err(e) = r {
            let what = OPTIONS.iter().find(|o| o.0 == *level && o.1 == *name).map_or("?", |o| o.4);
            say!("warning: socket option {what} ({level}/{name}) not restored: {}", Errno(e));
        }
    }
}

fn set_peek_off(fd: i32, s: &SocketState) {
    if let Some((_, _, v)) = s.options.iter().find(|o| (o.0, o.1) == (SOL_SOCKET, SO_PEEK_OFF)) {
        let _ = sys::setsockopt(fd, SOL_SOCKET, SO_PEEK_OFF, v);
    }
}

fn saved_reuseaddr(s: &SocketState) -> bool {
    s.options.iter().any(|o| (o.0, o.1) == (SOL_SOCKET, SO_REUSEADDR) && o.2.iter().any(|&b| b != 0))
}

/// A new socket as the saved one: options, bound to its address, listening or connected
/// (datagrams) again.
fn fresh(s: &SocketState) -> Result<i32, String> {
    let fd = new_socket(s.family, s.sotype, s.protocol)?;
    set_options(fd.0, s, &[]);
    let mut reuse_for_now = false;
    if s.role != SocketRole::Unbound {
        if let Some(local) = s.local.as_deref().filter(|a| is_bound(s.family, a)) {
            reuse_for_now = bind_again(&fd, s, local)?;
        }
    }
    match s.role {
        SocketRole::Listening => {
            sys::listen(fd.0, s.backlog)
                .map_err(|e| format!("listen on {}: {}", addr_text(s.local.as_deref()), Errno(e)))?;
        }
        SocketRole::Connected => {
            let peer = s.peer.as_deref().unwrap_or_default();
            sys::connect(fd.0, peer).map_err(|e| format!("connect to {}: {}", addr_text(Some(peer)), Errno(e)))?;
        }
        _ => {}
    }
    if reuse_for_now {
        let _ = set_int(fd.0, SOL_SOCKET, SO_REUSEADDR, 0);
    }
    if s.role == SocketRole::Bound && s.sotype != libc::SOCK_STREAM && !s.recv_queue.is_empty() {
        refill_bound(s);
    }
    set_peek_off(fd.0, s);
    Ok(fd.keep())
}

/// Binds `fd` to `local` again. Returns whether `SO_REUSEADDR` was turned on only to get past
/// the program's own leftovers (TCP TIME_WAIT), to be turned off after `listen`.
fn bind_again(fd: &Fd, s: &SocketState, local: &[u8]) -> Result<bool, String> {
    let mut addr = local.to_vec();
    if s.family == AF_UNIX {
        if let Some(path) = unix_path(local) {
            // A socket file left by the old process would make bind fail: remove it, but
            // only if it is a socket.
            let mut p = path.to_vec();
            p.push(0);
            // SAFETY: an all-zero `stat` is a valid value of this plain C struct.
            let mut st: libc::stat = unsafe { core::mem::zeroed() };
            if sys::fstatat(libc::AT_FDCWD, &p, &mut st, libc::AT_SYMLINK_NOFOLLOW).is_ok()
                && st.st_mode & libc::S_IFMT == libc::S_IFSOCK
            {
                let _ = sys::unlink(&p);
            }
        }
    }
    let what = |e: i32| format!("bind to {}: {}", addr_text(Some(local)), Errno(e));
    match sys::bind(fd.0, &addr) {
        Ok(_) => {
            // The socket file as the program left it.
            if let (Some(path), Some((mode, uid, gid))) = (unix_path(local), s.path_meta) {
                let mut p = path.to_vec();
                p.push(0);
                let _ = sys::fchmodat(&p, mode);
                let _ = sys::lchown(&p, uid, gid);
            }
            Ok(false)
        }
        Err(libc::EADDRINUSE) if is_tcp(s) => {
            // The old process's closed connections (TIME_WAIT) hold the port; those of a
            // listener without SO_REUSEADDR block even a reusing bind: end them (root).
            let gone = end_time_wait(s.family, local);
            if gone > 0 {
                debug!("{gone} TIME_WAIT connection(s) on {} ended", addr_text(Some(local)));
                if sys::bind(fd.0, &addr).is_ok() {
                    return Ok(false);
                }
            }
            if saved_reuseaddr(s) {
                return Err(what(libc::EADDRINUSE));
            }
            set_int(fd.0, SOL_SOCKET, SO_REUSEADDR, 1).map_err(what)?;
            sys::bind(fd.0, &addr).map_err(what)?;
            Ok(true)
        }
        Err(e) if s.family == AF_NETLINK && addr.len() >= 8 => {
            // The old port id may be taken: let the kernel choose one.
            addr[4..8].fill(0);
            sys::bind(fd.0, &addr).map_err(|_| what(e))?;
            Ok(false)
        }
        Err(e) if s.role == SocketRole::Connected && matches!(s.family, AF_INET | AF_INET6) && addr.len() >= 8 => {
            // The local address of a connected datagram socket was chosen by the kernel and
            // may not exist here: keep the port if it can, else connect binds it.
            let keep_port = addr[..4].to_vec();
            addr.fill(0);
            addr[..4].copy_from_slice(&keep_port);
            if sys::bind(fd.0, &addr).is_err() {
                debug!("socket to {}: {}; bound afresh", addr_text(s.peer.as_deref()), what(e));
            }
            Ok(false)
        }
        Err(e) => Err(what(e)),
    }
}

/// `(inode, sk_shutdown bits)` of every TCP or UDP socket of `family` (`proto`) shut down
/// in either direction (`RCV_SHUTDOWN` 1, `SEND_SHUTDOWN` 2), from the sock_diag netlink's
/// `INET_DIAG_SHUTDOWN` (works unprivileged).
fn inet_shutdowns(family: i32, proto: i32) -> Result<Vec<(u64, u8)>, i32> {
    const INET_DIAG_SHUTDOWN: u16 = 8;
    const NLM_F_DUMP: u16 = 0x300;
    const NLMSG_DONE: u16 = 3;
    let nl = Fd(sys::socket(AF_NETLINK, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, NETLINK_SOCK_DIAG)? as i32);
    // struct nlmsghdr, then struct inet_diag_req_v2 (every state, no socket id).
    let mut r = vec![0u8; 16 + 56];
    r[0..4].copy_from_slice(&(72u32).to_ne_bytes());
    r[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    r[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    r[16] = family as u8;
    r[17] = proto as u8;
    r[20..24].copy_from_slice(&u32::MAX.to_ne_bytes());
    sys::write(nl.0, &r)?;
    let mut buf = vec![0u8; 32 << 10];
    let mut out = Vec::new();
    loop {
        let n = sys::recv(nl.0, &mut buf, 0)? as usize;
        if n == 0 {
            return Ok(out);
        }
        let mut at = 0;
        while at + 16 <= n {
            let len = u32_at(&buf, at) as usize;
            let ty = u16_at(&buf, at + 4);
            if ty == NLMSG_ERROR || len < 16 {
                return Err(libc::EIO);
            }
            if ty == NLMSG_DONE {
                return Ok(out);
            }
            // struct inet_diag_msg: 72 bytes (its inode at 68), then attributes, 4-aligned.
            let m = &buf[at + 16..(at + len).min(n)];
            if ty == SOCK_DIAG_BY_FAMILY && m.len() >= 72 {
                let mut a = 72;
                while a + 4 <= m.len() {
                    let alen = u16_at(m, a) as usize;
                    if alen < 4 {
                        break;
                    }
                    if u16_at(m, a + 2) == INET_DIAG_SHUTDOWN && alen >= 5 && a + 4 < m.len() {
                        if m[a + 4] != 0 {
                            out.push((u64::from(u32_at(m, 68)), m[a + 4]));
                        }
                        break;
                    }
                    a += (alen + 3) & !3;
                }
            }
            at += (len + 3) & !3;
        }
    }
}

/// Ends the TIME_WAIT TCP connections whose local address is `local` (port, and address
/// unless `local`'s is the wildcard) with `SOCK_DESTROY` (needs `CAP_NET_ADMIN`); returns how
/// many ended.
fn end_time_wait(family: i32, local: &[u8]) -> usize {
    let Some((port, ip)) = inet_parts(family, local) else { return 0 };
    let Ok(nl) = sys::socket(AF_NETLINK, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, NETLINK_SOCK_DIAG) else { return 0 };
    let nl = Fd(nl as i32);
    const TIME_WAIT: u32 = 1 << 6;
    // struct nlmsghdr, then struct inet_diag_req_v2 with an empty struct inet_diag_sockid.
    let req = |ty: u16, flags: u16, id: &[u8]| {
        let mut r = vec![0u8; 16 + 56];
        r[0..4].copy_from_slice(&(72u32).to_ne_bytes());
        r[4..6].copy_from_slice(&ty.to_ne_bytes());
        r[6..8].copy_from_slice(&flags.to_ne_bytes());
        r[16] = family as u8;
        r[17] = libc::IPPROTO_TCP as u8;
        r[20..24].copy_from_slice(&TIME_WAIT.to_ne_bytes());
        r[24..24 + id.len().min(48)].copy_from_slice(&id[..id.len().min(48)]);
        r
    };
    const NLM_F_DUMP: u16 = 0x300;
    const NLM_F_ACK: u16 = 4;
    const SOCK_DESTROY: u16 = 21;
    const NLMSG_DONE: u16 = 3;
    if sys::write(nl.0, &req(SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, &[])).is_err() {
        return 0;
    }
    // Collect the sockets' ids (struct inet_diag_msg: 4 bytes, then the 48-byte id).
    let mut ids = Vec::new();
    let mut buf = vec![0u8; 32 << 10];
    'dump: while let Ok(n) = sys::recv(nl.0, &mut buf, libc::MSG_DONTWAIT) {
        let mut at = 0;
        let n = n as usize;
        while at + 16 <= n {
            let len = u32_at(&buf, at) as usize;
            let ty = u16_at(&buf, at + 4);
            if ty == NLMSG_DONE || ty == NLMSG_ERROR || len < 16 {
                break 'dump;
            }
            let m = &buf[at + 16..(at + len).min(n)];
            if ty == SOCK_DIAG_BY_FAMILY && m.len() >= 52 {
                let id = &m[4..52];
                let same_ip = ip.iter().all(|&b| b == 0) || id[4..4 + ip.len()] == ip[..];
                if id[0..2] == port && same_ip {
                    ids.push(id.to_vec());
                }
            }
            at += (len + 3) & !3;
        }
        if n == 0 {
            break;
        }
    }
    let mut gone = 0;
    for id in ids {
        if sys::write(nl.0, &req(SOCK_DESTROY, NLM_F_REQUEST | NLM_F_ACK, &id)).is_ok()
            && sys::recv(nl.0, &mut buf, libc::MSG_DONTWAIT)
                .is_ok_and(|n| n >= 20 && u16_at(&buf, 4) == NLMSG_ERROR && u32_at(&buf, 16) == 0)
        {
            gone += 1;
        }
    }
    gone
}

/// The port (network order) and address bytes of an inet socket address.
fn inet_parts(family: i32, a: &[u8]) -> Option<([u8; 2], Vec<u8>)> {
    match family {
        AF_INET if a.len() >= 8 => Some(([a[2], a[3]], a[4..8].to_vec())),
        AF_INET6 if a.len() >= 24 => Some(([a[2], a[3]], a[8..24].to_vec())),
        _ => None,
    }
}

/// Puts a bound datagram socket's queued messages back, sent to its address from a new socket
/// (the senders' addresses are lost). What does not fit is a warning.
fn refill_bound(s: &SocketState) {
    let Some(local) = s.local.as_deref() else { return };
    let mut to = local.to_vec();
    // A wildcard address is reached on the loopback.
    match s.family {
        AF_INET if to.len() >= 8 && to[4..8] == [0; 4] => to[4..8].copy_from_slice(&[127, 0, 0, 1]),
        AF_INET6 if to.len() >= 24 && to[8..24] == [0; 16] => to[23] = 1,
        _ => {}
    }
    let protocol = if s.family == AF_UNIX { 0 } else { s.protocol };
    let Ok(tx) = new_socket(s.family, s.sotype, protocol) else { return };
    let mut lost = 0;
    for msg in records(&s.recv_queue) {
        if sendto(tx.0, msg, libc::MSG_DONTWAIT, &to).is_err() {
            lost += 1;
        }
    }
    if lost > 0 {
        say!("warning: {lost} datagram(s) queued on {} could not be put back", addr_text(Some(local)));
    }
}

/// Writes a saved queue into `writer`, the other end of the socket it must arrive at.
fn put_queue(writer: i32, sotype: i32, q: &[u8]) -> Result<(), String> {
    if q.is_empty() {
        return Ok(());
    }
    // The queued bytes count against the writer's send buffer until read: make room for them
    // now, and give the buffer its size back afterwards.
    let old = get_int(writer, SOL_SOCKET, SO_SNDBUF).unwrap_or(0);
    let need = (q.len() as i64 * 2 + (64 << 10)).min(i32::MAX as i64 / 2) as i32;
    let grown = old < need && set_buf(writer, SO_SNDBUF, need).is_ok();
    let r = if sotype == libc::SOCK_STREAM {
        let mut at = 0;
        loop {
            if at == q.len() {
                break Ok(());
            }
            match sendto(writer, &q[at..], libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL, &[]) {
                Ok(n) => at += n as usize,
                Err(libc::EINTR) => {}
                Err(e) => break Err(format!("{} of {} queued bytes put back: {}", at, q.len(), Errno(e))),
            }
        }
    } else {
        records(q).enumerate().try_for_each(|(i, m)| {
            match sendto(writer, m, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL, &[]) {
                Ok(n) if n as usize == m.len() => Ok(()),
                Ok(_) => Err(format!("queued message {i} put back short")),
                Err(e) => Err(format!("queued message {i} not put back: {}", Errno(e))),
            }
        })
    };
    if grown {
        let _ = set_buf(writer, SO_SNDBUF, old / 2);
    }
    r
}

/// One end of a socketpair (or of a UNIX connection with both ends in the program). The
/// first end restored makes the pair; the other end's fd waits in `ctx.pairs` under its
/// inode, and a copy of this end waits under this end's, so that the other end's queue can
/// be written into it.
fn pair_end(s: &SocketState, peer: u64, ctx: &mut RestoreCtx) -> Result<i32, String> {
    if let Some(at) = ctx.pairs.iter().position(|p| p.0 == s.ino) {
        let mine = Fd(ctx.pairs.remove(at).1);
        if let Some(at) = ctx.pairs.iter().position(|p| p.0 == peer) {
            let theirs = Fd(ctx.pairs.remove(at).1);
            put_queue(theirs.0, s.sotype, &s.recv_queue)?;
        }
        set_options(mine.0, s, &[]);
        set_peek_off(mine.0, s);
        return Ok(mine.keep());
    }
    let (a, b) = sys::socketpair(s.family, s.sotype | libc::SOCK_CLOEXEC, s.protocol)
        .map_err(|e| format!("socketpair: {}", Errno(e)))?;
    let (a, b) = (Fd(a), Fd(b));
    let (a, b) = (lifted(ctx, a)?, lifted(ctx, b)?);
    set_options(a.0, s, &[]);
    put_queue(b.0, s.sotype, &s.recv_queue)?;
    let copy = sys::fcntl(a.0, libc::F_DUPFD_CLOEXEC, ctx.high as u64).map_err(|e| format!("F_DUPFD: {}", Errno(e)))?;
    ctx.pairs.push((peer, b.keep()));
    ctx.pairs.push((s.ino, copy as i32));
    set_peek_off(a.0, s);
    Ok(a.keep())
}

/// For the maker of a pair the tree shares, just after it restored its end `mine`: both
/// ends' fds, the end with the smaller inode first (-1 for one not at hand).
pub fn pair_ends(s: &SocketState, mine: i32, ctx: &RestoreCtx) -> [i32; 2] {
    let peer = s.pair.unwrap_or(0);
    let other = ctx.pairs.iter().find(|p| p.0 == peer).map_or(-1, |p| p.1);
    if s.ino < peer {
        [mine, other]
    } else {
        [other, mine]
    }
}

/// One end of a pair the tree shares, taken from its maker as `fd`: its options, and the
/// bytes queued for it, written through the other end (`peer` takes it) when this process
/// saved them.
pub fn adopt_pair_end(fd: i32, s: &SocketState, peer: impl FnOnce() -> Result<i32, String>) -> Result<i32, String> {
    let fd = Fd(fd);
    set_options(fd.0, s, &[]);
    if !s.recv_queue.is_empty() {
        let p = Fd(peer()?);
        put_queue(p.0, s.sotype, &s.recv_queue)?;
    }
    set_peek_off(fd.0, s);
    Ok(fd.keep())
}

/// A UNIX connection whose peer was outside the program: one end of a new socketpair with
/// the unread bytes in it and its other end closed (reads: the bytes, then EOF).
fn dead_peer(s: &SocketState) -> Result<i32, String> {
    let (a, b) =
        sys::socketpair(AF_UNIX, s.sotype | libc::SOCK_CLOEXEC, 0).map_err(|e| format!("socketpair: {}", Errno(e)))?;
    let (a, b) = (Fd(a), Fd(b));
    set_options(a.0, s, &[]);
    put_queue(b.0, s.sotype, &s.recv_queue)?;
    drop(b);
    set_peek_off(a.0, s);
    Ok(a.keep())
}

/// A TCP connection: repaired if its state was saved and the kernel lets us, else reset.
fn tcp_connection(s: &SocketState) -> Result<i32, String> {
    let (local, peer) = (addr_text(s.local.as_deref()), addr_text(s.peer.as_deref()));
    match &s.tcp {
        Some(t) => match repair_restore(s, t) {
            Ok(fd) => {
                debug!("TCP connection {local} → {peer} repaired");
                return Ok(fd);
            }
            Err(e) => {
                say!("warning: TCP connection {local} → {peer} cannot be repaired ({e}); the program sees it reset")
            }
        },
        None => say!(
            "note: TCP connection {local} → {peer} was not saved in repair mode (that takes root and --exit); \
             the program sees it reset"
        ),
    }
    reset_connection(s)
}

/// Sends `data` into the repair queue `queue`, in chunks the kernel accepts.
fn repair_send(fd: i32, queue: i32, data: &[u8]) -> Result<(), String> {
    if data.is_empty() {
        return Ok(());
    }
    set_int(fd, SOL_TCP, TCP_REPAIR_QUEUE, queue).map_err(|e| format!("TCP_REPAIR_QUEUE: {}", Errno(e)))?;
    let (mut at, mut chunk) = (0, data.len());
    while at < data.len() {
        let n = chunk.min(data.len() - at);
        match sendto(fd, &data[at..at + n], libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL, &[]) {
            Ok(k) if k > 0 => at += k as usize,
            // The receive queue takes one linear buffer per call: big ones may not be had.
            _ if chunk > 1024 => chunk /= 2,
            r => return Err(format!("putting back queue {queue}: {r:?}")),
        }
    }
    Ok(())
}

fn repair_restore(s: &SocketState, t: &TcpRepairState) -> Result<i32, String> {
    let err = |what: &'static str| move |e: i32| format!("{what}: {}", Errno(e));
    let (Some(local), Some(peer)) = (s.local.as_deref(), s.peer.as_deref()) else {
        return Err("no addresses saved".into());
    };
    let fd = new_socket(s.family, libc::SOCK_STREAM, libc::IPPROTO_TCP)?;
    // Options before repair mode: SO_REUSEADDR would undo the forced reuse repair mode sets.
    set_options(fd.0, s, &[]);
    set_int(fd.0, SOL_TCP, TCP_REPAIR, TCP_REPAIR_ON).map_err(err("TCP_REPAIR"))?;
    // From here on, closing `fd` (on error) sends nothing to the peer.
    let seq = |queue: i32, v: u32| -> Result<(), String> {
        set_int(fd.0, SOL_TCP, TCP_REPAIR_QUEUE, queue).map_err(err("TCP_REPAIR_QUEUE"))?;
        set_int(fd.0, SOL_TCP, TCP_QUEUE_SEQ, v as i32).map_err(err("TCP_QUEUE_SEQ"))
    };
    seq(TCP_RECV_QUEUE, t.recv_seq.wrapping_sub(s.recv_queue.len() as u32))?;
    seq(TCP_SEND_QUEUE, t.send_seq.wrapping_sub(t.send_queue.len() as u32))?;
    sys::bind(fd.0, local).map_err(err("bind"))?;
    sys::connect(fd.0, peer).map_err(err("connect"))?;
    let flags = t.window.first().copied().unwrap_or(TCPI_OPT_TIMESTAMPS | TCPI_OPT_SACK | TCPI_OPT_WSCALE);
    let mut opts = Vec::new();
    let mut opt = |code: u32, val: u32| {
        opts.extend_from_slice(&code.to_ne_bytes());
        opts.extend_from_slice(&val.to_ne_bytes());
    };
    if flags & TCPI_OPT_SACK != 0 {
        opt(TCPOPT_SACK_PERM, 0);
    }
    if flags & TCPI_OPT_WSCALE != 0 {
        opt(TCPOPT_WINDOW, t.snd_wscale | (t.rcv_wscale << 16));
    }
    if flags & TCPI_OPT_TIMESTAMPS != 0 {
        opt(TCPOPT_TIMESTAMP, 0);
    }
    opt(TCPOPT_MAXSEG, t.mss);
    sys::setsockopt(fd.0, SOL_TCP, TCP_REPAIR_OPTIONS, &opts).map_err(err("TCP_REPAIR_OPTIONS"))?;
    if flags & TCPI_OPT_TIMESTAMPS != 0 {
        set_int(fd.0, SOL_TCP, TCP_TIMESTAMP, t.timestamp as i32).map_err(err("TCP_TIMESTAMP"))?;
    }
    // Room for the queues (sizes the program chose come back with the options).
    for (name, len) in [(SO_RCVBUF, s.recv_queue.len()), (SO_SNDBUF, t.send_queue.len())] {
        let have = get_int(fd.0, SOL_SOCKET, name).unwrap_or(0) as usize;
        if len * 2 > have {
            let _ = set_buf(fd.0, name, (len * 2).min(i32::MAX as usize / 2) as i32);
        }
    }
    repair_send(fd.0, TCP_RECV_QUEUE, &s.recv_queue)?;
    repair_send(fd.0, TCP_SEND_QUEUE, &t.send_queue)?;
    if t.window.len() > 1 {
        if let Err(e) = sys::setsockopt(fd.0, SOL_TCP, TCP_REPAIR_WINDOW, &t.window[1..]) {
            debug!("TCP_REPAIR_WINDOW not restored: {}; the window starts afresh", Errno(e));
        }
    }
    set_int(fd.0, SOL_TCP, TCP_REPAIR_QUEUE, TCP_NO_QUEUE).map_err(err("TCP_REPAIR_QUEUE"))?;
    // No window probe: the other end may be one of the program's sockets not made yet, whose
    // port a listener answers with a reset. The first segment either side sends goes on.
    set_int(fd.0, SOL_TCP, TCP_REPAIR, TCP_REPAIR_OFF_NO_WP).map_err(err("TCP_REPAIR off"))?;
    if saved_reuseaddr(s) {
        // Leaving repair mode cleared it.
        let _ = set_int(fd.0, SOL_SOCKET, SO_REUSEADDR, 1);
    }
    set_peek_off(fd.0, s);
    Ok(fd.keep())
}

/// A TCP socket whose connection was reset: connected to a listener of our own on the
/// loopback, handed the unread bytes, then reset (`SO_LINGER` 0). Without a loopback, a
/// never-connected socket (reads: `ENOTCONN`, writes: `EPIPE`). Never one that hangs.
fn reset_connection(s: &SocketState) -> Result<i32, String> {
    reset_via_loopback(s).or_else(|e| {
        debug!("no reset connection over the loopback ({e}); an unconnected socket instead");
        let fd = new_socket(s.family, libc::SOCK_STREAM, s.protocol)?;
        set_options(fd.0, s, &[(SOL_IPV6, IPV6_V6ONLY)]);
        Ok(fd.keep())
    })
}

fn reset_via_loopback(s: &SocketState) -> Result<i32, String> {
    let err = |what: &'static str| move |e: i32| format!("{what}: {}", Errno(e));
    let lst = new_socket(AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0)?;
    sys::bind(lst.0, &loopback_v4([0, 0])).map_err(err("bind"))?;
    sys::listen(lst.0, 1).map_err(err("listen"))?;
    let at = sys::sockname(lst.0, false).map_err(err("getsockname"))?;
    let fd = new_socket(s.family, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, libc::IPPROTO_TCP)?;
    let target: Vec<u8> = if s.family == AF_INET6 {
        let _ = set_int(fd.0, SOL_IPV6, IPV6_V6ONLY, 0);
        v4_mapped(&at).to_vec()
    } else {
        at
    };
    if s.recv_queue.len() > 32 << 10 {
        let _ = set_buf(fd.0, SO_RCVBUF, (s.recv_queue.len() * 2).min(i32::MAX as usize / 2) as i32);
    }
    match sys::connect(fd.0, &target) {
        Ok(_) | Err(libc::EINPROGRESS) => {}
        Err(e) => return Err(format!("connect: {}", Errno(e))),
    }
    let mut acc = None;
    wait_until(LOOPBACK_WAIT_MS, || {
        acc = accept4(lst.0, libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK).ok().map(|a| Fd(a as i32));
        acc.is_some()
    });
    let acc = acc.ok_or("no connection on the loopback")?;
    if !wait_until(LOOPBACK_WAIT_MS, || tcp_state(fd.0) == Some(TCP_ESTABLISHED)) {
        return Err("the loopback connection was not established".into());
    }
    let q = &s.recv_queue;
    let mut sent = 0;
    wait_until(LOOPBACK_WAIT_MS, || {
        if let Ok(n) = sendto(acc.0, &q[sent..], libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL, &[]) {
            sent += n as usize;
        }
        sent == q.len() && ioctl_count(fd.0, SIOCINQ).unwrap_or(0) >= q.len()
    });
    if sent < q.len() {
        say!("warning: {} of {} unread bytes of a reset TCP connection are lost", q.len() - sent, q.len());
    }
    // l_onoff = 1, l_linger = 0: close sends a reset.
    let linger = [1i32.to_ne_bytes(), 0i32.to_ne_bytes()].concat();
    sys::setsockopt(acc.0, SOL_SOCKET, SO_LINGER, &linger).map_err(err("SO_LINGER"))?;
    drop(acc);
    drop(lst);
    if !wait_until(LOOPBACK_WAIT_MS, || tcp_state(fd.0) == Some(TCP_CLOSE)) {
        return Err("the loopback connection was not reset".into());
    }
    let _ = sys::fcntl(fd.0, libc::F_SETFL, 0);
    set_options(fd.0, s, &[(SOL_IPV6, IPV6_V6ONLY)]);
    Ok(fd.keep())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagram_records_round_trip() {
        let mut q = Vec::new();
        for m in [&b"one"[..], b"", b"three!"] {
            push_record(&mut q, m);
        }
        let got: Vec<&[u8]> = records(&q).collect();
        assert_eq!(got, vec![&b"one"[..], b"", b"three!"]);
        // A truncated tail is dropped, never read past.
        assert_eq!(records(&q[..q.len() - 1]).count(), 2);
    }

    #[test]
    fn addresses() {
        let sin = loopback_v4(8080u16.to_be_bytes());
        assert!(is_bound(AF_INET, &sin));
        assert!(!is_bound(AF_INET, &loopback_v4([0, 0])));
        assert_eq!(addr_text(Some(&sin)), "127.0.0.1:8080");
        let m = v4_mapped(&sin);
        assert_eq!(addr_text(Some(&m)), "[0:0:0:0:0:ffff:7f00:1]:8080");
        let unnamed = (AF_UNIX as u16).to_ne_bytes().to_vec();
        assert!(!is_bound(AF_UNIX, &unnamed));
        let mut abs = unnamed.clone();
        abs.extend_from_slice(b"\0name");
        assert!(is_bound(AF_UNIX, &abs) && unix_path(&abs).is_none());
        assert_eq!(addr_text(Some(&abs)), "@name");
        let mut rel = unnamed.clone();
        rel.extend_from_slice(b"s.sock\0");
        assert_eq!(unix_path(&rel), Some(&b"s.sock"[..]));
        let full = absolute_unix(&rel, b"/tmp/d").unwrap();
        assert_eq!(unix_path(&full), Some(&b"/tmp/d/s.sock"[..]));
        assert_eq!(absolute_unix(&full, b"/x"), None);
        assert_eq!(absolute_unix(&rel, &[b'/'; 120]), None);
    }

    #[test]
    fn parses_unix_diag_answers() {
        let mut b = vec![0u8; 32];
        b[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        b[20..24].copy_from_slice(&77u32.to_ne_bytes());
        let attr = |b: &mut Vec<u8>, ty: u16, payload: &[u8]| {
            b.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
            b.extend_from_slice(&ty.to_ne_bytes());
            b.extend_from_slice(payload);
            while !b.len().is_multiple_of(4) {
                b.push(0);
            }
        };
        attr(&mut b, 0, b"\0ab"); // a name, skipped
        attr(&mut b, UNIX_DIAG_PEER, &78u32.to_ne_bytes());
        attr(&mut b, UNIX_DIAG_RQLEN, &[5u32.to_ne_bytes(), 9u32.to_ne_bytes()].concat());
        let n = b.len() as u32;
        b[0..4].copy_from_slice(&n.to_ne_bytes());
        assert_eq!(parse_unix_diag(&b, 77), Ok(UnixDiag { peer: Some(78), queue: Some((5, 9)), shutdown: 0 }));
        assert_eq!(parse_unix_diag(&b, 78), Err(libc::EIO));
        let mut e = vec![0u8; 36];
        e[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        e[16..20].copy_from_slice(&(-libc::ENOENT).to_ne_bytes());
        assert_eq!(parse_unix_diag(&e, 1), Err(libc::ENOENT));
    }

    fn test_ctx() -> RestoreCtx {
        RestoreCtx { high: 600, pipes: Vec::new(), pairs: Vec::new(), gap: Default::default(), objects: Vec::new(), deleted: Vec::new(), pipe_ends: Vec::new(), unlink_later: Vec::new() }
    }

    fn info(fd: i32) -> FdInfo {
        // SAFETY: an all-zero `stat` is a valid value of this plain C struct.
        let mut st: libc::stat = unsafe { core::mem::zeroed() };
        sys::fstat(fd, &mut st).unwrap();
        FdInfo { fd, link: String::new(), st, flags: libc::O_RDWR, fdinfo: String::new(), share: 0 }
    }

    fn saved(fd: i32) -> SocketState {
        match dump(&info(fd), &mut DumpCtx::default()) {
            Some(Ok(FileKind::Socket(s))) => s,
            other => panic!("fd {fd}: {other:?}"),
        }
    }

    fn read_all(fd: i32, n: usize) -> Vec<u8> {
        let mut out = vec![0u8; n];
        let mut at = 0;
        while at < n {
            at += sys::read(fd, &mut out[at..]).unwrap() as usize;
        }
        out
    }

    /// A live socketpair with bytes in flight both ways (and datagrams) survives dump and
    /// restore, and the dump leaves the live pair as it was.
    #[test]
    fn socketpairs_come_back_with_their_queues() {
        for ty in [libc::SOCK_STREAM, libc::SOCK_DGRAM, libc::SOCK_SEQPACKET] {
            let (x, y) = sys::socketpair(AF_UNIX, ty | libc::SOCK_CLOEXEC, 0).unwrap();
            let (x, y) = (Fd(x), Fd(y));
            sys::write_all(x.0, b"to y 1").unwrap();
            sys::write_all(x.0, b"to y 2").unwrap();
            sys::write_all(y.0, b"to x").unwrap();
            let sx = saved(x.0);
            let sy = saved(y.0);
            assert_eq!((sx.role, sx.pair, sy.pair), (SocketRole::Pair, Some(sy.ino), Some(sx.ino)), "type {ty}");
            if ty == libc::SOCK_STREAM {
                assert_eq!(sy.recv_queue, b"to y 1to y 2");
            } else {
                assert_eq!(records(&sy.recv_queue).collect::<Vec<_>>(), vec![&b"to y 1"[..], b"to y 2"]);
            }
            // The live pair still holds its bytes.
            assert_eq!(read_all(x.0, 4), b"to x");

            let mut ctx = test_ctx();
            let nx = Fd(restore_socket(&sx, &mut ctx).unwrap());
            let ny = Fd(restore_socket(&sy, &mut ctx).unwrap());
            assert!(ctx.pairs.is_empty());
            if ty == libc::SOCK_STREAM {
                assert_eq!(read_all(ny.0, 12), b"to y 1to y 2");
            } else {
                assert_eq!(read_all(ny.0, 6), b"to y 1");
                assert_eq!(read_all(ny.0, 6), b"to y 2");
            }
            assert_eq!(read_all(nx.0, 4), b"to x");
            sys::write_all(nx.0, b"new").unwrap();
            assert_eq!(read_all(ny.0, 3), b"new");
        }
    }

    #[test]
    fn listeners_come_back_with_their_options() {
        let l = new_socket(AF_INET, libc::SOCK_STREAM, 0).unwrap();
        set_int(l.0, SOL_SOCKET, SO_REUSEADDR, 1).unwrap();
        set_int(l.0, SOL_TCP, 1, 1).unwrap(); // TCP_NODELAY
        set_int(l.0, SOL_SOCKET, SO_RCVBUF, 50_000).unwrap();
        sys::bind(l.0, &loopback_v4([0, 0])).unwrap();
        sys::listen(l.0, 7).unwrap();
        let s = saved(l.0);
        assert_eq!((s.role, s.backlog), (SocketRole::Listening, 7));
        let names: Vec<(i32, i32)> = s.options.iter().map(|o| (o.0, o.1)).collect();
        assert!(names.contains(&(SOL_SOCKET, SO_REUSEADDR)) && names.contains(&(SOL_TCP, 1)), "{names:?}");
        assert!(s.options.contains(&(SOL_SOCKET, SO_RCVBUF, 50_000i32.to_ne_bytes().to_vec())));
        drop(l);
        let mut ctx = test_ctx();
        let n = Fd(restore_socket(&s, &mut ctx).unwrap());
        assert_eq!(sys::sockname(n.0, false).unwrap(), s.local.clone().unwrap());
        assert_eq!(get_int(n.0, SOL_SOCKET, libc::SO_ACCEPTCONN), Ok(1));
        assert_eq!(get_int(n.0, SOL_TCP, 1), Ok(1));
        assert_eq!(get_int(n.0, SOL_SOCKET, SO_RCVBUF), Ok(100_000));
    }

    /// A checkpoint that lets the process go on only peeks at its connections. As root, one
    /// that exits saves them in repair mode and closes them without a word to the peer; the
    /// connection rebuilt from that state goes on as if nothing happened.
    #[test]
    fn established_connections_are_repaired_when_root() {
        let l = new_socket(AF_INET, libc::SOCK_STREAM, 0).unwrap();
        sys::bind(l.0, &loopback_v4([0, 0])).unwrap();
        sys::listen(l.0, 1).unwrap();
        let c = new_socket(AF_INET, libc::SOCK_STREAM, 0).unwrap();
        sys::connect(c.0, &sys::sockname(l.0, false).unwrap()).unwrap();
        let a = Fd(accept4(l.0, libc::SOCK_CLOEXEC).unwrap() as i32);
        sys::write_all(a.0, b"unread").unwrap();
        assert!(wait_until(1000, || ioctl_count(c.0, SIOCINQ) == Ok(6)));
        let mut s = saved(c.0);
        assert_eq!((s.role, &s.recv_queue[..], &s.tcp), (SocketRole::Connected, &b"unread"[..], &None));
        // Repair mode entered and left again (as when a dump fails) leaves the connection as
        // it was.
        match repair_dump(c.0, false) {
            Ok((_, q)) => assert_eq!(q, b"unread"),
            Err(e) => {
                eprintln!("repair mode not tested ({e}): needs root");
                return;
            }
        }
        sys::write_all(c.0, b"live").unwrap();
        assert_eq!(read_all(a.0, 4), b"live");
        // As --exit does: save in repair mode, close silently, and rebuild.
        let (t, q) = repair_dump(c.0, true).unwrap();
        s.tcp = Some(t);
        s.recv_queue = q;
        drop(c);
        let n = Fd(restore_socket(&s, &mut test_ctx()).unwrap());
        assert_eq!(sys::sockname(n.0, true).unwrap(), s.peer.clone().unwrap());
        assert_eq!(read_all(n.0, 6), b"unread");
        sys::write_all(n.0, b"after").unwrap();
        assert_eq!(read_all(a.0, 5), b"after");
        sys::write_all(a.0, b"back").unwrap();
        assert_eq!(read_all(n.0, 4), b"back");
    }

    #[test]
    fn bound_datagram_sockets_get_their_queue_back() {
        let u = new_socket(AF_INET, libc::SOCK_DGRAM, 0).unwrap();
        sys::bind(u.0, &loopback_v4([0, 0])).unwrap();
        let to = sys::sockname(u.0, false).unwrap();
        let tx = new_socket(AF_INET, libc::SOCK_DGRAM, 0).unwrap();
        for m in [&b"first"[..], b"", b"third"] {
            sendto(tx.0, m, 0, &to).unwrap();
        }
        let s = saved(u.0);
        assert_eq!(records(&s.recv_queue).collect::<Vec<_>>(), vec![&b"first"[..], b"", b"third"]);
        drop(u);
        let n = Fd(restore_socket(&s, &mut test_ctx()).unwrap());
        // SO_RCVTIMEO of 1 s: a lost datagram fails the test instead of hanging it.
        let tv = [1i64.to_ne_bytes(), 0i64.to_ne_bytes()].concat();
        sys::setsockopt(n.0, SOL_SOCKET, 20, &tv).unwrap();
        let mut b = [0u8; 16];
        for m in [&b"first"[..], b"", b"third"] {
            assert_eq!(sys::recv(n.0, &mut b, 0), Ok(m.len() as u64));
            assert_eq!(&b[..m.len()], m);
        }
    }

    /// Without repair state, a connection comes back reset, after its unread bytes.
    #[test]
    fn unrepaired_connections_read_their_bytes_then_a_reset() {
        let s = SocketState {
            family: AF_INET,
            sotype: libc::SOCK_STREAM,
            protocol: libc::IPPROTO_TCP,
            role: SocketRole::Connected,
            recv_queue: b"late".to_vec(),
            ..Default::default()
        };
        let mut ctx = test_ctx();
        let fd = Fd(restore_socket(&s, &mut ctx).unwrap());
        assert_eq!(read_all(fd.0, 4), b"late");
        let mut b = [0u8; 4];
        assert_eq!(sys::read(fd.0, &mut b), Err(libc::ECONNRESET));
    }
}
