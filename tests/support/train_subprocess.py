"""Runs a training job in a fresh process for tests/test_training.py.

    python train_subprocess.py MODEL_DIR WEIGHTS_OUT [--kill-after STEP] KEY=VALUE ...

Trains ``configs/train_tiny.yaml`` with the overrides; with ``--kill-after`` the process
SIGKILLs itself at the end of that step (after any checkpoint of that step); otherwise it
saves the encoder's weights to WEIGHTS_OUT (.npz).
"""

import argparse
import os
import signal
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("model_dir")
    parser.add_argument("weights_out")
    parser.add_argument("--kill-after", type=int, default=0)
    args, overrides = parser.parse_known_args()

    from lealla_tf import config
    from lealla_tf.training import dual_encoder
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
    cfg = config.load(os.path.join(root, "configs", "train_tiny.yaml"), overrides)

    def on_loop_end(step, metrics):
        if args.kill_after and step >= args.kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

    trainer = dual_encoder.Trainer(cfg, args.model_dir, progress=False)
    trainer.run(on_loop_end)
    import numpy as np
    np.savez(args.weights_out, *trainer.encoder.get_weights())
    return 0


if __name__ == "__main__":
    sys.exit(main())
