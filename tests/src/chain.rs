//! [`Chain`]: the checkpoint/resume sequence every end-to-end case runs, and
//! the checks of pmig's contract along it.
//!
//! 1. In `work-run/`, spawn `pmig-run --image <img> --exit -- PROGRAM ARGS`;
//!    read `step` lines up to step K (`first_stop`); check that pmig-run's
//!    stderr names the pid and the image path; send SIGUSR2; read the rest
//!    of its output; it must exit 0 within [`CHECKPOINT_TIMEOUT`] having
//!    printed K' ≥ K steps, and the image must exist.
//! 2. In `work-resume-1/`, spawn `pmig-resume <img>`; its first line must be
//!    `step K'+1` (within [`RESUME_TIMEOUT`]); read `resume_steps` more
//!    steps; SIGUSR2 the pmig-resume pid; it must exit 0, leaving a new
//!    image at the same path.
//! 3. In `work-resume-2/`, resume again: steps continue from the last one
//!    printed, up to the program's last step, then exit 0.
//!
//! After each checkpoint no `<image>.*` temporary file may be left beside
//! the image, and [`ChainOpts::check_image`] runs.  When the sandbox runs as
//! another user, each running process's uids are checked too.
//!
//! Every line of every process goes through one [`StepCheck`], so a
//! repeated, missing or `CORRUPT` step anywhere fails the chain.  A failure
//! panics with a message holding the stdout and stderr of every process of
//! the chain so far.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::process::{describe_status, Proc, Terminal};
use crate::programs::{Input, Program};
use crate::sandbox::{RunAs, Sandbox};
use crate::steps::{input_line, StepCheck};

/// Longest wait for the next `step` line of a running program.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for the first line of a resumed program.
pub const RESUME_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for a process to exit after its checkpoint signal.
pub const CHECKPOINT_TIMEOUT: Duration = Duration::from_secs(30);

/// A check run on the image after each checkpoint; the error goes into the
/// failure message.
pub type ImageCheck<'a> = &'a dyn Fn(&Path) -> Result<(), String>;

/// Knobs of a [`Chain`].
pub struct ChainOpts<'a> {
    /// K: the step after which the first checkpoint is requested.
    pub first_stop: u32,
    /// Steps the first resumed process prints before its checkpoint.
    pub resume_steps: u32,
    /// How stdin/stdout are connected, for every process of the chain.
    pub terminal: Terminal,
    /// Called on the image after each checkpoint (e.g. to bound its size).
    pub check_image: Option<ImageCheck<'a>>,
    /// Extra arguments for every `pmig-resume` (before the image).
    pub resume_args: Vec<String>,
    /// Extra arguments for `pmig-run` (before `--`), e.g. `--compress`.
    pub run_args: Vec<String>,
    /// How long the image rests before each resume (a gap the program must not notice).
    pub pause_before_resume: Duration,
    /// Extra environment for every `pmig-resume` (e.g. `PMIG_DEBUG=1`).
    pub resume_env: Vec<(String, String)>,
    /// Extra environment for `pmig-run` (and so for the program, which keeps it when
    /// resumed).
    pub run_env: Vec<(String, String)>,
}

impl Default for ChainOpts<'_> {
    fn default() -> Self {
        ChainOpts {
            first_stop: 5,
            resume_steps: 3,
            terminal: Terminal::Pipe,
            check_image: None,
            resume_args: Vec::new(),
            run_args: Vec::new(),
            pause_before_resume: Duration::ZERO,
            resume_env: Vec::new(),
            run_env: Vec::new(),
        }
    }
}

/// What a completed (or partial) chain observed.
#[derive(Debug, Clone)]
pub struct ChainReport {
    /// The image path used throughout.
    pub image: PathBuf,
    /// Size of the image after each checkpoint.
    pub image_sizes: Vec<u64>,
    /// The last step printed by each checkpointed process.
    pub checkpoint_steps: Vec<u32>,
    /// What each `pmig-resume` wrote on stderr, once it ended.
    pub resume_stderr: Vec<String>,
    /// What `pmig-run` (and the program under it) wrote on stderr, once it ended.
    pub run_stderr: String,
}

/// A checkpoint/resume chain of one [`Program`] in one [`Sandbox`]; see the
/// module documentation.
pub struct Chain<'a> {
    sb: &'a Sandbox,
    prog: &'a Program,
    opts: ChainOpts<'a>,
    image: PathBuf,
    steps: StepCheck,
    history: Vec<String>,
    report: ChainReport,
    resumes: u32,
}

impl<'a> Chain<'a> {
    /// A chain whose image is `img/<program name>.pmig` in the sandbox.
    pub fn new(sb: &'a Sandbox, prog: &'a Program, opts: ChainOpts<'a>) -> Chain<'a> {
        assert!(
            prog.steps >= opts.first_stop + opts.resume_steps + 10,
            "{}: {} steps are too few for a chain stopping at step {} then {} steps later",
            prog.name,
            prog.steps,
            opts.first_stop,
            opts.resume_steps
        );
        let image = sb.image(&format!("{}.pmig", prog.name));
        Chain {
            sb,
            prog,
            opts,
            steps: StepCheck::new(1, prog.steps, prog.input),
            history: Vec::new(),
            report: ChainReport {
                image: image.clone(),
                image_sizes: Vec::new(),
                checkpoint_steps: Vec::new(),
                resume_stderr: Vec::new(),
                run_stderr: String::new(),
            },
            image,
            resumes: 0,
        }
    }

    /// The image path.
    pub fn image(&self) -> &Path {
        &self.image
    }

    /// Runs all three stages and returns what they observed.
    pub fn run(mut self) -> ChainReport {
        self.start_and_checkpoint();
        self.resume_and_checkpoint();
        self.resume_to_end();
        self.report()
    }

    /// What the chain observed so far.
    pub fn report(&self) -> ChainReport {
        self.report.clone()
    }

    /// Stage 1: run under `pmig-run --exit`, checkpoint after step K.
    /// Returns the last step the process printed.
    pub fn start_and_checkpoint(&mut self) -> u32 {
        let mut p = self.spawn_run(true, &self.sb.workdir("run"));
        self.drive(&mut p, Some(self.opts.first_stop), STEP_TIMEOUT);
        // pmig-run announces the program's pid and the image path on stderr.
        let pid = p.pid().to_string();
        let image = self.image.display().to_string();
        // The line is captured by a reader thread: give it a moment to arrive.
        let announced = crate::wait::wait_until(Duration::from_secs(5), "pmig-run's announcement", || {
            p.stderr_text().lines().any(|l| l.contains(&pid) && l.contains(&image)).then_some(())
        });
        if announced.is_err() {
            let msg = format!("pmig-run's stderr has no line naming pid {pid} and the image path");
            self.fail(&mut p, &msg);
        }
        self.check_identity(&mut p);
        let last = self.checkpoint_and_exit(&mut p);
        self.report.run_stderr = p.stderr_text();
        last
    }

    /// Stage 2 (repeatable): resume, print `resume_steps` steps, checkpoint
    /// again. Returns the last step the process printed.
    pub fn resume_and_checkpoint(&mut self) -> u32 {
        let mut p = self.spawn_next_resume();
        let stop = self.steps.last() + self.opts.resume_steps;
        self.drive(&mut p, Some(stop), RESUME_TIMEOUT);
        self.check_identity(&mut p);
        let last = self.checkpoint_and_exit(&mut p);
        self.report.resume_stderr.push(p.stderr_text());
        last
    }

    /// Stage 3: resume and run to the program's last step and exit 0.
    pub fn resume_to_end(&mut self) {
        let mut p = self.spawn_next_resume();
        self.drive(&mut p, None, RESUME_TIMEOUT);
        let status = match p.wait_exit(CHECKPOINT_TIMEOUT) {
            Ok(status) => status,
            Err(e) => self.fail(&mut p, &e),
        };
        if !status.success() {
            let msg = format!(
                "the last resumed process ended with {}",
                describe_status(status)
            );
            self.fail(&mut p, &msg);
        }
        if !self.steps.complete() {
            let msg = format!(
                "the program exited 0 after step {} of {}",
                self.steps.last(),
                self.prog.steps
            );
            self.fail(&mut p, &msg);
        }
        self.report.resume_stderr.push(p.stderr_text());
        self.history.push(p.describe());
    }

    /// Spawns `pmig-run --image <img> [--exit] -- PROGRAM ARGS` in `cwd`.
    pub fn spawn_run(&self, exit: bool, cwd: &Path) -> Proc {
        let mut cmd = self.sb.command(&self.sb.bins().run, cwd);
        cmd.arg("--image").arg(&self.image);
        if exit {
            cmd.arg("--exit");
        }
        cmd.args(&self.opts.run_args).arg("--").args(&self.prog.argv);
        pmig_env(&mut cmd);
        cmd.envs(self.opts.run_env.iter().map(|(k, v)| (k, v)));
        Proc::spawn(
            &format!("pmig-run ({})", self.prog.name),
            cmd,
            self.opts.terminal,
        )
    }

    /// Spawns `pmig-resume <img>` in `cwd`.
    pub fn spawn_resume(&self, cwd: &Path, label: &str) -> Proc {
        let mut cmd = self.sb.command(&self.sb.bins().resume, cwd);
        cmd.args(&self.opts.resume_args).arg(&self.image);
        pmig_env(&mut cmd);
        cmd.envs(self.opts.resume_env.iter().map(|(k, v)| (k, v)));
        Proc::spawn(label, cmd, self.opts.terminal)
    }

    fn spawn_next_resume(&mut self) -> Proc {
        std::thread::sleep(self.opts.pause_before_resume);
        self.resumes += 1;
        let cwd = self.sb.workdir(&format!("resume-{}", self.resumes));
        let label = format!("pmig-resume #{} ({})", self.resumes, self.prog.name);
        self.spawn_resume(&cwd, &label)
    }

    /// Reads and checks steps (feeding input in lock-step for
    /// [`Input::Lines`]) until step `stop`, or until the process exits when
    /// `stop` is `None`. `first_timeout` bounds the wait for the first line.
    fn drive(&mut self, p: &mut Proc, stop: Option<u32>, first_timeout: Duration) {
        let wants_more = |n: u32, total: u32| n < total && stop.is_none_or(|s| n < s);
        if self.prog.input == Input::Lines && wants_more(self.steps.last(), self.prog.steps) {
            let line = format!("{}\n", input_line(self.steps.expected()));
            if let Err(e) = p.feed(&line) {
                self.fail(p, &e);
            }
        }
        let mut timeout = first_timeout;
        loop {
            if stop == Some(self.steps.last()) {
                return;
            }
            match p.next_line(timeout) {
                Ok(Some(line)) => {
                    timeout = STEP_TIMEOUT;
                    let n = match self.steps.accept(&line) {
                        Ok(n) => n,
                        Err(e) => self.fail(p, &e),
                    };
                    if self.prog.input == Input::Lines && wants_more(n, self.prog.steps) {
                        if let Err(e) = p.feed(&format!("{}\n", input_line(n + 1))) {
                            self.fail(p, &e);
                        }
                    }
                }
                Ok(None) => {
                    if let Some(s) = stop {
                        let msg = format!(
                            "the process exited after step {} without reaching step {s}",
                            self.steps.last()
                        );
                        self.fail(p, &msg);
                    }
                    return;
                }
                Err(e) => {
                    let msg = format!("{e} (waiting for step {})", self.steps.expected());
                    self.fail(p, &msg);
                }
            }
        }
    }

    /// When the sandbox runs as another user, checks that the running
    /// program really has that user's real, effective, saved and filesystem
    /// uids (from `/proc/PID/status`).
    fn check_identity(&mut self, p: &mut Proc) {
        let Some(user) = self.sb.run_as() else {
            return;
        };
        let status_path = format!("/proc/{}/status", crate::process::program_pid(p.pid()));
        let status = match std::fs::read_to_string(&status_path) {
            Ok(s) => s,
            Err(e) => {
                let msg = format!("read {status_path}: {e}");
                self.fail(p, &msg)
            }
        };
        let uids: Vec<String> = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .map(|rest| rest.split_whitespace().map(str::to_string).collect())
            .unwrap_or_default();
        if uids.len() != 4 || uids.iter().any(|u| *u != user.uid.to_string()) {
            let msg = format!(
                "the program runs with uids {uids:?} (real, effective, saved, fs), expected all {}",
                user.uid
            );
            self.fail(p, &msg);
        }
    }

    /// Sends SIGUSR2, checks the remaining output, the exit status 0 and the
    /// image. Returns the last step printed.
    fn checkpoint_and_exit(&mut self, p: &mut Proc) -> u32 {
        let signalled_at = self.steps.last();
        if let Err(e) = p.signal(libc::SIGUSR2) {
            self.fail(p, &e);
        }
        let deadline = Instant::now() + CHECKPOINT_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match p.next_line(left) {
                Ok(Some(line)) => {
                    if let Err(e) = self.steps.accept(&line) {
                        self.fail(p, &e);
                    }
                }
                Ok(None) => break,
                Err(_) => {
                    let msg = format!(
                        "no exit within {CHECKPOINT_TIMEOUT:?} of SIGUSR2 (sent after step {signalled_at})"
                    );
                    self.fail(p, &msg);
                }
            }
        }
        let status = p.poll_status().expect("the process has exited");
        if !status.success() {
            let msg = format!(
                "after SIGUSR2 (sent after step {signalled_at}) the process ended with {}, expected exit status 0",
                describe_status(status)
            );
            self.fail(p, &msg);
        }
        if self.steps.complete() {
            let msg = format!(
                "the program ran to its last step ({}) before checkpointing; give it more steps",
                self.prog.steps
            );
            self.fail(p, &msg);
        }
        let size = match std::fs::metadata(&self.image) {
            Ok(m) if m.is_file() && m.len() > 0 => m.len(),
            Ok(m) => {
                let msg = format!(
                    "the image {} is not a non-empty file ({} bytes)",
                    self.image.display(),
                    m.len()
                );
                self.fail(p, &msg)
            }
            Err(e) => {
                let msg = format!(
                    "no image at {} after the checkpoint exit: {e}",
                    self.image.display()
                );
                self.fail(p, &msg)
            }
        };
        if let Err(e) = check_no_temp_leftovers(&self.image) {
            self.fail(p, &e);
        }
        if let Some(check) = self.opts.check_image {
            if let Err(e) = check(&self.image) {
                self.fail(p, &e);
            }
        }
        self.report.image_sizes.push(size);
        self.report.checkpoint_steps.push(self.steps.last());
        self.history.push(p.describe());
        self.steps.last()
    }

    fn fail(&mut self, current: &mut Proc, msg: &str) -> ! {
        let mut s = format!(
            "[{}] {msg}\n  image: {}\n  processes of this chain:\n",
            self.prog.name,
            self.image.display()
        );
        for h in &self.history {
            s.push_str(h);
        }
        s.push_str(&current.describe());
        panic!("{s}");
    }
}

/// Panics with `msg` followed by the description of each process.
/// Runs the test program `program` through the chain on the unprivileged path: as nobody
/// when the tests run as root (a copy of the program it can run), else as the current user.
pub fn run_chain_unprivileged(name: &str, program: &str, steps: u32) {
    let sb = Sandbox::with_user(RunAs::nobody_if_root());
    let exe = sb.stage(program);
    let prog = Program::new(name, exe.to_str().expect("UTF-8 path"), steps, &[]);
    Chain::new(&sb, &prog, ChainOpts::default()).run();
}

pub fn fail_with(msg: &str, procs: &mut [&mut Proc]) -> ! {
    let mut s = format!("{msg}\n");
    for p in procs.iter_mut() {
        s.push_str(&p.describe());
    }
    panic!("{s}");
}

/// The environment every pmig process of the tests gets: `PMIG_DEBUG`
/// (see [`crate::pmig_debug_value`]) and no `PMIG_PRELOAD`, so the
/// `libpmig.so` beside `pmig-run` is the one tested.
pub fn pmig_env(cmd: &mut Command) {
    cmd.env("PMIG_DEBUG", crate::pmig_debug_value())
        .env_remove("PMIG_PRELOAD")
        .env_remove("PMIG_ENGINE");
}

/// Fails if a file named like `<image>.<something>` (a temporary file of the
/// atomic write) is left beside the image.
fn check_no_temp_leftovers(image: &Path) -> Result<(), String> {
    let dir = image.parent().expect("the image has a parent directory");
    let name = image
        .file_name()
        .expect("the image has a file name")
        .to_string_lossy()
        .into_owned();
    let prefix = format!("{name}.");
    let entries = std::fs::read_dir(dir).map_err(|e| format!("read {}: {e}", dir.display()))?;
    let leftovers: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&prefix))
        .collect();
    if leftovers.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "temporary files left beside the image after the process exited: {}",
            leftovers.join(", ")
        ))
    }
}
