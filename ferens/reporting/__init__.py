"""Building blocks of `ferens report`: metrics, error taxonomy, duplicates, plots and rendering.

Everything here works on loaded predictions (numpy arrays) and never imports torch, so a report
over ten runs takes seconds. `ferens.report.write_report` puts the pieces together.
"""
