"""Typed experiment configs: YAML files with ``base:`` inheritance and ``a.b=value`` overrides.

Every knob is a field of :class:`ExperimentConfig`; unknown keys and wrongly typed values
raise :class:`ConfigError` naming the key. A bare name loads a config shipped in
``lealla_tf/configs/``, anything else is a path::

    from lealla_tf import config
    cfg = config.load("lealla_small", overrides=["train.steps=100"])
    cfg.model.hidden_size  # 128

See docs/training.md, "Configs".
"""

from __future__ import annotations

import dataclasses
import os
import typing
from typing import Any, Dict, List, Optional, Sequence

import yaml

from lealla_tf import corpus, fileio


class ConfigError(ValueError):
    """A configuration file or override names an unknown key or holds a bad value."""


ARCHITECTURES = ("transformer", "static")
POOLINGS = ("cls", "mean")
EMBEDDING_INITS = ("random", "teacher", "teacher_table")
VOCAB_SOURCES = ("train", "teacher")
VOCAB_TYPES = ("sentencepiece", "wordpiece")
TEACHER_MODES = ("precomputed", "online")
ALL_LANGUAGES = "all"  # teacher.languages: [all]: the teacher covers every language


@dataclasses.dataclass
class ModelConfig:
    """Shape of the Transformer encoder (BERT-style, as in LEALLA and LaBSE)."""

    name: str = "lealla_small"
    vocab_size: int = 501153
    hidden_size: int = 128
    num_layers: int = 24
    num_attention_heads: int = 8
    intermediate_size: int = 512
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    hidden_act: str = "gelu"
    dropout_rate: float = 0.1
    attention_dropout_rate: float = 0.1
    initializer_range: float = 0.02
    # Inference path: "fast" (plain tf.nn ops over BertEncoderV2's weights) or "keras"
    # (BertEncoderV2's layers); same weights, same outputs. jit_compile: XLA for inference.
    implementation: str = "fast"
    jit_compile: bool = False
    # "transformer" (BertEncoderV2) or "static": a bag of token embeddings, mean-pooled, with
    # an optional linear map (static_projection), trained and exported the same way.
    architecture: str = "transformer"
    # Sentence vector: "cls" ([CLS] -> dense -> tanh, the LEALLA/LaBSE pooler) or "mean"
    # (mean of the last layer over the tokens, [CLS]/[SEP] included). Static models: mean.
    pooling: str = "cls"
    static_projection: bool = False
    # Word-embedding table at the start of training: "random"; "teacher" (embed every
    # vocabulary piece with the teacher, PCA to hidden_size); "teacher_table" (the teacher's
    # own token-embedding table, PCA to hidden_size; teachers that expose one, e.g. muse).
    embedding_init: str = "random"
    # Position and token-type embeddings at the start of training: "random" (BERT's
    # initializer) or "zero", so that a student whose word table comes from a teacher or a
    # static run starts as that bag of embeddings instead of adding noise of the same size.
    position_init: str = "random"

    def validate(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ConfigError(f"model.architecture must be one of {', '.join(ARCHITECTURES)}, "
                              f"got {self.architecture!r}")
        if self.pooling not in POOLINGS:
            raise ConfigError(f"model.pooling must be one of {', '.join(POOLINGS)}, "
                              f"got {self.pooling!r}")
        if self.architecture == "static" and self.pooling != "mean":
            raise ConfigError("model.architecture static pools by mean: set model.pooling: mean")
        if self.embedding_init not in EMBEDDING_INITS:
            raise ConfigError(f"model.embedding_init must be one of {', '.join(EMBEDDING_INITS)}"
                              f", got {self.embedding_init!r}")
        if self.position_init not in ("random", "zero"):
            raise ConfigError(f"model.position_init must be random or zero, "
                              f"got {self.position_init!r}")
        if self.implementation not in ("fast", "keras"):
            raise ConfigError(
                f"model.implementation must be 'fast' or 'keras', got {self.implementation!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"model.hidden_size ({self.hidden_size}) must be divisible by "
                f"model.num_attention_heads ({self.num_attention_heads})")
        for key in ("vocab_size", "hidden_size", "num_layers", "num_attention_heads",
                    "intermediate_size", "max_position_embeddings", "type_vocab_size"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"model.{key} must be positive, got {getattr(self, key)}")
        for key in ("dropout_rate", "attention_dropout_rate"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise ConfigError(f"model.{key} must be in [0, 1), got {getattr(self, key)}")


@dataclasses.dataclass
class VocabConfig:
    """SentencePiece vocabulary training (unigram, no byte fallback: TFLite-safe)."""

    vocab_size: int = 501153
    # "train": a unigram SentencePiece model trained on the training files (vocab_size
    # pieces); "teacher": the teacher's own SentencePiece model (muse, or a SavedModel with a
    # SentencePiece asset), pruned to the pieces the training files use (at most max_pieces,
    # the most frequent first; 0 = all used), ids remapped, [PAD] [UNK] [CLS] [SEP] [MASK] kept.
    source: str = "train"
    max_pieces: int = 0
    # source teacher: also keep the pieces the training files never use (the teacher's whole
    # vocabulary, or up to max_pieces ranked by the teacher's piece scores after the used ones).
    keep_unused: bool = False
    # source teacher: learn up to this many extra pieces on the training words that hold
    # characters the teacher's model cannot segment (unknown to it: Ethiopic, Bengali, Tamil,
    # Vietnamese diacritics, ...) and append them after the teacher's pieces. Text the teacher
    # can segment keeps its segmentation (every new piece holds such a character); 0 = none.
    extend_pieces: int = 0
    # An existing SentencePiece model (spm.model) to use; empty: `lealla train` trains one
    # into the model dir. A relative path is tried against the cwd, then the model dir.
    model_file: str = ""
    sentences_per_language: int = 100000
    sampling_alpha: float = 0.3
    character_coverage: float = 0.9995
    max_sentence_length: int = 4192
    seed: int = 0
    # "sentencepiece" (spm.model) or "wordpiece" (a BERT vocab.txt, e.g. LaBSE's, with
    # model_file naming it; do_lower_case: BERT's lower-casing and accent stripping).
    type: str = "sentencepiece"
    do_lower_case: bool = False

    def validate(self) -> None:
        if self.type not in VOCAB_TYPES:
            raise ConfigError(f"vocab.type must be one of {', '.join(VOCAB_TYPES)}, "
                              f"got {self.type!r}")
        if self.type == "wordpiece" and not self.model_file:
            raise ConfigError("vocab.type: wordpiece needs vocab.model_file (a vocab.txt; "
                              "`lealla import` writes one into its run directory)")
        if self.source not in VOCAB_SOURCES:
            raise ConfigError(f"vocab.source must be one of {', '.join(VOCAB_SOURCES)}, "
                              f"got {self.source!r}")
        if self.max_pieces < 0:
            raise ConfigError(f"vocab.max_pieces must be >= 0, got {self.max_pieces}")
        if self.extend_pieces < 0:
            raise ConfigError(f"vocab.extend_pieces must be >= 0, got {self.extend_pieces}")
        if self.extend_pieces and self.source != "teacher":
            raise ConfigError("vocab.extend_pieces extends the teacher's vocabulary: it needs "
                              "vocab.source: teacher (a vocabulary trained on the pairs "
                              "already covers their characters)")


@dataclasses.dataclass
class PreprocessConfig:
    """Strings to BERT-style inputs."""

    # Tokens per training sequence ([CLS] and [SEP] included).
    seq_length: int = 64
    # Tokens per sequence of exports, `lealla embed` and evaluation of a run; 0 = seq_length.
    # Exports pad each batch only to its longest sentence, so a long limit costs nothing on
    # short input, and long sentences (news, documents) are not cut at the training length.
    inference_seq_length: int = 0
    # Training batches padded only to their longest sentence, rounded up to a multiple of
    # length_multiple (at most seq_length), instead of always to seq_length. With
    # data.bucket_pool this removes most padding; shapes then vary between steps, which
    # CPUs and GPUs take in their stride but TPUs do not (keep it false there).
    dynamic_length: bool = False
    length_multiple: int = 8

    def validate(self) -> None:
        if self.length_multiple < 1:
            raise ConfigError(
                f"preprocess.length_multiple must be at least 1, got {self.length_multiple}")
        if self.seq_length < 3:
            raise ConfigError(f"preprocess.seq_length must be at least 3, got {self.seq_length}")
        if self.inference_seq_length < 0:
            raise ConfigError("preprocess.inference_seq_length must be >= 0 (0 = seq_length), "
                              f"got {self.inference_seq_length}")


@dataclasses.dataclass
class LossConfig:
    """Bidirectional additive-margin softmax plus distillation terms."""

    margin: float = 0.3
    scale: float = 100.0
    bidirectional: bool = True
    ams_weight: float = 1.0
    feature_distill_weight: float = 0.0
    logit_distill_weight: float = 0.0
    logit_distill_type: str = "mse"  # "mse" or "kl"
    logit_distill_temperature: float = 1.0
    # Negatives from every replica's batch (LaBSE); false: each replica's own batch only
    # (Model Garden's dual encoder), cheaper but with fewer negatives.
    cross_replica_negatives: bool = True

    def validate(self) -> None:
        if self.logit_distill_type not in ("mse", "kl"):
            raise ConfigError(
                f"loss.logit_distill_type must be 'mse' or 'kl', got {self.logit_distill_type!r}")
        if self.scale <= 0:
            raise ConfigError(f"loss.scale must be positive, got {self.scale}")
        if self.logit_distill_temperature <= 0:
            raise ConfigError("loss.logit_distill_temperature must be positive")


@dataclasses.dataclass
class DataConfig:
    """Parallel training data: TSV files of ``foreign<TAB>English`` pairs."""

    # Glob patterns; relative patterns are resolved against ``data_dir``.
    train_files: List[str] = dataclasses.field(default_factory=lambda: ["train/*-eng.tsv"])
    # Root for relative patterns; empty means $LEALLA_DATA_DIR.
    data_dir: str = ""
    # Restrict to these language codes (file prefix before "-eng"); empty = all.
    languages: List[str] = dataclasses.field(default_factory=list)
    max_pairs_per_language: int = 0  # 0 = no limit
    sampling_alpha: float = 0.3
    # Sampling weight of the languages the teacher covers (teacher.languages) against the
    # others: p_l ∝ w_l * n_l^sampling_alpha, w_l this for the teacher's languages, else 1.
    teacher_language_weight: float = 1.0
    # Directory of precomputed teacher embeddings (``lealla teacher embed``); empty = none.
    teacher_embeddings: str = ""
    seed: int = 0
    # Length bucketing: 0 draws every global batch on its own; K > 1 draws K global
    # batches at once and regroups them by token count, so that batches hold sentences of
    # similar length (use with preprocess.dynamic_length). Language sampling is unchanged.
    bucket_pool: int = 0

    def validate(self) -> None:
        if self.bucket_pool < 0:
            raise ConfigError(f"data.bucket_pool must be >= 0, got {self.bucket_pool}")
        if not self.teacher_language_weight > 0:
            raise ConfigError("data.teacher_language_weight must be > 0, got "
                              f"{self.teacher_language_weight}")


@dataclasses.dataclass
class TeacherConfig:
    """Where teacher embeddings come from (see lealla_tf.embedders.teachers)."""

    # "muse", "hub:<preprocessor>|<encoder>", "hub:<handle>", "savedmodel:<path>", or "".
    spec: str = ""
    # The teacher's embedding size; when set, training checks the teacher embeddings
    # (data.teacher_embeddings) have it (0: not checked).
    dim: int = 0
    # Where distillation gets teacher embeddings: "precomputed" (the shards of
    # data.teacher_embeddings, from `lealla teacher embed`) or "online" (the frozen
    # TensorFlow teacher of teacher.spec runs inside the training step; see
    # lealla_tf.distill.online_teacher). Online ignores data.teacher_embeddings.
    mode: str = "precomputed"
    # The languages the teacher covers, named like the training files (corpus.language_of:
    # deu, cmn, or cmn_Hans for one script), or [all] (every language: LaBSE-like
    # teachers). A pair of another language is distilled towards the teacher's embedding of
    # its English side, on both sides (see docs/training.md, "Targets by language").
    languages: List[str] = dataclasses.field(default_factory=lambda: [ALL_LANGUAGES])

    def validate(self) -> None:
        if self.dim < 0:
            raise ConfigError(f"teacher.dim must be >= 0, got {self.dim}")
        check_teacher_languages(self.languages, "teacher.languages")
        if self.mode not in TEACHER_MODES:
            raise ConfigError(f"teacher.mode must be one of {', '.join(TEACHER_MODES)}, "
                              f"got {self.mode!r}")
        if self.mode == "online" and not self.spec:
            raise ConfigError(
                "teacher.mode: online needs teacher.spec naming a TensorFlow teacher (labse, "
                "hub:..., savedmodel:..., export:..., run:...); other teachers need "
                "teacher.mode: precomputed")


def check_teacher_languages(languages, key: str = "teacher.languages") -> List[str]:
    """``languages`` as a list of codes, or a :class:`ConfigError` naming ``key``: a
    non-empty list of language codes (no paths, no blanks), or ``[all]`` alone."""
    if isinstance(languages, str) or not isinstance(languages, (list, tuple)):
        raise ConfigError(f"{key} must be a list of language codes (e.g. [deu, fra]) or "
                          f"[{ALL_LANGUAGES}], got {languages!r}")
    bad = [x for x in languages if not isinstance(x, str) or not x or x != x.strip()
           or any(c in x for c in "/\\ \t*?")]
    if bad or not languages:
        raise ConfigError(f"{key} must name languages like the training files (deu, cmn, "
                          f"cmn_Hans) or be [{ALL_LANGUAGES}], got {list(languages)!r}")
    if ALL_LANGUAGES in languages and len(languages) > 1:
        raise ConfigError(f"{key}: [{ALL_LANGUAGES}] stands alone, got {list(languages)!r}")
    return list(languages)


def teacher_covers(languages: Sequence[str], path: str) -> bool:
    """Whether a teacher covering ``languages`` (``teacher.languages``) knows the language
    of the training file ``path`` (:func:`lealla_tf.corpus.language_of`, or its base
    language: ``cmn`` covers ``cmn_Hans-eng.tsv``)."""
    if ALL_LANGUAGES in languages:
        return True
    language = corpus.language_of(path)
    return language in languages or language.split("_")[0] in languages


OPTIMIZERS = ("adamw", "lazy_adamw")


@dataclasses.dataclass
class TrainConfig:
    """Optimiser, schedule and bookkeeping of the training job."""

    global_batch_size: int = 64
    steps: int = 1000
    learning_rate: float = 1e-3
    warmup_steps: int = 100
    end_learning_rate: float = 0.0
    weight_decay: float = 0.01
    # adamw: Model Garden's AdamW, whose sparse (embedding-table) updates still decay the
    # moments and weights of every row; lazy_adamw: the same maths, but an embedding table's
    # rows that are not in the batch are left alone (cheap with a 128k+ vocabulary).
    optimizer: str = "adamw"
    clip_norm: float = 1.0
    steps_per_loop: int = 1
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    summary_every: int = 10
    # float32 | mixed (bfloat16 on TPU and CPU, float16 on GPU) | mixed_float16 | mixed_bfloat16
    mixed_precision: str = "float32"
    seed: int = 0
    # A run directory (e.g. from `lealla import`) whose encoder, vocabulary and model shape
    # a new run starts from (fine-tuning); empty: a new encoder.
    init_from: str = ""
    # A WordPiece run directory (e.g. `lealla import` of LaBSE) whose word-embedding rows,
    # matched to the student's tokens by spelling and reduced to model.hidden_size by PCA,
    # start the student's table (tokens it lacks keep their random rows).
    embedding_table_from: str = ""
    # A run directory (e.g. `lealla pretrain`) or one of its checkpoints whose encoder
    # weights and vocabulary start this run; the model shape stays this config's, and
    # every encoder tensor must have the checkpoint's shape.
    init_checkpoint: str = ""
    # With train.init_from: grow the source run's encoder to this many layers (0: keep its
    # depth) by adding identity blocks (output projections zero, the neighbouring
    # LayerNorm's scale and shift moved to the last new block), so the grown encoder starts
    # with the source's exact outputs; grow_position puts them "top" (after the source's
    # layers) or "bottom" (between the embeddings and the first layer). A static source
    # grows into a Transformer of model's shape (same width, mean pooling) whose blocks are
    # all identities over its table: it starts near the static student.
    grow_layers: int = 0
    grow_position: str = "top"

    def validate(self) -> None:
        if self.init_from and self.init_checkpoint:
            raise ConfigError("set train.init_from or train.init_checkpoint, not both")
        if self.grow_layers < 0:
            raise ConfigError(f"train.grow_layers must be >= 0, got {self.grow_layers}")
        if self.grow_position not in ("top", "bottom"):
            raise ConfigError(f"train.grow_position must be top or bottom, "
                              f"got {self.grow_position!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"train.optimizer must be one of {', '.join(OPTIMIZERS)}, "
                              f"got {self.optimizer!r}")
        if self.mixed_precision not in ("float32", "mixed", "mixed_float16", "mixed_bfloat16"):
            raise ConfigError(
                "train.mixed_precision must be float32, mixed, mixed_float16 or mixed_bfloat16, "
                f"got {self.mixed_precision!r}")
        for key in ("global_batch_size", "steps", "steps_per_loop", "checkpoint_every",
                    "keep_checkpoints", "summary_every"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"train.{key} must be positive, got {getattr(self, key)}")


@dataclasses.dataclass
class PretrainConfig:
    """Masked-language-model pre-training (``lealla pretrain``; see lealla_tf.training.pretraining).

    MLM on single sentences (either side of the training pairs, or ``text_files``) and
    TLM on translation pairs (``[CLS] src [SEP] tgt [SEP]``, no language ids), mixed by
    ``tlm_fraction``; LaBSE masks 20% of the pieces, at most 80 per sequence, 80/10/10.
    """

    # Share of the sequences that are TLM pairs (the rest: MLM on one sentence).
    tlm_fraction: float = 0.5
    # Share of the pieces chosen for prediction ([CLS]/[SEP]/padding never), and the most
    # per sequence (also the padded number of predictions).
    mask_rate: float = 0.2
    max_predictions: int = 80
    # Of the chosen pieces: replaced by [MASK] / by a random piece (the rest stay).
    mask_token_rate: float = 0.8
    random_token_rate: float = 0.1
    # Plain-text files (one sentence per line; language = file stem), sampled as languages
    # of their own beside data.train_files; globs; relative to the data root.
    text_files: List[str] = dataclasses.field(default_factory=list)
    # Progressive stacking: the number of layers of each stage (increasing, the last one
    # model.num_layers) and the steps of each (summing to train.steps); empty: one stage.
    stages: List[int] = dataclasses.field(default_factory=list)
    stage_steps: List[int] = dataclasses.field(default_factory=list)
    # At a stage boundary: "reset" the optimizer's moments, or "carry" them (the copied
    # layers take the moments of the layers they are copied from).
    stage_optimizer: str = "reset"
    # Held-out pairs per language (the last ones read), not trained on; their MLM/TLM
    # loss and accuracy are logged every eval_every steps (0: never).
    eval_pairs_per_language: int = 0
    eval_every: int = 0

    def validate(self) -> None:
        for key in ("tlm_fraction", "mask_token_rate", "random_token_rate"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ConfigError(f"pretrain.{key} must be in [0, 1], got {getattr(self, key)}")
        if self.mask_token_rate + self.random_token_rate > 1.0:
            raise ConfigError("pretrain.mask_token_rate + pretrain.random_token_rate must be "
                              f"<= 1, got {self.mask_token_rate} + {self.random_token_rate}")
        if not 0.0 < self.mask_rate <= 1.0:
            raise ConfigError(f"pretrain.mask_rate must be in (0, 1], got {self.mask_rate}")
        if self.max_predictions <= 0:
            raise ConfigError(f"pretrain.max_predictions must be positive, "
                              f"got {self.max_predictions}")
        if self.stage_optimizer not in ("reset", "carry"):
            raise ConfigError(f"pretrain.stage_optimizer must be reset or carry, "
                              f"got {self.stage_optimizer!r}")
        if len(self.stages) != len(self.stage_steps):
            raise ConfigError(f"pretrain.stages {self.stages} and pretrain.stage_steps "
                              f"{self.stage_steps} must have the same length")
        if any(n <= 0 for n in self.stages) or any(b <= a for a, b in
                                                   zip(self.stages, self.stages[1:])):
            raise ConfigError(f"pretrain.stages must be increasing positive layer counts, "
                              f"got {self.stages}")
        if any(s <= 0 for s in self.stage_steps):
            raise ConfigError(f"pretrain.stage_steps must be positive, got {self.stage_steps}")
        for key in ("eval_pairs_per_language", "eval_every"):
            if getattr(self, key) < 0:
                raise ConfigError(f"pretrain.{key} must be >= 0, got {getattr(self, key)}")


@dataclasses.dataclass
class DistributeConfig:
    """Which tf.distribute strategy runs training."""

    strategy: str = "one_device"  # one_device | mirrored | multi_worker | tpu
    # mirrored: split the CPU into this many logical devices when no GPU is present (0 = off).
    num_logical_cpus: int = 0
    tpu: str = ""  # TPU name or grpc address for TPUClusterResolver ("" = local/env)
    communication: str = "auto"  # multi_worker: auto | ring | nccl

    def validate(self) -> None:
        if self.strategy not in ("one_device", "mirrored", "multi_worker", "tpu"):
            raise ConfigError(
                "distribute.strategy must be one_device, mirrored, multi_worker or tpu, "
                f"got {self.strategy!r}")


@dataclasses.dataclass
class EvalConfig:
    """Evaluation after training (``lealla demo``): languages and encode batch size."""

    # Tatoeba languages to evaluate (codes, or [all] / [xtreme36]); empty = all 112.
    tatoeba_languages: List[str] = dataclasses.field(default_factory=list)
    batch_size: int = 128

    def validate(self) -> None:
        if self.batch_size <= 0:
            raise ConfigError(f"eval.batch_size must be positive, got {self.batch_size}")


INDEX_KINDS = ("exact", "faiss", "scann")


@dataclasses.dataclass
class IndexConfig:
    """Nearest-neighbour index of mining and large-pool retrieval (``--index``).

    ``exact`` is the chunked exact search; ``faiss`` and ``scann`` build an approximate
    index per candidate matrix once, save it under ``directory`` (keyed by the matrix
    content and the build settings) and reuse it (:mod:`lealla_tf.evaluation.ann`).
    """

    kind: str = "exact"
    directory: str = ""      # saved indexes; "" = <cache root>/indexes
    faiss_factory: str = ""  # FAISS index_factory string; "" = "IVF<nlist>,Flat"
    nlist: int = 0           # partitions (FAISS IVF lists, ScaNN leaves); 0 = 4 * sqrt(N)
    nprobe: int = 0          # partitions searched per query; 0 = auto (see ann.auto_nprobe)
    train_size: int = 0      # rows sampled to train the partitions; 0 = 50 * nlist
    add_batch_rows: int = 65536  # rows streamed from the (memory-mapped) matrix per add
    overfetch: int = 2       # neighbours fetched per wanted one, then rescored exactly
    seed: int = 0            # training sample
    exact_below: int = 0     # matrices with fewer rows are searched exactly (0: never)

    def validate(self) -> "IndexConfig":
        if self.kind not in INDEX_KINDS:
            raise ConfigError(f"index kind must be one of {INDEX_KINDS}, got {self.kind!r}")
        for name in ("nlist", "nprobe", "train_size", "exact_below"):
            if getattr(self, name) < 0:
                raise ConfigError(f"index {name} must be >= 0 (0 = automatic), "
                                  f"got {getattr(self, name)}")
        if self.add_batch_rows <= 0 or self.overfetch <= 0:
            raise ConfigError("index add_batch_rows and overfetch must be positive")
        if self.faiss_factory and self.kind != "faiss":
            raise ConfigError("faiss_factory is only used with kind 'faiss'")
        return self


@dataclasses.dataclass
class ExperimentConfig:
    """Everything a run needs; what ``lealla train`` writes into the model dir."""

    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    vocab: VocabConfig = dataclasses.field(default_factory=VocabConfig)
    preprocess: PreprocessConfig = dataclasses.field(default_factory=PreprocessConfig)
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    teacher: TeacherConfig = dataclasses.field(default_factory=TeacherConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    distribute: DistributeConfig = dataclasses.field(default_factory=DistributeConfig)
    pretrain: PretrainConfig = dataclasses.field(default_factory=PretrainConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)

    def validate(self) -> "ExperimentConfig":
        for f in dataclasses.fields(self):
            section = getattr(self, f.name)
            if hasattr(section, "validate"):
                section.validate()
        stages = self.pretrain.stages
        if stages and stages[-1] != self.model.num_layers:
            raise ConfigError(f"pretrain.stages {stages} must end with model.num_layers "
                              f"({self.model.num_layers})")
        if stages and sum(self.pretrain.stage_steps) != self.train.steps:
            raise ConfigError(f"pretrain.stage_steps {self.pretrain.stage_steps} sum to "
                              f"{sum(self.pretrain.stage_steps)} but train.steps is "
                              f"{self.train.steps}: set train.steps="
                              f"{sum(self.pretrain.stage_steps)}")
        longest = max(self.preprocess.seq_length, self.preprocess.inference_seq_length)
        if self.model.architecture == "transformer" and longest > self.model.max_position_embeddings:
            raise ConfigError(f"preprocess sequence length {longest} exceeds "
                              f"model.max_position_embeddings ({self.model.max_position_embeddings})")
        return self

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------
# Building dataclasses from plain dicts, with strict checking.


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Checks ``value`` against the annotation ``tp``; returns the converted value."""
    origin = typing.get_origin(tp)
    if origin is typing.Union:  # Optional[X]
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], key)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
        return _from_dict(tp, value, prefix=key + ".")
    if origin in (list, List):
        return _coerce_list(value, tp, key)
    for scalar, coerce in _SCALARS:
        if tp is scalar:
            return coerce(value, key)
    raise ConfigError(f"{key}: unsupported type {_type_name(tp)}")


def _coerce_list(value: Any, tp: Any, key: str) -> list:
    """A list (a lone scalar becomes one), each item checked against ``tp``'s item type."""
    (item_tp,) = typing.get_args(tp)
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{key}: expected a list, got {value!r}")
    return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]


def _coerce_bool(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    raise ConfigError(f"{key}: expected true or false, got {value!r}")


def _coerce_int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    return value


def _coerce_float(value: Any, key: str) -> float:
    if isinstance(value, str):  # YAML 1.1 reads "2e-3" (no dot) as a string
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    return float(value)


def _coerce_str(value: Any, key: str) -> str:
    if not isinstance(value, str):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    return value


# Scalar annotations and their checks (matched by identity, in this order).
_SCALARS = ((bool, _coerce_bool), (int, _coerce_int), (float, _coerce_float),
            (str, _coerce_str))


def _from_dict(cls: Any, data: Dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {', '.join(prefix + k for k in unknown)}; "
            f"valid keys{' under ' + prefix.rstrip('.') if prefix else ''}: {', '.join(sorted(names))}")
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in data.items()}
    return cls(**kwargs)


def _deep_merge(base: Dict[str, Any], update: Dict[str, Any]) -> Dict[str, Any]:
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def package_config_dir() -> str:
    """The folder of the shipped recipes and shapes (``lealla_tf/configs``, package data)."""
    from importlib import resources
    return str(resources.files("lealla_tf").joinpath("configs"))


def recipe_names() -> List[str]:
    """Names of the shipped configs (``lealla_small``, ``demo``, ...), sorted."""
    root = package_config_dir()
    return sorted(n[:-len(".yaml")] for n in fileio.listdir(root) if n.endswith(".yaml"))


def _is_bare_name(text: str) -> bool:
    return "/" not in text and os.sep not in text and "://" not in text


def resolve(path_or_name: str) -> str:
    """A config argument -> the file it names.

    Args:
      path_or_name: an existing file (local, ``gs://``, ``ram://``), or the bare name of a
        shipped config with or without ``.yaml`` (``lealla_small``, ``demo.yaml``). A file
        in the working directory wins over a shipped config of the same name.

    Raises:
      ConfigError: if it is neither, listing the shipped names.
    """
    if fileio.exists(path_or_name) and not fileio.isdir(path_or_name):
        return path_or_name
    if path_or_name and _is_bare_name(path_or_name):
        name = path_or_name if path_or_name.endswith(".yaml") else path_or_name + ".yaml"
        candidate = os.path.join(package_config_dir(), name)
        if fileio.exists(candidate):
            return candidate
        raise ConfigError(f"config {path_or_name!r} is neither a file nor a shipped config; "
                          f"shipped: {', '.join(recipe_names())}")
    raise ConfigError(f"config file not found: {path_or_name}")


def _read_yaml(path: str, _seen: Optional[set] = None) -> Dict[str, Any]:
    path = fileio.normpath(path)
    _seen = set() if _seen is None else _seen
    if path in _seen:
        raise ConfigError(f"config {path}: 'base' files form a cycle")
    _seen.add(path)
    if not fileio.exists(path):
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(fileio.read_text(path)) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config {path} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"config {path}: top level must be a mapping")
    bases = data.pop("base", None)
    if bases:
        merged: Dict[str, Any] = {}
        for b in [bases] if isinstance(bases, str) else bases:
            merged = _deep_merge(merged, _read_yaml(fileio.join(fileio.dirname(path), b), _seen))
        data = _deep_merge(merged, data)
    return data


def parse_override(text: str) -> Dict[str, Any]:
    """Turns ``"a.b=value"`` into ``{"a": {"b": value}}`` (value parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    out: Dict[str, Any] = {}
    node = out
    parts = key.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    return out


def from_dict(data: Dict[str, Any], overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Builds and validates an :class:`ExperimentConfig` from a dict plus overrides."""
    for o in overrides:
        data = _deep_merge(data, parse_override(o))
    return _from_dict(ExperimentConfig, data).validate()


def load(path: Optional[str] = None, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Loads a YAML config (with its ``base:`` chain) and applies ``a.b=value`` overrides.

    Args:
      path: YAML file (local or any tf.io.gfile path), or the bare name of a shipped
        config (``lealla_small``; see :func:`resolve`); None gives the defaults
        (LEALLA-small shape).
      overrides: strings like ``"train.steps=10"``; values are parsed as YAML.

    Raises:
      ConfigError: on a missing file, unknown key or value of the wrong type.
    """
    data = _read_yaml(resolve(path)) if path else {}
    return from_dict(data, overrides)


def save(cfg: ExperimentConfig, path: str) -> None:
    """Writes ``cfg`` as YAML (loadable again with :func:`load`), atomically.

    Args:
      cfg: the configuration.
      path: destination (any tf.io.gfile path).
    """
    fileio.atomic_write(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False,
                                             allow_unicode=True))
