//! pmig's own lines are never written over: a program whose stderr is a file it writes at
//! an offset (`2>file`) is resumed at that offset, so pmig's lines go to `IMAGE.log`
//! instead, as pmig-run's first line (at the top of the file) says.

use std::process::Command;

use pmig_tests::{fail_with, pmig_env, programs, Proc, Sandbox, Terminal, CHECKPOINT_TIMEOUT, STEP_TIMEOUT};

/// Counts on stdout, and writes the same to stderr.
const TALKER: &str = r#"
import sys, time
for i in range(1, 31):
    print("step", i, flush=True)
    sys.stderr.write("err %d\n" % i); sys.stderr.flush()
    time.sleep(0.05)
"#;

fn read_steps(p: &mut Proc, until: Option<u32>) -> u32 {
    let mut last = 0;
    loop {
        match p.next_line(STEP_TIMEOUT) {
            Ok(Some(l)) => last = l.strip_prefix("step ").and_then(|n| n.parse().ok()).unwrap_or(last),
            Ok(None) => return last,
            Err(e) => fail_with(&e, &mut [p]),
        }
        if until == Some(last) {
            return last;
        }
    }
}

/// Checkpoints `p` (under `pmig-run --exit`) once it printed step 5; it must exit 0.
fn checkpoint_after_step_5(p: &mut Proc) {
    read_steps(p, Some(5));
    p.signal(libc::SIGUSR2).unwrap_or_else(|e| fail_with(&e, &mut [&mut *p]));
    let (_, status) = p.finish(CHECKPOINT_TIMEOUT).unwrap_or_else(|e| fail_with(&e, &mut [&mut *p]));
    assert!(status.success(), "the checkpoint with --exit ended with {status:?}");
}

/// Resumes `image` (no phase log) and checks the program runs to step 30 and exits 0.
fn resume_to_step_30(sb: &Sandbox, image: &std::path::Path) -> Proc {
    let mut cmd = Command::new(&sb.bins().resume);
    cmd.arg(image).current_dir(sb.workdir("resume"));
    pmig_env(&mut cmd);
    cmd.env("PMIG_DEBUG", "0");
    let mut r = Proc::spawn("pmig-resume", cmd, Terminal::Pipe);
    let last = read_steps(&mut r, None);
    let status = r.wait_exit(CHECKPOINT_TIMEOUT).unwrap_or_else(|e| fail_with(&e, &mut [&mut r]));
    assert!(status.success() && last == 30, "the resumed program ended with {status:?} after step {last}: {}", r.describe());
    r
}

#[test]
fn pmig_lines_do_not_share_a_file_the_program_writes_at_an_offset() {
    let sb = Sandbox::new();
    let image = sb.image("talker.pmig");
    let err = sb.file("err.txt");
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(r#"f=$1; shift; exec "$@" 2>"$f""#)
        .arg("sh")
        .arg(&err)
        .arg(&sb.bins().run)
        .arg("--exit")
        .arg("--image")
        .arg(&image)
        .arg("--")
        .arg(programs::PYTHON3)
        .arg("-c")
        .arg(TALKER)
        .current_dir(sb.workdir("run"));
    pmig_env(&mut cmd);
    cmd.env("PMIG_DEBUG", "0");
    let mut p = Proc::spawn("pmig-run 2>err.txt", cmd, Terminal::Pipe);
    checkpoint_after_step_5(&mut p);
    resume_to_step_30(&sb, &image);

    // The file: pmig-run's line, naming where pmig's lines go, then the program's own, intact.
    let text = std::fs::read_to_string(&err).expect("read err.txt");
    let mut lines = text.lines();
    let log = format!("{}.log", image.display());
    let first = lines.next().unwrap_or("");
    assert!(first.starts_with("pmig: running") && first.contains(&log), "first line of err.txt: {first:?}\n{text}");
    let rest: Vec<&str> = lines.collect();
    let want: Vec<String> = (1..=30).map(|i| format!("err {i}")).collect();
    assert_eq!(rest, want, "err.txt holds other than the program's lines:\n{text}");
    // pmig's lines are where that line says.
    let pmig = std::fs::read_to_string(&log).unwrap_or_else(|e| panic!("read {log}: {e}"));
    assert!(pmig.lines().any(|l| l.starts_with("pmig[") && l.contains("checkpoint written")), "{log}: {pmig:?}");
}

/// A warning about something the restore could not make again reaches the user although the
/// program has no stderr (it closed fd 2): a FIFO it holds, removed before the resume, stays
/// closed, and `pmig-resume`'s own stderr says so, naming the FIFO; the program goes on.
#[test]
fn warnings_reach_the_user_when_the_program_has_no_stderr() {
    let sb = Sandbox::new();
    let image = sb.image("no-stderr.pmig");
    let run = sb.workdir("run");
    let fifo = run.join("gone.fifo");
    let script = r#"
import os, sys, time
os.mkfifo('gone.fifo')
fd = os.open('gone.fifo', os.O_RDWR | os.O_NONBLOCK)
os.close(2)
for i in range(1, 31):
    print("step", i, flush=True)
    time.sleep(0.05)
"#;
    let mut cmd = Command::new(&sb.bins().run);
    cmd.args(["--exit", "--image"]).arg(&image).arg("--").arg(programs::PYTHON3).arg("-c").arg(script).current_dir(&run);
    pmig_env(&mut cmd);
    let mut p = Proc::spawn("pmig-run (closes its stderr)", cmd, Terminal::Pipe);
    checkpoint_after_step_5(&mut p);
    std::fs::remove_file(&fifo).expect("remove the FIFO");
    let mut r = resume_to_step_30(&sb, &image);
    let said = r.stderr_text();
    assert!(
        said.lines().any(|l| l.contains("warning") && l.contains("gone.fifo") && l.contains("stays closed")),
        "pmig-resume's stderr must carry the warning about the FIFO:\n{said}"
    );
}
