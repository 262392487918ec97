"""Confluent's own Python serializers against streamscore's registry and codec.

    python confluent_serializer.py encode REGISTRY_URL TOPIC SCHEMA_FILE COUNT
        Serializes COUNT requests with confluent_kafka's AvroSerializer (auto-registering the
        schema under TOPIC-value) and prints one line per record: hex bytes, then the JSON of
        the value, tab-separated.
    python confluent_serializer.py decode REGISTRY_URL TOPIC
        Reads hex-encoded Confluent-framed records from stdin, one per line, deserializes
        each with confluent_kafka's AvroDeserializer and prints its JSON.
"""

import datetime
import json
import sys

from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext


def encode(url, topic, schema_file, count):
    client = SchemaRegistryClient({"url": url})
    with open(schema_file) as f:
        schema = f.read()
    serializer = AvroSerializer(client, schema, conf={"auto.register.schemas": True})
    ctx = SerializationContext(topic, MessageField.VALUE)
    for i in range(count):
        value = {
            "request_id": f"00000000-0000-4000-8000-{i:012d}",
            "tenant": "acme" if i % 2 else "globex",
            "model": "fraud",
            "model_version": None if i % 3 else "2",
            "features": {"amount": 10.5 * i, "hour_of_day": float(i % 24)},
            "created_at": 1_764_000_000_000_000 + i,
            "reply_to": None,
            "attributes": {"client": "confluent-python"},
        }
        data = serializer(value, ctx)
        print(data.hex() + "\t" + json.dumps(value, sort_keys=True))


EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


def to_json(value):
    """timestamp-micros fields come back as datetimes: print them as microseconds."""
    if isinstance(value, datetime.datetime):
        return (value - EPOCH) // datetime.timedelta(microseconds=1)
    raise TypeError(f"cannot print {type(value)}")


def decode(url, topic):
    client = SchemaRegistryClient({"url": url})
    deserializer = AvroDeserializer(client)
    ctx = SerializationContext(topic, MessageField.VALUE)
    for line in sys.stdin:
        line = line.strip()
        if line:
            value = deserializer(bytes.fromhex(line), ctx)
            print(json.dumps(value, sort_keys=True, default=to_json))


if __name__ == "__main__":
    command = sys.argv[1]
    if command == "encode":
        encode(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
    elif command == "decode":
        decode(sys.argv[2], sys.argv[3])
    else:
        sys.exit(f"unknown command {command}")
