//! ONNX (onnx.ai), the format a trained network leaves the lab in: the protobuf messages ppcr
//! writes ([`proto`]) and a builder for their graphs ([`OnnxGraph`]), which the attention
//! units and the networks append themselves to. Reading ONNX is a runtime's job (the tests use
//! tract); ppcr only writes it.

mod graph;
pub mod proto;

pub use graph::{IR_VERSION, OPSET, OnnxGraph, batch_norm_affine, int, ints, tensor_values};

/// Why a network could not be written as ONNX.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OnnxError {
    /// A part of the network has no ONNX form.
    #[error("{0} cannot be exported to ONNX")]
    Unsupported(String),
}
