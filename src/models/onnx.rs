//! A ResNet (He et al., CVPR 2016) with its attention units as an ONNX graph in inference
//! form: every convolution with its BatchNorm folded in, the units as each writes itself
//! ([`crate::attention::AttentionUnit::to_onnx`]), and the classifier.

use burn::nn::PaddingConfig2d;

use super::{ResNet, ResidualBlock, Shortcut};
use crate::onnx::{OnnxError, OnnxGraph, ints};

impl ResNet {
    /// Append the network to `graph` from the value `x` (`[N, C, H, W]`, already normalised, at
    /// the network's input size); returns the name of the class logits `[N, classes]`.
    pub fn to_onnx(&self, graph: &mut OnnxGraph, x: &str) -> Result<String, OnnxError> {
        let mut size = [self.input_size; 2];
        let mut x = graph.conv_batch_norm(x, &self.stem.conv, Some(&self.stem.norm))?;
        x = graph.unary("Relu", &x);
        size = conv_output(
            size,
            &self.stem.conv.kernel_size,
            &self.stem.conv.stride,
            &self.stem.conv.padding,
        );
        if let Some(pool) = &self.stem.pool {
            let PaddingConfig2d::Explicit(top, left, bottom, right) = pool.padding else {
                return Err(OnnxError::Unsupported("the stem's max-pool padding".into()));
            };
            x = graph.node(
                "MaxPool",
                &[&x],
                vec![
                    ints("kernel_shape", &pool.kernel_size.map(|k| k as i64)),
                    ints("strides", &pool.stride.map(|s| s as i64)),
                    ints("pads", &[top, left, bottom, right].map(|p| p as i64)),
                ],
            );
            size = conv_output(size, &pool.kernel_size, &pool.stride, &pool.padding);
        }
        for stage in &self.stages {
            for block in &stage.blocks {
                (x, size) = block_to_onnx(graph, block, &x, size)?;
            }
        }
        let pooled = graph.global_pool("GlobalAveragePool", &x);
        Ok(graph.linear(
            &pooled,
            self.classifier.weight.val(),
            self.classifier.bias.as_ref().map(|b| b.val()),
        ))
    }
}

/// The spatial size after a convolution or pool.
fn conv_output(
    size: [usize; 2],
    kernel: &[usize; 2],
    stride: &[usize; 2],
    padding: &PaddingConfig2d,
) -> [usize; 2] {
    let [top, left, bottom, right] = match padding {
        PaddingConfig2d::Explicit(top, left, bottom, right) => [*top, *left, *bottom, *right],
        _ => [0; 4],
    };
    [
        (size[0] + top + bottom - kernel[0]) / stride[0] + 1,
        (size[1] + left + right - kernel[1]) / stride[1] + 1,
    ]
}

/// One residual block from `x` (at `size`): its branch, its attention unit, its shortcut, the
/// sum and ReLU; returns the output and its size.
fn block_to_onnx(
    graph: &mut OnnxGraph,
    block: &ResidualBlock,
    x: &str,
    size: [usize; 2],
) -> Result<(String, [usize; 2]), OnnxError> {
    let (convs, attention, shortcut) = match block {
        ResidualBlock::Basic(b) => (
            vec![(&b.conv1, &b.bn1), (&b.conv2, &b.bn2)],
            &b.attention,
            &b.shortcut,
        ),
        ResidualBlock::Bottleneck(b) => (
            vec![(&b.conv1, &b.bn1), (&b.conv2, &b.bn2), (&b.conv3, &b.bn3)],
            &b.attention,
            &b.shortcut,
        ),
    };
    let mut branch = x.to_string();
    let mut branch_size = size;
    let last = convs.len() - 1;
    for (index, (conv, norm)) in convs.into_iter().enumerate() {
        branch = graph.conv_batch_norm(&branch, conv, Some(norm))?;
        if index < last {
            branch = graph.unary("Relu", &branch);
        }
        branch_size = conv_output(branch_size, &conv.kernel_size, &conv.stride, &conv.padding);
    }
    let out_channels = match block {
        ResidualBlock::Basic(b) => b.conv2.weight.val().dims()[0],
        ResidualBlock::Bottleneck(b) => b.conv3.weight.val().dims()[0],
    };
    let branch = attention.to_onnx(
        graph,
        &branch,
        [out_channels, branch_size[0], branch_size[1]],
    )?;
    let identity = match shortcut {
        Shortcut::Identity(_) => x.to_string(),
        Shortcut::Projection(projection) => {
            graph.conv_batch_norm(x, &projection.conv, Some(&projection.norm))?
        }
        Shortcut::ZeroPad(pad) => {
            let mut subsampled = x.to_string();
            if pad.stride > 1 {
                let starts = graph.int_constant("starts", &[0, 0]);
                let ends = graph.int_constant("ends", &[i64::MAX, i64::MAX]);
                let axes = graph.int_constant("axes", &[2, 3]);
                let steps = graph.int_constant("steps", &[pad.stride as i64; 2]);
                subsampled = graph.node("Slice", &[x, &starts, &ends, &axes, &steps], vec![]);
            }
            let pads = graph.int_constant(
                "pads",
                &[
                    0,
                    pad.pad_before as i64,
                    0,
                    0,
                    0,
                    pad.pad_after as i64,
                    0,
                    0,
                ],
            );
            graph.node("Pad", &[&subsampled, &pads], vec![])
        }
    };
    let sum = graph.binary("Add", &branch, &identity);
    Ok((graph.unary("Relu", &sum), branch_size))
}
