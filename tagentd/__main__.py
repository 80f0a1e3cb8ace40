"""`python -m tagentd` is the `tagentd` command (the background start re-executes it this way)."""

from tagentd.cli.main import main

if __name__ == "__main__":
    main()
