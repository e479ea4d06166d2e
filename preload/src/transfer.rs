//! Sending a checkpoint straight to a receiver (`pmig-run --to HOST:PORT`): the connection
//! and handshake (made before the program is stopped, so an unreachable or refusing receiver
//! costs nothing), and a [`Sink`] that frames the image stream, optionally LZ4-compressed,
//! with a progress line for transfers longer than a second. See `pmig_image::wire`.
//!
//! The sink runs in the checkpoint thread with the other threads stopped: raw system calls,
//! arena allocation only.

use crate::checkpoint::Sink;
use crate::{log, sys};
use pmig_abi::arch::syscall6;
use pmig_image::wire::{self, frame, Auth, AUTH_LEN, FLAG_LZ4, HELLO_LEN, MAX_FRAME};
use std::os::fd::IntoRawFd;
use std::time::Duration;

/// A random challenge from `getrandom(2)`.
fn challenge() -> [u8; 32] {
    let mut c = [0u8; 32];
    // SAFETY: getrandom writes at most 32 bytes into our array.
    unsafe { syscall6(libc::SYS_getrandom as u64, c.as_mut_ptr() as u64, 32, 0, 0, 0, 0) };
    c
}

fn recv_exact(fd: i32, buf: &mut [u8]) -> Result<(), String> {
    let mut got = 0;
    while got < buf.len() {
        match sys::read(fd, &mut buf[got..]) {
            Ok(0) => return Err("the receiver closed the connection".into()),
            Ok(n) => got += n as usize,
            Err(libc::EINTR) => {}
            Err(libc::EAGAIN) => return Err("the receiver did not answer in time".into()),
            Err(e) => return Err(format!("reading from the receiver: errno {e}")),
        }
    }
    Ok(())
}

fn send_all(fd: i32, b: &[u8]) -> Result<(), String> {
    sys::write_all(fd, b).map_err(|e| match e {
        libc::EPIPE | libc::ECONNRESET => "the receiver closed the connection".to_string(),
        libc::EAGAIN => "the receiver stopped reading (timed out)".to_string(),
        e => format!("sending to the receiver: errno {e}"),
    })
}

/// Reads a status reply: `Ok(message)` or `Err(message)`.
fn read_status(fd: i32, mac: Option<(&[u8], &[u8; 32])>) -> Result<String, String> {
    let mut st = [0u8; 1];
    recv_exact(fd, &mut st)?;
    // An acceptance carries the receiver's proof; a refusal does not.
    let mut their_mac = [0u8; 32];
    if mac.is_some() && st[0] == 0 {
        recv_exact(fd, &mut their_mac)?;
    }
    let mut len = [0u8; 2];
    recv_exact(fd, &mut len)?;
    let mut msg = vec![0u8; u16::from_le_bytes(len) as usize];
    recv_exact(fd, &mut msg)?;
    let msg = String::from_utf8_lossy(&msg).into_owned();
    if st[0] != 0 {
        return Err(format!("the receiver refused: {msg}"));
    }
    if let Some((token, chal)) = mac {
        if !wire::mac_ok(token, b"pmig-receiver", chal, &their_mac) {
            return Err("the receiver could not prove it knows the token".into());
        }
    }
    Ok(msg)
}

/// Connects to `addr` (`ip:port`) and authenticates. Returns the connected socket.
pub fn connect(addr: &str, token: &[u8], lz4: bool) -> Result<i32, String> {
    let sa: std::net::SocketAddr = addr.parse().map_err(|_| format!("bad receiver address {addr}"))?;
    let s = socket2::Socket::new(socket2::Domain::for_address(sa), socket2::Type::STREAM, None)
        .map_err(|e| format!("socket: {e}"))?;
    // Large buffers keep a fast link full; timeouts keep a dead one from hanging the program.
    let _ = s.set_send_buffer_size(8 << 20);
    let _ = s.set_tcp_nodelay(true);
    let _ = s.set_read_timeout(Some(Duration::from_secs(60)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(60)));
    s.connect_timeout(&sa.into(), Duration::from_secs(10)).map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    let fd = s.into_raw_fd();
    let r = (|| {
        let mut hello = [0u8; HELLO_LEN];
        recv_exact(fd, &mut hello)?;
        let c = wire::parse_hello(&hello)?;
        let mine = challenge();
        let auth = Auth {
            mac: wire::mac(token, b"pmig-sender", &c),
            flags: if lz4 { FLAG_LZ4 } else { 0 },
            uid: sys::getuid(),
            challenge: mine,
        };
        let b: [u8; AUTH_LEN] = auth.to_bytes();
        send_all(fd, &b)?;
        read_status(fd, Some((token, &mine)))
    })();
    match r {
        Ok(_) => Ok(fd),
        Err(e) => {
            let _ = sys::close(fd);
            Err(e)
        }
    }
}

/// The image stream to a receiver, in frames.
pub struct WireSink {
    fd: i32,
    lz4: bool,
    buf: Vec<u8>,
    cbuf: Vec<u8>,
    total: u64,
    sent: u64,
    wire_bytes: u64,
    t0: u64,
    last_report: u64,
}

impl WireSink {
    /// A sink on the connected `fd` for an image of `total` bytes.
    pub fn new(fd: i32, lz4: bool, total: u64) -> WireSink {
        WireSink {
            fd,
            lz4,
            buf: Vec::with_capacity(MAX_FRAME),
            cbuf: if lz4 { vec![0u8; lz4_flex::block::get_maximum_output_size(MAX_FRAME)] } else { Vec::new() },
            total,
            sent: 0,
            wire_bytes: 0,
            t0: sys::monotonic_ms(),
            last_report: 0,
        }
    }

    fn flush(&mut self) -> Result<(), String> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let n = self.buf.len();
        let compressed = if self.lz4 { lz4_flex::block::compress_into(&self.buf, &mut self.cbuf).ok() } else { None };
        match compressed {
            Some(c) if c + 4 < n => {
                send_all(self.fd, &wire::frame_header(frame::LZ4, (c + 4) as u32))?;
                send_all(self.fd, &(n as u32).to_le_bytes())?;
                send_all(self.fd, &self.cbuf[..c])?;
                self.wire_bytes += 9 + c as u64;
            }
            _ => {
                send_all(self.fd, &wire::frame_header(frame::RAW, n as u32))?;
                send_all(self.fd, &self.buf)?;
                self.wire_bytes += 5 + n as u64;
            }
        }
        self.sent += n as u64;
        self.buf.clear();
        self.progress(false);
        Ok(())
    }

    /// A progress line each second of a transfer longer than a second.
    fn progress(&mut self, last: bool) {
        let now = sys::monotonic_ms();
        let ms = now - self.t0;
        if ms < 1000 || (!last && now - self.last_report < 1000) {
            return;
        }
        self.last_report = now;
        let rate = self.sent as f64 / 1048576.0 / (ms as f64 / 1000.0);
        let left = if rate > 0.0 { (self.total.saturating_sub(self.sent)) as f64 / 1048576.0 / rate } else { 0.0 };
        log::say!(
            "sent {:.1} of {:.1} MiB ({:.1} MiB on the wire), {:.1} MiB/s, {:.0} s left",
            self.sent as f64 / 1048576.0,
            self.total as f64 / 1048576.0,
            self.wire_bytes as f64 / 1048576.0,
            rate,
            left
        );
    }

    /// Ends the stream and waits for the receiver's verdict on the whole image.
    pub fn finish(&mut self) -> Result<String, String> {
        self.flush()?;
        send_all(self.fd, &wire::frame_header(frame::END, 0))?;
        self.progress(true);
        read_status(self.fd, None)
    }
}

impl Sink for WireSink {
    fn put(&mut self, mut bytes: &[u8]) -> Result<(), String> {
        while !bytes.is_empty() {
            let n = (MAX_FRAME - self.buf.len()).min(bytes.len());
            self.buf.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            if self.buf.len() == MAX_FRAME {
                self.flush()?;
            }
        }
        Ok(())
    }
}
