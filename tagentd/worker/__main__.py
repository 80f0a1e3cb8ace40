"""`python -m tagentd.worker`: one worker process (see tagentd/worker/process.py)."""

from tagentd.worker.process import main

if __name__ == "__main__":
    main()
