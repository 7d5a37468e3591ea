"""The daemon's view of the image store: resolve a name to layers, lease, list, pull, delete.

:class:`StoreImages` adapts :class:`imgbuilder.store.Store`; imgbuilder's errors are
translated here into the daemon's error tree (one boundary, stable codes).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from sandkasten.errors import NotFoundError, SandkastenError, ValidationError, with_code

PULL_HINT = "sandkasten image pull --name {name} REF"


@dataclass(frozen=True)
class ImageInfo:
    """What a session needs from an image; ``record`` is the store's own record."""

    name: str
    manifest_digest: str
    layer_paths: list[Path]
    env: list[str] = field(default_factory=list)
    workdir: str = ""
    record: Any = None


class ImageSource(Protocol):
    def resolve(self, name: str) -> ImageInfo: ...
    def lease(self, session_id: str, image: ImageInfo) -> None: ...
    def release(self, session_id: str) -> None: ...
    def list(self) -> list[dict[str, Any]]: ...
    def delete(self, name: str) -> None: ...
    def pull(
        self,
        ref: str,
        *,
        name: str | None,
        platform: str | None,
        progress: Callable[[dict[str, Any]], None],
    ) -> dict[str, Any]: ...


def image_not_found(name: str) -> SandkastenError:
    return with_code(
        NotFoundError(
            f"image not found: {name}",
            hint=f"{PULL_HINT.format(name=name)}  (or: imgbuilder import --name {name} --tar FILE)",
        ),
        "image_not_found",
    )


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {k: _jsonable(v) for k, v in dataclasses.asdict(obj).items()}
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "isoformat"):
        return obj.isoformat()
    if isinstance(obj, str | int | float | bool) or obj is None:
        return obj
    if hasattr(obj, "__dict__"):
        return {k: _jsonable(v) for k, v in vars(obj).items() if not k.startswith("_")}
    return str(obj)


def image_summary(rec: Any) -> dict[str, Any]:
    """The fields ``sandkasten image list`` shows, as JSON."""
    layers = list(getattr(rec, "layers", []) or [])
    return {
        "name": rec.name,
        "reference": getattr(rec, "reference", "") or "",
        "digest": getattr(rec, "manifest_digest", None) or getattr(rec, "config_digest", "") or "",
        "platform": getattr(rec, "platform", "") or "",
        "layers": len(layers),
        "size": sum(int(getattr(layer, "size", 0) or 0) for layer in layers),
        "created": _jsonable(getattr(rec, "created", None)),
        "pulled_at": _jsonable(getattr(rec, "pulled_at", None)),
        "source": getattr(rec, "source", "") or "",
    }


class StoreImages:
    """:class:`ImageSource` over imgbuilder's content-addressed store in ``data_dir``."""

    def __init__(self, data_dir: Path, *, registry_settings: Any = None) -> None:
        from imgbuilder.store import Store

        self.store = Store(data_dir)
        self.registry_settings = registry_settings

    def resolve(self, name: str) -> ImageInfo:
        from imgbuilder.errors import ImageNotFoundError

        try:
            rec = self.store.get_image(name)
        except ImageNotFoundError:
            raise image_not_found(name) from None
        cfg = rec.config or {}
        return ImageInfo(
            name=rec.name,
            # Imported images have no manifest: their config digest identifies them as well.
            manifest_digest=rec.manifest_digest or rec.config_digest or "",
            layer_paths=list(self.store.layer_paths(rec)),
            env=list(cfg.get("Env") or []),
            workdir=str(cfg.get("WorkingDir") or ""),
            record=rec,
        )

    def lease(self, session_id: str, image: ImageInfo) -> None:
        self.store.lease(session_id, image.record)

    def release(self, session_id: str) -> None:
        self.store.release(session_id)

    def list(self) -> list[dict[str, Any]]:
        return [image_summary(r) for r in self.store.list_images()]

    def delete(self, name: str) -> None:
        from imgbuilder.errors import ImageNotFoundError

        try:
            with self.store.exclusive_lock():
                self.store.delete_image(name)
        except ImageNotFoundError:
            raise image_not_found(name) from None

    def pull(
        self,
        ref: str,
        *,
        name: str | None,
        platform: str | None,
        progress: Callable[[dict[str, Any]], None],
    ) -> dict[str, Any]:
        from imgbuilder.pull import pull_image

        from imgbuilder.errors import ImageError

        kwargs: dict[str, Any] = {
            "name": name,
            "platform": platform,
            "progress": lambda ev: progress(_jsonable(ev)),
        }
        if self.registry_settings is not None:
            kwargs["registry_settings"] = self.registry_settings
        try:
            rec = pull_image(self.store, ref, **kwargs)
        except ImageError as e:
            raise with_code(ValidationError(e.message, hint=e.hint), e.code) from None
        return image_summary(rec)
