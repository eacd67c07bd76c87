"""YAML as the bundle writes it: block style, keys in the order built, no anchors.

Multi-line strings (PromQL, the Ray Serve config) become literal blocks. A mapping used twice
(the same labels on a CronJob and its pods) is written out twice, never as an anchor and alias,
which some tools reading manifests do not follow.
"""

from __future__ import annotations

from typing import Any

import yaml


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


def _string(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _string)


def dump(document: Any) -> str:
    return yaml.dump(document, Dumper=_Dumper, sort_keys=False, width=1000, allow_unicode=True)
