//! Resuming while the original still runs: the restored program's listening address is
//! taken (by the original), so `pmig-resume` refuses, naming the address, and touches
//! nothing; with `--allow-unbound` it restores, warning, and the program goes on without
//! that socket.

use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use pmig_tests::{fail_with, pmig_env, programs, wait_until, Proc, Sandbox, Terminal, CHECKPOINT_TIMEOUT, STEP_TIMEOUT};

/// A server: listens on a free loopback port, says which, then counts.
const SERVER: &str = r#"
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 0)); s.listen(4)
print("port", s.getsockname()[1], flush=True)
for i in range(1, 100000):
    print("step", i, flush=True); time.sleep(0.05)
"#;

/// The next `step N` line of `p`.
fn next_step(p: &mut Proc) -> u32 {
    match p.next_line(STEP_TIMEOUT) {
        Ok(Some(l)) => l.strip_prefix("step ").and_then(|n| n.parse().ok()).unwrap_or_else(|| fail_with(&format!("not a step: {l:?}"), &mut [p])),
        Ok(None) => fail_with("the program ended", &mut [p]),
        Err(e) => fail_with(&e, &mut [p]),
    }
}

#[test]
fn resume_refuses_an_address_the_running_original_holds() {
    let sb = Sandbox::new();
    let image = sb.image("server.pmig");
    let mut cmd = Command::new(&sb.bins().run);
    cmd.arg("--image").arg(&image).arg("--").arg(programs::PYTHON3).arg("-c").arg(SERVER).current_dir(sb.workdir("run"));
    pmig_env(&mut cmd);
    let mut orig = Proc::spawn("pmig-run (server, no --exit)", cmd, Terminal::Pipe);
    let port: u16 = match orig.next_line(STEP_TIMEOUT) {
        Ok(Some(l)) => l.strip_prefix("port ").and_then(|p| p.parse().ok()).unwrap_or_else(|| fail_with(&format!("no port: {l:?}"), &mut [&mut orig])),
        other => fail_with(&format!("no port line: {other:?}"), &mut [&mut orig]),
    };
    next_step(&mut orig);
    orig.signal(libc::SIGUSR2).unwrap_or_else(|e| fail_with(&e, &mut [&mut orig]));
    wait_until(CHECKPOINT_TIMEOUT, "the checkpoint", || orig.stderr_text().contains("checkpoint written").then_some(()))
        .unwrap_or_else(|e| fail_with(&e, &mut [&mut orig]));
    let image_before = std::fs::read(&image).expect("the image");

    // The original holds the port: refused, naming it, with nothing restored.
    let addr = format!("127.0.0.1:{port}");
    let mut cmd = Command::new(&sb.bins().resume);
    cmd.arg(&image).current_dir(sb.workdir("resume"));
    pmig_env(&mut cmd);
    let mut r = Proc::spawn("pmig-resume (port taken)", cmd, Terminal::Pipe);
    let (out, status) = r.finish(CHECKPOINT_TIMEOUT).unwrap_or_else(|e| fail_with(&e, &mut [&mut r, &mut orig]));
    let err = r.stderr_text();
    let refusal = err.lines().find(|l| l.starts_with("pmig-resume:") && l.contains(&addr) && l.contains("EADDRINUSE") && l.contains("--allow-unbound"));
    if status.success() || refusal.is_none() || !out.is_empty() {
        let msg = format!("pmig-resume must refuse, naming {addr} and --allow-unbound, and run nothing; it ended with {status:?}, output {out:?}");
        fail_with(&msg, &mut [&mut r, &mut orig]);
    }
    // The original was not touched: it still serves and counts; the image is the same.
    TcpStream::connect(&addr).unwrap_or_else(|e| fail_with(&format!("the original no longer listens on {addr}: {e}"), &mut [&mut orig]));
    orig.drain_now().unwrap_or_else(|e| fail_with(&e, &mut [&mut orig]));
    next_step(&mut orig);
    assert!(orig.poll_status().is_none(), "the original ended");
    assert!(std::fs::read(&image).expect("the image") == image_before, "the refused restore changed the image");

    // Told to go on: it restores, says so, and the program counts on without the socket.
    let mut cmd = Command::new(&sb.bins().resume);
    cmd.arg("--allow-unbound").arg(&image).current_dir(sb.workdir("resume"));
    pmig_env(&mut cmd);
    let mut r = Proc::spawn("pmig-resume --allow-unbound", cmd, Terminal::Pipe);
    let first = next_step(&mut r);
    let second = next_step(&mut r);
    assert_eq!(second, first + 1, "{}", r.describe());
    wait_until(Duration::from_secs(5), "the warning", || {
        r.stderr_text().lines().any(|l| l.contains("warning") && l.contains(&addr) && l.contains("--allow-unbound")).then_some(())
    })
    .unwrap_or_else(|e| fail_with(&e, &mut [&mut r]));
    next_step(&mut orig);
}
