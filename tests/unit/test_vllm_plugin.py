"""The vLLM plugin's top-k-then-top-p masks exactly what vLLM's sorting sampler masks, without the sort."""

from importlib.metadata import entry_points

import pytest
import torch

from pipeline.vllm_plugin import register, top_k_then_top_p

sampler = pytest.importorskip("vllm.v1.sample.ops.topk_topp_sampler")


def _vllm_original():
    fn = sampler.apply_top_k_top_p_pytorch
    return getattr(fn, "_ssd_original", fn)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_same_masked_logits_as_vllms_sort(seed):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(32, 32768, generator=gen) * 3
    k = torch.randint(1, 64, (32,), generator=gen)
    p = torch.rand(32, generator=gen) * 0.95 + 0.04
    p[0] = 1.0  # top-p off in one row, top-k still on
    expected = _vllm_original()(logits.clone(), k.clone(), p.clone(), allow_cpu_sync=True)
    got = top_k_then_top_p(logits.clone(), k.clone(), p.clone())
    assert torch.equal(torch.isinf(expected), torch.isinf(got))
    assert torch.equal(expected[~torch.isinf(expected)], got[~torch.isinf(got)])
    kept = (~torch.isinf(got)).sum(-1)
    assert (kept <= k).all() and (kept >= 1).all() and kept[0] == k[0]


def test_rows_without_top_k_use_vllms_own_code():
    register()
    patched = sampler.apply_top_k_top_p_pytorch
    assert getattr(patched, "_ssd_fast", False)
    logits = torch.randn(2, 1000)
    k = torch.tensor([1000, 5])  # the first row has top-k off: only vLLM's sort can apply its top-p
    p = torch.tensor([0.5, 0.9])
    expected = _vllm_original()(logits.clone(), k.clone(), p.clone(), allow_cpu_sync=True)
    assert torch.equal(patched(logits.clone(), k, p, allow_cpu_sync=True), expected)


def test_the_plugin_is_registered_for_vllm():
    names = {e.name: e.value for e in entry_points(group="vllm.general_plugins")}
    assert names.get("ssd_fast_topk") == "pipeline.vllm_plugin:register"
