"""`tagent templates` and `tagent new` (issue 14, point 5): list the template library, start a file from one.

Neither command needs a daemon. `new` copies the template and its sample data, refuses to overwrite
without --force, and answers an unknown name with the closest one. The copy runs from its new place.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from tagent_client import Pipeline, run_agent
from tagent_client.cli.main import cli
from tagent_client.define.templates import TEMPLATES_DIR, list_templates
from tagent_client.errors import exit_code_for

REPO = Path(__file__).resolve().parent.parent


def tagent(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_templates_lists_name_summary_and_params_with_defaults() -> None:
    # When the library is listed
    done = tagent("templates")
    # Then each template has a line with its name and summary, and one with its params and defaults
    assert done.exit_code == 0, done.output
    lines = done.output.splitlines()
    assert lines[0].split() == ["NAME", "SUMMARY"]
    row = next(i for i, line in enumerate(lines) if line.startswith("company-research "))
    assert "Research a company" in lines[row]
    assert lines[row + 1].split("params: ")[1] == "company=Acme Corp, audience=investment committee"
    names = [line.split()[0] for line in lines[1:] if not line.startswith(" ")]
    assert names == sorted(names) and len(names) >= 6
    assert {"company-research", "ecommerce-analysis", "summarise-folder", "multi-source-research", "sensor-monitor",
            "review-loop"} <= set(names)


def test_templates_json_is_only_json() -> None:
    # When listed with --json
    done = tagent("templates", "--json")
    # Then stdout is one JSON document describing each template
    listed = json.loads(done.output)
    by_name = {t["name"]: t for t in listed}
    assert by_name["summarise-folder"]["params"]["folder"] == "samples/documents"
    assert by_name["summarise-folder"]["sample_data"] == ["samples/documents"]
    assert Path(by_name["review-loop"]["path"]) == TEMPLATES_DIR / "review_loop.py"


def test_new_copies_the_template_and_its_sample_data_and_the_copy_runs(tmp_path: Path) -> None:
    # Given an empty folder
    target = tmp_path / "my_summary.py"
    # When a pipeline file is started from a template that reads sample data
    done = tagent("new", str(target), "--template", "summarise-folder")
    # Then the file is the template, its sample documents are next to it, and the next steps are printed
    assert done.exit_code == 0, done.output
    assert target.read_text() == (TEMPLATES_DIR / "summarise_folder.py").read_text()
    copied = sorted(p.name for p in (tmp_path / "samples" / "documents").iterdir())
    assert copied == sorted(p.name for p in (TEMPLATES_DIR / "samples" / "documents").iterdir())
    assert f"created {target} from template summarise-folder" in done.output
    assert f"tagent submit {target} --model test --follow" in done.output
    # and the copy runs from its new place, on its own copy of the samples
    result = run_agent(Pipeline.load(target), model="test")
    assert result.success and result.final_output["folder"] == str(tmp_path / "samples" / "documents")


def test_new_refuses_to_overwrite_without_force_and_keeps_existing_sample_data(tmp_path: Path) -> None:
    # Given a file and a sample folder of the user's that are already there
    target = tmp_path / "mine.py"
    target.write_text("# my own work\n")
    mine = tmp_path / "samples" / "documents"
    mine.mkdir(parents=True)
    (mine / "keep.txt").write_text("mine")
    # When a template is copied over it without --force
    refused = tagent("new", str(target), "--template", "summarise-folder")
    # Then nothing changes, and the message says what to do
    assert refused.exit_code == exit_code_for("invalid_request")
    assert refused.output.strip() == f"tagent: {target} exists; pass --force to overwrite it, or choose another file name"
    assert target.read_text() == "# my own work\n"
    # When it is repeated with --force
    forced = tagent("new", str(target), "--template", "summarise-folder", "--force")
    # Then the file is replaced, and the user's sample folder is kept as it is
    assert forced.exit_code == 0, forced.output
    assert target.read_text() == (TEMPLATES_DIR / "summarise_folder.py").read_text()
    assert [p.name for p in mine.iterdir()] == ["keep.txt"] and "exists, kept as it is" in forced.output


def test_new_with_an_unknown_template_suggests_the_closest(tmp_path: Path) -> None:
    # When a misspelt template name is given
    done = tagent("new", str(tmp_path / "x.py"), "--template", "company-reserch")
    # Then it exits not_found with the closest name and where the list is, and writes nothing
    assert done.exit_code == exit_code_for("not_found")
    assert done.output.startswith("tagent: no template 'company-reserch'; did you mean 'company-research'? "
                                  "('tagent templates' lists them: ")
    assert not (tmp_path / "x.py").exists()


def test_new_accepts_the_file_name_form_and_refuses_a_directory(tmp_path: Path) -> None:
    # When the template is named as its file, Then it is found
    assert tagent("new", str(tmp_path / "a.py"), "--template", "company_research.py").exit_code == 0
    # When the destination is a directory, Then it is refused with the file name to give instead
    done = tagent("new", str(tmp_path), "--template", "company-research")
    assert done.exit_code != 0 and "is a directory" in done.output


def test_every_template_file_is_package_data_of_the_client(tmp_path: Path) -> None:
    """The templates must be found when the client is pip-installed, not only in a checkout."""
    # Given the client's files as setuptools lays them out for a wheel (build_py, the step that fills it),
    # built from a copy of client/ so that the checkout stays clean
    pytest.importorskip("setuptools")
    source = tmp_path / "client"
    shutil.copytree(REPO / "client", source, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build"))
    build = subprocess.run([sys.executable, "-c", "import sys, setuptools; sys.argv = sys.argv[1:]; setuptools.setup()",
                            "setup.py", "-q", "build_py", "--build-lib", str(tmp_path / "lib")], cwd=source,
                           capture_output=True, text=True, timeout=120, check=False)
    assert build.returncode == 0, build.stderr
    # Then it holds every template and every sample file
    built = tmp_path / "lib" / "tagent_client" / "templates"
    shipped = {p.relative_to(TEMPLATES_DIR) for p in TEMPLATES_DIR.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    assert {t.path.relative_to(TEMPLATES_DIR) for t in list_templates()} <= shipped
    assert {p.relative_to(built) for p in built.rglob("*") if p.is_file()} == shipped
