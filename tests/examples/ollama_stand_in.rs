//! The Ollama stand-in as a program, for test suites outside cargo (the Python wheel's pytest
//! suite starts it). Prints its base URL on the first line of stdout and serves until stdin is
//! closed. `--latency-ms N` delays every model request by N ms (a slow vision model).
//!
//! An example rather than a binary: `cargo test` builds examples with the test build's
//! features, so it costs no extra compilation.

use std::io::{BufRead, Write};
use std::time::Duration;

use imbed_tests::ollama::OllamaStandIn;

fn main() {
    let mut latency = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next().map(|v| v.parse::<u64>())) {
            ("--latency-ms", Some(Ok(ms))) => latency = Some(Duration::from_millis(ms)),
            _ => {
                eprintln!("usage: ollama_stand_in [--latency-ms N]");
                std::process::exit(2);
            }
        }
    }
    let ollama = OllamaStandIn::start();
    if let Some(latency) = latency {
        ollama.set_latency(latency);
    }
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", ollama.base_url());
    let _ = out.flush();
    // Serve until whoever started it closes our stdin (or dies).
    for line in std::io::stdin().lock().lines() {
        if line.is_err() {
            break;
        }
    }
}
