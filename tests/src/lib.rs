//! Test support for imbed and for plugin authors: builds the plugin components, writes configs
//! with a builder, makes test images, and serves HTTP on 127.0.0.1.
//!
//! A plugin's own tests can use it as a dev-dependency: build a [`TestConfig`] naming the
//! plugin's `.wasm`, then drive it through `imbed::Imbed` exactly as the CLI would.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use imbed::{Config, Env};

pub mod bench;
pub mod browser;
pub mod clip;
pub mod files;
pub mod models;
pub mod nn;
pub mod ollama;
pub mod onnx;
pub mod openai;
pub mod postgres;
pub mod python;
pub mod request_log;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Where the wasm workspaces put their components.
pub fn wasm_dir() -> PathBuf {
    repo_root().join("target/wasm/wasm32-wasip2/release")
}

fn cargo_build(dir: &Path) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // Run from the workspace folder: its .cargo/config.toml (target, flags, target dir) is
    // found from the working directory, not from --manifest-path.
    let out = Command::new(cargo)
        .args(["build", "--release", "--quiet"])
        .current_dir(dir)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .output()
        .expect("cannot run cargo");
    assert!(
        out.status.success(),
        "building the components in {} failed:\n{}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Build the plugins and the test programs once per test process; returns the folder that
/// holds the `.wasm` files.
pub fn build_components() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        cargo_build(&repo_root().join("plugins"));
        cargo_build(&repo_root().join("tests/programs"));
        wasm_dir()
    })
}

/// Path of a built component: `hash`, `misbehave`, ...
pub fn component(name: &str) -> PathBuf {
    // Plugins are built as `imbed_<name>.wasm`, test programs under their own names.
    let dir = build_components();
    let snake = name.replace('-', "_");
    let plugin = dir.join(format!("imbed_{snake}.wasm"));
    let path = if plugin.is_file() {
        plugin
    } else {
        dir.join(format!("{snake}.wasm"))
    };
    assert!(path.is_file(), "component {} was not built", path.display());
    path
}

/// A compile cache shared by the tests of one process, so each component compiles once.
pub fn shared_cache_dir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("temp dir"))
        .path()
}

/// One plugin's config section.
#[derive(Clone, Debug)]
pub struct PluginSpec {
    file: PathBuf,
    memory_mb: Option<u64>,
    timeout_ms: Option<u64>,
    instances: Option<usize>,
    limits: Vec<String>,
    http: Vec<String>,
    env: Vec<String>,
    sockets: Vec<String>,
    model_dir: Option<PathBuf>,
    nn: Vec<String>,
    settings: Vec<(String, String)>,
    shares_space_with: Vec<String>,
    endpoints: Vec<(String, usize)>,
}

impl PluginSpec {
    /// A plugin from a component file.
    pub fn file(path: impl Into<PathBuf>) -> Self {
        PluginSpec {
            file: path.into(),
            memory_mb: None,
            timeout_ms: None,
            instances: None,
            limits: vec![],
            http: vec![],
            env: vec![],
            sockets: vec![],
            model_dir: None,
            nn: vec![],
            settings: vec![],
            shares_space_with: vec![],
            endpoints: vec![],
        }
    }

    /// The hash plugin.
    pub fn hash() -> Self {
        PluginSpec::file(component("hash"))
    }

    /// The misbehaving test plugin in the given mode.
    pub fn misbehave(mode: &str) -> Self {
        PluginSpec::file(component("misbehave")).setting("mode", mode)
    }

    /// Declare that the plugin shares the embedding spaces of the plugin under config key
    /// `key` (`shares_space_with`; may repeat).
    pub fn shares_space_with(mut self, key: &str) -> Self {
        self.shares_space_with.push(key.to_string());
        self
    }

    /// A string setting.
    pub fn setting(self, key: &str, value: &str) -> Self {
        self.setting_raw(key, &toml_string(value))
    }

    /// A setting written as a TOML literal (number, boolean, array).
    pub fn setting_raw(mut self, key: &str, toml_literal: &str) -> Self {
        // A later value replaces an earlier one, as a user editing the file would.
        self.settings.retain(|(k, _)| k != key);
        self.settings.push((key.into(), toml_literal.into()));
        self
    }

    /// Memory cap.
    pub fn memory_mb(mut self, mb: u64) -> Self {
        self.memory_mb = Some(mb);
        self
    }

    /// Deadline per call.
    pub fn timeout_ms(mut self, ms: u64) -> Self {
        self.timeout_ms = Some(ms);
        self
    }

    /// Pool size.
    pub fn instances(mut self, n: usize) -> Self {
        self.instances = Some(n);
        self
    }

    /// Any other `[limits]` key, as a TOML literal.
    pub fn limit(mut self, key: &str, toml_literal: &str) -> Self {
        self.limits.push(format!("{key} = {toml_literal}"));
        self
    }

    /// Add a pooled endpoint (`[[plugins.X.endpoints]]`) with its concurrency. Grants nothing:
    /// pair it with [`PluginSpec::grant_http`].
    pub fn endpoint(mut self, base_url: &str, concurrency: usize) -> Self {
        self.endpoints.push((base_url.into(), concurrency));
        self
    }

    /// Grant an HTTP origin.
    pub fn grant_http(mut self, origin: &str) -> Self {
        self.http.push(origin.into());
        self
    }

    /// Grant an environment variable.
    pub fn grant_env(mut self, var: &str) -> Self {
        self.env.push(var.into());
        self
    }

    /// Grant a direct TCP connection to `ip:port`.
    pub fn grant_socket(mut self, addr: &str) -> Self {
        self.sockets.push(addr.into());
        self
    }

    /// Grant a wasi-nn graph by name (the file `<model_dir>/<name>.onnx`).
    pub fn grant_nn(mut self, graph: &str) -> Self {
        self.nn.push(graph.into());
        self
    }

    /// Grant a read-only model directory.
    pub fn grant_model_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.model_dir = Some(dir.into());
        self
    }
}

fn toml_string(s: &str) -> String {
    serde_json::to_string(s).expect("strings serialise")
}

/// Builds a config as TOML text, the way a user would write it, then parses it.
#[derive(Clone, Debug, Default)]
pub struct TestConfig {
    plugins: Vec<(String, PluginSpec)>,
    steps: Vec<String>,
    require_space: Option<String>,
    cache_dir: Option<PathBuf>,
    database: Option<PathBuf>,
    input: Vec<String>,
    server: Vec<String>,
    nn: Vec<String>,
}

impl TestConfig {
    /// An empty config.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a plugin section.
    pub fn plugin(mut self, key: &str, spec: PluginSpec) -> Self {
        // A later section for the same key replaces the earlier one.
        self.plugins.retain(|(k, _)| k != key);
        self.plugins.push((key.into(), spec));
        self
    }

    /// Add a `describe-then-embed` step.
    pub fn describe_then_embed(mut self, describer: &str, embedder: &str) -> Self {
        self.steps.push(format!(
            "kind = \"describe-then-embed\"\ndescriber = {}\nembedder = {}",
            toml_string(describer),
            toml_string(embedder)
        ));
        self
    }

    /// Add an `image-embed` step.
    pub fn image_embed(mut self, plugin: &str) -> Self {
        self.steps.push(format!(
            "kind = \"image-embed\"\nplugin = {}",
            toml_string(plugin)
        ));
        self
    }

    /// Add a `description` step.
    pub fn description(mut self, embedder: &str) -> Self {
        self.steps.push(format!(
            "kind = \"description\"\nembedder = {}",
            toml_string(embedder)
        ));
        self
    }

    /// Add a `hash` step.
    pub fn hash(mut self, plugin: &str) -> Self {
        self.steps
            .push(format!("kind = \"hash\"\nplugin = {}", toml_string(plugin)));
        self
    }

    /// Require one embedding space.
    pub fn require_space(mut self, space: &str) -> Self {
        self.require_space = Some(space.into());
        self
    }

    /// Use this compile cache instead of the shared one.
    pub fn cache_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cache_dir = Some(dir.into());
        self
    }

    /// Use this file as the persistent cache (`[cache] database`).
    pub fn database(mut self, path: impl Into<PathBuf>) -> Self {
        self.database = Some(path.into());
        self
    }

    /// Set an `[input]` key to a TOML literal.
    pub fn input(mut self, key: &str, toml_literal: &str) -> Self {
        self.input.push(format!("{key} = {toml_literal}"));
        self
    }

    /// Set an `[nn]` key to a TOML literal.
    pub fn nn(mut self, key: &str, toml_literal: &str) -> Self {
        self.nn.push(format!("{key} = {toml_literal}"));
        self
    }

    /// Set a `[server]` key to a TOML literal.
    pub fn server(mut self, key: &str, toml_literal: &str) -> Self {
        self.server.push(format!("{key} = {toml_literal}"));
        self
    }

    /// The config as TOML text.
    pub fn toml(&self) -> String {
        let mut t = String::new();
        let cache = self
            .cache_dir
            .clone()
            .unwrap_or_else(|| shared_cache_dir().to_path_buf());
        t.push_str(&format!(
            "cache_dir = {}\n",
            toml_string(&cache.display().to_string())
        ));
        if !self.input.is_empty() {
            t.push_str("[input]\n");
            for line in &self.input {
                t.push_str(line);
                t.push('\n');
            }
        }
        if let Some(db) = &self.database {
            t.push_str(&format!(
                "[cache]\ndatabase = {}\n",
                toml_string(&db.display().to_string())
            ));
        }
        if !self.nn.is_empty() {
            t.push_str("[nn]\n");
            for line in &self.nn {
                t.push_str(line);
                t.push('\n');
            }
        }
        if !self.server.is_empty() {
            t.push_str("[server]\n");
            for line in &self.server {
                t.push_str(line);
                t.push('\n');
            }
        }
        t.push_str("[chain]\n");
        if let Some(space) = &self.require_space {
            t.push_str(&format!("require_space = {}\n", toml_string(space)));
        }
        for step in &self.steps {
            t.push_str("[[chain.steps]]\n");
            t.push_str(step);
            t.push('\n');
        }
        for (key, p) in &self.plugins {
            t.push_str(&format!(
                "[plugins.{key}]\nfile = {}\n",
                toml_string(&p.file.display().to_string())
            ));
            if !p.shares_space_with.is_empty() {
                let keys: Vec<String> =
                    p.shares_space_with.iter().map(|k| toml_string(k)).collect();
                t.push_str(&format!("shares_space_with = [{}]\n", keys.join(", ")));
            }
            t.push_str(&format!("[plugins.{key}.limits]\n"));
            if let Some(m) = p.memory_mb {
                t.push_str(&format!("memory_mb = {m}\n"));
            }
            if let Some(ms) = p.timeout_ms {
                t.push_str(&format!("timeout_ms = {ms}\n"));
            }
            if let Some(n) = p.instances {
                t.push_str(&format!("instances = {n}\n"));
            }
            for line in &p.limits {
                t.push_str(line);
                t.push('\n');
            }
            t.push_str(&format!("[plugins.{key}.grants]\n"));
            let list = |v: &[String]| {
                v.iter()
                    .map(|s| toml_string(s))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            t.push_str(&format!(
                "http = [{}]\nenv = [{}]\nsockets = [{}]\nnn = [{}]\n",
                list(&p.http),
                list(&p.env),
                list(&p.sockets),
                list(&p.nn)
            ));
            if let Some(dir) = &p.model_dir {
                t.push_str(&format!(
                    "model_dir = {}\n",
                    toml_string(&dir.display().to_string())
                ));
            }
            t.push_str(&format!("[plugins.{key}.settings]\n"));
            for (k, v) in &p.settings {
                t.push_str(&format!("{k} = {v}\n"));
            }
            for (url, concurrency) in &p.endpoints {
                t.push_str(&format!(
                    "[[plugins.{key}.endpoints]]\nbase_url = {}\nconcurrency = {concurrency}\n",
                    toml_string(url)
                ));
            }
        }
        t
    }

    /// Parse the config (with an isolated environment).
    #[track_caller]
    pub fn build(&self) -> Config {
        let text = self.toml();
        Config::from_toml_str(&text, "<test>", None, &Env::isolated())
            .unwrap_or_else(|e| panic!("test config does not parse: {e}\n{text}"))
    }

    /// Parse the config with the given environment (for `${VAR}` references).
    #[track_caller]
    pub fn build_with_env(&self, env: &Env) -> Config {
        let text = self.toml();
        Config::from_toml_str(&text, "<test>", None, env)
            .unwrap_or_else(|e| panic!("test config does not parse: {e}\n{text}"))
    }

    /// Write the config to a file in `dir` and return its path.
    pub fn write(&self, dir: &Path) -> PathBuf {
        let path = dir.join("imbed.toml");
        std::fs::write(&path, self.toml()).expect("write config");
        path
    }
}

/// Test images.
pub mod images {
    use image::{ImageFormat, Rgb, RgbImage};
    use std::io::Cursor;

    /// A deterministic picture: `seed` picks the pattern (stripes, rings, blocks...).
    pub fn picture(w: u32, h: u32, seed: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            let (fx, fy) = (x as f32 / w as f32, y as f32 / h as f32);
            let v = match seed % 4 {
                0 => ((fx * 6.0).sin() * 0.5 + 0.5, fy, 0.3),
                1 => {
                    let r = ((fx - 0.5).powi(2) + (fy - 0.5).powi(2)).sqrt();
                    ((r * 30.0).sin() * 0.5 + 0.5, 0.2, 1.0 - r)
                }
                2 => {
                    let b = ((x / (w / 4).max(1)) + (y / (h / 4).max(1))) % 2;
                    (b as f32, 0.6, 1.0 - b as f32 * 0.5)
                }
                _ => (fy, (fx * fy * 20.0).cos() * 0.5 + 0.5, fx),
            };
            let c = |f: f32| (f.clamp(0.0, 1.0) * 255.0) as u8;
            Rgb([c(v.0), c(v.1), c(v.2)])
        })
    }

    /// Encode as PNG.
    pub fn png_of(img: &RgbImage) -> Vec<u8> {
        let mut out = Vec::new();
        img.write_to(&mut Cursor::new(&mut out), ImageFormat::Png)
            .expect("encode png");
        out
    }

    /// Encode as JPEG at the given quality.
    pub fn jpeg_of(img: &RgbImage, quality: u8) -> Vec<u8> {
        let mut out = Vec::new();
        let enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality);
        img.write_with_encoder(enc).expect("encode jpeg");
        out
    }

    /// A PNG picture.
    pub fn png(w: u32, h: u32, seed: u32) -> Vec<u8> {
        png_of(&picture(w, h, seed))
    }

    /// A valid PNG header announcing `w`×`h` pixels followed by almost no data: a decompression
    /// bomb's shape, rejected from the header alone.
    pub fn huge_png_header(w: u32, h: u32) -> Vec<u8> {
        let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut ihdr = Vec::new();
        ihdr.extend_from_slice(&w.to_be_bytes());
        ihdr.extend_from_slice(&h.to_be_bytes());
        ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
        chunk(&mut out, b"IHDR", &ihdr);
        // An empty zlib stream: a real bomb's IDAT is tiny too, it just inflates to gigabytes.
        chunk(
            &mut out,
            b"IDAT",
            &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
        );
        chunk(&mut out, b"IEND", &[]);
        out
    }

    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let start = out.len();
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        let crc = crc32(&out[start..]);
        out.extend_from_slice(&crc.to_be_bytes());
    }

    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = 0xffff_ffffu32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xedb8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    /// A TIFF block (what EXIF is) holding one entry, Orientation = `o` (1 to 8).
    pub fn exif_orientation(o: u16) -> Vec<u8> {
        let mut t = b"MM\0\x2a\0\0\0\x08".to_vec(); // big-endian, first IFD at 8
        t.extend_from_slice(&1u16.to_be_bytes()); // one entry
        t.extend_from_slice(&0x0112u16.to_be_bytes()); // Orientation
        t.extend_from_slice(&3u16.to_be_bytes()); // SHORT
        t.extend_from_slice(&1u32.to_be_bytes()); // one value
        t.extend_from_slice(&o.to_be_bytes());
        t.extend_from_slice(&[0, 0]); // value padding
        t.extend_from_slice(&[0, 0, 0, 0]); // no next IFD
        t
    }

    /// The pixels a camera stores for an upright picture it tags with orientation `o`: the
    /// inverse of the turn the tag asks for, so that applying the tag gives `upright` back.
    pub fn stored_for_orientation(upright: &RgbImage, o: u16) -> RgbImage {
        use image::imageops::{flip_horizontal, flip_vertical, rotate180, rotate270, rotate90};
        match o {
            2 => flip_horizontal(upright),
            3 => rotate180(upright),
            4 => flip_vertical(upright),
            // Transpose and transverse are their own inverses.
            5 => flip_horizontal(&rotate90(upright)),
            6 => rotate270(upright),
            7 => flip_horizontal(&rotate270(upright)),
            8 => rotate90(upright),
            _ => upright.clone(),
        }
    }

    /// A JPEG with an APP1 Exif segment (orientation `o`) right after its start marker.
    pub fn jpeg_with_orientation(jpeg: &[u8], o: u16) -> Vec<u8> {
        let mut payload = b"Exif\0\0".to_vec();
        payload.extend_from_slice(&exif_orientation(o));
        let mut out = jpeg[..2].to_vec();
        out.extend_from_slice(&[0xFF, 0xE1]);
        out.extend_from_slice(&((payload.len() + 2) as u16).to_be_bytes());
        out.extend_from_slice(&payload);
        out.extend_from_slice(&jpeg[2..]);
        out
    }

    /// A PNG with an eXIf chunk (orientation `o`) right after IHDR, before the image data.
    pub fn png_with_orientation(png: &[u8], o: u16) -> Vec<u8> {
        let ihdr_end = 8 + 25;
        let mut out = png[..ihdr_end].to_vec();
        chunk(&mut out, b"eXIf", &exif_orientation(o));
        out.extend_from_slice(&png[ihdr_end..]);
        out
    }

    /// A lossless WebP in the extended format (VP8X) with an EXIF chunk (orientation `o`).
    pub fn webp_with_orientation(img: &RgbImage, o: u16) -> Vec<u8> {
        let mut simple = Vec::new();
        img.write_to(&mut Cursor::new(&mut simple), ImageFormat::WebP)
            .expect("encode webp");
        // RIFF, size, WEBP, then the one image chunk.
        let image_chunk = &simple[12..];
        let mut body = b"WEBP".to_vec();
        let mut vp8x = vec![0x08, 0, 0, 0]; // flags: EXIF present
        vp8x.extend_from_slice(&(img.width() - 1).to_le_bytes()[..3]);
        vp8x.extend_from_slice(&(img.height() - 1).to_le_bytes()[..3]);
        riff_chunk(&mut body, b"VP8X", &vp8x);
        body.extend_from_slice(image_chunk);
        riff_chunk(&mut body, b"EXIF", &exif_orientation(o));
        let mut out = b"RIFF".to_vec();
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&body);
        out
    }

    fn riff_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend_from_slice(kind);
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(data);
        if data.len() % 2 == 1 {
            out.push(0);
        }
    }

    /// `img` in `format` (JPEG at quality 90), for formats the tests read back.
    pub fn encode(img: &RgbImage, format: ImageFormat) -> Vec<u8> {
        if format == ImageFormat::Jpeg {
            return jpeg_of(img, 90);
        }
        let mut out = Vec::new();
        img.write_to(&mut Cursor::new(&mut out), format)
            .expect("encode");
        out
    }
}

/// What a [`TestServer`] route answers.
#[derive(Clone, Debug)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Content type.
    pub content_type: String,
    /// Body.
    pub body: Vec<u8>,
    /// Wait this long before answering.
    pub delay: Duration,
}

impl Reply {
    /// 200 with a body.
    pub fn ok(content_type: &str, body: impl Into<Vec<u8>>) -> Self {
        Reply {
            status: 200,
            content_type: content_type.into(),
            body: body.into(),
            delay: Duration::ZERO,
        }
    }

    /// Answer only after `delay`.
    pub fn delayed(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

/// A small HTTP/1.1 server on 127.0.0.1 that answers fixed routes and counts requests. Its
/// thread ends with the process.
pub struct TestServer {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    routes: Arc<Mutex<Vec<(String, Reply)>>>,
}

impl TestServer {
    /// Start serving; unknown paths get 404.
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let addr = listener.local_addr().expect("local addr");
        let hits = Arc::new(AtomicUsize::new(0));
        let routes: Arc<Mutex<Vec<(String, Reply)>>> = Arc::default();
        let (h, r) = (hits.clone(), routes.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (h, r) = (h.clone(), r.clone());
                std::thread::spawn(move || {
                    let _ = serve_one(stream, &h, &r);
                });
            }
        });
        TestServer { addr, hits, routes }
    }

    /// Answer `path` with `reply`.
    pub fn route(&self, path: &str, reply: Reply) -> &Self {
        self.routes.lock().unwrap().push((path.into(), reply));
        self
    }

    /// `http://127.0.0.1:port`
    pub fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A URL on this server.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Requests received so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

fn serve_one(
    stream: TcpStream,
    hits: &AtomicUsize,
    routes: &Mutex<Vec<(String, Reply)>>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut content_length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            content_length = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; content_length];
    reader.read_exact(&mut body)?;
    hits.fetch_add(1, Ordering::SeqCst);
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .to_string();
    let reply = routes
        .lock()
        .unwrap()
        .iter()
        .find(|(p, _)| *p == path)
        .map(|(_, r)| r.clone())
        .unwrap_or(Reply {
            status: 404,
            content_type: "text/plain".into(),
            body: b"404 page not found".to_vec(),
            delay: Duration::ZERO,
        });
    std::thread::sleep(reply.delay);
    let mut out = stream;
    write!(
        out,
        "HTTP/1.1 {} X\r\ncontent-type: {}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        reply.status,
        reply.content_type,
        reply.body.len()
    )?;
    out.write_all(&reply.body)?;
    out.flush()
}

/// A TCP listener on 127.0.0.1 that only counts connection attempts (for "no socket reached").
pub struct ConnectionCounter {
    addr: SocketAddr,
    count: Arc<AtomicUsize>,
}

impl ConnectionCounter {
    /// Start listening.
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let count = Arc::new(AtomicUsize::new(0));
        let c = count.clone();
        std::thread::spawn(move || {
            for _ in listener.incoming() {
                c.fetch_add(1, Ordering::SeqCst);
            }
        });
        ConnectionCounter { addr, count }
    }

    /// `127.0.0.1:port`
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// Connections accepted so far.
    pub fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }
}

/// A port on 127.0.0.1 that was free a moment ago: bound, read and released. Use it for a
/// server that is about to listen there, or as an address where nobody listens.
pub fn free_local_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// Cosine similarity, computed in f64 and normalised, so that a vector that is not unit length
/// (a plugin that forgot to normalise, a reference from another implementation) is compared
/// by direction and not passed or failed by its length. An all-zero vector has similarity 0.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "vectors of different lengths");
    let (mut dot, mut aa, mut bb) = (0f64, 0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        let (x, y) = (f64::from(*x), f64::from(*y));
        dot += x * y;
        aa += x * x;
        bb += y * y;
    }
    if aa == 0.0 || bb == 0.0 {
        return 0.0;
    }
    (dot / (aa.sqrt() * bb.sqrt())) as f32
}
