//! Replays the corpus (`fuzz/corpus/<target>/`) and the generated seeds through every target:
//! any panic, including a broken round trip, fails the test with the file's name.

use std::panic::{self, AssertUnwindSafe};

use depot_fuzz::targets::{find, TARGETS};
use depot_fuzz::{corpus_files, corpus_root, seeds::seeds};

#[test]
fn every_corpus_folder_belongs_to_a_target() {
    for entry in std::fs::read_dir(corpus_root()).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        assert!(find(&name).is_some(), "corpus folder {name} has no target");
    }
}

#[test]
fn every_target_has_a_corpus_with_its_seeds() {
    for target in TARGETS {
        let files = corpus_files(target.name).unwrap();
        assert!(
            files.len() >= seeds(target.name).len().max(1),
            "{}: {} corpus files; run `cargo run -p depot-fuzz -- seed`",
            target.name,
            files.len()
        );
    }
}

#[test]
fn the_corpus_replays_without_a_panic() {
    let mut failures = Vec::new();
    let mut replayed = 0;
    for target in TARGETS {
        for path in corpus_files(target.name).unwrap() {
            let input = std::fs::read(&path).unwrap();
            if panic::catch_unwind(AssertUnwindSafe(|| (target.run)(&input))).is_err() {
                failures.push(path.display().to_string());
            }
            replayed += 1;
        }
    }
    assert!(replayed > 0);
    assert!(failures.is_empty(), "inputs that panic: {failures:#?}");
}

/// The seeds are valid messages: each must decode somewhere (an `ok` in its outcome), so that
/// round trips are exercised and a decoder that rejects everything is noticed.
#[test]
fn every_seed_decodes_in_its_target() {
    for target in TARGETS {
        for seed in seeds(target.name) {
            let outcome = (target.run)(&seed);
            let decodes = outcome.contains(":ok")
                || outcome.starts_with("tcp:")
                || outcome.starts_with("bus:");
            assert!(
                decodes,
                "{}: seed {:?} gives {outcome}",
                target.name,
                String::from_utf8_lossy(&seed)
            );
        }
    }
}
