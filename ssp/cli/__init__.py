"""The command-line tools, each a thin parser over the stages (the run stage writes records, the
report stage reads them), every ``main`` made by :func:`ssp.cli._args.with_cli_messages`:

    fewshot     ``ssp-fewshot``    one dataset (images or a Tip-Adapter cache folder)
    reproduce   ``ssp-reproduce``  a resumable suite of datasets, with the published numbers
    report      ``ssp-report``     tables and the results page from run files
    unmix       ``ssp-unmix``      Unmix-CLIP analysis, training, recognition, segmentation
                                   (:mod:`ssp.unmix.workflow`)
    data        ``ssp-data``       download, verify and draw the splits of the benchmarks
"""
