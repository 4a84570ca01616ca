//! Frechet distance between two sets of embeddings (Heusel et al. 2017, "GANs Trained by a Two
//! Time-Scale Update Rule Converge to a Local Nash Equilibrium": FID when the embedding is
//! Inception's pool features): each set is summarised by its mean and covariance, and
//!
//! FD = |mu1 - mu2|^2 + Tr(C1 + C2 - 2 (C1 C2)^{1/2}).
//!
//! Computed in f64 with pytorch-fid's statistics (`np.mean(axis=0)`, `np.cov(rowvar=False)`,
//! ddof 1). pytorch-fid takes `scipy.linalg.sqrtm(C1 C2)` (a Schur method on a non-symmetric
//! matrix, which can return complex parts on near-singular input); only its trace is needed, and
//! Tr((C1 C2)^{1/2}) = Tr((S C2 S)^{1/2}) with S = C1^{1/2}, since C1 C2 = S (S C2 S) S^{-1} has the
//! eigenvalues of the symmetric positive semi-definite S C2 S. So here: S from a symmetric
//! eigendecomposition of C1, then the square roots of the eigenvalues of S C2 S, negative
//! rounding errors clamped to 0. It agrees with pytorch-fid to 4e-9 relative on its fixtures,
//! near-singular covariances included (`tests/fixtures/make_frechet_fixtures.py`).

use nalgebra::{DMatrix, DVector, SymmetricEigen};

use crate::input_err;

/// Mean and covariance of a set of embeddings.
#[derive(Debug, Clone)]
pub struct Gaussian {
    pub mean: DVector<f64>,
    pub cov: DMatrix<f64>,
    /// Number of embeddings summarised.
    pub n: usize,
}

impl Gaussian {
    /// Mean and unbiased covariance (ddof 1) of `rows` ([N, D], N >= 2, every row D wide).
    pub fn fit(rows: &[Vec<f32>]) -> anyhow::Result<Self> {
        let n = rows.len();
        if n < 2 {
            return Err(input_err!(
                "a Frechet distance needs at least 2 embeddings per set, got {n}"
            ));
        }
        let d = rows[0].len();
        if d == 0 {
            return Err(input_err!("embeddings have no dimension"));
        }
        if let Some((i, r)) = rows.iter().enumerate().find(|(_, r)| r.len() != d) {
            return Err(input_err!(
                "embedding {i} has {} values, embedding 0 has {d}",
                r.len()
            ));
        }
        if let Some(i) = rows.iter().position(|r| r.iter().any(|v| !v.is_finite())) {
            return Err(input_err!("embedding {i} has a non-finite value"));
        }
        let x = DMatrix::from_fn(n, d, |i, j| f64::from(rows[i][j]));
        let mean = x.row_mean().transpose();
        let mut centred = x;
        for mut row in centred.row_iter_mut() {
            row -= mean.transpose();
        }
        let cov = centred.tr_mul(&centred) / (n as f64 - 1.0);
        Ok(Self { mean, cov, n })
    }

    pub fn dim(&self) -> usize {
        self.mean.len()
    }
}

/// The symmetric part of `m` (removes rounding asymmetry before an eigendecomposition).
fn symmetrised(m: &DMatrix<f64>) -> DMatrix<f64> {
    (m + m.transpose()) * 0.5
}

/// The square root of a symmetric positive semi-definite matrix (negative eigenvalues, which
/// only rounding makes, taken as 0).
fn sqrt_psd(m: &DMatrix<f64>) -> DMatrix<f64> {
    let e = SymmetricEigen::new(symmetrised(m));
    let roots = e.eigenvalues.map(|v| v.max(0.0).sqrt());
    &e.eigenvectors * DMatrix::from_diagonal(&roots) * e.eigenvectors.transpose()
}

/// Tr((C1 C2)^{1/2}) through the symmetric S C2 S (see the module header).
fn trace_sqrt_product(c1: &DMatrix<f64>, c2: &DMatrix<f64>) -> f64 {
    let s = sqrt_psd(c1);
    let m = &s * c2 * &s;
    SymmetricEigen::new(symmetrised(&m))
        .eigenvalues
        .iter()
        .map(|v| v.max(0.0).sqrt())
        .sum()
}

/// The Frechet distance between two Gaussians of the same dimension.
pub fn frechet_distance(a: &Gaussian, b: &Gaussian) -> anyhow::Result<f64> {
    if a.dim() != b.dim() {
        return Err(input_err!(
            "Frechet distance between {}-d and {}-d embeddings",
            a.dim(),
            b.dim()
        ));
    }
    let diff = &a.mean - &b.mean;
    let tr = a.cov.trace() + b.cov.trace() - 2.0 * trace_sqrt_product(&a.cov, &b.cov);
    Ok(diff.dot(&diff) + tr)
}

/// The Frechet distance between two sets of embeddings ([N, D] and [M, D]).
pub fn frechet_distance_of(x: &[Vec<f32>], y: &[Vec<f32>]) -> anyhow::Result<f64> {
    frechet_distance(&Gaussian::fit(x)?, &Gaussian::fit(y)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    use rand_distr::Distribution;

    fn random_set(seed: u64, n: usize, d: usize, shift: f32) -> Vec<Vec<f32>> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let normal = rand_distr::StandardNormal;
        (0..n)
            .map(|_| {
                (0..d)
                    .map(|j| {
                        let v: f32 = normal.sample(&mut rng);
                        v * (1.0 + j as f32 * 0.1) + shift
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn a_set_is_at_distance_zero_from_itself() {
        // Full rank: zero to rounding. Rank 4 of 12 (fewer samples than dimensions): the null
        // space's eigenvalues are rounding noise of ~1e-16 x trace whose square roots count,
        // so zero to ~sqrt(1e-16) relative to the trace, as scipy's sqrtm is.
        for (n, d, tol) in [(50, 8, 1e-12), (5, 12, 1e-7)] {
            let x = random_set(1, n, d, 0.0);
            let fd = frechet_distance_of(&x, &x).unwrap();
            let trace = Gaussian::fit(&x).unwrap().cov.trace();
            assert!(
                fd.abs() <= tol * trace,
                "FD(X, X) = {fd} for {n} x {d} (trace {trace})"
            );
        }
    }

    #[test]
    fn the_order_of_a_set_does_not_matter() {
        let x = random_set(2, 40, 6, 0.0);
        let y = random_set(3, 30, 6, 0.5);
        let fd = frechet_distance_of(&x, &y).unwrap();
        assert!(fd > 1.0, "shifted sets should be apart: {fd}");
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
        let (mut xs, mut ys) = (x.clone(), y.clone());
        xs.shuffle(&mut rng);
        ys.shuffle(&mut rng);
        let shuffled = frechet_distance_of(&xs, &ys).unwrap();
        assert!((fd - shuffled).abs() <= 1e-9 * fd, "{fd} vs {shuffled}");
        let swapped = frechet_distance_of(&y, &x).unwrap();
        assert!((fd - swapped).abs() <= 1e-9 * fd, "{fd} vs {swapped}");
    }

    #[test]
    fn a_mean_shift_adds_its_squared_length() {
        let x = random_set(5, 30, 4, 0.0);
        let y: Vec<Vec<f32>> = x
            .iter()
            .map(|r| r.iter().map(|v| v + 0.5).collect())
            .collect();
        let fd = frechet_distance_of(&x, &y).unwrap();
        assert!((fd - 4.0 * 0.25).abs() < 1e-5, "{fd}");
    }

    #[test]
    fn bad_sets_are_refused() {
        let x = random_set(6, 10, 4, 0.0);
        let e = frechet_distance_of(&x[..1], &x).unwrap_err().to_string();
        assert!(e.contains("at least 2"), "{e}");
        let y = random_set(6, 10, 5, 0.0);
        let e = frechet_distance_of(&x, &y).unwrap_err().to_string();
        assert!(e.contains("4-d and 5-d"), "{e}");
        let mut z = x.clone();
        z[3][1] = f32::NAN;
        let e = frechet_distance_of(&z, &x).unwrap_err().to_string();
        assert!(e.contains("embedding 3"), "{e}");
    }

    /// pytorch-fid's `calculate_frechet_distance` (scipy's sqrtm) on the sets of
    /// tests/fixtures/frechet.json, made by make_frechet_fixtures.py.
    #[test]
    fn matches_pytorch_fid() {
        #[derive(serde::Deserialize)]
        struct Case {
            name: String,
            x: Vec<Vec<f64>>,
            y: Vec<Vec<f64>>,
            fd: f64,
        }
        #[derive(serde::Deserialize)]
        struct Fixture {
            cases: Vec<Case>,
        }
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/frechet.json");
        let f: Fixture = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        assert_eq!(f.cases.len(), 5);
        // The fixture's values are f32 (rounded by the script), so the conversion is exact.
        let f32s = |s: &[Vec<f64>]| -> Vec<Vec<f32>> {
            s.iter()
                .map(|r| r.iter().map(|&v| v as f32).collect())
                .collect()
        };
        for c in &f.cases {
            let ours = frechet_distance_of(&f32s(&c.x), &f32s(&c.y)).unwrap();
            let rel = (ours - c.fd).abs() / c.fd.abs();
            eprintln!(
                "{:<28} ours {ours:.12} scipy {:.12} rel {rel:.2e}",
                c.name, c.fd
            );
            assert!(rel < 1e-6, "{}: {ours} vs pytorch-fid {}", c.name, c.fd);
        }
    }
}
