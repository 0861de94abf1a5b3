//! Shell command analysis for `Shell(...)` rules and the write gate.
//!
//! A rule such as `Shell(rm -rf /*)` must see every command a line runs, not
//! just the first: `npm test && rm -rf /` hides the second behind the first.
//! [`analyze`] parses the line with `brush-parser` (a real bash grammar),
//! walks the whole tree, and re-parses the scripts other commands run.
//!
//! Wrappers whose inner command is listed too (flagged
//! [`SimpleCommand::nested`]): `sudo`, `doas`, `env`, `timeout`, `nice`,
//! `nohup`, `time`, `command`, `builtin`, `exec`, `xargs`, `stdbuf`,
//! `ionice`, `chroot`, `setsid`, `busybox`, `watch -x`, and `find` with
//! `-exec`/`-execdir`/`-ok`/`-okdir`. Scripts parsed recursively (their
//! commands nested too): `bash`/`sh`/`zsh`/`dash`/`ksh`/`ash`/`mksh` `-c`,
//! `eval`, `su -c`, `trap`, `watch`, `env -S`. Commands run on another host
//! (`ssh host cmd`) are not looked into.

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
    /// `wget -O`/`-o`/`-a`, `time -o`, `git config` setting a value
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
    let mut parser = Parser::new(std::io::Cursor::new(padded.as_bytes()), &options());
    // It also unwraps in places: a panic means the input cannot be analyzed.
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| parser.parse_program()))
        .map_err(|_| error("the parser failed on this input".into()))?
        .map_err(|e| error(e.to_string()))
}

fn options() -> ParserOptions {
    ParserOptions::default()
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
                self.test(&test.expr, ctx);
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

    fn test(&mut self, expr: &ast::ExtendedTestExpr, ctx: Ctx) {
        use ast::ExtendedTestExpr as E;
        match expr {
            E::And(a, b) | E::Or(a, b) => {
                self.test(a, ctx);
                self.test(b, ctx);
            }
            E::Not(a) | E::Parenthesized(a) => self.test(a, ctx),
            E::UnaryTest(_, w) => {
                self.word(&w.value, ctx);
            }
            E::BinaryTest(_, a, b) => {
                self.word(&a.value, ctx);
                self.word(&b.value, ctx);
            }
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
                    match word::parse_heredoc(body, &options()) {
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
        let command = SimpleCommand {
            words: texts,
            text,
            nested,
        };
        self.out.commands.push(command);
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
        let dynamic = match word::parse(raw, &options()) {
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
        if text.contains(['$', '`']) {
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
                    let deeper = ctx.deeper(false);
                    match body {
                        Some(_) if deeper.depth > MAX_DEPTH => self.out.opaque = true,
                        Some(body) => self.expanded(body, deeper),
                        None => {}
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
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match chars.peek() {
            Some(&next) if c == '\\' && (next == '$' || next == '\\') => {
                out.push(next);
                chars.next();
            }
            _ => out.push(c),
        }
    }
    out
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
            "arg-file delimiter max-procs",
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
            // `+o NAME` unsets what `-o NAME` sets, with the same syntax.
            let minus = |a: &Arg| match a.text.strip_prefix('+') {
                Some(o) if o.chars().all(char::is_alphabetic) => Arg::new(format!("-{o}"), false),
                _ => a.clone(),
            };
            let args: Vec<Arg> = args.iter().map(minus).collect();
            let s = scan(&args, "o:O:", "rcfile init-file", false);
            match (s.has("-c"), s.rest.first()) {
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
            [action, _, ..] if !action.text.starts_with('-') => Inner::Script(literal(action)),
            _ => Inner::Nothing,
        },
        "source" | "." => Inner::Script(None),
        "find" => {
            let execs = ["-exec", "-execdir", "-ok", "-okdir"];
            let exec = |a: &Arg| execs.iter().any(|o| a.is(o));
            let mut argvs = Vec::new();
            let mut i = 0;
            while i < args.len() {
                i += 1;
                if exec(&args[i - 1]) {
                    let end = args[i..].iter().position(|a| a.is(";") || a.is("+"));
                    let end = end.map_or(args.len(), |e| i + e);
                    argvs.push(&args[i..end]);
                    i = end;
                }
            }
            Inner::Argvs(argvs)
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
        "time" => {
            let given = scan(args, "f:o:", "format output", false).values("-o --output");
            given.into_iter().map(str::to_owned).collect()
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
