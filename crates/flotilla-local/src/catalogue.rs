//! Model names: a small catalogue of hub repositories and files, the
//! models folder, and what a `--model NAME|PATH` means.

use std::path::{Path, PathBuf};

/// One model flotilla knows by name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The name (`gemma-3-270m`).
    pub name: &'static str,
    /// The Hugging Face repository.
    pub repo: &'static str,
    /// The file in it.
    pub file: &'static str,
    /// Its SHA-256, checked after download when known.
    pub sha256: Option<&'static str>,
    /// Its size in bytes, when known (for the progress bar before the
    /// server says).
    pub bytes: Option<u64>,
    /// One line about it.
    pub about: &'static str,
}

/// The default model: small enough for any machine, and the one the
/// tests use.
pub const DEFAULT_MODEL: &str = "gemma-3-270m";

/// The catalogue. Downloads are checked against the SHA-256 the hub
/// publishes for each file (its `X-Linked-Etag`), or the one given here.
pub const CATALOGUE: &[Entry] = &[
    Entry {
        name: "gemma-3-270m",
        repo: "ggml-org/gemma-3-270m-GGUF",
        file: "gemma-3-270m-Q4_K_M.gguf",
        sha256: None,
        bytes: None,
        about: "Gemma 3 270M base, Q4_K_M (~240 MB): the default; fast anywhere, not wise",
    },
    Entry {
        name: "gemma-3-270m-it",
        repo: "ggml-org/gemma-3-270m-it-GGUF",
        file: "gemma-3-270m-it-Q8_0.gguf",
        sha256: None,
        bytes: None,
        about: "Gemma 3 270M instruction-tuned, Q8_0 (~290 MB)",
    },
    Entry {
        name: "qwen2.5-coder-1.5b",
        repo: "Qwen/Qwen2.5-Coder-1.5B-Instruct-GGUF",
        file: "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        sha256: None,
        bytes: None,
        about: "Qwen2.5 Coder 1.5B instruct, Q4_K_M (~1.1 GB): a small coding worker",
    },
    Entry {
        name: "qwen2.5-coder-7b",
        repo: "Qwen/Qwen2.5-Coder-7B-Instruct-GGUF",
        file: "qwen2.5-coder-7b-instruct-q4_k_m.gguf",
        sha256: None,
        bytes: None,
        about: "Qwen2.5 Coder 7B instruct, Q4_K_M (~4.7 GB): a worker for an 8 GB GPU",
    },
];

/// The catalogue entry named `name`.
pub fn entry(name: &str) -> Option<&'static Entry> {
    CATALOGUE.iter().find(|e| e.name == name)
}

/// Where model files live: `$FLOTILLA_MODELS_DIR`, else `models` in the
/// data folder.
pub fn models_dir(data_dir: &Path) -> PathBuf {
    match std::env::var_os("FLOTILLA_MODELS_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => data_dir.join("models"),
    }
}

/// What `--model X` names: a path to a GGUF file (anything with a `/` or
/// ending in `.gguf`), a catalogue name (its file in the models folder), or
/// `NAME.gguf` in the models folder.
pub fn resolve(model: &str, dir: &Path) -> Result<PathBuf, String> {
    if model.contains('/') || model.ends_with(".gguf") {
        let p = PathBuf::from(model);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("no model file at {model}"))
        };
    }
    let candidates: Vec<PathBuf> = entry(model)
        .map(|e| dir.join(e.file))
        .into_iter()
        .chain(std::iter::once(dir.join(format!("{model}.gguf"))))
        .collect();
    if let Some(p) = candidates.iter().find(|p| p.is_file()) {
        return Ok(p.clone());
    }
    match entry(model) {
        Some(_) => Err(format!(
            "model {model} is not downloaded: `flotilla model pull {model}` fetches it into {}",
            dir.display()
        )),
        None => {
            let known: Vec<&str> = CATALOGUE.iter().map(|e| e.name).collect();
            Err(format!(
                "no model {model:?}: give a GGUF path, a file NAME.gguf in {}, or one of {}",
                dir.display(),
                known.join(", ")
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_paths_and_missing_models() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("mine.gguf"), b"GGUF").unwrap();
        assert_eq!(resolve("mine", d).unwrap(), d.join("mine.gguf"));
        let p = d.join("mine.gguf").to_string_lossy().into_owned();
        assert_eq!(resolve(&p, d).unwrap(), d.join("mine.gguf"));
        let e = resolve("gemma-3-270m", d).unwrap_err();
        assert!(e.contains("flotilla model pull gemma-3-270m"), "{e}");
        std::fs::write(d.join(entry("gemma-3-270m").unwrap().file), b"GGUF").unwrap();
        assert!(resolve("gemma-3-270m", d).is_ok());
        assert!(resolve("nope", d).unwrap_err().contains("gemma-3-270m"));
        assert!(resolve("/no/such.gguf", d).is_err());
    }
}
