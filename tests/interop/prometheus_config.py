"""Writes the project's Prometheus scrape config (deploy/prometheus/prometheus.yml) pointed at
other targets: each job's service discovery is replaced by the static targets given, the
scrape interval is shortened; jobs not given are dropped.

usage: prometheus_config.py IN OUT INTERVAL JOB=HOST:PORT[,HOST:PORT] ...
"""
import os
import sys

import yaml

source, out, interval, *assignments = sys.argv[1:]
targets = {}
for assignment in assignments:
    job, hosts = assignment.split("=", 1)
    targets[job] = hosts.split(",")
with open(source) as f:
    config = yaml.safe_load(f)
config["global"]["scrape_interval"] = interval
config["global"]["scrape_timeout"] = interval
config["global"]["evaluation_interval"] = interval
jobs = []
for job in config["scrape_configs"]:
    name = job["job_name"]
    if name not in targets:
        continue
    for key in [k for k in job if k.endswith("_sd_configs") or k == "static_configs"]:
        del job[key]
    job["static_configs"] = [{"targets": targets.pop(name)}]
    jobs.append(job)
if targets:
    sys.exit(f"no job {', '.join(targets)} in {source}")
config["scrape_configs"] = jobs
# Rule files are relative to the source config's folder; the alerts go nowhere here.
base = os.path.dirname(os.path.abspath(source))
config["rule_files"] = [os.path.join(base, f) for f in config.get("rule_files", [])]
config.pop("alerting", None)
with open(out, "w") as f:
    yaml.safe_dump(config, f, sort_keys=False)
