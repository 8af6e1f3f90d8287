"""Renders the Helm chart with real Helm (Helm's own Go SDK, through PyPI's helm-python-sdk),
lints it strictly, validates every rendered object (kubernetes-validate, strict: unknown fields
are errors, against the newest Kubernetes release it knows; custom-resource kinds against the
schemas in crd_schemas.py), and checks that values of a wrong type are refused by the chart's
values.schema.json.

  render_chart.py CHART_DIR            JSON report (below) on stdout
  render_chart.py CHART_DIR --default  the default release as one YAML stream (deploy/)

The report: {"kubernetes": VERSION, "lint": [messages], "sets": {NAME: {"containers":
{CONTAINER: {"image": REF, "args": [...]}}, "kinds": [KIND...]}}, "refused": {CASE: MESSAGE}}.
Exits non-zero with the reason when Helm cannot render or lint the chart, an object is not
valid, or a wrong value is accepted.
"""
import json
import sys

import helm_python as helm
import jsonschema
import kubernetes_validate
import yaml

from crd_schemas import SCHEMAS

RELEASE, NAMESPACE = "multisnap", "multisnap"

# Every combination the values document; the README's operator section names them.
VALUE_SETS = {
    "defaults": {},
    "tls-and-origins": {
        "grpcTls": {"secretName": "multisnap-tls", "requireClientCert": True},
        "nbdTls": {"secretName": "multisnap-nbd-tls", "requireClientCert": True},
        "csi": {"peers": {"enabled": True, "tlsSecretName": "multisnap-peer-tls", "bandwidthLimit": 104857600}},
        "agent": {
            "cacheBytes": 134217728,
            "defaultVolumeSize": 2147483648,
            "allowOrigin": ["/dev/disk/by-id/nvme-*", "/srv/images"],
            "logLevel": "debug",
        },
        "metrics": {"annotations": False},
    },
    "agent-only": {
        "csi": {"enabled": False},
        "agent": {"privileged": False},
        "networkPolicy": {"enabled": False},
        "metrics": {"podMonitor": {"enabled": False}},
    },
    "everything-on": {
        "image": {"repository": "registry.example.com/storage/multisnap-agent", "tag": "0.1.0-rc1", "pullPolicy": "Always"},
        "imagePullSecrets": ["registry-login"],
        "csi": {"image": {"repository": "registry.example.com/storage/multisnap-csi", "tag": "0.1.0-rc1"}, "logLevel": "debug"},
        "sidecars": {"resizer": {"enabled": True}},
        "storageClass": {"isDefault": True, "fsType": "xfs", "reclaimPolicy": "Retain", "parameters": {"chunkSize": "65536"}},
        "volumeSnapshotClass": {"isDefault": True, "deletionPolicy": "Retain", "parameters": {"note": "kept"}},
        "metrics": {"podMonitor": {"always": True, "interval": "15s", "labels": {"release": "prometheus"}}},
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"operator": "Exists"}],
        "kubeletDir": "/var/lib/k0s/kubelet",
        "nbdTls": {"secretName": "multisnap-nbd-tls", "allowPlaintext": True},
        "dataDir": {"hostPath": "/srv/multisnap"},
    },
    "no-classes": {
        "storageClass": {"create": False},
        "volumeSnapshotClass": {"create": False},
    },
}

# Values of the wrong type or out of range: values.schema.json must refuse each one.
WRONG_VALUES = {
    "cache-bytes-as-string": {"agent": {"cacheBytes": "64Mi"}},
    "size-as-float": {"agent": {"defaultVolumeSize": 1.5}},
    "port-out-of-range": {"ports": {"grpc": 70000}},
    "enabled-as-string": {"csi": {"enabled": "yes"}},
    "unknown-key": {"agnet": {"logLevel": "debug"}},
    "fs-type-unknown": {"storageClass": {"fsType": "btrfs"}},
    "nbd-tls-plaintext-as-string": {"nbdTls": {"allowPlaintext": "yes"}},
    "peer-compression-unknown": {"csi": {"peers": {"compression": "gzip"}}},
    "peer-endpoint-without-port": {"csi": {"peers": {"endpointTemplate": "https://{node}"}}},
}


def validate(doc, kubernetes):
    key = (doc.get("apiVersion"), doc.get("kind"))
    if key in SCHEMAS:
        jsonschema.validate(doc, SCHEMAS[key])
        return
    kubernetes_validate.validate(doc, kubernetes, strict=True)


def lint_clean(chart_dir, values, name):
    """`helm lint --strict` with these values: no error and no warning (info is allowed)."""
    lint = helm.lint(chart_dir, values, strict=True)
    if lint.get("errors") or any(m["severity"] >= 2 for m in lint["messages"]):
        sys.exit(f"{name}: helm lint: {lint}")
    return lint


def render(chart, values):
    rendered = chart.render(values, name=RELEASE, namespace=NAMESPACE)
    docs = []
    for path in sorted(rendered):
        if path.endswith((".yaml", ".yml")):
            docs.extend((path, d) for d in yaml.safe_load_all(rendered[path]) if d)
    return rendered, docs


def containers_of(docs):
    out = {}
    for _, doc in docs:
        if doc.get("kind") == "DaemonSet":
            for c in doc["spec"]["template"]["spec"]["containers"]:
                out[c["name"]] = {"image": c["image"], "args": c.get("args", [])}
    return out


def main():
    chart_dir = sys.argv[1]
    kubernetes = kubernetes_validate.latest_version()
    with helm.Chart.load(chart_dir) as chart:
        if sys.argv[2:] == ["--default"]:
            rendered, _ = render(chart, {})
            print(f"# multisnap {chart.metadata['appVersion']}: the Helm chart helm/multisnap rendered with its")
            print(f"# default values as release {RELEASE!r} in namespace {NAMESPACE!r}; regenerate with")
            print("#   .venv/bin/python tests/helm/render_chart.py helm/multisnap --default > deploy/multisnap.yaml")
            for path in sorted(rendered):
                if path.endswith(".yaml") and rendered[path].strip():
                    print(f"---\n# Source: {path}\n{rendered[path].strip()}")
            return
        lint = lint_clean(chart_dir, {}, "defaults")
        report = {"kubernetes": kubernetes, "lint": lint["messages"], "sets": {}, "refused": {}}
        for name, values in VALUE_SETS.items():
            lint_clean(chart_dir, values, name)
            _, docs = render(chart, values)
            for path, doc in docs:
                try:
                    validate(doc, kubernetes)
                except (kubernetes_validate.ValidationError, jsonschema.ValidationError) as e:
                    sys.exit(f"{name}: {path}: {doc.get('kind')}: {e.message}")
                except kubernetes_validate.SchemaNotFoundError:
                    sys.exit(f"{name}: {path}: no schema for {doc.get('apiVersion')} {doc.get('kind')}")
            report["sets"][name] = {
                "containers": containers_of(docs),
                "kinds": sorted({d["kind"] for _, d in docs}),
            }
        for case, values in WRONG_VALUES.items():
            try:
                chart.render(values, name=RELEASE, namespace=NAMESPACE)
            except helm.HelmValuesError as e:
                report["refused"][case] = str(e)
            else:
                sys.exit(f"values.schema.json accepted {case}: {values}")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
