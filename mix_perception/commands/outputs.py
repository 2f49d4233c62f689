"""Files the commands write: JSON reports."""

import json
from pathlib import Path


def write_json(path: Path, data: dict) -> None:
    """Write `data` as indented JSON at `path`, creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
