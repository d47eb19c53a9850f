"""Path inputs of the samri_ml interfaces and workflows' inputnodes: made absolute where they
are set.

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

from nipype.interfaces.base import BaseInterfaceInputSpec, DynamicTraitedSpec, traits
from nipype.interfaces.base import Directory as _NipypeDirectory
from nipype.interfaces.base import File as _NipypeFile
from nipype.interfaces.utility import IdentityInterface as _NipypeIdentityInterface


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


class PathStr(traits.BaseStr):
    """A string naming a file that need not be read (``DerivativesDataSink.source_file``: the
    raw file a derivative is named after), made absolute where it is set if it names an
    existing relative path (it was resolved against the node's folder: the derivatives'
    ``dataset_description.json`` recorded that folder as the raw dataset)."""

    def validate(self, objekt, name, value):
        return absolute_if_path(super().validate(objekt, name, os.fspath(value)
                                                 if isinstance(value, os.PathLike) else value))


class InFileKeyedInputSpec(BaseInterfaceInputSpec):
    """The input spec of an interface on ``in_file`` whose cache key holds that file's path and
    content (:func:`samri_ml.models.inference.named_checksum`), when Nipype makes the key.
    Nipype's own key holds a File input's size and modification time (its default
    ``hash_method``, 'timestamp'), not its path: another run of one size and time (written in
    one clock tick, or unpacked from an archive) kept the first's result, its data and its
    name, and a file renamed kept its old name (with 'content' too)."""

    in_file_checksum = traits.Str(usedefault=True,
                                  desc="in_file's path and the size and sha256 of its content "
                                  "(set from 'in_file' when the cache key is made): part of "
                                  "the key, so that another file or a file replaced with its "
                                  "old size and time is processed again")

    def get_hashval(self, hash_method=None):
        from samri_ml.models.inference import named_checksum

        self.in_file_checksum = named_checksum(self.in_file)
        return super().get_hashval(hash_method=hash_method)


def absolute_if_path(value):
    """``value`` with every relative path in it that exists here (a string or a
    ``pathlib.Path``, or in a list or tuple) made absolute (``os.path.abspath``: symbolic links
    kept; a ``Path`` becomes a string, as Nipype's path traits give it); anything else as it
    is. (A relative ``Path`` was left as it was: N4 ran in the node's folder, 'file does not
    exist', a segmentation fault.)"""
    if isinstance(value, list | tuple):
        return type(value)(absolute_if_path(item) for item in value)
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
        if not isinstance(value, str):  # bytes
            return value
        return os.path.abspath(value) if value else value
    if isinstance(value, str) and value and not os.path.isabs(value) and os.path.lexists(value):
        return os.path.abspath(value)
    return value


class _AbsolutePathsSpec(DynamicTraitedSpec):
    """An ``IdentityInterface``'s inputs, existing relative paths made absolute where they are
    set. On the class, not on the traits: Nipype copies a node for every value of its
    iterables, and a copy's dynamic traits are plain ``Python`` ones. The spec's own class
    traits are left alone: adding an input sets Traits' ``trait_added`` event to its name, and
    an input named ``template`` became ``/cwd/template`` where a ``template`` folder existed
    (``samri_ml-register`` run beside one: ``AttributeError: 'NoneType' object has no
    attribute 'type'``)."""

    def __setattr__(self, name, value):
        if name not in self.class_trait_names():
            value = absolute_if_path(value)
        super().__setattr__(name, value)


class IdentityInterface(_NipypeIdentityInterface):
    """Nipype's ``IdentityInterface`` (an ``inputnode``) whose values that name existing
    relative paths are made absolute where they are set (iterables too):
    ``wf.inputs.inputnode.in_file = "sub-01_T2w.nii.gz"`` reached N4 as it was, to run in the
    node's own folder ('file sub-01_T2w.nii.gz does not exist', then a segmentation fault)."""

    input_spec = _AbsolutePathsSpec
