"""Summarise every document in a folder: one summary per file, and a digest of them all.

    collect (Python: read the folder) -> summarise (agent, one task per document, in parallel)
            -> digest (Python: the agent's summaries with each file's size and lead sentences)

`collect` and `digest` do the work that needs no model: they read the files, count their
words and pick each file's most telling sentences (scored by how many of the file's frequent
words they hold), so the digest is useful on the offline `test` model too.

Params (`--param NAME=VALUE`; the defaults are the `params=` of the Pipeline below):
    folder     the folder to summarise; relative to this file's folder   default "samples/documents"
    pattern    which files (a glob)                                      default "*.*"
    max_files  at most this many files, by name                          default 20
    max_chars  characters of each file the agent reads                   default 6000
    sentences  lead sentences kept per file                              default 2

Run it (agent steps use the run's model; `test` runs offline, without an API key):
    tagent submit summarise_folder.py --model test --follow
    tagent submit summarise_folder.py --param folder=/path/to/notes --param pattern='*.md' --model test --follow

Change first: `folder` (an absolute path: the daemon does not know your working directory),
and the `summarise` goal and `Summary` schema, for what you need to know of each document.
"""

import re
from collections import Counter
from pathlib import Path

from pydantic import BaseModel, Field

from tagent_client import ExecutionMode, Pipeline

HERE = Path(__file__).resolve().parent
WORD = re.compile(r"[A-Za-z][A-Za-z'-]{3,}")


class Summary(BaseModel):
    title: str = Field(description="A title for the document")
    summary: str = Field(description="What the document says, in two sentences")
    key_points: list[str]


summarise_folder = Pipeline(
    "summarise_folder",
    description="Summarise every document in a folder",
    params={"folder": "samples/documents", "pattern": "*.*", "max_files": 20, "max_chars": 6000, "sentences": 2},
)


@summarise_folder.task()
def collect(ctx, folder: str, pattern: str, max_files: int, max_chars: int) -> dict:
    """The folder's matching text files (name, words, text cut to max_chars), by name."""
    root = Path(folder).expanduser() if Path(folder).expanduser().is_absolute() else HERE / folder
    if not root.is_dir():
        raise NotADirectoryError(f"folder {root} does not exist or is no directory: pass --param folder=DIR")
    documents = []
    for path in sorted(p for p in root.glob(pattern) if p.is_file())[:max_files]:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            ctx.log.warning("skipped %s: not UTF-8 text", path.name)
            continue
        documents.append({"name": path.name, "words": len(text.split()), "text": text[:max_chars]})
    ctx.log.info("collected %d document(s) from %s", len(documents), root)
    return {"folder": str(root), "documents": documents}


summarise_folder.step(
    "summarise",
    goal="Summarise the document in item (its name and text)",
    constraints=["Use only what the document says", "Keep each key point to one line"],
    depends_on=["collect"],
    execution_mode=ExecutionMode.PARALLEL_MERGE,
    over="collect.documents",
    output_schema=Summary,
)


def lead_sentences(text: str, keep: int) -> list[str]:
    """The `keep` sentences holding most of the text's frequent words, in the order they appear."""
    prose = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))  # no headings
    sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+|\n+", prose) if len(s.split()) >= 4]
    frequent = Counter(w.lower() for w in WORD.findall(text))
    ranked = sorted(range(len(sentences)),
                    key=lambda i: -sum(frequent[w.lower()] for w in WORD.findall(sentences[i])) / len(sentences[i].split()))
    return [sentences[i] for i in sorted(ranked[:keep])]


@summarise_folder.task(depends_on=["collect", "summarise"], final=True)
def digest(ctx, collect: dict, summarise: list, sentences: int) -> dict:
    """One entry per document: the agent's summary, and the file's size and lead sentences (no model involved)."""
    entries = []
    for document, summary in zip(collect["documents"], summarise):
        summary = Summary.model_validate(summary)
        entries.append({"file": document["name"], "words": document["words"], "title": summary.title,
                        "summary": summary.summary, "key_points": summary.key_points,
                        "lead": lead_sentences(document["text"], sentences)})
    lines = [f"# Digest of {collect['folder']} ({len(entries)} documents)"]
    for e in entries:
        lines += ["", f"## {e['file']} ({e['words']} words): {e['title']}", e["summary"], *[f"> {s}" for s in e["lead"]]]
    return {"folder": collect["folder"], "documents": entries, "total_words": sum(e["words"] for e in entries),
            "markdown": "\n".join(lines)}
