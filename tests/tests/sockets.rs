//! Sockets across checkpoint and resume (`tests/programs/sockets.c`): listeners (TCP v4 and
//! v6, UDP, UNIX path and abstract) with their options, socketpairs and in-process
//! connections with bytes in flight, and TCP connections to a peer outside the program —
//! kept with TCP repair as root, reset (and noticed, never a hang) otherwise.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use pmig_tests::{programs, Chain, ChainOpts, Program, RunAs, Sandbox};

const STEPS: u32 = 60;

fn is_root() -> bool {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// An echo peer outside pmig: answers "ping N" with "pong N", logs each accepted connection.
struct EchoPeer {
    child: Child,
    port: u16,
    log: std::path::PathBuf,
}

const ECHO: &str = r#"
import socket, sys, threading
log = open(sys.argv[1], "a", buffering=1)
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 0)); s.listen(8)
print(s.getsockname()[1], flush=True)
def serve(c):
    f = c.makefile("rwb", buffering=0)
    for line in f:
        log.write("got " + line.decode().strip() + "\n")
        f.write(line.replace(b"ping", b"pong"))
    log.write("closed\n")
while True:
    c, _ = s.accept()
    log.write("accept\n")
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

impl EchoPeer {
    fn start(sb: &Sandbox) -> EchoPeer {
        let log = sb.file("echo.log");
        let mut child = Command::new(programs::PYTHON3)
            .arg("-c")
            .arg(ECHO)
            .arg(&log)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the echo peer");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("the echo peer's port");
        let port = line.trim().parse().expect("a port number");
        EchoPeer { child, port, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for EchoPeer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Everything in the program itself: listeners, socketpairs, in-process connections (kept
/// with TCP repair as root, reset and reconnected otherwise).
#[test]
fn sockets_chain() {
    let sb = Sandbox::new();
    let dir = sb.file("sockdir");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let mode = if is_root() { "keep" } else { "reset-ok" };
    let prog = Program::new("sockets", programs::SOCKETS, STEPS, &[]).arg(&dir).arg(mode);
    Chain::new(&sb, &prog, ChainOpts::default()).run();
}

/// As root, a TCP connection to a peer outside the program is restored with TCP repair: the
/// peer sees one connection, carrying every ping in order, through two restores.
#[test]
fn tcp_connection_kept_with_repair() {
    if !is_root() {
        eprintln!("SKIPPED tcp_connection_kept_with_repair: TCP repair needs root");
        return;
    }
    let sb = Sandbox::new();
    let peer = EchoPeer::start(&sb);
    let dir = sb.file("sockdir");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let prog =
        Program::new("sockets-keep", programs::SOCKETS, STEPS, &[]).arg(&dir).arg("keep").arg(peer.port.to_string());
    Chain::new(&sb, &prog, ChainOpts::default()).run();
    let log = peer.log();
    assert_eq!(log.matches("accept").count(), 1, "the peer must see one connection only:\n{log}");
    let pings: Vec<u64> =
        log.lines().filter_map(|l| l.strip_prefix("got ping ")).filter_map(|n| n.parse().ok()).collect();
    assert!(pings.len() >= 10 && pings.windows(2).all(|w| w[1] == w[0] + 1), "pings out of order or missing:\n{log}");
}

/// Unprivileged, a connection to an outside peer comes back reset: the program notices at
/// once (a hang would be CORRUPT), reconnects and goes on.
#[test]
fn tcp_connection_reset_when_unprivileged() {
    let run_as = RunAs::nobody_if_root();
    let sb = Sandbox::with_user(run_as);
    let peer = EchoPeer::start(&sb);
    let dir = sb.file("sockdir");
    std::fs::create_dir_all(&dir).expect("mkdir");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let prog = Program::new("sockets-reset", sb.stage(programs::SOCKETS), STEPS, &[])
        .arg(&dir)
        .arg("reset-ok")
        .arg(peer.port.to_string());
    Chain::new(&sb, &prog, ChainOpts::default()).run();
    let log = peer.log();
    assert!(log.matches("accept").count() >= 2, "the program must have reconnected after a reset:\n{log}");
}
