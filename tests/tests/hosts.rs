//! Moving a live process to *another host*: `pmig-run --to` on a source network namespace,
//! `pmig-resume --listen` on a target one joined to it by a veth pair, the target also in a
//! mount namespace where the source's working directory and the program's executable do not
//! exist (see `pmig_tests::hosts`).  So the sender must carry the files the target lacks (the
//! executable under `SRC`), the receiver must write them and create the working directory,
//! and the program must go on from the next step to its end.
//!
//! Cases: a C counter, pthreads, python3; the carried executable and the working directory
//! as the moved process sees them; a TCP server that answers on the target's address after
//! the move; a sender with a wrong token refused across the link while the receiver stays up;
//! real process trees: a bash pipeline and command substitution, python3's
//! `multiprocessing.Pool` and `subprocess.Popen` with pipes, `make -j2` mid-build, nginx,
//! redis-server during a BGSAVE, PostgreSQL (its data on a file system both hosts see).
//!
//! Every test needs root (network and mount namespaces), `ip` and `unshare`; without them
//! it prints why it is skipped and passes.  `PMIG_TEST_HOSTS_SHARED_FS=1` leaves the
//! source's files visible on the target, to check the harness without file carrying.

use std::ffi::OsStr;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use pmig_tests::hosts::Hosts;
use pmig_tests::programs::MakeProject;
use pmig_tests::services::{
    check_redis_dump, initdb, postgres_argv, postgres_bin, psql_query, redis_slow_save_args, Redis, PSQL, REDIS_SERVER,
};
use pmig_tests::{
    fail_with, pmig_env, programs, wait_until, Input, Proc, Program, RunAs, Sandbox, StepCheck, Terminal,
};

const STEPS: u32 = 60;
const TIMEOUT: Duration = Duration::from_secs(20);

fn token_file(sb: &Sandbox, name: &str, secret: &str) -> PathBuf {
    let p = sb.file(name);
    std::fs::write(&p, secret).expect("write token");
    p
}

/// Starts `pmig-resume --listen DST:0 --token-file TOKEN` on the target and returns it with
/// its port, having checked that the source's directory is not visible to it.
fn start_receiver(hosts: &Hosts, sb: &Sandbox, token: &Path) -> (Proc, u16) {
    start_receiver_with(hosts, sb, token, &[])
}

/// [`start_receiver`] with more options for `pmig-resume` (e.g. `--as-owner`).
fn start_receiver_with(hosts: &Hosts, sb: &Sandbox, token: &Path, extra: &[&str]) -> (Proc, u16) {
    let mut cmd = hosts.on_target(&sb.bins().resume, &sb.workdir("receiver"));
    cmd.arg("--listen")
        .arg(format!("{}:0", hosts.dst_addr))
        .arg("--token-file")
        .arg(token)
        .args(extra);
    pmig_env(&mut cmd);
    let mut r = Proc::spawn("pmig-resume --listen (target)", cmd, Terminal::Pipe);
    let port = pmig_tests::receiver_port(&mut r, &hosts.dst_addr.to_string());
    // The harness's own check: the target must not see SRC, and must see the pmig binaries.
    if hosts.hides_source_files() && Hosts::seen_by(r.pid(), &hosts.src_dir()).exists() {
        fail_with(
            &format!(
                "harness: {} is visible to the receiver",
                hosts.src_dir().display()
            ),
            &mut [&mut r],
        );
    }
    if !Hosts::seen_by(r.pid(), &sb.bins().preload).is_file() {
        fail_with(
            "harness: libpmig.so is not visible to the receiver",
            &mut [&mut r],
        );
    }
    (r, port)
}

/// Starts `pmig-run --to DST:PORT --token-file TOKEN FLAGS -- PROGRAM...` on the source, in
/// `SRC`, as the sandbox's user.
fn start_sender(
    hosts: &Hosts,
    sb: &Sandbox,
    port: u16,
    token: &Path,
    flags: &[&str],
    prog: &Program,
) -> Proc {
    let mut cmd = as_user(sb, |exe| hosts.on_source(exe, &hosts.src_dir()), &sb.bins().run);
    cmd.arg("--to")
        .arg(format!("{}:{port}", hosts.dst_addr))
        .arg("--token-file")
        .arg(token)
        .args(flags)
        .arg("--");
    cmd.args(&prog.argv);
    pmig_env(&mut cmd);
    Proc::spawn(
        &format!("pmig-run --to ({}, source)", prog.name),
        cmd,
        Terminal::Pipe,
    )
}

/// The command `on` makes to run `exe` (e.g. [`Hosts::on_target`]), run as the sandbox's
/// user: through `setpriv` when it is not the current one.
fn as_user(sb: &Sandbox, on: impl FnOnce(&OsStr) -> Command, exe: &Path) -> Command {
    match sb.run_as() {
        None => on(exe.as_os_str()),
        Some(user) => {
            let prefix = user.prefix();
            let mut cmd = on(&prefix[0]);
            cmd.args(&prefix[1..]).arg(exe);
            cmd
        }
    }
}

fn read_steps(p: &mut Proc, steps: &mut StepCheck, until: u32, others: &mut [&mut Proc]) {
    while steps.last() < until {
        let err = match p.next_line(TIMEOUT) {
            Ok(Some(l)) => match steps.accept(&l) {
                Ok(_) => continue,
                Err(e) => e,
            },
            Ok(None) => format!("output ended before step {until}"),
            Err(e) => e,
        };
        let mut all: Vec<&mut Proc> = vec![p];
        all.extend(others.iter_mut().map(|o| &mut **o));
        fail_with(&err, &mut all);
    }
}

/// Waits until the sender exits, or says its move failed (it then goes on running: fail at
/// once with its message rather than time out).
fn wait_moved(s: &mut Proc, r: &mut Proc) {
    let outcome = wait_until(TIMEOUT, "the sender to exit after the move", || {
        if let Some(st) = s.poll_status() {
            return Some(Ok(st));
        }
        let log = s.stderr_text();
        log.lines()
            .find(|l| l.contains("failed") && l.contains("the program goes on"))
            .map(|l| Err(l.to_string()))
    });
    match outcome {
        Ok(Ok(st)) if st.success() => {}
        Ok(Ok(_)) => fail_with(
            "the sender must exit 0 once the receiver confirmed",
            &mut [s, r],
        ),
        Ok(Err(line)) => fail_with(
            &format!("the move failed on the source: {line}"),
            &mut [s, r],
        ),
        Err(e) => fail_with(&e, &mut [s, r]),
    }
}

/// What a test does with the moved program once it printed its first line on the target.
type AfterMove<'a> = &'a mut dyn FnMut(&Hosts, &mut Proc, &mut Proc);

/// Runs `prog` (its paths already under `SRC`) under `pmig-run --to` on the source, moves it
/// after step `stop`, and checks that the target's process goes on from the next step to
/// the end and exits 0. `after` runs once the moved program printed its first line.
fn migrate(hosts: &Hosts, prog: &Program, flags: &[&str], stop: u32, after: AfterMove<'_>) {
    let sb = Sandbox::new();
    let token = token_file(&sb, "token", "a shared secret");
    let (mut r, port) = start_receiver(hosts, &sb, &token);
    let mut s = start_sender(hosts, &sb, port, &token, flags, prog);
    let mut steps = StepCheck::new(1, prog.steps, Input::Idle);
    read_steps(&mut s, &mut steps, stop, &mut [&mut r]);
    move_now(&mut s, &mut r, &mut steps);
    check_moved_to_end(hosts, &mut s, &mut r, steps.last(), prog.steps, after);
}

/// Sends the checkpoint signal, waits for the sender to exit 0 and takes its last lines.
fn move_now(s: &mut Proc, r: &mut Proc, steps: &mut StepCheck) {
    s.signal(libc::SIGUSR2)
        .unwrap_or_else(|e| fail_with(&e, &mut [s, r]));
    wait_moved(s, r);
    for l in s.drain_now().unwrap_or_default() {
        if let Err(e) = steps.accept(&l) {
            fail_with(&e, &mut [s, r]);
        }
    }
}

/// Reads the moved program's output on the target: step `last + 1` first, then every step
/// to `total`, exit 0; runs `after` after the first line.  Checks that the source left no
/// image behind.
fn check_moved_to_end(
    hosts: &Hosts,
    s: &mut Proc,
    r: &mut Proc,
    last: u32,
    total: u32,
    after: AfterMove<'_>,
) {
    let mut moved = StepCheck::new(last + 1, total, Input::Idle);
    match r.next_line(TIMEOUT + TIMEOUT) {
        Ok(Some(l)) => {
            if let Err(e) = moved.accept(&l) {
                fail_with(&e, &mut [s, r]);
            }
        }
        Ok(None) => fail_with(
            "the receiver exited before the moved program printed a line",
            &mut [s, r],
        ),
        Err(e) => fail_with(&e, &mut [s, r]),
    }
    after(hosts, s, r);
    let (lines, status) = r
        .finish(Duration::from_secs(u64::from(total)) + TIMEOUT)
        .unwrap_or_else(|e| fail_with(&e, &mut [s, r]));
    for l in lines {
        if let Err(e) = moved.accept(&l) {
            fail_with(&e, &mut [s, r]);
        }
    }
    if !status.success() || !moved.complete() {
        fail_with(
            "the moved program must run to its end and exit 0",
            &mut [s, r],
        );
    }
    let images: Vec<_> = std::fs::read_dir(hosts.src_dir())
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name())
                .filter(|n| n.to_string_lossy().ends_with(".pmig"))
                .collect()
        })
        .unwrap_or_default();
    assert!(
        images.is_empty(),
        "--to must leave no image file on the source: {images:?}"
    );
}

fn nothing_more(_: &Hosts, _: &mut Proc, _: &mut Proc) {}

/// Makes the two hosts (or skips `test`), and moves the program `prog` gives (its paths
/// under `SRC`) with `flags` after step 5, checking it goes on to its end on the target.
fn move_to_another_host(test: &str, flags: &[&str], prog: impl FnOnce(&Hosts) -> Program) {
    let Some(hosts) = Hosts::new(test) else {
        return;
    };
    migrate(&hosts, &prog(&hosts), flags, 5, &mut nothing_more);
}

/// A live move between the two hosts (`--live`) of a program with 256 MiB that keeps writing
/// (512 KiB every step, about 10 MiB/s) and changing its memory map: its output goes on with
/// no step lost or repeated and it checks all its memory on the target, to its end; the
/// sender reports its pre-copy rounds.
#[test]
fn live_move_to_another_host() {
    let Some(hosts) = Hosts::new("live_move_to_another_host") else {
        return;
    };
    let prog = Program::new("live", hosts.stage(programs::LIVE), 80, &["256", "512"]);
    let mut said = String::new();
    migrate(&hosts, &prog, &["--live"], 15, &mut |_, s, _| said = s.stderr_text());
    assert!(said.contains("pre-copy round 1:") && said.contains("; live: "), "the sender must report its pre-copy:\n{said}");
}

/// Files a program opens after a move has begun (between the handshake, where the files
/// to carry are agreed, and the stop) travel too: bash opens a new file every step and keeps
/// it open, and the move waits 300 ms after the handshake (a test switch) so that several
/// are opened then; the target lacks them all.
#[test]
fn files_opened_during_a_move_are_carried() {
    let Some(hosts) = Hosts::new("files_opened_during_a_move_are_carried") else {
        return;
    };
    const OPENS: &str = "i=0; while [ $i -lt \"$1\" ]; do i=$((i+1)); exec {fd}>\"opened-$i.txt\"; \
         echo \"line $i\" >&$fd; echo step $i; sleep 0.03; done";
    let prog = Program {
        name: "bash-opens".into(),
        argv: ["/usr/bin/env", "PMIG_TEST_MOVE_DELAY_MS=300", "/bin/bash", "-c", OPENS, "bash", &STEPS.to_string()].map(Into::into).to_vec(),
        steps: STEPS,
        input: Input::Idle,
    };
    migrate(&hosts, &prog, &[], 5, &mut nothing_more);
}

#[test]
fn move_counter_to_another_host() {
    move_to_another_host("move_counter_to_another_host", &[], |hosts| {
        Program::new("counter", hosts.stage(programs::COUNTER), STEPS, &[])
    });
}

#[test]
fn move_threads_to_another_host_compressed() {
    move_to_another_host("move_threads_to_another_host_compressed", &["--compress"], |hosts| {
        Program::new("pthreads", hosts.stage(programs::PTHREADS), STEPS, &[])
    });
}

/// A process tree (tree.c: two workers on pipes, shared memory, a shared log file, a zombie)
/// moves whole to the other host.
#[test]
fn move_tree_to_another_host() {
    move_to_another_host("move_tree_to_another_host", &["--compress"], |hosts| {
        Program::new("tree", hosts.stage(programs::TREE), STEPS, &[])
    });
}

/// Two processes sharing sockets and kernel objects (tree_share.c: a socketpair split between
/// them with bytes in flight, a seqpacket pair, an eventfd in an epoll set, a TCP listener,
/// checked with kcmp to stay one of each) move to the other host.
#[test]
fn move_tree_sharing_sockets_to_another_host() {
    move_to_another_host("move_tree_sharing_sockets_to_another_host", &[], |hosts| {
        Program::new("tree-share", hosts.stage(programs::TREE_SHARE), STEPS, &[])
    });
}

/// A file only a child of the tree holds open (in `SRC`, which the target lacks) travels with
/// the tree: the child keeps reading it after the move.
#[test]
fn move_tree_carries_a_childs_files() {
    let Some(hosts) = Hosts::new("move_tree_carries_a_childs_files") else {
        return;
    };
    let script = r#"
import os, sys, time
n = int(sys.argv[1])
with open('child-data.txt', 'w') as f:
    f.write('payload\n')
r, w = os.pipe()
r2, w2 = os.pipe()
if os.fork() == 0:
    f = open('child-data.txt')
    os.close(w); os.close(r2)
    while os.read(r, 1):
        f.seek(0)
        os.write(w2, f.readline().encode())
    os._exit(0)
os.close(r); os.close(w2)
for step in range(1, n + 1):
    os.write(w, b'x')
    got = os.read(r2, 100)
    if got != b'payload\n':
        print('CORRUPT step', step, got, flush=True); sys.exit(3)
    print('step', step, flush=True)
    time.sleep(0.03)
os.close(w)
os.wait()
"#;
    let prog = Program {
        name: "python-child-file".into(),
        argv: vec![programs::PYTHON3.into(), "-c".into(), script.into(), STEPS.to_string().into()],
        steps: STEPS,
        input: Input::Idle,
    };
    migrate(&hosts, &prog, &[], 5, &mut nothing_more);
}

/// python3 itself is on both hosts (only `SRC`, its working directory, is not).
#[test]
fn move_python_to_another_host() {
    move_to_another_host("move_python_to_another_host", &["--compress"], |_| {
        Program::python_threads(STEPS)
    });
}

/// bash running `while …; echo step; sleep; done | cat | cat` (three processes on two pipes, a
/// `sleep` child) moves whole: the pipeline goes on from the next line on the target.
#[test]
fn move_bash_pipeline_to_another_host() {
    move_to_another_host("move_bash_pipeline_to_another_host", &[], |_| {
        Program::bash_pipeline(STEPS)
    });
}

/// bash inside a command substitution (`x=$(sleep 0.03; echo hi)`, its subshell and `sleep`)
/// moves: `x` still gets `hi` on the target.
#[test]
fn move_bash_command_substitution_to_another_host() {
    move_to_another_host("move_bash_command_substitution_to_another_host", &[], |_| {
        Program::bash_substitution(STEPS)
    });
}

/// python3 `multiprocessing.Pool(2)` (worker processes, pipes, a semaphore in shared memory)
/// moves: the pool keeps mapping correctly on the target.
#[test]
fn move_python_multiprocessing_pool_to_another_host() {
    move_to_another_host("move_python_multiprocessing_pool_to_another_host", &[], |_| {
        Program::python_pool(STEPS)
    });
}

/// python3 `subprocess.Popen(['cat'])` with pipes both ways moves with its `cat`: each line
/// comes back on the target, and `cat` exits 0 at the end.
#[test]
fn move_python_subprocess_pipes_to_another_host() {
    move_to_another_host("move_python_subprocess_pipes_to_another_host", &[], |_| {
        Program::python_subprocess(STEPS)
    });
}

/// The executable the sender carried is at its own path on the target, with the source
/// copy's bytes and permissions, and the moved process works in `SRC`, which the receiver
/// created.  Checked with the moved process stopped, so it cannot end meanwhile.
#[test]
fn carried_executable_and_working_directory() {
    let Some(hosts) = Hosts::new("carried_executable_and_working_directory") else {
        return;
    };
    let exe = hosts.stage(programs::COUNTER);
    let prog = Program::new("counter", &exe, 2 * STEPS, &[]);
    let mut check = |hosts: &Hosts, s: &mut Proc, r: &mut Proc| {
        let pid = r.pid();
        r.signal(libc::SIGSTOP)
            .unwrap_or_else(|e| fail_with(&e, &mut [s, r]));
        let stopped = wait_until(TIMEOUT, "the moved process to stop", || {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let state = stat.rsplit_once(") ")?.1.chars().next()?;
            (state == 'T').then_some(())
        });
        if let Err(e) = stopped {
            fail_with(&e, &mut [s, r]);
        }
        let there = Hosts::seen_by(pid, &exe);
        let problem = match (std::fs::read(&there), std::fs::metadata(&there)) {
            (Ok(bytes), Ok(md)) => {
                let want = std::fs::read(&exe).expect("read the source copy");
                let want_mode = std::fs::metadata(&exe)
                    .expect("stat the source copy")
                    .permissions()
                    .mode()
                    & 0o7777;
                if bytes != want {
                    Some(format!(
                        "{} on the target differs from the source copy ({} bytes, not {})",
                        exe.display(),
                        bytes.len(),
                        want.len()
                    ))
                } else if md.permissions().mode() & 0o7777 != want_mode {
                    Some(format!(
                        "{} on the target has mode {:o}, not {want_mode:o}",
                        exe.display(),
                        md.permissions().mode() & 0o7777
                    ))
                } else {
                    None
                }
            }
            (Err(e), _) | (_, Err(e)) => Some(format!(
                "{} is not on the target ({}): {e}",
                exe.display(),
                there.display()
            )),
        };
        let pid = pmig_tests::program_pid(pid);
        let cwd = std::fs::read_link(format!("/proc/{pid}/cwd"));
        let problem = problem.or_else(|| match &cwd {
            Ok(c) if *c == hosts.src_dir() => None,
            Ok(c) => Some(format!(
                "the moved process works in {}, not in {}",
                c.display(),
                hosts.src_dir().display()
            )),
            Err(e) => Some(format!("readlink /proc/{pid}/cwd: {e}")),
        });
        if let Some(p) = problem {
            fail_with(&p, &mut [s, r]);
        }
        r.signal(libc::SIGCONT)
            .unwrap_or_else(|e| fail_with(&e, &mut [s, r]));
    };
    migrate(&hosts, &prog, &[], 5, &mut check);
}

/// The moved TCP server: `python3 -c TCP_SERVER STEPS PORT CLIENTS` listens on
/// 0.0.0.0:PORT; a thread answers each line a client sends with its upper-case, one client
/// at a time, and says `served ...` on stderr when a client hung up; the main thread prints
/// `step N` every 30 ms, and before the last step waits (at most 30 s) until CLIENTS
/// clients were served, else reports CORRUPT.
const TCP_SERVER: &str = r#"
import os, socket, sys, threading, time

def corrupt(msg):
    print("CORRUPT " + msg, flush=True)
    sys.stderr.write("CORRUPT " + msg + "\n")
    sys.stderr.flush()
    os._exit(3)

steps, port, clients = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", port))
srv.listen(8)
served = 0
cond = threading.Condition()

def serve():
    global served
    while True:
        conn, peer = srv.accept()
        lines = 0
        with conn:
            conn.settimeout(10)
            f = conn.makefile("rwb")
            for line in f:
                f.write(line.upper())
                f.flush()
                lines += 1
            f.close()
        sys.stderr.write("served %s, %d lines\n" % (peer[0], lines))
        sys.stderr.flush()
        with cond:
            served += 1
            cond.notify_all()

threading.Thread(target=serve, name="server", daemon=True).start()
for step in range(1, steps + 1):
    if step == steps:
        with cond:
            if not cond.wait_for(lambda: served >= clients, timeout=30):
                corrupt("only %d of %d clients served by the last step" % (served, clients))
    print("step %d" % step, flush=True)
    if step < steps:
        time.sleep(0.03)
"#;

/// The client: `python3 -c TCP_CLIENT HOST PORT TAG` sends three lines and checks each
/// answer is the line in upper case; prints `answer ...` per answer, exits 1 on a wrong one.
const TCP_CLIENT: &str = r#"
import socket, sys
host, port, tag = sys.argv[1], int(sys.argv[2]), sys.argv[3]
c = socket.create_connection((host, port), timeout=10)
f = c.makefile("rwb")
for i in range(3):
    msg = "%s line %d\n" % (tag, i)
    f.write(msg.encode())
    f.flush()
    got = f.readline().decode()
    if got != msg.upper():
        sys.stderr.write("wrong answer %r to %r\n" % (got, msg))
        sys.exit(1)
    print("answer " + got.strip(), flush=True)
f.close()
c.close()
"#;

const SERVER_PORT: u16 = 7171;

/// Runs the client in `cmd` (a network namespace) against `addr`; fails unless it got all
/// three answers.
fn run_client(mut cmd: std::process::Command, addr: &str, tag: &str, others: &mut [&mut Proc]) {
    cmd.args(["-c", TCP_CLIENT, addr, &SERVER_PORT.to_string(), tag]);
    let mut c = Proc::spawn(&format!("client ({tag})"), cmd, Terminal::Pipe);
    let result = c.finish(TIMEOUT);
    let ok = matches!(&result, Ok((lines, st)) if st.success() && lines.len() == 3
        && lines.iter().all(|l| l.starts_with(&format!("answer {}", tag.to_uppercase()))));
    if !ok {
        let mut all: Vec<&mut Proc> = vec![&mut c];
        all.extend(others.iter_mut().map(|o| &mut **o));
        let why = result.err().unwrap_or_else(|| {
            "the client must get an upper-case answer to each of its 3 lines".into()
        });
        fail_with(
            &format!("client {tag} on {addr}:{SERVER_PORT}: {why}"),
            &mut all,
        );
    }
}

/// Whether process `pid`'s network namespace has a TCP listener on `port`
/// (`/proc/<pid>/net/tcp`, state 0A).
fn listening(pid: libc::pid_t, port: u16) -> bool {
    let want = format!(":{port:04X}");
    std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).is_ok_and(|t| {
        t.lines().skip(1).any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[1].ends_with(&want) && f[3] == "0A"
        })
    })
}

/// A TCP server answers a client on the source, moves, and answers a client in the target's
/// namespace on the target's address: its listening socket listens again over there.
#[test]
fn tcp_server_answers_on_the_target_after_the_move() {
    let Some(hosts) = Hosts::new("tcp_server_answers_on_the_target_after_the_move") else {
        return;
    };
    let prog = Program {
        name: "tcp-server".into(),
        argv: vec![
            programs::PYTHON3.into(),
            "-c".into(),
            TCP_SERVER.into(),
            STEPS.to_string().into(),
            SERVER_PORT.to_string().into(),
            "2".into(),
        ],
        steps: STEPS,
        input: Input::Idle,
    };
    let sb = Sandbox::new();
    let token = token_file(&sb, "token", "a shared secret");
    let (mut r, port) = start_receiver(&hosts, &sb, &token);
    let mut s = start_sender(&hosts, &sb, port, &token, &[], &prog);
    let mut steps = StepCheck::new(1, prog.steps, Input::Idle);
    read_steps(&mut s, &mut steps, 2, &mut [&mut r]);

    // On the source: a client is answered, and has hung up before the checkpoint.
    run_client(
        hosts.in_source_net(programs::PYTHON3),
        &hosts.src_addr.to_string(),
        "before",
        &mut [&mut s, &mut r],
    );
    let served = wait_until(
        TIMEOUT,
        "the server to finish with the first client",
        || s.stderr_text().contains("served ").then_some(()),
    );
    if let Err(e) = served {
        fail_with(&e, &mut [&mut s, &mut r]);
    }
    let now = steps.last();
    read_steps(&mut s, &mut steps, now + 2, &mut [&mut r]);
    move_now(&mut s, &mut r, &mut steps);

    // On the target: listening on its port again, and answering on the target's address.
    let mut after = |hosts: &Hosts, s: &mut Proc, r: &mut Proc| {
        let pid = r.pid();
        let l = wait_until(
            TIMEOUT,
            "a listener on the server's port on the target",
            || listening(pid, SERVER_PORT).then_some(()),
        );
        if let Err(e) = l {
            fail_with(&e, &mut [s, r]);
        }
        run_client(
            hosts.in_target_net(programs::PYTHON3),
            &hosts.dst_addr.to_string(),
            "after",
            &mut [s, r],
        );
    };
    check_moved_to_end(&hosts, &mut s, &mut r, steps.last(), prog.steps, &mut after);
    let log = r.stderr_text();
    assert!(
        log.contains(&format!("served {}", hosts.dst_addr)),
        "the moved server must have served the target's client:\n{log}"
    );
}

/// A sender with the wrong token is refused across the link: its program goes on and says
/// why, the receiver logs the refusal with the source's address, and then takes the right
/// sender's program.
#[test]
fn wrong_token_refused_across_hosts() {
    let Some(hosts) = Hosts::new("wrong_token_refused_across_hosts") else {
        return;
    };
    let sb = Sandbox::new();
    let token = token_file(&sb, "token", "the right secret");
    let wrong = token_file(&sb, "wrong", "a wrong secret");
    let (mut r, port) = start_receiver(&hosts, &sb, &token);
    let prog = Program::new("counter", hosts.stage(programs::COUNTER), STEPS, &[]);

    let mut s = start_sender(&hosts, &sb, port, &wrong, &[], &prog);
    let mut steps = StepCheck::new(1, STEPS, Input::Idle);
    read_steps(&mut s, &mut steps, 3, &mut [&mut r]);
    s.signal(libc::SIGUSR2)
        .unwrap_or_else(|e| fail_with(&e, &mut [&mut s, &mut r]));
    let said = wait_until(TIMEOUT, "the sender's failure message", || {
        s.stderr_text()
            .lines()
            .find(|l| l.contains("failed") && l.contains("refused"))
            .map(String::from)
    });
    if let Err(e) = said {
        fail_with(&e, &mut [&mut s, &mut r]);
    }
    let now = steps.last();
    read_steps(&mut s, &mut steps, now + 3, &mut [&mut r]);
    let refused = format!("pmig-resume: refused {}:", hosts.src_addr);
    let logged = wait_until(TIMEOUT, "the receiver's refusal naming the source", || {
        r.stderr_text()
            .lines()
            .any(|l| l.starts_with(&refused))
            .then_some(())
    });
    if let Err(e) = logged {
        fail_with(&e, &mut [&mut s, &mut r]);
    }
    drop(s);

    let mut s = start_sender(&hosts, &sb, port, &token, &[], &prog);
    let mut steps = StepCheck::new(1, STEPS, Input::Idle);
    read_steps(&mut s, &mut steps, 3, &mut [&mut r]);
    move_now(&mut s, &mut r, &mut steps);
    check_moved_to_end(
        &hosts,
        &mut s,
        &mut r,
        steps.last(),
        STEPS,
        &mut nothing_more,
    );
}

/// Starts a receiver on the target where `SRC/<name>` exists with other content than the
/// source's copy; `extra` are more pmig-resume options (e.g. `--root DIR`).
fn start_receiver_with_other_file(hosts: &Hosts, sb: &Sandbox, token: &Path, name: &str, extra: &[&str]) -> (Proc, u16) {
    let src = hosts.src_dir();
    let script = format!(
        "mkdir -p '{s}' && printf 'not the program' > '{s}/{name}' && chmod 755 '{s}/{name}' && exec \"$@\"",
        s = src.display()
    );
    let mut cmd = hosts.on_target("sh", &sb.workdir("receiver"));
    cmd.arg("-c").arg(script).arg("sh").arg(&sb.bins().resume);
    cmd.arg("--listen").arg(format!("{}:0", hosts.dst_addr)).arg("--token-file").arg(token).args(extra);
    pmig_env(&mut cmd);
    let mut r = Proc::spawn("pmig-resume --listen (target, other file)", cmd, Terminal::Pipe);
    let port = pmig_tests::receiver_port(&mut r, &hosts.dst_addr.to_string());
    (r, port)
}

/// A file the program uses that differs on the target is never replaced: the move is refused
/// and says which file (the program goes on on the source); with `--root DIR` the program's
/// copy goes under DIR and the move succeeds, the target's file untouched.
#[test]
fn differing_file_refused_then_placed_under_root() {
    let Some(hosts) = Hosts::new("differing_file_refused_then_placed_under_root") else {
        return;
    };
    if !hosts.hides_source_files() {
        eprintln!("SKIPPED differing_file_refused_then_placed_under_root: the source's files are shared");
        return;
    }
    let sb = Sandbox::new();
    let token = token_file(&sb, "token", "a shared secret");
    let exe = hosts.stage(programs::COUNTER);
    let prog = Program::new("counter", &exe, STEPS, &[]);

    let (mut r, port) = start_receiver_with_other_file(&hosts, &sb, &token, "counter", &[]);
    let mut s = start_sender(&hosts, &sb, port, &token, &[], &prog);
    let mut steps = StepCheck::new(1, STEPS, Input::Idle);
    read_steps(&mut s, &mut steps, 3, &mut [&mut r]);
    s.signal(libc::SIGUSR2).unwrap();
    let said = wait_until(TIMEOUT, "the sender's refusal message", || {
        s.stderr_text().lines().find(|l| l.contains("failed") && l.contains("differ") && l.contains("--root")).map(String::from)
    });
    if let Err(e) = said {
        fail_with(&e, &mut [&mut s, &mut r]);
    }
    let now = steps.last();
    read_steps(&mut s, &mut steps, now + 2, &mut [&mut r]);
    drop(s);
    drop(r);

    let root = sb.file("carried-root");
    std::fs::create_dir_all(&root).unwrap();
    let root_s = root.display().to_string();
    let (mut r, port) = start_receiver_with_other_file(&hosts, &sb, &token, "counter", &["--root", &root_s]);
    let mut s = start_sender(&hosts, &sb, port, &token, &[], &prog);
    let mut steps = StepCheck::new(1, STEPS, Input::Idle);
    read_steps(&mut s, &mut steps, 3, &mut [&mut r]);
    move_now(&mut s, &mut r, &mut steps);
    let first = r.next_line(TIMEOUT).unwrap_or_else(|e| fail_with(&e, &mut [&mut s, &mut r]));
    assert_eq!(first, Some(format!("step {}", steps.last() + 1)), "{}", r.describe());
    let placed = root.join(exe.strip_prefix("/").unwrap());
    let carried = std::fs::read(Hosts::seen_by(r.pid(), &placed)).unwrap_or_else(|e| panic!("{}: {e}", placed.display()));
    assert_eq!(carried, std::fs::read(&exe).unwrap(), "the program's copy must be under --root");
    let theirs = std::fs::read(Hosts::seen_by(r.pid(), &exe)).unwrap_or_default();
    assert_eq!(theirs, b"not the program", "the target's own file must be left alone");
}

/// `--shared-fs` carries nothing: to a target that cannot see the program's files the move is
/// refused before the source lets go (the target checks it can run the program first), and the
/// program goes on on the source.
#[test]
fn shared_fs_carries_nothing_and_target_refuses() {
    let Some(hosts) = Hosts::new("shared_fs_carries_nothing_and_target_refuses") else {
        return;
    };
    if !hosts.hides_source_files() {
        eprintln!("SKIPPED shared_fs_carries_nothing_and_target_refuses: the source's files are shared");
        return;
    }
    let sb = Sandbox::new();
    let token = token_file(&sb, "token", "a shared secret");
    let prog = Program::new("counter", hosts.stage(programs::COUNTER), STEPS, &[]);
    let (mut r, port) = start_receiver(&hosts, &sb, &token);
    let mut s = start_sender(&hosts, &sb, port, &token, &["--shared-fs"], &prog);
    let mut steps = StepCheck::new(1, STEPS, Input::Idle);
    read_steps(&mut s, &mut steps, 3, &mut [&mut r]);
    s.signal(libc::SIGUSR2).unwrap();
    let said = wait_until(TIMEOUT, "the sender's failure message", || {
        s.stderr_text().lines().find(|l| l.contains("failed") && l.contains("missing here")).map(String::from)
    });
    if let Err(e) = said {
        fail_with(&e, &mut [&mut s, &mut r]);
    }
    let now = steps.last();
    read_steps(&mut s, &mut steps, now + 3, &mut [&mut r]);
    assert!(r.poll_status().is_none(), "the receiver must stay up after refusing: {}", r.describe());
}

const HTTP_GET: &str = r#"
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
c.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
data = b""
while True:
    b = c.recv(4096)
    if not b:
        break
    data += b
head, _, body = data.partition(b"\r\n\r\n")
print(head.split(b"\r\n")[0].decode(), body.decode().strip())
"#;

/// `GET /` from inside a network namespace (`cmd`): the status line and the body.
fn http_in(mut cmd: std::process::Command, addr: &str, port: u16) -> Option<String> {
    let out = cmd.args(["-c", HTTP_GET, addr, &port.to_string()]).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// nginx — a master and two workers (as nobody when root), the listener, channels and shared
/// memory between them, its error log open in all three (carried with the tree) — moves to
/// the other host and serves there, from the same two workers.
#[test]
fn move_nginx_to_another_host() {
    let Some(hosts) = Hosts::new("move_nginx_to_another_host") else {
        return;
    };
    if !Path::new("/usr/sbin/nginx").exists() {
        panic!("nginx is not installed (.ci/run installs it: apt-get install nginx-light)");
    }
    let dir = hosts.src_dir().join("nginx");
    std::fs::create_dir_all(&dir).expect("nginx dir");
    let port = SERVER_PORT + 1;
    let conf = programs::nginx_config(&dir, &port.to_string());
    let prog = Program {
        name: "nginx".into(),
        argv: vec!["/usr/sbin/nginx".into(), "-c".into(), conf.clone().into(), "-p".into(), dir.clone().into()],
        steps: 1,
        input: Input::Idle,
    };
    let sb = Sandbox::new();
    let token = token_file(&sb, "token", "a shared secret");
    let (mut r, rport) = start_receiver(&hosts, &sb, &token);
    let mut s = start_sender(&hosts, &sb, rport, &token, &[], &prog);
    let workers = |cmd: &dyn Fn() -> std::process::Command, addr: &str| {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..40 {
            let got = http_in(cmd(), addr, port)?;
            seen.insert(got.strip_prefix("HTTP/1.1 200 OK worker ")?.to_string());
        }
        Some(seen)
    };
    let src = hosts.src_addr.to_string();
    let before = wait_until(TIMEOUT, "nginx's two workers answering on the source", || {
        workers(&|| hosts.in_source_net(programs::PYTHON3), &src).filter(|w| w.len() == 2)
    })
    .unwrap_or_else(|e| fail_with(&e, &mut [&mut s, &mut r]));
    s.signal(libc::SIGUSR2).unwrap_or_else(|e| fail_with(&e, &mut [&mut s, &mut r]));
    wait_moved(&mut s, &mut r);
    let dst = hosts.dst_addr.to_string();
    let after = wait_until(TIMEOUT, "the moved workers answering on the target", || {
        workers(&|| hosts.in_target_net(programs::PYTHON3), &dst).filter(|w| w.len() == 2)
    })
    .unwrap_or_else(|e| fail_with(&e, &mut [&mut s, &mut r]));
    assert_eq!(after, before, "the same two workers must serve on the target");
    r.signal(libc::SIGQUIT).unwrap_or_else(|e| fail_with(&e, &mut [&mut s, &mut r]));
    let st = r.wait_exit(TIMEOUT).unwrap_or_else(|e| fail_with(&e, &mut [&mut s, &mut r]));
    assert!(st.success(), "the moved nginx must stop cleanly on SIGQUIT: {}", r.describe());
}

/// `make -j2` (make, its jobserver pipe, gcc drivers and their cc1/as children) moved to the
/// other host in the middle of a build: the build finishes there, and the program it built
/// prints what an uninterrupted build's prints.  The project is in a [`Sandbox`] directory
/// both hosts see (a shared file system): pmig carries the files the tree's processes use,
/// not the sources make has yet to compile, so from `SRC` the target could not finish.
#[test]
fn move_make_j2_to_another_host() {
    let Some(hosts) = Hosts::new("move_make_j2_to_another_host") else {
        return;
    };
    let sb = Sandbox::new();
    let project = MakeProject::write(&sb.workdir("project"));
    let want = project.expected_output(&sb.workdir("copy"));
    let prog = Program {
        name: "make-j2".into(),
        argv: vec!["/usr/bin/make".into(), "-s".into(), "-j2".into(), "-C".into(), project.dir.clone().into()],
        steps: 0,
        input: Input::Idle,
    };
    let token = token_file(&sb, "token", "a shared secret");
    let (mut r, port) = start_receiver(&hosts, &sb, &token);
    let mut s = start_sender(&hosts, &sb, port, &token, &[], &prog);
    let make = s.pid();
    let compiling = || {
        let kids = std::fs::read_to_string(format!("/proc/{make}/task/{make}/children")).unwrap_or_default();
        !kids.trim().is_empty()
    };
    wait_until(TIMEOUT, "make to build 3 objects and run a compiler", || {
        (project.objects_built() >= 3 && compiling()).then_some(())
    })
    .unwrap_or_else(|e| fail_with(&e, &mut [&mut s, &mut r]));
    s.signal(libc::SIGUSR2).unwrap_or_else(|e| fail_with(&e, &mut [&mut s, &mut r]));
    wait_moved(&mut s, &mut r);
    let built = project.objects_built();
    if built == MakeProject::FILES || project.linked() {
        fail_with(
            &format!("the build ended before the move ({built} objects built); make the project bigger"),
            &mut [&mut s, &mut r],
        );
    }
    let st = r.wait_exit(TIMEOUT + TIMEOUT).unwrap_or_else(|e| fail_with(&e, &mut [&mut s, &mut r]));
    if !st.success() {
        fail_with("the moved make must finish the build and exit 0", &mut [&mut s, &mut r]);
    }
    assert_eq!(project.output(), want, "the built program must print what an uninterrupted build's prints");
}

/// The port redis-server listens on in the two hosts' namespaces.
const REDIS_PORT: u16 = 6379;

/// A redis client from inside network namespace `ns` on `addr:REDIS_PORT`, once redis answers.
fn redis_in(ns: &str, addr: Ipv4Addr) -> Option<Redis> {
    let s = Hosts::connect_from(ns, SocketAddr::from((addr, REDIS_PORT))).ok()?;
    Redis::over(s).ok()?.ping()
}

/// redis-server moved to the other host while its BGSAVE child (a forked process of its tree)
/// writes the dump into `SRC/redis` (its `--dir` and working directory): the half-written
/// temporary file travels with the tree, the child finishes it on the target, redis reports
/// the save ok there, and the dump holds every key (copied out of the target's mount
/// namespace and loaded by a second redis-server).  The save must not have finished on the
/// source.
#[test]
fn move_redis_during_bgsave_to_another_host() {
    let Some(hosts) = Hosts::new("move_redis_during_bgsave_to_another_host") else {
        return;
    };
    if !Path::new(REDIS_SERVER).exists() {
        panic!("redis-server is not installed (.ci/run installs it: apt-get install redis-server)");
    }
    let dir = hosts.src_dir().join("redis");
    std::fs::create_dir(&dir).expect("create SRC/redis");
    let mut argv = vec![REDIS_SERVER.into()];
    argv.extend(redis_slow_save_args(REDIS_PORT, "0.0.0.0", &dir));
    argv.extend(["--protected-mode".into(), "no".into()]);
    let prog = Program { name: "redis-bgsave".into(), argv, steps: 0, input: Input::Idle };
    let sb = Sandbox::new();
    let token = token_file(&sb, "token", "a shared secret");
    let (mut r, port) = start_receiver(&hosts, &sb, &token);
    let mut s = start_sender(&hosts, &sb, port, &token, &[], &prog);
    let mut c = wait_until(TIMEOUT, "redis-server answering PING on the source", || redis_in(&hosts.src_ns, hosts.src_addr))
        .unwrap_or_else(|e| fail_with(&e, &mut [&mut s, &mut r]));
    let n = 1200;
    c.set_keys(n);
    assert_eq!(c.cmd(&["BGSAVE"]).unwrap(), "+Background saving started");
    let pid = s.pid();
    // The child and its temporary file (a file created after the move began is carried
    // too: files_opened_during_a_move_are_carried).
    wait_until(TIMEOUT, "the BGSAVE child and its temporary file", || {
        let kids = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
        let child = kids.split_whitespace().next()?.to_string();
        dir.join(format!("temp-{child}.rdb")).exists().then_some(child)
    })
    .unwrap_or_else(|e| fail_with(&e, &mut [&mut s, &mut r]));
    drop(c);
    s.signal(libc::SIGUSR2).unwrap_or_else(|e| fail_with(&e, &mut [&mut s, &mut r]));
    wait_moved(&mut s, &mut r);
    if dir.join("dump.rdb").exists() {
        fail_with("the save must not have finished on the source", &mut [&mut s, &mut r]);
    }
    let mut c = wait_until(TIMEOUT, "the moved redis answering on the target", || redis_in(&hosts.dst_ns, hosts.dst_addr))
        .unwrap_or_else(|e| fail_with(&e, &mut [&mut s, &mut r]));
    let done = wait_until(TIMEOUT, "the BGSAVE to finish on the target", || {
        let info = c.info_persistence()?;
        info.contains("rdb_bgsave_in_progress:0").then_some(info)
    })
    .unwrap_or_else(|e| fail_with(&e, &mut [&mut s, &mut r]));
    assert!(done.contains("rdb_last_bgsave_status:ok"), "the save finished badly: {done}");
    let copy = sb.workdir("dump");
    let there = Hosts::seen_by(r.pid(), &dir.join("dump.rdb"));
    if let Err(e) = std::fs::copy(&there, copy.join("dump.rdb")) {
        fail_with(&format!("the dump is not on the target ({}): {e}", there.display()), &mut [&mut s, &mut r]);
    }
    let _ = c.cmd(&["SHUTDOWN", "NOSAVE"]);
    let _ = r.wait_exit(TIMEOUT);
    check_redis_dump(&sb, &copy, n);
}

/// PostgreSQL (postmaster, background processes and a client's backend: shared memory,
/// semaphores, latches, the listening sockets they share), run as nobody, moved to the other
/// host with its data directory in a [`Sandbox`] directory both hosts see (a shared file
/// system, as a database's storage would be): the rows written on the source are read on the
/// target, more are written there, and `pg_ctl stop` run on the target (it finds the
/// postmaster by the pid in `postmaster.pid`, which the restore keeps) shuts it down cleanly.
#[test]
fn move_postgres_to_another_host() {
    let Some(hosts) = Hosts::new("move_postgres_to_another_host") else {
        return;
    };
    let Some(bin) = postgres_bin() else {
        panic!("PostgreSQL is not installed (.ci/run installs it: apt-get install postgresql-15)");
    };
    // postgres refuses to run as root (which the hosts need).
    let sb = Sandbox::with_user(Some(RunAs::nobody()));
    let data = sb.workdir("pg").join("data");
    initdb(&sb, &bin, &data, &sb.workdir("pg"));
    // Clients come from the hosts' addresses, not from 127.0.0.1.
    let hba = data.join("pg_hba.conf");
    let mut conf = std::fs::read_to_string(&hba).expect("read pg_hba.conf");
    conf.push_str("host all all 10.0.0.0/8 trust\n");
    std::fs::write(&hba, conf).expect("write pg_hba.conf");
    let port = 5432;
    let prog = Program {
        name: "postgres".into(),
        argv: postgres_argv(&bin, &data, &sb.workdir("pgsock"), port, "*"),
        steps: 0,
        input: Input::Idle,
    };
    let token = token_file(&sb, "token", "a shared secret");
    // The image is of nobody's processes: the receiver (root) restores them as their owner.
    let (mut r, rport) = start_receiver_with(&hosts, &sb, &token, &["--as-owner"]);
    let mut s = start_sender(&hosts, &sb, rport, &token, &[], &prog);
    let src = hosts.src_addr.to_string();
    let on_source = |sql: &str| psql_query(hosts.in_source_net(PSQL), &src, port, sql);
    wait_until(TIMEOUT, "postgres accepting connections on the source", || on_source("select 1").filter(|o| o == "1"))
        .unwrap_or_else(|e| fail_with(&e, &mut [&mut s, &mut r]));
    if on_source("create table t (x int); insert into t select generate_series(1, 1000)").is_none() {
        fail_with("cannot create the table on the source", &mut [&mut s, &mut r]);
    }
    s.signal(libc::SIGUSR2).unwrap_or_else(|e| fail_with(&e, &mut [&mut s, &mut r]));
    wait_moved(&mut s, &mut r);
    let dst = hosts.dst_addr.to_string();
    let on_target = |sql: &str| psql_query(hosts.in_target_net(PSQL), &dst, port, sql);
    let count = wait_until(TIMEOUT, "the moved postgres answering on the target", || on_target("select count(*) from t"))
        .unwrap_or_else(|e| fail_with(&e, &mut [&mut s, &mut r]));
    assert_eq!(count, "1000", "the rows written on the source must be there: {}", r.describe());
    let sum = on_target("insert into t select generate_series(1, 100); select count(*), sum(x) from t");
    assert_eq!(sum.as_deref(), Some("1100|505550"), "rows written on the target: {}", r.describe());
    let mut stop = as_user(&sb, |exe| hosts.on_target(exe, &sb.workdir("pg")), &bin.join("pg_ctl"));
    let out = stop.arg("-D").arg(&data).args(["-m", "fast", "stop"]).output().expect("run pg_ctl");
    if !out.status.success() {
        let why = format!("pg_ctl stop on the target: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        fail_with(&why, &mut [&mut s, &mut r]);
    }
    let st = r.wait_exit(TIMEOUT).unwrap_or_else(|e| fail_with(&e, &mut [&mut s, &mut r]));
    assert!(st.success(), "the moved postgres must shut down cleanly: {}", r.describe());
    assert!(r.stderr_text().contains("database system is shut down"), "{}", r.describe());
    assert!(!data.join("postmaster.pid").exists(), "a clean shutdown removes postmaster.pid");
}
