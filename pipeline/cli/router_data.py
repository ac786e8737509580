"""Labelled routing files and router artifacts: reading, validating, naming their columns.

RouteLLM's CSV shape (a prompt and one True/False column per model, optional response texts) and
a team's own (prompt, weak_ok, optional strong_ok and source); JSONL or CSV prompts to route.
"""

from __future__ import annotations

import csv
import hashlib
import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from pipeline.core import routing as r
from pipeline.errors import ConfigError, RouterArtifactError

WEAK_COLUMN = "mistralai/Mixtral-8x7B-Instruct-v0.1"
STRONG_COLUMN = "gpt-4-1106-preview"
# Mixtral-8x7B is not in the price catalog: the weak side is priced as Together's Llama 3.3 70B
# Instruct Turbo, an open-weights model of the same class; pass --weak-model/--weak-provider to
# price another model
WEAK_MODEL, WEAK_PROVIDER = "meta-llama/Llama-3.3-70B-Instruct-Turbo", "together"
STRONG_MODEL, STRONG_PROVIDER = "gpt-4-1106-preview", "openai"
ASSUMED_OUTPUT_TOKENS = 200
DEFAULT_QUALITY = 0.95
csv.field_size_limit(1 << 24)  # prompts and responses can be long


@dataclass(frozen=True, slots=True)
class Row:
    """One labelled prompt: did each model answer it correctly (and what it said, if known)."""

    source: str
    prompt: str
    weak_ok: bool
    strong_ok: bool
    weak_response: str | None = None
    strong_response: str | None = None


def _norm(name: str) -> str:
    return name.strip().lower().rsplit("/", 1)[-1]


def _find_column(fields: Sequence[str], wanted: str, path: Path, role: str) -> str:
    # RouteLLM's files spell the same model "mistralai/Mixtral-8x7B-Instruct-v0.1" (MMLU) and
    # "mixtral-8x7b-instruct-v0.1" (GSM8K): match without case and publisher prefix
    for f in fields:
        if f == wanted:
            return f
    for f in fields:
        if _norm(f) == _norm(wanted):
            return f
    raise ConfigError(f"{path}: no {role} column {wanted!r} (columns: {', '.join(fields)}); "
                      f"pass --{role}-column")


def _bool(value: str | None, path: Path, line: int, column: str) -> bool:
    text = (value or "").strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise ConfigError(f"{path}:{line}: column {column!r} must be True or False, got {value!r}")


def source_name(path: Path) -> str:
    """The subject a file holds: its stem without a benchmark prefix (mmlu_anatomy -> anatomy)."""
    stem = path.stem
    return stem[5:] if stem.startswith("mmlu_") else stem


def _own_traffic_rows(reader: csv.DictReader[str], path: Path) -> list[Row]:
    # a team's own labels (docs/routing.md, "Learning from your own traffic"): production only
    # sees the model it called, so a weak-routed call's success is weak_ok and strong_ok is
    # unknown unless the file says: assumed True (the strong model as the quality bar)
    fields = list(reader.fieldnames or [])
    rows: list[Row] = []
    for rec in reader:
        line = reader.line_num
        strong = (rec.get("strong_ok") or "").strip()
        rows.append(Row((rec.get("source") or "").strip() or source_name(path),
                        rec["prompt"] or "", _bool(rec.get("weak_ok"), path, line, "weak_ok"),
                        _bool(strong, path, line, "strong_ok")
                        if "strong_ok" in fields and strong else True))
    return rows


def read_rows(paths: Iterable[Path], weak_column: str = WEAK_COLUMN,
              strong_column: str = STRONG_COLUMN) -> list[Row]:
    """Labelled rows of CSV files: RouteLLM's shape (prompt, one True/False column per
    model), or a team's own (prompt, weak_ok, optional strong_ok and source)."""
    rows: list[Row] = []
    for path in paths:
        try:
            handle = path.open(newline="", encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
        with handle:
            reader = csv.DictReader(handle)
            fields = list(reader.fieldnames or [])
            if "prompt" not in fields:
                raise ConfigError(f"{path}: no 'prompt' column (columns: {', '.join(fields)})")
            if "weak_ok" in fields:
                rows.extend(_own_traffic_rows(reader, path))
                continue
            weak = _find_column(fields, weak_column, path, "weak")
            strong = _find_column(fields, strong_column, path, "strong")
            weak_resp = f"{weak}_response" if f"{weak}_response" in fields else None
            strong_resp = f"{strong}_response" if f"{strong}_response" in fields else None
            src = source_name(path)
            for rec in reader:
                line = reader.line_num
                rows.append(Row(src, rec["prompt"] or "",
                                _bool(rec.get(weak), path, line, weak),
                                _bool(rec.get(strong), path, line, strong),
                                rec.get(weak_resp) if weak_resp else None,
                                rec.get(strong_resp) if strong_resp else None))
    if not rows:
        raise ConfigError("no rows in the given files")
    return rows


def file_digest(path: Path) -> str:
    """The first 16 hex digits of the file's sha256 (recorded in the artifact)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def load_router(path: str) -> r.RouterArtifact:
    """Read and validate an artifact file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read router artifact {path}: {exc.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RouterArtifactError(f"router artifact {path} is not JSON ({exc}); retrain it "
                                    "with `tokenmeter router train`") from None
    return r.load_artifact(data)


def read_prompts(path: str) -> Iterable[str]:
    """Prompts of a CSV (prompt column), or JSONL of strings or {"prompt": ...}, or - (stdin)."""
    if path != "-" and Path(path).suffix.lower() == ".csv":
        with Path(path).open(newline="", encoding="utf-8") as csv_file:
            reader = csv.DictReader(csv_file)
            if "prompt" not in (reader.fieldnames or []):
                raise ConfigError(f"{path}: no 'prompt' column")
            for rec in reader:
                yield rec["prompt"] or ""
        return
    handle: TextIO = sys.stdin if path == "-" else Path(path).open(encoding="utf-8")
    with handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError:
                raise ConfigError(f"{path}:{number}: not JSON (give a CSV with a prompt "
                                  "column, or JSONL of strings or {\"prompt\": ...})") from None
            text = item.get("prompt", item.get("text")) if isinstance(item, dict) else item
            if not isinstance(text, str):
                raise ConfigError(f"{path}:{number}: no string 'prompt' (or 'text') field")
            yield text
