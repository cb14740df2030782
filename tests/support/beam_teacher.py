"""A teacher that any process can load by spec (``py:support.beam_teacher:TEACHER``), for
the Beam tests: the byte-count teacher of :mod:`support.hermetic`, which logs every
sentence it encodes to ``$LEALLA_TEST_TEACHER_LOG`` (a folder, one file per call) and
sleeps ``$LEALLA_TEST_TEACHER_SLEEP`` seconds per call when set."""

import os
import time
import uuid

from lealla_tf.embedders import teachers
from support import hermetic

_BASE = hermetic.byte_count_teacher(16, name="bytes16")


def _encode(sentences):
    log = os.environ.get("LEALLA_TEST_TEACHER_LOG")
    if log:
        os.makedirs(log, exist_ok=True)
        with open(os.path.join(log, f"{os.getpid()}-{uuid.uuid4().hex}.txt"), "w") as f:
            f.write("".join(s.replace("\n", " ") + "\n" for s in sentences))
    delay = float(os.environ.get("LEALLA_TEST_TEACHER_SLEEP", "0") or 0)
    if delay:
        time.sleep(delay)
    return _BASE.encode(sentences)


TEACHER = teachers.CallableTeacher(_encode, name="bytes16", dim=16)


def logged_sentences(log_dir):
    """Every sentence the teacher encoded, as written to the log folder."""
    out = []
    if os.path.isdir(log_dir):
        for name in sorted(os.listdir(log_dir)):
            with open(os.path.join(log_dir, name)) as f:
                out += f.read().splitlines()
    return out
