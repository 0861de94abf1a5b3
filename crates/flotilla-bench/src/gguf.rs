//! (g) `gguf`: reading a large model file's header.
//!
//! The file is synthetic but shaped like a 70B model in Q4_K_M: Llama 3's
//! 128,256-entry tokenizer vocabulary (strings, scores and types, the bulk
//! of any header), 80 layers of 9 tensors, and the data region their
//! sizes call for, about 42 GB (sparse: the weights are never read, so they
//! need not be on disk). Timed: `GgufFile::read` (open, stream-parse metadata and tensor
//! infos, validate every offset and size). Baseline: reading the same
//! header bytes with one plain `read` (no parsing), the I/O floor. Both run
//! on a warm page cache.

use std::io::Read as _;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use flotilla_models::fit::gguf::{GgmlType, GgufFile, GgufWriter, MetaArray, MetaValue};

use crate::report::{Figure, Goal, Summary, Target};

const ROUNDS: usize = 50;

/// Writes the file; its header size and whole size.
fn write_model(path: &std::path::Path) -> Result<(u64, u64)> {
    let vocab = 128_256u32;
    let (embd, ff, kv) = (8192u64, 28_672u64, 1024u64);
    let mut w = GgufWriter::new(3);
    let strings: Vec<MetaValue> = (0..vocab)
        .map(|i| MetaValue::String(format!("tok{i:06}")))
        .collect();
    w.kv("general.architecture", MetaValue::String("llama".into()))
        .kv("general.file_type", MetaValue::U32(15))
        .kv("llama.block_count", MetaValue::U32(80))
        .kv("llama.context_length", MetaValue::U32(131_072))
        .kv("llama.embedding_length", MetaValue::U32(embd as u32))
        .kv("llama.attention.head_count", MetaValue::U32(64))
        .kv("llama.attention.head_count_kv", MetaValue::U32(8))
        .kv("tokenizer.ggml.model", MetaValue::String("gpt2".into()))
        .kv(
            "tokenizer.ggml.tokens",
            MetaValue::Array(MetaArray::new(8, strings)),
        )
        .kv(
            "tokenizer.ggml.token_type",
            MetaValue::Array(MetaArray::new(
                5,
                (0..vocab).map(|_| MetaValue::I32(1)).collect(),
            )),
        );
    w.tensor(
        "token_embd.weight",
        &[embd, u64::from(vocab)],
        GgmlType::Q4_K,
    );
    for i in 0..80 {
        for (name, dims, ty) in [
            ("attn_norm", vec![embd], GgmlType::F32),
            ("attn_q", vec![embd, embd], GgmlType::Q4_K),
            ("attn_k", vec![embd, kv], GgmlType::Q4_K),
            ("attn_v", vec![embd, kv], GgmlType::Q6_K),
            ("attn_output", vec![embd, embd], GgmlType::Q4_K),
            ("ffn_norm", vec![embd], GgmlType::F32),
            ("ffn_gate", vec![embd, ff], GgmlType::Q4_K),
            ("ffn_up", vec![embd, ff], GgmlType::Q4_K),
            ("ffn_down", vec![ff, embd], GgmlType::Q6_K),
        ] {
            w.tensor(&format!("blk.{i}.{name}.weight"), &dims, ty);
        }
    }
    w.tensor("output.weight", &[embd, u64::from(vocab)], GgmlType::Q6_K);
    let bytes = w.to_bytes();
    let size = GgufFile::parse(&bytes)?.data_end();
    std::fs::write(path, &bytes)?;
    // The weights: a hole, so the file has its real size without the disk.
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)?
        .set_len(size)?;
    Ok((bytes.len() as u64, size))
}

/// Runs the benchmark.
pub fn run() -> Result<Figure> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("llama-70b-like.gguf");
    let (header, size) = write_model(&path).context("writing the synthetic model")?;
    let file = GgufFile::read(&path)?;
    anyhow::ensure!(file.tensors.len() == 722, "{} tensors", file.tensors.len());
    anyhow::ensure!(file.file_size == Some(size) && file.data_end() == size);
    let mut parse = Vec::with_capacity(ROUNDS);
    let mut raw = Vec::with_capacity(ROUNDS);
    let mut buf = vec![0u8; header as usize];
    for _ in 0..ROUNDS {
        let t = Instant::now();
        let f = GgufFile::read(&path)?;
        parse.push(t.elapsed());
        std::hint::black_box(f);
        let t = Instant::now();
        std::fs::File::open(&path)?.read_exact(&mut buf)?;
        raw.push(t.elapsed());
        std::hint::black_box(&buf);
    }
    let ms = |s: &[Duration]| Summary::of(s).p50_us / 1e3;
    let mut fig = Figure::new(
        "gguf",
        format!(
            "median GGUF header read, {:.0} GB 70B-shaped file (128k vocab, 722 tensors)",
            size as f64 / 1e9
        ),
        Target {
            goal: Goal::Below,
            value: 10.0,
            unit: "ms",
        },
        ms(&parse),
        "one plain read of the same header bytes",
        ms(&raw),
    );
    fig.detail("header_bytes", header);
    fig.detail("file_bytes", size);
    fig.detail("parse", Summary::of(&parse).to_value());
    fig.detail("raw_read", Summary::of(&raw).to_value());
    fig.detail("tensor_data_bytes", file.tensor_bytes());
    Ok(fig)
}
