"""Where the embedded world's models live.

The built world ships in the package (assets/, ~11 MB of safetensors) because building it
takes minutes of CPU that every fresh clone and CI run would otherwise repeat;
`tailor toy build` rebuilds it from its seed, and world.json records the spec and hashes
that a rebuild must reproduce. EDGE_TAILOR_WORLD points at another built world.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import InputError

SHIPPED = Path(__file__).parent / "assets"


def world_dir() -> Path:
    return Path(os.environ.get("EDGE_TAILOR_WORLD", SHIPPED))


def world_info() -> dict:
    path = world_dir() / "world.json"
    if not path.exists():
        raise InputError(path, None, "the embedded world is not built: run `tailor toy build`")
    return json.loads(path.read_text())


def embedded_model_dir(name: str) -> Path:
    if name not in ("teacher", "student"):
        raise InputError("config", "model.path", f"unknown embedded model 'embedded:{name}' (teacher, student)")
    folder = world_dir() / name
    if not (folder / "config.json").exists():
        raise InputError(folder, None, "the embedded world is not built: run `tailor toy build`")
    return folder
