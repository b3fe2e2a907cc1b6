"""Adapters that put the fused operator into other self-supervised learning libraries.

Each submodule needs its library, installed through the extra of the same name, and is imported
explicitly (``import adam_ext.integrations.lightly``); importing this package imports none of them.

- :mod:`adam_ext.integrations.lightly`: ``PrunedNTXentLoss``, a drop-in for lightly's
  ``NTXentLoss(memory_bank_size=(K, D))`` (its MoCo recipe) with the purposive pruner
  (``pip install adam_ext[lightly]``).
"""
