"""Neural-network layers (``torch.nn.Module``) used by the estimators.

* :class:`TransformerFilterAttention`: the Transformer Filter's causal softmax attention
  block on the quadratic embedding (:mod:`lqgt.layers.tf_attention`).
* :class:`AdaptiveFilterAttention`: Adaptive Filter Attention, attention from propagated
  precisions of a linear SDE with robust (Student-t) weights (:mod:`lqgt.layers.afa`).
"""

from .afa import AdaptiveFilterAttention
from .tf_attention import TransformerFilterAttention, quadratic_embedding

__all__ = ["TransformerFilterAttention", "quadratic_embedding", "AdaptiveFilterAttention"]
