"""Nipype's ANTs interfaces as samri_ml's workflows run them: a path with a space refused in one
line before the program runs, and a program that fails named with its status and last words.

Nipype hands some paths to the ANTs programs unquoted (:func:`samri_ml.ants.
unquoted_spaced_paths`), so a template, a scan or a workflow ``base_dir`` with a space in its
path failed with ANTs' own ``file /tmp/labdir/... does not exist``, ITK's ``Fixed Image has
not been set`` and Nipype's TraitError on the missing output, spread over the crash file.
"""

from __future__ import annotations

import os
import shlex

from nipype.interfaces import ants as _nipype_ants

from samri_ml.errors import SamriMLError


def _path_inputs(inputs):
    """``(name, path)`` of every input value (in lists and tuples too) that is an existing
    file or folder."""

    def walk(name, value):
        if isinstance(value, list | tuple):
            for item in value:
                yield from walk(name, item)
        elif isinstance(value, str) and value and os.path.lexists(value):
            yield name, value

    for name, value in sorted(inputs.get().items()):
        yield from walk(name, value)


class _NoUnquotedSpaces:
    """Refuse, before the program runs, a path the command line would hand over split."""

    def _run_interface(self, runtime, *args, **kwargs):
        from samri_ml.ants import unquoted_spaced_paths

        program = os.path.basename(shlex.split(self._cmd)[0])  # the command may be quoted
        found = unquoted_spaced_paths(self.cmdline, _path_inputs(self.inputs))
        if found:
            name, path = found[0]
            raise SamriMLError(f"{program}: {name} {path!r} has a space in "
                               "its path, which "
                               "Nipype hands to the ANTs programs unquoted; hint: copy or link "
                               "it to a path without spaces (the workflow's base_dir too)")
        runtime = super()._run_interface(runtime, *args, **kwargs)
        codes = getattr(runtime, "success_codes", None) or (0,)
        if runtime.returncode is not None and runtime.returncode not in codes:
            # Nipype checks the status after it has listed the outputs: a program that failed
            # without a word (N4 with a shrink factor larger than the image) was reported as
            # "FileNotFoundError: No such file or directory '..._corrected.nii.gz'". Kept
            # short, so that the run's one line and the report give it whole: the program's
            # last words (the node's crash file holds its command line)
            said = " ".join((runtime.stderr or runtime.stdout or "").split())
            if len(said) > 80:
                said = "..." + said[-80:]
            said = f": {said}" if said else " without a word"
            raise SamriMLError(f"{program} exited {runtime.returncode}"
                               f"{said}; hint: check its settings (the registration flavour) "
                               "and inputs")
        return runtime


class Registration(_NoUnquotedSpaces, _nipype_ants.Registration):
    """``nipype.interfaces.ants.Registration``; a path with a space is one line."""


class ApplyTransforms(_NoUnquotedSpaces, _nipype_ants.ApplyTransforms):
    """``nipype.interfaces.ants.ApplyTransforms``; a path with a space is one line."""


class N4BiasFieldCorrection(_NoUnquotedSpaces, _nipype_ants.N4BiasFieldCorrection):
    """``nipype.interfaces.ants.N4BiasFieldCorrection``; a path with a space is one line."""
