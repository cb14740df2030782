"""``python -m lealla_tf.cli``: the ``lealla`` command."""

import sys

from lealla_tf.cli import main

sys.exit(main())
