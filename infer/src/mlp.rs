//! A model as a chain of dense layers, read from the ONNX file's initializers: what the CUDA
//! kernels compute, with a CPU reference of the same arithmetic.
//!
//! Supported graphs are chains of MatMul or Gemm, Add, Relu, Tanh, Sigmoid and Softmax; any
//! other operator is refused with its name, as is anything that is not a single chain.

use std::path::Path;

use tract_onnx::pb;
use tract_onnx::prelude::Framework;

/// An elementwise function after a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Identity,
    Relu,
    Tanh,
    Sigmoid,
    /// Over the layer's outputs, per row.
    Softmax,
}

/// `y = activation(x · W + b)`, with W row-major `inputs × outputs`.
#[derive(Debug, Clone, PartialEq)]
pub struct Dense {
    pub inputs: usize,
    pub outputs: usize,
    pub weights: Vec<f32>,
    pub bias: Vec<f32>,
    pub activation: Activation,
}

/// A chain of dense layers.
#[derive(Debug, Clone, PartialEq)]
pub struct Mlp {
    pub layers: Vec<Dense>,
}

/// Why a graph cannot be run as a chain of dense layers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GraphError {
    #[error("reading the ONNX file: {0}")]
    Read(String),
    #[error(
        "operator {op} (node {node:?}) is not supported; supported: MatMul, Gemm, Add, Relu, Tanh, Sigmoid, Softmax"
    )]
    Unsupported { op: String, node: String },
    #[error("node {node:?} ({op}) is not a link of a single chain: {reason}")]
    NotAChain { op: String, node: String, reason: String },
    #[error("initializer {name}: {reason}")]
    Initializer { name: String, reason: String },
}

fn initializer<'a>(graph: &'a pb::GraphProto, name: &str) -> Option<&'a pb::TensorProto> {
    graph.initializer.iter().find(|t| t.name == name)
}

/// Float values of an initializer (raw little-endian bytes or `float_data`) and its dims.
fn floats(tensor: &pb::TensorProto) -> Result<(Vec<f32>, Vec<usize>), GraphError> {
    let error = |reason: &str| GraphError::Initializer { name: tensor.name.clone(), reason: reason.to_owned() };
    if tensor.data_type != 1 {
        return Err(error("not float32"));
    }
    let values: Vec<f32> = if tensor.raw_data.is_empty() {
        tensor.float_data.clone()
    } else {
        tensor.raw_data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
    };
    let dims = tensor
        .dims
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| error("a negative dimension")))
        .collect::<Result<Vec<usize>, _>>()?;
    let count = dims.iter().try_fold(1_usize, |n, &d| n.checked_mul(d)).ok_or_else(|| error("dims overflow"))?;
    if values.len() != count {
        return Err(error("value count does not match its dims"));
    }
    Ok((values, dims))
}

impl Mlp {
    /// Reads an ONNX file.
    pub fn from_onnx(path: &Path) -> Result<Self, GraphError> {
        let proto = tract_onnx::onnx().proto_model_for_path(path).map_err(|e| GraphError::Read(format!("{e:#}")))?;
        Self::from_proto(&proto)
    }

    /// Reads an ONNX model from its bytes (those that were hashed: see
    /// `ModelVersion::read_verified`).
    pub fn from_onnx_bytes(bytes: &[u8]) -> Result<Self, GraphError> {
        let proto = tract_onnx::onnx()
            .proto_model_for_read(&mut std::io::Cursor::new(bytes))
            .map_err(|e| GraphError::Read(format!("{e:#}")))?;
        Self::from_proto(&proto)
    }

    /// Reads a parsed ONNX model.
    pub fn from_proto(model: &pb::ModelProto) -> Result<Self, GraphError> {
        let graph = model.graph.as_ref().ok_or_else(|| GraphError::Read("no graph".to_owned()))?;
        let mut current =
            graph.input.iter().map(|i| i.name.clone()).find(|n| initializer(graph, n).is_none()).unwrap_or_default();
        let mut layers: Vec<Dense> = Vec::new();
        for node in &graph.node {
            let not_chain = |reason: &str| GraphError::NotAChain {
                op: node.op_type.clone(),
                node: node.name.clone(),
                reason: reason.to_owned(),
            };
            let data_input = node.input.iter().find(|i| initializer(graph, i).is_none());
            if data_input != Some(&current) {
                return Err(not_chain(&format!("expected its input to be {current:?}")));
            }
            match node.op_type.as_str() {
                "MatMul" | "Gemm" => {
                    if node.input.first() != Some(&current) {
                        return Err(not_chain("the data must be the first operand (x · W)"));
                    }
                    let weight = node
                        .input
                        .iter()
                        .find_map(|i| initializer(graph, i))
                        .ok_or_else(|| not_chain("no weight initializer"))?;
                    let (mut w, dims) = floats(weight)?;
                    let [mut rows, mut cols] = dims[..] else { return Err(not_chain("weight is not 2-D")) };
                    let attribute = |name: &str| node.attribute.iter().find(|a| a.name == name);
                    if node.op_type == "Gemm" {
                        let alpha = attribute("alpha").map_or(1.0, |a| a.f);
                        let beta = attribute("beta").map_or(1.0, |a| a.f);
                        if alpha != 1.0 || beta != 1.0 {
                            return Err(not_chain(&format!("Gemm with alpha {alpha} and beta {beta} (only 1 and 1)")));
                        }
                        if attribute("transA").is_some_and(|a| a.i != 0) {
                            return Err(not_chain("Gemm with transA"));
                        }
                    }
                    let trans_b = attribute("transB").is_some_and(|a| a.i == 1);
                    if trans_b {
                        let mut t = vec![0.0; w.len()];
                        for r in 0..rows {
                            for c in 0..cols {
                                t[c * rows + r] = w[r * cols + c];
                            }
                        }
                        w = t;
                        std::mem::swap(&mut rows, &mut cols);
                    }
                    if let Some(previous) = layers.last() {
                        if previous.outputs != rows {
                            return Err(not_chain(&format!(
                                "takes {rows} inputs after a layer of {}",
                                previous.outputs
                            )));
                        }
                    }
                    let mut bias = vec![0.0; cols];
                    if node.op_type == "Gemm" {
                        if let Some(c) = node.input.get(2).and_then(|n| initializer(graph, n)) {
                            bias = floats(c)?.0;
                            if bias.len() != cols {
                                return Err(not_chain(&format!("bias of {} for {cols} outputs", bias.len())));
                            }
                        }
                    }
                    layers.push(Dense {
                        inputs: rows,
                        outputs: cols,
                        weights: w,
                        bias,
                        activation: Activation::Identity,
                    });
                }
                "Add" => {
                    let layer = layers.last_mut().ok_or_else(|| not_chain("Add before any MatMul"))?;
                    let b = node
                        .input
                        .iter()
                        .find_map(|i| initializer(graph, i))
                        .ok_or_else(|| not_chain("no bias initializer"))?;
                    let (values, _) = floats(b)?;
                    if values.len() != layer.outputs {
                        return Err(not_chain(&format!("bias of {} for {} outputs", values.len(), layer.outputs)));
                    }
                    for (acc, v) in layer.bias.iter_mut().zip(values) {
                        *acc += v;
                    }
                }
                "Relu" | "Tanh" | "Sigmoid" | "Softmax" => {
                    let layer = layers.last_mut().ok_or_else(|| not_chain("activation before any layer"))?;
                    if layer.activation != Activation::Identity {
                        return Err(not_chain("two activations on one layer"));
                    }
                    layer.activation = match node.op_type.as_str() {
                        "Relu" => Activation::Relu,
                        "Tanh" => Activation::Tanh,
                        "Sigmoid" => Activation::Sigmoid,
                        _ => Activation::Softmax,
                    };
                }
                other => return Err(GraphError::Unsupported { op: other.to_owned(), node: node.name.clone() }),
            }
            current = node.output.first().cloned().unwrap_or_default();
        }
        if layers.is_empty() {
            return Err(GraphError::Read("no layers".to_owned()));
        }
        Ok(Self { layers })
    }

    pub fn inputs(&self) -> usize {
        self.layers.first().map_or(0, |l| l.inputs)
    }

    pub fn outputs(&self) -> usize {
        self.layers.last().map_or(0, |l| l.outputs)
    }

    /// The CPU reference: `rows` rows in, `rows × outputs` values out (f32 throughout, like
    /// the kernels).
    pub fn forward(&self, input: &[f32], rows: usize) -> Vec<f32> {
        let mut x = input.to_vec();
        for layer in &self.layers {
            let mut y = vec![0.0_f32; rows * layer.outputs];
            for r in 0..rows {
                let row = &x[r * layer.inputs..(r + 1) * layer.inputs];
                let out = &mut y[r * layer.outputs..(r + 1) * layer.outputs];
                out.copy_from_slice(&layer.bias);
                for (k, &xk) in row.iter().enumerate() {
                    let w = &layer.weights[k * layer.outputs..(k + 1) * layer.outputs];
                    for (o, wk) in out.iter_mut().zip(w) {
                        *o += xk * wk;
                    }
                }
                activate(layer.activation, out);
            }
            x = y;
        }
        x
    }
}

fn activate(activation: Activation, values: &mut [f32]) {
    match activation {
        Activation::Identity => {}
        Activation::Relu => values.iter_mut().for_each(|v| *v = v.max(0.0)),
        Activation::Tanh => values.iter_mut().for_each(|v| *v = v.tanh()),
        Activation::Sigmoid => values.iter_mut().for_each(|v| *v = 1.0 / (1.0 + (-*v).exp())),
        Activation::Softmax => {
            let max = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0.0;
            for v in values.iter_mut() {
                *v = (*v - max).exp();
                sum += *v;
            }
            values.iter_mut().for_each(|v| *v /= sum);
        }
    }
}
