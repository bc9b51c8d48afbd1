"""The method stage: estimators that turn features into logits, and the table that names them.

    registry       the method table (:func:`register_method` decorates each estimator class)
    base           what every CLIP-feature classifier shares (validation, routing, array kinds)
    zero_shot      :class:`ZeroShotCLIP`
    cache_models   training-free cache models: :class:`TipAdapter`, :class:`APE`
    finetuned      their fine-tuned variants: :class:`TipAdapterF`, :class:`APET`
    gda            :class:`GDA`, Gaussian discriminant analysis (training-free)
    proker         :class:`ProKeR`, kernel ridge regression around zero-shot CLIP (training-free)
    lp_plus_plus   :class:`LPPlusPlus`, a linear probe blended with the text logits (LP++)
    linear_probe   :class:`LinearProbe`, the CLIP paper's logistic-regression probe
    tda            :class:`TDA`, test-time positive / negative caches of the stream (no shots)
    dmn            :class:`DMNZeroShot`, DMN-ZS's dynamic memory of the stream (no shots)
    stream         what the test-time methods share (memory replay, the streaming base class)
    projector      :class:`SSPProjector`, the training-free vision / language subspace projector
    scoring        its exact class scoring: screens (TF32, bfloat16) with rigorous bounds, float64
                   re-scoring, `auto` by measurement
    search         validation-only hyper-parameter search

Importing this package registers every built-in method (in this order: it is the order of
tables and of ``--methods`` lists). Method modules import torch lazily (:mod:`ssp._lazy`).
"""
# isort: skip_file
# registration order = table order
from ssp.methods import zero_shot  # noqa: F401
from ssp.methods import cache_models  # noqa: F401
from ssp.methods import finetuned  # noqa: F401
from ssp.methods import gda  # noqa: F401
from ssp.methods import proker  # noqa: F401
from ssp.methods import lp_plus_plus  # noqa: F401
from ssp.methods import linear_probe  # noqa: F401
from ssp.methods import tda  # noqa: F401
from ssp.methods import dmn  # noqa: F401
from ssp.methods.cache_models import APE, TipAdapter
from ssp.methods.dmn import DMNZeroShot
from ssp.methods.finetuned import APET, TipAdapterF
from ssp.methods.gda import GDA
from ssp.methods.linear_probe import LinearProbe
from ssp.methods.lp_plus_plus import LPPlusPlus
from ssp.methods.proker import ProKeR
from ssp.methods.projector import SSPProjector
from ssp.methods.registry import MethodSpec, get_method, method_names, parse_method, register_method
from ssp.methods.search import SearchResult, make_grid, validation_search
from ssp.methods.tda import TDA
from ssp.methods.zero_shot import ZeroShotCLIP

__all__ = ["ZeroShotCLIP", "TipAdapter", "APE", "TipAdapterF", "APET", "GDA", "ProKeR", "LPPlusPlus", "LinearProbe",
           "TDA", "DMNZeroShot",
           "SSPProjector", "MethodSpec",
           "register_method", "get_method", "method_names", "parse_method", "validation_search",
           "SearchResult", "make_grid"]
