"""Old path of the in-process runner, kept because the docs once imported `RunConfig` from here: it is
`tagent_client.run.local`, and its public names are `tagent_client`'s own (`from tagent_client import RunConfig`)."""

from .run.local import RunConfig, run_agent, run_pipeline  # noqa: F401
