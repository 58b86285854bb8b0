"""Stage 4 of the pipeline, combine: combining finished runs from their saved predictions:
ensembles and post-hoc logit adjustment. Modules: ensemble, adjust. This file imports nothing,
so importing one module of the stage loads only what that module needs (torch only where a
module itself imports it).
"""
