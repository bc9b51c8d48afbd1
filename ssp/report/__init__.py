"""The report stage: run records -> tables, plots and comparisons.

    tables       results.md / summary.json / results.png from the run JSON files
    published    the papers' published numbers (data, with their sources)
    comparison   ours beside the published numbers (Markdown, CSV, JSON, plots)
"""
