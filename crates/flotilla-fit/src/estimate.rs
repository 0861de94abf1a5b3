//! Will this model fit on that machine, and how fast will it decode?
//!
//! The estimate follows how llama.cpp lays a model out:
//! - **Weights** are the exact byte sizes of the tensors, per repeating
//!   layer (`blk.N.*`), so a partial offload (`-ngl K`: the last K layers on
//!   the GPU) is exact. The token embedding stays in host memory; the output
//!   head goes to the GPU only when every layer does.
//! - **KV cache** per layer: cells x `head_count_kv` x (`key_length` +
//!   `value_length`) x the cache type's bytes per element. Sliding-window
//!   layers keep `min(ctx, window + ubatch)` cells, as llama.cpp's SWA cache
//!   does.
//! - **Compute buffer**: the graph's largest intermediates for one
//!   micro-batch of 512 tokens with flash attention: the logits
//!   (vocabulary x batch, f32) and the activations. Approximate, within
//!   about 100 MiB for 1B-70B models.
//! - **Overhead**: the GPU runtime's own allocations (CUDA/ROCm context,
//!   about 400 MiB), or the host buffers for Metal and CPU.
//! - **MoE**: all experts count for memory; per token only
//!   `expert_used_count` of `expert_count` are read.
//! - **Decode speed** = efficiency x bandwidth / bytes read per token
//!   (active weights, the output head, and the KV cache of a half-full
//!   context); with a partial offload the host part runs at the host's
//!   bandwidth. The efficiency factor is stated in every result.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::gguf::{file_type_name, GgmlType, GgufFile};
use crate::machines::{Machine, MachineKind};
use crate::quant::{tensor_type, FileType, QuantContext};

/// Share of the peak memory bandwidth that decoding reaches (llama.cpp on
/// current GPUs and Apple silicon reaches 50-75%).
pub const EFFICIENCY: f64 = 0.6;
/// Tokens per micro-batch (llama.cpp's default `n_ubatch`).
pub const UBATCH: u64 = 512;
/// Context used when neither the user nor a smaller trained context says.
pub const DEFAULT_CTX: u64 = 32_768;
const MIB: u64 = 1 << 20;
/// More layers than any model has: a shape claiming more is refused
/// rather than allocated for.
const MAX_LAYERS: u32 = 100_000;

/// The KV cache's element type (`--cache-type-k/-v` of llama.cpp).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KvType {
    /// 32-bit floats.
    F32,
    /// 16-bit floats (llama.cpp's default).
    F16,
    /// 8-bit blocks of 32.
    Q8_0,
    /// 4-bit blocks of 32.
    Q4_0,
}

impl KvType {
    /// Parses `f16`, `q8_0`, `q4_0`, `f32`.
    pub fn parse(s: &str) -> Option<KvType> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f32" => Some(KvType::F32),
            "f16" => Some(KvType::F16),
            "q8_0" => Some(KvType::Q8_0),
            "q4_0" => Some(KvType::Q4_0),
            _ => None,
        }
    }

    /// The name llama.cpp uses.
    pub fn name(self) -> &'static str {
        match self {
            KvType::F32 => "f32",
            KvType::F16 => "f16",
            KvType::Q8_0 => "q8_0",
            KvType::Q4_0 => "q4_0",
        }
    }

    fn ggml(self) -> GgmlType {
        match self {
            KvType::F32 => GgmlType::F32,
            KvType::F16 => GgmlType::F16,
            KvType::Q8_0 => GgmlType::Q8_0,
            KvType::Q4_0 => GgmlType::Q4_0,
        }
    }

    /// Bytes of `elements` values (rounded up to whole blocks).
    fn bytes(self, elements: u64) -> u64 {
        let t = self.ggml();
        elements
            .div_ceil(t.block_size())
            .saturating_mul(t.type_size())
    }
}

/// The attention shape of one layer, for its KV cache.
#[derive(Clone, Debug, PartialEq)]
pub struct KvLayer {
    /// Key/value heads.
    pub heads: u64,
    /// Dimension of a key.
    pub key_length: u64,
    /// Dimension of a value.
    pub value_length: u64,
    /// Sliding window, for layers that attend to the last N tokens only.
    pub window: Option<u64>,
}

/// One tensor's shape, kept to predict other quantizations.
#[derive(Clone, Debug)]
struct TensorShape {
    name: String,
    dims: Vec<u64>,
    layer: Option<u32>,
    /// Expert tensors (`*_exps`): only `used / count` of them are read.
    expert: bool,
}

/// Where a shape came from.
#[derive(Clone, Debug)]
enum Origin {
    /// A GGUF file: tensor shapes known, so other quantizations are
    /// predicted tensor by tensor.
    File {
        tensors: Vec<TensorShape>,
        quant: QuantContext,
    },
    /// Command-line numbers: other quantizations scale by bits per weight.
    Shape,
}

/// What the estimator knows about a model.
#[derive(Clone, Debug)]
pub struct ModelShape {
    /// `general.name`, or the file name.
    pub name: Option<String>,
    /// `general.architecture`.
    pub architecture: Option<String>,
    /// Parameters (all experts).
    pub params: u64,
    /// Parameters used per token.
    pub active_params: u64,
    /// Repeating layers.
    pub layers: u32,
    /// Trained context length.
    pub context_length: u64,
    /// `Q4_K_M`, ...
    pub file_type: String,
    /// Per layer: weight bytes (all experts).
    pub layer_bytes: Vec<u64>,
    /// Per layer: weight bytes read per token (active experts).
    pub layer_active_bytes: Vec<u64>,
    /// The token embedding (stays in host memory).
    pub input_bytes: u64,
    /// The output head and final norm (on the GPU when every layer is).
    pub output_bytes: u64,
    /// Per layer: its KV shape.
    pub kv: Vec<KvLayer>,
    /// Hidden size.
    pub embedding_length: u64,
    /// Widest feed-forward layer.
    pub feed_forward_length: u64,
    /// Vocabulary size.
    pub vocab: u64,
    /// The token embedding doubles as the output head (no `output.weight`):
    /// it is read whole per token, and llama.cpp copies it to the GPU that
    /// holds the output.
    pub tied_output: bool,
    /// Experts per MoE layer (0: dense).
    pub expert_count: u32,
    /// Experts used per token.
    pub expert_used_count: u32,
    origin: Origin,
}

/// Why a model could not be estimated.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FitError {
    /// A key the estimate needs is missing.
    #[error("the GGUF file has no {0}; cannot estimate its memory")]
    Missing(String),
    /// A command-line shape is unusable.
    #[error("{0}")]
    BadShape(String),
    /// The file is shorter than its tensors say (a partial download).
    #[error("the file is incomplete: its tensor data ends at byte {end} but the file has {size} bytes (a partial download?)")]
    Incomplete {
        /// Where the tensor data ends.
        end: u64,
        /// The file's size.
        size: u64,
    },
}

/// The numbers a shape-only estimate needs (`flotilla fit --params ...`).
#[derive(Clone, Debug)]
pub struct ShapeSpec {
    /// Parameters.
    pub params: u64,
    /// Active parameters per token (MoE); defaults to `params`.
    pub active_params: Option<u64>,
    /// The quantization.
    pub quant: FileType,
    /// Repeating layers.
    pub layers: u32,
    /// Key/value heads.
    pub kv_heads: u64,
    /// Head dimension.
    pub head_dim: u64,
    /// Trained context length (defaults to the requested context).
    pub context_length: Option<u64>,
    /// Vocabulary (default 128k, for the compute buffer).
    pub vocab: Option<u64>,
    /// Hidden size (default: estimated from the parameter count).
    pub embedding_length: Option<u64>,
}

impl ModelShape {
    /// Reads the shape of a GGUF file's model.
    pub fn from_gguf(file: &GgufFile, file_name: Option<&str>) -> Result<ModelShape, FitError> {
        // A file read from disk must hold every tensor it lists.
        if let Some(size) = file.file_size {
            let end = file.data_end();
            if end > size {
                return Err(FitError::Incomplete { end, size });
            }
        }
        let arch = file.architecture().map(str::to_owned);
        let layers = file
            .arch_u64("block_count")
            .ok_or_else(|| FitError::Missing("block_count".into()))?;
        let layers = u32::try_from(layers)
            .ok()
            .filter(|&l| l <= MAX_LAYERS)
            .ok_or_else(|| FitError::BadShape(format!("block_count {layers} is absurd")))?;
        let n = layers as usize;
        let embd = file.arch_u64("embedding_length").unwrap_or(0);
        let heads = per_layer(file, "attention.head_count", n).unwrap_or_default();
        let heads_kv =
            per_layer(file, "attention.head_count_kv", n).unwrap_or_else(|| heads.clone());
        let head0 = heads.first().copied().unwrap_or(0);
        let default_dim = embd.checked_div(head0).unwrap_or(0);
        let key_length = file.arch_u64("attention.key_length").unwrap_or(default_dim);
        let value_length = file
            .arch_u64("attention.value_length")
            .unwrap_or(key_length);
        let window = file.arch_u64("attention.sliding_window").filter(|&w| w > 0);
        let swa = swa_layers(file, arch.as_deref(), n, window.is_some());
        let kv = (0..n)
            .map(|i| KvLayer {
                heads: heads_kv.get(i).copied().unwrap_or(0),
                key_length,
                value_length,
                window: if swa[i] { window } else { None },
            })
            .collect();
        let ff = per_layer(file, "feed_forward_length", n)
            .and_then(|v| v.into_iter().max())
            .unwrap_or(embd.saturating_mul(4));
        let expert_count = file.arch_u64("expert_count").unwrap_or(0) as u32;
        let expert_used_count = file.arch_u64("expert_used_count").unwrap_or(0) as u32;
        let has_output = file.tensors.iter().any(|t| t.name == "output.weight");
        let vocab = file
            .tensors
            .iter()
            .find(|t| t.name == "token_embd.weight")
            .and_then(|t| t.dims.get(1).copied())
            .or_else(|| file.arch_u64("vocab_size"))
            .unwrap_or(0);
        let tensors = file
            .tensors
            .iter()
            .map(|t| TensorShape {
                name: t.name.clone(),
                dims: t.dims.clone(),
                layer: t.layer(),
                expert: t.name.contains("_exps"),
            })
            .collect::<Vec<_>>();
        let gqa = match (head0, heads_kv.first().copied()) {
            (h, Some(k)) if k > 0 => (h / k) as u32,
            _ => 1,
        };
        let quant = QuantContext {
            layers,
            gqa,
            experts: expert_count,
            has_output,
            falcon: arch.as_deref() == Some("falcon"),
        };
        let types: Vec<GgmlType> = file.tensors.iter().map(|t| t.ggml_type).collect();
        let file_type = file
            .get_u64("general.file_type")
            .and_then(|f| u32::try_from(f).ok())
            .and_then(file_type_name)
            .map(str::to_owned)
            .unwrap_or_else(|| dominant_type(file));
        let name = file
            .get_str("general.name")
            .map(str::to_owned)
            .or_else(|| file_name.map(str::to_owned));
        let mut shape = ModelShape {
            name,
            architecture: arch,
            params: 0,
            active_params: 0,
            layers,
            context_length: file.arch_u64("context_length").unwrap_or(0),
            file_type,
            layer_bytes: Vec::new(),
            layer_active_bytes: Vec::new(),
            input_bytes: 0,
            output_bytes: 0,
            kv,
            embedding_length: embd,
            feed_forward_length: ff,
            vocab,
            tied_output: !has_output,
            expert_count,
            expert_used_count,
            origin: Origin::File { tensors, quant },
        };
        shape.account(&types);
        Ok(shape)
    }

    /// A shape from command-line numbers (no file).
    pub fn from_spec(spec: &ShapeSpec, ctx: u64) -> Result<ModelShape, FitError> {
        if spec.params == 0 || spec.layers == 0 || spec.kv_heads == 0 || spec.head_dim == 0 {
            return Err(FitError::BadShape(
                "--params, --layers, --kv-heads and --head-dim must all be above 0".into(),
            ));
        }
        if spec.layers > MAX_LAYERS {
            return Err(FitError::BadShape(format!(
                "--layers {} is absurd (at most {MAX_LAYERS})",
                spec.layers
            )));
        }
        let active = spec.active_params.unwrap_or(spec.params);
        if active > spec.params {
            return Err(FitError::BadShape(format!(
                "--active ({active}) cannot exceed --params ({})",
                spec.params
            )));
        }
        let bpw = spec.quant.typical_bits_per_weight();
        let vocab = spec.vocab.unwrap_or(128_256);
        // A transformer of P parameters and L layers has about 12 L d^2
        // parameters in its layers.
        let embd = spec.embedding_length.unwrap_or_else(|| {
            let d = ((spec.params as f64) / (12.0 * f64::from(spec.layers))).sqrt();
            (d as u64).max(64)
        });
        let layers = spec.layers as usize;
        let mut shape = ModelShape {
            name: None,
            architecture: None,
            params: spec.params,
            active_params: active,
            layers: spec.layers,
            context_length: spec.context_length.unwrap_or(ctx),
            file_type: spec.quant.name().to_owned(),
            layer_bytes: vec![0; layers],
            layer_active_bytes: vec![0; layers],
            input_bytes: 0,
            output_bytes: 0,
            kv: (0..layers)
                .map(|_| KvLayer {
                    heads: spec.kv_heads,
                    key_length: spec.head_dim,
                    value_length: spec.head_dim,
                    window: None,
                })
                .collect(),
            embedding_length: embd,
            feed_forward_length: embd.saturating_mul(4),
            vocab,
            tied_output: false,
            expert_count: 0,
            expert_used_count: 0,
            origin: Origin::Shape,
        };
        shape.spread(bpw);
        Ok(shape)
    }

    /// The same model in another quantization, as llama-quantize would
    /// write it (tensor by tensor for a file; by bits per weight for a
    /// command-line shape).
    pub fn requantized(&self, ft: FileType) -> ModelShape {
        let mut out = self.clone();
        out.file_type = ft.name().to_owned();
        match &self.origin {
            Origin::File { tensors, quant } => {
                let types: Vec<GgmlType> = tensors
                    .iter()
                    .map(|t| tensor_type(ft, &t.name, &t.dims, t.layer, quant))
                    .collect();
                out.account(&types);
            }
            Origin::Shape => out.spread(ft.typical_bits_per_weight()),
        }
        out
    }

    /// All weight bytes (the file's tensor data).
    pub fn weights_bytes(&self) -> u64 {
        sum(self.layer_bytes.iter().copied())
            .saturating_add(self.input_bytes)
            .saturating_add(self.output_bytes)
    }

    /// Sums tensor bytes per layer for `types` (one per tensor).
    fn account(&mut self, types: &[GgmlType]) {
        let Origin::File { tensors, .. } = &self.origin else {
            return;
        };
        let n = self.layers as usize;
        let mut layer_bytes = vec![0u64; n];
        let mut active = vec![0u64; n];
        // With a tied output head the token embedding is read whole per
        // token, as the output; otherwise one row of it is.
        let (mut input, mut output) = (0u64, 0u64);
        let (mut params, mut active_params) = (0u64, 0u64);
        let share = |x: u64| -> u64 {
            if self.expert_count > 0 && self.expert_used_count > 0 {
                ((x as u128) * u128::from(self.expert_used_count) / u128::from(self.expert_count))
                    as u64
            } else {
                x
            }
        };
        for (t, ty) in tensors.iter().zip(types) {
            let elements = t.dims.iter().product::<u64>();
            let bytes = ty.row_bytes(elements).unwrap_or_else(|| {
                // Cannot happen for shapes a file held; count it as F32.
                elements.saturating_mul(4)
            });
            params = params.saturating_add(elements);
            let (b, e) = if t.expert {
                (share(bytes), share(elements))
            } else {
                (bytes, elements)
            };
            active_params = active_params.saturating_add(e);
            match t.layer {
                Some(l) if (l as usize) < n => {
                    layer_bytes[l as usize] = layer_bytes[l as usize].saturating_add(bytes);
                    active[l as usize] = active[l as usize].saturating_add(b);
                }
                _ if t.name.starts_with("token_embd")
                    || t.name.starts_with("per_layer_token_embd") =>
                {
                    input = input.saturating_add(bytes);
                }
                _ => output = output.saturating_add(bytes),
            }
        }
        self.layer_bytes = layer_bytes;
        self.layer_active_bytes = active;
        self.input_bytes = input;
        self.output_bytes = output;
        self.params = params;
        self.active_params = active_params;
    }

    /// Spreads `params` at `bpw` over the layers (shape-only estimates).
    fn spread(&mut self, bpw: f64) {
        let bytes = |p: u64| ((p as f64) * bpw / 8.0) as u64;
        let embed = self.vocab.saturating_mul(self.embedding_length);
        let per_layer_params =
            self.params.saturating_sub(embed.saturating_mul(2)) / u64::from(self.layers);
        let per_layer_active =
            self.active_params.saturating_sub(embed.saturating_mul(2)) / u64::from(self.layers);
        let n = self.layers as usize;
        self.layer_bytes = vec![bytes(per_layer_params); n];
        self.layer_active_bytes = vec![bytes(per_layer_active); n];
        self.input_bytes = bytes(embed.min(self.params / 2));
        self.output_bytes = bytes(embed.min(self.params / 2));
    }

    /// Bytes of the KV cache of layer `i` at `ctx` cells.
    fn kv_layer_bytes(&self, i: usize, ctx: u64, kv_type: KvType) -> u64 {
        let Some(l) = self.kv.get(i) else { return 0 };
        let cells = match l.window {
            Some(w) => ctx.min(w.saturating_add(UBATCH)),
            None => ctx,
        };
        let row = l
            .heads
            .saturating_mul(l.key_length.saturating_add(l.value_length));
        kv_type.bytes(row).saturating_mul(cells)
    }

    /// The compute buffer for one micro-batch (see the module docs).
    fn compute_bytes(&self) -> u64 {
        let width = self
            .vocab
            .saturating_add(self.embedding_length.saturating_mul(2))
            .saturating_add(self.feed_forward_length.saturating_mul(2));
        (UBATCH * 4).saturating_mul(width)
    }
}

/// One integer per layer: an array key, or a scalar for every layer.
fn per_layer(file: &GgufFile, suffix: &str, n: usize) -> Option<Vec<u64>> {
    let arch = file.architecture()?;
    let key = format!("{arch}.{suffix}");
    if let Some(v) = file.get_u64_array(&key) {
        if v.is_empty() {
            return None;
        }
        let last = *v.last()?;
        return Some((0..n).map(|i| v.get(i).copied().unwrap_or(last)).collect());
    }
    file.get_u64(&key).map(|x| vec![x; n])
}

/// Which layers use a sliding window: the file's per-layer pattern when it
/// has one, else llama.cpp's pattern for the architecture (one global layer
/// in every N).
fn swa_layers(file: &GgufFile, arch: Option<&str>, n: usize, has_window: bool) -> Vec<bool> {
    if !has_window {
        return vec![false; n];
    }
    if let Some(arch) = arch {
        let key = format!("{arch}.attention.sliding_window_pattern");
        if let Some(crate::gguf::MetaValue::Array(a)) = file.get(&key) {
            let v: Vec<bool> = a.values.iter().filter_map(|x| x.as_bool()).collect();
            if !v.is_empty() {
                return (0..n).map(|i| v.get(i).copied().unwrap_or(false)).collect();
            }
        }
        if let Some(p) = file.get_u64(&key).filter(|&p| p > 0) {
            return (0..n).map(|i| (i as u64 % p) < p - 1).collect();
        }
    }
    let pattern: u64 = match arch {
        Some("gemma2") | Some("gpt-oss") => 2,
        Some("gemma3") | Some("gemma3n") => 6,
        Some("cohere2") | Some("llama4") => 4,
        // A window with no known pattern: every layer slides.
        _ => 1,
    };
    if pattern == 1 {
        return vec![true; n];
    }
    (0..n).map(|i| (i as u64 % pattern) < pattern - 1).collect()
}

/// The file's most common quantized type, when `general.file_type` is absent.
fn dominant_type(file: &GgufFile) -> String {
    let mut bytes: BTreeMap<&'static str, u64> = BTreeMap::new();
    for t in &file.tensors {
        let b = bytes.entry(t.ggml_type.name()).or_default();
        *b = b.saturating_add(t.bytes());
    }
    bytes
        .into_iter()
        .max_by_key(|(_, b)| *b)
        .map(|(n, _)| n.to_owned())
        .unwrap_or_else(|| "unknown".into())
}

/// The options of one estimate.
#[derive(Clone, Copy, Debug)]
pub struct FitOptions {
    /// Context length (cells of the KV cache).
    pub ctx: u64,
    /// The KV cache's type.
    pub kv_type: KvType,
}

/// Whether a model fits a machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Everything on the device.
    Fits,
    /// Some layers on the device, the rest in host memory.
    Partial,
    /// Not even one layer.
    No,
}

/// The estimate for one machine.
#[derive(Clone, Debug, Serialize)]
pub struct MachineFit {
    /// The machine.
    pub name: String,
    /// cuda, rocm, metal, cpu.
    pub kind: MachineKind,
    /// Its memory budget.
    pub memory_budget_bytes: u64,
    /// fits, partial, no.
    pub verdict: Verdict,
    /// Layers on the device.
    pub layers_offloaded: u32,
    /// Of.
    pub layers: u32,
    /// Weights on the device.
    pub weights_bytes: u64,
    /// KV cache on the device.
    pub kv_cache_bytes: u64,
    /// Compute buffer.
    pub compute_bytes: u64,
    /// Runtime overhead.
    pub overhead_bytes: u64,
    /// Everything on the device.
    pub total_bytes: u64,
    /// What stays in host memory (token embedding, layers not offloaded).
    pub host_bytes: u64,
    /// Estimated decode speed (0 when it does not fit).
    pub tokens_per_s: f64,
}

/// A sum that stays at `u64::MAX` instead of wrapping: sizes come from
/// untrusted files and command lines.
fn sum(values: impl IntoIterator<Item = u64>) -> u64 {
    values.into_iter().fold(0, u64::saturating_add)
}

/// Runtime overhead of a device kind (see the module docs).
pub fn overhead_bytes(kind: MachineKind) -> u64 {
    match kind {
        MachineKind::Cuda | MachineKind::Rocm => 400 * MIB,
        MachineKind::Metal | MachineKind::Cpu => 128 * MIB,
    }
}

/// Estimates `model` on `machine`.
pub fn estimate(model: &ModelShape, machine: &Machine, opts: &FitOptions) -> MachineFit {
    let n = model.layers as usize;
    let kv: Vec<u64> = (0..n)
        .map(|i| model.kv_layer_bytes(i, opts.ctx, opts.kv_type))
        .collect();
    // Read per token: the KV of a half-full context.
    let kv_read: Vec<u64> = (0..n)
        .map(|i| model.kv_layer_bytes(i, opts.ctx.div_ceil(2), opts.kv_type))
        .collect();
    let compute = model.compute_bytes();
    let overhead = overhead_bytes(machine.kind);
    let budget = machine.memory_bytes;
    let eff_bw = |gbps: f64| gbps * 1e9 * EFFICIENCY;
    let base = MachineFit {
        name: machine.name.clone(),
        kind: machine.kind,
        memory_budget_bytes: budget,
        verdict: Verdict::No,
        layers_offloaded: 0,
        layers: model.layers,
        weights_bytes: 0,
        kv_cache_bytes: 0,
        compute_bytes: compute,
        overhead_bytes: overhead,
        total_bytes: 0,
        host_bytes: 0,
        tokens_per_s: 0.0,
    };
    let all_weights = model.weights_bytes();
    let all_kv = sum(kv.iter().copied());
    // The output head, read whole every token.
    let head = model.output_bytes.saturating_add(if model.tied_output {
        model.input_bytes
    } else {
        0
    });
    let per_token_all = sum(model.layer_active_bytes.iter().copied())
        .saturating_add(head)
        .saturating_add(sum(kv_read.iter().copied()));
    if !machine.kind.is_discrete() {
        // Unified or host memory: everything in one budget.
        let total = sum([all_weights, all_kv, compute, overhead]);
        let fits = total <= budget;
        return MachineFit {
            verdict: if fits { Verdict::Fits } else { Verdict::No },
            layers_offloaded: if fits { model.layers } else { 0 },
            weights_bytes: all_weights,
            kv_cache_bytes: all_kv,
            total_bytes: total,
            tokens_per_s: if fits {
                eff_bw(machine.bandwidth_gbps) / per_token_all.max(1) as f64
            } else {
                0.0
            },
            ..base
        };
    }
    // A GPU: the last K layers go to the device; the output head too when
    // K is every layer; the token embedding stays on the host.
    let fixed = compute.saturating_add(overhead);
    let layers_bytes = sum(model.layer_bytes.iter().copied());
    let full_device = sum([fixed, layers_bytes, all_kv, head]);
    let (k, device_weights, device_kv) = if full_device <= budget {
        (n, layers_bytes.saturating_add(head), all_kv)
    } else {
        let mut used = fixed;
        let (mut k, mut w, mut c) = (0usize, 0u64, 0u64);
        for i in (0..n).rev() {
            let add = model.layer_bytes[i].saturating_add(kv[i]);
            if used.saturating_add(add) > budget {
                break;
            }
            used = used.saturating_add(add);
            w = w.saturating_add(model.layer_bytes[i]);
            c = c.saturating_add(kv[i]);
            k += 1;
        }
        (k, w, c)
    };
    let total = if k == 0 {
        fixed
    } else {
        sum([fixed, device_weights, device_kv])
    };
    // The host keeps the token embedding and what is not on the device
    // (a tied head is a copy, so the embedding stays on the host too).
    let copied = if k == n { head - model.output_bytes } else { 0 };
    let host = all_weights
        .saturating_add(copied)
        .saturating_sub(device_weights);
    let verdict = match k {
        0 => Verdict::No,
        k if k == n => Verdict::Fits,
        _ => Verdict::Partial,
    };
    let tokens_per_s = if k == 0 {
        0.0
    } else {
        let on_device = |i: usize| i >= n - k;
        let mut dev = 0u64;
        let mut hostb = 0u64;
        for (i, (active, kv)) in model.layer_active_bytes.iter().zip(&kv_read).enumerate() {
            let b = active.saturating_add(*kv);
            if on_device(i) {
                dev = dev.saturating_add(b);
            } else {
                hostb = hostb.saturating_add(b);
            }
        }
        if k == n {
            dev = dev.saturating_add(head);
        } else {
            hostb = hostb.saturating_add(head);
        }
        let secs = dev as f64 / eff_bw(machine.bandwidth_gbps)
            + hostb as f64 / eff_bw(machine.host_bandwidth_gbps());
        if secs > 0.0 {
            1.0 / secs
        } else {
            0.0
        }
    };
    MachineFit {
        verdict,
        layers_offloaded: k as u32,
        weights_bytes: if k == 0 { 0 } else { device_weights },
        kv_cache_bytes: if k == 0 { 0 } else { device_kv },
        total_bytes: total,
        host_bytes: host,
        tokens_per_s,
        ..base
    }
}

/// Which quantization to pick for a machine.
#[derive(Clone, Debug, Serialize)]
pub struct Recommendation {
    /// The machine.
    pub machine: String,
    /// The best quantization that fits fully, if any.
    pub quant: Option<String>,
    /// Its estimate (or the best partial one when nothing fits fully).
    pub fit: MachineFit,
    /// In words.
    pub text: String,
}

/// The highest-quality quantization of `model` that fits `machine` fully,
/// else the one that offloads the most layers.
pub fn recommend(model: &ModelShape, machine: &Machine, opts: &FitOptions) -> Recommendation {
    let fits: Vec<(FileType, MachineFit)> = FileType::LADDER
        .iter()
        .map(|&ft| (ft, estimate(&model.requantized(ft), machine, opts)))
        .collect();
    let gb = |b: u64| b as f64 / 1e9;
    if let Some((ft, fit)) = fits.iter().find(|(_, f)| f.verdict == Verdict::Fits) {
        let better = fits
            .iter()
            .take_while(|(t, _)| t != ft)
            .last()
            .map(|(t, f)| match f.verdict {
                Verdict::Partial => format!(
                    "; {} would spill ({} of {} layers on the device)",
                    t.name(),
                    f.layers_offloaded,
                    f.layers
                ),
                _ => format!("; {} would not fit", t.name()),
            })
            .unwrap_or_default();
        return Recommendation {
            machine: machine.name.clone(),
            quant: Some(ft.name().to_owned()),
            text: format!(
                "{}: {} fits fully ({:.1} of {:.1} GB, ~{:.0} tokens/s){better}",
                machine.name,
                ft.name(),
                gb(fit.total_bytes),
                gb(fit.memory_budget_bytes),
                fit.tokens_per_s
            ),
            fit: fit.clone(),
        };
    }
    let best = fits
        .iter()
        .max_by_key(|(_, f)| f.layers_offloaded)
        .cloned()
        .filter(|(_, f)| f.layers_offloaded > 0);
    match best {
        Some((ft, fit)) => Recommendation {
            machine: machine.name.clone(),
            quant: None,
            text: format!(
                "{}: nothing fits fully at this context; {} puts {} of {} layers on the device (~{:.1} tokens/s)",
                machine.name,
                ft.name(),
                fit.layers_offloaded,
                fit.layers,
                fit.tokens_per_s
            ),
            fit,
        },
        None => {
            let smallest = &fits[fits.len() - 1].1;
            Recommendation {
                machine: machine.name.clone(),
                quant: None,
                text: format!(
                    "{}: does not fit even at Q2_K (weights alone {:.1} GB; budget {:.1} GB)",
                    machine.name,
                    gb(model.requantized(FileType::Q2_K).weights_bytes()),
                    gb(smallest.memory_budget_bytes)
                ),
                fit: smallest.clone(),
            }
        }
    }
}
