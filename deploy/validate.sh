#!/usr/bin/env bash
# Validates what can be validated here of deploy/ and the OpenAPI spec (there is no Docker engine or
# Kubernetes cluster on the CI machine): YAML well-formed (yamllint), Kubernetes manifests against the
# Kubernetes schemas (kubernetes-validate, strict), the Compose file against the Compose spec
# (check-jsonschema), docs/openapi.yaml against the OpenAPI 3 schema (openapi-spec-validator), the
# systemd unit with systemd-analyze when available, the Grafana dashboard against the metrics the code emits. Tools come from PyPI into a venv under target/.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/deploy-venv
if [ ! -x "$venv/bin/kubernetes-validate" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q yamllint kubernetes-validate check-jsonschema openapi-spec-validator
fi
"$venv/bin/yamllint" -d '{extends: relaxed, rules: {line-length: {max: 200}}}' deploy docs/openapi.yaml
"$venv/bin/kubernetes-validate" --strict deploy/k8s/*.yaml
"$venv/bin/check-jsonschema" --builtin-schema vendor.compose-spec deploy/docker-compose.yml
"$venv/bin/openapi-spec-validator" docs/openapi.yaml
# The Grafana dashboard: well-formed, and every query names a metric the code emits (and every metric has a panel).
python3 deploy/grafana/check.py
if command -v systemd-analyze >/dev/null 2>&1; then
  systemd-analyze verify deploy/linkhit.service 2>&1 | grep -v "linkhit: command not found\|Failed to prepare\|is not executable" || true
fi
echo "deploy/validate.sh: all manifests valid"
