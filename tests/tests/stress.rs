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
