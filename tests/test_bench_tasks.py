"""Task loading (the real HumanEval-Infilling files) and hole drawing from a source tree."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from lsp_server.bench import BenchError
from lsp_server.bench.metrics import syntax_valid
from lsp_server.bench.tasks import (DATA_ENV_VAR, DEFAULT_DATA_DIR, REPO_HOLE_KINDS, draw_repo_holes,
                                    load_humaneval, resolve_data_dir, sample_tasks)

needs_data = pytest.mark.skipif(not DEFAULT_DATA_DIR.is_dir(),
                                reason=f"HumanEval-Infilling data not found at {DEFAULT_DATA_DIR}")


def test_default_data_dir_is_beside_the_repository():
    repository = Path(__file__).resolve().parents[1]
    assert DEFAULT_DATA_DIR == repository.parent / "shared" / "benchmarks" / "human-eval-infilling"


def test_data_dir_precedence_and_errors(tmp_path, monkeypatch):
    explicit, from_env = tmp_path / "explicit", tmp_path / "env"
    explicit.mkdir()
    from_env.mkdir()
    monkeypatch.setenv(DATA_ENV_VAR, str(from_env))
    assert resolve_data_dir(str(explicit)) == explicit
    assert resolve_data_dir(None) == from_env
    monkeypatch.setenv(DATA_ENV_VAR, str(tmp_path / "missing"))
    with pytest.raises(BenchError, match=rf"missing \(from \${DATA_ENV_VAR}\)"):
        resolve_data_dir(None)
    with pytest.raises(BenchError, match=r"nowhere \(from --data\)"):
        resolve_data_dir(str(tmp_path / "nowhere"))


@needs_data
@pytest.mark.parametrize("kind, count", [("single-line", 1033), ("multi-line", 5815), ("random-span", 1640),
                                         ("random-span-light", 164), ("example", 1)])
def test_humaneval_files_load_completely(kind, count):
    tasks = load_humaneval(kind, DEFAULT_DATA_DIR)
    assert len(tasks) == count
    assert len({task.task_id for task in tasks}) == count
    assert all(task.kind == kind and task.language == "python" and task.executable for task in tasks)


@needs_data
def test_program_is_the_documented_concatenation():
    task = load_humaneval("single-line", DEFAULT_DATA_DIR)[0]
    with gzip.open(DEFAULT_DATA_DIR / "HumanEval-SingleLineInfilling.jsonl.gz", "rt") as lines:
        raw = json.loads(next(lines))
    assert task.program("MIDDLE") == (raw["prompt"] + "MIDDLE" + raw["suffix"] + "\n" + raw["test"] + "\n"
                                      + f"check({raw['entry_point']})")
    assert task.reference == raw["canonical_solution"] and task.path.endswith(".py") and "/" not in task.path


def test_bad_data_files_get_clear_errors(tmp_path):
    with pytest.raises(BenchError, match="needs .*HumanEval-SingleLineInfilling.jsonl.gz, which does not exist"):
        load_humaneval("single-line", tmp_path)
    with pytest.raises(BenchError, match="unknown task 'two-line'"):
        load_humaneval("two-line", tmp_path)
    (tmp_path / "example_problem.jsonl").write_text('{"task_id": "t/0", "prompt": "x"}\n')
    with pytest.raises(BenchError, match=r"example_problem.jsonl:1: missing or non-text fields: entry_point, suffix"):
        load_humaneval("example", tmp_path)
    (tmp_path / "example_problem.jsonl").write_text("\n{not json\n")
    with pytest.raises(BenchError, match=r"example_problem.jsonl:2: not valid JSON"):
        load_humaneval("example", tmp_path)


def test_sample_tasks_is_seeded_and_keeps_order():
    items = list(range(100))
    first = sample_tasks(items, 10, seed=3)
    assert first == sample_tasks(items, 10, seed=3) == sorted(first)
    assert len(set(first)) == 10 and first != sample_tasks(items, 10, seed=4)
    assert first != items[:10]
    assert sample_tasks(items, None, seed=3) == items == sample_tasks(items, 500, seed=3)


@pytest.fixture
def source_tree(tmp_path):
    files = {
        "pkg/geometry.py": ("import math\n\n\ndef area(radius):\n    if radius < 0:\n        raise ValueError(radius)\n"
                            "    return math.pi * radius ** 2\n\n\nclass Box:\n    def __init__(self, w, h):\n"
                            "        self.w = w\n        self.h = h\n"),
        "web/app.js": ("function total(items) {\n  let sum = 0;\n  for (const item of items) {\n"
                       "    sum += item.price * item.count;\n  }\n  return sum;\n}\n"),
        "cmd/main.go": ("package main\n\nimport \"fmt\"\n\nfunc main() {\n\tfor i := 0; i < 3; i++ {\n"
                        "\t\tfmt.Println(i * i)\n\t}\n}\n"),
        "src/lib.rs": "pub fn double(values: &[i32]) -> Vec<i32> {\n    values.iter().map(|v| v * 2).collect()\n}\n",
        "broken.py": "def broken(:\n    return\n",  # does not parse: never a source of holes
        "node_modules/dep/index.js": "module.exports = function vendored() { return 42; };\n",
        ".hidden/secret.py": "value = compute_something_hidden()\n",
        "notes.txt": "not source code\n",
    }
    for relative, text in files.items():
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (tmp_path / "latin1.py").write_bytes("name = 'caf\xe9'\n".encode("latin-1"))
    return tmp_path


def test_repo_holes_are_real_slices_of_parsable_files(source_tree):
    holes = draw_repo_holes(source_tree, 12, seed=0)
    assert len(holes) == 12
    assert {hole.path for hole in holes} <= {"pkg/geometry.py", "web/app.js", "cmd/main.go", "src/lib.rs"}
    assert len({hole.task_id for hole in holes}) == 12
    for hole in holes:
        original = (source_tree / hole.path).read_text()
        assert hole.prefix + hole.reference + hole.suffix == original
        assert len(hole.reference.strip()) >= 4 and not hole.executable
        assert syntax_valid(hole.language, original)
        whole_lines = (hole.prefix == "" or hole.prefix.endswith("\n")) and hole.reference.endswith("\n")
        if hole.kind == "repo-line":
            assert whole_lines and hole.reference.count("\n") == 1
        elif hole.kind == "repo-block":
            assert whole_lines and hole.reference.count("\n") >= 2
        else:
            assert hole.kind == "repo-span" and not whole_lines
    assert [hole.kind for hole in holes[:3]] == list(REPO_HOLE_KINDS)


def test_repo_holes_are_deterministic_per_seed_and_capped_by_the_tree(source_tree):
    assert draw_repo_holes(source_tree, 8, seed=5) == draw_repo_holes(source_tree, 8, seed=5)
    assert draw_repo_holes(source_tree, 8, seed=5) != draw_repo_holes(source_tree, 8, seed=6)
    everything = draw_repo_holes(source_tree, 10_000, seed=0)
    assert 12 < len(everything) < 10_000
    assert len({hole.task_id for hole in everything}) == len(everything)


def test_repo_hole_errors(tmp_path):
    with pytest.raises(BenchError, match="not a directory"):
        draw_repo_holes(tmp_path / "missing", 5, seed=0)
    with pytest.raises(BenchError, match="at least 1"):
        draw_repo_holes(tmp_path, 0, seed=0)
    assert draw_repo_holes(tmp_path, 5, seed=0) == []
