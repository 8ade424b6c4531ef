use super::*;
use std::io::Write;

/// One tensor for [`write_safetensors`]: name, dtype, shape, raw little-endian bytes.
type Raw<'a> = (&'a str, &'a str, Vec<usize>, Vec<u8>);

/// Writes a safetensors file the way the format specifies (the reader's tests must not use the
/// reader to make their input).
fn write_safetensors(path: &Path, tensors: &[Raw]) {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
    let mut offset = 0usize;
    let mut data = Vec::new();
    for (name, dtype, shape, bytes) in tensors {
        header.insert(
            (*name).into(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + bytes.len()]}),
        );
        offset += bytes.len();
        data.extend_from_slice(bytes);
    }
    let header = serde_json::to_vec(&header).unwrap();
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(&(header.len() as u64).to_le_bytes()).unwrap();
    f.write_all(&header).unwrap();
    f.write_all(&data).unwrap();
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn f16_bytes(v: &[f32]) -> Vec<u8> {
    v.iter()
        .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
        .collect()
}

fn sample_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_safetensors(
        &dir.path().join("model.safetensors"),
        &[
            (
                "dense.weight",
                "F32",
                vec![2, 3],
                f32_bytes(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]),
            ),
            ("dense.bias", "F16", vec![2], f16_bytes(&[0.5, -1.25])),
            (
                "position_ids",
                "I64",
                vec![1, 3],
                [0i64, 1, 2].iter().flat_map(|x| x.to_le_bytes()).collect(),
            ),
            ("ignored", "I16", vec![2], vec![1, 0, 2, 0]),
        ],
    );
    dir
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

#[test]
fn loads_f32_and_f16_as_f32_and_keeps_integers() {
    let dir = sample_dir();
    let md = ModelDir::open(dir.path(), "toy").unwrap();
    let w = md
        .load_weights("model.safetensors", DType::F32, &Device::Cpu)
        .unwrap();
    let t = w.tensors();
    assert_eq!(
        t["dense.weight"].to_vec2::<f32>().unwrap(),
        vec![vec![1.0, 2.0, 3.0], vec![4.0, 5.0, 6.0]]
    );
    assert_eq!(t["dense.bias"].dtype(), DType::F32);
    assert_eq!(t["dense.bias"].to_vec1::<f32>().unwrap(), vec![0.5, -1.25]);
    assert_eq!(t["position_ids"].dtype(), DType::I64);
    assert!(
        !t.contains_key("ignored"),
        "dtypes candle does not compute with are skipped"
    );
    assert_eq!(w.size_bytes(), 6 * 4 + 2 * 4 + 3 * 8);
}

#[test]
fn converts_to_f16_when_asked() {
    let dir = sample_dir();
    let md = ModelDir::open(dir.path(), "toy").unwrap();
    let w = md
        .load_weights("model.safetensors", DType::F16, &Device::Cpu)
        .unwrap();
    assert_eq!(w.tensors()["dense.weight"].dtype(), DType::F16);
    assert_eq!(w.tensors()["position_ids"].dtype(), DType::I64);
}

#[test]
fn without_manifest_the_revision_is_the_files_sha256() {
    let dir = sample_dir();
    let bytes = std::fs::read(dir.path().join("model.safetensors")).unwrap();
    let md = ModelDir::open(dir.path(), "toy").unwrap();
    assert!(md.manifest().is_none());
    let w = md
        .load_weights("model.safetensors", DType::F32, &Device::Cpu)
        .unwrap();
    assert_eq!(w.sha256(), sha256_hex(&bytes));
    assert_eq!(w.revision(), &sha256_hex(&bytes)[..12]);
}

#[test]
fn trailing_bytes_count_for_the_computed_revision() {
    let dir = sample_dir();
    let path = dir.path().join("model.safetensors");
    let md = ModelDir::open(dir.path(), "toy").unwrap();
    let before = md
        .load_weights("model.safetensors", DType::F32, &Device::Cpu)
        .unwrap();
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(b"xx")
        .unwrap();
    let after = md
        .load_weights("model.safetensors", DType::F32, &Device::Cpu)
        .unwrap();
    assert_ne!(before.sha256(), after.sha256());
    assert_eq!(after.sha256(), sha256_hex(&std::fs::read(&path).unwrap()));
}

#[test]
fn manifest_gives_the_revision_and_the_name() {
    let dir = sample_dir();
    let sha = "AB".repeat(32);
    std::fs::write(
        dir.path().join(MANIFEST_FILE),
        format!(r#"{{"name": "toy-v2", "files": {{"model.safetensors": "{sha}"}}, "source": "import:/x"}}"#),
    )
    .unwrap();
    let md = ModelDir::open(dir.path(), "toy").unwrap();
    assert_eq!(md.model_name(), "toy-v2");
    assert_eq!(md.manifest().unwrap().source.as_deref(), Some("import:/x"));
    let w = md
        .load_weights("model.safetensors", DType::F32, &Device::Cpu)
        .unwrap();
    assert_eq!(w.sha256(), "ab".repeat(32));
    assert_eq!(w.revision(), "abababababab");
    // A file the manifest does not list is hashed.
    std::fs::copy(
        dir.path().join("model.safetensors"),
        dir.path().join("other.safetensors"),
    )
    .unwrap();
    let bytes = std::fs::read(dir.path().join("other.safetensors")).unwrap();
    let w = md
        .load_weights("other.safetensors", DType::F32, &Device::Cpu)
        .unwrap();
    assert_eq!(w.sha256(), sha256_hex(&bytes));
}

#[test]
fn bad_manifest_is_corrupt() {
    let dir = sample_dir();
    std::fs::write(dir.path().join(MANIFEST_FILE), "{ not json").unwrap();
    let err = ModelDir::open(dir.path(), "toy").unwrap_err();
    assert!(matches!(err, ModelError::Corrupt { .. }), "{err}");
    std::fs::write(
        dir.path().join(MANIFEST_FILE),
        r#"{"name": "toy", "files": {"model.safetensors": "abc"}}"#,
    )
    .unwrap();
    let err = ModelDir::open(dir.path(), "toy").unwrap_err().to_string();
    assert!(
        err.contains("not 64 hex digits") && err.contains("run `imbed models pull toy` again"),
        "{err}"
    );
}

#[test]
fn missing_directory_and_file_say_to_pull() {
    let dir = tempfile::tempdir().unwrap();
    let err = ModelDir::open(dir.path().join("nope"), "all-minilm-l6-v2").unwrap_err();
    assert!(matches!(err, ModelError::NotFound { .. }));
    let md = ModelDir::open(dir.path(), "all-minilm-l6-v2").unwrap();
    let err = md
        .load_weights("model.safetensors", DType::F32, &Device::Cpu)
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ModelError::NotFound { .. }), "{msg}");
    assert!(msg.starts_with("model not found: "), "{msg}");
    assert!(
        msg.contains("model.safetensors is missing — run `imbed models pull all-minilm-l6-v2`"),
        "{msg}"
    );
    let err = md
        .read_json::<serde_json::Value>("config.json")
        .unwrap_err();
    assert!(matches!(err, ModelError::NotFound { .. }));
}

fn load_err(dir: &Path) -> String {
    let md = ModelDir::open(dir, "toy").unwrap();
    let err = md
        .load_weights("model.safetensors", DType::F32, &Device::Cpu)
        .unwrap_err();
    assert!(
        matches!(err, ModelError::Corrupt { .. }),
        "expected corrupt, got {err}"
    );
    let msg = err.to_string();
    assert!(msg.starts_with("model files corrupt: "), "{msg}");
    assert!(
        msg.ends_with("— run `imbed models pull toy` again"),
        "{msg}"
    );
    msg
}

#[test]
fn truncated_file_is_corrupt() {
    let dir = sample_dir();
    let path = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
    assert!(load_err(dir.path()).contains("beyond"));
    // Cut inside the header.
    std::fs::write(&path, &bytes[..20]).unwrap();
    assert!(load_err(dir.path()).contains("header claims"));
    std::fs::write(&path, &bytes[..5]).unwrap();
    assert!(load_err(dir.path()).contains("too short"));
    std::fs::write(&path, b"").unwrap();
    load_err(dir.path());
}

#[test]
fn garbled_header_is_corrupt() {
    let dir = sample_dir();
    let path = dir.path().join("model.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    // Garble the JSON but keep its length.
    bytes[8] = b'#';
    std::fs::write(&path, &bytes).unwrap();
    assert!(load_err(dir.path()).contains("not valid JSON"));
    // A length field of random bytes must not make us allocate it.
    bytes[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    std::fs::write(&path, &bytes).unwrap();
    assert!(load_err(dir.path()).contains("header claims"));
    // Random bytes throughout.
    let noise: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&path, &noise).unwrap();
    load_err(dir.path());
}

#[test]
fn shape_that_disagrees_with_offsets_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    write_safetensors(
        &dir.path().join("model.safetensors"),
        &[("w", "F32", vec![2, 2], f32_bytes(&[1.0, 2.0, 3.0]))],
    );
    assert!(load_err(dir.path()).contains("needs 16 bytes but the offsets span 12"));
    write_safetensors(
        &dir.path().join("model.safetensors"),
        &[("w", "Q4", vec![1], vec![0])],
    );
    assert!(load_err(dir.path()).contains("unknown dtype Q4"));
}

#[test]
fn overlapping_tensors_are_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let header = br#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header);
    bytes.extend_from_slice(&[0u8; 12]);
    std::fs::write(dir.path().join("model.safetensors"), bytes).unwrap();
    assert!(load_err(dir.path()).contains("overlap"));
}

#[test]
fn building_a_model_from_the_wrong_weights_is_corrupt() {
    let dir = sample_dir();
    let md = ModelDir::open(dir.path(), "toy").unwrap();
    let ok = md
        .load_weights("model.safetensors", DType::F32, &Device::Cpu)
        .unwrap()
        .build(|vb| candle_nn::linear(3, 2, vb.pp("dense")))
        .unwrap();
    let out = candle_nn::Module::forward(
        &ok,
        &Tensor::new(&[[1f32, 0.0, 0.0]], &Device::Cpu).unwrap(),
    )
    .unwrap();
    assert_eq!(out.to_vec2::<f32>().unwrap(), vec![vec![1.5, 2.75]]);

    let err = md
        .load_weights("model.safetensors", DType::F32, &Device::Cpu)
        .unwrap()
        .build(|vb| candle_nn::linear(4, 2, vb.pp("dense")))
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("model files corrupt: ") && err.contains("shape mismatch"),
        "{err}"
    );
    assert!(!err.contains('\n'), "one line, no backtrace: {err}");
    let err = md
        .load_weights("model.safetensors", DType::F32, &Device::Cpu)
        .unwrap()
        .build(|vb| candle_nn::linear(3, 2, vb.pp("other")))
        .unwrap_err()
        .to_string();
    assert!(err.contains("other.weight"), "{err}");
}

#[test]
fn read_json_reports_bad_json_as_corrupt() {
    let dir = sample_dir();
    std::fs::write(dir.path().join("config.json"), "{\"hidden\": ").unwrap();
    let md = ModelDir::open(dir.path(), "toy").unwrap();
    let err = md
        .read_json::<serde_json::Value>("config.json")
        .unwrap_err();
    assert!(matches!(err, ModelError::Corrupt { .. }), "{err}");
    assert!(md.has("config.json") && !md.has("nope.json"));
}

#[test]
fn the_weights_revision_comes_from_the_manifest_or_the_file_without_loading() {
    let dir = sample_dir();
    let bytes = std::fs::read(dir.path().join("model.safetensors")).unwrap();
    // No manifest: the file is hashed, as load_weights would.
    let md = ModelDir::open(dir.path(), "toy").unwrap();
    assert_eq!(
        md.weights_revision("model.safetensors").unwrap(),
        sha256_hex(&bytes)[..12]
    );
    // The manifest's SHA-256 of the file.
    let listed = "cd".repeat(32);
    std::fs::write(
        dir.path().join(MANIFEST_FILE),
        format!(r#"{{"name": "toy", "files": {{"model.safetensors": "{listed}"}}}}"#),
    )
    .unwrap();
    let md = ModelDir::open(dir.path(), "toy").unwrap();
    assert_eq!(
        md.weights_revision("model.safetensors").unwrap(),
        "cdcdcdcdcdcd"
    );
    // A folder of graphs only: the manifest's weights_sha256 names the weights they hold.
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    let weights = "EF".repeat(32);
    std::fs::write(
        dir.path().join(MANIFEST_FILE),
        format!(r#"{{"name": "toy", "files": {{"text.onnx": "{listed}"}}, "weights_sha256": "{weights}"}}"#),
    )
    .unwrap();
    let md = ModelDir::open(dir.path(), "toy").unwrap();
    assert_eq!(
        md.manifest().unwrap().weights_sha256.as_deref(),
        Some(&*"ef".repeat(32))
    );
    assert_eq!(
        md.weights_revision("model.safetensors").unwrap(),
        "efefefefefef"
    );
    // Neither: the weights cannot be named, and the message says to pull.
    std::fs::remove_file(dir.path().join(MANIFEST_FILE)).unwrap();
    let md = ModelDir::open(dir.path(), "toy").unwrap();
    let err = md.weights_revision("model.safetensors").unwrap_err();
    assert!(matches!(err, ModelError::NotFound { .. }), "{err}");
    // A bad weights_sha256 is a corrupt manifest.
    std::fs::write(
        dir.path().join(MANIFEST_FILE),
        r#"{"name": "toy", "files": {}, "weights_sha256": "xyz"}"#,
    )
    .unwrap();
    let err = ModelDir::open(dir.path(), "toy").unwrap_err().to_string();
    assert!(err.contains("weights_sha256"), "{err}");
}
