"""`make demo`: start a daemon, run the offline example pipeline through it, show the result, stop.

Uses the user's running daemon if there is one; otherwise starts its own with
private temporary runtime and state dirs and removes them afterwards. Every
step is a real CLI command, printed before it runs, so the demo doubles as a
tour of `tagentd` and `tagent`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

EXAMPLE = Path("pipelines/examples/research.py")


def _bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def _run(argv: list[str], env: dict[str, str], capture: bool = False) -> subprocess.CompletedProcess[str]:
    shown = " ".join(Path(a).name if i == 0 else a for i, a in enumerate(argv))
    print(f"\n$ {shown}", flush=True)
    return subprocess.run(argv, env=env, text=True, capture_output=capture, check=False)


def _daemon_running(env: dict[str, str]) -> bool:
    return subprocess.run([_bin("tagentd"), "status"], env=env, capture_output=True, check=False).returncode == 0


def main() -> int:
    example = Path(sys.argv[1]) if len(sys.argv) > 1 else EXAMPLE
    if not example.exists():
        print(f"demo: {example} not found; run 'make demo' from the repository root", file=sys.stderr)
        return 2
    env = dict(os.environ)
    scratch: Path | None = None
    if not _daemon_running(env):
        scratch = Path(tempfile.mkdtemp(prefix="tagentd-demo-"))
        env["TAGENTD_RUNTIME_DIR"] = str(scratch / "run")
        env["TAGENTD_STATE_DIR"] = str(scratch / "state")
        print(f"demo: starting a private daemon in {scratch} (removed afterwards)")
        if _run([_bin("tagentd"), "start", "--workers", "2"], env).returncode != 0:
            shutil.rmtree(scratch, ignore_errors=True)
            return 1
    else:
        print("demo: using the tagentd that is already running")
    try:
        followed = _run([_bin("tagent"), "submit", str(example), "--param", "company=Acme", "--follow"], env)
        listed = _run([_bin("tagent"), "runs", "--json", "--limit", "1"], env, capture=True)
        run_id = json.loads(listed.stdout)[0]["run_id"] if listed.returncode == 0 else None
        if run_id:
            _run([_bin("tagent"), "status", run_id], env)
            result = _run([_bin("tagent"), "result", run_id, "--json"], env, capture=True)
            if result.returncode == 0:
                data = json.loads(result.stdout)
                print(json.dumps({"final_output": data["final_output"], "token_usage": data["token_usage"]}, indent=2))
        return followed.returncode
    finally:
        if scratch is not None:
            _run([_bin("tagentd"), "stop"], env)
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
