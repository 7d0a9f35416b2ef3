//! What the CLI tests share: running the built `portcullis` from the repository's root.

use std::path::PathBuf;
use std::process::{Command, Output};

/// Runs `portcullis ARGS` from the repository's root (where `configs/` is) and waits for it.
pub fn portcullis(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(args)
        .current_dir(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".."))
        .output()
        .expect("portcullis runs")
}
