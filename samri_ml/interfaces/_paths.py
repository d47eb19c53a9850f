"""Path inputs of the samri_ml interfaces: made absolute where they are set.

Nipype runs a node in a folder of its own (``Node``, ``MapNode``, ``interface.run(cwd=...)``),
so a relative path that existed where it was set was missing where the node ran
(``MaskBrain(in_file="sub-01_T2w.nii.gz")`` in a Node: ``no such file``). Nipype's own
``resolve=True`` would also follow symbolic links, which renames outputs after a DataLad or
git-annex dataset's content keys: these traits only prepend the current folder
(``os.path.abspath``), as the path was given otherwise.
"""

from __future__ import annotations

import os
from pathlib import Path

from nipype.interfaces.base import Directory as _NipypeDirectory
from nipype.interfaces.base import File as _NipypeFile


class _Absolute:
    """The validation of a path trait, then the path made absolute from the current folder
    (``os.path.abspath``: symbolic links kept)."""

    def validate(self, objekt, name, value, return_pathlike=False):
        value = Path(os.path.abspath(super().validate(objekt, name, value,
                                                      return_pathlike=True)))
        return value if return_pathlike else str(value)


class File(_Absolute, _NipypeFile):
    """Nipype's ``File``, absolute from where it was set (symbolic links kept)."""


class Directory(_Absolute, _NipypeDirectory):
    """Nipype's ``Directory``, absolute from where it was set (symbolic links kept)."""
