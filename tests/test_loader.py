"""Tests for loading user pipeline files in a worker (tagentd.worker.loader)."""

from __future__ import annotations

import hashlib
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from tagent_client.define.pipeline import Pipeline
from tagent_client.errors import PipelineLoadError, PipelineValidationError
from tagentd.worker import loader
from tagentd.worker.loader import ModuleCache, find_pipeline, load_module, load_pipeline, schema_classes
from tagentd.worker.wire import source_hash

pytestmark = pytest.mark.timeout(60)

GOOD = """\
from pydantic import BaseModel
from tagent_client import Pipeline


class Facts(BaseModel):
    items: list[str]


research = Pipeline("research")


@research.task(output_schema=Facts)
def search(ctx):
    return Facts(items=["a", "b"])
"""


def write(tmp_path: Path, text: str, name: str = "pipe.py") -> tuple[str, str, str]:
    """Write a pipeline file; returns (path, source, hash) as a worker would receive them."""
    path = tmp_path / name
    source = textwrap.dedent(text)
    path.write_text(source)
    return str(path), source, source_hash(source)


def load_error(cache: ModuleCache, tmp_path: Path, text: str, target: str | None = None) -> str:
    path, source, hash_ = write(tmp_path, text)
    with pytest.raises(PipelineLoadError) as caught:
        cache.pipeline(hash_, path, source, target)
    message = caught.value.message
    assert "\n" not in message
    return message


def test_source_hash_is_sha256_of_the_utf8_text() -> None:
    assert source_hash("héllo") == hashlib.sha256("héllo".encode()).hexdigest()


def test_a_file_read_as_bytes_has_the_hash_of_its_text() -> None:
    # Given a file's bytes, as the folder watcher reads them, and its text, as `tagent submit` sends it
    text = "pipeline = Pipeline('héllo')\n"
    # Then both name the same version of the file (the watcher's seen map and the run store agree)
    assert source_hash(text.encode("utf-8")) == source_hash(text)


def test_a_good_file_loads_as_a_registered_module_and_its_schemas_work(tmp_path: Path) -> None:
    # Given a pipeline file with a pydantic output schema
    path, source, hash_ = write(tmp_path, GOOD)

    # When it is loaded
    pipeline = ModuleCache().pipeline(hash_, path, source, None)

    # Then the pipeline, its module and its schema class are usable by name
    assert isinstance(pipeline, Pipeline) and pipeline.name == "research"
    name = f"tagent_user_{hash_[:16]}"
    assert sys.modules[name].__file__ == path
    facts = schema_classes(pipeline)["search"]
    assert issubclass(facts, BaseModel) and facts.__module__ == name
    assert facts.model_validate({"items": ["x"]}).items == ["x"]
    assert pipeline.plan().step("search").output_schema == f"{name}:Facts"


def test_the_same_text_is_imported_once_and_then_served_from_the_cache(tmp_path: Path) -> None:
    # Given a file whose import has a visible side effect
    counter = tmp_path / "imports.txt"
    path, source, hash_ = write(tmp_path, f"""
        with open({str(counter)!r}, "a") as f:
            f.write("x")
        from tagent_client import Pipeline
        p = Pipeline("once").step("a", fn=lambda: 1)
    """)
    cache = ModuleCache()

    # When it is loaded three times, the last time without its source
    first = cache.module(hash_, path, source)
    second = cache.module(hash_, path, source)
    pipeline = cache.pipeline(hash_, path, None, "p")

    # Then it was executed once and every call returned the same module
    assert first is second
    assert counter.read_text() == "x"
    assert pipeline is first.p
    assert cache.cached_pipeline(hash_, "p") is pipeline


def test_a_file_loaded_again_is_not_validated_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a cache holding a validated pipeline, and a count of the validations
    path, source, hash_ = write(tmp_path, "from tagent_client import Pipeline\np = Pipeline('again').step('a', fn=print)\n")
    cache = ModuleCache()
    pipeline = cache.pipeline(hash_, path, source, None)
    validations: list[str] = []
    real = Pipeline.validate

    def counted(self: Pipeline, *args: Any, **kwargs: Any) -> Pipeline:
        validations.append(self.name)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Pipeline, "validate", counted)

    # When a worker answers three loads of the file (each answer carries its plan)
    plans = [cache.plan(hash_, None, cache.cached_pipeline(hash_, None) or pipeline) for _ in range(3)]

    # Then its plan was made (and the pipeline validated for it) once, and every answer holds the same plan
    assert validations == ["again"]
    assert plans[0] == pipeline.plan() and all(plan is plans[0] for plan in plans)


def test_an_unknown_hash_without_source_is_a_load_error(tmp_path: Path) -> None:
    with pytest.raises(PipelineLoadError, match="not loaded in this worker"):
        ModuleCache().pipeline("f" * 64, str(tmp_path / "gone.py"), None, None)


def test_the_cache_evicts_the_least_recently_used_module(tmp_path: Path) -> None:
    # Given a cache holding two modules
    cache = ModuleCache(max_modules=2)
    files = [write(tmp_path, f"from tagent_client import Pipeline\np = Pipeline('p{i}').step('a', fn=print)\n", f"p{i}.py")
             for i in range(3)]
    cache.pipeline(files[0][2], files[0][0], files[0][1], None)
    cache.module(files[1][2], files[1][0], files[1][1])

    # When the first is used again and a third is loaded
    cache.cached_pipeline(files[0][2], None)
    cache.module(files[2][2], files[2][0], files[2][1])

    # Then the second (least recently used) is gone, from the cache and from sys.modules
    assert files[0][2] in cache and files[2][2] in cache
    assert files[1][2] not in cache
    assert f"tagent_user_{files[1][2][:16]}" not in sys.modules


def test_a_syntax_error_names_the_file_and_line(tmp_path: Path) -> None:
    message = load_error(ModuleCache(), tmp_path, "from tagent_client import Pipeline\n\np = Pipeline('x'\nq = 1 +\n")
    path = str(tmp_path / "pipe.py")
    assert message.startswith(f"{path}:3: syntax error: ")


def test_an_import_error_names_the_line_of_the_innermost_frame_in_the_file(tmp_path: Path) -> None:
    # Given a file whose helper, called at import time, imports a missing module on line 3
    message = load_error(ModuleCache(), tmp_path, """\
        def helper():
            x = 1
            import no_such_module_here
        helper()
    """)
    path = str(tmp_path / "pipe.py")
    assert message == f"{path}:3: ModuleNotFoundError: No module named 'no_such_module_here'"
    assert not any(n.startswith("tagent_user_") and sys.modules[n].__file__ == path for n in list(sys.modules))


def test_sys_exit_at_import_time_is_a_load_error_not_an_exit(tmp_path: Path) -> None:
    message = load_error(ModuleCache(), tmp_path, "import sys\nsys.exit(3)\n")
    assert message.endswith(":2: SystemExit: 3")


def test_sibling_modules_import_and_sys_path_is_restored(tmp_path: Path) -> None:
    # Given a pipeline that imports a module next to it
    (tmp_path / "loader_sibling_helpers.py").write_text("VALUE = 42\n")
    path, source, hash_ = write(tmp_path, """
        from loader_sibling_helpers import VALUE
        from tagent_client import Pipeline
        p = Pipeline("sib").step("a", fn=lambda: VALUE)
    """)
    before = list(sys.path)

    # When it loads
    module = ModuleCache().module(hash_, path, source)

    # Then the sibling was found and sys.path is as it was
    assert module.VALUE == 42
    assert sys.path == before


def test_no_pipeline_at_module_level_is_reported(tmp_path: Path) -> None:
    message = load_error(ModuleCache(), tmp_path, "x = 1\n")
    assert message == f"{tmp_path / 'pipe.py'}: no Pipeline found at module level"


def test_several_pipelines_need_a_target_and_the_target_matches_variable_or_name(tmp_path: Path) -> None:
    # Given a file with two pipelines
    text = """
        from tagent_client import Pipeline
        first = Pipeline("alpha").step("a", fn=print)
        second = Pipeline("beta").step("b", fn=print)
        alias = first
    """
    cache = ModuleCache()

    # When no target is given, the error lists them and points to FILE:NAME
    message = load_error(cache, tmp_path, text)
    assert "2 pipelines found" in message and "first ('alpha')" in message and "FILE:NAME" in message

    # Then a variable name or a pipeline name picks one, and an unknown target lists the choices
    path, source, hash_ = write(tmp_path, text)
    assert cache.pipeline(hash_, path, source, "second").name == "beta"
    assert cache.pipeline(hash_, path, source, "alpha").name == "alpha"
    unknown = load_error(cache, tmp_path, text, target="gamma")
    assert "no pipeline named 'gamma'" in unknown and "second ('beta')" in unknown


def test_find_pipeline_returns_the_only_pipeline(tmp_path: Path) -> None:
    path, source, hash_ = write(tmp_path, GOOD)
    module = ModuleCache().module(hash_, path, source)
    assert find_pipeline(module, None).name == "research"


def test_an_invalid_pipeline_raises_validation_error_with_every_problem(tmp_path: Path) -> None:
    # Given a pipeline with two definition problems
    path, source, hash_ = write(tmp_path, """
        from tagent_client import Pipeline
        p = Pipeline("bad").step("a", fn=print, depends_on=["missing"]).step("b")
    """)

    # When it loads, Then validation reports both, and the module stays cached
    cache = ModuleCache()
    with pytest.raises(PipelineValidationError) as caught:
        cache.pipeline(hash_, path, source, None)
    assert len(caught.value.problems) == 2
    assert any("unknown step 'missing'" in p for p in caught.value.problems)
    assert hash_ in cache


def test_module_level_functions_use_the_process_cache(tmp_path: Path) -> None:
    path, source, hash_ = write(tmp_path, GOOD.replace("research", "research_global"))
    module = load_module(hash_, path, source)
    assert load_pipeline(hash_, path, None) is module.research_global
    assert hash_ in loader.CACHE
