//! Link the restore engine as a static, non-PIE program at the start of the range libpmig
//! reserves (`pmig_abi::ENGINE_BASE`), with no C runtime.
fn main() {
    for arg in ["-nostartfiles", "-nostdlib", "-static", "-no-pie", "-Wl,--image-base=0x60000000", "-Wl,--build-id=none"] {
        println!("cargo:rustc-link-arg-bin=pmig-restore-engine={arg}");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
