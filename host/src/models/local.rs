//! [`Models`]: one models directory and its registry; what is there (`list`, `status`) and
//! `remove`. Pulling and importing are in `pull` and `import`.

use super::{MANIFEST, MIRROR_ENV};
use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::error::ModelError;
use super::files::{check_existing, is_file, lock, part_path, read_manifest, remove_manifest};
use super::registry::{check_base_url, Format, Formats, ModelFile, ModelSpec, Registry};
use super::report::{FileOutcome, ModelState, ModelStatus, Progress};
use crate::config::Config;
use crate::config::Env;
use crate::input::describe_reqwest;
use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;

/// Model management over one models directory and registry.
#[derive(Debug, Clone)]
pub struct Models {
    pub(super) registry: Registry,
    pub(super) dir: PathBuf,
    pub(super) env_mirror: Option<String>,
    pub(super) config_mirror: Option<String>,
    pub(super) urls: BTreeMap<String, String>,
    /// The HTTP client, or why it could not be built (reported by the first download).
    pub(super) client: Result<reqwest::Client, String>,
}

impl Models {
    /// Manage the models of `registry` under `dir`, fetching from each model's registry source.
    pub fn new(registry: Registry, dir: impl Into<PathBuf>) -> Models {
        let client = reqwest::Client::builder()
            .user_agent(concat!("imbed/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(30))
            // No overall deadline: a 600 MB file on a slow line takes long. A connection that
            // goes quiet for this long is broken, and the next pull resumes it.
            .read_timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| describe_reqwest(&e));
        Models {
            registry,
            dir: dir.into(),
            env_mirror: None,
            config_mirror: None,
            urls: BTreeMap::new(),
            client,
        }
    }

    /// From a config: its `[models]` section, the built-in registry plus the config's extra
    /// registry file, and [`MIRROR_ENV`] from `env`.
    pub fn from_config(config: &Config, env: &Env) -> Result<Models, ModelError> {
        let settings = &config.models;
        let mut registry = Registry::builtin()?;
        if let Some(extra) = &settings.registry {
            registry.merge(Registry::load(extra)?);
        }
        let mut models = Models::new(registry, &settings.dir).with_mirror(settings.mirror.clone());
        if let Some(m) = env.get(MIRROR_ENV).filter(|m| !m.trim().is_empty()) {
            models.env_mirror = Some(check_base_url(m.trim())?);
        }
        for (name, url) in &settings.urls {
            models = models.with_model_url(name, url)?;
        }
        Ok(models)
    }

    /// Fetch every model from `<mirror>/<model>/<path>` (the config's `[models] mirror`).
    pub fn with_mirror(mut self, mirror: Option<String>) -> Models {
        self.config_mirror = mirror.map(|m| m.trim_end_matches('/').to_string());
        self
    }

    /// Like [`Models::with_mirror`], but winning over a per-model URL: the environment
    /// variable's place in the order.
    pub fn with_env_mirror(mut self, mirror: Option<String>) -> Models {
        self.env_mirror = mirror.map(|m| m.trim_end_matches('/').to_string());
        self
    }

    /// Fetch model `name` from `<url>/<path>`.
    pub fn with_model_url(mut self, name: &str, url: &str) -> Result<Models, ModelError> {
        self.registry.get(name)?;
        self.urls.insert(name.to_string(), check_base_url(url)?);
        Ok(self)
    }

    /// The registry in use.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The models directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A model's folder (whether or not the name is known).
    pub fn model_dir(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The base URL a model's files would be fetched from. The first that is set wins: `from`
    /// (the `--from` flag), [`MIRROR_ENV`] (`<mirror>/<model>`), the config's per-model URL,
    /// the config's mirror (`<mirror>/<model>`), the registry's source.
    pub fn source_for(&self, name: &str, from: Option<&str>) -> Result<String, ModelError> {
        let spec = self.registry.get(name)?;
        if let Some(from) = from {
            return check_base_url(from);
        }
        if let Some(m) = &self.env_mirror {
            return Ok(format!("{m}/{name}"));
        }
        if let Some(u) = self.urls.get(name) {
            return Ok(u.clone());
        }
        if let Some(m) = &self.config_mirror {
            return Ok(format!("{m}/{name}"));
        }
        Ok(spec.source.clone())
    }

    /// Which registry models are present and complete. With `verify`, every file is hashed;
    /// otherwise sizes and the manifest are checked.
    pub async fn list(
        &self,
        verify: bool,
        progress: &dyn Progress,
    ) -> Result<Vec<ModelStatus>, ModelError> {
        let mut out = Vec::new();
        for spec in self.registry.models() {
            out.push(self.status(spec, verify, progress).await?);
        }
        Ok(out)
    }

    /// The state of one model; see [`Models::list`].
    pub async fn status(
        &self,
        spec: &ModelSpec,
        verify: bool,
        progress: &dyn Progress,
    ) -> Result<ModelStatus, ModelError> {
        let dir = self.model_dir(&spec.name);
        let manifest = read_manifest(&dir).await;
        // A format is looked at when any of its files is here (or partly, or in the manifest);
        // a folder with none is checked for the default set, which is what `pull` fetches.
        let mut formats = Vec::new();
        for format in spec.formats() {
            let mut here = false;
            for f in spec.files_of(format) {
                let path = dir.join(&f.path);
                here |= is_file(&path).await
                    || is_file(&part_path(&path)).await
                    || manifest
                        .as_ref()
                        .is_some_and(|m| m.files.contains_key(&f.path));
            }
            if here {
                formats.push(format);
            }
        }
        let wanted = if formats.is_empty() {
            Formats::default()
        } else {
            Formats {
                safetensors: formats.contains(&Format::Safetensors),
                onnx: formats.contains(&Format::Onnx),
            }
        };
        let mut status = ModelStatus {
            name: spec.name.clone(),
            plugin: spec.plugin.clone(),
            dir: dir.clone(),
            state: ModelState::Absent,
            verified: verify,
            size_on_disk: 0,
            size: spec
                .files
                .iter()
                .filter(|f| wanted.includes(f))
                .map(|f| f.size)
                .sum(),
            source: None,
            formats,
            problems: Vec::new(),
        };
        let pull = match wanted {
            Formats {
                safetensors: false,
                onnx: true,
            } => format!("run `imbed models pull {} --format onnx`", spec.name),
            Formats {
                safetensors: true,
                onnx: true,
            } => format!("run `imbed models pull {} --format all`", spec.name),
            _ => format!("run `imbed models pull {}`", spec.name),
        };
        let (mut missing, mut corrupt, mut anything) = (false, false, false);
        for registry_file in spec.files.iter().filter(|f| wanted.includes(f)) {
            let path = dir.join(&registry_file.path);
            // A converted graph is checked against the SHA-256 recorded when it was imported.
            let converted = manifest
                .as_ref()
                .filter(|m| m.converted.contains(&registry_file.path))
                .and_then(|m| m.files.get(&registry_file.path));
            let file = &match (converted, tokio::fs::metadata(&path).await) {
                (Some(sha), Ok(m)) => ModelFile {
                    size: m.len(),
                    sha256: sha.clone(),
                    ..registry_file.clone()
                },
                _ => registry_file.clone(),
            };
            match tokio::fs::metadata(&path).await {
                Ok(m) if m.is_file() => {
                    anything = true;
                    status.size_on_disk += m.len();
                    if m.len() != file.size {
                        corrupt = true;
                        status.problems.push(format!(
                            "{} is {} bytes, the registry says {}: {pull}",
                            file.path,
                            m.len(),
                            file.size
                        ));
                    } else if verify
                        && !check_existing(&path, file, FileOutcome::Verified, progress).await?
                    {
                        corrupt = true;
                        let whose = if converted.is_some() {
                            "the SHA-256 recorded when it was imported"
                        } else {
                            "the registry's SHA-256"
                        };
                        status.problems.push(format!(
                            "{} does not have {whose} {}: {pull}",
                            file.path, file.sha256
                        ));
                    }
                }
                _ => {
                    missing = true;
                    match tokio::fs::metadata(part_path(&path)).await {
                        Ok(m) => {
                            anything = true;
                            status.size_on_disk += m.len();
                            status.problems.push(format!(
                                "{} is partly downloaded ({} of {} bytes): {pull} to resume",
                                file.path,
                                m.len(),
                                file.size
                            ));
                        }
                        Err(_) => status
                            .problems
                            .push(format!("{} is missing: {pull}", file.path)),
                    }
                }
            }
        }
        match manifest {
            Some(m) => {
                anything = true;
                if !m.matches(spec) {
                    corrupt = true;
                    status.problems.push(format!(
                        "{MANIFEST} names other files or versions than the registry: {pull}"
                    ));
                }
                status.source = Some(m.source);
            }
            None if anything && !missing && !corrupt => {
                missing = true;
                status.problems.push(format!(
                    "{MANIFEST} is missing (an interrupted pull or import?): {pull}"
                ));
            }
            None => {}
        }
        status.state = if !anything {
            status.problems.clear();
            ModelState::Absent
        } else if corrupt {
            ModelState::Corrupt
        } else if missing {
            ModelState::Incomplete
        } else {
            ModelState::Complete
        };
        Ok(status)
    }

    /// Delete a model's folder. Returns false when there was nothing to delete.
    pub async fn remove(&self, name: &str) -> Result<bool, ModelError> {
        self.registry.get(name)?;
        let dir = self.model_dir(name);
        if !tokio::fs::try_exists(&dir).await.unwrap_or(false) {
            return Ok(false);
        }
        // Held until the folder is gone, so a pull that starts meanwhile waits (or reports the
        // folder busy) instead of having its files deleted under it.
        let _lock = lock(&dir, name).await?;
        // Without its manifest the folder no longer claims to be a model, even if the
        // removal stops half-way.
        remove_manifest(&dir).await?;
        tokio::fs::remove_dir_all(&dir)
            .await
            .map_err(|e| ModelError::io("remove", &dir, e))?;
        Ok(true)
    }
}

/// Bytes for people: `86.7 MiB`.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    let mut s = String::new();
    if unit == 0 {
        let _ = write!(s, "{bytes} B");
    } else {
        let _ = write!(s, "{value:.1} {}", UNITS[unit]);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::{human_size, Models};
    use crate::models::{Format, Formats, Manifest, Registry};

    #[test]
    fn the_builtin_registry_parses_and_names_both_models() {
        let r = Registry::builtin().expect("built-in registry parses");
        let names: Vec<_> = r.models().iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["all-minilm-l6-v2", "clip-vit-base-patch32"]);
        let minilm = r.get("all-minilm-l6-v2").unwrap();
        assert_eq!(minilm.plugin, "minilm");
        let weights = minilm
            .files
            .iter()
            .find(|f| f.path == "model.safetensors")
            .unwrap();
        assert_eq!(
            weights.sha256,
            "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
        );
        assert_eq!(weights.size, 90_868_376);
        assert_eq!(weights.format, Some(Format::Safetensors));
        let graph = minilm.files.iter().find(|f| f.path == "text.onnx").unwrap();
        assert_eq!(graph.format, Some(Format::Onnx));
        assert_eq!(
            graph.sha256,
            "6fd5d72fe4589f189f8ebc006442dbb529bb7ce38f8082112682524616046452"
        );
        let clip = r.get("clip-vit-base-patch32").unwrap();
        assert_eq!(clip.plugin, "clip");
        assert!(clip
            .source
            .starts_with("https://huggingface.co/openai/clip-vit-base-patch32/"));
    }

    #[test]
    fn an_unknown_name_lists_the_known_ones() {
        let err = Registry::builtin().unwrap().get("clip").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("unknown model \"clip\""), "{msg}");
        assert!(
            msg.contains("all-minilm-l6-v2, clip-vit-base-patch32"),
            "{msg}"
        );
        assert!(err.is_usage());
    }

    #[test]
    fn registry_entries_are_checked() {
        let entry = |path: &str, sha: &str, source: &str| {
            format!(
                "[[models]]\nname = \"m\"\nplugin = \"p\"\nsource = \"{source}\"\n[[models.files]]\npath = \"{path}\"\nsize = 1\nsha256 = \"{sha}\"\n"
            )
        };
        let sha = "a".repeat(64);
        let ok = entry("sub/w.bin", &sha, "http://h/x/");
        let r = Registry::from_toml_str(&ok, "t").unwrap();
        assert_eq!(r.get("m").unwrap().source, "http://h/x");
        for (path, sha, source, expect) in [
            ("../w", sha.as_str(), "http://h", "not allowed"),
            ("/abs", sha.as_str(), "http://h", "not allowed"),
            (".hidden", sha.as_str(), "http://h", "not allowed"),
            ("imbed-model.json", sha.as_str(), "http://h", "not allowed"),
            ("w.part", sha.as_str(), "http://h", "not allowed"),
            ("w", "unknown", "http://h", "64 hex digits"),
            ("w", sha.as_str(), "ftp://h", "http(s)"),
        ] {
            let err = Registry::from_toml_str(&entry(path, sha, source), "t").unwrap_err();
            assert!(err.to_string().contains(expect), "{path}: {err}");
        }
        let err =
            Registry::from_toml_str("[[models]]\nname = \"m\"\nsurprise = 1\n", "t").unwrap_err();
        assert!(err.to_string().contains("surprise"), "{err}");
    }

    #[test]
    fn sources_follow_the_documented_order() {
        let models = Models::new(Registry::builtin().unwrap(), "/m");
        let name = "clip-vit-base-patch32";
        let registry_source = models.registry().get(name).unwrap().source.clone();
        assert_eq!(models.source_for(name, None).unwrap(), registry_source);
        let models = models.with_mirror(Some("http://mirror/m/".into()));
        assert_eq!(
            models.source_for(name, None).unwrap(),
            format!("http://mirror/m/{name}")
        );
        let models = models.with_model_url(name, "http://one/clip").unwrap();
        assert_eq!(models.source_for(name, None).unwrap(), "http://one/clip");
        let models = models.with_env_mirror(Some("http://env".into()));
        assert_eq!(
            models.source_for(name, None).unwrap(),
            format!("http://env/{name}")
        );
        assert_eq!(
            models.source_for(name, Some("http://flag/x/")).unwrap(),
            "http://flag/x"
        );
        assert!(models
            .source_for(name, Some("not a url"))
            .unwrap_err()
            .is_usage());
        assert!(models.with_model_url("nope", "http://x").is_err());
    }

    #[test]
    fn the_manifest_has_exactly_the_documented_shape() {
        let spec = Registry::builtin()
            .unwrap()
            .get("all-minilm-l6-v2")
            .unwrap()
            .clone();
        let m = Manifest::for_spec(&spec, Formats::default(), "import:/x".into());
        let v = serde_json::to_value(&m).unwrap();
        let keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys, ["name", "files", "source", "weights_sha256"]);
        assert_eq!(
            v["files"]["1_Pooling/config.json"].as_str().unwrap().len(),
            64
        );
        assert_eq!(v["weights_sha256"], v["files"]["model.safetensors"]);
        assert!(v["files"].get("text.onnx").is_none());
        assert!(m.matches(&spec));
        // A manifest from before formats existed still matches.
        let old = Manifest {
            weights_sha256: None,
            ..m.clone()
        };
        assert!(old.matches(&spec));
    }

    #[test]
    fn formats_select_files_and_manifests_must_hold_whole_formats() {
        let spec = Registry::builtin()
            .unwrap()
            .get("clip-vit-base-patch32")
            .unwrap()
            .clone();
        assert_eq!(spec.formats(), [Format::Safetensors, Format::Onnx]);
        let paths = |m: &Manifest| m.files.keys().cloned().collect::<Vec<_>>();
        let onnx = Manifest::for_spec(&spec, Formats::onnx(), "x".into());
        assert_eq!(
            paths(&onnx),
            [
                "config.json",
                "preprocessor_config.json",
                "text.onnx",
                "tokenizer.json",
                "vision.onnx"
            ]
        );
        // Graphs only still name the safetensors' weights: one space for both paths.
        assert_eq!(onnx.weights_sha256.as_deref(), spec.weights_sha256());
        assert!(onnx.matches(&spec));
        assert!(Manifest::for_spec(&spec, Formats::all(), "x".into()).matches(&spec));
        // Half a format is not a model.
        let mut half = onnx.clone();
        half.files.remove("text.onnx");
        assert!(!half.matches(&spec));
        // A graph with another SHA-256 matches only when recorded as converted.
        let mut other = onnx.clone();
        other.files.insert("text.onnx".into(), "0".repeat(64));
        assert!(!other.matches(&spec));
        other.converted.push("text.onnx".into());
        assert!(other.matches(&spec));
        // Converted safetensors are not a thing: the weights name the space.
        let mut weights = Manifest::for_spec(&spec, Formats::default(), "x".into());
        weights
            .files
            .insert("model.safetensors".into(), "0".repeat(64));
        weights.converted.push("model.safetensors".into());
        assert!(!weights.matches(&spec));
        // The public exports come from their own repositories, under the local names.
        let vision = spec.files.iter().find(|f| f.path == "vision.onnx").unwrap();
        assert!(vision
            .url
            .as_deref()
            .unwrap()
            .starts_with("https://huggingface.co/Qdrant/clip-ViT-B-32-vision/resolve/"));
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(human_size(53), "53 B");
        assert_eq!(human_size(90_868_376), "86.7 MiB");
    }
}
