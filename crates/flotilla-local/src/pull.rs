//! `flotilla model pull`: a model file from the Hugging Face hub, resumed
//! where an earlier try stopped, checked against its SHA-256, and put in
//! place only when whole and right.
//!
//! The hub is `$HF_ENDPOINT` (as for Hugging Face's own tools), else
//! `https://huggingface.co`; a file is `{endpoint}/{repo}/resolve/main/{file}`.
//! The hub names the SHA-256 of a large (LFS) file in `X-Linked-Etag`.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use futures::StreamExt;
use sha2::{Digest, Sha256};

/// Where to fetch from and what to expect.
#[derive(Clone, Debug)]
pub struct PullSpec {
    /// The hub ([`endpoint`]).
    pub endpoint: String,
    /// `owner/name` on the hub.
    pub repo: String,
    /// The file in it.
    pub file: String,
    /// The SHA-256 to expect (else the hub's).
    pub sha256: Option<String>,
}

/// How far a download is.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    /// Bytes on disk.
    pub done: u64,
    /// Bytes in all, when known.
    pub total: Option<u64>,
}

/// The hub's address.
pub fn endpoint() -> String {
    std::env::var("HF_ENDPOINT")
        .ok()
        .filter(|e| !e.trim().is_empty())
        .unwrap_or_else(|| "https://huggingface.co".into())
        .trim_end_matches('/')
        .to_owned()
}

fn sha256_hex(path: &Path) -> Result<String, String> {
    let mut f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// A SHA-256 as the hub's etag gives it (`"abc..."`, maybe `W/`).
fn etag_sha(value: &str) -> Option<String> {
    let v = value.trim().trim_start_matches("W/").trim_matches('"');
    (v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit())).then(|| v.to_ascii_lowercase())
}

/// Downloads `spec` into `dir` (as `spec.file`), resuming a `.part` file
/// left by an earlier try; returns the final path. `progress` is called as
/// bytes arrive.
pub async fn pull(
    spec: &PullSpec,
    dir: &Path,
    progress: &mut (dyn FnMut(Progress) + Send),
) -> Result<PathBuf, String> {
    if spec.file.contains('/') || spec.file.contains("..") || spec.file.is_empty() {
        return Err(format!("bad file name {:?}", spec.file));
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let dest = dir.join(&spec.file);
    let part = dir.join(format!("{}.part", spec.file));
    let url = format!("{}/{}/resolve/main/{}", spec.endpoint, spec.repo, spec.file);
    let client = |redirects: bool| {
        reqwest::Client::builder()
            .user_agent(concat!("flotilla/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(std::time::Duration::from_secs(20))
            // A stalled transfer fails (and is resumed by the next try).
            .read_timeout(std::time::Duration::from_secs(60))
            .redirect(if redirects {
                reqwest::redirect::Policy::limited(5)
            } else {
                reqwest::redirect::Policy::none()
            })
            .build()
            .map_err(|e| e.to_string())
    };
    // The SHA-256 a part was started against: a file that changed on the
    // hub since is fetched again from the start, not spliced.
    let part_sha = dir.join(format!("{}.part.sha256", spec.file));
    let mut have = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
    let range = |have: u64| (have > 0).then(|| format!("bytes={have}-"));
    let mut req = client(false)?.get(&url);
    if let Some(r) = range(have) {
        req = req.header("range", r);
    }
    // The hub itself answers first (its SHA-256 of a large file is in
    // X-Linked-Etag on its redirect to the storage that serves the bytes);
    // nothing from another host is trusted as the file's hash.
    let first = req
        .send()
        .await
        .map_err(|e| format!("cannot reach the hub at {url}: {e}"))?;
    let hub_sha = ["x-linked-etag", "etag"]
        .iter()
        .filter_map(|h| first.headers().get(*h))
        .filter_map(|v| v.to_str().ok())
        .find_map(etag_sha);
    let expect = spec.sha256.clone().or(hub_sha);
    let started_for = std::fs::read_to_string(&part_sha).ok();
    if have > 0 && expect.is_some() && started_for.as_deref().map(str::trim) != expect.as_deref() {
        let _ = std::fs::remove_file(&part);
        have = 0;
    }
    if let Some(sha) = &expect {
        let _ = std::fs::write(&part_sha, sha);
    }
    let resp = if first.status().is_redirection() {
        let location = first
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| format!("the hub redirected {url} nowhere"))?;
        let to = first
            .url()
            .join(location)
            .map_err(|e| format!("the hub redirected {url} to a bad address: {e}"))?;
        let mut req = client(true)?.get(to);
        if let Some(r) = range(have) {
            req = req.header("range", r);
        }
        req.send()
            .await
            .map_err(|e| format!("cannot fetch {url} from where the hub sent it: {e}"))?
    } else if have == 0 && started_for.is_some() {
        // The part was dropped above: ask again from the start.
        client(true)?
            .get(&url)
            .send()
            .await
            .map_err(|e| format!("cannot reach the hub at {url}: {e}"))?
    } else {
        first
    };
    let status = resp.status();
    if status.as_u16() == 416 && have > 0 {
        // The part is already whole: check it below.
    } else if !status.is_success() {
        return Err(match status.as_u16() {
            401 | 403 => format!("the hub refused {url} ({status}): the model may need a login or a licence accepted on the hub"),
            404 => format!("the hub has no {url}"),
            _ => format!("the hub answered {status} for {url}"),
        });
    }
    let resumed = status.as_u16() == 206;
    if resumed {
        // The part must go on where it stopped.
        let starts = resp
            .headers()
            .get("content-range")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("bytes "))
            .and_then(|v| v.split('-').next())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if starts != Some(have) {
            let _ = std::fs::remove_file(&part);
            return Err(format!(
                "the hub resumed {url} at {starts:?}, not at byte {have}: the part was dropped; run the command again"
            ));
        }
    }
    let mut done = if resumed { have } else { 0 };
    let total = resp.content_length().map(|n| n + done);
    if status.is_success() {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(resumed)
            .truncate(!resumed)
            .open(&part)
            .map_err(|e| format!("{}: {e}", part.display()))?;
        progress(Progress { done, total });
        let mut body = resp.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| {
                format!("the download stopped at {done} bytes ({e}); run the same command again to resume")
            })?;
            file.write_all(&chunk)
                .map_err(|e| format!("{}: {e}", part.display()))?;
            done += chunk.len() as u64;
            progress(Progress { done, total });
        }
        file.sync_all()
            .map_err(|e| format!("{}: {e}", part.display()))?;
        if let Some(t) = total {
            if done < t {
                return Err(format!(
                    "the download stopped at {done} of {t} bytes; run the same command again to resume"
                ));
            }
        }
    }
    let check = part.clone();
    let got = tokio::task::spawn_blocking(move || sha256_hex(&check))
        .await
        .map_err(|e| e.to_string())??;
    if let Some(want) = &expect {
        if !got.eq_ignore_ascii_case(want) {
            let _ = std::fs::remove_file(&part);
            return Err(format!(
                "{} has SHA-256 {got}, not {want}: the download is corrupt and was removed; run the command again",
                spec.file
            ));
        }
    }
    crate::engine::check_gguf(&part).inspect_err(|_| {
        let _ = std::fs::remove_file(&part);
    })?;
    std::fs::rename(&part, &dest).map_err(|e| format!("{}: {e}", dest.display()))?;
    let _ = std::fs::remove_file(&part_sha);
    Ok(dest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_give_a_sha_only_when_they_are_one() {
        let sha = "a".repeat(64);
        assert_eq!(etag_sha(&format!("\"{sha}\"")), Some(sha.clone()));
        assert_eq!(etag_sha(&format!("W/\"{sha}\"")), Some(sha));
        assert_eq!(etag_sha("\"abc-123\""), None);
    }
}
