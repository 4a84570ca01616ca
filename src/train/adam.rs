//! The project's one Adam: its moments can be saved and restored, so an interrupted training
//! resumes exactly; with optional decoupled weight decay (AdamW) and a learning rate that can
//! change between steps. Its arithmetic is candle-nn 0.11's `AdamW`, op for op, so that the
//! image generators, which used that one, give the same bytes.

use std::collections::HashMap;

use candle_core::{backprop::GradStore, Result, Tensor, Var};
use candle_nn::VarMap;

pub struct Adam {
    params: Vec<(String, Var)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    t: usize,
    lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    /// Per parameter (same order as `params`): whether the decay factor `1 - lr * wd` multiplies
    /// it at each step.
    decay: Vec<bool>,
}

/// The variables of a var map with their names (the names a checkpoint keeps them under).
pub fn named_vars(varmap: &VarMap) -> Result<Vec<(String, Var)>> {
    let data = varmap
        .data()
        .lock()
        .map_err(|_| candle_core::Error::Msg("poisoned var map".into()))?;
    Ok(data.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
}

impl Adam {
    /// Adam (Kingma & Ba) with Keras' and PyTorch's defaults beta1 0.9, beta2 0.999, eps 1e-8
    /// (Keras uses 1e-7; the difference is far below the noise of training).
    pub fn new(mut params: Vec<(String, Var)>, lr: f64) -> Result<Self> {
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let zeros = |p: &Var| p.as_tensor().zeros_like();
        let m = params
            .iter()
            .map(|(_, p)| zeros(p))
            .collect::<Result<Vec<_>>>()?;
        let v = params
            .iter()
            .map(|(_, p)| zeros(p))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            params,
            m,
            v,
            t: 0,
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            decay: Vec::new(),
        })
    }

    /// Sets beta2 and epsilon (CLIP trains with 0.98 and 1e-6).
    pub fn with_beta2_eps(mut self, beta2: f64, eps: f64) -> Self {
        self.beta2 = beta2;
        self.eps = eps;
        self
    }

    /// Sets both betas and epsilon (BigGAN trains with beta1 0, beta2 0.999, eps 1e-6: with
    /// beta1 0 the first moment is the gradient itself and its bias correction is 1).
    pub fn with_betas_eps(mut self, beta1: f64, beta2: f64, eps: f64) -> Self {
        self.beta1 = beta1;
        self.beta2 = beta2;
        self.eps = eps;
        self
    }

    /// Decoupled weight decay as PyTorch's AdamW (`p -= lr * wd * p` before the Adam update), on
    /// the parameters for which `applies(name, param)` holds; none at all when `wd` is 0.
    pub fn with_weight_decay(mut self, wd: f64, applies: impl Fn(&str, &Var) -> bool) -> Self {
        self.weight_decay = wd;
        self.decay = self
            .params
            .iter()
            .map(|(n, p)| wd > 0.0 && applies(n, p))
            .collect();
        self
    }

    /// Decoupled weight decay on every parameter exactly as candle-nn's `AdamW` applies it: the
    /// factor `1 - lr * wd` multiplies each parameter at each step even when `wd` is 0 (which
    /// turns a -0.0 into +0.0), so that a run is bit-identical to one with `candle_nn::AdamW`.
    pub fn with_weight_decay_everywhere(mut self, wd: f64) -> Self {
        self.weight_decay = wd;
        self.decay = vec![true; self.params.len()];
        self
    }

    /// The learning rate of the next steps (for schedules).
    pub fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
    }

    pub fn lr(&self) -> f64 {
        self.lr
    }

    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.t += 1;
        let bc1 = 1.0 - self.beta1.powi(self.t as i32);
        let bc2 = 1.0 - self.beta2.powi(self.t as i32);
        for (i, (_, p)) in self.params.iter().enumerate() {
            let Some(g) = grads.get(p.as_tensor()) else {
                continue;
            };
            // A leaf's gradient keeps the op graph it was computed through (candle detaches
            // only inner nodes' gradients); moments built on it would chain every step's
            // forward graph to the next and never free them.
            let g = &g.detach();
            self.m[i] = ((&self.m[i] * self.beta1)? + (g * (1.0 - self.beta1))?)?;
            self.v[i] = ((&self.v[i] * self.beta2)? + (g.sqr()? * (1.0 - self.beta2))?)?;
            // `x / c` is candle's `x * (1 / c)`: the same op as AdamW's `x * scale`.
            let update = ((&self.m[i] / bc1)? / ((&self.v[i] / bc2)?.sqrt()? + self.eps)?)?;
            let decayed = if self.decay.get(i) == Some(&true) {
                (p.as_tensor() * (1.0 - self.lr * self.weight_decay))?
            } else {
                p.as_tensor().clone()
            };
            p.set(&(decayed - (update * self.lr)?)?)?;
        }
        Ok(())
    }

    /// Parameters and moments as named tensors (`param.X`, `m.X`, `v.X`) plus the step count.
    pub fn state(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        for (i, (name, p)) in self.params.iter().enumerate() {
            out.insert(format!("param.{name}"), p.as_tensor().detach());
            out.insert(format!("m.{name}"), self.m[i].clone());
            out.insert(format!("v.{name}"), self.v[i].clone());
        }
        out.insert(
            "adam.t".into(),
            Tensor::new(
                &[self.t as f64],
                self.params
                    .first()
                    .map(|p| p.1.device())
                    .unwrap_or(&candle_core::Device::Cpu),
            )?,
        );
        Ok(out)
    }

    /// Restores what [`Adam::state`] saved; every parameter must be present with its shape.
    pub fn restore(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        let get = |k: String| {
            state
                .get(&k)
                .cloned()
                .ok_or_else(|| candle_core::Error::Msg(format!("checkpoint has no `{k}`")))
        };
        for (i, (name, p)) in self.params.iter().enumerate() {
            let value = get(format!("param.{name}"))?;
            if value.shape() != p.shape() {
                candle_core::bail!(
                    "checkpoint `param.{name}` has shape {:?}, expected {:?}",
                    value.shape(),
                    p.shape()
                )
            }
            p.set(&value)?;
            self.m[i] = get(format!("m.{name}"))?;
            self.v[i] = get(format!("v.{name}"))?;
        }
        self.t = get("adam.t".into())?
            .to_vec1::<f64>()?
            .first()
            .copied()
            .unwrap_or(0.0) as usize;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use candle_nn::{AdamW, Optimizer, ParamsAdamW};

    /// The same steps as candle-nn's AdamW, bit for bit (the image generators moved from it to
    /// this one and keep their bytes), with and without weight decay.
    #[test]
    fn matches_candle_adamw_bit_for_bit() {
        let dev = Device::Cpu;
        let a0 = Tensor::randn(0f32, 1., (4, 5), &dev).unwrap();
        let b0 = Tensor::new(&[0.5f32, -0.0, 2.0, -1.5], &dev).unwrap();
        let loss = |a: &Var, b: &Var| {
            let x = (a.as_tensor() * 3.0)
                .unwrap()
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap();
            (x + b.as_tensor().sin().unwrap().sum_all().unwrap()).unwrap()
        };
        let bits = |v: &Var| -> Vec<u32> {
            let t = v
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            t.iter().map(|x| x.to_bits()).collect()
        };
        for wd in [0.0, 0.01] {
            let (oa, ob) = (
                Var::from_tensor(&a0).unwrap(),
                Var::from_tensor(&b0).unwrap(),
            );
            let (ta, tb) = (
                Var::from_tensor(&a0).unwrap(),
                Var::from_tensor(&b0).unwrap(),
            );
            let mut ours = Adam::new(
                vec![("a".into(), oa.clone()), ("b".into(), ob.clone())],
                0.05,
            )
            .unwrap()
            .with_weight_decay_everywhere(wd);
            let params = ParamsAdamW {
                lr: 0.05,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: wd,
            };
            let mut theirs = AdamW::new(vec![ta.clone(), tb.clone()], params).unwrap();
            for _ in 0..6 {
                ours.step(&loss(&oa, &ob).backward().unwrap()).unwrap();
                theirs.step(&loss(&ta, &tb).backward().unwrap()).unwrap();
                assert_eq!(bits(&oa), bits(&ta), "wd {wd}");
                assert_eq!(bits(&ob), bits(&tb), "wd {wd}");
            }
        }
    }

    /// A state saved and restored continues exactly as the uninterrupted optimiser.
    #[test]
    fn restored_state_continues_exactly() {
        let dev = Device::Cpu;
        let p0 = Tensor::randn(0f32, 1., (3, 3), &dev).unwrap();
        let step = |adam: &mut Adam, p: &Var| {
            let loss = p.as_tensor().sqr().unwrap().sum_all().unwrap();
            adam.step(&loss.backward().unwrap()).unwrap();
        };
        let p = Var::from_tensor(&p0).unwrap();
        let mut a = Adam::new(vec![("p".into(), p.clone())], 0.1).unwrap();
        step(&mut a, &p);
        // Copied, as a checkpoint file copies it (`param.*` shares the live parameters' storage).
        let saved: HashMap<String, Tensor> = a
            .state()
            .unwrap()
            .into_iter()
            .map(|(k, t)| (k, t.copy().unwrap()))
            .collect();
        step(&mut a, &p);
        let q = Var::from_tensor(&p0).unwrap();
        let mut b = Adam::new(vec![("p".into(), q.clone())], 0.1).unwrap();
        b.restore(&saved).unwrap();
        step(&mut b, &q);
        let v = |v: &Var| {
            v.as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        assert_eq!(v(&p), v(&q));
    }

    /// The moments must not keep the step's graph: a leaf's gradient carries the ops it was
    /// computed through (here `x * w`), and moments built on it chained every step's forward
    /// graph to the next (a training's memory grew without bound: the shapes GAN died at 24 GiB).
    #[test]
    fn moments_hold_no_graph() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1., (3, 3), &dev).unwrap()).unwrap();
        let w = Var::from_tensor(&Tensor::randn(0f32, 1., (3, 3), &dev).unwrap()).unwrap();
        let mut adam = Adam::new(vec![("w".into(), w.clone())], 0.1).unwrap();
        let loss = (x.as_tensor() * w.as_tensor())
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap();
        let grads = loss.backward().unwrap();
        assert!(
            grads.get(w.as_tensor()).unwrap().track_op(),
            "the premise: a leaf's gradient is tracked"
        );
        adam.step(&grads).unwrap();
        for (k, t) in adam.state().unwrap() {
            assert!(!t.track_op(), "{k} keeps an op graph");
        }
    }
}
