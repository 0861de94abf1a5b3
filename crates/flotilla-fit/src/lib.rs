//! GGUF metadata reading, memory-fit estimation and machine detection for
//! local models.
//!
//! - [`gguf`]: the header of a GGUF file (metadata, tensor infos), never
//!   the weights; malformed input is an error naming the byte offset.
//! - [`quant`]: llama.cpp's choice of a type per tensor for a file type,
//!   to predict what a model weighs in another quantization.
//! - [`estimate`]: weights, KV cache, compute buffer and overhead on a
//!   machine, partial offload, decode speed, a recommendation.
//! - [`machines`]: this machine (NVIDIA, AMD, Apple, else RAM) and the
//!   `[[machines]]` of the config.

pub mod estimate;
pub mod gguf;
pub mod machines;
pub mod quant;
