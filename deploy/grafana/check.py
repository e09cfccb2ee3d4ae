"""Checks deploy/grafana/linkhit.json against the code: the dashboard is valid JSON with the fields Grafana
needs, every metric its queries name is one linkhit emits (src/telemetry.rs METRICS, with the
`_bucket` series of histograms), and every metric linkhit emits has a panel."""
import json
import pathlib
import re
import sys

root = pathlib.Path(__file__).resolve().parents[2]
dashboard = json.loads((root / "deploy/grafana/linkhit.json").read_text())
telemetry = (root / "src/telemetry.rs").read_text()
emitted = dict(re.findall(r"\(\s*\"(linkhit_[a-z_]+)\",\s*Kind::(\w+),", telemetry))
problems = []
for key in ("title", "uid", "panels", "schemaVersion"):
    if key not in dashboard:
        problems.append(f"dashboard lacks {key}")
used = set()
for panel in dashboard.get("panels", []):
    for key in ("id", "type", "title", "gridPos", "targets"):
        if key not in panel:
            problems.append(f"panel {panel.get('title')!r} lacks {key}")
    for target in panel.get("targets", []):
        for name in re.findall(r"linkhit_[a-z_]+", target.get("expr", "")):
            base = re.sub(r"_(bucket|sum|count)$", "", name) if name not in emitted else name
            if base not in emitted:
                problems.append(f"panel {panel['title']!r} queries {name}, which linkhit does not emit")
            elif name != base and emitted[base] != "Histogram":
                problems.append(f"panel {panel['title']!r} queries {name}, but {base} is not a histogram")
            used.add(base)
for name in sorted(set(emitted) - used):
    problems.append(f"no panel shows {name}")
if problems:
    print("\n".join(problems))
    sys.exit(1)
print(f"deploy/grafana/linkhit.json: {len(dashboard['panels'])} panels, all {len(emitted)} metrics, all exist")
