"""The zoo cache: the suite's own directory, and keys that change with the code that makes the weights."""

from dataclasses import replace
from pathlib import Path

from conftest import TEST_CACHE

from advkit.fileio import cache_dir
from advkit.models import architectures, train
from advkit.models.zoo import ZOO, code_hash, recipe_key, training_sources


def test_the_suite_caches_in_its_own_directory(digits_model):
    assert cache_dir() == TEST_CACHE
    assert TEST_CACHE.resolve() != (Path.home() / ".cache" / "advkit").resolve()  # never the user's own cache
    key = recipe_key("digits-cnn", ZOO["digits-cnn"])
    assert (TEST_CACHE / "zoo" / f"digits-cnn-{key}.safetensors").is_file()


def test_the_key_covers_the_architecture_and_training_code():
    sources = training_sources()
    assert Path(architectures.__file__).read_text() in sources
    assert Path(train.__file__).read_text() in sources
    assert any("def train_recipe" in s for s in sources) and any("def seeded_split" in s for s in sources)
    assert code_hash() == code_hash(sources)
    recipe = ZOO["digits-cnn"]
    key = recipe_key("digits-cnn", recipe)
    assert key == recipe_key("digits-cnn", recipe, code=code_hash(sources))
    # an edited architecture (one changed default) or training loop is a different model
    arch_edit = [s.replace("def build(", "def build(  ", 1) if s == sources[0] else s for s in sources]
    train_edit = [s + "\n# lr warm-up changed\n" if s == sources[1] else s for s in sources]
    for edited in (arch_edit, train_edit):
        assert edited != sources
        assert code_hash(edited) != code_hash()
        assert recipe_key("digits-cnn", recipe, code=code_hash(edited)) != key
    assert recipe_key("digits-cnn", replace(recipe, epochs=recipe.epochs + 1)) != key
    assert recipe_key("mnist-cnn", recipe) != key


def test_specs_resolve_through_one_place(digits_model, tmp_path):
    from advkit.errors import AdvkitError
    from advkit.models import io, zoo
    from advkit.models.resolve import model_file, resolve

    assert model_file("zoo:digits-cnn") == zoo.cache_path("digits-cnn") and zoo.cache_path("digits-cnn").is_file()
    assert model_file(str(tmp_path / "m.safetensors")) == tmp_path / "m.safetensors"
    assert resolve("zoo:digits-cnn").info.arch == "digits-cnn"
    try:  # io loads files only; a zoo spec there is a clear error, not a silent second path
        io.load_model("zoo:digits-cnn")
    except AdvkitError as exc:
        assert "a zoo spec, not a file" in str(exc)
    else:
        raise AssertionError("io.load_model must refuse zoo specs")
    for bad in (lambda: resolve("zoo:nope"), lambda: model_file("zoo:nope")):
        try:
            bad()
        except AdvkitError as exc:
            assert "unknown zoo model zoo:nope" in str(exc)
        else:
            raise AssertionError("an unknown zoo model must be an error")
