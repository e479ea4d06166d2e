//! Sessions, process groups and terminals of a tree. Pseudo-terminals a tree made for itself:
//! the pair comes back with its index, settings and queued bytes, and a session leader with
//! its slave as controlling terminal has it again. A process group whose leader had exited
//! is made again.
//!
//! - `pty_chain*`: `pty.c` (a parent typing to its child through a pty the child leads a
//!   session on) through the chain, as root and unprivileged.
//! - `script_runs_a_shell_through_a_pty`: util-linux's `script` running a bash loop that
//!   writes to `/dev/tty`, through the chain.

use pmig_tests::{programs, Chain, ChainOpts, Program, Sandbox};

const STEPS: u32 = 40;

/// Also: `--inspect` names the pty and the session leader's controlling terminal.
#[test]
fn pty_chain() {
    let sb = Sandbox::new();
    let prog = Program::new("pty", programs::PTY, STEPS, &[]);
    let mut chain = Chain::new(&sb, &prog, ChainOpts::default());
    chain.start_and_checkpoint();
    let out = std::process::Command::new(&sb.bins().resume).arg("--inspect").arg(chain.image()).output().expect("run --inspect");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("pty master of /dev/pts/") && text.contains("controlling terminal of the session it leads") && text.contains("opened from its master"),
        "--inspect must show the pty and the child's controlling terminal:\n{text}"
    );
    chain.resume_and_checkpoint();
    chain.resume_to_end();
}

#[test]
fn pty_chain_unprivileged() {
    pmig_tests::run_chain_unprivileged("pty-user", programs::PTY, STEPS);
}

/// `script -qfec CMD /dev/null`: script holds the pty's master and copies what the shell
/// writes to its own stdout; the shell leads a session on the slave. Each step the shell
/// checks its terminal is still the same `/dev/pts/N`, and writes its line through
/// `/dev/tty` (which needs the controlling terminal).
#[test]
fn script_runs_a_shell_through_a_pty() {
    let sb = Sandbox::new();
    let inner = "t=$(tty); i=0; while [ $i -lt \"$1\" ]; do i=$((i+1)); \
                 [ \"$(tty)\" = \"$t\" ] || { echo \"CORRUPT tty $(tty), was $t\"; exit 3; }; \
                 echo step $i > /dev/tty || { echo CORRUPT no controlling terminal; exit 3; }; sleep 0.05; done";
    let cmd = format!("bash -c '{inner}' bash {STEPS}");
    let mut prog = Program::new("script", "/usr/bin/script", STEPS, &[]);
    // (No pmig phase log in the shell: it would land on the terminal, which script copies
    // to its stdout among the steps.)
    prog.argv = vec!["/usr/bin/env".into(), "PMIG_DEBUG=0".into(), "/usr/bin/script".into(), "-qfec".into(), cmd.into(), "/dev/null".into()];
    Chain::new(&sb, &prog, ChainOpts::default()).run();
}

/// A process group whose leader had exited (as a pipeline's, once its first command ended):
/// the root's child A makes group A, forks B into it and exits; after each restore B is still
/// in group A (a helper of that pid makes the group again), and a signal the root sends to
/// the group (`kill(-A)`) reaches B.
#[test]
fn group_whose_leader_exited_chain() {
    let sb = Sandbox::new();
    let script = r#"
import os, signal, sys, time
n = int(sys.argv[1])
req_r, req_w = os.pipe()
ans_r, ans_w = os.pipe()
a = os.fork()
if a == 0:
    os.setpgid(0, 0)
    # (Before the fork: the root may signal the group as soon as A is gone.)
    hits = []
    signal.signal(signal.SIGUSR1, lambda *_: hits.append(1))
    if os.fork() != 0:
        os._exit(0)
    os.close(req_w); os.close(ans_r)
    fin = os.fdopen(req_r, 'r'); fout = os.fdopen(ans_w, 'w', buffering=1)
    for line in fin:
        fout.write(f'{os.getpgid(0)} {len(hits)}\n')
    os._exit(0)
os.waitpid(a, 0)
os.close(req_r); os.close(ans_w)
out = os.fdopen(req_w, 'w', buffering=1); inp = os.fdopen(ans_r, 'r')
for step in range(1, n + 1):
    os.kill(-a, signal.SIGUSR1)
    # (B's handler runs when python gets to it: asked again until it has, a machine under
    # load may take a while; a signal counted twice is still caught.)
    deadline = time.time() + 5
    while True:
        out.write('x\n')
        got = inp.readline().split()
        if got != [str(a), str(step - 1)] or time.time() > deadline:
            break
        time.sleep(0.01)
    if got != [str(a), str(step)]:
        print('CORRUPT step', step, 'group and signals seen', got, 'want', a, step, flush=True); sys.exit(3)
    print('step', step, flush=True)
    time.sleep(0.02)
"#;
    let mut prog = Program::new("python-group", programs::PYTHON3, STEPS, &[]);
    prog.argv = vec![programs::PYTHON3.into(), "-c".into(), script.into(), STEPS.to_string().into()];
    Chain::new(&sb, &prog, ChainOpts::default()).run();
}
