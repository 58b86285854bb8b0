"""Stage 2 of the pipeline, models: building a member network, its starting weights, and running a
trained member (device, test-time views, batches). Modules: factory, inference, pretrained,
initialise. This file imports nothing, so importing one module of the stage loads only what that
module needs (torch only where a module itself imports it).
"""
