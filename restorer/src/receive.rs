//! Where an image comes from when it is not a file: standard input (`pmig-resume -`) or the
//! network (`pmig-resume --listen ADDR:PORT`). Either way it is spooled into a memfd and fully
//! verified before anything acts on it; a receiver refuses a sender that cannot prove it knows
//! the shared token before reading a single image byte, logs every refusal with the peer's
//! address, and stays up for the next sender. See `pmig_image::wire` for the protocol.

use anyhow::{bail, Context, Result};
use pmig_image::wire::{self, frame, Auth, AUTH_LEN, FLAG_LZ4, MAX_FRAME};
use pmig_image::{verify_file, VerifiedImage};
use std::fs::File;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::fd::FromRawFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The largest image a receiver takes (it is held in memory until restored).
const MAX_IMAGE: u64 = 1 << 40;

/// An image held in a memfd, with the path that names it.
pub struct Spooled {
    pub file: File,
    pub path: PathBuf,
}

fn memfd() -> Result<Spooled> {
    // SAFETY: memfd_create with a NUL-terminated name; the result is checked.
    let fd = unsafe { libc::memfd_create(c"pmig-image".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        bail!("memfd_create: {}", std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is the memfd just created, owned here.
    let file = unsafe { File::from_raw_fd(fd) };
    Ok(Spooled { file, path: PathBuf::from(format!("/proc/self/fd/{fd}")) })
}

/// Reads an image from standard input (`pmig-resume -`).
pub fn from_stdin() -> Result<Spooled> {
    let mut s = memfd()?;
    let n = std::io::copy(&mut std::io::stdin().lock(), &mut s.file).context("cannot read the image from standard input")?;
    if n == 0 {
        bail!("standard input was empty: no image");
    }
    Ok(s)
}

/// How a receiver judges senders.
pub struct Receiver {
    pub token: Vec<u8>,
    /// As root, take images of other users' processes (restored as their owner).
    pub as_owner: bool,
}

fn random32() -> Result<[u8; 32]> {
    let mut c = [0u8; 32];
    File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut c)).context("cannot read /dev/urandom")?;
    Ok(c)
}

fn send_status(conn: &mut socket2::Socket, ok: bool, mac: Option<[u8; 32]>, msg: &str) {
    let st = wire::status(ok, msg);
    let mut out = Vec::with_capacity(st.len() + 32);
    out.push(st[0]);
    if let Some(m) = mac {
        out.extend_from_slice(&m);
    }
    out.extend_from_slice(&st[1..]);
    let _ = conn.write_all(&out);
}

impl Receiver {
    /// Receives one image on `conn`: handshake, frames, verification, verdict.
    fn receive(&self, conn: &mut socket2::Socket) -> Result<(Spooled, VerifiedImage)> {
        let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
        let _ = conn.set_write_timeout(Some(Duration::from_secs(30)));
        let challenge = random32()?;
        conn.write_all(&wire::hello(&challenge)).context("cannot greet the sender")?;
        let mut auth = [0u8; AUTH_LEN];
        conn.read_exact(&mut auth).context("the sender did not authenticate (no or short answer)")?;
        let auth = Auth::from_bytes(&auth);
        if !wire::mac_ok(&self.token, b"pmig-sender", &challenge, &auth.mac) {
            send_status(conn, false, None, "authentication failed");
            bail!("authentication failed: the sender does not know the token");
        }
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        if auth.uid != me && !(me == 0 && self.as_owner) {
            let why = format!("the process belongs to uid {}, this receiver runs as uid {me}", auth.uid);
            send_status(conn, false, None, &why);
            bail!("{why} (as root, --as-owner takes it)");
        }
        send_status(conn, true, Some(wire::mac(&self.token, b"pmig-receiver", &auth.challenge)), "ok");

        let mut s = memfd()?;
        let lz4 = auth.flags & FLAG_LZ4 != 0;
        let mut buf = vec![0u8; MAX_FRAME + MAX_FRAME / 255 + 64];
        let mut out = vec![0u8; MAX_FRAME];
        let mut total = 0u64;
        let started = Instant::now();
        let mut last = Instant::now();
        loop {
            let mut h = [0u8; 5];
            conn.read_exact(&mut h).context("the stream ended before its end mark (truncated)")?;
            let (kind, len) = wire::parse_frame_header(&h).map_err(anyhow::Error::msg)?;
            let data = &mut buf[..len as usize];
            conn.read_exact(data).context("the stream ended inside a frame (truncated)")?;
            let bytes: &[u8] = match kind {
                frame::END => break,
                frame::RAW => data,
                _ => {
                    if !lz4 || len < 4 {
                        bail!("a compressed frame the sender did not announce");
                    }
                    let raw = u32::from_le_bytes([data[0], data[1], data[2], data[3]]) as usize;
                    if raw > MAX_FRAME {
                        bail!("a compressed frame claims {raw} bytes");
                    }
                    let n = lz4_flex::block::decompress_into(&data[4..], &mut out[..raw])
                        .map_err(|e| anyhow::anyhow!("a compressed frame does not decompress: {e}"))?;
                    if n != raw {
                        bail!("a compressed frame decompresses to {n} bytes, not {raw}");
                    }
                    &out[..raw]
                }
            };
            total += bytes.len() as u64;
            if total > MAX_IMAGE {
                bail!("the image is larger than {MAX_IMAGE} bytes");
            }
            s.file.write_all(bytes).context("cannot hold the image in memory")?;
            if started.elapsed() > Duration::from_secs(1) && last.elapsed() >= Duration::from_secs(1) {
                last = Instant::now();
                let mib = total as f64 / 1048576.0;
                eprintln!("pmig-resume: received {mib:.1} MiB, {:.1} MiB/s", mib / started.elapsed().as_secs_f64());
            }
        }
        match verify_file(&s.path) {
            Ok(img) => {
                send_status(conn, true, None, "the whole image arrived and checks out");
                Ok((s, img))
            }
            Err(e) => {
                send_status(conn, false, None, &format!("the image does not check out: {e}"));
                Err(anyhow::Error::new(e).context("the image does not check out"))
            }
        }
    }

    /// Listens on `addr` until an image arrives and checks out; returns it. With
    /// `keep_listening`, forks one child per image (the child returns it, to restore it) and
    /// never returns in the parent.
    pub fn listen(&self, addr: &str, keep_listening: bool) -> Result<(Spooled, VerifiedImage)> {
        let sa: SocketAddr = addr.parse().with_context(|| format!("--listen {addr}: expected ADDR:PORT, e.g. 127.0.0.1:7070"))?;
        let l = socket2::Socket::new(socket2::Domain::for_address(sa), socket2::Type::STREAM, None).context("socket")?;
        let _ = l.set_reuse_address(true);
        let _ = l.set_recv_buffer_size(8 << 20);
        l.bind(&sa.into()).with_context(|| format!("cannot listen on {addr}"))?;
        l.listen(16).with_context(|| format!("cannot listen on {addr}"))?;
        let local = l.local_addr().ok().and_then(|a| a.as_socket()).map_or(addr.to_string(), |a| a.to_string());
        eprintln!("pmig-resume: listening on {local}");
        if keep_listening {
            // SAFETY: setting SIGCHLD to SIG_IGN makes the kernel reap our children.
            unsafe { libc::signal(libc::SIGCHLD, libc::SIG_IGN) };
        }
        loop {
            let (mut conn, peer) = match l.accept() {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("pmig-resume: accept: {e}");
                    continue;
                }
            };
            let peer = peer.as_socket().map_or("?".to_string(), |a| a.to_string());
            match self.receive(&mut conn) {
                Ok(got) => {
                    eprintln!("pmig-resume: image from {peer} received and verified");
                    drop(conn);
                    if !keep_listening {
                        return Ok(got);
                    }
                    // SAFETY: pmig-resume is single-threaded here; the child only restores.
                    match unsafe { libc::fork() } {
                        0 => return Ok(got),
                        -1 => eprintln!("pmig-resume: cannot fork a restorer: {}", std::io::Error::last_os_error()),
                        child => eprintln!("pmig-resume: restoring it as pid {child}"),
                    }
                }
                Err(e) => eprintln!("pmig-resume: refused {peer}: {e:#}"),
            }
        }
    }
}
