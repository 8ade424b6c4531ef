//! `imbed plugins` and `imbed plugins check`: what is configured and loaded, and what a
//! component file is.

use imbed::{Config, Imbed, PluginHealth};
use serde_json::json;

use super::exit;

fn roles_text(roles: &imbed::Roles) -> String {
    let mut r = Vec::new();
    if roles.describer {
        r.push("describer");
    }
    if roles.text_embedder {
        r.push("text-embedder");
    }
    if roles.image_embedder {
        r.push("image-embedder");
    }
    r.join(", ")
}

pub(crate) async fn list(config: Config, json_out: bool) -> anyhow::Result<u8> {
    let imbed = Imbed::new(config).await?;
    imbed.verify_nn_graphs().await;
    let statuses = imbed.plugins();
    if json_out {
        println!("{}", serde_json::to_string_pretty(&statuses)?);
        return Ok(exit::OK);
    }
    for s in &statuses {
        match &s.health {
            PluginHealth::Ready {
                name,
                version,
                roles,
                from_cache,
                load_ms,
            } => println!(
                "{}: ready — {name} {version}, {} ({load_ms:.1} ms{})",
                s.key,
                roles_text(roles),
                if *from_cache {
                    ", compiled copy from cache"
                } else {
                    ", compiled now"
                }
            ),
            PluginHealth::Failed { kind, message } => {
                println!("{}: not available ({kind}) — {message}", s.key)
            }
        }
        println!("    file:    {}", s.path.display());
        let http = if s.http.is_empty() {
            "none".to_string()
        } else {
            s.http.join(", ")
        };
        let env = if s.env.is_empty() {
            "none".to_string()
        } else {
            s.env.join(", ")
        };
        let dir = s
            .model_dir
            .as_ref()
            .map(|d| format!("{} (read-only, at /model)", d.display()));
        println!(
            "    grants:  http {http}; env {env}; files {}",
            dir.unwrap_or_else(|| "none".into())
        );
        match &s.model_name {
            Some(m) if m.from == "manifest" => {
                println!(
                    "    model:   {} (from the folder's imbed-model.json)",
                    m.name
                )
            }
            Some(m) => println!(
                "    model:   {} (named after its folder: it has no imbed-model.json)",
                m.name
            ),
            None => {}
        }
        println!(
            "    limits:  {} MiB memory, {} ms per call, {} instance{}",
            s.memory_mb,
            s.timeout_ms,
            s.instances,
            if s.instances == 1 { "" } else { "s" }
        );
        if let Some(nn) = &s.nn {
            print_nn(nn);
        }
    }
    Ok(exit::OK)
}

/// The wasi-nn lines of `imbed plugins`.
fn print_nn(nn: &imbed::NnStatus) {
    let mib = |b: u64| b.div_ceil(1 << 20);
    let lib = &nn.library;
    let library = match (&lib.path, &lib.version, &lib.problem) {
        (_, _, Some(problem)) => format!("not usable — {problem}"),
        (Some(path), Some(version), None) => format!(
            "ONNX Runtime {version} at {}{}",
            path.display(),
            if lib.loaded { " (loaded)" } else { "" }
        ),
        _ => "unknown".into(),
    };
    println!(
        "    nn:      {} MiB of {} MiB native memory in use, {} thread{} per graph; library: {library}",
        mib(nn.memory_used_bytes),
        mib(nn.memory_budget_bytes),
        nn.threads,
        if nn.threads == 1 { "" } else { "s" }
    );
    for g in &nn.graphs {
        let memory = g
            .memory_bytes
            .map(|b| format!(", {} MiB", mib(b)))
            .unwrap_or_default();
        let problem = g
            .problem
            .as_ref()
            .map(|p| format!(" — {p}"))
            .unwrap_or_default();
        println!(
            "      graph {:?}: {}{memory} ({}){problem}",
            g.name,
            g.state,
            g.file.display()
        );
    }
}

pub(crate) async fn check(file: &std::path::Path, json_out: bool) -> anyhow::Result<u8> {
    let (report, health) = match imbed::check_plugin(file).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("imbed: {e}");
            return Ok(exit::BAD_INPUT);
        }
    };
    let ok = matches!(health, PluginHealth::Ready { .. });
    if json_out {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({ "component": report, "health": health }))?
        );
    } else {
        println!("{}:", file.display());
        match &report.contract {
            Some(v) => println!("  contract:     imbed:plugin@{v}"),
            None => println!("  contract:     none (it does not export imbed:plugin/plugin)"),
        }
        match &health {
            PluginHealth::Ready {
                name,
                version,
                roles,
                ..
            } => {
                println!(
                    "  loads:        yes — {name} {version}, {}",
                    roles_text(roles)
                )
            }
            PluginHealth::Failed { message, .. } => println!("  loads:        NO — {message}"),
        }
        println!("  exports:      {}", report.exports.join(", "));
        println!("  imports:      {}", report.imports.join(", "));
        if report.capabilities.is_empty() {
            println!("  capabilities: none");
        } else {
            for c in &report.capabilities {
                println!("  capability:   {c}");
            }
        }
    }
    Ok(if ok { exit::OK } else { exit::BAD_INPUT })
}
