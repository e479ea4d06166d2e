//! The real servers some end-to-end tests run (Debian's redis-server and PostgreSQL): where
//! they are, how to start them, and clients that talk to them from outside pmig.
//!
//! - [`Redis`]: a RESP client on one TCP connection (made by the caller, so it can come from
//!   another network namespace: see [`crate::hosts::Hosts::connect_from`]).
//! - [`postgres_bin`], [`initdb`], [`postgres_argv`]: a throw-away PostgreSQL cluster.
//! - [`psql_query`] (one query, one psql) and [`Psql`] (a session kept open).

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::{fail_with, wait_until, Proc, Sandbox, Terminal};

/// Debian's redis-server.
pub const REDIS_SERVER: &str = "/usr/bin/redis-server";

/// Debian's psql.
pub const PSQL: &str = "/usr/bin/psql";

/// How long a client waits for an answer.
const TIMEOUT: Duration = Duration::from_secs(20);

/// A TCP port free on 127.0.0.1 right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A redis client speaking RESP over one connection.
pub struct Redis {
    s: TcpStream,
    r: BufReader<TcpStream>,
}

impl Redis {
    /// A client on `127.0.0.1:port`.
    pub fn connect(port: u16) -> std::io::Result<Redis> {
        Redis::over(TcpStream::connect(("127.0.0.1", port))?)
    }

    /// A client on a connection already made.
    pub fn over(s: TcpStream) -> std::io::Result<Redis> {
        s.set_read_timeout(Some(TIMEOUT))?;
        let r = BufReader::new(s.try_clone()?);
        Ok(Redis { s, r })
    }

    /// The client, once `PING` answered `PONG`.
    pub fn ping(mut self) -> Option<Redis> {
        (self.cmd(&["PING"]).ok()? == "+PONG").then_some(self)
    }

    /// `INFO persistence`, as one string.
    pub fn info_persistence(&mut self) -> Option<String> {
        let m = "*2\r\n$4\r\nINFO\r\n$11\r\npersistence\r\n";
        self.s.write_all(m.as_bytes()).ok()?;
        let mut line = String::new();
        self.r.read_line(&mut line).ok()?;
        let len: usize = line.trim_end().strip_prefix('$')?.parse().ok()?;
        let mut body = vec![0u8; len + 2];
        self.r.read_exact(&mut body).ok()?;
        Some(String::from_utf8_lossy(&body).into_owned())
    }

    /// Sends a command; returns the reply line (bulk strings: their content).
    pub fn cmd(&mut self, args: &[&str]) -> std::io::Result<String> {
        let mut m = format!("*{}\r\n", args.len());
        for a in args {
            m += &format!("${}\r\n{a}\r\n", a.len());
        }
        self.s.write_all(m.as_bytes())?;
        let mut line = String::new();
        let got = self.r.read_line(&mut line)?;
        // Acknowledge at once rather than with a delayed ACK: pmig does not hold back packets
        // in the gap between checkpoint and restore, and one arriving then is answered by a
        // reset (a documented limitation).
        let one: libc::c_int = 1;
        // SAFETY: setsockopt on our own socket with a pointer to a c_int and its size.
        unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&self.s),
                libc::IPPROTO_TCP,
                libc::TCP_QUICKACK,
                &one as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if got == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "redis closed the connection",
            ));
        }
        let line = line.trim_end().to_string();
        if let Some(n) = line.strip_prefix('$') {
            let n: i64 = n.parse().unwrap_or(-1);
            if n < 0 {
                return Ok("(nil)".into());
            }
            let mut b = vec![0u8; n as usize + 2];
            self.r.read_exact(&mut b)?;
            return Ok(String::from_utf8_lossy(&b[..n as usize]).into_owned());
        }
        Ok(line)
    }

    /// `SET k1 v1` … `SET kN vN`, each answered `+OK`.
    pub fn set_keys(&mut self, n: usize) {
        for i in 1..=n {
            assert_eq!(
                self.cmd(&["SET", &format!("k{i}"), &format!("v{i}")])
                    .unwrap(),
                "+OK"
            );
        }
    }
}

/// A redis-server answering `PING` on `127.0.0.1:port`, if up.
pub fn redis_up(port: u16) -> Option<Redis> {
    Redis::connect(port).ok()?.ping()
}

/// `redis-server` arguments for a server that never saves on its own and writes its dumps
/// in `dir`, slowed down to 2 ms a key while it saves so that a checkpoint catches its
/// BGSAVE child writing.
pub fn redis_slow_save_args(port: u16, bind: &str, dir: &Path) -> Vec<OsString> {
    let mut a: Vec<OsString> = [
        "--port",
        &port.to_string(),
        "--bind",
        bind,
        "--save",
        "",
        "--appendonly",
        "no",
    ]
    .iter()
    .map(OsString::from)
    .collect();
    a.extend([
        "--dir".into(),
        dir.as_os_str().to_os_string(),
        "--rdb-key-save-delay".into(),
        "2000".into(),
    ]);
    a
}

/// The directory of PostgreSQL's programs (`postgres`, `initdb`, `pg_ctl`), if installed.
pub fn postgres_bin() -> Option<PathBuf> {
    let mut dirs: Vec<_> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("bin"))
        .collect();
    dirs.sort();
    dirs.into_iter().rev().find(|d| d.join("postgres").exists())
}

/// `initdb -D DATA -A trust -U postgres` as the sandbox's user, in `cwd`; panics if it fails.
pub fn initdb(sb: &Sandbox, bin: &Path, data: &Path, cwd: &Path) {
    let out = sb
        .command(&bin.join("initdb"), cwd)
        .arg("-D")
        .arg(data)
        .args(["-A", "trust", "-U", "postgres"])
        .output()
        .expect("initdb");
    assert!(
        out.status.success(),
        "initdb: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `BIN/postgres -D DATA -k SOCKETS -p PORT -c listen_addresses=LISTEN`.
pub fn postgres_argv(
    bin: &Path,
    data: &Path,
    sockets: &Path,
    port: u16,
    listen: &str,
) -> Vec<OsString> {
    vec![
        bin.join("postgres").into(),
        "-D".into(),
        data.into(),
        "-k".into(),
        sockets.into(),
        "-p".into(),
        port.to_string().into(),
        "-c".into(),
        format!("listen_addresses={listen}").into(),
    ]
}

/// psql's options for `postgres@HOST:PORT`, rows unaligned and without decoration.
fn psql_args(host: &str, port: u16) -> [String; 10] {
    [
        "-X",
        "-q",
        "-A",
        "-t",
        "-h",
        host,
        "-p",
        &port.to_string(),
        "-U",
        "postgres",
    ]
    .map(String::from)
}

/// Runs `sql` with `psql` (`cmd`: a command that runs psql, e.g. in a network namespace) on
/// `host:port`: its output, trimmed, if psql succeeded.
pub fn psql_query(mut cmd: Command, host: &str, port: u16, sql: &str) -> Option<String> {
    let out = cmd
        .args(psql_args(host, port))
        .args(["-c", sql, "postgres"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A psql session kept open (outside pmig) on `127.0.0.1`: each query's rows, unaligned, one
/// per line.
pub struct Psql {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Psql {
    /// A session on `127.0.0.1:port`.
    pub fn open(port: u16) -> Psql {
        let mut child = Command::new(PSQL)
            .args(psql_args("127.0.0.1", port))
            .arg("postgres")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("psql");
        let stdin = child.stdin.take().expect("psql's stdin");
        let out = BufReader::new(child.stdout.take().expect("psql's stdout"));
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in out.lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Psql {
            child,
            stdin,
            lines,
        }
    }

    /// The rows `sql` gives, or an error if the session is gone.
    pub fn query(&mut self, sql: &str) -> Result<Vec<String>, String> {
        writeln!(self.stdin, "{sql};\n\\echo __end__").map_err(|e| format!("psql: {e}"))?;
        self.stdin.flush().map_err(|e| format!("psql: {e}"))?;
        let mut rows = Vec::new();
        loop {
            match self.lines.recv_timeout(Duration::from_secs(10)) {
                Ok(l) if l == "__end__" => return Ok(rows),
                Ok(l) => rows.push(l),
                Err(e) => return Err(format!("psql gave no answer to {sql:?}: {e}")),
            }
        }
    }
}

impl Drop for Psql {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Checks that `DIR/dump.rdb` holds `k1 = v1` … `kN = vN` (`N` = `keys`): a second
/// redis-server, not under pmig, loads it on a free port and is asked; then shut down.
pub fn check_redis_dump(sb: &Sandbox, dir: &Path, keys: usize) {
    let port = free_port();
    let mut cmd = sb.command(Path::new(REDIS_SERVER), &sb.workdir("check-dump"));
    cmd.args([
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--appendonly",
        "no",
        "--save",
        "",
    ])
    .arg("--dir")
    .arg(dir);
    let mut r = Proc::spawn("redis-server (loading the dump)", cmd, Terminal::Pipe);
    let mut c = wait_until(TIMEOUT, "the redis loading the dump answering", || {
        redis_up(port)
    })
    .unwrap_or_else(|e| fail_with(&e, &mut [&mut r]));
    assert_eq!(
        c.cmd(&["DBSIZE"]).unwrap(),
        format!(":{keys}"),
        "the dump must hold every key"
    );
    let k = keys / 2 + 1;
    assert_eq!(c.cmd(&["GET", &format!("k{k}")]).unwrap(), format!("v{k}"));
    let _ = c.cmd(&["SHUTDOWN", "NOSAVE"]);
    let _ = r.wait_exit(TIMEOUT);
}
