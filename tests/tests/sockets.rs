//! Sockets across checkpoint and resume (`tests/programs/sockets.c`): listeners (TCP v4 and
//! v6, UDP, UNIX path and abstract) with their options, socketpairs and in-process
//! connections with bytes in flight, and TCP connections to a peer outside the program —
//! kept with TCP repair as root, reset (and noticed, never a hang) otherwise.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use pmig_tests::{programs, Chain, ChainOpts, Program, RunAs, Sandbox};

const STEPS: u32 = 60;

use pmig_tests::is_root;

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

/// Starts `pmig-resume --listen 127.0.0.1:0` with `token` and returns it with its port.
fn receiver(sb: &Sandbox, token: &std::path::Path) -> (pmig_tests::Proc, u16) {
    let mut cmd = sb.command(&sb.bins().resume, &sb.workdir("receiver"));
    cmd.arg("--listen").arg("127.0.0.1:0").arg("--token-file").arg(token);
    pmig_tests::pmig_env(&mut cmd);
    let mut r = pmig_tests::Proc::spawn("pmig-resume --listen", cmd, pmig_tests::Terminal::Pipe);
    let port = pmig_tests::receiver_port(&mut r, "127.0.0.1");
    (r, port)
}

/// As root, moving a program with `--to` keeps its TCP connection to an outside peer (TCP
/// repair); a move that fails (the receiver refuses) gives the connection back to the program,
/// which goes on using it. The program checks its connection every step ("keep" mode).
#[test]
fn tcp_connection_survives_a_move_and_a_failed_one() {
    use pmig_tests::{fail_with, Input, StepCheck};
    use std::time::Duration;
    if !is_root() {
        eprintln!("SKIPPED tcp_connection_survives_a_move_and_a_failed_one: TCP repair needs root");
        return;
    }
    let sb = Sandbox::new();
    let peer = EchoPeer::start(&sb);
    let dir = sb.file("sockdir");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let token = sb.file("token");
    std::fs::write(&token, "right").unwrap();
    let wrong = sb.file("wrong");
    std::fs::write(&wrong, "wrong").unwrap();
    let (mut r, port) = receiver(&sb, &token);
    let start = |tok: &std::path::Path| {
        let mut cmd = sb.command(&sb.bins().run, &sb.workdir("sender"));
        cmd.arg("--to").arg(format!("127.0.0.1:{port}")).arg("--token-file").arg(tok).arg("--");
        cmd.arg(programs::SOCKETS).arg(STEPS.to_string()).arg(&dir).arg("keep").arg(peer.port.to_string());
        pmig_tests::pmig_env(&mut cmd);
        pmig_tests::Proc::spawn("pmig-run --to (sockets keep)", cmd, pmig_tests::Terminal::Pipe)
    };
    let read = |p: &mut pmig_tests::Proc, steps: &mut StepCheck, until: u32| {
        while steps.last() < until {
            match p.next_line(Duration::from_secs(20)) {
                Ok(Some(l)) => {
                    steps.accept(&l).unwrap_or_else(|e| fail_with(&e, &mut [p]));
                }
                other => fail_with(&format!("no step line: {other:?}"), &mut [p]),
            }
        }
    };
    // The wrong token: refused; the program must go on with its connection intact.
    let mut s = start(&wrong);
    let mut steps = StepCheck::new(1, STEPS, Input::Idle);
    read(&mut s, &mut steps, 5);
    s.signal(libc::SIGUSR2).unwrap();
    pmig_tests::wait_until(Duration::from_secs(20), "the failed move", || {
        s.stderr_text().lines().any(|l| l.contains("failed") && l.contains("goes on here")).then_some(())
    })
    .unwrap_or_else(|e| fail_with(&e, &mut [&mut s, &mut r]));
    let now = steps.last();
    read(&mut s, &mut steps, now + 5);
    drop(s);

    // The right token: moved, connection kept.
    let peer_accepts = peer.log().matches("accept").count();
    let mut s = start(&token);
    let mut steps = StepCheck::new(1, STEPS, Input::Idle);
    read(&mut s, &mut steps, 5);
    s.signal(libc::SIGUSR2).unwrap();
    let st = s.wait_exit(Duration::from_secs(20)).unwrap_or_else(|e| fail_with(&e, &mut [&mut s, &mut r]));
    assert!(st.success(), "{}", s.describe());
    for l in s.drain_now().unwrap_or_default() {
        steps.accept(&l).unwrap_or_else(|e| fail_with(&e, &mut [&mut s, &mut r]));
    }
    let mut moved = StepCheck::new(steps.last() + 1, STEPS, Input::Idle);
    let (lines, status) = r.finish(Duration::from_secs(60)).unwrap_or_else(|e| fail_with(&e, &mut [&mut r]));
    for l in lines {
        moved.accept(&l).unwrap_or_else(|e| fail_with(&e, &mut [&mut r]));
    }
    assert!(status.success() && moved.complete(), "{}", r.describe());
    let log = peer.log();
    assert_eq!(log.matches("accept").count(), peer_accepts + 1, "the moved program's connection must be the one it had:\n{log}");
}
