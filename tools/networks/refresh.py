#!/usr/bin/env python3
"""Rebuild linkhit's default network lists: hosting.txt and privacy_relay.txt.

Standard library only.  Two modes:

  online (default)   download every source from its publisher's URL
  --from-dir DIR     read already-downloaded copies from DIR (works offline)

Output format (both files): one line per prefix, "<cidr>\\t<label>", after a
"#" comment header that names each source, its version/date, its terms and
the prefix counts before/after collapsing.  Prefixes are collapsed per label
and per address family with ipaddress.collapse_addresses (adjacent and
overlapping prefixes are merged), so each label's set is minimal.  Different
labels may overlap each other (e.g. a provider's range inside another's); a
consumer should treat the lists as sets per label.

Local file names understood by --from-dir (any of them may also be gzipped,
with a ".gz" suffix):

  official formats (same bytes as the URL serves):
    aws           ip-ranges.json                    (AWS JSON)
    gcp           cloud.json                        (Google Cloud JSON)
    azure         ServiceTags_Public*.json, ServiceTags_China*.json,
                  ServiceTags_AzureGovernment*.json (Azure service tags JSON)
    oracle        public_ip_ranges.json             (OCI JSON)
    digitalocean  google.csv                        (RFC 8805 geofeed)
    linode        linode-geofeed.csv                (RFC 8805 geofeed)
    vultr         vultr-geofeed.csv                 (RFC 8805 geofeed)
    cloudflare    ips-v4, ips-v6                    (plain CIDR lists)
    <asn-based>   ripestat-AS<n>.json               (RIPEstat announced-prefixes)
    apple relay   egress-ip-ranges.csv              (Apple geofeed-style CSV)
  generic fallback, for copies taken from third-party compilations:
    <label>.txt   one CIDR (or "cidr,..." / "cidr<TAB>...") per line, '#' comments

If both an official file and <label>.txt exist for a label, their union is
used.  An optional DIR/PROVENANCE.txt is copied into both headers verbatim
(as comments) so that the origin of stored copies is recorded.

Examples:
  python3 refresh.py                       # online, writes ./hosting.txt ./privacy_relay.txt
  python3 refresh.py --from-dir sources    # offline, from stored copies
  python3 refresh.py --download-to raw/    # online, and keep the raw downloads
  python3 refresh.py --from-dir raw/ --exclude-relay   # carve relay ranges out of hosting
"""

import argparse
import csv
import datetime as _dt
import glob
import gzip
import io
import ipaddress
import json
import os
import re
import sys
import urllib.request

UA = "linkhit-network-refresh/1 (+https://github.com/; stdlib urllib)"
TIMEOUT = 120

# --------------------------------------------------------------------------
# Source catalogue
# --------------------------------------------------------------------------

AZURE_PAGES = {
    # Microsoft Download Center ids: Public, US Government, China
    "ServiceTags_Public": "https://www.microsoft.com/en-us/download/details.aspx?id=56519",
    "ServiceTags_AzureGovernment": "https://www.microsoft.com/en-us/download/details.aspx?id=57063",
    "ServiceTags_China": "https://www.microsoft.com/en-us/download/details.aspx?id=57062",
}

# ASN-derived providers: these publish no official range feed, so we take the
# prefixes their registered ASNs originate in BGP, from RIPE NCC RIPEstat.
# Keep only ASNs that are pure hosting/cloud (no consumer ISP behind them).
ASN_PROVIDERS = {
    "hetzner": [24940, 213230, 212317],
    "ovh": [16276],
    "alibaba": [45102, 37963],
    "tencent": [45090, 132203],
    "scaleway": [12876],
}
RIPESTAT_URL = "https://stat.ripe.net/data/announced-prefixes/data.json?resource=AS{asn}"

TERMS = {
    "aws": "published by AWS 'so you can identify traffic from AWS' (docs.aws.amazon.com/vpc/latest/userguide/aws-ip-ranges.html); no licence stated",
    "gcp": "published by Google Cloud for customers (cloud.google.com/compute/docs/faq#find_ip_range); no licence stated",
    "azure": "Microsoft Download Center 'Azure IP Ranges and Service Tags'; Microsoft terms of use; no data licence stated",
    "oracle": "published by Oracle in OCI docs (Content/General/Concepts/addressranges.htm); no licence stated",
    "digitalocean": "DigitalOcean public RFC 8805 geofeed; no licence stated",
    "linode": "Linode/Akamai public RFC 8805 geofeed; no licence stated",
    "vultr": "Vultr/Constant public RFC 8805 geofeed; no licence stated",
    "cloudflare": "Cloudflare published IP list (www.cloudflare.com/ips/); no licence stated",
    "asn": "BGP-announced prefixes of the provider's ASNs via RIPE NCC RIPEstat Data API (RIPEstat terms of use)",
    "apple_private_relay": "Apple iCloud Private Relay egress list (developer.apple.com/support/prepare-your-network-for-icloud-private-relay/); no licence stated",
}


def _http_get(url):
    req = urllib.request.Request(url, headers={"User-Agent": UA, "Accept": "*/*"})
    with urllib.request.urlopen(req, timeout=TIMEOUT) as r:
        return r.read()


def _decode(data):
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return data.decode("utf-8-sig", errors="replace")


# --------------------------------------------------------------------------
# Parsers: text -> (list of prefix strings, version string)
# --------------------------------------------------------------------------

def parse_aws(text):
    d = json.loads(text)
    p = [x["ip_prefix"] for x in d.get("prefixes", []) if x.get("ip_prefix")]
    p += [x["ipv6_prefix"] for x in d.get("ipv6_prefixes", []) if x.get("ipv6_prefix")]
    return p, "syncToken=%s createDate=%s" % (d.get("syncToken"), d.get("createDate"))


def parse_gcp(text):
    d = json.loads(text)
    p = []
    for x in d.get("prefixes", []):
        for k in ("ipv4Prefix", "ipv6Prefix"):
            if x.get(k):
                p.append(x[k])
    return p, "syncToken=%s creationTime=%s" % (d.get("syncToken"), d.get("creationTime"))


def parse_azure(text):
    d = json.loads(text)
    p = []
    for v in d.get("values", []):
        p += v.get("properties", {}).get("addressPrefixes", []) or []
    return p, "cloud=%s changeNumber=%s" % (d.get("cloud"), d.get("changeNumber"))


def parse_oracle(text):
    d = json.loads(text)
    p = []
    for r in d.get("regions", []):
        for c in r.get("cidrs", []):
            if c.get("cidr"):
                p.append(c["cidr"])
    return p, "last_updated_timestamp=%s" % d.get("last_updated_timestamp")


def parse_first_column(text):
    """RFC 8805 geofeeds, Apple's egress CSV, plain CIDR lists, '<cidr>\\t..'."""
    p, version = [], None
    for line in text.splitlines():
        s = line.strip()
        if not s:
            continue
        if s.startswith("#"):
            m = re.search(r"(last[ _-]?(modified|update[d]?)|generated|date)\s*[:=]\s*(.+)", s, re.I)
            if m and version is None:
                version = m.group(0)
            continue
        first = re.split(r"[,\t ;]", s, 1)[0].strip()
        if first:
            p.append(first)
    return p, version


def parse_ripestat(text):
    d = json.loads(text)
    data = d.get("data", {})
    p = [x["prefix"] for x in data.get("prefixes", []) if x.get("prefix")]
    return p, "AS%s query_endtime=%s" % (data.get("resource"), data.get("query_endtime"))


# --------------------------------------------------------------------------
# Sources: label -> list of (local filename glob, url-or-callable, parser)
# --------------------------------------------------------------------------

def _azure_url(name):
    def resolve():
        html = _decode(_http_get(AZURE_PAGES[name]))
        m = re.search(r"https://download\.microsoft\.com/download/[^\"'\s<>]+?/%s_\d+\.json" % name, html)
        if not m:
            raise RuntimeError("no %s_*.json link found on %s (page layout changed? pass --azure-url)" % (name, AZURE_PAGES[name]))
        return m.group(0)
    return resolve


def hosting_sources():
    s = {
        "aws": [("ip-ranges.json", "https://ip-ranges.amazonaws.com/ip-ranges.json", parse_aws)],
        "gcp": [("cloud.json", "https://www.gstatic.com/ipranges/cloud.json", parse_gcp)],
        "azure": [("%s*.json" % n, _azure_url(n), parse_azure) for n in AZURE_PAGES],
        "oracle": [("public_ip_ranges.json", "https://docs.oracle.com/en-us/iaas/tools/public_ip_ranges.json", parse_oracle)],
        "digitalocean": [("google.csv", "https://digitalocean.com/geo/google.csv", parse_first_column)],
        "linode": [("linode-geofeed.csv", "https://geoip.linode.com/", parse_first_column)],
        "vultr": [("vultr-geofeed.csv", "https://geofeed.constant.com/?text", parse_first_column)],
        "cloudflare": [("ips-v4", "https://www.cloudflare.com/ips-v4", parse_first_column),
                       ("ips-v6", "https://www.cloudflare.com/ips-v6", parse_first_column)],
    }
    for label, asns in ASN_PROVIDERS.items():
        s[label] = [("ripestat-AS%d.json" % a, RIPESTAT_URL.format(asn=a), parse_ripestat) for a in asns]
    return s


def relay_sources():
    return {
        "apple_private_relay": [("egress-ip-ranges.csv", "https://mask-api.icloud.com/egress-ip-ranges.csv", parse_first_column)],
    }


# --------------------------------------------------------------------------
# Collection
# --------------------------------------------------------------------------

def _find_local(d, pattern):
    hits = sorted(set(glob.glob(os.path.join(d, pattern)) + glob.glob(os.path.join(d, pattern + ".gz"))))
    return [h for h in hits if os.path.isfile(h)]


def _to_networks(prefixes, label, warnings):
    nets, bad, fixed = [], 0, 0
    for s in prefixes:
        s = s.strip()
        try:
            n = ipaddress.ip_network(s, strict=True)
        except ValueError:
            try:
                n = ipaddress.ip_network(s, strict=False)
                fixed += 1
            except ValueError:
                bad += 1
                continue
        if n.is_private or n.is_loopback or n.is_link_local or n.is_multicast or n.is_unspecified or n.is_reserved:
            bad += 1
            continue
        nets.append(n)
    if bad:
        warnings.append("%s: skipped %d unparsable/non-global entries" % (label, bad))
    if fixed:
        warnings.append("%s: %d entries had host bits set (normalised)" % (label, fixed))
    return nets


def collect(sources, from_dir, download_to, overrides, warnings):
    """Returns {label: {"nets": [...], "meta": [str, ...]}}"""
    out = {}
    for label, entries in sources.items():
        prefixes, meta = [], []
        for pattern, url, parser in entries:
            if from_dir:
                for path in _find_local(from_dir, pattern):
                    with open(path, "rb") as f:
                        p, ver = parser(_decode(f.read()))
                    prefixes += p
                    meta.append("%s (%d entries%s)" % (os.path.basename(path), len(p), ", " + ver if ver else ""))
            else:
                try:
                    u = overrides.get(label + ":" + pattern) or (url() if callable(url) else url)
                    raw = _http_get(u)
                except Exception as e:  # keep going: one dead feed must not kill the refresh
                    warnings.append("%s: download failed for %s: %s" % (label, pattern, e))
                    continue
                if download_to:
                    os.makedirs(download_to, exist_ok=True)
                    name = os.path.basename(u.split("?")[0]) if pattern.endswith("*.json") else pattern
                    with open(os.path.join(download_to, name), "wb") as f:
                        f.write(raw)
                p, ver = parser(_decode(raw))
                prefixes += p
                meta.append("%s (%d entries%s)" % (u, len(p), ", " + ver if ver else ""))
        if from_dir:
            for path in _find_local(from_dir, label + ".txt"):
                with open(path, "rb") as f:
                    p, ver = parse_first_column(_decode(f.read()))
                prefixes += p
                meta.append("%s (%d entries, generic CIDR list%s)" % (os.path.basename(path), len(p), ", " + ver if ver else ""))
        if not prefixes:
            warnings.append("%s: no data found (%s)" % (label, "nothing in --from-dir" if from_dir else "all downloads failed"))
            continue
        out[label] = {"nets": _to_networks(prefixes, label, warnings), "meta": meta}
    return out


def collapse(nets):
    v4 = [n for n in nets if n.version == 4]
    v6 = [n for n in nets if n.version == 6]
    return list(ipaddress.collapse_addresses(v4)), list(ipaddress.collapse_addresses(v6))


def _intervals(holes, ver):
    hs = sorted((int(h.network_address), int(h.broadcast_address), h) for h in holes if h.version == ver)
    return hs, [s for s, _, _ in hs]


def _overlapping(n, hs, starts):
    """Holes (collapsed, sorted) that overlap network n."""
    import bisect
    lo, hi = int(n.network_address), int(n.broadcast_address)
    i = bisect.bisect_right(starts, hi) - 1
    found = []
    while i >= 0 and hs[i][1] >= lo:
        found.append(hs[i][2])
        i -= 1
    return found


def count_overlaps(nets, holes):
    res = 0
    for ver in (4, 6):
        hs, starts = _intervals(holes, ver)
        res += sum(1 for n in nets if n.version == ver and _overlapping(n, hs, starts))
    return res


def exclude(nets, holes):
    """Remove every address in holes (collapsed) from nets."""
    out = []
    idx = {ver: _intervals(holes, ver) for ver in (4, 6)}
    for n in nets:
        pieces = [n]
        for h in _overlapping(n, *idx[n.version]):
            nxt = []
            for p in pieces:
                if not p.overlaps(h):
                    nxt.append(p)
                elif not h.supernet_of(p):
                    nxt.extend(p.address_exclude(h))
            pieces = nxt
        out.extend(pieces)
    v4 = [p for p in out if p.version == 4]
    v6 = [p for p in out if p.version == 6]
    return list(ipaddress.collapse_addresses(v4)) + list(ipaddress.collapse_addresses(v6))


# --------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------

def write_list(path, title, data, provenance, mode, warnings, extra_notes=()):
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    lines = [
        "# %s" % title,
        "# format: <cidr>\\t<label>; IPv4 and IPv6; per label collapsed with Python ipaddress.collapse_addresses",
        "# generated: %s by refresh.py (%s)" % (now, mode),
        "# the ranges are facts published by the networks' operators; see NOTES.md for sources and terms",
    ]
    for n in extra_notes:
        lines.append("# " + n)
    if provenance:
        lines.append("# provenance of the stored copies used (from PROVENANCE.txt):")
        lines += ["#   " + l.rstrip() for l in provenance.splitlines() if l.strip()]
    body = []
    total = 0
    for label in sorted(data):
        d = data[label]
        raw = len(d["nets"])
        v4, v6 = d["v4"], d["v6"]
        total += len(v4) + len(v6)
        terms = TERMS.get(label) or (TERMS["asn"] if label in ASN_PROVIDERS else "")
        lines.append("# %s: %d entries in -> %d collapsed (%d IPv4, %d IPv6)" % (label, raw, len(v4) + len(v6), len(v4), len(v6)))
        for m in d["meta"]:
            lines.append("#   source: " + m)
        if terms:
            lines.append("#   terms: " + terms)
        body += ["%s\t%s" % (n, label) for n in v4 + v6]
    for w in warnings:
        lines.append("# warning: " + w)
    lines.append("# total prefixes: %d" % total)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write("\n".join(lines + body) + "\n")
    return total


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--from-dir", help="read downloaded copies from this directory instead of the network")
    ap.add_argument("--download-to", help="online mode: also save every raw download here (re-usable with --from-dir)")
    ap.add_argument("--out-dir", default=os.path.dirname(os.path.abspath(__file__)), help="where to write the lists (default: next to this script)")
    ap.add_argument("--hosting-out", default="hosting.txt")
    ap.add_argument("--relay-out", default="privacy_relay.txt")
    ap.add_argument("--exclude-relay", action="store_true", help="remove privacy-relay ranges from the hosting list")
    ap.add_argument("--azure-url", action="append", default=[], metavar="URL",
                    help="direct ServiceTags_*.json URL(s), skipping the Download Center page scrape")
    ap.add_argument("--relay-round", metavar="V4,V6",
                    help="lossy: widen relay prefixes longer than /V4 (IPv4) and /V6 (IPv6) to that length before "
                         "collapsing, e.g. 24,48 (default: lossless)")
    ap.add_argument("--strict", action="store_true",
                    help="write nothing and exit 2 if any source failed or any label came out empty")
    ap.add_argument("--max-bytes", type=int, default=2_000_000, help="warn when an output exceeds this size")
    a = ap.parse_args(argv)

    if a.from_dir and not os.path.isdir(a.from_dir):
        ap.error("--from-dir %s is not a directory" % a.from_dir)
    overrides = {}
    for u in a.azure_url:
        m = re.search(r"(ServiceTags_[A-Za-z]+)_\d+\.json", u)
        if not m:
            ap.error("--azure-url %s does not look like ServiceTags_<Cloud>_<date>.json" % u)
        overrides["azure:%s*.json" % m.group(1)] = u

    mode = "from-dir %s" % os.path.abspath(a.from_dir) if a.from_dir else "online"
    provenance = ""
    if a.from_dir and os.path.isfile(os.path.join(a.from_dir, "PROVENANCE.txt")):
        with open(os.path.join(a.from_dir, "PROVENANCE.txt"), encoding="utf-8") as f:
            provenance = f.read()

    hw, rw = [], []
    hosting = collect(hosting_sources(), a.from_dir, a.download_to, overrides, hw)
    relay = collect(relay_sources(), a.from_dir, a.download_to, overrides, rw)
    if a.strict:
        missing = [l for l in hosting_sources() if l not in hosting] + [l for l in relay_sources() if l not in relay]
        failed = [w for w in hw + rw if "download failed" in w]
        if missing or failed:
            for w in hw + rw:
                print("warning: " + w, file=sys.stderr)
            print("error (--strict): missing labels %s; nothing written" % ", ".join(missing), file=sys.stderr)
            return 2
    if a.relay_round:
        try:
            r4, r6 = (int(x) for x in a.relay_round.split(","))
        except ValueError:
            ap.error("--relay-round wants two integers, e.g. 24,48")
        for d in relay.values():
            d["nets"] = [n.supernet(new_prefix=(r4 if n.version == 4 else r6))
                         if n.prefixlen > (r4 if n.version == 4 else r6) else n for n in d["nets"]]
            d["meta"].append("widened to at most /%d (IPv4) and /%d (IPv6) by --relay-round (lossy)" % (r4, r6))
    for d in list(hosting.values()) + list(relay.values()):
        d["v4"], d["v6"] = collapse(d["nets"])

    notes = []
    relay_all = [n for d in relay.values() for n in d["v4"] + d["v6"]]
    if relay_all:
        relay_c = list(ipaddress.collapse_addresses([n for n in relay_all if n.version == 4])) + \
                  list(ipaddress.collapse_addresses([n for n in relay_all if n.version == 6]))
        overlap = {}
        for label, d in hosting.items():
            hit = count_overlaps(d["v4"] + d["v6"], relay_c)
            if hit:
                overlap[label] = hit
        if overlap:
            s = ", ".join("%s=%d" % kv for kv in sorted(overlap.items()))
            if a.exclude_relay:
                for label, d in hosting.items():
                    d["v4"] = exclude(d["v4"], [r for r in relay_c if r.version == 4])
                    d["v6"] = exclude(d["v6"], [r for r in relay_c if r.version == 6])
                notes.append("privacy-relay ranges were removed from these labels (--exclude-relay): " + s)
            else:
                notes.append("hosting prefixes that overlap privacy-relay egress ranges: " + s +
                             " -> check privacy_relay.txt first (or rebuild with --exclude-relay)")

    os.makedirs(a.out_dir, exist_ok=True)
    hp = os.path.join(a.out_dir, a.hosting_out)
    rp = os.path.join(a.out_dir, a.relay_out)
    written = []
    # never replace an existing list with an empty one (e.g. every download failed)
    if hosting:
        written.append((hp, write_list(hp, "linkhit default hosting/cloud network list (suspicious client networks)",
                                       hosting, provenance, mode, hw, notes)))
    else:
        print("error: no hosting data at all; %s left unchanged" % hp, file=sys.stderr)
    if relay:
        written.append((rp, write_list(rp, "linkhit privacy-relay egress list (human clients behind a relay)",
                                       relay, provenance, mode, rw)))
    else:
        print("warning: no privacy-relay data; %s left unchanged" % rp, file=sys.stderr)
    for path, total in written:
        size = os.path.getsize(path)
        print("%s: %d prefixes, %d bytes%s" % (path, total, size, "  (over --max-bytes!)" if size > a.max_bytes else ""))
    for w in hw + rw:
        print("warning: " + w, file=sys.stderr)
    return 0 if hosting else 1


if __name__ == "__main__":
    sys.exit(main())
