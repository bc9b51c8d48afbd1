"""The run stage: the evaluation protocols end to end.

    config      the merged, validated configuration (defaults < dataset < user file < flags)
    sources     where a run's features come from: images (backbone + feature store) or a
                Tip-Adapter cache folder
    pipeline    the run loop: support / validation / test features -> methods -> run records
    records     run JSON files: settings keys, provenance, resume
    protocols   the table of evaluation protocols (fewshot, base2new, ...): what a run fits,
                searches and scores, and the results its JSON holds
    shift       distribution-shift targets (--eval-on), mapped onto the source's classes by id
"""
