//! Segment profiles and generated names.
//!
//! A profile is, per feature, the cluster's median in raw units and its robust z-score against
//! the population: `z = (cluster median − population median) / (IQR / 1.349)` (1.349 makes an
//! IQR a standard deviation for normal data). Names come from archetypes — fixed sets of
//! signed features over [`FEATURE_NAMES`](super::features::FEATURE_NAMES) — and descriptions
//! list the strongest traits, e.g. `"deep explorers: long dwell, slow scroll, few clicks"`.
//! For other columns (CSV input) traits read "high <column>" / "low <column>".
//!
//! Runs on the segmenter thread (medians per cluster in parallel).

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::features::{quantile, RobustScaler};
use super::Matrix;

/// IQR of a standard normal distribution.
const IQR_TO_SD: f32 = 1.349;
/// |z| at which a feature counts as a trait of the segment.
const TRAIT_Z: f32 = 0.5;

/// One feature of a segment's profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureStat {
    pub feature: String,
    /// The segment's median, raw units.
    pub median: f32,
    /// Robust z-score of that median against the whole population.
    pub z: f32,
}

/// A segment as shown to people and returned by the CLI.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentInfo {
    /// Stable id (see [`IdRegistry`](super::stable::IdRegistry)).
    pub id: u32,
    pub name: String,
    pub description: String,
    pub size: usize,
    /// Share of all rows (noise included).
    pub share: f32,
    pub profile: Vec<FeatureStat>,
}

/// Size and feature profile of each cluster `0..k` (rows labelled −1 are left out).
pub fn cluster_profiles(
    raw: &Matrix,
    labels: &[i32],
    k: usize,
    scaler: &RobustScaler,
    names: &[String],
) -> Vec<(usize, Vec<FeatureStat>)> {
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); k];
    for (i, &l) in labels.iter().enumerate() {
        if l >= 0 && (l as usize) < k {
            members[l as usize].push(i);
        }
    }
    members
        .par_iter()
        .map(|m| {
            let stats = (0..raw.d)
                .map(|j| {
                    let mut col: Vec<f32> = m.iter().map(|&i| raw.row(i)[j]).collect();
                    let median = if col.is_empty() {
                        scaler.center[j]
                    } else {
                        quantile(&mut col, 0.5)
                    };
                    FeatureStat {
                        feature: names.get(j).cloned().unwrap_or_else(|| format!("f{j}")),
                        median,
                        z: (median - scaler.center[j]) / scaler.scale[j] * IQR_TO_SD,
                    }
                })
                .collect();
            (m.len(), stats)
        })
        .collect()
}

/// The phrase for a feature that is high (`true`) or low in a segment.
fn phrase(feature: &str, high: bool) -> String {
    let (h, l) = match feature {
        "scroll_max_depth" => ("deep scroll", "shallow scroll"),
        "scroll_speed" => ("fast scroll", "slow scroll"),
        "hover_total" => ("much hovering", "little hovering"),
        "hover_mean" => ("long hovers", "brief hovers"),
        "hover_max" => ("lingers on one item", "no lingering hover"),
        "dwell_total" => ("long dwell", "short dwell"),
        "dwell_mean" => ("long dwell per item", "brief dwell per item"),
        "dwell_max" => ("long look at one item", "no long look"),
        "click_selectivity" => ("high click selectivity", "few clicks"),
        "seq_distinct_types" => ("varied interactions", "narrow interactions"),
        "seq_click_share" => ("click-heavy", "rarely clicks"),
        "seq_hover_share" => ("hover-heavy", "few hovers"),
        "session_frequency" => ("frequent visits", "rare visits"),
        "device_class" => ("mostly mobile", "mostly desktop"),
        "hour_sin" => ("active mornings", "active evenings"),
        "hour_cos" => ("active around midnight", "active around midday"),
        other => return format!("{} {other}", if high { "high" } else { "low" }),
    };
    (if high { h } else { l }).to_string()
}

/// Archetypes: a name and the features (with sign) that define it.
const ARCHETYPES: &[(&str, &[(&str, f32)])] = &[
    (
        "deep explorers",
        &[
            ("dwell_total", 1.0),
            ("dwell_mean", 1.0),
            ("scroll_speed", -1.0),
        ],
    ),
    (
        "quick responders",
        &[("scroll_speed", 1.0), ("dwell_mean", -1.0)],
    ),
    (
        "selective clickers",
        &[("click_selectivity", 1.0), ("hover_total", -1.0)],
    ),
    (
        "skimmers",
        &[
            ("scroll_speed", 1.0),
            ("dwell_total", -1.0),
            ("click_selectivity", -1.0),
        ],
    ),
    (
        "hover browsers",
        &[
            ("hover_total", 1.0),
            ("seq_hover_share", 1.0),
            ("dwell_total", -1.0),
        ],
    ),
];

/// Name and description of one profile. The name is the archetype whose defining features
/// all lean its way (signed z ≥ 0.1) with the largest sum of signed z (each capped at 3, so
/// one extreme feature cannot outvote several), else the strongest trait + "users".
pub fn name_profile(profile: &[FeatureStat]) -> (String, String) {
    let z = |f: &str| profile.iter().find(|s| s.feature == f).map(|s| s.z);
    let mut best: Option<(&str, f32)> = None;
    for (name, defs) in ARCHETYPES {
        let signed: Option<Vec<f32>> = defs.iter().map(|(f, s)| z(f).map(|v| v * s)).collect();
        let Some(signed) = signed else { continue };
        if signed.iter().all(|&v| v >= 0.1) {
            let score = signed.iter().map(|v| v.min(3.0)).sum::<f32>();
            if best.is_none_or(|b| score > b.1) {
                best = Some((name, score));
            }
        }
    }
    let mut traits: Vec<&FeatureStat> = profile.iter().filter(|s| s.z.abs() >= TRAIT_Z).collect();
    traits.sort_by(|a, b| b.z.abs().total_cmp(&a.z.abs()));
    let phrases: Vec<String> = traits
        .iter()
        .take(3)
        .map(|s| phrase(&s.feature, s.z > 0.0))
        .collect();
    let name = match (best, phrases.first()) {
        (Some((n, _)), _) => n.to_string(),
        (None, Some(p)) => format!("{p} users"),
        (None, None) => "typical users".to_string(),
    };
    let description = if phrases.is_empty() {
        format!("{name}: close to the population median")
    } else {
        format!("{name}: {}", phrases.join(", "))
    };
    (name, description)
}

/// Names every profile; a name used twice gets " #2", " #3", … (larger segments first).
pub fn name_all(profiles: &[(usize, Vec<FeatureStat>)]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = profiles.iter().map(|(_, p)| name_profile(p)).collect();
    let mut order: Vec<usize> = (0..out.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(profiles[i].0));
    let mut seen: std::collections::HashMap<String, usize> = Default::default();
    for i in order {
        let c = seen.entry(out[i].0.clone()).or_insert(0);
        *c += 1;
        if *c > 1 {
            let old = out[i].0.clone();
            let new = format!("{old} #{c}");
            out[i].1 = out[i].1.replacen(&old, &new, 1);
            out[i].0 = new;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prof(zs: &[(&str, f32)]) -> Vec<FeatureStat> {
        zs.iter()
            .map(|(f, z)| FeatureStat {
                feature: f.to_string(),
                median: 0.0,
                z: *z,
            })
            .collect()
    }

    #[test]
    fn archetypes_and_fallbacks() {
        let (n, d) = name_profile(&prof(&[
            ("dwell_total", 2.0),
            ("dwell_mean", 1.5),
            ("scroll_speed", -1.2),
            ("click_selectivity", -0.8),
        ]));
        assert_eq!(n, "deep explorers");
        assert_eq!(
            d,
            "deep explorers: long dwell, long dwell per item, slow scroll"
        );
        let (n, _) = name_profile(&prof(&[("click_selectivity", 2.0), ("hover_total", -1.0)]));
        assert_eq!(n, "selective clickers");
        let (n, d) = name_profile(&prof(&[("basket_value", 1.1)]));
        assert_eq!(
            (n.as_str(), d.as_str()),
            (
                "high basket_value users",
                "high basket_value users: high basket_value"
            )
        );
        let sc = [("click_selectivity", 1.0), ("hover_total", -1.0)];
        let names = name_all(&[(5, prof(&sc)), (9, prof(&sc))]);
        assert_eq!(names[1].0, "selective clickers");
        assert_eq!(names[0].0, "selective clickers #2");
        assert!(names[0].1.starts_with("selective clickers #2: "));
    }
}
