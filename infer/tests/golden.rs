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
