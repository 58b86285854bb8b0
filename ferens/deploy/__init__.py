"""Stage 6 of the pipeline, deploy: using a model on new faces: bundles, face detectors, predict,
evaluate and the model that ships in weights/. Modules: bundle (load and apply a bundle),
bundle_format, export (write one), faces (choose a detector) with face_crops, face_cascades and
face_mtcnn, predict (the library API) with media (read images, videos) and writers (CSV/JSON,
annotated images, timelines), evaluate, shipped. This file imports nothing, so importing one
module of the stage loads only what that module needs (torch only where a module itself imports
it: bundle, export, predict; finding faces, reading inputs and writing rows need none).
"""
