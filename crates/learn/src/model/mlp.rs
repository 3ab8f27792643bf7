//! The click model: an MLP `input → 64 → ReLU → dropout 0.2 → 32 → ReLU → dropout 0.2 → 1`
//! (sizes configurable in [`TrainConfig`]) whose logit's sigmoid is `P(click)`. Owns the
//! training loop ([`fit`]: candle on the CPU, Adam, shuffled mini-batches, early stopping on
//! validation log-loss keeping the best weights), the numerically stable loss
//! ([`bce_with_logits`]) and inference ([`ClickModel`]).
//!
//! Determinism: candle's CPU RNG cannot be seeded, so nothing here uses it. Weights are
//! initialised from a seeded [`StdRng`] (Kaiming-uniform as torch's `nn.Linear`:
//! `U(−1/√fan_in, 1/√fan_in)` for weights and biases) and dropout masks are drawn from the
//! same RNG; with a fixed seed training is reproducible on one machine.
//!
//! Inference: [`ClickModel::predict`] (one row, the serving hot path) is a plain-Rust forward
//! pass over the same weights — candle's per-op overhead costs tens of µs per call, the plain
//! pass about a microsecond; [`ClickModel::predict_batch`] runs candle. A test keeps both
//! within 1e-5. `ClickModel` is immutable and `Send + Sync`.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Module, Tensor, Var};
use candle_nn::{AdamW, Linear, Optimizer, ParamsAdamW};
use rand::{rngs::StdRng, seq::SliceRandom, Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::features::Dataset;
use super::ModelError;

/// Hyperparameters of the network and of its training. Defaults are the reference values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainConfig {
    /// Hidden layer widths. Default `[64, 32]`.
    pub hidden: Vec<usize>,
    /// Dropout probability after each hidden ReLU, in [0, 1). Default 0.2.
    pub dropout: f32,
    /// Adam learning rate. Default 1e-3.
    pub lr: f64,
    /// Mini-batch size. Default 32.
    pub batch_size: usize,
    /// Maximum epochs (0 returns the initial weights). Default 50.
    pub max_epochs: usize,
    /// Stop after this many epochs without a lower validation log-loss. Default 5.
    pub patience: usize,
    /// Seed of initialisation, shuffling and dropout. Default 42.
    pub seed: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            hidden: vec![64, 32],
            dropout: 0.2,
            lr: 1e-3,
            batch_size: 32,
            max_epochs: 50,
            patience: 5,
            seed: 42,
        }
    }
}

impl TrainConfig {
    /// Checks ranges.
    pub fn validate(&self) -> Result<(), ModelError> {
        let bad = |field, message: &str| {
            Err(ModelError::Config {
                field,
                message: message.into(),
            })
        };
        if self.hidden.contains(&0) {
            return bad("hidden", "layer widths must be ≥ 1");
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad("dropout", "must be in [0, 1)");
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad("lr", "must be finite and > 0");
        }
        if self.batch_size == 0 {
            return bad("batch_size", "must be ≥ 1");
        }
        if self.patience == 0 {
            return bad("patience", "must be ≥ 1");
        }
        Ok(())
    }
}

/// Shape of a network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Architecture {
    /// Input dimension.
    pub input: usize,
    /// Hidden layer widths.
    pub hidden: Vec<usize>,
    /// Training dropout (inference does not drop).
    pub dropout: f32,
}

impl Architecture {
    /// `(fan_in, fan_out)` of every linear layer, the output layer last.
    pub fn layer_dims(&self) -> Vec<(usize, usize)> {
        let mut dims = Vec::with_capacity(self.hidden.len() + 1);
        let mut n_in = self.input;
        for &h in &self.hidden {
            dims.push((n_in, h));
            n_in = h;
        }
        dims.push((n_in, 1));
        dims
    }

    /// Number of parameters.
    pub fn parameters(&self) -> usize {
        self.layer_dims().iter().map(|(i, o)| i * o + o).sum()
    }
}

/// One linear layer's weights, torch layout: `w` is `n_out × n_in` row-major.
#[derive(Debug, Clone, PartialEq)]
struct Dense {
    n_in: usize,
    n_out: usize,
    w: Vec<f32>,
    b: Vec<f32>,
}

impl Dense {
    fn forward_into(&self, x: &[f32], out: &mut Vec<f32>, relu: bool) {
        out.clear();
        for j in 0..self.n_out {
            let row = &self.w[j * self.n_in..(j + 1) * self.n_in];
            let mut s = 0.0f32;
            for (w, v) in row.iter().zip(x) {
                s += w * v;
            }
            s += self.b[j];
            out.push(if relu { s.max(0.0) } else { s });
        }
    }
}

/// A trained (or freshly initialised) click model. Immutable; share it in an `Arc`.
#[derive(Debug, Clone)]
pub struct ClickModel {
    arch: Architecture,
    layers: Vec<Dense>,
    /// The same weights as candle tensors, for batch inference.
    linears: Vec<Linear>,
}

/// Logistic function.
pub fn sigmoid(z: f32) -> f32 {
    1.0 / (1.0 + (-z).exp())
}

/// Mean binary cross-entropy of logits `x` against labels `y` in the stable form
/// `mean(max(x, 0) − x·y + ln(1 + e^{−|x|}))` (equal to `−y ln σ(x) − (1−y) ln(1−σ(x))`,
/// finite for any finite x; candle's own version overflows for large |x|).
pub fn bce_with_logits(logits: &Tensor, y: &Tensor) -> candle_core::Result<Tensor> {
    let pos = logits.relu()?;
    let xy = (logits * y)?;
    let soft = logits.abs()?.neg()?.exp()?.affine(1.0, 1.0)?.log()?;
    ((pos - xy)? + soft)?.mean_all()
}

impl ClickModel {
    /// A network with torch-style Kaiming-uniform initial weights drawn from `rng`.
    pub fn init(arch: Architecture, rng: &mut StdRng) -> Result<Self, ModelError> {
        let layers = arch
            .layer_dims()
            .into_iter()
            .map(|(n_in, n_out)| {
                let bound = 1.0 / (n_in.max(1) as f32).sqrt();
                let mut draw = || rng.random_range(-bound..=bound);
                let w = (0..n_in * n_out).map(|_| draw()).collect();
                let b = (0..n_out).map(|_| draw()).collect();
                Dense { n_in, n_out, w, b }
            })
            .collect();
        Self::from_layers(arch, layers)
    }

    fn from_layers(arch: Architecture, layers: Vec<Dense>) -> Result<Self, ModelError> {
        let dev = Device::Cpu;
        let linears = layers
            .iter()
            .map(|l| {
                let w = Tensor::from_slice(&l.w, (l.n_out, l.n_in), &dev)?;
                let b = Tensor::from_slice(&l.b, l.n_out, &dev)?;
                Ok(Linear::new(w, Some(b)))
            })
            .collect::<Result<Vec<_>, candle_core::Error>>()?;
        Ok(ClickModel {
            arch,
            layers,
            linears,
        })
    }

    /// The network's shape.
    pub fn architecture(&self) -> &Architecture {
        &self.arch
    }

    /// Input dimension.
    pub fn input_dim(&self) -> usize {
        self.arch.input
    }

    /// The logit of one input (plain Rust). NaN when `x.len() != input_dim()`.
    pub fn logit(&self, x: &[f32]) -> f32 {
        if x.len() != self.arch.input {
            return f32::NAN;
        }
        let mut a = Vec::with_capacity(64);
        let mut b = Vec::with_capacity(64);
        let last = self.layers.len() - 1;
        for (i, layer) in self.layers.iter().enumerate() {
            let src: &[f32] = if i == 0 { x } else { &a };
            layer.forward_into(src, &mut b, i < last);
            std::mem::swap(&mut a, &mut b);
        }
        a.first().copied().unwrap_or(f32::NAN)
    }

    /// `P(click)` of one input (plain Rust, about a microsecond). NaN when
    /// `x.len() != input_dim()`.
    pub fn predict(&self, x: &[f32]) -> f32 {
        sigmoid(self.logit(x))
    }

    /// Logits of `n` inputs given row-major (`x.len() = n × input_dim()`), with candle.
    pub fn logits_batch(&self, x: &[f32]) -> Result<Vec<f32>, ModelError> {
        let d = self.arch.input;
        if d == 0 || !x.len().is_multiple_of(d) {
            return Err(ModelError::Mismatch(format!(
                "{} inputs are not rows of dimension {d}",
                x.len()
            )));
        }
        let n = x.len() / d;
        if n == 0 {
            return Ok(Vec::new());
        }
        let xt = Tensor::from_slice(x, (n, d), &Device::Cpu)?;
        let out = forward(&self.linears, &xt, &[])?;
        Ok(out.flatten_all()?.to_vec1::<f32>()?)
    }

    /// `P(click)` of `n` inputs given row-major (`x.len() = n × input_dim()`), with candle.
    pub fn predict_batch(&self, x: &[f32]) -> Result<Vec<f32>, ModelError> {
        Ok(self.logits_batch(x)?.into_iter().map(sigmoid).collect())
    }

    /// Predictions for every example of `data` (whose dimension must match).
    pub fn predict_dataset(&self, data: &Dataset) -> Result<Vec<f32>, ModelError> {
        if data.dim() != self.arch.input {
            return Err(ModelError::Mismatch(format!(
                "data has {} inputs per row, the model {}",
                data.dim(),
                self.arch.input
            )));
        }
        self.predict_batch(&data.x)
    }

    /// The weights by name (`layers.<i>.weight` `[out, in]`, `layers.<i>.bias` `[out]`).
    pub fn tensors(&self) -> HashMap<String, Tensor> {
        let mut m = HashMap::new();
        for (i, l) in self.linears.iter().enumerate() {
            m.insert(format!("layers.{i}.weight"), l.weight().clone());
            if let Some(b) = l.bias() {
                m.insert(format!("layers.{i}.bias"), b.clone());
            }
        }
        m
    }

    /// Writes the weights as safetensors to `path`.
    pub fn save(&self, path: &Path) -> Result<(), ModelError> {
        candle_core::safetensors::save(&self.tensors(), path)
            .map_err(|e| ModelError::io(path, std::io::Error::other(e.to_string())))
    }

    /// Reads weights from safetensors bytes, checking them against `arch`: unparseable bytes
    /// or non-finite weights are [`ModelError::Corrupt`], missing, extra or differently
    /// shaped tensors [`ModelError::Mismatch`].
    pub fn from_safetensors(bytes: &[u8], arch: Architecture) -> Result<Self, ModelError> {
        let map = candle_core::safetensors::load_buffer(bytes, &Device::Cpu)
            .map_err(|e| ModelError::Corrupt(format!("not a safetensors file: {e}")))?;
        let dims = arch.layer_dims();
        if map.len() != 2 * dims.len() {
            let mut names: Vec<_> = map.keys().cloned().collect();
            names.sort();
            return Err(ModelError::Mismatch(format!(
                "{} tensors ({}), the architecture has {}",
                map.len(),
                names.join(", "),
                2 * dims.len()
            )));
        }
        let mut layers = Vec::with_capacity(dims.len());
        for (i, &(n_in, n_out)) in dims.iter().enumerate() {
            let get = |name: String, shape: &[usize]| -> Result<Vec<f32>, ModelError> {
                let t = map
                    .get(&name)
                    .ok_or_else(|| ModelError::Mismatch(format!("tensor {name} is missing")))?;
                if t.dims() != shape {
                    return Err(ModelError::Mismatch(format!(
                        "tensor {name} has shape {:?}, the architecture needs {shape:?}",
                        t.dims()
                    )));
                }
                let v = t
                    .to_dtype(DType::F32)
                    .and_then(|t| t.flatten_all())
                    .and_then(|t| t.to_vec1::<f32>())
                    .map_err(|e| ModelError::Corrupt(format!("tensor {name}: {e}")))?;
                if v.iter().any(|x| !x.is_finite()) {
                    return Err(ModelError::Corrupt(format!(
                        "tensor {name} has non-finite values"
                    )));
                }
                Ok(v)
            };
            let w = get(format!("layers.{i}.weight"), &[n_out, n_in])?;
            let b = get(format!("layers.{i}.bias"), &[n_out])?;
            layers.push(Dense { n_in, n_out, w, b });
        }
        Self::from_layers(arch, layers)
    }
}

/// Forward pass over candle layers; `masks[i]` (if present) multiplies hidden layer i's
/// activations (inverted dropout: entries 0 or 1/(1−p)).
fn forward(linears: &[Linear], x: &Tensor, masks: &[Tensor]) -> candle_core::Result<Tensor> {
    let last = linears.len() - 1;
    let mut h = x.clone();
    for (i, l) in linears.iter().enumerate() {
        h = l.forward(&h)?;
        if i < last {
            h = h.relu()?;
            if let Some(m) = masks.get(i) {
                h = (h * m)?;
            }
        }
    }
    Ok(h)
}

/// One epoch's losses.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EpochStats {
    /// 1-based epoch.
    pub epoch: usize,
    /// Mean training loss over the epoch's batches (with dropout), weighted by batch size.
    pub train_loss: f64,
    /// Validation log-loss after the epoch (no dropout); NaN without validation rows.
    pub val_loss: f64,
}

/// The result of [`fit`].
#[derive(Debug, Clone)]
pub struct Fit {
    /// The model with the best validation loss (the last one without validation rows).
    pub model: ClickModel,
    /// Epochs run.
    pub epochs: usize,
    /// Epoch of the kept weights (0: the initial weights).
    pub best_epoch: usize,
    /// Per-epoch losses.
    pub history: Vec<EpochStats>,
}

/// Trains a network on `train`, early-stopping on the log-loss of `val`: after each epoch the
/// validation loss is computed; the weights of the lowest one are kept, and training stops
/// after `patience` epochs without a strictly lower loss or at `max_epochs`. `on_epoch` is
/// called after every epoch (e.g. to advance a progress bar).
pub fn fit(
    train: &Dataset,
    val: &Dataset,
    cfg: &TrainConfig,
    on_epoch: &mut dyn FnMut(&EpochStats),
) -> Result<Fit, ModelError> {
    cfg.validate()?;
    if train.is_empty() {
        return Err(ModelError::TooFewRows("no training rows".into()));
    }
    if val.dim() != train.dim() {
        return Err(ModelError::Mismatch(format!(
            "validation rows have {} inputs, training rows {}",
            val.dim(),
            train.dim()
        )));
    }
    let dev = Device::Cpu;
    let d = train.dim();
    let arch = Architecture {
        input: d,
        hidden: cfg.hidden.clone(),
        dropout: cfg.dropout,
    };
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let init = ClickModel::init(arch.clone(), &mut rng)?;
    let dims = arch.layer_dims();

    // Trainable variables, initialised from the seeded weights.
    let mut vars = Vec::with_capacity(2 * dims.len());
    let mut linears = Vec::with_capacity(dims.len());
    for l in &init.layers {
        let w = Var::from_slice(&l.w, (l.n_out, l.n_in), &dev)?;
        let b = Var::from_slice(&l.b, l.n_out, &dev)?;
        linears.push(Linear::new(
            w.as_tensor().clone(),
            Some(b.as_tensor().clone()),
        ));
        vars.push(w);
        vars.push(b);
    }
    let mut opt = AdamW::new(
        vars.clone(),
        ParamsAdamW {
            lr: cfg.lr,
            weight_decay: 0.0, // plain Adam
            ..ParamsAdamW::default()
        },
    )?;

    let val_x = (!val.is_empty())
        .then(|| Tensor::from_slice(&val.x, (val.len(), d), &dev))
        .transpose()?;
    let val_y = (!val.is_empty())
        .then(|| Tensor::from_slice(&val.y, (val.len(), 1), &dev))
        .transpose()?;

    let snapshot = |vars: &[Var]| -> Result<Vec<Dense>, ModelError> {
        dims.iter()
            .enumerate()
            .map(|(i, &(n_in, n_out))| {
                Ok(Dense {
                    n_in,
                    n_out,
                    w: vars[2 * i].as_tensor().flatten_all()?.to_vec1()?,
                    b: vars[2 * i + 1].as_tensor().to_vec1()?,
                })
            })
            .collect()
    };

    let mut order: Vec<usize> = (0..train.len()).collect();
    let mut best_loss = f64::INFINITY;
    let mut best_layers = init.layers.clone();
    let mut best_epoch = 0;
    let mut history = Vec::new();
    let mut xb = Vec::with_capacity(cfg.batch_size * d);
    let mut yb = Vec::with_capacity(cfg.batch_size);
    let keep = 1.0 - cfg.dropout;
    let scale = 1.0 / keep;

    for epoch in 1..=cfg.max_epochs {
        order.shuffle(&mut rng);
        let mut total = 0.0f64;
        for batch in order.chunks(cfg.batch_size) {
            xb.clear();
            yb.clear();
            for &i in batch {
                xb.extend_from_slice(train.row(i));
                yb.push(train.y[i]);
            }
            let n = batch.len();
            let x = Tensor::from_slice(&xb, (n, d), &dev)?;
            let y = Tensor::from_slice(&yb, (n, 1), &dev)?;
            let masks = if cfg.dropout > 0.0 {
                cfg.hidden
                    .iter()
                    .map(|&h| {
                        let m: Vec<f32> = (0..n * h)
                            .map(|_| {
                                if rng.random::<f32>() < keep {
                                    scale
                                } else {
                                    0.0
                                }
                            })
                            .collect();
                        Tensor::from_vec(m, (n, h), &dev)
                    })
                    .collect::<Result<Vec<_>, _>>()?
            } else {
                Vec::new()
            };
            let logits = forward(&linears, &x, &masks)?;
            let loss = bce_with_logits(&logits, &y)?;
            opt.backward_step(&loss)?;
            total += f64::from(loss.to_scalar::<f32>()?) * n as f64;
        }
        let train_loss = total / train.len() as f64;
        let val_loss = match (&val_x, &val_y) {
            (Some(x), Some(y)) => {
                let logits = forward(&linears, x, &[])?;
                f64::from(bce_with_logits(&logits, y)?.to_scalar::<f32>()?)
            }
            _ => f64::NAN,
        };
        let stats = EpochStats {
            epoch,
            train_loss,
            val_loss,
        };
        history.push(stats);
        on_epoch(&stats);
        if val_x.is_none() {
            best_layers = snapshot(&vars)?;
            best_epoch = epoch;
        } else if val_loss < best_loss {
            best_loss = val_loss;
            best_layers = snapshot(&vars)?;
            best_epoch = epoch;
        } else if epoch - best_epoch >= cfg.patience {
            break;
        }
    }
    let epochs = history.len();
    Ok(Fit {
        model: ClickModel::from_layers(arch, best_layers)?,
        epochs,
        best_epoch,
        history,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::FeatureLayout;

    fn naive_bce(x: f32, y: f32) -> f32 {
        let p = sigmoid(x);
        -(y * p.ln() + (1.0 - y) * (1.0 - p).ln())
    }

    #[test]
    fn bce_matches_naive_and_is_stable() {
        let dev = Device::Cpu;
        for &(x, y) in &[
            (0.3f32, 1.0f32),
            (-2.0, 0.0),
            (4.0, 0.0),
            (-1.5, 1.0),
            (0.0, 1.0),
        ] {
            let xt = Tensor::new(&[[x]], &dev).unwrap();
            let yt = Tensor::new(&[[y]], &dev).unwrap();
            let got = bce_with_logits(&xt, &yt)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!((got - naive_bce(x, y)).abs() < 1e-5, "x={x} y={y} {got}");
        }
        // |x| = 100: the naive formula gives inf/NaN; the stable one is finite and exact.
        let xt = Tensor::new(&[[100f32], [-100.0], [100.0], [-100.0]], &dev).unwrap();
        let yt = Tensor::new(&[[0f32], [1.0], [1.0], [0.0]], &dev).unwrap();
        let got = bce_with_logits(&xt, &yt)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(got.is_finite());
        assert!((got - 50.0).abs() < 1e-3, "{got}"); // (100 + 100 + 0 + 0) / 4
        assert!(!naive_bce(100.0, 0.0).is_finite());
    }

    #[test]
    fn plain_forward_agrees_with_candle() {
        let arch = Architecture {
            input: 9,
            hidden: vec![64, 32],
            dropout: 0.2,
        };
        let model = ClickModel::init(arch, &mut StdRng::seed_from_u64(3)).unwrap();
        let mut rng = StdRng::seed_from_u64(4);
        let x: Vec<f32> = (0..9 * 50).map(|_| rng.random_range(-3.0..3.0)).collect();
        let batch = model.predict_batch(&x).unwrap();
        let logits = model.logits_batch(&x).unwrap();
        for i in 0..50 {
            let row = &x[i * 9..(i + 1) * 9];
            assert!((model.predict(row) - batch[i]).abs() < 1e-5);
            assert!((model.logit(row) - logits[i]).abs() < 1e-5);
        }
        assert!(model.predict(&[1.0]).is_nan(), "wrong length gives NaN");
        assert!(model.predict_batch(&[1.0; 10]).is_err());
    }

    #[test]
    fn click_model_is_send_sync() {
        fn assert_send_sync<T: Send + Sync + 'static>() {}
        assert_send_sync::<ClickModel>();
        assert_send_sync::<std::sync::Arc<ClickModel>>();
    }

    #[test]
    fn init_and_training_are_deterministic() {
        let layout = FeatureLayout {
            ctx_dim: 2,
            action_dim: 0,
            n_actions: None,
        };
        let mut rng = StdRng::seed_from_u64(5);
        let x: Vec<f32> = (0..400).map(|_| rng.random_range(-1.0..1.0)).collect();
        let y: Vec<f32> = x
            .chunks(2)
            .map(|r| if r[0] + r[1] > 0.0 { 1.0 } else { 0.0 })
            .collect();
        let data = Dataset::from_parts(layout, x, y).unwrap();
        let (tr, va) = (data.slice(0..160), data.slice(160..200));
        let cfg = TrainConfig {
            max_epochs: 3,
            ..TrainConfig::default()
        };
        let a = fit(&tr, &va, &cfg, &mut |_| {}).unwrap();
        let b = fit(&tr, &va, &cfg, &mut |_| {}).unwrap();
        assert_eq!(a.history, b.history);
        assert_eq!(a.model.layers, b.model.layers);
    }

    #[test]
    fn early_stopping_stops_and_keeps_the_best() {
        // Pure-noise labels: validation loss soon stops improving.
        let layout = FeatureLayout {
            ctx_dim: 4,
            action_dim: 0,
            n_actions: None,
        };
        let mut rng = StdRng::seed_from_u64(8);
        let x: Vec<f32> = (0..4 * 300).map(|_| rng.random_range(-1.0..1.0)).collect();
        let y: Vec<f32> = (0..300)
            .map(|_| if rng.random::<bool>() { 1.0 } else { 0.0 })
            .collect();
        let data = Dataset::from_parts(layout, x, y).unwrap();
        let (tr, va) = (data.slice(0..200), data.slice(200..300));
        let cfg = TrainConfig {
            max_epochs: 200,
            patience: 3,
            lr: 1e-2,
            ..TrainConfig::default()
        };
        let mut seen = 0;
        let f = fit(&tr, &va, &cfg, &mut |_| seen += 1).unwrap();
        assert_eq!(seen, f.epochs);
        assert!(f.epochs < 200, "stopped early ({} epochs)", f.epochs);
        assert_eq!(
            f.epochs,
            f.best_epoch + cfg.patience,
            "stopped `patience` after the best"
        );
        let best = f
            .history
            .iter()
            .map(|s| s.val_loss)
            .fold(f64::INFINITY, f64::min);
        assert_eq!(f.history[f.best_epoch - 1].val_loss, best);
        // The kept weights are the best epoch's: their validation loss is the minimum.
        let p = f.model.predict_dataset(&va).unwrap();
        let kept: f64 = p
            .iter()
            .zip(&va.y)
            .map(|(&p, &y)| f64::from(naive_bce((p / (1.0 - p)).ln(), y)))
            .sum::<f64>()
            / va.len() as f64;
        assert!((kept - best).abs() < 1e-4, "{kept} vs {best}");
    }
}
