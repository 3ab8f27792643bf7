//! Prometheus metrics of the loop. One [`Metrics`] is created at start and shared (`Arc`) by
//! the API, the pipeline threads and the delivery hub; `/metrics` renders it, adding the rules'
//! own counters (kept as atomics in the rules module) at scrape time.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use prometheus::core::Collector;
use serde_json::{json, Value};

use trimtab_rules::RuleStatus;

/// (label values, value) of every series of a labelled counter.
fn series(c: &IntCounterVec) -> Vec<(Vec<String>, f64)> {
    c.collect()
        .iter()
        .flat_map(|f| f.get_metric().iter())
        .map(|m| {
            let labels = m
                .get_label()
                .iter()
                .map(|l| l.value().to_string())
                .collect();
            (labels, m.get_counter().get_value())
        })
        .collect()
}

pub struct Metrics {
    registry: Registry,
    pub events_accepted: IntCounter,
    pub events_rejected: IntCounterVec,
    pub events_duplicate: IntCounter,
    /// Reads of a cached user's stored event ids for deduplication (most batches are answered
    /// by the user's filter without one).
    pub dedup_reads: IntCounter,
    pub queue_depth: IntGaugeVec,
    /// 1 once the engine failed fatally, by kind (`storage`, `thread`): it is exiting.
    pub fatal: IntGaugeVec,
    pub commit_latency: Histogram,
    pub commit_batch: Histogram,
    pub index_latency: Histogram,
    pub index_batches: Histogram,
    pub index_failures: IntCounter,
    pub retention_purged: IntCounterVec,
    /// Behavioural signals received (`signal` events), by kind: every kind is listed from the
    /// start, so a rise of `error_click` after a deploy shows against a zero.
    pub signals: IntCounterVec,
    pub adjustments_pushed: IntCounterVec,
    pub adjustments_decided: IntCounterVec,
    pub adjustments_capped: IntCounterVec,
    pub ws_sessions: IntGauge,
    pub ws_dropped: IntCounter,
    pub users_cached: IntGauge,
    /// Of those, users at rest held in their compact form (`pipeline.compact_idle_ms`).
    pub users_compact: IntGauge,
    /// Estimated bytes of each shard's user cache (as of its last size check).
    pub users_cached_bytes: IntGaugeVec,
    pub replayed: IntCounter,
    pub bandit_decisions: IntCounterVec,
    pub bandit_rewards: IntCounterVec,
    pub bandit_updates: IntCounterVec,
    pub bandit_fallback: IntGaugeVec,
    pub model_predictions: IntCounterVec,
    pub model_trainings: IntCounterVec,
}

fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
    // Names are unique constants defined below, so registration cannot collide.
    r.register(Box::new(c.clone()))
        .expect("metric names are unique");
    c
}

impl Metrics {
    pub fn new() -> Metrics {
        let r = Registry::new();
        // Metric construction only fails on invalid names/labels, which are constants here.
        let ok = "metric definitions are valid constants";
        Metrics {
            events_accepted: reg(
                &r,
                IntCounter::new("trimtab_events_accepted_total", "Events durably stored")
                    .expect(ok),
            ),
            events_rejected: reg(
                &r,
                IntCounterVec::new(
                    Opts::new("trimtab_events_rejected_total", "Events refused, by reason"),
                    &["reason"],
                )
                .expect(ok),
            ),
            events_duplicate: reg(
                &r,
                IntCounter::new(
                    "trimtab_events_duplicate_total",
                    "Retried events recognised by id and not stored again",
                )
                .expect(ok),
            ),
            dedup_reads: reg(
                &r,
                IntCounter::new(
                    "trimtab_dedup_reads_total",
                    "Store reads of a user's event ids for deduplication (a cached user's filter answers most batches without one)",
                )
                .expect(ok),
            ),
            queue_depth: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new("trimtab_queue_depth", "Messages waiting, by queue"),
                    &["queue"],
                )
                .expect(ok),
            ),
            fatal: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "trimtab_fatal",
                        "1 once the engine failed fatally (storage error or a panicked thread) and is exiting, by kind",
                    ),
                    &["kind"],
                )
                .expect(ok),
            ),
            commit_latency: reg(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "trimtab_commit_seconds",
                        "Duration of one durable group commit",
                    )
                    .buckets(vec![
                        0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0,
                    ]),
                )
                .expect(ok),
            ),
            commit_batch: reg(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new("trimtab_commit_batch_size", "Batches per group commit")
                        .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 512.0]),
                )
                .expect(ok),
            ),
            index_latency: reg(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "trimtab_index_seconds",
                        "Applying logged batches to the indexed store, one transaction",
                    )
                    .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]),
                )
                .expect(ok),
            ),
            index_batches: reg(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "trimtab_index_batch_size",
                        "Logged batches applied per transaction of the indexed store",
                    )
                    .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]),
                )
                .expect(ok),
            ),
            index_failures: reg(
                &r,
                IntCounter::new(
                    "trimtab_index_failures_total",
                    "Failed attempts to apply the log to the indexed store (retried)",
                )
                .expect(ok),
            ),
            retention_purged: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "trimtab_retention_purged_total",
                        "Deleted by retention: event-store records (events and journal records) and runs of deduplication ids",
                    ),
                    &["kind"],
                )
                .expect(ok),
            ),
            adjustments_pushed: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "trimtab_adjustments_pushed_total",
                        "Adjustments sent to at least one open WebSocket, by slot and variant",
                    ),
                    &["slot", "variant"],
                )
                .expect(ok),
            ),
            adjustments_decided: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "trimtab_adjustments_decided_total",
                        "Adjustments decided and stored (pushed or not), by slot and variant",
                    ),
                    &["slot", "variant"],
                )
                .expect(ok),
            ),
            adjustments_capped: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "trimtab_adjustments_capped_total",
                        "Adjustments withheld by a frequency cap, by slot",
                    ),
                    &["slot"],
                )
                .expect(ok),
            ),
            ws_sessions: reg(
                &r,
                IntGauge::new(
                    "trimtab_ws_sessions",
                    "Open, authenticated WebSocket sessions",
                )
                .expect(ok),
            ),
            ws_dropped: reg(
                &r,
                IntCounter::new(
                    "trimtab_ws_slow_consumer_total",
                    "WebSockets closed because they did not read their messages",
                )
                .expect(ok),
            ),
            users_cached: reg(
                &r,
                IntGauge::new("trimtab_users_cached", "Users held in shard memory").expect(ok),
            ),
            users_compact: reg(
                &r,
                IntGauge::new(
                    "trimtab_users_compact",
                    "Users held in shard memory in their compact form (at rest; pipeline.compact_idle_ms)",
                )
                .expect(ok),
            ),
            users_cached_bytes: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "trimtab_users_cached_bytes",
                        "Estimated bytes of a shard's user cache (pipeline.user_cache_mb bounds their sum)",
                    ),
                    &["shard"],
                )
                .expect(ok),
            ),
            replayed: reg(
                &r,
                IntCounter::new(
                    "trimtab_log_replayed_total",
                    "Log records replayed onto checkpoints when loading users",
                )
                .expect(ok),
            ),
            bandit_decisions: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "trimtab_bandit_decisions_total",
                        "Bandit-slot decisions, by slot, group (bandit, holdout, fallback) and variant",
                    ),
                    &["slot", "group", "variant"],
                )
                .expect(ok),
            ),
            bandit_rewards: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "trimtab_bandit_outcomes_total",
                        "Outcomes attributed to bandit decisions, by slot and kind (click, conversion, dwell)",
                    ),
                    &["slot", "kind"],
                )
                .expect(ok),
            ),
            bandit_updates: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "trimtab_bandit_updates_total",
                        "Rewards the learner absorbed (online updates), by slot",
                    ),
                    &["slot"],
                )
                .expect(ok),
            ),
            bandit_fallback: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "trimtab_bandit_fallback",
                        "1 while a slot serves only its control because its guardrail tripped",
                    ),
                    &["slot"],
                )
                .expect(ok),
            ),
            model_predictions: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "trimtab_model_predictions_total",
                        "predict() calls from rules, by model and result (scored, no_model)",
                    ),
                    &["model", "result"],
                )
                .expect(ok),
            ),
            model_trainings: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "trimtab_model_trainings_total",
                        "Background trainings, by model and outcome (promoted, kept, failed, skipped)",
                    ),
                    &["model", "outcome"],
                )
                .expect(ok),
            ),
            signals: {
                let c = reg(
                    &r,
                    IntCounterVec::new(
                        Opts::new(
                            "trimtab_signals_total",
                            "Behavioural signals received (signal events), by kind",
                        ),
                        &["kind"],
                    )
                    .expect(ok),
                );
                for k in trimtab_wire::SignalKind::ALL {
                    c.with_label_values(&[k.as_str()]);
                }
                c
            },
            registry: r,
        }
    }

    pub fn reject(&self, reason: &str, n: u64) {
        self.events_rejected.with_label_values(&[reason]).inc_by(n);
    }

    /// A JSON snapshot of the counters, for the live dashboard (cumulative values).
    pub fn snapshot(&self, rules: &[RuleStatus], ts: i64) -> Value {
        let rejected: serde_json::Map<String, Value> = series(&self.events_rejected)
            .into_iter()
            .map(|(l, v)| (l.join(","), json!(v as u64)))
            .collect();
        let pushed: std::collections::HashMap<Vec<String>, f64> =
            series(&self.adjustments_pushed).into_iter().collect();
        let adjustments: Vec<Value> = series(&self.adjustments_decided)
            .into_iter()
            .map(|(l, v)| {
                let p = pushed.get(&l).copied().unwrap_or(0.0);
                json!({"slot": l.first(), "variant": l.get(1), "decided": v as u64, "pushed": p as u64})
            })
            .collect();
        let capped: serde_json::Map<String, Value> = series(&self.adjustments_capped)
            .into_iter()
            .map(|(l, v)| (l.join(","), json!(v as u64)))
            .collect();
        let signals: serde_json::Map<String, Value> = series(&self.signals)
            .into_iter()
            .map(|(l, v)| (l.join(","), json!(v as u64)))
            .collect();
        let rules: Vec<Value> = rules
            .iter()
            .map(|r| {
                json!({
                    "name": r.name, "state": r.state, "enabled": r.enabled, "runs": r.runs,
                    "failures": r.failures, "adjustments": r.adjustments, "replayed": r.replayed,
                    "budget_skips": r.budget_skips,
                    "disabled_reason": r.disabled_reason, "file": r.file,
                    "consecutive_failures": r.consecutive_failures,
                    "last_error": r.last_error.as_ref().map(|e| json!({"message": e.message, "location": e.location})),
                    "compile_error": r.compile_error.as_ref().map(|e| json!({"message": e.message, "location": e.location})),
                })
            })
            .collect();
        json!({
            "type": "stats",
            "ts": ts,
            "events_accepted": self.events_accepted.get(),
            "events_rejected": rejected,
            "events_duplicate": self.events_duplicate.get(),
            "ws_sessions": self.ws_sessions.get(),
            "adjustments": adjustments,
            "capped": capped,
            "signals": signals,
            "rules": rules,
            "users_cached": self.users_cached.get(),
            "commit": {"count": self.commit_latency.get_sample_count(), "sum_s": self.commit_latency.get_sample_sum()},
        })
    }

    /// The Prometheus text exposition, including per-rule counters.
    /// Registers a collector of another part (the cluster's metrics) for `/metrics`.
    pub fn register(&self, c: Box<dyn prometheus::core::Collector>) -> prometheus::Result<()> {
        self.registry.register(c)
    }

    pub fn render(&self, rules: &[RuleStatus]) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metric families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        let mut out = String::from_utf8_lossy(&buf).into_owned();
        let mut family = |name: &str, help: &str, kind: &str, val: &dyn Fn(&RuleStatus) -> u64| {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
            for r in rules {
                out.push_str(&format!("{name}{{rule=\"{}\"}} {}\n", r.name, val(r)));
            }
        };
        family(
            "trimtab_rule_runs_total",
            "Rule evaluations",
            "counter",
            &|r| r.runs,
        );
        family(
            "trimtab_rule_errors_total",
            "Rule evaluations that failed",
            "counter",
            &|r| r.failures,
        );
        family(
            "trimtab_rule_adjustments_total",
            "adjust() calls by rule",
            "counter",
            &|r| r.adjustments,
        );
        family(
            "trimtab_rule_replays_total",
            "Rule evaluations answered from a remembered run with the same reads",
            "counter",
            &|r| r.replayed,
        );
        family(
            "trimtab_rule_budget_skips_total",
            "Rule runs skipped or stopped because the rules' time budget per event ran out",
            "counter",
            &|r| r.budget_skips,
        );
        family(
            "trimtab_rule_enabled",
            "1 if the rule runs",
            "gauge",
            &|r| r.enabled as u64,
        );
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Bounds the `variant` label of adjustment metrics: rules may name variants freely (from data,
/// say), and every distinct label value is a time series kept forever. A slot's first
/// [`VariantLabels::MAX`] variants are labelled by name, later ones as `other`.
#[derive(Default)]
pub struct VariantLabels {
    seen: std::collections::HashMap<String, std::collections::HashSet<String>>,
}

impl VariantLabels {
    pub const MAX: usize = 64;

    /// The label to use for `variant` of `slot`.
    pub fn variant<'a>(&mut self, slot: &str, variant: &'a str) -> &'a str {
        let set = match self.seen.get_mut(slot) {
            Some(s) => s,
            None => self.seen.entry(slot.to_string()).or_default(),
        };
        if set.contains(variant) {
            variant
        } else if set.len() < Self::MAX {
            set.insert(variant.to_string());
            variant
        } else {
            "other"
        }
    }
}
