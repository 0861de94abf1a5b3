//! `flotilla fit` and `flotilla machines`: will a local model fit, where,
//! and how fast will it decode.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use flotilla_fit::estimate::{
    estimate, recommend, FitOptions, KvType, ModelShape, ShapeSpec, DEFAULT_CTX, EFFICIENCY,
};
use flotilla_fit::gguf::GgufFile;
use flotilla_fit::machines::{self, Machine};
use flotilla_fit::quant::FileType;
use serde_json::json;

use crate::config;
use crate::Paths;

/// Shown after `flotilla fit --help`.
pub const FIT_HELP: &str = "\
Examples:
  flotilla fit ~/models/gemma-3-12b-it-Q4_K_M.gguf
  flotilla fit model.gguf --ctx 8192 --kv-type q8_0 --json
  flotilla fit --params 12B --active 2.5B --quant Q4_K_M --layers 32 --kv-heads 8 --head-dim 128

Machines are this one (detected) plus the [[machines]] of config.toml:
  [[machines]]
  name = \"rtx3060\"        # kind: cuda | rocm | metal | cpu
  kind = \"cuda\"
  memory_gb = 12          # the budget the model may use
  bandwidth_gbps = 360
  endpoint = \"http://box:8080/v1\"   # optional

Only the file's header (metadata and tensor list) is read, never the weights.
Decode speed is memory bandwidth / bytes read per token, times the stated
efficiency; treat it as an estimate within a factor of 1.5.";

/// `flotilla fit`.
#[derive(Args, Debug)]
pub struct FitArgs {
    /// A GGUF model file.
    #[arg(conflicts_with_all = ["params", "quant", "layers", "kv_heads", "head_dim"])]
    model: Option<PathBuf>,
    /// Context length to plan for (default: the model's, up to 32768).
    #[arg(long)]
    ctx: Option<u64>,
    /// KV cache type: f16 (llama.cpp's default), q8_0, q4_0, f32.
    #[arg(long, default_value = "f16")]
    kv_type: String,
    /// Only this machine (repeat for several).
    #[arg(long = "machine", value_name = "NAME")]
    machines: Vec<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// Without a file: parameters (12B, 270M, 7e9).
    #[arg(long, value_parser = parse_count, requires_all = ["quant", "layers", "kv_heads", "head_dim"])]
    params: Option<u64>,
    /// Without a file: parameters active per token (MoE), e.g. 2.5B.
    #[arg(long, value_parser = parse_count, requires = "params")]
    active: Option<u64>,
    /// Without a file: the quantization (Q4_K_M, Q8_0, Q6_K, ...).
    #[arg(long, requires = "params")]
    quant: Option<String>,
    /// Without a file: repeating layers.
    #[arg(long, requires = "params")]
    layers: Option<u32>,
    /// Without a file: key/value heads per layer.
    #[arg(long, requires = "params")]
    kv_heads: Option<u64>,
    /// Without a file: dimension of a head.
    #[arg(long, requires = "params")]
    head_dim: Option<u64>,
    /// Without a file: vocabulary size (default 128256).
    #[arg(long, value_parser = parse_count, requires = "params")]
    vocab: Option<u64>,
    /// Without a file: trained context length (default: --ctx).
    #[arg(long, requires = "params")]
    context_length: Option<u64>,
}

/// `flotilla machines`.
#[derive(Args, Debug)]
pub struct MachinesArgs {
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Parses `12B`, `2.5B`, `270M`, `7e9`, `128256`, `32k`.
pub fn parse_count(s: &str) -> Result<u64, String> {
    let t = s.trim().replace('_', "");
    let (num, mult) = match t.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&t[..t.len() - 1], 1e3),
        Some('M') => (&t[..t.len() - 1], 1e6),
        Some('B') | Some('G') => (&t[..t.len() - 1], 1e9),
        Some('T') => (&t[..t.len() - 1], 1e12),
        _ => (t.as_str(), 1.0),
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a count: use e.g. 12B, 2.5B, 270M or 7e9"))?;
    let v = v * mult;
    if !(v.is_finite() && (1.0..1e16).contains(&v)) {
        return Err(format!("{s:?} is out of range"));
    }
    Ok(v.round() as u64)
}

/// This machine and the config's.
pub fn all_machines(paths: &Paths) -> Result<Vec<Machine>> {
    let cfg = config::load(&paths.config_file)?;
    let mut out = machines::detect();
    let configured = machines::from_config(&cfg.machines)
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("invalid [[machines]] in {}", paths.config_file.display()))?;
    out.extend(configured);
    Ok(out)
}

fn gb(b: u64) -> String {
    format!("{:.2} GB", b as f64 / 1e9)
}

fn count(n: u64) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.2}B", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.0}M", n as f64 / 1e6),
        n => n.to_string(),
    }
}

/// `flotilla fit`.
pub fn fit(paths: &Paths, args: FitArgs) -> Result<std::process::ExitCode> {
    let kv_type = KvType::parse(&args.kv_type)
        .with_context(|| format!("--kv-type {:?}: use f16, q8_0, q4_0 or f32", args.kv_type))?;
    let (model, file_name) = match (&args.model, args.params) {
        (Some(path), _) => {
            let file = GgufFile::read(path)?;
            let name = path.file_name().and_then(|n| n.to_str()).map(str::to_owned);
            let shape = ModelShape::from_gguf(&file, name.as_deref())
                .with_context(|| format!("estimating {}", path.display()))?;
            (shape, name)
        }
        (None, Some(params)) => {
            let quant = args.quant.as_deref().unwrap_or("Q4_K_M");
            let quant = FileType::parse(quant).with_context(|| {
                let names: Vec<&str> = FileType::ALL.iter().map(|t| t.name()).collect();
                format!("--quant {quant:?}: use one of {}", names.join(", "))
            })?;
            let spec = ShapeSpec {
                params,
                active_params: args.active,
                quant,
                layers: args.layers.unwrap_or(0),
                kv_heads: args.kv_heads.unwrap_or(0),
                head_dim: args.head_dim.unwrap_or(0),
                context_length: args.context_length,
                vocab: args.vocab,
                embedding_length: None,
            };
            let ctx = args.ctx.or(args.context_length).unwrap_or(DEFAULT_CTX);
            (ModelShape::from_spec(&spec, ctx)?, None)
        }
        (None, None) => anyhow::bail!(
            "give a GGUF file (`flotilla fit MODEL.gguf`) or the model's shape \
             (`--params 12B --quant Q4_K_M --layers 32 --kv-heads 8 --head-dim 128`)"
        ),
    };
    let trained = model.context_length;
    let ctx = args.ctx.unwrap_or(if trained > 0 {
        trained.min(DEFAULT_CTX)
    } else {
        DEFAULT_CTX
    });
    if ctx == 0 {
        anyhow::bail!("--ctx must be at least 1");
    }
    let mut machines = all_machines(paths)?;
    if !args.machines.is_empty() {
        for want in &args.machines {
            if !machines.iter().any(|m| &m.name == want) {
                let names: Vec<&str> = machines.iter().map(|m| m.name.as_str()).collect();
                anyhow::bail!(
                    "no machine named {want:?} (known: {}); add it as [[machines]] in {}",
                    names.join(", "),
                    paths.config_file.display()
                );
            }
        }
        machines.retain(|m| args.machines.contains(&m.name));
    }
    let opts = FitOptions { ctx, kv_type };
    let fits: Vec<_> = machines
        .iter()
        .map(|m| estimate(&model, m, &opts))
        .collect();
    let recs: Vec<_> = machines
        .iter()
        .map(|m| recommend(&model, m, &opts))
        .collect();
    if args.json {
        let out = json!({
            "model": {
                "name": model.name.clone().or(file_name),
                "architecture": model.architecture,
                "params": model.params,
                "active_params": model.active_params,
                "layers": model.layers,
                "context_length": model.context_length,
                "file_type": model.file_type,
                "weights_bytes": model.weights_bytes(),
            },
            "context": ctx,
            "kv_type": kv_type.name(),
            "efficiency": EFFICIENCY,
            "machines": fits,
            "recommendations": recs,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(std::process::ExitCode::SUCCESS);
    }
    println!(
        "model: {}{}  {}  {} params ({} active)  {} layers  trained context {}",
        model
            .name
            .clone()
            .or(file_name)
            .unwrap_or_else(|| "(shape)".into()),
        model
            .architecture
            .as_deref()
            .map(|a| format!(" [{a}]"))
            .unwrap_or_default(),
        model.file_type,
        count(model.params),
        count(model.active_params),
        model.layers,
        if model.context_length > 0 {
            model.context_length.to_string()
        } else {
            "unknown".into()
        }
    );
    println!(
        "weights {}; planning for a context of {ctx} with a {} KV cache\n",
        gb(model.weights_bytes()),
        kv_type.name()
    );
    println!(
        "{:<14} {:<5} {:>9}  {:<14} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8}",
        "MACHINE",
        "KIND",
        "BUDGET",
        "VERDICT",
        "WEIGHTS",
        "KV",
        "COMPUTE",
        "OVERHEAD",
        "TOTAL",
        "TOK/S"
    );
    for f in &fits {
        let verdict = match f.verdict {
            flotilla_fit::estimate::Verdict::Fits => "fits".to_owned(),
            flotilla_fit::estimate::Verdict::Partial => {
                format!("partial {}/{}", f.layers_offloaded, f.layers)
            }
            flotilla_fit::estimate::Verdict::No => "no".to_owned(),
        };
        println!(
            "{:<14} {:<5} {:>9}  {:<14} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8}",
            f.name,
            f.kind.name(),
            gb(f.memory_budget_bytes),
            verdict,
            gb(f.weights_bytes),
            gb(f.kv_cache_bytes),
            gb(f.compute_bytes),
            gb(f.overhead_bytes),
            gb(f.total_bytes),
            if f.tokens_per_s > 0.0 {
                format!("{:.1}", f.tokens_per_s)
            } else {
                "-".into()
            }
        );
    }
    let assumed: Vec<String> = machines
        .iter()
        .filter(|m| m.bandwidth_assumed)
        .map(|m| format!("{} ({} GB/s)", m.name, m.bandwidth_gbps))
        .collect();
    println!(
        "\ntokens/s = {EFFICIENCY} x bandwidth / bytes read per token (active weights, output head, KV of a half-full context){}",
        if assumed.is_empty() {
            String::new()
        } else {
            format!("; bandwidth assumed for {}", assumed.join(", "))
        }
    );
    println!("\nrecommendation:");
    for r in &recs {
        println!("  {}", r.text);
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// `flotilla machines`.
pub fn list(paths: &Paths, args: MachinesArgs) -> Result<std::process::ExitCode> {
    let machines = all_machines(paths)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&machines)?);
        return Ok(std::process::ExitCode::SUCCESS);
    }
    println!(
        "{:<14} {:<5} {:>10} {:>12}  {:<9} {:<24} DEVICE / NOTE",
        "NAME", "KIND", "MEMORY", "BANDWIDTH", "SOURCE", "ENDPOINT"
    );
    for m in &machines {
        println!(
            "{:<14} {:<5} {:>10} {:>12}  {:<9} {:<24} {}",
            m.name,
            m.kind.name(),
            gb(m.memory_bytes),
            format!(
                "{:.0} GB/s{}",
                m.bandwidth_gbps,
                if m.bandwidth_assumed { "?" } else { "" }
            ),
            m.source,
            m.endpoint.as_deref().unwrap_or("-"),
            [m.device.as_deref(), m.note.as_deref()]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    if machines.iter().any(|m| m.bandwidth_assumed) {
        println!(
            "\n? = bandwidth assumed (not a known device); set bandwidth_gbps in [[machines]]"
        );
    }
    Ok(std::process::ExitCode::SUCCESS)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn counts() {
        assert_eq!(parse_count("12B").unwrap(), 12_000_000_000);
        assert_eq!(parse_count("2.5B").unwrap(), 2_500_000_000);
        assert_eq!(parse_count("270M").unwrap(), 270_000_000);
        assert_eq!(parse_count("7e9").unwrap(), 7_000_000_000);
        assert_eq!(parse_count("128_256").unwrap(), 128_256);
        assert_eq!(parse_count("32k").unwrap(), 32_000);
        assert!(parse_count("abc").is_err());
        assert!(parse_count("-3B").is_err());
        assert!(parse_count("0").is_err());
    }
}
