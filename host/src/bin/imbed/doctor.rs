//! `imbed doctor` and `imbed config check`: diagnosis, printed for a person or as JSON.

use imbed::{Config, Imbed, PluginHealth};
use serde_json::json;

use super::exit;

pub(crate) async fn config_check(config: Config, json_out: bool) -> anyhow::Result<u8> {
    let source = config.source.clone();
    let steps: Vec<String> = config
        .chain
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| format!("{i}: {} ({})", s.kind(), s.plugins().join(" + ")))
        .collect();
    let require_space = config.chain.require_space.clone();
    let imbed = Imbed::new(config).await?;
    let statuses = imbed.plugins();
    let usable = imbed
        .config()
        .chain
        .steps
        .iter()
        .filter(|step| {
            step.plugins().iter().all(|p| {
                statuses
                    .iter()
                    .any(|s| s.key == *p && matches!(s.health, PluginHealth::Ready { .. }))
            })
        })
        .count();
    if json_out {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "config": source, "valid": true, "steps": steps, "require_space": require_space,
                "usable_steps": usable, "plugins": statuses,
            }))?
        );
    } else {
        println!("config {source}: valid");
        if let Some(space) = &require_space {
            println!("only answers in space {space:?} are accepted");
        }
        println!("chain:");
        for s in &steps {
            println!("  {s}");
        }
        for s in &statuses {
            match &s.health {
                PluginHealth::Ready { name, version, .. } => {
                    println!("plugin {}: loads ({name} {version})", s.key)
                }
                PluginHealth::Failed { message, .. } => {
                    println!("plugin {}: does not load — {message}", s.key)
                }
            }
        }
        println!("{usable} of {} steps have all their plugins", steps.len());
    }
    // The config is valid even when plugins are missing; those steps are skipped at run time.
    Ok(exit::OK)
}

pub(crate) async fn doctor(config: Config, json_out: bool) -> anyhow::Result<u8> {
    let imbed = Imbed::new(config).await?;
    let report = imbed::doctor::run(&imbed).await;
    let code = if report.can_answer() {
        exit::OK
    } else {
        exit::EXHAUSTED
    };
    if json_out {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(code);
    }
    println!("config: {}", report.config);
    for p in &report.plugins {
        match &p.health {
            PluginHealth::Ready { name, version, .. } => {
                println!("plugin {}: loads ({name} {version})", p.key)
            }
            PluginHealth::Failed { message, .. } => {
                println!("plugin {}: DOES NOT LOAD — {message}", p.key)
            }
        }
        let Some(check) = report.health.iter().find(|h| h.plugin == p.key) else {
            continue;
        };
        if let Some(e) = &check.error {
            println!("  health: CANNOT CHECK — {e}");
        } else if !check.reported {
            println!(
                "  health: unknown (built for contract {}, which has no health check; see the steps below)",
                check.contract
            );
        }
        for c in &check.checks {
            use imbed::HealthStatus as S;
            let fix = c
                .fix
                .as_deref()
                .map(|f| format!(": {f}"))
                .unwrap_or_default();
            match c.status {
                S::Ok => println!("  {}: ok — {}", c.name, c.detail),
                S::Degraded => println!("  {}: DEGRADED — {}{fix}", c.name, c.detail),
                S::Failing => println!("  {}: PROBLEM — {}{fix}", c.name, c.detail),
                S::Unknown => println!("  {}: unknown — {}", c.name, c.detail),
            }
        }
    }
    for (plugin, endpoints) in &report.endpoints {
        println!("endpoints of {plugin}:");
        for e in endpoints {
            let url = e.base_url.as_deref().unwrap_or("-");
            match e.state {
                imbed::EndpointState::Up => println!(
                    "  {url}: up, {} of {} in flight, {} calls",
                    e.in_flight, e.concurrency, e.calls
                ),
                _ => println!(
                    "  {url}: DOWN (out of the pool until its health probe passes) — {}",
                    e.last_error.as_deref().unwrap_or("no error recorded")
                ),
            }
        }
    }
    for d in &report.model_dirs {
        if let (Some(model), Some(state)) = (&d.model, d.state) {
            use imbed::models::ModelState;
            let what = match state {
                ModelState::Complete => "complete",
                ModelState::Incomplete => "INCOMPLETE",
                ModelState::Corrupt => "CORRUPT",
                _ => "MISSING",
            };
            println!(
                "model files for {}: {model} {what} in {}",
                d.plugin,
                d.dir.display()
            );
            if state == ModelState::Absent {
                println!("  run `imbed models pull {model}`");
            }
            for p in &d.problems {
                println!("  {p}");
            }
        } else if d.exists {
            println!(
                "model files for {}: {} ({})",
                d.plugin,
                d.dir.display(),
                d.files.join(", ")
            );
        } else {
            println!(
                "model files for {}: MISSING — {} does not exist",
                d.plugin,
                d.dir.display()
            );
        }
    }
    println!("chain steps, tried on a test image:");
    for s in &report.steps {
        let what = format!("{} {} ({})", s.step, s.kind, s.plugins.join(" + "));
        match (&s.space, &s.problem) {
            (Some(space), _) => println!("  {what}: can answer, space {space}"),
            (_, problem) => println!(
                "  {what}: cannot answer — {}",
                problem.as_deref().unwrap_or("unknown")
            ),
        }
    }
    if !report.can_answer() {
        println!("no step can answer: fix one of the problems above");
    }
    Ok(code)
}
