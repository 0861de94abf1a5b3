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
    /// Every simple command, each before the commands found inside it: those
    /// in `&&`, `||`, `;`, `&`, pipelines, `!`, subshells, brace groups,
    /// `$(...)`, backticks, process substitutions, `if`/`while`/`until`/
    /// `for`/`case` bodies and conditions, function bodies, and (flagged
    /// `nested`) the inner commands of wrappers and scripts. A wrapper itself
    /// is listed too: `timeout 5 rm -rf x` gives `timeout 5 rm -rf x` and
    /// (nested) `rm -rf x`.
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
    // Ending the input with a newline takes it past that line; the second
    // one survives a trailing backslash-newline continuation.
    let padded = format!("{source}\n\n");
    let mut parser = Parser::new(std::io::Cursor::new(padded.as_bytes()), &options());
    // It also unwraps in places; a panic means the input cannot be analyzed.
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
        let nested = self.nested || nested;
        Ctx {
            depth: self.depth + 1,
            nested,
        }
    }
}

/// Commands hidden in words and redirections of a simple command, walked
/// after the command itself so that it is listed first.
enum Found<'a> {
    Script(String),
    List(&'a ast::CompoundList),
    Unknown,
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
        match (ctx.depth <= MAX_DEPTH)
            .then(|| parse(source).ok())
            .flatten()
        {
            Some(program) => self.program(&program, ctx),
            None => self.out.opaque = true,
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
        let mut found = Vec::new();
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
                test_words(&test.expr, ctx.depth, &mut found);
                redirects
            }
        };
        for redirect in redirects.iter().flat_map(|r| &r.0) {
            self.redirect(redirect, ctx.depth, &mut found, &mut Vec::new());
        }
        self.found(found, ctx);
    }

    /// Walks the substitutions of `words` at once.
    fn words<'w>(&mut self, words: impl IntoIterator<Item = &'w ast::Word>, ctx: Ctx) {
        let mut found = Vec::new();
        for w in words {
            word_arg(&w.value, ctx.depth, &mut found);
        }
        self.found(found, ctx);
    }

    fn compound(&mut self, compound: &ast::CompoundCommand, ctx: Ctx) {
        use ast::CompoundCommand as C;
        let mut found = Vec::new();
        match compound {
            C::Arithmetic(a) => scan_text(&a.expr.value, ctx.depth, &mut found),
            C::ArithmeticForClause(f) => {
                for part in [&f.initializer, &f.condition, &f.updater]
                    .into_iter()
                    .flatten()
                {
                    scan_text(&part.value, ctx.depth, &mut found);
                }
                self.found(std::mem::take(&mut found), ctx);
                self.list(&f.body.list, ctx);
            }
            C::BraceGroup(ast::BraceGroupCommand { list, .. })
            | C::Subshell(ast::SubshellCommand { list, .. }) => self.list(list, ctx),
            C::ForClause(f) => {
                self.words(f.values.iter().flatten(), ctx);
                self.list(&f.body.list, ctx);
            }
            C::CaseClause(c) => {
                self.words([&c.value], ctx);
                for item in &c.cases {
                    self.words(&item.patterns, ctx);
                    if let Some(cmd) = &item.cmd {
                        self.list(cmd, ctx);
                    }
                }
            }
            C::IfClause(i) => {
                self.list(&i.condition, ctx);
                self.list(&i.then, ctx);
                for clause in i.elses.iter().flatten() {
                    if let Some(condition) = &clause.condition {
                        self.list(condition, ctx);
                    }
                    self.list(&clause.body, ctx);
                }
            }
            C::WhileClause(w) | C::UntilClause(w) => {
                self.list(&w.0, ctx);
                self.list(&w.1.list, ctx);
            }
            C::Coprocess(c) => self.command(&c.body, ctx),
        }
        self.found(found, ctx);
    }

    fn simple(&mut self, simple: &ast::SimpleCommand, ctx: Ctx) {
        let (mut found, mut stdin, mut words) = (Vec::new(), Vec::new(), Vec::new());
        for item in simple.prefix.iter().flat_map(|p| &p.0) {
            if let ast::CommandPrefixOrSuffixItem::AssignmentWord(assignment, _) = item {
                // Leading assignments are not words, but their values expand.
                let values: Vec<&ast::Word> = match &assignment.value {
                    ast::AssignmentValue::Scalar(w) => vec![w],
                    ast::AssignmentValue::Array(items) => items
                        .iter()
                        .flat_map(|(k, v)| k.iter().chain([v]))
                        .collect(),
                };
                for value in values {
                    word_arg(&value.value, ctx.depth, &mut found);
                }
            } else {
                self.item(item, ctx.depth, &mut words, &mut found, &mut stdin);
            }
        }
        if let Some(name) = &simple.word_or_name {
            words.push(word_arg(&name.value, ctx.depth, &mut found));
        }
        for item in simple.suffix.iter().flat_map(|s| &s.0) {
            self.item(item, ctx.depth, &mut words, &mut found, &mut stdin);
        }
        self.examine(&words, &stdin, ctx);
        self.found(found, ctx);
    }

    fn item<'a>(
        &mut self,
        item: &'a ast::CommandPrefixOrSuffixItem,
        depth: usize,
        words: &mut Vec<Arg>,
        found: &mut Vec<Found<'a>>,
        stdin: &mut Vec<String>,
    ) {
        use ast::CommandPrefixOrSuffixItem as I;
        match item {
            I::IoRedirect(r) => self.redirect(r, depth, found, stdin),
            I::Word(w) | I::AssignmentWord(_, w) => words.push(word_arg(&w.value, depth, found)),
            I::ProcessSubstitution(kind, sub) => {
                words.push(Arg {
                    text: format!("{kind}{sub}"),
                    dynamic: true,
                });
                found.push(Found::List(&sub.list));
            }
        }
    }

    fn redirect<'a>(
        &mut self,
        redirect: &'a ast::IoRedirect,
        depth: usize,
        found: &mut Vec<Found<'a>>,
        stdin: &mut Vec<String>,
    ) {
        use ast::{IoFileRedirectKind as K, IoFileRedirectTarget as T};
        match redirect {
            ast::IoRedirect::File(_, kind, T::Filename(w)) => {
                let target = word_arg(&w.value, depth, found);
                if matches!(kind, K::Write | K::Append | K::Clobber | K::ReadAndWrite) {
                    self.write(&target.text);
                }
            }
            ast::IoRedirect::File(_, kind, T::Duplicate(w)) => {
                let target = word_arg(&w.value, depth, found);
                // `>& FILE` sends stdout and stderr to FILE; `>&2` and `>&-` name fds.
                let fd = target.text.trim_end_matches('-');
                let is_fd = !target.dynamic && fd.bytes().all(|b| b.is_ascii_digit());
                if matches!(kind, K::DuplicateOutput) && !is_fd {
                    self.write(&target.text);
                }
            }
            ast::IoRedirect::File(_, _, T::ProcessSubstitution(_, sub)) => {
                found.push(Found::List(&sub.list));
            }
            ast::IoRedirect::File(_, _, T::Fd(_)) => {}
            ast::IoRedirect::HereDocument(fd, doc) => {
                if doc.requires_expansion {
                    match word::parse_heredoc(&doc.doc.value, &options()) {
                        Ok(pieces) => {
                            unquote(&doc.doc.value, &pieces, depth, &mut String::new(), found);
                        }
                        Err(_) => found.push(Found::Unknown),
                    }
                }
                if fd.is_none_or(|fd| fd == 0) {
                    stdin.push(doc.doc.value.clone());
                }
            }
            ast::IoRedirect::HereString(fd, w) => {
                let text = word_arg(&w.value, depth, found);
                if fd.is_none_or(|fd| fd == 0) && !text.dynamic {
                    stdin.push(text.text);
                }
            }
            ast::IoRedirect::OutputAndError(w, _) => {
                let target = word_arg(&w.value, depth, found);
                self.write(&target.text);
            }
        }
    }

    fn found(&mut self, found: Vec<Found<'_>>, ctx: Ctx) {
        for f in found {
            match f {
                Found::Script(source) => self.script(&source, ctx.deeper(false)),
                Found::List(list) => self.list(list, ctx),
                Found::Unknown => self.out.opaque = true,
            }
        }
    }

    /// Lists one simple command given as words, then what it runs in turn.
    fn examine(&mut self, words: &[Arg], stdin: &[String], ctx: Ctx) {
        let Some(first) = words.first() else {
            return;
        };
        let texts: Vec<String> = words.iter().map(|w| w.text.clone()).collect();
        let text = texts.join(" ");
        self.out.commands.push(SimpleCommand {
            words: texts,
            text,
            nested: ctx.nested,
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
        let sink = matches!(
            path,
            "/dev/null" | "/dev/stdout" | "/dev/stderr" | "/dev/tty"
        ) || path.starts_with("/dev/fd/");
        if !path.is_empty() && !sink && !self.out.writes.iter().any(|w| w == path) {
            self.out.writes.push(path.to_owned());
        }
    }
}

fn test_words<'a>(expr: &'a ast::ExtendedTestExpr, depth: usize, found: &mut Vec<Found<'a>>) {
    use ast::ExtendedTestExpr as E;
    match expr {
        E::And(a, b) | E::Or(a, b) => {
            test_words(a, depth, found);
            test_words(b, depth, found);
        }
        E::Not(a) | E::Parenthesized(a) => test_words(a, depth, found),
        E::UnaryTest(_, w) => {
            word_arg(&w.value, depth, found);
        }
        E::BinaryTest(_, a, b) => {
            word_arg(&a.value, depth, found);
            word_arg(&b.value, depth, found);
        }
    }
}

/// Quote removal of one source word; the substitutions inside go to `found`.
fn word_arg(raw: &str, depth: usize, found: &mut Vec<Found<'_>>) -> Arg {
    let mut text = String::new();
    let dynamic = match word::parse(raw, &options()) {
        Ok(pieces) => unquote(raw, &pieces, depth, &mut text, found),
        Err(_) => {
            found.push(Found::Unknown);
            true
        }
    };
    Arg {
        text: if dynamic { raw.to_owned() } else { text },
        dynamic,
    }
}

/// Appends the static text of `pieces` (whose indices point into `raw`) to
/// `out`; returns whether any piece is an expansion.
fn unquote(
    raw: &str,
    pieces: &[WordPieceWithSource],
    depth: usize,
    out: &mut String,
    found: &mut Vec<Found<'_>>,
) -> bool {
    let mut dynamic = false;
    for p in pieces {
        let source = raw.get(p.start_index..p.end_index).unwrap_or_default();
        match &p.piece {
            WordPiece::Text(s) | WordPiece::SingleQuotedText(s) => out.push_str(s),
            WordPiece::AnsiCQuotedText(s) => out.push_str(&ansi_c(s)),
            WordPiece::DoubleQuotedSequence(inner)
            | WordPiece::GettextDoubleQuotedSequence(inner) => {
                dynamic |= unquote(raw, inner, depth, out, found);
            }
            WordPiece::TildeExpansion(_) => out.push_str(source),
            // A backslash-newline is a line continuation: it vanishes.
            WordPiece::EscapeSequence(s) => {
                out.push_str(s.get(1..).unwrap_or_default().trim_start_matches('\n'))
            }
            WordPiece::ParameterExpansion(_) => {
                dynamic = true;
                // `${x:-$(cmd)}` runs cmd, so the braces are looked into.
                let body = source.strip_prefix("${").and_then(|t| t.strip_suffix('}'));
                scan_text(body.unwrap_or_default(), depth + 1, found);
            }
            WordPiece::CommandSubstitution(s) => {
                dynamic = true;
                found.push(Found::Script(s.clone()));
            }
            WordPiece::BackquotedCommandSubstitution(s) => {
                dynamic = true;
                found.push(Found::Script(unescape_backquoted(s)));
            }
            WordPiece::ArithmeticExpression(e) => {
                dynamic = true;
                scan_text(&e.value, depth + 1, found);
            }
        }
    }
    dynamic
}

/// Collects the substitutions in text that is expanded like a word.
fn scan_text(text: &str, depth: usize, found: &mut Vec<Found<'_>>) {
    if !text.contains(['$', '`']) {
        return;
    }
    match word::parse(text, &options()) {
        Ok(pieces) if depth <= MAX_DEPTH => {
            unquote(text, &pieces, depth, &mut String::new(), found);
        }
        _ => found.push(Found::Unknown),
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

/// Decodes the body of `$'...'` as bash does.
fn ansi_c(s: &str) -> String {
    const SIMPLE: &[(char, char)] = &[
        ('a', '\x07'),
        ('b', '\x08'),
        ('e', '\x1b'),
        ('E', '\x1b'),
        ('f', '\x0c'),
        ('n', '\n'),
        ('r', '\r'),
        ('t', '\t'),
        ('v', '\x0b'),
        ('\\', '\\'),
        ('\'', '\''),
        ('"', '"'),
        ('?', '?'),
    ];
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find('\\') {
        out.push_str(&rest[..pos]);
        let escape = &rest[pos + 1..];
        let Some(e) = escape.chars().next() else {
            out.push('\\');
            return out;
        };
        let (radix, max, skip) = match e {
            'x' => (16, 2, 1),
            'u' => (16, 4, 1),
            'U' => (16, 8, 1),
            '0'..='7' => (8, 3, 0),
            _ => (10, 0, 0),
        };
        let digits = escape.get(skip..).unwrap_or_default();
        let len = digits
            .chars()
            .take(max)
            .take_while(|c| c.is_digit(radix))
            .count();
        let number = u32::from_str_radix(&digits[..len], radix).ok();
        if let Some(ch) = number.and_then(char::from_u32) {
            out.push(ch);
            rest = &digits[len..];
            continue;
        }
        rest = &escape[e.len_utf8()..];
        if let Some((_, ch)) = SIMPLE.iter().find(|(k, _)| *k == e) {
            out.push(*ch);
        } else if let (Some(ctl), 'c') = (rest.chars().next(), e) {
            out.push(char::from(ctl as u8 & 0x1f));
            rest = &rest[ctl.len_utf8()..];
        } else {
            out.push('\\');
            out.push(e);
        }
    }
    out.push_str(rest);
    out
}

/// getopt-style syntax of a command's options: short options taking a value,
/// short options whose value can only be attached (`-i.bak`), long options
/// taking a value (space separated), and whether options may follow operands
/// (GNU argument permutation).
struct Spec(&'static str, &'static str, &'static str, bool);

const FLAGS: Spec = Spec("", "", "", false);

/// Options and operands of a command's arguments. `rest` is everything from
/// the first operand on when options do not permute, or after `--`.
struct Scanned<'a> {
    opts: Vec<(String, Option<&'a str>)>,
    operands: Vec<&'a Arg>,
    rest: &'a [Arg],
}

impl<'a> Scanned<'a> {
    /// Whether any of the space-separated option names was given.
    fn has(&self, names: &str) -> bool {
        !self.values_or_flags(names).is_empty()
    }

    fn values_or_flags(&self, names: &str) -> Vec<Option<&'a str>> {
        let names: Vec<&str> = names.split(' ').collect();
        self.opts
            .iter()
            .filter(|(n, _)| names.contains(&n.as_str()))
            .map(|(_, v)| *v)
            .collect()
    }

    /// The values of the space-separated options, in order.
    fn values(&self, names: &str) -> Vec<&'a str> {
        self.values_or_flags(names).into_iter().flatten().collect()
    }
}

fn scan<'a>(args: &'a [Arg], Spec(arg, opt, long, permute): &Spec) -> Scanned<'a> {
    let (mut opts, mut operands) = (Vec::new(), Vec::new());
    let mut i = 0;
    while let Some(a) = args.get(i).map(|a| a.text.as_str()) {
        let next = args.get(i + 1).map(|n| n.text.as_str());
        i += 1;
        if a == "--" {
            break;
        } else if let Some(body) = a.strip_prefix("--") {
            let (name, value) = body
                .split_once('=')
                .map_or((body, None), |(n, v)| (n, Some(v)));
            let takes = value.is_none() && long.split(' ').any(|l| l == name);
            i += usize::from(takes);
            opts.push((format!("--{name}"), if takes { next } else { value }));
        } else if let Some(body) = a.strip_prefix('-').filter(|b| !b.is_empty()) {
            for (pos, ch) in body.char_indices() {
                let attached = Some(&body[pos + ch.len_utf8()..]).filter(|v| !v.is_empty());
                let value = if arg.contains(ch) && attached.is_none() {
                    i += 1;
                    next
                } else {
                    attached
                };
                let takes = arg.contains(ch) || opt.contains(ch);
                opts.push((format!("-{ch}"), value.filter(|_| takes)));
                if takes {
                    break;
                }
            }
        } else if *permute {
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

/// Drops leading `NAME=value` words, which `env` and `sudo` accept.
fn skip_assignments(args: &[Arg]) -> &[Arg] {
    let is_assignment = |a: &Arg| {
        a.text.split_once('=').is_some_and(|(name, _)| {
            name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
    };
    &args[args.iter().take_while(|a| is_assignment(a)).count()..]
}

/// The words joined as one script, or `None` when one is not a literal.
fn join(args: &[Arg]) -> Option<String> {
    let literal = args.iter().all(|a| !a.dynamic);
    literal.then(|| {
        args.iter()
            .map(|a| a.text.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    })
}

fn argv(args: &[Arg]) -> Inner<'_> {
    if args.is_empty() {
        Inner::Nothing
    } else {
        Inner::Argv(args)
    }
}

/// The command or script that `name args...` runs besides itself.
fn inner_of<'a>(name: &str, args: &'a [Arg]) -> Inner<'a> {
    let skip = |spec: Spec, n: usize| argv(scan(args, &spec).rest.get(n..).unwrap_or_default());
    let literal = |a: &Arg| (!a.dynamic).then(|| a.text.clone());
    match name {
        "sudo" | "doas" => {
            let s = scan(
                args,
                &Spec("ugCDprtTUR", "", "user group chdir prompt role type", false),
            );
            if s.has("-e --edit -l --list -v --validate -V --version") {
                return Inner::Nothing;
            }
            argv(skip_assignments(s.rest))
        }
        "env" => {
            let s = scan(args, &Spec("uCS", "", "unset chdir split-string", false));
            let rest = skip_assignments(s.rest);
            match s.values("-S --split-string").first() {
                Some(split) => Inner::Script(join(rest).map(|r| format!("{split} {r}"))),
                None => argv(rest),
            }
        }
        "timeout" => skip(Spec("sk", "", "signal kill-after", false), 1),
        "nice" => skip(Spec("n", "", "adjustment", false), 0),
        "nohup" | "setsid" | "builtin" => skip(FLAGS, 0),
        "busybox" => argv(args),
        "time" => skip(Spec("fo", "", "format output", false), 0),
        "exec" => skip(Spec("a", "", "", false), 0),
        "xargs" => {
            let long = "arg-file delimiter max-args max-procs max-chars";
            skip(Spec("adEILnPs", "eil", long, false), 0)
        }
        "stdbuf" => skip(Spec("ioe", "", "input output error", false), 0),
        "chroot" => skip(Spec("", "", "userspec groups", false), 1),
        "command" | "ionice" => {
            let s = scan(
                args,
                &if name == "ionice" {
                    Spec("cnpPu", "", "", false)
                } else {
                    FLAGS
                },
            );
            // `command -v` only looks the name up; `ionice -p PID` acts on running processes.
            if s.has("-v -V -p -P -u --pid --pgid --uid") {
                return Inner::Nothing;
            }
            argv(s.rest)
        }
        "watch" => {
            let s = scan(args, &Spec("nq", "", "interval equexit", false));
            match s.has("-x --exec") {
                true => argv(s.rest),
                // watch hands its arguments, joined, to `sh -c`.
                false if !s.rest.is_empty() => Inner::Script(join(s.rest)),
                false => Inner::Nothing,
            }
        }
        "find" => {
            let exec = |a: &Arg| {
                ["-exec", "-execdir", "-ok", "-okdir"]
                    .iter()
                    .any(|o| a.is(o))
            };
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
        "su" => {
            let long = "command session-command group supp-group shell";
            let s = scan(args, &Spec("cgGsw", "", long, true));
            let script = s
                .values("-c --command --session-command")
                .first()
                .map(|s| (*s).to_owned());
            script.map_or(Inner::Nothing, |s| Inner::Script(Some(s)))
        }
        "bash" | "sh" | "zsh" | "dash" | "ksh" | "ash" | "mksh" => {
            // `+o NAME` unsets what `-o NAME` sets: same syntax.
            let minus = |a: &Arg| match a.text.strip_prefix('+') {
                Some(o) if o.chars().all(char::is_alphabetic) => Arg::new(format!("-{o}"), false),
                _ => a.clone(),
            };
            let args: Vec<Arg> = args.iter().map(minus).collect();
            let s = scan(&args, &Spec("oO", "", "rcfile init-file", false));
            let command = s.has("-c");
            match s.rest.first() {
                _ if s.has("-s") && !command => Inner::Stdin,
                Some(script) if command => Inner::Script(literal(script)),
                None if !command => Inner::Stdin,
                _ => Inner::Nothing,
            }
        }
        "eval" if !args.is_empty() => Inner::Script(join(args)),
        "trap" => match args {
            [action, _, ..] if !action.text.starts_with('-') => Inner::Script(literal(action)),
            _ => Inner::Nothing,
        },
        "source" | "." => Inner::Script(None),
        _ => Inner::Nothing,
    }
}

/// The files that `name args...` creates or changes; see [`ShellAnalysis::writes`].
fn writes_of(name: &str, args: &[Arg]) -> Vec<String> {
    let texts = |v: &[&Arg]| v.iter().map(|a| a.text.clone()).collect::<Vec<_>>();
    let owned = |v: Vec<&str>| v.into_iter().map(str::to_owned).collect::<Vec<_>>();
    let permuted = |arg, long| scan(args, &Spec(arg, "", long, true));
    match name {
        "tee" => texts(&permuted("", "").operands),
        "mv" | "cp" | "ln" | "install" => {
            let s = permuted("tSmgo", "target-directory suffix mode owner group");
            let last = &s.operands[s.operands.len().saturating_sub(1)..];
            if let Some(dir) = s.values("-t --target-directory").last() {
                vec![(*dir).to_owned()]
            } else if name == "install" && s.has("-d --directory") {
                texts(&s.operands)
            } else if s.operands.len() >= 2 || s.has("-T --no-target-directory") {
                texts(last)
            } else if name == "ln" {
                // `ln -s /a/b` creates `b` in the current directory.
                let base = last
                    .iter()
                    .filter_map(|a| a.text.trim_end_matches('/').rsplit('/').next());
                owned(base.collect())
            } else {
                Vec::new()
            }
        }
        "touch" | "truncate" => texts(&permuted("dtrs", "date reference size").operands),
        "dd" => owned(
            args.iter()
                .filter_map(|a| a.text.strip_prefix("of="))
                .collect(),
        ),
        "sed" | "perl" => {
            let (s, inline) = match name {
                "sed" => (
                    scan(args, &Spec("efl", "i", "expression file", true)),
                    "-e -f --expression --file",
                ),
                // perl stops at its script or first file.
                _ => (scan(args, &Spec("eEIMm", "il0xCdD", "", false)), "-e -E"),
            };
            // BSD `sed -i '' EXPR FILE` passes an empty backup suffix.
            let mut files: Vec<&Arg> = s
                .operands
                .iter()
                .copied()
                .filter(|a| !a.text.is_empty())
                .collect();
            if !s.has(inline) && !files.is_empty() {
                files.remove(0);
            }
            if s.has("-i --in-place") {
                texts(&files)
            } else {
                Vec::new()
            }
        }
        "chmod" | "chown" | "chgrp" => {
            // Modes like `-x` look like options: only known flags are skipped.
            let flag = |t: &str| {
                t.starts_with("--")
                    || (t.len() > 1 && t[1..].chars().all(|c| "cfvRhHLP".contains(c)))
            };
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
        "crontab" if !scan(args, &Spec("u", "", "", true)).has("-l -V") => vec!["crontab".into()],
        "rsync" => {
            let long = "rsh rsync-path filter exclude include exclude-from include-from files-from \
                temp-dir compare-dest copy-dest link-dest partial-dir backup-dir suffix chmod chown \
                log-file password-file port timeout bwlimit max-size min-size out-format info debug";
            let s = permuted("efTBM", long);
            match s.operands.len() {
                0 | 1 => Vec::new(),
                n => texts(&s.operands[n - 1..]),
            }
        }
        "curl" => {
            let long = "output cookie-jar dump-header data data-raw data-binary data-urlencode \
                header request user user-agent cookie form referer config max-time proxy \
                connect-timeout upload-file write-out range retry cert key cacert url";
            let s = permuted("AbcCdDeEFHKmoPQrtTuUwxXyYz", long);
            let files = s.values("-o --output -c --cookie-jar -D --dump-header");
            owned(files.into_iter().filter(|v| *v != "-").collect())
        }
        "wget" => {
            let s = permuted(
                "oaeiBOtTwQPUlARDIX",
                "output-document output-file append-output",
            );
            let files = s.values("-O --output-document -o --output-file -a --append-output");
            owned(files.into_iter().filter(|v| *v != "-").collect())
        }
        "time" => owned(scan(args, &Spec("fo", "", "format output", false)).values("-o --output")),
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
    let spec = Spec("f", "", "file blob default type comment value", true);
    let s = scan(args.get(i + 1..).unwrap_or_default(), &spec);
    let reads =
        "--get --get-all --get-regexp --get-urlmatch --get-color --get-colorbool --list -l --blob";
    let changes =
        "--unset --unset-all --add --replace-all --rename-section --remove-section --edit -e";
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
