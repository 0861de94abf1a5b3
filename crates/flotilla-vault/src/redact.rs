//! Redaction: every form a secret's value can take in text (raw, base64,
//! URL-encoded, hex, JSON-escaped) becomes `[secret:NAME]`; and streaming
//! body filters for the egress proxy that replace or block patterns across
//! chunk boundaries.
//!
//! # Forms
//!
//! A value leaks in many spellings, so [`Redactor`] searches for all of
//! them at once with one Aho-Corasick automaton:
//!
//! - the raw bytes;
//! - base64, standard and URL-safe alphabets, padded and unpadded;
//! - base64 *inside a longer base64'd string* (the value at byte offset 0,
//!   1 or 2 mod 3, e.g. `user:TOKEN` in HTTP Basic auth). The characters
//!   of such an encoding that mix the value's bits with its neighbours'
//!   depend on the neighbours, so only the characters determined by the
//!   value alone are kept (for each of the three alignments and both
//!   alphabets);
//! - percent-encoding (every byte outside RFC 3986's unreserved set
//!   encoded), with upper- and lower-case hex, and with `+` for space;
//! - hex, lower and upper case;
//! - the value as it appears inside a JSON string, as the common encoders
//!   write it (`\"`, `\\`, `\n`, `\u00xx`, optionally ASCII-only or with
//!   `<>&` escaped).
//!
//! Forms other than the raw value that are shorter than
//! [`MIN_FORM_LEN`] bytes are left out: a short value's trimmed base64
//! fragment can be three characters long, and redacting every occurrence
//! of three base64 characters would shred unrelated text. The raw value is
//! always kept (the caller asked for exactly that string to disappear).

use std::borrow::Cow;
use std::sync::Arc;

use aho_corasick::{AhoCorasick, Input, MatchKind};
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine as _;
use bytes::Bytes;
use flotilla_sandbox::hook::BodyFilter;

/// Encoded forms shorter than this are not searched for (the raw value
/// always is); see the module documentation.
pub const MIN_FORM_LEN: usize = 8;

/// Every form of `value`, in a fixed order of kinds (so that the forms of
/// two values can be paired kind by kind). An entry is empty where a kind
/// does not apply (a JSON form of bytes that are not UTF-8). The first
/// entry is always the raw value. Not deduplicated, not length-filtered.
fn all_forms(value: &[u8]) -> Vec<Vec<u8>> {
    let mut forms = Vec::with_capacity(21);
    forms.push(value.to_vec());
    for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
        forms.push(engine.encode(value).into_bytes());
    }
    for engine in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
        for offset in 0..3 {
            forms.push(aligned_base64(engine, value, offset));
        }
    }
    for (upper, plus) in [(true, false), (false, false), (true, true), (false, true)] {
        forms.push(percent_encode(value, upper, plus));
    }
    forms.push(hex::encode(value).into_bytes());
    forms.push(hex::encode_upper(value).into_bytes());
    let text = std::str::from_utf8(value).ok();
    for (ascii_only, upper, html_safe) in [
        (false, false, false),
        (true, false, false),
        (true, true, false),
        (false, false, true),
    ] {
        forms.push(
            text.map(|t| json_escape(t, ascii_only, upper, html_safe).into_bytes())
                .unwrap_or_default(),
        );
    }
    forms
}

/// The base64 characters determined by `value` alone when it starts at
/// byte `offset` (0, 1 or 2) of a group of three inside a longer encoded
/// string. Character `i` of an encoding covers bits `[6i, 6i + 6)`; the
/// value occupies bits `[8 offset, 8 (offset + len))`, so the characters
/// wholly inside that range are kept and the ones shared with the
/// neighbouring bytes (whatever precedes or follows) are trimmed.
fn aligned_base64(engine: &base64::engine::GeneralPurpose, value: &[u8], offset: usize) -> Vec<u8> {
    let mut padded = vec![0u8; offset];
    padded.extend_from_slice(value);
    let encoded = engine.encode(&padded).into_bytes();
    let start_bit = 8 * offset;
    let end_bit = 8 * (offset + value.len());
    let first = start_bit.div_ceil(6);
    let last = end_bit / 6;
    if first >= last {
        return Vec::new();
    }
    encoded
        .get(first..last)
        .map(<[u8]>::to_vec)
        .unwrap_or_default()
}

/// Percent-encodes every byte outside RFC 3986's unreserved set
/// (`A-Z a-z 0-9 - . _ ~`); with `plus`, space becomes `+`.
fn percent_encode(value: &[u8], upper: bool, plus: bool) -> Vec<u8> {
    let digits: &[u8; 16] = if upper {
        b"0123456789ABCDEF"
    } else {
        b"0123456789abcdef"
    };
    let mut out = Vec::with_capacity(value.len() * 3);
    for &b in value {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b);
        } else if plus && b == b' ' {
            out.push(b'+');
        } else {
            out.extend_from_slice(&[
                b'%',
                digits[usize::from(b >> 4)],
                digits[usize::from(b & 15)],
            ]);
        }
    }
    out
}

/// The text as it appears between the quotes of a JSON string.
/// `ascii_only`: non-ASCII as `\uXXXX` (UTF-16, Python's default);
/// `upper`: upper-case hex in `\u` escapes (Jackson); `html_safe`: `<`,
/// `>`, `&`, U+2028 and U+2029 escaped too (Go's encoding/json).
fn json_escape(text: &str, ascii_only: bool, upper: bool, html_safe: bool) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(text.len() + 8);
    let unicode = |out: &mut String, unit: u16| {
        // Writing to a String cannot fail.
        let _ = if upper {
            write!(out, "\\u{unit:04X}")
        } else {
            write!(out, "\\u{unit:04x}")
        };
    };
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => unicode(&mut out, c as u16),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' if html_safe => unicode(&mut out, c as u16),
            c if ascii_only && !c.is_ascii() => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    unicode(&mut out, *unit);
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// The distinct searchable forms of `value` (see the module documentation):
/// the raw value first, then every encoded form at least
/// [`MIN_FORM_LEN`] bytes long.
pub(crate) fn forms(value: &[u8]) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = Vec::new();
    for (i, form) in all_forms(value).into_iter().enumerate() {
        if form.is_empty() || (i > 0 && form.len() < MIN_FORM_LEN) || out.contains(&form) {
            continue;
        }
        out.push(form);
    }
    out
}

/// Pairs each searchable form of `value` with the same kind of form of
/// `to`: base64 of the value becomes base64 of `to`, hex becomes hex, so
/// that text decoding it finds `to` where the value was. Used to map real
/// values back to their placeholders in responses.
pub(crate) fn form_pairs(value: &[u8], to: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    for (i, (form, target)) in all_forms(value).into_iter().zip(all_forms(to)).enumerate() {
        if form.is_empty()
            || (i > 0 && form.len() < MIN_FORM_LEN)
            || out.iter().any(|(f, _)| *f == form)
        {
            continue;
        }
        // A kind that does not apply to `to` (JSON of non-UTF-8 bytes):
        // fall back to the raw target rather than leave the value.
        let target = if target.is_empty() {
            to.to_vec()
        } else {
            target
        };
        out.push((form, target));
    }
    out
}

/// Builds a leftmost-longest automaton; `None` when the patterns are too
/// many or too large for one (callers then fail closed).
fn build(patterns: &[Vec<u8>]) -> Option<AhoCorasick> {
    AhoCorasick::builder()
        .match_kind(MatchKind::LeftmostLongest)
        .build(patterns)
        .ok()
}

/// What replaces text when the automaton could not be built: redaction
/// fails closed rather than letting values through.
const UNAVAILABLE: &str = "[secret:redactor-unavailable]";

/// Replaces every form of a set of secret values with `[secret:NAME]`.
///
/// The automaton holds its own copies of the values' forms (which
/// include the raw values): a caller may zeroize its copies after
/// [`Redactor::new`], but the values stay in this structure's memory
/// (unzeroized: the automaton's internals cannot be wiped) until it is
/// dropped.
pub struct Redactor {
    /// `None` with patterns: building failed, and everything is redacted.
    automaton: Option<AhoCorasick>,
    /// Pattern index to the index of its secret's name.
    owner: Vec<usize>,
    /// `[secret:NAME]` per secret.
    labels: Vec<String>,
}

impl Redactor {
    /// A redactor over `secrets` (name, value). Empty values are skipped
    /// (an empty pattern would match everywhere); a form shared by two
    /// secrets is labelled with the first one's name.
    pub fn new(secrets: &[(String, Vec<u8>)]) -> Redactor {
        let mut patterns: Vec<Vec<u8>> = Vec::new();
        let mut owner = Vec::new();
        let mut labels = Vec::new();
        for (name, value) in secrets {
            if value.is_empty() {
                continue;
            }
            let index = labels.len();
            labels.push(format!("[secret:{name}]"));
            for form in forms(value) {
                if !patterns.contains(&form) {
                    patterns.push(form);
                    owner.push(index);
                }
            }
        }
        let automaton = if patterns.is_empty() {
            None
        } else {
            build(&patterns)
        };
        Redactor {
            automaton,
            owner,
            labels,
        }
    }

    /// Whether there is nothing to redact.
    pub fn is_empty(&self) -> bool {
        self.owner.is_empty()
    }

    /// How many distinct patterns (forms of values) are searched for.
    pub fn redaction_forms(&self) -> usize {
        self.owner.len()
    }

    /// `text` with every form of every value replaced;
    /// [`Cow::Borrowed`] when nothing matched.
    pub fn redact<'a>(&self, text: &'a str) -> Cow<'a, str> {
        match self.redact_bytes(text.as_bytes()) {
            Cow::Borrowed(_) => Cow::Borrowed(text),
            // A match can only split a UTF-8 character when a raw value is
            // not itself valid UTF-8; then the broken character is replaced.
            Cow::Owned(bytes) => Cow::Owned(match String::from_utf8(bytes) {
                Ok(s) => s,
                Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
            }),
        }
    }

    /// [`Redactor::redact`] over bytes.
    ///
    /// Overlapping matches (two values sharing characters, or a periodic
    /// value matching twice over itself) are merged into one redacted
    /// span, labelled with each secret involved, so that no part of any
    /// value survives: plain leftmost-longest replacement would consume
    /// the first match and leave the tail of the second in the text.
    pub fn redact_bytes<'a>(&self, bytes: &'a [u8]) -> Cow<'a, [u8]> {
        if self.is_empty() {
            return Cow::Borrowed(bytes);
        }
        let Some(ac) = &self.automaton else {
            return if bytes.is_empty() {
                Cow::Borrowed(bytes)
            } else {
                Cow::Owned(UNAVAILABLE.as_bytes().to_vec())
            };
        };
        let mut out: Option<Vec<u8>> = None;
        let mut copied = 0;
        let mut pos = 0;
        while let Some(m) = ac.find(Input::new(bytes).span(pos..bytes.len())) {
            let start = m.start();
            let mut end = m.end();
            let mut owners = vec![self.owner[m.pattern().as_usize()]];
            // Extend the span with every match starting inside it.
            let mut next = start + 1;
            while next < end {
                let Some(o) = ac.find(Input::new(bytes).span(next..bytes.len())) else {
                    break;
                };
                if o.start() >= end {
                    break;
                }
                end = end.max(o.end());
                let who = self.owner[o.pattern().as_usize()];
                if !owners.contains(&who) {
                    owners.push(who);
                }
                next = o.start() + 1;
            }
            let buf = out.get_or_insert_with(|| Vec::with_capacity(bytes.len()));
            buf.extend_from_slice(&bytes[copied..start]);
            for who in owners {
                buf.extend_from_slice(self.labels[who].as_bytes());
            }
            copied = end;
            pos = end;
        }
        match out {
            None => Cow::Borrowed(bytes),
            Some(mut buf) => {
                buf.extend_from_slice(&bytes[copied..]);
                Cow::Owned(buf)
            }
        }
    }

    /// Redacts every string and every object key in `value`, recursively;
    /// returns whether anything changed. A key that redacts to one already
    /// present gets a `#2`, `#3`... suffix rather than overwrite its
    /// neighbour.
    pub fn redact_json(&self, value: &mut serde_json::Value) -> bool {
        use serde_json::Value;
        if self.is_empty() {
            return false;
        }
        match value {
            Value::String(s) => match self.redact(s) {
                Cow::Borrowed(_) => false,
                Cow::Owned(new) => {
                    *s = new;
                    true
                }
            },
            Value::Array(items) => {
                let mut changed = false;
                for item in items {
                    changed |= self.redact_json(item);
                }
                changed
            }
            Value::Object(map) => {
                let mut changed = false;
                for item in map.values_mut() {
                    changed |= self.redact_json(item);
                }
                let renamed: Vec<(String, String)> = map
                    .keys()
                    .filter_map(|k| match self.redact(k) {
                        Cow::Borrowed(_) => None,
                        Cow::Owned(new) => Some((k.clone(), new)),
                    })
                    .collect();
                for (old, new) in renamed {
                    changed = true;
                    if let Some(item) = map.remove(&old) {
                        let mut key = new.clone();
                        let mut n = 2;
                        while map.contains_key(&key) {
                            key = format!("{new}#{n}");
                            n += 1;
                        }
                        map.insert(key, item);
                    }
                }
                changed
            }
            Value::Null | Value::Bool(_) | Value::Number(_) => false,
        }
    }
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the patterns: they are the secrets.
        f.debug_struct("Redactor")
            .field("secrets", &self.labels)
            .field("forms", &self.owner.len())
            .finish()
    }
}

/// A callback told the index of the pattern a filter acted on.
pub type PatternCallback = Box<dyn FnMut(usize) + Send + Sync>;

/// A streaming search-and-replace over a body (leftmost-longest, as if the
/// whole body had been searched at once): the last (longest pattern - 1)
/// bytes of what it has seen are held back until the next chunk, so a
/// match straddling chunk boundaries is still found.
pub struct StreamReplacer {
    /// `None` with patterns: building failed, and the filter fails closed.
    automaton: Option<Arc<AhoCorasick>>,
    replacements: Arc<Vec<Vec<u8>>>,
    max_len: usize,
    carry: Vec<u8>,
    on_match: Option<PatternCallback>,
}

impl StreamReplacer {
    /// A replacer of each pattern with its replacement (empty patterns are
    /// dropped; for a pattern given twice the first pair wins).
    pub fn new(pairs: Vec<(Vec<u8>, Vec<u8>)>) -> StreamReplacer {
        let mut patterns: Vec<Vec<u8>> = Vec::with_capacity(pairs.len());
        let mut replacements = Vec::with_capacity(pairs.len());
        for (pattern, replacement) in pairs {
            if !pattern.is_empty() && !patterns.contains(&pattern) {
                patterns.push(pattern);
                replacements.push(replacement);
            }
        }
        let max_len = patterns.iter().map(Vec::len).max().unwrap_or(0);
        let automaton = if patterns.is_empty() {
            None
        } else {
            build(&patterns).map(Arc::new)
        };
        StreamReplacer {
            automaton,
            replacements: Arc::new(replacements),
            max_len,
            carry: Vec::new(),
            on_match: None,
        }
    }

    /// Calls `f` with the index (in the pairs given to
    /// [`StreamReplacer::new`], after dropping empty and repeated
    /// patterns) of each pattern replaced.
    pub fn on_match(mut self, f: impl FnMut(usize) + Send + Sync + 'static) -> StreamReplacer {
        self.on_match = Some(Box::new(f));
        self
    }

    /// A fresh replacer (nothing held back, no callback) sharing this
    /// one's automaton: cheap, for one filter per exchange.
    pub fn fresh(&self) -> StreamReplacer {
        StreamReplacer {
            automaton: self.automaton.clone(),
            replacements: Arc::clone(&self.replacements),
            max_len: self.max_len,
            carry: Vec::new(),
            on_match: None,
        }
    }

    /// Whether it has no patterns (and passes everything through).
    pub fn is_empty(&self) -> bool {
        self.replacements.is_empty()
    }

    /// Replaces every match in one whole buffer (no state kept; the
    /// callback is not called). [`Cow::Borrowed`] when nothing matched.
    /// `None` when the automaton could not be built (fail closed).
    pub fn replace_all<'a>(&self, bytes: &'a [u8]) -> Option<Cow<'a, [u8]>> {
        if self.is_empty() {
            return Some(Cow::Borrowed(bytes));
        }
        let ac = self.automaton.as_ref()?;
        if ac.find(bytes).is_none() {
            return Some(Cow::Borrowed(bytes));
        }
        let mut out = Vec::with_capacity(bytes.len());
        ac.replace_all_with_bytes(bytes, &mut out, |m, _, dst| {
            dst.extend_from_slice(&self.replacements[m.pattern().as_usize()]);
            true
        });
        Some(Cow::Owned(out))
    }

    /// Replaces the matches in `buf` that start before `safe`, returning
    /// the output and the offset up to which `buf` was consumed.
    fn replace(&mut self, ac: &AhoCorasick, buf: &[u8], safe: usize) -> (Vec<u8>, usize) {
        let mut out = Vec::with_capacity(buf.len());
        let mut pos = 0;
        for m in ac.find_iter(buf) {
            // A match starting before `safe` ends within `buf` whatever
            // comes next (no pattern is longer than max_len), so it is
            // final; one starting later may yet grow or not exist.
            if m.start() >= safe {
                break;
            }
            out.extend_from_slice(&buf[pos..m.start()]);
            out.extend_from_slice(&self.replacements[m.pattern().as_usize()]);
            pos = m.end();
            if let Some(f) = self.on_match.as_mut() {
                f(m.pattern().as_usize());
            }
        }
        let cut = pos.max(safe);
        out.extend_from_slice(&buf[pos..cut]);
        (out, cut)
    }
}

impl BodyFilter for StreamReplacer {
    fn filter(&mut self, chunk: Bytes) -> Result<Bytes, String> {
        if self.is_empty() {
            return Ok(chunk);
        }
        let Some(ac) = self.automaton.clone() else {
            return Err("flotilla vault: the body filter could not be built".to_string());
        };
        let mut buf = std::mem::take(&mut self.carry);
        buf.extend_from_slice(&chunk);
        let safe = buf.len().saturating_sub(self.max_len - 1);
        let (out, cut) = self.replace(&ac, &buf, safe);
        self.carry = buf.split_off(cut);
        Ok(Bytes::from(out))
    }

    fn finish(&mut self) -> Result<Bytes, String> {
        if self.is_empty() {
            return Ok(Bytes::new());
        }
        let Some(ac) = self.automaton.clone() else {
            return Err("flotilla vault: the body filter could not be built".to_string());
        };
        let buf = std::mem::take(&mut self.carry);
        let (out, _) = self.replace(&ac, &buf, buf.len());
        Ok(Bytes::from(out))
    }
}

/// A streaming filter that aborts a body as soon as any pattern appears in
/// it (across chunks). Bytes that could be the start of a match are held
/// back until they cannot be, so the chunk completing a pattern is never
/// passed on, nor any part of the pattern.
pub struct StreamBlocker {
    automaton: Option<AhoCorasick>,
    patterns: Vec<Vec<u8>>,
    reasons: Vec<String>,
    carry: Vec<u8>,
    /// Set once it fired: every later call fails the same way.
    tripped: Option<String>,
    on_block: Option<PatternCallback>,
}

impl StreamBlocker {
    /// A blocker over `patterns`, each with the reason returned when it
    /// appears (empty patterns are dropped; for a pattern given twice the
    /// first reason wins).
    pub fn new(patterns: Vec<(Vec<u8>, String)>) -> StreamBlocker {
        let mut kept: Vec<Vec<u8>> = Vec::with_capacity(patterns.len());
        let mut reasons = Vec::with_capacity(patterns.len());
        for (pattern, reason) in patterns {
            if !pattern.is_empty() && !kept.contains(&pattern) {
                kept.push(pattern);
                reasons.push(reason);
            }
        }
        let automaton = if kept.is_empty() { None } else { build(&kept) };
        StreamBlocker {
            automaton,
            patterns: kept,
            reasons,
            carry: Vec::new(),
            tripped: None,
            on_block: None,
        }
    }

    /// Calls `f` with the index of the pattern (as kept by
    /// [`StreamBlocker::new`]) when it fires.
    pub fn on_block(mut self, f: impl FnMut(usize) + Send + Sync + 'static) -> StreamBlocker {
        self.on_block = Some(Box::new(f));
        self
    }

    /// Fails (for good) if a pattern is in the carry.
    fn check(&mut self) -> Result<(), String> {
        if let Some(reason) = &self.tripped {
            return Err(reason.clone());
        }
        if self.patterns.is_empty() {
            return Ok(());
        }
        let Some(ac) = &self.automaton else {
            let reason = "flotilla vault: the body filter could not be built".to_string();
            self.tripped = Some(reason.clone());
            return Err(reason);
        };
        if let Some(m) = ac.find(&self.carry) {
            let index = m.pattern().as_usize();
            let reason = self.reasons[index].clone();
            self.tripped = Some(reason.clone());
            self.carry.clear();
            if let Some(f) = self.on_block.as_mut() {
                f(index);
            }
            return Err(reason);
        }
        Ok(())
    }

    /// The length of the longest suffix of the carry that is a proper
    /// prefix of some pattern: the bytes that may still become a match.
    fn undecided(&self) -> usize {
        let len = self.carry.len();
        let longest = self.patterns.iter().map(Vec::len).max().unwrap_or(0);
        (1..longest.min(len + 1))
            .rev()
            .find(|&k| {
                let tail = &self.carry[len - k..];
                self.patterns
                    .iter()
                    .any(|p| p.len() > k && p.starts_with(tail))
            })
            .unwrap_or(0)
    }
}

impl BodyFilter for StreamBlocker {
    /// It only holds bytes back or aborts: the proxy may stream.
    fn preserves_length(&self) -> bool {
        true
    }

    fn filter(&mut self, chunk: Bytes) -> Result<Bytes, String> {
        if self.tripped.is_none() && self.patterns.is_empty() {
            return Ok(chunk);
        }
        self.carry.extend_from_slice(&chunk);
        self.check()?;
        let keep = self.undecided();
        let rest = self.carry.split_off(self.carry.len() - keep);
        let out = std::mem::replace(&mut self.carry, rest);
        Ok(Bytes::from(out))
    }

    fn finish(&mut self) -> Result<Bytes, String> {
        self.check()?;
        Ok(Bytes::from(std::mem::take(&mut self.carry)))
    }
}
