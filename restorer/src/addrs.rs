//! Before a restore: can the program have its addresses back?
//!
//! An image taken without `--exit` leaves the original running, holding its listening
//! sockets; a program restored beside it could not bind them and would go on without them.
//! [`taken`] tries each address the program listened on (TCP, UNIX stream/seqpacket), or
//! received datagrams on (UDP, UNIX datagram), in a throwaway socket set up as the restore
//! will set it up, and lists those another process holds. Only that counts: an address
//! that cannot be bound for another reason (gone from this host, a privileged port) is the
//! restore's to report, and a TCP port held only by the old process's closed connections
//! (`TIME_WAIT`) is freed by the restore itself.

use pmig_image::{FileKind, Manifest, SocketRole, SocketState};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// An address the saved program had that another process holds here.
#[derive(Debug, PartialEq, Eq)]
pub struct Taken {
    /// The program's fds on the socket.
    pub fds: Vec<i32>,
    /// The address, as a user writes it (`127.0.0.1:8080`, `[::1]:80`, `/run/app.sock`,
    /// `@name` for an abstract one).
    pub addr: String,
    /// `tcp`, `udp` or `unix`.
    pub proto: &'static str,
}

/// The addresses of `m`'s listening and bound datagram sockets that are in use here.
pub fn taken(m: &Manifest) -> Vec<Taken> {
    let mut out = Vec::new();
    for (i, f) in m.files.iter().enumerate() {
        let FileKind::Socket(s) = &f.kind else { continue };
        let datagram = s.sotype == libc::SOCK_DGRAM && s.role == SocketRole::Bound;
        if s.role != SocketRole::Listening && !datagram {
            continue;
        }
        let Some(local) = s.local.as_deref() else { continue };
        let fds = || m.fds.iter().filter(|d| d.file as usize == i).map(|d| d.fd).collect();
        let found = match s.family {
            libc::AF_INET | libc::AF_INET6 => inet(local).filter(|a| a.port() != 0 && inet_taken(s, *a)).map(|a| {
                (a.to_string(), if s.sotype == libc::SOCK_STREAM { "tcp" } else { "udp" })
            }),
            libc::AF_UNIX => unix_taken(s, local).map(|a| (a, "unix")),
            _ => None,
        };
        if let Some((addr, proto)) = found {
            out.push(Taken { fds: fds(), addr, proto });
        }
    }
    out
}

/// The `SocketAddr` in a kernel `sockaddr_in`/`sockaddr_in6`.
fn inet(a: &[u8]) -> Option<SocketAddr> {
    let family = u16::from_ne_bytes(a.get(..2)?.try_into().ok()?) as i32;
    let port = u16::from_be_bytes(a.get(2..4)?.try_into().ok()?);
    match family {
        libc::AF_INET => {
            let ip: [u8; 4] = a.get(4..8)?.try_into().ok()?;
            Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port))
        }
        libc::AF_INET6 => {
            let ip: [u8; 16] = a.get(8..24)?.try_into().ok()?;
            let scope = u32::from_ne_bytes(a.get(24..28)?.try_into().ok()?);
            let flow = u32::from_be_bytes(a.get(4..8)?.try_into().ok()?);
            Some(SocketAddr::V6(std::net::SocketAddrV6::new(Ipv6Addr::from(ip), port, flow, scope)))
        }
        _ => None,
    }
}

/// The saved value of a boolean socket option, if the image has it.
fn saved_flag(s: &SocketState, level: i32, name: i32) -> Option<bool> {
    s.options.iter().find(|o| (o.0, o.1) == (level, name)).map(|o| o.2.iter().any(|&b| b != 0))
}

/// Whether another process holds the inet address `a` of the saved socket `s`.
fn inet_taken(s: &SocketState, a: SocketAddr) -> bool {
    use socket2::{Domain, Socket, Type};
    if saved_flag(s, libc::SOL_SOCKET, libc::SO_REUSEPORT) == Some(true) {
        // The program shares the port on purpose: its restored socket will join the others.
        return false;
    }
    let ty = if s.sotype == libc::SOCK_STREAM { Type::STREAM } else { Type::DGRAM };
    let Ok(probe) = Socket::new(Domain::for_address(a), ty, None) else { return false };
    // The restore binds with SO_REUSEADDR when it must (past the program's own TIME_WAIT
    // connections), so only a live socket on the address makes its bind fail.
    let _ = probe.set_reuse_address(true);
    if let (true, Some(v6only)) = (a.is_ipv6(), saved_flag(s, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY)) {
        let _ = probe.set_only_v6(v6only);
    }
    match probe.bind(&a.into()) {
        Err(e) if e.raw_os_error() == Some(libc::EADDRINUSE) => {
            // For TCP, only a listener counts: closed connections of a listener that had no
            // SO_REUSEADDR block a reusing bind too, and the restore ends those (as root).
            s.sotype != libc::SOCK_STREAM || tcp_listener_on(a.port())
        }
        _ => false,
    }
}

/// Whether a TCP socket listens on `port` (any address) in this network namespace.
fn tcp_listener_on(port: u16) -> bool {
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|t| {
        std::fs::read_to_string(t).unwrap_or_default().lines().skip(1).any(|l| {
            let mut f = l.split_whitespace();
            let local = f.nth(1).unwrap_or("");
            let state = f.nth(1).unwrap_or("");
            state == "0A" && local.rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok()) == Some(port)
        })
    })
}

/// The address of the UNIX socket `s` (kernel `sockaddr_un` bytes `a`) if another process
/// holds it: an abstract name bound by someone, or a socket file someone still listens or
/// receives on (a file left by a dead process is replaced by the restore).
fn unix_taken(s: &SocketState, a: &[u8]) -> Option<String> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram, UnixListener, UnixStream};
    let name = a.get(2..).filter(|n| !n.is_empty())?;
    if name[0] == 0 {
        let addr = UnixAddr::from_abstract_name(&name[1..]).ok()?;
        let busy = |e: std::io::Error| e.raw_os_error() == Some(libc::EADDRINUSE);
        let taken = if s.sotype == libc::SOCK_DGRAM {
            UnixDatagram::bind_addr(&addr).err().is_some_and(busy)
        } else {
            UnixListener::bind_addr(&addr).err().is_some_and(busy)
        };
        return taken.then(|| format!("@{}", String::from_utf8_lossy(&name[1..])));
    }
    let path = sun_path(name);
    use std::os::unix::fs::FileTypeExt;
    if !std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
        return None;
    }
    let live = if s.sotype == libc::SOCK_DGRAM {
        UnixDatagram::unbound().and_then(|d| d.connect(path)).is_ok()
    } else {
        // A seqpacket listener refuses a stream connection with EPROTOTYPE: still live.
        match UnixStream::connect(path) {
            Ok(_) => true,
            Err(e) => e.raw_os_error() == Some(libc::EPROTOTYPE),
        }
    };
    live.then(|| path.to_string_lossy().into_owned())
}

/// The path in the bytes of a `sockaddr_un`'s `sun_path`, cut at its first NUL.
fn sun_path(b: &[u8]) -> &std::ffi::OsStr {
    use std::os::unix::ffi::OsStrExt;
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    std::ffi::OsStr::from_bytes(&b[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use pmig_image::{FdState, FileState};

    /// A kernel `sockaddr_in` for an IPv4 address.
    fn sockaddr(a: SocketAddr) -> Vec<u8> {
        let SocketAddr::V4(a) = a else { panic!("IPv4 only") };
        let mut b = (libc::AF_INET as u16).to_ne_bytes().to_vec();
        b.extend_from_slice(&a.port().to_be_bytes());
        b.extend_from_slice(&a.ip().octets());
        b.extend_from_slice(&[0; 8]);
        b
    }

    fn unix(name: &[u8]) -> Vec<u8> {
        let mut a = (libc::AF_UNIX as u16).to_ne_bytes().to_vec();
        a.extend_from_slice(name);
        a
    }

    fn manifest(sockets: Vec<SocketState>) -> Manifest {
        let mut m = Manifest::default();
        for (i, s) in sockets.into_iter().enumerate() {
            m.files.push(FileState { flags: 0, pos: 0, kind: FileKind::Socket(s), shared: 0, owner: (0, 0), owner_sig: 0, locks: Vec::new() });
            m.fds.push(FdState { fd: 3 + i as i32, cloexec: false, file: i as u32 });
        }
        m
    }

    fn listening(family: i32, sotype: i32, local: Vec<u8>) -> SocketState {
        SocketState { family, sotype, role: SocketRole::Listening, local: Some(local), ..SocketState::default() }
    }

    #[test]
    fn addresses_held_by_live_sockets_are_taken_and_others_are_not() {
        let dir = tempfile_dir();
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let tcp_addr = tcp.local_addr().unwrap();
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let udp_addr = udp.local_addr().unwrap();
        let path = dir.join("live.sock");
        let _ux = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let stale = dir.join("stale.sock");
        drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
        let abs = format!("pmig-addrs-test-{}", std::process::id());
        use std::os::linux::net::SocketAddrExt;
        let _abs = std::os::unix::net::UnixListener::bind_addr(
            &std::os::unix::net::SocketAddr::from_abstract_name(abs.as_bytes()).unwrap(),
        )
        .unwrap();
        let free = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let path_bytes = |p: &std::path::Path| unix(p.as_os_str().as_encoded_bytes());
        let mut udp_state = listening(libc::AF_INET, libc::SOCK_DGRAM, sockaddr(udp_addr));
        udp_state.role = SocketRole::Bound;
        let m = manifest(vec![
            listening(libc::AF_INET, libc::SOCK_STREAM, sockaddr(tcp_addr)),
            udp_state,
            listening(libc::AF_UNIX, libc::SOCK_STREAM, path_bytes(&path)),
            listening(libc::AF_UNIX, libc::SOCK_STREAM, path_bytes(&stale)),
            listening(libc::AF_UNIX, libc::SOCK_STREAM, unix(format!("\0{abs}").as_bytes())),
            listening(libc::AF_INET, libc::SOCK_STREAM, sockaddr(free)),
        ]);
        let got = taken(&m);
        let want = vec![
            Taken { fds: vec![3], addr: tcp_addr.to_string(), proto: "tcp" },
            Taken { fds: vec![4], addr: udp_addr.to_string(), proto: "udp" },
            Taken { fds: vec![5], addr: path.display().to_string(), proto: "unix" },
            Taken { fds: vec![7], addr: format!("@{abs}"), proto: "unix" },
        ];
        assert_eq!(got, want);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("pmig-addrs-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
