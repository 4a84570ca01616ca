//! SIREN, bilinear resize (values and gradients) and deep-daze's loss against PyTorch
//! (fixtures from tests/fixtures/make_siren_fixtures.py).

use crate::common::rel_err;

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarBuilder;
use roundtrip::generate::{deep_daze_loss, l2_normalize};
use roundtrip::imageops::resize::resize_bilinear;
use roundtrip::models::siren::{coord_grid, Config, Siren};

fn fixture() -> HashMap<String, Tensor> {
    let p = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/siren_tiny/reference.safetensors"
    );
    candle_core::safetensors::load(p, &Device::Cpu).unwrap()
}

#[test]
fn siren_matches_pytorch() {
    let fx = fixture();
    let vb = VarBuilder::from_tensors(fx.clone(), DType::F32, &Device::Cpu);
    let net = Siren::new(
        vb,
        &Config {
            layers: 3,
            hidden: 16,
            w0: 30.0,
            w0_initial: 30.0,
        },
    )
    .unwrap();
    let coords = coord_grid(6, 6, &Device::Cpu).unwrap();
    assert!(rel_err(&coords, &fx["coords"]) < 1e-7);
    let img = net.render(&coords, 6, 6).unwrap();
    let e = rel_err(&img, &fx["image"]);
    assert!(e < 1e-4, "SIREN image rel err {e}");
}

#[test]
fn bilinear_resize_and_its_gradient_match_pytorch() {
    let fx = fixture();
    let x = Var::from_tensor(&fx["resize_in"]).unwrap();
    for (name, size) in [("down", 7), ("up", 32)] {
        let y = resize_bilinear(x.as_tensor(), size, size).unwrap();
        let e = rel_err(&y, &fx[&format!("resize_{name}")]);
        assert!(e < 1e-5, "resize {name} rel err {e}");
        let loss = (y * &fx[&format!("resize_weight_{name}")])
            .unwrap()
            .sum_all()
            .unwrap();
        let grads = loss.backward().unwrap();
        let g = grads.get(x.as_tensor()).unwrap();
        let e = rel_err(g, &fx[&format!("resize_grad_{name}")]);
        assert!(e < 1e-5, "resize {name} gradient rel err {e}");
    }
}

#[test]
fn deep_daze_loss_matches_pytorch() {
    let fx = fixture();
    let text = l2_normalize(&fx["loss_text"]).unwrap();
    let (loss, _) = deep_daze_loss(&text, &fx["loss_images"], 0.3).unwrap();
    let e = rel_err(&loss.reshape(1).unwrap(), &fx["loss_value"]);
    assert!(e < 1e-5, "loss rel err {e}");
}

/// The fused, hand-differentiated SIREN path (`render_taped` + `SirenTape::backward`, what
/// guidance runs) against candle's autograd over the plain ops (`render`), on a tiny SIREN with
/// hidden width not a multiple of the kernel's lane count and arguments large enough to wrap
/// the sine many times.
#[test]
fn fused_siren_matches_candle_autograd() {
    let dev = Device::Cpu;
    // 37 x 37 = 1369 rows: several row blocks and two gradient groups, the last ones partial.
    for (layers, hidden, size) in [(3, 20, 7), (2, 32, 5), (3, 24, 37)] {
        let cfg = Config {
            layers,
            hidden,
            w0: 30.0,
            w0_initial: 30.0,
        };
        let (_vm, net) = Siren::init(&cfg, 3, &dev).unwrap();
        let coords = coord_grid(size, size, &dev).unwrap();
        // A loss weight with both signs, so that every output channel matters.
        let n = 3 * size * size;
        let weight = Tensor::from_vec(
            (0..n)
                .map(|i| ((i * 37 % 11) as f32 - 5.0) / 5.0)
                .collect::<Vec<_>>(),
            (3, size, size),
            &dev,
        )
        .unwrap();
        let reference = net.render(&coords, size, size).unwrap();
        let grads = (&reference * &weight)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let (image, tape) = net.render_taped(&coords, size, size).unwrap();
        let e = rel_err(&image, &reference);
        assert!(e < 1e-5, "image rel err {e}");
        let fused = tape.backward(&net, &weight).unwrap();
        let params = net.parameters();
        assert_eq!(fused.len(), 2 * layers + 2);
        for (i, (p, g)) in params.iter().zip(&fused).enumerate() {
            let want = grads.get(p).unwrap();
            let e = rel_err(g, want);
            assert!(
                e < 1e-5,
                "parameter {i} {:?}: gradient rel err {e}",
                p.dims()
            );
        }
    }
}

/// The portable sine layers (candle ops, what CUDA and Metal run) behind the same hand-written
/// backward agree with autograd too.
#[test]
fn portable_sine_layers_match_candle_autograd() {
    roundtrip::kernels::with_portable_ops(fused_siren_matches_candle_autograd);
}
