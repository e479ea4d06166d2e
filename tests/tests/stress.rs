//! Stress: a receiver under a flood of hostile connections while real programs arrive; and
//! (below) checkpoints in a row, in bursts and during fork/exec, measured from `/proc`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pmig_image::wire;
use pmig_tests::{fail_with, pmig_env, programs, wait_until, Input, Proc, Program, Sandbox, StepCheck, Terminal};

const TIMEOUT: Duration = Duration::from_secs(20);

fn token_file(sb: &Sandbox, secret: &str) -> PathBuf {
    let p = sb.file("token");
    std::fs::write(&p, secret).expect("write token");
    p
}

fn start_receiver(sb: &Sandbox, token: &Path, extra: &[&str]) -> (Proc, u16) {
    let mut cmd = sb.command(&sb.bins().resume, &sb.workdir("receiver"));
    cmd.arg("--listen").arg("127.0.0.1:0").arg("--token-file").arg(token).args(extra);
    pmig_env(&mut cmd);
    let mut r = Proc::spawn("pmig-resume --listen", cmd, Terminal::Pipe);
    let port = pmig_tests::receiver_port(&mut r, "127.0.0.1");
    (r, port)
}

fn start_sender(sb: &Sandbox, port: u16, token: &Path, prog: &Program) -> Proc {
    let mut cmd = sb.command(&sb.bins().run, &sb.workdir("sender"));
    cmd.arg("--to").arg(format!("127.0.0.1:{port}")).arg("--token-file").arg(token).arg("--");
    cmd.args(&prog.argv);
    pmig_env(&mut cmd);
    Proc::spawn(&format!("pmig-run --to ({})", prog.name), cmd, Terminal::Pipe)
}

/// Reads `p`'s steps until `until`, failing the test (with `others` described) on a gap.
fn read_steps(p: &mut Proc, steps: &mut StepCheck, until: u32) {
    while steps.last() < until {
        match p.next_line(TIMEOUT) {
            Ok(Some(l)) => {
                if let Err(e) = steps.accept(&l) {
                    fail_with(&e, &mut [p])
                }
            }
            Ok(None) => fail_with(&format!("output ended before step {until}"), &mut [p]),
            Err(e) => fail_with(&e, &mut [p]),
        }
    }
}

/// `(open fds, threads, VmRSS in KiB)` of `pid`, from `/proc`.
fn usage(pid: i32) -> (usize, usize, u64) {
    let count = |d: String| std::fs::read_dir(d).map(|d| d.count()).unwrap_or(0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next()?.parse().ok()).unwrap_or(0);
    (count(format!("/proc/{pid}/fd")), count(format!("/proc/{pid}/task")), rss)
}

/// One hostile connection of kind `n % 5`: silent, garbage, half-open (part of an AUTH, then
/// the write side shut), reset at once, or a flood of bytes. Returns it if it is to be held
/// open.
fn hostile(port: u16, n: usize) -> Option<TcpStream> {
    let mut c = TcpStream::connect(("127.0.0.1", port)).ok()?;
    match n % 5 {
        0 => Some(c),
        1 => {
            let _ = c.write_all(&[0xa5; wire::AUTH_LEN + 7]);
            None
        }
        2 => {
            let _ = c.write_all(&[0x11; wire::AUTH_LEN / 2]);
            let _ = c.shutdown(std::net::Shutdown::Write);
            Some(c)
        }
        3 => {
            use std::os::fd::AsRawFd;
            let linger = libc::linger { l_onoff: 1, l_linger: 0 };
            // SAFETY: setsockopt on a socket we own, with a linger struct of the size given:
            // closing it then sends a reset.
            unsafe {
                libc::setsockopt(c.as_raw_fd(), libc::SOL_SOCKET, libc::SO_LINGER, (&linger as *const libc::linger).cast(), size_of::<libc::linger>() as u32)
            };
            None
        }
        _ => {
            let _ = c.set_write_timeout(Some(Duration::from_millis(200)));
            let _ = c.write_all(&vec![0x5a; 256 << 10]);
            None
        }
    }
}

/// 1000 hostile connections (silent, garbage, half-open, reset, floods) over a few seconds,
/// while four real programs are moved to the same `--keep-listening` receiver: every program
/// arrives and runs, the receiver stays up, and once the flood is over its threads, fds and
/// memory come back down.
#[test]
fn receiver_survives_a_flood_while_programs_arrive() {
    let sb = Sandbox::new();
    let token = token_file(&sb, "a shared secret");
    let (mut r, port) = start_receiver(&sb, &token, &["--keep-listening"]);
    let (fds0, _, rss0) = usage(r.pid());

    let flooding = Instant::now();
    let flood: Vec<_> = (0..4)
        .map(|t| {
            std::thread::spawn(move || {
                let mut held = std::collections::VecDeque::new();
                let mut made = 0;
                for i in 0..250 {
                    if let Some(c) = hostile(port, t * 250 + i) {
                        held.push_back(c);
                        if held.len() > 50 {
                            held.pop_front();
                        }
                    }
                    made += 1;
                    // Pacing, not a wait for anything: spreads the flood over the senders' moves.
                    std::thread::sleep(Duration::from_millis(12));
                }
                made
            })
        })
        .collect();

    let mut moved = Vec::new();
    let mut senders: Vec<(Proc, StepCheck)> = (0..4)
        .map(|_| {
            let prog = Program::new("counter", programs::COUNTER, 400, &[]);
            (start_sender(&sb, port, &token, &prog), StepCheck::new(1, 400, Input::Idle))
        })
        .collect();
    for (n, (s, steps)) in senders.iter_mut().enumerate() {
        read_steps(s, steps, 2);
        s.signal(libc::SIGUSR2).unwrap();
        let st = s.wait_exit(TIMEOUT).unwrap_or_else(|e| fail_with(&e, &mut [s, &mut r]));
        if !st.success() {
            fail_with(&format!("program {n} was not moved during the flood"), &mut [s, &mut r]);
        }
        let pid: i32 = wait_until(TIMEOUT, "the receiver's restorer pid", || {
            r.stderr_text().lines().filter_map(|l| l.strip_prefix("pmig-resume: restoring it as pid ")).nth(n).and_then(|p| p.trim().parse().ok())
        })
        .unwrap_or_else(|e| fail_with(&e, &mut [s, &mut r]));
        moved.push(pid);
    }
    let made: usize = flood.into_iter().map(|t| t.join().expect("a flood thread")).sum();
    assert_eq!(made, 1000);
    let flooded = flooding.elapsed();
    assert!(flooded < Duration::from_secs(30), "the flood took {flooded:?}");
    assert!(r.poll_status().is_none(), "the receiver must stay up: {}", r.describe());
    for pid in &moved {
        let running = wait_until(TIMEOUT, "a moved program running", || {
            let cmd = std::fs::read(format!("/proc/{}/cmdline", pmig_tests::program_pid(*pid))).ok()?;
            String::from_utf8_lossy(&cmd).contains("counter").then_some(())
        });
        running.unwrap_or_else(|e| fail_with(&e, &mut [&mut r]));
    }

    // Every hostile connection is closed (its handshake deadline passed at the latest), and
    // with them the threads and fds that served them.
    let settled = wait_until(Duration::from_secs(15), "the receiver back to one thread and its fds", || {
        let (fds, threads, _) = usage(r.pid());
        (threads == 1 && fds <= fds0).then_some(())
    });
    let (fds, threads, rss) = usage(r.pid());
    for pid in moved {
        // SAFETY: kill(2) of a restorer child of the receiver this test started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    settled.unwrap_or_else(|e| fail_with(&format!("{e}: {fds} fds (were {fds0}), {threads} threads"), &mut [&mut r]));
    assert!(rss < rss0 + 64 * 1024, "the receiver's memory grew from {rss0} KiB to {rss} KiB");
    let refused = r.stderr_text().lines().filter(|l| l.starts_with("pmig-resume: refused 127.0.0.1:")).count();
    assert!(refused >= 900, "each hostile connection must be refused and logged: {refused} of 1000");
    let mut c = TcpStream::connect(("127.0.0.1", port)).expect("the receiver still listens");
    let mut hello = [0u8; wire::HELLO_LEN];
    c.set_read_timeout(Some(TIMEOUT)).unwrap();
    c.read_exact(&mut hello).expect("a HELLO after the flood");
}

/// A program under `pmig-run --image` (checkpoints that let it go on), with `PMIG_DEBUG=1`
/// so that each checkpoint logs its start and end.
fn run_stress(sb: &Sandbox, image: &Path, mode: &[&str]) -> (Proc, StepCheck) {
    let mut cmd = sb.command(&sb.bins().run, &sb.workdir("run"));
    cmd.arg("--image").arg(image).arg("--").arg(programs::STRESS).arg("100000").args(mode);
    pmig_env(&mut cmd);
    cmd.env("PMIG_DEBUG", "1");
    let mut p = Proc::spawn(&format!("pmig-run (stress {})", mode.join(" ")), cmd, Terminal::Pipe);
    let mut steps = StepCheck::new(1, 100000, Input::Idle);
    read_steps(&mut p, &mut steps, 3);
    (p, steps)
}

/// `(started, written, failed)` checkpoints so far, from the program's debug log.
fn checkpoints(p: &mut Proc) -> (usize, usize, usize) {
    let log = p.stderr_text();
    let count = |what: &str| log.lines().filter(|l| l.contains(what)).count();
    (count("checkpoint requested"), count("; going on"), count("failed"))
}

/// Reads the step lines the program printed so far (checking them), without waiting.
fn drain_steps(p: &mut Proc, steps: &mut StepCheck) {
    for l in p.drain_now().unwrap_or_else(|e| fail_with(&e, &mut [p])) {
        if let Err(e) = steps.accept(&l) {
            fail_with(&e, &mut [p]);
        }
    }
}

/// `(fds, VmRSS KiB, VmSize KiB)` of `pid`.
fn footprint(pid: i32) -> (usize, u64, u64) {
    let (fds, _, rss) = usage(pid);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let size = status.lines().find_map(|l| l.strip_prefix("VmSize:")).and_then(|v| v.split_whitespace().next()?.parse().ok()).unwrap_or(0);
    (fds, rss, size)
}

/// Checkpoints `n` times, each after the previous one is written; fails on a failed one.
fn checkpoint_n(p: &mut Proc, steps: &mut StepCheck, n: usize) {
    for _ in 0..n {
        let (_, before, _) = checkpoints(p);
        p.signal(libc::SIGUSR2).unwrap_or_else(|e| fail_with(&e, &mut [p]));
        let done = wait_until(TIMEOUT, "the checkpoint written", || {
            let (_, written, failed) = checkpoints(p);
            (written > before || failed > 0).then_some(failed)
        });
        match done {
            Ok(0) => {}
            Ok(_) => fail_with("a checkpoint failed", &mut [p]),
            Err(e) => fail_with(&e, &mut [p]),
        }
        drain_steps(p, steps);
    }
}

/// The image restores, and the program goes on from a step after `after`: returns the first
/// step the restored program prints.
fn restored_first_step(sb: &Sandbox, image: &Path) -> u32 {
    let mut cmd = sb.command(&sb.bins().resume, &sb.workdir("resume"));
    cmd.arg(image);
    pmig_env(&mut cmd);
    cmd.env("PMIG_DEBUG", "1");
    let mut r = Proc::spawn("pmig-resume (stress)", cmd, Terminal::Pipe);
    let line = r.next_line(TIMEOUT).unwrap_or_else(|e| fail_with(&e, &mut [&mut r]));
    let Some(step) = line.as_deref().and_then(|l| l.strip_prefix("step ")).and_then(|n| n.parse().ok()) else {
        fail_with(&format!("the restored program printed {line:?}, not a step"), &mut [&mut r])
    };
    // A few steps more: the restored program runs.
    let mut after = StepCheck::new(step, 100000, Input::Idle);
    after.accept(&format!("step {step}")).unwrap();
    read_steps(&mut r, &mut after, step + 3);
    // The checkpoint signals that were pending when the image was taken are pmig's, not the
    // program's: the restored program must not get them (and checkpoint itself) again.
    let log = r.stderr_text();
    assert!(!log.contains("checkpoint requested"), "the restored program started a checkpoint no one asked for:\n{log}");
    step
}

/// 200 checkpoints in a row of a program with 32 busy threads: each is written, the program
/// never stops or sees its memory change, and it holds no more fds and hardly more memory
/// after than after the first ten (measured from /proc).
#[test]
fn two_hundred_checkpoints_of_32_busy_threads() {
    let sb = Sandbox::new();
    let image = sb.image("busy.pmig");
    let (mut p, mut steps) = run_stress(&sb, &image, &["threads", "32"]);
    let pid = p.pid();
    checkpoint_n(&mut p, &mut steps, 10);
    let (fds0, rss0, size0) = footprint(pid);
    let started = Instant::now();
    checkpoint_n(&mut p, &mut steps, 190);
    let took = started.elapsed();
    let (fds, rss, size) = footprint(pid);
    let (req, written, _) = checkpoints(&mut p);
    assert_eq!((req, written), (200, 200), "every request must be served by one checkpoint");
    assert!(p.poll_status().is_none(), "the program must go on: {}", p.describe());
    assert_eq!(fds, fds0, "the program's fds grew over 190 checkpoints");
    assert!(rss <= rss0 + 8 * 1024, "the program's VmRSS grew from {rss0} to {rss} KiB over 190 checkpoints");
    assert!(size <= size0 + 64 * 1024, "the program's VmSize grew from {size0} to {size} KiB over 190 checkpoints");
    eprintln!("190 checkpoints in {took:?}; fds {fds0} -> {fds}, VmRSS {rss0} -> {rss} KiB, VmSize {size0} -> {size} KiB");
    let now = steps.last();
    read_steps(&mut p, &mut steps, now + 3);
    let first = restored_first_step(&sb, &image);
    assert!(first > 3, "the last image must hold the program as it was late, not at step {first}");
}

/// Waits until every checkpoint started is written and none is about to start (still so
/// three steps later); returns how many were written. Fails on a failed one.
fn wait_quiet(p: &mut Proc, steps: &mut StepCheck) -> usize {
    let quiet = wait_until(TIMEOUT, "the checkpoints to be done", || {
        let (req, written, failed) = checkpoints(p);
        if failed > 0 {
            return Some(Err("a checkpoint failed"));
        }
        if req == 0 || req != written {
            return None;
        }
        let now = steps.last();
        read_steps(p, steps, now + 3);
        (checkpoints(p) == (req, written, 0)).then_some(Ok(req))
    });
    match quiet {
        Ok(Ok(n)) => n,
        Ok(Err(e)) => fail_with(e, &mut [p]),
        Err(e) => fail_with(&e, &mut [p]),
    }
}

/// 50 `kill -USR2` in a burst, then 50 more 5 ms apart (landing before, during and after
/// checkpoints). Standard signals merge while pending, and a request that arrives during a
/// checkpoint is served by the next one (by design), so "no request lost" means: every
/// checkpoint started is written, none fails, and the last image holds the program as it
/// was at the last signal or later (its restored copy starts after the last step printed
/// before that signal was sent). The program's fds and memory stay as they were.
#[test]
fn a_burst_of_50_requests_is_served() {
    let sb = Sandbox::new();
    let image = sb.image("burst.pmig");
    let (mut p, mut steps) = run_stress(&sb, &image, &["threads", "4"]);
    checkpoint_n(&mut p, &mut steps, 2);
    let (fds0, rss0, _) = footprint(p.pid());
    for round in 0..2 {
        let before = checkpoints(&mut p).1;
        let now = steps.last();
        read_steps(&mut p, &mut steps, now + 1);
        let mut last_seen = steps.last();
        for _ in 0..50 {
            if round == 1 {
                std::thread::sleep(Duration::from_millis(5));
                drain_steps(&mut p, &mut steps);
                last_seen = steps.last();
            }
            p.signal(libc::SIGUSR2).unwrap_or_else(|e| fail_with(&e, &mut [&mut p]));
        }
        let served = wait_quiet(&mut p, &mut steps) - before;
        assert!((1..=50).contains(&served), "round {round}: {served} checkpoints for 50 requests");
        eprintln!("round {round}: {served} checkpoints for 50 requests");
        let first = restored_first_step(&sb, &image);
        assert!(
            first > last_seen,
            "round {round}: the last checkpoint ({served} for 50 requests) holds step {}, from before the last signal (sent after step {last_seen})",
            first - 1
        );
    }
    let (fds, rss, _) = footprint(p.pid());
    assert_eq!(fds, fds0, "the program's fds changed over the bursts");
    assert!(rss <= rss0 + 8 * 1024, "VmRSS grew from {rss0} to {rss} KiB over the bursts");
}

/// Checkpoints while the program forks without pause, its children exec'ing or exiting at
/// once: every checkpoint is written, no child fails, the program's fds stay as they were,
/// and the last image restores and runs (with its forking thread).
#[test]
fn checkpoints_while_the_program_forks_and_execs() {
    let sb = Sandbox::new();
    let image = sb.image("forks.pmig");
    let (mut p, mut steps) = run_stress(&sb, &image, &["forks"]);
    let pid = p.pid();
    checkpoint_n(&mut p, &mut steps, 5);
    let (fds0, rss0, _) = footprint(pid);
    checkpoint_n(&mut p, &mut steps, 45);
    let (fds, rss, _) = footprint(pid);
    assert!(p.poll_status().is_none(), "the program must go on: {}", p.describe());
    assert_eq!(fds, fds0, "the program's fds grew over 45 checkpoints");
    assert!(rss <= rss0 + 8 * 1024, "VmRSS grew from {rss0} to {rss} KiB over 45 checkpoints");
    let now = steps.last();
    read_steps(&mut p, &mut steps, now + 3);
    assert!(!p.stderr_text().contains("lost child"), "the running program lost a child to a checkpoint: {}", p.describe());
    restored_first_step(&sb, &image);
}
