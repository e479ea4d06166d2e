//! Exact ids and credentials: the program cannot tell it was stopped.
//!
//! - `exact_ids*`: the chain (run → checkpoint → resume → checkpoint → resume) of
//!   `exact_ids.c`, as root and as an unprivileged user, with the image resting longer than
//!   the program tolerates as a jump of `CLOCK_MONOTONIC`; and the same program restored with
//!   `--ids virtual` must notice (the test of the test).
//! - `setid*`: set*id calls in a threaded program before and after restores (every thread,
//!   pmig's included, takes the new credentials; a restore gives them back); python3's
//!   `os.setgid` under pmig-run returns.
//! - The pid the user has: signals sent to `pmig-resume` reach the program, and its exit
//!   status (or its death by a signal) comes back through `pmig-resume`.

use std::time::Duration;

use pmig_tests::{pmig_env, programs, Chain, ChainOpts, Proc, Program, RunAs, Sandbox, StepCheck, Terminal, STEP_TIMEOUT};

const STEPS: u32 = 60;

use pmig_tests::is_root;

fn exact_chain(sb: &Sandbox, exe: &str) {
    let prog = Program::new("exact-ids", exe, STEPS, &[]);
    let opts = ChainOpts {
        resume_args: vec!["--ids".into(), "exact".into()],
        // Longer than the 2.5 s jump of CLOCK_MONOTONIC the program tolerates.
        pause_before_resume: Duration::from_secs(3),
        ..ChainOpts::default()
    };
    Chain::new(sb, &prog, opts).run();
}

#[test]
fn exact_ids_chain() {
    exact_chain(&Sandbox::new(), programs::EXACT_IDS);
}

#[test]
fn exact_ids_unprivileged_chain() {
    let run_as = RunAs::nobody_if_root();
    if run_as.is_none() {
        eprintln!("exact_ids_unprivileged_chain: not root, running as the current user");
    }
    let sb = Sandbox::with_user(run_as);
    let exe = sb.stage(programs::EXACT_IDS);
    exact_chain(&sb, exe.to_str().expect("UTF-8 path"));
}

/// With virtual ids the raw ids change: the program must say so (CORRUPT), which shows the
/// exact chain above checks something.
#[test]
fn virtual_ids_are_noticed_by_raw_calls() {
    let sb = Sandbox::new();
    let prog = Program::new("exact-ids-virtual", programs::EXACT_IDS, STEPS, &[]);
    let opts = ChainOpts { resume_args: vec!["--ids".into(), "virtual".into()], ..ChainOpts::default() };
    let mut chain = Chain::new(&sb, &prog, opts);
    chain.start_and_checkpoint();
    let mut cmd = sb.command(&sb.bins().resume, &sb.workdir("resume-virtual"));
    cmd.args(["--ids", "virtual"]).arg(chain.image());
    pmig_env(&mut cmd);
    let mut p = Proc::spawn("pmig-resume --ids virtual", cmd, Terminal::Pipe);
    let (lines, status) = p.finish(Duration::from_secs(30)).expect("the resumed program ends");
    assert!(
        lines.iter().any(|l| l.starts_with("CORRUPT step") && l.contains("raw pid")) && !status.success(),
        "with virtual ids the raw ids must differ and the program must say so; got {status:?} and {lines:?}\n{}",
        p.describe()
    );
}

#[test]
fn setid_chain_as_root() {
    if !is_root() {
        eprintln!("SKIPPED setid_chain_as_root: needs root (it changes groups and ids)");
        return;
    }
    let sb = Sandbox::new();
    let prog = Program::new("setid-root", programs::SETID, STEPS, &[]);
    Chain::new(&sb, &prog, ChainOpts::default()).run();
}

#[test]
fn setid_chain_unprivileged() {
    let sb = Sandbox::with_user(RunAs::nobody_if_root());
    let exe = sb.stage(programs::SETID);
    let prog = Program::new("setid-user", exe.to_str().expect("UTF-8 path"), STEPS, &[]);
    Chain::new(&sb, &prog, ChainOpts::default()).run();
}

#[test]
fn python_setgid_returns_under_pmig() {
    let sb = Sandbox::new();
    let mut cmd = sb.command(&sb.bins().run, &sb.workdir("run"));
    cmd.args(["--", programs::PYTHON3, "-c"])
        .arg("import os, threading\nt = threading.Thread(target=lambda: None); t.start(); t.join()\nos.setgid(os.getgid()); os.setuid(os.getuid())\nprint('step 1', flush=True)");
    pmig_env(&mut cmd);
    let mut p = Proc::spawn("pmig-run python3 setgid", cmd, Terminal::Pipe);
    let (lines, status) = match p.finish(Duration::from_secs(20)) {
        Ok(r) => r,
        Err(e) => panic!("python3's os.setgid did not return under pmig-run: {e}\n{}", p.describe()),
    };
    assert!(status.success() && lines.iter().any(|l| l == "step 1"), "{}", p.describe());
}

/// A signal sent to the pid the user has (pmig-resume's) reaches the program, and the
/// program's end comes back: pmig-resume dies of the same signal. (In the exact mode
/// pmig-resume blocks every signal and only forwards it: it dies because the program did.)
#[test]
fn resume_pid_forwards_signals() {
    for ids in ["exact", "virtual"] {
        let sb = Sandbox::new();
        let prog = Program::new(&format!("counter-{ids}"), programs::COUNTER, 400, &[]);
        let opts = ChainOpts { resume_args: vec!["--ids".into(), ids.into()], ..ChainOpts::default() };
        let mut chain = Chain::new(&sb, &prog, opts);
        let last = chain.start_and_checkpoint();
        let mut cmd = sb.command(&sb.bins().resume, &sb.workdir("resume"));
        cmd.args(["--ids", ids]).arg(chain.image());
        pmig_env(&mut cmd);
        let mut p = Proc::spawn(&format!("pmig-resume --ids {ids}"), cmd, Terminal::Pipe);
        let mut steps = StepCheck::new(last + 1, 400, pmig_tests::Input::Idle);
        for _ in 0..3 {
            let line = p.next_line(STEP_TIMEOUT).expect("a step").expect("the program runs");
            steps.accept(&line).unwrap_or_else(|e| panic!("{e}\n{}", p.describe()));
        }
        p.signal(libc::SIGTERM).expect("signal pmig-resume");
        let status = p.wait_exit(Duration::from_secs(20)).unwrap_or_else(|e| panic!("{e}\n{}", p.describe()));
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGTERM), "ids {ids}: pmig-resume must die of the program's signal\n{}", p.describe());
    }
}

/// The exit status of the program comes back through pmig-resume.
#[test]
fn resume_returns_the_programs_exit_status() {
    let sb = Sandbox::new();
    let script = "import sys, time\nfor i in range(1, int(sys.argv[1]) + 1):\n    print('step', i, flush=True)\n    time.sleep(0.05)\nsys.exit(7)\n";
    let mut prog = Program::new("exit7", programs::PYTHON3, 40, &[]);
    prog.argv = vec![programs::PYTHON3.into(), "-c".into(), script.into(), "40".into()];
    let mut chain = Chain::new(&sb, &prog, ChainOpts { first_stop: 3, resume_steps: 2, ..ChainOpts::default() });
    chain.start_and_checkpoint();
    for ids in ["exact", "virtual"] {
        let mut cmd = sb.command(&sb.bins().resume, &sb.workdir(&format!("resume-{ids}")));
        cmd.args(["--ids", ids]).arg(chain.image());
        pmig_env(&mut cmd);
        let mut p = Proc::spawn(&format!("pmig-resume --ids {ids}"), cmd, Terminal::Pipe);
        let (_, status) = p.finish(Duration::from_secs(30)).unwrap_or_else(|e| panic!("{e}\n{}", p.describe()));
        assert_eq!(status.code(), Some(7), "ids {ids}: pmig-resume must exit with the program's status\n{}", p.describe());
    }
}

/// A terminal keeps working with job control through the pid the user has: in an interactive
/// bash on a pseudo-terminal, `pmig-resume IMAGE` runs in the foreground, Ctrl-Z stops it (the
/// shell says so and no step is printed), `fg` goes on, Ctrl-C ends it (status 130).
#[test]
fn job_control_on_a_terminal() {
    let sb = Sandbox::new();
    let prog = Program::new("counter-tty", programs::COUNTER, 100_000, &[]);
    let mut chain = Chain::new(&sb, &prog, ChainOpts::default());
    chain.start_and_checkpoint();
    let script = r#"
import os, pty, sys, time, select, re
resume, image = sys.argv[1], sys.argv[2]
pid, fd = pty.fork()
if pid == 0:
    os.environ["PS1"] = "PROMPT$ "
    os.execvp("bash", ["bash", "--norc", "--noprofile", "-i"])
buf = b""
def read_for(secs):
    global buf
    end = time.time() + secs
    while time.time() < end:
        r, _, _ = select.select([fd], [], [], 0.05)
        if r:
            try: buf += os.read(fd, 65536)
            except OSError: break
read_for(0.5)
os.write(fd, f"{resume} {image}\n".encode()); read_for(3.0)
print("before", len(re.findall(rb"step \d+", buf)))
os.write(fd, b"\x1a"); read_for(1.0)
print("stopped", int(b"Stopped" in buf))
mark = len(buf); read_for(1.0)
print("while", len(re.findall(rb"step \d+", buf[mark:])))
os.write(fd, b"fg\n"); read_for(1.5)
print("after", len(re.findall(rb"step \d+", buf[mark:])))
os.write(fd, b"\x03"); read_for(1.0)
os.write(fd, b"echo status=$?\n"); read_for(1.0)
m = re.findall(rb"status=(\d+)", buf)
print("status", int(m[-1]) if m else -1)
os.kill(pid, 9)
"#;
    let out = std::process::Command::new(programs::PYTHON3)
        .args(["-c", script])
        .arg(&sb.bins().resume)
        .arg(chain.image())
        .env("PMIG_DEBUG", "")
        .output()
        .expect("run python3");
    let text = String::from_utf8_lossy(&out.stdout);
    let get = |k: &str| text.lines().find_map(|l| l.strip_prefix(k)).and_then(|v| v.trim().parse::<i64>().ok()).unwrap_or(-2);
    assert!(get("before ") > 0, "the resumed program prints on the terminal: {text}");
    assert_eq!(get("stopped "), 1, "Ctrl-Z stops the job and the shell says so: {text}");
    assert_eq!(get("while "), 0, "nothing is printed while the job is stopped: {text}");
    assert!(get("after ") > 0, "fg lets it go on: {text}");
    assert_eq!(get("status "), 130, "Ctrl-C ends it with SIGINT, as the shell sees it: {text}");
}

/// Where no pid namespace can be had (here: a user namespace whose limit on pid namespaces is
/// 0), `pmig-resume` says so in one line and restores with virtual ids; with `--ids exact` it
/// refuses, touching nothing.
#[test]
fn without_namespaces_falls_back_to_virtual_ids_or_refuses() {
    let sb = Sandbox::new();
    let prog = Program::new("counter-no-ns", programs::COUNTER, STEPS, &[]);
    let mut chain = Chain::new(&sb, &prog, ChainOpts::default());
    let last = chain.start_and_checkpoint();
    let image = chain.image().to_path_buf();
    let confined = |extra: &str| {
        let mut cmd = std::process::Command::new("unshare");
        cmd.args(["-U", "-r", "sh", "-c"])
            .arg(format!("echo 0 > /proc/sys/user/max_pid_namespaces && exec \"$0\" {extra} \"$1\""))
            .arg(&sb.bins().resume)
            .arg(&image)
            .current_dir(sb.workdir("confined"));
        pmig_env(&mut cmd);
        cmd
    };
    let out = confined("--ids exact").output().expect("run pmig-resume --ids exact");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("exact ids are not available here") && err.contains("ENOSPC"), "--ids exact must refuse: {err}");
    let mut p = Proc::spawn("pmig-resume (no pid namespaces)", confined(""), Terminal::Pipe);
    let mut steps = StepCheck::new(last + 1, STEPS, pmig_tests::Input::Idle);
    let (lines, status) = p.finish(Duration::from_secs(30)).unwrap_or_else(|e| panic!("{e}\n{}", p.describe()));
    for l in lines {
        steps.accept(&l).unwrap_or_else(|e| panic!("{e}\n{}", p.describe()));
    }
    assert!(status.success() && steps.complete(), "the fallback restore must run the program to its end\n{}", p.describe());
    let said = p.stderr_text();
    assert_eq!(said.matches("restoring with virtual ids").count(), 1, "one line says which mode: {said}");
}
