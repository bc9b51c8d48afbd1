"""The run stage: the few-shot protocol end to end.

    config      the merged, validated configuration (defaults < dataset < user file < flags)
    sources     where a run's features come from: images (backbone + feature store) or a
                Tip-Adapter cache folder
    pipeline    the run loop: support / validation / test features -> methods -> run records
    records     run JSON files: settings keys, provenance, resume
"""
