//! Moving a live process over the network (`pmig-run --to`, `pmig-resume --listen`) and
//! through standard input (`pmig-resume -`), on loopback; and a receiver's refusals: wrong
//! token, no token, garbage, a truncated stream, an oversized frame. A receiver must refuse
//! each before restoring anything, log it with the peer's address, and stay up.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use pmig_image::wire;
use pmig_tests::{fail_with, pmig_env, programs, wait_until, Input, Proc, Program, Sandbox, StepCheck, Terminal};

const STEPS: u32 = 60;
const TIMEOUT: Duration = Duration::from_secs(20);

fn token_file(sb: &Sandbox, name: &str, secret: &str) -> PathBuf {
    let p = sb.file(name);
    std::fs::write(&p, secret).expect("write token");
    p
}

/// Starts `pmig-resume --listen 127.0.0.1:0 --token-file TOKEN` and returns it with its port.
fn start_receiver(sb: &Sandbox, token: &Path, extra: &[&str]) -> (Proc, u16) {
    let mut cmd = sb.command(&sb.bins().resume, &sb.workdir("receiver"));
    cmd.arg("--listen").arg("127.0.0.1:0").arg("--token-file").arg(token).args(extra);
    pmig_env(&mut cmd);
    let mut r = Proc::spawn("pmig-resume --listen", cmd, Terminal::Pipe);
    let port = pmig_tests::receiver_port(&mut r, "127.0.0.1");
    (r, port)
}

/// Starts `pmig-run --to 127.0.0.1:PORT --token-file TOKEN FLAGS -- PROGRAM...`.
fn start_sender(sb: &Sandbox, port: u16, token: &Path, flags: &[&str], prog: &Program) -> Proc {
    let mut cmd = sb.command(&sb.bins().run, &sb.workdir("sender"));
    cmd.arg("--to").arg(format!("127.0.0.1:{port}")).arg("--token-file").arg(token).args(flags).arg("--");
    cmd.args(&prog.argv);
    pmig_env(&mut cmd);
    Proc::spawn(&format!("pmig-run --to ({})", prog.name), cmd, Terminal::Pipe)
}

fn read_steps(p: &mut Proc, steps: &mut StepCheck, until: u32) {
    while steps.last() < until {
        match p.next_line(TIMEOUT) {
            Ok(Some(l)) => {
                if let Err(e) = steps.accept(&l) {
                    fail_with(&e, &mut [p]);
                }
            }
            Ok(None) => fail_with(&format!("output ended before step {until}"), &mut [p]),
            Err(e) => fail_with(&e, &mut [p]),
        }
    }
}

/// Runs `prog` under `pmig-run --to`, moves it after step 5, and checks that the receiver's
/// process goes on from the next step to the end.
fn migrate(prog: &Program, flags: &[&str]) {
    migrate_in(Sandbox::new(), prog, flags, 5);
}

/// The fds of the processes below `pid` (a receiver and the program it restored) that lead to
/// one of pmig's own pre-copy files: `/proc/PID/mem`, a page map, a userfaultfd.
fn leaked_fds(pid: u32) -> Vec<String> {
    let mut out = Vec::new();
    let mut pids = vec![pid as i32];
    let mut i = 0;
    while i < pids.len() {
        let parent = pids[i];
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(p) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            let ppid = stat.rsplit(')').next().and_then(|r| r.split_whitespace().nth(1)).and_then(|v| v.parse::<i32>().ok());
            if ppid == Some(parent) && !pids.contains(&p) {
                pids.push(p);
            }
        }
        i += 1;
    }
    for p in pids {
        for e in std::fs::read_dir(format!("/proc/{p}/fd")).into_iter().flatten().flatten() {
            let to = std::fs::read_link(e.path()).map(|l| l.to_string_lossy().into_owned()).unwrap_or_default();
            if to.ends_with("/mem") || to.ends_with("/pagemap") || to.contains("userfaultfd") {
                out.push(format!("process {p} fd {}: {to}", e.file_name().to_string_lossy()));
            }
        }
    }
    out
}

/// [`migrate`] in `sb` (as its user), after step `stop`; returns what the sender said.
fn migrate_in(sb: Sandbox, prog: &Program, flags: &[&str], stop: u32) -> String {
    let token = token_file(&sb, "token", "a shared secret");
    let (mut r, port) = start_receiver(&sb, &token, &[]);
    let mut s = start_sender(&sb, port, &token, flags, prog);
    let mut steps = StepCheck::new(1, prog.steps, Input::Idle);
    read_steps(&mut s, &mut steps, stop);
    s.signal(libc::SIGUSR2).unwrap_or_else(|e| fail_with(&e, &mut [&mut s, &mut r]));
    let status = s.wait_exit(TIMEOUT).unwrap_or_else(|e| fail_with(&e, &mut [&mut s, &mut r]));
    if !status.success() {
        fail_with("the sender must exit 0 once the receiver confirmed", &mut [&mut s, &mut r]);
    }
    for l in s.drain_now().unwrap_or_default() {
        if let Err(e) = steps.accept(&l) {
            fail_with(&e, &mut [&mut s, &mut r]);
        }
    }
    let mut moved = StepCheck::new(steps.last() + 1, prog.steps, Input::Idle);
    // The moved program holds nothing of pmig's (its first line says it runs).
    match r.next_line(TIMEOUT) {
        Ok(Some(l)) => {
            if let Err(e) = moved.accept(&l) {
                fail_with(&e, &mut [&mut s, &mut r]);
            }
        }
        Ok(None) => fail_with("the receiver exited before the moved program printed a line", &mut [&mut s, &mut r]),
        Err(e) => fail_with(&e, &mut [&mut s, &mut r]),
    }
    let leaked = leaked_fds(r.pid() as u32);
    if !leaked.is_empty() {
        fail_with(&format!("the moved program holds pmig's files: {leaked:?}"), &mut [&mut s, &mut r]);
    }
    let (lines, status) = r.finish(Duration::from_secs(u64::from(prog.steps)) + TIMEOUT).unwrap_or_else(|e| fail_with(&e, &mut [&mut s, &mut r]));
    for l in lines {
        if let Err(e) = moved.accept(&l) {
            fail_with(&e, &mut [&mut s, &mut r]);
        }
    }
    if !status.success() || !moved.complete() {
        fail_with("the moved program must run to its end and exit 0", &mut [&mut s, &mut r]);
    }
    let left: Vec<_> = std::fs::read_dir(sb.workdir("sender")).map(|d| d.filter_map(|e| e.ok()).collect()).unwrap_or_default();
    assert!(left.is_empty(), "--to must leave no image file on the source: {left:?}");
    s.stderr_text()
}

/// A live move (`--live`) of a program that keeps writing its memory and changing its map
/// (live.c: pages written, dropped, moved, unmapped and mapped again while they are copied),
/// unprivileged: pre-copy rounds while it runs, then the rest; the program checks its memory
/// every step on the target, to its end.
#[test]
fn live_move_over_tcp_as_nobody() {
    let sb = Sandbox::with_user(pmig_tests::RunAs::nobody_if_root());
    let said = migrate_in(sb, &Program::new("live", programs::LIVE, 60, &["128", "256"]), &["--live"], 10);
    assert!(said.contains("pre-copy round 1:"), "no pre-copy round reported:\n{said}");
    assert!(said.contains("; live: "), "the move does not say what pre-copy did:\n{said}");
}

/// The same, compressed.
#[test]
fn live_move_over_tcp_compressed() {
    let said = migrate_in(Sandbox::new(), &Program::new("live", programs::LIVE, 60, &["64", "256"]), &["--live", "--compress"], 10);
    assert!(said.contains("pre-copy round 1:"), "no pre-copy round reported:\n{said}");
}

/// A program that writes all its memory every step writes faster than pre-copy sends it over
/// a slow link (12 MiB/s, a test switch): pre-copy gives up after a few rounds, says so, and
/// the rest goes with the program stopped (correct, just longer).
#[test]
fn live_move_that_does_not_converge() {
    let mut prog = Program::new("live", programs::LIVE, 100, &["16", "16384"]);
    prog.argv.splice(0..0, ["/usr/bin/env".into(), "PMIG_TEST_LINK_MIB_S=12".into()]);
    let said = migrate_in(Sandbox::new(), &prog, &["--live"], 5);
    assert!(said.contains("pre-copy does not converge"), "pre-copy must give up and say so:\n{said}");
    // Rounds over this slow link last more than a second: each says how it goes meanwhile.
    assert!(said.lines().any(|l| l.contains("pre-copy round 1:") && l.contains(" of ") && l.contains("MiB sent")), "{said}");
}

/// A tree with --live: pre-copy covers one process, so the tree is moved stopped, as without
/// it, and the sender says so.
#[test]
fn live_move_of_a_tree_is_moved_stopped() {
    let said = migrate_in(Sandbox::new(), &Program::new("tree", programs::TREE, STEPS, &[]), &["--live"], 5);
    assert!(said.contains("pre-copy (--live) covers a single process"), "{said}");
}

#[test]
fn migrate_counter_over_tcp() {
    migrate(&Program::new("counter", programs::COUNTER, STEPS, &[]), &[]);
}

#[test]
fn migrate_threads_over_tcp_compressed() {
    migrate(&Program::new("pthreads", programs::PTHREADS, STEPS, &[]), &["--compress"]);
}

/// A process tree (tree.c: workers on pipes, shared memory, a zombie) moves whole.
#[test]
fn migrate_tree_over_tcp() {
    migrate(&Program::new("tree", programs::TREE, STEPS, &[]), &["--compress"]);
}

#[test]
fn migrate_python_over_tcp() {
    migrate(&Program::python_threads(STEPS), &["--compress"]);
}

/// `cat image | pmig-resume -`.
#[test]
fn resume_from_stdin() {
    let sb = Sandbox::new();
    let image = sb.image("stdin.pmig");
    let mut cmd = sb.command(&sb.bins().run, &sb.workdir("run"));
    cmd.arg("--exit").arg("--image").arg(&image).arg("--").arg(programs::COUNTER).arg(STEPS.to_string());
    pmig_env(&mut cmd);
    let mut p = Proc::spawn("pmig-run (counter)", cmd, Terminal::Pipe);
    let mut steps = StepCheck::new(1, STEPS, Input::Idle);
    read_steps(&mut p, &mut steps, 5);
    p.signal(libc::SIGUSR2).unwrap_or_else(|e| fail_with(&e, &mut [&mut p]));
    assert!(p.wait_exit(TIMEOUT).map(|s| s.success()).unwrap_or(false), "{}", p.describe());
    for l in p.drain_now().unwrap_or_default() {
        steps.accept(&l).unwrap_or_else(|e| fail_with(&e, &mut [&mut p]));
    }
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("cat '{}' | '{}' -", image.display(), sb.bins().resume.display()))
        .current_dir(sb.workdir("resume"))
        .output()
        .expect("run sh");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut resumed = StepCheck::new(steps.last() + 1, STEPS, Input::Idle);
    for l in text.lines() {
        resumed.accept(l).unwrap_or_else(|e| panic!("{e}\nstderr: {}", String::from_utf8_lossy(&out.stderr)));
    }
    assert!(out.status.success() && resumed.complete(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
}

/// Connects to the receiver and reads its HELLO: the challenge.
fn connect(port: u16) -> (TcpStream, [u8; 32]) {
    let mut c = TcpStream::connect(("127.0.0.1", port)).expect("connect to the receiver");
    c.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut hello = [0u8; wire::HELLO_LEN];
    c.read_exact(&mut hello).expect("read HELLO");
    let challenge = wire::parse_hello(&hello).expect("a pmig HELLO");
    (c, challenge)
}

/// Authenticates as a sender that knows `token`, then offers no files; returns the receiver's
/// status byte for the authentication.
fn authenticate(c: &mut TcpStream, challenge: &[u8; 32], token: &[u8]) -> u8 {
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    let auth = wire::Auth { mac: wire::mac(token, b"pmig-sender", challenge), flags: 0, uid, challenge: [9; 32] };
    c.write_all(&auth.to_bytes()).expect("send AUTH");
    let mut st = [0u8; 1];
    c.read_exact(&mut st).expect("read ACCEPT");
    if st[0] == 0 {
        // The receiver's proof and message, then the (empty) file negotiation.
        let mut rest = [0u8; 34];
        c.read_exact(&mut rest).expect("read ACCEPT");
        let mut msg = vec![0u8; u16::from_le_bytes([rest[32], rest[33]]) as usize];
        c.read_exact(&mut msg).expect("read ACCEPT");
        c.write_all(&wire::files_message(&[])).expect("send FILES");
        let mut needs = [0u8; 3];
        c.read_exact(&mut needs).expect("read NEEDS");
        let mut msg = vec![0u8; u16::from_le_bytes([needs[1], needs[2]]) as usize];
        c.read_exact(&mut msg).expect("read NEEDS");
        assert_eq!(needs[0], 0, "an empty file list must be accepted");
    }
    st[0]
}

fn refusals(r: &mut Proc) -> usize {
    r.stderr_text().lines().filter(|l| l.starts_with("pmig-resume: refused 127.0.0.1:")).count()
}

fn expect_refusal(r: &mut Proc, n: usize, what: &str) {
    if let Err(e) = wait_until(TIMEOUT, what, || (refusals(r) >= n).then_some(())) {
        fail_with(&format!("{e}: the receiver must log a refusal naming the peer"), &mut [r]);
    }
}

/// Wrong token, no token, garbage, truncated stream, oversized frame: each refused and
/// logged; a program whose sender is refused goes on where it is; the receiver stays up and
/// takes the next (right) sender.
#[test]
fn receiver_refuses_bad_senders_and_stays_up() {
    let sb = Sandbox::new();
    let token = token_file(&sb, "token", "the right secret");
    let wrong = token_file(&sb, "wrong", "a wrong secret");
    let (mut r, port) = start_receiver(&sb, &token, &[]);

    // A real sender with the wrong token: its move fails and the program goes on.
    let prog = Program::new("counter", programs::COUNTER, STEPS, &[]);
    let mut s = start_sender(&sb, port, &wrong, &[], &prog);
    let mut steps = StepCheck::new(1, STEPS, Input::Idle);
    read_steps(&mut s, &mut steps, 3);
    s.signal(libc::SIGUSR2).unwrap();
    let said = wait_until(TIMEOUT, "the sender's failure message", || {
        s.stderr_text().lines().find(|l| l.contains("failed") && l.contains("refused")).map(String::from)
    });
    if let Err(e) = said {
        fail_with(&e, &mut [&mut s, &mut r]);
    }
    let now = steps.last();
    read_steps(&mut s, &mut steps, now + 3);
    expect_refusal(&mut r, 1, "refusal of the wrong token");
    drop(s);

    // No token at all: connect and hang up.
    drop(connect(port));
    expect_refusal(&mut r, 2, "refusal of a silent peer");

    // Garbage instead of AUTH.
    let (mut c, _) = connect(port);
    c.write_all(&[0x5a; wire::AUTH_LEN]).unwrap();
    let mut st = [0u8; 1];
    let _ = c.read_exact(&mut st);
    assert_eq!(st[0], 1, "garbage must be answered with a refusal");
    drop(c);
    expect_refusal(&mut r, 3, "refusal of garbage");

    // A truncated stream: authenticated, then half a frame.
    let (mut c, ch) = connect(port);
    assert_eq!(authenticate(&mut c, &ch, b"the right secret"), 0);
    c.write_all(&wire::frame_header(wire::frame::RAW, 100)).unwrap();
    c.write_all(&[1u8; 10]).unwrap();
    drop(c);
    expect_refusal(&mut r, 4, "refusal of a truncated stream");

    // An oversized frame.
    let (mut c, ch) = connect(port);
    assert_eq!(authenticate(&mut c, &ch, b"the right secret"), 0);
    c.write_all(&wire::frame_header(wire::frame::RAW, u32::MAX)).unwrap();
    drop(c);
    expect_refusal(&mut r, 5, "refusal of an oversized frame");
    let log = r.stderr_text();
    assert!(log.contains("authentication failed"), "{log}");
    assert!(log.contains("truncated"), "{log}");

    // The receiver is still up: the right sender moves its program.
    let mut s = start_sender(&sb, port, &token, &[], &prog);
    let mut steps = StepCheck::new(1, STEPS, Input::Idle);
    read_steps(&mut s, &mut steps, 3);
    s.signal(libc::SIGUSR2).unwrap();
    let status = s.wait_exit(TIMEOUT).unwrap_or_else(|e| fail_with(&e, &mut [&mut s, &mut r]));
    assert!(status.success(), "{}", s.describe());
    for l in s.drain_now().unwrap_or_default() {
        steps.accept(&l).unwrap();
    }
    let line = r.next_line(TIMEOUT).unwrap_or_else(|e| fail_with(&e, &mut [&mut s, &mut r]));
    assert_eq!(line, Some(format!("step {}", steps.last() + 1)), "{}", r.describe());
}

/// Images are written readable by their owner only.
#[test]
fn images_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let sb = Sandbox::new();
    let image = sb.image("private.pmig");
    let mut cmd = sb.command(&sb.bins().run, &sb.workdir("run"));
    cmd.arg("--image").arg(&image).arg("--").arg(programs::COUNTER).arg(STEPS.to_string());
    pmig_env(&mut cmd);
    let mut p = Proc::spawn("pmig-run (counter)", cmd, Terminal::Pipe);
    let mut steps = StepCheck::new(1, STEPS, Input::Idle);
    read_steps(&mut p, &mut steps, 2);
    p.signal(libc::SIGUSR2).unwrap();
    let mode = wait_until(TIMEOUT, "the image", || std::fs::metadata(&image).ok().map(|m| m.permissions().mode() & 0o777))
        .unwrap_or_else(|e| fail_with(&e, &mut [&mut p]));
    assert_eq!(mode, 0o600, "an image holds the program's memory: it must be 0600");
}

/// `--keep-listening`: the receiver stays and forks one restorer per arriving program.
#[test]
fn keep_listening_takes_several_programs() {
    let sb = Sandbox::new();
    let token = token_file(&sb, "token", "a shared secret");
    let (mut r, port) = start_receiver(&sb, &token, &["--keep-listening"]);
    let mut moved = Vec::new();
    for n in 1..=2 {
        let prog = Program::new("counter", programs::COUNTER, 400, &[]);
        let mut s = start_sender(&sb, port, &token, &[], &prog);
        let mut steps = StepCheck::new(1, 400, Input::Idle);
        read_steps(&mut s, &mut steps, 2);
        s.signal(libc::SIGUSR2).unwrap();
        let st = s.wait_exit(TIMEOUT).unwrap_or_else(|e| fail_with(&e, &mut [&mut s, &mut r]));
        assert!(st.success(), "{}", s.describe());
        let pid: i32 = wait_until(TIMEOUT, "the receiver's restorer pid", || {
            r.stderr_text()
                .lines()
                .filter_map(|l| l.strip_prefix("pmig-resume: restoring it as pid "))
                .nth(n - 1)
                .and_then(|p| p.trim().parse().ok())
        })
        .unwrap_or_else(|e| fail_with(&e, &mut [&mut s, &mut r]));
        moved.push(pid);
    }
    assert!(r.poll_status().is_none(), "the receiver must stay up: {}", r.describe());
    for pid in moved {
        let running = wait_until(TIMEOUT, "the moved program running", || {
            let cmd = std::fs::read(format!("/proc/{}/cmdline", pmig_tests::program_pid(pid))).ok()?;
            String::from_utf8_lossy(&cmd).contains("counter").then_some(())
        });
        // SAFETY: kill(2) of a child of the receiver this test started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        running.unwrap_or_else(|e| fail_with(&e, &mut [&mut r]));
    }
}

/// A root receiver refuses a process of another user unless told `--as-owner`, and then
/// restores it as that user.
#[test]
fn other_users_process_needs_as_owner() {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED other_users_process_needs_as_owner: needs root (a receiver of another user)");
        return;
    }
    let sb = Sandbox::with_user(pmig_tests::RunAs::nobody_if_root());
    let token = token_file(&sb, "token", "a shared secret");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let prog = Program::new("counter", sb.stage(programs::COUNTER), STEPS, &[]);
    // The receiver runs as root, outside the sandbox's user.
    let start_root_receiver = |extra: &[&str]| {
        let mut cmd = Command::new(&sb.bins().resume);
        cmd.current_dir(sb.workdir("receiver"));
        cmd.arg("--listen").arg("127.0.0.1:0").arg("--token-file").arg(&token).args(extra);
        pmig_env(&mut cmd);
        let mut r = Proc::spawn("pmig-resume --listen (root)", cmd, Terminal::Pipe);
        let port = pmig_tests::receiver_port(&mut r, "127.0.0.1");
        (r, port)
    };
    let (mut r, port) = start_root_receiver(&[]);
    let mut s = start_sender(&sb, port, &token, &[], &prog);
    let mut steps = StepCheck::new(1, STEPS, Input::Idle);
    read_steps(&mut s, &mut steps, 2);
    s.signal(libc::SIGUSR2).unwrap();
    expect_refusal(&mut r, 1, "refusal of another user's process");
    assert!(r.stderr_text().contains("uid 65534"), "{}", r.describe());
    let now = steps.last();
    read_steps(&mut s, &mut steps, now + 2);
    drop(s);
    drop(r);

    let (mut r, port) = start_root_receiver(&["--as-owner"]);
    let mut s = start_sender(&sb, port, &token, &[], &prog);
    let mut steps = StepCheck::new(1, STEPS, Input::Idle);
    read_steps(&mut s, &mut steps, 2);
    s.signal(libc::SIGUSR2).unwrap();
    assert!(s.wait_exit(TIMEOUT).map(|st| st.success()).unwrap_or(false), "{}", s.describe());
    let line = r.next_line(TIMEOUT).unwrap_or_else(|e| fail_with(&e, &mut [&mut r]));
    assert!(line.is_some_and(|l| l.starts_with("step ")), "{}", r.describe());
    let status = std::fs::read_to_string(format!("/proc/{}/status", pmig_tests::program_pid(r.pid()))).unwrap_or_default();
    let uid = status.lines().find_map(|l| l.strip_prefix("Uid:")).unwrap_or("").split_whitespace().next().unwrap_or("");
    assert_eq!(uid, "65534", "--as-owner restores the process as its owner");
}

/// A transfer longer than a second prints its progress (bytes, MiB/s, time left) on the
/// sender and the receiver. The link is slowed to 40 Mbit/s with tc in a network namespace of
/// the test's own (root only).
#[test]
fn slow_transfer_shows_progress() {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 || !Path::new("/usr/sbin/tc").exists() {
        eprintln!("SKIPPED slow_transfer_shows_progress: needs root and tc (iproute2) to slow a link");
        return;
    }
    let ns = format!("pmig-slow-{}", std::process::id());
    let run = |args: &[&str]| Command::new("ip").args(args).status().map(|s| s.success()).unwrap_or(false);
    assert!(run(&["netns", "add", &ns]), "ip netns add");
    struct Ns(String);
    impl Drop for Ns {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }
    let _guard = Ns(ns.clone());
    assert!(run(&["netns", "exec", &ns, "ip", "link", "set", "lo", "up"]));
    assert!(run(&["netns", "exec", &ns, "tc", "qdisc", "add", "dev", "lo", "root", "tbf", "rate", "40mbit", "burst", "512kb", "latency", "2s"]));

    let sb = Sandbox::new();
    let token = token_file(&sb, "token", "a shared secret");
    let in_ns = |exe: &Path, cwd: &Path| {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &ns]).arg(exe).current_dir(cwd);
        c
    };
    let mut rc = in_ns(&sb.bins().resume, &sb.workdir("receiver"));
    rc.arg("--listen").arg("127.0.0.1:0").arg("--token-file").arg(&token);
    pmig_env(&mut rc);
    let mut r = Proc::spawn("pmig-resume --listen (slow link)", rc, Terminal::Pipe);
    let port = pmig_tests::receiver_port(&mut r, "127.0.0.1");
    // 16 MiB of touched memory: about 3 s at 40 Mbit/s.
    let mut sc = in_ns(&sb.bins().run, &sb.workdir("sender"));
    sc.arg("--to").arg(format!("127.0.0.1:{port}")).arg("--token-file").arg(&token).arg("--");
    sc.arg(programs::SPARSE).arg(STEPS.to_string());
    pmig_env(&mut sc);
    let mut s = Proc::spawn("pmig-run --to (sparse, slow link)", sc, Terminal::Pipe);
    let mut steps = StepCheck::new(1, STEPS, Input::Idle);
    read_steps(&mut s, &mut steps, 2);
    s.signal(libc::SIGUSR2).unwrap();
    let st = s.wait_exit(Duration::from_secs(60)).unwrap_or_else(|e| fail_with(&e, &mut [&mut s, &mut r]));
    assert!(st.success(), "{}", s.describe());
    let sent = s.stderr_text();
    let line = sent.lines().find(|l| l.contains("sent ") && l.contains(" MiB/s") && l.contains(" s left"));
    assert!(line.is_some(), "the sender must print progress (bytes, MiB/s, time left):\n{sent}");
    let got = r.stderr_text();
    assert!(got.lines().any(|l| l.contains("received ") && l.contains(" MiB/s")), "the receiver must print progress:\n{got}");
}

/// A peer that is not a receiver of this protocol version is refused by the sender, which
/// says why; the program goes on.
#[test]
fn sender_refuses_a_receiver_of_another_version() {
    let sb = Sandbox::new();
    let token = token_file(&sb, "token", "a shared secret");
    let fake = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = fake.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        if let Ok((mut c, _)) = fake.accept() {
            let mut hello = wire::hello(&[1; 32]);
            hello[8..12].copy_from_slice(&(wire::WIRE_VERSION + 1).to_le_bytes());
            let _ = c.write_all(&hello);
            let mut sink = [0u8; 64];
            let _ = c.read(&mut sink);
        }
    });
    let prog = Program::new("counter", programs::COUNTER, STEPS, &[]);
    let mut s = start_sender(&sb, port, &token, &[], &prog);
    let mut steps = StepCheck::new(1, STEPS, Input::Idle);
    read_steps(&mut s, &mut steps, 2);
    s.signal(libc::SIGUSR2).unwrap();
    let said = wait_until(TIMEOUT, "the sender's failure message", || {
        s.stderr_text().lines().find(|l| l.contains("failed") && l.contains("another version")).map(String::from)
    });
    if let Err(e) = said {
        fail_with(&e, &mut [&mut s]);
    }
    let now = steps.last();
    read_steps(&mut s, &mut steps, now + 2);
    let _ = server.join();
}

/// Peers that connect and say nothing, or dribble a byte a second, neither hold up a real
/// sender (served at once, beside them) nor stay past the handshake deadline (5 s).
#[test]
fn silent_peers_do_not_hold_up_a_sender() {
    let sb = Sandbox::new();
    let token = token_file(&sb, "token", "a shared secret");
    let (mut r, port) = start_receiver(&sb, &token, &[]);
    let opened = std::time::Instant::now();
    let silent: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect(("127.0.0.1", port)).expect("connect")).collect();
    let (mut dribble, _) = connect(port);
    let dribbler = std::thread::spawn(move || {
        // One byte a second, never a whole AUTH within the deadline: the receiver must close.
        for _ in 0..wire::AUTH_LEN {
            if dribble.write_all(&[0x42]).is_err() {
                return Some(opened.elapsed());
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        None
    });

    let prog = Program::new("counter", programs::COUNTER, STEPS, &[]);
    let mut s = start_sender(&sb, port, &token, &[], &prog);
    let mut steps = StepCheck::new(1, STEPS, Input::Idle);
    read_steps(&mut s, &mut steps, 2);
    let signalled = std::time::Instant::now();
    s.signal(libc::SIGUSR2).unwrap();
    let status = s.wait_exit(TIMEOUT).unwrap_or_else(|e| fail_with(&e, &mut [&mut s, &mut r]));
    let took = signalled.elapsed();
    assert!(status.success(), "{}", s.describe());
    assert!(took < Duration::from_secs(4), "the move took {took:?}: silent peers held up the sender\n{}", r.describe());
    for l in s.drain_now().unwrap_or_default() {
        steps.accept(&l).unwrap();
    }
    let line = r.next_line(TIMEOUT).unwrap_or_else(|e| fail_with(&e, &mut [&mut s, &mut r]));
    assert_eq!(line, Some(format!("step {}", steps.last() + 1)), "{}", r.describe());
    drop(silent);
    // The receiver became the program (exec): the dribbler's connection is gone with it.
    let cut = dribbler.join().expect("the dribbler");
    assert!(cut.is_some_and(|t| t < Duration::from_secs(15)), "the dribbling peer was never cut off: {cut:?}");
}

/// With --keep-listening the receiver itself closes a peer that does not authenticate within
/// the handshake deadline, and logs it.
#[test]
fn handshake_deadline_closes_a_silent_peer() {
    let sb = Sandbox::new();
    let token = token_file(&sb, "token", "a shared secret");
    let (mut r, port) = start_receiver(&sb, &token, &["--keep-listening"]);
    let (mut c, _) = connect(port);
    let start = std::time::Instant::now();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut b = [0u8; 1];
    let got = c.read(&mut b);
    let waited = start.elapsed();
    assert!(matches!(got, Ok(0)), "the receiver must close a silent peer: {got:?}");
    assert!(waited >= Duration::from_secs(4) && waited < Duration::from_secs(10), "closed after {waited:?}, expected about 5 s");
    expect_refusal(&mut r, 1, "the silent peer's refusal");
    assert!(r.stderr_text().contains("past the handshake deadline (5 s)"), "{}", r.describe());
}
