//! The manifest source: files and directories, reloaded when anything under them changes.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use notify::{EventKind, RecursiveMode, Watcher};
use portcullis_policy::load::{LoadError, Loaded, Origin, SnapshotBuilder};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::{recv_until, Error, Publisher, Result, State, EVENTS_TOTAL};

#[derive(Clone, Debug)]
pub struct FileOptions {
    /// A reload waits until no file event arrived for this long ...
    pub debounce: Duration,
    /// ... but not longer than this after the first event.
    pub max_delay: Duration,
}

impl Default for FileOptions {
    fn default() -> FileOptions {
        FileOptions {
            debounce: Duration::from_millis(200),
            max_delay: Duration::from_secs(1),
        }
    }
}

/// A running manifest source. Dropping it stops watching.
pub struct FileSource {
    rx: watch::Receiver<State>,
    task: JoinHandle<()>,
    _watcher: notify::RecommendedWatcher,
}

impl Drop for FileSource {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn is_manifest(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    )
}

/// Every manifest file under `paths` (a file named directly is taken whatever its extension),
/// sorted so that errors are reported in a stable order.
fn collect(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for path in paths {
        let meta = std::fs::metadata(path).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
        if meta.is_dir() {
            walk(path, &mut out)?;
        } else {
            out.push(path.clone());
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        // Removed while we walk: it has no manifests any more.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(Error::Io {
                path: dir.to_path_buf(),
                source,
            })
        }
    };
    for entry in entries {
        let entry = entry.map_err(|source| Error::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = entry.path();
        // Follow symlinks (ConfigMap volumes are symlink farms).
        let meta = match std::fs::metadata(&path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => return Err(Error::Io { path, source }),
        };
        let hidden = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.') && n != "." && n != "..");
        if meta.is_dir() {
            // Kubernetes ConfigMap volumes keep the real files in `..data`/`..<timestamp>`
            // directories behind symlinks; the symlinks are what we read.
            if !hidden {
                walk(&path, out)?;
            }
        } else if is_manifest(&path) && !hidden {
            out.push(path);
        }
    }
    Ok(())
}

/// The largest manifest file read (a million policies take about 230 MB).
pub const MAX_MANIFEST_FILE_BYTES: u64 = 512 << 20;

/// A manifest file's text, or why it cannot be used: not a regular file (a FIFO would block the
/// reader, a device never end), larger than [`MAX_MANIFEST_FILE_BYTES`], or not UTF-8.
fn read_manifest(path: &Path) -> std::result::Result<String, String> {
    use std::io::Read;
    // Checked before opening: opening a FIFO blocks until something writes to it.
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read: {e}"))?;
    if !meta.is_file() {
        return Err("cannot read: not a regular file".into());
    }
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read: {e}"))?;
    let mut bytes = Vec::new();
    file.take(MAX_MANIFEST_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read: {e}"))?;
    if bytes.len() as u64 > MAX_MANIFEST_FILE_BYTES {
        return Err(format!(
            "more than {MAX_MANIFEST_FILE_BYTES} bytes, the most a manifest file may have"
        ));
    }
    if bytes.starts_with(&[0xff, 0xfe]) || bytes.starts_with(&[0xfe, 0xff]) {
        return Err("UTF-16 or UTF-32 (a byte-order mark); manifests must be UTF-8".into());
    }
    String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let line = e.as_bytes()[..at].iter().filter(|b| **b == b'\n').count() + 1;
        format!("not UTF-8: invalid byte at offset {at} (line {line})")
    })
}

/// Reads and validates every manifest under `paths` once. A file that cannot be read is
/// rejected by name (an error of document 0) and the other files are used; a path named in
/// `paths` that does not exist is an error (nothing is returned).
pub fn load_files(paths: &[PathBuf]) -> Result<Loaded> {
    let mut builder = SnapshotBuilder::new();
    let mut unreadable = Vec::new();
    for file in collect(paths)? {
        let source = file.display().to_string();
        match read_manifest(&file) {
            Ok(text) => builder.add_yaml(&source, &text),
            // Deleted between the walk and the read: it no longer contributes.
            Err(_) if !file.exists() && !paths.contains(&file) => {}
            Err(message) => unreadable.push(unreadable_source(source, message)),
        }
    }
    let mut loaded = builder.build();
    loaded.errors.splice(0..0, unreadable);
    Ok(loaded)
}

impl FileSource {
    /// Loads `paths` and starts watching them. Fails if a path cannot be read now (there is no
    /// last good state to fall back on). Must be called within a Tokio runtime.
    pub fn spawn(paths: Vec<PathBuf>, options: FileOptions) -> Result<FileSource> {
        let loaded = load_files(&paths)?;
        let (mut publisher, rx) = Publisher::new("file");
        let now = Instant::now();
        let stale = has_unreadable_file(&loaded);
        publisher.publish(Arc::new(loaded.snapshot), loaded.errors, true, stale, now);

        let (event_tx, mut event_rx) = mpsc::unbounded_channel::<()>();
        let mut watcher =
            notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
                // Our own reads show up as access events: they change nothing.
                Ok(event) if matches!(event.kind, EventKind::Access(_)) => {}
                Ok(_) => {
                    let _ = event_tx.send(());
                }
                Err(e) => {
                    tracing::warn!("file watcher: {e}");
                    let _ = event_tx.send(());
                }
            })?;
        for path in &paths {
            if path.is_dir() {
                watcher.watch(path, RecursiveMode::Recursive)?;
            } else {
                // Editors and ConfigMap updates replace files by renaming: watch the directory.
                let parent = match path.parent() {
                    Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                    _ => PathBuf::from("."),
                };
                watcher.watch(&parent, RecursiveMode::NonRecursive)?;
            }
        }

        let task = tokio::spawn(async move {
            loop {
                let Some(()) = event_rx.recv().await else {
                    return;
                };
                let first = Instant::now();
                metrics::counter!(EVENTS_TOTAL, "source" => "file", "kind" => "file").increment(1);
                let hard_deadline = first + options.max_delay;
                loop {
                    let deadline = (Instant::now() + options.debounce).min(hard_deadline);
                    match recv_until(&mut event_rx, deadline).await {
                        Some(Some(())) => {
                            metrics::counter!(EVENTS_TOTAL, "source" => "file", "kind" => "file")
                                .increment(1);
                        }
                        Some(None) => return,
                        None => break,
                    }
                    if Instant::now() >= hard_deadline {
                        break;
                    }
                }
                let reload_paths = paths.clone();
                let result = tokio::task::spawn_blocking(move || load_files(&reload_paths)).await;
                let previous = publisher.current();
                match result {
                    Ok(Ok(loaded)) => {
                        let stale = has_unreadable_file(&loaded);
                        if *previous.snapshot == loaded.snapshot
                            && previous.errors == loaded.errors
                            && previous.stale == stale
                        {
                            tracing::debug!("files changed but the snapshot did not");
                            continue;
                        }
                        let snapshot = if *previous.snapshot == loaded.snapshot {
                            previous.snapshot.clone()
                        } else {
                            Arc::new(loaded.snapshot)
                        };
                        publisher.publish(snapshot, loaded.errors, true, stale, first);
                    }
                    Ok(Err(e)) => {
                        // Last good state: keep the snapshot, report the unreadable file.
                        tracing::error!("reload failed, keeping the last good state: {e}");
                        let (source, message) = match &e {
                            Error::Io { path, source } => {
                                (path.display().to_string(), format!("cannot read: {source}"))
                            }
                            other => (String::new(), other.to_string()),
                        };
                        let mut errors = previous.errors.clone();
                        errors.retain(|err| err.origin.document != 0);
                        errors.push(unreadable_source(source, message));
                        publisher.publish(previous.snapshot, errors, true, true, first);
                    }
                    Err(join) => tracing::error!("reload task failed: {join}"),
                }
            }
        });
        Ok(FileSource {
            rx,
            task,
            _watcher: watcher,
        })
    }

    /// A receiver of every published [`State`] (starts at the current one).
    pub fn subscribe(&self) -> watch::Receiver<State> {
        self.rx.clone()
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.rx.borrow().clone()
    }
}

/// A file could not be read: what it held is unknown, so the view is stale.
fn has_unreadable_file(loaded: &Loaded) -> bool {
    loaded.errors.iter().any(|e| e.origin.document == 0)
}

/// The error of a source that could not be read as a whole (document 0).
fn unreadable_source(source: String, message: String) -> LoadError {
    LoadError {
        origin: Origin {
            source,
            document: 0,
        },
        object: None,
        field: String::new(),
        message,
    }
}
