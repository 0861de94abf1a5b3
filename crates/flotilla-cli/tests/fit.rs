//! `flotilla fit` and `flotilla machines`, through the real binary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

const MACHINES: &str = r#"
[[machines]]
name = "rtx3060"
kind = "cuda"
memory_gb = 12
bandwidth_gbps = 360
endpoint = "http://box:8080/v1"
slots = 2

[[machines]]
name = "mac36"
kind = "metal"
memory_gb = 24
bandwidth_gbps = 400
"#;

fn home_with(config: &str) -> tempfile::TempDir {
    let home = tempfile::tempdir().unwrap();
    std::fs::write(home.path().join("config.toml"), config).unwrap();
    home
}

fn flotilla(home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(args)
        .env("FLOTILLA_HOME", home)
        .output()
        .unwrap()
}

fn json(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn machine<'a>(v: &'a Value, name: &str) -> &'a Value {
    v["machines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == name)
        .unwrap_or_else(|| panic!("no machine {name} in {v}"))
}

const SHAPE: [&str; 12] = [
    "--params",
    "12B",
    "--active",
    "2.5B",
    "--layers",
    "32",
    "--kv-heads",
    "8",
    "--head-dim",
    "128",
    "--ctx",
    "8192",
];

#[test]
fn fit_from_a_shape_prints_the_documented_json() {
    let home = home_with(MACHINES);
    let mut args = vec!["fit", "--json", "--quant", "Q4_K_M"];
    args.extend(SHAPE);
    let v = json(&flotilla(home.path(), &args));
    let model = &v["model"];
    assert_eq!(model["params"], 12_000_000_000u64);
    assert_eq!(model["active_params"], 2_500_000_000u64);
    assert_eq!(model["layers"], 32);
    assert_eq!(model["file_type"], "Q4_K_M");
    assert!(model["weights_bytes"].as_u64().unwrap() > 6_500_000_000);
    assert_eq!(v["efficiency"], 0.6);
    let rtx = machine(&v, "rtx3060");
    for key in [
        "verdict",
        "layers_offloaded",
        "weights_bytes",
        "kv_cache_bytes",
        "compute_bytes",
        "total_bytes",
        "tokens_per_s",
    ] {
        assert!(!rtx[key].is_null(), "{key} missing in {rtx}");
    }
    assert_eq!(rtx["verdict"], "fits");
    assert_eq!(rtx["layers_offloaded"], 32);
    assert!(rtx["tokens_per_s"].as_f64().unwrap() > 10.0);
    assert_eq!(machine(&v, "mac36")["verdict"], "fits");
    // The detected machine is always there.
    assert!(v["machines"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["name"].as_str().unwrap().starts_with("local-")));

    // At Q8_0 it spills on the 3060, and the recommendation says what fits.
    let mut args = vec!["fit", "--json", "--quant", "Q8_0", "--machine", "rtx3060"];
    args.extend(SHAPE);
    let v = json(&flotilla(home.path(), &args));
    assert_eq!(v["machines"].as_array().unwrap().len(), 1);
    let rtx = machine(&v, "rtx3060");
    assert_eq!(rtx["verdict"], "partial");
    let k = rtx["layers_offloaded"].as_u64().unwrap();
    assert!(k > 0 && k < 32, "{rtx}");
    let rec = &v["recommendations"][0];
    assert!(rec["quant"].is_string(), "{rec}");
    assert!(
        rec["text"].as_str().unwrap().contains("Q8_0 would spill"),
        "{rec}"
    );
}

#[test]
fn fit_prints_a_table_and_a_recommendation() {
    let home = home_with(MACHINES);
    let mut args = vec!["fit", "--quant", "Q8_0"];
    args.extend(SHAPE);
    let out = flotilla(home.path(), &args);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("MACHINE") && text.contains("TOK/S"), "{text}");
    assert!(text.contains("partial"), "{text}");
    assert!(text.contains("recommendation:"), "{text}");
    assert!(text.contains("0.6 x bandwidth"), "{text}");
}

fn gemma() -> PathBuf {
    std::env::var_os("FLOTILLA_TEST_GGUF")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../target/test-models/gemma-3-270m-q4_k_m.gguf")
        })
}

#[test]
fn fit_reads_a_real_gguf_and_refuses_broken_ones_clearly() {
    let path = gemma();
    assert!(
        path.exists(),
        "{} is missing: run scripts/test-models.sh",
        path.display()
    );
    let home = home_with(MACHINES);
    let v = json(&flotilla(
        home.path(),
        &["fit", "--json", path.to_str().unwrap()],
    ));
    assert_eq!(v["model"]["architecture"], "gemma3");
    assert_eq!(v["model"]["layers"], 18);
    assert_eq!(v["model"]["context_length"], 32768);
    assert_eq!(v["model"]["file_type"], "Q4_K_M");
    assert_eq!(v["context"], 32768);
    assert_eq!(machine(&v, "rtx3060")["verdict"], "fits");

    // A truncated copy: the error names the offset, and nothing panics.
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let cut = dir.path().join("cut.gguf");
    std::fs::write(&cut, &bytes[..5000]).unwrap();
    let out = flotilla(home.path(), &["fit", cut.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("truncated at byte"), "{err}");
    // A header that is whole but data that is not: a partial download.
    let partial = dir.path().join("partial.gguf");
    std::fs::write(&partial, &bytes[..bytes.len() / 2]).unwrap();
    let out = flotilla(home.path(), &["fit", partial.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("incomplete"), "{err}");
    // Not a GGUF file at all.
    let junk = dir.path().join("junk.gguf");
    std::fs::write(&junk, b"PK\x03\x04 this is a zip").unwrap();
    let out = flotilla(home.path(), &["fit", junk.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a GGUF file"), "{err}");
    // Missing.
    let out = flotilla(home.path(), &["fit", "/nonexistent/model.gguf"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/model.gguf"));
}

#[test]
fn bad_input_gets_clear_errors() {
    let home = home_with(MACHINES);
    let err = |args: &[&str]| {
        let out = flotilla(home.path(), args);
        assert!(!out.status.success(), "{args:?} succeeded");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    assert!(err(&["fit"]).contains("give a GGUF file"));
    let mut args = vec!["fit", "--quant", "Q9_Z"];
    args.extend(SHAPE);
    assert!(err(&args).contains("Q4_K_M"));
    let mut args = vec!["fit", "--quant", "Q4_K_M", "--machine", "nope"];
    args.extend(SHAPE);
    let e = err(&args);
    assert!(e.contains("nope") && e.contains("rtx3060"), "{e}");
    let mut args = vec!["fit", "--quant", "Q4_K_M", "--kv-type", "q3"];
    args.extend(SHAPE);
    assert!(err(&args).contains("--kv-type"));
    assert!(err(&["fit", "--params", "lots"]).contains("not a count"));
    // A broken [[machines]] entry is refused, naming it.
    let bad = home_with("[[machines]]\nname = \"x\"\nkind = \"cuda\"\nmemory_gb = -1\n");
    let out = flotilla(bad.path(), &["machines"]);
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("memory_gb") && e.contains("\"x\""), "{e}");
    let bad = home_with("[[machines]]\nname = \"x\"\nkind = \"tpu\"\nmemory_gb = 1\n");
    let out = flotilla(bad.path(), &["machines"]);
    assert!(!out.status.success());
}

#[test]
fn machines_lists_this_one_and_the_configured_ones() {
    let home = home_with(MACHINES);
    let out = flotilla(home.path(), &["machines", "--json"]);
    let v = json(&out);
    let all = v.as_array().unwrap();
    let detected: Vec<&Value> = all.iter().filter(|m| m["source"] == "detected").collect();
    assert!(!detected.is_empty());
    assert!(detected[0]["memory_bytes"].as_u64().unwrap() > 0);
    let rtx = all.iter().find(|m| m["name"] == "rtx3060").unwrap();
    assert_eq!(rtx["kind"], "cuda");
    assert_eq!(rtx["memory_bytes"], 12_000_000_000u64);
    assert_eq!(rtx["endpoint"], "http://box:8080/v1");
    assert_eq!(rtx["slots"], 2);
    assert_eq!(rtx["source"], "config");
    let out = flotilla(home.path(), &["machines"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("rtx3060") && text.contains("360 GB/s"),
        "{text}"
    );
}
