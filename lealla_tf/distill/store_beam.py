"""``lealla teacher embed --runner beam``: the teacher-embedding job as an Apache Beam pipeline.

The driver plans as the local job does (:func:`lealla_tf.distill.store.plan`); each missing
shard is one element of ``Create -> Reshuffle -> ParDo``, and workers write it with the local
job's functions, so either executor resumes the other's directory. Needs the ``[beam]`` extra.

See docs/data.md, "The teacher-embedding job on Apache Beam".
"""

from __future__ import annotations

from typing import List, Optional, Sequence

from lealla_tf import fileio
from lealla_tf.distill import store as te

DIRECT_DEFAULTS = {"direct_running_mode": "multi_processing", "direct_num_workers": "2"}


def require_beam():
    """The ``apache_beam`` module, or an ImportError naming the extra to install."""
    try:
        import apache_beam
        return apache_beam
    except ImportError as e:
        raise ImportError("--runner beam needs Apache Beam, which is not installed: pip "
                          "install 'lealla_tf[beam]' (or run without --runner beam)") from e


def pipeline_options(beam_runner: str = "DirectRunner",
                     pipeline_args: Sequence[str] = ()) -> List[str]:
    """Beam command-line options: ``--runner`` plus ``pipeline_args``; on the DirectRunner
    several worker processes unless the arguments choose otherwise."""
    args = [f"--runner={beam_runner}"] + list(pipeline_args)
    if beam_runner in ("DirectRunner", "direct"):
        given = {a.split("=", 1)[0].lstrip("-") for a in args}
        args += [f"--{k}={v}" for k, v in DIRECT_DEFAULTS.items() if k not in given]
    return args


class _EmbedShard:
    """DoFn body (a plain class so the module imports without Beam)."""

    def __init__(self, teacher_spec: str, teacher_name: str, batch_size: int,
                 threads: Optional[int], dim: int = 0, dtype: str = te.DTYPE,
                 projection: Optional[str] = None, components=None):
        self.teacher_spec, self.teacher_name = teacher_spec, teacher_name
        self.batch_size, self.threads = batch_size, threads
        self.dim, self.dtype = dim, dtype  # the stored dimension and row type
        self.projection, self.components = projection, components  # sha256, [dim, teacher]
        self.teacher = None

    def setup(self):
        from lealla_tf import embedders
        self.teacher = embedders.load(self.teacher_spec, threads=self.threads)
        if self.teacher.name != self.teacher_name:
            raise ValueError(f"teacher {self.teacher_spec!r} loads as {self.teacher.name!r} "
                             f"on this worker but as {self.teacher_name!r} on the driver")
        if self.components is not None and self.components.shape[1] != int(self.teacher.dim):
            raise ValueError(f"teacher {self.teacher_spec!r} is {self.teacher.dim}-d on this "
                             f"worker but the projection maps {self.components.shape[1]} "
                             "dimensions")

    def process(self, task):
        path, shard_dir, rec, tsv_sha256 = task
        lines = te.read_shard_lines(path, rec)
        src, tgt, valid, n = te.encode_shard(self.teacher, lines, self.batch_size,
                                             components=self.components)
        te.write_shard(shard_dir, rec, self.teacher.name, self.dim or self.teacher.dim,
                       tsv_sha256, src, tgt, valid, self.dtype, self.projection)
        return n


def precompute(teacher_spec: str, inputs: Sequence[str], output_dir: str,
               shard_size: int = te.DEFAULT_SHARD_SIZE, batch_size: int = 64,
               overwrite: bool = False, beam_runner: str = "DirectRunner",
               pipeline_args: Sequence[str] = (), threads: Optional[int] = None,
               teacher=None, dim: int = 0, dtype: str = te.DTYPE,
               pca_sample: int = te.DEFAULT_PCA_SAMPLE) -> dict:
    """:func:`lealla_tf.distill.store.precompute` on Apache Beam.

    Args:
      teacher_spec: the teacher as ``lealla teacher embed --teacher`` takes it (each
        worker loads it from this string).
      inputs, output_dir, shard_size, batch_size, overwrite: as the local job.
      beam_runner: ``DirectRunner`` (default: 2 worker processes), ``DataflowRunner``,
        ``FlinkRunner``, ``SparkRunner``, ``PortableRunner``...
      pipeline_args: more Beam options (``--direct_num_workers=4``, ``--project=...``).
      threads: BLAS threads of the muse teacher on each worker.
      teacher: the driver's loaded teacher (name and dimension; it also encodes the PCA
        sample); loaded from the spec when None.
      dim, dtype, pca_sample: compact shards, as the local job (the PCA is fitted once,
        on the driver).

    Returns:
      The manifest (``last_run.sentences_encoded`` counts over all workers).
    """
    beam = require_beam()
    from apache_beam.metrics.metric import Metrics, MetricsFilter
    from apache_beam.options.pipeline_options import PipelineOptions

    te.check_args(shard_size, batch_size, dim, dtype, pca_sample)
    files = te.input_files(inputs)
    if teacher is None:
        from lealla_tf import embedders
        teacher = embedders.load(teacher_spec, threads=threads)
    fileio.makedirs(output_dir)
    options = PipelineOptions(pipeline_options(beam_runner, pipeline_args))

    class EmbedShard(beam.DoFn):
        def __init__(self, body):
            self.body = body
            self.encoded = Metrics.counter("lealla", "sentences_encoded")
            self.shards = Metrics.counter("lealla", "shards_written")

        def setup(self):
            self.body.setup()

        def process(self, task):
            self.encoded.inc(self.body.process(task))
            self.shards.inc()
            yield task[2]["file"]

    with te.exclusive(output_dir, force=overwrite):
        manifest, plans, projection = te.plan(teacher, files, output_dir, shard_size,
                                              overwrite, dim=dim, dtype=dtype,
                                              pca_sample=pca_sample, batch_size=batch_size)
        components = projection["components"] if projection is not None else None
        tasks = [(path, shard_dir, rec, manifest["files"][path]["sha256"])
                 for _, path, shard_dir, records, done in plans
                 for rec, d in zip(records, done) if not d]
        encoded = 0
        if tasks:
            p = beam.Pipeline(options=options)
            _ = (p | "Shards" >> beam.Create(tasks)
                 | "Spread" >> beam.Reshuffle()
                 | "Embed" >> beam.ParDo(EmbedShard(_EmbedShard(
                     teacher_spec, teacher.name, batch_size, threads, int(manifest["dim"]),
                     dtype, manifest.get("projection"), components))))
            result = p.run()
            result.wait_until_finish()
            try:
                counters = result.metrics().query(
                    MetricsFilter().with_name("sentences_encoded"))["counters"]
                encoded = int(sum(c.committed or c.attempted or 0 for c in counters))
            except (NotImplementedError, KeyError, AttributeError):  # runner without metrics
                encoded = -1
        for _, path, shard_dir, records, _ in plans:  # what the workers wrote
            entry = manifest["files"][path]
            done = te.shards_done(shard_dir, records, teacher.name,
                                  manifest.get("projection"), dtype)
            entry["shards"] = [r for r, d in zip(records, done) if d]
            entry["complete"] = all(done)
        manifest["last_run"] = {"sentences_encoded": encoded, "runner": f"beam:{beam_runner}",
                                "shards_submitted": len(tasks)}
        te.write_manifest(output_dir, manifest)
    missing = [p for p, e in manifest["files"].items() if not e["complete"]]
    if missing:
        raise RuntimeError(f"the pipeline finished but shards of {missing} are missing; "
                           "rerun the same command to compute them")
    return manifest
