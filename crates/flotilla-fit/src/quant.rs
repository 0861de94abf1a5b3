//! What a model weighs in another quantization: llama.cpp's choice of a
//! type for each tensor, replayed over the tensor shapes.
//!
//! `llama-quantize` does not give every tensor the file type's base type: the
//! output head gets Q6_K, and for the `_M` mixes half of the layers' `attn_v`
//! and `ffn_down` get more bits (`use_more_bits`), among other rules. A
//! size predicted from a single bits-per-weight figure is off by several
//! percent; replaying the rules over the real tensor shapes gives the size
//! `llama-quantize` writes, to the byte for the mixes covered here. The
//! rules follow `llama_tensor_get_type` in llama.cpp's `src/llama-quant.cpp`
//! for the common file types; importance-matrix variants (IQ1/IQ2/IQ3) are
//! not predicted.

use crate::gguf::GgmlType;

/// A file type flotilla can predict (llama.cpp's `llama_ftype` names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)] // llama.cpp's names, as users type them
pub enum FileType {
    /// 16-bit floats.
    F16,
    /// bfloat16.
    BF16,
    /// 8-bit, blocks of 32.
    Q8_0,
    /// 6-bit K-quant.
    Q6_K,
    /// 5-bit K-quant, more bits for half of `attn_v` and `ffn_down`.
    Q5_K_M,
    /// 5-bit K-quant.
    Q5_K_S,
    /// 4-bit K-quant, more bits for half of `attn_v` and `ffn_down`.
    Q4_K_M,
    /// 4-bit K-quant.
    Q4_K_S,
    /// 4-bit, blocks of 32.
    Q4_0,
    /// 4.25-bit non-linear.
    IQ4_XS,
    /// 3-bit K-quant, large mix.
    Q3_K_L,
    /// 3-bit K-quant, medium mix.
    Q3_K_M,
    /// 3-bit K-quant, small mix.
    Q3_K_S,
    /// 2-bit K-quant.
    Q2_K,
}

impl FileType {
    /// Every predictable type, from the largest to the smallest.
    pub const ALL: [FileType; 14] = [
        FileType::F16,
        FileType::BF16,
        FileType::Q8_0,
        FileType::Q6_K,
        FileType::Q5_K_M,
        FileType::Q5_K_S,
        FileType::Q4_K_M,
        FileType::Q4_K_S,
        FileType::IQ4_XS,
        FileType::Q4_0,
        FileType::Q3_K_L,
        FileType::Q3_K_M,
        FileType::Q3_K_S,
        FileType::Q2_K,
    ];

    /// The ones a recommendation chooses among, best quality first.
    pub const LADDER: [FileType; 7] = [
        FileType::F16,
        FileType::Q8_0,
        FileType::Q6_K,
        FileType::Q5_K_M,
        FileType::Q4_K_M,
        FileType::Q3_K_M,
        FileType::Q2_K,
    ];

    /// The name `llama-quantize` and file names use (`Q4_K_M`).
    pub fn name(self) -> &'static str {
        match self {
            FileType::F16 => "F16",
            FileType::BF16 => "BF16",
            FileType::Q8_0 => "Q8_0",
            FileType::Q6_K => "Q6_K",
            FileType::Q5_K_M => "Q5_K_M",
            FileType::Q5_K_S => "Q5_K_S",
            FileType::Q4_K_M => "Q4_K_M",
            FileType::Q4_K_S => "Q4_K_S",
            FileType::Q4_0 => "Q4_0",
            FileType::IQ4_XS => "IQ4_XS",
            FileType::Q3_K_L => "Q3_K_L",
            FileType::Q3_K_M => "Q3_K_M",
            FileType::Q3_K_S => "Q3_K_S",
            FileType::Q2_K => "Q2_K",
        }
    }

    /// Parses a name, case-insensitively (`q4_k_m`, `Q8_0`).
    pub fn parse(name: &str) -> Option<FileType> {
        FileType::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(name.trim()))
    }

    /// The type most tensors get.
    pub fn base_type(self) -> GgmlType {
        match self {
            FileType::F16 => GgmlType::F16,
            FileType::BF16 => GgmlType::BF16,
            FileType::Q8_0 => GgmlType::Q8_0,
            FileType::Q6_K => GgmlType::Q6_K,
            FileType::Q5_K_M | FileType::Q5_K_S => GgmlType::Q5_K,
            FileType::Q4_K_M | FileType::Q4_K_S => GgmlType::Q4_K,
            FileType::Q4_0 => GgmlType::Q4_0,
            FileType::IQ4_XS => GgmlType::IQ4_XS,
            FileType::Q3_K_L | FileType::Q3_K_M | FileType::Q3_K_S => GgmlType::Q3_K,
            FileType::Q2_K => GgmlType::Q2_K,
        }
    }

    /// Effective bits per weight of the whole file for a typical dense
    /// model (Llama-3-8B, from llama.cpp's quantize table), for estimates
    /// from a parameter count alone, where no tensor shapes are known.
    pub fn typical_bits_per_weight(self) -> f64 {
        match self {
            FileType::F16 | FileType::BF16 => 16.0,
            FileType::Q8_0 => 8.50,
            FileType::Q6_K => 6.56,
            FileType::Q5_K_M => 5.70,
            FileType::Q5_K_S => 5.57,
            FileType::Q4_K_M => 4.89,
            FileType::Q4_K_S => 4.67,
            FileType::IQ4_XS => 4.46,
            FileType::Q4_0 => 4.64,
            FileType::Q3_K_L => 4.30,
            FileType::Q3_K_M => 4.00,
            FileType::Q3_K_S => 3.64,
            FileType::Q2_K => 3.16,
        }
    }
}

/// What the rules need to know about the model.
#[derive(Clone, Copy, Debug)]
pub struct QuantContext {
    /// Repeating layers.
    pub layers: u32,
    /// Query heads per key/value head (grouped-query attention).
    pub gqa: u32,
    /// Experts per MoE layer (0 or 1 for a dense model).
    pub experts: u32,
    /// Whether the model has its own output head (else the token
    /// embedding doubles as the output and is quantized like it).
    pub has_output: bool,
    /// Falcon has its own rules for a few tensors.
    pub falcon: bool,
}

/// `use_more_bits` of llama.cpp: the first and last eighth of the layers,
/// and every third one between.
fn use_more_bits(i: u32, n: u32) -> bool {
    let (i, n) = (i64::from(i), i64::from(n));
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8).rem_euclid(3) == 2
}

/// The type `llama-quantize` gives tensor `name` (of shape `dims`) for
/// file type `ft`. `layer` is the layer the tensor belongs to (`blk.N.`).
pub fn tensor_type(
    ft: FileType,
    name: &str,
    dims: &[u64],
    layer: Option<u32>,
    cx: &QuantContext,
) -> GgmlType {
    // 1-D tensors (norms, biases) and non-weights are kept as they are
    // (F32); llama-quantize quantizes only 2-D-and-up `*.weight` tensors.
    if dims.len() < 2 || !name.ends_with("weight") {
        return GgmlType::F32;
    }
    // So are the few small tensors it never quantizes.
    if name.contains("_norm") || name.ends_with("ffn_gate_inp.weight") || name.contains("pos_embd")
    {
        return GgmlType::F32;
    }
    let mut t = ft.base_type();
    if matches!(ft, FileType::F16 | FileType::BF16) {
        return t;
    }
    let i = layer.unwrap_or(0);
    let n = cx.layers.max(1);
    let output = name == "output.weight" || (!cx.has_output && name == "token_embd.weight");
    if output {
        let nx = dims[0];
        if cx.falcon || !nx.is_multiple_of(t.block_size()) {
            t = GgmlType::Q8_0;
        } else if t != GgmlType::Q8_0 {
            t = GgmlType::Q6_K;
        }
    } else if name == "token_embd.weight" || name == "per_layer_token_embd.weight" {
        // The base type.
    } else if name.contains("attn_v.weight") {
        t = match ft {
            FileType::Q2_K if cx.gqa >= 4 => GgmlType::Q4_K,
            FileType::Q2_K => GgmlType::Q3_K,
            FileType::Q3_K_M if i < 2 => GgmlType::Q5_K,
            FileType::Q3_K_M => GgmlType::Q4_K,
            FileType::Q3_K_L => GgmlType::Q5_K,
            FileType::IQ4_XS if cx.gqa >= 4 => GgmlType::Q5_K,
            FileType::Q4_K_M | FileType::Q5_K_M if use_more_bits(i, n) => GgmlType::Q6_K,
            FileType::Q4_K_S if i < 4 => GgmlType::Q5_K,
            _ => t,
        };
        if cx.experts == 8 {
            t = GgmlType::Q8_0;
        }
    } else if name.contains("attn_k.weight") {
        if cx.experts == 8 {
            t = GgmlType::Q8_0;
        }
    } else if name.contains("ffn_down") {
        t = match ft {
            FileType::Q2_K => GgmlType::Q3_K,
            FileType::Q3_K_M if i < n / 16 => GgmlType::Q5_K,
            FileType::Q3_K_M if !cx.falcon || use_more_bits(i, n) => GgmlType::Q4_K,
            FileType::Q3_K_L if cx.falcon => GgmlType::Q4_K,
            FileType::Q3_K_L => GgmlType::Q5_K,
            FileType::Q4_K_M if cx.falcon && i < n / 16 => GgmlType::Q6_K,
            FileType::Q4_K_M if cx.falcon && use_more_bits(i, n) => GgmlType::Q5_K,
            FileType::Q4_K_M if !cx.falcon && use_more_bits(i, n) => GgmlType::Q6_K,
            FileType::IQ4_XS if i < n / 8 => GgmlType::Q5_K,
            FileType::Q5_K_M if use_more_bits(i, n) => GgmlType::Q6_K,
            FileType::Q4_K_S if !cx.falcon && i < n / 8 => GgmlType::Q5_K,
            _ => t,
        };
    } else if name.contains("attn_output.weight") {
        if !cx.falcon {
            if cx.experts == 8 {
                if matches!(
                    ft,
                    FileType::Q2_K
                        | FileType::Q3_K_S
                        | FileType::Q3_K_M
                        | FileType::Q4_K_S
                        | FileType::Q4_K_M
                        | FileType::IQ4_XS
                ) {
                    t = GgmlType::Q5_K;
                }
            } else {
                t = match ft {
                    FileType::Q2_K => GgmlType::Q3_K,
                    FileType::Q3_K_M => GgmlType::Q4_K,
                    FileType::Q3_K_L => GgmlType::Q5_K,
                    _ => t,
                };
            }
        } else if ft == FileType::Q3_K_L {
            t = GgmlType::Q4_K;
        }
    } else if name.contains("attn_qkv.weight") {
        t = match ft {
            FileType::Q3_K_M | FileType::Q3_K_L => GgmlType::Q4_K,
            FileType::Q4_K_M => GgmlType::Q5_K,
            FileType::Q5_K_M => GgmlType::Q6_K,
            _ => t,
        };
    }
    // A row that does not divide into the type's blocks falls back, as in
    // llama-quantize.
    if !dims[0].is_multiple_of(t.block_size()) {
        t = match t {
            GgmlType::Q2_K | GgmlType::Q3_K | GgmlType::IQ4_XS => GgmlType::IQ4_NL,
            GgmlType::Q4_K => GgmlType::Q5_0,
            GgmlType::Q5_K => GgmlType::Q5_1,
            GgmlType::Q6_K => GgmlType::Q8_0,
            other => other,
        };
        if !dims[0].is_multiple_of(t.block_size()) {
            t = GgmlType::F16;
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn use_more_bits_is_half_of_32_layers() {
        let n = (0..32).filter(|&i| use_more_bits(i, 32)).count();
        assert_eq!(n, 16);
        assert!(use_more_bits(0, 32) && use_more_bits(31, 32) && use_more_bits(6, 32));
        assert!(!use_more_bits(4, 32) && !use_more_bits(5, 32));
    }

    #[test]
    fn names_round_trip() {
        for t in FileType::ALL {
            assert_eq!(FileType::parse(t.name()), Some(t));
            assert_eq!(FileType::parse(&t.name().to_lowercase()), Some(t));
        }
        assert_eq!(FileType::parse("Q9_K"), None);
    }
}
