"""SSP, the training-free vision / language subspace projector (Zhu et al., ACM MM 2024).

    projector   :class:`SSPProjector`: fit the subspaces, transform features into either view
    scoring     exact class scoring of the language view: TF32 / bfloat16 screens with rigorous
                error bounds, float64 re-scoring, ``score_precision="auto"`` by measurement
    subspaces   linear algebra on the class subspaces (batched LAPACK, complements, projection
                onto the classes each query picked)
    parallel    per-class work on shared cores: memory budgets, single-threaded LAPACK, classes
                split over threads (CPU) or grouped into padded batches (GPU)

Every method of :mod:`ssp.methods` takes ``projector=SSPProjector(...)``.
"""
from ssp.methods.ssp.projector import SSPProjector

__all__ = ["SSPProjector"]
