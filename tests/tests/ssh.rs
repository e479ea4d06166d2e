//! `pmig-run --to ssh://HOST`: the move through the system's OpenSSH client, to a real sshd
//! started by the test on loopback with a generated key. The program then runs on the target
//! in the background, its output in a log file. A single process (the counter), a tree
//! (`tree.c`: workers on pipes, shared memory, a zombie) and a live move (`--live`) make it.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use pmig_tests::services::free_port;
use pmig_tests::{fail_with, pmig_env, programs, wait_until, Input, Proc, Sandbox, StepCheck, Terminal};

const STEPS: u32 = 60;
const TIMEOUT: Duration = Duration::from_secs(20);

#[test]
fn move_through_ssh() {
    move_through_ssh_of("move_through_ssh", programs::COUNTER, &[], &[]);
}

#[test]
fn move_tree_through_ssh() {
    move_through_ssh_of("move_tree_through_ssh", programs::TREE, &[], &[]);
}

/// A live move (`--live`) through ssh: pre-copy rounds over ssh's pipes, of a program that
/// keeps changing its memory (live.c, 32 MiB) and checks it on the target to its end.
#[test]
fn live_move_through_ssh() {
    let said = move_through_ssh_of("live_move_through_ssh", programs::LIVE, &["32", "256"], &["--live"]);
    assert!(said.contains("pre-copy round 1:") && said.contains("; live: "), "{said}");
}

/// Moves `program STEPS args` with `flags` through ssh; returns what the sender said.
fn move_through_ssh_of(test: &str, program: &str, args: &[&str], flags: &[&str]) -> String {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 || !Path::new("/usr/sbin/sshd").exists() {
        eprintln!("SKIPPED {test}: needs root and /usr/sbin/sshd (openssh-server) to run a test sshd");
        return String::new();
    }
    let sb = Sandbox::new();
    let dir = sb.file("ssh");
    std::fs::create_dir_all(&dir).unwrap();
    for key in ["hostkey", "userkey"] {
        let st = Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(dir.join(key)).status().unwrap();
        assert!(st.success(), "ssh-keygen failed");
    }
    std::fs::copy(dir.join("userkey.pub"), dir.join("authorized_keys")).unwrap();
    let port = free_port();
    let d = dir.display();
    std::fs::write(
        dir.join("sshd_config"),
        format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/hostkey\nAuthorizedKeysFile {d}/authorized_keys\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n\
             PermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\nPidFile {d}/sshd.pid\n"
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("ssh_config"),
        format!("Host *\n  IdentityFile {d}/userkey\n  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n"),
    )
    .unwrap();
    let _ = std::fs::create_dir_all("/run/sshd");
    let mut sshd = Command::new("/usr/sbin/sshd");
    sshd.arg("-D").arg("-f").arg(dir.join("sshd_config")).arg("-E").arg(dir.join("sshd.log"));
    let mut sshd = Proc::spawn("sshd", sshd, Terminal::Pipe);
    wait_until(TIMEOUT, "sshd listening", || std::net::TcpStream::connect(("127.0.0.1", port)).ok())
        .unwrap_or_else(|e| fail_with(&e, &mut [&mut sshd]));

    let log = sb.file("moved.log");
    let mut cmd = sb.command(&sb.bins().run, &sb.workdir("run"));
    cmd.arg("--to").arg(format!("ssh://root@127.0.0.1:{port}")).args(flags).arg("--").arg(program).arg(STEPS.to_string()).args(args);
    pmig_env(&mut cmd);
    cmd.env("PMIG_SSH", format!("ssh -F {d}/ssh_config"));
    cmd.env("PMIG_REMOTE_RESUME", format!("{} --log {}", sb.bins().resume.display(), log.display()));
    let mut s = Proc::spawn("pmig-run --to ssh://", cmd, Terminal::Pipe);
    let mut steps = StepCheck::new(1, STEPS, Input::Idle);
    while steps.last() < 5 {
        match s.next_line(TIMEOUT) {
            Ok(Some(l)) => steps.accept(&l).unwrap_or_else(|e| fail_with(&e, &mut [&mut s, &mut sshd])),
            other => fail_with(&format!("no step line: {other:?}"), &mut [&mut s, &mut sshd]),
        };
    }
    s.signal(libc::SIGUSR2).unwrap();
    let st = s.wait_exit(TIMEOUT).unwrap_or_else(|e| fail_with(&e, &mut [&mut s, &mut sshd]));
    assert!(st.success(), "the source must exit 0 once the target has the program: {}", s.describe());
    for l in s.drain_now().unwrap_or_default() {
        steps.accept(&l).unwrap_or_else(|e| fail_with(&e, &mut [&mut s, &mut sshd]));
    }
    let said = s.stderr_text();
    assert!(said.contains("its output goes to") && said.contains("moved.log"), "{said}");
    let pid: i32 = said
        .lines()
        .find_map(|l| l.split(" as pid ").nth(1)?.split(';').next()?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no pid in {said}"));
    // The moved program's output arrives in the log, continuing from the next step to the end.
    let text = wait_until(Duration::from_secs(u64::from(STEPS)) + TIMEOUT, "the moved program's last step", || {
        let t = std::fs::read_to_string(&log).ok()?;
        t.contains(&format!("step {STEPS}\n")).then_some(t)
    })
    .unwrap_or_else(|e| {
        // SAFETY: kill(2) of the moved program this test made.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        fail_with(&e, &mut [&mut s, &mut sshd])
    });
    let mut moved = StepCheck::new(steps.last() + 1, STEPS, Input::Idle);
    for l in text.lines().filter(|l| l.starts_with("step ") || l.contains("CORRUPT")) {
        moved.accept(l).unwrap_or_else(|e| panic!("{e}\nlog:\n{text}"));
    }
    assert!(moved.complete(), "log:\n{text}");
    said
}
