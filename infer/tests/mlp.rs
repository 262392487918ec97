//! The shipped models read as chains of dense layers from their ONNX initializers; the CPU
//! reference of that arithmetic (what the CUDA kernels compute) matches the golden outputs;
//! unsupported graphs are refused naming the operator.

use streamscore_infer::mlp::{Activation, GraphError, Mlp};
use streamscore_modelstore::ModelStore;
use tract_onnx::prelude::Framework;

#[derive(serde::Deserialize)]
struct Golden {
    rows: Vec<Vec<f32>>,
    scores: Vec<f32>,
}

#[test]
fn shipped_models_read_as_dense_chains_and_match_the_goldens() {
    let store = ModelStore::open(concat!(env!("CARGO_MANIFEST_DIR"), "/../models")).expect("models");
    for version in store.versions() {
        let mlp = Mlp::from_onnx(&version.onnx_path).expect("a supported chain");
        assert_eq!(mlp.inputs(), version.meta.features.len());
        assert_eq!(mlp.outputs(), 1);
        assert_eq!(mlp.layers.last().map(|l| l.activation), Some(Activation::Sigmoid));
        let golden: Golden = serde_json::from_str(
            &std::fs::read_to_string(version.onnx_path.with_file_name("golden.json")).expect("golden"),
        )
        .expect("json");
        let input: Vec<f32> = golden.rows.iter().flatten().copied().collect();
        let scores = mlp.forward(&input, golden.rows.len());
        for (i, (ours, reference)) in scores.iter().zip(&golden.scores).enumerate() {
            assert!((ours - reference).abs() <= 1e-5, "{} row {i}: {ours} vs {reference}", version.key());
        }
    }
}

#[test]
fn an_unsupported_operator_is_refused_by_name() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/fraud/1/model.onnx");
    let mut proto = tract_onnx::onnx().proto_model_for_path(path).expect("parses");
    let graph = proto.graph.as_mut().expect("graph");
    graph.node[2].op_type = "LeakyRelu".to_owned();
    match Mlp::from_proto(&proto) {
        Err(GraphError::Unsupported { op, .. }) => assert_eq!(op, "LeakyRelu"),
        other => panic!("expected a refusal naming LeakyRelu, got {other:?}"),
    }
    let error = Mlp::from_proto(&proto).expect_err("refused").to_string();
    assert!(error.contains("LeakyRelu"), "{error}");
}
