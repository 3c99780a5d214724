"""Permissively licensed source-code corpus for tokenizer and fill-in-the-middle training.

    python -m engine.training.corpus build --out runs/corpus [--cache runs/corpus-cache] [--offline]
    python -m engine.training.corpus summary --corpus runs/corpus

Sources, in priority order (earlier sources win de-duplication):
  1. the CPython standard library of the running interpreter (PSF-2.0);
  2. Python files of the installed distributions that diffgemma-lsp[dev] depends on (transitively);
  3. pinned PyPI wheels (Python) and sdists (C, C++, Java, Rust), fetched with `pip download`;
  4. pinned npm tarballs (JavaScript, TypeScript, C++), fetched with `npm pack`.
A package is used only if its licence metadata evaluates to a permissive licence (PERMISSIVE_LICENCES).
Files are filtered (size, UTF-8, generated / minified / data, vendored, non-permissive licence header,
HumanEval, Python syntax), de-duplicated exactly and after whitespace normalisation, and split into
train / held-out by a hash of path and content. Nothing under the shared benchmarks tree is ever read.

Output directory:
  train.jsonl, heldout.jsonl   one document per line: {"path", "package", "language", "text"}
  manifest.jsonl               one kept file per line: path, package, version, licence, origin,
                               language, bytes, sha256, split
  summary.json, LICENSES.md    per-package licences and counts, exclusion counts, size per language
"""

from __future__ import annotations

import argparse
import ast
import email.parser
import gzip
import hashlib
import importlib.metadata
import json
import os
import platform
import re
import subprocess
import sys
import sysconfig
import tarfile
import time
import warnings
import zipfile
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

# packaging comes with tokenizers (via huggingface_hub); it is only needed to read Requires-Dist.
from packaging.requirements import Requirement

MAX_FILE_BYTES = 200 * 1024
MIN_FILE_CHARACTERS = 64  # of non-blank text; smaller files are stubs and empty __init__.py
DEFAULT_HELDOUT_FRACTION = 0.02
# Keeps a few huge packages (transformers, torch, sympy) from dominating the Python mix.
DEFAULT_MAX_PACKAGE_BYTES = 6_000_000

# Installed packages are taken from this project's dependency closure (dev tools included).
PROJECT_REQUIREMENT = "diffgemma-lsp[dev]"
# The evaluation data lives next to the repository; no source may resolve inside it.
FORBIDDEN_ROOT = Path(__file__).resolve().parents[2].parent / "shared"

LANGUAGE_BY_SUFFIX = {
    ".py": "python",
    ".js": "javascript",
    ".mjs": "javascript",
    ".cjs": "javascript",
    ".ts": "typescript",
    ".tsx": "typescript",
    ".go": "go",
    ".rs": "rust",
    ".java": "java",
    ".c": "c",
    ".h": "c",
    ".cc": "cpp",
    ".cpp": "cpp",
    ".cxx": "cpp",
    ".hpp": "cpp",
    ".hh": "cpp",
    ".hxx": "cpp",
}
# Type declarations are tsc output and minified bundles are not source.
EXCLUDED_NAME_SUFFIXES = (".d.ts", ".d.mts", ".d.cts", ".min.js")
VENDORED_DIRECTORY_NAMES = frozenset(
    {"_vendor", "vendor", "vendored", "_vendored", "third_party", "_third_party", "thirdparty",
     "third-party", "node_modules", "externals", "__pycache__"}
)
_CPP_HEADER_PATTERN = re.compile(r"\bnamespace\s+\w+|\btemplate\s*<|\bstd::|\bclass\s+\w+\s*[:{]")

# MIT / BSD / Apache / PSF families, plus licences of the same permissive kind that appear inside
# compound expressions of otherwise-MIT/BSD/Apache packages (numpy's 0BSD/Zlib/CC0 parts, torch's BSL).
PERMISSIVE_LICENCES = frozenset(
    {"MIT", "MIT-0", "BSD", "BSD-2-Clause", "BSD-3-Clause", "0BSD", "Apache-2.0", "PSF-2.0",
     "Python-2.0", "CNRI-Python", "ISC", "Zlib", "BSL-1.0", "CC0-1.0"}
)
PERMISSIVE_LICENCE_EXCEPTIONS = frozenset({"LLVM-exception"})

_LICENCE_ALIASES = {
    "mit": "MIT", "mit license": "MIT", "the mit license": "MIT", "expat": "MIT", "mit-0": "MIT-0",
    "bsd": "BSD", "bsd license": "BSD", "bsd-2-clause": "BSD-2-Clause", "simplified bsd": "BSD-2-Clause",
    "bsd 2-clause": "BSD-2-Clause", "bsd-3-clause": "BSD-3-Clause", "bsd 3-clause": "BSD-3-Clause",
    "3-clause bsd": "BSD-3-Clause", "new bsd": "BSD-3-Clause", "new bsd license": "BSD-3-Clause",
    "modified bsd": "BSD-3-Clause", "0bsd": "0BSD",
    "apache-2.0": "Apache-2.0", "apache 2.0": "Apache-2.0", "apache 2": "Apache-2.0",
    "apache-2": "Apache-2.0", "apache2": "Apache-2.0", "apache license 2.0": "Apache-2.0",
    "apache license, version 2.0": "Apache-2.0", "apache license version 2.0": "Apache-2.0",
    "apache 2.0 license": "Apache-2.0", "apache software license": "Apache-2.0",
    "apache software license 2.0": "Apache-2.0", "apache license": "Apache-2.0",
    "psf-2.0": "PSF-2.0", "psf": "PSF-2.0", "psf license": "PSF-2.0", "psfl": "PSF-2.0",
    "python software foundation license": "PSF-2.0", "python-2.0": "Python-2.0",
    "cnri-python": "CNRI-Python", "isc": "ISC", "isc license": "ISC", "isc license (iscl)": "ISC",
    "zlib": "Zlib", "bsl-1.0": "BSL-1.0", "cc0-1.0": "CC0-1.0",
    "mozilla public license 2.0 (mpl 2.0)": "MPL-2.0",
}
# Some packages put the whole licence text into the License field.
_LICENCE_TEXT_MARKERS = (
    ("permission is hereby granted, free of charge", "MIT"),
    ("redistribution and use in source and binary forms", "BSD"),
    ("apache license", "Apache-2.0"),
)
_COPYLEFT_PATTERN = re.compile(r"\b(A?GPL|LGPL|MPL|EPL|EUPL|CDDL|OSL|CECILL)|general public|mozilla", re.I)
# Third-party code under another licence is often copied into permissively licensed packages.
_NON_PERMISSIVE_HEADER_MARKERS = (
    "gnu general public license", "gnu lesser general public", "gnu library general public",
    "gnu affero", "mozilla public license", "eclipse public license",
    "common development and distribution license", "spdx-license-identifier: gpl",
    "spdx-license-identifier: lgpl", "spdx-license-identifier: agpl", "spdx-license-identifier: mpl",
    "nvidia corporation and its licensors", "proprietary and confidential",
)
_GENERATED_MARKERS = (
    "do not edit", "@generated", "autogenerated", "auto-generated", "automatically generated",
    "generated by cython", "generated by the protocol buffer compiler",
)
_HUMANEVAL_MARKERS = ("humaneval", "human_eval", "human-eval", "def check(candidate")


@dataclass(frozen=True)
class LicenceVerdict:
    expression: str  # normalised SPDX-style expression, "UNKNOWN" when the metadata says nothing usable
    permissive: bool


@dataclass(frozen=True)
class RawFile:
    relative_path: str  # POSIX path inside the package
    size: int
    read: Callable[[], bytes]
    location: Path  # the file on disk, or the archive holding it


@dataclass(frozen=True)
class SourcePackage:
    name: str
    version: str
    licence: LicenceVerdict
    origin: str  # "stdlib", "site-packages", "pypi", "npm", or a caller-chosen label
    list_files: Callable[[], Iterator[RawFile]] = field(compare=False, repr=False)
    languages: frozenset[str] | None = None  # None: every language in LANGUAGE_BY_SUFFIX
    capped: bool = True  # whether --max-package-bytes applies


@dataclass(frozen=True)
class ArchiveSpec:
    """A pinned registry package; `include` restricts it to path prefixes inside the package."""

    registry: str  # "pypi-wheel", "pypi-sdist" or "npm"
    name: str
    version: str
    include: tuple[str, ...] = ()


# Python beyond what the venv holds, favouring code with docstrings and algorithms.
DEFAULT_PYPI_WHEELS = tuple(
    ArchiveSpec("pypi-wheel", name, version)
    for name, version in (
        ("django", "5.1.4"), ("flask", "3.1.0"), ("werkzeug", "3.1.3"), ("requests", "2.32.3"),
        ("more-itertools", "10.5.0"), ("toolz", "1.0.0"), ("boltons", "24.1.0"),
        ("sortedcontainers", "2.4.0"), ("sqlalchemy", "2.0.36"), ("scikit-learn", "1.6.0"),
        ("pandas", "2.2.3"), ("starlette", "0.41.3"), ("marshmallow", "3.23.2"),
        ("python-dateutil", "2.9.0.post0"), ("pyparsing", "3.2.0"), ("black", "24.10.0"),
        ("pyflakes", "3.2.0"), ("tornado", "6.4.2"),
    )
)
# Sdists whose metadata builds without network access (setuptools / setuptools-rust backends).
DEFAULT_PYPI_SDISTS = (
    ArchiveSpec("pypi-sdist", "psutil", "6.1.0"),  # C
    ArchiveSpec("pypi-sdist", "brotli", "1.1.0", include=("c/",)),  # C
    ArchiveSpec("pypi-sdist", "jpype1", "1.5.1", include=("native/", "jpype/")),  # Java, C++
    ArchiveSpec("pypi-sdist", "kiwisolver", "1.4.7"),  # C++
    ArchiveSpec("pypi-sdist", "cryptography", "41.0.7", include=("src/",)),  # Rust
    ArchiveSpec("pypi-sdist", "tiktoken", "0.8.0"),  # Rust
)
DEFAULT_NPM_PACKAGES = (
    ArchiveSpec("npm", "lodash", "4.17.21"),
    ArchiveSpec("npm", "express", "4.21.2", include=("lib/",)),
    ArchiveSpec("npm", "commander", "12.1.0", include=("lib/",)),
    ArchiveSpec("npm", "moment", "2.30.1", include=("src/",)),
    ArchiveSpec("npm", "vscode-jsonrpc", "8.2.1", include=("lib/",)),
    ArchiveSpec("npm", "vscode-languageserver", "9.0.1", include=("lib/",)),
    ArchiveSpec("npm", "chalk", "5.4.1", include=("source/",)),
    ArchiveSpec("npm", "preact", "10.25.4", include=("src/",)),
    ArchiveSpec("npm", "rxjs", "7.8.1", include=("src/",)),
    ArchiveSpec("npm", "effect", "3.12.0", include=("src/",)),
    ArchiveSpec("npm", "immer", "10.1.1", include=("src/",)),
    ArchiveSpec("npm", "node-addon-api", "8.3.0"),  # C++ headers
    ArchiveSpec("npm", "canvas", "3.0.0", include=("src/",)),  # C++
    ArchiveSpec("npm", "bcrypt", "5.1.1", include=("src/",)),  # C++
)


# ----------------------------------------------------------------------------------------- licences


def _normalise_licence_id(identifier: str) -> str:
    stripped = identifier.strip().strip('"').strip()
    return _LICENCE_ALIASES.get(stripped.lower(), stripped)


class _LicenceExpressionParser:
    """Recursive descent over an SPDX-style expression: or := and (OR and)*, and := atom (AND atom)*,
    atom := "(" or ")" | identifier [WITH exception]. Each rule returns (normalised text, permissive)."""

    def __init__(self, expression: str):
        pieces = re.split(r"(\(|\)|\s+AND\s+|\s+OR\s+|\s+WITH\s+)", expression, flags=re.I)
        self.tokens = [piece.strip() for piece in pieces if piece.strip()]
        self.position = 0

    def parse(self) -> LicenceVerdict:
        text, permissive = self._or()
        if self.position != len(self.tokens):
            raise ValueError(f"unexpected {self.tokens[self.position]!r}")
        return LicenceVerdict(text, permissive)

    def _peek_operator(self, operator: str) -> bool:
        return self.position < len(self.tokens) and self.tokens[self.position].upper() == operator

    def _or(self) -> tuple[str, bool]:
        text, permissive = self._and()
        while self._peek_operator("OR"):
            self.position += 1
            right_text, right_permissive = self._and()
            text, permissive = f"{text} OR {right_text}", permissive or right_permissive
        return text, permissive

    def _and(self) -> tuple[str, bool]:
        text, permissive = self._atom()
        while self._peek_operator("AND"):
            self.position += 1
            right_text, right_permissive = self._atom()
            text, permissive = f"{text} AND {right_text}", permissive and right_permissive
        return text, permissive

    def _atom(self) -> tuple[str, bool]:
        if self.position >= len(self.tokens):
            raise ValueError("expression ends early")
        token = self.tokens[self.position]
        self.position += 1
        if token == "(":
            text, permissive = self._or()
            if self.position >= len(self.tokens) or self.tokens[self.position] != ")":
                raise ValueError("unbalanced parenthesis")
            self.position += 1
            return f"({text})", permissive
        if token == ")" or token.upper() in {"AND", "OR", "WITH"}:
            raise ValueError(f"unexpected {token!r}")
        identifier = _normalise_licence_id(token)
        permissive = identifier in PERMISSIVE_LICENCES
        if self._peek_operator("WITH"):
            if self.position + 1 >= len(self.tokens):
                raise ValueError("WITH without an exception")
            exception = self.tokens[self.position + 1]
            self.position += 2
            return f"{identifier} WITH {exception}", permissive and exception in PERMISSIVE_LICENCE_EXCEPTIONS
        return identifier, permissive


def licence_from_text(value: str) -> LicenceVerdict:
    """Normalises a free-form licence field (SPDX expression, common name, or the full licence text)."""
    value = value.strip()
    if not value or value.upper() in {"UNKNOWN", "NONE", "UNLICENSED", "SEE LICENSE FILE"}:
        return LicenceVerdict("UNKNOWN", False)
    if len(value) <= 200 and "\n" not in value:
        try:
            return _LicenceExpressionParser(value).parse()
        except ValueError:
            pass  # not an expression: try the licence-text markers
    lowered = value.lower()
    for marker, identifier in _LICENCE_TEXT_MARKERS:
        if marker in lowered:
            return LicenceVerdict(identifier, identifier in PERMISSIVE_LICENCES)
    return LicenceVerdict(value.splitlines()[0][:80], False)


def licence_from_classifiers(classifiers: Sequence[str]) -> LicenceVerdict:
    """Several licence classifiers mean the user may choose: they combine with OR."""
    names = [c.split("::")[-1].strip() for c in classifiers if c.startswith("License ::")]
    names = [n for n in names if n not in {"OSI Approved", "Other/Proprietary License"}] or [
        n for n in names if n == "Other/Proprietary License"
    ]
    if not names:
        return LicenceVerdict("UNKNOWN", False)
    identifiers = [_normalise_licence_id(n) for n in names]
    return LicenceVerdict(" OR ".join(identifiers), any(i in PERMISSIVE_LICENCES for i in identifiers))


def licence_from_metadata(metadata_text: str) -> LicenceVerdict:
    """Core-metadata (METADATA / PKG-INFO): License-Expression, then License, then classifiers."""
    message = email.parser.HeaderParser().parsestr(metadata_text)
    expression = message.get("License-Expression")
    if expression:
        return licence_from_text(expression)
    field_verdict = licence_from_text(message.get("License") or "")
    if message.get("License", "").startswith("License ::"):  # a classifier pasted into the field
        field_verdict = licence_from_classifiers([message["License"]])
    # The free-text field wins when it names a licence we recognise (permissive or copyleft); otherwise
    # ("Dual License", "see LICENSE") the classifiers, a controlled vocabulary, decide.
    if field_verdict.permissive or _COPYLEFT_PATTERN.search(field_verdict.expression):
        return field_verdict
    classifier_verdict = licence_from_classifiers(message.get_all("Classifier") or [])
    return field_verdict if classifier_verdict.expression == "UNKNOWN" else classifier_verdict


def licence_from_package_json(package_json: dict) -> LicenceVerdict:
    licence = package_json.get("license")
    if isinstance(licence, dict):
        licence = licence.get("type")
    if not licence and isinstance(package_json.get("licenses"), list):
        licence = " OR ".join(str(entry.get("type", "")) for entry in package_json["licenses"])
    return licence_from_text(str(licence or ""))


# ------------------------------------------------------------------------------------------ sources


def _is_inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def directory_package(name: str, version: str, licence: LicenceVerdict, root: Path, origin: str,
                      excluded_top_directories: Iterable[str] = (), capped: bool = True,
                      languages: frozenset[str] | None = None) -> SourcePackage:
    root = root.resolve()
    excluded = frozenset(excluded_top_directories)

    def list_files() -> Iterator[RawFile]:
        for directory, subdirectories, file_names in os.walk(root):
            if Path(directory) == root:  # prune here: the stdlib holds the base interpreter's site-packages
                subdirectories[:] = [name for name in subdirectories if name not in excluded]
            subdirectories.sort()
            for file_name in sorted(file_names):
                path = Path(directory, file_name)
                if path.is_file():
                    yield RawFile(path.relative_to(root).as_posix(), path.stat().st_size, path.read_bytes, path)

    return SourcePackage(name, version, licence, origin, list_files, languages=languages, capped=capped)


def stdlib_package() -> SourcePackage:
    """The standard library of the running interpreter, kept whole (the reference for idiomatic Python)."""
    return directory_package(
        "cpython-stdlib", platform.python_version(), LicenceVerdict("PSF-2.0", True),
        Path(sysconfig.get_paths()["stdlib"]), "stdlib",
        excluded_top_directories=("site-packages", "dist-packages", "lib-dynload"), capped=False,
        languages=frozenset({"python"}),  # its few C files are test fixtures and build stubs
    )


def dependency_closure(site_packages: Path, root_requirement: str) -> set[str]:
    """Canonical names of the installed distributions that `root_requirement` ("name[extra]") pulls in,
    excluding the root itself. Optional dependencies that are not installed are ignored."""
    installed = {
        _canonical_name(d.metadata["Name"]): d
        for d in importlib.metadata.distributions(path=[str(site_packages)]) if d.metadata["Name"]
    }
    root = Requirement(root_requirement)
    if _canonical_name(root.name) not in installed:
        raise ValueError(f"{root.name} is not installed in {site_packages}; cannot find its dependencies")
    pending = [(_canonical_name(root.name), frozenset(root.extras))]
    visited: set[tuple[str, frozenset[str]]] = set()
    while pending:
        name, extras = pending.pop()
        if (name, extras) in visited or name not in installed:
            continue
        visited.add((name, extras))
        for text in installed[name].requires or []:
            requirement = Requirement(text)
            marker = requirement.marker
            if marker is None or any(marker.evaluate({"extra": extra}) for extra in extras or {""}):
                pending.append((_canonical_name(requirement.name), frozenset(requirement.extras)))
    return {name for name, _ in visited} - {_canonical_name(root.name)}


def installed_packages(site_packages: Path, required_by: str | None) -> list[SourcePackage]:
    """Python files of the distributions installed in `site_packages`, per their RECORD; with
    `required_by` ("diffgemma-lsp[dev]"), only that project's dependency closure, so that whatever else
    happens to be installed in the environment does not change the corpus.

    Only Python is taken: C/C++ files inside binary wheels are mostly bundled third-party headers under
    their own licences (for instance CUDA headers shipped inside triton).
    """
    site_packages = site_packages.resolve()
    wanted = None if required_by is None else dependency_closure(site_packages, required_by)
    packages = []
    for distribution in importlib.metadata.distributions(path=[str(site_packages)]):
        name = distribution.metadata["Name"]
        if not name or (wanted is not None and _canonical_name(name) not in wanted):
            continue
        metadata_text = distribution.read_text("METADATA") or distribution.read_text("PKG-INFO") or ""

        def list_files(distribution=distribution) -> Iterator[RawFile]:
            for record_path in sorted(distribution.files or [], key=str):
                path = Path(distribution.locate_file(record_path)).resolve()
                if not _is_inside(path, site_packages) or not path.is_file():
                    continue
                yield RawFile(path.relative_to(site_packages).as_posix(), path.stat().st_size, path.read_bytes,
                              path)

        packages.append(SourcePackage(name, distribution.version, licence_from_metadata(metadata_text),
                                      "site-packages", list_files, languages=frozenset({"python"})))
    return sorted(packages, key=lambda p: _canonical_name(p.name))


def _canonical_name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _archive_members(archive: Path) -> Iterator[tuple[str, int, Callable[[], bytes]]]:
    """(path, size, read) of the regular files of a zip / wheel or tar archive, in archive order."""
    if archive.suffix in {".whl", ".zip"}:
        with zipfile.ZipFile(archive) as zipped:
            for info in zipped.infolist():
                if not info.is_dir():
                    yield info.filename, info.file_size, lambda info=info: zipped.read(info)
        return
    with tarfile.open(archive) as tarred:
        for member in tarred:
            if member.isfile():
                yield member.name, member.size, lambda member=member: tarred.extractfile(member).read()


def archive_package(archive: Path, spec: ArchiveSpec) -> SourcePackage:
    """A wheel, sdist or npm tarball read in place; metadata and licence come from inside the archive."""
    strip_top_directory = spec.registry != "pypi-wheel"  # sdists and npm tarballs have one top directory
    metadata_text = None
    for member_path, _, read in _archive_members(archive):
        parts = PurePosixPath(member_path).parts
        if spec.registry == "pypi-wheel" and len(parts) == 2 and parts[0].endswith(".dist-info") \
                and parts[1] == "METADATA":
            metadata_text = read().decode("utf-8")
        elif spec.registry != "pypi-wheel" and len(parts) == 2 \
                and parts[1] == ("package.json" if spec.registry == "npm" else "PKG-INFO"):
            metadata_text = read().decode("utf-8")
        if metadata_text is not None:
            break
    if metadata_text is None:
        raise ValueError(f"{archive}: no package metadata found inside the archive")
    if spec.registry == "npm":
        package_json = json.loads(metadata_text)
        name, version, licence = package_json["name"], package_json["version"], licence_from_package_json(package_json)
    else:
        message = email.parser.HeaderParser().parsestr(metadata_text)
        name, version, licence = message["Name"], message["Version"], licence_from_metadata(metadata_text)
    if _canonical_name(name) != _canonical_name(spec.name) or version != spec.version:
        raise ValueError(f"{archive}: holds {name} {version}, expected {spec.name} {spec.version}")

    def list_files() -> Iterator[RawFile]:
        for member_path, size, read in _archive_members(archive):
            parts = PurePosixPath(member_path).parts
            relative = "/".join(parts[1:] if strip_top_directory else parts)
            if relative and (not spec.include or relative.startswith(spec.include)):
                yield RawFile(relative, size, read, archive)

    languages = frozenset({"python"}) if spec.registry == "pypi-wheel" else None
    return SourcePackage(name, version, licence, spec.registry.split("-")[0], list_files, languages=languages)


def _find_cached_archive(cache_dir: Path, spec: ArchiveSpec) -> Path | None:
    if not cache_dir.is_dir():
        return None
    # npm pack names a scoped package's tarball "scope-name-version.tgz".
    wanted = _canonical_name(spec.name.lstrip("@").replace("/", "-"))
    for path in sorted(cache_dir.iterdir()):
        if spec.registry == "pypi-wheel" and path.suffix == ".whl":
            name, version = path.name.split("-")[:2]
        elif spec.registry == "pypi-sdist" and path.name.endswith((".tar.gz", ".zip")):
            name, _, version = path.name.removesuffix(".tar.gz").removesuffix(".zip").rpartition("-")
        elif spec.registry == "npm" and path.suffix == ".tgz":
            name, _, version = path.name.removesuffix(".tgz").rpartition("-")
        else:
            continue
        if _canonical_name(name) == wanted and version == spec.version:
            return path
    return None


def fetch_archive(spec: ArchiveSpec, cache_dir: Path, offline: bool) -> Path:
    """The cached archive for `spec`, downloaded with pip / npm first unless `offline`."""
    directory = cache_dir / ("npm" if spec.registry == "npm" else "pypi")
    cached = _find_cached_archive(directory, spec)
    if cached is not None:
        return cached
    if offline:
        raise FileNotFoundError(f"{spec.name}=={spec.version} is not in {directory}; run without --offline")
    directory.mkdir(parents=True, exist_ok=True)
    if spec.registry == "npm":
        command = ["npm", "pack", f"{spec.name}@{spec.version}", "--pack-destination", str(directory),
                   "--ignore-scripts", "--silent"]
    else:
        binary_choice = ["--only-binary", ":all:"] if spec.registry == "pypi-wheel" else ["--no-binary", spec.name]
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", str(directory),
                   *binary_choice, f"{spec.name}=={spec.version}"]
    print(f"  downloading {spec.registry} {spec.name}=={spec.version}", file=sys.stderr, flush=True)
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-2000:]}")
    cached = _find_cached_archive(directory, spec)
    if cached is None:
        raise RuntimeError(f"{' '.join(command)} succeeded but left no matching archive in {directory}")
    return cached


def default_sources(cache_dir: Path, offline: bool, site_packages: Path | None = None,
                    required_by: str = PROJECT_REQUIREMENT,
                    archive_specs: Sequence[ArchiveSpec] = (*DEFAULT_PYPI_WHEELS, *DEFAULT_PYPI_SDISTS,
                                                            *DEFAULT_NPM_PACKAGES)) -> list[SourcePackage]:
    site_packages = site_packages or Path(sysconfig.get_paths()["purelib"])
    sources = [stdlib_package(), *installed_packages(site_packages, required_by)]
    for spec in archive_specs:
        sources.append(archive_package(fetch_archive(spec, cache_dir, offline), spec))
    return sources


# -------------------------------------------------------------------------------------- file filters


def language_of(relative_path: str, text: str | None = None) -> str | None:
    """Language by suffix; `.h` headers that contain C++ constructs count as C++ when text is given."""
    name = PurePosixPath(relative_path).name
    if name.endswith(EXCLUDED_NAME_SUFFIXES):
        return None
    language = LANGUAGE_BY_SUFFIX.get(PurePosixPath(name).suffix)
    if language == "c" and name.endswith(".h") and text is not None and _CPP_HEADER_PATTERN.search(text):
        return "cpp"
    return language


def whitespace_normalised_hash(text: str) -> str:
    return hashlib.sha256(" ".join(text.split()).encode("utf-8")).hexdigest()


def content_rejection(text: str, language: str) -> str | None:
    """Why the decoded file must not enter the corpus, or None if it may."""
    if len(text.strip()) < MIN_FILE_CHARACTERS:
        return "too_small"
    lowered = text.lower()
    if any(marker in lowered for marker in _HUMANEVAL_MARKERS):
        return "humaneval"
    header = lowered[:3000]
    if any(marker in header for marker in _NON_PERMISSIVE_HEADER_MARKERS):
        return "non_permissive_header"
    if any(marker in "\n".join(header.splitlines()[:10]) for marker in _GENERATED_MARKERS):
        return "generated"
    lines = text.splitlines()
    # StarCoder's thresholds for minified code and embedded data.
    if max(map(len, lines)) > 1000 or len(text) / len(lines) > 100:
        return "minified_or_data"
    if sum(character.isalnum() for character in text) < 0.25 * len(text):
        return "minified_or_data"
    if language == "python":
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ast.parse(text)
        except (SyntaxError, ValueError):
            return "python_syntax"
    return None


def heldout_split(logical_path: str, sha256: str, heldout_fraction: float) -> str:
    digest = hashlib.sha256(f"{logical_path}\n{sha256}".encode("utf-8")).digest()
    return "heldout" if int.from_bytes(digest[:8], "big") < heldout_fraction * 2**64 else "train"


# ------------------------------------------------------------------------------------------- builder


@dataclass(frozen=True)
class CorpusDocument:
    path: str
    package: str
    language: str
    text: str


@dataclass
class _Candidate:
    relative_path: str
    language: str
    text: str
    sha256: str
    normalised_hash: str
    size: int


def build_corpus(sources: Iterable[SourcePackage], out_dir: Path,
                 max_package_bytes: int = DEFAULT_MAX_PACKAGE_BYTES,
                 heldout_fraction: float = DEFAULT_HELDOUT_FRACTION,
                 forbidden_roots: Sequence[Path] = (FORBIDDEN_ROOT,)) -> dict:
    """Filters, de-duplicates and splits `sources` into `out_dir`; returns the summary it writes."""
    if not 0.0 <= heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction must be in [0, 1), got {heldout_fraction}")
    if max_package_bytes <= 0:
        raise ValueError(f"max_package_bytes must be positive, got {max_package_bytes}")
    forbidden = [root.resolve() for root in forbidden_roots]
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    seen_exact: set[str] = set()
    seen_normalised: set[str] = set()
    exclusions: Counter[str] = Counter()
    package_rows = []
    totals: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])  # (split, language) -> files, bytes

    with (out_dir / "train.jsonl").open("w", encoding="utf-8") as train_file, \
            (out_dir / "heldout.jsonl").open("w", encoding="utf-8") as heldout_file, \
            (out_dir / "manifest.jsonl").open("w", encoding="utf-8") as manifest_file:
        split_files = {"train": train_file, "heldout": heldout_file}
        for package in sources:
            row = {"name": package.name, "version": package.version, "licence": package.licence.expression,
                   "origin": package.origin, "files": 0, "bytes": 0}
            package_rows.append(row)
            if not package.licence.permissive:
                row["status"] = "rejected_licence"
                continue
            candidates = _package_candidates(package, forbidden, seen_exact, seen_normalised, exclusions)
            # A stable hash order picks an unbiased, reproducible subset when the package is capped.
            candidates.sort(key=lambda c: hashlib.sha256(c.relative_path.encode("utf-8")).digest())
            kept_bytes = 0
            for candidate in candidates:
                if package.capped and kept_bytes + candidate.size > max_package_bytes:
                    exclusions["package_cap"] += 1
                    continue
                kept_bytes += candidate.size
                seen_exact.add(candidate.sha256)
                seen_normalised.add(candidate.normalised_hash)
                logical_path = f"{package.name}/{candidate.relative_path}"
                split = heldout_split(logical_path, candidate.sha256, heldout_fraction)
                split_files[split].write(json.dumps(
                    {"path": logical_path, "package": package.name, "language": candidate.language,
                     "text": candidate.text}, ensure_ascii=False) + "\n")
                manifest_file.write(json.dumps(
                    {"path": logical_path, "package": package.name, "version": package.version,
                     "licence": package.licence.expression, "origin": package.origin,
                     "language": candidate.language, "bytes": candidate.size, "sha256": candidate.sha256,
                     "split": split}) + "\n")
                row["files"] += 1
                row["bytes"] += candidate.size
                totals[(split, candidate.language)][0] += 1
                totals[(split, candidate.language)][1] += candidate.size
            row["status"] = "used" if row["files"] else "no_files"

    summary = {
        "max_package_bytes": max_package_bytes,
        "heldout_fraction": heldout_fraction,
        "build_seconds": round(time.perf_counter() - started, 1),
        "splits": {split: {language: {"files": files, "bytes": size}
                           for (s, language), (files, size) in sorted(totals.items()) if s == split}
                   for split in ("train", "heldout")},
        "exclusions": dict(exclusions.most_common()),
        "packages": package_rows,
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    (out_dir / "LICENSES.md").write_text(licence_table(package_rows), encoding="utf-8")
    return summary


def _package_candidates(package: SourcePackage, forbidden: Sequence[Path], seen_exact: set[str],
                        seen_normalised: set[str], exclusions: Counter[str]) -> list[_Candidate]:
    candidates = []
    package_exact: set[str] = set()
    package_normalised: set[str] = set()
    for raw in package.list_files():
        language = language_of(raw.relative_path)
        if language is None or (package.languages is not None and language not in package.languages):
            continue
        if VENDORED_DIRECTORY_NAMES.intersection(PurePosixPath(raw.relative_path).parts[:-1]):
            exclusions["vendored"] += 1
            continue
        if raw.size > MAX_FILE_BYTES:
            exclusions["too_large"] += 1
            continue
        if any(_is_inside(raw.location.resolve(), root) for root in forbidden):
            exclusions["forbidden_root"] += 1
            continue
        data = raw.read()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            exclusions["not_utf8"] += 1
            continue
        language = language_of(raw.relative_path, text)
        reason = content_rejection(text, language)
        if reason is not None:
            exclusions[reason] += 1
            continue
        exact = hashlib.sha256(data).hexdigest()
        normalised = whitespace_normalised_hash(text)
        if exact in seen_exact or exact in package_exact:
            exclusions["duplicate"] += 1
            continue
        if normalised in seen_normalised or normalised in package_normalised:
            exclusions["near_duplicate"] += 1
            continue
        package_exact.add(exact)
        package_normalised.add(normalised)
        candidates.append(_Candidate(raw.relative_path, language, text, exact, normalised, len(data)))
    return candidates


def licence_table(package_rows: Sequence[dict]) -> str:
    used: dict[str, list[dict]] = defaultdict(list)
    for row in package_rows:
        if row.get("status") == "used":
            used[row["licence"]].append(row)
    lines = ["# Corpus licences", "", "| licence | packages | files | bytes |", "|---|---|---:|---:|"]
    for licence, rows in sorted(used.items(), key=lambda item: -sum(r["bytes"] for r in item[1])):
        names = ", ".join(f"{r['name']} {r['version']}" for r in sorted(rows, key=lambda r: r["name"].lower()))
        lines.append(f"| {licence} | {names} | {sum(r['files'] for r in rows)} | {sum(r['bytes'] for r in rows)} |")
    rejected = [row for row in package_rows if row.get("status") == "rejected_licence"]
    if rejected:
        lines += ["", "Rejected (licence not permissive or unknown):", ""]
        lines += [f"- {r['name']} {r['version']}: {r['licence']}" for r in rejected]
    return "\n".join(lines) + "\n"


def format_summary(summary: dict) -> str:
    lines = []
    for split, languages in summary["splits"].items():
        total_files = sum(v["files"] for v in languages.values())
        total_bytes = sum(v["bytes"] for v in languages.values())
        lines.append(f"{split}: {total_files} files, {total_bytes / 1e6:.1f} MB")
        for language, value in sorted(languages.items(), key=lambda item: -item[1]["bytes"]):
            lines.append(f"  {language:<11} {value['files']:>7} files {value['bytes'] / 1e6:>8.2f} MB")
    lines.append("excluded files: " + ", ".join(f"{k}={v}" for k, v in summary["exclusions"].items()))
    by_origin: Counter[str] = Counter()
    for row in summary["packages"]:
        by_origin[row["origin"]] += row["bytes"]
    lines.append("bytes by origin: " + ", ".join(f"{k}={v / 1e6:.1f} MB" for k, v in by_origin.most_common()))
    lines.append("")
    lines.append(licence_table(summary["packages"]))
    return "\n".join(lines)


def load_documents(corpus_dir: Path, split: str, languages: Iterable[str] | None = None) -> list[CorpusDocument]:
    """Reads one split of a built corpus (`split`.jsonl, or `split`.jsonl.gz), optionally only some languages."""
    if split not in {"train", "heldout"}:
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    path = Path(corpus_dir) / f"{split}.jsonl"
    packed = path.with_name(path.name + ".gz")  # gzip -k: a quarter of the size, for a copy sent to another machine
    if not path.is_file() and not packed.is_file():
        raise FileNotFoundError(f"{path} does not exist; build it with `python -m engine.training.corpus build`")
    wanted = None if languages is None else frozenset(languages)
    documents = []
    with (path.open(encoding="utf-8") if path.is_file() else gzip.open(packed, "rt", encoding="utf-8")) as lines:
        for line in lines:
            record = json.loads(line)
            if wanted is None or record["language"] in wanted:
                documents.append(CorpusDocument(record["path"], record["package"], record["language"], record["text"]))
    return documents


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.training.corpus", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="fetch pinned packages and build the corpus")
    build.add_argument("--out", type=Path, required=True)
    build.add_argument("--cache", type=Path, default=Path("runs/corpus-cache"),
                       help="where downloaded wheels, sdists and npm tarballs are kept")
    build.add_argument("--offline", action="store_true", help="use only archives already in --cache")
    build.add_argument("--max-package-bytes", type=int, default=DEFAULT_MAX_PACKAGE_BYTES)
    build.add_argument("--heldout-fraction", type=float, default=DEFAULT_HELDOUT_FRACTION)
    show = commands.add_parser("summary", help="print the summary and licence table of a built corpus")
    show.add_argument("--corpus", type=Path, required=True)
    arguments = parser.parse_args(argv)

    if arguments.command == "build":
        sources = default_sources(arguments.cache, arguments.offline)
        summary = build_corpus(sources, arguments.out, arguments.max_package_bytes, arguments.heldout_fraction)
    else:
        summary_path = arguments.corpus / "summary.json"
        if not summary_path.is_file():
            parser.error(f"{summary_path} does not exist")
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
    print(format_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
