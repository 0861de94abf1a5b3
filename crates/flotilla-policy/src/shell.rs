//! Shell command analysis for `Shell(...)` rules and the write gate.
//!
//! A rule such as `Shell(rm -rf /*)` must see every command a line runs, not
//! just the first: `npm test && rm -rf /` hides the second behind the first.
//! [`analyze`] parses the line with `brush-parser` (a real bash grammar),
//! walks the whole tree, and re-parses the scripts other commands run.
//!
//! Wrappers whose inner command is listed too, flagged
//! [`SimpleCommand::nested`]: `sudo`, `doas`, `env`, `timeout`, `nice`,
//! `nohup`, `time`, `command`, `builtin`, `exec`, `xargs`, `stdbuf`,
//! `ionice`, `chroot`, `setsid`, `busybox`, `watch -x`, `find -exec`
//! (`-execdir`, `-ok`, `-okdir`). Scripts parsed recursively, their commands
//! nested too: `bash`/`sh`/`zsh`/`dash`/`ksh`/`ash`/`mksh` `-c`, `eval`,
//! `su -c`, `trap`, `watch`, `env -S`. Remote commands (`ssh host cmd`) are
//! not looked into.

use brush_parser::ast;
use brush_parser::word::{self, WordPiece, WordPieceWithSource};
use brush_parser::{Parser, ParserOptions};

/// How deeply scripts may be re-parsed inside each other (`$(..)`, `bash -c`,
/// wrappers) before the analysis gives up and turns opaque.
const MAX_DEPTH: usize = 8;

/// brush-parser recurses once per nesting level, with up to ~32 KiB of stack
/// a level in unoptimized builds, and a stack overflow aborts the process: so
/// parsing runs on a thread whose stack fits this many levels, and input that
/// could nest deeper is refused.
const MAX_NESTING: usize = 4000;
const PARSER_STACK_BYTES: usize = 256 << 20;

/// One simple command found in a shell command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimpleCommand {
    /// The words after quote removal, leading `NAME=value` assignments left
    /// out. A word containing an expansion that cannot be known statically
    /// (`$VAR`, `$(..)`, `$((..))`, backticks, `<(..)`) is kept as written, `$`
    /// included, so rules about literal text never match it by accident.
    /// Globs and `~` are kept literally.
    pub words: Vec<String>,
    /// `words` joined by single spaces: what `Shell(...)` rules are matched
    /// against.
    pub text: String,
    /// True when this command was found by looking inside another one: the
    /// inner command of a wrapper, or a command of a script run by `sh -c`,
    /// `eval` and the like (see the module docs for both lists).
    pub nested: bool,
}

/// Everything the policy needs from a shell command line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShellAnalysis {
    /// Every simple command in the order bash runs them (the commands of a
    /// word's `$(...)` before the command itself; a wrapper before its inner
    /// command): those in `&&`, `||`, `;`, `&`, pipelines, `!`, subshells,
    /// brace groups, `$(...)`, backticks, process substitutions, `if`/
    /// `while`/`until`/`for`/`case` bodies and conditions, function bodies,
    /// and (flagged `nested`) the inner commands of wrappers and scripts. A
    /// wrapper itself is listed too: `timeout 5 rm -rf x` gives
    /// `timeout 5 rm -rf x` and (nested) `rm -rf x`.
    pub commands: Vec<SimpleCommand>,
    /// Files this command line creates or changes, as written (not
    /// resolved), without duplicates: targets of output redirections (`>`,
    /// `>>`, `>|`, `&>`, `&>>`, `<>`, `>& FILE`, `N>` forms; not fd
    /// duplications like `>&2`, not `/dev/null`, `/dev/stdout`,
    /// `/dev/stderr`, `/dev/tty`, `/dev/fd/N`) and what these commands write:
    /// `tee FILE...`, `mv`/`cp`/`ln`/`install` (last operand, or `-t DIR`),
    /// `touch`, `truncate`, `dd of=`, `sed -i`, `perl -i`, `chmod`/`chown`/
    /// `chgrp` operands, the `rsync` destination, `curl -o`/`-c`/`-D`,
    /// `wget -O`/`-o`/`-a`, `git config` setting a value
    /// (`.git/config`, `~/.gitconfig` with `--global`, `/etc/gitconfig` with
    /// `--system`, the `--file`; `DIR/.git/config` after `git -C DIR`) and
    /// `crontab` other than `-l` (the string `crontab`).
    pub writes: Vec<String>,
    /// True when the analysis may be incomplete: a command word is dynamic
    /// (`$CMD args`), a script given to `eval`/`sh -c` is not a literal or does
    /// not parse, nesting is deeper than the limit, a shell reads its script
    /// from standard input (`bash <<EOF`, `curl x | sh`; a literal
    /// here-document is still parsed), or a file is sourced (`source`, `.`).
    pub opaque: bool,
}

/// Why a command line could not be parsed.
#[derive(Debug, thiserror::Error)]
#[error("cannot parse the shell command: {message}")]
pub struct ShellParseError {
    /// What went wrong, in words.
    pub message: String,
}

/// Parses `command` (bash syntax) and lists its parts. Never panics: input
/// that does not parse, nests too deeply or trips the parser returns `Err`.
pub fn analyze(command: &str) -> Result<ShellAnalysis, ShellParseError> {
    if nesting_bound(command) > MAX_NESTING {
        return Err(error("it nests too deeply to analyze".into()));
    }
    let owned = command.to_owned();
    std::thread::Builder::new()
        .name("shell-analysis".into())
        .stack_size(PARSER_STACK_BYTES)
        .spawn(move || {
            let mut walker = Walker::default();
            walker.program(&parse(&owned)?, Ctx::default());
            Ok(walker.out)
        })
        .map_err(|e| error(format!("cannot start the parser thread: {e}")))?
        .join()
        .map_err(|_| error("the parser failed on this input".into()))?
}

fn error(message: String) -> ShellParseError {
    ShellParseError { message }
}

/// Counts everything that opens a nesting level in brush-parser, quoted or
/// not (parentheses, braces, backticks, `!` in `[[ ]]`, compound keywords):
/// an upper bound on the depth that needs no parsing.
fn nesting_bound(s: &str) -> usize {
    let punct = s.bytes().filter(|b| b"({`!".contains(b)).count();
    let keywords = ["if", "while", "until", "for", "case", "select", "coproc"];
    let words = s.split(|c: char| !c.is_ascii_alphanumeric() && c != '_');
    punct + words.filter(|w| keywords.contains(w)).count()
}

fn parse(source: &str) -> Result<ast::Program, ShellParseError> {
    // brush-parser 0.4 loops forever, growing memory, when the input ends on
    // the line of a here-document operator whose tag is empty (`cat << '' `).
    // A final newline ends that line; a second one survives a trailing
    // backslash, which would join the first to the line.
    let padded = format!("{source}\n\n");
    let mut parser = Parser::new(
        std::io::Cursor::new(padded.as_bytes()),
        &ParserOptions::default(),
    );
    // It also unwraps in places: a panic means the input cannot be analyzed.
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| parser.parse_program()))
        .map_err(|_| error("the parser failed on this input".into()))?
        .map_err(|e| error(e.to_string()))
}

/// A word after quote removal; a `dynamic` word holds its source text.
#[derive(Clone, Debug)]
struct Arg {
    text: String,
    dynamic: bool,
}

impl Arg {
    fn new(text: String, dynamic: bool) -> Self {
        Arg { text, dynamic }
    }

    fn is(&self, s: &str) -> bool {
        !self.dynamic && self.text == s
    }
}

#[derive(Clone, Copy, Default)]
struct Ctx {
    depth: usize,
    nested: bool,
}

impl Ctx {
    fn deeper(self, nested: bool) -> Self {
        let (depth, nested) = (self.depth + 1, self.nested || nested);
        Ctx { depth, nested }
    }
}

/// What a command runs besides itself. `Script(None)`: not a literal.
enum Inner<'a> {
    Nothing,
    Argv(&'a [Arg]),
    Argvs(Vec<&'a [Arg]>),
    Script(Option<String>),
    Stdin,
}

#[derive(Default)]
struct Walker {
    out: ShellAnalysis,
}

impl Walker {
    fn script(&mut self, source: &str, ctx: Ctx) {
        match (ctx.depth <= MAX_DEPTH).then(|| parse(source)) {
            Some(Ok(program)) => self.program(&program, ctx),
            _ => self.out.opaque = true,
        }
    }

    fn program(&mut self, program: &ast::Program, ctx: Ctx) {
        for list in &program.complete_commands {
            self.list(list, ctx);
        }
    }

    fn list(&mut self, list: &ast::CompoundList, ctx: Ctx) {
        for ast::CompoundListItem(and_or, _) in &list.0 {
            let rest = and_or.additional.iter().map(|next| match next {
                ast::AndOr::And(p) | ast::AndOr::Or(p) => p,
            });
            for pipeline in std::iter::once(&and_or.first).chain(rest) {
                for command in &pipeline.seq {
                    self.command(command, ctx);
                }
            }
        }
    }

    fn command(&mut self, command: &ast::Command, ctx: Ctx) {
        let redirects = match command {
            ast::Command::Simple(simple) => return self.simple(simple, ctx),
            ast::Command::Compound(compound, redirects) => {
                self.compound(compound, ctx);
                redirects
            }
            ast::Command::Function(function) => {
                self.compound(&function.body.0, ctx);
                &function.body.1
            }
            ast::Command::ExtendedTest(test, redirects) => {
                // Printed back, the test's words expand like one word would.
                self.expanded(&test.expr.to_string(), ctx);
                redirects
            }
        };
        for redirect in redirects.iter().flat_map(|r| &r.0) {
            self.redirect(redirect, ctx, &mut Vec::new());
        }
    }

    fn compound(&mut self, compound: &ast::CompoundCommand, ctx: Ctx) {
        use ast::CompoundCommand as C;
        match compound {
            C::Arithmetic(a) => self.expanded(&a.expr.value, ctx),
            C::ArithmeticForClause(f) => {
                let parts = [&f.initializer, &f.condition, &f.updater];
                parts
                    .into_iter()
                    .flatten()
                    .for_each(|p| self.expanded(&p.value, ctx));
                self.list(&f.body.list, ctx);
            }
            C::BraceGroup(ast::BraceGroupCommand { list, .. })
            | C::Subshell(ast::SubshellCommand { list, .. }) => self.list(list, ctx),
            C::ForClause(f) => {
                for value in f.values.iter().flatten() {
                    self.word(&value.value, ctx);
                }
                self.list(&f.body.list, ctx);
            }
            C::CaseClause(c) => {
                self.word(&c.value.value, ctx);
                for item in &c.cases {
                    for pattern in &item.patterns {
                        self.word(&pattern.value, ctx);
                    }
                    item.cmd.iter().for_each(|cmd| self.list(cmd, ctx));
                }
            }
            C::IfClause(i) => {
                self.list(&i.condition, ctx);
                self.list(&i.then, ctx);
                for clause in i.elses.iter().flatten() {
                    clause.condition.iter().for_each(|c| self.list(c, ctx));
                    self.list(&clause.body, ctx);
                }
            }
            C::WhileClause(w) | C::UntilClause(w) => {
                self.list(&w.0, ctx);
                self.list(&w.1.list, ctx);
            }
            C::Coprocess(c) => self.command(&c.body, ctx),
        }
    }

    fn simple(&mut self, simple: &ast::SimpleCommand, ctx: Ctx) {
        use ast::CommandPrefixOrSuffixItem as I;
        let (mut words, mut stdin) = (Vec::new(), Vec::new());
        let name = simple.word_or_name.clone().map(I::Word);
        let prefix = simple.prefix.iter().flat_map(|p| &p.0);
        let leading = prefix.clone().count();
        let suffix = simple.suffix.iter().flat_map(|s| &s.0);
        for (i, item) in prefix.chain(&name).chain(suffix).enumerate() {
            let leading = i < leading;
            match item {
                I::IoRedirect(r) => self.redirect(r, ctx, &mut stdin),
                // Leading assignments are not words, but their values expand.
                I::AssignmentWord(assignment, _) if leading => match &assignment.value {
                    ast::AssignmentValue::Scalar(w) => drop(self.word(&w.value, ctx)),
                    ast::AssignmentValue::Array(items) => {
                        for w in items.iter().flat_map(|(k, v)| k.iter().chain([v])) {
                            self.word(&w.value, ctx);
                        }
                    }
                },
                I::Word(w) | I::AssignmentWord(_, w) => words.push(self.word(&w.value, ctx)),
                I::ProcessSubstitution(kind, sub) => {
                    words.push(Arg::new(format!("{kind}{sub}"), true));
                    self.list(&sub.list, ctx);
                }
            }
        }
        self.examine(&words, &stdin, ctx);
    }

    /// Notes what a redirection writes, and keeps what it feeds to standard
    /// input in `stdin`.
    fn redirect(&mut self, redirect: &ast::IoRedirect, ctx: Ctx, stdin: &mut Vec<String>) {
        use ast::{IoFileRedirectKind as K, IoFileRedirectTarget as T, IoRedirect as R};
        let (target, writes) = match redirect {
            R::File(_, kind, T::Filename(w)) => (
                w,
                matches!(kind, K::Write | K::Append | K::Clobber | K::ReadAndWrite),
            ),
            R::File(_, kind, T::Duplicate(w)) => {
                let target = self.word(&w.value, ctx);
                // `>& FILE` sends stdout and stderr to FILE; `>&2` and `>&-` name fds.
                let fd = target.text.trim_end_matches('-');
                let fd = !target.dynamic && fd.bytes().all(|b| b.is_ascii_digit());
                if matches!(kind, K::DuplicateOutput) && !fd {
                    self.write(&target.text);
                }
                return;
            }
            R::File(_, _, T::ProcessSubstitution(_, sub)) => return self.list(&sub.list, ctx),
            R::File(_, _, T::Fd(_)) => return,
            R::OutputAndError(w, _) => (w, true),
            R::HereString(fd, w) => {
                let text = self.word(&w.value, ctx);
                if fd.is_none_or(|fd| fd == 0) && !text.dynamic {
                    stdin.push(text.text);
                }
                return;
            }
            R::HereDocument(fd, doc) => {
                let body = &doc.doc.value;
                if doc.requires_expansion {
                    match word::parse_heredoc(body, &ParserOptions::default()) {
                        Ok(pieces) => drop(self.unquote(body, &pieces, ctx, &mut String::new())),
                        Err(_) => self.out.opaque = true,
                    }
                }
                if fd.is_none_or(|fd| fd == 0) {
                    stdin.push(body.clone());
                }
                return;
            }
        };
        let target = self.word(&target.value, ctx);
        if writes {
            self.write(&target.text);
        }
    }

    /// Lists one simple command given as words, then what it runs in turn.
    fn examine(&mut self, words: &[Arg], stdin: &[String], ctx: Ctx) {
        let Some(first) = words.first() else {
            return;
        };
        let texts: Vec<String> = words.iter().map(|w| w.text.clone()).collect();
        let (text, nested) = (texts.join(" "), ctx.nested);
        self.out.commands.push(SimpleCommand {
            words: texts,
            text,
            nested,
        });
        if first.dynamic {
            self.out.opaque = true;
            return;
        }
        let name = first.text.rsplit('/').next().unwrap_or_default();
        let args = &words[1..];
        for path in writes_of(name, args) {
            self.write(&path);
        }
        let inner = ctx.deeper(true);
        match inner_of(name, args) {
            Inner::Nothing => {}
            _ if inner.depth > MAX_DEPTH => self.out.opaque = true,
            Inner::Argv(argv) => self.examine(argv, stdin, inner),
            Inner::Argvs(argvs) => argvs.iter().for_each(|argv| self.examine(argv, &[], inner)),
            Inner::Script(Some(source)) => self.script(&source, inner),
            Inner::Script(None) => self.out.opaque = true,
            Inner::Stdin => {
                self.out.opaque = true;
                stdin.iter().for_each(|source| self.script(source, inner));
            }
        }
    }

    fn write(&mut self, path: &str) {
        let sinks = ["/dev/null", "/dev/stdout", "/dev/stderr", "/dev/tty"];
        let sink = sinks.contains(&path) || path.starts_with("/dev/fd/");
        if !path.is_empty() && !sink && !self.out.writes.iter().any(|w| w == path) {
            self.out.writes.push(path.to_owned());
        }
    }

    /// Quote removal of one source word, walking the substitutions inside.
    fn word(&mut self, raw: &str, ctx: Ctx) -> Arg {
        let mut text = String::new();
        let dynamic = match word::parse(raw, &ParserOptions::default()) {
            Ok(pieces) => self.unquote(raw, &pieces, ctx, &mut text),
            Err(_) => {
                self.out.opaque = true;
                true
            }
        };
        Arg::new(if dynamic { raw.to_owned() } else { text }, dynamic)
    }

    /// Walks the substitutions in text that is expanded like a word.
    fn expanded(&mut self, text: &str, ctx: Ctx) {
        if ctx.depth > MAX_DEPTH {
            self.out.opaque = true;
        } else if text.contains(['$', '`']) {
            self.word(text, ctx);
        }
    }

    /// Appends the static text of `pieces` (whose indices point into `raw`)
    /// to `out`, walking substitutions; returns whether any piece expands.
    fn unquote(
        &mut self,
        raw: &str,
        pieces: &[WordPieceWithSource],
        ctx: Ctx,
        out: &mut String,
    ) -> bool {
        let mut dynamic = false;
        for piece in pieces {
            let range = piece.start_index..piece.end_index;
            let source = raw.get(range).unwrap_or_default();
            match &piece.piece {
                WordPiece::Text(s) | WordPiece::SingleQuotedText(s) => out.push_str(s),
                WordPiece::AnsiCQuotedText(s) => out.push_str(&ansi_c(s)),
                WordPiece::DoubleQuotedSequence(inner)
                | WordPiece::GettextDoubleQuotedSequence(inner) => {
                    dynamic |= self.unquote(raw, inner, ctx, out);
                }
                WordPiece::TildeExpansion(_) => out.push_str(source),
                // A backslash-newline joins lines: both vanish.
                WordPiece::EscapeSequence(s) => {
                    out.push_str(s.get(1..).filter(|c| *c != "\n").unwrap_or_default());
                }
                WordPiece::ParameterExpansion(_) => {
                    dynamic = true;
                    // `${x:-$(cmd)}` runs cmd, so the braces are looked into.
                    let body = source.strip_prefix("${").and_then(|t| t.strip_suffix('}'));
                    if let Some(body) = body {
                        self.expanded(body, ctx.deeper(false));
                    }
                }
                WordPiece::CommandSubstitution(s) => {
                    dynamic = true;
                    self.script(s, ctx.deeper(false));
                }
                WordPiece::BackquotedCommandSubstitution(s) => {
                    dynamic = true;
                    self.script(&unescape_backquoted(s), ctx.deeper(false));
                }
                WordPiece::ArithmeticExpression(e) => {
                    dynamic = true;
                    self.expanded(&e.value, ctx);
                }
            }
        }
        dynamic
    }
}

/// brush-parser turns `` \` `` into `` ` `` inside backquotes; bash also
/// turns `\$` into `$` and `\\` into `\` before running the script.
fn unescape_backquoted(s: &str) -> String {
    let parts: Vec<String> = s.split("\\\\").map(|p| p.replace("\\$", "$")).collect();
    parts.join("\\")
}

/// Decodes the body of `$'...'` as bash does (but for `\cX`).
fn ansi_c(s: &str) -> String {
    const FROM: &str = "abeEfnrtv\\'\"?";
    const TO: &str = "\x07\x08\x1b\x1b\x0c\n\r\t\x0b\\'\"?";
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find('\\') {
        out.push_str(&rest[..pos]);
        let escape = &rest[pos + 1..];
        let (radix, skip, max) = match escape.chars().next() {
            Some('x') => (16, 1, 2),
            Some('u') => (16, 1, 4),
            Some('U') => (16, 1, 8),
            Some('0'..='7') => (8, 0, 3),
            _ => (10, 0, 0),
        };
        let digits = &escape[skip..];
        let len = digits.chars().take(max);
        let len = len.take_while(|c| c.is_digit(radix)).count();
        let number = u32::from_str_radix(&digits[..len], radix).ok();
        if let Some(ch) = number.and_then(char::from_u32) {
            out.push(ch);
            rest = &digits[len..];
            continue;
        }
        let mut chars = escape.chars();
        let e = chars.next();
        match e.and_then(|e| FROM.find(e)).and_then(|i| TO.get(i..=i)) {
            Some(decoded) => out.push_str(decoded),
            None => out.extend(std::iter::once('\\').chain(e)),
        }
        rest = chars.as_str();
    }
    out + rest
}

/// Options and operands of a command's arguments, getopt style.
struct Scanned<'a> {
    opts: Vec<(String, Option<&'a str>)>,
    operands: Vec<&'a Arg>,
    /// Everything from the first operand on (options that do not permute),
    /// or after `--`.
    rest: &'a [Arg],
}

impl<'a> Scanned<'a> {
    /// The values of the options named (space separated) that were given.
    fn get(&self, names: &str) -> Vec<Option<&'a str>> {
        let names: Vec<&str> = names.split(' ').collect();
        let given = self
            .opts
            .iter()
            .filter(|(n, _)| names.contains(&n.as_str()));
        given.map(|(_, v)| *v).collect()
    }

    fn has(&self, names: &str) -> bool {
        !self.get(names).is_empty()
    }

    fn values(&self, names: &str) -> Vec<&'a str> {
        self.get(names).into_iter().flatten().collect()
    }
}

/// Splits `args` into options and operands. `short` lists the short options
/// taking a value in getopt syntax (`"o:i::"`: `-o` takes one, `-i` an
/// optional attached one), `long` the long ones taking a value; without
/// `permute`, options end at the first operand.
fn scan<'a>(args: &'a [Arg], short: &str, long: &str, permute: bool) -> Scanned<'a> {
    // How many `:` follow the option's letter.
    let colons = |after: &str| after.len() - after.trim_start_matches(':').len();
    let kind = |ch: char| short.split_once(ch).map_or(0, |(_, after)| colons(after));
    let (mut opts, mut operands, mut i) = (Vec::new(), Vec::new(), 0);
    while let Some(a) = args.get(i).map(|a| a.text.as_str()) {
        let next = args.get(i + 1).map(|n| n.text.as_str());
        i += 1;
        if a == "--" {
            break;
        } else if let Some(body) = a.strip_prefix("--") {
            let (name, mut value) = match body.split_once('=') {
                Some((name, value)) => (name, Some(value)),
                None => (body, None),
            };
            if value.is_none() && long.split(' ').any(|l| l == name) {
                (value, i) = (next, i + 1);
            }
            opts.push((format!("--{name}"), value));
        } else if let Some(body) = a.strip_prefix('-').filter(|b| !b.is_empty()) {
            for (pos, ch) in body.char_indices() {
                let attached = Some(&body[pos + ch.len_utf8()..]).filter(|v| !v.is_empty());
                let value = match kind(ch) {
                    0 => None,
                    1 if attached.is_none() => {
                        i += 1;
                        next
                    }
                    _ => attached,
                };
                opts.push((format!("-{ch}"), value));
                if kind(ch) > 0 {
                    break;
                }
            }
        } else if permute {
            operands.push(&args[i - 1]);
        } else {
            i -= 1;
            break;
        }
    }
    let rest = args.get(i..).unwrap_or_default();
    operands.extend(rest);
    Scanned {
        opts,
        operands,
        rest,
    }
}

/// The words joined as one script, or `None` when one is not a literal.
fn join(args: &[Arg]) -> Option<String> {
    let literal = args.iter().all(|a| !a.dynamic);
    let texts: Vec<&str> = args.iter().map(|a| a.text.as_str()).collect();
    literal.then(|| texts.join(" "))
}

/// The command or script that `name args...` runs besides itself.
fn inner_of<'a>(name: &str, args: &'a [Arg]) -> Inner<'a> {
    // A wrapper's option syntax, the operands before its command, and the
    // options with which it runs nothing (`sudo -l`, `command -v NAME`).
    let (short, long, skip, idle) = match name {
        "sudo" | "doas" => {
            let idle = "-e -l -v -V --edit --list --validate --version";
            (
                "u:g:C:D:p:r:t:T:U:R:",
                "user group chdir prompt role type",
                0,
                idle,
            )
        }
        "env" => ("u:C:S:", "unset chdir split-string", 0, ""),
        "timeout" => ("s:k:", "signal kill-after", 1, ""),
        "nice" => ("n:", "adjustment", 0, ""),
        "nohup" | "setsid" | "builtin" | "busybox" => ("", "", 0, ""),
        "time" => ("f:o:", "format output", 0, ""),
        "exec" => ("a:", "", 0, ""),
        "xargs" => (
            "a:d:E:I:L:n:P:s:e::i::l::",
            "arg-file delimiter max-args max-procs max-chars",
            0,
            "",
        ),
        "stdbuf" => ("i:o:e:", "input output error", 0, ""),
        "chroot" => ("", "userspec groups", 1, ""),
        "command" => ("", "", 0, "-v -V"),
        "ionice" => ("c:n:p:P:u:", "", 0, "-p -P -u"),
        "watch" => ("n:q:", "interval equexit", 0, ""),
        _ => return script_of(name, args),
    };
    let s = scan(args, short, long, false);
    let rest = s.rest.get(skip..).unwrap_or_default();
    let rest = &rest[rest.iter().take_while(|a| is_assignment(&a.text)).count()..];
    let split = s.values("-S --split-string");
    if name == "env" && !split.is_empty() {
        Inner::Script(join(rest).map(|r| format!("{} {r}", split.join(" "))))
    } else if name == "watch" && !s.has("-x --exec") && !rest.is_empty() {
        // watch hands its arguments, joined, to `sh -c`.
        Inner::Script(join(rest))
    } else if s.has(idle) || rest.is_empty() {
        Inner::Nothing
    } else {
        Inner::Argv(rest)
    }
}

fn is_assignment(word: &str) -> bool {
    word.split_once('=').is_some_and(|(name, _)| {
        name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    })
}

/// The scripts and commands run by interpreters and `find -exec`.
fn script_of<'a>(name: &str, args: &'a [Arg]) -> Inner<'a> {
    let literal = |a: &Arg| (!a.dynamic).then(|| a.text.clone());
    match name {
        "bash" | "sh" | "zsh" | "dash" | "ksh" | "ash" | "mksh" => {
            let s = scan(args, "o:O:", "rcfile init-file", false);
            match (s.has("-c"), s.rest.first()) {
                // `+o NAME` and the like, rare enough not to be worth parsing.
                (_, Some(option)) if option.text.starts_with('+') => Inner::Script(None),
                (false, _) if s.has("-s") => Inner::Stdin,
                (true, Some(script)) => Inner::Script(literal(script)),
                (false, None) => Inner::Stdin,
                _ => Inner::Nothing,
            }
        }
        "eval" if !args.is_empty() => Inner::Script(join(args)),
        "su" => {
            let long = "command session-command group supp-group shell";
            let s = scan(args, "c:g:G:s:w:", long, true);
            let script = s.values("-c --command --session-command");
            let script = script.first().map(|s| (*s).to_owned());
            script.map_or(Inner::Nothing, |s| Inner::Script(Some(s)))
        }
        "trap" => match args {
            [dashes, rest @ ..] if dashes.is("--") => script_of(name, rest),
            [action, _, ..] if !action.text.starts_with('-') => Inner::Script(literal(action)),
            _ => Inner::Nothing,
        },
        "source" | "." => Inner::Script(None),
        "find" => {
            let execs = ["-exec", "-execdir", "-ok", "-okdir"];
            let exec = |a: &Arg| execs.iter().any(|o| a.is(o));
            let after_exec = |c: &'a [Arg]| c.iter().position(exec).map(|i| &c[i + 1..]);
            let commands = args.split(|a| a.is(";") || a.is("+"));
            Inner::Argvs(commands.filter_map(after_exec).collect())
        }
        _ => Inner::Nothing,
    }
}

/// The files that `name args...` creates or changes; see [`ShellAnalysis::writes`].
fn writes_of(name: &str, args: &[Arg]) -> Vec<String> {
    let texts = |v: &[&Arg]| v.iter().map(|a| a.text.clone()).collect::<Vec<_>>();
    let values = |short: &str, long: &str, names: &str| {
        let given = scan(args, short, long, true).values(names);
        let files = given.into_iter().filter(|v| *v != "-");
        files.map(str::to_owned).collect()
    };
    match name {
        "tee" => texts(&scan(args, "", "", true).operands),
        "touch" | "truncate" => {
            texts(&scan(args, "d:t:r:s:", "date reference size", true).operands)
        }
        "mv" | "cp" | "ln" | "install" => {
            let s = scan(args, "t:S:m:g:o:", "target-directory suffix", true);
            let last = &s.operands[s.operands.len().saturating_sub(1)..];
            if let Some(dir) = s.values("-t --target-directory").last() {
                vec![(*dir).to_owned()]
            } else if name == "install" && s.has("-d --directory") {
                texts(&s.operands)
            } else if s.operands.len() >= 2 || s.has("-T --no-target-directory") {
                texts(last)
            } else {
                Vec::new()
            }
        }
        "dd" => {
            let files = args.iter().filter_map(|a| a.text.strip_prefix("of="));
            files.map(str::to_owned).collect()
        }
        "sed" | "perl" => {
            let (s, script) = if name == "sed" {
                (
                    scan(args, "e:f:l:i::", "expression file", true),
                    "-e -f --expression --file",
                )
            } else {
                // perl stops at its script or first file.
                (
                    scan(args, "e:E:I:M:m:i::l::0::x::C::d::D::", "", false),
                    "-e -E",
                )
            };
            // BSD `sed -i '' EXPR FILE` passes an empty backup suffix.
            let files = s.operands.iter().filter(|a| !a.text.is_empty());
            let files: Vec<&Arg> = files.skip(usize::from(!s.has(script))).copied().collect();
            if s.has("-i --in-place") {
                texts(&files)
            } else {
                Vec::new()
            }
        }
        "chmod" | "chown" | "chgrp" => {
            // Modes like `-x` look like options: only known flags are skipped.
            let flag =
                |t: &str| t.starts_with("--") || t[1..].chars().all(|c| "cfvRhHLP".contains(c));
            let end = args.iter().position(|a| a.is("--")).unwrap_or(args.len());
            let (options, after) = args.split_at(end);
            let reference = options.iter().any(|a| a.text.starts_with("--reference"));
            let operands = options
                .iter()
                .filter(|a| !(a.text.starts_with('-') && flag(&a.text)));
            let operands: Vec<&Arg> = operands.chain(after.iter().skip(1)).collect();
            texts(operands.get(usize::from(!reference)..).unwrap_or_default())
        }
        "git" => git_config_write(args).into_iter().collect(),
        "crontab" if !scan(args, "u:", "", true).has("-l -V") => vec!["crontab".into()],
        "rsync" => {
            // The destination is the last operand; option values after it would hide it.
            let s = scan(args, "e:f:", "rsh filter exclude include", true);
            let n = s.operands.len();
            texts(if n >= 2 { &s.operands[n - 1..] } else { &[] })
        }
        "curl" => {
            let short = "A:b:c:C:d:D:e:E:F:H:K:m:o:P:Q:r:t:T:u:U:w:x:X:y:Y:z:";
            let long = "output cookie-jar dump-header";
            values(short, long, "-o --output -c --cookie-jar -D --dump-header")
        }
        "wget" => {
            let long = "output-document output-file append-output";
            let names = "-O --output-document -o --output-file -a --append-output";
            values("o:a:e:i:B:O:t:T:w:Q:P:U:l:A:R:D:I:X:", long, names)
        }
        _ => Vec::new(),
    }
}

/// The file that `git [-C DIR] config ...` changes when it sets, unsets or
/// edits a value.
fn git_config_write(args: &[Arg]) -> Option<String> {
    let (mut i, mut dir) = (0, None);
    while let Some(a) = args.get(i) {
        i += match a.text.as_str() {
            "-C" => {
                dir = args.get(i + 1).map(|d| d.text.trim_end_matches('/'));
                2
            }
            "-c" | "--git-dir" | "--work-tree" | "--namespace" | "--config-env" => 2,
            t if t.starts_with('-') => 1,
            _ => break,
        };
    }
    if !args.get(i)?.is("config") {
        return None;
    }
    let rest = args.get(i + 1..).unwrap_or_default();
    let s = scan(rest, "f:", "file blob default type comment value", true);
    let reads = "--get --get-all --get-regexp --get-urlmatch --get-color --get-colorbool \
        --list -l --blob";
    let changes = "--unset --unset-all --add --replace-all --rename-section --remove-section \
        --edit -e";
    let writes = match s.operands.first().map(|a| a.text.as_str()) {
        _ if s.has(reads) => false,
        Some("get" | "list") => false,
        Some("set" | "unset" | "rename-section" | "remove-section" | "edit") => true,
        // `git config KEY` reads, `git config KEY VALUE` sets.
        _ => s.has(changes) || s.operands.len() >= 2,
    };
    let local = |file: &str| dir.map_or(file.to_owned(), |d| format!("{d}/{file}"));
    writes.then(|| match s.values("-f --file").last() {
        Some(file) => (*file).to_owned(),
        None if s.has("--global") => "~/.gitconfig".to_owned(),
        None if s.has("--system") => "/etc/gitconfig".to_owned(),
        None if s.has("--worktree") => local(".git/config.worktree"),
        None => local(".git/config"),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn run(command: &str) -> ShellAnalysis {
        analyze(command).unwrap_or_else(|e| panic!("{command:?}: {e}"))
    }

    fn texts(command: &str) -> Vec<String> {
        run(command).commands.into_iter().map(|c| c.text).collect()
    }

    /// (text, nested) of every command.
    fn listed(command: &str) -> Vec<(String, bool)> {
        let commands = run(command).commands.into_iter();
        commands.map(|c| (c.text, c.nested)).collect()
    }

    fn writes(command: &str) -> Vec<String> {
        run(command).writes
    }

    fn owned(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn and_list_yields_both_commands() {
        assert_eq!(
            texts("npm test && rm -rf /"),
            owned(&["npm test", "rm -rf /"])
        );
    }

    #[test]
    fn or_sequence_and_background() {
        assert_eq!(texts("a || b; c & d"), owned(&["a", "b", "c", "d"]));
    }

    #[test]
    fn pipeline_and_negation() {
        assert_eq!(
            texts("! cat f | grep -v x | wc -l"),
            owned(&["cat f", "grep -v x", "wc -l"])
        );
    }

    #[test]
    fn subshell_and_brace_group() {
        assert_eq!(
            texts("(cd x && rm y); { a; b; } > out"),
            owned(&["cd x", "rm y", "a", "b"])
        );
        assert_eq!(writes("{ a; b; } > out"), owned(&["out"]));
    }

    #[test]
    fn command_substitution_runs_first_and_word_stays_as_written() {
        let a = run("echo $(rm -rf /)");
        assert_eq!(a.commands[0].text, "rm -rf /");
        assert_eq!(a.commands[1].words, owned(&["echo", "$(rm -rf /)"]));
        assert!(!a.opaque);
    }

    #[test]
    fn nested_command_substitutions() {
        let t = texts("echo $(a $(b $(c)))");
        for inner in ["c", "b $(c)", "a $(b $(c))", "echo $(a $(b $(c)))"] {
            assert!(t.contains(&inner.to_owned()), "{inner} in {t:?}");
        }
    }

    #[test]
    fn backticks_including_escaped_nesting_and_dollar() {
        assert!(texts("echo `rm x`").contains(&"rm x".to_owned()));
        assert!(texts(r"echo `a \`b\``").contains(&"b".to_owned()));
        // Inside backquotes `\$` is `$`: the inner script runs `rm y`.
        assert!(texts(r"echo `echo \$(rm y)`").contains(&"rm y".to_owned()));
    }

    #[test]
    fn process_substitutions() {
        let a = run("diff <(ls a) >(tee b)");
        let t: Vec<&str> = a.commands.iter().map(|c| c.text.as_str()).collect();
        assert!(t.contains(&"ls a") && t.contains(&"tee b"), "{t:?}");
        assert_eq!(a.writes, owned(&["b"]));
        assert!(texts("cat < <(curl x)").contains(&"curl x".to_owned()));
    }

    #[test]
    fn if_while_until_bodies_and_conditions() {
        let t = texts(
            "if a; then b; elif c; then d; else e; fi; while f; do g; done; until h; do i; done",
        );
        assert_eq!(t, owned(&["a", "b", "c", "d", "e", "f", "g", "h", "i"]));
    }

    #[test]
    fn for_and_case_words_are_expanded() {
        let t = texts("for x in $(seq 3); do rm $x; done; case $(a) in $(b)) c;; esac");
        assert_eq!(t, owned(&["seq 3", "rm $x", "a", "b", "c"]));
        assert_eq!(
            texts("for ((i=0; i<$(n); i++)); do :; done"),
            owned(&["n", ":"])
        );
    }

    #[test]
    fn function_bodies() {
        assert_eq!(
            texts("f() { rm x; }; function g { h; }; f"),
            owned(&["rm x", "h", "f"])
        );
    }

    #[test]
    fn extended_test_and_arithmetic_substitutions() {
        assert_eq!(
            texts("[[ -f $(a) ]] && (( $(b) + 1 )); echo $(( $(c) ))").len(),
            4
        );
    }

    #[test]
    fn parameter_expansion_defaults_run_commands() {
        let a = run(r#"echo "${x:-$(rm y)}""#);
        assert_eq!(a.commands[0].text, "rm y");
        assert_eq!(a.commands[1].words, owned(&["echo", r#""${x:-$(rm y)}""#]));
    }

    #[test]
    fn bash_c_script_is_parsed_and_nested() {
        let expected = vec![
            ("bash -c a; b".to_owned(), false),
            ("a".to_owned(), true),
            ("b".to_owned(), true),
        ];
        assert_eq!(listed("bash -c 'a; b'"), expected);
    }

    #[test]
    fn sh_c_and_shell_options() {
        assert_eq!(texts(r#"sh -c "x && y""#)[1..], owned(&["x", "y"]));
        assert_eq!(texts("bash -lc 'rm z'")[1..], owned(&["rm z"]));
        assert_eq!(texts("bash -euo pipefail -c 'rm z'")[1..], owned(&["rm z"]));
        assert!(run("zsh +o nomatch -c 'rm z'").opaque);
        assert_eq!(
            texts("dash -c 'sh -c \"eval rm w\"'").last().unwrap(),
            "rm w"
        );
    }

    #[test]
    fn eval_joins_its_arguments() {
        assert_eq!(
            listed(r#"eval "rm -rf /""#)[1],
            ("rm -rf /".to_owned(), true)
        );
        assert_eq!(texts("eval rm '-rf' /")[1], "rm -rf /");
    }

    #[test]
    fn sudo_env_timeout_and_nice_wrap_commands() {
        let expected = vec![
            ("sudo rm -rf /".to_owned(), false),
            ("rm -rf /".to_owned(), true),
        ];
        assert_eq!(listed("sudo rm -rf /"), expected);
        assert_eq!(texts("sudo -u root -- rm x")[1], "rm x");
        assert_eq!(texts("env A=1 rm -rf /")[1], "rm -rf /");
        assert_eq!(texts("env -i -u HOME PATH=/bin rm x")[1], "rm x");
        assert_eq!(texts("timeout 5 rm x")[1], "rm x");
        assert_eq!(texts("timeout -s KILL 5 rm x")[1], "rm x");
        assert_eq!(texts("nice -n 5 rm x")[1], "rm x");
    }

    #[test]
    fn wrapper_chains_are_unwrapped_one_by_one() {
        let t = listed("nohup nice sudo -E stdbuf -o0 rm x");
        assert_eq!(t.len(), 5);
        assert_eq!(t[4], ("rm x".to_owned(), true));
        assert!(!t[0].1 && t[1..].iter().all(|(_, nested)| *nested));
    }

    #[test]
    fn timeout_wrapper_listing_matches_the_documented_example() {
        let expected = vec![
            ("timeout 5 rm -rf x".to_owned(), false),
            ("rm -rf x".to_owned(), true),
        ];
        assert_eq!(listed("timeout 5 rm -rf x"), expected);
    }

    #[test]
    fn xargs_and_find_exec_run_commands() {
        assert_eq!(
            texts("find . | xargs rm"),
            owned(&["find .", "xargs rm", "rm"])
        );
        assert_eq!(texts("xargs -0 -I{} rm -f {}")[1], "rm -f {}");
        let t = texts(r"find . -name x -exec rm {} \; -execdir chmod 600 {} +");
        assert_eq!(t[1..], owned(&["rm {}", "chmod 600 {}"]));
    }

    #[test]
    fn modes_that_run_nothing() {
        assert_eq!(texts("command -v rm"), owned(&["command -v rm"]));
        assert_eq!(texts("sudo -l"), owned(&["sudo -l"]));
        assert_eq!(texts("command rm x")[1], "rm x");
        assert_eq!(texts("bash script.sh"), owned(&["bash script.sh"]));
    }

    #[test]
    fn su_trap_and_watch_scripts() {
        assert_eq!(texts("su -c 'rm y' root")[1], "rm y");
        assert_eq!(texts("trap 'rm -rf /tmp/x' EXIT")[1], "rm -rf /tmp/x");
        assert_eq!(texts("trap -- 'rm y' INT TERM")[1], "rm y");
        assert_eq!(texts("trap - EXIT"), owned(&["trap - EXIT"]));
        assert_eq!(texts("watch -n 1 'ls; rm x'")[1..], owned(&["ls", "rm x"]));
    }

    #[test]
    fn quote_removal_defeats_quote_tricks() {
        assert_eq!(texts("'r'm -rf /"), owned(&["rm -rf /"]));
        assert_eq!(texts(r#""rm" -rf /"#), owned(&["rm -rf /"]));
        assert_eq!(texts(r"r\m -rf /"), owned(&["rm -rf /"]));
        assert_eq!(texts("$'rm' -rf /"), owned(&["rm -rf /"]));
        assert_eq!(texts(r"$'\x72\u006d' -rf /"), owned(&["rm -rf /"]));
        assert_eq!(texts("rm \\\n -rf /"), owned(&["rm -rf /"]));
    }

    #[test]
    fn quoted_spaces_stay_in_one_word() {
        let a = run(r#"echo "a b" 'c d' e\ f "g\"h""#);
        assert_eq!(
            a.commands[0].words,
            owned(&["echo", "a b", "c d", "e f", "g\"h"])
        );
    }

    #[test]
    fn tilde_and_globs_are_kept_literally() {
        assert_eq!(
            texts("ls ~/x ~root *.txt {a,b}"),
            owned(&["ls ~/x ~root *.txt {a,b}"])
        );
    }

    #[test]
    fn dynamic_command_word_is_opaque() {
        let a = run("$CMD -rf /");
        assert!(a.opaque);
        assert_eq!(a.commands[0].text, "$CMD -rf /");
        assert!(run("$(echo rm) -rf /").opaque);
        assert!(run("sudo \"$X\" y").opaque);
    }

    #[test]
    fn dynamic_arguments_are_kept_as_written() {
        let a = run(r#"rm -rf "$DIR"/x ${HOME}"#);
        assert!(!a.opaque);
        assert_eq!(
            a.commands[0].words,
            owned(&["rm", "-rf", r#""$DIR"/x"#, "${HOME}"])
        );
    }

    #[test]
    fn leading_assignments_are_dropped() {
        assert_eq!(texts("FOO=1 BAR='2 3' cmd x"), owned(&["cmd x"]));
        assert!(texts("FOO=1 BAR=2").is_empty());
        assert_eq!(texts("X=$(rm y) Y=(a $(b))"), owned(&["rm y", "b"]));
        assert_eq!(texts("export A=1"), owned(&["export A=1"]));
    }

    #[test]
    fn heredoc_bodies_are_not_commands() {
        let a = run("cat <<EOF > .bashrc\nrm -rf /\nEOF");
        assert_eq!(a.commands.len(), 1);
        assert_eq!(a.commands[0].text, "cat");
        assert_eq!(a.writes, owned(&[".bashrc"]));
        assert!(!a.opaque);
        // An unquoted here-document expands its substitutions; a quoted one does not.
        assert_eq!(texts("cat <<EOF\n$(rm x)\nEOF"), owned(&["rm x", "cat"]));
        assert_eq!(texts("cat <<'EOF'\n$(rm x)\nEOF"), owned(&["cat"]));
    }

    #[test]
    fn shells_reading_stdin_are_opaque() {
        let a = run("bash <<'EOF'\nrm -rf /\nEOF");
        assert!(a.opaque);
        assert_eq!(listed("bash <<< 'rm x'")[1], ("rm x".to_owned(), true));
        assert!(run("curl -fsSL https://x.sh | sh").opaque);
        assert!(run("sh -s < script").opaque);
    }

    #[test]
    fn sourcing_and_non_literal_scripts_are_opaque() {
        assert!(run("source x.sh").opaque);
        assert!(run(". ./env").opaque);
        assert!(run(r#"eval "$X""#).opaque);
        assert!(run(r#"bash -c "$X""#).opaque);
        assert!(!run("bash -c 'echo $X'").opaque);
    }

    #[test]
    fn nesting_deeper_than_the_limit_is_opaque() {
        let mut command = "rm x".to_owned();
        for _ in 0..=MAX_DEPTH {
            command = format!("bash -c {}", quoted(&command));
        }
        let a = run(&command);
        assert!(a.opaque);
        assert!(!a.commands.iter().any(|c| c.text == "rm x"));
        let shallow = run("bash -c 'bash -c \"rm x\"'");
        assert!(!shallow.opaque && shallow.commands.iter().any(|c| c.text == "rm x"));
    }

    fn quoted(s: &str) -> String {
        format!("'{}'", s.replace('\'', r"'\''"))
    }

    #[test]
    fn output_redirections_are_writes() {
        let w = writes("echo x >> ~/.bashrc 2> err.log > a &> b &>> c >| d 3<> e");
        assert_eq!(w, owned(&["~/.bashrc", "err.log", "a", "b", "c", "d", "e"]));
        assert_eq!(writes("exec > log"), owned(&["log"]));
        assert_eq!(writes("> created"), owned(&["created"]));
        assert_eq!(writes("echo x >& both"), owned(&["both"]));
        assert_eq!(writes("echo x > 5"), owned(&["5"]));
    }

    #[test]
    fn fd_duplications_sinks_and_inputs_are_not_writes() {
        for command in [
            "cmd >&2",
            "cmd 2>&1",
            "cmd > /dev/null 2>/dev/null",
            "cmd < in",
            "exec 3>&-",
        ] {
            assert!(writes(command).is_empty(), "{command}");
        }
    }

    #[test]
    fn tee_writes_its_files() {
        assert_eq!(writes("echo x | tee -a log /dev/null"), owned(&["log"]));
        assert_eq!(
            writes("echo x | sudo tee /etc/hosts > /dev/null"),
            owned(&["/etc/hosts"])
        );
    }

    #[test]
    fn copy_move_link_install_destinations() {
        assert_eq!(writes("cp a b .git/hooks/"), owned(&[".git/hooks/"]));
        assert_eq!(writes("mv -t DIR a b"), owned(&["DIR"]));
        assert_eq!(writes("cp --target-directory=D a"), owned(&["D"]));
        assert_eq!(writes("cp -r -S .bak src dst"), owned(&["dst"]));
        assert_eq!(writes("ln -sf target link"), owned(&["link"]));
        assert_eq!(
            writes("install -m 755 a /usr/local/bin/a"),
            owned(&["/usr/local/bin/a"])
        );
        assert!(writes("cp --help").is_empty());
    }

    #[test]
    fn touch_truncate_and_dd() {
        assert_eq!(writes("touch -d now a b"), owned(&["a", "b"]));
        assert_eq!(writes("truncate -s 0 log"), owned(&["log"]));
        assert_eq!(
            writes("dd if=/dev/zero of=disk.img bs=1M"),
            owned(&["disk.img"])
        );
    }

    #[test]
    fn in_place_editors() {
        assert_eq!(writes("sed -i 's/a/b/' f g"), owned(&["f", "g"]));
        assert_eq!(writes("sed -E -n -i.bak -e x f"), owned(&["f"]));
        assert_eq!(writes("sed -i '' 's/a/b/' f"), owned(&["f"]));
        assert!(writes("sed 's/a/b/' f").is_empty());
        assert_eq!(writes("perl -pi -e 's/a/b/' f"), owned(&["f"]));
        assert!(writes("perl -e 'print 1' f").is_empty());
    }

    #[test]
    fn chmod_and_chown_change_their_operands() {
        assert_eq!(writes("chmod +x run.sh"), owned(&["run.sh"]));
        assert_eq!(writes("chmod -R 755 dir"), owned(&["dir"]));
        assert_eq!(writes("chmod -x f"), owned(&["f"]));
        assert_eq!(writes("chown --reference=r f"), owned(&["f"]));
        assert_eq!(writes("chown -R user:group a b"), owned(&["a", "b"]));
    }

    #[test]
    fn git_config_writes() {
        assert_eq!(
            writes("git config core.hooksPath x"),
            owned(&[".git/config"])
        );
        assert_eq!(
            writes("git config --global user.name x"),
            owned(&["~/.gitconfig"])
        );
        assert_eq!(
            writes("git config --unset core.hooksPath"),
            owned(&[".git/config"])
        );
        assert_eq!(
            writes("git -C repo config a b"),
            owned(&["repo/.git/config"])
        );
        assert_eq!(writes("git config --file f.cfg a b"), owned(&["f.cfg"]));
        assert!(writes("git config --get user.name").is_empty());
        assert!(writes("git config -l").is_empty());
        assert!(writes("git config user.name").is_empty());
        assert!(writes("git status").is_empty());
    }

    #[test]
    fn crontab_changes_unless_listing() {
        assert!(writes("crontab -l").is_empty());
        for command in [
            "crontab file",
            "crontab -e",
            "crontab -",
            "crontab -u bob -r",
        ] {
            assert_eq!(writes(command), owned(&["crontab"]), "{command}");
        }
    }

    #[test]
    fn rsync_curl_and_wget_destinations() {
        assert_eq!(
            writes("rsync -av --exclude x src/ host:dst/"),
            owned(&["host:dst/"])
        );
        assert_eq!(writes("curl -sSLo out.tgz https://x"), owned(&["out.tgz"]));
        assert_eq!(
            writes("curl --output=a https://x; curl -o - https://y"),
            owned(&["a"])
        );
        assert_eq!(
            writes("wget -qO page.html https://x"),
            owned(&["page.html"])
        );
        assert!(writes("curl https://x").is_empty());
    }

    #[test]
    fn writes_of_nested_commands_count() {
        assert_eq!(writes("bash -c 'echo x > f'"), owned(&["f"]));
        assert_eq!(writes("sudo -u root cp a /etc/b"), owned(&["/etc/b"]));
        assert_eq!(writes("echo $(touch made)"), owned(&["made"]));
    }

    #[test]
    fn ansi_c_decoding() {
        assert_eq!(ansi_c(r"a\tb\n\x41\101\u00e9\'\\\q\"), "a\tb\nAAé'\\\\q\\");
    }

    #[test]
    fn parse_errors_are_errors() {
        for command in [
            "echo \"unterminated",
            "echo $(",
            ")",
            "if true; then",
            "a &&",
            "echo 'x",
        ] {
            assert!(analyze(command).is_err(), "{command:?}");
        }
    }

    #[test]
    fn pathological_inputs_neither_hang_nor_crash() {
        // Each of these once made brush-parser loop forever or overflow the stack.
        for command in ["cat << '' ", "$(<< \t", "$(<<- \t", "cat <<- \"\" \\"] {
            let _ = analyze(command);
        }
        assert!(analyze(&"(".repeat(MAX_NESTING + 1)).is_err());
        assert!(analyze(&format!("{}x{}", "$(".repeat(3000), ")".repeat(3000))).is_ok());
        let long = "echo a && ".repeat(5000) + "true";
        assert_eq!(run(&long).commands.len(), 5001);
        assert_eq!(run("echo a\0b").commands[0].words, owned(&["echo", "a\0b"]));
    }

    #[test]
    fn garbage_never_panics() {
        let pieces = [
            "a",
            " ",
            "'",
            "\"",
            "$",
            "(",
            ")",
            "{",
            "}",
            "`",
            "\\",
            ";",
            "&",
            "|",
            "<",
            ">",
            "\n",
            "\t",
            "=",
            "-c ",
            "bash ",
            "sudo ",
            "eval ",
            "$(",
            "${",
            "$((",
            "<<",
            "<<EOF\n",
            "EOF\n",
            "<< '' ",
            "if ",
            "then ",
            "fi",
            "for ",
            "do ",
            "done",
            "case ",
            "in ",
            "esac",
            "!",
            "[[ ",
            " ]]",
            "*",
            "~",
            "#",
            "\0",
            "é",
            "$'",
            "\\x",
            "2>",
            "&>",
            ">&",
            "<(",
            "git config ",
            "sed -i ",
            "coproc ",
            "function ",
            "find . -exec ",
        ];
        let mut seed: u64 = 0x2545_F491_4F6C_DD1D;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..400 {
            let len = next() % 30;
            let command: String = (0..len)
                .map(|_| pieces[(next() % pieces.len() as u64) as usize])
                .collect();
            let _ = analyze(&command);
        }
    }
}
