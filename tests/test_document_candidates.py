"""Line endings copied from the open documents, and how the pipeline judges them with the model's candidates."""

from __future__ import annotations

import pytest

import engine
from checkpoints import cached_checkpoint
from lsp_server.document_candidates import line_candidates
from lsp_server.documents import Document
from lsp_server.pipeline import InfillPipeline
from lsp_server.settings import Settings

SOURCE = (
    "import logging\n"
    "logger = logging.getLogger(__name__)\n"
    "def a():\n"
    "    logger.info('started %s', name)\n"
    "def b():\n"
    "    logger.info('stopped %s', name)\n"
    "def c():\n"
    "    logger.info('started %s', name)\n"
    "def d():\n"
    "    logger.info(\n"
)
CURSOR_LINE = 9


def at_end_of(document: Document, line: int) -> int:
    return document.line_end(line)


def test_the_rest_of_lines_that_begin_alike_most_frequent_then_nearest():
    document = Document("file:///a.py", SOURCE, "python")
    assert line_candidates(document, at_end_of(document, CURSOR_LINE)) == [
        "'started %s', name)", "'stopped %s', name)"]
    other = Document("file:///b.py", "x = 1\nlogger.info('other file')\n", "python")
    assert line_candidates(document, at_end_of(document, CURSOR_LINE), [other], limit=3)[-1] == "'other file')"
    assert line_candidates(document, at_end_of(document, CURSOR_LINE), limit=1) == ["'started %s', name)"]
    assert line_candidates(document, at_end_of(document, CURSOR_LINE), limit=0) == []


def test_no_candidates_for_short_starts_or_in_the_middle_of_a_line():
    document = Document("file:///a.py", "x = 1\nx = 2\nx = \n", "python")
    assert line_candidates(document, at_end_of(document, 2)) == []  # "x =" is too short to say anything
    document = Document("file:///a.py", SOURCE.replace("logger.info(\n", "logger.info() # done\n"), "python")
    cursor = document.line_start(CURSOR_LINE) + len("    logger.info(")
    assert line_candidates(document, cursor) == []  # text after the cursor: not a line end


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    return InfillPipeline(engine.load(cached_checkpoint(tmp_path_factory.getbasetemp(), kind="random")))


def test_copied_lines_join_the_candidates_and_reranking_scores_them_all(pipeline):
    document = Document("file:///a.py", SOURCE, "python")
    position = document.position_at(at_end_of(document, CURSOR_LINE))
    settings = Settings(seed=3, candidates=2, document_candidates=2, rerank=True)
    context = pipeline.context(document, position, settings)
    extras = pipeline.document_candidates(document, position, settings)
    result = pipeline.generate(context, settings, extra_middles=extras)
    texts = [candidate.text for candidate in result.candidates]
    assert texts[2:] == [middle for middle in extras if middle not in texts[:2]] and len(extras) == 2
    expected = pipeline.model.score_middles(context.prompt_prefix(), context.suffix, texts)
    assert [candidate.score for candidate in result.candidates] == pytest.approx(expected, abs=1e-4)

    unranked = pipeline.generate(context, Settings(seed=3, candidates=2, rerank=False), extra_middles=extras)
    assert [c.score for c in unranked.candidates][2:] == [float("-inf")] * 2  # without rerank: after the model's
    completion = pipeline.complete(document, position, settings)
    assert {ranked.text for ranked in completion.ranked} >= {"'started %s', name)"}  # post-processed, ranked
