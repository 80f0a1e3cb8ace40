"""The documentation runs: every snippet and command of README.md and docs/*.md, as a new user would.

`docs_harness.py` says how each block is run (Python in a fresh interpreter, `$ ` commands
with bash against a real daemon in a sandboxed HOME, TOML as a pipeline or a config file)
and how a block is marked as not runnable. Beyond the blocks, the prose must not drift
either: every `tagent ...` / `tagentd ...` it names is a real command with real options,
every link and repository path exists, every model string is one pydantic-ai knows.

Issue 11, finding 8: docs that referred to files outside the repository, commands that do
not exist and snippets that did not run.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest
from docs_harness import REPO, Block, DocsError, Sandbox, read_blocks, run_markdown

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
ALL_MARKDOWN = [*DOCS, REPO / "bench" / "README.md"]
#: Investigation notes: their commands are other programs' (TAgent 0.7.1 has a `tagent` of its own), but their
#: links and repository paths must hold like any page's.
NOTES = sorted((REPO / "docs" / "research").glob("*.md"))
#: Blocks that cannot run here (installing, systemd, directory layouts and diagrams, a local LLM server, outputs
#: of a full or read-only disk and of a crashing step). Keep it small: a block that can run should.
MAX_SKIPPED = 14


def _id(path: Path) -> str:
    return str(path.relative_to(REPO))


@pytest.mark.timeout(300)
@pytest.mark.parametrize("path", DOCS, ids=_id)
def test_every_block_of_the_file_runs(path: Path) -> None:
    """Given a fresh sandbox (HOME, runtime dir, no daemon), when every block runs in order, then none fails."""
    run_markdown(path)


def test_every_block_is_runnable_or_marked_and_few_are_skipped() -> None:
    # Given every block of every documentation file
    blocks = [b for path in DOCS for b in read_blocks(path)]

    # Then each is runnable or explicitly marked, and the marked ones stay few (each with a reason)
    assert [b.where for b in blocks if b.kind == "unknown"] == []
    skipped = [b for b in blocks if b.kind == "skip"]
    assert all(re.fullmatch(r"\(.+\)", b.directive[1]) for b in skipped if b.directive), \
        [b.where for b in skipped if b.directive and not b.directive[1]]
    assert len(skipped) <= MAX_SKIPPED, [f"{b.where} {b.directive}" for b in skipped]
    assert sum(b.kind != "skip" for b in blocks) >= 15  # the extraction still finds the blocks


@pytest.mark.timeout(120)
def test_the_harness_fails_when_a_command_or_a_snippet_breaks(tmp_path: Path) -> None:
    # Given documents with a command that does not exist, a failing command, a broken snippet,
    # an unmarked block that cannot run, and RUN with no run to stand for
    broken = {
        "no such command": "```\n$ tagent follow RUN_ID\n```\n",
        "fails": "```\n$ tagent status nosuchrun\n```\n",
        "snippet": "```python\nfrom tagent_client import Pipline\n```\n",
        "unmarked": "```\nsome output\n```\n",
        "no run": "```\n$ tagent status RUN\n```\n",
    }
    for what, text in broken.items():
        doc = tmp_path / f"{what.replace(' ', '_')}.md"
        doc.write_text(text)

        # When it runs, then the harness fails, saying where
        with pytest.raises(DocsError, match=re.escape(f"{doc.name}:1")):
            run_markdown(doc)

    # And a command may fail on purpose when the document says how
    ok = tmp_path / "ok.md"
    ok.write_text("<!-- docs-test: exit 6 -->\n```\n$ tagent status nosuchrun\n```\n\n"
                  "<!-- docs-test: skip (an example of output) -->\n```\nsome output\n```\n")
    assert [b.where for b in run_markdown(ok)] == ["ok.md:7"]


def test_a_python_block_sees_the_blocks_before_it_and_the_sandbox() -> None:
    with Sandbox() as sandbox:
        sandbox.run_python("import os\nx = os.environ['TAGENT_MODEL']", "a.md:1")
        sandbox.run_python("assert x == 'test' and os.getcwd().endswith('checkout')", "a.md:5")
        sandbox.run_python("assert (__import__('pathlib').Path('pipelines') / 'examples' / 'research.py').exists()",
                           "a.md:9")


# -- the prose ---------------------------------------------------------------------------------

INLINE_CODE = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")


def _mentions(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every `tagent ...` / `tagentd ...` in inline code or a `$ ` line, split at pipes."""
    found = []
    in_block = False
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip().startswith("```"):
            in_block = not in_block
            continue
        spans = [line.strip()[2:]] if in_block and line.strip().startswith("$ ") else [] if in_block else INLINE_CODE.findall(line)
        for span in spans:
            for part in re.split(r"\|\|?|&&|;", span):
                words = part.split("#")[0].split()
                while words and re.match(r"^[A-Z_]+=", words[0]):
                    words.pop(0)  # VAR=value before the command
                if words and words[0] in ("tagent", "tagentd"):
                    found.append((number, " ".join(words)))
    return found


def _check_command(text: str) -> str | None:
    """None if `text` names a real command with its real options and no more arguments than it takes, else what is wrong.

    Placeholders are fine (`tagent status RUN`), so are optional parts in brackets (`[--fast]`);
    a bare mention (`tagent retry`) need not give every argument.
    """
    from tagent_client.cli.main import cli as tagent
    from tagentd.cli.main import cli as tagentd

    try:
        words = shlex.split(text)
    except ValueError:
        words = text.split()
    # `[--fast]` is an optional option; `[flags]`, `...` and redirections stand for nothing to check
    words = [w.strip("[]") for w in words
             if w.strip("[]") not in ("", "...") and not re.match(r"^\[[^-]|^\d?[<>]", w)]
    command: click.Command = {"tagent": tagent, "tagentd": tagentd}[words[0]]
    chain = [command]
    positional: list[str] = []
    rest = iter(words[1:])
    for word in rest:
        if isinstance(command, click.Group) and not word.startswith("-"):
            if word not in command.commands:
                return f"{' '.join(c.name or '' for c in chain)} has no command {word!r}"
            command = command.commands[word]
            chain.append(command)
            continue
        if word.startswith("-") and len(word) > 1:
            name = word.split("=")[0]
            found = [p for c in chain for p in c.params if name in (*p.opts, *p.secondary_opts)]
            if not found and name not in ("--help", "-h"):
                return f"{' '.join(c.name or '' for c in chain)} has no option {name}"
            if found and isinstance(found[0], click.Option) and not (found[0].is_flag or found[0].count) and "=" not in word:
                next(rest, None)  # the option's value
            continue
        positional.append(word)
    takes = [p.nargs for p in command.params if isinstance(p, click.Argument)]
    if -1 not in takes and len(positional) > sum(takes):
        return f"{' '.join(c.name or '' for c in chain)} takes {sum(takes)} argument(s), not {len(positional)}: {positional}"
    return None


@pytest.mark.parametrize("path", ALL_MARKDOWN, ids=_id)
def test_every_command_named_in_the_text_exists(path: Path) -> None:
    wrong = [f"{_id(path)}:{line}: `{text}`: {problem}" for line, text in _mentions(path)
             if (problem := _check_command(text)) is not None]
    assert wrong == []


LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
REPO_PATH = re.compile(r"(?<![\w/.~-])((?:docs|tests|tagentd|client|bench|pipelines|systemd)/[\w./@-]*\w)")


@pytest.mark.parametrize("path", [*ALL_MARKDOWN, *NOTES], ids=_id)
def test_links_and_paths_point_into_the_repository(path: Path) -> None:
    text = path.read_text()
    # Then every relative link is a file of the repository
    broken = [target for target in LINK.findall(text)
              if not re.match(r"^[a-z]+://", target) and not (path.parent / target).exists()]
    assert broken == [], f"{path.name} links to missing files"
    # And every repository path it names exists (directories named in the text exist too)
    missing = sorted({p for p in REPO_PATH.findall(text) if not (REPO / p).exists() and not _is_pattern(p)})
    assert missing == [], f"{path.name} names paths that are not in the repository"
    # And nothing points at a machine outside it
    assert not re.search(r"ARCHITECTURE\.md|/work/|/tmp/venv", text)


def _is_pattern(path: str) -> bool:
    """A path that stands for many (`tests/<name>.py`) is not one to look up."""
    return any(ch in path for ch in "<>*")


MODEL_STRING = re.compile(r"`((?:openai|anthropic|google[\w-]*|groq|mistral|cohere|bedrock|gemini|huggingface):[\w.:-]+)`")


def test_model_strings_in_the_docs_are_known_to_the_installed_pydantic_ai() -> None:
    from pydantic_ai.exceptions import UserError
    from pydantic_ai.models import infer_model

    names = sorted({m for path in DOCS for m in MODEL_STRING.findall(path.read_text())})
    assert names, "no model strings found: the pattern is stale"
    unknown = []
    for name in names:
        try:
            infer_model(name)
        except ImportError:
            pass  # a provider whose SDK is an extra (pip install 'tagentd[google]'): the docs say so
        except UserError as exc:
            if "Unknown model" in str(exc):
                unknown.append(f"{name}: {exc}")
        except Exception:  # noqa: BLE001 - e.g. a missing API key: the name itself was understood
            pass
    assert unknown == []


def test_block_kinds_are_what_the_harness_runs() -> None:
    doc = [Block(Path("x.md"), 1, "python", "x = 1\n"), Block(Path("x.md"), 2, "", "$ tagent runs\noutput\n"),
           Block(Path("x.md"), 3, "toml", "[[steps]]\nname='a'\n"), Block(Path("x.md"), 4, "toml", "workers = 2\n"),
           Block(Path("x.md"), 5, "ini", "[Service]\n"), Block(Path("x.md"), 6, "", "a\n", ("skip", "(why)"))]
    assert [b.kind for b in doc] == ["python", "shell", "pipeline-toml", "config-toml", "unknown", "skip"]
    assert Block(Path("x.md"), 1, "", "$ tagent logs RUN \\\n  -f\n$ tagentd stop\n").commands() == \
        ["tagent logs RUN  -f", "tagentd stop"]
