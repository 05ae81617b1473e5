"""The one home of RESULTS.md's layout: sections, and the notes that outlive a re-run.

A section starts at its ``## `` heading. Everything a benchmark prints into
it is replaced when that benchmark runs again, except what follows
:data:`NOTES_MARKER`: the hand-written analysis of a section (why a target
was missed, what an earlier run measured) is carried into its new version,
since no script can write it again. Notes name the run they speak of.
"""

from __future__ import annotations

from typing import List, Optional

#: The line after which a section's text is hand-written and kept across re-runs.
NOTES_MARKER = "<!-- notes: written by hand, kept when this section is measured again -->"


def split_sections(text: str) -> List[str]:
    """A Markdown report cut before every ``## `` heading: [preamble, section, section, ...]."""
    chunks: List[str] = []
    current: List[str] = []
    for line in text.splitlines():
        if line.startswith("## ") and current:
            chunks.append("\n".join(current).strip("\n"))
            current = []
        current.append(line)
    if current:
        chunks.append("\n".join(current).strip("\n"))
    return chunks


def is_section(chunk: str, heading: str) -> bool:
    """Whether ``chunk`` is the section ``heading`` names: its first line is the
    heading, or the heading then ``:`` ("## Push at scale" is not "## Push")."""
    first = chunk.split("\n", 1)[0]
    return first == heading or first.startswith(heading + ":")


def notes(chunk: str) -> Optional[str]:
    """The hand-written part of a section, marker included; None if it has none."""
    at = chunk.find(NOTES_MARKER)
    return chunk[at:].strip("\n") if at >= 0 else None


def renewed(old: Optional[str], fresh: str) -> str:
    """``fresh``, with the notes of ``old`` (its earlier version) after it, unless
    ``fresh`` brings notes of its own."""
    kept = notes(old) if old else None
    if kept is None or NOTES_MARKER in fresh:
        return fresh.strip("\n")
    return fresh.strip("\n") + "\n\n" + kept


def place_section(text: str, heading: str, fresh: str, after: Optional[str] = None) -> str:
    """``text`` with section ``heading`` replaced by ``fresh`` (its notes kept), or,
    if it has none, ``fresh`` added after the section ``after`` names (else at the end)."""
    chunks = split_sections(text)
    olds = [c for c in chunks if is_section(c, heading)]
    section = renewed(olds[-1] if olds else None, fresh)
    if olds:
        at = chunks.index(olds[0])
    else:
        found = [i for i, c in enumerate(chunks) if after and is_section(c, after)]
        at = found[0] + 1 if found else len(chunks)
    kept = [c for c in chunks if c not in olds]
    kept.insert(at, section)
    return "\n\n".join(kept) + "\n"
