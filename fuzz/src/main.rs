//! `depot-fuzz`: drives the fuzz targets without coverage feedback (the stable toolchain has no
//! libFuzzer). Inputs come from the corpus, mutated, or fresh random bytes; an input that
//! reaches an outcome not seen before joins the in-memory pool (and, with `--save-new`, the
//! corpus); an input that panics is saved as `crash-<hash>` in the target's corpus folder.
//!
//! ```text
//! depot-fuzz list
//! depot-fuzz seed                       write every target's generated seeds into the corpus
//! depot-fuzz <target> [--seconds N] [--seed S] [--save-new]
//! ```

use std::collections::HashSet;
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use depot_fuzz::mutate::{mutate, Rng};
use depot_fuzz::targets::{find, TARGETS};
use depot_fuzz::{corpus_files, corpus_root, input_name, seeds::seeds};

/// Most new inputs `--save-new` writes per run, so the corpus stays small.
const MAX_SAVED: usize = 40;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(command) = args.first() else {
        bail!("usage: depot-fuzz list | seed | <target> [--seconds N] [--seed S] [--save-new]");
    };
    match command.as_str() {
        "list" => {
            for target in TARGETS {
                println!("{}", target.name);
            }
            Ok(())
        }
        "seed" => write_seeds(),
        name => {
            let mut seconds = 60u64;
            let mut seed = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1);
            let mut save_new = false;
            let mut rest = args[1..].iter();
            while let Some(arg) = rest.next() {
                match arg.as_str() {
                    "--seconds" => seconds = rest.next().context("--seconds N")?.parse()?,
                    "--seed" => seed = rest.next().context("--seed S")?.parse()?,
                    "--save-new" => save_new = true,
                    other => bail!("unknown argument {other:?}"),
                }
            }
            fuzz(name, Duration::from_secs(seconds), seed, save_new)
        }
    }
}

fn write_seeds() -> anyhow::Result<()> {
    for target in TARGETS {
        let dir = corpus_root().join(target.name);
        std::fs::create_dir_all(&dir)?;
        for input in seeds(target.name) {
            std::fs::write(dir.join(format!("seed-{}", input_name(&input))), &input)?;
        }
    }
    Ok(())
}

fn fuzz(name: &str, budget: Duration, seed: u64, save_new: bool) -> anyhow::Result<()> {
    let target = find(name).with_context(|| format!("no target {name:?} (see `list`)"))?;
    let dir = corpus_root().join(target.name);
    std::fs::create_dir_all(&dir)?;
    let mut pool: Vec<Vec<u8>> = seeds(target.name);
    for path in corpus_files(target.name)? {
        pool.push(std::fs::read(&path)?);
    }
    // The panic hook keeps the last message instead of printing every repeat of it.
    let last_panic = Arc::new(Mutex::new(String::new()));
    let hook_panic = Arc::clone(&last_panic);
    panic::set_hook(Box::new(move |info| {
        if let Ok(mut last) = hook_panic.lock() {
            *last = info.to_string();
        }
    }));
    let mut outcomes = HashSet::new();
    for input in &pool {
        if let Ok(outcome) = panic::catch_unwind(AssertUnwindSafe(|| (target.run)(input))) {
            outcomes.insert(outcome);
        }
    }
    let mut rng = Rng::new(seed);
    let (mut runs, mut saved, mut crashes) = (0u64, 0usize, HashSet::new());
    let started = Instant::now();
    while started.elapsed() < budget {
        for _ in 0..256 {
            let base = &pool[rng.below(pool.len())];
            let other = &pool[rng.below(pool.len())];
            let input = mutate(&mut rng, base, other, target.multipart);
            runs += 1;
            match panic::catch_unwind(AssertUnwindSafe(|| (target.run)(&input))) {
                Ok(outcome) => {
                    if outcomes.insert(outcome) {
                        if save_new && saved < MAX_SAVED {
                            std::fs::write(
                                dir.join(format!("new-{}", input_name(&input))),
                                &input,
                            )?;
                            saved += 1;
                        }
                        pool.push(input);
                    }
                }
                Err(_) => {
                    let message = last_panic.lock().map(|m| m.clone()).unwrap_or_default();
                    let file = dir.join(format!("crash-{}", input_name(&input)));
                    if crashes.insert(message.clone()) {
                        eprintln!(
                            "CRASH in {name}: {message}\n  input saved as {}",
                            file.display()
                        );
                        std::fs::write(&file, &input)?;
                    }
                }
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{name}: {runs} runs in {secs:.0} s ({:.0}/s), seed {seed}, {} outcomes, pool {}, {} new saved, {} distinct crashes",
        runs as f64 / secs,
        outcomes.len(),
        pool.len(),
        saved,
        crashes.len()
    );
    if !crashes.is_empty() {
        bail!("{} distinct crashes in {name}", crashes.len());
    }
    Ok(())
}
