//! `rust-threads STEPS` — a Rust test program for pmig: std threads, mpsc
//! channels and an `Arc<Mutex<_>>`.
//!
//! Three workers each own a job channel; every step the main thread sends
//! each worker a job (a step number and a heap `Vec`), the worker checks and
//! sums it, records the step in a shared `Arc<Mutex<Vec<u64>>>` and answers on
//! a shared result channel.  The main thread checks every answer, the shared
//! state and its own heap and stack patterns, prints `step N`, flushes, and
//! sleeps 30 ms.  After the last step it closes the job channels and joins the
//! workers, checking their return values.  Any failed check prints
//! `CORRUPT ...` and exits 3, like the C programs.

use std::io::Write;
use std::process::exit;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

const WORKERS: usize = 3;
const JOB_WORDS: usize = 4096;

/// One unit of work sent to a worker.
struct Job {
    step: u64,
    data: Vec<u64>,
}

/// A worker's answer to one job.
struct Answer {
    worker: usize,
    step: u64,
    sum: u64,
}

fn corrupt(msg: &str) -> ! {
    println!("CORRUPT {msg}");
    let _ = std::io::stdout().flush();
    eprintln!("CORRUPT {msg}");
    exit(3);
}

/// The same mixing function as `programs/common.h`'s `pattern()`.
fn pattern(step: u64, salt: u64, i: u64) -> u64 {
    let mut x = (step.wrapping_add(1)).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (salt << 40)
        ^ i.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 29;
    x = x.wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 32;
    x
}

fn job_data(step: u64, worker: usize) -> Vec<u64> {
    (0..JOB_WORDS as u64)
        .map(|i| pattern(step, 500 + worker as u64, i))
        .collect()
}

fn checksum(data: &[u64]) -> u64 {
    data.iter().enumerate().fold(0u64, |acc, (i, v)| {
        acc.wrapping_add(v.wrapping_mul(i as u64 + 1))
    })
}

fn worker(
    id: usize,
    jobs: mpsc::Receiver<Job>,
    answers: mpsc::Sender<Answer>,
    shared: Arc<Mutex<Vec<u64>>>,
) -> (usize, u64) {
    let mut done = 0u64;
    let mut last_step = 0u64;
    for job in jobs {
        if job.step != last_step + 1 {
            corrupt(&format!(
                "worker {id}: got step {} after step {last_step}",
                job.step
            ));
        }
        if job.data != job_data(job.step, id) {
            corrupt(&format!(
                "worker {id}: job data of step {} is wrong",
                job.step
            ));
        }
        last_step = job.step;
        done += 1;
        shared.lock().unwrap_or_else(|_| corrupt("poisoned mutex"))[id] = job.step;
        let answer = Answer {
            worker: id,
            step: job.step,
            sum: checksum(&job.data),
        };
        if answers.send(answer).is_err() {
            corrupt(&format!("worker {id}: result channel closed"));
        }
    }
    (id, done)
}

fn main() {
    let steps: u64 = match std::env::args().nth(1).map(|s| s.parse()) {
        Some(Ok(n)) if n >= 1 => n,
        _ => {
            eprintln!("usage: rust-threads STEPS");
            exit(2);
        }
    };

    let shared = Arc::new(Mutex::new(vec![0u64; WORKERS]));
    let (answer_tx, answer_rx) = mpsc::channel::<Answer>();
    let mut job_txs = Vec::new();
    let mut handles = Vec::new();
    for id in 0..WORKERS {
        let (tx, rx) = mpsc::channel::<Job>();
        job_txs.push(tx);
        let answers = answer_tx.clone();
        let shared = Arc::clone(&shared);
        let handle = thread::Builder::new()
            .name(format!("worker-{id}"))
            .spawn(move || worker(id, rx, answers, shared))
            .unwrap_or_else(|e| corrupt(&format!("spawn failed: {e}")));
        handles.push(handle);
    }
    drop(answer_tx);

    let mut heap: Vec<u64> = (0..8192).map(|i| pattern(0, 600, i)).collect();
    let mut stack = [0u64; 256];
    for (i, w) in stack.iter_mut().enumerate() {
        *w = pattern(0, 601, i as u64);
    }

    let stdout = std::io::stdout();
    for step in 1..=steps {
        for (i, w) in heap.iter().enumerate() {
            if *w != pattern(step - 1, 600, i as u64) {
                corrupt(&format!(
                    "heap word {i} lost the pattern of step {}",
                    step - 1
                ));
            }
        }
        for (i, w) in stack.iter().enumerate() {
            if *w != pattern(step - 1, 601, i as u64) {
                corrupt(&format!(
                    "stack word {i} lost the pattern of step {}",
                    step - 1
                ));
            }
        }

        for (id, tx) in job_txs.iter().enumerate() {
            let job = Job {
                step,
                data: job_data(step, id),
            };
            if tx.send(job).is_err() {
                corrupt(&format!("job channel of worker {id} closed"));
            }
        }
        let mut seen = [false; WORKERS];
        for _ in 0..WORKERS {
            let answer = answer_rx
                .recv_timeout(Duration::from_secs(10))
                .unwrap_or_else(|e| corrupt(&format!("step {step}: no answer: {e}")));
            if answer.step != step || seen[answer.worker] {
                corrupt(&format!(
                    "step {step}: unexpected answer for step {} from worker {}",
                    answer.step, answer.worker
                ));
            }
            seen[answer.worker] = true;
            if answer.sum != checksum(&job_data(step, answer.worker)) {
                corrupt(&format!(
                    "step {step}: wrong sum from worker {}",
                    answer.worker
                ));
            }
        }
        {
            let state = shared.lock().unwrap_or_else(|_| corrupt("poisoned mutex"));
            if state.iter().any(|&s| s != step) {
                corrupt(&format!("step {step}: shared state is {:?}", *state));
            }
        }

        for (i, w) in heap.iter_mut().enumerate() {
            *w = pattern(step, 600, i as u64);
        }
        for (i, w) in stack.iter_mut().enumerate() {
            *w = pattern(step, 601, i as u64);
        }

        let mut out = stdout.lock();
        if writeln!(out, "step {step}")
            .and_then(|()| out.flush())
            .is_err()
        {
            exit(4);
        }
        drop(out);
        if step < steps {
            thread::sleep(Duration::from_millis(30));
        }
    }

    drop(job_txs);
    for handle in handles {
        let (id, done) = handle
            .join()
            .unwrap_or_else(|_| corrupt("a worker panicked"));
        if done != steps {
            corrupt(&format!("worker {id} did {done} jobs, expected {steps}"));
        }
    }
}
