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


def _absolute(value, return_pathlike: bool):
    value = Path(os.path.abspath(value))
    return value if return_pathlike else str(value)


class File(_NipypeFile):
    """Nipype's ``File``, absolute from where it was set (symbolic links kept)."""

    def validate(self, objekt, name, value, return_pathlike=False):
        value = super().validate(objekt, name, value, return_pathlike=True)
        return _absolute(value, return_pathlike)


class Directory(_NipypeDirectory):
    """Nipype's ``Directory``, absolute from where it was set (symbolic links kept)."""

    def validate(self, objekt, name, value, return_pathlike=False):
        value = super().validate(objekt, name, value, return_pathlike=True)
        return _absolute(value, return_pathlike)
