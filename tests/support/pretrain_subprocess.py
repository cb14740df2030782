"""Runs a pre-training job in a fresh process for tests/test_pretraining_jobs.py.

    python pretrain_subprocess.py MODEL_DIR [--kill-after STEP] KEY=VALUE ...

Pre-trains the ``tiny`` shape with the overrides; with ``--kill-after`` the process
SIGKILLs itself at the end of that step (after any checkpoint of that step).
"""

import argparse
import os
import signal
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("model_dir")
    parser.add_argument("--kill-after", type=int, default=0)
    args, overrides = parser.parse_known_args()

    from lealla_tf import config
    from lealla_tf.training import pretraining
    cfg = config.load("tiny", overrides)

    def on_loop_end(step, metrics):
        if args.kill_after and step >= args.kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

    pretraining.Pretrainer(cfg, args.model_dir, progress=False).run(on_loop_end)
    return 0


if __name__ == "__main__":
    sys.exit(main())
