"""How users describe pipelines: `Pipeline` and its steps, conditions, the `Plan` they become, documents."""
