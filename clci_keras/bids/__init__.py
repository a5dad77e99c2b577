"""The BIDS App: ``clci-keras bids BIDS_DIR OUTPUT_DIR participant|group`` (docs/bids.md).

* :mod:`~clci_keras.bids.layout`: the T1w scans of a BIDS dataset (pybids), their entities,
  and whether a scan needs registration (``--register auto``);
* :mod:`~clci_keras.bids.derivatives`: the derivative dataset ``OUTPUT_DIR/clci_keras/``:
  file names, ``dataset_description.json``, sidecars, the ITK transform;
* :mod:`~clci_keras.bids.participant`: segment each scan, write its outputs and report;
* :mod:`~clci_keras.bids.group`: the table of every scan and the lesion-overlap map;
* :mod:`~clci_keras.bids.synthetic`: a small synthetic BIDS dataset (tests, docs).

Only the CLI imports this package. pybids is the optional extra ``[bids]``.
"""
from clci_keras.bids.derivatives import PIPELINE_NAME, TEMPLATE_SPACE
from clci_keras.bids.group import run_group
from clci_keras.bids.layout import Scan, find_scans
from clci_keras.bids.participant import ParticipantResult, run_participant

__all__ = ["PIPELINE_NAME", "TEMPLATE_SPACE", "Scan", "find_scans", "run_participant", "ParticipantResult",
           "run_group"]
