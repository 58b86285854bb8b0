"""Stage 4 of the pipeline, combine: combining finished runs from their saved predictions:
ensembles and post-hoc logit adjustment. Modules: ensemble (``ferens ensemble``: load, fit on
val, write), combiners (mean, logit-mean, weighted, greedy), stack, temperature, adjust
(``ferens adjust`` and its LogitAdjuster), fitted (fitted.json and the method registry). None
imports torch. This file imports nothing, so importing one module of the stage loads only what
that module needs.
"""
