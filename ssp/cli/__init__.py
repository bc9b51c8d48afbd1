"""The command-line tools, each a thin layer over :mod:`ssp.run` / :mod:`ssp.unmix`:

    fewshot     ``ssp-fewshot``    one dataset (images or a Tip-Adapter cache folder)
    reproduce   ``ssp-reproduce``  a resumable suite of datasets, with the published numbers
    unmix       ``ssp-unmix``      Unmix-CLIP analysis, training, recognition, segmentation
"""
