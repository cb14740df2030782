"""Builds ``lealla_tf/resources/data_sources.tsv``, the table ``lealla data fetch`` verifies against.

Reads a complete local copy of the data (``SOURCES.tsv``, ``tatoeba/v1``, ``train``, ``ntrex``),
checks every file it lists against its SHA-256, and writes one row per file:

- ``tatoeba``: LASER's ``data/tatoeba/v1`` files (from the local copy, which is LASER's as published);
- ``train`` with a ``repo``: the upstream Tatoeba Challenge test sets ``train/`` is derived from
  (the ``.labels`` files are not needed and left out);
- ``train`` without a ``repo``: the derived ``train/xxx-eng.tsv`` files themselves, so that a
  derivation is checked too;
- ``ntrex``: NTREX-128 and its metadata.

Example::

    python tools/build_data_table.py --data-dir ../shared/data
"""

import argparse
import hashlib
import os
import re
import sys


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _row(out, set_, name, repo, path, target, local):
    out.append("\t".join([set_, name, repo, path, target, _sha256(local),
                          str(os.path.getsize(local))]))


def _ntrex_name(fname):
    m = re.match(r"newstest2019-(?:ref|ref-2|src)\.(.+)\.txt$", fname)
    return m.group(1) if m else "*"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--output", default=os.path.join(os.path.dirname(__file__), "..",
                                                      "lealla_tf", "resources",
                                                      "data_sources.tsv"))
    args = ap.parse_args(argv)
    root = args.data_dir
    rows = ["set\tname\trepo\tpath\ttarget\tsha256\tbytes"]
    tato = os.path.join(root, "tatoeba", "v1")
    for fname in sorted(f for f in os.listdir(tato) if f.startswith("tatoeba.")):
        lang = fname.split(".")[1].split("-")[0]
        _row(rows, "tatoeba", lang, "laser", f"data/tatoeba/v1/{fname}",
             f"tatoeba/v1/{fname}", os.path.join(tato, fname))
    upstream = []
    with open(os.path.join(root, "SOURCES.tsv"), encoding="utf-8") as f:
        for line in f:
            if line.startswith("#") or line.startswith("set\t"):
                continue
            set_, name, path, sha, size = line.rstrip("\n").split("\t")
            upstream.append((set_, name, path, sha, int(size)))
    derived = set()
    for set_, name, path, sha, size in upstream:
        if set_ == "train":
            if path.endswith(".labels"):
                continue
            rows.append("\t".join([set_, name, "opus", path, "", sha, str(size)]))
            derived.add(name)
        else:
            rel = path.split("datasets/microsoft/ntrex/NTREX/", 1)[1]
            local = os.path.join(root, "ntrex", rel)
            if _sha256(local) != sha or os.path.getsize(local) != size:
                sys.exit(f"{local} does not match SOURCES.tsv")
            rows.append("\t".join([set_, _ntrex_name(os.path.basename(rel)), "opus", path,
                                   f"ntrex/{rel}", sha, str(size)]))
    for name in sorted(derived):
        _row(rows, "train", name, "", "", f"train/{name}-eng.tsv",
             os.path.join(root, "train", f"{name}-eng.tsv"))
    with open(args.output, "w", encoding="utf-8") as f:
        f.write("\n".join(rows) + "\n")
    print(f"{len(rows) - 1} rows -> {args.output}")


if __name__ == "__main__":
    main()
