//! Issue 16 point 2: one training round of `roundtrip train-gan` at the shipped geometry
//! ([`GanSettings::default`]: 64 px, batch 32, z 64, G width 16, D width 32 and depth 1, 40
//! classes, DiffAugment on): `d_steps` (2) discriminator steps and one generator step with the EMA
//! update, run by [`GanNets`], the code the trainer itself runs, on synthetic data (seeded random
//! images in [-1, 1] and random multi-hot classes; the noise, classes and augmentation draws come
//! from a seeded stream as the trainer's do). Prints G's and D's parameter counts.
//! Compare with `python3 benches/gan_torch.py` (the same round in PyTorch, same geometry and
//! parameter counts, 2 threads) run in the same session; with 2 threads here too:
//! `RAYON_NUM_THREADS=2 cargo bench --bench gan`.
//! `train-gan` trains on the CPU only: a `ROUNDTRIP_DEVICE` other than `cpu` is refused.

use std::hint::black_box;

use candle_core::{Device, Tensor};
use criterion::{criterion_group, criterion_main, Criterion};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use roundtrip::gan::{normals, GanNets, GanSettings};
use roundtrip::shapes::classes::NUM_CLASSES;

/// Synthetic training images (more than a batch, so that batches differ).
const POOL: usize = 256;

/// A pool of seeded images (CHW in [-1, 1]) and multi-hot class vectors (one or two classes).
struct Data {
    size: usize,
    pixels: Vec<Vec<f32>>,
    classes: Vec<Vec<f32>>,
}

impl Data {
    fn new(size: usize, rng: &mut ChaCha8Rng) -> Self {
        let pixels = (0..POOL)
            .map(|_| {
                (0..3 * size * size)
                    .map(|_| rng.random::<f32>() * 2.0 - 1.0)
                    .collect()
            })
            .collect();
        let classes = (0..POOL).map(|_| multi_hot(rng)).collect();
        Self {
            size,
            pixels,
            classes,
        }
    }

    /// Images [3, B, S, S] (CBHW, as `Images::batch`) and classes [B, NUM_CLASSES] of `idx`.
    fn batch(&self, idx: &[usize], dev: &Device) -> (Tensor, Tensor) {
        let (b, p) = (idx.len(), self.size * self.size);
        let mut x = vec![0f32; 3 * b * p];
        for (j, &i) in idx.iter().enumerate() {
            for c in 0..3 {
                x[(c * b + j) * p..(c * b + j + 1) * p]
                    .copy_from_slice(&self.pixels[i][c * p..(c + 1) * p]);
            }
        }
        let x = Tensor::from_vec(x, (3, b, self.size, self.size), dev).unwrap();
        (x, self.class_batch(idx, dev))
    }

    fn class_batch(&self, idx: &[usize], dev: &Device) -> Tensor {
        let y: Vec<f32> = idx
            .iter()
            .flat_map(|&i| self.classes[i].iter().copied())
            .collect();
        Tensor::from_vec(y, (idx.len(), NUM_CLASSES), dev).unwrap()
    }
}

fn multi_hot(rng: &mut ChaCha8Rng) -> Vec<f32> {
    let mut v = vec![0f32; NUM_CLASSES];
    for _ in 0..rng.random_range(1..=2) {
        v[rng.random_range(0..NUM_CLASSES)] = 1.0;
    }
    v
}

/// One round: `d_steps` D steps, then one G step with the EMA update, with the draws in the
/// trainer's order (real batch, noise, fake classes, augmentation).
fn round(nets: &mut GanNets, data: &Data, s: &GanSettings, rng: &mut ChaCha8Rng, dev: &Device) {
    let b = s.batch_size;
    let z = |rng: &mut ChaCha8Rng| Tensor::from_vec(normals(b * s.z_dim, rng), (b, s.z_dim), dev);
    let pick = |rng: &mut ChaCha8Rng| -> Vec<usize> {
        (0..b).map(|_| rng.random_range(0..POOL)).collect()
    };
    let draws = |n: usize, rng: &mut ChaCha8Rng| s.diffaug.draws(n, s.image_size, rng);
    for _ in 0..s.d_steps {
        let (real, yr) = data.batch(&pick(rng), dev);
        let zf = z(rng).unwrap();
        let yf = data.class_batch(&pick(rng), dev);
        let aug = draws(2 * b, rng);
        black_box(nets.d_step(&real, &yr, &zf, &yf, aug.as_ref()).unwrap());
    }
    let zg = z(rng).unwrap();
    let yg = data.class_batch(&pick(rng), dev);
    let aug = draws(b, rng);
    black_box(nets.g_step(&zg, &yg, aug.as_ref()).unwrap());
}

fn bench(c: &mut Criterion) {
    // As `roundtrip` itself runs (src/main.rs).
    roundtrip::tune_allocator();
    let dev = roundtrip::device::from_env().unwrap();
    assert!(
        dev.is_cpu(),
        "train-gan trains on the CPU only (ROUNDTRIP_DEVICE=cpu)"
    );
    let s = GanSettings::default();
    let mut nets = GanNets::new(&s, &dev).unwrap();
    println!(
        "gan: G {} parameters, D {} parameters, {} threads",
        nets.g.store.count(),
        nets.d.store.count(),
        candle_core::utils::get_num_threads()
    );
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let data = Data::new(s.image_size, &mut rng);
    round(&mut nets, &data, &s, &mut rng, &dev); // warm-up outside the measurement

    let mut g = c.benchmark_group("gan");
    g.sample_size(10);
    g.bench_function("round_64px_batch32_d2_g1", |bench| {
        bench.iter(|| round(&mut nets, &data, &s, &mut rng, &dev))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
