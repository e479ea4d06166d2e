//! Build script for the end-to-end tests: compiles every helper program under
//! `programs/*.c` with `gcc -O1 -g -pthread -Wall` (plus the flags a
//! `pmig-build-flags:` line in the source adds) into `OUT_DIR` and exports
//! each one's path as `PMIG_TEST_PROG_<NAME>` (name upper-cased, `-` → `_`),
//! read by `src/lib.rs` through `env!`.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let programs = Path::new("programs");
    println!("cargo:rerun-if-changed={}", programs.display());

    let mut sources: Vec<PathBuf> = Vec::new();
    let mut headers: Vec<PathBuf> = Vec::new();
    for entry in fs::read_dir(programs).expect("tests/programs exists") {
        let path = entry.expect("readable directory entry").path();
        match path.extension().and_then(|e| e.to_str()) {
            Some("c") => sources.push(path),
            Some("h") => headers.push(path),
            _ => {}
        }
    }
    sources.sort();
    for header in &headers {
        println!("cargo:rerun-if-changed={}", header.display());
    }

    for src in &sources {
        println!("cargo:rerun-if-changed={}", src.display());
        let stem = src
            .file_stem()
            .and_then(|s| s.to_str())
            .expect("program file names are UTF-8");
        let exe = out_dir.join(stem);
        let output = Command::new("gcc")
            .args(["-O1", "-g", "-pthread", "-Wall"])
            .args(extra_flags(src))
            .arg("-o")
            .arg(&exe)
            .arg(src)
            .output()
            .expect("gcc must be installed to build the test programs");
        for line in String::from_utf8_lossy(&output.stderr).lines() {
            println!("cargo:warning={}: {line}", src.display());
        }
        if !output.status.success() {
            panic!(
                "gcc failed to compile {} ({})",
                src.display(),
                output.status
            );
        }
        let var = format!(
            "PMIG_TEST_PROG_{}",
            stem.to_ascii_uppercase().replace('-', "_")
        );
        println!("cargo:rustc-env={var}={}", exe.display());
    }
}

/// The flags a `pmig-build-flags: ...` line in `src` adds (e.g. `-static -nostdlib`).
fn extra_flags(src: &Path) -> Vec<String> {
    let text = fs::read_to_string(src).unwrap_or_default();
    text.lines()
        .find_map(|l| l.split_once("pmig-build-flags:").map(|(_, f)| f))
        .map(|f| f.split_whitespace().map(String::from).collect())
        .unwrap_or_default()
}
