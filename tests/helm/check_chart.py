#!/usr/bin/env python3
"""Static checks of the Helm chart (no helm binary here): Chart.yaml and values.yaml parse and
say what a chart must; every .Values path the templates use exists in values.yaml; every
--flag the DaemonSet passes is one `multisnap-agent --help` lists.

  check_chart.py CHART_DIR AGENT_HELP_FILE
"""
import re
import sys
from pathlib import Path

import yaml


def main():
    chart, help_file = Path(sys.argv[1]), Path(sys.argv[2])
    problems = []
    meta = yaml.safe_load((chart / "Chart.yaml").read_text())
    for key in ("apiVersion", "name", "version", "appVersion"):
        if key not in meta:
            problems.append(f"Chart.yaml lacks {key}")
    if meta.get("apiVersion") != "v2":
        problems.append("Chart.yaml apiVersion must be v2")
    values = yaml.safe_load((chart / "values.yaml").read_text())
    agent_help = help_file.read_text()
    for tpl in sorted((chart / "templates").glob("*")):
        text = tpl.read_text()
        for path in set(re.findall(r"\.Values\.([A-Za-z0-9_.]+)", text)):
            node = values
            for part in path.split("."):
                if not isinstance(node, dict) or part not in node:
                    problems.append(f"{tpl.name}: .Values.{path} is not in values.yaml")
                    break
                node = node[part]
        for flag in set(re.findall(r"^\s*- (--[a-z0-9-]+)", text, re.M)):
            if flag not in agent_help:
                problems.append(f"{tpl.name}: multisnap-agent has no flag {flag}")
    for p in problems:
        print("PROBLEM:", p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
