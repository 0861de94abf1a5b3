//! The estimator on whatever `GgufFile::parse` accepts: shapes from a file
//! are untrusted, so `ModelShape::from_gguf`, `estimate` and `recommend`
//! must return, never panic or overflow, and a verdict must respect the
//! machine's budget.
#![no_main]

use flotilla_fit::estimate::{estimate, recommend, FitOptions, KvType, ModelShape, Verdict};
use flotilla_fit::gguf::GgufFile;
use flotilla_fit::machines::{MachineConfig, MachineKind};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(g) = GgufFile::parse(data) else {
        return;
    };
    let Ok(shape) = ModelShape::from_gguf(&g, None) else {
        return;
    };
    let machines = [
        (MachineKind::Cuda, 12.0),
        (MachineKind::Metal, 24.0),
        (MachineKind::Cpu, 0.5),
    ]
    .map(|(kind, memory_gb)| {
        MachineConfig {
            name: "m".into(),
            kind,
            memory_gb,
            bandwidth_gbps: Some(300.0),
            host_bandwidth_gbps: None,
            endpoint: None,
            slots: None,
        }
        .to_machine()
    });
    let ctx = u64::from(data.first().copied().unwrap_or(0)) << (data.len() % 40);
    for m in machines.iter().flatten() {
        for kv_type in [KvType::F16, KvType::Q4_0] {
            let opts = FitOptions { ctx, kv_type };
            let f = estimate(&shape, m, &opts);
            if f.verdict != Verdict::No {
                assert!(f.total_bytes <= f.memory_budget_bytes, "{f:?}");
                assert!(f.layers_offloaded <= f.layers);
            }
            assert!(f.tokens_per_s.is_finite() && f.tokens_per_s >= 0.0);
            let _ = recommend(&shape, m, &opts);
        }
    }
});
