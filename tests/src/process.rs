//! [`Proc`]: a child process guard for the end-to-end tests.
//!
//! A `Proc` owns a spawned child and:
//! - reads its stdout (a pipe, or a pseudo-terminal master) line by line
//!   with non-blocking reads and `poll(2)` against deadlines.  Reading
//!   whatever is in the pipe *now* ([`Proc::drain_now`]) is exact: every line
//!   the child wrote before the call is returned, which the no-`--exit` test
//!   relies on;
//! - feeds its stdin (a pipe, or the same pseudo-terminal);
//! - captures its stderr on a thread, for failure messages
//!   ([`Proc::describe`]);
//! - never waits without a deadline, and never needs end-of-file on stdout
//!   to notice an exit (a grandchild may keep the pipe open);
//! - sends SIGKILL to the child and reaps it when dropped, unless it has
//!   already been reaped — so the pid signalled is always still ours.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::pty;
use crate::wait::wait_until;

/// How a child's stdin and stdout are connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Terminal {
    /// Two pipes (stdin idle unless fed).
    Pipe,
    /// One pseudo-terminal for both, echo off.
    Pty,
}

/// Longest stderr kept in a failure description (the tail is kept).
const STDERR_SHOWN: usize = 24 * 1024;
/// Stdout lines shown in a failure description (the last ones).
const STDOUT_SHOWN: usize = 40;

/// A spawned child, killed on drop (see the module documentation).
pub struct Proc {
    label: String,
    cmdline: String,
    child: Child,
    pid: libc::pid_t,
    status: Option<ExitStatus>,
    out: LineReader,
    input: Option<File>,
    stderr: Arc<Mutex<Vec<u8>>>,
    stderr_thread: Option<JoinHandle<()>>,
    seen: Vec<String>,
}

impl Proc {
    /// Spawns `cmd` with stdin/stdout connected as `terminal` says and
    /// stderr captured. `label` names the process in messages.
    ///
    /// In the child, every inherited fd above 2 is marked close-on-exec
    /// before exec, so the program starts with exactly fds 0, 1 and 2 open
    /// whatever other test threads had open at the time.
    pub fn spawn(label: &str, mut cmd: Command, terminal: Terminal) -> Proc {
        let cmdline = format_cmdline(&cmd);
        let mut pty_master = None;
        match terminal {
            Terminal::Pipe => {
                cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
            }
            Terminal::Pty => {
                let pty = pty::open().unwrap_or_else(|e| panic!("{label}: openpty: {e}"));
                let slave2 = pty
                    .slave
                    .try_clone()
                    .unwrap_or_else(|e| panic!("{label}: dup pty slave: {e}"));
                cmd.stdin(Stdio::from(pty.slave))
                    .stdout(Stdio::from(slave2));
                pty_master = Some(pty.master);
            }
        }
        cmd.stderr(Stdio::piped());
        // With PYTHONUNBUFFERED (set on some CI machines) python's print() writes its text and
        // its newline in two system calls: a checkpoint between them rightly splits the line
        // between the source and the resumed process, which the line-based checks cannot
        // follow. The test programs expect whole lines.
        cmd.env_remove("PYTHONUNBUFFERED");
        // Its result is deliberately ignored: an old kernel without it leaves the fds as they were.
        // SAFETY: the closure runs in the forked child before exec and calls only close_range(2),
        // an async-signal-safe raw system call that touches no memory.
        unsafe {
            cmd.pre_exec(|| {
                libc::close_range(
                    3,
                    libc::c_uint::MAX,
                    libc::CLOSE_RANGE_CLOEXEC as libc::c_int,
                );
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("{label}: cannot spawn `{cmdline}`: {e}"));
        // Close the harness's copies of the pty slave (held by `cmd`), so the
        // child's exit is the last close.
        drop(cmd);

        let (out_fd, input): (OwnedFd, Option<File>) = match pty_master {
            Some(master) => {
                let writer = master
                    .try_clone()
                    .unwrap_or_else(|e| panic!("{label}: dup pty master: {e}"));
                (master, Some(File::from(writer)))
            }
            None => {
                let stdout = child.stdout.take().expect("stdout is piped");
                let stdin = child.stdin.take().expect("stdin is piped");
                (
                    OwnedFd::from(stdout),
                    Some(File::from(OwnedFd::from(stdin))),
                )
            }
        };
        set_nonblocking(&out_fd).unwrap_or_else(|e| panic!("{label}: O_NONBLOCK: {e}"));

        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut pipe = child.stderr.take().expect("stderr is piped");
        let sink = Arc::clone(&stderr);
        let stderr_thread = std::thread::Builder::new()
            .name(format!("stderr of {label}"))
            .spawn(move || {
                let mut buf = [0u8; 4096];
                loop {
                    match pipe.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => sink
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .extend_from_slice(&buf[..n]),
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => break,
                    }
                }
            })
            .expect("spawn the stderr reader thread");

        let pid = libc::pid_t::try_from(child.id()).expect("pid fits pid_t");
        Proc {
            label: label.to_string(),
            cmdline,
            child,
            pid,
            status: None,
            out: LineReader::new(File::from(out_fd)),
            input,
            stderr,
            stderr_thread: Some(stderr_thread),
            seen: Vec::new(),
        }
    }

    /// The child's pid (the program's pid, since pmig-run and pmig-resume
    /// become the program).
    pub fn pid(&self) -> libc::pid_t {
        self.pid
    }

    /// The label given at spawn.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Every stdout line returned so far by [`Proc::next_line`] and
    /// [`Proc::drain_now`].
    pub fn lines_seen(&self) -> &[String] {
        &self.seen
    }

    /// Sends `sig` to the child. Fails if the child has already been reaped
    /// (its pid may belong to someone else by now) or `kill(2)` fails.
    pub fn signal(&mut self, sig: libc::c_int) -> Result<(), String> {
        if let Some(status) = self.poll_status() {
            return Err(format!(
                "{} (pid {}) already exited ({}) before signal {sig}",
                self.label,
                self.pid,
                describe_status(status)
            ));
        }
        // SAFETY: kill(2) with a pid we have not reaped yet (so it still
        // names our child, at worst a zombie) and a valid signal number.
        if unsafe { libc::kill(self.pid, sig) } != 0 {
            return Err(format!(
                "kill({}, {sig}) failed: {}",
                self.pid,
                io::Error::last_os_error()
            ));
        }
        Ok(())
    }

    /// The exit status if the child has exited (reaping it), else `None`.
    pub fn poll_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            match self.child.try_wait() {
                Ok(Some(status)) => self.status = Some(status),
                Ok(None) => {}
                Err(e) => panic!("{}: waitpid: {e}", self.label),
            }
        }
        self.status
    }

    /// The next complete stdout line (without the line end), waiting at most
    /// `timeout`. `Ok(None)` once the child has exited and all it wrote has
    /// been returned.
    pub fn next_line(&mut self, timeout: Duration) -> Result<Option<String>, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.out.lines.pop_front() {
                self.seen.push(line.clone());
                return Ok(Some(line));
            }
            if self.poll_status().is_some() {
                // The child is gone: whatever it wrote is in the pipe now.
                self.pump(Duration::ZERO)?;
                self.out.finish_partial();
                if self.out.lines.is_empty() {
                    return Ok(None);
                }
                continue;
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(format!(
                    "{} (pid {}) printed no line within {timeout:.1?}",
                    self.label, self.pid
                ));
            }
            self.pump((deadline - now).min(Duration::from_millis(20)))?;
        }
    }

    /// Every complete line the child has written up to now, without waiting.
    pub fn drain_now(&mut self) -> Result<Vec<String>, String> {
        self.pump(Duration::ZERO)?;
        let lines: Vec<String> = self.out.lines.drain(..).collect();
        self.seen.extend(lines.iter().cloned());
        Ok(lines)
    }

    /// Waits at most `timeout` for the child to exit, buffering its output
    /// meanwhile (read it afterwards with [`Proc::next_line`]).
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.poll_status() {
                self.pump(Duration::ZERO)?;
                return Ok(status);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(format!(
                    "{} (pid {}) did not exit within {timeout:.1?}",
                    self.label, self.pid
                ));
            }
            self.pump((deadline - now).min(Duration::from_millis(20)))?;
        }
    }

    /// All remaining stdout lines until the child exits, waiting at most
    /// `timeout` in total; returns them with the exit status.
    pub fn finish(&mut self, timeout: Duration) -> Result<(Vec<String>, ExitStatus), String> {
        let deadline = Instant::now() + timeout;
        let mut lines = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_line(left)? {
                Some(line) => lines.push(line),
                None => break,
            }
        }
        let status = self
            .poll_status()
            .expect("next_line returned None after exit");
        Ok((lines, status))
    }

    /// Writes `text` to the child's stdin (the pipe or the pty master).
    pub fn feed(&mut self, text: &str) -> Result<(), String> {
        let label = self.label.clone();
        let input = self
            .input
            .as_mut()
            .ok_or_else(|| format!("{label}: stdin is closed"))?;
        let mut rest = text.as_bytes();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !rest.is_empty() {
            match input.write(rest) {
                Ok(n) => rest = &rest[n..],
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if Instant::now() >= deadline {
                        return Err(format!("{label}: stdin stayed full for 10 s"));
                    }
                    poll_fd(input.as_raw_fd(), libc::POLLOUT, Duration::from_millis(20))
                        .map_err(|e| format!("{label}: poll stdin: {e}"))?;
                }
                Err(e) => return Err(format!("{label}: write to stdin: {e}")),
            }
        }
        Ok(())
    }

    /// Closes the harness's end of the child's stdin (a pipe only; a pty
    /// master is also the output side and stays open).
    pub fn close_stdin(&mut self) {
        self.input = None;
    }

    /// Everything the child wrote to stderr so far. Once the child has
    /// exited, waits up to 2 s for the capture to reach end of file.
    pub fn stderr_text(&mut self) -> String {
        if self.poll_status().is_some() {
            if let Some(thread) = &self.stderr_thread {
                let _ = wait_until(Duration::from_secs(2), "stderr capture", || {
                    thread.is_finished().then_some(())
                });
            }
        }
        let bytes = self
            .stderr
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// A multi-line description for failure messages: label, pid, command,
    /// status, the last stdout lines seen and the captured stderr.
    pub fn describe(&mut self) -> String {
        let status = match self.poll_status() {
            Some(s) => describe_status(s),
            None => "still running".to_string(),
        };
        let stderr = self.stderr_text();
        let stderr_tail = if stderr.len() > STDERR_SHOWN {
            let mut cut = stderr.len() - STDERR_SHOWN;
            while !stderr.is_char_boundary(cut) {
                cut += 1;
            }
            format!("[... {cut} bytes cut ...]\n{}", &stderr[cut..])
        } else {
            stderr
        };
        let first = self.seen.len().saturating_sub(STDOUT_SHOWN);
        let mut s = format!(
            "--- {} (pid {}): {status}\n    command: {}\n    stdout ({} lines seen{}):\n",
            self.label,
            self.pid,
            self.cmdline,
            self.seen.len(),
            if first > 0 { ", last ones shown" } else { "" }
        );
        for line in &self.seen[first..] {
            s.push_str("      | ");
            s.push_str(line);
            s.push('\n');
        }
        if stderr_tail.trim().is_empty() {
            s.push_str("    stderr: (empty)\n");
        } else {
            s.push_str("    stderr:\n");
            for line in stderr_tail.lines() {
                s.push_str("      ! ");
                s.push_str(line);
                s.push('\n');
            }
        }
        s
    }

    fn pump(&mut self, wait: Duration) -> Result<(), String> {
        self.out
            .pump(wait)
            .map_err(|e| format!("{}: reading stdout: {e}", self.label))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.poll_status().is_none() {
            // SAFETY: the child has not been reaped, so the pid is still ours.
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
            let reaped = wait_until(Duration::from_secs(10), "the killed child to exit", || {
                self.child.try_wait().ok().flatten()
            });
            if let Err(e) = reaped {
                eprintln!("{} (pid {}): {e}; leaving it behind", self.label, self.pid);
            }
        }
    }
}

/// "exit status 0", "killed by signal 11 (core dumped)", ...
pub fn describe_status(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        format!("exit status {code}")
    } else if let Some(sig) = status.signal() {
        format!(
            "killed by signal {sig}{}",
            if status.core_dumped() {
                " (core dumped)"
            } else {
                ""
            }
        )
    } else {
        format!("{status}")
    }
}

/// A non-blocking line splitter over a pipe or pty master.
struct LineReader {
    file: File,
    buf: Vec<u8>,
    eof: bool,
    lines: VecDeque<String>,
}

impl LineReader {
    fn new(file: File) -> LineReader {
        LineReader {
            file,
            buf: Vec::new(),
            eof: false,
            lines: VecDeque::new(),
        }
    }

    /// Waits up to `wait` for input, then reads everything available.
    fn pump(&mut self, wait: Duration) -> io::Result<()> {
        if self.eof {
            if !wait.is_zero() {
                // Nothing more will come; wait out the slice so callers
                // polling for the exit status do not spin.
                std::thread::sleep(wait);
            }
            return Ok(());
        }
        if !wait.is_zero() {
            poll_fd(self.file.as_raw_fd(), libc::POLLIN, wait)?;
        }
        let mut chunk = [0u8; 8192];
        loop {
            match self.file.read(&mut chunk) {
                Ok(0) => {
                    self.eof = true;
                    break;
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // A pty master reads EIO once no slave fd is open.
                Err(e) if e.raw_os_error() == Some(libc::EIO) => {
                    self.eof = true;
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        while let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
            let rest = self.buf.split_off(pos + 1);
            let mut line = std::mem::replace(&mut self.buf, rest);
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            self.lines
                .push_back(String::from_utf8_lossy(&line).into_owned());
        }
        Ok(())
    }

    /// Turns an unterminated last line into a line (called once the writer
    /// has exited).
    fn finish_partial(&mut self) {
        if !self.buf.is_empty() {
            let line = std::mem::take(&mut self.buf);
            self.lines
                .push_back(String::from_utf8_lossy(&line).into_owned());
        }
    }
}

fn poll_fd(fd: libc::c_int, events: libc::c_short, wait: Duration) -> io::Result<()> {
    let mut pfd = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    // Round up so a short positive wait does not become a busy loop.
    let ms = wait.as_micros().div_ceil(1000).min(i32::MAX as u128) as libc::c_int;
    // SAFETY: pfd is a valid pollfd and we pass a count of 1.
    let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    Ok(())
}

fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    let raw = fd.as_raw_fd();
    // SAFETY: raw is an open fd owned by `fd`; F_GETFL takes no argument.
    let flags = unsafe { libc::fcntl(raw, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above; F_SETFL takes an int of status flags.
    if unsafe { libc::fcntl(raw, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn format_cmdline(cmd: &Command) -> String {
    let mut parts: Vec<OsString> = vec![cmd.get_program().to_os_string()];
    parts.extend(cmd.get_args().map(|a| a.to_os_string()));
    let mut s = parts
        .iter()
        .map(|p| {
            let p = p.to_string_lossy();
            if p.len() > 120 {
                format!("{}...", &p[..p.floor_char_boundary_compat(100)])
            } else if p.contains(char::is_whitespace) || p.is_empty() {
                format!("'{p}'")
            } else {
                p.into_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ");
    if let Some(dir) = cmd.get_current_dir() {
        s.push_str(&format!("  (in {})", dir.display()));
    }
    s
}

/// `str::floor_char_boundary` is not stable on the workspace's MSRV.
trait FloorCharBoundary {
    fn floor_char_boundary_compat(&self, index: usize) -> usize;
}

impl FloorCharBoundary for str {
    fn floor_char_boundary_compat(&self, mut index: usize) -> usize {
        index = index.min(self.len());
        while !self.is_char_boundary(index) {
            index -= 1;
        }
        index
    }
}

/// The process that runs a restored program, given the pid the user has (`pmig-resume`'s):
/// that process itself with virtual ids, or, with exact ids, the only child of its only child
/// (`pmig-init`, pid 1 of the program's pid namespace). Falls back to `handle`.
pub fn program_pid(handle: libc::pid_t) -> libc::pid_t {
    let child = |p: libc::pid_t| -> Option<libc::pid_t> {
        let s = std::fs::read_to_string(format!("/proc/{p}/task/{p}/children")).ok()?;
        s.split_whitespace().next()?.parse().ok()
    };
    let comm = |p: libc::pid_t| std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
    match child(handle) {
        Some(init) if comm(init).trim() == "pmig-init" => child(init).unwrap_or(handle),
        _ => handle,
    }
}
