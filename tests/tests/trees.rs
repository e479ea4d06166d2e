//! Process trees: one checkpoint for a program and all of its children, restored with the
//! same pids, parents, pipes between them and zombies.
//!
//! - `tree_chain*`: `tree.c` (a parent, two workers it talks to through pipes, a grandchild
//!   made and reaped every step, a zombie kept until the end) through the chain (run →
//!   checkpoint → resume → checkpoint → resume to the end), as root and unprivileged.
//! - `tree_image_*`: what a tree image holds (`--inspect`), and that a damaged one is refused.

use std::time::Duration;

use pmig_tests::{pmig_env, programs, Chain, ChainOpts, Program, Sandbox};

const STEPS: u32 = 60;

#[test]
fn tree_chain() {
    let sb = Sandbox::new();
    let prog = Program::new("tree", programs::TREE, STEPS, &[]);
    Chain::new(&sb, &prog, ChainOpts::default()).run();
}

/// A tree's image packed (`--compress`): the members' images and the root's all in it.
#[test]
fn tree_chain_packed() {
    let sb = Sandbox::new();
    let prog = Program::new("tree-packed", programs::TREE, STEPS, &[]);
    let check = |image: &std::path::Path| -> Result<(), String> {
        let b = std::fs::read(image).map_err(|e| e.to_string())?;
        if b.starts_with(b"PMIGLZ4\n") { Ok(()) } else { Err("the tree's image is not packed".into()) }
    };
    Chain::new(&sb, &prog, ChainOpts { run_args: vec!["--compress".into()], check_image: Some(&check), ..ChainOpts::default() }).run();
}

#[test]
fn tree_chain_unprivileged() {
    pmig_tests::run_chain_unprivileged("tree-user", programs::TREE, STEPS);
}

/// `--inspect` lists every process of the tree; `--ids virtual` is refused for a tree; a
/// member's image damaged is refused before anything runs.
#[test]
fn tree_image_is_described_and_checked() {
    let sb = Sandbox::new();
    let prog = Program::new("tree-inspect", programs::TREE, STEPS, &[]);
    let mut chain = Chain::new(&sb, &prog, ChainOpts::default());
    chain.start_and_checkpoint();
    let image = chain.image().to_path_buf();
    let out = std::process::Command::new(&sb.bins().resume).arg("--inspect").arg(&image).output().expect("run --inspect");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("tree:") && text.contains("zombie (exit status 7)") && text.matches("running").count() >= 2, "--inspect must show the tree:\n{text}");
    assert_eq!(text.matches("of the tree, child of").count(), 3, "--inspect must describe each other process:\n{text}");
    assert!(text.matches("fds:").count() >= 3, "each process's resources are shown:\n{text}");

    let mut cmd = std::process::Command::new(&sb.bins().resume);
    cmd.args(["--ids", "virtual"]).arg(&image);
    pmig_env(&mut cmd);
    let out = cmd.output().expect("run pmig-resume --ids virtual");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("needs exact ids"), "a tree with virtual ids must be refused: {err}");

    // Flip one byte in the first member's pages (the file starts with it).
    let mut bytes = std::fs::read(&image).unwrap();
    let at = 8192 + 100;
    bytes[at] ^= 0x55;
    let bad = sb.image("tree-bad.pmig");
    std::fs::write(&bad, &bytes).unwrap();
    let out = std::process::Command::new(&sb.bins().resume).arg(&bad).output().expect("run pmig-resume");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("corrupted") && err.contains("process"), "a damaged member must be refused: {err}");
    let _ = Duration::ZERO;
}

/// A tree's image read from stdin (`pmig-resume -`, as through a pipe from another host)
/// makes the whole tree again: the root goes on from the next step to the end.
#[test]
fn tree_image_from_stdin() {
    use pmig_tests::{Input, Proc, StepCheck, Terminal};
    let sb = Sandbox::new();
    let prog = Program::new("tree-stdin", programs::TREE, STEPS, &[]);
    let mut chain = Chain::new(&sb, &prog, ChainOpts::default());
    let last = chain.start_and_checkpoint();
    // (Through sh: the harness gives every process a pipe of its own as stdin.)
    let mut cmd = sb.command(std::path::Path::new("/bin/sh"), &sb.workdir("stdin"));
    cmd.arg("-c").arg("exec \"$0\" - < \"$1\"").arg(&sb.bins().resume).arg(chain.image());
    pmig_env(&mut cmd);
    let mut p = Proc::spawn("pmig-resume - (tree)", cmd, Terminal::Pipe);
    let mut steps = StepCheck::new(last + 1, STEPS, Input::Idle);
    let (lines, status) = p.finish(Duration::from_secs(u64::from(STEPS)) + Duration::from_secs(20)).unwrap_or_else(|e| panic!("{e}\n{}", p.describe()));
    for l in lines {
        steps.accept(&l).unwrap_or_else(|e| panic!("{e}\n{}", p.describe()));
    }
    assert!(status.success() && steps.complete(), "the tree resumed from stdin must run to its end: {}", p.describe());
}

/// bash running a pipeline (`while …; do echo; sleep; done | cat | cat`), checkpointed while a
/// `sleep` child is alive: the pipeline goes on from the next line after each restore.
#[test]
fn bash_pipeline_chain() {
    let sb = Sandbox::new();
    Chain::new(&sb, &Program::bash_pipeline(STEPS), ChainOpts::default()).run();
}

/// bash inside a command substitution (`x=$(sleep 0.3; echo hi)`), checkpointed while the
/// substitution's subshell runs: `x` gets its value after the restore.
#[test]
fn bash_command_substitution_chain() {
    let sb = Sandbox::new();
    Chain::new(&sb, &Program::bash_substitution(STEPS), ChainOpts::default()).run();
}

/// python3 `multiprocessing.Pool(2)` mapping in a loop (pipes, a semaphore in shared memory
/// between the processes, worker processes the pool forked).
#[test]
fn python_multiprocessing_pool_chain() {
    let sb = Sandbox::new();
    Chain::new(&sb, &Program::python_pool(STEPS), ChainOpts::default()).run();
}

/// python3 `subprocess.Popen` with pipes: a `cat` child it writes a line to and reads it back
/// from, every step (pipes between the processes, the child an exec'd program).
#[test]
fn python_subprocess_pipes_chain() {
    let sb = Sandbox::new();
    Chain::new(&sb, &Program::python_subprocess(STEPS), ChainOpts::default()).run();
}

/// `make -j2` building a small C project (make, its jobserver pipe, gcc drivers and their
/// cc1/as/ld children), checkpointed mid-build and resumed elsewhere: the build finishes, and
/// the program it built prints what an uninterrupted build's prints.
#[test]
fn make_j2_finishes_after_restore() {
    use pmig_tests::{programs::MakeProject, wait_until, Proc, Terminal};
    let sb = Sandbox::new();
    let project = MakeProject::write(&sb.workdir("project"));
    let want = project.expected_output(&sb.workdir("copy"));

    let image = sb.image("make.pmig");
    let mut cmd = sb.command(&sb.bins().run, &project.dir);
    cmd.arg("--exit").arg("--image").arg(&image).args(["--", "/usr/bin/make", "-s", "-j2"]);
    pmig_env(&mut cmd);
    let mut run = Proc::spawn("pmig-run make -j2", cmd, Terminal::Pipe);
    wait_until(Duration::from_secs(60), "make to build 3 objects", || (project.objects_built() >= 3).then_some(())).unwrap_or_else(|e| panic!("{e}\n{}", run.describe()));
    assert!(project.objects_built() < MakeProject::FILES, "the build ended before the checkpoint; make the project bigger");
    run.signal(libc::SIGUSR2).unwrap();
    let st = run.wait_exit(Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e}\n{}", run.describe()));
    assert!(st.success(), "make under pmig must exit 0 after the checkpoint\n{}", run.describe());
    assert!(!project.linked(), "the build must not have finished before the checkpoint");
    let inspect = std::process::Command::new(&sb.bins().resume).arg("--inspect").arg(&image).output().unwrap();
    let text = String::from_utf8_lossy(&inspect.stdout);
    assert!(text.contains("gcc") || text.contains("cc1"), "the checkpoint must have caught compilers running under make:\n{text}");
    eprintln!("{}", text.lines().filter(|l| l.starts_with("tree:") || l.starts_with("  ") && l.contains("running")).collect::<Vec<_>>().join("\n"));

    let mut cmd = sb.command(&sb.bins().resume, &sb.workdir("resume"));
    cmd.arg(&image);
    pmig_env(&mut cmd);
    let mut resumed = Proc::spawn("pmig-resume (make)", cmd, Terminal::Pipe);
    let st = resumed.wait_exit(Duration::from_secs(120)).unwrap_or_else(|e| panic!("{e}\n{}", resumed.describe()));
    assert!(st.success(), "the resumed make must finish the build\n{}", resumed.describe());
    assert_eq!(project.output(), want, "the built program must print what an uninterrupted build's prints");
}

/// A child that is not under pmig (started with libpmig taken out of its environment) makes
/// the tree's checkpoint fail, naming it; every process goes on (nothing is killed), even with
/// `--exit`, and no image is written.
#[test]
fn a_child_outside_pmig_fails_the_checkpoint_and_nothing_stops() {
    use pmig_tests::{wait_until, Input, Proc, StepCheck, Terminal};
    let sb = Sandbox::new();
    let image = sb.image("outside.pmig");
    let script = "env -u LD_PRELOAD sleep 1000 & kid=$!; i=0; while [ $i -lt \"$1\" ]; do i=$((i+1)); echo step $i; sleep 0.05; done; \
                  kill -0 $kid || echo CORRUPT the child outside pmig died; kill $kid";
    let mut cmd = sb.command(&sb.bins().run, &sb.workdir("run"));
    cmd.arg("--exit").arg("--image").arg(&image).args(["--", "/bin/bash", "-c", script, "bash", "150"]);
    pmig_env(&mut cmd);
    let mut p = Proc::spawn("pmig-run bash (child outside pmig)", cmd, Terminal::Pipe);
    let mut steps = StepCheck::new(1, 150, Input::Idle);
    for _ in 0..5 {
        let l = p.next_line(Duration::from_secs(10)).unwrap().expect("a step");
        steps.accept(&l).unwrap_or_else(|e| panic!("{e}\n{}", p.describe()));
    }
    p.signal(libc::SIGUSR2).unwrap();
    wait_until(Duration::from_secs(30), "the checkpoint to fail naming the sleep child", || {
        let err = p.stderr_text();
        (err.contains("checkpoint failed") && err.contains("(sleep)")).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", p.describe()));
    let (lines, status) = p.finish(Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e}\n{}", p.describe()));
    for l in lines {
        steps.accept(&l).unwrap_or_else(|e| panic!("{e}\n{}", p.describe()));
    }
    assert!(status.success() && steps.complete(), "the tree must go on to its end after the failed checkpoint\n{}", p.describe());
    assert!(!image.exists(), "a failed checkpoint writes no image");
}

/// Sockets and kernel objects two processes share (`tree_share.c`: a socketpair split
/// between them with bytes in flight, a seqpacket pair both hold, an eventfd in an epoll set,
/// a TCP listener) come back as one object each, shared again (the program checks with kcmp).
#[test]
fn tree_shared_sockets_chain() {
    let sb = Sandbox::new();
    let prog = Program::new("tree-share", programs::TREE_SHARE, STEPS, &[]);
    Chain::new(&sb, &prog, ChainOpts::default()).run();
}

#[test]
fn tree_shared_sockets_chain_unprivileged() {
    pmig_tests::run_chain_unprivileged("tree-share-user", programs::TREE_SHARE, STEPS);
}

/// python3 `multiprocessing.Pipe()` (a socketpair, one end in each process) and a
/// `socket.socketpair()` both processes hold, through the chain.
#[test]
fn python_socketpair_between_processes_chain() {
    let sb = Sandbox::new();
    let script = r#"
import multiprocessing as mp, os, socket, sys, time
def serve(conn, b):
    while True:
        x = conn.recv()
        if x is None:
            return
        b.send(b'x%d' % x)
        conn.send(x * 2)
if __name__ == '__main__':
    n = int(sys.argv[1])
    a, b = socket.socketpair()
    here, there = mp.Pipe()
    p = mp.Process(target=serve, args=(there, b))
    p.start()
    there.close()
    for step in range(1, n + 1):
        here.send(step)
        got = here.recv()
        side = a.recv(64)
        if got != step * 2 or side != b'x%d' % step:
            print('CORRUPT step', step, got, side, flush=True); sys.exit(3)
        print('step', step, flush=True)
        time.sleep(0.03)
    here.send(None)
    p.join()
    if p.exitcode != 0:
        print('CORRUPT child exit', p.exitcode, flush=True); sys.exit(3)
"#;
    let mut prog = Program::new("python-socketpair", programs::PYTHON3, STEPS, &[]);
    prog.argv = vec![programs::PYTHON3.into(), "-c".into(), script.into(), STEPS.to_string().into()];
    Chain::new(&sb, &prog, ChainOpts::default()).run();
}

/// A process that daemonized out of the tree (fork, setsid, fork: its parent exited and init
/// took it) is still the tree's: checkpointed with it and made again (as a child of the
/// namespace's init), still serving the root through the pipes between them, in the session
/// and process group it made (whose leader had exited: pmig-resume makes them again with a
/// helper of that pid) and no child of the root.
#[test]
fn daemonized_process_stays_with_the_tree() {
    let sb = Sandbox::new();
    let script = r#"
import os, sys, time
n = int(sys.argv[1])
root = os.getpid()
root_sid = os.getsid(0)
req_r, req_w = os.pipe()
ans_r, ans_w = os.pipe()
pid = os.fork()
if pid == 0:
    os.setsid()
    if os.fork() != 0:
        os._exit(0)
    # Its session and group are its exited parent's, and stay so.
    sid, pgid = os.getsid(0), os.getpgid(0)
    os.close(req_w); os.close(ans_r)
    fin = os.fdopen(req_r, 'r'); fout = os.fdopen(ans_w, 'w', buffering=1)
    for line in fin:
        now = (os.getsid(0), os.getpgid(0))
        if now != (sid, pgid) or sid == root_sid or sid == os.getpid() or os.getppid() == root:
            fout.write(f'lost: session/group {now} (was {(sid, pgid)}), parent {os.getppid()}\n')
        else:
            fout.write(str(int(line) * 2) + '\n')
    os._exit(0)
os.waitpid(pid, 0)
os.close(req_r); os.close(ans_w)
out = os.fdopen(req_w, 'w', buffering=1); inp = os.fdopen(ans_r, 'r')
for step in range(1, n + 1):
    out.write(f'{step}\n')
    got = inp.readline()
    if got != f'{step * 2}\n':
        print('CORRUPT step', step, repr(got), flush=True); sys.exit(3)
    print('step', step, flush=True)
    time.sleep(0.03)
"#;
    let mut prog = Program::new("python-daemon", programs::PYTHON3, STEPS, &[]);
    prog.argv = vec![programs::PYTHON3.into(), "-c".into(), script.into(), STEPS.to_string().into()];
    Chain::new(&sb, &prog, ChainOpts::default()).run();
}

/// System V IPC between the processes of a tree (`sysv_tree.c`: a message queue with
/// messages in flight, a semaphore set used to wait and to count): after each checkpoint the
/// test removes both objects (as on another host, or after a reboot), and the resume makes
/// them again from the image — as root with their ids — with their messages and values.
#[test]
fn sysv_ipc_between_processes_chain() {
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED sysv_ipc_between_processes_chain: needs root (only root may give System V objects their ids back)");
        return;
    }
    let sb = Sandbox::new();
    let prog = Program::new("sysv-tree", programs::SYSV_TREE, STEPS, &[]);
    let remove = |image: &std::path::Path| -> Result<(), String> {
        let img = pmig_image::verify_file(image).map_err(|e| format!("{e}"))?;
        let mut n = 0;
        for (_, p) in img.processes() {
            for o in &p.manifest.sysv {
                // SAFETY: IPC_RMID on an id the program's image names (the test's own objects).
                unsafe {
                    match o.kind {
                        pmig_image::SysvKind::Semaphores { .. } => libc::semctl(o.id, 0, libc::IPC_RMID),
                        pmig_image::SysvKind::Messages { .. } => libc::msgctl(o.id, libc::IPC_RMID, std::ptr::null_mut()),
                    };
                }
                n += 1;
            }
        }
        // Each process saves both: the parent's and the child's copies of the table.
        if n < 2 {
            return Err(format!("the image holds {n} System V objects, not the queue and the semaphore set"));
        }
        Ok(())
    };
    let opts = ChainOpts { check_image: Some(&remove), ..ChainOpts::default() };
    Chain::new(&sb, &prog, opts).run();
}
