"""The `tagent` command (main.py); `python -m tagent_client.cli` runs it too."""
