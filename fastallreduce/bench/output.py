"""Writing a run's results: one JSON of everything and, when asked, a PNG next to it."""
import json
import os
from typing import Callable, Optional


def save_outputs(doc: dict, out_dir: str, stem: str, plot: Optional[Callable[[dict, str], None]],
                 log: Callable[[str], None], prefix: str = "") -> None:
    """Writes ``out_dir/stem.json`` (and ``stem.png`` via ``plot``); records the paths in ``doc``."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{stem}.json")
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)
    doc["json_path"] = path
    log(f"\n{prefix}wrote {path}")
    if plot is not None:
        png = os.path.join(out_dir, f"{stem}.png")
        plot(doc, png)
        doc["png_path"] = png
        log(f"{prefix}wrote {png}")
