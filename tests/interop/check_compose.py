"""Checks docker-compose.yml where `docker compose config` is not available: it parses as YAML
(merge keys resolved), has the services and images the README describes, publishes ports on
127.0.0.1 only, mounts files that exist, names services that exist, and the Prometheus scrape
config reaches each stage on the port the stage serves its metrics on.

usage: check_compose.py docker-compose.yml   (exit 1 and one line per problem)
"""
import os
import sys

import yaml

path = sys.argv[1]
root = os.path.dirname(os.path.abspath(path))
with open(path) as f:
    compose = yaml.safe_load(f)
problems = []
services = compose.get("services") or {}

expected_images = {
    "kafka": "apache/kafka:",
    "schema-registry": "confluentinc/cp-schema-registry:",
    "topics": "streamscore:",
    "pipeline": "streamscore:",
    "monitor": "streamscore:",
    "bridge": "streamscore:",
    "prometheus": "prom/prometheus:",
    "grafana": "grafana/grafana:",
}
for name, image in expected_images.items():
    service = services.get(name)
    if service is None:
        problems.append(f"service {name} is missing")
        continue
    if not str(service.get("image", "")).startswith(image):
        problems.append(f"service {name}: image {service.get('image')!r}, expected {image}…")
    if image == "streamscore:" and service.get("build") != ".":
        problems.append(f"service {name}: not built from the Dockerfile (build: .)")

replicas = (services.get("pipeline", {}).get("deploy") or {}).get("replicas")
if replicas != 2:
    problems.append(f"pipeline: {replicas} replicas, expected 2 in one consumer group")
if services.get("topics", {}).get("restart") != "no":
    problems.append("topics: a one-shot job (restart: \"no\")")

for name, service in services.items():
    if not isinstance(service, dict):
        problems.append(f"service {name} is not a mapping")
        continue
    if not service.get("image") and not service.get("build"):
        problems.append(f"service {name}: neither image nor build")
    for port in service.get("ports", []):
        if not str(port).startswith("127.0.0.1:"):
            problems.append(f"service {name}: port {port} is not bound to 127.0.0.1")
    depends = service.get("depends_on", [])
    for other in depends if isinstance(depends, list) else depends.keys():
        if other not in services:
            problems.append(f"service {name} depends on {other}, which does not exist")
    for volume in service.get("volumes", []):
        source = str(volume).split(":")[0]
        if source.startswith("."):
            if not os.path.exists(os.path.join(root, source)):
                problems.append(f"service {name}: mounts {source}, which does not exist")
        elif source not in (compose.get("volumes") or {}):
            problems.append(f"service {name}: volume {source} is not declared")
    command = service.get("command") or []
    if name in ("pipeline", "monitor") and "--metrics-listen" not in command:
        problems.append(f"service {name}: no --metrics-listen (Prometheus scrapes it)")


def served_port(service):
    command = service.get("command") or []
    for flag in ("--metrics-listen", "--listen"):
        if flag in command:
            address = command[command.index(flag) + 1]
            if not address.startswith("0.0.0.0:"):
                problems.append(f"{command[0]}: {flag} {address} is not reachable from Prometheus' container")
            return int(address.rsplit(":", 1)[1])
    return None


prometheus_file = None
for volume in services.get("prometheus", {}).get("volumes", []):
    if str(volume).endswith(":/etc/prometheus/prometheus.yml:ro"):
        prometheus_file = os.path.join(root, str(volume).split(":")[0])
if prometheus_file is None:
    problems.append("prometheus: its scrape config is not mounted")
else:
    with open(prometheus_file) as f:
        scrape = yaml.safe_load(f)
    jobs = {job["job_name"]: job for job in scrape.get("scrape_configs", [])}
    for stage in ("pipeline", "monitor", "bridge"):
        job = jobs.get(stage)
        if job is None:
            problems.append(f"prometheus: no job scrapes {stage}")
            continue
        targets = [(host, int(port)) for c in job.get("static_configs", []) for host, port in (t.rsplit(":", 1) for t in c["targets"])]
        targets += [(n, c["port"]) for c in job.get("dns_sd_configs", []) for n in c["names"]]
        port = served_port(services.get(stage, {}))
        if (stage, port) not in targets:
            problems.append(f"prometheus job {stage} scrapes {targets}, but {stage} serves metrics on :{port}")

for volume in services.get("grafana", {}).get("volumes", []):
    source = str(volume).split(":")[0]
    if source.startswith(".") and not os.listdir(os.path.join(root, source)):
        problems.append(f"grafana: {source} is empty")

if problems:
    print("\n".join(problems))
    sys.exit(1)
print(f"docker-compose.yml: {len(services)} services ({', '.join(services)}), ports on 127.0.0.1, scrape targets match")
