//! What the Kafka clients report about themselves, from librdkafka's statistics callback
//! (`statistics.interval.ms`): requests sent per type — the broker's cost grows with them — and
//! consumer lag per partition, taken from the high watermarks the fetches already carry, so
//! measuring lag costs the broker nothing.

use rdkafka::Statistics;

/// Requests this client sent to the brokers, per request type.
pub fn client_requests(client: &'static str, statistics: &Statistics) {
    let mut totals: std::collections::BTreeMap<&str, i64> = std::collections::BTreeMap::new();
    for broker in statistics.brokers.values().filter(|b| b.nodeid >= 0) {
        for (request, n) in &broker.req {
            *totals.entry(request.as_str()).or_default() += n;
        }
    }
    for broker in statistics.brokers.values().filter(|b| b.nodeid >= 0) {
        let window = |w: &Option<rdkafka::statistics::Window>| w.as_ref().map(|w| (w.p50, w.p99, w.max));
        tracing::debug!(
            client,
            broker = broker.name,
            rtt_us = ?window(&broker.rtt),
            int_latency_us = ?window(&broker.int_latency),
            outbuf_latency_us = ?window(&broker.outbuf_latency),
            "broker round trips (p50, p99, max)"
        );
        #[allow(clippy::cast_precision_loss)]
        if let Some(rtt) = &broker.rtt {
            metrics::gauge!("streamscore_kafka_rtt_seconds", "client" => client, "percentile" => "50")
                .set(rtt.p50 as f64 / 1e6);
            metrics::gauge!("streamscore_kafka_rtt_seconds", "client" => client, "percentile" => "99")
                .set(rtt.p99 as f64 / 1e6);
        }
    }
    for (request, n) in totals.into_iter().filter(|(_, n)| *n > 0) {
        metrics::counter!("streamscore_kafka_requests_total", "client" => client, "request" => request.to_owned())
            .absolute(u64::try_from(n).unwrap_or(0));
    }
}

/// Consumer lag of every partition this consumer holds.
pub fn consumer_lag(group: &str, statistics: &Statistics) {
    for topic in statistics.topics.values() {
        for partition in topic.partitions.values().filter(|p| p.partition >= 0 && p.consumer_lag >= 0) {
            #[allow(clippy::cast_precision_loss)]
            metrics::gauge!(
                "streamscore_consumer_lag_records",
                "group" => group.to_owned(),
                "topic" => topic.topic.clone(),
                "partition" => partition.partition.to_string(),
            )
            .set(partition.consumer_lag as f64);
        }
    }
}
