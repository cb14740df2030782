"""Tiny stand-ins for the released LaBSE and LEALLA SavedModels (no internet in tests).

Built the way the releases were: Model Garden's ``BertEncoder`` (whose variables carry
the release's names: ``word_embeddings/embeddings``, ``transformer/layer_N/...``,
``pooler_transform/...``), and a preprocessor from Model Garden's ``BertTokenizer`` (TF
Text's *regular* ``BertTokenizer``) and ``BertPackInputs``, the layers of Model Garden's
TF Hub export. Each SavedModel carries a ``vocab_file`` asset and a ``do_lower_case``
variable.

- :func:`save_encoder`: LaBSE/2's encoder: a dict of token ids in; ``default`` (the pooled
  output, not normalised), ``pooled_output``, ``sequence_output``, ``encoder_outputs`` out.
- :func:`save_preprocessor`: LaBSE's preprocessor: strings in, packed ids out; ``tokenize``,
  ``bert_pack_inputs``.
- :func:`save_string_model`: LEALLA's one-part model: strings in, L2-normalised pooled
  output out.
"""

import os

import tensorflow as tf
import tf_keras
from official.nlp.modeling import layers as nlp_layers
from official.nlp.modeling import networks

RESERVED = ["[PAD]", "[unused0]", "[unused1]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
_IDS = {k: tf.TensorSpec([None, None], tf.int32, name=k)
        for k in ("input_word_ids", "input_mask", "input_type_ids")}
_STRINGS = tf.TensorSpec([None], tf.string)


def make_vocab(sentences, path, lower_case, vocab_size=600):
    """A WordPiece vocabulary learnt by TF Text's BERT vocabulary learner (``vocab.txt``)."""
    from tensorflow_text.tools.wordpiece_vocab import bert_vocab_from_dataset as bv
    dataset = tf.data.Dataset.from_tensor_slices(list(sentences)).batch(256)
    vocab = bv.bert_vocab_from_dataset(dataset, vocab_size, RESERVED,
                                       dict(lower_case=lower_case))
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(vocab) + "\n")
    return path


def bert_encoder(vocab_size, hidden=32, layers=2, heads=2, ffn=64, positions=64, seed=0,
                 stddev=0.2):
    """Model Garden's (legacy) BERT encoder with random weights (larger than BERT's 0.02 by
    default, so that different sentences get clearly different vectors)."""
    tf_keras.utils.set_random_seed(seed)
    encoder = networks.BertEncoder(
        vocab_size=vocab_size, hidden_size=hidden, num_layers=layers, num_attention_heads=heads,
        inner_dim=ffn, max_sequence_length=positions, type_vocab_size=2,
        initializer=tf_keras.initializers.TruncatedNormal(stddev=stddev),
        output_dropout=0.1, attention_dropout=0.1, dict_outputs=True,
        return_all_encoder_outputs=True)
    ids = tf.zeros([1, 4], tf.int32)
    encoder({"input_word_ids": ids, "input_mask": ids + 1, "input_type_ids": ids})
    return encoder


def _attach_vocab(root, vocab_path, lower_case):
    root.vocab_file = tf.saved_model.Asset(vocab_path)
    root.do_lower_case = tf.Variable(lower_case, trainable=False, name="do_lower_case")


def save_encoder(encoder, vocab_path, lower_case, path):
    """LaBSE/2's encoder layout."""
    root = tf.train.Checkpoint()
    root.encoder = encoder
    root.variables = encoder.variables
    root.trainable_variables = encoder.trainable_variables

    @tf.function
    def call(inputs, training=False):
        out = encoder(inputs, training=training)
        return {"default": out["pooled_output"], "pooled_output": out["pooled_output"],
                "sequence_output": out["sequence_output"],
                "encoder_outputs": out["encoder_outputs"]}

    for training in (False, True):
        call.get_concrete_function(_IDS, training=training)
    root.__call__ = call

    @tf.function(input_signature=[_IDS])
    def serve(inputs):
        out = encoder(inputs, training=False)
        return {"default": out["pooled_output"], "pooled_output": out["pooled_output"],
                "sequence_output": out["sequence_output"]}

    _attach_vocab(root, vocab_path, lower_case)
    tf.saved_model.save(root, path, signatures={"serving_default": serve})
    return path


def _tokenizer_and_packer(vocab_path, lower_case, seq_length):
    tokenizer = nlp_layers.BertTokenizer(vocab_file=vocab_path, lower_case=lower_case)
    packer = nlp_layers.BertPackInputs(
        seq_length=seq_length, special_tokens_dict=tokenizer.get_special_tokens_dict())
    return tokenizer, packer


def save_preprocessor(vocab_path, lower_case, seq_length, path):
    """LaBSE's preprocessor layout (regular BertTokenizer + BertPackInputs)."""
    tokenizer, packer = _tokenizer_and_packer(vocab_path, lower_case, seq_length)
    root = tf.train.Checkpoint()
    root.tokenizer_layer, root.packer_layer = tokenizer, packer

    @tf.function(input_signature=[_STRINGS])
    def call(sentences):
        return {k: tf.cast(v, tf.int32) for k, v in packer([tokenizer(sentences)]).items()}

    root.__call__ = call
    root.tokenize = tf.function(lambda s: tokenizer(s), input_signature=[_STRINGS])
    _attach_vocab(root, vocab_path, lower_case)
    tf.saved_model.save(root, path, signatures={"serving_default": call})
    return path


def save_string_model(encoder, vocab_path, lower_case, seq_length, path):
    """LEALLA's one-part layout: strings in, the L2-normalised pooled output out."""
    tokenizer, packer = _tokenizer_and_packer(vocab_path, lower_case, seq_length)
    root = tf.train.Checkpoint()
    root.encoder, root.tokenizer_layer, root.packer_layer = encoder, tokenizer, packer
    root.variables = encoder.variables
    root.trainable_variables = encoder.trainable_variables

    @tf.function
    def call(sentences, training=False):
        inputs = {k: tf.cast(v, tf.int32) for k, v in packer([tokenizer(sentences)]).items()}
        return tf.math.l2_normalize(encoder(inputs, training=training)["pooled_output"], -1)

    for training in (False, True):
        call.get_concrete_function(_STRINGS, training=training)
    root.__call__ = call
    serve = tf.function(lambda sentences: {"default": call(sentences, training=False)},
                        input_signature=[_STRINGS])
    _attach_vocab(root, vocab_path, lower_case)
    tf.saved_model.save(root, path, signatures={"serving_default": serve})
    return path


def corpus_lines(train_files, per_file=80):
    """Both sides of the first ``per_file`` pairs of each TSV file."""
    lines = []
    for path in train_files:
        with open(path, encoding="utf-8") as f:
            for i, line in enumerate(f):
                if i >= per_file:
                    break
                lines += line.rstrip("\n").split("\t")[:2]
    return lines


def vocab_file_path(root):
    return os.path.join(root, "vocab.txt")
