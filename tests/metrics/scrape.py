#!/usr/bin/env python3
"""Reads multisnap metrics the way monitoring does, for the end-to-end tests. Output is one
record per line, tab-separated, so the Rust tests need no JSON or exposition parser of their own.

  scrape.py openmetrics URL   -> scrape asking for OpenMetrics, parse with the official client's
                                 OpenMetrics parser (strict: needs # EOF, checks types/suffixes)
  scrape.py text URL          -> scrape as plain `curl` would, parse with the classic text parser
      prints  CONTENT_TYPE <type>
              FAMILY <name> <type> <unit>
              SAMPLE <name> <labels as k=v,k=v sorted> <value>
  scrape.py targets PROM      -> TARGET <job> <health> <scrapeUrl> <lastError>   (Prometheus API)
  scrape.py query PROM EXPR   -> SERIES <labels> <value>                         (instant query)
  scrape.py rules PROM        -> RULE <group> <name> <health> <lastError>
"""
import json
import sys
import urllib.parse
import urllib.request


def fetch(url, accept=None):
    req = urllib.request.Request(url)
    if accept:
        req.add_header("Accept", accept)
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.headers.get("Content-Type", ""), r.read().decode("utf-8")


def labels_str(labels):
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "-"


def dump(families, ctype):
    print(f"CONTENT_TYPE\t{ctype}")
    for f in families:
        print(f"FAMILY\t{f.name}\t{f.type}\t{getattr(f, 'unit', '') or '-'}")
        for s in f.samples:
            print(f"SAMPLE\t{s.name}\t{labels_str(s.labels)}\t{s.value!r}")


def api(prom, path, params=None):
    url = prom.rstrip("/") + path
    if params:
        url += "?" + urllib.parse.urlencode(params)
    _, body = fetch(url)
    doc = json.loads(body)
    if doc.get("status") != "success":
        raise SystemExit(f"Prometheus API error: {body}")
    return doc["data"]


def main():
    verb = sys.argv[1]
    if verb == "openmetrics":
        from prometheus_client.openmetrics.parser import text_string_to_metric_families

        ctype, body = fetch(sys.argv[2], "application/openmetrics-text; version=1.0.0")
        # The parser is lazy: list() makes it check the whole exposition now.
        dump(list(text_string_to_metric_families(body)), ctype)
    elif verb == "text":
        from prometheus_client.parser import text_string_to_metric_families

        ctype, body = fetch(sys.argv[2])
        dump(list(text_string_to_metric_families(body)), ctype)
    elif verb == "targets":
        for t in api(sys.argv[2], "/api/v1/targets")["activeTargets"]:
            job = t.get("labels", {}).get("job", "-")
            err = t.get("lastError") or "-"
            print(f"TARGET\t{job}\t{t['health']}\t{t['scrapeUrl']}\t{err}")
    elif verb == "query":
        data = api(sys.argv[2], "/api/v1/query", {"query": sys.argv[3]})
        for r in data["result"]:
            print(f"SERIES\t{labels_str(r['metric'])}\t{r['value'][1]}")
    elif verb == "rules":
        for g in api(sys.argv[2], "/api/v1/rules")["groups"]:
            for r in g["rules"]:
                err = r.get("lastError") or "-"
                print(f"RULE\t{g['name']}\t{r['name']}\t{r['health']}\t{err}")
    else:
        raise SystemExit(f"unknown verb {verb}")


if __name__ == "__main__":
    main()
