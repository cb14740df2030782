"""What the CPU offers (AVX2, AVX-512, VNNI, BF16, AMX) and which kernels the runtimes pick on it.

:func:`describe` is what ``benchmarks.inference_speed`` prints above its table::

    python -c "from lealla_tf import hardware; print(hardware.describe())"

See docs/export.md, "Fast inference".
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
from typing import Dict, List, Optional

# Named groups -> the /proc/cpuinfo flags that make them (any one is enough).
ISA_GROUPS = (
    ("AVX2", ("avx2",)),
    ("FMA", ("fma",)),
    ("AVX-512", ("avx512f",)),
    ("AVX-512BW", ("avx512bw",)),
    ("VNNI", ("avx512_vnni", "avx512vnni", "avx_vnni")),
    ("BF16", ("avx512_bf16", "avx_vnni_bf16")),
    ("FP16", ("avx512_fp16",)),
    ("AMX", ("amx_tile",)),
    ("AMX-INT8", ("amx_int8",)),
    ("AMX-BF16", ("amx_bf16",)),
)


def parse_cpuinfo(text: str) -> Dict[str, object]:
    """CPU model, flags and named ISA groups from ``/proc/cpuinfo`` text.

    Returns:
      ``{"model": str, "flags": sorted list, "isa": {group: bool}}``; the model is
      ``"unknown"`` when the text names none (e.g. some ARM kernels).
    """
    model, flags = "unknown", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and model == "unknown" and value.strip():
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    isa = {name: any(f in flags for f in names) for name, names in ISA_GROUPS}
    return {"model": model, "flags": sorted(flags), "isa": isa}


def cpu_info(cpuinfo_path: str = "/proc/cpuinfo") -> Dict[str, object]:
    """``parse_cpuinfo`` of this machine, with ``cores`` (CPUs this process may use)."""
    try:
        with open(cpuinfo_path, encoding="utf-8", errors="replace") as f:
            info = parse_cpuinfo(f.read())
    except OSError:
        info = parse_cpuinfo("")
        info["model"] = platform.processor() or "unknown"
    info["cores"] = cores()
    return info


def cores() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def isa_line(info: Dict[str, object]) -> str:
    """``"AMD EPYC, 2 cores: AVX2 yes, AVX-512 yes, VNNI yes, BF16 yes, AMX no"``."""
    isa = info["isa"]
    shown = ("AVX2", "AVX-512", "VNNI", "BF16", "AMX")
    cores = f", {info['cores']} cores" if info.get("cores") else ""
    return f"{info['model']}{cores}: " + ", ".join(
        f"{k} {'yes' if isa.get(k) else 'no'}" for k in shown)


def parse_onednn_verbose(text: str) -> Dict[str, object]:
    """oneDNN version, ISA and the kernels (``implementation`` field) of ``exec`` lines
    in ``ONEDNN_VERBOSE=1`` output (format v1 of oneDNN 3.x)."""
    out: Dict[str, object] = {"version": None, "isa": None, "kernels": []}
    kernels: List[str] = []
    for line in text.splitlines():
        if not line.startswith("onednn_verbose"):
            continue
        parts = line.split(",")
        if "info" in parts[:3]:
            m = re.search(r"oneDNN (v[\d.]+)", line)
            if m:
                out["version"] = m.group(1)
            for p in parts:
                if p.startswith("isa:"):
                    out["isa"] = p[len("isa:"):]
        elif "exec" in parts[:4]:
            # onednn_verbose,v1,primitive,exec,cpu,<operation>,<implementation>,...
            i = parts.index("exec")
            if len(parts) > i + 3:
                name = f"{parts[i + 2]}:{parts[i + 3] or '-'}"
                if name not in kernels:
                    kernels.append(name)
    out["kernels"] = kernels
    return out


_PROBE = r"""
import os, sys
import numpy as np, tensorflow as tf
from tensorflow.python.util import _pywrap_util_port
w = tf.constant(np.ones([128, 128], np.float32))
f = tf.function(lambda x: tf.matmul(x, w), input_signature=[tf.TensorSpec([64, 128], tf.float32)])
f(tf.ones([64, 128])).numpy()
print("ONEDNN_ENABLED", int(_pywrap_util_port.IsMklEnabled()), flush=True)
conv = tf.lite.TFLiteConverter.from_concrete_functions([f.get_concrete_function()])
content = conv.convert()
import ai_edge_litert
from ai_edge_litert.interpreter import Interpreter
it = Interpreter(model_content=content, num_threads=1)
it.allocate_tensors(); it.invoke()
print("LITERT", getattr(ai_edge_litert, "__version__", "?"), flush=True)
print("TF", tf.__version__, flush=True)
"""


def runtime_paths(timeout: float = 300.0) -> Dict[str, object]:
    """Which kernels TensorFlow (oneDNN) and LiteRT (XNNPACK) use here, from a child
    process that runs one small matrix product in each.

    Returns:
      ``{"tensorflow", "onednn_enabled", "onednn_opts_env", "onednn": {version, isa,
      kernels}, "litert", "xnnpack"}`` (``xnnpack``: LiteRT applied its XNNPACK
      delegate); ``{"error": ...}`` when the child fails.
    """
    env = dict(os.environ, ONEDNN_VERBOSE="1", TF_CPP_MIN_LOG_LEVEL="2")
    try:
        proc = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True,
                              env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"probe timed out after {timeout:.0f}s"}
    text = proc.stdout + "\n" + proc.stderr
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip()
                else f"exit {proc.returncode}"}
    return parse_runtime_probe(text)


def parse_runtime_probe(text: str) -> Dict[str, object]:
    """The dict of :func:`runtime_paths` from the probe's combined output."""
    def value(key) -> Optional[str]:
        m = re.search(rf"^{key} (\S+)", text, re.M)
        return m.group(1) if m else None
    return {"tensorflow": value("TF"), "onednn_enabled": value("ONEDNN_ENABLED") == "1",
            "onednn_opts_env": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "(default)"),
            "onednn": parse_onednn_verbose(text), "litert": value("LITERT"),
            "xnnpack": "XNNPACK delegate" in text}


def describe(paths: Optional[Dict[str, object]] = None,
             info: Optional[Dict[str, object]] = None) -> str:
    """Two or three lines: the CPU and its ISA, TensorFlow's oneDNN path, LiteRT's path."""
    info = info or cpu_info()
    paths = paths if paths is not None else runtime_paths()
    lines = ["CPU: " + isa_line(info)]
    if "error" in paths:
        lines.append(f"runtime probe failed: {paths['error']}")
        return "\n".join(lines)
    dnn = paths["onednn"]
    if paths["onednn_enabled"]:
        kernels = ", ".join(dnn["kernels"]) or "none seen"
        lines.append(f"TensorFlow {paths['tensorflow']}: oneDNN {dnn['version'] or '?'} on "
                     f"(TF_ENABLE_ONEDNN_OPTS={paths['onednn_opts_env']}), ISA "
                     f"'{dnn['isa'] or '?'}', matmul kernel {kernels}")
    else:
        lines.append(f"TensorFlow {paths['tensorflow']}: oneDNN off (Eigen kernels; "
                     f"TF_ENABLE_ONEDNN_OPTS={paths['onednn_opts_env']})")
    lines.append(f"LiteRT {paths['litert']}: "
                 + ("XNNPACK delegate applied" if paths["xnnpack"]
                    else "built-in kernels (no XNNPACK delegate reported)"))
    return "\n".join(lines)


# ------------------------------------------------------------------ quiet start-up
# The line TensorFlow's CUDA platform logs at ERROR level on its first device listing when
# no NVIDIA driver is installed ("failed call to cuInit: ... UNKNOWN ERROR (303)"); it is
# printed even at TF_CPP_MIN_LOG_LEVEL=2, and CUDA_VISIBLE_DEVICES="" does not stop it.
CUINIT_LINE = re.compile(r"cuda_platform\.cc:\d+\] failed call to cuInit")


def has_nvidia_driver() -> bool:
    """Whether an NVIDIA kernel driver is loaded (``/proc/driver/nvidia``, Linux)."""
    return os.path.exists("/proc/driver/nvidia")


def list_devices_quietly(tf) -> None:
    """``tf.config.list_physical_devices()`` with stderr (file descriptor 2, where the
    C++ runtime logs) held aside; every line but the cuInit one is written back."""
    import tempfile
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:
        tf.config.list_physical_devices()
        return
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            tf.config.list_physical_devices()
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            kept = [line for line in held.read().splitlines(keepends=True)
                    if not CUINIT_LINE.search(line.decode("utf-8", "replace"))]
            if kept:
                os.write(2, b"".join(kept))


class _QuietDeviceListing:
    """A one-shot import hook: once ``tensorflow`` has been imported, its devices are
    listed (which TensorFlow does once per process anyway) without the cuInit line."""

    def __init__(self):
        self._finding = False

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow" or self._finding:
            return None
        import importlib.util
        self._finding = True  # the search below goes through sys.meta_path again
        try:
            spec = importlib.util.find_spec(name)
        finally:
            self._finding = False
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_list_devices(module):
            if self in sys.meta_path:  # only once, and only when TensorFlow is imported
                sys.meta_path.remove(self)
            exec_module(module)
            list_devices_quietly(module)
        spec.loader.exec_module = exec_then_list_devices
        return spec


def quiet_cpu_start() -> bool:
    """On a Linux machine without an NVIDIA driver (and without ``CUDA_VISIBLE_DEVICES``
    set, which says the user is choosing GPUs), drops TensorFlow's cuInit ERROR line: when
    ``tensorflow`` is first imported, its devices are listed once with that one line
    removed from stderr. Every other message, errors included, is kept.

    Returns:
      Whether the hook was installed (False when TensorFlow is already imported, or the
      machine has a driver, or the user set ``CUDA_VISIBLE_DEVICES``).
    """
    if (not sys.platform.startswith("linux") or has_nvidia_driver()
            or "CUDA_VISIBLE_DEVICES" in os.environ or "tensorflow" in sys.modules
            or any(isinstance(f, _QuietDeviceListing) for f in sys.meta_path)):
        return False
    sys.meta_path.insert(0, _QuietDeviceListing())
    return True
