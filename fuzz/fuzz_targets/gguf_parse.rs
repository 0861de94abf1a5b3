//! `GgufFile::parse` on arbitrary bytes: it must return, never panic,
//! overflow or allocate without bound; on success the accessors must hold
//! together.
#![no_main]

use flotilla_fit::gguf::{GgufFile, MetaValue};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(g) = GgufFile::parse(data) else {
        return;
    };
    assert!(matches!(g.version, 2 | 3));
    assert!(g.alignment.is_power_of_two());
    assert_eq!(g.data_offset % g.alignment, 0);
    assert!(g.data_offset <= data.len() as u64 + g.alignment);
    assert!(g.data_end() >= g.data_offset);
    let _ = g.architecture();
    let _ = g.arch_u64("block_count");
    let _ = g.arch_u64("context_length");
    let mut total: u64 = 0;
    for t in &g.tensors {
        assert!((1..=4).contains(&t.dims.len()));
        assert_eq!(t.offset % g.alignment, 0);
        let bytes = t.bytes();
        let rows = t.dims[1..].iter().fold(1u64, |n, &d| n.saturating_mul(d));
        let row = t.ggml_type.row_bytes(t.dims[0]);
        assert!(row.is_some(), "row of whole blocks");
        assert_eq!(bytes, row.unwrap_or(0).saturating_mul(rows));
        if t.elements() > 0 {
            assert_eq!(row.and_then(|r| r.checked_mul(rows)), Some(bytes));
        }
        let _ = t.elements();
        let _ = t.layer();
        total = total.saturating_add(bytes);
    }
    assert_eq!(g.tensor_bytes(), total);
    for (key, value) in &g.metadata {
        assert!(g.get(key).is_some());
        let _ = g.get_u64(key);
        let _ = g.get_f64(key);
        let _ = g.get_str(key);
        let _ = g.get_u64_array(key);
        let _ = value.as_bool();
        if let MetaValue::Array(a) = value {
            assert!(a.truncated || a.values.len() as u64 == a.len);
            assert!(!a.truncated || a.values.is_empty());
        }
    }
});
