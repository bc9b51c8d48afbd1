"""The run stage: the evaluation protocols end to end.

    config      the merged, validated configuration (defaults < dataset < user file < flags)
    sources     where a run's features come from: images (backbone + feature store) or a
                Tip-Adapter cache folder
    splits      what one (shots, seed) reads (Split), the seeded test-from-val split, the 0-shot
                test-only split of the test-time protocol
    protocols   the evaluation protocols (fewshot, base2new, test-time, ...): one table
    pipeline    the run loop: support / validation / test features -> methods -> run records
    records     run JSON files: settings keys, provenance, resume
    protocols   the table of evaluation protocols (fewshot, base2new, ...): what a run fits,
                searches and scores, and the results its JSON holds
    shift       distribution-shift targets (--eval-on), mapped onto the source's classes by id
"""
