"""Open-I XML reports (NLM's ``NLMCXR_reports.tgz`` or its ``ecgen-radiology`` folder), and
their MeSH terms written as text for the labeler.

The rules (which sections are read, how MeSH terms become sentences) are described in
:mod:`medvill.data.openi`; the loaders that pair these reports with images are in
:mod:`medvill.data.openi_loaders`.
"""

from __future__ import annotations

import logging
import re
import tarfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from .common import RowPolicy, clean_text, natural_key
from .records import SkipReport

log = logging.getLogger("medvill.data.openi")  # the logger of every Open-I module

REPORTS_TGZ_NAMES = ("NLMCXR_reports.tgz", "NLMCXR_reports.tar.gz")


@dataclass(frozen=True)
class OpenIReport:
    """One NLM Open-I XML report."""

    uid: str                      # "1" for CXR1 / 1.xml
    findings: str
    impression: str
    major: tuple[str, ...] = ()      # MeSH major terms, as written
    automatic: tuple[str, ...] = ()  # MeSH automatic terms
    images: tuple[str, ...] = ()     # parentImage ids, in XML order
    where: str = ""


# ---------------------------------------------------------------------------------------
# XML reports
# ---------------------------------------------------------------------------------------


def _parse_report_xml(data: bytes, fallback_uid: str, where: str) -> OpenIReport:
    root = ET.fromstring(data)
    uid = fallback_uid
    uid_el = root.find("uId")
    if uid_el is not None and uid_el.get("id"):
        m = re.fullmatch(r"CXR(\d+)", uid_el.get("id", "").strip())
        if m:
            uid = m.group(1)
    sections: dict[str, list[str]] = {}
    for el in root.iter("AbstractText"):
        label = (el.get("Label") or "").strip().upper()
        text = clean_text("".join(el.itertext()))
        if text:
            sections.setdefault(label, []).append(text)
    mesh = root.find("MeSH")
    major = [clean_text(e.text) for e in mesh.findall("major")] if mesh is not None else []
    automatic = [clean_text(e.text) for e in mesh.findall("automatic")] if mesh is not None else []
    images = [p.get("id", "").strip() for p in root.findall("parentImage") if p.get("id", "").strip()]
    return OpenIReport(uid=uid, findings=" ".join(sections.get("FINDINGS", [])),
                       impression=" ".join(sections.get("IMPRESSION", [])),
                       major=tuple(t for t in major if t), automatic=tuple(t for t in automatic if t),
                       images=tuple(images), where=where)


def _xml_sources(source: Path) -> Iterator[tuple[str, str, bytes]]:
    """(where, file stem, bytes) of every XML report in a .tgz or a folder."""
    if source.is_file():
        found = []
        with tarfile.open(source, "r|*") as tf:  # streamed: one pass over the compressed file
            for m in tf:
                if m.isfile() and m.name.endswith(".xml") and not Path(m.name).name.startswith("._"):
                    fh = tf.extractfile(m)
                    if fh is not None:
                        found.append((f"{source}:{m.name}", Path(m.name).stem, fh.read()))
        yield from sorted(found, key=lambda f: natural_key(f[0]))
    else:
        folder = source / "ecgen-radiology" if (source / "ecgen-radiology").is_dir() else source
        for p in sorted(folder.glob("*.xml"), key=lambda p: natural_key(p.name)):
            yield str(p), p.stem, p.read_bytes()


def find_xml_source(root: Path, reports: str | Path | None) -> Path:
    """Where the XML reports are: ``reports`` when given, else ``root/ecgen-radiology``, an NLM
    ``.tgz`` in ``root``, or ``root`` itself when it holds ``*.xml`` files."""
    if reports is not None:
        src = Path(reports)
        if not src.exists():
            raise FileNotFoundError(f"Open-I reports not found: {src}")
        return src
    if (root / "ecgen-radiology").is_dir():
        return root / "ecgen-radiology"
    for name in REPORTS_TGZ_NAMES:
        if (root / name).is_file():
            return root / name
    if root.is_dir() and any(root.glob("*.xml")):
        return root
    raise FileNotFoundError(f"Open-I XML reports not found in {root}: expected ecgen-radiology/*.xml or "
                            f"{' / '.join(REPORTS_TGZ_NAMES)}")


def _parse_all(source: Path) -> tuple[tuple[str, OpenIReport | None, str], ...]:
    out: list[tuple[str, OpenIReport | None, str]] = []
    for where, stem, data in _xml_sources(source):
        try:
            out.append((where, _parse_report_xml(data, stem, where), ""))
        except ET.ParseError as exc:
            out.append((where, None, f"not valid XML ({exc})"))
    return tuple(out)


@lru_cache(maxsize=2)
def _parse_archive(path: str, size: int, mtime_ns: int) -> tuple[tuple[str, OpenIReport | None, str], ...]:
    """Parsed reports of one archive, cached per (path, size, mtime): the splits of one run
    read the same archive."""
    return _parse_all(Path(path))


def read_openi_xml(source: str | Path, *, policy: str = "skip", skips: SkipReport | None = None) -> list[OpenIReport]:
    """Every report of an Open-I XML collection: a ``.tgz`` as NLM ships it, an
    ``ecgen-radiology`` folder, or a folder holding it.  Sorted by uid; an XML file that
    cannot be parsed, or a uid seen twice, is a bad row."""
    source = Path(source)
    rows = RowPolicy(policy, skips, source)
    if source.is_file():
        st = source.stat()
        parsed = _parse_archive(str(source.resolve()), st.st_size, st.st_mtime_ns)
    else:
        parsed = _parse_all(source)
    reports: dict[str, OpenIReport] = {}
    for where, rep, error in parsed:
        if rep is None:
            rows.bad(error, where)
            continue
        if rep.uid in reports:
            rows.bad(f"report uid {rep.uid} appears twice (also {reports[rep.uid].where})", where)
            continue
        reports[rep.uid] = rep
    rows.finish(log)
    return [reports[k] for k in sorted(reports, key=natural_key)]


# ---------------------------------------------------------------------------------------
# MeSH -> text
# ---------------------------------------------------------------------------------------

NORMAL_TEXT = "no acute cardiopulmonary abnormality"


def mesh_term_text(term: str) -> str:
    """One MeSH term as a phrase for the labeler (rules: :mod:`medvill.data.openi`); "" to drop it."""
    term = clean_text(term)
    if not term or term.lower() == "no indexing":
        return ""
    if term.lower() == "normal":
        return NORMAL_TEXT
    parts = [p.strip() for p in term.split("/") if p.strip()]
    if not parts:
        return ""
    heading = parts[0]
    if ", " in heading:  # inverted MeSH heading: "Catheters, Indwelling" -> "Indwelling Catheters"
        pieces = [p.strip() for p in heading.split(",") if p.strip()]
        heading = " ".join(pieces[1:] + pieces[:1])
    return " ".join(list(reversed(parts[1:])) + [heading]).lower()


def mesh_to_text(terms: Sequence[str]) -> str:
    """MeSH terms -> report-like text for the labeler: one sentence per term (duplicates
    dropped), e.g. ``["Cardiomegaly/mild", "normal"]`` -> ``"mild cardiomegaly. no acute
    cardiopulmonary abnormality."``; ``""`` when no term is left."""
    out: list[str] = []
    for t in terms:
        phrase = mesh_term_text(t)
        if phrase and phrase not in out:
            out.append(phrase)
    return " ".join(f"{p}." for p in out)
