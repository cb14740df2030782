"""Runs a training job in a fresh process for tests/test_training.py.

    python train_subprocess.py MODEL_DIR WEIGHTS_OUT [--kill-after STEP | --interrupt-after
        STEP] [--config CONFIG] KEY=VALUE ...

Trains ``configs/train_tiny.yaml`` (or ``--config``) with the overrides; with ``--kill-after``
the process SIGKILLs itself at the end of that step (after any checkpoint of that step);
with ``--interrupt-after`` it sends itself SIGINT there (Ctrl-C: the job saves a checkpoint
and stops; exit code 130); otherwise it saves the encoder's weights to WEIGHTS_OUT (.npz).
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
    parser.add_argument("--interrupt-after", type=int, default=0)
    parser.add_argument("--config", default="")
    args, overrides = parser.parse_known_args()

    from lealla_tf import config
    from lealla_tf.training import dual_encoder, loop
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
    cfg = config.load(args.config or os.path.join(root, "configs", "train_tiny.yaml"),
                      overrides)

    def on_loop_end(step, metrics):
        if args.kill_after and step >= args.kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
        if args.interrupt_after and step == args.interrupt_after:
            os.kill(os.getpid(), signal.SIGINT)

    trainer = dual_encoder.Trainer(cfg, args.model_dir, progress=False)
    try:
        trainer.run(on_loop_end)
    except loop.TrainingInterrupted as e:
        print(e, file=sys.stderr)
        return 130
    import numpy as np
    np.savez(args.weights_out, *trainer.encoder.get_weights())
    return 0


if __name__ == "__main__":
    sys.exit(main())
