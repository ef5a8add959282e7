"""Tasks and data: Penn Treebank streams and the Copy / Repeat Copy episodes.

- :mod:`dnirnn.data.vocab`: :class:`Vocab`, a token <-> id table.
- :mod:`dnirnn.data.ptb`: the PTB files: where they live, checksums, verified download.
- :mod:`dnirnn.data.ptb_corpus`: tokenisation, the ``Corpus`` and ``batchify``.
- :mod:`dnirnn.data.repeat_copy`: the NTM / DNC Copy and Repeat Copy tasks.
"""
