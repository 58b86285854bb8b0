"""Stage 3 of the pipeline, train: training one member: its losses, batch mixing, soft targets and
the training loop. Modules: member, losses, mixing, targets, finetune. This file imports
nothing, so importing one module of the stage loads only what that module needs (torch only
where a module itself imports it).
"""
