//! Stable-Rust fallback for the fuzz targets: runs each target body on every file of its corpus
//! (corpus/<target>/) and then on N random or mutated inputs (default 200000), catching panics.
//!
//!     cargo run --release --bin smoke -- [target] [N]

use std::panic::{self, AssertUnwindSafe};
use std::path::Path;
use std::time::Instant;

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 { 0 } else { (self.next() % n as u64) as usize }
    }
}

fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..1 + rng.below(8) {
        match rng.below(7) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            1 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] = rng.next() as u8;
            }
            2 => {
                let cut = rng.below(v.len() + 1);
                v.truncate(cut);
            }
            3 => {
                let i = rng.below(v.len() + 1);
                let extra: Vec<u8> = (0..rng.below(16)).map(|_| rng.next() as u8).collect();
                v.splice(i..i, extra);
            }
            4 if !v.is_empty() => {
                let i = rng.below(v.len());
                let end = (i + 1 + rng.below(16)).min(v.len());
                v.drain(i..end);
            }
            5 if !v.is_empty() => {
                // Interesting values in a length-like position.
                let i = rng.below(v.len());
                v[i] = [0x00, 0x01, 0x7f, 0x80, 0xff][rng.below(5)];
            }
            _ => {}
        }
    }
    v
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let only = args.get(1).filter(|a| *a != "all").cloned();
    let n: u64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(200_000);
    let corpus_root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    panic::set_hook(Box::new(|_| {}));
    let mut failed = false;
    for (name, body) in attestation_fuzz::TARGETS {
        if only.as_deref().is_some_and(|o| o != name) {
            continue;
        }
        let mut seeds: Vec<Vec<u8>> = Vec::new();
        if let Ok(dir) = std::fs::read_dir(corpus_root.join(name)) {
            for e in dir.flatten() {
                if let Ok(b) = std::fs::read(e.path()) {
                    seeds.push(b);
                }
            }
        }
        seeds.extend(attestation_fuzz::generated_seeds(name));
        let start = Instant::now();
        let mut execs = 0u64;
        let mut crashes = 0u64;
        let mut run = |input: &[u8], execs: &mut u64| {
            *execs += 1;
            if panic::catch_unwind(AssertUnwindSafe(|| body(input))).is_err() {
                crashes += 1;
                let path = std::env::temp_dir().join(format!("smoke-{name}-crash-{crashes}"));
                let _ = std::fs::write(&path, input);
                if crashes <= 5 {
                    eprintln!("{name}: PANIC on input saved to {}", path.display());
                }
            }
        };
        for s in &seeds {
            run(s, &mut execs);
        }
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ name.len() as u64);
        for _ in 0..n {
            let input = if seeds.is_empty() || rng.below(10) == 0 {
                (0..rng.below(2048)).map(|_| rng.next() as u8).collect()
            } else {
                let seed = &seeds[rng.below(seeds.len())];
                mutate(&mut rng, seed)
            };
            run(&input, &mut execs);
        }
        println!(
            "{name}: {} corpus files, {execs} executions in {:.1} s, {crashes} panics",
            seeds.len(),
            start.elapsed().as_secs_f64()
        );
        failed |= crashes > 0;
    }
    std::process::exit(i32::from(failed));
}
