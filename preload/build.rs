//! Build script of libpmig: links libgcc's unwinder statically, so that libpmig.so does not
//! need `libgcc_s.so.1`.
//!
//! libpmig is loaded into every process of a tree, and loading one more shared library costs
//! each of them about 0.1 ms (mapping, relocating, and libgcc_s's constructor, whose CPUID
//! instructions trap in a virtual machine). Rust's std asks for the unwinder as `-lgcc_s`
//! (`-C link-arg=-static-libgcc` does not change that). The linker looks for `-lNAME` in
//! each search directory in turn, `.so` then `.a`: a directory of our own, searched first,
//! that holds only `libgcc_s.a` — a copy of gcc's `libgcc_eh.a`, the same unwinder built to
//! be linked statically — makes it link that. The unwinder's symbols stay local to
//! libpmig.so (a cdylib exports only its `#[no_mangle]` items), so the program's own
//! `libgcc_s` (C++ exceptions) is untouched.
//!
//! When gcc or its `libgcc_eh.a` is not found, nothing changes (libgcc_s is linked as before).

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CC");
    if env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("linux") || env::var("CARGO_CFG_TARGET_ENV").as_deref() != Ok("gnu") {
        return;
    }
    let cc = env::var("CC").unwrap_or_else(|_| "gcc".into());
    let Ok(out) = Command::new(&cc).arg("-print-file-name=libgcc_eh.a").output() else {
        println!("cargo:warning=cannot run {cc} to find libgcc_eh.a: libpmig.so will need libgcc_s.so.1");
        return;
    };
    let eh = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if !out.status.success() || !eh.is_absolute() || !eh.is_file() {
        println!("cargo:warning={cc} knows no libgcc_eh.a: libpmig.so will need libgcc_s.so.1");
        return;
    }
    let dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("static-unwind");
    std::fs::create_dir_all(&dir).expect("OUT_DIR is writable");
    std::fs::copy(&eh, dir.join("libgcc_s.a")).expect("OUT_DIR is writable");
    println!("cargo:rerun-if-changed={}", eh.display());
    println!("cargo:rustc-link-search=native={}", dir.display());
}
