//! tract's scores match the reference framework's (onnxruntime, written by models/train.py)
//! within 1e-5 for every shipped version.

use streamscore_infer::{Backend, TractBackend};
use streamscore_modelstore::ModelStore;

#[derive(serde::Deserialize)]
struct Golden {
    rows: Vec<Vec<f32>>,
    scores: Vec<f32>,
    framework: String,
}

#[test]
fn tract_matches_the_golden_outputs_of_every_shipped_version() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../models");
    let store = ModelStore::open(root).expect("the shipped model store loads");
    let mut checked = 0;
    for version in store.versions() {
        let path = version.onnx_path.with_file_name("golden.json");
        let golden: Golden =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("golden.json")).expect("parses");
        assert!(golden.rows.len() >= 64, "{}: too few golden rows", version.key());
        let scorer = TractBackend.load(&version).expect("tract loads the version");
        let input: Vec<f32> = golden.rows.iter().flatten().copied().collect();
        // All rows at once, and in uneven batches: the batch dimension is symbolic.
        let all = scorer.score(&input, golden.rows.len()).expect("scores");
        assert_eq!(scorer.score(&[], 0).expect("an empty batch"), Vec::<f32>::new());
        let mut batched = Vec::new();
        let features = scorer.features();
        for chunk in input.chunks(37 * features) {
            batched.extend(scorer.score(chunk, chunk.len() / features).expect("scores"));
        }
        for (i, ((tract, batch), reference)) in all.iter().zip(&batched).zip(&golden.scores).enumerate() {
            assert!(
                (tract - reference).abs() <= 1e-5,
                "{} row {i}: tract {tract} vs {} {reference}",
                version.key(),
                golden.framework
            );
            assert!((tract - batch).abs() <= 1e-6, "{} row {i}: batch size changed the score", version.key());
        }
        checked += 1;
    }
    assert!(checked >= 2, "at least two shipped versions");
}

#[test]
fn a_tampered_model_file_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let source = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../models/fraud"));
    let family = dir.path().join("fraud");
    std::fs::create_dir_all(family.join("1")).expect("mkdir");
    std::fs::copy(source.join("model.json"), family.join("model.json")).expect("copy");
    std::fs::copy(source.join("1/metadata.json"), family.join("1/metadata.json")).expect("copy");
    let mut onnx = std::fs::read(source.join("1/model.onnx")).expect("read");
    let last = onnx.len() - 1;
    onnx[last] ^= 0x01;
    std::fs::write(family.join("1/model.onnx"), onnx).expect("write");
    let error = ModelStore::open(dir.path()).expect_err("a file whose sha256 does not match is refused");
    assert!(error.to_string().contains("sha256"), "{error}");
}

/// A copy of the shipped fraud family with version 1 only, in a temp dir.
fn copy_of_fraud_1() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let source = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../models/fraud"));
    let family = dir.path().join("fraud");
    std::fs::create_dir_all(family.join("1")).expect("mkdir");
    for file in ["model.json", "1/metadata.json", "1/model.onnx"] {
        std::fs::copy(source.join(file), family.join(file)).expect("copy");
    }
    (dir, family)
}

/// What a backend loads is what was hashed: a file swapped after the store checked it is
/// refused by both backends' loads, not run.
#[test]
fn a_model_file_swapped_after_the_check_is_refused_at_load() {
    use streamscore_infer::{Backend, TractBackend};
    let (dir, family) = copy_of_fraud_1();
    let store = ModelStore::open(dir.path()).expect("the copy is valid");
    let version = store.get("fraud", "1").expect("fraud/1");
    assert!(TractBackend.load(&version).is_ok(), "loads as checked");
    let mut onnx = std::fs::read(family.join("1/model.onnx")).expect("read");
    let last = onnx.len() - 1;
    onnx[last] ^= 0x01;
    std::fs::write(family.join("1/model.onnx"), onnx).expect("swap");
    let error = TractBackend.load(&version).err().expect("the swapped file is refused");
    assert!(error.to_string().contains("sha256"), "{error}");
}

/// `onnx_file` names a file inside the version folder: an absolute path or a way out of the
/// folder is refused.
#[test]
fn an_onnx_file_outside_the_version_folder_is_refused() {
    for outside in ["/etc/passwd", "../2/model.onnx", "sub/../../x.onnx", ""] {
        let (dir, family) = copy_of_fraud_1();
        let path = family.join("1/metadata.json");
        let mut meta: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("json");
        meta["onnx_file"] = serde_json::Value::String(outside.to_owned());
        std::fs::write(&path, meta.to_string()).expect("write");
        let error = ModelStore::open(dir.path()).expect_err(outside);
        assert!(error.to_string().contains("inside the version folder"), "{outside}: {error}");
    }
}

/// One bad version or model is refused with its reason and the rest are served: a tampered
/// version, a model whose `model.json` does not parse, and a default version with no folder.
/// A store where nothing loads is an error naming every refusal.
#[test]
fn a_bad_version_is_refused_and_the_others_are_served() {
    use streamscore_modelstore::RouteError;
    let (dir, family) = copy_of_fraud_1();
    let source = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../models/fraud"));
    std::fs::create_dir_all(family.join("2")).expect("mkdir");
    std::fs::copy(source.join("2/metadata.json"), family.join("2/metadata.json")).expect("copy");
    let mut onnx = std::fs::read(source.join("2/model.onnx")).expect("read");
    onnx[0] ^= 0x01;
    std::fs::write(family.join("2/model.onnx"), onnx).expect("tamper");
    let broken = dir.path().join("broken");
    std::fs::create_dir_all(&broken).expect("mkdir");
    std::fs::write(broken.join("model.json"), "{not json").expect("write");
    let orphan = dir.path().join("orphan");
    std::fs::create_dir_all(orphan.join("1")).expect("mkdir");
    std::fs::write(orphan.join("model.json"), r#"{"name": "orphan", "default_version": "7"}"#).expect("write");

    let store = ModelStore::open(dir.path()).expect("the good version is served");
    let refused: Vec<(String, bool)> = store.refused().iter().map(|r| (r.key(), r.sha256.is_some())).collect();
    assert_eq!(
        refused,
        [("broken/*".to_owned(), false), ("fraud/2".to_owned(), true), ("orphan/7".to_owned(), false)],
        "{:?}",
        store.refused()
    );
    assert!(store.refused()[1].reason.contains("sha256"), "{}", store.refused()[1].reason);
    assert!(store.refused()[2].reason.contains("no folder"), "{}", store.refused()[2].reason);
    assert_eq!(store.route("fraud", None, None).expect("fraud/1 is served").key(), "fraud/1");
    match store.route("fraud", Some("2"), None) {
        Err(RouteError::Refused { version, reason, .. }) => assert!(version == "2" && reason.contains("sha256")),
        other => panic!("fraud/2 should be refused, got {other:?}"),
    }
    assert!(matches!(store.route("orphan", None, None), Err(RouteError::Refused { .. })));
    assert!(matches!(store.route("broken", None, None), Err(RouteError::UnknownModel { .. })));
    assert_eq!(store.versions().count(), 1);

    std::fs::write(family.join("1/model.onnx"), b"not the hashed bytes").expect("tamper");
    let error = ModelStore::open(dir.path()).expect_err("nothing loads");
    let message = error.to_string();
    assert!(message.contains("fraud/1 refused") && message.contains("fraud/2 refused"), "{message}");
}
