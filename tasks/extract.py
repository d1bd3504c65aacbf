"""What ingest extracts from each input file, and how; imported by the isolated worker (no Prefect here).

The worker process unpickles `IngestConfig` and calls `extract_file`, so this module and its imports are all
it loads: keeping Prefect out saves about a second and ~80 MB per worker start.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from storage.schemas import Document, Drop
from tasks.fetch import FetchConfig
from tasks.inputs import InputFile
from tasks.pdf import PdfConfig, extract_pdf
from tasks.text import TextConfig, extract_text_file
from tasks.warc import WarcConfig, extract_warc
from tasks.web import HtmlConfig, extract_html_file

SOURCE_OF_KIND = {
    "pdf": "pdf",
    "html": "html",
    "warc": "warc",
    "text": "text",
    "urls": "url",
    "other": "text",
}


class IngestConfig(BaseModel):
    """How raw inputs become documents."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    pdf: PdfConfig = Field(default_factory=PdfConfig)
    """PDF extraction (PyMuPDF)."""
    html: HtmlConfig = Field(default_factory=HtmlConfig)
    """HTML decoding and main-content extraction (also used for WARC records and fetched URLs)."""
    warc: WarcConfig = Field(default_factory=WarcConfig)
    """WARC/ARC reading."""
    text: TextConfig = Field(default_factory=TextConfig)
    """Plain text, JSONL and Markdown."""
    fetch: FetchConfig = Field(default_factory=FetchConfig)
    """Fetching URL lists over HTTP."""
    file_timeout_s: float = 300.0
    """Hard limit: a worker silent for this long is killed and the file recorded as extract_timeout."""
    worker_memory_mb: int = 6144
    """Address space each extraction worker may add to what it starts with (its imports and thread stacks
    are not counted); a file that needs more is extract_out_of_memory."""
    max_file_bytes: int = 1 << 30
    """Single-document files (PDF, HTML, text) larger than this are recorded as file_too_large, unopened."""
    group_files: int = 32
    """At most this many files per output shard."""
    group_bytes: int = 256 << 20
    """At most this many input bytes per output shard (one file may exceed it alone)."""
    urls_per_group: int = 500
    """URLs fetched per output shard."""


def extract_file(item: tuple[InputFile, IngestConfig]) -> Iterator[Document | Drop]:
    """Extract every document of one input file (runs inside the isolated worker)."""
    f, cfg = item
    path = Path(f.path)
    if f.error:  # found but not readable (a FIFO, a broken link, an I/O error): never opened
        yield Drop(
            uri=path.as_uri(), source=SOURCE_OF_KIND[f.kind], reason="input_unreadable", detail=f.error
        )
    elif f.kind not in ("warc", "text") and f.size > cfg.max_file_bytes:
        detail = f"{f.size} bytes is over max_file_bytes={cfg.max_file_bytes}"
        yield Drop(uri=path.as_uri(), source=SOURCE_OF_KIND[f.kind], reason="file_too_large", detail=detail)
    elif f.kind == "pdf":
        yield from extract_pdf(path, cfg.pdf)
    elif f.kind == "html":
        yield from extract_html_file(path, cfg.html)
    elif f.kind == "warc":
        yield from extract_warc(path, cfg.warc, cfg.html)
    elif f.kind == "text":
        yield from extract_text_file(path, cfg.text)
    else:
        detail = (
            "no extractor for this file name; supported: .pdf .html .htm .warc(.gz) .arc(.gz) .txt .md .jsonl"
        )
        yield Drop(uri=path.as_uri(), source="text", reason="unsupported_file_type", detail=detail)
