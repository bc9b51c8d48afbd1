"""Shared helpers of the library, one module per concept (none imports torch at import time):

    arrays       numpy / torch inputs -> checked tensors, and back to the kind given: features,
                 labels, text classifiers and their layouts
    normalize    L2 normalisation and which side of a matrix holds unit vectors
    devices      ``auto`` / ``cuda`` / ``cpu`` -> a torch device
    torch_files  reading ``torch.save`` files safely (``weights_only``), one-line errors
    warn         warnings that name the user's line, not the library's
    fitted       scikit-learn's "not fitted yet" check
    progress     progress bars on a terminal, periodic lines in a log

Value checks that need no torch (``check_int``, ``check_real``, vocabularies) live in
:mod:`ssp._checks`; atomic writes and digests in :mod:`ssp._io`; the lazy torch in :mod:`ssp._lazy`.
"""
