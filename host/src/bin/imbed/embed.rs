//! `imbed embed` and `imbed embed-text`: embed images or texts and print one result per input.

use std::io::Write;
use std::path::PathBuf;

use clap::ValueEnum;
use futures::StreamExt;
use imbed::{Config, Embedding, Error, ImageRequest, ImageSource};
use serde_json::{json, Value};

use super::{collection, exit, Usage};

#[derive(Copy, Clone, PartialEq, Eq, ValueEnum)]
pub(crate) enum Output {
    /// One JSON object per line.
    Jsonl,
    /// One pretty-printed JSON array.
    Json,
}

fn parse_input(arg: &str, stdin_used: &mut bool, max_bytes: u64) -> anyhow::Result<ImageSource> {
    if arg == "-" {
        if std::mem::replace(stdin_used, true) {
            return Err(Usage::StdinTwice.into());
        }
        // Never more than the cap: `imbed embed - < /dev/zero` must end, and quickly.
        let bytes = imbed::input::read_capped(std::io::stdin().lock(), "<stdin>", max_bytes)
            .map_err(Error::from)?;
        return Ok(ImageSource::Bytes(bytes));
    }
    if arg.starts_with("http://") || arg.starts_with("https://") {
        return Ok(ImageSource::Url(arg.to_string()));
    }
    if arg.starts_with("data:") {
        return Ok(ImageSource::Base64(arg.to_string()));
    }
    Ok(ImageSource::Path(PathBuf::from(arg)))
}

struct Printer {
    output: Output,
    items: Vec<Value>,
}

impl Printer {
    fn new(output: Output) -> Self {
        Printer {
            output,
            items: Vec::new(),
        }
    }

    fn emit(&mut self, value: Value) -> anyhow::Result<()> {
        match self.output {
            Output::Jsonl => {
                let mut out = std::io::stdout().lock();
                serde_json::to_writer(&mut out, &value)?;
                out.write_all(b"\n")?;
                out.flush()?;
            }
            Output::Json => self.items.push(value),
        }
        Ok(())
    }

    fn finish(self) -> anyhow::Result<()> {
        if self.output == Output::Json {
            let mut out = std::io::stdout().lock();
            serde_json::to_writer_pretty(&mut out, &self.items)?;
            out.write_all(b"\n")?;
        }
        Ok(())
    }
}

/// One result line: the embedding, or the error with every attempt.
fn result_json(input: &str, result: &Result<Embedding, Error>) -> (Value, u8) {
    match result {
        Ok(e) => (
            json!({ "input": input, "vector": e.vector, "provenance": e.provenance }),
            exit::OK,
        ),
        Err(err) => {
            let (kind, attempts, code) = match err {
                Error::Exhausted { attempts } => ("exhausted", attempts.clone(), exit::EXHAUSTED),
                Error::Input(_) => ("bad-input", Vec::new(), exit::BAD_INPUT),
                Error::Usage(_) => ("bad-input", Vec::new(), exit::BAD_INPUT),
                _ => ("error", Vec::new(), exit::EXHAUSTED),
            };
            eprintln!("imbed: {input}: {err}");
            (
                json!({ "input": input, "error": { "kind": kind, "message": err.to_string(), "attempts": attempts } }),
                code,
            )
        }
    }
}

/// The worst of several exit codes: bad input beats an exhausted chain beats success.
fn worst(a: u8, b: u8) -> u8 {
    let rank = |c: u8| match c {
        exit::BAD_INPUT => 2,
        exit::EXHAUSTED => 1,
        _ => 0,
    };
    if rank(b) > rank(a) {
        b
    } else {
        a
    }
}

fn warn_degraded(label: &str, e: &Embedding) {
    if e.provenance.degraded {
        let reasons: Vec<String> = e
            .provenance
            .attempts
            .iter()
            .map(|a| format!("  - {a}"))
            .collect();
        eprintln!(
            "imbed: {label}: answered by step {} ({}, space {:?}) after earlier steps failed:\n{}",
            e.provenance.step,
            e.provenance.step_kind,
            e.provenance.space,
            reasons.join("\n")
        );
    }
}

pub(crate) async fn embed(
    config: Config,
    inputs: Vec<String>,
    base64: Vec<String>,
    description: Option<String>,
    output: Output,
    concurrency: usize,
) -> anyhow::Result<u8> {
    if inputs.is_empty() && base64.is_empty() {
        return Err(Usage::NoImages.into());
    }
    let mut stdin_used = false;
    let mut labels = Vec::new();
    let mut requests = Vec::new();
    // A folder stands for every image under it.
    let mut expanded = Vec::new();
    for arg in inputs {
        if std::path::Path::new(&arg).is_dir() {
            let (found, problems) = imbed::index::find_images(&[PathBuf::from(&arg)]);
            for p in problems {
                eprintln!("imbed: skipping {p}");
            }
            if found.is_empty() {
                eprintln!("imbed: {arg}: no images in this folder");
            }
            expanded.extend(found.into_iter().map(|p| p.display().to_string()));
        } else {
            expanded.push(arg);
        }
    }
    let inputs = expanded;
    for arg in &inputs {
        let source = parse_input(arg, &mut stdin_used, config.input.max_bytes)?;
        labels.push(if arg == "-" {
            "<stdin>".to_string()
        } else {
            arg.clone()
        });
        requests.push(source);
    }
    for (i, b) in base64.into_iter().enumerate() {
        labels.push(format!("<base64 #{}>", i + 1));
        requests.push(ImageSource::Base64(b));
    }
    let requests: Vec<ImageRequest> = requests
        .into_iter()
        .map(|s| {
            let r = ImageRequest::new(s);
            match &description {
                Some(d) => r.with_description(d.clone()),
                None => r,
            }
        })
        .collect();

    let imbed = collection::imbed_with_cache(config).await?;
    let mut printer = Printer::new(output);
    let mut code = exit::OK;
    let mut results = imbed.embed_images(requests, concurrency).enumerate();
    while let Some((i, result)) = results.next().await {
        if let Ok(e) = &result {
            warn_degraded(&labels[i], e);
        }
        let (value, c) = result_json(&labels[i], &result);
        code = worst(code, c);
        printer.emit(value)?;
    }
    printer.finish()?;
    Ok(code)
}

pub(crate) async fn embed_text(
    config: Config,
    texts: Vec<String>,
    output: Output,
) -> anyhow::Result<u8> {
    let imbed = collection::imbed_with_cache(config).await?;
    let mut printer = Printer::new(output);
    let mut code = exit::OK;
    for text in &texts {
        let result = imbed.embed_text(text).await;
        if let Ok(e) = &result {
            warn_degraded(text, e);
        }
        let (value, c) = result_json(text, &result);
        code = worst(code, c);
        printer.emit(value)?;
    }
    printer.finish()?;
    Ok(code)
}
