//! `read_file`, `write_file` and `edit_file`.

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use serde::Deserialize;

use super::path::{display_path, refuse_protected, resolve_in_workspace, PathIntent};
use super::{ToolContext, ToolOutcome};

/// Bytes sniffed for a NUL to call a file binary.
const BINARY_SNIFF_BYTES: usize = 8 * 1024;
/// Longest line shown whole by `read_file`.
const MAX_LINE_CHARS: usize = 2_000;
/// Largest file `edit_file` loads.
const MAX_EDIT_BYTES: u64 = 16 * 1024 * 1024;

#[derive(Deserialize)]
pub(crate) struct ReadArgs {
    path: String,
    offset: Option<u64>,
    limit: Option<u64>,
}

#[derive(Deserialize)]
pub(crate) struct WriteArgs {
    path: String,
    content: String,
}

#[derive(Deserialize)]
pub(crate) struct EditArgs {
    path: String,
    old_string: String,
    new_string: String,
    #[serde(default)]
    replace_all: bool,
}

pub(crate) fn read_file(ctx: &ToolContext, args: ReadArgs) -> ToolOutcome {
    let path = match resolve_in_workspace(&ctx.workspace, &args.path, PathIntent::Read) {
        Ok(path) => path,
        Err(err) => return ToolOutcome::error(err.to_string()),
    };
    let shown = display_path(&ctx.workspace, &path);
    if path.is_dir() {
        return ToolOutcome::error(format!(
            "{shown} is a directory, not a file; use list_files to see what it contains"
        ));
    }
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(err) => return ToolOutcome::error(format!("cannot read {shown}: {err}")),
    };
    let mut reader = BufReader::with_capacity(64 * 1024, file);
    match sniff_binary(&mut reader) {
        Ok(true) => {
            let size = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            return ToolOutcome::error(format!(
                "{shown} is a binary file ({size} bytes); read_file shows text only. \
                 Inspect it with shell tools instead, e.g. `file {shown}` or `xxd {shown} | head`"
            ));
        }
        Ok(false) => {}
        Err(err) => return ToolOutcome::error(format!("cannot read {shown}: {err}")),
    }

    let first = args.offset.unwrap_or(1).max(1);
    let limit = args.limit.unwrap_or(u64::MAX).max(1);
    let mut text = String::new();
    let mut line_no = 0u64;
    let mut last_shown = 0u64;
    let mut cut_by_size = false;
    let mut buf = Vec::new();
    loop {
        if ctx.cancel.is_cancelled() {
            return ToolOutcome::error("read_file was cancelled");
        }
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(err) => return ToolOutcome::error(format!("cannot read {shown}: {err}")),
        }
        line_no += 1;
        if line_no < first || cut_by_size || line_no - first >= limit {
            continue;
        }
        let line = String::from_utf8_lossy(trim_newline(&buf));
        let line = shorten_line(&line);
        let entry = format!("{line_no:>6}\t{line}\n");
        if text.len() + entry.len() > ctx.limits.max_read_bytes && last_shown > 0 {
            cut_by_size = true;
            continue;
        }
        text.push_str(&entry);
        last_shown = line_no;
    }
    let total = line_no;
    if total == 0 {
        return ToolOutcome::ok(format!("{shown} is empty (0 lines)"));
    }
    if first > total {
        return ToolOutcome::error(format!(
            "offset {first} is past the end of {shown}, which has {total} lines; \
             use an offset from 1 to {total}"
        ));
    }
    if last_shown < total {
        let why = if cut_by_size {
            format!(" (cut at {} bytes)", ctx.limits.max_read_bytes)
        } else {
            String::new()
        };
        text.push_str(&format!(
            "[showing lines {first}-{last_shown} of {total}{why}; use offset={} to read on]\n",
            last_shown + 1
        ));
    } else {
        text.push_str(&format!(
            "[end of file: lines {first}-{last_shown} of {total}]\n"
        ));
    }
    ToolOutcome::ok(text)
}

fn sniff_binary(reader: &mut BufReader<File>) -> io::Result<bool> {
    let buffered = reader.fill_buf()?;
    let sniff = &buffered[..buffered.len().min(BINARY_SNIFF_BYTES)];
    Ok(sniff.contains(&0))
}

fn trim_newline(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn shorten_line(line: &str) -> std::borrow::Cow<'_, str> {
    match line.char_indices().nth(MAX_LINE_CHARS) {
        None => line.into(),
        Some((cut, _)) => format!(
            "{}... [line cut: {} bytes in all]",
            &line[..cut],
            line.len()
        )
        .into(),
    }
}

pub(crate) fn write_file(ctx: &ToolContext, args: WriteArgs) -> ToolOutcome {
    let path = match resolve_in_workspace(&ctx.workspace, &args.path, PathIntent::Write)
        .and_then(|p| refuse_protected(&ctx.workspace, &p).map(|()| p))
    {
        Ok(path) => path,
        Err(err) => return ToolOutcome::error(err.to_string()),
    };
    let shown = display_path(&ctx.workspace, &path);
    if path.is_dir() {
        return ToolOutcome::error(format!(
            "{shown} is a directory; give the path of a file inside it"
        ));
    }
    let existed = path.exists();
    match write_atomically(&path, args.content.as_bytes()) {
        Ok(()) => ToolOutcome::ok(format!(
            "{} {shown}: {} bytes written",
            if existed { "overwrote" } else { "created" },
            args.content.len()
        )),
        Err(err) => ToolOutcome::error(format!("cannot write {shown}: {err}")),
    }
}

/// Writes `content` to a temporary file in the same directory, fsyncs it and
/// renames it over `path`, so readers see the old or the new content, never a
/// half. An existing file keeps its permissions.
fn write_atomically(path: &Path, content: &[u8]) -> io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no parent directory"))?;
    fs::create_dir_all(dir)?;
    let permissions = match fs::metadata(path) {
        Ok(meta) => meta.permissions(),
        Err(_) => fs::Permissions::from_mode(0o644),
    };
    let mut temp = tempfile::Builder::new()
        .prefix(".flotilla-write-")
        .suffix(".tmp")
        .tempfile_in(dir)?;
    temp.write_all(content)?;
    temp.as_file().set_permissions(permissions)?;
    temp.as_file().sync_all()?;
    temp.persist(path).map_err(|err| err.error)?;
    Ok(())
}

pub(crate) fn edit_file(ctx: &ToolContext, args: EditArgs) -> ToolOutcome {
    let path = match resolve_in_workspace(&ctx.workspace, &args.path, PathIntent::Read)
        .and_then(|p| refuse_protected(&ctx.workspace, &p).map(|()| p))
    {
        Ok(path) => path,
        Err(err) => return ToolOutcome::error(err.to_string()),
    };
    let shown = display_path(&ctx.workspace, &path);
    if args.old_string.is_empty() {
        return ToolOutcome::error(format!(
            "old_string is empty; give the exact text to replace in {shown} \
             (to write a whole file, use write_file)"
        ));
    }
    if args.old_string == args.new_string {
        return ToolOutcome::error(
            "old_string and new_string are identical; there is nothing to change",
        );
    }
    if path.is_dir() {
        return ToolOutcome::error(format!("{shown} is a directory, not a file"));
    }
    let content = match read_text(&path) {
        Ok(content) => content,
        Err(message) => return ToolOutcome::error(format!("cannot edit {shown}: {message}")),
    };
    let count = content.matches(&args.old_string).count();
    if count == 0 {
        return ToolOutcome::error(format!(
            "old_string not found in {shown}; read the file again and copy the exact text, \
             including whitespace and indentation (without the line numbers read_file adds)"
        ));
    }
    if count > 1 && !args.replace_all {
        return ToolOutcome::error(format!(
            "old_string found {count} times in {shown}; add surrounding context to make it \
             unique, or set replace_all to true to replace every occurrence"
        ));
    }
    let first_line = content
        .find(&args.old_string)
        .map_or(1, |at| content[..at].matches('\n').count() + 1);
    let updated = if args.replace_all {
        content.replace(&args.old_string, &args.new_string)
    } else {
        content.replacen(&args.old_string, &args.new_string, 1)
    };
    match write_atomically(&path, updated.as_bytes()) {
        Ok(()) => ToolOutcome::ok(format!(
            "edited {shown}: replaced {count} occurrence{} (first at line {first_line}); \
             {} -> {} bytes",
            if count == 1 { "" } else { "s" },
            content.len(),
            updated.len()
        )),
        Err(err) => ToolOutcome::error(format!("cannot write {shown}: {err}")),
    }
}

fn read_text(path: &Path) -> Result<String, String> {
    let file = File::open(path).map_err(|err| err.to_string())?;
    let size = file.metadata().map_err(|err| err.to_string())?.len();
    if size > MAX_EDIT_BYTES {
        return Err(format!(
            "the file is {size} bytes, more than edit_file handles ({MAX_EDIT_BYTES}); \
             use a shell command such as sed instead"
        ));
    }
    let mut bytes = Vec::with_capacity(size as usize);
    file.take(MAX_EDIT_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|err| err.to_string())?;
    if bytes[..bytes.len().min(BINARY_SNIFF_BYTES)].contains(&0) {
        return Err("it is a binary file; edit_file changes text files only".to_owned());
    }
    String::from_utf8(bytes)
        .map_err(|_| "it is not valid UTF-8 text; edit_file changes UTF-8 text only".to_owned())
}
