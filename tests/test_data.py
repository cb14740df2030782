"""Data pipeline: malformed lines, teacher alignment, dedup, sampling, resume, sharding."""

import collections
import itertools

import numpy as np
import pytest
import tensorflow as tf

from lealla_tf import corpus
from lealla_tf.data import pipeline
from lealla_tf.distill import store
from lealla_tf.embedders import teachers


def _write(path, lines):
    with open(path, "wb") as f:
        for line in lines:
            f.write(line if isinstance(line, bytes) else line.encode("utf-8"))
            f.write(b"\n")
    return str(path)


def _vec(sentence, dim=8):
    rng = np.random.default_rng(abs(hash(sentence)) % (2 ** 32))
    return rng.normal(size=dim).astype(np.float32)


@pytest.fixture
def messy_corpus(tmp_path):
    deu = _write(tmp_path / "deu-eng.tsv", [
        "Hund\tdog",
        "nur ein Feld",                    # wrong_fields
        "Katze\tcat",
        "\tempty source",                  # empty_side
        b"Maus\xff\xfe\tmouse",            # invalid_utf8
        "a\tb\tc",                         # wrong_fields
        "Vogel\tbird",
    ])
    fra = _write(tmp_path / "fra-eng.tsv", ["chien\tdog", "chat\tcat", "   \t  ", "oiseau\tbird"])
    return [deu, fra]


def test_malformed_lines_are_skipped_and_counted(messy_corpus):
    c = pipeline.load_corpus(messy_corpus)
    assert [lang.language for lang in c.languages] == ["deu", "fra"]
    assert list(c.languages[0].src) == ["Hund", "Katze", "Vogel"]
    assert list(c.languages[1].tgt) == ["dog", "cat", "bird"]
    total = c.total_stats()
    assert total["ok"] == 6 and total.malformed == 5
    assert total["wrong_fields"] == 2 and total["empty_side"] == 2
    assert total["invalid_utf8"] == 1


def test_training_files_of_a_data_config(messy_corpus, tmp_path):
    from lealla_tf import config
    deu, fra = messy_corpus
    cfg = config.DataConfig(train_files=["*-eng.tsv"], data_dir=str(tmp_path))
    assert pipeline.training_files(cfg) == [deu, fra]  # relative: under data_dir
    cfg.languages = ["fra"]
    assert pipeline.training_files(cfg) == [fra]
    assert pipeline.training_files(config.DataConfig(train_files=[deu], data_dir="/nonexistent")
                                   ) == [deu]  # absolute: the data root is not looked up
    cfg.languages = ["jpn"]
    with pytest.raises(FileNotFoundError, match="no training files for languages"):
        pipeline.training_files(cfg)
    with pytest.raises(FileNotFoundError, match="no files match"):
        pipeline.training_files(config.DataConfig(train_files=["x/*.tsv"], data_dir=str(tmp_path)))


def test_teacher_rows_stay_aligned_with_pairs(messy_corpus, tmp_path):
    teacher = teachers.CallableTeacher(lambda ss: np.stack([_vec(s) for s in ss]), dim=8)
    out = str(tmp_path / "emb")
    store.precompute(teacher, messy_corpus, out, progress=False)
    c = pipeline.load_corpus(messy_corpus, teacher_loader=store.loader(out))
    assert c.teacher_dim == 8
    for lang in c.languages:
        assert lang.teacher_src.shape == (len(lang), 8)
        for i in range(len(lang)):
            for sent, row in [(lang.src[i], lang.teacher_src[i]), (lang.tgt[i], lang.teacher_tgt[i])]:
                want = _vec(sent) / np.linalg.norm(_vec(sent))
                np.testing.assert_allclose(row.astype(np.float32), want, atol=2e-3)


def test_teacher_invalid_rows_are_skipped(tmp_path):
    path = _write(tmp_path / "deu-eng.tsv", ["a\tA", "b\tB", "c\tC"])
    rows = np.arange(3, dtype=np.float16)[:, None] * np.ones((1, 4), np.float16)
    valid = np.array([True, False, True])
    c = pipeline.load_corpus([path], teacher_loader=lambda p: (rows, rows + 10, valid))
    lang = c.languages[0]
    assert list(lang.src) == ["a", "c"]
    np.testing.assert_array_equal(lang.teacher_src[:, 0], [0, 2])
    np.testing.assert_array_equal(lang.teacher_tgt[:, 0], [10, 12])
    assert c.stats[path]["teacher_invalid"] == 1


def _dup_corpus(tmp_path):
    # Every English sentence occurs in 3 languages, some foreign sentences repeat too.
    files = []
    for lang in ["deu", "fra", "spa"]:
        lines = [f"{lang}{i % 30}\teng{i}" for i in range(40)]
        files.append(_write(tmp_path / f"{lang}-eng.tsv", lines))
    return pipeline.load_corpus(files)


def test_no_duplicate_sentence_inside_a_global_batch(tmp_path):
    c = _dup_corpus(tmp_path)
    sampler = pipeline.GlobalBatchSampler(c, global_batch_size=16, alpha=0.5, seed=3)
    for src, tgt in itertools.islice(sampler.text_batches(), 30):
        assert len(set(src)) == len(src) == 16
        assert len(set(tgt)) == len(tgt) == 16
    assert sampler.duplicates_skipped > 0


def test_every_pair_once_per_epoch_and_batch_too_large(tmp_path):
    path = _write(tmp_path / "deu-eng.tsv", [f"s{i}\tt{i}" for i in range(24)])
    c = pipeline.load_corpus([path])
    sampler = pipeline.GlobalBatchSampler(c, global_batch_size=8, seed=1)
    seen = [s for src, _ in itertools.islice(sampler.text_batches(), 3) for s in src]
    assert sorted(seen) == sorted(f"s{i}".encode() for i in range(24))
    with pytest.raises(ValueError, match="distinct"):
        next(pipeline.GlobalBatchSampler(c, global_batch_size=25).batches())


def test_language_sampling_follows_n_to_the_alpha(tmp_path):
    sizes = {"deu": 400, "fra": 100, "spa": 25}
    files = [_write(tmp_path / f"{k}-eng.tsv", [f"{k}{i}\t{k}e{i}" for i in range(n)])
             for k, n in sizes.items()]
    c = pipeline.load_corpus(files)
    p = pipeline.language_probabilities([400, 100, 25], 0.5)
    np.testing.assert_allclose(p, np.array([20, 10, 5]) / 35)
    sampler = pipeline.GlobalBatchSampler(c, global_batch_size=20, alpha=0.5, seed=0)
    counts = collections.Counter()
    for langs, _ in itertools.islice(sampler.batches(), 200):
        counts.update(langs.tolist())
    freq = np.array([counts[i] for i in range(3)]) / 4000
    np.testing.assert_allclose(freq, p, atol=0.03)
    uniform = pipeline.GlobalBatchSampler(c, global_batch_size=20, alpha=0.0)
    np.testing.assert_allclose(uniform.probs, [1 / 3] * 3)


def test_sampler_resumes_exactly(tmp_path):
    c = _dup_corpus(tmp_path)
    ref = pipeline.GlobalBatchSampler(c, global_batch_size=16, seed=7)
    stream = list(itertools.islice(ref.text_batches(), 12))
    state = ref.state_before(5)
    resumed = pipeline.GlobalBatchSampler(c, global_batch_size=16, seed=7)
    resumed.restore(state)
    again = list(itertools.islice(resumed.text_batches(), 7))
    for a, b in zip(stream[5:], again):
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
    other_seed = next(pipeline.GlobalBatchSampler(c, global_batch_size=16, seed=8).text_batches())
    assert list(other_seed[0]) != list(stream[0][0])


def test_pipelines_take_their_replicas_rows(tmp_path):
    c = _dup_corpus(tmp_path)
    whole = next(pipeline.GlobalBatchSampler(c, 16, seed=2).text_batches())
    for pipelines in (1, 2):
        parts = []
        for pid in range(pipelines):
            ctx = tf.distribute.InputContext(num_input_pipelines=pipelines,
                                             input_pipeline_id=pid, num_replicas_in_sync=4)
            ds = pipeline.make_dataset(c, pipeline.GlobalBatchSampler(c, 16, seed=2), None, ctx)
            parts += [e["src"].numpy() for e in ds.take(4 // pipelines)]
        assert all(len(p) == 4 for p in parts)
        np.testing.assert_array_equal(np.concatenate(parts), whole[0])
    with pytest.raises(ValueError, match="split evenly"):
        pipeline.make_dataset(c, pipeline.GlobalBatchSampler(c, 15), None,
                          tf.distribute.InputContext(1, 0, 2))


def test_mirrored_replicas_get_consecutive_slices(tmp_path, two_cpu_strategy):
    c = _dup_corpus(tmp_path)
    whole = list(itertools.islice(pipeline.GlobalBatchSampler(c, 8, seed=4).text_batches(), 2))
    dist = two_cpu_strategy.distribute_datasets_from_function(
        lambda ctx: pipeline.make_dataset(c, pipeline.GlobalBatchSampler(c, 8, seed=4), None, ctx))
    for step, batch in zip(range(2), dist):
        local = two_cpu_strategy.experimental_local_results(batch["tgt"])
        np.testing.assert_array_equal(np.concatenate([t.numpy() for t in local]), whole[step][1])


def test_tokenized_dataset_with_teacher(messy_corpus, tmp_path):
    from lealla_tf.text import sentencepiece
    vocab = sentencepiece.train_vocab(messy_corpus, str(tmp_path / "v"), vocab_size=40,
                                      sentences_per_language=100, progress=False)
    pre = sentencepiece.Preprocessor(vocab, seq_length=8)
    rows = np.ones((7, 4), np.float16)
    c = pipeline.load_corpus(messy_corpus, teacher_loader=lambda p: (
        rows[:corpus.count_lines(p)], rows[:corpus.count_lines(p)], np.ones(7, bool)))
    # Only 3 distinct English sentences: a batch of 3 is the most that is duplicate-free.
    el = next(iter(pipeline.make_dataset(c, pipeline.GlobalBatchSampler(c, 3), pre)))
    assert el["src"]["input_word_ids"].shape == (3, 8)
    assert el["tgt"]["input_mask"].dtype == tf.int32
    assert el["teacher_src"].shape == (3, 4) and el["teacher_src"].dtype == tf.float32


def _varied_corpus(tmp_path, n=120):
    # Sentences of 1..24 words, English sides shared across languages (duplicates).
    rng = np.random.default_rng(0)
    files = []
    for lang in ["deu", "fra", "spa"]:
        lines = []
        for i in range(n):
            words = int(rng.integers(1, 25))
            lines.append(" ".join(f"{lang}{i}w{j}" for j in range(words)) + "\t"
                         + " ".join(f"e{i % 90}w{j}" for j in range(words)))
        files.append(_write(tmp_path / f"{lang}-eng.tsv", lines))
    return pipeline.load_corpus(files)


def _word_lengths(c):
    return [np.array([max(len(s.split()), len(t.split())) for s, t in zip(d.src, d.tgt)])
            for d in c.languages]


def test_length_bucketing_groups_similar_lengths(tmp_path):
    c = _varied_corpus(tmp_path)
    lengths = _word_lengths(c)
    plain = pipeline.GlobalBatchSampler(c, global_batch_size=8, seed=4)
    pooled = pipeline.GlobalBatchSampler(c, global_batch_size=8, seed=4, bucket_pool=6,
                                     lengths=lengths)
    pooled_batches = list(itertools.islice(pooled.batches(), 60))

    def padded(batches):  # what padding every batch to its longest pair costs
        return sum(len(i) * max(lengths[l][j] for l, j in zip(ls, i)) for ls, i in batches)

    plain_cost = padded(itertools.islice(plain.batches(), 60))
    assert padded(pooled_batches) < 0.7 * plain_cost
    for p in range(10):  # each pool: 6 batches cutting one length order into 6 ranges
        spans = sorted((min(lengths[l][j] for l, j in zip(ls, i)),
                        max(lengths[l][j] for l, j in zip(ls, i)))
                       for ls, i in pooled_batches[6 * p:6 * p + 6])
        assert all(hi <= lo for (_, hi), (lo, _) in zip(spans, spans[1:]))
        rows = [(c.languages[l].src[j], c.languages[l].tgt[j])
                for ls, i in pooled_batches[6 * p:6 * p + 6] for l, j in zip(ls, i)]
        assert len({s for s, _ in rows}) == len({t for _, t in rows}) == 48
    # Batches are drawn in a shuffled order, not shortest first.
    first_max = [max(lengths[l][j] for l, j in zip(ls, i)) for ls, i in pooled_batches[::6]]
    assert len(set(first_max)) > 1
    # Language sampling is unchanged by pooling.
    counts = collections.Counter(l for ls, _ in pooled_batches for l in ls.tolist())
    assert sorted(counts) == [0, 1, 2]


def test_length_bucketing_resumes_mid_pool_and_checks_the_pool(tmp_path):
    c = _varied_corpus(tmp_path)
    lengths = _word_lengths(c)
    ref = pipeline.GlobalBatchSampler(c, 8, seed=9, bucket_pool=4, lengths=lengths)
    stream = list(itertools.islice(ref.text_batches(), 14))
    for at in (4, 6, 11):  # a pool's start, and inside pools
        state = ref.state_before(at)
        assert state["pool"] == 4
        resumed = pipeline.GlobalBatchSampler(c, 8, seed=9, bucket_pool=4, lengths=lengths)
        resumed.restore(state)
        for a, b in zip(stream[at:], itertools.islice(resumed.text_batches(), 14 - at)):
            np.testing.assert_array_equal(a[0], b[0])
            np.testing.assert_array_equal(a[1], b[1])
    with pytest.raises(ValueError, match="bucket_pool"):
        pipeline.GlobalBatchSampler(c, 8, seed=9).restore(ref.state_before(6))
    with pytest.raises(ValueError, match="bucket_pool"):
        ref.restore(pipeline.GlobalBatchSampler(c, 8, seed=9).state_before(0))
    with pytest.raises(ValueError, match="one length per pair"):
        pipeline.GlobalBatchSampler(c, 8, bucket_pool=4, lengths=[x[:-1] for x in lengths])


def test_token_lengths_count_pieces_of_the_longer_side(tmp_path, tiny_vocab):
    from lealla_tf.text import sentencepiece
    path = _write(tmp_path / "deu-eng.tsv", ["Hallo Welt\thello", "a\tthe cat sat on the mat",
                                             "Guten Morgen, wie geht es dir?\tgood morning"])
    c = pipeline.load_corpus([path])
    pre = sentencepiece.Preprocessor(tiny_vocab, seq_length=16)
    got = pipeline.token_lengths(c, pre.tokenize, batch_size=2)
    want = [max(int(pre.tokenize(tf.constant([s])).row_lengths()[0]),
                int(pre.tokenize(tf.constant([t])).row_lengths()[0]))
            for s, t in zip(c.languages[0].src, c.languages[0].tgt)]
    assert got[0].tolist() == want
    assert want[1] > 3 and want[2] > want[0]


def test_length_bucketing_pool_shrinks_to_fit_a_small_corpus(tmp_path):
    path = _write(tmp_path / "deu-eng.tsv", [f"s{i} " * (i % 7 + 1) + f"\tt{i}" for i in range(40)])
    c = pipeline.load_corpus([path])
    assert pipeline.GlobalBatchSampler(c, 8, bucket_pool=16).pool == 2  # 40 // (2 * 8)
    tiny = pipeline.GlobalBatchSampler(c, 16, seed=5, bucket_pool=16)  # 40 pairs: no pooling
    plain = pipeline.GlobalBatchSampler(c, 16, seed=5)
    assert tiny.pool == 0
    for a, b in zip(itertools.islice(tiny.batches(), 5), itertools.islice(plain.batches(), 5)):
        np.testing.assert_array_equal(a[1], b[1])
