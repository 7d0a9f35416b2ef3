//! Fuzzing the manifest path: arbitrary text and byte-level mutations of valid manifests must
//! yield objects or errors, never a panic. Inputs that once broke it live in `tests/corpus/` and
//! are replayed on every run.

use portcullis_policy::load::load_sources;
use proptest::prelude::*;

const SEED: &str = include_str!("corpus/seed-policies.yaml");

fn check(text: &str) {
    let loaded = load_sources([("fuzz.yaml", text)]);
    for error in &loaded.errors {
        // Every error renders with its source and document.
        assert!(error.to_string().starts_with("fuzz.yaml doc "), "{error}");
    }
}

#[test]
fn corpus_replays_without_panic() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut count = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        check(&String::from_utf8_lossy(&bytes));
        count += 1;
    }
    assert!(count > 0);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics(text in "(?s).{0,400}") {
        check(&text);
    }

    #[test]
    fn mutated_manifests_never_panic(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..12)
    ) {
        let mut bytes = SEED.as_bytes().to_vec();
        for (at, byte, op) in edits {
            if bytes.is_empty() { break; }
            let i = at.index(bytes.len());
            match op {
                0 => bytes[i] = byte,
                1 => { bytes.remove(i); }
                _ => bytes.insert(i, b" :-[]{}\n0/,#*&!|>'\"x"[usize::from(byte) % 20]),
            }
        }
        check(&String::from_utf8_lossy(&bytes));
    }
}
