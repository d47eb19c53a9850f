"""Writing workflow results into a BIDS-Derivatives folder (atomically)."""

from __future__ import annotations

import json

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    TraitedSpec,
    traits,
)

from samri_ml.bids import atomic_copy, atomic_write_text, derivative_path, sidecar_path
from samri_ml.errors import SamriMLError
from samri_ml.interfaces._base import SimpleInterface
from samri_ml.interfaces._paths import Directory, File, PathStr


class _DerivativesDataSinkInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="file to store")
    source_file = PathStr(mandatory=True, desc="the raw BIDS file it derives from (for its name)")
    base_directory = Directory(mandatory=True, desc="the derivatives folder")
    space = traits.Str(desc="space entity, e.g. the template name")
    desc = traits.Str(desc="desc entity")
    from_ = traits.Str(desc="from entity (transforms)")
    to = traits.Str(desc="to entity (transforms)")
    mode = traits.Str(desc="mode entity (transforms)")
    suffix = traits.Str(desc="suffix; default: the source's")
    extension = traits.Str(desc="extension; default: the input's own")
    metadata = traits.Dict(desc="sidecar JSON content (written next to the file)")


class _DerivativesDataSinkOutputSpec(TraitedSpec):
    out_file = File(desc="the stored file")
    out_meta = File(desc="its sidecar JSON, where metadata was given (as niworkflows' "
                         "DerivativesDataSink gives it)")


class DerivativesDataSink(SimpleInterface):
    """Copy a result into ``<base>/sub-X/[ses-Y/]<datatype>/`` under its BIDS-Derivatives name.

    The copy is atomic (temporary file and rename), so a killed run never leaves a half-written
    derivative behind. Like Nipype's ``DataSink`` the node runs on every run, also where its
    inputs are unchanged, so that a derivative deleted from the folder, or overwritten by
    another run, is written again; a derivative that holds the same bytes already is left as
    it is (with its modification time, which downstream Nipype workflows hash).
    """

    input_spec = _DerivativesDataSinkInputSpec
    output_spec = _DerivativesDataSinkOutputSpec
    _always_run = True

    def _run_interface(self, runtime):
        from pathlib import Path

        in_file = Path(self.inputs.in_file)
        out = sink_path(self.inputs, "".join(in_file.suffixes[-2:])
                        if in_file.name.endswith(".nii.gz") else in_file.suffix)
        atomic_copy(in_file, out)
        if self.inputs.metadata:
            sidecar = sidecar_path(out)
            atomic_write_text(json.dumps(self.inputs.metadata, indent=2) + "\n", sidecar,
                              skip_identical=True)
            self._results["out_meta"] = str(sidecar)
        _describe_dataset(Path(self.inputs.base_directory), self.inputs.source_file, out)
        self._results["out_file"] = str(out)
        return runtime


def _describe_dataset(base, source_file: str, out_file=None) -> None:
    """What describes the derivatives folder, as ``samri_ml-register`` writes it before a run,
    for a workflow built from Python (``init_generic_wf(output_dir=...)``, whose folder had
    none of it): a ``dataset_description.json`` where there is none yet (pybids and the BIDS
    validator refuse a derivatives folder without one; one there is left as it is), the
    ``.bidsignore`` lines of :func:`~samri_ml.bids.output_bidsignore` (a lab's own kept), and
    with a QC table (``out_file``) the data dictionary of its columns."""
    from pathlib import Path

    from samri_ml.bids import output_bidsignore, write_bidsignore
    from samri_ml.qc.metrics import QC_TABLE_SUFFIX, write_qc_table_dictionary

    if out_file is not None and Path(out_file).name.endswith(f"_{QC_TABLE_SUFFIX}.tsv"):
        write_qc_table_dictionary(base)
    write_bidsignore(base, output_bidsignore())
    if (Path(base) / "dataset_description.json").exists():
        return
    from samri_ml import __version__
    from samri_ml.bids import dataset_root, write_dataset_description

    write_dataset_description(base, dataset_root(source_file), __version__,
                              "a samri_ml Nipype workflow (samri_ml.interfaces.DerivativesDataSink)")


def sink_path(inputs, in_extension: str):
    """Where a :class:`DerivativesDataSink` with these ``inputs`` writes a file whose extension
    is ``in_extension`` (used where ``inputs.extension`` is not set)."""
    extra = {}
    for key in ("space", "desc", "from_", "to", "mode"):
        value = getattr(inputs, key)
        if isinstance(value, str) and value:
            extra[key] = value
    return derivative_path(inputs.base_directory, inputs.source_file,
                           suffix=inputs.suffix or None,
                           extension=inputs.extension or in_extension, **extra)


def planned_derivatives(workflow) -> list[tuple[str, str]]:
    """``(path, source_file)`` of every :class:`DerivativesDataSink` of a built (not run)
    workflow: the files a run would write, an image named with its source's extension (the
    steps keep it: a ``.nii`` run gives ``.nii`` derivatives)."""
    from samri_ml.bids import parse_entities

    out = []
    for node in workflow._get_all_nodes():
        if isinstance(node.interface, DerivativesDataSink):
            inputs = node.inputs
            path = sink_path(inputs, parse_entities(inputs.source_file)["extension"])
            out.append((str(path), inputs.source_file))
    return out


#: what a derivative is, by its suffix, as the collision messages name it (in this order)
DERIVATIVE_KINDS = {"": "preprocessed image", "xfm": "transform", "mask": "mask",
                    "metrics": "QC"}


class SharedDerivativeNames(SamriMLError):
    """Sources whose derivatives would have one name (:func:`shared_derivatives`), refused by
    :func:`~samri_ml.workflows.init_generic_wf`; ``clashes`` holds them, for a caller that
    says it in its own words (``samri_ml-register`` names its options)."""

    def __init__(self, message: str, clashes: list):
        super().__init__(message)
        self.clashes = clashes


def shared_derivatives(planned) -> list[tuple[str, str, str, list[str]]]:
    """The pairs of sources in ``planned`` (``(path, source_file)``, as
    :func:`planned_derivatives` gives them) whose derivatives would have one name: one would
    overwrite the other's, in silence (the transform and QC files drop the source's suffix: a
    ``bold`` and a ``cbv`` run with the same entities). ``(first, second, what, paths)``,
    sorted by the sources: ``what`` the kinds of file they share as a message says them
    (``"transform and QC"``, in :data:`DERIVATIVE_KINDS`' order), ``paths`` the shared
    names."""
    from samri_ml.bids import parse_entities

    writers: dict[str, list[str]] = {}
    for path, source in planned:
        if source not in writers.setdefault(path, []):
            writers[path].append(source)
    pairs: dict[tuple[str, str], list[str]] = {}
    for path, sources in writers.items():
        if len(sources) > 1:
            pairs.setdefault(tuple(sorted(sources)[:2]), []).append(path)
    out = []
    for (first, second), paths in sorted(pairs.items()):
        found = {DERIVATIVE_KINDS.get(parse_entities(p)["suffix"], DERIVATIVE_KINDS[""])
                 for p in paths}
        kinds = [kind for kind in DERIVATIVE_KINDS.values() if kind in found]
        what = " and ".join([", ".join(kinds[:-1]), kinds[-1]] if len(kinds) > 1 else kinds)
        out.append((first, second, what, sorted(paths)))
    return out


def sink_outputs(graph) -> list[str]:
    """The files the :class:`DerivativesDataSink` nodes of an executed graph (what
    ``Workflow.run`` returns) wrote, from their results (also where a node was cached)."""
    out = []
    for node in graph.nodes():
        if isinstance(node.interface, DerivativesDataSink):
            result = node.result
            stored = getattr(getattr(result, "outputs", None), "out_file", None)
            if isinstance(stored, str) and stored:
                out.append(stored)
    return out
