//! GGUF metadata reading, memory-fit estimation and machine detection for
//! local models.

pub mod gguf;
