"""Stage 1 of the pipeline, data: reading FER2013 (and FER+ votes), augmenting, sampling and
batching the training faces. Modules: fer2013, augment, torch_augment, sampling, loader,
dataset, imagefolder. This file imports nothing, so importing one module of the stage loads only
what that module needs (torch only where a module itself imports it).
"""
