//! `imbed plugins new`: parse the arguments, call the library's generator, say what to do next.

use std::path::PathBuf;

use imbed::template::{self, Kind, NewPlugin};

/// Write the crate and print the next steps; a refused name or folder is a usage error.
pub fn run(
    name: &str,
    kind: &str,
    dir: Option<PathBuf>,
    sdk: Option<PathBuf>,
) -> anyhow::Result<u8> {
    let usage = super::Usage::Template;
    let kind: Kind = kind.parse().map_err(usage)?;
    let mut plan = NewPlugin::new(name, kind);
    if let Some(dir) = dir {
        plan.dir = dir;
    }
    if let Some(sdk) = sdk {
        plan.sdk = sdk;
    }
    let generated = template::generate(&plan).map_err(|e| match e {
        template::TemplateError::Io { .. } => anyhow::Error::new(e),
        other => usage(other).into(),
    })?;
    let dir = generated.dir.display();
    println!("created {kind} plugin {name:?} in {dir}");
    println!("next:");
    println!("  cd {dir} && cargo build --release");
    println!("  imbed plugins check {}", generated.component.display());
    println!("  then add [plugins.{name}] and a chain step to your config: see {dir}/README.md");
    Ok(0)
}
