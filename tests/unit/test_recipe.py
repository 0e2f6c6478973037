import pytest
from conftest import ROOT
from pydantic import BaseModel

from pipeline.recipe import Recipe, RecipeError, load_recipe, reference_markdown


@pytest.fixture(autouse=True)
def _in_root(monkeypatch):
    monkeypatch.chdir(ROOT)


@pytest.mark.parametrize("name", ["default", "tiny", "gemma4-26b-a4b"])
def test_shipped_recipes_validate(name):
    recipe = load_recipe(ROOT / "recipes" / f"{name}.yaml")
    assert recipe.name == name
    assert recipe.sampling.max_tokens > 16  # never vLLM's default of 16


def test_defaults_follow_the_paper():
    r = Recipe()
    assert (r.sampling.temperature, r.sampling.top_k, r.sampling.top_p) == (1.6, 20, 0.8)
    assert (r.evaluation.temperatures, r.evaluation.top_k, r.evaluation.top_p) == ([0.9], 20, 0.8)
    t = r.training
    assert (t.adam_beta1, t.adam_beta2, t.weight_decay) == (0.9, 0.95, 0.1)
    assert (t.learning_rate, t.min_learning_rate) == (5e-6, 1e-6)
    assert t.micro_batch_size * t.gradient_accumulation_steps == 32


def _models(model):
    yield model
    for field in model.model_fields.values():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            yield from _models(field.annotation)


def test_every_field_is_described():
    """The recipe reference is rendered from these descriptions: a field without one is a blank row."""
    missing = [
        f"{m.__name__}.{name}" for m in _models(Recipe) for name, f in m.model_fields.items() if not f.description
    ]
    assert missing == []


def test_reference_shows_default_range_and_choices():
    rows = {line.split(" | ")[0]: line for line in reference_markdown().splitlines()}
    assert rows["| `sampling.temperature`"].startswith("| `sampling.temperature` | `1.6` | float >= 0, <= 4 | T_train")
    assert "| `jsonl` / `hf` / `rstar-coder`" in rows["| `prompts.source`"]
    assert "| int >= 1, or `null` |" in rows["| `prompts.limit`"]
    assert '| `["\\ndef ", ' in rows["| `evaluation.stop`"]


def test_unknown_key_names_field_file_and_line(recipe_file):
    path = recipe_file("name: x\nsampling:\n  temperature: 1.0\n  temprature: 1.2\n")
    with pytest.raises(RecipeError) as exc:
        load_recipe(path)
    assert f"{path}:4" in str(exc.value)
    assert "sampling.temprature" in str(exc.value)


def test_wrong_type_and_range_are_named(recipe_file):
    path = recipe_file("sampling:\n  top_k: many\ntraining:\n  micro_batch_size: 0\n")
    with pytest.raises(RecipeError) as exc:
        load_recipe(path)
    message = str(exc.value)
    assert "sampling.top_k" in message and f"{path}:2" in message
    assert "training.micro_batch_size" in message and f"{path}:4" in message


def test_missing_prompt_file_is_named(recipe_file):
    path = recipe_file("prompts:\n  path: data/nope.jsonl\n")
    with pytest.raises(RecipeError, match=r"prompts\.path: file not found: data/nope\.jsonl"):
        load_recipe(path)


def test_missing_recipe_file():
    with pytest.raises(RecipeError, match="recipe file not found"):
        load_recipe("recipes/does-not-exist.yaml")


def test_overrides_are_applied_and_validated(recipe_file):
    path = recipe_file("name: x\n")
    recipe = load_recipe(path, ["sampling.temperature=1.2", "training.lora.target_modules=[q_proj, v_proj]"])
    assert recipe.sampling.temperature == 1.2
    assert recipe.training.lora.target_modules == ["q_proj", "v_proj"]
    with pytest.raises(RecipeError, match="sampling.temperature"):
        load_recipe(path, ["sampling.temperature=-1"])
    with pytest.raises(RecipeError, match="expected KEY.SUB=VALUE"):
        load_recipe(path, ["sampling.temperature"])


def test_expert_lora_requires_zero_dropout(recipe_file):
    path = recipe_file("training:\n  lora:\n    dropout: 0.1\n    target_parameters: [experts.down_proj]\n")
    with pytest.raises(RecipeError, match="dropout must be 0"):
        load_recipe(path)


def test_run_id_is_stable_and_tracks_values():
    a, b = Recipe(), Recipe()
    assert a.resolved_run_id() == b.resolved_run_id()
    b.sampling.temperature = 1.0
    assert a.resolved_run_id() != b.resolved_run_id()
    assert Recipe(run_id="weekly-2026-W48").resolved_run_id() == "weekly-2026-W48"
