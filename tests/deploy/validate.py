"""Validates the Kubernetes manifests under deploy/kubernetes/ against the
Kubernetes API's schemas (kubernetes-validate, strict: unknown fields are
errors), for the oldest and the newest Kubernetes version we claim, and
prints every resource as JSON on stdout for tests/deploy_manifests.rs.

Custom resources (PodMonitor) have no schema here: they are listed, not
validated, and tests/deploy/node/podmonitor_check.mjs validates them.
Any other kind without a schema is an error. Exit 1 on any error.
kustomization.yaml is not a resource: it is printed as it is.

Usage: python3 validate.py DIR
"""

import json
import pathlib
import sys

import kubernetes_validate
import kubernetes_validate.utils as kv
import yaml

# The oldest Kubernetes the manifests are meant for, and the newest one
# kubernetes-validate knows.
VERSIONS = ["1.31.0", kv.latest_version()]
CUSTOM = {("monitoring.coreos.com/v1", "PodMonitor")}
# kustomize's own file: not an API resource.
NOT_RESOURCES = {"kustomization.yaml"}


def main(directory: str) -> int:
    errors = []
    resources = []
    kustomization = None
    files = sorted(pathlib.Path(directory).glob("*.yaml"))
    if not files:
        errors.append(f"no *.yaml in {directory}")
    for path in files:
        if path.name in NOT_RESOURCES:
            kustomization = yaml.safe_load(path.read_text())
            continue
        try:
            docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        except yaml.YAMLError as e:
            errors.append(f"{path.name}: not YAML: {e}")
            continue
        for doc in docs:
            if not isinstance(doc, dict) or "kind" not in doc or "apiVersion" not in doc:
                errors.append(f"{path.name}: a document without apiVersion and kind")
                continue
            name = f"{path.name}: {doc['kind']}/{doc.get('metadata', {}).get('name')}"
            resources.append({"file": path.name, "resource": doc})
            if (doc["apiVersion"], doc["kind"]) in CUSTOM:
                continue
            for version in VERSIONS:
                try:
                    kv.validate(doc, version, strict=True)
                except kv.ValidationError as e:
                    where = ".".join(str(p) for p in e.path)
                    errors.append(f"{name} (Kubernetes {version}): {where}: {e.message}")
                except kv.SchemaNotFoundError as e:
                    errors.append(f"{name}: {e.message}")
    for e in errors:
        print(f"ERROR {e}", file=sys.stderr)
    json.dump(
        {
            "validator": f"kubernetes-validate {kubernetes_validate.__version__}",
            "versions": VERSIONS,
            "resources": resources,
            "kustomization": kustomization,
        },
        sys.stdout,
    )
    return 1 if errors else 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1]))
