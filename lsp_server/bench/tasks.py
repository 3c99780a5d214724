"""Benchmark tasks: HumanEval-Infilling loaders, and holes drawn with tree-sitter from any local source tree."""

from __future__ import annotations

import functools
import gzip
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

import tree_sitter

from lsp_server.bench import BenchError
from lsp_server.languages import LANGUAGES, language_for

DATA_ENV_VAR = "DIFFGEMMA_BENCH_DATA"
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "benchmarks" / "human-eval-infilling"
# Upstream's data.py names the random-span files without "Infilling"; these are the real names.
HUMANEVAL_FILES = {
    "single-line": "HumanEval-SingleLineInfilling.jsonl.gz",
    "multi-line": "HumanEval-MultiLineInfilling.jsonl.gz",
    "random-span": "HumanEval-RandomSpanInfilling.jsonl.gz",
    "random-span-light": "HumanEval-RandomSpanInfillingLight.jsonl.gz",
    "example": "example_problem.jsonl",  # one problem, for smoke tests of the harness
}
HUMANEVAL_FIELDS = ("task_id", "entry_point", "prompt", "suffix", "canonical_solution", "test")

REPO_HOLE_KINDS = ("repo-line", "repo-block", "repo-span")
SKIPPED_DIRECTORIES = {"node_modules", "__pycache__", "venv", "build", "dist", "target", "site-packages"}
MAX_SOURCE_BYTES = 256_000  # larger files are usually generated or vendored
MIN_HOLE_CHARACTERS = 4  # non-blank characters, so that a hole is never a lone bracket or name
MAX_BLOCK_LINES = 12
MAX_SPAN_BYTES = 120


@dataclass(frozen=True)
class InfillTask:
    task_id: str
    kind: str  # a HUMANEVAL_FILES key or a REPO_HOLE_KINDS entry
    language: str  # a LanguageSpec name of lsp_server.languages
    path: str  # the file name a client opens the document as, relative
    prefix: str  # text before the hole
    suffix: str  # text after the hole
    reference: str  # the hole's true contents
    test: str | None = None  # defines check(candidate); None where only text metrics apply
    entry_point: str | None = None

    @property
    def executable(self) -> bool:
        return self.test is not None

    def program(self, completion: str) -> str:
        """The program whose normal completion means the completion passes (HumanEval-Infilling's definition)."""
        if self.test is None:
            raise ValueError(f"task {self.task_id} has no test to execute")
        return f"{self.prefix}{completion}{self.suffix}\n{self.test}\ncheck({self.entry_point})"


def resolve_data_dir(explicit: str | None) -> Path:
    """--data, else $DIFFGEMMA_BENCH_DATA, else ../shared/benchmarks/human-eval-infilling beside the repository."""
    chosen = explicit or os.environ.get(DATA_ENV_VAR)
    data_dir = Path(chosen) if chosen else DEFAULT_DATA_DIR
    if not data_dir.is_dir():
        origin = "--data" if explicit else f"${DATA_ENV_VAR}" if chosen else "the default data path"
        raise BenchError(f"HumanEval-Infilling data directory not found: {data_dir} (from {origin}); "
                         f"pass --data DIR or set {DATA_ENV_VAR}")
    return data_dir


def load_humaneval(kind: str, data_dir: Path) -> list[InfillTask]:
    if kind not in HUMANEVAL_FILES:
        raise BenchError(f"unknown task {kind!r}; choose from {', '.join(HUMANEVAL_FILES)}")
    path = data_dir / HUMANEVAL_FILES[kind]
    if not path.is_file():
        raise BenchError(f"task {kind!r} needs {path}, which does not exist")
    opener = gzip.open if path.suffix == ".gz" else open
    tasks = []
    with opener(path, "rt", encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise BenchError(f"{path}:{number}: not valid JSON: {error}") from None
            missing = [name for name in HUMANEVAL_FIELDS if not isinstance(record.get(name), str)]
            if missing:
                raise BenchError(f"{path}:{number}: missing or non-text fields: {', '.join(missing)}")
            tasks.append(InfillTask(
                task_id=record["task_id"], kind=kind, language="python",
                path=record["task_id"].replace("/", "_") + ".py", prefix=record["prompt"], suffix=record["suffix"],
                reference=record["canonical_solution"], test=record["test"], entry_point=record["entry_point"]))
    if not tasks:
        raise BenchError(f"{path} holds no tasks")
    return tasks


def sample_tasks(tasks: list[InfillTask], limit: int | None, seed: int) -> list[InfillTask]:
    """A seeded random subset of `limit` tasks, in their original order (the first N would all be early problems)."""
    if limit is None or limit >= len(tasks):
        return list(tasks)
    chosen = sorted(random.Random(seed).sample(range(len(tasks)), limit))
    return [tasks[index] for index in chosen]


@functools.cache
def parser_for(language: str) -> tree_sitter.Parser:
    """A parser for a language of lsp_server.languages, by name (not shared between threads)."""
    specs = {spec.name: spec for spec in LANGUAGES if spec.has_grammar}
    return tree_sitter.Parser(specs[language].ts_language)


def draw_repo_holes(root: Path, count: int, seed: int) -> list[InfillTask]:
    """Up to `count` holes from the source files under `root`: whole lines, blocks of whole lines and spans of
    syntax nodes, taken in turn, one per file per pass over the files in a seeded order. Files that do not parse
    cleanly are skipped, so every reference is syntactically valid in place."""
    if not root.is_dir():
        raise BenchError(f"--repo {root}: not a directory")
    if count < 1:
        raise BenchError(f"the number of holes must be at least 1, got {count}")
    rng = random.Random(seed)
    files = _source_files(root)
    rng.shuffle(files)
    candidates: dict[Path, dict[str, list[tuple[int, int]]]] = {}
    holes: list[InfillTask] = []
    while len(holes) < count:
        drawn_this_pass = 0
        for path in files:
            if len(holes) == count:
                break
            if path not in candidates:
                candidates[path] = _hole_candidates(path)
            wanted = REPO_HOLE_KINDS[len(holes) % len(REPO_HOLE_KINDS)]
            kinds = [wanted] + [kind for kind in REPO_HOLE_KINDS if kind != wanted]
            kind = next((kind for kind in kinds if candidates[path][kind]), None)
            if kind is None:
                continue
            spans = candidates[path][kind]
            start, end = spans.pop(rng.randrange(len(spans)))
            holes.append(_repo_task(root, path, kind, start, end))
            drawn_this_pass += 1
        if drawn_this_pass == 0:
            break
    return holes


def _source_files(root: Path) -> list[Path]:
    files = []
    for directory, subdirectories, names in os.walk(root):
        subdirectories[:] = sorted(name for name in subdirectories
                                   if not name.startswith(".") and name not in SKIPPED_DIRECTORIES)
        for name in sorted(names):
            path = Path(directory) / name
            if language_for(uri=str(path)).has_grammar and not path.is_symlink():
                files.append(path)
    return files


def _hole_candidates(path: Path) -> dict[str, list[tuple[int, int]]]:
    """Byte ranges of every possible hole of each kind in one file; none if it is unusable."""
    empty: dict[str, list[tuple[int, int]]] = {kind: [] for kind in REPO_HOLE_KINDS}
    if path.stat().st_size > MAX_SOURCE_BYTES:
        return empty
    source = path.read_bytes()
    try:
        source.decode("utf-8")
    except UnicodeDecodeError:
        return empty
    tree = parser_for(language_for(uri=str(path)).name).parse(source)
    if tree.root_node.has_error:
        return empty

    def line_start(offset: int) -> int:
        return source.rfind(b"\n", 0, offset) + 1

    def line_end(offset: int) -> int:  # just past the line's newline
        newline = source.find(b"\n", offset)
        return len(source) if newline < 0 else newline + 1

    found = {kind: set() for kind in REPO_HOLE_KINDS}
    for node in _named_nodes(tree):
        if "comment" in node.type:
            continue
        start, end = node.start_byte, node.end_byte
        text = source[start:end]
        if len(text.strip()) < MIN_HOLE_CHARACTERS:
            continue
        first, last = line_start(start), line_end(end)
        begins_line = not source[first:start].strip()
        ends_line = not source[end:last].strip()
        line = (first, line_end(start))
        if begins_line and len(source[line[0]:line[1]].strip()) >= MIN_HOLE_CHARACTERS:
            found["repo-line"].add(line)  # a statement or expression opens this line: the whole line is a hole
        if begins_line and ends_line and 2 <= text.count(b"\n") + 1 <= MAX_BLOCK_LINES and (first, last) != (
                0, len(source)):
            found["repo-block"].add((first, last))
        if not (begins_line and ends_line) and len(text) <= MAX_SPAN_BYTES:
            found["repo-span"].add((start, end))
    return {kind: sorted(spans) for kind, spans in found.items()}


def _named_nodes(tree: tree_sitter.Tree):
    """Every named node below the root, in document order."""
    cursor = tree.walk()
    if not cursor.goto_first_child():
        return
    while True:
        if cursor.node.is_named:
            yield cursor.node
        if cursor.goto_first_child():
            continue
        while not cursor.goto_next_sibling():
            if not cursor.goto_parent():
                return


def _repo_task(root: Path, path: Path, kind: str, start: int, end: int) -> InfillTask:
    source = path.read_bytes()
    relative = path.relative_to(root).as_posix()
    return InfillTask(task_id=f"{kind}/{relative}:{start}-{end}", kind=kind,
                      language=language_for(uri=str(path)).name, path=relative,
                      prefix=source[:start].decode("utf-8"), suffix=source[end:].decode("utf-8"),
                      reference=source[start:end].decode("utf-8"))
