"""The files step: the site's folder `<sites_root>/<domain>/` rendered from its template.

A manifest (`.provision-manifest.json`, 0600; nginx denies dot-files) remembers the sha256 of
every file as last rendered. A file whose content is neither that nor the new render was
changed by hand: it is never overwritten, but reported as drift (the Change names it and diffs
it against the template) and acknowledged in the manifest, so later runs stay quiet until it
changes again. A file deleted by hand stays deleted, for the same reason.

Only files this step writes are journaled and restored: they are absent or hold an earlier
render of ours, so their before-state is small; a template with big files goes through
`keep_before` and a checkpoint copy of the folder instead.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provisioner.config import Settings
from provisioner.engine.step import Change, RunContext, Scope, Step, Undo, unified_diff
from provisioner.fsutil import write_atomically
from provisioner.site.spec import SiteSpec
from provisioner.site.templates import TemplateError, load_site_template, render_site

MANIFEST = ".provision-manifest.json"
DELETED = "deleted"
# A before-state bigger than this (bytes of files to restore) is kept as a checkpoint copy.
INLINE_LIMIT = 256 * 1024


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _journal_text(data: bytes) -> str | dict[str, str]:
    """File content as the journal holds it: text, or base64 when it is not UTF-8."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(data).decode("ascii")}


def _from_journal(content: str | dict[str, str]) -> bytes:
    if isinstance(content, dict):
        return base64.b64decode(content["base64"])
    return content.encode("utf-8")


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes() if not path.is_symlink() else None
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None


@dataclass
class Plan:
    """What the folder holds against what the template renders, file by file."""

    wanted: dict[str, bytes]
    current: dict[str, bytes | None]
    create: list[str] = field(default_factory=list)
    update: list[str] = field(default_factory=list)
    new_drift: list[str] = field(default_factory=list)
    known_drift: list[str] = field(default_factory=list)
    manifest_before: bytes | None = None
    manifest_after: bytes = b""

    @property
    def writes(self) -> list[str]:
        return self.create + self.update

    @property
    def touched(self) -> list[str]:
        """Every path apply writes (relative to the folder), the manifest last."""
        changed = self.manifest_after != self.manifest_before
        return self.writes + ([MANIFEST] if changed else [])


class FilesStep(Step):
    """`<sites_root>/<domain>/` holds the template's files, hand edits kept."""

    name = "files"
    scope = Scope.HOST
    inline_limit = INLINE_LIMIT

    def __init__(self, spec: SiteSpec, settings: Settings) -> None:
        self.spec = spec
        self.settings = settings
        self.folder = settings.sites_root / spec.domain

    # ---------------------------------------------------------------- reading
    def _manifest(self) -> dict[str, Any]:
        try:
            data = json.loads((self.folder / MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {"files": {}, "kept": {}}
        if not isinstance(data, dict):
            return {"files": {}, "kept": {}}
        return {"files": dict(data.get("files") or {}), "kept": dict(data.get("kept") or {})}

    def plan(self) -> Plan:
        wanted = {rel: text.encode("utf-8") for rel, text in render_site(self.spec).items()}
        old = self._manifest()
        plan = Plan(wanted, {rel: _read(self.folder / rel) for rel in wanted})
        plan.manifest_before = _read(self.folder / MANIFEST)
        files: dict[str, str] = {}
        kept: dict[str, str] = {}
        for rel, want in wanted.items():
            cur = plan.current[rel]
            cur_sha = DELETED if cur is None else sha256(cur)
            rendered_before = old["files"].get(rel)
            if cur_sha == sha256(want) or (cur is None and rendered_before is None):
                if cur is None:
                    plan.create.append(rel)
                files[rel] = sha256(want)
            elif cur is not None and rendered_before == cur_sha:
                plan.update.append(rel)
                files[rel] = sha256(want)
            else:  # changed (or deleted) by hand since the last render: keep it
                (plan.known_drift if old["kept"].get(rel) == cur_sha else plan.new_drift).append(
                    rel
                )
                if rendered_before is not None:
                    files[rel] = rendered_before
                kept[rel] = cur_sha
        manifest = {"template": self.spec.template, "files": files, "kept": kept}
        plan.manifest_after = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
        return plan

    def drift(self) -> list[str]:
        """The files changed or deleted by hand since they were rendered (never overwritten)."""
        plan = self.plan()
        return sorted(plan.new_drift + plan.known_drift)

    def _missing_dirs(self, rels: list[str]) -> list[str]:
        """Folders apply would create, deepest first (rollback removes them when empty)."""
        missing: set[Path] = set()
        for rel in rels:
            parent = (self.folder / rel).parent
            while not parent.exists() and parent not in missing:
                missing.add(parent)
                parent = parent.parent
        return [str(p) for p in sorted(missing, key=lambda p: len(p.parts), reverse=True)]

    # ---------------------------------------------------------------- the contract
    def preflight(self, ctx: RunContext) -> list[str]:
        root = self.settings.sites_root
        problems = []
        if not root.is_dir():
            problems.append(
                f"sites folder {root} does not exist: create it, or set PROVISION_SITES_ROOT"
            )
        elif not os.access(root, os.W_OK | os.X_OK):
            problems.append(f"sites folder {root} is not writable by this user: fix its owner")
        if self.folder.exists() and not self.folder.is_dir():
            problems.append(f"{self.folder} exists and is not a folder: move it away")
        try:
            load_site_template(self.spec.template).sources()
        except TemplateError as exc:
            problems.append(f"{exc}: reinstall provisioner")
        return problems

    def _summary(self, plan: Plan) -> str:
        where = f"{self.folder}/"
        total = len(plan.wanted)
        if not self.folder.exists():
            return f"created {where} with {total} templates"
        parts = []
        if plan.create:
            parts.append(f"added {len(plan.create)}")
        if plan.update:
            parts.append(f"updated {len(plan.update)}")
        text = f"{' and '.join(parts)} of {total} templates in {where}" if parts else ""
        if plan.new_drift:
            listed = ", ".join(plan.new_drift)
            drift = (
                f"kept {len(plan.new_drift)} file(s) changed by hand (not overwritten): {listed}"
            )
            text = f"{text}; {drift}" if text else f"in {where} {drift}"
        return text or f"recorded the {total} rendered templates of {where} in {MANIFEST}"

    def check(self, ctx: RunContext) -> Change | None:
        plan = self.plan()
        if not plan.touched:
            return None
        diffs = []
        for rel in plan.update:
            old = (plan.current[rel] or b"").decode("utf-8", "replace")
            diffs.append(unified_diff(old, plan.wanted[rel].decode(), rel))
        for rel in plan.new_drift:  # template (a) against the hand-edited file (b)
            cur = plan.current[rel]
            now = None if cur is None else cur.decode("utf-8", "replace")
            diffs.append(unified_diff(plan.wanted[rel].decode(), now, rel))
        return Change(
            summary=self._summary(plan),
            before={
                "folder": str(self.folder),
                "files": {rel: self._before_of(plan, rel) for rel in plan.touched},
            },
            after={
                "folder": str(self.folder),
                "written": plan.touched,
                "kept": plan.new_drift + plan.known_drift,
                "created_dirs": self._missing_dirs(plan.touched),
            },
            diff="".join(diffs) or None,
        )

    def _before_of(self, plan: Plan, rel: str) -> dict[str, Any] | None:
        data = plan.manifest_before if rel == MANIFEST else plan.current[rel]
        if data is None:
            return None
        mode = (self.folder / rel).stat().st_mode & 0o7777
        return {"content": _journal_text(data), "mode": mode}

    def _checkpointed(self, ctx: RunContext, files: dict[str, Any]) -> dict[str, Any] | None:
        """The folder kept as a checkpoint when its before-state is too big to journal inline."""
        if ctx.checkpoints is None or len(json.dumps(files)) <= self.inline_limit:
            return None
        key = f"site-files-{sha256(self.spec.domain.encode())[:24]}"
        reference = ctx.checkpoint().keep(key, self.folder)
        return {"folder": str(self.folder), "checkpoint": reference, "touched": sorted(files)}

    def keep_before(self, ctx: RunContext, change: Change) -> Change:
        files = (change.before or {}).get("files")
        kept = None if files is None else self._checkpointed(ctx, files)
        return change if kept is None else Change(change.summary, kept, change.after, change.diff)

    def apply(self, ctx: RunContext) -> Undo:
        plan = self.plan()
        touched = plan.touched
        created = self._missing_dirs(touched)
        files = {rel: self._before_of(plan, rel) for rel in touched}
        undo: Undo = self._checkpointed(ctx, files) or {"folder": str(self.folder), "files": files}
        undo["created_dirs"] = created
        undo["kept"] = plan.new_drift + plan.known_drift
        for rel in plan.writes:
            path = self.folder / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(path, plan.wanted[rel], 0o644)
        if MANIFEST in touched:
            self.folder.mkdir(parents=True, exist_ok=True)
            write_atomically(self.folder / MANIFEST, plan.manifest_after, 0o600)
        return undo

    def undo_from_change(self, change: Change) -> Undo:
        before = dict(change.before or {})
        before["created_dirs"] = (change.after or {}).get("created_dirs", [])
        return before

    def rollback(self, ctx: RunContext, undo: Undo) -> None:
        folder = Path(undo["folder"])
        files: dict[str, Any] = undo.get("files") or {}
        saved: Path | None = None
        if "checkpoint" in undo:
            files = {rel: None for rel in undo.get("touched", [])}
            if undo["checkpoint"].get("exists"):
                saved = ctx.checkpoint().folder / undo["checkpoint"]["checkpoint"]
        for rel, before in files.items():
            path = folder / rel
            if path.parent.is_dir():  # temp files of a write killed half-way
                for torn in path.parent.glob(f".{path.name}.*.tmp"):
                    torn.unlink(missing_ok=True)
            if saved is not None and (saved / rel).is_file():
                kept = saved / rel
                mode = kept.stat().st_mode & 0o7777
                before = {"content": _journal_text(kept.read_bytes()), "mode": mode}
            if before is None:
                path.unlink(missing_ok=True)
            else:
                write_atomically(path, _from_journal(before["content"]), before["mode"])
        for folder_made in undo.get("created_dirs", []):
            try:
                Path(folder_made).rmdir()
            except OSError:
                continue  # not empty: something else lives there now
