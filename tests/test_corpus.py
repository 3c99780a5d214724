import hashlib
import io
import json
import tarfile
import zipfile
from pathlib import Path

import pytest

from engine.training.corpus import (
    MAX_FILE_BYTES,
    ArchiveSpec,
    LicenceVerdict,
    archive_package,
    build_corpus,
    directory_package,
    fetch_archive,
    heldout_split,
    installed_packages,
    language_of,
    licence_from_classifiers,
    licence_from_metadata,
    licence_from_package_json,
    licence_from_text,
    load_documents,
    main,
)

MIT = LicenceVerdict("MIT", True)
GOOD_PYTHON = '''def running_total(values):
    """Prefix sums of values."""
    totals, current = [], 0
    for value in values:
        current += value
        totals.append(current)
    return totals
'''


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8", newline="")
    return path


def distinct_function(index: int) -> str:
    return f"def function_{index}(x):\n    \"\"\"Number {index}.\"\"\"\n    return x * {index} + {index * 7} - len(str(x))\n"


# -------------------------------------------------------------------------------------- licences


@pytest.mark.parametrize(("text", "expression", "permissive"), [
    ("MIT", "MIT", True),
    ("MIT License", "MIT", True),
    ("Apache 2.0 License", "Apache-2.0", True),
    ("BSD-3-Clause AND 0BSD AND MIT AND Zlib AND CC0-1.0", "BSD-3-Clause AND 0BSD AND MIT AND Zlib AND CC0-1.0", True),
    ("Apache-2.0 WITH LLVM-exception", "Apache-2.0 WITH LLVM-exception", True),
    ("Apache-2.0 WITH Classpath-exception-2.0", "Apache-2.0 WITH Classpath-exception-2.0", False),
    ("Apache-2.0 OR BSD-2-Clause", "Apache-2.0 OR BSD-2-Clause", True),
    ("(MIT OR GPL-3.0-only) AND BSD-3-Clause", "(MIT OR GPL-3.0-only) AND BSD-3-Clause", True),
    ("MPL-2.0 AND MIT", "MPL-2.0 AND MIT", False),
    ("GPL-3.0-or-later", "GPL-3.0-or-later", False),
    ("LGPL-2.1", "LGPL-2.1", False),
    ("UNKNOWN", "UNKNOWN", False),
    ("", "UNKNOWN", False),
    ("Copyright (c) 2020 Someone\n\nPermission is hereby granted, free of charge, to any person", "MIT", True),
    ("Copyright 2019\nRedistribution and use in source and binary forms, with or without", "BSD", True),
])
def test_licence_text_normalisation(text, expression, permissive):
    assert licence_from_text(text) == LicenceVerdict(expression, permissive)


def test_licence_classifiers_combine_with_or():
    verdict = licence_from_classifiers(["License :: OSI Approved :: Apache Software License",
                                        "License :: OSI Approved :: BSD License", "Programming Language :: Python"])
    assert verdict == LicenceVerdict("Apache-2.0 OR BSD", True)
    assert not licence_from_classifiers(["License :: OSI Approved :: GNU General Public License v3 (GPLv3)"]).permissive
    assert licence_from_classifiers(["Programming Language :: Python"]) == LicenceVerdict("UNKNOWN", False)


def test_metadata_prefers_expression_then_field_then_classifiers():
    header = "Metadata-Version: 2.4\nName: x\nVersion: 1\n"
    assert licence_from_metadata(header + "License-Expression: MIT\nLicense: GPL\n").expression == "MIT"
    assert licence_from_metadata(header + "License: BSD\nClassifier: License :: OSI Approved :: MIT License\n"
                                 ).expression == "BSD"
    assert licence_from_metadata(header + "License: UNKNOWN\nClassifier: License :: OSI Approved :: MIT License\n"
                                 ).expression == "MIT"
    assert licence_from_metadata(header) == LicenceVerdict("UNKNOWN", False)
    # A classifier pasted into the License field.
    assert licence_from_metadata(header + "License: License :: OSI Approved :: Apache Software License\n"
                                 ) == LicenceVerdict("Apache-2.0", True)
    # A recognised copyleft field is not overridden by contradicting classifiers.
    assert not licence_from_metadata(header + "License: GPL-3.0\nClassifier: License :: OSI Approved :: MIT License\n"
                                     ).permissive


def test_package_json_licence_forms():
    assert licence_from_package_json({"license": "(MIT OR Apache-2.0)"}).permissive
    assert licence_from_package_json({"license": {"type": "BSD-3-Clause"}}).expression == "BSD-3-Clause"
    assert licence_from_package_json({"licenses": [{"type": "MIT"}, {"type": "GPL-2.0"}]}).permissive
    assert not licence_from_package_json({"license": "SEE LICENSE IN LICENSE.txt"}).permissive
    assert not licence_from_package_json({}).permissive


# ---------------------------------------------------------------------------------------- builder


@pytest.fixture
def messy_tree(tmp_path: Path) -> Path:
    root = tmp_path / "mylib"
    write(root / "good.py", GOOD_PYTHON)
    write(root / "good_copy.py", GOOD_PYTHON)  # sorted after good.py: the later copy is dropped
    write(root / "reformatted_good.py", GOOD_PYTHON.replace("\n", "\r\n").replace("    ", "\t"))
    write(root / "huge.py", "x = 1\n" * (MAX_FILE_BYTES // 6 + 10))
    write(root / "latin1.py", "# caf\xe9\n".encode("latin-1") + GOOD_PYTHON.replace("totals", "t").encode())
    write(root / "generated_pb2.py", "# Generated by the protocol buffer compiler.  DO NOT EDIT!\n" + distinct_function(1))
    write(root / "table.py", "TABLE = [" + ", ".join(str(i) for i in range(400)) + "]\n" + distinct_function(2))
    write(root / "_vendor" / "six.py", distinct_function(3))
    write(root / "eval_harness.py", "# from HumanEval/0\n" + distinct_function(4))
    write(root / "check.py", "def check(candidate):\n    assert candidate(1) == 2\n" + distinct_function(5))
    write(root / "gpl_module.c", "/* This program is free software; GNU General Public License v2 */\n"
                                  "int add(int a, int b) { return a + b; }\nint main(void) { return add(1, 2); }\n")
    write(root / "python2.py", "print 'hello world'\nexec 'x = 1'\n" + "# padding comment line\n" * 3)
    write(root / "tiny.py", "x = 1\n")
    write(root / "bundle.min.js", "function a(){return 1}\n" * 10)
    write(root / "types.d.ts", "export declare function f(x: number): number;\n" * 3)
    write(root / "README.md", "# readme\n" * 20)
    write(root / "vector.h", "#pragma once\nnamespace geometry {\ntemplate <typename T> struct Vector { T x, y; };\n}\n")
    write(root / "plain.h", "#ifndef PLAIN_H\n#define PLAIN_H\nint plain_add(int a, int b);\nint plain_sub(int a, int b);\n#endif\n")
    write(root / "util.js", "export function clamp(value, low, high) {\n  return Math.min(high, Math.max(low, value));\n}\n")
    write(root / "unicode.py", "GREETING = 'héllo wörld 😀'\r\n\tdef_value = '中文'\r\n".replace("\t", "") + distinct_function(6))
    return root


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_build_filters_deduplicates_and_writes_manifest(messy_tree, tmp_path):
    out = tmp_path / "corpus"
    summary = build_corpus([directory_package("mylib", "1.0", MIT, messy_tree, "local")], out,
                           heldout_fraction=0.0, forbidden_roots=())
    documents = {d["path"]: d for d in read_jsonl(out / "train.jsonl")}
    assert set(documents) == {"mylib/good.py", "mylib/vector.h", "mylib/plain.h", "mylib/util.js",
                              "mylib/unicode.py"}
    assert documents["mylib/vector.h"]["language"] == "cpp" and documents["mylib/plain.h"]["language"] == "c"
    assert documents["mylib/unicode.py"]["text"] == (messy_tree / "unicode.py").read_bytes().decode("utf-8")
    assert summary["exclusions"] == {
        "duplicate": 1, "near_duplicate": 1, "too_large": 1, "not_utf8": 1, "generated": 1,
        "minified_or_data": 1, "vendored": 1, "humaneval": 2, "non_permissive_header": 1, "python_syntax": 1,
        "too_small": 1,
    }
    manifest = read_jsonl(out / "manifest.jsonl")
    assert {row["path"] for row in manifest} == set(documents)
    for row in manifest:
        data = (messy_tree / row["path"].removeprefix("mylib/")).read_bytes()
        assert row["sha256"] == hashlib.sha256(data).hexdigest() and row["bytes"] == len(data)
        assert (row["package"], row["version"], row["licence"], row["split"]) == ("mylib", "1.0", "MIT", "train")
    assert read_jsonl(out / "heldout.jsonl") == []
    assert json.loads((out / "summary.json").read_text()) == summary
    assert "| MIT | mylib 1.0 | 5 |" in (out / "LICENSES.md").read_text()


def test_earlier_sources_win_deduplication_and_rejected_licences_contribute_nothing(tmp_path):
    first = write(tmp_path / "first" / "a.py", GOOD_PYTHON).parent
    second = write(tmp_path / "second" / "b.py", GOOD_PYTHON).parent
    write(second / "c.py", distinct_function(9))
    copyleft = write(tmp_path / "copyleft" / "d.py", distinct_function(10)).parent
    summary = build_corpus([
        directory_package("first", "1", MIT, first, "local"),
        directory_package("second", "1", MIT, second, "local"),
        directory_package("copyleft", "1", LicenceVerdict("GPL-3.0-only", False), copyleft, "local"),
    ], tmp_path / "out", heldout_fraction=0.0, forbidden_roots=())
    paths = {row["path"] for row in read_jsonl(tmp_path / "out" / "manifest.jsonl")}
    assert paths == {"first/a.py", "second/c.py"}
    statuses = {row["name"]: row["status"] for row in summary["packages"]}
    assert statuses == {"first": "used", "second": "used", "copyleft": "rejected_licence"}
    assert "copyleft 1: GPL-3.0-only" in (tmp_path / "out" / "LICENSES.md").read_text()


def test_split_is_by_file_deterministic_and_disjoint(tmp_path):
    root = tmp_path / "many"
    for index in range(300):
        write(root / f"module_{index}.py", distinct_function(index))
    package = directory_package("many", "1", MIT, root, "local")
    build_corpus([package], tmp_path / "a", heldout_fraction=0.2, forbidden_roots=())
    build_corpus([package], tmp_path / "b", heldout_fraction=0.2, forbidden_roots=())
    for name in ("train.jsonl", "heldout.jsonl", "manifest.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    train = {d["path"] for d in read_jsonl(tmp_path / "a" / "train.jsonl")}
    heldout = {d["path"] for d in read_jsonl(tmp_path / "a" / "heldout.jsonl")}
    assert not train & heldout and len(train | heldout) == 300
    assert 30 <= len(heldout) <= 90
    for row in read_jsonl(tmp_path / "a" / "manifest.jsonl"):
        assert row["split"] == heldout_split(row["path"], row["sha256"], 0.2)
        assert row["split"] == ("heldout" if row["path"] in heldout else "train")


def test_package_cap_keeps_a_stable_subset(tmp_path):
    root = tmp_path / "big"
    for index in range(50):
        write(root / f"module_{index}.py", distinct_function(index))
    file_bytes = len(distinct_function(10).encode())
    summary = build_corpus([directory_package("big", "1", MIT, root, "local")], tmp_path / "out",
                           max_package_bytes=10 * file_bytes + 5, heldout_fraction=0.0, forbidden_roots=())
    kept = summary["packages"][0]
    assert 8 <= kept["files"] <= 10 and kept["bytes"] <= 10 * file_bytes + 5
    assert summary["exclusions"]["package_cap"] == 50 - kept["files"]
    uncapped = build_corpus([directory_package("big", "1", MIT, root, "local", capped=False)], tmp_path / "all",
                            max_package_bytes=10, heldout_fraction=0.0, forbidden_roots=())
    assert uncapped["packages"][0]["files"] == 50


def test_forbidden_root_is_never_read(tmp_path):
    shared = tmp_path / "shared"
    write(shared / "benchmarks" / "solutions.py", distinct_function(1))
    summary = build_corpus([directory_package("shared", "1", MIT, shared, "local")], tmp_path / "out",
                           heldout_fraction=0.0, forbidden_roots=(shared,))
    assert summary["exclusions"] == {"forbidden_root": 1}
    assert read_jsonl(tmp_path / "out" / "manifest.jsonl") == []


def test_bad_build_arguments_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="heldout_fraction"):
        build_corpus([], tmp_path, heldout_fraction=1.0)
    with pytest.raises(ValueError, match="max_package_bytes"):
        build_corpus([], tmp_path, max_package_bytes=0)


# ---------------------------------------------------------------------------------------- sources


def fake_distribution(site: Path, name: str, version: str, metadata: str, files: dict[str, str]) -> None:
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    write(info / "METADATA", f"Metadata-Version: 2.4\nName: {name}\nVersion: {version}\n{metadata}")
    write(info / "RECORD", "".join(f"{path},,\n" for path in files))
    for path, text in files.items():
        if text:
            write(site / path, text)


def test_installed_packages_follow_the_project_dependency_closure(tmp_path):
    site = tmp_path / "site-packages"
    fake_distribution(site, "app", "0.1", "License: Apache-2.0\nRequires-Dist: goodpkg>=1\n"
                      "Requires-Dist: gplpkg; python_version >= '3'\nRequires-Dist: devtool; extra == 'dev'\n"
                      "Requires-Dist: not-installed-optional\n", {"app/__init__.py": distinct_function(0)})
    fake_distribution(site, "goodpkg", "1.0", "License-Expression: MIT\n", {
        "goodpkg/__init__.py": GOOD_PYTHON,
        "goodpkg/ext.c": "int f(void) { return 1; }\n" * 5,  # binary-wheel C is never taken
        "goodpkg/not_installed.py": "",
        "../../bin/tool.py": "",
    })
    fake_distribution(site, "gplpkg", "2.0", "Classifier: License :: OSI Approved :: GNU General Public License v3 "
                      "(GPLv3)\n", {"gplpkg/__init__.py": distinct_function(1)})
    fake_distribution(site, "devtool", "3.0", "License: BSD\nRequires-Dist: helper\n",
                      {"devtool/__init__.py": distinct_function(2)})
    fake_distribution(site, "helper", "0.5", "License: Dual License\nClassifier: License :: OSI Approved :: "
                      "Apache Software License\nClassifier: License :: OSI Approved :: BSD License\n",
                      {"helper.py": distinct_function(3)})
    fake_distribution(site, "stray", "9.9", "License: MIT\n", {"stray.py": distinct_function(4)})

    assert {p.name for p in installed_packages(site, "app")} == {"goodpkg", "gplpkg"}
    packages = {p.name: p for p in installed_packages(site, "app[dev]")}
    assert set(packages) == {"goodpkg", "gplpkg", "devtool", "helper"}
    assert packages["helper"].licence == LicenceVerdict("Apache-2.0 OR BSD", True)
    assert not packages["gplpkg"].licence.permissive
    assert {p.name for p in installed_packages(site, None)} == {"app", "goodpkg", "gplpkg", "devtool", "helper", "stray"}
    with pytest.raises(ValueError, match="not installed"):
        installed_packages(site, "missing-project")

    build_corpus(packages.values(), tmp_path / "out", heldout_fraction=0.0, forbidden_roots=())
    rows = read_jsonl(tmp_path / "out" / "manifest.jsonl")
    assert sorted((r["path"], r["origin"], r["version"]) for r in rows) == [
        ("devtool/devtool/__init__.py", "site-packages", "3.0"),
        ("goodpkg/goodpkg/__init__.py", "site-packages", "1.0"),
        ("helper/helper.py", "site-packages", "0.5"),
    ]


def make_wheel(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr("demo-1.0.dist-info/METADATA", "Metadata-Version: 2.4\nName: demo\nVersion: 1.0\n"
                                                      "License-Expression: Apache-2.0\n")
        wheel.writestr("demo/core.py", GOOD_PYTHON)
        wheel.writestr("demo/fast.c", "int twice(int x) { return 2 * x; }\n" * 4)
    return path


def make_tarball(path: Path, members: dict[str, str]) -> Path:
    with tarfile.open(path, "w:gz") as tarred:
        for name, text in members.items():
            data = text.encode("utf-8")
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tarred.addfile(info, io.BytesIO(data))
    return path


def test_archives_are_read_in_place_with_their_own_metadata(tmp_path):
    wheel = archive_package(make_wheel(tmp_path / "demo-1.0-py3-none-any.whl"), ArchiveSpec("pypi-wheel", "demo", "1.0"))
    npm = archive_package(make_tarball(tmp_path / "scope-thing-1.2.3.tgz", {
        "package/package.json": json.dumps({"name": "@scope/thing", "version": "1.2.3", "license": "MIT"}),
        "package/src/index.ts": "export const answer: number = 42;\n" * 3,
        "package/dist/index.js": "exports.answer = 42;\n" * 3,
    }), ArchiveSpec("npm", "@scope/thing", "1.2.3", include=("src/",)))
    sdist = archive_package(make_tarball(tmp_path / "rusty-0.1.tar.gz", {
        "rusty-0.1/PKG-INFO": "Metadata-Version: 2.1\nName: rusty\nVersion: 0.1\nLicense: MIT OR Apache-2.0\n",
        "rusty-0.1/src/lib.rs": "pub fn double(x: u32) -> u32 {\n    x * 2\n}\n" * 3,
    }), ArchiveSpec("pypi-sdist", "rusty", "0.1"))
    assert (wheel.name, wheel.licence, wheel.origin) == ("demo", LicenceVerdict("Apache-2.0", True), "pypi")
    assert (npm.name, npm.licence.expression, npm.origin) == ("@scope/thing", "MIT", "npm")
    assert sdist.licence == LicenceVerdict("MIT OR Apache-2.0", True)
    build_corpus([wheel, npm, sdist], tmp_path / "out", heldout_fraction=0.0, forbidden_roots=())
    rows = {(r["path"], r["language"]) for r in read_jsonl(tmp_path / "out" / "manifest.jsonl")}
    assert rows == {("demo/demo/core.py", "python"), ("@scope/thing/src/index.ts", "typescript"),
                    ("rusty/src/lib.rs", "rust")}


def test_archive_with_other_contents_than_pinned_is_rejected(tmp_path):
    wheel = make_wheel(tmp_path / "demo-1.0-py3-none-any.whl")
    with pytest.raises(ValueError, match="expected demo 2.0"):
        archive_package(wheel, ArchiveSpec("pypi-wheel", "demo", "2.0"))
    empty = make_tarball(tmp_path / "empty-1.0.tgz", {"package/index.js": "x\n"})
    with pytest.raises(ValueError, match="no package metadata"):
        archive_package(empty, ArchiveSpec("npm", "empty", "1.0"))


def test_fetch_uses_the_cache_and_offline_mode_never_downloads(tmp_path):
    (tmp_path / "pypi").mkdir()
    (tmp_path / "npm").mkdir()
    make_wheel(tmp_path / "pypi" / "demo-1.0-py3-none-any.whl")
    make_tarball(tmp_path / "npm" / "scope-thing-1.2.3.tgz", {})
    assert fetch_archive(ArchiveSpec("pypi-wheel", "demo", "1.0"), tmp_path, offline=True).name == \
        "demo-1.0-py3-none-any.whl"
    assert fetch_archive(ArchiveSpec("npm", "@scope/thing", "1.2.3"), tmp_path, offline=True).name == \
        "scope-thing-1.2.3.tgz"
    with pytest.raises(FileNotFoundError, match="--offline"):
        fetch_archive(ArchiveSpec("pypi-sdist", "demo", "1.0"), tmp_path, offline=True)


# ---------------------------------------------------------------------------------------- reading


def test_language_detection():
    assert language_of("a/b.py") == "python" and language_of("x.tsx") == "typescript"
    assert language_of("x.d.ts") is None and language_of("x.min.js") is None and language_of("x.md") is None
    assert language_of("x.h", "namespace a { int f(); }") == "cpp" and language_of("x.h", "int f(void);") == "c"


def test_load_documents_and_summary_command(messy_tree, tmp_path, capsys):
    out = tmp_path / "corpus"
    build_corpus([directory_package("mylib", "1.0", MIT, messy_tree, "local")], out, heldout_fraction=0.0,
                 forbidden_roots=())
    documents = load_documents(out, "train")
    assert {d.language for d in documents} == {"python", "c", "cpp", "javascript"}
    assert [d.path for d in load_documents(out, "train", languages=["javascript"])] == ["mylib/util.js"]
    assert load_documents(out, "heldout") == []
    with pytest.raises(ValueError, match="split"):
        load_documents(out, "test")
    with pytest.raises(FileNotFoundError):
        load_documents(tmp_path / "missing", "train")
    assert main(["summary", "--corpus", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "train: 5 files" in printed and "| MIT | mylib 1.0 |" in printed
