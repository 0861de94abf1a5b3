//! What the model is told about the built-in tools.

use flotilla_protocol::ToolSpec;
use serde_json::json;

/// The tool list built once and shared by every request of every session.
pub fn shared_tool_specs() -> std::sync::Arc<[ToolSpec]> {
    static SPECS: std::sync::OnceLock<std::sync::Arc<[ToolSpec]>> = std::sync::OnceLock::new();
    SPECS.get_or_init(|| tool_specs().into()).clone()
}

/// The JSON Schemas and descriptions of all built-in tools, in a stable order.
pub fn tool_specs() -> Vec<ToolSpec> {
    vec![
        spec(
            "shell",
            "Run a shell command with /bin/sh -c in the workspace and return its exit code, \
             stdout and stderr. Use it to build, test, run git, and inspect the system. stdin is \
             empty (no interactive programs); long output keeps its beginning and end. The \
             command is killed with its whole process group when it runs past its timeout. \
             Background jobs (`cmd &`) keep running after the call returns. Prefer read_file, \
             grep, glob and list_files for looking at files.",
            json!({
                "type": "object",
                "properties": {
                    "command": {"type": "string", "description": "The shell command, e.g. \"cargo test -p foo 2>&1 | tail -50\"."},
                    "timeout_secs": {"type": "integer", "minimum": 1, "description": "Seconds before the command is killed (default 120, at most 600)."},
                    "workdir": {"type": "string", "description": "Directory to run in, relative to the workspace (default: the workspace root)."}
                },
                "required": ["command"],
                "additionalProperties": false
            }),
        ),
        spec(
            "read_file",
            "Read a text file of the workspace. Lines come numbered from 1 like `cat -n` (the \
             number and a tab are not part of the file). Large files are cut: use offset and \
             limit to read them in parts.",
            json!({
                "type": "object",
                "properties": {
                    "path": {"type": "string", "description": "File path, relative to the workspace."},
                    "offset": {"type": "integer", "minimum": 1, "description": "First line to read, from 1 (default 1)."},
                    "limit": {"type": "integer", "minimum": 1, "description": "Most lines to read (default: as many as fit)."}
                },
                "required": ["path"],
                "additionalProperties": false
            }),
        ),
        spec(
            "write_file",
            "Create or overwrite a file with the given content (atomically; missing parent \
             directories are created). For changing part of an existing file prefer edit_file.",
            json!({
                "type": "object",
                "properties": {
                    "path": {"type": "string", "description": "File path, relative to the workspace."},
                    "content": {"type": "string", "description": "The complete new content of the file."}
                },
                "required": ["path", "content"],
                "additionalProperties": false
            }),
        ),
        spec(
            "edit_file",
            "Replace an exact piece of text in a file. old_string must match the file exactly \
             (whitespace and indentation included; no line numbers) and, unless replace_all is \
             true, exactly once: include enough surrounding lines to make it unique.",
            json!({
                "type": "object",
                "properties": {
                    "path": {"type": "string", "description": "File path, relative to the workspace."},
                    "old_string": {"type": "string", "description": "The exact text to replace (not empty)."},
                    "new_string": {"type": "string", "description": "The text to put in its place."},
                    "replace_all": {"type": "boolean", "description": "Replace every occurrence instead of requiring exactly one (default false)."}
                },
                "required": ["path", "old_string", "new_string"],
                "additionalProperties": false
            }),
        ),
        spec(
            "list_files",
            "List the files and directories under a directory of the workspace, sorted, \
             directories ending with '/'. Files ignored by .gitignore are left out.",
            json!({
                "type": "object",
                "properties": {
                    "path": {"type": "string", "description": "Directory, relative to the workspace (default \".\")."},
                    "depth": {"type": "integer", "minimum": 1, "description": "How many levels to descend (default 2, at most 20)."}
                },
                "additionalProperties": false
            }),
        ),
        spec(
            "glob",
            "Find files whose path matches a glob pattern, e.g. \"**/*.rs\" or \"src/**/mod.rs\". \
             Patterns match paths relative to the search directory; '*' does not cross '/', '**' \
             does. Files ignored by .gitignore are left out. Results are sorted.",
            json!({
                "type": "object",
                "properties": {
                    "pattern": {"type": "string", "description": "Glob pattern, e.g. \"**/*.toml\"."},
                    "path": {"type": "string", "description": "Directory to search, relative to the workspace (default \".\")."}
                },
                "required": ["pattern"],
                "additionalProperties": false
            }),
        ),
        spec(
            "grep",
            "Search file contents with a regular expression (Rust regex syntax, like ripgrep). \
             Returns matching lines as `path:line: text`. Binary files and files ignored by \
             .gitignore are skipped.",
            json!({
                "type": "object",
                "properties": {
                    "pattern": {"type": "string", "description": "Regular expression, e.g. \"fn\\\\s+main\"."},
                    "path": {"type": "string", "description": "File or directory to search, relative to the workspace (default \".\")."},
                    "glob": {"type": "string", "description": "Only search files matching this glob, e.g. \"*.rs\" (a glob without '/' matches file names)."},
                    "case_insensitive": {"type": "boolean", "description": "Ignore case (default false)."},
                    "max_results": {"type": "integer", "minimum": 1, "description": "Most matching lines to return (default 200, at most 2000)."}
                },
                "required": ["pattern"],
                "additionalProperties": false
            }),
        ),
        spec(
            "finish",
            "End the task and give the final answer: what was done, what was verified, and \
             anything left open. Call it only when the work is complete or cannot go further.",
            json!({
                "type": "object",
                "properties": {
                    "answer": {"type": "string", "description": "The final answer for the user."}
                },
                "required": ["answer"],
                "additionalProperties": false
            }),
        ),
    ]
}

/// A tool's description for the model (the built-in tools' and hosts').
pub fn spec(name: &str, description: &str, parameters: serde_json::Value) -> ToolSpec {
    ToolSpec {
        name: name.to_owned(),
        description: description.to_owned(),
        parameters,
    }
}

/// A one-line reminder of a tool's arguments, for error messages.
pub(crate) fn expected_arguments(tool: &str) -> &'static str {
    match tool {
        "shell" => r#"{"command": string, "timeout_secs"?: integer, "workdir"?: string}"#,
        "read_file" => r#"{"path": string, "offset"?: integer, "limit"?: integer}"#,
        "write_file" => r#"{"path": string, "content": string}"#,
        "edit_file" => {
            r#"{"path": string, "old_string": string, "new_string": string, "replace_all"?: boolean}"#
        }
        "list_files" => r#"{"path"?: string, "depth"?: integer}"#,
        "glob" => r#"{"pattern": string, "path"?: string}"#,
        "grep" => {
            r#"{"pattern": string, "path"?: string, "glob"?: string, "case_insensitive"?: boolean, "max_results"?: integer}"#
        }
        "finish" => r#"{"answer": string}"#,
        _ => "{}",
    }
}
