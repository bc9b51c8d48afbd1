"""The method stage: estimators that turn features into logits, and the table that names them.

    registry       the method table (:func:`register_method` decorates each estimator class) and
                   the default config every default grid comes from
    base           :class:`CLIPFeatureClassifier`, what every method shares (fit template,
                   routing, array kinds, the search hooks)
    params         the parameter constraint tables' validator and the fit template
    search         validation-only hyper-parameter search (calls each method's hooks)
    zero_shot      :class:`ZeroShotCLIP`
    cache_models   training-free cache models: :class:`TipAdapter`, :class:`APE`
    finetuned      their fine-tuned variants: :class:`TipAdapterF`, :class:`APET`
    gda            :class:`GDA`, Gaussian discriminant analysis (training-free)
    proker         :class:`ProKeR`, kernel ridge regression around zero-shot CLIP (training-free)
    timo           :class:`TIMO`, :class:`TIMOS`: GDA with image-guided text and text-guided image
    lp_plus_plus   :class:`LPPlusPlus`, a linear probe blended with the text logits (LP++)
    linear_probe   :class:`LinearProbe`, the CLIP paper's logistic-regression probe
    tda            :class:`TDA`, test-time positive / negative caches of the stream (no shots)
    dmn            :class:`DMNZeroShot`, DMN-ZS's dynamic memory of the stream (no shots)
    stream         what the test-time methods share (memory replay, the streaming base class)
    ssp            :class:`SSPProjector`, the training-free vision / language subspace projector,
                   and its exact class scoring (a subpackage)

Importing this package registers the built-in methods in table order (the order of tables and
of ``--methods`` lists); any other module of the package registers when the table is first read
(:func:`ssp.methods.registry.registered_methods`), so a new method module is imported by no
one. Method modules import torch lazily (:mod:`ssp._lazy`).
"""
# isort: skip_file
# registration order = table order (other modules of the package: found by the registry)
from ssp.methods import zero_shot  # noqa: F401
from ssp.methods import cache_models  # noqa: F401
from ssp.methods import finetuned  # noqa: F401
from ssp.methods import gda  # noqa: F401
from ssp.methods import proker  # noqa: F401
from ssp.methods import timo  # noqa: F401
from ssp.methods import lp_plus_plus  # noqa: F401
from ssp.methods import linear_probe  # noqa: F401
from ssp.methods import tda  # noqa: F401
from ssp.methods import dmn  # noqa: F401
from ssp.methods.cache_models import APE, TipAdapter
from ssp.methods.finetuned import APET, TipAdapterF
from ssp.methods.gda import GDA
from ssp.methods.linear_probe import LinearProbe
from ssp.methods.lp_plus_plus import LPPlusPlus
from ssp.methods.proker import ProKeR
from ssp.methods.ssp import SSPProjector
from ssp.methods.base import CLIPFeatureClassifier
from ssp.methods.dmn import DMNZeroShot
from ssp.methods.registry import MethodSpec, get_method, make_grid, method_names, parse_method, register_method
from ssp.methods.search import SearchAxis, SearchResult, validation_search
from ssp.methods.tda import TDA
from ssp.methods.timo import TIMO, TIMOS
from ssp.methods.zero_shot import ZeroShotCLIP

__all__ = ["ZeroShotCLIP", "TipAdapter", "APE", "TipAdapterF", "APET", "GDA", "ProKeR", "TIMO", "TIMOS", "LPPlusPlus",
           "LinearProbe", "TDA", "DMNZeroShot",
           "SSPProjector", "CLIPFeatureClassifier", "MethodSpec", "SearchAxis",
           "register_method", "get_method", "method_names", "parse_method", "validation_search",
           "SearchResult", "make_grid"]
