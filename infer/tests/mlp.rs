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

#[test]
fn gemm_reads_like_matmul_and_only_with_unit_alpha_beta_and_data_first() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/fraud/1/model.onnx");
    let proto = tract_onnx::onnx().proto_model_for_path(path).expect("parses");
    let reference = Mlp::from_proto(&proto).expect("the shipped chain");
    let first_matmul =
        proto.graph.as_ref().expect("graph").node.iter().position(|n| n.op_type == "MatMul").expect("a MatMul");

    let mut gemm = proto.clone();
    gemm.graph.as_mut().expect("graph").node[first_matmul].op_type = "Gemm".to_owned();
    assert_eq!(Mlp::from_proto(&gemm).expect("a Gemm with defaults"), reference);

    let mut scaled = gemm.clone();
    scaled.graph.as_mut().expect("graph").node[first_matmul].attribute.push(tract_onnx::pb::AttributeProto {
        name: "alpha".to_owned(),
        f: 2.0,
        ..Default::default()
    });
    match Mlp::from_proto(&scaled) {
        Err(GraphError::NotAChain { reason, .. }) => assert!(reason.contains("alpha 2"), "{reason}"),
        other => panic!("expected alpha 2 refused, got {other:?}"),
    }

    let mut swapped = proto.clone();
    swapped.graph.as_mut().expect("graph").node[first_matmul].input.swap(0, 1);
    match Mlp::from_proto(&swapped) {
        Err(GraphError::NotAChain { reason, .. }) => assert!(reason.contains("first operand"), "{reason}"),
        other => panic!("expected W · x refused, got {other:?}"),
    }
}

/// Initializer dims whose product overflows, or that are negative, are refused, never used
/// to index.
#[test]
fn hostile_initializer_dims_are_refused() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/fraud/1/model.onnx");
    let proto = tract_onnx::onnx().proto_model_for_path(path).expect("parses");
    for (dims, says) in [(vec![i64::MAX, i64::MAX], "overflow"), (vec![-1, 16], "negative")] {
        let mut hostile = proto.clone();
        let graph = hostile.graph.as_mut().expect("graph");
        let weights = graph.initializer.iter_mut().find(|t| t.dims.len() == 2).expect("a weight matrix");
        weights.dims = dims;
        let error = Mlp::from_proto(&hostile).expect_err(says).to_string();
        assert!(error.contains(says), "{says}: {error}");
    }
}
