//! `pmig-run`: start a program under pmig.
//!
//! Sets `LD_PRELOAD` to `libpmig.so` (found next to this binary or in `../lib/pmig/` from it,
//! or at `$PMIG_PRELOAD`), passes
//! the settings in `PMIG_*` variables, prints how to checkpoint, and execs the program, so the
//! program keeps the pid `pmig-run` was started with.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{exit, Command};

#[path = "man.rs"]
mod man;

const USAGE: &str = "usage: pmig-run [--image PATH | --to HOST:PORT --token-file FILE [--shared-fs] [--live]] [--compress]
                [--exit] [--signal SIG] [--drop-unsupported] [--allow-static] [--] PROGRAM [ARGS...]

Runs PROGRAM under pmig. `kill -SIG <pid>` (default SIGUSR2) then writes a checkpoint image
that `pmig-resume IMAGE` turns back into the running program, here or on another host.
pmig's own messages go to the program's stderr, or to IMAGE.log when that is a file the
program writes at an offset (a resumed program would write over them); this line says so.

  --image PATH   where the image goes (default: ./PROGRAM-PID.pmig)
  --exit         exit (status 0) once the image is safely written, to move the program
                 (a checkpoint that fails leaves the program running)
  --to HOST:PORT
                 send the checkpoint straight to `pmig-resume --listen` there (no image
                 file here); the program exits once the receiver has the whole image and
                 checked it, and goes on here if the transfer fails
  --to ssh://[USER@]HOST[:PORT]
                 the same through the system's ssh (no token: ssh authenticates); the
                 program then runs there in the background, its output in a log file
                 ($PMIG_SSH replaces the ssh command, $PMIG_REMOTE_RESUME pmig-resume's path)
  --token-file FILE
                 the secret shared with the receiver (needed with --to HOST:PORT)
  --live         with --to: copy the program's memory while it runs, in rounds (each
                 sends what it wrote since the last), then stop it only for the last
                 pages and the rest of its state; a progress line per round. A program
                 that writes faster than the link carries is stopped after a few rounds
                 for the rest (said). Its child processes, if any, are copied stopped
  --compress     LZ4-compress the transfer (for slow links), or the image file (smaller on
                 disk; pmig-resume unpacks it into memory first)
  --shared-fs    the hosts share a file system: carry no files (the target must see the
                 program's files at the same paths)
  --signal SIG   checkpoint on SIG instead of SIGUSR2 (a name like USR1 or a number)
  --drop-unsupported
                 checkpoint even if the program holds something pmig cannot restore yet;
                 such fds are left out (closed after restore), with a warning
  --allow-static
                 run a statically linked PROGRAM anyway (refused by default: pmig cannot
                 be loaded into it), for one that only starts dynamically linked programs
  PMIG_PRELOAD=PATH
                 the libpmig.so to preload (default: next to pmig-run, or in
                 ../lib/pmig/ from it)
  PMIG_DEBUG=1   log each checkpoint and restore phase to stderr
  PMIG_BACKGROUND=0
                 keep the program stopped while a checkpoint it survives is written
                 (by default it goes on and a child process writes the image)";

/// What the command line asks for.
#[derive(Debug)]
struct Args {
    image: Option<PathBuf>,
    exit_after: bool,
    drop_unsupported: bool,
    allow_static: bool,
    to: Option<String>,
    token_file: Option<PathBuf>,
    compress: bool,
    shared_fs: bool,
    live: bool,
    signal: i32,
    /// The program and its arguments.
    prog: OsString,
    rest: Vec<OsString>,
}

/// Reads the command line: options, then the program and its own arguments untouched.
fn parse_args(args: impl IntoIterator<Item = OsString>) -> Result<Args, String> {
    use lexopt::prelude::*;
    let mut p = lexopt::Parser::from_args(args);
    let mut a = Args {
        image: None,
        exit_after: false,
        drop_unsupported: false,
        allow_static: false,
        to: None,
        token_file: None,
        compress: false,
        shared_fs: false,
        live: false,
        signal: libc::SIGUSR2,
        prog: OsString::new(),
        rest: Vec::new(),
    };
    let value = |p: &mut lexopt::Parser, name: &str| p.value().map_err(|_| format!("{name} needs a value"));
    loop {
        let arg = p.next().map_err(|e| e.to_string())?;
        match arg {
            Some(Long("help") | Short('h')) => {
                println!("{USAGE}");
                exit(0)
            }
            Some(Long("version") | Short('V')) => {
                println!("{}", man::version("pmig-run"));
                exit(0)
            }
            Some(Long("help-man")) => {
                print!("{}", man::man_page("pmig-run", "run a program so that it can be checkpointed and moved", USAGE, "pmig-resume"));
                exit(0)
            }
            Some(Long("exit")) => a.exit_after = true,
            Some(Long("drop-unsupported")) => a.drop_unsupported = true,
            Some(Long("allow-static")) => a.allow_static = true,
            Some(Long("compress")) => a.compress = true,
            Some(Long("shared-fs")) => a.shared_fs = true,
            Some(Long("live")) => a.live = true,
            Some(Long("image")) => a.image = Some(value(&mut p, "--image")?.into()),
            Some(Long("to")) => a.to = Some(value(&mut p, "--to")?.to_string_lossy().into_owned()),
            Some(Long("token-file")) => a.token_file = Some(value(&mut p, "--token-file")?.into()),
            Some(Long("signal")) => {
                let v = value(&mut p, "--signal")?;
                let s = v.to_string_lossy();
                a.signal = parse_signal(&s).ok_or_else(|| format!("unknown signal {s:?}"))?;
                if a.signal == libc::SIGKILL || a.signal == libc::SIGSTOP {
                    return Err("SIGKILL and SIGSTOP cannot be caught, so they cannot trigger a checkpoint".into());
                }
            }
            Some(Value(prog)) => {
                a.prog = prog;
                a.rest = p.raw_args().map_err(|e| e.to_string())?.collect();
                return Ok(a);
            }
            Some(other) => return Err(other.unexpected().to_string()),
            None => return Err("no program given".into()),
        }
    }
}

fn die(msg: &str) -> ! {
    eprintln!("pmig-run: {msg}");
    exit(2)
}

/// Parses a signal name (`USR2`, `SIGUSR2`, `RTMIN+3`) or number.
fn parse_signal(s: &str) -> Option<i32> {
    if let Ok(n) = s.parse::<i32>() {
        return (1..=64).contains(&n).then_some(n);
    }
    let name = s.trim_start_matches("SIG").to_ascii_uppercase();
    let n = match name.as_str() {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "ALRM" => libc::SIGALRM,
        "TERM" => libc::SIGTERM,
        "PWR" => libc::SIGPWR,
        "WINCH" => libc::SIGWINCH,
        "URG" => libc::SIGURG,
        _ => {
            let rest = name.strip_prefix("RTMIN+")?;
            let k: i32 = rest.parse().ok()?;
            let n = libc::SIGRTMIN() + k;
            return (n < libc::SIGRTMAX() - 2).then_some(n);
        }
    };
    Some(n)
}

/// The name `kill -NAME` takes for `sig`.
fn signal_name(sig: i32) -> String {
    ["HUP", "INT", "QUIT", "USR1", "USR2", "ALRM", "TERM", "PWR", "WINCH", "URG"]
        .iter()
        .find(|n| parse_signal(n) == Some(sig))
        .map(|n| n.to_string())
        .unwrap_or_else(|| sig.to_string())
}

/// Resolves `HOST:PORT` (or `[v6]:PORT`) to one `ip:port` the preload can connect to.
fn resolve_receiver(spec: &str) -> String {
    use std::net::ToSocketAddrs;
    if let Some(dest) = spec.strip_prefix("ssh://") {
        if dest.is_empty() {
            die("--to ssh://[USER@]HOST[:PORT]: no host given");
        }
        return spec.to_string();
    }
    match spec.to_socket_addrs().map(|mut a| a.next()) {
        Ok(Some(a)) => a.to_string(),
        Ok(None) => die(&format!("{spec}: the name has no address")),
        Err(e) => die(&format!("--to {spec}: {e} (expected HOST:PORT)")),
    }
}

/// Finds `prog` the way execvp would.
fn find_program(prog: &str) -> Option<PathBuf> {
    let is_exec = |p: &Path| p.metadata().map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false);
    if prog.contains('/') {
        let p = PathBuf::from(prog);
        return is_exec(&p).then_some(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path).map(|d| d.join(prog)).find(|p| is_exec(p))
}

/// Why `LD_PRELOAD` could not bring libpmig into a program.
#[derive(Debug, PartialEq)]
enum NoPreload {
    /// An ELF with no `PT_INTERP`: no dynamic loader runs, so nothing is preloaded.
    Static,
    /// An ELF for another machine or class than this 64-bit x86-64 libpmig.so.
    Foreign,
}

/// Why libpmig could not be preloaded into the program at `prog` (or into the interpreter a
/// `#!` script names, followed as the kernel does), if it could not. Files that cannot be
/// read and formats other than ELF pass: exec decides.
fn cannot_preload(prog: &Path) -> Option<(PathBuf, NoPreload)> {
    let mut prog = prog.to_path_buf();
    // The kernel follows at most 4 levels of interpreters.
    for _ in 0..5 {
        let head = read_at(&prog, 0, 256)?;
        if let Some(line) = head.strip_prefix(b"#!") {
            let line = &line[..line.iter().position(|&c| c == b'\n').unwrap_or(line.len())];
            let line = String::from_utf8_lossy(line);
            let interp = line.split_whitespace().next()?;
            prog = PathBuf::from(interp);
            continue;
        }
        return elf_kind(&prog, &head).map(|k| (prog, k));
    }
    None
}

/// Reads up to `len` bytes of `path` at `off`.
fn read_at(path: &Path, off: u64, len: usize) -> Option<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path).ok()?;
    let mut buf = vec![0u8; len];
    let mut got = 0;
    while got < len {
        match f.read_at(&mut buf[got..], off + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    buf.truncate(got);
    Some(buf)
}

/// Whether the ELF file `path` (whose first bytes are `head`) cannot take a preloaded
/// library: `None` for a dynamically linked x86-64 executable, or anything not an ELF
/// executable.
fn elf_kind(path: &Path, head: &[u8]) -> Option<NoPreload> {
    const PT_INTERP: u32 = 3;
    if head.len() < 64 || &head[..4] != b"\x7fELF" {
        return None;
    }
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let e_type = u16_at(head, 16);
    if e_type != 2 && e_type != 3 {
        return None; // not an executable (ET_EXEC) or PIE/shared object (ET_DYN)
    }
    if head[4] != 2 || head[5] != 1 || u16_at(head, 18) != 62 {
        return Some(NoPreload::Foreign); // not ELFCLASS64, little-endian, EM_X86_64
    }
    let phoff = u64::from_le_bytes(head[32..40].try_into().ok()?);
    let phentsize = u16_at(head, 54) as usize;
    let phnum = u16_at(head, 56) as usize;
    if phentsize < 4 || phnum == 0 || phnum == 0xffff {
        return None;
    }
    let phdrs = read_at(path, phoff, phentsize * phnum)?;
    let has_interp = phdrs
        .chunks_exact(phentsize)
        .any(|ph| u32::from_le_bytes([ph[0], ph[1], ph[2], ph[3]]) == PT_INTERP);
    (!has_interp).then_some(NoPreload::Static)
}

/// The one-line refusal for a program pmig cannot run.
fn refusal(prog: &Path, found: &Path, why: &NoPreload) -> String {
    let what = if found == prog {
        format!("{}", prog.display())
    } else {
        format!("{} (a script run by {})", prog.display(), found.display())
    };
    match why {
        NoPreload::Static => format!(
            "{what} is statically linked: libpmig.so cannot be preloaded into it, so it could never be \
             checkpointed (and the checkpoint signal would kill it); use a dynamically linked build \
             (or --allow-static if it only starts dynamically linked programs)"
        ),
        NoPreload::Foreign => format!(
            "{what} is not a 64-bit x86-64 program: libpmig.so cannot be preloaded into it, so it \
             could never be checkpointed"
        ),
    }
}

/// Whether a line added to stderr stays there: anything but a file written at an offset
/// (`2>file`, not `2>>file`), as libpmig decides.
fn stderr_keeps_lines() -> bool {
    let Ok(md) = std::fs::metadata("/proc/self/fd/2") else { return false };
    let t = md.file_type();
    // SAFETY: F_GETFL on fd 2 only reads its flags.
    let flags = unsafe { libc::fcntl(2, libc::F_GETFL) };
    !t.is_file() || flags >= 0 && flags & libc::O_APPEND != 0
}

fn find_library() -> PathBuf {
    if let Some(p) = std::env::var_os("PMIG_PRELOAD") {
        let p = PathBuf::from(p);
        if !p.is_file() {
            die(&format!("PMIG_PRELOAD names {}, which is not a file", p.display()));
        }
        return p;
    }
    let exe = std::env::current_exe().unwrap_or_else(|e| die(&format!("cannot find my own path: {e}")));
    let dir = exe.parent().unwrap_or(Path::new("/"));
    // Beside pmig-run (a build directory), or where install.sh puts it (PREFIX/lib/pmig).
    let places = [dir.join("libpmig.so"), dir.join("../lib/pmig/libpmig.so")];
    match places.iter().find(|p| p.is_file()) {
        Some(lib) => lib.clone(),
        None => die(&format!(
            "cannot find libpmig.so next to pmig-run (looked for {} and {}); install it there or set PMIG_PRELOAD to its path",
            places[0].display(),
            places[1].display()
        )),
    }
}

fn main() {
    let Args { image, exit_after, drop_unsupported, allow_static, to, token_file, compress, shared_fs, live, signal, prog, rest } =
        parse_args(std::env::args_os().skip(1)).unwrap_or_else(|e| {
            eprintln!("{}", man::usage_error("pmig-run", USAGE, &e));
            exit(2)
        });
    let prog_s = prog.to_string_lossy().into_owned();
    let resolved =
        find_program(&prog_s).unwrap_or_else(|| die(&format!("{prog_s}: no such program (or not executable)")));
    match cannot_preload(&resolved) {
        Some((found, NoPreload::Static)) if allow_static => eprintln!(
            "pmig-run: warning: {} is statically linked: it cannot be checkpointed itself (the \
             checkpoint signal would kill it), only the dynamically linked programs it starts",
            found.display()
        ),
        Some((found, why)) => die(&refusal(&resolved, &found, &why)),
        None => {}
    }
    let lib = find_library();
    if live && to.is_none() {
        die("--live moves the program to a receiver: it needs --to HOST:PORT (or ssh://HOST)");
    }
    let to = to.map(|t| resolve_receiver(&t));
    if to.as_ref().is_some_and(|t| !t.starts_with("ssh://")) {
        match &token_file {
            None => die("--to needs --token-file FILE: the receiver only takes programs from senders that know its secret"),
            Some(f) => {
                if let Err(e) = std::fs::read(f) {
                    die(&format!("cannot read the token file {}: {e}", f.display()));
                }
            }
        }
    }
    let lib = lib.canonicalize().unwrap_or(lib);

    let pid = std::process::id();
    let cwd = std::env::current_dir().unwrap_or_else(|e| die(&format!("cannot read the current directory: {e}")));
    let base = resolved.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "program".into());
    let image = image.unwrap_or_else(|| PathBuf::from(format!("{base}-{pid}.pmig")));
    let image = if image.is_absolute() { image } else { cwd.join(image) };
    if let Some(dir) = image.parent() {
        if !dir.is_dir() {
            die(&format!("the image's directory {} does not exist", dir.display()));
        }
    }

    let mut preload = lib.as_os_str().to_owned();
    if let Some(old) = std::env::var_os("LD_PRELOAD").filter(|o| !o.is_empty()) {
        preload.push(":");
        preload.push(old);
    }
    // libpmig writes its lines beside the image when stderr is a file written at an offset,
    // which a resumed program would write over (preload/src/log.rs): say so here, where the
    // user reads the program's output.
    let elsewhere = if stderr_keeps_lines() { String::new() } else { format!("; pmig's messages go to {}.log", image.display()) };
    match &to {
        Some(t) => eprintln!(
            "pmig: running {prog_s} as pid {pid}; move it to {t} with: kill -{} {pid}{elsewhere}",
            signal_name(signal)
        ),
        None => eprintln!(
            "pmig: running {prog_s} as pid {pid}; checkpoint with: kill -{} {pid}  (image: {}){elsewhere}",
            signal_name(signal),
            image.display()
        ),
    }
    let mut cmd = Command::new(&resolved);
    if let Some(t) = &to {
        cmd.env("PMIG_TO", t);
    }
    if let Some(f) = &token_file {
        cmd.env("PMIG_TOKEN_FILE", f.canonicalize().unwrap_or_else(|_| f.clone()));
    }
    cmd.env("PMIG_COMPRESS", if compress { "1" } else { "0" });
    cmd.env("PMIG_SHARED_FS", if shared_fs { "1" } else { "0" });
    cmd.env("PMIG_LIVE", if live { "1" } else { "0" });
    let err = cmd
        .arg0(&prog)
        .args(&rest)
        .env("LD_PRELOAD", preload)
        .env("PMIG_IMAGE", &image)
        .env("PMIG_EXIT", if exit_after { "1" } else { "0" })
        .env("PMIG_SIGNAL", signal.to_string())
        .env("PMIG_DROP_UNSUPPORTED", if drop_unsupported { "1" } else { "0" })
        .env("PMIG_PID", pid.to_string())
        .exec();
    die(&format!("cannot run {}: {err}", resolved.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Result<Args, String> {
        parse_args(a.iter().map(OsString::from))
    }

    #[test]
    fn options_stop_at_the_program_whose_arguments_are_its_own() {
        let a = args(&["--exit", "--image=/tmp/x.pmig", "--signal", "USR1", "prog", "--image", "y", "--"]).unwrap();
        assert!(a.exit_after);
        assert_eq!(a.image, Some(PathBuf::from("/tmp/x.pmig")));
        assert_eq!(a.signal, libc::SIGUSR1);
        assert_eq!(a.prog, "prog");
        assert_eq!(a.rest, ["--image", "y", "--"]);
        let a = args(&["--to", "h:1", "--token-file", "t", "--compress", "--shared-fs", "--drop-unsupported", "--allow-static", "--", "--prog"]).unwrap();
        assert!(a.compress && a.shared_fs && a.drop_unsupported && a.allow_static);
        assert_eq!((a.to.as_deref(), a.token_file), (Some("h:1"), Some(PathBuf::from("t"))));
        assert_eq!(a.prog, "--prog");
    }

    #[test]
    fn bad_command_lines_say_what_is_wrong() {
        assert_eq!(args(&["--bogus", "prog"]).unwrap_err(), "invalid option '--bogus'");
        assert_eq!(args(&["--image"]).unwrap_err(), "--image needs a value");
        assert_eq!(args(&["--exit"]).unwrap_err(), "no program given");
        assert_eq!(args(&["--signal", "9", "p"]).unwrap_err(), "SIGKILL and SIGSTOP cannot be caught, so they cannot trigger a checkpoint");
        assert_eq!(args(&["--signal", "NOPE", "p"]).unwrap_err(), "unknown signal \"NOPE\"");
    }

    #[test]
    fn signals_parse() {
        assert_eq!(parse_signal("USR2"), Some(libc::SIGUSR2));
        assert_eq!(parse_signal("SIGUSR1"), Some(libc::SIGUSR1));
        assert_eq!(parse_signal("10"), Some(10));
        assert_eq!(parse_signal("0"), None);
        assert_eq!(parse_signal("NOPE"), None);
        assert_eq!(parse_signal("RTMIN+1"), Some(libc::SIGRTMIN() + 1));
    }

    #[test]
    fn dynamic_programs_and_scripts_pass() {
        assert_eq!(cannot_preload(&find_program("sh").unwrap()), None);
        let dir = std::env::temp_dir().join(format!("pmig-run-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let script = dir.join("script");
        std::fs::write(&script, "#!/bin/sh -e\necho hi\n").unwrap();
        assert_eq!(cannot_preload(&script), None);
        std::fs::write(&script, "plain text").unwrap();
        assert_eq!(cannot_preload(&script), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// An ELF header with one program header of type `ptype`.
    fn elf(class: u8, machine: u16, ptype: u32) -> Vec<u8> {
        let mut b = vec![0u8; 64 + 56];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = class;
        b[5] = 1;
        b[16..18].copy_from_slice(&2u16.to_le_bytes());
        b[18..20].copy_from_slice(&machine.to_le_bytes());
        b[32..40].copy_from_slice(&64u64.to_le_bytes());
        b[54..56].copy_from_slice(&56u16.to_le_bytes());
        b[56..58].copy_from_slice(&1u16.to_le_bytes());
        b[64..68].copy_from_slice(&ptype.to_le_bytes());
        b
    }

    #[test]
    fn static_and_foreign_elves_are_refused_directly_or_as_interpreters() {
        let dir = std::env::temp_dir().join(format!("pmig-run-elf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let check = |bytes: Vec<u8>| {
            let p = dir.join("prog");
            std::fs::write(&p, bytes).unwrap();
            cannot_preload(&p).map(|(_, k)| k)
        };
        assert_eq!(check(elf(2, 62, 1)), Some(NoPreload::Static)); // PT_LOAD only
        assert_eq!(check(elf(2, 62, 3)), None); // PT_INTERP
        assert_eq!(check(elf(1, 3, 3)), Some(NoPreload::Foreign)); // i386
        let script = dir.join("script");
        std::fs::write(&script, format!("#!{}\n", dir.join("prog").display())).unwrap();
        std::fs::write(dir.join("prog"), elf(2, 62, 1)).unwrap();
        assert_eq!(cannot_preload(&script), Some((dir.join("prog"), NoPreload::Static)));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn programs_are_found_on_path() {
        assert!(find_program("sh").is_some());
        assert!(find_program("/nonexistent/prog").is_none());
        assert!(find_program("no-such-program-pmig").is_none());
    }
}
