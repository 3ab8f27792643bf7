//! Serving trained models to rules: the set of current models (`kind-slot` → model), swapped
//! atomically when the trainer promotes a new version or an operator replaces a file, and read
//! lock-free by shard threads for `predict(kind, slot, variant)`.
//!
//! A model's input is the decision's context vector ([`super::context`]) followed by the
//! one-hot of the variant's index among the slot's candidates (the model card lists them), the
//! same layout as the logs it was trained on (`features::FeatureLayout` with one-hot actions).

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;

/// Anything that turns one input row into a probability.
pub trait Score: Send + Sync {
    fn score(&self, input: &[f32]) -> f32;
    /// Expected input length.
    fn input_dim(&self) -> usize;
}

/// The click model serves as it is.
impl Score for crate::model::ClickModel {
    fn score(&self, input: &[f32]) -> f32 {
        self.predict(input)
    }
    fn input_dim(&self) -> usize {
        crate::model::ClickModel::input_dim(self)
    }
}

/// One served model.
pub struct Served {
    pub scorer: Arc<dyn Score>,
    /// Variant names in action order.
    pub candidates: Vec<String>,
    /// Registry version.
    pub version: u64,
}

impl Served {
    /// The model's probability for `variant` in context `x`, or `None` when the variant is not
    /// one of the model's candidates or the shapes disagree.
    ///
    /// A model trained when the context layout was shorter reads the prefix it was trained on
    /// (layouts only grow at the end).
    pub fn predict(&self, x: &[f32], variant: &str) -> Option<f64> {
        let a = self.candidates.iter().position(|c| c == variant)?;
        let ctx = self.scorer.input_dim().checked_sub(self.candidates.len())?;
        let x = x.get(..ctx)?;
        let mut input = Vec::with_capacity(x.len() + self.candidates.len());
        input.extend_from_slice(x);
        input.extend((0..self.candidates.len()).map(|i| f32::from(u8::from(i == a))));
        Some(f64::from(self.scorer.score(&input)))
    }
}

/// The current models, by name (`click-cta`).
#[derive(Default)]
pub struct Models {
    current: ArcSwap<HashMap<String, Arc<Served>>>,
}

impl Models {
    pub fn new() -> Models {
        Models::default()
    }

    /// The registry name of a model kind for a slot.
    pub fn name(kind: &str, slot: &str) -> String {
        format!("{kind}-{slot}")
    }

    pub fn is_empty(&self) -> bool {
        self.current.load().is_empty()
    }

    pub fn get(&self, name: &str) -> Option<Arc<Served>> {
        self.current.load().get(name).cloned()
    }

    /// Puts (or replaces) one model; readers see the old or the new one, never a mix.
    pub fn swap_in(&self, name: &str, served: Served) {
        let served = Arc::new(served);
        self.current.rcu(|m| {
            let mut m = HashMap::clone(m);
            m.insert(name.to_string(), served.clone());
            m
        });
    }

    pub fn remove(&self, name: &str) {
        self.current.rcu(|m| {
            let mut m = HashMap::clone(m);
            m.remove(name);
            m
        });
    }

    pub fn names(&self) -> Vec<(String, u64)> {
        let mut v: Vec<_> = self
            .current
            .load()
            .iter()
            .map(|(k, s)| (k.clone(), s.version))
            .collect();
        v.sort();
        v
    }

    /// `predict(kind, slot, variant)` for context `x`.
    pub fn predict(&self, kind: &str, slot: &str, variant: &str, x: &[f32]) -> Option<f64> {
        self.get(&Models::name(kind, slot))?.predict(x, variant)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Sum(usize);
    impl Score for Sum {
        fn score(&self, input: &[f32]) -> f32 {
            input.iter().sum::<f32>() / input.len() as f32
        }
        fn input_dim(&self) -> usize {
            self.0
        }
    }

    #[test]
    fn predict_builds_the_one_hot_input_and_swaps_atomically() {
        let m = Models::new();
        assert!(m.is_empty());
        assert_eq!(m.predict("click", "cta", "a", &[1.0, 1.0]), None);
        m.swap_in(
            "click-cta",
            Served {
                scorer: Arc::new(Sum(4)),
                candidates: vec!["a".into(), "b".into()],
                version: 1,
            },
        );
        // [1, 1] ++ one-hot(b) = [1, 1, 0, 1] → mean 0.75.
        assert_eq!(m.predict("click", "cta", "b", &[1.0, 1.0]), Some(0.75));
        assert_eq!(m.predict("click", "cta", "zzz", &[1.0, 1.0]), None);
        assert_eq!(
            m.predict("click", "cta", "a", &[1.0]),
            None,
            "shape mismatch"
        );
        // A context that grew at the end since the model was trained: the model reads the
        // prefix it knows.
        assert_eq!(
            m.predict("click", "cta", "b", &[1.0, 1.0, 0.0, 0.0]),
            Some(0.75)
        );
        assert_eq!(m.names(), vec![("click-cta".to_string(), 1)]);
        m.remove("click-cta");
        assert!(m.is_empty());
    }
}
