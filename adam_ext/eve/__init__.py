"""Eve: what Adam's embeddings know about anatomy, as tools with numbers.

* :mod:`~adam_ext.eve.embed` — global and dense embeddings of images (``adam embed``);
* :mod:`~adam_ext.eve.locality` — landmark patches at three scales: t-SNE, k-NN identity accuracy,
  silhouette, same- vs different-landmark cosine (``adam eve locality``);
* :mod:`~adam_ext.eve.compositionality` — whole vs mean of its parts (``adam eve compositionality``);
* :mod:`~adam_ext.eve.correspondence` — dense matching across views and subjects, landmark
  transfer error (``adam eve correspondence``);
* :mod:`~adam_ext.eve.gradcam` — Grad-CAM of a fine-tuned classifier against findings' boxes
  (``adam eve gradcam``).
* :mod:`~adam_ext.eve.explore` — one self-contained HTML page: point at a radiograph, see where that
  point lands in the others (``adam eve explore``).

Every analysis takes several encoders (``--ckpt NAME=SPEC``, e.g. Adam vs MoCo v2 vs random) and
writes one table and one figure comparing them under ``--out``.
"""

from .embed import Embedder, embed_dataset

__all__ = ["Embedder", "embed_dataset"]
