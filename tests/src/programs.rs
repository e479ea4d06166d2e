//! The helper programs the end-to-end tests checkpoint, and [`Program`], the
//! description of one run of them.
//!
//! The C programs are built from `tests/programs/*.c` by `build.rs`; see the
//! banner of each source for what it exercises.  Every program takes the
//! step count as its first argument, prints `step N` once per step, checks
//! its own memory every step (`CORRUPT ...` and exit 3 on a mismatch) and
//! exits 0 after the last step.  `rust-threads` is this package's binary
//! (its path is only known to integration tests, through
//! `env!("CARGO_BIN_EXE_rust-threads")`); the Python program is
//! [`PYTHON_THREADS`].

use std::ffi::OsString;
use std::path::Path;

/// `counter STEPS`: globals, stack, sbrk, malloc and mmap, allocating every step.
pub const COUNTER: &str = env!("PMIG_TEST_PROG_COUNTER");
/// `pthreads STEPS`: four workers, mutex + condvars, `__thread`, `pthread_kill`.
pub const PTHREADS: &str = env!("PMIG_TEST_PROG_PTHREADS");
/// `signals STEPS`: SIGALRM interval timer, SIGUSR1 handler, SIGHUP blocked.
pub const SIGNALS: &str = env!("PMIG_TEST_PROG_SIGNALS");
/// `files STEPS DATA LOG`: fds 7/12/20 on two regular files.
pub const FILES: &str = env!("PMIG_TEST_PROG_FILES");
/// `sleeper STEPS nanosleep|poll|read`: blocked in a system call.
pub const SLEEPER: &str = env!("PMIG_TEST_PROG_SLEEPER");
/// `sparse STEPS`: 1 GiB NORESERVE mapping with 16 MiB touched.
pub const SPARSE: &str = env!("PMIG_TEST_PROG_SPARSE");
/// `kernel_fds.c`: pipes with queued bytes, dup'd fds, eventfd, timerfd, epoll, signalfd,
/// a deleted file, a memfd, /dev/null, a shared O_APPEND offset.
pub const KERNEL_FDS: &str = env!("PMIG_TEST_PROG_KERNEL_FDS");
/// `holds_pidfd.c`: a counter holding a pidfd (not restorable yet).
pub const HOLDS_PIDFD: &str = env!("PMIG_TEST_PROG_HOLDS_PIDFD");
/// `inotify.c`: an inotify watch that must keep reporting events.
pub const INOTIFY: &str = env!("PMIG_TEST_PROG_INOTIFY");
/// `shm.c`: memfd, deleted-file, anonymous and POSIX shm mappings shared.
pub const SHM: &str = env!("PMIG_TEST_PROG_SHM");
/// `posix_timers.c`: SIGEV_SIGNAL, SIGEV_THREAD and SIGEV_NONE timers.
pub const POSIX_TIMERS: &str = env!("PMIG_TEST_PROG_POSIX_TIMERS");
/// `sysv_shm.c`: a keyed SysV segment and one marked for removal.
pub const SYSV_SHM: &str = env!("PMIG_TEST_PROG_SYSV_SHM");
/// `sockets.c`: listeners, datagram sockets, UNIX sockets, socketpairs, TCP connections.
pub const SOCKETS: &str = env!("PMIG_TEST_PROG_SOCKETS");
/// `ids.c`: getpid/gettid/getppid, kill, tgkill and /proc/<pid> across restores.
pub const IDS: &str = env!("PMIG_TEST_PROG_IDS");
/// `interrupted STEPS MODE`: waits in one blocking call per step (poll, select, epoll, the
/// sleeps, System V IPC, socket timeouts...) and treats EINTR or an early return as fatal.
pub const INTERRUPTED: &str = env!("PMIG_TEST_PROG_INTERRUPTED");

/// `exact_ids.c`: raw ids, mutex owners, CPU clocks, /proc/self/task, SIGEV_THREAD_ID, kcmp,
/// SO_PEERCRED, a forked child, CLOCK_MONOTONIC without jumps.
pub const EXACT_IDS: &str = env!("PMIG_TEST_PROG_EXACT_IDS");
/// `setid.c`: set*id calls in a threaded program; every thread takes the credentials.
pub const SETID: &str = env!("PMIG_TEST_PROG_SETID");
/// `bigheap STEPS MIB`: MIB MiB of heap filled with a pattern, checked every step.
pub const BIGHEAP: &str = env!("PMIG_TEST_PROG_BIGHEAP");

/// `badptr STEPS`: wrapped calls given bad pointers must fail with EFAULT.
pub const BADPTR: &str = env!("PMIG_TEST_PROG_BADPTR");

/// `stress STEPS threads N | STEPS forks`: N busy threads, or a thread that forks and execs
/// without pause, to checkpoint again and again.
pub const STRESS: &str = env!("PMIG_TEST_PROG_STRESS");

/// `static_prog`: statically linked (no libc); prints `ran` and exits 0.
pub const STATIC_PROG: &str = env!("PMIG_TEST_PROG_STATIC_PROG");

/// `tree.c`: a parent, two workers on pipes, a grandchild per step, a zombie.
pub const TREE: &str = env!("PMIG_TEST_PROG_TREE");

/// `tree_share.c`: a parent and a child sharing a split socketpair, a seqpacket pair, an
/// eventfd in an epoll set and a TCP listener (checked with kcmp to stay one of each).
pub const TREE_SHARE: &str = env!("PMIG_TEST_PROG_TREE_SHARE");

/// `attrs.c`: process and per-thread attributes (nice, policy, affinity, ioprio, timer
/// slack, pdeathsig, personality, no_new_privs, oom_score_adj, THP, subreaper), checked.
pub const ATTRS: &str = env!("PMIG_TEST_PROG_ATTRS");

/// `fileattrs.c`: deleted files (mode, times, two descriptions of one) and memfds (mode,
/// size, seals), checked.
pub const FILEATTRS: &str = env!("PMIG_TEST_PROG_FILEATTRS");

/// `epoll_stale.c`: two epoll registrations under one fd number, for two files.
pub const EPOLL_STALE: &str = env!("PMIG_TEST_PROG_EPOLL_STALE");

/// `unix_dgram.c`: a UNIX datagram client aimed at an in-program server bound to a chmodded
/// path.
pub const UNIX_DGRAM: &str = env!("PMIG_TEST_PROG_UNIX_DGRAM");

/// `memflags.c`: MAP_NORESERVE, madvise flags and mlock on regions, checked in smaps.
pub const MEMFLAGS: &str = env!("PMIG_TEST_PROG_MEMFLAGS");

/// `locks.c`: flock, POSIX record locks and an OFD lock, checked from another process.
pub const LOCKS: &str = env!("PMIG_TEST_PROG_LOCKS");

/// `sysv_tree.c`: a parent and a child on a System V message queue and semaphore set.
pub const SYSV_TREE: &str = env!("PMIG_TEST_PROG_SYSV_TREE");

/// Debian's perl.
pub const PERL: &str = "/usr/bin/perl";

/// The perl program, run as `perl -e PERL_LOOP STEPS FILE`: a loop over a file (append a
/// line, read the whole file back, check every line) and a growing hash, checked each step.
pub const PERL_LOOP: &str = r#"
$| = 1;
my ($steps, $path) = @ARGV;
open(my $f, "+>", $path) or die "open $path: $!";
my %h;
sub corrupt { print "CORRUPT $_[0]
"; print STDERR "CORRUPT $_[0]
"; exit 3 }
for my $s (1 .. $steps) {
    seek($f, 0, 2);
    print $f "line $s
";
    $h{$s} = "v$s" x 10;
    for my $k (1 .. $s) { corrupt("hash entry $k") unless $h{$k} eq "v$k" x 10 }
    seek($f, 0, 0);
    my @l = <$f>;
    corrupt("file has " . scalar(@l) . " lines at step $s") unless @l == $s;
    for my $i (0 .. $#l) { corrupt("file line $i is $l[$i]") unless $l[$i] eq "line " . ($i + 1) . "
" }
    print "step $s
";
    select(undef, undef, undef, 0.03) if $s < $steps;
}
"#;

/// Debian's sqlite3 command-line shell.
pub const SQLITE3: &str = "/usr/bin/sqlite3";

/// Debian's Python; used by path so no pyenv shim is involved.
pub const PYTHON3: &str = "/usr/bin/python3";

/// The Python program, run as `/usr/bin/python3 -u -c PYTHON_THREADS STEPS`:
/// three `threading.Thread` workers take jobs from a `queue.Queue` and
/// answer on another; the main thread checks every answer and a
/// `bytearray` pattern, prints `step N` and sleeps 30 ms.
pub const PYTHON_THREADS: &str = r#"
import os, queue, sys, threading, time

def corrupt(msg):
    print("CORRUPT " + msg, flush=True)
    sys.stderr.write("CORRUPT " + msg + "\n")
    sys.stderr.flush()
    os._exit(3)

def work(step, k):
    return sum((i * (step * 7 + k + 1)) % 1009 for i in range(3000))

def pattern(step):
    return bytes(((i * 31) ^ step) & 0xFF for i in range(8192))

WORKERS = 3
steps = int(sys.argv[1])
jobs = queue.Queue()
answers = queue.Queue()
local = threading.local()

def worker(wid):
    local.wid = wid
    done = 0
    while True:
        job = jobs.get()
        if job is None:
            answers.put(("done", wid, done))
            return
        if local.wid != wid:
            corrupt("worker %d: thread-local id is %r" % (wid, local.wid))
        step, k = job
        done += 1
        answers.put((step, k, work(step, k)))

threads = [threading.Thread(target=worker, args=(w,), name="worker-%d" % w) for w in range(WORKERS)]
for t in threads:
    t.start()

blob = bytearray(pattern(0))
for step in range(1, steps + 1):
    if blob != pattern(step - 1):
        corrupt("bytearray lost the pattern of step %d" % (step - 1))
    for k in range(WORKERS):
        jobs.put((step, k))
    got = {}
    for _ in range(WORKERS):
        s, k, r = answers.get(timeout=10)
        if s != step or k in got:
            corrupt("step %d: unexpected answer %r" % (step, (s, k)))
        got[k] = r
    for k in range(WORKERS):
        if got[k] != work(step, k):
            corrupt("step %d: wrong answer for job %d" % (step, k))
    blob[:] = pattern(step)
    print("step %d" % step, flush=True)
    if step < steps:
        time.sleep(0.03)

for _ in threads:
    jobs.put(None)
total = 0
for _ in threads:
    tag, wid, done = answers.get(timeout=10)
    if tag != "done":
        corrupt("unexpected final answer %r" % ((tag, wid, done),))
    total += done
for t in threads:
    t.join(timeout=10)
    if t.is_alive():
        corrupt("%s did not finish" % t.name)
if total != steps * WORKERS:
    corrupt("workers did %d jobs, expected %d" % (total, steps * WORKERS))
"#;

/// What a program's stdin carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// Nothing: stdin is an idle pipe (or terminal) the program never reads.
    Idle,
    /// One line `line-N` per step, fed in lock-step: line N+1 is written
    /// only after `step N line-N` has been read back, and never while a
    /// checkpoint is pending.  For `sleeper STEPS read`.
    Lines,
}

/// One run of a helper program: the command line to give after `pmig-run
/// ... --`, its step count and what its stdin carries.
#[derive(Debug, Clone)]
pub struct Program {
    /// A short name for messages, e.g. `counter` or `sleeper-read-pty`.
    pub name: String,
    /// argv, executable first.
    pub argv: Vec<OsString>,
    /// The step count given to the program.
    pub steps: u32,
    /// What its stdin carries.
    pub input: Input,
}

impl Program {
    /// `exe STEPS extra...`, with an idle stdin.
    pub fn new(name: &str, exe: impl AsRef<Path>, steps: u32, extra: &[&str]) -> Program {
        let mut argv = vec![
            exe.as_ref().as_os_str().to_os_string(),
            steps.to_string().into(),
        ];
        argv.extend(extra.iter().map(OsString::from));
        Program {
            name: name.to_string(),
            argv,
            steps,
            input: Input::Idle,
        }
    }

    /// `/usr/bin/python3 -c PYTHON_THREADS STEPS`. Not `-u`: unbuffered, `print` writes a
    /// line's text and its newline in two writes, which a checkpoint can fall between — the
    /// line then ends in the next process's output, which the step check reads as an empty
    /// line. `flush=True` makes each line one write.
    pub fn python_threads(steps: u32) -> Program {
        Program {
            name: "python-threads".to_string(),
            argv: vec![
                PYTHON3.into(),
                "-c".into(),
                PYTHON_THREADS.into(),
                steps.to_string().into(),
            ],
            steps,
            input: Input::Idle,
        }
    }

    /// `/usr/bin/perl -e PERL_LOOP STEPS FILE`.
    pub fn perl_loop(steps: u32, file: &Path) -> Program {
        Program {
            name: "perl-loop".to_string(),
            argv: vec![PERL.into(), "-e".into(), PERL_LOOP.into(), steps.to_string().into(), file.as_os_str().into()],
            steps,
            input: Input::Idle,
        }
    }

    /// The same program, fed one line per step on stdin.
    pub fn reading_lines(mut self) -> Program {
        self.input = Input::Lines;
        self
    }

    /// Appends an argument.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Program {
        self.argv.push(arg.into());
        self
    }
}

/// Writes `DIR/nginx.conf` for Debian's nginx run in the foreground with a master and two
/// workers listening on `listen`, every path under `DIR`, each answer `worker PID`; returns
/// its path.
pub fn nginx_config(dir: &std::path::Path, listen: &str) -> std::path::PathBuf {
    let conf = dir.join("nginx.conf");
    let d = dir.display();
    std::fs::write(
        &conf,
        format!(
            "daemon off; master_process on; worker_processes 2; pid {d}/nginx.pid; error_log {d}/error.log info;\n\
             events {{ worker_connections 64; }}\n\
             http {{ access_log off; client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fcgi;\n\
             uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n\
             server {{ listen {listen}; location / {{ return 200 \"worker $pid\\n\"; }} }} }}\n"
        ),
    )
    .expect("write nginx.conf");
    conf
}
