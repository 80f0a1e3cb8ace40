"""Temporary old path of tagent_client.define.pipeline and .step (issue 12): tagentd/ and tests/ import it until they are rewritten."""

from .define.pipeline import Pipeline  # noqa: F401
from .define.step import PipelineStep, schema_ref  # noqa: F401
from .define.validation import BUILTIN_TOOLS  # noqa: F401
