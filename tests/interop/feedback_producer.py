"""Produces labels to inference.feedback with Confluent's own Python client and AvroSerializer
(schemas/feedback.avsc, registered under TOPIC-value), keyed by tenant (StringSerializer).

usage: feedback_producer.py BOOTSTRAP REGISTRY_URL TOPIC SCHEMA_FILE < labels.jsonl
    one JSON object a line: request_id, tenant, actual (a number, or NaN), observed_at (µs),
    and optionally key (the record key; default the tenant) and source. Prints the count.
"""

import datetime
import json
import sys

from confluent_kafka import Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext, StringSerializer

EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


def main(bootstrap, url, topic, schema_file):
    with open(schema_file) as f:
        schema = f.read()
    serializer = AvroSerializer(SchemaRegistryClient({"url": url}), schema, conf={"auto.register.schemas": True})
    keys = StringSerializer("utf_8")
    # murmur2_random: the partition a Java producer gives the tenant (README "Quotas").
    producer = Producer({"bootstrap.servers": bootstrap, "partitioner": "murmur2_random", "linger.ms": 5})
    failures = []
    count = 0
    for line in sys.stdin:
        if not line.strip():
            continue
        label = json.loads(line)
        value = {
            "request_id": label["request_id"],
            "tenant": label["tenant"],
            "actual": float(label["actual"]),
            "observed_at": EPOCH + datetime.timedelta(microseconds=label["observed_at"]),
            "source": label.get("source"),
            "attributes": {"producer": "confluent-python"},
        }
        ctx = SerializationContext(topic, MessageField.VALUE)
        key = keys(label.get("key", label["tenant"]), SerializationContext(topic, MessageField.KEY))
        producer.produce(
            topic,
            key=key,
            value=serializer(value, ctx),
            on_delivery=lambda err, _msg: failures.append(str(err)) if err else None,
        )
        producer.poll(0)
        count += 1
    left = producer.flush(30)
    if left or failures:
        sys.exit(f"{left} records not delivered, failures: {failures[:5]}")
    print(count)


if __name__ == "__main__":
    main(*sys.argv[1:5])
