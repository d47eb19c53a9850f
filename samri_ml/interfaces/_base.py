"""The base of samri_ml's interfaces: Nipype's ``SimpleInterface``, whose cached results, when
Nipype cannot read them back, make the node run again."""

from __future__ import annotations

from nipype.interfaces.base import SimpleInterface as _NipypeSimpleInterface


class SimpleInterface(_NipypeSimpleInterface):
    """Nipype's ``SimpleInterface``, its outputs listed only by a run of its own.

    Where a cached node's result file cannot be read back (an output file of it deleted or
    moved, a result written by another version), Nipype asks the interface to list its
    outputs again: Nipype's ``SimpleInterface`` listed none, and the node gave every output
    undefined, to fail the next node ('requires a value for input in_file'). Here that is a
    ``FileNotFoundError``, on which Nipype runs the node again, as it does for its own
    interfaces whose outputs are missing."""

    def _list_outputs(self):
        if not self._results:
            raise FileNotFoundError(f"{type(self).__name__}: the outputs of an earlier run "
                                    "could not be read back; running it again")
        return self._results
