"""Persistent workspaces: ``data_dir/workspaces/<id>/``, bind-mounted at /workspace.

A workspace outlives the sessions that use it; several sessions may share one. Ids are
validated before they touch a path: no separators, no ``..``, no hidden names.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from sandkasten.errors import NotFoundError, ValidationError, with_code
from sandkasten.session.hostfs import SANDBOX_GID, SANDBOX_UID
from sandkasten.store.db import StateDB, WorkspaceRow

WORKSPACE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def validate_workspace_id(workspace_id: str) -> str:
    """Return ``workspace_id`` if it is a safe directory name, else raise ValidationError."""
    if not WORKSPACE_ID_RE.fullmatch(workspace_id):
        raise with_code(
            ValidationError(
                f"invalid workspace id {workspace_id!r}",
                hint="1-128 characters: letters, digits, '_', '-', '.', starting with a "
                "letter or digit",
            ),
            "invalid_workspace_id",
        )
    return workspace_id


class Workspaces:
    """Workspace directories and their rows in the state store."""

    def __init__(self, root: Path, db: StateDB) -> None:
        self.root = root
        self.db = db
        root.mkdir(parents=True, exist_ok=True)
        os.chmod(root, 0o711)  # noqa: S103 - the sandbox user may traverse into its own workspace only

    def path(self, workspace_id: str) -> Path:
        return self.root / validate_workspace_id(workspace_id)

    def ensure(self, workspace_id: str) -> Path:
        """Create the workspace (idempotent) and return its directory."""
        p = self.path(workspace_id)
        try:
            p.mkdir(mode=0o755)
            os.chown(p, SANDBOX_UID, SANDBOX_GID)
        except FileExistsError:
            if p.is_symlink() or not p.is_dir():
                raise with_code(
                    ValidationError(f"workspace {workspace_id} is not a directory"),
                    "invalid_workspace_id",
                ) from None
        self.db.ensure_workspace(workspace_id, {"sandkasten.workspace_id": workspace_id})
        return p

    def existing(self, workspace_id: str) -> Path:
        p = self.path(workspace_id)
        if not p.is_dir() or p.is_symlink():
            raise with_code(
                NotFoundError(f"workspace not found: {workspace_id}"), "workspace_not_found"
            )
        return p

    def list(self) -> list[WorkspaceRow]:
        rows = {r.id: r for r in self.db.list_workspaces()}
        # Directories made by an older daemon or by hand are workspaces too.
        for entry in sorted(self.root.iterdir()) if self.root.is_dir() else []:
            if (
                entry.name not in rows
                and WORKSPACE_ID_RE.fullmatch(entry.name)
                and entry.is_dir()
                and not entry.is_symlink()
            ):
                rows[entry.name] = self.db.ensure_workspace(entry.name)
        return sorted(rows.values(), key=lambda r: r.created_at)

    def delete(self, workspace_id: str) -> None:
        p = self.path(workspace_id)
        known = self.db.get_workspace(workspace_id) is not None
        if not p.exists() and not known:
            raise with_code(
                NotFoundError(f"workspace not found: {workspace_id}"), "workspace_not_found"
            )
        if p.is_dir() and not p.is_symlink():
            # rmtree opens directories with O_NOFOLLOW relative to their parent fd on Linux
            # (rmtree.avoids_symlink_attacks): a symlink inside cannot redirect the removal.
            assert shutil.rmtree.avoids_symlink_attacks
            shutil.rmtree(p)
        elif p.is_symlink():
            p.unlink()
        self.db.delete_workspace(workspace_id)
