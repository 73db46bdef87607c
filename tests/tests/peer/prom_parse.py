"""Parses Prometheus text exposition on stdin with the official parser (prometheus_client,
pinned in scripts/peer-requirements.txt) and prints the families as JSON: a list of
{"name", "type", "help", "samples": [{"name", "labels", "value"}]}. Input the parser refuses
makes it exit non-zero with the parser's error."""

import json
import math
import sys

from prometheus_client.parser import text_string_to_metric_families


def number(v):
    # JSON has no infinities or NaN; the tests only need to tell them apart.
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return v


def main():
    families = []
    for f in text_string_to_metric_families(sys.stdin.read()):
        families.append(
            {
                "name": f.name,
                "type": f.type,
                "help": f.documentation,
                "samples": [
                    {"name": s.name, "labels": s.labels, "value": number(s.value)}
                    for s in f.samples
                ],
            }
        )
    json.dump(families, sys.stdout)


if __name__ == "__main__":
    main()
