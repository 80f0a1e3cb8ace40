"""`python -m tagent_client.cli`: the `tagent` command."""

from tagent_client.cli.main import main

main()
