//! Files re-read when they change: each is read and hashed every poll (the files are small);
//! when the sha256 of its bytes moves, the new content is checked as at start and swapped in
//! whole, so a reader sees either the old value or the new one, never a mix. Content that does
//! not check is refused (logged, reported) and the loaded value stays: a half-written file
//! neither opens a listener nor locks everyone out.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
pub use streamscore_contracts::current::Current;

/// How often watched files are read, unless a caller says otherwise.
pub const POLL: Duration = Duration::from_secs(1);

/// The sha256 (hex) of a file's bytes (what `sha256sum` prints), or of several files'
/// contents together, each length-prefixed; with the contents. `None` when one cannot be
/// read now (being replaced, say): the next poll looks again.
pub fn fingerprint(paths: &[PathBuf]) -> Option<(String, Vec<Vec<u8>>)> {
    let mut contents = Vec::with_capacity(paths.len());
    for path in paths {
        contents.push(std::fs::read(path).ok()?);
    }
    let mut hasher = Sha256::new();
    match contents.as_slice() {
        [one] => hasher.update(one),
        all => {
            for bytes in all {
                hasher.update((bytes.len() as u64).to_be_bytes());
                hasher.update(bytes);
            }
        }
    }
    let sha256 = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Some((sha256, contents))
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reload {
    /// The new content is in force; its fingerprint.
    Loaded { what: &'static str, sha256: String },
    /// The new content was refused; the loaded one stays.
    Refused { what: &'static str, sha256: String, error: String },
}

impl Reload {
    pub fn loaded(&self) -> bool {
        matches!(self, Self::Loaded { .. })
    }

    /// Which file (or pair) it was.
    pub fn what(&self) -> &'static str {
        match self {
            Self::Loaded { what, .. } | Self::Refused { what, .. } => what,
        }
    }
}

/// Watches `paths` every `every` (until the task is aborted); when their fingerprint moves
/// from `loaded`, `load` checks the contents and, if it takes them, they replace `current`.
/// Each reload or refusal is logged and handed to `report`.
pub fn watch<T, F, R>(
    what: &'static str,
    paths: Vec<PathBuf>,
    loaded: String,
    current: Arc<Current<T>>,
    load: F,
    every: Duration,
    report: R,
) -> tokio::task::JoinHandle<()>
where
    T: Send + Sync + 'static,
    F: Fn(&[Vec<u8>]) -> Result<T, String> + Send + 'static,
    R: Fn(&Reload) + Send + 'static,
{
    tokio::spawn(async move {
        let mut seen = loaded;
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some((sha256, contents)) = fingerprint(&paths) else { continue };
            if sha256 == seen {
                continue;
            }
            let files: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
            let outcome = match load(&contents) {
                Ok(next) => {
                    current.set(next);
                    tracing::info!(files = ?files, sha256, "{what} reloaded; in force from now on");
                    Reload::Loaded { what, sha256: sha256.clone() }
                }
                Err(error) => {
                    tracing::error!(files = ?files, sha256, error, "{what} refused; keeping the loaded one");
                    Reload::Refused { what, sha256: sha256.clone(), error }
                }
            };
            report(&outcome);
            seen = sha256;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fingerprint_moves_with_either_file_and_not_otherwise() {
        let dir = tempfile::tempdir().expect("dir");
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, "ab").expect("a");
        std::fs::write(&b, "c").expect("b");
        let paths = vec![a.clone(), b.clone()];
        let first = fingerprint(&paths).expect("both read").0;
        assert_eq!(fingerprint(&paths).expect("again").0, first);
        // The same bytes split otherwise are other files.
        std::fs::write(&a, "a").expect("a");
        std::fs::write(&b, "bc").expect("b");
        assert_ne!(fingerprint(&paths).expect("moved").0, first);
        std::fs::remove_file(&b).expect("rm");
        assert!(fingerprint(&paths).is_none(), "a missing file is no fingerprint");
    }

    #[test]
    fn one_file_is_fingerprinted_as_sha256sum_prints_it() {
        let dir = tempfile::tempdir().expect("dir");
        let a = dir.path().join("a");
        std::fs::write(&a, "abc").expect("a");
        assert_eq!(
            fingerprint(&[a]).expect("read").0,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[tokio::test]
    async fn a_change_is_taken_and_a_bad_one_refused_keeping_the_loaded_value() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("n");
        std::fs::write(&path, "1").expect("write");
        let (sha256, _) = fingerprint(std::slice::from_ref(&path)).expect("read");
        let current = Arc::new(Current::new(1u32));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let task = watch(
            "number",
            vec![path.clone()],
            sha256,
            Arc::clone(&current),
            |c: &[Vec<u8>]| String::from_utf8_lossy(&c[0]).trim().parse::<u32>().map_err(|e| e.to_string()),
            Duration::from_millis(20),
            move |r: &Reload| {
                let _ = tx.send(r.clone());
            },
        );
        std::fs::write(&path, "2").expect("write");
        assert!(rx.recv().await.expect("a reload").loaded());
        assert_eq!(*current.get(), 2);
        std::fs::write(&path, "two").expect("write");
        assert!(!rx.recv().await.expect("a refusal").loaded());
        assert_eq!(*current.get(), 2, "a refused file leaves the loaded value");
        task.abort();
    }
}
