"""Packing an export for TF Hub / Kaggle Models: compressed archives and model cards.

See docs/export.md, "Publishing".
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import tarfile
from typing import Any, Dict, Optional

from lealla_tf import fileio
from lealla_tf.export.card import human_bytes, render_model_card
from lealla_tf.export.formats import (
    CARD_FILE,
    INFO_FILE,
    SAVED_MODELS,
    TFLITE_VARIANTS,
    sha256_file,
    tflite_file_name,
)


def make_hub_archive(saved_model_dir: str, archive_path: str) -> str:
    """Packs a SavedModel folder as TF Hub's compressed format (SavedModel at the root).

    Entries are sorted with fixed owner and time, so the same folder gives the same bytes.
    """
    if not os.path.isfile(os.path.join(saved_model_dir, "saved_model.pb")):
        raise FileNotFoundError(f"no saved_model.pb in {saved_model_dir}")

    def reset(ti: tarfile.TarInfo) -> tarfile.TarInfo:
        ti.uid = ti.gid = 0
        ti.uname = ti.gname = ""
        ti.mtime = 0
        return ti

    paths = []
    for root, dirs, files in os.walk(saved_model_dir):
        dirs.sort()
        rel = os.path.relpath(root, saved_model_dir)
        if rel != ".":
            paths.append(rel)
        paths += [os.path.normpath(os.path.join(rel, f)) for f in sorted(files)]
    with open(archive_path, "wb") as raw, \
            gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as gz, \
            tarfile.open(fileobj=gz, mode="w") as tar:
        for rel in paths:
            tar.add(os.path.join(saved_model_dir, rel), arcname=rel, recursive=False,
                    filter=reset)
    return archive_path


_PLACEHOLDER = "https://www.kaggle.com/models/OWNER/MODEL/tensorFlow2/{name}/1"


def publish(export_dir: str, output_dir: str, base_url: Optional[str] = None,
            overwrite: bool = False, progress: bool = True) -> Dict[str, Any]:
    """Packs an export folder for TF Hub / Kaggle Models (``lealla publish``).

    Writes ``output_dir/<name>/<name>.tar.gz`` with the model card (``README.md``) beside
    it for each SavedModel, ``output_dir/tflite/`` with the TFLite files and card,
    ``output_dir/README.md`` (what to upload, how) and ``publish_info.json``.

    Args:
      export_dir: a folder written by :func:`export_model`.
      output_dir: the publish folder (atomic, like export).
      base_url: where the folder will be served (e.g. ``https://host/lealla``); the cards'
        handles become ``<base_url>/<name>/<name>.tar.gz``. Default: Kaggle Models
        placeholders to fill in after upload.
      overwrite: replace an existing ``output_dir``.
      progress: print what was written.
    """
    export_dir = os.path.abspath(export_dir)
    output_dir = os.path.abspath(output_dir)
    info_path = os.path.join(export_dir, INFO_FILE)
    if not os.path.isfile(info_path):
        raise FileNotFoundError(f"{info_path} not found: is {export_dir} a `lealla export` "
                                "folder?")
    with open(info_path, encoding="utf-8") as f:
        info = json.load(f)
    fileio.check_target(output_dir, overwrite)
    if base_url:
        handles = {n: f"{base_url.rstrip('/')}/{n}/{n}.tar.gz" for n in SAVED_MODELS}
    else:
        handles = {n: _PLACEHOLDER.format(name=n) for n in SAVED_MODELS}
    tflites = [tflite_file_name(v) for v in TFLITE_VARIANTS
               if os.path.isfile(os.path.join(export_dir, tflite_file_name(v)))]
    if tflites:
        handles["tflite"] = tflites[0]
    card = render_model_card(info, handles)
    manifest: Dict[str, Any] = {"export": export_dir, "base_url": base_url or "", "files": {}}
    from tqdm.auto import tqdm
    bar = tqdm(total=len(SAVED_MODELS) + len(tflites), desc="publish", unit="file",
               disable=not progress)
    with fileio.atomic_dir(output_dir, overwrite, bar, last=INFO_FILE) as tmp:
        for name in SAVED_MODELS:
            bar.set_postfix_str(name)
            os.makedirs(os.path.join(tmp, name))
            archive = make_hub_archive(os.path.join(export_dir, name),
                                       os.path.join(tmp, name, f"{name}.tar.gz"))
            with open(os.path.join(tmp, name, CARD_FILE), "w", encoding="utf-8") as f:
                f.write(card)
            manifest["files"][f"{name}/{name}.tar.gz"] = {
                "bytes": os.path.getsize(archive), "sha256": sha256_file(archive)}
            bar.update()
        if tflites:
            os.makedirs(os.path.join(tmp, "tflite"))
            for fname in tflites:
                target = os.path.join(tmp, "tflite", fname)
                shutil.copyfile(os.path.join(export_dir, fname), target)
                manifest["files"][f"tflite/{fname}"] = {
                    "bytes": os.path.getsize(target), "sha256": sha256_file(target)}
                bar.update()
            with open(os.path.join(tmp, "tflite", CARD_FILE), "w", encoding="utf-8") as f:
                f.write(card)
        with open(os.path.join(tmp, "publish_info.json"), "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=1)
        with open(os.path.join(tmp, CARD_FILE), "w", encoding="utf-8") as f:
            f.write(_publish_readme(manifest, info))
    if progress:
        print(f"published to {output_dir}")
        for rel, entry in manifest["files"].items():
            print(f"  {rel:<32} {human_bytes(entry['bytes']):>10}")
    return manifest


def _publish_readme(manifest: Dict[str, Any], info: Dict[str, Any]) -> str:
    rows = "\n".join(f"| `{rel}` | {human_bytes(e['bytes'])} | `{e['sha256'][:16]}…` |"
                     for rel, e in manifest["files"].items())
    title = info.get("card", {}).get("title") or f"LEALLA {info['model'].get('name', '')}"
    return f"""# {title}: files to publish

| file | size | sha256 |
|---|---|---|
{rows}

Each `<name>/<name>.tar.gz` is a SavedModel in TF Hub's compressed format (the SavedModel at
the archive's root) with its model card (`README.md`) beside it:

- `lealla/`: strings -> L2-normalised embeddings (what most users want);
- `preprocessor/` + `encoder/`: the TF Hub text-API pair, for fine-tuning on TPUs;
- `tflite/`: single-file TFLite models for mobile.

## Where to upload

**Any static HTTP(S) server or GCS bucket.** `hub.load`/`hub.KerasLayer` download an
archive URL into the TF Hub cache (`$TFHUB_CACHE_DIR`) and load it from there:

    gsutil cp lealla/lealla.tar.gz gs://BUCKET/lealla/
    hub.KerasLayer("https://HOST/PATH/lealla/lealla.tar.gz")   # or gs://BUCKET/lealla/lealla.tar.gz

Rerun `lealla publish --base-url https://HOST/PATH` so the cards show the final handles.

**Kaggle Models** (the home of the models formerly on tfhub.dev). Create the model once
(web UI: kaggle.com/models -> New Model, or `kaggle models init -p DIR` then
`kaggle models create -p DIR`), then add one variation per artefact, framework
*TensorFlow 2*: extract the archive into a folder (`mkdir v && tar -xzf lealla/lealla.tar.gz
-C v`), put the model card beside it, then `kaggle models instances init -p v` (fill in
`model-instance-metadata.json`: owner, model, instance slug, framework `tensorFlow2`, licence)
and `kaggle models instances create -p v`. New versions:
`kaggle models instances versions create OWNER/MODEL/tensorFlow2/VARIATION -p v`.
Users then load `https://www.kaggle.com/models/OWNER/MODEL/tensorFlow2/VARIATION/VERSION`
with `hub.KerasLayer`.

Always `import tensorflow_text` before loading: the tokenizer ops live there.
"""
