"""The training stage's supervised-only loss equals TRL's on a fixed batch: loss and gradients."""

import pytest
import torch

from pipeline import models
from pipeline.recipe import Recipe
from pipeline.training import fastloss
from pipeline.training.fastloss import supervised_cross_entropy, supervised_loss
from pipeline.training.trl import build_examples, make_trainer


def _rows(vocab: int, seed: int = 0) -> list[dict]:
    """Examples of different prompt and completion lengths (padding inside the batch)."""
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for prompt_len, completion_len in [(9, 5), (4, 12), (15, 3), (6, 7)]:
        ids = torch.randint(3, vocab, (prompt_len + completion_len,), generator=gen).tolist()
        rows.append({"prompt_token_ids": [2] + ids[:prompt_len], "completion_token_ids": ids[prompt_len:] + [1]})
    return rows


def _trainer(tmp_path, model_path: str, loss_path: str, model_id: str = "random:gemma4-tiny"):
    recipe = Recipe(
        model={"id": model_id},
        training={
            "micro_batch_size": 4,
            "max_steps": 1,
            "loss_path": loss_path,
            "save_steps": 0,
            "lora": {"r": 8, "alpha": 16, "target_parameters": []},
        },
    )
    from transformers import AutoConfig

    vocab = AutoConfig.from_pretrained(model_path).get_text_config().vocab_size
    examples, _ = build_examples(_rows(vocab), 128)
    trainer, _ = make_trainer(recipe, model_path, examples, tmp_path / loss_path)
    return trainer


def _batch(trainer):
    return trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))


def _loss_and_grads(trainer, compute):
    model = trainer.model
    model.zero_grad()
    # LoRA B starts at zero: give the adapter an effect so its A gradients are not all zero too
    loss = compute(model)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return float(loss), grads


def _perturb(trainer):
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in trainer.model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)


def _compare(trainer):
    from trl import SFTTrainer

    _perturb(trainer)
    batch = _batch(trainer)
    assert (batch["labels"] == -100).any() and (batch["attention_mask"] == 0).any(), "the batch must have padding"
    causal_lm = trainer.model.get_base_model()
    trainer.model.train()
    theirs, g_theirs = _loss_and_grads(trainer, lambda m: SFTTrainer.compute_loss(trainer, m, dict(batch)))
    ours, g_ours = _loss_and_grads(trainer, lambda m: supervised_loss(causal_lm, dict(batch))[0])
    # and the model's own forward with full logits and transformers' loss: the plain reference
    with torch.no_grad():
        plain = float(
            trainer.model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
            ).loss
        )
    assert ours == pytest.approx(theirs, rel=1e-5, abs=1e-6)
    assert ours == pytest.approx(plain, rel=1e-5, abs=1e-6)
    worst = max(
        (g_ours[n] - g_theirs[n]).abs().max().item() / (g_theirs[n].abs().max().item() + 1e-12) for n in g_theirs
    )
    assert worst < 1e-4, f"gradients differ by {worst:.2e} (relative)"
    assert any(g.abs().max() > 0 for g in g_ours.values())
    return ours


def test_same_loss_and_gradients_as_trl_on_the_tiny_moe(tmp_path):
    trainer = _trainer(tmp_path, models.resolve("random:gemma4-tiny"), "supervised")
    assert trainer.loss_path == "supervised"
    _compare(trainer)


def test_same_loss_with_gemma_logit_softcap(tmp_path):
    """Gemma 2 and Gemma 4 checkpoints soft-cap their logits (30.0): the head's derivative changes."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = models.resolve("random:gemma4-tiny")
    model = AutoModelForCausalLM.from_pretrained(src)
    model.config.final_logit_softcapping = 3.0  # small, so the cap bends these random logits
    model.save_pretrained(tmp_path / "capped")
    AutoTokenizer.from_pretrained(src).save_pretrained(tmp_path / "capped")
    trainer = _trainer(tmp_path, str(tmp_path / "capped"), "supervised")
    _compare(trainer)


def test_same_loss_as_trl_on_the_embedded_gemma3(tmp_path):
    trainer = _trainer(tmp_path, models.resolve("embedded:gemma3-270m"), "supervised", model_id="embedded:gemma3-270m")
    loss = _compare(trainer)
    assert 0 < loss < 30


def test_chunking_does_not_change_the_result():
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(37, 16, generator=gen, requires_grad=True)
    weight = torch.randn(50, 16, generator=gen, requires_grad=True)
    targets = torch.randint(0, 50, (37,), generator=gen)
    results = []
    for chunk in (1, 5, 37, 100):
        total, _ = supervised_cross_entropy(hidden, weight, targets, 2.0, 1.5, chunk)
        gh, gw = torch.autograd.grad(total * 0.5, [hidden, weight])
        results.append((total.item(), gh, gw))
    reference = torch.nn.functional.cross_entropy(
        torch.tanh(hidden @ weight.T * 1.5 / 2.0) * 2.0, targets, reduction="sum"
    )
    rgh, rgw = torch.autograd.grad(reference * 0.5, [hidden, weight])
    for total, gh, gw in results:
        assert total == pytest.approx(reference.item(), rel=1e-5)
        assert torch.allclose(gh, rgh, atol=1e-5) and torch.allclose(gw, rgw, atol=1e-5)


def test_a_loss_that_disagrees_with_trl_falls_back_to_trls_path(tmp_path, monkeypatch, caplog):
    """The start-up check: where the supervised-only loss differs from TRL's on the first batch,
    the trainer keeps TRL's loss and says so; training steps then never call the fast path."""
    real = fastloss.supervised_loss

    def off_by_one(causal_lm, inputs, num_items_in_batch=None):
        loss, count, correct = real(causal_lm, inputs, num_items_in_batch)
        return loss + 1.0, count, correct

    monkeypatch.setattr(fastloss, "supervised_loss", off_by_one)
    with caplog.at_level("WARNING"):
        trainer = _trainer(tmp_path, models.resolve("random:gemma4-tiny"), "supervised")
    assert trainer.loss_path == "trl"
    assert "differs from TRL's" in caplog.text and "using TRL's loss" in caplog.text
    monkeypatch.setattr(
        fastloss, "supervised_loss", lambda *args, **kwargs: pytest.fail("fast path used after fallback")
    )
    trainer.model.train()
    assert float(trainer.compute_loss(trainer.model, dict(_batch(trainer)))) > 0
