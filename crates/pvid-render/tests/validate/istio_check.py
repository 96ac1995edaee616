"""Validates Istio objects with the cloudcoil-models-istio pydantic models, plus a round trip:
the models drop unknown fields silently, so a document that does not survive
validate -> dump unchanged holds a misspelt or unknown field.

Usage: istio_check.py FILE...   Exit 1 when any document fails (or a file holds none).
"""
import sys

import yaml
from cloudcoil.models.istio.security import v1 as sec

bad = 0
seen = 0
for path in sys.argv[1:]:
    with open(path) as f:
        for doc in yaml.safe_load_all(f):
            if not doc:
                continue
            seen += 1
            kind = doc.get("kind")
            try:
                if doc.get("apiVersion") != "security.istio.io/v1":
                    raise ValueError("not security.istio.io/v1: %s" % doc.get("apiVersion"))
                model = getattr(sec, kind).model_validate(doc)
                back = model.model_dump(by_alias=True, exclude_unset=True, mode="json")
                if back != doc:
                    raise ValueError("unknown or misspelt field (round trip differs): %s" % back)
                print("ok  ", path, kind, doc["metadata"]["name"])
            except Exception as e:  # report every failure, then fail
                bad += 1
                print("FAIL", path, kind, str(e).splitlines()[0])
if seen == 0:
    print("FAIL no document checked")
    sys.exit(1)
sys.exit(1 if bad else 0)
