"""Chunk datasets for training: the on-disk format and the R9.4.1 builder.

Dataset format (shared by every producer: this module, ``tools.simulate`` and
``tools.data_bam``): one ``.npz`` file (``np.savez``) with

``signal``     float32 ``[M, T]``  normalised signal chunks (``edgecall.signal.normalise``
                                   with ``Normalisation("median_mad")`` over the whole read,
                                   in pA; at the model's sample rate).
``labels``     uint8   ``[M, Lmax]`` target bases, values 1..4 = A,C,G,T, zero-padded.
``label_len``  int32   ``[M]``     number of real label values per row.
``read_id``    str     ``[M]``     the read each chunk came from (split train/val BY READ).
``teacher``    float16 ``[M, T/3, 5]`` optional teacher log-posteriors (blank,A,C,G,T)
                                   for knowledge distillation, stride 3 (deepnano-blitz).
``start``      int64   ``[M]``     optional: chunk start sample within its read.
``sample_rate`` int scalar        optional: samples per second of ``signal``.

Labels are in read (signal) orientation. A chunk with ``label_len == 0`` is never written.
"""
