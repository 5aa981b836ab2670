"""Checks on a notebook's JSON that papermill would otherwise answer with a traceback."""

from __future__ import annotations


def kernelspec_problem(notebook: dict) -> str | None:
    """What is missing for papermill to run ``notebook`` (a parsed ``.ipynb``), or None.

    papermill reads the parameters cell with the translator of the notebook's kernel, so the metadata
    must name the kernel (``kernelspec.name``) and its language (``kernelspec.language`` or
    ``language_info.name``). A notebook without a parameters cell gives None: that is refused first.
    """
    cells = notebook.get("cells") if isinstance(notebook.get("cells"), list) else []
    if not any("parameters" in ((c.get("metadata") or {}).get("tags") or []) for c in cells if isinstance(c, dict)):
        return None  # nothing to read: a missing parameters cell is the first thing to say (drsf batch does)
    meta = notebook.get("metadata") if isinstance(notebook.get("metadata"), dict) else {}
    spec = meta.get("kernelspec") if isinstance(meta.get("kernelspec"), dict) else {}
    info = meta.get("language_info") if isinstance(meta.get("language_info"), dict) else {}
    fix = ('save it from Jupyter with a Python kernel, or add "kernelspec": {"name": "python3", '
           '"language": "python", "display_name": "Python 3"} to its metadata')
    if not spec.get("name"):
        return f"has no kernelspec (metadata.kernelspec.name), so its parameters cannot be read; {fix}"
    if not (spec.get("language") or info.get("name")):
        return f"its kernelspec names no language (metadata.kernelspec.language); {fix}"
    return None
