//! Fuzz target for the image decoder, standalone: runs `pmig_image::fuzz::image` on standard
//! input, for an outside fuzzer (`afl-fuzz -- target/release/examples/fuzz_image`, or
//! honggfuzz). `fuzz_image --sample > seed.bin` writes a valid image to start from.
//! A panic aborts (the fuzzer's crash); a refusal exits 0.

use std::io::{Read, Write};

fn main() {
    if std::env::args().nth(1).as_deref() == Some("--sample") {
        std::io::stdout().write_all(&pmig_image::fuzz::sample_image()).expect("write the sample");
        return;
    }
    let mut data = Vec::new();
    std::io::stdin().read_to_end(&mut data).expect("read standard input");
    match pmig_image::fuzz::image(&data) {
        Some(v) => println!("accepted: {} regions, {} bytes", v.manifest.regions.len(), v.file_len),
        None => println!("refused"),
    }
}
