"""Renders the Helm chart with real Helm (Helm's own Go SDK, through PyPI's helm-python-sdk),
lints it strictly, validates every rendered manifest against the Kubernetes API schemas
(kubernetes-validate, strict: unknown fields are errors), and prints, for each set of values
tried, the agent container's arguments as JSON so the caller can run the real agent with them.

  render_chart.py CHART_DIR

Exits non-zero with the reason when Helm cannot render or lint the chart, or a manifest is not
valid Kubernetes.
"""
import json
import sys

import helm_python as helm
import kubernetes_validate
import yaml

KUBERNETES = "1.33"

VALUE_SETS = {
    "defaults": {},
    "tls-and-origins": {
        "grpcTls": {"secretName": "multisnap-tls", "requireClientCert": True},
        "grpcListenAddress": "0.0.0.0",
        "agent": {
            "cacheBytes": 134217728,
            "defaultVolumeSize": 2147483648,
            "allowOrigin": ["/dev/disk/by-id/nvme-*", "/srv/images"],
            "logLevel": "debug",
        },
        "metrics": {"annotations": False},
    },
}


def main():
    chart = sys.argv[1]
    lint = helm.lint(chart, strict=True)
    if lint.get("errors"):
        sys.exit(f"helm lint: {lint['errors']}")
    result = {}
    with helm.Chart.load(chart) as ch:
        for name, values in VALUE_SETS.items():
            rendered = ch.render(values, name="demo", namespace="storage")
            args = None
            for path, text in rendered.items():
                if not path.endswith((".yaml", ".yml")):
                    continue
                for doc in yaml.safe_load_all(text):
                    if not doc:
                        continue
                    try:
                        kubernetes_validate.validate(doc, KUBERNETES, strict=True)
                    except kubernetes_validate.ValidationError as e:
                        sys.exit(f"{name}: {path}: {doc.get('kind')}: {e.message}")
                    if doc.get("kind") == "DaemonSet":
                        containers = doc["spec"]["template"]["spec"]["containers"]
                        args = next(c["args"] for c in containers if c["name"] == "agent")
            if args is None:
                sys.exit(f"{name}: no DaemonSet with an agent container was rendered")
            result[name] = args
    print(json.dumps(result))


if __name__ == "__main__":
    main()
