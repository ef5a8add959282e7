"""Tasks and data: Penn Treebank streams and the Copy / Repeat Copy episodes.

- :mod:`dnirnn.data.vocab`: :class:`Vocab`, a token <-> id table.
- :mod:`dnirnn.data.ptb`: verified download, tokenisation and ``batchify`` for PTB.
- :mod:`dnirnn.data.repeat_copy`: the NTM / DNC Copy and Repeat Copy tasks.
"""
