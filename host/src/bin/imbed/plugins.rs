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
        println!(
            "    limits:  {} MiB memory, {} ms per call, {} instance{}",
            s.memory_mb,
            s.timeout_ms,
            s.instances,
            if s.instances == 1 { "" } else { "s" }
        );
    }
    Ok(exit::OK)
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
