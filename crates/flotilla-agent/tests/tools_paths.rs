//! Path escapes: every attack is tried through the tools, and the host is
//! checked afterwards.

#![allow(clippy::unwrap_used, clippy::expect_used)] // helpers outside #[test] fns panic by design

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;

use flotilla_agent::tools::{
    resolve_in_workspace, run_tool, PathError, PathIntent, ToolContext, ToolOutcome,
};
use serde_json::json;
use tempfile::TempDir;

/// A workspace and, beside it, an "outside" directory holding a secret.
struct Host {
    _root: TempDir,
    ctx: ToolContext,
    outside: std::path::PathBuf,
}

fn host() -> Host {
    let root = tempfile::tempdir().unwrap();
    let ws = root.path().join("ws");
    let outside = root.path().join("outside");
    fs::create_dir_all(&ws).unwrap();
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("secret.txt"), "top secret\n").unwrap();
    let ctx = ToolContext::on_host(&ws).unwrap();
    let outside = outside.canonicalize().unwrap();
    Host {
        _root: root,
        ctx,
        outside,
    }
}

async fn call(ctx: &ToolContext, name: &str, args: serde_json::Value) -> (String, bool) {
    match run_tool(ctx, name, &args.to_string()).await {
        ToolOutcome::Output { text, is_error } => (text, is_error),
        ToolOutcome::Finish { answer } => panic!("unexpected finish: {answer}"),
    }
}

/// Snapshot of a directory: sorted (relative path, content) pairs.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in walk(dir) {
        let rel = entry.strip_prefix(dir).unwrap().display().to_string();
        let content = if entry.is_file() {
            fs::read(&entry).unwrap()
        } else {
            Vec::new()
        };
        out.push((rel, content));
    }
    out.sort();
    out
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        out.push(path.clone());
        if fs::symlink_metadata(&path).unwrap().is_dir() {
            out.extend(walk(&path));
        }
    }
    out
}

#[tokio::test]
async fn dot_dot_traversal_is_refused() {
    let h = host();
    let before = snapshot(&h.outside);
    let (text, err) = call(
        &h.ctx,
        "read_file",
        json!({"path": "../outside/secret.txt"}),
    )
    .await;
    assert!(err);
    assert!(text.contains("escapes the workspace"), "{text}");
    assert!(text.contains("use a path inside it"), "{text}");
    assert!(!text.contains("top secret"));

    for path in [
        "../outside/secret.txt",
        "../outside/new.txt",
        "sub/../../outside/new.txt",
    ] {
        let (text, err) = call(
            &h.ctx,
            "write_file",
            json!({"path": path, "content": "pwned"}),
        )
        .await;
        assert!(err, "{path}: {text}");
        assert!(text.contains("escapes the workspace"), "{text}");
    }
    let (text, err) = call(
        &h.ctx,
        "edit_file",
        json!({"path": "../outside/secret.txt", "old_string": "top", "new_string": "pwned"}),
    )
    .await;
    assert!(err, "{text}");
    let (_, err) = call(&h.ctx, "shell", json!({"command": "true", "workdir": ".."})).await;
    assert!(err);
    let (_, err) = call(
        &h.ctx,
        "grep",
        json!({"pattern": "secret", "path": "../outside"}),
    )
    .await;
    assert!(err);
    let (_, err) = call(&h.ctx, "list_files", json!({"path": ".."})).await;
    assert!(err);
    assert_eq!(snapshot(&h.outside), before);
    assert!(!h.ctx.workspace.join("sub").exists());
}

#[tokio::test]
async fn absolute_paths_outside_are_refused() {
    let h = host();
    let before = fs::read("/etc/passwd").unwrap();
    let (text, err) = call(&h.ctx, "read_file", json!({"path": "/etc/passwd"})).await;
    assert!(err);
    assert!(
        text.contains("path \"/etc/passwd\" escapes the workspace"),
        "{text}"
    );
    assert!(!text.contains("root:"));
    let secret = h.outside.join("secret.txt");
    let (text, err) = call(
        &h.ctx,
        "write_file",
        json!({"path": secret.to_str().unwrap(), "content": "pwned"}),
    )
    .await;
    assert!(err, "{text}");
    assert_eq!(fs::read_to_string(&secret).unwrap(), "top secret\n");
    assert_eq!(fs::read("/etc/passwd").unwrap(), before);
}

#[tokio::test]
async fn symlink_to_etc_is_refused() {
    let h = host();
    symlink("/etc", h.ctx.workspace.join("etc")).unwrap();
    let (text, err) = call(&h.ctx, "read_file", json!({"path": "etc/passwd"})).await;
    assert!(err);
    assert!(
        text.contains("resolves through a symlink to /etc/passwd"),
        "{text}"
    );
    assert!(!text.contains("root:"));
    let (_, err) = call(&h.ctx, "list_files", json!({"path": "etc"})).await;
    assert!(err);
    let (_, err) = call(&h.ctx, "grep", json!({"pattern": "root", "path": "etc"})).await;
    assert!(err);
    // Walking the workspace does not follow the link either.
    let (text, _) = call(&h.ctx, "grep", json!({"pattern": "root:"})).await;
    assert!(text.starts_with("no matches"), "{text}");
    assert!(!Path::new("/etc/flotilla-pwned").exists());
    let (_, err) = call(
        &h.ctx,
        "write_file",
        json!({"path": "etc/flotilla-pwned", "content": "x"}),
    )
    .await;
    assert!(err);
    assert!(!Path::new("/etc/flotilla-pwned").exists());
}

#[tokio::test]
async fn symlinked_file_pointing_outside_is_refused_for_every_tool() {
    let h = host();
    let secret = h.outside.join("secret.txt");
    symlink(&secret, h.ctx.workspace.join("innocent.txt")).unwrap();
    let (text, err) = call(&h.ctx, "read_file", json!({"path": "innocent.txt"})).await;
    assert!(err);
    assert!(!text.contains("top secret"), "{text}");
    let (_, err) = call(
        &h.ctx,
        "write_file",
        json!({"path": "innocent.txt", "content": "pwned"}),
    )
    .await;
    assert!(err);
    let (_, err) = call(
        &h.ctx,
        "edit_file",
        json!({"path": "innocent.txt", "old_string": "top", "new_string": "pwned"}),
    )
    .await;
    assert!(err);
    assert_eq!(fs::read_to_string(&secret).unwrap(), "top secret\n");
}

#[tokio::test]
async fn write_under_a_symlinked_dir_outside_is_refused() {
    let h = host();
    let before = snapshot(&h.outside);
    symlink(&h.outside, h.ctx.workspace.join("out")).unwrap();
    // A new file right under the linked dir, and one under a new subdirectory of it.
    for path in ["out/new.txt", "out/deeper/new.txt", "out/secret.txt"] {
        let (text, err) = call(
            &h.ctx,
            "write_file",
            json!({"path": path, "content": "pwned"}),
        )
        .await;
        assert!(err, "{path}: {text}");
        assert!(text.contains("outside the workspace"), "{text}");
    }
    assert_eq!(snapshot(&h.outside), before);
    assert!(!h.outside.join("deeper").exists());
}

#[tokio::test]
async fn symlinked_parent_dir_pointing_outside_is_refused() {
    let h = host();
    // ws/a is real, ws/a/b links outside: the link is a middle component.
    fs::create_dir_all(h.ctx.workspace.join("a")).unwrap();
    symlink(&h.outside, h.ctx.workspace.join("a/b")).unwrap();
    let before = snapshot(&h.outside);
    let (text, err) = call(
        &h.ctx,
        "write_file",
        json!({"path": "a/b/c/d.txt", "content": "pwned"}),
    )
    .await;
    assert!(err, "{text}");
    let (text, err) = call(
        &h.ctx,
        "write_file",
        json!({"path": "a/b/../b/x.txt", "content": "pwned"}),
    )
    .await;
    assert!(err, "{text}");
    assert_eq!(snapshot(&h.outside), before);
}

#[tokio::test]
async fn dangling_symlink_to_outside_is_refused_for_writes() {
    let h = host();
    let target = h.outside.join("created-by-link.txt");
    symlink(&target, h.ctx.workspace.join("dangling.txt")).unwrap();
    let (text, err) = call(
        &h.ctx,
        "write_file",
        json!({"path": "dangling.txt", "content": "pwned"}),
    )
    .await;
    assert!(err);
    assert!(text.contains("dangling symlink"), "{text}");
    assert!(!target.exists());
    // A dangling link as a middle component.
    symlink(h.outside.join("nodir"), h.ctx.workspace.join("ghost")).unwrap();
    let (_, err) = call(
        &h.ctx,
        "write_file",
        json!({"path": "ghost/x.txt", "content": "pwned"}),
    )
    .await;
    assert!(err);
    assert!(!h.outside.join("nodir").exists());
}

#[test]
fn resolve_accepts_inside_paths_and_links() {
    let h = host();
    let ws = &h.ctx.workspace;
    fs::create_dir_all(ws.join("src")).unwrap();
    fs::write(ws.join("src/lib.rs"), "").unwrap();
    symlink("src", ws.join("code")).unwrap();
    let read = |p: &str| resolve_in_workspace(ws, p, PathIntent::Read);
    assert_eq!(read("src/lib.rs").unwrap(), ws.join("src/lib.rs"));
    assert_eq!(read("./src/../src/lib.rs").unwrap(), ws.join("src/lib.rs"));
    assert_eq!(read("code/lib.rs").unwrap(), ws.join("src/lib.rs"));
    assert_eq!(read(".").unwrap(), *ws);
    assert!(matches!(read(""), Err(PathError::Empty { .. })));
    assert!(matches!(
        read("src/none.rs"),
        Err(PathError::NotFound { .. })
    ));
    let write = |p: &str| resolve_in_workspace(ws, p, PathIntent::Write);
    assert_eq!(write("code/new/x.rs").unwrap(), ws.join("src/new/x.rs"));
    assert_eq!(
        write(ws.join("n.rs").to_str().unwrap()).unwrap(),
        ws.join("n.rs")
    );
    let err = write("../x").unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "path \"../x\" escapes the workspace {}; use a path inside it",
            ws.display()
        )
    );
    // A sibling whose name extends the workspace's is still outside.
    let sibling = format!("{}2/x", ws.display());
    assert!(matches!(write(&sibling), Err(PathError::Escapes { .. })));
}
