"""`lealla export --format onnx`: model.onnx (token ids in, pooling and L2 normalisation
inside, dynamic batch and length) reproduces the TF model with ONNX Runtime, the int8 file
passes its gate, tokenizer.json gives the TF preprocessor's ids; the ``onnx:`` embedder and
bare-path detection (mean and cls pooling, SentencePiece and WordPiece)."""

import os

import numpy as np
import pytest

from lealla_tf import cli, embedders, layout
from lealla_tf.embedders import interop, spec
from lealla_tf.export import PROBE_SENTENCES, cosine_rows, hf_tokenizer, to_onnx
from support import interop_runs

MIN_COSINE = 0.99999


@pytest.fixture(scope="module")
def runs(tmp_path_factory, hermetic_vocab, hermetic_files):
    root = tmp_path_factory.mktemp("onnx_runs")
    out = {pooling: interop_runs.sentencepiece_run(str(root / pooling), hermetic_vocab,
                                                   hermetic_files, pooling)
           for pooling in ("mean", "cls")}
    out["wordpiece"] = interop_runs.wordpiece_run(str(root / "wordpiece"), hermetic_files)
    return out


@pytest.fixture(scope="module")
def exports(tmp_path_factory, runs):
    root = tmp_path_factory.mktemp("onnx_exports")
    out = {name: str(root / name) for name in runs}
    assert cli.main(["export", "--model-dir", runs["mean"], "--output", out["mean"],
                     "--format", "onnx"]) == 0
    assert cli.main(["export", "--model-dir", runs["cls"], "--output", out["cls"],
                     "--format", "onnx", "--no-int8"]) == 0
    to_onnx.export_run(runs["wordpiece"], out["wordpiece"], int8=False, progress=False)
    return out


@pytest.fixture(scope="module")
def reference(runs):
    return interop_runs.probe_reference(runs)


def test_the_folder_holds_the_files_and_a_graph_with_dynamic_inputs(exports):
    import onnx
    folder = exports["mean"]
    for name in (layout.ONNX_FILE, layout.ONNX_INT8_FILE, layout.ONNX_TOKENIZER_FILE,
                 layout.CARD_FILE):
        assert os.path.isfile(os.path.join(folder, name)), name
    assert not os.path.exists(os.path.join(exports["cls"], layout.ONNX_INT8_FILE))
    model = onnx.load(os.path.join(folder, layout.ONNX_FILE))
    onnx.checker.check_model(model)
    inputs = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
              for i in model.graph.input}
    assert set(inputs) == set(interop.ONNX_INPUTS)
    assert all(len(dims) == 2 and all(isinstance(d, str) for d in dims)
               for dims in inputs.values()), inputs
    (output,) = model.graph.output
    assert output.name == interop.ONNX_OUTPUT
    assert output.type.tensor_type.shape.dim[0].dim_param == "batch"
    info = interop_runs.read_info(folder)
    assert info["format"] == "onnx" and spec.parse_spec(folder).kind == "onnx"
    assert info["checks"]["model_min_cosine"] >= MIN_COSINE
    assert info["checks"]["int8"]["kept"] and info["checks"]["int8"]["min_cosine"] >= 0.99
    ids = info["checks"]["token_ids"]
    assert ids["probe"]["equal"] == len(PROBE_SENTENCES)
    assert ids["training_sample"]["equal"] == ids["training_sample"]["sentences"] > 500
    assert "model-int8.onnx" in open(os.path.join(folder, layout.CARD_FILE)).read()


@pytest.mark.parametrize("name", ["mean", "cls", "wordpiece"])
def test_onnx_embedder_matches_the_tf_model(exports, reference, name):
    model = embedders.load(f"onnx:{exports[name]}", batch_size=3, num_threads=1)
    assert isinstance(model, interop.OnnxEmbedder)
    got = model.encode(list(PROBE_SENTENCES))  # batches of 3: several lengths
    assert got.dtype == np.float32 and got.shape == reference[name].shape
    assert cosine_rows(got, reference[name]).min() >= MIN_COSINE
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    bare = embedders.load(os.path.join(exports[name], layout.ONNX_FILE))  # a .onnx file
    assert isinstance(bare, interop.OnnxEmbedder)
    assert cosine_rows(bare.encode(list(PROBE_SENTENCES)), got).min() >= MIN_COSINE


def test_int8_file_passes_the_gate(exports, reference):
    model = embedders.load(f"onnx:{os.path.join(exports['mean'], layout.ONNX_INT8_FILE)}")
    got = model.encode(list(PROBE_SENTENCES))
    cos = cosine_rows(got, reference["mean"])
    assert cos.min() >= to_onnx.INT8_MIN_COSINE
    assert cos.min() < 1 - 1e-7  # really quantized
    assert abs(cos.min() - interop_runs.read_info(exports["mean"])["checks"]["int8"]["min_cosine"]) < 1e-4
    assert os.path.getsize(os.path.join(exports["mean"], layout.ONNX_INT8_FILE)) < \
        os.path.getsize(os.path.join(exports["mean"], layout.ONNX_FILE))


def test_tokenizer_json_gives_the_tf_ids(runs, exports):
    from tokenizers import Tokenizer

    from lealla_tf import runs as runs_lib
    _, pre, _ = runs_lib.restore_encoder(runs["mean"])
    tok = Tokenizer.from_file(os.path.join(exports["mean"], layout.ONNX_TOKENIZER_FILE))
    valid = []
    for s in PROBE_SENTENCES:
        try:
            valid.append(s.decode("utf-8"))
        except UnicodeDecodeError:
            pass
    valid += ["Big DOG, small cat!", "  spaces   inside  ", "x" * 500]
    assert [e.ids for e in tok.encode_batch(valid)] == \
        hf_tokenizer.tf_ids(pre, [v.encode("utf-8") for v in valid])
    # Invalid UTF-8, as the embedder decodes it, gets the TF ids too.
    model = embedders.load(exports["mean"])
    assert model.token_ids(list(PROBE_SENTENCES)) == hf_tokenizer.tf_ids(pre, PROBE_SENTENCES)


def test_a_session_runs_any_batch_and_length(exports):
    import onnxruntime as ort
    session = ort.InferenceSession(os.path.join(exports["cls"], layout.ONNX_FILE),
                                   providers=["CPUExecutionProvider"])
    for batch, length in ((1, 2), (5, 17), (2, 32)):
        ids = np.full((batch, length), 7, np.int64)
        ids[:, 0], ids[:, -1] = 2, 3
        out = session.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids),
                                 "token_type_ids": np.zeros_like(ids)})[0]
        assert out.shape == (batch, 32)
        assert np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
