//! Writing the restore plan: the verified manifest turned into the fixed-layout arrays the
//! engine executes (see `pmig_abi`), in a memfd the engine inherits, with the image and every
//! mapped file open (without close-on-exec) for it.

use anyhow::{bail, Context, Result};
use pmig_abi::{
    region_kind, MmMap, PlanHeader, PlanObject, PlanRegion, PlanRun, PlanVdso, AUXV_WORDS, PLAN_MAGIC, PLAN_MAX, PLAN_VERSION,
    REGION_FILL, REGION_SYSV_RMID,
};
use pmig_image::{FileKind, Manifest, ObjectState, RegionKind, VerifiedImage};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::path::Path;

/// What the engine gets.
pub struct Prepared {
    pub plan_fd: i32,
}

/// Clears close-on-exec on `f` and leaks it into the engine.
fn inherit(f: File) -> Result<i32> {
    let fd = f.into_raw_fd();
    // SAFETY: fcntl on an fd we own, with an integer argument.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } < 0 {
        bail!("fcntl: {}", std::io::Error::last_os_error());
    }
    Ok(fd)
}

/// Views a plain `#[repr(C)]` value as bytes.
fn bytes_of<T: Copy>(v: &T) -> &[u8] {
    // SAFETY: every type passed here is a pmig_abi plan struct: repr(C), only integer fields,
    // padding spelled out as fields, so every byte is initialised.
    unsafe { std::slice::from_raw_parts(v as *const T as *const u8, std::mem::size_of::<T>()) }
}

/// The SysV segment to attach for a saved one: the same segment if it still exists here (same
/// id, key and size: it holds the live data), else one with the same key, else a new one
/// (with the saved id when this process may choose it). `true` when it is new and must be
/// filled from the image.
fn sysv_segment(key: i32, shmid: i32, size: u64, mode: u32) -> Result<(i32, bool)> {
    // SAFETY: an all-zero shmid_ds is valid; shmctl(IPC_STAT) writes it.
    let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: shmctl with a valid out pointer.
    if unsafe { libc::shmctl(shmid, libc::IPC_STAT, &mut ds) } == 0 && ds.shm_perm.__key == key && ds.shm_segsz as u64 == size {
        return Ok((shmid, false));
    }
    if key != libc::IPC_PRIVATE {
        // SAFETY: plain system call.
        let id = unsafe { libc::shmget(key, 0, 0) };
        if id >= 0 {
            return Ok((id, false));
        }
    }
    // As root, ask for the saved id (Linux's checkpoint/restore knob); harmless otherwise.
    let _ = std::fs::write("/proc/sys/kernel/shm_next_id", shmid.to_string());
    // SAFETY: plain system call.
    let id = unsafe { libc::shmget(key, size as usize, libc::IPC_CREAT | libc::IPC_EXCL | (mode & 0o777) as i32) };
    let _ = std::fs::write("/proc/sys/kernel/shm_next_id", "-1");
    if id < 0 {
        bail!("cannot make SysV shared memory segment (key {key:#x}, {size} bytes) again: {}", std::io::Error::last_os_error());
    }
    if id != shmid {
        eprintln!("pmig-resume: warning: SysV shared memory segment {shmid} is now {id}; shmctl on the old id will fail");
    }
    Ok((id, true))
}

/// Makes a shared memory object again: a memfd of its size holding the content an fd of the
/// same object saved (the mapped pages the engine reads in on top are the same data).
fn make_object(m: &Manifest, o: &ObjectState) -> Result<i32> {
    let name = std::ffi::CString::new(o.name.replace('\0', "")).unwrap_or_default();
    // SAFETY: memfd_create with a NUL-terminated name; the result is checked.
    // Sealable: libpmig seals it again as the program had (a memfd's seals).
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        bail!("memfd_create for shared object {}: {}", o.name, std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is the memfd just created, owned here.
    let f = unsafe { File::from_raw_fd(fd) };
    let content = m.files.iter().find_map(|f| match &f.kind {
        FileKind::Memfd { ino, content, .. } | FileKind::Deleted { ino, content, .. } if *ino == o.ino => Some(content),
        _ => None,
    });
    if let Some(c) = content {
        for (off, b) in &c.extents {
            std::os::unix::fs::FileExt::write_all_at(&f, b, *off).with_context(|| format!("cannot fill shared object {}", o.name))?;
        }
    }
    f.set_len(o.size.max(content.map_or(0, |c| c.size)))
        .with_context(|| format!("cannot size shared object {}", o.name))?;
    inherit(f)
}

/// The name under which a checkpoint records `MAP_SHARED | MAP_ANONYMOUS` memory (as the
/// kernel shows it: `/dev/zero (deleted)`).
const SHARED_ANON_NAME: &str = "/dev/zero";

/// Writes the plan. `exact`: the engine and libpmig ask for the saved tids. `pager_fd`: the
/// pager's socket (inherited by the engine), or -1 to read every page in at once.
pub fn prepare(image: &Path, img: &VerifiedImage, debug: bool, exact: bool, inherited: &[PlanObject], pager_fd: i32) -> Result<Prepared> {
    let m = &img.manifest;
    let image_fd = inherit(File::open(image).context("cannot reopen the image")?)?;
    // SAFETY: fcntl on an fd the caller keeps open for the engine, with an integer argument.
    if pager_fd >= 0 && unsafe { libc::fcntl(pager_fd, libc::F_SETFD, 0) } < 0 {
        bail!("fcntl on the pager's socket: {}", std::io::Error::last_os_error());
    }
    let mut objects = Vec::with_capacity(m.objects.len());
    // Objects the tree shares are made (and filled) once for all its processes.
    let shared = |ino: u64| inherited.iter().find(|o| o.ino == ino && o.kind == pmig_abi::OBJECT_SHARED_MEMORY).map(|o| o.fd);
    for o in &m.objects {
        let fd = match shared(o.ino) {
            Some(fd) => fd,
            // MAP_SHARED anonymous memory no other process shares: mapped anonymous again.
            None if o.name == SHARED_ANON_NAME => -1,
            None => make_object(m, o)?,
        };
        objects.push(PlanObject { ino: o.ino, fd, kind: pmig_abi::OBJECT_SHARED_MEMORY });
    }
    objects.extend(inherited.iter().filter(|o| o.kind != pmig_abi::OBJECT_SHARED_MEMORY));

    let mut files: HashMap<(String, bool), i32> = HashMap::new();
    let mut segments: HashMap<i32, (i32, bool)> = HashMap::new();
    let mut regions = Vec::with_capacity(m.regions.len());
    let mut runs = Vec::new();
    for r in &m.regions {
        let (kind, fd, offset) = match &r.kind {
            RegionKind::Anon | RegionKind::Heap if r.shared => (region_kind::SHARED_ANON, -1, 0),
            RegionKind::Anon | RegionKind::Heap => (region_kind::ANON, -1, 0),
            RegionKind::Stack => (region_kind::STACK, -1, 0),
            RegionKind::File { path, offset, .. } => {
                // Writable, or read-only from a file opened for writing (it may be made
                // writable later with mprotect).
                let may_write = m.advice.iter().any(|a| a.start <= r.start && r.end <= a.end && a.flags & pmig_image::ADVICE_SHARED_MAYWRITE != 0);
                let write = r.shared && (r.prot & 2 != 0 || may_write);
                let fd = match files.get(&(path.clone(), write)) {
                    Some(&fd) => fd,
                    None => {
                        let f = OpenOptions::new()
                            .read(true)
                            .write(write)
                            .open(path)
                            .with_context(|| format!("cannot open the mapped file {path}"))?;
                        let fd = inherit(f)?;
                        files.insert((path.clone(), write), fd);
                        fd
                    }
                };
                (if r.shared { region_kind::FILE_SHARED } else { region_kind::FILE_PRIVATE }, fd, *offset)
            }
            RegionKind::SharedObject { object, offset } => {
                let o = objects.get(*object as usize).context("a region maps a missing shared object")?;
                if o.fd < 0 {
                    (region_kind::SHARED_ANON, -1, 0)
                } else if !r.shared {
                    // A private mapping of the object (a deleted file's): its changed pages on top.
                    (region_kind::FILE_PRIVATE, o.fd, *offset)
                } else {
                    (region_kind::FILE_SHARED, o.fd, *offset)
                }
            }
            RegionKind::SysvShm { key, shmid, size, mode } => {
                let (id, new) = match segments.get(shmid) {
                    Some(&s) => s,
                    None => {
                        let s = sysv_segment(*key, *shmid, *size, *mode)?;
                        segments.insert(*shmid, s);
                        s
                    }
                };
                let mut flags = if new && !r.runs.is_empty() { REGION_FILL } else { 0 };
                if mode & 0o1000 != 0 {
                    flags |= REGION_SYSV_RMID;
                }
                regions.push(PlanRegion { start: r.start, end: r.end, prot: r.prot, kind: region_kind::SYSV, fd: id, flags, offset: 0 });
                if new {
                    for run in &r.runs {
                        runs.push(PlanRun { addr: run.addr, len: run.len, file_off: img.base + img.header.pages_off + run.data_off, lazy: 0 });
                    }
                }
                continue;
            }
        };
        // A tree's shared object was filled before any of its processes existed.
        // (A private mapping's changed pages are its own: always filled by the engine.)
        let filled = r.shared && matches!(&r.kind, RegionKind::SharedObject { object, .. } if m.objects.get(*object as usize).is_some_and(|o| shared(o.ino).is_some()));
        let noreserve = m.advice.iter().any(|a| a.start <= r.start && r.end <= a.end && a.flags & pmig_image::ADVICE_NORESERVE != 0);
        // Private anonymous memory (heaps, thread stacks, mmap'ed buffers: nearly all of a big
        // program) comes in on first touch when a pager serves it.
        let lazy = pager_fd >= 0 && kind == region_kind::ANON && !r.runs.is_empty();
        let flags = if r.runs.is_empty() || filled { 0 } else { REGION_FILL }
            | if noreserve { pmig_abi::REGION_NORESERVE } else { 0 }
            | if lazy { pmig_abi::REGION_LAZY } else { 0 };
        regions.push(PlanRegion { start: r.start, end: r.end, prot: r.prot, kind, fd, flags, offset });
        for run in r.runs.iter().filter(|_| !filled) {
            runs.push(PlanRun { addr: run.addr, len: run.len, file_off: img.base + img.header.pages_off + run.data_off, lazy: lazy as u64 });
        }
    }

    let p = &m.process;
    // The saved executable, for /proc/PID/exe (PR_SET_MM_MAP's exe_fd; the engine goes on
    // without it where the kernel refuses).
    let exe_fd = match File::open(&p.exe) {
        Ok(f) => inherit(f).map(|fd| fd as u32).unwrap_or(u32::MAX),
        Err(_) => u32::MAX,
    };
    let mut auxv = [0u64; AUXV_WORDS];
    let n = p.auxv.len().min(AUXV_WORDS - 2) & !1;
    auxv[..n].copy_from_slice(&p.auxv[..n]);
    let mut vdso = [PlanVdso::default(); 4];
    for (i, (name, start, end)) in m.vdso.parts.iter().enumerate().take(4) {
        let kind = pmig_abi::VDSO_NAMES.iter().position(|n| n == name).unwrap_or(0) as u32;
        vdso[i] = PlanVdso { kind, _pad: 0, start: *start, len: end - start };
    }
    let c = &m.ckpt;
    let hsize = std::mem::size_of::<PlanHeader>() as u64;
    let regions_off = hsize;
    let runs_off = regions_off + (regions.len() * std::mem::size_of::<PlanRegion>()) as u64;
    let objects_off = runs_off + (runs.len() * std::mem::size_of::<PlanRun>()) as u64;
    let manifest_off = objects_off + (objects.len() * std::mem::size_of::<PlanObject>()) as u64;
    // Another kernel's vdso: the proxy's bytes follow the manifest.
    let proxy = if crate::vdso::same(m)? { None } else { Some(crate::vdso::proxy(m)?) };
    let proxy_off = (manifest_off + img.manifest_bytes.len() as u64).next_multiple_of(8);
    let total_len = match &proxy {
        Some(p) => proxy_off + p.bytes.len() as u64,
        None => manifest_off + img.manifest_bytes.len() as u64,
    };
    if total_len > PLAN_MAX {
        bail!("the restore plan would be {total_len} bytes, more than the engine can map ({PLAN_MAX})");
    }

    // SAFETY: memfd_create with a NUL-terminated name; the fd is checked below.
    let plan_fd = unsafe { libc::memfd_create(c"pmig-plan".as_ptr(), 0) };
    if plan_fd < 0 {
        bail!("memfd_create: {}", std::io::Error::last_os_error());
    }
    let header = PlanHeader {
        magic: PLAN_MAGIC,
        version: PLAN_VERSION,
        debug: debug as u32,
        image_fd,
        plan_fd,
        n_regions: regions.len() as u64,
        regions_off,
        n_runs: runs.len() as u64,
        runs_off,
        manifest_off,
        manifest_len: img.manifest_bytes.len() as u64,
        n_objects: objects.len() as u64,
        objects_off,
        total_len,
        mm: MmMap {
            start_code: p.mm.start_code,
            end_code: p.mm.end_code,
            start_data: p.mm.start_data,
            end_data: p.mm.end_data,
            start_brk: p.mm.start_brk,
            brk: p.mm.brk,
            start_stack: p.mm.start_stack,
            arg_start: p.mm.arg_start,
            arg_end: p.mm.arg_end,
            env_start: p.mm.env_start,
            env_end: p.mm.env_end,
            auxv: 0,
            auxv_size: (n as u32 + 2) * 8,
            exe_fd,
        },
        auxv,
        vdso,
        ctx: pmig_abi::Ctx {
            rbx: c.rbx,
            rbp: c.rbp,
            r12: c.r12,
            r13: c.r13,
            r14: c.r14,
            r15: c.r15,
            rsp: c.rsp,
            rip: c.rip,
            mxcsr: c.mxcsr,
            fpucw: c.fpucw,
        },
        fs_base: c.fs_base,
        // pmig's own thread keeps its tid only where it is sure to be free: an image made in
        // the virtual mode holds a tid that was real then, which may be another thread's
        // saved one.
        ckpt_tid: if m.process.ids == pmig_image::IdsMode::Virtual { 0 } else { c.tid },
        ids: if exact { pmig_abi::IDS_EXACT } else { 0 },
        pager_fd,
        saved_pid: m.process.pid,
        vdso_proxy_len: proxy.as_ref().map_or(0, |p| p.bytes.len() as u64),
        vdso_proxy_off: proxy_off,
        vdso_proxy_at: proxy.as_ref().map_or(0, |p| p.at),
        vdso_new_base: proxy.as_ref().map_or(0, |p| p.new_base),
    };
    let mut out = Vec::with_capacity(total_len as usize);
    out.extend_from_slice(bytes_of(&header));
    for r in &regions {
        out.extend_from_slice(bytes_of(r));
    }
    for r in &runs {
        out.extend_from_slice(bytes_of(r));
    }
    for o in &objects {
        out.extend_from_slice(bytes_of(o));
    }
    out.extend_from_slice(&img.manifest_bytes);
    if let Some(p) = &proxy {
        out.resize(proxy_off as usize, 0);
        out.extend_from_slice(&p.bytes);
    }
    // SAFETY: plan_fd is the memfd just created, owned here.
    let mut f = unsafe { File::from_raw_fd(plan_fd) };
    f.write_all(&out).context("cannot write the restore plan")?;
    let plan_fd = f.into_raw_fd();
    Ok(Prepared { plan_fd })
}
