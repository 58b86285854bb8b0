"""Stage 5 of the pipeline, report: `ferens report`: metrics, significance, error taxonomy,
duplicates, study groups, plots and the HTML/Markdown document. Modules: build, comparisons,
duplicates, groups, leaderboard, metrics, overview, plots, recipes, render, sections, selection,
significance, taxonomy. This file imports nothing, so importing one module of the stage loads
only what that module needs (torch only where a module itself imports it).
"""
