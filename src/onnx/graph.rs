//! A builder for ONNX graphs: constants (initializers) and nodes appended in topological order,
//! every value given a fresh name, and the finished [`ModelProto`] with its opset and metadata.
//! The operators are those of the default domain at [`OPSET`].

use burn::tensor::{Tensor, TensorData};

use super::proto::{
    AttributeProto, AttributeType, Dimension, FLOAT, GraphProto, INT64, ModelProto, NodeProto,
    OperatorSetIdProto, StringStringEntryProto, TensorProto, TensorShapeProto, TensorTypeProto,
    TypeProto, ValueInfoProto,
};

/// The opset of the default domain the graphs use: 13, where `ReduceMean` and `ReduceMax` take
/// their axes as an attribute and `ReduceSum` as an input; every runtime of the last years
/// reads it.
pub const OPSET: i64 = 13;

/// The ONNX IR version of the files (8: ONNX 1.10 and later).
pub const IR_VERSION: i64 = 8;

/// An integer attribute.
pub fn int(name: &str, value: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Int as i32,
        i: value,
        ..Default::default()
    }
}

/// An integer-list attribute.
pub fn ints(name: &str, values: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Ints as i32,
        ints: values.to_vec(),
        ..Default::default()
    }
}

/// A graph under construction.
#[derive(Debug, Default)]
pub struct OnnxGraph {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    names: usize,
}

fn dims(shape: &[usize]) -> Vec<i64> {
    shape.iter().map(|&d| d as i64).collect()
}

impl OnnxGraph {
    /// An empty graph.
    pub fn new() -> Self {
        Self::default()
    }

    fn fresh(&mut self, hint: &str) -> String {
        self.names += 1;
        format!("{hint}_{}", self.names)
    }

    /// A float constant of `shape` (row-major `values`); returns its name.
    pub fn constant(&mut self, hint: &str, values: &[f32], shape: &[usize]) -> String {
        assert_eq!(
            values.len(),
            shape.iter().product::<usize>(),
            "constant {hint}: values do not fill {shape:?}"
        );
        let name = self.fresh(hint);
        self.initializers.push(TensorProto {
            dims: dims(shape),
            data_type: FLOAT,
            name: name.clone(),
            raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        });
        name
    }

    /// A scalar float constant (broadcasts against anything).
    pub fn scalar(&mut self, hint: &str, value: f32) -> String {
        self.constant(hint, &[value], &[])
    }

    /// An int64 constant (shapes, axes, pads); returns its name.
    pub fn int_constant(&mut self, hint: &str, values: &[i64]) -> String {
        let name = self.fresh(hint);
        self.initializers.push(TensorProto {
            dims: vec![values.len() as i64],
            data_type: INT64,
            name: name.clone(),
            raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        });
        name
    }

    /// A float constant holding a tensor's values, reshaped to `shape` (same element count).
    pub fn tensor<const D: usize>(
        &mut self,
        hint: &str,
        tensor: Tensor<D>,
        shape: &[usize],
    ) -> String {
        let values = tensor_values(tensor.into_data());
        self.constant(hint, &values, shape)
    }

    /// Append a node with one output; returns the output's name.
    pub fn node(&mut self, op: &str, inputs: &[&str], attribute: Vec<AttributeProto>) -> String {
        let output = self.fresh(&op.to_lowercase());
        self.named_node(op, inputs, attribute, &output)
    }

    /// Append a node whose output has the given name (a graph output); returns it.
    pub fn named_node(
        &mut self,
        op: &str,
        inputs: &[&str],
        attribute: Vec<AttributeProto>,
        output: &str,
    ) -> String {
        let output = output.to_string();
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.clone()],
            name: output.clone(),
            op_type: op.into(),
            attribute,
        });
        output
    }

    /// `a op b` for a binary elementwise operator (`Add`, `Sub`, `Mul`, `Div`).
    pub fn binary(&mut self, op: &str, a: &str, b: &str) -> String {
        self.node(op, &[a, b], vec![])
    }

    /// A unary elementwise operator (`Relu`, `Sigmoid`, `Sqrt`, `Tanh`, ...).
    pub fn unary(&mut self, op: &str, x: &str) -> String {
        self.node(op, &[x], vec![])
    }

    /// `ReduceMean` or `ReduceMax` over `axes` (kept as size-1 dimensions).
    pub fn reduce(&mut self, op: &str, x: &str, axes: &[i64]) -> String {
        self.node(op, &[x], vec![ints("axes", axes), int("keepdims", 1)])
    }

    /// `ReduceSum` over `axes` (kept), whose axes are an input from opset 13.
    pub fn reduce_sum(&mut self, x: &str, axes: &[i64]) -> String {
        let axes = self.int_constant("axes", axes);
        self.node("ReduceSum", &[x, &axes], vec![int("keepdims", 1)])
    }

    /// `x` reshaped to `shape` (0 copies the input's dimension, -1 is inferred).
    pub fn reshape(&mut self, x: &str, shape: &[i64]) -> String {
        let shape = self.int_constant("shape", shape);
        self.node("Reshape", &[x, &shape], vec![])
    }

    /// `x [B, in] * weight [in, out] + bias [out]` (burn's `Linear` layout).
    pub fn linear(&mut self, x: &str, weight: Tensor<2>, bias: Option<Tensor<1>>) -> String {
        let [inputs, outputs] = weight.dims();
        let weight = self.tensor("weight", weight, &[inputs, outputs]);
        match bias {
            Some(bias) => {
                let bias = self.tensor("bias", bias, &[outputs]);
                self.node("Gemm", &[x, &weight, &bias], vec![])
            }
            None => self.node("Gemm", &[x, &weight], vec![]),
        }
    }

    /// The finished model: `input` of `[N, input_shape...]` (N symbolic) and `output` of
    /// `[N, output_width]`, both float; `metadata` as the model's metadata properties.
    pub fn into_model(
        self,
        input: &str,
        input_shape: &[usize],
        output: &str,
        output_width: usize,
        metadata: Vec<(String, String)>,
    ) -> ModelProto {
        let value = |name: &str, shape: &[usize]| {
            let batch = Dimension {
                dim_value: None,
                dim_param: Some("N".into()),
            };
            let rest = shape.iter().map(|&d| Dimension {
                dim_value: Some(d as i64),
                dim_param: None,
            });
            ValueInfoProto {
                name: name.into(),
                r#type: Some(TypeProto {
                    tensor_type: Some(TensorTypeProto {
                        elem_type: FLOAT,
                        shape: Some(TensorShapeProto {
                            dim: std::iter::once(batch).chain(rest).collect(),
                        }),
                    }),
                }),
            }
        };
        ModelProto {
            ir_version: IR_VERSION,
            opset_import: vec![OperatorSetIdProto {
                domain: String::new(),
                version: OPSET,
            }],
            producer_name: "ppcr".into(),
            producer_version: env!("CARGO_PKG_VERSION").into(),
            doc_string: String::new(),
            graph: Some(GraphProto {
                node: self.nodes,
                name: "ppcr".into(),
                initializer: self.initializers,
                doc_string: String::new(),
                input: vec![value(input, input_shape)],
                output: vec![value(output, &[output_width])],
            }),
            metadata_props: metadata
                .into_iter()
                .map(|(key, value)| StringStringEntryProto { key, value })
                .collect(),
        }
    }
}

/// The `f32` values of tensor data of any float type.
pub fn tensor_values(data: TensorData) -> Vec<f32> {
    data.convert::<f32>()
        .try_to_vec::<f32>()
        .expect("float data converts to f32")
}

/// A BatchNorm in inference form as a per-channel affine map `y = scale * x + shift`:
/// `scale = gamma / sqrt(running_var + eps)`, `shift = beta - running_mean * scale`.
pub fn batch_norm_affine(norm: &burn::nn::BatchNorm) -> (Vec<f32>, Vec<f32>) {
    let values = |tensor: Tensor<1>| tensor_values(tensor.into_data());
    let gamma = values(norm.gamma.val());
    let beta = values(norm.beta.val());
    let mean = values(norm.running_mean.value());
    let variance = values(norm.running_var.value());
    let scale: Vec<f32> = gamma
        .iter()
        .zip(&variance)
        .map(|(g, v)| (*g as f64 / (*v as f64 + norm.epsilon).sqrt()) as f32)
        .collect();
    let shift = beta
        .iter()
        .zip(&mean)
        .zip(&scale)
        .map(|((b, m), s)| b - m * s)
        .collect();
    (scale, shift)
}

impl OnnxGraph {
    /// A 2-D convolution followed by a BatchNorm in inference form, folded into one `Conv`
    /// (weights scaled per output channel, the shift as its bias). Refuses paddings ONNX's
    /// `pads` cannot say as burn does (`Same` with an even kernel) and dilated or grouped
    /// convolutions, which ppcr's networks do not use.
    pub fn conv_batch_norm(
        &mut self,
        x: &str,
        conv: &burn::nn::conv::Conv2d,
        norm: Option<&burn::nn::BatchNorm>,
    ) -> Result<String, super::OnnxError> {
        use burn::nn::PaddingConfig2d;
        let [out, inputs, kh, kw] = conv.weight.val().dims();
        let pads = match conv.padding {
            PaddingConfig2d::Valid => [0, 0, 0, 0],
            PaddingConfig2d::Explicit(top, left, bottom, right) => [top, left, bottom, right],
            _ => {
                return Err(super::OnnxError::Unsupported(
                    "a convolution with 'same' padding".into(),
                ));
            }
        };
        if conv.dilation != [1, 1] || conv.groups != 1 {
            return Err(super::OnnxError::Unsupported(
                "a dilated or grouped convolution".into(),
            ));
        }
        let mut weight = tensor_values(conv.weight.val().into_data());
        let mut bias = match &conv.bias {
            Some(bias) => tensor_values(bias.val().into_data()),
            None => vec![0.0; out],
        };
        if let Some(norm) = norm {
            let (scale, shift) = batch_norm_affine(norm);
            let per_filter = inputs * kh * kw;
            for (channel, filter) in weight.chunks_mut(per_filter).enumerate() {
                filter.iter_mut().for_each(|w| *w *= scale[channel]);
                bias[channel] = bias[channel] * scale[channel] + shift[channel];
            }
        }
        let weight = self.constant("conv_weight", &weight, &[out, inputs, kh, kw]);
        let bias = self.constant("conv_bias", &bias, &[out]);
        let [top, left, bottom, right] = pads.map(|p| p as i64);
        Ok(self.node(
            "Conv",
            &[x, &weight, &bias],
            vec![
                ints("kernel_shape", &[kh as i64, kw as i64]),
                ints("strides", &conv.stride.map(|s| s as i64)),
                ints("pads", &[top, left, bottom, right]),
            ],
        ))
    }

    /// `x * gate` with a per-channel gate `[N, C]` broadcast over the plane.
    pub fn scale_channels(&mut self, x: &str, gate: &str, channels: usize) -> String {
        let gate = self.reshape(gate, &[-1, channels as i64, 1, 1]);
        self.binary("Mul", x, &gate)
    }

    /// `[N, C, H, W]` pooled to `[N, C]` by `GlobalAveragePool` or `GlobalMaxPool`.
    pub fn global_pool(&mut self, op: &str, x: &str) -> String {
        let pooled = self.unary(op, x);
        self.node("Flatten", &[&pooled], vec![int("axis", 1)])
    }
}
