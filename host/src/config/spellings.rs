//! The same config data written in many valid TOML spellings must validate to the same
//! [`Config`]; a fault in any spelling must be reported with its file and line.

use super::*;
use std::path::Path;

use proptest::prelude::*;
use proptest::sample::select;

#[derive(Debug, Clone)]
enum Setting {
    Str(String),
    Int(i64),
    Bool(bool),
    Table(Vec<(String, String)>),
}

#[derive(Debug, Clone)]
struct Plugin {
    name: String,
    file: String,
    memory_mb: Option<u64>,
    instances: Option<usize>,
    warm: Option<bool>,
    http: Vec<String>,
    model_dir: Option<String>,
    settings: Vec<(String, Setting)>,
    /// A key that does not exist, for the fault cases.
    unknown_limit: bool,
}

#[derive(Debug, Clone)]
struct StepModel {
    kind: &'static str,
    /// (key, value) pairs, in the order they are written.
    fields: Vec<(&'static str, String)>,
}

#[derive(Debug, Clone)]
struct Model {
    require_space: Option<String>,
    steps: Vec<StepModel>,
    plugins: Vec<Plugin>,
    max_bytes: Option<u64>,
    listen: Option<String>,
}

/// How to write each part.
#[derive(Debug, Clone)]
struct Spelling {
    /// 0: `[chain]` + `[[chain.steps]]`; 1: `[[chain.steps]]` alone (require_space dotted
    /// at the top); 2: `[chain]` with `steps = [{...}]`; 3: top-level `chain = {...}`;
    /// 4: top-level dotted `chain.steps = [...]`.
    chain: u8,
    /// Per plugin: 0 sub-table headers; 1 dotted keys; 2 inline tables; 3 sub-tables
    /// before the plugin's own header; 4 the whole plugin inline under `[plugins]`.
    plugins: Vec<u8>,
    /// 0 `[input]`; 1 top-level dotted; 2 top-level inline.
    input: u8,
    /// Chain before the plugins or after.
    chain_first: bool,
    /// Write each table's keys in reverse.
    reverse_keys: bool,
}

fn q(s: &str) -> String {
    format!("{s:?}")
}

fn setting_value(v: &Setting) -> String {
    match v {
        Setting::Str(s) => q(s),
        Setting::Int(i) => i.to_string(),
        Setting::Bool(b) => b.to_string(),
        Setting::Table(kv) => inline(kv.iter().map(|(k, v)| (k.clone(), q(v))).collect()),
    }
}

fn inline(pairs: Vec<(String, String)>) -> String {
    let body: Vec<String> = pairs.iter().map(|(k, v)| format!("{k} = {v}")).collect();
    format!("{{ {} }}", body.join(", "))
}

fn ordered<T>(mut v: Vec<T>, reverse: bool) -> Vec<T> {
    if reverse {
        v.reverse();
    }
    v
}

fn limits(p: &Plugin) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Some(m) = p.memory_mb {
        out.push(("memory_mb".to_string(), m.to_string()));
    }
    if let Some(n) = p.instances {
        out.push(("instances".to_string(), n.to_string()));
    }
    if let Some(w) = p.warm {
        out.push(("warm".to_string(), w.to_string()));
    }
    if p.unknown_limit {
        out.push(("memroy_mb".to_string(), "3".to_string()));
    }
    out
}

fn grants(p: &Plugin) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if !p.http.is_empty() {
        let list: Vec<String> = p.http.iter().map(|h| q(h)).collect();
        out.push(("http".to_string(), format!("[{}]", list.join(", "))));
    }
    if let Some(d) = &p.model_dir {
        out.push(("model_dir".to_string(), q(d)));
    }
    out
}

/// Render the model. Top-level key/value lines must come before the first header.
fn render(m: &Model, s: &Spelling) -> String {
    let mut top: Vec<String> = Vec::new();
    let mut chain_part: Vec<String> = Vec::new();
    let mut plugin_part: Vec<String> = Vec::new();
    let mut rest: Vec<String> = Vec::new();
    let step_pairs = |st: &StepModel| -> Vec<(String, String)> {
        let mut v = vec![("kind".to_string(), q(st.kind))];
        v.extend(st.fields.iter().map(|(k, val)| (k.to_string(), q(val))));
        ordered(v, s.reverse_keys)
    };
    let steps_inline = || -> String {
        let items: Vec<String> = m.steps.iter().map(|st| inline(step_pairs(st))).collect();
        format!("[{}]", items.join(", "))
    };
    match s.chain {
        0 | 1 => {
            if let Some(rs) = &m.require_space {
                if s.chain == 0 {
                    chain_part.push("[chain]".into());
                    chain_part.push(format!("require_space = {}", q(rs)));
                } else {
                    top.push(format!("chain.require_space = {}", q(rs)));
                }
            } else if s.chain == 0 {
                chain_part.push("[chain]".into());
            }
            for st in &m.steps {
                chain_part.push("[[chain.steps]]".into());
                for (k, v) in step_pairs(st) {
                    chain_part.push(format!("{k} = {v}"));
                }
            }
        }
        2 => {
            chain_part.push("[chain]".into());
            if let Some(rs) = &m.require_space {
                chain_part.push(format!("require_space = {}", q(rs)));
            }
            chain_part.push(format!("steps = {}", steps_inline()));
        }
        3 => {
            let mut pairs = vec![("steps".to_string(), steps_inline())];
            if let Some(rs) = &m.require_space {
                pairs.push(("require_space".to_string(), q(rs)));
            }
            top.push(format!(
                "chain = {}",
                inline(ordered(pairs, s.reverse_keys))
            ));
        }
        _ => {
            if let Some(rs) = &m.require_space {
                top.push(format!("chain.require_space = {}", q(rs)));
            }
            top.push(format!("chain.steps = {}", steps_inline()));
        }
    }

    let mut inline_plugins: Vec<String> = Vec::new();
    for (p, how) in m.plugins.iter().zip(&s.plugins) {
        let settings: Vec<(String, String)> = p
            .settings
            .iter()
            .map(|(k, v)| (k.clone(), setting_value(v)))
            .collect();
        let header = format!("[plugins.{}]", p.name);
        let file = format!("file = {}", q(&p.file));
        let sub = |part: &mut Vec<String>, name: &str, pairs: Vec<(String, String)>| {
            if !pairs.is_empty() {
                part.push(format!("[plugins.{}.{name}]", p.name));
                for (k, v) in ordered(pairs, s.reverse_keys) {
                    part.push(format!("{k} = {v}"));
                }
            }
        };
        match how {
            0 | 3 => {
                let mut subs = Vec::new();
                sub(&mut subs, "limits", limits(p));
                sub(&mut subs, "grants", grants(p));
                // Table-valued settings as their own headers, after the scalars.
                let (tables, scalars): (Vec<_>, Vec<_>) = p
                    .settings
                    .iter()
                    .partition(|(_, v)| matches!(v, Setting::Table(_)));
                sub(
                    &mut subs,
                    "settings",
                    scalars
                        .iter()
                        .map(|(k, v)| (k.clone(), setting_value(v)))
                        .collect(),
                );
                for (k, v) in tables {
                    if let Setting::Table(kv) = v {
                        subs.push(format!("[plugins.{}.settings.{k}]", p.name));
                        for (kk, vv) in kv {
                            subs.push(format!("{kk} = {}", q(vv)));
                        }
                    }
                }
                if *how == 0 {
                    plugin_part.push(header);
                    plugin_part.push(file);
                    plugin_part.extend(subs);
                } else {
                    plugin_part.extend(subs);
                    plugin_part.push(header);
                    plugin_part.push(file);
                }
            }
            1 => {
                plugin_part.push(header);
                let mut lines = vec![file];
                for (k, v) in limits(p) {
                    lines.push(format!("limits.{k} = {v}"));
                }
                for (k, v) in grants(p) {
                    lines.push(format!("grants.{k} = {v}"));
                }
                for (k, v) in &p.settings {
                    match v {
                        Setting::Table(kv) => {
                            for (kk, vv) in kv {
                                lines.push(format!("settings.{k}.{kk} = {}", q(vv)));
                            }
                        }
                        other => lines.push(format!("settings.{k} = {}", setting_value(other))),
                    }
                }
                plugin_part.extend(ordered(lines, s.reverse_keys));
            }
            2 => {
                plugin_part.push(header);
                let mut lines = vec![file];
                if !limits(p).is_empty() {
                    lines.push(format!("limits = {}", inline(limits(p))));
                }
                if !grants(p).is_empty() {
                    lines.push(format!("grants = {}", inline(grants(p))));
                }
                if !settings.is_empty() {
                    lines.push(format!("settings = {}", inline(settings.clone())));
                }
                plugin_part.extend(ordered(lines, s.reverse_keys));
            }
            _ => {
                let mut pairs = vec![("file".to_string(), q(&p.file))];
                if !limits(p).is_empty() {
                    pairs.push(("limits".to_string(), inline(limits(p))));
                }
                if !grants(p).is_empty() {
                    pairs.push(("grants".to_string(), inline(grants(p))));
                }
                if !settings.is_empty() {
                    pairs.push(("settings".to_string(), inline(settings.clone())));
                }
                inline_plugins.push(format!(
                    "{} = {}",
                    p.name,
                    inline(ordered(pairs, s.reverse_keys))
                ));
            }
        }
    }
    if !inline_plugins.is_empty() {
        // One `[plugins]` header for every plugin written inline; it must come before the
        // `[plugins.x]` headers would define `plugins` implicitly... either order is valid.
        let mut part = vec!["[plugins]".to_string()];
        part.extend(inline_plugins);
        part.extend(plugin_part);
        plugin_part = part;
    }

    if let Some(n) = m.max_bytes {
        match s.input {
            0 => rest.extend(["[input]".to_string(), format!("max_bytes = {n}")]),
            1 => top.push(format!("input.max_bytes = {n}")),
            _ => top.push(format!("input = {{ max_bytes = {n} }}")),
        }
    }
    if let Some(l) = &m.listen {
        rest.extend(["[server]".to_string(), format!("listen = {}", q(l))]);
    }

    let mut out = top;
    if s.chain_first {
        out.extend(chain_part);
        out.extend(plugin_part);
    } else {
        out.extend(plugin_part);
        out.extend(chain_part);
    }
    out.extend(rest);
    out.join("\n") + "\n"
}

fn word() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9_]{0,6}"
}

fn setting() -> impl Strategy<Value = Setting> {
    prop_oneof![
        // Printable ASCII but `$`: a setting's `${NAME}` is expanded from the environment,
        // so a generated `${` would be a (correctly refused) reference, not a spelling.
        "[ -#%-~]{0,12}".prop_map(Setting::Str),
        any::<i32>().prop_map(|i| Setting::Int(i64::from(i))),
        any::<bool>().prop_map(Setting::Bool),
        proptest::collection::btree_map(word(), "[a-z ]{0,8}", 1..3)
            .prop_map(|m| Setting::Table(m.into_iter().collect())),
    ]
}

fn plugin(name: String) -> impl Strategy<Value = Plugin> {
    (
        "[a-z]{1,8}\\.wasm",
        proptest::option::of(1u64..4096),
        proptest::option::of(1usize..8),
        proptest::option::of(any::<bool>()),
        proptest::collection::vec(
            select(vec!["http://localhost:11434", "https://api.example.com"]),
            0..2,
        ),
        proptest::option::of("/models/[a-z]{1,6}"),
        proptest::collection::btree_map(word(), setting(), 0..4),
    )
        .prop_map(
            move |(file, memory_mb, instances, warm, http, model_dir, settings)| Plugin {
                name: name.clone(),
                file,
                memory_mb,
                instances,
                warm,
                http: http
                    .into_iter()
                    .map(str::to_string)
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .collect(),
                model_dir,
                settings: settings.into_iter().collect(),
                unknown_limit: false,
            },
        )
}

fn model() -> impl Strategy<Value = Model> {
    (1usize..4)
        .prop_flat_map(|n| {
            let plugins: Vec<_> = (0..n).map(|i| plugin(format!("p{i}"))).collect();
            (plugins, Just(n))
        })
        .prop_flat_map(|(plugins, n)| {
            let names: Vec<String> = (0..n).map(|i| format!("p{i}")).collect();
            let step = (
                0u8..4,
                select(names.clone()),
                select(names),
                proptest::option::of("[a-z ]{1,10}"),
            )
                .prop_map(|(kind, a, b, prompt)| match kind {
                    0 => StepModel {
                        kind: "describe-then-embed",
                        fields: [
                            ("describer", Some(a)),
                            ("embedder", Some(b)),
                            ("prompt", prompt),
                        ]
                        .into_iter()
                        .filter_map(|(k, v)| v.map(|v| (k, v)))
                        .collect(),
                    },
                    1 => StepModel {
                        kind: "image-embed",
                        fields: vec![("plugin", a)],
                    },
                    2 => StepModel {
                        kind: "description",
                        fields: vec![("embedder", a)],
                    },
                    _ => StepModel {
                        kind: "hash",
                        fields: vec![("plugin", a)],
                    },
                });
            (
                Just(plugins),
                proptest::collection::vec(step, 1..4),
                proptest::option::of("[a-z]{1,5}/[a-z]{1,5}"),
                proptest::option::of(1u64..1_000_000),
                proptest::option::of(select(vec!["127.0.0.1:9000", "0.0.0.0:80"])),
            )
        })
        .prop_map(|(plugins, steps, require_space, max_bytes, listen)| Model {
            require_space,
            steps,
            plugins,
            max_bytes,
            listen: listen.map(str::to_string),
        })
}

fn spelling(n_plugins: usize) -> impl Strategy<Value = Spelling> {
    (
        0u8..5,
        proptest::collection::vec(0u8..5, n_plugins),
        0u8..3,
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(chain, plugins, input, chain_first, reverse_keys)| Spelling {
                chain,
                plugins,
                input,
                chain_first,
                reverse_keys,
            },
        )
}

fn canonical(n: usize) -> Spelling {
    Spelling {
        chain: 0,
        plugins: vec![0; n],
        input: 0,
        chain_first: true,
        reverse_keys: false,
    }
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml_str(
        text,
        "spelled.toml",
        Some(Path::new("/cfg")),
        &Env::isolated(),
    )
}

/// A fault planted in the model, and the text that marks the line it must be reported on.
#[derive(Debug, Clone, Copy)]
enum Fault {
    UnknownLimit,
    ZeroMemory,
    MissingPlugin,
    UnknownKind,
}

fn plant(m: &mut Model, fault: Fault, which: usize) -> &'static str {
    let p = which % m.plugins.len();
    let st = which % m.steps.len();
    match fault {
        Fault::UnknownLimit => {
            m.plugins[p].unknown_limit = true;
            "memroy_mb"
        }
        Fault::ZeroMemory => {
            m.plugins[p].memory_mb = Some(0);
            "memory_mb = 0"
        }
        Fault::MissingPlugin => {
            m.steps[st] = StepModel {
                kind: "hash",
                fields: vec![("plugin", "nope".into())],
            };
            "\"nope\""
        }
        Fault::UnknownKind => {
            m.steps[st] = StepModel {
                kind: "magic",
                fields: vec![("plugin", "p0".into())],
            };
            "\"magic\""
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 192, ..ProptestConfig::default() })]

    #[test]
    fn every_spelling_means_the_same(
        (m, s) in model().prop_flat_map(|m| { let n = m.plugins.len(); (Just(m), spelling(n)) })
    ) {
        let reference = render(&m, &canonical(m.plugins.len()));
        let want = parse(&reference);
        prop_assert!(want.is_ok(), "canonical spelling refused: {:?}\n{}", want.err().map(|e| e.to_string()), reference);
        let text = render(&m, &s);
        let got = parse(&text);
        prop_assert!(got.is_ok(), "refused: {}\n---\n{}", got.as_ref().err().map(|e| e.to_string()).unwrap_or_default(), text);
        prop_assert_eq!(got.unwrap(), want.unwrap(), "\n{}", text);
    }

    #[test]
    fn a_fault_in_any_spelling_names_file_and_line(
        (mut m, s) in model().prop_flat_map(|m| { let n = m.plugins.len(); (Just(m), spelling(n)) }),
        fault in select(vec![Fault::UnknownLimit, Fault::ZeroMemory, Fault::MissingPlugin, Fault::UnknownKind]),
        which in 0usize..8,
    ) {
        let marker = plant(&mut m, fault, which);
        let text = render(&m, &s);
        let line = text.lines().position(|l| l.contains(marker)).map(|i| i + 1);
        prop_assert!(line.is_some(), "marker {} not rendered:\n{}", marker, text);
        let msg = match parse(&text) {
            Ok(_) => { prop_assert!(false, "accepted a config with {:?}:\n{}", fault, text); unreachable!() }
            Err(e) => e.to_string(),
        };
        let prefix = format!("spelled.toml:{}:", line.unwrap());
        prop_assert!(msg.starts_with(&prefix), "{:?}: {} (want {})\n---\n{}", fault, msg, prefix, text);
        let says = match fault {
            Fault::UnknownLimit => "memroy_mb",
            Fault::ZeroMemory => "memory_mb must be from 1",
            Fault::MissingPlugin => "no [plugins.nope] section",
            Fault::UnknownKind => "use describe-then-embed, image-embed, description or hash",
        };
        prop_assert!(msg.contains(says), "{}", msg);
    }
}
