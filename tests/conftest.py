"""Shared fixtures. TF sees 2 logical CPU devices so MirroredStrategy tests are real.

Two tiers: tests that use the ``data_dir`` fixture (the real corpora under
``$LEALLA_DATA_DIR``) are marked ``data`` automatically; every other test is hermetic
(``hermetic_*`` fixtures: a synthetic corpus and vocabulary made here), so
``pytest -m "not data"`` runs anywhere.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

_cpus = tf.config.list_physical_devices("CPU")
try:
    tf.config.set_logical_device_configuration(
        _cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)
except RuntimeError:  # TF already initialised by another plugin: keep what is there
    pass

def _train_vocab(tmp_path_factory, name, files, vocab_size, sentences_per_language):
    from lealla_tf.text import sentencepiece
    return sentencepiece.train_vocab(files, str(tmp_path_factory.mktemp(name)),
                                     vocab_size=vocab_size,
                                     sentences_per_language=sentences_per_language,
                                     progress=False)


def _tiny_config(vocab):
    """The shipped tiny model shape with the vocabulary size of ``vocab``."""
    import sentencepiece as spm

    from lealla_tf import config
    n = spm.SentencePieceProcessor(model_file=vocab).get_piece_size()
    return config.load("tiny", [f"model.vocab_size={n}"])


# Languages whose training files give the test vocabulary many scripts.
VOCAB_LANGS = ("deu", "rus", "ara", "cmn", "jpn", "tha", "hin", "ell", "heb", "kor")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "data_dir" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.data)


@pytest.fixture(scope="session")
def hermetic_files(tmp_path_factory):
    """Synthetic ``xxx-eng.tsv`` files (4 languages, 3 scripts, 300 pairs each)."""
    from support import hermetic
    return hermetic.write_corpus(str(tmp_path_factory.mktemp("hermetic_corpus")))


@pytest.fixture(scope="session")
def hermetic_vocab(tmp_path_factory, hermetic_files):
    """A unigram vocabulary (at most 300 pieces) trained on the synthetic corpus."""
    return _train_vocab(tmp_path_factory, "hermetic_vocab", hermetic_files, 300, 300)


@pytest.fixture(scope="session")
def hermetic_config(hermetic_vocab):
    """The tiny model shape with the vocabulary size of ``hermetic_vocab``."""
    return _tiny_config(hermetic_vocab)


@pytest.fixture(scope="session")
def data_dir():
    root = os.environ.get("LEALLA_DATA_DIR", "")
    if not root:
        pytest.skip("LEALLA_DATA_DIR is not set (make test sets it)")
    if not os.path.isdir(root):
        raise FileNotFoundError(f"LEALLA_DATA_DIR={root} does not exist")
    return root


@pytest.fixture(scope="session")
def train_files(data_dir):
    from lealla_tf import corpus
    return corpus.find_files(["train/*-eng.tsv"], data_dir, VOCAB_LANGS)


@pytest.fixture(scope="session")
def tiny_vocab(tmp_path_factory, train_files):
    """A 4000-piece (at most) unigram vocabulary trained on real text in 10 scripts (seconds)."""
    return _train_vocab(tmp_path_factory, "vocab", train_files, 4000, 400)


@pytest.fixture(scope="session")
def tiny_config(tiny_vocab):
    """The tiny model shape with the vocabulary size of ``tiny_vocab``."""
    return _tiny_config(tiny_vocab)


@pytest.fixture(scope="session")
def two_cpu_strategy():
    """One ``MirroredStrategy`` over 2 logical CPUs, shared by the whole session.

    Several strategies with collectives in one process can collide on collective keys.
    """
    cpus = tf.config.list_logical_devices("CPU")
    if len(cpus) < 2:
        pytest.skip("needs 2 logical CPUs (configured before TensorFlow starts)")
    return tf.distribute.MirroredStrategy([c.name for c in cpus[:2]])
