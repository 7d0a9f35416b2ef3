//! Reads manifest files and directories into a snapshot (the file source; the Kubernetes source
//! arrives with the watcher).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use portcullis_policy::load::{Loaded, SnapshotBuilder};

fn is_manifest(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    )
}

/// Every manifest file named by `paths`: files as given, directories walked (sorted, recursive).
pub fn manifest_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for path in paths {
        let meta =
            std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
        if meta.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
                .with_context(|| format!("listing {}", path.display()))?
                .map(|e| e.map(|e| e.path()))
                .collect::<std::io::Result<_>>()
                .with_context(|| format!("listing {}", path.display()))?;
            entries.sort();
            let dirs: Vec<PathBuf> = entries.iter().filter(|p| p.is_dir()).cloned().collect();
            files.extend(
                entries
                    .into_iter()
                    .filter(|p| p.is_file() && is_manifest(p)),
            );
            files.extend(manifest_files(&dirs)?);
        } else {
            files.push(path.clone());
        }
    }
    Ok(files)
}

/// Loads every manifest; invalid objects are in `errors`, the rest in the snapshot.
pub fn load(paths: &[PathBuf]) -> Result<Loaded> {
    let mut builder = SnapshotBuilder::new();
    for file in manifest_files(paths)? {
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        builder.add_yaml(&file.display().to_string(), &text);
    }
    Ok(builder.build())
}
