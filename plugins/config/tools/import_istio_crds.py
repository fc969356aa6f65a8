"""Regenerate knotwork_config/istio_schemas.json from Istio's CRD file.

Usage (from the repository root, with the workspace venv)::

    git -C ISTIO_CHECKOUT show 1.30.3:manifests/charts/base/files/crd-all.gen.yaml > /tmp/crd-all.gen.yaml
    .venv/bin/python plugins/config/tools/import_istio_crds.py /tmp/crd-all.gen.yaml \\
        --istio-version 1.30.3 --commit 56df41f63e513f834c9a3af33d8aed82d1d961f2

Keeps, for the kinds Knotwork reads (knotwork_config.crds.KINDS_READ), the
names, scope, served versions and schema, without descriptions; records the
origin, Istio version and Apache-2.0 notice in the file's ``source``. Then
run ``.venv/bin/python -m pytest -q plugins/config/tests/test_schema_data.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from knotwork_config import crds

OUTPUT = Path(__file__).resolve().parents[1] / "src" / "knotwork_config" / crds.DATA_FILE
CRD_PATH = "manifests/charts/base/files/crd-all.gen.yaml"
LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when built in: the file is ~1 MB


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("crd_yaml", type=Path, help=f"Istio's {CRD_PATH}")
    parser.add_argument("--istio-version", required=True, help="the Istio release the file comes from, e.g. 1.30.3")
    parser.add_argument("--commit", required=True, help="the istio/istio commit of that release")
    parser.add_argument("-o", "--output", type=Path, default=OUTPUT, help=f"default: {OUTPUT}")
    args = parser.parse_args(argv)
    try:
        docs = list(yaml.load_all(args.crd_yaml.read_text(encoding="utf-8"), Loader=LOADER))
        kinds = crds.extract(docs)
    except (OSError, yaml.YAMLError, ValueError, KeyError) as exc:
        print(f"{args.crd_yaml}: {exc}", file=sys.stderr)
        return 2
    data = {
        "source": {
            "project": "Istio",
            "repository": "https://github.com/istio/istio",
            "path": CRD_PATH,
            "version": args.istio_version,
            "commit": args.commit,
            "license": "Apache-2.0",
            "notice": "Copyright Istio Authors. Licensed under the Apache License, Version 2.0 "
                      "(http://www.apache.org/licenses/LICENSE-2.0). Derived from the file above: only the "
                      "kinds Knotwork reads, served versions, descriptions removed.",
            "generator": "plugins/config/tools/import_istio_crds.py",
        },
        "kinds": kinds,
    }
    args.output.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n", encoding="utf-8")
    print(f"{args.output}: {len(kinds)} kinds from Istio {args.istio_version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
