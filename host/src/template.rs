//! `imbed plugins new`: a new plugin crate from the templates in `host/templates/plugin/`.
//!
//! The generated crate builds to a component with a plain `cargo build --release` (its own
//! `.cargo/config.toml` picks `wasm32-wasip2`), implements the chosen roles with small but real
//! example logic on the guest SDK (`plugins/sdk`), has native unit tests, and a README with the
//! next steps. The templates are compiled into the binary, so `imbed` needs no data files.

use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;

/// The roles a new plugin implements, named after the contract's worlds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Text to vectors.
    Embedder,
    /// Images to vectors.
    ImageEmbedder,
    /// Image to text.
    Describer,
    /// Text and images to vectors (like the hash plugin or CLIP).
    DualEmbedder,
    /// Image to text and text to vectors (like the Ollama plugin).
    DescriberEmbedder,
    /// All three roles.
    Backend,
}

impl Kind {
    /// Every kind, in the order `--help` lists them.
    pub const ALL: [Kind; 6] = [
        Kind::Embedder,
        Kind::ImageEmbedder,
        Kind::Describer,
        Kind::DualEmbedder,
        Kind::DescriberEmbedder,
        Kind::Backend,
    ];

    /// The name on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Embedder => "embedder",
            Kind::ImageEmbedder => "image-embedder",
            Kind::Describer => "describer",
            Kind::DualEmbedder => "dual-embedder",
            Kind::DescriberEmbedder => "describer-embedder",
            Kind::Backend => "backend",
        }
    }

    fn describer(self) -> bool {
        matches!(
            self,
            Kind::Describer | Kind::DescriberEmbedder | Kind::Backend
        )
    }

    fn embedder(self) -> bool {
        matches!(
            self,
            Kind::Embedder | Kind::DualEmbedder | Kind::DescriberEmbedder | Kind::Backend
        )
    }

    fn image_embedder(self) -> bool {
        matches!(
            self,
            Kind::ImageEmbedder | Kind::DualEmbedder | Kind::Backend
        )
    }

    /// Whether the example decodes pixels (and so needs the SDK's `image` feature).
    fn reads_pixels(self) -> bool {
        self.describer() || self.image_embedder()
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Kind {
    type Err = TemplateError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Kind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| TemplateError::Kind(s.to_string()))
    }
}

/// Why no crate was written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TemplateError {
    /// The plugin name is not usable as a crate, config key and plugin name.
    #[error("plugin name {name:?} {why}: use lowercase letters, digits and single dashes, starting with a letter (e.g. `my-backend`)")]
    Name {
        /// The name given.
        name: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// An unknown `--kind`.
    #[error("unknown plugin kind {0:?}: use one of embedder, image-embedder, describer, dual-embedder, describer-embedder, backend")]
    Kind(String),
    /// The target folder exists and is not empty.
    #[error("{} already exists and is not an empty folder: choose another name or --dir, or remove it", .0.display())]
    Exists(PathBuf),
    /// The SDK was not found.
    #[error("the imbed plugin SDK was not found at {}: pass --sdk with the path of plugins/sdk in an imbed checkout", .0.display())]
    Sdk(PathBuf),
    /// Writing failed.
    #[error("cannot write {}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct NewPlugin {
    /// The plugin's name: crate name, config key and the name in provenance.
    pub name: String,
    /// The roles.
    pub kind: Kind,
    /// The folder to create (default `./<name>`).
    pub dir: PathBuf,
    /// The SDK's folder (`plugins/sdk` of an imbed checkout).
    pub sdk: PathBuf,
}

impl NewPlugin {
    /// A plugin named `name` of `kind` in `./<name>`, using the SDK of the checkout this binary
    /// was built from.
    pub fn new(name: &str, kind: Kind) -> Self {
        NewPlugin {
            name: name.to_string(),
            kind,
            dir: PathBuf::from(name),
            sdk: default_sdk(),
        }
    }
}

/// `plugins/sdk` of the checkout this binary was built from.
pub fn default_sdk() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/sdk")
}

/// What was written.
#[derive(Debug, Clone)]
pub struct Generated {
    /// The crate's folder.
    pub dir: PathBuf,
    /// The files, relative to `dir`.
    pub files: Vec<PathBuf>,
    /// The component `cargo build --release` will write, relative to `dir`.
    pub component: PathBuf,
}

const CARGO_TOML: &str = include_str!("../templates/plugin/Cargo.toml");
const CARGO_CONFIG: &str = include_str!("../templates/plugin/cargo-config.toml");
const README: &str = include_str!("../templates/plugin/README.md");
const GITIGNORE: &str = include_str!("../templates/plugin/gitignore");
const HEAD: &str = include_str!("../templates/plugin/src/head.rs");
const EMBEDDER: &str = include_str!("../templates/plugin/src/embedder.rs");
const IMAGE_EMBEDDER: &str = include_str!("../templates/plugin/src/image_embedder.rs");
const DESCRIBER: &str = include_str!("../templates/plugin/src/describer.rs");
/// The test picture both pixel-reading roles' tests use, written once when either is there.
const TEST_PNG: &str = include_str!("../templates/plugin/src/test_png.rs");

/// Names that cargo or Rust reserve.
const RESERVED: &[&str] = &[
    "std",
    "core",
    "alloc",
    "test",
    "proc-macro",
    "self",
    "super",
    "crate",
    "build",
    "deps",
    "examples",
    "incremental",
];

/// Check a plugin name: `[a-z][a-z0-9]*(-[a-z0-9]+)*`, at most 64 characters, not reserved.
pub fn validate_name(name: &str) -> Result<(), TemplateError> {
    let bad = |why| {
        Err(TemplateError::Name {
            name: name.to_string(),
            why,
        })
    };
    if name.is_empty() {
        return bad("is empty");
    }
    if name.len() > 64 {
        return bad("is longer than 64 characters");
    }
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        return bad("does not start with a lowercase letter");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return bad("has characters other than a-z, 0-9 and -");
    }
    if name.ends_with('-') || name.contains("--") {
        return bad("has a dash at the end or two in a row");
    }
    if RESERVED.contains(&name) {
        return bad("is reserved by cargo or Rust");
    }
    Ok(())
}

/// Write the crate.
pub fn generate(plan: &NewPlugin) -> Result<Generated, TemplateError> {
    validate_name(&plan.name)?;
    let dir = &plan.dir;
    if dir.exists() {
        let empty = std::fs::read_dir(dir)
            .map(|mut entries| entries.next().is_none())
            .unwrap_or(false);
        if !empty {
            return Err(TemplateError::Exists(dir.clone()));
        }
    }
    let sdk = plan
        .sdk
        .canonicalize()
        .ok()
        .filter(|p| p.join("Cargo.toml").is_file() && p.join("src/lib.rs").is_file())
        .ok_or_else(|| TemplateError::Sdk(plan.sdk.clone()))?;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TemplateError::Io { path, source }
    };
    std::fs::create_dir_all(dir.join("src")).map_err(io(dir))?;
    std::fs::create_dir_all(dir.join(".cargo")).map_err(io(dir))?;
    let abs_dir = dir.canonicalize().map_err(io(dir))?;
    // A relative path keeps the crate working when the checkout around both moves.
    let sdk_path = relative(&abs_dir, &sdk).unwrap_or_else(|| sdk.clone());

    let files = render(plan, &sdk_path);
    let mut written = Vec::new();
    for (name, text) in files {
        let path = dir.join(&name);
        std::fs::write(&path, text).map_err(io(&path))?;
        written.push(name);
    }
    Ok(Generated {
        dir: dir.clone(),
        files: written,
        component: Path::new("target/wasm32-wasip2/release")
            .join(format!("{}.wasm", plan.name.replace('-', "_"))),
    })
}

/// The files of the crate, by path relative to its folder.
pub fn render(plan: &NewPlugin, sdk_path: &Path) -> Vec<(PathBuf, String)> {
    let kind = plan.kind;
    let name = plan.name.as_str();
    let krate = name.replace('-', "_");
    let type_name: String = name
        .split('-')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect();

    let mut roles = Vec::new();
    let mut lib = HEAD.to_string();
    if kind.describer() {
        roles.push("describer");
        lib.push_str(DESCRIBER);
    }
    if kind.embedder() {
        roles.push("embedder");
        lib.push_str(EMBEDDER);
    }
    if kind.image_embedder() {
        roles.push("image_embedder");
        lib.push_str(IMAGE_EMBEDDER);
    }
    if kind.reads_pixels() {
        lib.push_str(TEST_PNG);
    }
    lib.push_str(&format!(
        "\n// The component exports `imbed:plugin/plugin` and exactly these roles.\nexport_plugin!({{{{Type}}}}: {});\n",
        roles.join(", ")
    ));
    if kind.describer() {
        // The describer's example names the image format, which the prelude leaves out.
        lib = lib.replace(
            "use imbed_plugin_sdk::prelude::*;\n",
            "use imbed_plugin_sdk::prelude::*;\nuse imbed_plugin_sdk::ImageFormat;\n",
        );
    }

    let roles_prose = roles
        .iter()
        .map(|r| r.replace('_', "-"))
        .collect::<Vec<_>>()
        .join(" and ");
    let (sdk_features, dev_dependencies) = if kind.reads_pixels() {
        (
            ", features = [\"image\"]",
            "\n[dev-dependencies]\n# Encodes the test pictures.\nimage = { version = \"0.25\", default-features = false, features = [\"png\"] }\n",
        )
    } else {
        ("", "")
    };
    let sdk_str = sdk_path.to_string_lossy().replace('\\', "/");
    let sdk_note = if sdk_path.is_relative() {
        "The path is relative to this folder."
    } else {
        "Point the path at plugins/sdk of an imbed checkout."
    };
    let settings_example = if kind.embedder() {
        "dimensions = 64      # the example's text vector length (8..=4096)"
    } else {
        "# the example reads no settings; read yours with imbed_plugin_sdk::settings"
    };
    let steps_example = match kind {
        Kind::Embedder => format!(
            "\n[[chain.steps]]\nkind = \"description\"   # embeds the caller's --description\nembedder = \"{name}\""
        ),
        Kind::ImageEmbedder | Kind::DualEmbedder => format!(
            "\n[[chain.steps]]\nkind = \"image-embed\"\nplugin = \"{name}\""
        ),
        Kind::Describer => format!(
            "\n[[chain.steps]]\nkind = \"describe-then-embed\"\ndescriber = \"{name}\"\nembedder = \"hash\"   # any text embedder in your config"
        ),
        Kind::DescriberEmbedder | Kind::Backend => format!(
            "\n[[chain.steps]]\nkind = \"describe-then-embed\"\ndescriber = \"{name}\"\nembedder = \"{name}\""
        ),
    };
    let try_example = match kind {
        Kind::Embedder => "`imbed embed photo.jpg --description \"a cat on a sofa\"` and `imbed embed-text \"a cat\"` use it.",
        Kind::ImageEmbedder | Kind::DualEmbedder => "`imbed embed photo.jpg` uses it.",
        _ => "`imbed embed photo.jpg` uses it; the description shows in the output.",
    };

    let fill = |template: &str| {
        template
            .replace("{{name}}", name)
            .replace("{{crate}}", &krate)
            .replace("{{Type}}", &type_name)
            .replace("{{kind}}", kind.as_str())
            .replace("{{roles_prose}}", &roles_prose)
            .replace("{{sdk}}", &sdk_str)
            .replace("{{sdk_note}}", sdk_note)
            .replace("{{sdk_features}}", sdk_features)
            .replace("{{dev_dependencies}}", dev_dependencies)
            .replace("{{settings_example}}", settings_example)
            .replace("{{steps_example}}", &steps_example)
            .replace("{{try_example}}", try_example)
    };
    vec![
        (PathBuf::from("Cargo.toml"), fill(CARGO_TOML)),
        (PathBuf::from(".cargo/config.toml"), fill(CARGO_CONFIG)),
        (PathBuf::from(".gitignore"), fill(GITIGNORE)),
        (PathBuf::from("README.md"), fill(README)),
        (PathBuf::from("src/lib.rs"), fill(&lib)),
    ]
}

/// `to` relative to `from`, both absolute; `None` when they share no root.
fn relative(from: &Path, to: &Path) -> Option<PathBuf> {
    let from: Vec<Component> = from.components().collect();
    let to: Vec<Component> = to.components().collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    // Only the root in common: an absolute path says more than a chain of `..`.
    if common <= 1 {
        return None;
    }
    let mut rel = PathBuf::new();
    for _ in common..from.len() {
        rel.push("..");
    }
    for c in &to[common..] {
        rel.push(c.as_os_str());
    }
    Some(rel)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_must_work_as_crate_and_config_key() {
        assert!(validate_name("my-backend2").is_ok());
        for bad in [
            "",
            "My",
            "2fast",
            "a_b",
            "a--b",
            "a-",
            "test",
            "é",
            &"a".repeat(65),
        ] {
            let err = validate_name(bad).unwrap_err().to_string();
            assert!(err.contains("use lowercase letters"), "{bad}: {err}");
        }
        assert_eq!(
            "dual-embedder".parse::<Kind>().ok(),
            Some(Kind::DualEmbedder)
        );
        assert!("nope"
            .parse::<Kind>()
            .unwrap_err()
            .to_string()
            .contains("dual-embedder"));
    }

    #[test]
    fn every_kind_exports_its_roles_and_fills_every_placeholder() {
        for kind in Kind::ALL {
            let plan = NewPlugin::new("my-plugin", kind);
            let files = render(&plan, Path::new("../sdk"));
            for (path, text) in &files {
                assert!(
                    !text.contains("{{"),
                    "{kind}: {} keeps a placeholder",
                    path.display()
                );
            }
            let lib = &files.iter().find(|(p, _)| p.ends_with("lib.rs")).unwrap().1;
            assert!(lib.contains("pub struct MyPlugin;"));
            assert_eq!(
                lib.contains("impl Describer for MyPlugin"),
                kind.describer(),
                "{kind}"
            );
            assert_eq!(
                lib.contains("impl Embedder for MyPlugin"),
                kind.embedder(),
                "{kind}"
            );
            assert_eq!(
                lib.contains("impl ImageEmbedder for MyPlugin"),
                kind.image_embedder(),
                "{kind}"
            );
            let cargo = &files[0].1;
            assert_eq!(
                cargo.contains("features = [\"image\"]"),
                kind.reads_pixels(),
                "{kind}"
            );
        }
    }

    #[test]
    fn relative_paths_climb_to_the_common_folder() {
        assert_eq!(
            relative(Path::new("/a/b/c"), Path::new("/a/d")),
            Some(PathBuf::from("../../d"))
        );
        assert_eq!(relative(Path::new("/x/y"), Path::new("/z")), None);
    }
}
