"""CPU / instruction-set detection and the runtime-path probe of the inference benchmark."""

import re

from lealla_tf import hardware

SAPPHIRE_RAPIDS = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2 avx avx2 fma f16c avx512f avx512bw avx512vl avx512_vnni avx512_bf16 amx_bf16 avx512_fp16 amx_tile amx_int8
processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2
"""
HASWELL = """processor\t: 0
model name\t: Intel(R) Xeon(R) CPU E5-2680 v3 @ 2.50GHz
flags\t\t: fpu sse2 avx avx2 fma f16c
"""
ALDER_LAKE = "model name\t: 12th Gen Intel(R) Core(TM) i7-1260P\nflags\t: avx2 fma avx_vnni\n"
ARM = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 asimddp\n"

ONEDNN = """onednn_verbose,v1,info,oneDNN v3.7.3 (commit N/A)
onednn_verbose,v1,info,cpu,runtime:threadpool,nthr:2
onednn_verbose,v1,info,cpu,isa:Intel AVX-512 with Intel DL Boost and bfloat16 support
onednn_verbose,v1,primitive,info,template:operation,engine,primitive,implementation,prop_kind
onednn_verbose,v1,primitive,exec,cpu,gemm_api,,undef,src_f32::blocked:ab:f0,,,8x64:64x64,31.4
onednn_verbose,v1,primitive,exec,cpu,matmul,brg_matmul:avx512_core_vnni,undef,src_s8,,,8x64,1.0
onednn_verbose,v1,primitive,exec,cpu,matmul,brg_matmul:avx512_core_vnni,undef,src_s8,,,8x64,1.0
"""


def test_parse_cpuinfo_groups():
    spr = hardware.parse_cpuinfo(SAPPHIRE_RAPIDS)
    assert spr["model"] == "Intel(R) Xeon(R) Platinum 8480+"
    assert all(spr["isa"][k] for k in ("AVX2", "AVX-512", "VNNI", "BF16", "FP16", "AMX",
                                       "AMX-INT8", "AMX-BF16"))
    # The first CPU's flags only (not merged with the second's shorter list).
    assert "amx_tile" in spr["flags"]
    old = hardware.parse_cpuinfo(HASWELL)
    assert old["isa"]["AVX2"] and old["isa"]["FMA"]
    assert not any(old["isa"][k] for k in ("AVX-512", "VNNI", "BF16", "AMX"))
    adl = hardware.parse_cpuinfo(ALDER_LAKE)  # AVX-VNNI without AVX-512
    assert adl["isa"]["VNNI"] and not adl["isa"]["AVX-512"]
    arm = hardware.parse_cpuinfo(ARM)
    assert arm["model"] == "unknown" and not any(arm["isa"].values())
    assert "asimddp" in arm["flags"]


def test_isa_line():
    info = dict(hardware.parse_cpuinfo(HASWELL), cores=4)
    assert hardware.isa_line(info) == (
        "Intel(R) Xeon(R) CPU E5-2680 v3 @ 2.50GHz, 4 cores: AVX2 yes, AVX-512 no, VNNI no, "
        "BF16 no, AMX no")


def test_parse_onednn_verbose():
    got = hardware.parse_onednn_verbose(ONEDNN)
    assert got["version"] == "v3.7.3"
    assert got["isa"] == "Intel AVX-512 with Intel DL Boost and bfloat16 support"
    assert got["kernels"] == ["gemm_api:-", "matmul:brg_matmul:avx512_core_vnni"]
    assert hardware.parse_onednn_verbose("nothing here") == {
        "version": None, "isa": None, "kernels": []}


def test_cpu_info_of_this_machine_and_missing_file(tmp_path):
    info = hardware.cpu_info()
    assert info["cores"] >= 1 and set(info["isa"]) == {k for k, _ in hardware.ISA_GROUPS}
    missing = hardware.cpu_info(str(tmp_path / "no-cpuinfo"))
    assert not any(missing["isa"].values()) and missing["cores"] >= 1


def test_runtime_paths_probe_runs_tensorflow_and_litert():
    paths = hardware.runtime_paths()
    assert "error" not in paths, paths
    assert re.match(r"\d+\.\d+", paths["tensorflow"])
    assert paths["litert"]
    if paths["onednn_enabled"]:  # oneDNN reports itself when TF uses it
        assert paths["onednn"]["version"] and paths["onednn"]["isa"]
    text = hardware.describe(paths, dict(hardware.parse_cpuinfo(HASWELL), cores=2))
    assert text.splitlines()[0].startswith("CPU: Intel(R) Xeon(R) CPU E5-2680 v3")
    assert "LiteRT" in text and "TensorFlow" in text
    failed = hardware.describe({"error": "boom"}, dict(hardware.parse_cpuinfo(ARM), cores=1))
    assert "runtime probe failed: boom" in failed
