"""Confluent's Python SchemaRegistryClient against streamscore's registry over HTTPS.

Usage: registry_tls.py URL CA_PEM USER:PASSWORD SUBJECT
Trusts only CA_PEM (`ssl.ca.location`), authenticates with basic auth, reads the subjects and
SUBJECT's latest version, and registers a schema of its own. Prints one JSON object.
"""

import json
import sys

from confluent_kafka.schema_registry import Schema, SchemaRegistryClient


def main() -> None:
    url, ca, user_info, subject = sys.argv[1:5]
    client = SchemaRegistryClient({"url": url, "ssl.ca.location": ca, "basic.auth.user.info": user_info})
    subjects = client.get_subjects()
    latest = client.get_latest_version(subject)
    registered = client.register_schema("tls-python-value", Schema('{"type": "string"}', "AVRO"))
    print(json.dumps({"subjects": subjects, "latest_id": latest.schema_id, "registered_id": registered}))


if __name__ == "__main__":
    main()
