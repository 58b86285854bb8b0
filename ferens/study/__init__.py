"""Stage 7 of the pipeline, study: a whole study from one TOML file: members side by side or on
Ray, their child processes, ensembles and the report. Modules: pipeline (``run_study``, the
whole study), spec (the study file), members (finished, committed, collected), local (lanes on
this machine), ray_backend, children, lanes. This file imports nothing, so importing one module
of the stage loads only what that module needs (torch only where a module itself imports it).
"""
