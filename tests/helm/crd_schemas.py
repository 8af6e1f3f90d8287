"""JSON schemas for the custom-resource kinds the chart renders, which kubernetes-validate has
no schema for (it knows the built-in API only). Each is written from the published API of its
project, limited to the fields that API defines, with unknown fields refused as the strict
validation of built-in kinds does:

- snapshot.storage.k8s.io/v1 VolumeSnapshotClass: the openAPIV3Schema of the CRD that
  kubernetes-csi/external-snapshotter publishes (client/config/crd/): driver and deletionPolicy
  required, deletionPolicy Delete or Retain, parameters a map of strings, allowedTopologies.
- monitoring.coreos.com/v1 PodMonitor: the prometheus-operator API for the fields a
  PodMonitor's spec takes here (selector, podMetricsEndpoints with port, path, interval).
"""

STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}

OBJECT_META = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", "maxLength": 253},
        "namespace": {"type": "string"},
        "labels": STRING_MAP,
        "annotations": STRING_MAP,
    },
    "additionalProperties": False,
}

LABEL_SELECTOR = {
    "type": "object",
    "properties": {
        "matchLabels": STRING_MAP,
        "matchExpressions": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["key", "operator"],
                "properties": {
                    "key": {"type": "string"},
                    "operator": {"type": "string"},
                    "values": {"type": "array", "items": {"type": "string"}},
                },
                "additionalProperties": False,
            },
        },
    },
    "additionalProperties": False,
}

DURATION = {"type": "string", "pattern": "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"}


def _kind(api_version, kind, props, required):
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", *required],
        "properties": {
            "apiVersion": {"const": api_version},
            "kind": {"const": kind},
            "metadata": OBJECT_META,
            **props,
        },
        "additionalProperties": False,
    }


SCHEMAS = {
    ("snapshot.storage.k8s.io/v1", "VolumeSnapshotClass"): _kind(
        "snapshot.storage.k8s.io/v1",
        "VolumeSnapshotClass",
        {
            "driver": {"type": "string"},
            "deletionPolicy": {"enum": ["Delete", "Retain"]},
            "parameters": STRING_MAP,
            "allowedTopologies": {"type": "array", "items": {"type": "object"}},
        },
        ["driver", "deletionPolicy"],
    ),
    ("monitoring.coreos.com/v1", "PodMonitor"): _kind(
        "monitoring.coreos.com/v1",
        "PodMonitor",
        {
            "spec": {
                "type": "object",
                "required": ["selector"],
                "properties": {
                    "selector": LABEL_SELECTOR,
                    "namespaceSelector": {"type": "object"},
                    "jobLabel": {"type": "string"},
                    "podMetricsEndpoints": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {
                                "port": {"type": "string"},
                                "portNumber": {"type": "integer", "minimum": 1, "maximum": 65535},
                                "path": {"type": "string"},
                                "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
                                "interval": DURATION,
                                "scrapeTimeout": DURATION,
                                "honorLabels": {"type": "boolean"},
                            },
                            "additionalProperties": False,
                        },
                    },
                },
                "additionalProperties": False,
            }
        },
        ["spec"],
    ),
}
