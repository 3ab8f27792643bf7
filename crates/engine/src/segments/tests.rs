//! End-to-end tests of the segments engine on the seeded generator (kept small: debug builds
//! run them in a few seconds).

use rand::rngs::StdRng;
use rand::SeedableRng;

use super::*;

fn clean<T: Copy>(v: &[T], truth: &[i32]) -> Vec<T> {
    v.iter()
        .zip(truth)
        .filter(|(_, &t)| t >= 0)
        .map(|(&x, _)| x)
        .collect()
}

fn k3() -> Params {
    Params {
        k: Some(3),
        ..Params::default()
    }
}

/// k-means and GMM recover the three behaviour types. Threshold 0.9 on the non-noise users:
/// the types differ by ≥ 2 within-type standard deviations on several features (scroll speed,
/// dwell, click selectivity), so near-perfect recovery is expected (observed ≈ 0.99); noise
/// users are left out because k-means/GMM have no noise label and must put them somewhere.
#[test]
fn kmeans_and_gmm_recover_the_user_types() {
    let ds = synth::dataset(3_000, 0.05, 1);
    let names = synth::Dataset::names();
    for algo in [Algo::Kmeans, Algo::Gmm] {
        let (seg, labels) = Segmenter::fit(&ds.raw, &names, algo, &k3(), None).unwrap();
        let ari =
            metrics::adjusted_rand_index(&clean(&labels, &ds.truth), &clean(&ds.truth, &ds.truth));
        assert!(ari >= 0.9, "{algo:?}: ARI {ari}");
        let mut got: Vec<&str> = seg.segments.iter().map(|s| s.name.as_str()).collect();
        got.sort();
        assert_eq!(
            got,
            ["deep explorers", "quick responders", "selective clickers"],
            "{algo:?}"
        );
        assert_eq!(seg.segments.iter().map(|s| s.size).sum::<usize>(), 3_000);
    }
}

/// DBSCAN separates at least the deep explorers from the rest and marks the scattered noise
/// users as noise. Its ARI is lower (≥ 0.4, observed ≈ 0.58) and that is expected: integer
/// features (distinct event types, device class) split dense types into sub-clusters at small
/// eps, and quick responders and selective clickers touch at larger eps.
#[test]
fn dbscan_on_the_generator() {
    let ds = synth::dataset(3_000, 0.05, 1);
    let p = Params {
        eps: 1.0,
        min_points: 10,
        ..Params::default()
    };
    let (seg, labels) =
        Segmenter::fit(&ds.raw, &synth::Dataset::names(), Algo::Dbscan, &p, None).unwrap();
    let ari = metrics::adjusted_rand_index(&labels, &ds.truth);
    assert!(ari >= 0.4, "ARI {ari}");
    let noise_users: Vec<usize> = (0..3_000).filter(|&i| ds.truth[i] < 0).collect();
    let flagged = noise_users.iter().filter(|&&i| labels[i] < 0).count();
    assert!(
        flagged * 2 >= noise_users.len(),
        "{flagged} of {} noise users flagged",
        noise_users.len()
    );
    assert!(seg
        .segments
        .iter()
        .any(|s| s.name.starts_with("deep explorers")));
}

/// Online assignment: training points get their own segment back; DBSCAN noise points, points
/// far from everything and wrong-sized input do not panic and come back as noise / errors.
#[test]
fn online_assignment_including_noise() {
    let ds = synth::dataset(1_500, 0.05, 3);
    let names = synth::Dataset::names();
    for algo in [Algo::Kmeans, Algo::Gmm, Algo::Dbscan] {
        let (seg, labels) = Segmenter::fit(&ds.raw, &names, algo, &k3(), None).unwrap();
        let agree = (0..ds.raw.n)
            .filter(|&i| seg.assign(ds.raw.row(i)).unwrap().map_or(-1, |v| v as i32) == labels[i])
            .count();
        // k-means and GMM: exactly the fit's rule. DBSCAN: border points may sit within eps of
        // a core point of another cluster than the one that reached them first.
        assert!(agree as f64 >= 0.99 * ds.raw.n as f64, "{algo:?}: {agree}");
        let far = [1e6f32; DIM];
        let got = seg.assign(&far).unwrap();
        if algo == Algo::Dbscan {
            assert_eq!(got, None);
            for i in (0..ds.raw.n).filter(|&i| labels[i] < 0) {
                let _ = seg.assign(ds.raw.row(i)).unwrap(); // must not panic
            }
        } else {
            assert!(got.is_some());
        }
        assert!(matches!(
            seg.assign(&[0.0; 3]),
            Err(SegError::Dimension {
                expected: DIM,
                got: 3
            })
        ));
    }
    // A DBSCAN model that found nothing but noise still assigns (to noise).
    let tiny = Matrix::new(3, 2, vec![0.0, 0.0, 5.0, 5.0, 10.0, 10.0]).unwrap();
    let p = Params {
        eps: 0.1,
        min_points: 2,
        ..Params::default()
    };
    let (seg, labels) =
        Segmenter::fit(&tiny, &["a".into(), "b".into()], Algo::Dbscan, &p, None).unwrap();
    assert_eq!(labels, vec![-1, -1, -1]);
    assert!(seg.segments.is_empty());
    assert_eq!(seg.assign(&[0.0, 0.0]).unwrap(), None);
}

/// Segment ids survive a refit on the same data (with another seed) and on data with a few new
/// users; a new type appearing gets a fresh id.
#[test]
fn ids_are_stable_across_refreshes() {
    let names = synth::Dataset::names();
    let ds = synth::dataset(2_000, 0.05, 5);
    let (first, l1) = Segmenter::fit(&ds.raw, &names, Algo::Kmeans, &k3(), None).unwrap();
    let p2 = Params { seed: 7, ..k3() };
    let (second, l2) =
        Segmenter::fit(&ds.raw, &names, Algo::Kmeans, &p2, Some(&first.registry)).unwrap();
    // Another seed may move a handful of noise users between segments, not the segments' ids.
    let same = (0..2_000).filter(|&i| l1[i] == l2[i]).count();
    assert!(same >= 1_990, "{same} of 2000 kept their segment id");
    // 2 % more users: dataset(n) is a prefix of dataset(n + m) with the same seed.
    let more = synth::dataset(2_040, 0.05, 5);
    let (third, l3) = Segmenter::fit(
        &more.raw,
        &names,
        Algo::Kmeans,
        &k3(),
        Some(&second.registry),
    )
    .unwrap();
    let same = (0..2_000).filter(|&i| l3[i] == l1[i]).count();
    assert!(same >= 1_980, "{same} of 2000 kept their segment id");
    let ids = |s: &Segmenter| {
        let mut v: Vec<u32> = s.segments.iter().map(|x| x.id).collect();
        v.sort();
        v
    };
    assert_eq!(ids(&third), vec![0, 1, 2]);
    // Four clusters on the same data: the three types keep their ids, the split gets id 3.
    let (fourth, _) = Segmenter::fit(
        &more.raw,
        &names,
        Algo::Kmeans,
        &Params { k: Some(4), ..k3() },
        Some(&third.registry),
    )
    .unwrap();
    let got = ids(&fourth);
    assert!(got.iter().filter(|&&i| i < 3).count() >= 2, "{got:?}");
    assert!(got.contains(&3), "{got:?}");
    assert_eq!(fourth.registry.next_id, 4);
}

/// BIC picks the true k on well-separated Gaussian blobs (GMM and k-means).
#[test]
fn bic_picks_the_true_k() {
    use rand::Rng;
    let mut rng = StdRng::seed_from_u64(11);
    let (k, d, per) = (4, 5, 400);
    let mut data = Vec::new();
    let mut truth = Vec::new();
    for c in 0..k {
        for _ in 0..per {
            for j in 0..d {
                let centre =
                    if j == c % d { 12.0 } else { 0.0 } + if j == (c + 1) % d { 6.0 } else { 0.0 };
                let u1: f32 = rng.random_range(f32::EPSILON..1.0);
                let u2: f32 = rng.random();
                data.push(centre + (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos());
            }
            truth.push(c as i32);
        }
    }
    let x = Matrix::new(k * per, d, data).unwrap();
    let (m, labels, curve) = gmm::fit_bic(&x, 2..=7, &gmm::GmmParams::default()).unwrap();
    assert_eq!(m.k(), 4, "GMM BIC curve {curve:?}");
    assert!(metrics::adjusted_rand_index(&labels, &truth) > 0.99);
    let (m, _, curve) = kmeans::fit_bic(&x, 2..=7, &kmeans::KMeansParams::default()).unwrap();
    assert_eq!(m.centroids.n, 4, "k-means BIC curve {curve:?}");
}

/// The 2-D PCA projection keeps the types apart: silhouette of the true types > 0.5.
#[test]
fn pca_projection_preserves_separation() {
    let ds = synth::dataset(900, 0.0, 9);
    let (seg, _) =
        Segmenter::fit(&ds.raw, &synth::Dataset::names(), Algo::Kmeans, &k3(), None).unwrap();
    let pts: Vec<[f32; 2]> = (0..ds.raw.n).map(|i| seg.project(ds.raw.row(i))).collect();
    let s = metrics::silhouette_2d(&pts, &ds.truth);
    assert!(s > 0.5, "silhouette {s}");
    assert!(seg.pca.explained_ratio[0] + seg.pca.explained_ratio[1] > 0.3);
}

/// Feature vectors from real user states go through fit and online assignment.
#[test]
fn fit_and_assign_user_states() {
    let users = synth::user_states(600, 0.0, 13);
    let states: Vec<_> = users.iter().map(|u| u.1.clone()).collect();
    let (seg, labels) =
        Segmenter::fit_states(&states, synth::NOW_MS, Algo::Kmeans, &k3(), None).unwrap();
    for (s, &l) in states.iter().zip(&labels).take(50) {
        assert_eq!(
            seg.assign_state(s, synth::NOW_MS).map(|v| v as i32),
            Some(l)
        );
    }
    let truth: Vec<i32> = users.iter().map(|u| u.0.label()).collect();
    assert!(metrics::adjusted_rand_index(&labels, &truth) > 0.9);
}

/// The CLI core on CSV and JSONL files: one label per row, JSON shape as documented.
#[test]
fn segment_file_csv_and_jsonl() {
    let ds = synth::dataset(400, 0.0, 17);
    let names = synth::Dataset::names();
    let dir = std::env::temp_dir().join(format!("trimtab-seg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let csv = dir.join("users.csv");
    std::fs::write(&csv, io::to_csv(&ds.raw, &names)).unwrap();
    let jsonl = dir.join("users.jsonl");
    let lines: Vec<String> = (0..ds.raw.n)
        .map(|i| {
            let obj: serde_json::Map<String, serde_json::Value> = names
                .iter()
                .cloned()
                .zip(ds.raw.row(i).iter().map(|&v| serde_json::json!(v)))
                .collect();
            serde_json::Value::Object(obj).to_string()
        })
        .collect();
    std::fs::write(&jsonl, lines.join("\n")).unwrap();
    let p = Params {
        projection: true,
        ..k3()
    };
    let a = segment_file(&csv, Algo::Kmeans, &p).unwrap();
    let b = segment_file(&jsonl, Algo::Kmeans, &p).unwrap();
    assert_eq!(a.labels.len(), 400);
    assert_eq!(a.projection.as_ref().map(Vec::len), Some(400));
    // JSONL object keys are sorted, so columns come in another order; the partition is the same.
    assert!((metrics::adjusted_rand_index(&a.labels, &b.labels) - 1.0).abs() < 1e-9);
    let v = serde_json::to_value(&a).unwrap();
    assert_eq!(v["labels"].as_array().unwrap().len(), 400);
    let s0 = &v["segments"][0];
    for key in ["id", "name", "size", "profile", "description"] {
        assert!(s0.get(key).is_some(), "missing {key}");
    }
    assert!(matches!(
        segment_file(&dir.join("missing.csv"), Algo::Gmm, &p),
        Err(SegError::Io { .. })
    ));
    assert_eq!("dbscan".parse::<Algo>().unwrap(), Algo::Dbscan);
    std::fs::remove_dir_all(&dir).unwrap();
}
