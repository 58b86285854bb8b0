"""Stage 6 of the pipeline, deploy: using a model on new faces: bundles, face detectors, predict,
evaluate and the model that ships in weights/. Modules: bundle, bundle_format, faces, predict,
evaluate, shipped. This file imports nothing, so importing one module of the stage loads only
what that module needs (torch only where a module itself imports it).
"""
