//! Fuzz target for the receiver's side of the transfer protocol, standalone: runs
//! `pmig_image::fuzz::wire` (AUTH, FILES, frames, the image they carry) on standard input,
//! for an outside fuzzer. `fuzz_wire --sample > seed.bin` writes a valid sender's stream
//! (LZ4 frames and raw ones) to start from. A panic aborts; a refusal exits 0.

use std::io::{Read, Write};

fn main() {
    if std::env::args().nth(1).as_deref() == Some("--sample") {
        let s = pmig_image::fuzz::sample_stream(&pmig_image::fuzz::sample_image(), true, 3000);
        std::io::stdout().write_all(&s).expect("write the sample");
        return;
    }
    let mut data = Vec::new();
    std::io::stdin().read_to_end(&mut data).expect("read standard input");
    match pmig_image::fuzz::wire(&data) {
        Ok(r) => println!("accepted: {} files offered, an image of {} bytes", r.files.len(), r.image.file_len),
        Err(e) => println!("refused: {e}"),
    }
}
