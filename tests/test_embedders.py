"""lealla_tf.embedders: one spec grammar, one registry, one batching policy."""

import numpy as np
import pytest
import sentencepiece as spm

from lealla_tf import embedders, fileio
from lealla_tf.embedders import teachers
from lealla_tf.evaluation import runner


def test_grammar():
    P = embedders.parse_spec
    assert P("muse") == ("muse", "") and P("labse") == ("labse", "")
    assert P("hub:https://tfhub.dev/google/LaBSE/2") == ("hub", "https://tfhub.dev/google/LaBSE/2")
    assert P("hub: a | b ") == ("hub_pair", "a|b")
    assert P("https://example.org/m.tar.gz") == ("hub", "https://example.org/m.tar.gz")
    assert P("gs://bucket/model") == ("hub", "gs://bucket/model")
    for kind in ("savedmodel", "export", "tflite", "run"):
        assert P(f"{kind}:gs://b/x") == (kind, "gs://b/x")
    assert P("py:pkg.mod:fn") == ("py", "pkg.mod:fn")
    for bad in ("", "laser", "hub:", "hub:a|b|c", "hub:|x"):
        with pytest.raises(ValueError):
            P(bad)
    with pytest.raises(FileNotFoundError, match="not found"):
        P("ram://embedders_test/missing")


def test_paths_are_recognised_on_any_file_system(tmp_path):
    for root in ("ram://embedders_kinds", str(tmp_path)):
        fileio.atomic_write(f"{root}/m.tflite", b"x")
        fileio.atomic_write(f"{root}/exp/lealla/saved_model.pb", b"x")
        fileio.atomic_write(f"{root}/sm/saved_model.pb", b"x")
        fileio.atomic_write(f"{root}/run/config.yaml", "model: {}\n")
        fileio.atomic_write(f"{root}/notes.txt", "x")
        fileio.makedirs(f"{root}/empty")
        P = embedders.parse_spec
        assert P(f"{root}/m.tflite").kind == "tflite"
        assert P(f"{root}/exp").kind == "export"
        assert P(f"{root}/sm").kind == "savedmodel"
        assert P(f"{root}/run").kind == "run"
        with pytest.raises(ValueError, match="not a .tflite"):
            P(f"{root}/notes.txt")
        with pytest.raises(ValueError, match="export folder"):
            P(f"{root}/empty")


def test_registry_loads_every_kind_through_one_entry(monkeypatch):
    calls = []
    monkeypatch.setitem(embedders.spec.LOADERS, "run",
                        lambda value, **kw: calls.append((value, kw)) or "loaded")
    assert embedders.load("run:ram://r", batch_size=7) == "loaded"
    assert calls == [("ram://r", {"batch_size": 7})]
    emb = embedders.load("py:numpy:ones_like")
    assert emb.name == "py:numpy:ones_like"
    # A teacher by name or spec is the same object kind as from teachers.load_teacher.
    teacher = teachers.CallableTeacher(lambda s: np.ones((len(s), 3)), name="ones")
    assert isinstance(teacher, embedders.Embedder)


def test_registry_names_public_loaders():
    """Every kind's loader is a public function of the module the registry names (no
    module reaches for another's private loader)."""
    import importlib
    for kind, loader in embedders.spec.LOADERS.items():
        module, _, attr = loader.partition(":")
        assert not attr.startswith("_"), f"{kind}: {loader}"
        assert callable(getattr(importlib.import_module(module), attr)), f"{kind}: {loader}"
    assert set(embedders.spec.LOADERS) == {"muse", "labse", "hub", "hub_pair", "savedmodel",
                                            "export", "tflite", "run", "py", "st", "onnx",
                                            "mediapipe"}


def test_pick_output_finds_the_embedding_or_says_which_outputs_there_are():
    pick = embedders.pick_output
    tensor = np.ones((2, 3))
    assert pick(tensor) is tensor  # not a dict: the embedding itself
    assert pick({"default": 1, "pooled_output": 2, "sequence_output": 3}) == 1
    assert pick({"pooled_output": 2, "sequence_output": 3}) == 2
    assert pick({"only": 4}) == 4
    assert pick({"default": 1, "other": 5}, "other") == 5
    with pytest.raises(ValueError, match=r"^encoder e has no output 'x'; outputs: "
                                         r"\['default', 'other'\]$"):
        pick({"default": 1, "other": 5}, "x", "encoder e")
    with pytest.raises(ValueError, match=r"^the model returns several outputs \['a', 'b'\] and "
                                         r"none is 'default' or 'pooled_output': name the "
                                         r"embedding output \(output_key\)$"):
        pick({"a": 1, "b": 2})


def test_batch_order_is_longest_first_and_complete():
    keys = [3, 9, 1, 9, 5, 2, 7]
    batches = embedders.batch_order(keys, 3)
    assert [len(b) for b in batches] == [3, 3, 1]
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(7))
    assert [keys[i] for i in flat] == sorted(keys, reverse=True)
    assert flat[:2].tolist() == [1, 3]  # stable among equals
    with pytest.raises(ValueError):
        embedders.batch_order(keys, 0)


def test_batch_order_keeps_each_batch_under_the_token_budget():
    rng = np.random.default_rng(0)
    keys = rng.integers(1, 120, size=500).tolist() + [5000]  # one longer than the budget
    budget = 1024
    batches = embedders.batch_order(keys, 300, batch_tokens=budget, max_padding=1)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(len(keys)))
    assert [keys[i] for i in flat] == sorted(keys, reverse=True)
    assert batches[0].tolist() == [500]  # over the budget alone: a batch of its own
    special = embedders.base.SPECIAL_TOKENS
    for batch in batches[1:]:
        padded = len(batch) * (max(keys[i] for i in batch) + special)
        assert padded <= budget and len(batch) <= 300
        # Greedy: one more sentence would break the budget or the cap.
        assert (len(batch) + 1) * (max(keys[i] for i in batch) + special) > budget \
            or len(batch) == 300 or batch is batches[-1]
    # Short sentences go in large batches, long ones in small.
    assert max(len(b) for b in batches) > 4 * len(batches[1])
    unlimited = embedders.batch_order(keys, 300, 0)
    assert [len(b) for b in unlimited] == [300, 201]
    with pytest.raises(ValueError, match="batch_tokens"):
        embedders.batch_order(keys, 3, -1)


def test_batch_order_caps_the_padding_of_each_sentence():
    rng = np.random.default_rng(1)
    # A corpus's shape: many short sentences and a long tail.
    keys = (rng.integers(5, 20, size=900).tolist() + rng.integers(20, 200, size=100).tolist())
    special = embedders.base.SPECIAL_TOKENS

    def padding(batches):
        padded = sum(len(b) * (max(keys[i] for i in b) + special) for b in batches)
        return padded / sum(k + special for k in keys)

    uncapped = embedders.batch_order(keys, 512, 4096, max_padding=1)
    capped = embedders.batch_order(keys, 512, 4096)  # DEFAULT_MAX_PADDING
    cap = embedders.base.DEFAULT_MAX_PADDING
    flat = np.concatenate(capped)
    assert sorted(flat.tolist()) == list(range(len(keys)))
    assert [keys[i] for i in flat] == sorted(keys, reverse=True)
    for n, batch in enumerate(capped):
        longest = keys[batch[0]] + special
        assert all(keys[i] + special >= (1 - cap) * longest for i in batch)
        assert len(batch) * longest <= 4096 and len(batch) <= 512
        if n + 1 < len(capped):  # it ended for the budget, the cap or the next's padding
            following = keys[capped[n + 1][0]] + special
            assert ((len(batch) + 1) * longest > 4096 or len(batch) == 512
                    or following < (1 - cap) * longest)
    assert padding(capped) < padding(uncapped)
    assert len(capped) > len(uncapped)
    # 0: equal lengths only.
    assert all(len({keys[i] for i in b}) == 1 for b in embedders.batch_order(keys, 512, 4096, 0))
    # Without a token budget the cap does not apply (fixed-size batches).
    assert [len(b) for b in embedders.batch_order(keys, 300, 0)] == [300, 300, 300, 100]
    with pytest.raises(ValueError, match="max_padding"):
        embedders.batch_order(keys, 3, 4096, -0.1)


def test_encode_is_the_same_under_any_batching(hermetic_vocab):
    """Token budgets, sentence caps and one call give the same rows in input order."""
    class Lengths(embedders.Embedder):
        def __init__(self):
            super().__init__("lengths", length_model=hermetic_vocab)
            self.calls = []

        def encode_batch(self, batch):
            self.calls.append(len(batch))
            return np.array([[len(s), s.count(b"e")] for s in batch], np.float32)

    sentences = [("ledoge " * (i % 7)) + "x" * (i % 5) for i in range(50)]
    model = Lengths()
    one = model.encode(sentences, batch_size=0, batch_tokens=0)
    assert model.calls == [50]
    for size, tokens in ((7, 0), (512, 64), (3, 40), (512, 1)):
        model.calls = []
        np.testing.assert_array_equal(model.encode(sentences, size, tokens), one)
        assert max(model.calls) <= size and (tokens != 1 or max(model.calls) == 1)
    # The runner cuts by the embedder's budget and calls the model once per batch.
    model.calls, model.batch_tokens = [], 64
    np.testing.assert_array_equal(
        runner.embed_sentences(model, sentences, batch_size=512, progress=False), one)
    assert len(model.calls) > 1 and sum(model.calls) == 50


class _Recorder(embedders.Embedder):
    """Counts tokens with a vocabulary and records the batches it is given."""

    def __init__(self, vocab):
        super().__init__("recorder", batch_size=4, length_model=vocab)
        self.batches = []

    def encode_batch(self, batch):
        self.batches.append(list(batch))
        return np.array([[len(s), 1.0] for s in batch], np.float32)


def test_runner_batches_by_token_count_when_the_vocabulary_is_known(hermetic_vocab):
    """The evaluation runner and the embedder follow one policy: the runner's batches are
    groups of equal token count (not of equal character count)."""
    sp = spm.SentencePieceProcessor(model_file=hermetic_vocab)
    sentences = ["leschoole lecitye", "abcdefghijklmnopqr", "лесонгеов", "x",
                 "ledoge lecate lebirde lefishe", "qqqqqqqqqqqqqqqqqqqqqqqqqqqq", "dog", "ab"]
    tokens = [len(sp.encode(s)) for s in sentences]
    assert sorted(tokens) != [tokens[i] for i in np.argsort([len(s) for s in sentences])]
    model = _Recorder(hermetic_vocab)
    assert model.lengths([s.encode() for s in sentences]) == tokens
    out = runner.embed_sentences(model, sentences, batch_size=3, progress=False)
    np.testing.assert_array_equal(out[:, 0], [len(s.encode()) for s in sentences])
    seen = [tokens[sentences.index(s.decode())] for b in model.batches for s in b]
    assert seen == sorted(tokens, reverse=True)
    # Without a vocabulary: UTF-8 length.
    assert embedders.sort_keys(lambda s: s, ["é", "ab"]) == [2, 2]


def test_teachers_count_tokens_with_their_sentencepiece(hermetic_vocab):
    with open(hermetic_vocab, "rb") as f:
        proto = f.read()
    teacher = teachers.CallableTeacher(lambda s: np.ones((len(s), 2)), name="sp")
    teacher.sentencepiece_model = lambda: proto
    sp = spm.SentencePieceProcessor(model_proto=proto)
    data = [b"leschoole lecitye", b"dog"]
    assert teacher.lengths(data) == [len(sp.encode(s.decode())) for s in data]
    assert teachers.CallableTeacher(lambda s: s, name="plain").lengths(data) == [17, 3]
    # One call for what it is given; bytes are sentences too.
    np.testing.assert_allclose(teacher.encode([b"a", "b"]), np.full((2, 2), 2 ** -0.5),
                               rtol=1e-6)
