"""Old path of the in-process runner, kept because the docs once imported `RunConfig` from here: it is
`tagent_client.run.local`, and its public names are `tagent_client`'s own (`from tagent_client import RunConfig`)."""

from .run.agent_api import run_agent  # noqa: F401
from .run.config import RunConfig  # noqa: F401
from .run.local import run_pipeline  # noqa: F401
