//! Prometheus metrics of one sidecar: decisions by result and reason, decision latency, cache
//! hits, mints, the registry in force, and lines lost by the OTLP export and the log buffer. Plain atomics, rendered in the text exposition format
//! (version 0.0.4) by the admin listener.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use pvid_core::ReasonCode;
use std::sync::Arc;

use crate::log::LogStats;
use crate::otlp::OtlpStats;

/// Upper bounds of the latency histogram, in microseconds.
const LATENCY_BUCKETS_US: [u64; 11] = [50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000];

/// Counters of one sidecar.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    decisions: [AtomicU64; ReasonCode::ALL.len()],
    latency_buckets: [AtomicU64; LATENCY_BUCKETS_US.len()],
    latency_count: AtomicU64,
    latency_sum_us: AtomicU64,
    cache_hits: AtomicU64,
    cache_misses: AtomicU64,
    mints_ok: AtomicU64,
    mints_failed: AtomicU64,
    /// Shared with the OTLP exporter and the log sink (zero when export is off).
    pub otlp: Arc<OtlpStats>,
    /// Shared with the log sink.
    pub log: Arc<LogStats>,
}

impl Metrics {
    /// Counts one inbound decision.
    pub(crate) fn decision(&self, reason: ReasonCode, latency_us: u64) {
        if let Some(i) = ReasonCode::ALL.iter().position(|r| *r == reason) {
            self.decisions[i].fetch_add(1, Ordering::Relaxed);
        }
        for (bound, bucket) in LATENCY_BUCKETS_US.iter().zip(&self.latency_buckets) {
            if latency_us <= *bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us.fetch_add(latency_us, Ordering::Relaxed);
    }

    /// Counts a verified-token cache lookup.
    pub(crate) fn cache_lookup(&self, hit: bool) {
        if hit { &self.cache_hits } else { &self.cache_misses }.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one egress request.
    pub(crate) fn mint(&self, ok: bool) {
        if ok { &self.mints_ok } else { &self.mints_failed }.fetch_add(1, Ordering::Relaxed);
    }

    /// The exposition text.
    pub(crate) fn render(&self, registry_version: u64, registry_state: &str, registry_age_s: f64) -> String {
        let mut out = String::new();
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        out.push_str("# HELP pvid_proxy_decisions_total Inbound auth decisions by result and reason code.\n");
        out.push_str("# TYPE pvid_proxy_decisions_total counter\n");
        for (reason, n) in ReasonCode::ALL.iter().zip(&self.decisions) {
            let result = if *reason == ReasonCode::Ok { "allow" } else { "deny" };
            let _ = writeln!(out, "pvid_proxy_decisions_total{{result=\"{result}\",reason=\"{reason}\"}} {}", get(n));
        }
        out.push_str("# HELP pvid_proxy_decision_duration_seconds Time to decide (and log) one inbound request.\n");
        out.push_str("# TYPE pvid_proxy_decision_duration_seconds histogram\n");
        for (bound, n) in LATENCY_BUCKETS_US.iter().zip(&self.latency_buckets) {
            let _ = writeln!(out, "pvid_proxy_decision_duration_seconds_bucket{{le=\"{}\"}} {}", *bound as f64 / 1e6, get(n));
        }
        let _ = writeln!(out, "pvid_proxy_decision_duration_seconds_bucket{{le=\"+Inf\"}} {}", get(&self.latency_count));
        let _ = writeln!(out, "pvid_proxy_decision_duration_seconds_sum {}", get(&self.latency_sum_us) as f64 / 1e6);
        let _ = writeln!(out, "pvid_proxy_decision_duration_seconds_count {}", get(&self.latency_count));
        out.push_str("# HELP pvid_proxy_token_cache_lookups_total Verified-token cache lookups by outcome.\n");
        out.push_str("# TYPE pvid_proxy_token_cache_lookups_total counter\n");
        let _ = writeln!(out, "pvid_proxy_token_cache_lookups_total{{outcome=\"hit\"}} {}", get(&self.cache_hits));
        let _ = writeln!(out, "pvid_proxy_token_cache_lookups_total{{outcome=\"miss\"}} {}", get(&self.cache_misses));
        out.push_str("# HELP pvid_proxy_mints_total Egress requests by outcome.\n");
        out.push_str("# TYPE pvid_proxy_mints_total counter\n");
        let _ = writeln!(out, "pvid_proxy_mints_total{{result=\"ok\"}} {}", get(&self.mints_ok));
        let _ = writeln!(out, "pvid_proxy_mints_total{{result=\"error\"}} {}", get(&self.mints_failed));
        out.push_str("# HELP pvid_proxy_registry_version Version of the registry in force.\n");
        out.push_str("# TYPE pvid_proxy_registry_version gauge\n");
        let _ = writeln!(out, "pvid_proxy_registry_version{{state=\"{registry_state}\"}} {registry_version}");
        out.push_str("# HELP pvid_proxy_registry_age_seconds Seconds since the registry in force was loaded.\n");
        out.push_str("# TYPE pvid_proxy_registry_age_seconds gauge\n");
        let _ = writeln!(out, "pvid_proxy_registry_age_seconds {registry_age_s:.3}");
        out.push_str("# HELP pvid_otlp_exported_total Log records accepted by the OTLP collector.\n");
        out.push_str("# TYPE pvid_otlp_exported_total counter\n");
        let _ = writeln!(out, "pvid_otlp_exported_total {}", get(&self.otlp.exported));
        out.push_str("# HELP pvid_otlp_dropped_total Log records not exported to OTLP, by why.\n");
        out.push_str("# TYPE pvid_otlp_dropped_total counter\n");
        let _ = writeln!(out, "pvid_otlp_dropped_total{{why=\"queue_full\"}} {}", get(&self.otlp.dropped_queue_full));
        let _ =
            writeln!(out, "pvid_otlp_dropped_total{{why=\"export_failed\"}} {}", get(&self.otlp.dropped_export_failed));
        out.push_str("# HELP pvid_log_lines_dropped_total Log lines dropped because the log buffer was full.\n");
        out.push_str("# TYPE pvid_log_lines_dropped_total counter\n");
        let _ = writeln!(out, "pvid_log_lines_dropped_total {}", get(&self.log.dropped));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts_and_a_cumulative_histogram() {
        let m = Metrics::default();
        m.decision(ReasonCode::Ok, 40);
        m.decision(ReasonCode::Expired, 700);
        m.cache_lookup(true);
        let text = m.render(7, "active", 1.5);
        assert!(text.contains("pvid_proxy_decisions_total{result=\"allow\",reason=\"ok\"} 1\n"));
        assert!(text.contains("pvid_proxy_decisions_total{result=\"deny\",reason=\"expired\"} 1\n"));
        assert!(text.contains("pvid_proxy_decision_duration_seconds_bucket{le=\"0.00005\"} 1\n"));
        assert!(text.contains("pvid_proxy_decision_duration_seconds_bucket{le=\"0.001\"} 2\n"));
        assert!(text.contains("pvid_proxy_decision_duration_seconds_count 2\n"));
        assert!(text.contains("pvid_proxy_token_cache_lookups_total{outcome=\"hit\"} 1\n"));
        assert!(text.contains("pvid_proxy_registry_version{state=\"active\"} 7\n"));
        assert!(text.contains("pvid_otlp_dropped_total{why=\"export_failed\"} 0\n"));
        assert!(text.contains("pvid_log_lines_dropped_total 0\n"));
    }
}
