"""`python -m tagentd.worker`: one worker process (see tagentd/worker/start.py and process.py)."""

from tagentd.worker.start import main

if __name__ == "__main__":
    main()
