//! A reader (and a small writer) for GGUF, the file format of llama.cpp and
//! ggml: a header of typed key/value metadata and tensor descriptions, then
//! the tensor data.
//!
//! Only the header is read: [`GgufFile::read`] streams it from disk through a
//! buffer and never touches the data region, so a file of tens of GB reads in
//! milliseconds. The bulk of a header is the tokenizer vocabulary (string
//! arrays of 100k-260k entries): string arrays longer than
//! [`MAX_KEPT_STRING_ARRAY`] are stepped over, not kept.
//!
//! The input is untrusted. Every read is bounds-checked; a truncated or
//! malformed file is a [`GgufError`] naming the byte offset, never a panic,
//! and no allocation is sized from a count the file states before the bytes
//! that count implies are known to exist.
//!
//! Format reference: ggml's `docs/gguf.md` and `ggml/src/gguf.cpp` (the
//! reference reader, whose checks this one follows), block sizes from
//! `ggml/src/ggml-common.h` and `ggml/src/ggml.c` (`type_traits`).

use std::collections::HashSet;
use std::fmt;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

/// The four bytes every GGUF file starts with.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";

/// Alignment of the data region and of each tensor's offset when the file
/// does not set `general.alignment`.
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// ggml's `GGML_MAX_DIMS`: a tensor has 1 to 4 dimensions.
pub const MAX_DIMS: u32 = 4;

/// Longest string (key, value or tensor name) accepted, in bytes.
pub const MAX_STRING_LEN: u64 = 64 * 1024 * 1024;

/// Arrays nest at most this deep (an array directly under a key is depth 1).
pub const MAX_ARRAY_DEPTH: u32 = 4;

/// Arrays of numbers or bools with at most this many elements keep their
/// values; longer ones are stepped over ([`MetaArray::truncated`]).
pub const MAX_KEPT_NUMBER_ARRAY: u64 = 1_048_576;

/// Arrays of strings or of arrays with at most this many elements keep their
/// values; longer ones (tokenizer vocabularies, merges) are stepped over,
/// though every string length in them is still checked.
pub const MAX_KEPT_STRING_ARRAY: u64 = 1_024;

/// At most this many array elements are kept over the whole file; arrays
/// past that budget are stepped over like long ones. (A 262k vocabulary's
/// scores and token types are 524,288.) With [`MAX_KEPT_STRING_BYTES`],
/// [`MAX_TENSORS`] and [`MAX_METADATA`] this bounds the memory a hostile
/// header can make the reader use, whatever the file's size.
pub const MAX_KEPT_VALUES_TOTAL: u64 = 2 * 1_048_576;

/// At most this many bytes of strings (keys, tensor names, string values
/// not stepped over) are kept over the whole file; a header holding more is
/// refused.
pub const MAX_KEPT_STRING_BYTES: u64 = 256 * 1024 * 1024;

/// Most tensors a header may describe (large mixture-of-experts models have
/// a few thousand).
pub const MAX_TENSORS: u64 = 1_048_576;

/// Most metadata entries a header may hold (models have tens).
pub const MAX_METADATA: u64 = 1_048_576;

/// The metadata key that sets the alignment (a `u32`, a power of two).
pub const ALIGNMENT_KEY: &str = "general.alignment";

/// Smallest possible tensor info: name length (8), n_dims (4), type (4),
/// offset (8). (A valid one also has a dimension, but a count check must
/// not turn a header whose first tensor has 0 dimensions into a
/// truncation.)
const MIN_TENSOR_INFO_BYTES: u64 = 24;

/// Smallest possible key/value pair: key length (8), value type (4), a
/// one-byte value.
const MIN_KV_BYTES: u64 = 13;

/// Buffer of [`GgufFile::read`]'s reader.
const READ_BUFFER: usize = 256 * 1024;

// ---------------------------------------------------------------------------
// ggml tensor types
// ---------------------------------------------------------------------------

/// A tensor element type: ggml's `enum ggml_type`.
///
/// Quantized types store elements in blocks: [`GgmlType::block_size`]
/// elements take [`GgmlType::type_size`] bytes.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GgmlType {
    /// 32-bit float (id 0).
    F32,
    /// 16-bit IEEE half float (id 1).
    F16,
    /// 4-bit, blocks of 32 with an f16 scale (id 2).
    Q4_0,
    /// 4-bit, blocks of 32 with an f16 scale and min (id 3).
    Q4_1,
    /// 5-bit, blocks of 32 with an f16 scale (id 6).
    Q5_0,
    /// 5-bit, blocks of 32 with an f16 scale and min (id 7).
    Q5_1,
    /// 8-bit, blocks of 32 with an f16 scale (id 8).
    Q8_0,
    /// 8-bit, blocks of 32 with an f16 scale and sum (id 9).
    Q8_1,
    /// 2-bit k-quant, super-blocks of 256 (id 10).
    Q2_K,
    /// 3-bit k-quant, super-blocks of 256 (id 11).
    Q3_K,
    /// 4-bit k-quant, super-blocks of 256 (id 12).
    Q4_K,
    /// 5-bit k-quant, super-blocks of 256 (id 13).
    Q5_K,
    /// 6-bit k-quant, super-blocks of 256 (id 14).
    Q6_K,
    /// 8-bit k-quant for intermediate results, super-blocks of 256 (id 15).
    Q8_K,
    /// 2.06 bpw i-quant (id 16).
    IQ2_XXS,
    /// 2.31 bpw i-quant (id 17).
    IQ2_XS,
    /// 3.06 bpw i-quant (id 18).
    IQ3_XXS,
    /// 1.56 bpw i-quant (id 19).
    IQ1_S,
    /// 4-bit non-linear, blocks of 32 (id 20).
    IQ4_NL,
    /// 3.44 bpw i-quant (id 21).
    IQ3_S,
    /// 2.56 bpw i-quant (id 22).
    IQ2_S,
    /// 4.25 bpw non-linear, super-blocks of 256 (id 23).
    IQ4_XS,
    /// 8-bit integer (id 24).
    I8,
    /// 16-bit integer (id 25).
    I16,
    /// 32-bit integer (id 26).
    I32,
    /// 64-bit integer (id 27).
    I64,
    /// 64-bit float (id 28).
    F64,
    /// 1.75 bpw i-quant (id 29).
    IQ1_M,
    /// bfloat16 (id 30).
    BF16,
    /// 1.69 bpw ternary (id 34).
    TQ1_0,
    /// 2.06 bpw ternary (id 35).
    TQ2_0,
    /// OCP microscaling FP4, blocks of 32 with an E8M0 scale (id 39).
    MXFP4,
}

impl GgmlType {
    /// Every type, in id order.
    pub const ALL: [GgmlType; 32] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q8_1,
        GgmlType::Q2_K,
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::Q8_K,
        GgmlType::IQ2_XXS,
        GgmlType::IQ2_XS,
        GgmlType::IQ3_XXS,
        GgmlType::IQ1_S,
        GgmlType::IQ4_NL,
        GgmlType::IQ3_S,
        GgmlType::IQ2_S,
        GgmlType::IQ4_XS,
        GgmlType::I8,
        GgmlType::I16,
        GgmlType::I32,
        GgmlType::I64,
        GgmlType::F64,
        GgmlType::IQ1_M,
        GgmlType::BF16,
        GgmlType::TQ1_0,
        GgmlType::TQ2_0,
        GgmlType::MXFP4,
    ];

    /// The type with ggml id `id`; `None` for ids ggml never had or has
    /// removed (4 and 5: Q4_2/Q4_3; 31-33: Q4_0_4_4/4_8/8_8; 36-38:
    /// IQ4_NL_4_4/4_8/8_8) and for ids past the last known type.
    pub fn from_id(id: u32) -> Option<GgmlType> {
        use GgmlType::*;
        Some(match id {
            0 => F32,
            1 => F16,
            2 => Q4_0,
            3 => Q4_1,
            6 => Q5_0,
            7 => Q5_1,
            8 => Q8_0,
            9 => Q8_1,
            10 => Q2_K,
            11 => Q3_K,
            12 => Q4_K,
            13 => Q5_K,
            14 => Q6_K,
            15 => Q8_K,
            16 => IQ2_XXS,
            17 => IQ2_XS,
            18 => IQ3_XXS,
            19 => IQ1_S,
            20 => IQ4_NL,
            21 => IQ3_S,
            22 => IQ2_S,
            23 => IQ4_XS,
            24 => I8,
            25 => I16,
            26 => I32,
            27 => I64,
            28 => F64,
            29 => IQ1_M,
            30 => BF16,
            34 => TQ1_0,
            35 => TQ2_0,
            39 => MXFP4,
            _ => return None,
        })
    }

    /// ggml's id of this type (`enum ggml_type`), as stored in a tensor info.
    pub fn id(self) -> u32 {
        use GgmlType::*;
        match self {
            F32 => 0,
            F16 => 1,
            Q4_0 => 2,
            Q4_1 => 3,
            Q5_0 => 6,
            Q5_1 => 7,
            Q8_0 => 8,
            Q8_1 => 9,
            Q2_K => 10,
            Q3_K => 11,
            Q4_K => 12,
            Q5_K => 13,
            Q6_K => 14,
            Q8_K => 15,
            IQ2_XXS => 16,
            IQ2_XS => 17,
            IQ3_XXS => 18,
            IQ1_S => 19,
            IQ4_NL => 20,
            IQ3_S => 21,
            IQ2_S => 22,
            IQ4_XS => 23,
            I8 => 24,
            I16 => 25,
            I32 => 26,
            I64 => 27,
            F64 => 28,
            IQ1_M => 29,
            BF16 => 30,
            TQ1_0 => 34,
            TQ2_0 => 35,
            MXFP4 => 39,
        }
    }

    /// The type's name, upper case as in quantization names: `"Q4_K"`,
    /// `"IQ2_XXS"`, `"BF16"`, `"MXFP4"`.
    pub fn name(self) -> &'static str {
        use GgmlType::*;
        match self {
            F32 => "F32",
            F16 => "F16",
            Q4_0 => "Q4_0",
            Q4_1 => "Q4_1",
            Q5_0 => "Q5_0",
            Q5_1 => "Q5_1",
            Q8_0 => "Q8_0",
            Q8_1 => "Q8_1",
            Q2_K => "Q2_K",
            Q3_K => "Q3_K",
            Q4_K => "Q4_K",
            Q5_K => "Q5_K",
            Q6_K => "Q6_K",
            Q8_K => "Q8_K",
            IQ2_XXS => "IQ2_XXS",
            IQ2_XS => "IQ2_XS",
            IQ3_XXS => "IQ3_XXS",
            IQ1_S => "IQ1_S",
            IQ4_NL => "IQ4_NL",
            IQ3_S => "IQ3_S",
            IQ2_S => "IQ2_S",
            IQ4_XS => "IQ4_XS",
            I8 => "I8",
            I16 => "I16",
            I32 => "I32",
            I64 => "I64",
            F64 => "F64",
            IQ1_M => "IQ1_M",
            BF16 => "BF16",
            TQ1_0 => "TQ1_0",
            TQ2_0 => "TQ2_0",
            MXFP4 => "MXFP4",
        }
    }

    /// Elements per block: 1 for the plain types, 32 (`QK4_0` ... `QK8_1`,
    /// `QK4_NL`, `QK_MXFP4`) or 256 (`QK_K`) for the quantized ones, as in
    /// ggml.c's `type_traits[].blck_size`.
    pub fn block_size(self) -> u64 {
        use GgmlType::*;
        match self {
            F32 | F16 | I8 | I16 | I32 | I64 | F64 | BF16 => 1,
            Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q8_1 | IQ4_NL | MXFP4 => 32,
            Q2_K | Q3_K | Q4_K | Q5_K | Q6_K | Q8_K | IQ2_XXS | IQ2_XS | IQ3_XXS | IQ1_S
            | IQ3_S | IQ2_S | IQ4_XS | IQ1_M | TQ1_0 | TQ2_0 => 256,
        }
    }

    /// Bytes per block, as ggml.c's `type_traits[].type_size`: the `sizeof`
    /// of the block structs in ggml-common.h (each checked there by a
    /// `static_assert`). `d`, `m`, `dmin` are `ggml_half` (2 bytes);
    /// `QK_K` = 256, `K_SCALE_SIZE` = 12.
    pub fn type_size(self) -> u64 {
        use GgmlType::*;
        match self {
            F32 => 4,
            F16 => 2,
            // block_q4_0 { d; qs[32/2] }
            Q4_0 => 2 + 16,
            // block_q4_1 { d, m; qs[32/2] }
            Q4_1 => 2 * 2 + 16,
            // block_q5_0 { d; qh[4]; qs[32/2] }
            Q5_0 => 2 + 4 + 16,
            // block_q5_1 { d, m; qh[4]; qs[32/2] }
            Q5_1 => 2 * 2 + 4 + 16,
            // block_q8_0 { d; qs[32] }
            Q8_0 => 2 + 32,
            // block_q8_1 { d, s; qs[32] }
            Q8_1 => 2 * 2 + 32,
            // block_q2_K { scales[QK_K/16]; qs[QK_K/4]; d, dmin }
            Q2_K => 16 + 64 + 2 * 2,
            // block_q3_K { hmask[QK_K/8]; qs[QK_K/4]; scales[12]; d }
            Q3_K => 32 + 64 + 12 + 2,
            // block_q4_K { d, dmin; scales[K_SCALE_SIZE]; qs[QK_K/2] }
            Q4_K => 2 * 2 + 12 + 128,
            // block_q5_K { d, dmin; scales[K_SCALE_SIZE]; qh[QK_K/8]; qs[QK_K/2] }
            Q5_K => 2 * 2 + 12 + 32 + 128,
            // block_q6_K { ql[QK_K/2]; qh[QK_K/4]; scales[QK_K/16]; d }
            Q6_K => 128 + 64 + 16 + 2,
            // block_q8_K { float d; int8 qs[QK_K]; int16 bsums[QK_K/16] }
            Q8_K => 4 + 256 + 16 * 2,
            // block_iq2_xxs { d; uint16 qs[QK_K/8] }
            IQ2_XXS => 2 + 32 * 2,
            // block_iq2_xs { d; uint16 qs[QK_K/8]; scales[QK_K/32] }
            IQ2_XS => 2 + 32 * 2 + 8,
            // block_iq3_xxs { d; qs[3*QK_K/8] }
            IQ3_XXS => 2 + 96,
            // block_iq1_s { d; qs[QK_K/8]; uint16 qh[QK_K/32] }
            IQ1_S => 2 + 32 + 8 * 2,
            // block_iq4_nl { d; qs[QK4_NL/2] }, QK4_NL = 32
            IQ4_NL => 2 + 16,
            // block_iq3_s { d; qs[QK_K/4]; qh[QK_K/32]; signs[QK_K/8]; scales[QK_K/64] }
            IQ3_S => 2 + 64 + 8 + 32 + 4,
            // block_iq2_s { d; qs[QK_K/4]; qh[QK_K/32]; scales[QK_K/32] }
            IQ2_S => 2 + 64 + 8 + 8,
            // block_iq4_xs { d; uint16 scales_h; scales_l[QK_K/64]; qs[QK_K/2] }
            IQ4_XS => 2 + 2 + 4 + 128,
            I8 => 1,
            I16 => 2,
            I32 => 4,
            I64 => 8,
            F64 => 8,
            // block_iq1_m { qs[QK_K/8]; qh[QK_K/16]; scales[QK_K/32] } (no d:
            // the scale is spread over `scales`)
            IQ1_M => 32 + 16 + 8,
            // ggml_bf16_t { uint16 bits }
            BF16 => 2,
            // block_tq1_0 { qs[(QK_K - 4*QK_K/64)/5]; qh[QK_K/64]; d }
            TQ1_0 => 48 + 4 + 2,
            // block_tq2_0 { qs[QK_K/4]; d }
            TQ2_0 => 64 + 2,
            // block_mxfp4 { uint8 e (E8M0); qs[QK_MXFP4/2] }, QK_MXFP4 = 32
            MXFP4 => 1 + 16,
        }
    }

    /// Bytes of `elements` consecutive elements (a row):
    /// `elements / block_size * type_size`. `None` when `elements` is not a
    /// multiple of the block size, or on overflow.
    pub fn row_bytes(self, elements: u64) -> Option<u64> {
        let block = self.block_size();
        if !elements.is_multiple_of(block) {
            return None;
        }
        (elements / block).checked_mul(self.type_size())
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The name of a `general.file_type` value (llama.cpp's `enum llama_ftype`,
/// without its `LLAMA_FTYPE_MOSTLY_` prefix): 15 is `"Q4_K_M"`. `None` for
/// values llama.h does not define (4-6 and 33-35 were removed).
pub fn file_type_name(ftype: u32) -> Option<&'static str> {
    Some(match ftype {
        0 => "F32", // LLAMA_FTYPE_ALL_F32
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K",
        11 => "Q3_K_S",
        12 => "Q3_K_M",
        13 => "Q3_K_L",
        14 => "Q4_K_S",
        15 => "Q4_K_M",
        16 => "Q5_K_S",
        17 => "Q5_K_M",
        18 => "Q6_K",
        19 => "IQ2_XXS",
        20 => "IQ2_XS",
        21 => "Q2_K_S",
        22 => "IQ3_XS",
        23 => "IQ3_XXS",
        24 => "IQ1_S",
        25 => "IQ4_NL",
        26 => "IQ3_S",
        27 => "IQ3_M",
        28 => "IQ2_S",
        29 => "IQ2_M",
        30 => "IQ4_XS",
        31 => "IQ1_M",
        32 => "BF16",
        36 => "TQ1_0",
        37 => "TQ2_0",
        38 => "MXFP4_MOE",
        _ => return None,
    })
}

// ---------------------------------------------------------------------------
// Metadata values
// ---------------------------------------------------------------------------

/// GGUF value type ids (`enum gguf_type`).
pub mod value_type {
    /// `u8`.
    pub const U8: u32 = 0;
    /// `i8`.
    pub const I8: u32 = 1;
    /// `u16`.
    pub const U16: u32 = 2;
    /// `i16`.
    pub const I16: u32 = 3;
    /// `u32`.
    pub const U32: u32 = 4;
    /// `i32`.
    pub const I32: u32 = 5;
    /// `f32`.
    pub const F32: u32 = 6;
    /// `bool` (one byte).
    pub const BOOL: u32 = 7;
    /// UTF-8 string: `u64` length, then the bytes.
    pub const STRING: u32 = 8;
    /// Array: element type (`u32`), count (`u64`), then the elements.
    pub const ARRAY: u32 = 9;
    /// `u64`.
    pub const U64: u32 = 10;
    /// `i64`.
    pub const I64: u32 = 11;
    /// `f64`.
    pub const F64: u32 = 12;
}

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum MetaValue {
    /// Type 0.
    U8(u8),
    /// Type 1.
    I8(i8),
    /// Type 2.
    U16(u16),
    /// Type 3.
    I16(i16),
    /// Type 4.
    U32(u32),
    /// Type 5.
    I32(i32),
    /// Type 10.
    U64(u64),
    /// Type 11.
    I64(i64),
    /// Type 6.
    F32(f32),
    /// Type 12.
    F64(f64),
    /// Type 7 (any non-zero byte reads as `true`, as in ggml).
    Bool(bool),
    /// Type 8. Invalid UTF-8 in a value is replaced with U+FFFD.
    String(String),
    /// Type 9.
    Array(MetaArray),
}

/// An array value.
///
/// `values` is either complete (`values.len() == len`, `truncated` false) or
/// empty with `truncated` true: arrays longer than [`MAX_KEPT_NUMBER_ARRAY`]
/// (numbers, bools) or [`MAX_KEPT_STRING_ARRAY`] (strings, arrays), or past
/// the [`MAX_KEPT_VALUES_TOTAL`] budget, are checked and stepped over.
#[derive(Clone, Debug, PartialEq)]
pub struct MetaArray {
    /// GGUF value type id of the elements (see [`value_type`]).
    pub elem_type: u32,
    /// Element count, as stated in the file.
    pub len: u64,
    /// The elements (all of type `elem_type`), or none when `truncated`.
    pub values: Vec<MetaValue>,
    /// The elements were stepped over and not kept.
    pub truncated: bool,
}

impl MetaArray {
    /// A complete array of `values`, all of GGUF type `elem_type`.
    pub fn new(elem_type: u32, values: Vec<MetaValue>) -> MetaArray {
        MetaArray {
            elem_type,
            len: values.len() as u64,
            values,
            truncated: false,
        }
    }
}

impl MetaValue {
    /// The GGUF value type id of this value (see [`value_type`]).
    pub fn type_id(&self) -> u32 {
        match self {
            MetaValue::U8(_) => value_type::U8,
            MetaValue::I8(_) => value_type::I8,
            MetaValue::U16(_) => value_type::U16,
            MetaValue::I16(_) => value_type::I16,
            MetaValue::U32(_) => value_type::U32,
            MetaValue::I32(_) => value_type::I32,
            MetaValue::U64(_) => value_type::U64,
            MetaValue::I64(_) => value_type::I64,
            MetaValue::F32(_) => value_type::F32,
            MetaValue::F64(_) => value_type::F64,
            MetaValue::Bool(_) => value_type::BOOL,
            MetaValue::String(_) => value_type::STRING,
            MetaValue::Array(_) => value_type::ARRAY,
        }
    }

    /// Any integer type holding a non-negative value.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetaValue::U8(v) => Some(v.into()),
            MetaValue::U16(v) => Some(v.into()),
            MetaValue::U32(v) => Some(v.into()),
            MetaValue::U64(v) => Some(v),
            MetaValue::I8(v) => u64::try_from(v).ok(),
            MetaValue::I16(v) => u64::try_from(v).ok(),
            MetaValue::I32(v) => u64::try_from(v).ok(),
            MetaValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any number (integer or float), as `f64` (64-bit integers past 2^53
    /// round).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::U8(v) => Some(v.into()),
            MetaValue::I8(v) => Some(v.into()),
            MetaValue::U16(v) => Some(v.into()),
            MetaValue::I16(v) => Some(v.into()),
            MetaValue::U32(v) => Some(v.into()),
            MetaValue::I32(v) => Some(v.into()),
            MetaValue::U64(v) => Some(v as f64),
            MetaValue::I64(v) => Some(v as f64),
            MetaValue::F32(v) => Some(v.into()),
            MetaValue::F64(v) => Some(v),
            _ => None,
        }
    }

    /// A string's text.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::String(s) => Some(s),
            _ => None,
        }
    }

    /// A bool.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            MetaValue::Bool(b) => Some(b),
            _ => None,
        }
    }
}

/// Bytes one element of GGUF type `t` takes, for fixed-size types.
fn fixed_size(t: u32) -> Option<u64> {
    match t {
        value_type::U8 | value_type::I8 | value_type::BOOL => Some(1),
        value_type::U16 | value_type::I16 => Some(2),
        value_type::U32 | value_type::I32 | value_type::F32 => Some(4),
        value_type::U64 | value_type::I64 | value_type::F64 => Some(8),
        _ => None,
    }
}

/// Fewest bytes one element of GGUF type `t` can take (`None`: no such type).
fn min_size(t: u32) -> Option<u64> {
    match t {
        value_type::STRING => Some(8),
        value_type::ARRAY => Some(12),
        _ => fixed_size(t),
    }
}

fn type_name(t: u32) -> &'static str {
    match t {
        value_type::U8 => "u8",
        value_type::I8 => "i8",
        value_type::U16 => "u16",
        value_type::I16 => "i16",
        value_type::U32 => "u32",
        value_type::I32 => "i32",
        value_type::F32 => "f32",
        value_type::BOOL => "bool",
        value_type::STRING => "string",
        value_type::ARRAY => "array",
        value_type::U64 => "u64",
        value_type::I64 => "i64",
        value_type::F64 => "f64",
        _ => "unknown",
    }
}

// ---------------------------------------------------------------------------
// Tensors and the file
// ---------------------------------------------------------------------------

/// One tensor's description from the header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    /// The tensor's name, such as `blk.0.attn_q.weight`.
    pub name: String,
    /// Elements per dimension, innermost (the row) first; 1 to 4 of them.
    pub dims: Vec<u64>,
    /// Element type.
    pub ggml_type: GgmlType,
    /// Offset of the tensor's data from [`GgufFile::data_offset`].
    pub offset: u64,
}

impl TensorInfo {
    /// Number of elements: the product of `dims` (saturating; a parsed
    /// tensor's product is checked to fit in an `i64`).
    pub fn elements(&self) -> u64 {
        self.dims.iter().fold(1u64, |n, &d| n.saturating_mul(d))
    }

    /// Size of the tensor's data in bytes: rows of `dims[0]` elements, each
    /// `ggml_type.row_bytes(dims[0])`. Exact for a parsed tensor (its row is
    /// checked to be whole blocks and the size to fit); saturating otherwise.
    pub fn bytes(&self) -> u64 {
        let row = self.dims.first().copied().unwrap_or(1);
        let rows = self
            .dims
            .iter()
            .skip(1)
            .fold(1u64, |n, &d| n.saturating_mul(d));
        let row_bytes = row
            .div_ceil(self.ggml_type.block_size())
            .saturating_mul(self.ggml_type.type_size());
        row_bytes.saturating_mul(rows)
    }

    /// The layer `N` of a tensor named `blk.N.<rest>`; `None` for other
    /// names (token embeddings, output norm, ...).
    pub fn layer(&self) -> Option<u32> {
        let rest = self.name.strip_prefix("blk.")?;
        let (n, _) = rest.split_once('.')?;
        if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        n.parse().ok()
    }
}

/// The header of a GGUF file: its metadata and tensor descriptions.
#[derive(Clone, Debug, PartialEq)]
pub struct GgufFile {
    /// Format version: 2 or 3.
    pub version: u32,
    /// Alignment of the data region and of tensor offsets (a power of two).
    pub alignment: u64,
    /// Metadata in file order; keys are unique.
    pub metadata: Vec<(String, MetaValue)>,
    /// Tensor descriptions in file order; names are unique.
    pub tensors: Vec<TensorInfo>,
    /// Absolute offset of the data region: the end of the header rounded up
    /// to `alignment`.
    pub data_offset: u64,
    /// Size of the file [`GgufFile::read`] read (`None` from
    /// [`GgufFile::parse`]). Compare with [`GgufFile::data_end`]: a complete
    /// file is exactly that long; a shorter one is missing tensor data (which
    /// is not a parse error: header-only files are legitimate test inputs).
    pub file_size: Option<u64>,
}

impl GgufFile {
    /// Reads the header of the GGUF file at `path`, streaming it through a
    /// buffer; the tensor data is never read.
    pub fn read(path: &Path) -> Result<GgufFile, GgufError> {
        let io_err = |source| GgufError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io_err)?;
        let len = file.metadata().map_err(io_err)?.len();
        let src = FileSource(BufReader::with_capacity(READ_BUFFER, file));
        let mut parser = Parser::new(src, len, Some(path.to_path_buf()));
        let mut gguf = parser.file()?;
        gguf.file_size = Some(len);
        Ok(gguf)
    }

    /// Parses a GGUF header from memory (`bytes` may stop anywhere after the
    /// header: the tensor data is not needed). `file_size` is `None`.
    pub fn parse(bytes: &[u8]) -> Result<GgufFile, GgufError> {
        let mut parser = Parser::new(SliceSource { bytes, pos: 0 }, bytes.len() as u64, None);
        parser.file()
    }

    /// The value of metadata key `key`.
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// `key`'s value if it is a non-negative integer.
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key)?.as_u64()
    }

    /// `key`'s value if it is a number.
    pub fn get_f64(&self, key: &str) -> Option<f64> {
        self.get(key)?.as_f64()
    }

    /// `key`'s value if it is a string.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key)?.as_str()
    }

    /// `key`'s values if it is a kept (not truncated) array of non-negative
    /// integers; `None` for scalars, other arrays, negative elements.
    pub fn get_u64_array(&self, key: &str) -> Option<Vec<u64>> {
        let MetaValue::Array(arr) = self.get(key)? else {
            return None;
        };
        if arr.truncated {
            return None;
        }
        match arr.elem_type {
            value_type::U8
            | value_type::I8
            | value_type::U16
            | value_type::I16
            | value_type::U32
            | value_type::I32
            | value_type::U64
            | value_type::I64 => arr.values.iter().map(MetaValue::as_u64).collect(),
            _ => None,
        }
    }

    /// `general.architecture`, such as `"llama"` or `"gemma3"`.
    pub fn architecture(&self) -> Option<&str> {
        self.get_str("general.architecture")
    }

    /// The integer `{architecture}.{suffix}`, e.g. `arch_u64("block_count")`.
    pub fn arch_u64(&self, suffix: &str) -> Option<u64> {
        let arch = self.architecture()?;
        self.get_u64(&format!("{arch}.{suffix}"))
    }

    /// Total bytes of all tensors' data (without alignment padding).
    pub fn tensor_bytes(&self) -> u64 {
        self.tensors
            .iter()
            .fold(0u64, |sum, t| sum.saturating_add(t.bytes()))
    }

    /// Absolute offset just past the last byte of tensor data: the size a
    /// complete file has (GGUF writers do not pad after the last tensor).
    pub fn data_end(&self) -> u64 {
        let end = self
            .tensors
            .iter()
            .map(|t| t.offset.saturating_add(t.bytes()))
            .max()
            .unwrap_or(0);
        self.data_offset.saturating_add(end)
    }
}

/// Why a GGUF header could not be read.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// The file could not be opened or read.
    #[error("cannot read {}", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The file does not start with `GGUF`.
    #[error("not a GGUF file: starts with {}", show_magic(.found))]
    BadMagic {
        /// The first four bytes.
        found: [u8; 4],
    },
    /// A version other than 2 or 3.
    #[error("{}", version_message(*.version))]
    UnsupportedVersion {
        /// The version field as read (little-endian).
        version: u32,
    },
    /// The input ends before something the header says is there.
    #[error("truncated at byte {offset}: expected {what}")]
    Truncated {
        /// Where the missing item starts.
        offset: u64,
        /// What was expected there.
        what: String,
    },
    /// The header holds something impossible.
    #[error("invalid GGUF at byte {offset}: {what}")]
    Invalid {
        /// Where the offending field starts.
        offset: u64,
        /// What is wrong.
        what: String,
    },
}

fn show_magic(found: &[u8; 4]) -> String {
    let text: String = found
        .iter()
        .map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                b as char
            } else {
                '.'
            }
        })
        .collect();
    format!(
        "{:02x} {:02x} {:02x} {:02x} (\"{text}\"), expected \"GGUF\"",
        found[0], found[1], found[2], found[3]
    )
}

fn version_message(version: u32) -> String {
    match version {
        1 => "GGUF version 1 is not supported (it used 32-bit counts and lengths; \
              only versions 2 and 3 are read): convert the file with a current llama.cpp"
            .to_string(),
        v if matches!(v.swap_bytes(), 2 | 3) => format!(
            "GGUF version {v} is not supported: this looks like a big-endian GGUF \
             (version {} byte-swapped); only little-endian files are read",
            v.swap_bytes()
        ),
        v => format!("GGUF version {v} is not supported (only versions 2 and 3 are read)"),
    }
}

// ---------------------------------------------------------------------------
// The parser
// ---------------------------------------------------------------------------

/// Where the parser's bytes come from.
trait Source {
    /// Fills `buf` from the current position.
    fn read_exact(&mut self, buf: &mut [u8]) -> io::Result<()>;
    /// Steps over `n` bytes (the caller has checked they exist).
    fn skip(&mut self, n: u64) -> io::Result<()>;
}

struct SliceSource<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Source for SliceSource<'_> {
    fn read_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        let end = self
            .pos
            .checked_add(buf.len())
            .filter(|&end| end <= self.bytes.len())
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(&self.bytes[self.pos..end]);
        self.pos = end;
        Ok(())
    }

    fn skip(&mut self, n: u64) -> io::Result<()> {
        let end = usize::try_from(n)
            .ok()
            .and_then(|n| self.pos.checked_add(n))
            .filter(|&end| end <= self.bytes.len())
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        self.pos = end;
        Ok(())
    }
}

struct FileSource(BufReader<File>);

impl Source for FileSource {
    fn read_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        self.0.read_exact(buf)
    }

    fn skip(&mut self, n: u64) -> io::Result<()> {
        // seek_relative keeps the buffer when the target is inside it.
        let n = i64::try_from(n).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        self.0.seek_relative(n)
    }
}

struct Parser<S> {
    src: S,
    /// Bytes consumed so far.
    pos: u64,
    /// Total input length.
    len: u64,
    path: Option<PathBuf>,
    /// Array elements that may still be kept (see [`MAX_KEPT_VALUES_TOTAL`]).
    values_budget: u64,
    /// String bytes that may still be kept (see [`MAX_KEPT_STRING_BYTES`]).
    string_budget: u64,
}

type Result<T, E = GgufError> = std::result::Result<T, E>;

fn invalid(offset: u64, what: impl Into<String>) -> GgufError {
    GgufError::Invalid {
        offset,
        what: what.into(),
    }
}

fn truncated(offset: u64, what: impl Into<String>) -> GgufError {
    GgufError::Truncated {
        offset,
        what: what.into(),
    }
}

impl<S: Source> Parser<S> {
    fn new(src: S, len: u64, path: Option<PathBuf>) -> Self {
        Parser {
            src,
            pos: 0,
            len,
            path,
            values_budget: MAX_KEPT_VALUES_TOTAL,
            string_budget: MAX_KEPT_STRING_BYTES,
        }
    }

    fn remaining(&self) -> u64 {
        self.len.saturating_sub(self.pos)
    }

    /// Fails unless `n` more bytes exist.
    fn need(&self, n: u64, what: &dyn Fn() -> String) -> Result<()> {
        if n > self.remaining() {
            return Err(truncated(self.pos, what()));
        }
        Ok(())
    }

    fn io_error(&self, e: io::Error, what: &dyn Fn() -> String) -> GgufError {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            // The file shrank under us.
            return truncated(self.pos, what());
        }
        GgufError::Io {
            path: self.path.clone().unwrap_or_default(),
            source: e,
        }
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N]> {
        self.need(N as u64, what)?;
        let mut buf = [0u8; N];
        if let Err(e) = self.src.read_exact(&mut buf) {
            return Err(self.io_error(e, what));
        }
        self.pos += N as u64;
        Ok(buf)
    }

    fn skip(&mut self, n: u64, what: &dyn Fn() -> String) -> Result<()> {
        self.need(n, what)?;
        if let Err(e) = self.src.skip(n) {
            return Err(self.io_error(e, what));
        }
        self.pos += n;
        Ok(())
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// Reads a string's length and checks it against the limit and the
    /// remaining input; the position is then at the string's bytes.
    fn string_len(&mut self, what: &dyn Fn() -> String) -> Result<u64> {
        let at = self.pos;
        let n = self.u64(&|| format!("length of {}", what()))?;
        if n > MAX_STRING_LEN {
            return Err(invalid(
                at,
                format!(
                    "{} is {n} bytes long, more than the limit of {MAX_STRING_LEN}",
                    what()
                ),
            ));
        }
        self.need(n, &|| format!("{} of {n} bytes", what()))?;
        Ok(n)
    }

    fn raw_string(&mut self, what: &dyn Fn() -> String) -> Result<Vec<u8>> {
        let at = self.pos;
        let n = self.string_len(what)?;
        self.string_budget = self.string_budget.checked_sub(n).ok_or_else(|| {
            invalid(
                at,
                format!(
                    "{} brings the header's strings past the limit of {MAX_KEPT_STRING_BYTES} bytes",
                    what()
                ),
            )
        })?;
        // n is checked against the input that remains and MAX_STRING_LEN.
        let mut buf = vec![0u8; n as usize];
        if let Err(e) = self.src.read_exact(&mut buf) {
            return Err(self.io_error(e, what));
        }
        self.pos += n;
        Ok(buf)
    }

    /// A key or tensor name: must be UTF-8.
    fn name(&mut self, what: &dyn Fn() -> String) -> Result<String> {
        let at = self.pos.saturating_add(8);
        let bytes = self.raw_string(what)?;
        String::from_utf8(bytes).map_err(|e| {
            invalid(
                at + e.utf8_error().valid_up_to() as u64,
                format!("{} is not valid UTF-8", what()),
            )
        })
    }

    fn file(&mut self) -> Result<GgufFile> {
        let magic: [u8; 4] = self.array(&|| "the magic \"GGUF\"".into())?;
        if magic != GGUF_MAGIC {
            return Err(GgufError::BadMagic { found: magic });
        }
        let version = self.u32(&|| "the version".into())?;
        if !matches!(version, 2 | 3) {
            return Err(GgufError::UnsupportedVersion { version });
        }

        let at = self.pos;
        let n_tensors = self.u64(&|| "the tensor count".into())?;
        if n_tensors > MAX_TENSORS {
            return Err(invalid(
                at,
                format!("tensor count {n_tensors} is past the limit of {MAX_TENSORS}"),
            ));
        }
        let at = self.pos;
        let n_kv = self.u64(&|| "the metadata count".into())?;
        if n_kv > MAX_METADATA {
            return Err(invalid(
                at,
                format!("metadata count {n_kv} is past the limit of {MAX_METADATA}"),
            ));
        }
        // Each key/value and each tensor info takes a minimum number of bytes:
        // refuse counts the input cannot hold before looping over them.
        let min_rest = n_kv
            .checked_mul(MIN_KV_BYTES)
            .zip(n_tensors.checked_mul(MIN_TENSOR_INFO_BYTES))
            .and_then(|(a, b)| a.checked_add(b));
        match min_rest {
            Some(n) if n <= self.remaining() => {}
            _ => {
                return Err(truncated(
                    self.pos,
                    format!(
                        "{n_kv} metadata entries and {n_tensors} tensor infos \
                         (at least {} bytes; {} remain)",
                        min_rest.map_or_else(|| "2^64".to_string(), |n| n.to_string()),
                        self.remaining()
                    ),
                ))
            }
        }

        let mut alignment = DEFAULT_ALIGNMENT;
        let mut metadata: Vec<(String, MetaValue)> = Vec::with_capacity(n_kv.min(256) as usize);
        let mut keys: HashSet<String> = HashSet::new();
        for i in 0..n_kv {
            let key_at = self.pos;
            let key = self.name(&|| format!("metadata key {i}"))?;
            if key.is_empty() {
                return Err(invalid(key_at, format!("metadata key {i} is empty")));
            }
            if keys.contains(&key) {
                return Err(invalid(key_at, format!("duplicate metadata key '{key}'")));
            }
            let type_at = self.pos;
            let vtype = self.u32(&|| format!("the value type of '{key}'"))?;
            let value_at = self.pos;
            let value = self.value(vtype, type_at, 0, true, &key)?;
            if key == ALIGNMENT_KEY {
                alignment = match value {
                    MetaValue::U32(a) if a.is_power_of_two() => a.into(),
                    MetaValue::U32(a) => {
                        return Err(invalid(
                            value_at,
                            format!("{ALIGNMENT_KEY} is {a}, not a power of two"),
                        ))
                    }
                    _ => {
                        return Err(invalid(
                            type_at,
                            format!(
                                "{ALIGNMENT_KEY} must be a u32, not {}",
                                type_name(value.type_id())
                            ),
                        ))
                    }
                };
            }
            keys.insert(key.clone());
            metadata.push((key, value));
        }
        drop(keys);

        let mut tensors: Vec<TensorInfo> = Vec::with_capacity(n_tensors.min(4096) as usize);
        let mut names: HashSet<String> = HashSet::new();
        for i in 0..n_tensors {
            let t = self.tensor_info(i, alignment)?;
            if names.contains(&t.0.name) {
                return Err(invalid(
                    t.1,
                    format!("duplicate tensor name '{}'", t.0.name),
                ));
            }
            names.insert(t.0.name.clone());
            tensors.push(t.0);
        }

        let header_end = self.pos;
        let data_offset = header_end
            .checked_next_multiple_of(alignment)
            .ok_or_else(|| invalid(header_end, "data offset overflows"))?;
        Ok(GgufFile {
            version,
            alignment,
            metadata,
            tensors,
            data_offset,
            file_size: None,
        })
    }

    /// One tensor info and the offset where it starts.
    fn tensor_info(&mut self, i: u64, alignment: u64) -> Result<(TensorInfo, u64)> {
        let start = self.pos;
        let name = self.name(&|| format!("the name of tensor {i}"))?;
        let n_dims_at = self.pos;
        let n_dims = self.u32(&|| format!("the dimension count of tensor '{name}'"))?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(invalid(
                n_dims_at,
                format!("tensor '{name}' has {n_dims} dimensions (1 to {MAX_DIMS} allowed)"),
            ));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        let mut elements: u64 = 1;
        for d in 0..n_dims {
            let at = self.pos;
            let n = self.u64(&|| format!("dimension {d} of tensor '{name}'"))?;
            elements = elements
                .checked_mul(n)
                .filter(|&e| e <= i64::MAX as u64)
                .ok_or_else(|| {
                    invalid(
                        at,
                        format!("tensor '{name}' has more elements than fit in an i64 (dimension {d} is {n})"),
                    )
                })?;
            dims.push(n);
        }
        let type_at = self.pos;
        let type_id = self.u32(&|| format!("the type of tensor '{name}'"))?;
        let ggml_type = GgmlType::from_id(type_id).ok_or_else(|| {
            invalid(
                type_at,
                format!("tensor '{name}' has unknown ggml type id {type_id}"),
            )
        })?;
        let row = dims[0];
        if !row.is_multiple_of(ggml_type.block_size()) {
            return Err(invalid(
                n_dims_at + 4,
                format!(
                    "tensor '{name}' of type {ggml_type} has rows of {row} elements, \
                     not a multiple of the block size {}",
                    ggml_type.block_size()
                ),
            ));
        }
        // elements = row * (the other dimensions), exactly.
        let bytes = ggml_type
            .row_bytes(row)
            .and_then(|r| r.checked_mul(elements / row.max(1)))
            .filter(|&b| b <= i64::MAX as u64)
            .ok_or_else(|| invalid(type_at, format!("tensor '{name}' is too large in bytes")))?;
        let offset_at = self.pos;
        let offset = self.u64(&|| format!("the data offset of tensor '{name}'"))?;
        if !offset.is_multiple_of(alignment) {
            return Err(invalid(
                offset_at,
                format!("tensor '{name}' has offset {offset}, not a multiple of the alignment {alignment}"),
            ));
        }
        if offset
            .checked_add(bytes)
            .is_none_or(|end| end > i64::MAX as u64)
        {
            return Err(invalid(
                offset_at,
                format!("tensor '{name}' at offset {offset} ends past any possible file"),
            ));
        }
        Ok((
            TensorInfo {
                name,
                dims,
                ggml_type,
                offset,
            },
            start,
        ))
    }

    /// A value of GGUF type `vtype` (read at `type_at`); `depth` arrays
    /// enclose it. With `keep` false an array's elements are checked and
    /// stepped over (the returned scalars are still built: they are small).
    fn value(
        &mut self,
        vtype: u32,
        type_at: u64,
        depth: u32,
        keep: bool,
        key: &str,
    ) -> Result<MetaValue> {
        let what = || format!("a {} value of '{key}'", type_name(vtype));
        Ok(match vtype {
            value_type::U8 => MetaValue::U8(u8::from_le_bytes(self.array(&what)?)),
            value_type::I8 => MetaValue::I8(i8::from_le_bytes(self.array(&what)?)),
            value_type::U16 => MetaValue::U16(u16::from_le_bytes(self.array(&what)?)),
            value_type::I16 => MetaValue::I16(i16::from_le_bytes(self.array(&what)?)),
            value_type::U32 => MetaValue::U32(u32::from_le_bytes(self.array(&what)?)),
            value_type::I32 => MetaValue::I32(i32::from_le_bytes(self.array(&what)?)),
            value_type::F32 => MetaValue::F32(f32::from_le_bytes(self.array(&what)?)),
            value_type::BOOL => MetaValue::Bool(self.array::<1>(&what)?[0] != 0),
            value_type::U64 => MetaValue::U64(u64::from_le_bytes(self.array(&what)?)),
            value_type::I64 => MetaValue::I64(i64::from_le_bytes(self.array(&what)?)),
            value_type::F64 => MetaValue::F64(f64::from_le_bytes(self.array(&what)?)),
            value_type::STRING => {
                if keep {
                    let bytes = self.raw_string(&what)?;
                    MetaValue::String(match String::from_utf8(bytes) {
                        Ok(s) => s,
                        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
                    })
                } else {
                    let n = self.string_len(&what)?;
                    self.skip(n, &what)?;
                    MetaValue::String(String::new())
                }
            }
            value_type::ARRAY => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(invalid(
                        type_at,
                        format!("'{key}' nests arrays deeper than {MAX_ARRAY_DEPTH} levels"),
                    ));
                }
                MetaValue::Array(self.array_value(depth + 1, keep, key)?)
            }
            other => {
                return Err(invalid(
                    type_at,
                    format!("'{key}' has unknown value type {other}"),
                ))
            }
        })
    }

    /// `len` elements of fixed-size type `elem_type` (`size` bytes each),
    /// read in chunks and decoded into `values`.
    fn fixed_values(
        &mut self,
        elem_type: u32,
        size: u64,
        len: u64,
        values: &mut Vec<MetaValue>,
        what: &dyn Fn() -> String,
    ) -> Result<()> {
        const CHUNK: u64 = 64 * 1024;
        let mut buf = vec![0u8; (len * size).min(CHUNK) as usize];
        let mut left = len;
        while left > 0 {
            let n = left.min(CHUNK / size);
            let bytes = (n * size) as usize;
            self.need(n * size, what)?;
            if let Err(e) = self.src.read_exact(&mut buf[..bytes]) {
                return Err(self.io_error(e, what));
            }
            self.pos += n * size;
            left -= n;
            let chunks = buf[..bytes].chunks_exact(size as usize);
            match elem_type {
                value_type::U8 => values.extend(buf[..bytes].iter().map(|&b| MetaValue::U8(b))),
                value_type::I8 => {
                    values.extend(buf[..bytes].iter().map(|&b| MetaValue::I8(b as i8)))
                }
                value_type::BOOL => {
                    values.extend(buf[..bytes].iter().map(|&b| MetaValue::Bool(b != 0)))
                }
                value_type::U16 => values.extend(chunks.map(|c| MetaValue::U16(le(c)))),
                value_type::I16 => values.extend(chunks.map(|c| MetaValue::I16(le(c)))),
                value_type::U32 => values.extend(chunks.map(|c| MetaValue::U32(le(c)))),
                value_type::I32 => values.extend(chunks.map(|c| MetaValue::I32(le(c)))),
                value_type::F32 => values.extend(chunks.map(|c| MetaValue::F32(le(c)))),
                value_type::U64 => values.extend(chunks.map(|c| MetaValue::U64(le(c)))),
                value_type::I64 => values.extend(chunks.map(|c| MetaValue::I64(le(c)))),
                value_type::F64 => values.extend(chunks.map(|c| MetaValue::F64(le(c)))),
                _ => {}
            }
        }
        Ok(())
    }

    /// An array (its type id already read) at nesting depth `depth`.
    fn array_value(&mut self, depth: u32, keep: bool, key: &str) -> Result<MetaArray> {
        let elem_at = self.pos;
        let elem_type = self.u32(&|| format!("the element type of array '{key}'"))?;
        let Some(min) = min_size(elem_type) else {
            return Err(invalid(
                elem_at,
                format!("array '{key}' has unknown element type {elem_type}"),
            ));
        };
        if elem_type == value_type::ARRAY && depth >= MAX_ARRAY_DEPTH {
            return Err(invalid(
                elem_at,
                format!("'{key}' nests arrays deeper than {MAX_ARRAY_DEPTH} levels"),
            ));
        }
        let len_at = self.pos;
        let len = self.u64(&|| format!("the length of array '{key}'"))?;
        if len > i64::MAX as u64 {
            return Err(invalid(
                len_at,
                format!("array '{key}' has an absurd length {len}"),
            ));
        }
        let what = || format!("{len} {} elements of array '{key}'", type_name(elem_type));
        match len.checked_mul(min) {
            Some(n) if n <= self.remaining() => {}
            _ => return Err(truncated(self.pos, what())),
        }
        let limit = match elem_type {
            value_type::STRING | value_type::ARRAY => MAX_KEPT_STRING_ARRAY,
            _ => MAX_KEPT_NUMBER_ARRAY,
        };
        let keep = keep && len <= limit && len <= self.values_budget;
        if !keep {
            if let Some(size) = fixed_size(elem_type) {
                // len * size was checked against the remaining input above.
                self.skip(len * size, &what)?;
            } else {
                for _ in 0..len {
                    let at = self.pos;
                    self.value(elem_type, at, depth, false, key)?;
                }
            }
            return Ok(MetaArray {
                elem_type,
                len,
                values: Vec::new(),
                truncated: true,
            });
        }
        self.values_budget -= len;
        // len is at most MAX_KEPT_NUMBER_ARRAY and backed by input bytes.
        let mut values = Vec::with_capacity(len as usize);
        if let Some(size) = fixed_size(elem_type) {
            self.fixed_values(elem_type, size, len, &mut values, &what)?;
        } else {
            for _ in 0..len {
                let at = self.pos;
                values.push(self.value(elem_type, at, depth, true, key)?);
            }
        }
        Ok(MetaArray {
            elem_type,
            len,
            values,
            truncated: false,
        })
    }
}

/// Little-endian decoding of a chunk of exactly the type's size.
fn le<T: FromLe>(bytes: &[u8]) -> T {
    T::from_le(bytes)
}

/// Numbers decoded from a little-endian slice of their exact size.
trait FromLe {
    fn from_le(bytes: &[u8]) -> Self;
}

macro_rules! from_le {
    ($($t:ty),*) => {$(
        impl FromLe for $t {
            fn from_le(bytes: &[u8]) -> Self {
                let mut a = [0u8; std::mem::size_of::<$t>()];
                a.copy_from_slice(bytes);
                <$t>::from_le_bytes(a)
            }
        }
    )*};
}
from_le!(u16, i16, u32, i32, f32, u64, i64, f64);

// ---------------------------------------------------------------------------
// The writer
// ---------------------------------------------------------------------------

/// Builds GGUF files for tests: metadata and tensor infos, no tensor data
/// (a "metadata-only" file whose [`GgufFile::data_end`] is past its end).
#[derive(Clone, Debug)]
pub struct GgufWriter {
    version: u32,
    kvs: Vec<(String, MetaValue)>,
    tensors: Vec<(String, Vec<u64>, GgmlType)>,
}

impl GgufWriter {
    /// An empty file of format `version` (2 or 3; others are written as
    /// given, to test the reader). The alignment is 32 unless a
    /// `general.alignment` u32 is added with [`GgufWriter::kv`].
    pub fn new(version: u32) -> GgufWriter {
        GgufWriter {
            version,
            kvs: Vec::new(),
            tensors: Vec::new(),
        }
    }

    /// Adds a metadata entry (written in call order). An array is written
    /// with its `elem_type` and `len` as they are, followed by its `values`
    /// (which should hold `len` elements of `elem_type`).
    pub fn kv(&mut self, key: &str, value: MetaValue) -> &mut Self {
        self.kvs.push((key.to_string(), value));
        self
    }

    /// Adds a tensor info. Offsets are assigned in call order, each rounded
    /// up to the alignment.
    pub fn tensor(&mut self, name: &str, dims: &[u64], ggml_type: GgmlType) -> &mut Self {
        self.tensors
            .push((name.to_string(), dims.to_vec(), ggml_type));
        self
    }

    fn alignment(&self) -> u64 {
        self.kvs
            .iter()
            .find_map(|(k, v)| match v {
                MetaValue::U32(a) if k == ALIGNMENT_KEY && a.is_power_of_two() => {
                    Some(u64::from(*a))
                }
                _ => None,
            })
            .unwrap_or(DEFAULT_ALIGNMENT)
    }

    /// The file: header, tensor infos and padding up to the alignment, no
    /// tensor data.
    pub fn to_bytes(&self) -> Vec<u8> {
        let alignment = self.alignment();
        let mut out = Vec::new();
        out.extend_from_slice(&GGUF_MAGIC);
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.kvs.len() as u64).to_le_bytes());
        for (key, value) in &self.kvs {
            write_str(&mut out, key);
            out.extend_from_slice(&value.type_id().to_le_bytes());
            write_value(&mut out, value);
        }
        let mut offset = 0u64;
        for (name, dims, ggml_type) in &self.tensors {
            write_str(&mut out, name);
            out.extend_from_slice(&(dims.len() as u32).to_le_bytes());
            for d in dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&ggml_type.id().to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
            let info = TensorInfo {
                name: String::new(),
                dims: dims.clone(),
                ggml_type: *ggml_type,
                offset,
            };
            offset = align_up(offset.saturating_add(info.bytes()), alignment);
        }
        let padded = align_up(out.len() as u64, alignment);
        out.resize(padded as usize, 0);
        out
    }

    /// Writes [`GgufWriter::to_bytes`] to `path`.
    pub fn write(&self, path: &Path) -> io::Result<()> {
        std::fs::write(path, self.to_bytes())
    }
}

fn align_up(n: u64, alignment: u64) -> u64 {
    n.checked_next_multiple_of(alignment).unwrap_or(u64::MAX)
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn write_value(out: &mut Vec<u8>, value: &MetaValue) {
    match value {
        MetaValue::U8(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetaValue::I8(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetaValue::U16(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetaValue::I16(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetaValue::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetaValue::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetaValue::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetaValue::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetaValue::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetaValue::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetaValue::Bool(v) => out.push(u8::from(*v)),
        MetaValue::String(s) => write_str(out, s),
        MetaValue::Array(arr) => {
            out.extend_from_slice(&arr.elem_type.to_le_bytes());
            out.extend_from_slice(&arr.len.to_le_bytes());
            // Elements carry no type tag; nested arrays carry their own
            // element type and length.
            for v in &arr.values {
                write_value(out, v);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// (type, ggml id, block size, bytes per block) from ggml's
    /// ggml/src/ggml-common.h (the `block_*` structs and their
    /// `static_assert(sizeof(block_x) == ...)`) and ggml/src/ggml.c
    /// (`type_traits[].blck_size` / `.type_size`).
    const GGML_TABLE: [(GgmlType, u32, u64, u64); 32] = [
        (GgmlType::F32, 0, 1, 4),
        (GgmlType::F16, 1, 1, 2),
        (GgmlType::Q4_0, 2, 32, 18),
        (GgmlType::Q4_1, 3, 32, 20),
        (GgmlType::Q5_0, 6, 32, 22),
        (GgmlType::Q5_1, 7, 32, 24),
        (GgmlType::Q8_0, 8, 32, 34),
        (GgmlType::Q8_1, 9, 32, 36),
        (GgmlType::Q2_K, 10, 256, 84),
        (GgmlType::Q3_K, 11, 256, 110),
        (GgmlType::Q4_K, 12, 256, 144),
        (GgmlType::Q5_K, 13, 256, 176),
        (GgmlType::Q6_K, 14, 256, 210),
        (GgmlType::Q8_K, 15, 256, 292),
        (GgmlType::IQ2_XXS, 16, 256, 66),
        (GgmlType::IQ2_XS, 17, 256, 74),
        (GgmlType::IQ3_XXS, 18, 256, 98),
        (GgmlType::IQ1_S, 19, 256, 50),
        (GgmlType::IQ4_NL, 20, 32, 18),
        (GgmlType::IQ3_S, 21, 256, 110),
        (GgmlType::IQ2_S, 22, 256, 82),
        (GgmlType::IQ4_XS, 23, 256, 136),
        (GgmlType::I8, 24, 1, 1),
        (GgmlType::I16, 25, 1, 2),
        (GgmlType::I32, 26, 1, 4),
        (GgmlType::I64, 27, 1, 8),
        (GgmlType::F64, 28, 1, 8),
        (GgmlType::IQ1_M, 29, 256, 56),
        (GgmlType::BF16, 30, 1, 2),
        (GgmlType::TQ1_0, 34, 256, 54),
        (GgmlType::TQ2_0, 35, 256, 66),
        (GgmlType::MXFP4, 39, 32, 17),
    ];

    #[test]
    fn block_and_type_sizes_match_ggml() {
        for (t, id, block, size) in GGML_TABLE {
            assert_eq!(t.id(), id, "{t}");
            assert_eq!(GgmlType::from_id(id), Some(t), "{t}");
            assert_eq!(t.block_size(), block, "{t} block size");
            assert_eq!(t.type_size(), size, "{t} type size");
        }
        assert_eq!(GgmlType::ALL.to_vec(), GGML_TABLE.map(|r| r.0).to_vec());
    }

    #[test]
    fn removed_and_unknown_type_ids_are_none() {
        for id in [4, 5, 31, 32, 33, 36, 37, 38, 40, 41, 1000, u32::MAX] {
            assert_eq!(GgmlType::from_id(id), None, "{id}");
        }
        let known = (0..64).filter_map(GgmlType::from_id).count();
        assert_eq!(known, 32);
    }

    #[test]
    fn names() {
        assert_eq!(GgmlType::Q4_K.name(), "Q4_K");
        assert_eq!(GgmlType::IQ2_XXS.name(), "IQ2_XXS");
        assert_eq!(GgmlType::MXFP4.to_string(), "MXFP4");
        let names: HashSet<&str> = GgmlType::ALL.iter().map(|t| t.name()).collect();
        assert_eq!(names.len(), 32);
        assert_eq!(file_type_name(0), Some("F32"));
        assert_eq!(file_type_name(15), Some("Q4_K_M"));
        assert_eq!(file_type_name(38), Some("MXFP4_MOE"));
        for removed in [4, 5, 6, 33, 34, 35, 39, 1024] {
            assert_eq!(file_type_name(removed), None, "{removed}");
        }
    }

    #[test]
    fn row_bytes() {
        assert_eq!(GgmlType::Q4_K.row_bytes(640), None);
        assert_eq!(GgmlType::Q4_K.row_bytes(512), Some(288));
        assert_eq!(GgmlType::Q8_0.row_bytes(640), Some(680));
        assert_eq!(GgmlType::F32.row_bytes(3), Some(12));
        assert_eq!(GgmlType::F32.row_bytes(0), Some(0));
        assert_eq!(GgmlType::F64.row_bytes(u64::MAX), None);
        assert_eq!(GgmlType::I8.row_bytes(u64::MAX), Some(u64::MAX));
    }

    #[test]
    fn tensor_layer_and_sizes() {
        let t = |name: &str| TensorInfo {
            name: name.into(),
            dims: vec![512, 3],
            ggml_type: GgmlType::Q6_K,
            offset: 0,
        };
        assert_eq!(t("blk.0.attn_q.weight").layer(), Some(0));
        assert_eq!(t("blk.17.ffn_up.weight").layer(), Some(17));
        assert_eq!(t("token_embd.weight").layer(), None);
        assert_eq!(t("blk.x.attn_q.weight").layer(), None);
        assert_eq!(t("blk.+1.attn_q.weight").layer(), None);
        assert_eq!(t("blk.1").layer(), None);
        assert_eq!(t("blk..a").layer(), None);
        assert_eq!(t("blk.99999999999.a").layer(), None);
        assert_eq!(t("x").elements(), 1536);
        assert_eq!(t("x").bytes(), 2 * 210 * 3);
    }

    #[test]
    fn accessors() {
        let mut w = GgufWriter::new(3);
        w.kv("general.architecture", MetaValue::String("llama".into()))
            .kv("llama.block_count", MetaValue::U32(32))
            .kv("llama.rope.freq_base", MetaValue::F32(10000.0))
            .kv("neg", MetaValue::I32(-1))
            .kv("flag", MetaValue::Bool(true))
            .kv(
                "ints",
                MetaValue::Array(MetaArray::new(
                    value_type::I32,
                    vec![MetaValue::I32(1), MetaValue::I32(2)],
                )),
            )
            .kv(
                "negs",
                MetaValue::Array(MetaArray::new(value_type::I32, vec![MetaValue::I32(-1)])),
            )
            .kv(
                "floats",
                MetaValue::Array(MetaArray::new(value_type::F32, vec![MetaValue::F32(1.0)])),
            );
        let g = GgufFile::parse(&w.to_bytes()).unwrap();
        assert_eq!(g.architecture(), Some("llama"));
        assert_eq!(g.arch_u64("block_count"), Some(32));
        assert_eq!(g.get_f64("llama.rope.freq_base"), Some(10000.0));
        assert_eq!(g.get_u64("llama.rope.freq_base"), None);
        assert_eq!(g.get_u64("neg"), None);
        assert_eq!(g.get_f64("neg"), Some(-1.0));
        assert_eq!(g.get("flag").and_then(MetaValue::as_bool), Some(true));
        assert_eq!(g.get_str("llama.block_count"), None);
        assert_eq!(g.get_u64_array("ints"), Some(vec![1, 2]));
        assert_eq!(g.get_u64_array("negs"), None);
        assert_eq!(g.get_u64_array("floats"), None);
        assert_eq!(g.get_u64_array("llama.block_count"), None);
        assert_eq!(g.get("missing"), None);
        assert_eq!(g.tensor_bytes(), 0);
        assert_eq!(g.data_end(), g.data_offset);
    }

    /// A vocabulary-sized header: 262,144 tokens (skipped), their scores and
    /// types (kept), 1,000 tensors. Parsing it from memory and from a file
    /// must take well under a second (2 s allows for a loaded debug build).
    #[test]
    fn big_vocabulary_header_parses_fast() {
        const N: usize = 262_144;
        let tokens: Vec<MetaValue> = (0..N)
            .map(|i| MetaValue::String(format!("tok{i}")))
            .collect();
        let scores: Vec<MetaValue> = (0..N).map(|i| MetaValue::F32(i as f32)).collect();
        let types: Vec<MetaValue> = (0..N).map(|_| MetaValue::I32(1)).collect();
        let mut w = GgufWriter::new(3);
        w.kv("general.architecture", MetaValue::String("llama".into()))
            .kv(
                "tokenizer.ggml.tokens",
                MetaValue::Array(MetaArray::new(value_type::STRING, tokens)),
            )
            .kv(
                "tokenizer.ggml.scores",
                MetaValue::Array(MetaArray::new(value_type::F32, scores)),
            )
            .kv(
                "tokenizer.ggml.token_type",
                MetaValue::Array(MetaArray::new(value_type::I32, types)),
            );
        for i in 0..1000 {
            w.tensor(&format!("blk.{i}.w"), &[4096, 4096], GgmlType::Q4_K);
        }
        let bytes = w.to_bytes();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.gguf");
        std::fs::write(&path, &bytes).unwrap();

        let start = Instant::now();
        let parsed = GgufFile::parse(&bytes).unwrap();
        let read = GgufFile::read(&path).unwrap();
        let took = start.elapsed();
        eprintln!("parse + read took {took:?}");
        assert!(took < Duration::from_secs(2), "took {took:?}");

        for g in [&parsed, &read] {
            let Some(MetaValue::Array(tokens)) = g.get("tokenizer.ggml.tokens") else {
                panic!("no tokens");
            };
            assert_eq!(tokens.len, N as u64);
            assert!(tokens.truncated);
            assert!(tokens.values.is_empty());
            let Some(MetaValue::Array(scores)) = g.get("tokenizer.ggml.scores") else {
                panic!("no scores");
            };
            assert!(!scores.truncated);
            assert_eq!(scores.values.len(), N);
            assert_eq!(scores.values[N - 1], MetaValue::F32((N - 1) as f32));
            assert_eq!(g.tensors.len(), 1000);
            assert_eq!(g.tensors[999].layer(), Some(999));
            assert_eq!(g.tensor_bytes(), 1000 * 4096 * 16 * 144);
        }
        assert_eq!(read.file_size, Some(bytes.len() as u64));
        assert_eq!(parsed.file_size, None);
        assert_eq!(read.data_offset, bytes.len() as u64);
    }

    #[test]
    fn long_arrays_are_stepped_over() {
        let n = MAX_KEPT_STRING_ARRAY as usize;
        let strings = |k: usize| {
            MetaValue::Array(MetaArray::new(
                value_type::STRING,
                (0..k).map(|i| MetaValue::String(i.to_string())).collect(),
            ))
        };
        let numbers = MetaValue::Array(MetaArray::new(
            value_type::U8,
            vec![MetaValue::U8(7); MAX_KEPT_NUMBER_ARRAY as usize + 1],
        ));
        let mut w = GgufWriter::new(3);
        w.kv("kept", strings(n))
            .kv("skipped", strings(n + 1))
            .kv("numbers", numbers);
        let g = GgufFile::parse(&w.to_bytes()).unwrap();
        let arr = |k| match g.get(k) {
            Some(MetaValue::Array(a)) => a.clone(),
            other => panic!("{other:?}"),
        };
        assert!(!arr("kept").truncated);
        assert_eq!(arr("kept").values.len(), n);
        assert!(arr("skipped").truncated);
        assert_eq!(arr("skipped").len, n as u64 + 1);
        assert!(arr("skipped").values.is_empty());
        assert!(arr("numbers").truncated);
        assert_eq!(arr("numbers").len, MAX_KEPT_NUMBER_ARRAY + 1);
    }

    #[test]
    fn skipped_strings_are_still_bounds_checked() {
        let mut w = GgufWriter::new(3);
        w.kv(
            "s",
            MetaValue::Array(MetaArray::new(
                value_type::STRING,
                vec![MetaValue::String("ab".into()); MAX_KEPT_STRING_ARRAY as usize + 1],
            )),
        );
        let mut bytes = w.to_bytes();
        // Header 24 + key (8 + 1) + type 4 + elem type 4 + len 8: the first
        // string's length is at 49. Make the last one's length absurd.
        let last = 49 + (MAX_KEPT_STRING_ARRAY as usize) * 10;
        assert_eq!(&bytes[last..last + 8], &2u64.to_le_bytes());
        bytes[last..last + 8].copy_from_slice(&1000u64.to_le_bytes());
        match GgufFile::parse(&bytes) {
            Err(GgufError::Truncated { offset, .. }) => assert_eq!(offset, last as u64 + 8),
            other => panic!("{other:?}"),
        }
        bytes[last..last + 8].copy_from_slice(&u64::MAX.to_le_bytes());
        match GgufFile::parse(&bytes) {
            Err(GgufError::Invalid { offset, what }) => {
                assert_eq!(offset, last as u64, "{what}");
                assert!(what.contains("limit"), "{what}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn kept_values_have_a_total_budget() {
        let big = || {
            MetaValue::Array(MetaArray::new(
                value_type::U8,
                vec![MetaValue::U8(1); MAX_KEPT_NUMBER_ARRAY as usize],
            ))
        };
        let mut w = GgufWriter::new(3);
        for i in 0..3 {
            w.kv(&format!("a{i}"), big());
        }
        let g = GgufFile::parse(&w.to_bytes()).unwrap();
        let truncated: Vec<bool> = g
            .metadata
            .iter()
            .map(|(_, v)| matches!(v, MetaValue::Array(a) if a.truncated))
            .collect();
        assert_eq!(truncated, [false, false, true]);
    }

    #[test]
    fn kept_strings_have_a_total_budget() {
        let mut w = GgufWriter::new(3);
        w.kv("a", MetaValue::String("x".repeat(40)))
            .kv("b", MetaValue::String("y".repeat(40)));
        let bytes = w.to_bytes();
        let parse = |budget| {
            let mut p = Parser::new(
                SliceSource {
                    bytes: &bytes,
                    pos: 0,
                },
                bytes.len() as u64,
                None,
            );
            p.string_budget = budget;
            p.file()
        };
        // Keys "a" and "b" (1 byte each) and the two values.
        assert!(parse(82).is_ok());
        match parse(81) {
            // b's value: header 24, a (8 + 1 + 4 + 8 + 40), b's key and type.
            Err(GgufError::Invalid { offset, what }) => {
                assert_eq!(offset, 24 + 61 + 13, "{what}");
                assert!(what.contains("limit"), "{what}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn invalid_utf8_in_values_is_replaced_but_names_must_be_utf8() {
        let mut w = GgufWriter::new(3);
        w.kv("k", MetaValue::String("ab".into()));
        let mut bytes = w.to_bytes();
        let at = bytes.windows(2).position(|x| x == b"ab").unwrap();
        bytes[at] = 0xff;
        let g = GgufFile::parse(&bytes).unwrap();
        assert_eq!(g.get_str("k"), Some("\u{fffd}b"));

        let mut w = GgufWriter::new(3);
        w.kv("kk", MetaValue::U8(1));
        let mut bytes = w.to_bytes();
        bytes[32] = 0xff;
        match GgufFile::parse(&bytes) {
            Err(GgufError::Invalid { offset: 32, what }) => assert!(what.contains("UTF-8")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn error_messages() {
        let e = GgufError::BadMagic { found: *b"GGML" };
        assert_eq!(
            e.to_string(),
            "not a GGUF file: starts with 47 47 4d 4c (\"GGML\"), expected \"GGUF\""
        );
        let e = GgufError::UnsupportedVersion {
            version: 3u32.swap_bytes(),
        };
        assert!(e.to_string().contains("big-endian"), "{e}");
        let e = GgufError::UnsupportedVersion { version: 1 };
        assert!(e.to_string().contains("version 1"), "{e}");
        let e = GgufError::UnsupportedVersion { version: 4 };
        assert!(!e.to_string().contains("big-endian"), "{e}");
        let e = GgufError::Truncated {
            offset: 7,
            what: "the version".into(),
        };
        assert_eq!(e.to_string(), "truncated at byte 7: expected the version");
        let e = GgufError::Invalid {
            offset: 9,
            what: "x".into(),
        };
        assert_eq!(e.to_string(), "invalid GGUF at byte 9: x");
    }

    #[test]
    fn io_errors_name_the_path() {
        let e = GgufFile::read(Path::new("/nonexistent/model.gguf")).unwrap_err();
        assert!(matches!(e, GgufError::Io { .. }));
        assert!(e.to_string().contains("/nonexistent/model.gguf"), "{e}");
    }
}
