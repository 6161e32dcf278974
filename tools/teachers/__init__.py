"""Teachers: networks whose calls and posteriors label training data, and imported models.

This layer sits between ``tools.data`` and ``tools.train`` (it may import ``edgecall``
and ``tools.data``, never train/compress/report):

* :mod:`.torchfile` - torch-saved tensors (dorado ``.tensor``, bonito state dicts) read
  with numpy through a whitelisting unpickler;
* :mod:`.dorado` - dorado/bonito CRF-LSTM networks built from ``config.toml``;
* :mod:`.bonito_ctc` - bonito CTC conv networks (TargetCall peers) built from weights;
* :mod:`.crfcheck` - a small numpy CRF Viterbi / greedy CTC for checking imports;
* :mod:`.importer` - ``tools import-model``: ONNX export, INT8, ``card.toml``.
"""
