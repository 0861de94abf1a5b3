#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::borrow::Cow;
use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine as _;
use bytes::Bytes;
use flotilla_sandbox::hook::BodyFilter;
use flotilla_vault::redact::{Redactor, StreamBlocker, StreamReplacer};

const TOKEN: &str = "ghp_Ab3+x/Yz 9\"q\\Lk~w.Z-";

fn redactor(secrets: &[(&str, &str)]) -> Redactor {
    let owned: Vec<(String, Vec<u8>)> = secrets
        .iter()
        .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
        .collect();
    Redactor::new(&owned)
}

fn assert_clean(r: &Redactor, text: &str, label: &str) {
    let out = r.redact(text);
    assert!(matches!(out, Cow::Owned(_)), "nothing redacted in {text:?}");
    assert!(out.contains(label), "{out:?} lacks {label}");
}

#[test]
fn raw_value_in_text() {
    let r = redactor(&[("github", TOKEN)]);
    let text = format!("token={TOKEN}; done");
    let out = r.redact(&text);
    assert_eq!(out, "token=[secret:github]; done");
    assert!(!r.is_empty());
    assert!(r.redaction_forms() > 10);
}

#[test]
fn base64_forms_all_alignments() {
    let r = redactor(&[("github", TOKEN)]);
    for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
        // The value alone.
        let enc = engine.encode(TOKEN);
        assert_eq!(
            r.redact(&format!("x {enc} y")),
            "x [secret:github] y",
            "{enc}"
        );
        // Inside a longer encoded string, at each offset mod 3, with
        // something after it too.
        for prefix in ["", "u", "us", "user:", "x-access-token:", "ab:"] {
            for suffix in ["", "!", "!!", ":trailer"] {
                let enc = engine.encode(format!("{prefix}{TOKEN}{suffix}"));
                let text = format!("Authorization: Basic {enc}");
                let out = r.redact(&text);
                assert!(
                    out.contains("[secret:github]"),
                    "{prefix:?}+{suffix:?}: {out}"
                );
                // What is left of the encoding cannot decode to the value.
                assert!(!out.contains(&engine.encode(TOKEN)[..8]));
            }
        }
    }
}

#[test]
fn percent_hex_and_json_forms() {
    let r = redactor(&[("github", TOKEN)]);
    let upper: String = TOKEN
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    assert!(upper.contains("%2B") && upper.contains("%20"));
    assert_clean(&r, &format!("https://x/?t={upper}&y=1"), "[secret:github]");
    // Lower-case hex escapes, case of the rest preserved.
    let lower: String = TOKEN
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02x}")
            }
        })
        .collect();
    assert_eq!(r.redact(&format!("t={lower}")), "t=[secret:github]");
    assert_eq!(
        r.redact(&format!("t={}", upper.replace("%20", "+"))),
        "t=[secret:github]"
    );
    assert_eq!(
        r.redact(&format!("h={}", hex::encode(TOKEN))),
        "h=[secret:github]"
    );
    assert_eq!(
        r.redact(&format!("h={}", hex::encode_upper(TOKEN))),
        "h=[secret:github]"
    );
    // JSON-escaped (the value holds a quote and a backslash).
    let json = serde_json::json!({ "token": TOKEN }).to_string();
    assert_eq!(r.redact(&json), r#"{"token":"[secret:github]"}"#);
}

#[test]
fn json_escapes_of_control_and_non_ascii() {
    let value = "pässwörd\u{1}\"<&>";
    let r = redactor(&[("db", value)]);
    let serde = serde_json::to_string(value).unwrap();
    assert_eq!(r.redact(&serde), "\"[secret:db]\"");
    // Python's ensure_ascii and Go's HTML-safe escaping.
    let python = "p\\u00e4ssw\\u00f6rd\\u0001\\\"<&>";
    assert_eq!(r.redact(python), "[secret:db]");
    let go = "pässwörd\\u0001\\\"\\u003c\\u0026\\u003e";
    assert_eq!(r.redact(go), "[secret:db]");
}

#[test]
fn prefix_and_overlapping_values() {
    let r = redactor(&[("short", "secretvalue1"), ("long", "secretvalue1-extended")]);
    assert_eq!(r.redact("a secretvalue1-extended b"), "a [secret:long] b");
    assert_eq!(r.redact("a secretvalue1 b"), "a [secret:short] b");

    // Two values sharing characters: neither's tail survives.
    let r = redactor(&[("a", "abcdef12345"), ("b", "12345uvwxyz")]);
    let out = r.redact("<abcdef12345uvwxyz>");
    assert_eq!(out, "<[secret:a][secret:b]>");
    // A periodic value overlapping itself.
    let r = redactor(&[("p", "abcabcab")]);
    assert_eq!(r.redact("xabcabcabcabx"), "x[secret:p]x");
}

#[test]
fn no_false_positives() {
    let r = redactor(&[("github", TOKEN), ("db", "hunter2hunter2")]);
    let text = "The quick brown fox jumps over the lazy dog; ghp_ but not the rest. \
                aHVudGVy dXNlcjpw 68756e746572 Basic dXNlcjpwYXNz";
    assert!(matches!(r.redact(text), Cow::Borrowed(_)));
    assert!(matches!(r.redact_bytes(text.as_bytes()), Cow::Borrowed(_)));
    let empty = Redactor::new(&[]);
    assert!(empty.is_empty());
    assert!(matches!(empty.redact(TOKEN), Cow::Borrowed(_)));
}

#[test]
fn short_value_keeps_only_raw_and_long_forms() {
    // A 4-byte value: its trimmed base64 fragments are 3-5 characters and
    // are not searched for; the raw value and 8-char hex are.
    let r = redactor(&[("pin", "k3y!")]);
    assert_eq!(
        r.redact("pin k3y! hex 6b337921"),
        "pin [secret:pin] hex [secret:pin]"
    );
    assert!(matches!(r.redact("azM5 bigram text"), Cow::Borrowed(_)));
}

#[test]
fn redact_json_nested_values_and_keys() {
    let r = redactor(&[("github", TOKEN)]);
    let mut v = serde_json::json!({
        "a": [1, true, null, { "deep": format!("Bearer {TOKEN}") }],
        TOKEN: "key is the secret",
        "b64": STANDARD.encode(format!("x:{TOKEN}")),
        "clean": "nothing",
    });
    assert!(r.redact_json(&mut v));
    let text = v.to_string();
    assert!(!text.contains("ghp_"), "{text}");
    assert_eq!(v["a"][3]["deep"], "Bearer [secret:github]");
    assert_eq!(v["[secret:github]"], "key is the secret");
    assert_eq!(v["clean"], "nothing");
    let mut clean = serde_json::json!({"x": ["y", {"z": 1}]});
    assert!(!r.redact_json(&mut clean));
}

/// Runs `filter` over `input` cut at the given points.
fn run_chunks(
    filter: &mut dyn BodyFilter,
    input: &[u8],
    cuts: &[usize],
) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut start = 0;
    for &cut in cuts.iter().chain(std::iter::once(&input.len())) {
        out.extend_from_slice(&filter.filter(Bytes::copy_from_slice(&input[start..cut]))?);
        start = cut;
    }
    out.extend_from_slice(&filter.finish()?);
    Ok(out)
}

fn replacer() -> StreamReplacer {
    StreamReplacer::new(vec![
        (b"flotilla-ph-0123".to_vec(), b"VALUE-ONE".to_vec()),
        (b"flotilla-ph-0123456789".to_vec(), b"V2".to_vec()),
        (b"abc".to_vec(), b"<abc>".to_vec()),
    ])
}

#[test]
fn stream_replacer_every_split() {
    let input = b"start flotilla-ph-0123456789 mid flotilla-ph-0123x abcabc flotilla-ph-01 end abc";
    let expected = b"start V2 mid VALUE-ONEx <abc><abc> flotilla-ph-01 end <abc>".to_vec();
    assert_eq!(run_chunks(&mut replacer(), input, &[]).unwrap(), expected);
    for cut in 0..=input.len() {
        assert_eq!(
            run_chunks(&mut replacer(), input, &[cut]).unwrap(),
            expected,
            "cut at {cut}"
        );
        for cut2 in cut..=input.len() {
            assert_eq!(
                run_chunks(&mut replacer(), input, &[cut, cut2]).unwrap(),
                expected
            );
        }
    }
    let ones: Vec<usize> = (1..input.len()).collect();
    let count = Arc::new(Mutex::new(0));
    let seen = Arc::clone(&count);
    let mut counted = replacer().on_match(move |_| *seen.lock().unwrap() += 1);
    assert_eq!(run_chunks(&mut counted, input, &ones).unwrap(), expected);
    assert_eq!(*count.lock().unwrap(), 5);
    assert_eq!(
        replacer().replace_all(input).unwrap().as_ref(),
        expected.as_slice()
    );
}

fn blocker() -> StreamBlocker {
    StreamBlocker::new(vec![
        (b"flotilla-ph-aaaa".to_vec(), "blocked aaaa".to_string()),
        (b"flotilla-ph-bbbb".to_vec(), "blocked bbbb".to_string()),
    ])
}

#[test]
fn stream_blocker_every_split() {
    let clean = b"data: flotilla-ph-aaab and flotilla-ph- then flotilla-ph-bbb";
    let bad = b"{\"x\": \"some text flotilla-ph-bbbb more\"}";
    let start = bad
        .windows(16)
        .position(|w| w == b"flotilla-ph-bbbb")
        .unwrap();
    for cut in 0..=bad.len() {
        assert_eq!(
            run_chunks(&mut blocker(), clean, &[cut.min(clean.len())]).unwrap(),
            clean.to_vec()
        );
        // Nothing of the pattern is passed on before the refusal.
        let mut b = blocker();
        let mut passed: Vec<u8> = Vec::new();
        let mut result = Ok(());
        for chunk in [&bad[..cut], &bad[cut..]] {
            match b.filter(Bytes::copy_from_slice(chunk)) {
                Ok(out) => passed.extend_from_slice(&out),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        if result.is_ok() {
            result = b.finish().map(|out| passed.extend_from_slice(&out));
        }
        assert_eq!(result, Err("blocked bbbb".to_string()), "cut at {cut}");
        assert!(
            passed.len() <= start,
            "cut at {cut}: passed {:?}",
            String::from_utf8_lossy(&passed)
        );
        // It stays failed.
        assert!(b.filter(Bytes::from_static(b"x")).is_err());
    }
    let ones: Vec<usize> = (1..bad.len()).collect();
    let fired = Arc::new(Mutex::new(Vec::new()));
    let f = Arc::clone(&fired);
    let mut b = blocker().on_block(move |i| f.lock().unwrap().push(i));
    assert!(run_chunks(&mut b, bad, &ones).is_err());
    assert_eq!(*fired.lock().unwrap(), vec![1]);
    let ones: Vec<usize> = (1..clean.len()).collect();
    assert_eq!(
        run_chunks(&mut blocker(), clean, &ones).unwrap(),
        clean.to_vec()
    );
}

#[test]
fn stream_blocker_holds_back_only_possible_starts() {
    let mut b = blocker();
    // "flotilla-ph-" could begin a match: held back.
    assert_eq!(
        b.filter(Bytes::from_static(b"hello flotilla-ph-")).unwrap(),
        Bytes::from_static(b"hello ")
    );
    // Now it cannot: released.
    assert_eq!(
        b.filter(Bytes::from_static(b"zz ok")).unwrap(),
        Bytes::from_static(b"flotilla-ph-zz ok")
    );
    assert_eq!(b.finish().unwrap(), Bytes::new());
}
