"""The offline demo corpus, built from documentation that ships with every Python installation.

Sources (all present on any machine that runs Crucible, no network): the reference topics that `pydoc`
ships (`pydoc_data.topics`, ~80 topics of the language reference), IDLE's HTML manual
(`idlelib/help.html`), Python's `LICENSE.txt`, and the Markdown long descriptions of the installed
packages. From these the builder writes one file per input kind the pipeline reads: HTML, Markdown, JSONL,
plain text, a multi-page PDF (rendered with PyMuPDF, with running headers and page numbers) and a WARC
(written with warcio, including a revisit, a 404, an image record and a mirror's copies of six pages).
Files are only written when missing, so reruns see identical inputs and hit the cache.
"""

from __future__ import annotations

import html
import io
import json
import sysconfig
from importlib import metadata
from pathlib import Path

from storage.shards import atomic_write

BUILTIN = "builtin:python-docs"
DOCS_URL = "https://docs.python.org/3/reference/"
FIXED_DATE = "2024-01-01T00:00:00Z"
SECOND_DATE = "2024-02-01T00:00:00Z"
MIRROR_URL = "https://mirror.example.org/python/reference/"
# Topics a mirror also serves; all pass curation, so the demo's dedup stage has exact and near copies.
MIRRORED = ("booleans", "calls", "class", "customization", "function", "import")


def _stdlib() -> Path:
    """The standard library folder of the running interpreter."""
    return Path(sysconfig.get_paths()["stdlib"])


def _topics() -> dict[str, str]:
    """pydoc's reference topics, name -> plain text."""
    from pydoc_data.topics import topics

    return dict(sorted(topics.items()))


def _write_once(path: Path, data: bytes) -> None:
    """Write a file unless it already exists (so reruns keep identical inputs)."""
    if not path.exists():
        atomic_write(path, lambda tmp: tmp.write_bytes(data))


def _topic_page(name: str, text: str, banner: str = "") -> str:
    """A documentation-style HTML page for one topic, with the navigation every page shares."""
    nav = "<nav><a href='/'>Python</a> » <a href='/3/reference/'>Language Reference</a></nav>"
    paras = "".join(f"<p>{html.escape(p)}</p>" for p in [banner, *text.split("\n\n")] if p.strip())
    return (
        f"<html><head><title>{html.escape(name)} — Python reference</title></head><body>{nav}"
        f"<main><h1>{html.escape(name)}</h1>{paras}</main><footer>© Python Software Foundation</footer>"
        "</body></html>"
    )


def _markdown_descriptions(limit: int) -> list[tuple[str, str]]:
    """(name, markdown) long descriptions of installed packages that declare Markdown."""
    found: dict[str, str] = {}
    for dist in metadata.distributions():
        meta = dist.metadata
        body = meta.get_payload() if hasattr(meta, "get_payload") else ""
        kind = (meta.get("Description-Content-Type") or "").lower()
        name = (meta.get("Name") or "").lower()
        if name and "markdown" in kind and isinstance(body, str) and len(body) > 500:
            found.setdefault(name, body)
    return sorted(found.items())[:limit]


def _pdf_bytes(title: str, paragraphs: list[str]) -> bytes:
    """Render paragraphs into a multi-page PDF with a running header and page numbers."""
    import pymupdf

    width, height, margin = 595, 842, 72
    story = pymupdf.Story(html="".join(f"<p>{html.escape(p)}</p>" for p in paragraphs))
    writer_buf = io.BytesIO()
    writer = pymupdf.DocumentWriter(writer_buf)
    more = True
    while more:
        device = writer.begin_page(pymupdf.Rect(0, 0, width, height))
        more, _ = story.place(pymupdf.Rect(margin, margin, width - margin, height - margin))
        story.draw(device)
        writer.end_page()
    writer.close()
    doc = pymupdf.open("pdf", writer_buf.getvalue())
    for number, page in enumerate(doc, start=1):
        page.insert_text((margin, 40), title, fontsize=9)
        page.insert_text((width / 2, height - 30), str(number), fontsize=9)
    doc.set_metadata(
        {"title": title, "author": "Python Software Foundation", "creationDate": "", "modDate": ""}
    )
    return doc.tobytes(garbage=3, deflate=True, no_new_id=True)


def _ids(n: int) -> dict[str, str]:
    """Fixed WARC date and record id, so the archive is the same on every machine."""
    return {"WARC-Date": FIXED_DATE, "WARC-Record-ID": f"<urn:uuid:00000000-0000-0000-0000-{n:012d}>"}


def _warc_bytes(pages: list[tuple[str, str]]) -> bytes:
    """A gzipped WARC of HTML responses plus a revisit, a 404 and a non-HTML record."""
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    buf = io.BytesIO()
    writer = WARCWriter(buf, gzip=True)

    def record(url: str, status: str, ctype: str, body: bytes, n: int) -> str:
        headers = StatusAndHeaders(status, [("Content-Type", ctype)], protocol="HTTP/1.1")
        rec = writer.create_warc_record(
            url, "response", payload=io.BytesIO(body), http_headers=headers, warc_headers_dict=_ids(n)
        )
        writer.write_record(rec)
        return rec.rec_headers.get_header("WARC-Payload-Digest")

    digests = [
        record(url, "200 OK", "text/html; charset=utf-8", page.encode(), n)
        for n, (url, page) in enumerate(pages)
    ]
    n = len(pages)
    # A crawler seeing the first page again, unchanged, writes a revisit record instead of the payload.
    revisit = writer.create_revisit_record(
        pages[0][0],
        digests[0],
        pages[0][0],
        FIXED_DATE,
        warc_headers_dict={**_ids(n), "WARC-Date": SECOND_DATE},
    )
    writer.write_record(revisit)
    record(DOCS_URL + "missing.html", "404 Not Found", "text/html", b"<html>Not found</html>", n + 1)
    record(DOCS_URL + "logo.png", "200 OK", "image/png", b"\x89PNG\r\n\x1a\n", n + 2)
    return buf.getvalue()


def _mirror_pages(topics: dict[str, str]) -> list[tuple[str, str]]:
    """A mirror site's copies of a few pages (what dedup is for): half verbatim, half with a banner."""
    names = [n for n in MIRRORED if n in topics]
    banner = "This copy is served by an unofficial mirror of the Python documentation and refreshed weekly."
    return [
        (f"{MIRROR_URL}{n}.html", _topic_page(n, topics[n], banner if k % 2 else ""))
        for k, n in enumerate(names)
    ]


def build_demo_corpus(out: Path, packages: int = 60) -> Path:
    """Materialize the demo corpus under `out` (idempotent) and return that folder."""
    out = Path(out)
    topics = _topics()
    names = list(topics)
    lines = [
        json.dumps({"id": n, "title": n, "text": t.strip()}, ensure_ascii=False) for n, t in topics.items()
    ]
    _write_once(out / "text" / "pydoc-topics.jsonl", ("\n".join(lines) + "\n").encode())
    _write_once(out / "text" / "python-LICENSE.txt", (_stdlib() / "LICENSE.txt").read_bytes())
    _write_once(out / "html" / "idle-help.html", (_stdlib() / "idlelib" / "help.html").read_bytes())
    for name, body in _markdown_descriptions(packages):
        front = f"---\ntitle: {json.dumps(name)}\nsource: installed package metadata\n---\n\n"
        _write_once(out / "markdown" / f"{name}.md", (front + body).encode())
    pdf_text = [topics[n] for n in names[:12]]
    _write_once(
        out / "pdf" / "python-reference-excerpt.pdf", _pdf_bytes("The Python Language Reference", pdf_text)
    )
    pages = [(f"{DOCS_URL}{n}.html", _topic_page(n, topics[n])) for n in names[12:]]
    pages += _mirror_pages(topics)
    _write_once(out / "warc" / "docs-crawl.warc.gz", _warc_bytes(pages))
    return out


def resolve_inputs(inputs: list[str], run_root: Path) -> list[str]:
    """Replace `builtin:python-docs` by the materialized demo corpus folder."""
    return [
        str(build_demo_corpus(Path(run_root) / "inputs" / "python-docs")) if i == BUILTIN else i
        for i in inputs
    ]
