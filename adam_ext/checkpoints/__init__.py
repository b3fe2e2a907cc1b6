"""Checkpoints: one format, every layout we read, encoder loading and atomic writes.

The layer below pretraining, fine-tuning and Eve: they read and write weights through it, never
through each other's internals.

* :mod:`.format` — kinds, versions and the version policy of the files adam_ext writes.
* :mod:`.layouts` — :func:`load_pretrained`: ours, official Adam/MoCo and torchvision files,
  normalised (:class:`Pretrained`), every trunk tensor checked.
* :mod:`.encoder` — :func:`load_encoder`: an initialisation spec (``random``, ``imagenet:PATH``,
  a checkpoint PATH) into a ResNet encoder, with an :class:`InitReport`.
* :mod:`.atomic` — atomic writes (temp file, fsync, rename) that name the file on failure.
* :mod:`.card`, :mod:`.card_build`, :mod:`.card_markdown` — model cards of exported encoders: read
  and checked against the weights (:func:`read_card`: parsed into their schema, every claim the
  weights can settle re-derived), built from a checkpoint and its run folder (:func:`build_card`),
  rendered as escaped Markdown (:func:`render_card`); :func:`printable` escapes terminal text.
* :mod:`.export` — ``adam export``: torchvision, smp, timm, MONAI (:mod:`.monai_nets`) and
  safetensors files, with their cards.
"""

from .._util.atomic import (
    WriteError,
    atomic_save,
    atomic_write_files,
    atomic_write_json,
    atomic_write_text,
    json_safe,
)
from .card import (
    CARD_KIND,
    CARD_VERSION,
    UNKNOWN,
    ModelCardWarning,
    card_line,
    card_paths,
    file_sha256,
    is_safetensors,
    printable,
    read_card,
)
from .card_build import build_card
from .card_markdown import render_card
from .encoder import InitReport, init_label, load_encoder, parse_init
from .format import FINETUNE_KIND, FINETUNE_VERSION, PRETRAIN_KIND, PRETRAIN_VERSION, readable_version
from .layouts import ARCHS, Pretrained, infer_arch, load_pretrained, source_encoders, trunk_weights

__all__ = [
    "ARCHS",
    "CARD_KIND",
    "CARD_VERSION",
    "FINETUNE_KIND",
    "FINETUNE_VERSION",
    "PRETRAIN_KIND",
    "PRETRAIN_VERSION",
    "UNKNOWN",
    "InitReport",
    "ModelCardWarning",
    "Pretrained",
    "WriteError",
    "atomic_save",
    "atomic_write_files",
    "atomic_write_json",
    "atomic_write_text",
    "build_card",
    "card_line",
    "card_paths",
    "file_sha256",
    "infer_arch",
    "init_label",
    "is_safetensors",
    "json_safe",
    "load_encoder",
    "load_pretrained",
    "parse_init",
    "printable",
    "read_card",
    "readable_version",
    "render_card",
    "source_encoders",
    "trunk_weights",
]
