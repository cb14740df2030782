"""``lealla data``: the public data sets (Tatoeba, NTREX-128, the derived train/ pairs)
downloaded, verified and derived."""

from __future__ import annotations

import os

from lealla_tf import paths
from lealla_tf.cli import common, errors


def add_commands(sub) -> None:
    p = sub.add_parser("data", help="the public data sets: download, verify, derive train/")
    dsub = p.add_subparsers(dest="data_cmd", required=True)
    f = dsub.add_parser(
        "fetch", help="download tatoeba/v1, ntrex/ and the upstream test sets train/ is derived "
                      "from (pinned commits, SHA-256 checked, resumable), then derive train/")
    f.add_argument("--sets", default="tatoeba,train,ntrex",
                   help="comma-separated: tatoeba, train, ntrex (default all three)")
    f.add_argument("--languages", default="all",
                   help="'demo' (the demo's 14 languages, about 21 MB), 'all' (about 99 MB) or "
                        "comma-separated Tatoeba codes (default all)")
    f.add_argument("--output", default="",
                   help="data root to fill (default $LEALLA_DATA_DIR, else the cache's "
                        "data root, which commands use when no data root is set)")
    f.add_argument("--cache", default="",
                   help="cache for the upstream files (default $LEALLA_CACHE_DIR or the "
                        "user's cache directory)")
    f.add_argument("--mirror", default="",
                   help="base URL laid out like raw.githubusercontent.com "
                        "(default GitHub, or $LEALLA_DATA_MIRROR)")
    f.add_argument("--dry-run", action="store_true",
                   help="print what would be downloaded and derived, and stop")
    f.add_argument("--no-progress", action="store_true", help="no progress bars")
    f.set_defaults(func=_data_fetch)


def _data_fetch(args) -> int:
    from lealla_tf.data import datasets
    languages = args.languages
    if languages.strip().lower() == "demo":
        from lealla_tf.recipes.demo import DEMO_LANGUAGES
        languages = list(DEMO_LANGUAGES)
    output = paths.chosen_data_dir(args.output) or paths.default_data_root()
    common.check_outputs(output, folder=True)
    with errors.user_errors(ValueError, datasets.ChecksumError, ConnectionError, OSError):
        plan = datasets.plan(args.sets, languages, output, args.cache or None)
        for set_name, langs in plan.skipped.items():
            print(f"note: {set_name} has no files for {', '.join(langs)}; skipped there")
        print(f"{len(plan.downloads)} files to download ({plan.download_bytes / 1e6:.1f} MB), "
              f"{len(plan.derive)} train/ files to derive, into {output}")
        if args.dry_run:
            for entry, dest in plan.downloads:
                print(f"  {entry.bytes:>10}  {entry.url(args.mirror or None)}")
            return 0
        root = datasets.fetch(args.sets, languages, output, args.cache or None,
                              mirror=args.mirror or None, progress=not args.no_progress)
    print(f"data root ready (every file verified): {root}")
    used = paths.chosen_data_dir() or paths.default_data_root()
    if os.path.abspath(root) != os.path.abspath(used):
        print(f"  use it with --data-dir {root} or LEALLA_DATA_DIR={root}")
    return 0
