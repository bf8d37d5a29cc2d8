//! PPCR (Zhang et al., arXiv 2303.01917) in a network of your own: a small two-block burn CNN
//! (not one of ppcr's ResNets) with an attention unit after each block, picked by name through
//! the factory as timm's `attn_layer` does, trained for a few SGD steps on the built-in
//! BreastMNIST with the crate's data loaders and batch maker.
//!
//! Run it: `cargo run --release --example ppcr_in_your_model [-- UNIT]` (UNIT: none, se, eca,
//! cbam, srm, gct, simam or ppcr; default ppcr).

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::optim::{GradientsParams, SgdConfig};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::SeedableRng;
use rand::seq::SliceRandom;

use ppcr::attention::{Attention, AttentionConfig, AttentionKind};
use ppcr::data::{AugmentConfig, LoadOptions, Normalization, builtin_breastmnist, make_batch};

/// A convolution, its BatchNorm, ReLU, then the attention unit.
#[derive(Module, Debug)]
struct Block {
    conv: Conv2d,
    norm: BatchNorm,
    attention: Attention,
}

impl Block {
    /// A 3x3 block from `inputs` to `outputs` channels on `size x size` maps.
    fn new(
        inputs: usize,
        outputs: usize,
        size: usize,
        unit: &AttentionConfig,
        device: &Device,
    ) -> Self {
        Block {
            conv: Conv2dConfig::new([inputs, outputs], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(device),
            norm: BatchNormConfig::new(outputs).init(device),
            // The unit is built for the feature map it will see: PPCR's per-pixel weights
            // depend on the map's size, the channel units' on its channel count.
            attention: unit
                .init(outputs, [size, size], device)
                .expect("the unit fits the block"),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.attention
            .forward(relu(self.norm.forward(self.conv.forward(x))))
    }
}

/// Two blocks with a max-pool between them, global average pooling and a linear classifier.
#[derive(Module, Debug)]
struct SmallNet {
    first: Block,
    pool: MaxPool2d,
    second: Block,
    classifier: Linear,
}

impl SmallNet {
    fn new(
        channels: usize,
        size: usize,
        classes: usize,
        unit: &AttentionConfig,
        device: &Device,
    ) -> Self {
        SmallNet {
            first: Block::new(channels, 16, size, unit, device),
            pool: MaxPool2dConfig::new([2, 2]).with_strides([2, 2]).init(),
            second: Block::new(16, 32, size / 2, unit, device),
            classifier: LinearConfig::new(32, classes).init(device),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let x = self
            .second
            .forward(self.pool.forward(self.first.forward(x)));
        let [batch, channels, _, _] = x.dims();
        self.classifier
            .forward(x.mean_dims(&[2, 3]).reshape([batch, channels]))
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let unit: AttentionKind = std::env::args()
        .nth(1)
        .as_deref()
        .unwrap_or("ppcr")
        .parse()?;
    let data = builtin_breastmnist(&LoadOptions::default())?;
    let shape = data.image_shape();
    let normalization = Normalization::from_split(&data.train);
    let augment = AugmentConfig::default_for(shape.height, shape.channels);
    let device = Device::flex().autodiff();
    device.seed(0);
    let config = AttentionConfig::new(unit);
    let mut model = SmallNet::new(
        shape.channels,
        shape.height,
        data.num_classes(),
        &config,
        &device,
    );
    println!(
        "SmallNet + {}: {} parameters, {} training images of {}x{}x{}",
        unit.label(),
        model.num_params(),
        data.train.len(),
        shape.channels,
        shape.height,
        shape.width
    );
    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    let mut optimizer = SgdConfig::new().init();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let mut order: Vec<usize> = (0..data.train.len()).collect();
    order.shuffle(&mut rng);
    let batch = 32;
    for (step, indices) in order.chunks_exact(batch).take(10).enumerate() {
        let (pixels, labels) = make_batch(
            &data.train,
            indices,
            Some(&augment),
            &mut rng,
            &normalization,
        );
        let input = Tensor::<4>::from_data(
            TensorData::new(pixels, [batch, shape.channels, shape.height, shape.width]),
            &device,
        );
        let targets = Tensor::<1, Int>::from_data(
            TensorData::new(
                labels.iter().map(|&l| l as i64).collect::<Vec<_>>(),
                [batch],
            ),
            &device,
        );
        let loss = loss_fn.forward(model.forward(input), targets);
        let value = loss.clone().into_scalar::<f32>();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optimizer.step(0.05, model, grads);
        println!("step {:2}: loss {value:.4}", step + 1);
    }
    Ok(())
}
