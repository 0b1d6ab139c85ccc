"""The one identity rule of every output: what an output depends on (its declared settings, as
`settings.record` gives them, and the identities of its inputs: a features file's settings hash, a
model's sha256, a data fingerprint) in one canonical JSON form, hashed; and its name, readable parts
followed by that hash. The same settings always give the same name, whatever their spelling
(`-0` is 0, a tuple is a list), so the same command again finds its output up to date, and a
changed setting or input gives a new output, never a silently stale one. Hashes of outputs made
before this module are unchanged: the JSON form (sorted keys, default separators) is the one they used.
"""
from __future__ import annotations

import hashlib
import json
import re

HASH_CHARS = 12


def canonical(value):
    """`value` as its identity sees it: -0.0 is 0.0 (two spellings of one number), tuples are lists,
    recursively; everything else as it is."""
    if isinstance(value, float) and value == 0:
        return 0.0
    if isinstance(value, dict):
        return {k: canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    return value


def digest(identity: dict) -> str:
    """The hash of what an output depends on: 12 hex characters of the sha256 of its canonical JSON."""
    return hashlib.sha256(json.dumps(canonical(identity), sort_keys=True).encode()).hexdigest()[:HASH_CHARS]


def slug(text) -> str:
    """A name part: letters, digits, `_` and `.`, the rest one `-`, lower case."""
    return re.sub(r"[^A-Za-z0-9_.]+", "-", str(text)).strip("-.").lower() or "x"


def of_features(attrs: dict) -> dict:
    """A features file as an input: its settings hash and the fingerprint of the images it was made from."""
    return {"features": attrs["settings_hash"], "data_fingerprint": attrs.get("data_fingerprint")}


def name(identity: dict, *readable) -> str:
    """An output's name: its readable parts (a kind, a source, a cut), then the hash of `identity`."""
    return "-".join([*map(str, readable), digest(identity)])
