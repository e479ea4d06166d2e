//! `pmig-resume`: becomes a saved process.
//!
//! Everything a user sees happens here, before the current process is touched: the image is
//! verified end to end (structure, every checksum), the host is checked (CPU features, kernel
//! vdso, the files the process mapped), and a restore *plan* is written to a memfd. Only then
//! does it exec the restore engine, which replaces the address space with the saved one.

/// One line to stderr in a single write: with `--keep-listening` the forked restorers
/// write to the same stderr, and lines written piecewise would interleave.
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let line = format!("{}\n", format_args!($($t)*));
        let _ = std::io::stderr().write_all(line.as_bytes());
    }};
}

mod ns;
mod plan;
mod receive;

use anyhow::{bail, Context, Result};
use pmig_image::{verify_file, FileKind, RegionKind, VerifiedImage};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{exit, Command};

const USAGE: &str = "usage: pmig-resume [--inspect] IMAGE|-
       pmig-resume --listen [ADDR:]PORT --token-file FILE [--keep-listening] [--as-owner] [--root DIR]

Turns this process into the program saved in IMAGE (written by a checkpoint of a program run
under pmig-run), which then goes on where it stopped, with this process's pid, and with this
process's stdin, stdout and stderr in place of the saved terminal, pipe or socket ones.

  -                 read the image from standard input (cat app.pmig | ssh host pmig-resume -)
  --inspect         print what the image holds and exit, restoring nothing
  --listen [ADDR:]PORT
                    wait for one program sent by `pmig-run --to` and become it; prints one
                    line when ready. A bare port listens on loopback (127.0.0.1); give an
                    address only on a network you trust.
  --token-file FILE the secret a sender must prove it knows (required with --listen)
  --keep-listening  stay, and start one restorer per arriving program (senders are served
                    concurrently in either mode; without it, the first program that arrives
                    whole is restored and the others are refused)
  --as-owner        as root, also take programs of other users (restored as their owner)
  --ssh-receiver    (run by `pmig-run --to ssh://HOST` through ssh) take one program on
                    standard input/output, then run it in the background, its output in
                    --log FILE (default ./pmig-PROGRAM.log)
  --root DIR        put the files a sender carries (those missing or different here) under
                    DIR instead of at their own paths; without it a sender whose files
                    differ here is refused (pmig never replaces a file)
  --ids auto|exact|virtual
                    exact: the program keeps its pid and thread ids for real (a new pid
                    namespace, and a user namespace when not root; this process stays as
                    the program's handle: signals sent to it reach the program, and it
                    exits with the program's status); virtual: the program runs with this
                    process's pid and libc's getpid/gettid answer the saved ids; auto
                    (default): exact where namespaces can be had, else virtual, saying so
  --received FD     (used by --listen) restore the image a receiver took, in memfd FD
  PMIG_DEBUG=1      log each restore phase to stderr";

fn main() {
    let mut args = std::env::args().skip(1);
    let mut inspect = false;
    let mut image: Option<String> = None;
    let mut listen: Option<String> = None;
    let mut token_file: Option<PathBuf> = None;
    let mut keep = false;
    let mut as_owner = false;
    let mut root: Option<PathBuf> = None;
    let mut ssh_receiver = false;
    let mut log: Option<PathBuf> = None;
    let mut ids = ns::Ids::Auto;
    let mut received: Option<i32> = None;
    // What a receiver hands on to the `pmig-resume --received` it execs.
    let mut resume_args: Vec<std::ffi::OsString> = Vec::new();
    while let Some(a) = args.next() {
        match a.as_str() {
            "-h" | "--help" => {
                println!("{USAGE}");
                return;
            }
            "--inspect" => inspect = true,
            "--keep-listening" => keep = true,
            "--as-owner" => as_owner = true,
            "--ssh-receiver" => ssh_receiver = true,
            "--listen" | "--token-file" | "--root" | "--log" | "--ids" | "--received" => {
                let v = args.next().unwrap_or_else(|| fail(&format!("{a} needs a value\n{USAGE}")));
                if matches!(a.as_str(), "--ids" | "--root") {
                    resume_args.extend([a.clone().into(), v.clone().into()]);
                }
                if a == "--received" {
                    received = Some(v.parse().unwrap_or_else(|_| fail(&format!("--received takes a file descriptor, not {v}"))));
                } else if a == "--ids" {
                    ids = ns::Ids::parse(&v).unwrap_or_else(|| fail(&format!("--ids takes auto, exact or virtual, not {v}")));
                } else if a == "--log" {
                    log = Some(PathBuf::from(v));
                } else if a == "--root" {
                    root = Some(PathBuf::from(v));
                } else if a == "--listen" {
                    listen = Some(v);
                } else {
                    token_file = Some(PathBuf::from(v));
                }
            }
            s if s.starts_with('-') && s != "-" => fail(&format!("unknown option {s}\n{USAGE}")),
            s if image.is_none() => image = Some(s.to_string()),
            _ => fail(&format!("more than one image given\n{USAGE}")),
        }
    }
    if ssh_receiver {
        let r = receive::Receiver { token: Vec::new(), as_owner: false, root: root.clone(), check_uid: false, ready: make_ready };
        let result = r.receive(&mut receive::Stdio).and_then(|(s, img)| {
            detach(&img, log.as_deref())?;
            restore(&s.path, &img, false, ids).map(|_| drop(s.file))
        });
        if let Err(e) = result {
            fail(&format!("{e:#}"));
        }
        return;
    }
    if as_owner {
        resume_args.push("--as-owner".into());
    }
    if let Some(fd) = received {
        // From a receiver (`Receiver::listen`), which has verified the image and written its
        // carried files: both are done again here (the files are found in place).
        let path = PathBuf::from(format!("/proc/self/fd/{fd}"));
        let result = verify_file(&path).context("the received image").and_then(|mut img| {
            make_ready(&mut img, root.as_deref())?;
            restore(&path, &img, as_owner, ids)
        });
        if let Err(e) = result {
            fail(&format!("{e:#}"));
        }
        return;
    }
    let result = match (listen, image) {
        (Some(addr), None) => {
            let Some(tf) = token_file else { fail("--listen needs --token-file FILE: a receiver runs whatever arrives, so it only takes programs from senders that know its secret") };
            let token = std::fs::read(&tf).unwrap_or_else(|e| fail(&format!("cannot read the token file {}: {e}", tf.display())));
            if token.is_empty() {
                fail(&format!("the token file {} is empty", tf.display()));
            }
            let r = receive::Receiver { token, as_owner, root: root.clone(), check_uid: true, ready: make_ready };
            r.listen(&addr, keep, &resume_args).map(|never| match never {})
        }
        (Some(_), Some(_)) => fail("give either an image or --listen, not both"),
        (None, None) => fail(&format!("no image given\n{USAGE}")),
        (None, Some(i)) if i == "-" => receive::from_stdin()
            .and_then(|s| {
                let img = verify_file(&s.path).context("cannot use this image")?;
                if inspect {
                    return print_inspect(&img);
                }
                restore(&s.path, &img, false, ids).map(|_| drop(s.file))
            })
            .with_context(|| "standard input".to_string()),
        (None, Some(i)) => (|| {
            let path = PathBuf::from(&i);
            let img = verify_file(&path).context("cannot use this image")?;
            if inspect {
                return print_inspect(&img);
            }
            restore(&path, &img, false, ids)
        })()
        .with_context(|| i.clone()),
    };
    if let Err(e) = result {
        fail(&format!("{e:#}"));
    }
}

/// For a program that arrived through ssh: the session must be able to end while the
/// program goes on. Forks; the parent says where the program runs and exits (ending the ssh
/// session); the child leaves the session, takes /dev/null as stdin and the log file as
/// stdout and stderr, and goes on to restore.
fn detach(img: &VerifiedImage, log: Option<&Path>) -> Result<()> {
    use std::os::fd::AsRawFd;
    let name = Path::new(&img.manifest.process.exe).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or("program".into());
    let log = log.map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from(format!("pmig-{name}.log")));
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&log)
        .with_context(|| format!("cannot open the log {}", log.display()))?;
    let null = std::fs::File::open("/dev/null").context("cannot open /dev/null")?;
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let shown = std::fs::canonicalize(&log).unwrap_or(log);
    // SAFETY: pmig-resume is single-threaded; the child only restores.
    match unsafe { libc::fork() } {
        -1 => bail!("fork: {}", std::io::Error::last_os_error()),
        0 => {}
        child => {
            say!("pmig-resume: {name} runs on {} as pid {child}; its output goes to {}", host.trim(), shown.display());
            exit(0)
        }
    }
    // SAFETY: setsid and dup2 on fds we own; failures leave the process attached, which only
    // means the program may get SIGHUP when the ssh session ends.
    unsafe {
        libc::setsid();
        libc::dup2(null.as_raw_fd(), 0);
        libc::dup2(out.as_raw_fd(), 1);
        libc::dup2(out.as_raw_fd(), 2);
    }
    Ok(())
}

fn fail(msg: &str) -> ! {
    say!("pmig-resume: {msg}");
    exit(2)
}

/// A received image: carried files written, then the host checked (see `Receiver::ready`).
fn make_ready(img: &mut VerifiedImage, root: Option<&Path>) -> Result<()> {
    for what in receive::materialize(img, root)? {
        say!("pmig-resume: {what}");
    }
    check_host(img)
}

fn print_inspect(img: &VerifiedImage) -> Result<()> {
    print!("{}", pmig_image::describe(&img.manifest, img.file_len));
    println!("checksums: all {} page runs verified", img.trailer.run_crcs.len());
    Ok(())
}

/// Checks the host, writes the plan and execs the engine: returns only on failure.
fn restore(image: &Path, img: &VerifiedImage, as_owner: bool, ids: ns::Ids) -> Result<()> {
    check_host(img)?;
    let debug = std::env::var_os("PMIG_DEBUG").is_some_and(|v| !v.is_empty() && v != "0");
    let engine = engine_path()?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    let p = &img.manifest.process;
    let exact = match ids {
        ns::Ids::Virtual => false,
        _ => match ns::enter(&img.manifest) {
            Ok(()) => true,
            Err(why) if ids == ns::Ids::Exact => bail!("exact ids are not available here: {why}"),
            Err(why) => {
                say!("pmig-resume: {why}: restoring with virtual ids (the program's libc calls see its saved pid and thread ids; raw system calls see new ones)");
                false
            }
        },
    };
    let prepared = plan::prepare(image, img, debug, exact)?;
    if exact {
        let owner = (me == 0 && as_owner && p.uid != 0).then_some((p.uid, p.gid));
        let never = ns::run(&img.manifest, &engine, prepared.plan_fd, owner, debug)?;
        match never {}
    }
    if me == 0 && as_owner && p.uid != 0 {
        // SAFETY: plain credential system calls; each result is checked.
        unsafe {
            if libc::setgroups(0, std::ptr::null()) != 0 || libc::setgid(p.gid) != 0 || libc::setuid(p.uid) != 0 {
                bail!("cannot become uid {} gid {}: {}", p.uid, p.gid, std::io::Error::last_os_error());
            }
        }
    }
    if debug {
        say!(
            "pmig-resume: image verified ({} regions, {} page runs); starting the restore engine",
            img.manifest.regions.len(),
            img.trailer.run_crcs.len()
        );
    }
    let err = Command::new(&engine).arg0("pmig-restore-engine").arg(prepared.plan_fd.to_string()).env_clear().exec();
    bail!("cannot start the restore engine {}: {err}", engine.display())
}

fn engine_path() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("PMIG_ENGINE") {
        return Ok(PathBuf::from(p));
    }
    let me = std::env::current_exe().context("cannot find my own path")?;
    let p = me.parent().unwrap_or(Path::new("/")).join("pmig-restore-engine");
    if !p.is_file() {
        bail!("the restore engine is missing: expected {} next to pmig-resume", p.display());
    }
    Ok(p)
}

/// `(name, start, end)` of each piece of a vdso block.
type VdsoParts = Vec<(String, u64, u64)>;

/// The pieces of this process's vdso block, and the vdso's bytes.
fn own_vdso() -> Result<(VdsoParts, Vec<u8>)> {
    use std::io::{Read, Seek, SeekFrom};
    let maps = std::fs::read_to_string("/proc/self/maps").context("cannot read /proc/self/maps")?;
    let mut parts = Vec::new();
    for l in maps.lines() {
        let name = l.split_whitespace().nth(5).unwrap_or("");
        if matches!(name, "[vvar]" | "[vvar_vclock]" | "[vdso]") {
            let range = l.split_whitespace().next().unwrap_or("0-0");
            let (s, e) = range.split_once('-').unwrap_or(("0", "0"));
            parts.push((name.to_string(), u64::from_str_radix(s, 16)?, u64::from_str_radix(e, 16)?));
        }
    }
    let mut bytes = Vec::new();
    if let Some((_, s, e)) = parts.iter().find(|p| p.0 == "[vdso]") {
        let mut mem = std::fs::File::open("/proc/self/mem")?;
        mem.seek(SeekFrom::Start(*s))?;
        bytes.resize((e - s) as usize, 0);
        mem.read_exact(&mut bytes)?;
    }
    Ok((parts, bytes))
}

/// Refuses, with a reason, to restore where the saved process could not run.
fn check_host(img: &VerifiedImage) -> Result<()> {
    let m = &img.manifest;
    if m.host.machine != "x86_64" {
        bail!("the image is for {}, this pmig restores x86_64 only", m.host.machine);
    }
    let have = pmig_abi::arch::xcr0();
    if m.host.xcr0 & !have != 0 {
        bail!(
            "this CPU lacks features the saved process used (XSAVE features {:#x}, here {:#x}); restore it on a CPU like the one it ran on",
            m.host.xcr0,
            have
        );
    }
    let (parts, bytes) = own_vdso()?;
    let shape = |p: &[(String, u64, u64)]| p.iter().map(|(n, s, e)| (n.clone(), e - s)).collect::<Vec<_>>();
    if shape(&parts) != shape(&m.vdso.parts) || bytes != m.vdso.vdso_bytes {
        bail!(
            "the image was taken under another kernel ({}; this one is {}), whose vdso differs; restoring across kernels is not supported yet",
            m.host.kernel_release,
            std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim()
        );
    }
    let (lo, hi) = (pmig_abi::ENGINE_BASE, pmig_abi::ENGINE_BASE + pmig_abi::RESERVE_LEN);
    if let Some(r) = m.regions.iter().find(|r| r.start < hi && r.end > lo) {
        bail!("a saved region ({:#x}-{:#x}) overlaps the restore engine's range; the image was not made by libpmig", r.start, r.end);
    }
    for r in &m.regions {
        if let RegionKind::File { path, ident, .. } = &r.kind {
            let md = std::fs::metadata(path).with_context(|| format!("the mapped file {path} is missing here"))?;
            use std::os::unix::fs::MetadataExt;
            let mtime = md.mtime() as i128 * 1_000_000_000 + md.mtime_nsec() as i128;
            let same_content = || ident.sha256 != [0; 32] && receive::sha256_file(Path::new(path)).is_ok_and(|h| h == ident.sha256);
            if (md.size() != ident.size || mtime != ident.mtime_ns) && !same_content() {
                bail!("the mapped file {path} changed since the checkpoint (size or modification time differ); the saved process cannot use it");
            }
        }
    }
    for f in &m.fds {
        let file = m.files.get(f.file as usize).context("the image's fd table is damaged")?;
        match &file.kind {
            FileKind::Regular { path, .. } if std::fs::metadata(path).is_err() => {
                bail!("fd {} of the saved process was {path}, which is missing here", f.fd);
            }
            FileKind::Other { link } => {
                say!("pmig-resume: warning: fd {} ({link}) was left out at checkpoint; it will be closed", f.fd)
            }
            _ => {}
        }
    }
    Ok(())
}
